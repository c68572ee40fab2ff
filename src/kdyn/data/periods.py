"""Corpora made of consecutive periods (``corpus=temporalwiki``): one training segment per period.

The periods come from TWiki-Probes (real, ``corpus.source=twiki``) or from the embedded world's
updates (``corpus.source=synthetic``). By default each period's training text is its changed facts
verbalised as sentences — a knowledge-injection **stand-in** for TemporalWiki's multi-GB Wikipedia
diffsets, not real Wikipedia drift. ``corpus.periods.<name>.path=FILE`` (``.jsonl``/``.txt``, read like
``corpus=text``) trains that period on the file's documents instead (e.g. the real diffset), while
the period's probes stay the evaluation. Either way optional Mix-Review replay of unchanged facts or
base-corpus text is mixed in.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from typing import Any

from kdyn.data.corpora import load_documents
from kdyn.data.temporalwiki import load_twiki_periods, synthetic_periods, training_documents
from kdyn.data.textfiles import require_file
from kdyn.errors import KdynError

log = logging.getLogger(__name__)

SEGMENTED_CORPORA = ("temporalwiki",)


def is_segmented(corpus: Mapping[str, Any]) -> bool:
    return corpus.get("name") in SEGMENTED_CORPORA


def load_periods(corpus: Mapping[str, Any]) -> list:
    """The `Period` objects of a ``corpus=temporalwiki`` node, in order."""
    source = corpus.get("source", "synthetic")
    caps = dict(max_changed=corpus.get("max_changed"), max_unchanged=corpus.get("max_unchanged"),
                seed=int(corpus.get("seed", 0)))
    chosen = corpus.get("periods")
    if isinstance(chosen, Mapping):  # {name: {path: FILE}}: every period, some trained on files
        chosen = None
    if source == "twiki":
        periods = load_twiki_periods(corpus.get("path"), chosen, **caps)
    elif source == "synthetic":
        periods = synthetic_periods(corpus.get("world") or {}, n_periods=int(corpus.get("n_periods", 4)),
                                    seed=int(corpus.get("seed", 0)))
    else:
        raise KdynError(f"unknown corpus.source {source!r} for temporalwiki; choose synthetic or twiki")
    if not periods:
        raise KdynError("corpus=temporalwiki selected no periods")
    return periods


def segment_documents(corpus: Mapping[str, Any]) -> list[tuple[str, list[str]]]:
    """[(period name, training documents)] for each period, replay mixed in as configured."""
    replay_docs: list[str] = []
    if float(corpus.get("replay_base", 0.0)) > 0:
        replay_docs = load_documents(dict(corpus.get("replay_corpus") or {"name": "synthetic"}))
    out = []
    periods = load_periods(corpus)
    files = period_files(corpus, [p.name for p in periods])
    for period in periods:
        # synthetic periods come with the world's own paragraphs; real TWiki rows are verbalised
        text = corpus.get("text") or ("documents" if getattr(period, "origin", "twiki") == "synthetic" else "verbalized")
        if period.name in files:  # the period's own text (e.g. its diffset) replaces the stand-in
            period, text = dataclasses.replace(period, documents=tuple(files[period.name]())), "documents"
        docs = training_documents(period, source=text, replay_unchanged=float(corpus.get("replay_unchanged", 0.0)),
                                  replay_documents=replay_docs, replay_fraction=float(corpus.get("replay_base", 0.0)),
                                  seed=int(corpus.get("seed", 0)))
        if not docs:
            raise KdynError(f"period {period.name} has no training text (no changed facts?)")
        out.append((period.name, docs))
    return out


def period_files(corpus: Mapping[str, Any], names: list[str]) -> dict[str, Callable[[], list[str]]]:
    """``corpus.periods.<name>.path`` → {period: reader of its documents}; paths are checked now.

    Each entry is read like ``corpus=text`` (`kdyn.data.textfiles`): ``.jsonl`` (``text_field``, default
    ``text``) or ``.txt`` (``txt_split``: paragraph | line | file).
    """
    node = corpus.get("periods")
    if not isinstance(node, Mapping):
        return {}
    readers: dict[str, Callable[[], list[str]]] = {}
    for name, entry in node.items():
        name = str(name)
        if name not in names:
            raise KdynError(f"corpus.periods.{name}: unknown period; periods: {', '.join(names)}")
        entry = {"path": entry} if isinstance(entry, str) else dict(entry or {})
        if not entry.get("path"):
            continue
        key = f"corpus.periods.{name}.path"
        path = require_file(entry["path"], key)
        text_node = {"name": "text", "path": str(path), "text_field": entry.get("text_field", "text"),
                     "txt_split": entry.get("txt_split", "paragraph")}
        readers[name] = lambda text_node=text_node, key=key: _documents(text_node, key)
    if readers:
        stand_in = [n for n in names if n not in readers]
        log.info("corpus=temporalwiki: periods trained on files: %s%s", ", ".join(readers),
                 f"; on the verbalised stand-in: {', '.join(stand_in)}" if stand_in else "")
    return readers


def _documents(text_node: Mapping[str, Any], key: str) -> list[str]:
    try:
        return load_documents(text_node)
    except KdynError as e:
        raise KdynError(f"{key}: {e}") from None
