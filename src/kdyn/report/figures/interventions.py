"""Intervention figures: the traced gradient-norm heatmap (Fernandez et al.) and the resuscitation
p × q grid (Kim et al.).

* ``gradient_norms.png`` — for every ``kdyn-trace`` run: r(l) = g_span/g_lm per diagnostic set ×
  layer (cells above the set's mean marked), one panel per run.
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


def gradient_norm_heatmaps(runs: Sequence, out_dir: Path, *, fmt: str = "png") -> list[Path]:
    traced = [r for r in runs if r.status == "completed" and isinstance(getattr(r, "trace", None), dict)]
    if not traced:
        return []
    rows, cols = grid(len(traced), max_cols=2)
    fig, axes = new_figure(rows, cols, panel_size=(6.0, 2.8))
    for ax, run in zip(axes, traced):
        layers, sets = run.trace["layers"], run.trace["sets"]
        names = list(sets)
        matrix = [sets[n]["r"] for n in names]
        image = ax.imshow(matrix, aspect="auto", cmap="viridis")
        ax.set_xticks(range(len(layers)), layers, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        for i, row in enumerate(matrix):
            mean = sum(row) / len(row)
            for j, value in enumerate(row):
                ax.text(j, i, f"{value:.2f}{'*' if value > mean else ''}", ha="center", va="center", fontsize=6,
                        color="white")
        model = run.trace.get("model", {})
        ax.set_title(f"r(l) = g_span / g_lm: {model.get('name')} step {model.get('step')}", fontsize=8)
        fig.colorbar(image, ax=ax, shrink=0.8)
    for ax in axes[len(traced):]:
        ax.set_visible(False)
    return [save_figure(fig, Path(out_dir) / f"gradient_norms.{fmt}", fmt)]


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
