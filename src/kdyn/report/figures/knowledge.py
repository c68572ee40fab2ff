"""Knowledge acquisition and retention figures (Chang et al. 2024; Kim et al. 2025).

From each training run's ``results.json["knowledge"]`` (written by kdyn-train from probes.csv):

* ``retention.png`` — R(t) against log10 t after the last injection, one panel per scenario ×
  probe type, one colour per condition (runs differing only in seed keys are pooled,
  `kdyn.report.seeds`): dots = mean R over seeds, band = 95% Student-t interval, line = the power
  law −a·log10 t + b fitted to the mean curve (legend: decay constant, mean ± half-width over the
  seeds' own fits, and n). One figure for any number of runs.
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
    """``retention.<fmt>``: one figure for all conditions — a panel per scenario × probe type, one colour
    per condition, dots = mean R(t) over the condition's seeds, band = its 95% t-interval, line = the
    power law fitted to the mean curve (legend: decay constant a, mean ± half-width over seeds)."""
    from kdyn.report.seeds import seed_groups

    with_knowledge = [r for r in runs if r.status == "completed" and _knowledge(r)]
    groups = seed_groups(with_knowledge)
    if not groups:
        return []
    scenarios: list[str] = []
    types: list[str] = []
    for run in with_knowledge:
        for scenario, by_type in _knowledge(run)["scenarios"].items():
            if "@" not in scenario and scenario not in scenarios:
                scenarios.append(scenario)
            types += [t for t in PROBE_TYPES if t in by_type and t not in types]
    types = [t for t in PROBE_TYPES if t in types]
    if not scenarios or not types:
        return []
    fig, axes = new_figure(len(scenarios), len(types), panel_size=(4.2, 3.2))
    drew = False
    for row, scenario in enumerate(scenarios):
        for col, probe_type in enumerate(types):
            ax = axes[row * len(types) + col]
            for i, group in enumerate(groups):
                drew |= _retention_condition(ax, group, scenario, probe_type, f"C{i % 10}", len(groups) > 1)
            ax.axhline(0, color="grey", lw=0.8, ls=":")
            ax.set_title(f"{scenario} · {TITLES[probe_type]} ({probe_type})", fontsize=8)
            ax.set_xlabel("log10 t (steps after the local acquisition maximum)", fontsize=7)
            ax.set_ylabel("retainability R(t)", fontsize=7)
            if ax.get_legend_handles_labels()[1]:
                ax.legend(fontsize=6)
    if not drew:
        return []
    seeds = sorted({g.n_seeds for g in groups})
    fig.suptitle("Retention after the last injection: mean over seeds (band: 95% Student-t interval; "
                 f"{'/'.join(map(str, seeds))} seed{'s' if seeds != [1] else ''} per condition)", fontsize=9)
    return [save_figure(fig, Path(out_dir) / f"retention.{fmt}", fmt)]


def _retention_condition(ax, group, scenario: str, probe_type: str, colour: str, name_it: bool) -> bool:
    from kdyn.metrics.retention import fit_power_law_retention
    from kdyn.report.seeds import t_interval

    by_t: dict[float, list[float]] = defaultdict(list)
    decay = []
    for run in group.runs:
        m = ((_knowledge(run) or {}).get("scenarios", {}).get(scenario) or {}).get(probe_type) or {}
        retention = m.get("retention") or {}
        for t, r in zip(retention.get("t") or [], retention.get("R") or []):
            if t and t > 0 and r is not None:
                by_t[float(t)].append(float(r))
        a = (m.get("fit") or {}).get("decay_constant")
        if a is not None:
            decay.append(a)
    if not by_t:
        return False
    ts = sorted(by_t)
    intervals = [t_interval(by_t[t]) for t in ts]
    xs = [math.log10(t) for t in ts]
    means = [iv.mean for iv in intervals]
    ax.plot(xs, means, "o", ms=2.5, alpha=0.6, color=colour)
    banded = [(x, iv.low, iv.high) for x, iv in zip(xs, intervals) if iv.low is not None]
    if banded:
        ax.fill_between([b[0] for b in banded], [b[1] for b in banded], [b[2] for b in banded], color=colour,
                        alpha=0.2, lw=0)
    fit = fit_power_law_retention(ts, means)
    a_mean, b = fit.get("decay_constant"), fit.get("intercept")
    if a_mean is not None and b is not None:
        ax.plot([min(xs), max(xs)], [b - a_mean * min(xs), b - a_mean * max(xs)], "-", color=colour, lw=1.5)
    a_iv = t_interval(decay)
    text = "a n/a" if a_iv.n == 0 else (f"a={a_iv.mean:.3f}" + (f"±{a_iv.half_width:.3f}" if a_iv.half_width else ""))
    label = (f"{group.label}: " if name_it else "") + f"{text} (n={group.n_seeds})"
    ax.plot([], [], "o-", color=colour, label=label[:70])
    return True


def knowledge_by_step(runs: Sequence, out_dir: Path, *, fmt: str = "png") -> list[Path]:
    from kdyn.report.integrity import duplicate_steps
    from kdyn.report.seeds import group_of, seed_groups, t_interval

    conditions = group_of(seed_groups(runs, ignore=("model.step", "model.revision")))
    duplicates = duplicate_steps(runs)
    rows = []
    for run in runs:
        knowledge = _knowledge(run) if run.status == "completed" else None
        step = run.model_step
        if knowledge is None or step is None:
            continue
        condition = conditions[id(run)].label if id(run) in conditions else ""
        for scenario, by_type in knowledge["scenarios"].items():
            if "@" in scenario:
                continue
            for probe_type, m in by_type.items():
                rows.append({"model": run.model_name, "step": step, "condition": condition, "seed": run.seed,
                             "identical_weights_as": " ".join(map(str, duplicates.get(id(run), []))) or None,
                             "scenario": scenario, "probe_type": probe_type,
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
    several = len({r["condition"] for r in rows}) > 1
    markers = ["o", "s", "^", "D", "v", "P", "X", "*"]
    condition_marker = {c: markers[i % len(markers)] for i, c in enumerate(dict.fromkeys(r["condition"] for r in rows))}
    n_seeds = set()
    for ax, metric in zip(axes, metrics):
        series: dict[tuple, dict[Any, list[float]]] = defaultdict(lambda: defaultdict(list))
        flagged: list[tuple[Any, float]] = []
        for r in rows:
            if r[metric] is not None:
                series[(r["condition"], r["scenario"], r["probe_type"])][r["step"]].append(r[metric])
                if r["identical_weights_as"]:
                    flagged.append((r["step"], r[metric]))
        for (condition, scenario, probe_type), by_step in sorted(series.items()):
            steps = sorted(by_step)
            intervals = [t_interval(by_step[s]) for s in steps]
            n_seeds.update(iv.n for iv in intervals)
            colour = COLOURS.get(scenario)
            label = f"{scenario} {probe_type}" + (f" [{condition}]" if several else "")
            ax.plot(steps, [iv.mean for iv in intervals], styles.get(probe_type, "-"),
                    marker=condition_marker[condition], ms=3, color=colour, label=label[:60])
            banded = [(s, iv.low, iv.high) for s, iv in zip(steps, intervals) if iv.low is not None]
            if banded:
                ax.fill_between([b[0] for b in banded], [b[1] for b in banded], [b[2] for b in banded],
                                color=colour, alpha=0.12, lw=0)
        if flagged:
            ax.plot([f[0] for f in flagged], [f[1] for f in flagged], "x", color="red", ms=7, mew=1.5,
                    label="identical weights as another step")
        ax.set_xscale("symlog", linthresh=10)
        ax.set_xlabel("checkpoint step")
        ax.set_title(metric.replace("_", " "))
        ax.grid(alpha=0.3)
    if axes[0].get_legend_handles_labels()[1]:
        axes[0].legend(fontsize=6, ncol=2)
    fig.suptitle("mean over seeds, band: 95% Student-t interval (seeds per point: "
                 f"{'/'.join(map(str, sorted(n_seeds)))})", fontsize=8)
    return [table, save_figure(fig, out_dir / f"knowledge_by_step.{fmt}", fmt)]


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text).strip("_")[:60] or "run"


FIGURES = [retention_figures, knowledge_by_step]
