"""Intervention figures: the traced gradient-norm heatmap (Fernandez et al.) and the resuscitation
p × q grid (Kim et al.).

* ``gradient_norms.png`` + ``gradient_norms_seeds.csv`` — the ``kdyn-trace`` runs as conditions × seeds
  (`kdyn.report.seeds`; runs that differ in a non-seed key, or traced another model, step or layer list,
  are never pooled): r(l) = g_span/g_lm per diagnostic set × layer, one panel per condition — the mean
  over its seeds in each cell with ± the half-width of its 95% Student-t interval below it, n in the
  title (``<3 seeds`` when fewer than 3), cells above the set's mean marked *. The CSV has one row per
  condition × set × layer × quantity (r, g_span, g_lm): n_seeds, mean, std, ci95_low/high,
  ci95_half_width, few_seeds, above_set_mean (r only), the seeds and run folders.
* ``resuscitation_grid.png`` + ``resuscitation_grid.csv`` — training runs with
  ``intervention=resuscitate``: acquisition A, forgetting F and effectivity (memorization probes,
  averaged over scenarios) on a q × p grid — the mean over the seeds of each cell, with ± the
  half-width of its 95% Student-t interval and n when a cell has several seeds —, with the
  no-intervention runs of the same report listed as reference values in the panel titles.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kdyn.report.figures import grid, new_figure, save_figure

#: The per-layer quantities of a kdyn-trace set pooled over seeds (``layer_stats.json["sets"][name][q]``).
TRACE_QUANTITIES = ("r", "g_span", "g_lm")


def _trace_usable(run) -> bool:
    trace = getattr(run, "trace", None)
    if run.status != "completed" or not isinstance(trace, dict):
        return False
    layers, sets = trace.get("layers"), trace.get("sets")
    return (isinstance(layers, list) and bool(layers) and isinstance(sets, dict)
            and any(isinstance(e, dict) and isinstance(e.get("r"), list) and len(e["r"]) == len(layers)
                    for e in sets.values()))


def trace_conditions(runs: Sequence) -> list[tuple[str, list]]:
    """The completed kdyn-trace runs as conditions × seeds: ``[(label, runs)]``.

    Runs are pooled when their configs differ only in seed keys (`kdyn.report.seeds.seed_groups`) and
    they traced the same model, step and layers (what ``layer_stats.json`` says it measured).
    """
    from kdyn.report.seeds import seed_groups

    out = []
    for group in seed_groups([r for r in runs if _trace_usable(r)]):
        parts: dict[tuple, list] = {}
        for run in group.runs:
            model = run.trace.get("model") or {}
            key = (str(model.get("name")), str(model.get("step")), tuple(map(str, run.trace["layers"])))
            parts.setdefault(key, []).append(run)
        for (name, step, _), members in parts.items():
            out.append((group.label if len(parts) == 1 else f"{group.label} · {name} step {step}", members))
    return out


def _numbers(value: Any, n: int) -> list[float] | None:
    if not isinstance(value, list) or len(value) != n:
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        return None
    return [float(v) for v in value]


def pooled_trace(label: str, members: Sequence) -> dict[str, Any]:
    """One condition's traced numbers pooled over its seeds: ``{"layers", "sets", "model", "step",
    "intervals": {(set, quantity): [Interval per layer]}, "seeds": [seed values per run]}``."""
    from kdyn.report.seeds import seed_values, t_interval

    first = members[0].trace
    layers = [str(n) for n in first["layers"]]
    sets: list[str] = []
    for run in members:
        sets += [n for n in run.trace["sets"] if n not in sets]
    intervals: dict[tuple[str, str], list] = {}
    for name in sets:
        for quantity in TRACE_QUANTITIES:
            per_run = [_numbers((run.trace["sets"].get(name) or {}).get(quantity), len(layers)) for run in members]
            per_run = [values for values in per_run if values is not None]
            if per_run:
                intervals[(name, quantity)] = [t_interval([values[j] for values in per_run])
                                               for j in range(len(layers))]
    model = first.get("model") or {}
    return {"condition": label, "layers": layers, "sets": [n for n in sets if (n, "r") in intervals],
            "model": model.get("name"), "step": model.get("step"), "intervals": intervals,
            "seeds": [seed_values(run) for run in members], "run_dirs": [str(run.path) for run in members]}


GRADIENT_NORM_COLUMNS = ["condition", "model", "step", "set", "layer", "quantity", "n_seeds", "mean", "std",
                         "ci95_low", "ci95_high", "ci95_half_width", "few_seeds", "above_set_mean", "seeds",
                         "run_dirs"]


def gradient_norm_heatmaps(runs: Sequence, out_dir: Path, *, fmt: str = "png") -> list[Path]:
    """``gradient_norms.<fmt>`` + ``gradient_norms_seeds.csv``: r(l) per set × layer, one panel per condition
    (its seeds pooled: the mean in the cell, ± the half-width of its 95% t-interval below it, n in the title)."""
    from kdyn.report.seeds import interval_columns, seeds_note
    from kdyn.report.table import csv_text
    from kdyn.utils.io import atomic_write_text

    pooled = [pooled_trace(label, members) for label, members in trace_conditions(runs)]
    pooled = [p for p in pooled if p["sets"]]
    if not pooled:
        return []
    out_dir = Path(out_dir)
    rows = []
    for p in pooled:
        for name in p["sets"]:
            r_means = [iv.mean for iv in p["intervals"][(name, "r")]]
            set_mean = sum(r_means) / len(r_means)
            for quantity in TRACE_QUANTITIES:
                for layer, iv in zip(p["layers"], p["intervals"].get((name, quantity), [])):
                    rows.append({"condition": p["condition"], "model": p["model"], "step": p["step"], "set": name,
                                 "layer": layer, "quantity": quantity, **interval_columns(iv),
                                 "above_set_mean": iv.mean > set_mean if quantity == "r" else None,
                                 "seeds": p["seeds"], "run_dirs": p["run_dirs"]})
    written = [atomic_write_text(out_dir / "gradient_norms_seeds.csv", csv_text(rows, GRADIENT_NORM_COLUMNS))]

    several = len(pooled) > 1
    n_rows, n_cols = grid(len(pooled), max_cols=2)
    fig, axes = new_figure(n_rows, n_cols, panel_size=(6.0, max(2.8, 0.75 * max(len(p["sets"]) for p in pooled) + 1.2)))
    for ax, p in zip(axes, pooled):
        layers, names = p["layers"], p["sets"]
        cells = [p["intervals"][(name, "r")] for name in names]
        matrix = [[iv.mean for iv in row] for row in cells]
        image = ax.imshow(matrix, aspect="auto", cmap="viridis")
        ax.set_xticks(range(len(layers)), layers, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        values = [v for row in matrix for v in row if math.isfinite(v)]
        mid = (min(values) + max(values)) / 2 if values else 0.0
        for i, row in enumerate(cells):
            mean = sum(iv.mean for iv in row) / len(row)
            for j, iv in enumerate(row):
                text = f"{iv.mean:.2f}{'*' if iv.mean > mean else ''}"
                if iv.half_width is not None:
                    text += f"\n±{iv.half_width:.2f}"
                ax.text(j, i, text, ha="center", va="center", fontsize=6,
                        color="black" if iv.mean > mid else "white")
        ns = [iv.n for row in cells for iv in row]
        title = f"r(l) = g_span / g_lm: {p['model']} step {p['step']} ({seeds_note(ns)})"
        if several:
            title += f"\n{_clip(p['condition'])}"
        if max(ns) > 1:
            title += "\nmean over seeds ± half-width of the 95% t-interval; * above the set's mean"
        ax.set_title(title, fontsize=7)
        fig.colorbar(image, ax=ax, shrink=0.8)
    for ax in axes[len(pooled):]:
        ax.set_visible(False)
    written.append(save_figure(fig, out_dir / f"gradient_norms.{fmt}", fmt))
    return written


def _clip(text: str, width: int = 80) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _mem_mean(knowledge: dict[str, Any], key: str) -> float | None:
    values = []
    for scenario, by_type in (knowledge.get("scenarios") or {}).items():
        if "@" in scenario:
            continue
        value = (by_type.get("mem") or {}).get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            values.append(value)
    return sum(values) / len(values) if values else None


def resuscitation_grid(runs: Sequence, out_dir: Path, *, fmt: str = "png") -> list[Path]:
    from kdyn.report.figures.knowledge import _knowledge
    from kdyn.report.seeds import t_interval

    cells, baselines = [], []
    for run in runs:
        knowledge = _knowledge(run) if run.status == "completed" else None
        if knowledge is None:
            continue
        name = run.config_value("intervention.name")
        metrics = {k: _mem_mean(knowledge, k) for k in ("acquisition", "forgetting", "effectivity")}
        if name == "resuscitate":
            cells.append({"q": run.config_value("intervention.q"), "p": run.config_value("intervention.p"),
                          "step": run.model_step, **metrics, "run_dir": str(run.path)})
        elif name in (None, "none"):
            baselines.append({"step": run.model_step, **metrics, "run_dir": str(run.path)})
    if not cells:
        return []
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = out_dir / "resuscitation_grid.csv"
    with table.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["kind", "q", "p", "step", "acquisition", "forgetting", "effectivity",
                                               "run_dir"])
        writer.writeheader()
        for c in cells:
            writer.writerow({"kind": "resuscitate", **c})
        for b in baselines:
            writer.writerow({"kind": "baseline", "q": None, "p": None, **b})
    qs = sorted({c["q"] for c in cells})
    ps = sorted({c["p"] for c in cells})
    fig, axes = new_figure(1, 3, panel_size=(4.2, 3.4))
    for ax, key in zip(axes, ("acquisition", "forgetting", "effectivity")):
        pooled: dict[tuple, list[float]] = defaultdict(list)  # the seeds of each cell
        for c in cells:
            if c[key] is not None:
                pooled[(c["q"], c["p"])].append(c[key])
        intervals = {cell: t_interval(v) for cell, v in pooled.items()}
        matrix = [[intervals[(q, p)].mean if (q, p) in intervals else float("nan") for p in ps] for q in qs]
        image = ax.imshow(matrix, aspect="auto", cmap="magma", origin="lower")
        ax.set_xticks(range(len(ps)), [str(p) for p in ps])
        ax.set_yticks(range(len(qs)), [str(q) for q in qs])
        ax.set_xlabel("amplifying factor p")
        ax.set_ylabel("quantile q")
        for i, row in enumerate(matrix):
            for j, value in enumerate(row):
                if not math.isnan(value):
                    iv = intervals[(qs[i], ps[j])]
                    text = f"{value:.3f}" + (f"\n±{iv.half_width:.3f} n={iv.n}" if iv.half_width is not None else "")
                    ax.text(j, i, text, ha="center", va="center", fontsize=6 if iv.n > 1 else 7, color="white")
        base = ", ".join(f"step {b['step']}: {b[key]:.3f}" for b in sorted(baselines, key=lambda b: b["step"] or 0)
                         if b[key] is not None)
        ax.set_title(f"{key} (mem, mean over scenarios)\nno intervention: {base or 'n/a'}", fontsize=7)
        fig.colorbar(image, ax=ax, shrink=0.8)
    return [table, save_figure(fig, out_dir / f"resuscitation_grid.{fmt}", fmt)]


FIGURES = [gradient_norm_heatmaps, resuscitation_grid]
