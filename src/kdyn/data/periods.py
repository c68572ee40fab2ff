"""Corpora made of consecutive periods (``corpus=temporalwiki``): one training segment per period.

The periods come from TWiki-Probes (real, ``corpus.source=twiki``) or from the embedded world's
updates (``corpus.source=synthetic``). Each period's training text is its changed facts verbalised
as sentences — a knowledge-injection **stand-in** for TemporalWiki's multi-GB Wikipedia diffsets,
not real Wikipedia drift — plus optional Mix-Review replay of unchanged facts or base-corpus text.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kdyn.errors import KdynError

SEGMENTED_CORPORA = ("temporalwiki",)


def is_segmented(corpus: Mapping[str, Any]) -> bool:
    return corpus.get("name") in SEGMENTED_CORPORA


def load_periods(corpus: Mapping[str, Any]) -> list:
    """The `Period` objects of a ``corpus=temporalwiki`` node, in order."""
    from kdyn.data.temporalwiki import load_twiki_periods, synthetic_periods

    source = corpus.get("source", "synthetic")
    caps = dict(max_changed=corpus.get("max_changed"), max_unchanged=corpus.get("max_unchanged"),
                seed=int(corpus.get("seed", 0)))
    if source == "twiki":
        periods = load_twiki_periods(corpus.get("path"), corpus.get("periods"), **caps)
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
    from kdyn.data.temporalwiki import training_documents

    replay_docs: list[str] = []
    if float(corpus.get("replay_base", 0.0)) > 0:
        from kdyn.data.corpora import load_documents

        replay_docs = load_documents(dict(corpus.get("replay_corpus") or {"name": "synthetic"}))
    out = []
    for period in load_periods(corpus):
        # synthetic periods come with the world's own paragraphs; real TWiki rows are verbalised
        text = corpus.get("text") or ("documents" if getattr(period, "origin", "twiki") == "synthetic" else "verbalized")
        docs = training_documents(period, source=text, replay_unchanged=float(corpus.get("replay_unchanged", 0.0)),
                                  replay_documents=replay_docs, replay_fraction=float(corpus.get("replay_base", 0.0)),
                                  seed=int(corpus.get("seed", 0)))
        if not docs:
            raise KdynError(f"period {period.name} has no training text (no changed facts?)")
        out.append((period.name, docs))
    return out
