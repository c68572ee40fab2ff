"""Knowledge acquisition and retention figures (Chang et al. 2024; Kim et al. 2025).

From each training run's ``results.json["knowledge"]`` (written by kdyn-train from probes.csv):

* ``retention.png`` — R(t) against log10 t after the last injection, one panel per probe type,
  one colour per scenario, dots = measured mean R, line = the fitted power law −a·log10 t + b
  (the legend gives the decay constant a). One figure per run (``retention_<run>.png``) when
  several runs have knowledge results.
* ``knowledge_by_step.png`` + ``knowledge_by_step.csv`` — effectivity, acquisition A and
  forgetting F against the checkpoint step the run started from, per scenario and probe type
  (needs runs from at least two checkpoint steps).
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kdyn.report.figures import grid, new_figure, save_figure

PROBE_TYPES = ("mem", "gen", "hard_gen")
TITLES = {"mem": "memorization", "gen": "semantic", "hard_gen": "compositional"}
COLOURS = {"paraphrase": "tab:blue", "duplicate": "tab:orange", "once": "tab:green"}


_CACHE: dict[str, dict[str, Any] | None] = {}


def _knowledge(run) -> dict[str, Any] | None:
    """The run's knowledge metrics, recomputed from probes.csv + injections.csv with its own
    ``inject.metrics`` settings (so every run is summarised by the current metric code), else the
    ``results.json`` copy."""
    key = str(run.path)
    if key not in _CACHE:
        _CACHE[key] = _recompute(run)
    if _CACHE[key] is not None:
        return _CACHE[key]
    k = (run.results or {}).get("knowledge") if isinstance(run.results, dict) else None
    return k if isinstance(k, dict) and isinstance(k.get("scenarios"), dict) else None


def _recompute(run) -> dict[str, Any] | None:
    from kdyn.metrics.knowledge_summary import summarize_run

    settings = run.config_value("inject.metrics") or {}
    if not isinstance(settings, dict) or "window" not in settings:
        return None
    allowed = {"window", "iqr_multiplier", "af_mode", "af_aggregate", "max_pre_gap", "drop_flat_probes"}
    try:
        return summarize_run(run.path, **{k: v for k, v in settings.items() if k in allowed})
    except Exception:  # noqa: BLE001 - fall back to the numbers the run wrote itself
        return None


def retention_figures(runs: Sequence, out_dir: Path, *, fmt: str = "png") -> list[Path]:
    with_knowledge = [r for r in runs if r.status == "completed" and _knowledge(r)]
    written = []
    for run in with_knowledge:
        name = "retention" if len(with_knowledge) == 1 else f"retention_{_slug(run.name)}"
        path = _retention_figure(run, _knowledge(run), Path(out_dir) / f"{name}.{fmt}", fmt)
        if path is not None:
            written.append(path)
    return written


def _retention_figure(run, knowledge: dict[str, Any], path: Path, fmt: str) -> Path | None:
    scenarios = {s: v for s, v in knowledge["scenarios"].items() if "@" not in s}
    types = [t for t in PROBE_TYPES if any(t in v for v in scenarios.values())]
    if not types:
        return None
    fig, axes = new_figure(1, len(types), panel_size=(4.6, 3.8))
    drew = False
    for ax, probe_type in zip(axes, types):
        for scenario, by_type in scenarios.items():
            m = by_type.get(probe_type) or {}
            retention = m.get("retention") or {}
            points = [(t, r) for t, r in zip(retention.get("t") or [], retention.get("R") or [])
                      if t and t > 0 and r is not None]
            if not points:
                continue
            colour = COLOURS.get(scenario)
            xs = [math.log10(t) for t, _ in points]
            ax.plot(xs, [r for _, r in points], "o", ms=2.5, alpha=0.5, color=colour)
            fit = m.get("fit") or {}
            a, b = fit.get("decay_constant"), fit.get("intercept")
            label = scenario
            if a is not None and b is not None:
                ax.plot([min(xs), max(xs)], [b - a * min(xs), b - a * max(xs)], "-", color=colour, lw=1.8)
                label += f"  a={a:.3f}" + (f" (R²={fit['r_squared']:.2f})" if fit.get("r_squared") is not None else "")
            ax.plot([], [], "o-", color=colour, label=label)
            drew = True
        ax.axhline(0, color="grey", lw=0.8, ls=":")
        ax.set_title(f"{TITLES[probe_type]} ({probe_type})")
        ax.set_xlabel("log10 t (steps after the local acquisition maximum)")
        ax.set_ylabel("retainability R(t)")
        ax.legend(fontsize=7)
    if not drew:
        return None
    fig.suptitle(f"Retention after the last injection: {run.name}", fontsize=9)
    return save_figure(fig, path, fmt)


def knowledge_by_step(runs: Sequence, out_dir: Path, *, fmt: str = "png") -> list[Path]:
    rows = []
    for run in runs:
        knowledge = _knowledge(run) if run.status == "completed" else None
        step = run.model_step
        if knowledge is None or step is None:
            continue
        for scenario, by_type in knowledge["scenarios"].items():
            if "@" in scenario:
                continue
            for probe_type, m in by_type.items():
                rows.append({"model": run.model_name, "step": step, "scenario": scenario, "probe_type": probe_type,
                             "effectivity": m.get("effectivity"), "acquisition": m.get("acquisition"),
                             "forgetting": m.get("forgetting"),
                             "decay_constant": (m.get("fit") or {}).get("decay_constant"),
                             "run_dir": str(run.path)})
    if len({r["step"] for r in rows}) < 2:
        return []
    out_dir = Path(out_dir)
    table = out_dir / "knowledge_by_step.csv"
    out_dir.mkdir(parents=True, exist_ok=True)
    with table.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(sorted(rows, key=lambda r: (str(r["model"]), r["step"], r["scenario"], r["probe_type"])))
    metrics = ("effectivity", "acquisition", "forgetting", "decay_constant")
    rows_n, cols_n = grid(len(metrics), max_cols=2)
    fig, axes = new_figure(rows_n, cols_n, panel_size=(5.0, 3.6))
    styles = {"mem": "-", "gen": "--", "hard_gen": ":"}
    for ax, metric in zip(axes, metrics):
        series: dict[tuple, list[tuple[float, float]]] = defaultdict(list)
        for r in rows:
            if r[metric] is not None:
                series[(r["scenario"], r["probe_type"])].append((r["step"], r[metric]))
        for (scenario, probe_type), points in sorted(series.items()):
            points.sort()
            ax.plot([p[0] for p in points], [p[1] for p in points], styles.get(probe_type, "-"), marker="o", ms=3,
                    color=COLOURS.get(scenario), label=f"{scenario} {probe_type}")
        ax.set_xscale("symlog", linthresh=10)
        ax.set_xlabel("checkpoint step")
        ax.set_title(metric.replace("_", " "))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=6, ncol=2)
    return [table, save_figure(fig, out_dir / f"knowledge_by_step.{fmt}", fmt)]


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text).strip("_")[:60] or "run"


FIGURES = [retention_figures, knowledge_by_step]
