"""Diagnostic sets for gradient localization (Fernandez et al. 2024): sequences + salient-span masks.

A diagnostic example is a token sequence and a boolean mask of its *salient span*: the tokens whose
prediction the span loss covers (token ``t`` is predicted from position ``t − 1``). Text comes in as
a `Cloze` (``context`` + ``" " + span``); like `kdyn.data.probes`, the context and ``" " + span``
are tokenised separately (no special tokens) and concatenated, so the span is exact.

==================  ==========================================================================
set                 examples
==================  ==========================================================================
``new_entities``    memorization probes of knowledge items (``trace.knowledge_source``, the
                    ``inject.source`` schema: synthetic new entities or Fictional Knowledge):
                    context ``mem_input``, span ``mem_target``
``updated``         changed TWiki rows that update a known subject. Synthetic: rows of kind
                    ``updated`` (same subject and relation, new object). Real TWiki-Probes: a
                    **proxy** — changed rows whose subject occurs in an earlier period's file
                    (the rows are not flagged; a known subject may also get a new relation)
``new_facts``       synthetic: changed rows of kind ``new`` (new facts of existing entities and
                    facts of new entities); real: the **proxy** — changed rows whose subject is
                    absent from every earlier period file (research notes §5)
``changed``         every changed row (no split)
``unchanged``       the control: facts true before and after the period
==================  ==========================================================================

TWiki rows are verbalised as TemporalWiki's probe string ``subject + " " + relation + " " + object``
with span ``" " + object``. Each set is subsampled to ``max_examples`` with a seeded, deterministic
draw (kept in source order).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kdyn.data.knowledge import knowledge_records
from kdyn.data.world import SyntheticWorld, read_twiki_csv, world_config
from kdyn.errors import KdynError

NEW_ENTITIES, UPDATED, NEW_FACTS, CHANGED, UNCHANGED = "new_entities", "updated", "new_facts", "changed", "unchanged"
SET_NAMES = (NEW_ENTITIES, UPDATED, NEW_FACTS, CHANGED, UNCHANGED)
TWIKI_SETS = (UPDATED, NEW_FACTS, CHANGED, UNCHANGED)


@dataclass(frozen=True)
class Cloze:
    """A text example before tokenisation: ``context + " " + span``; ``source`` says where it came from."""

    context: str
    span: str
    source: str


@dataclass(frozen=True)
class DiagnosticExample:
    """One tokenised example: ``input_ids`` ``[T]`` and ``span_mask`` ``[T]`` (True on the span's tokens)."""

    input_ids: torch.Tensor
    span_mask: torch.Tensor
    source: str


@dataclass
class DiagnosticSet:
    """A named list of examples; ``origin`` describes the data, ``n_available`` counts it before subsampling."""

    name: str
    examples: list[DiagnosticExample]
    origin: str
    n_available: int


# ---------------------------------------------------------------- text level
def check_set_names(names: Sequence[str]) -> list[str]:
    """The requested set names, validated (unknown or repeated names are errors)."""
    names = list(names or [])
    if not names:
        raise KdynError(f"trace.sets is empty; choose some of {', '.join(SET_NAMES)}")
    unknown = [n for n in names if n not in SET_NAMES]
    if unknown:
        raise KdynError(f"unknown diagnostic set(s) {unknown} in trace.sets; choose from {', '.join(SET_NAMES)}")
    if len(set(names)) != len(names):
        raise KdynError(f"trace.sets names a set twice: {names}")
    return names


def new_entity_clozes(source: Mapping[str, Any]) -> list[Cloze]:
    """The memorization probes of the knowledge items chosen by ``source`` (the ``inject.source`` schema)."""
    records = knowledge_records(source, key="trace.knowledge_source")
    return [Cloze(inp, tgt, f"item {rec['item']} mem {j}")
            for rec in records for j, (inp, tgt) in enumerate(zip(rec["mem_input"], rec["mem_target"], strict=True))]


def fact_cloze(subject: str, relation: str, obj: str, source: str) -> Cloze:
    """TemporalWiki's probe string ``subject relation object``, with the object as the span."""
    return Cloze(f"{subject} {relation}", obj, source)


def twiki_clozes(twiki: Mapping[str, Any]) -> tuple[dict[str, list[Cloze]], str]:
    """``{updated, new_facts, changed, unchanged: clozes}`` and a description, from ``trace.twiki``.

    ``twiki.path`` null: the synthetic world's ``updates()`` (``twiki.period`` = ``p1``, ``p2``, …;
    ``twiki.world``, ``twiki.seed``); else a folder of TWiki-Probes CSVs
    (``<period>_changed.csv`` / ``<period>_unchanged.csv``) and ``twiki.period`` e.g. ``0801-0901``.
    """
    if twiki.get("path"):
        return _real_twiki(Path(str(twiki["path"])).expanduser(), twiki.get("period"))
    return _synthetic_twiki(twiki)


def _synthetic_twiki(twiki: Mapping[str, Any]) -> tuple[dict[str, list[Cloze]], str]:
    period = str(twiki.get("period") or "p1")
    if not (period.startswith("p") and period[1:].isdigit() and int(period[1:]) >= 1):
        raise KdynError(f"trace.twiki.period={period!r} is not a synthetic period; use p1, p2, … "
                        "(or set trace.twiki.path to a TWiki-Probes folder for periods like 0801-0901)")
    p = SyntheticWorld(world_config(twiki.get("world"), key="trace.twiki.world")).updates(int(period[1:]), seed=int(twiki.get("seed") or 0))[-1]
    out: dict[str, list[Cloze]] = {UPDATED: [], NEW_FACTS: [], CHANGED: [], UNCHANGED: []}
    for i, (fact, kind) in enumerate(zip(p["changed"], p["kind"], strict=True)):
        cloze = fact_cloze(fact.subject, fact.relation, fact.obj, f"{period} changed row {i} ({kind})")
        out[CHANGED].append(cloze)
        out[UPDATED if kind == "updated" else NEW_FACTS].append(cloze)
    out[UNCHANGED] = [fact_cloze(f.subject, f.relation, f.obj, f"{period} unchanged row {i}")
                      for i, f in enumerate(p["unchanged"])]
    return out, f"synthetic world updates, period {period} (updated/new flagged by the generator)"


def twiki_periods(folder: Path) -> list[str]:
    """The periods of a TWiki-Probes folder (those with both CSV files), in time order."""
    return sorted(f.name[: -len("_changed.csv")] for f in folder.glob("*_changed.csv")
                  if (folder / f.name.replace("_changed.csv", "_unchanged.csv")).is_file())


def _real_twiki(folder: Path, period: Any) -> tuple[dict[str, list[Cloze]], str]:
    if not folder.is_dir():
        raise KdynError(f"trace.twiki.path={folder} is not a folder; pass the TWiki-Probes folder holding "
                        "<period>_changed.csv and <period>_unchanged.csv (e.g. ../shared/data/temporalwiki)")
    periods = twiki_periods(folder)
    if not periods:
        raise KdynError(f"{folder} holds no <period>_changed.csv / <period>_unchanged.csv pair; pass the "
                        "TWiki-Probes folder in trace.twiki.path")
    if period is None or str(period) not in periods:
        raise KdynError(f"trace.twiki.period={period!r} is not in {folder}; available: {', '.join(periods)}")
    period = str(period)
    earlier = periods[: periods.index(period)]
    seen = {f.subject for p in earlier for kind in ("changed", "unchanged")
            for f in read_twiki_csv(folder / f"{p}_{kind}.csv")}
    out: dict[str, list[Cloze]] = {UPDATED: [], NEW_FACTS: [], CHANGED: [], UNCHANGED: []}
    for i, f in enumerate(read_twiki_csv(folder / f"{period}_changed.csv")):
        known = f.subject in seen
        cloze = fact_cloze(f.subject, f.relation, f.obj, f"{period} changed row {i}")
        out[CHANGED].append(cloze)
        out[UPDATED if known else NEW_FACTS].append(cloze)
    out[UNCHANGED] = [fact_cloze(f.subject, f.relation, f.obj, f"{period} unchanged row {i}")
                      for i, f in enumerate(read_twiki_csv(folder / f"{period}_unchanged.csv"))]
    split = (f"proxy split: subject seen in an earlier file ({', '.join(earlier)}) -> updated, else new_facts"
             if earlier else "no earlier period: every changed row counts as new_facts")
    return out, f"TWiki-Probes {folder} period {period} ({split})"


def diagnostic_clozes(settings: Mapping[str, Any]) -> dict[str, tuple[list[Cloze], str]]:
    """``{set name: (all clozes, origin)}`` for ``settings["sets"]`` (the ``trace`` config node)."""
    names = check_set_names(settings.get("sets"))
    out: dict[str, tuple[list[Cloze], str]] = {}
    if NEW_ENTITIES in names:
        source = dict(settings.get("knowledge_source") or {})
        kind = source.get("name")
        where = f" {source.get('path')}" if kind != "synthetic" else ""
        out[NEW_ENTITIES] = (new_entity_clozes(source), f"{kind}{where} knowledge items, memorization probes")
    if any(n in TWIKI_SETS for n in names):
        sets, origin = twiki_clozes(dict(settings.get("twiki") or {}))
        out.update({n: (sets[n], origin) for n in names if n in TWIKI_SETS})
    return {n: out[n] for n in names}


def subsample(items: Sequence[Any], max_examples: int | None, seed: int, name: str) -> list[Any]:
    """At most ``max_examples`` items: a seeded draw (per set ``name``), kept in source order."""
    if max_examples is None or len(items) <= int(max_examples):
        return list(items)
    if int(max_examples) < 1:
        raise KdynError(f"trace.max_examples must be at least 1, got {max_examples}")
    keep = sorted(random.Random(f"kdyn-trace/{seed}/{name}").sample(range(len(items)), int(max_examples)))
    return [items[i] for i in keep]


# ---------------------------------------------------------------- tokens
def tokenize_clozes(clozes: Sequence[Cloze], tokenizer, max_len: int | None = None) -> list[DiagnosticExample]:
    """Tokenise context and ``" " + span`` separately (no special tokens) and concatenate.

    Sequences longer than ``max_len`` lose context tokens from the left. A span that tokenises to
    nothing, a context that does (its first span token could not be predicted) or a span that does
    not fit ``max_len`` is an error naming the count and the first example.
    """
    if not clozes:
        return []
    contexts = tokenizer([c.context for c in clozes], add_special_tokens=False)["input_ids"]
    spans = tokenizer([" " + c.span for c in clozes], add_special_tokens=False)["input_ids"]
    bad = [c for c, ctx, sp in zip(clozes, contexts, spans) if not sp or not ctx or not c.span.strip()]
    if bad:
        raise KdynError(f"{len(bad)} diagnostic example(s) have an empty span or context (first: {bad[0].source}: "
                        f"{bad[0].context!r} + {bad[0].span!r}); fix or drop them in the data")
    out = []
    for c, ctx, sp in zip(clozes, contexts, spans):
        if max_len is not None and len(sp) >= max_len:
            raise KdynError(f"the span of {c.source} has {len(sp)} tokens, which leaves no context within "
                            f"trace.max_len={max_len}; raise trace.max_len")
        ids = list(ctx) + list(sp)
        if max_len is not None:
            ids = ids[-max_len:]
        mask = torch.zeros(len(ids), dtype=torch.bool)
        mask[len(ids) - len(sp):] = True
        out.append(DiagnosticExample(torch.tensor(ids, dtype=torch.long), mask, c.source))
    return out


def build_diagnostic_sets(settings: Mapping[str, Any], tokenizer) -> dict[str, DiagnosticSet]:
    """The tokenised, subsampled diagnostic sets of a ``trace`` node; an empty set is an error."""
    sets = {}
    for name, (clozes, origin) in diagnostic_clozes(settings).items():
        if not clozes:
            raise KdynError(f"diagnostic set {name!r} is empty ({origin}); choose another set, period or source")
        chosen = subsample(clozes, settings.get("max_examples"), int(settings.get("seed") or 0), name)
        examples = tokenize_clozes(chosen, tokenizer, settings.get("max_len"))
        sets[name] = DiagnosticSet(name, examples, origin, len(clozes))
    return sets
