"""A run's knowledge metrics from the tables it wrote: ``probes.csv`` + ``injections.csv``.

Used at the end of every training run that scored probes (into ``results.json["knowledge"]``) and
by ``kdyn-report``. Probes are grouped by the steps at which their item was injected: items of one
scenario normally share them (Chang et al.); when they do not (Kim et al. spread ``once`` items over
events) each group is reported as ``<scenario>@<first step>`` and the scenario's effectivity,
acquisition and forgetting are also given as probe-weighted means over its groups.
"""

from __future__ import annotations

import csv
import logging
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from kdyn.errors import KdynError
from kdyn.metrics.retention import summarize_probe_metrics
from kdyn.utils.results import ResultSection

log = logging.getLogger(__name__)

PROBE_KEY = ("item", "scenario", "probe_type", "probe_idx")


def load_probe_table(path: str | Path, column: str = "nll") -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """``(steps [n_steps], values [n_probes, n_steps], meta [n_probes])``; missing evaluations are NaN."""
    by_probe: dict[tuple, dict[int, float]] = defaultdict(dict)
    steps: set[int] = set()
    with Path(path).open(newline="") as f:
        for row in csv.DictReader(f):
            key = (int(row["item"]), row["scenario"], row["probe_type"], int(row["probe_idx"]))
            step = int(row["step"])
            by_probe[key][step] = float(row[column])
            steps.add(step)
    ordered_steps = np.array(sorted(steps), dtype=np.int64)
    column_of = {s: i for i, s in enumerate(ordered_steps.tolist())}
    keys = sorted(by_probe)
    values = np.full((len(keys), len(ordered_steps)), np.nan)
    for i, key in enumerate(keys):
        for step, v in by_probe[key].items():
            values[i, column_of[step]] = v
    meta = [dict(zip(PROBE_KEY, key)) for key in keys]
    return ordered_steps, values, meta


def load_injection_steps(path: str | Path) -> dict[int, list[int]]:
    """{item: sorted injection steps} from ``injections.csv``."""
    out: dict[int, set[int]] = defaultdict(set)
    with Path(path).open(newline="") as f:
        for row in csv.DictReader(f):
            out[int(row["item"])].add(int(row["step"]))
    return {item: sorted(steps) for item, steps in out.items()}


def summarize_run(run_dir: str | Path, *, window: int, iqr_multiplier: float | None = 2.0,
                  af_mode: str = "last", af_aggregate: str = "curve",
                  max_pre_gap: int | None = 0, drop_flat_probes: bool = False) -> dict[str, Any] | None:
    """Knowledge metrics of a run folder, or ``None`` when it scored no probes.

    ``drop_flat_probes=True`` drops probes whose minimum after the last injection equals their
    start value from effectivity too, as the official analysis does (see
    `kdyn.metrics.retention.summarize_probe_metrics`); the default keeps them.
    """
    run_dir = Path(run_dir)
    table, injections = run_dir / "probes.csv", run_dir / "injections.csv"
    if not table.is_file() or not injections.is_file():
        return None
    steps, values, meta = load_probe_table(table)
    if values.size == 0:
        return None
    item_steps = load_injection_steps(injections)
    groups: dict[str, list[int]] = {}
    group_of_scenario: dict[str, set[tuple[int, ...]]] = defaultdict(set)
    for m in meta:
        group_of_scenario[m["scenario"]].add(tuple(item_steps.get(m["item"], [])))
    for m in meta:
        item_plan = tuple(item_steps.get(m["item"], []))
        split = len(group_of_scenario[m["scenario"]]) > 1
        m["group"] = f"{m['scenario']}@{item_plan[0]}" if split and item_plan else m["scenario"]
        groups[m["group"]] = list(item_plan)
    grouped_meta = [{"scenario": m["group"], "probe_type": m["probe_type"]} for m in meta]
    plan = {g: s for g, s in groups.items() if s}
    keep = [i for i, m in enumerate(grouped_meta) if m["scenario"] in plan]
    # retention is measured after each group's last injection; a run that ends inside the last
    # acquisition window (Kim et al.'s schedule) has no retention tail: report t = 0 only.
    max_t = max(0, int(steps[-1]) - (max(s[-1] for s in plan.values()) + window))
    summary = summarize_probe_metrics(steps, values[keep], [grouped_meta[i] for i in keep], plan, window=window,
                                      iqr_multiplier=iqr_multiplier, af_mode=af_mode, af_aggregate=af_aggregate,
                                      max_pre_gap=max_pre_gap, max_t=max_t, drop_flat_probes=drop_flat_probes)
    _add_scenario_means(summary, meta, keep)
    return {"window": window, "iqr_multiplier": iqr_multiplier, "af_mode": af_mode, "af_aggregate": af_aggregate,
            "drop_flat_probes": bool(drop_flat_probes), "evaluated_steps": len(steps),
            "last_step": int(steps[-1]), "scenarios": summary}


def _add_scenario_means(summary: dict[str, Any], meta: list[dict[str, Any]], keep: list[int]) -> None:
    """For split scenarios (``once@159``, …): probe-weighted means of the per-group scalars."""
    split: dict[str, list[str]] = defaultdict(list)
    for group in summary:
        if "@" in group:
            split[group.split("@")[0]].append(group)
    for scenario, group_names in split.items():
        combined: dict[str, dict[str, Any]] = {}
        for probe_type in {pt for g in group_names for pt in summary[g]}:
            parts = [summary[g][probe_type] for g in group_names if probe_type in summary[g]]
            combined[probe_type] = {"groups": group_names}
            for key in ("effectivity", "acquisition", "forgetting"):
                pairs = [(p.get(key), p.get("n_probes", 0)) for p in parts if isinstance(p.get(key), (int, float))]
                total = sum(n for _, n in pairs)
                combined[probe_type][key] = sum(v * n for v, n in pairs) / total if total else None
            combined[probe_type]["n_probes"] = sum(p.get("n_probes", 0) for p in parts)
        summary[scenario] = combined


def headline_rows(summary: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Short (label, text) rows for the end-of-run table: effectivity, final retention, decay constant."""
    rows = []
    for scenario, by_type in summary.get("scenarios", {}).items():
        parts = []
        for probe_type in ("mem", "gen", "hard_gen"):
            m = by_type.get(probe_type)
            if not m:
                continue
            eff = m.get("effectivity")
            fit = m.get("fit") or {}
            retention = (m.get("retention") or {}).get("R") or []
            last_r = next((r for r in reversed(retention) if r is not None), None)
            text = f"{probe_type}: E={_fmt(eff)}"
            if last_r is not None:
                text += f" R_end={_fmt(last_r)}"
            if fit.get("decay_constant") is not None:
                text += f" a={_fmt(fit['decay_constant'])}"
            parts.append(text)
        if parts:
            rows.append((f"{scenario}", "; ".join(parts)))
    return rows


def _fmt(x: Any) -> str:
    return "n/a" if x is None else f"{x:.3g}"


class InjectionResults:
    """The ``injection`` and ``knowledge`` sections of a training run's ``results.json``
    (:class:`kdyn.utils.results.ContributesResults`): the schedule as planned and trained, and the
    knowledge metrics of the run's ``probes.csv`` + ``injections.csv`` (``settings``: ``inject.metrics``)."""

    def __init__(self, plan: Any, settings: Mapping[str, Any]):
        self.plan, self.settings = plan, dict(settings)

    def result_section(self, out: Path) -> ResultSection:
        values: dict[str, Any] = {"injection": self.plan.describe()}
        try:
            values["knowledge"] = summarize_run(out, **self.settings) if self.plan.events else None
        except KdynError as e:  # a run too short for the metrics keeps its other results
            log.warning("knowledge metrics not computed: %s", e)
            values["knowledge"] = {"error": str(e)}
        return ResultSection(values, headline_rows(values["knowledge"] or {}))
