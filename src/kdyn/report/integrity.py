"""Checkpoints of one trajectory that serve identical weights (Pythia #205, OLMo #915).

Every result file records ``model.weights_sha256`` (one hash over the weight files' sha256, see
`kdyn.models.provenance`). Two runs of the same model at *different* steps with the same hash
measured the same weights twice: :func:`duplicate_steps` finds them, ``summary.csv`` names them in
``identical_weights_as`` and the step figures mark them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kdyn.report.collect import Run


def weights_hash(run: Run) -> str | None:
    for source in (run.entropy, run.results, run.trace):
        if isinstance(source, dict) and isinstance(source.get("model"), dict):
            value = source["model"].get("weights_sha256")
            if isinstance(value, str) and value:
                return value
    return None


def duplicate_steps(runs: Sequence[Run]) -> dict[int, list[Any]]:
    """{id(run): the other steps of the same model whose weights are identical to this run's}."""
    by_hash: dict[tuple[str, str], dict[Any, list[Run]]] = {}
    for run in runs:
        digest = weights_hash(run)
        if digest is None or run.model_step is None:
            continue
        by_hash.setdefault((run.model_name or "?", digest), {}).setdefault(run.model_step, []).append(run)
    out: dict[int, list[Any]] = {}
    for steps in by_hash.values():
        if len(steps) < 2:
            continue
        for step, group in steps.items():
            others = sorted((s for s in steps if s != step), key=lambda s: (str(type(s)), s))
            for run in group:
                out[id(run)] = others
    return out


def duplicate_lines(runs: Sequence[Run]) -> list[str]:
    """One warning line per model whose trajectory serves identical weights at different steps."""
    seen: dict[tuple[str, frozenset], None] = {}
    dups = duplicate_steps(runs)
    for run in runs:
        if id(run) in dups:
            seen.setdefault((run.model_name or "?", frozenset([run.model_step, *dups[id(run)]])), None)
    return [f"warning: {model}: steps {', '.join(str(s) for s in sorted(steps, key=str))} have identical weights "
            "(same sha256): the checkpoint repository serves one set of weights under several steps; their points "
            "are not independent measurements" for model, steps in seen]
