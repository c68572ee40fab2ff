"""Knowledge-entropy figures (Kim et al., ICLR 2025).

* :func:`knowledge_entropy` — from runs with ``entropy.json`` (``kdyn-entropy``):
  ``knowledge_entropy.png`` (left: total knowledge entropy against checkpoint step, one line per
  model — and per corpus when several — with the model's maximum ``max_total`` dashed, symlog x axis
  since steps include 0; then one panel per model of per-layer entropy against step, coloured by
  depth) and ``knowledge_entropy.csv`` (tidy: model, corpus, step, layer — ``total`` for the sum —,
  entropy, max, run_dir).
* :func:`entropy_during_training` — from training runs whose ``metrics.csv`` logged
  ``entropy/total`` (and ``entropy/layer_<i>``): ``entropy_during_training.png`` (total against
  training step, one line per run — other logged variants such as ``entropy_heldout/total`` dashed
  in the run's colour —, then per-layer panels per run) and ``entropy_during_training.csv`` (tidy:
  run, label, metric, step, layer, entropy, run_dir).

Seeds (`kdyn.report.seeds`): measurements whose configs differ only in seed keys (and, for
checkpoints, the step) are one *condition*; runs that differ in any other key are never pooled. Every
line — the totals and the per-layer panels, one panel per condition — is the mean over the condition's
seeds with the 95% Student-t interval of the mean as a band (each seed's total as a dot), and names
the number of seeds (``n=3``; ``<3 seeds`` when fewer). The pooled numbers are written to
``knowledge_entropy_seeds.csv`` (condition, model, corpus, step, layer — ``total`` last —, n_seeds,
mean, std, ci95_low/high, ci95_half_width, few_seeds, seeds, run_dirs) and
``entropy_during_training_seeds.csv`` (condition, metric, layer, step, the same interval columns).
Steps whose weights are identical to another step's (same ``model.weights_sha256``) are marked with
a red ×.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdyn.report.collect import Run
from kdyn.report.figures import grid, new_figure, save_figure, unique_labels
from kdyn.report.seeds import seeds_note
from kdyn.report.table import csv_text
from kdyn.utils.io import atomic_write_text

MAX_LAYER_PANELS = 6   # per-run/per-model layer panels drawn at most (the total panel shows every line)
# entropy/total, entropy/layer_3, entropy_heldout/total, …
_ENTROPY_COLUMN = re.compile(r"^(entropy[A-Za-z0-9_]*)/(total|layer_(\d+))$")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _numbers(value: Any) -> list[float] | None:
    if not isinstance(value, (list, tuple)) or not value:
        return None
    out = [_number(v) for v in value]
    return None if any(v is None for v in out) else out  # type: ignore[return-value]


@dataclass
class EntropyPoint:
    """One knowledge-entropy measurement (one run's ``entropy.json``)."""

    run: Run
    model: str
    corpus: str
    step: float | int | None
    total: float
    per_layer: list[float]
    max_total: float | None
    max_per_layer: list[float] | None


def entropy_points(runs: Sequence[Run]) -> list[EntropyPoint]:
    """The readable entropy measurements of ``runs`` (runs without usable numbers are skipped)."""
    points = []
    for run in runs:
        data = run.entropy
        if not isinstance(data, dict):
            continue
        per_layer = _numbers(data.get("per_layer")) or []
        total = _number(data.get("total"))
        if total is None:
            if not per_layer:
                continue
            total = sum(per_layer)
        max_per_layer = _numbers(data.get("max_per_layer"))
        max_total = _number(data.get("max_total"))
        if max_total is None and max_per_layer:
            max_total = sum(max_per_layer)
        step = run.model_step
        step = step if isinstance(step, (int, float)) and not isinstance(step, bool) else None
        points.append(EntropyPoint(run, run.model_name or "?", run.corpus_name or "?", step, total, per_layer,
                                   max_total, max_per_layer))
    return points


def _sort_step(step: Any) -> tuple[int, float]:
    return (1, 0.0) if step is None else (0, float(step))


def tidy_rows(points: Sequence[EntropyPoint]) -> list[dict[str, Any]]:
    """Rows of ``knowledge_entropy.csv``: per layer, then ``layer="total"``, per measurement."""
    rows = []
    for p in sorted(points, key=lambda p: (p.model, p.corpus, _sort_step(p.step), str(p.run.path))):
        for i, h in enumerate(p.per_layer):
            m = p.max_per_layer[i] if p.max_per_layer and i < len(p.max_per_layer) else None
            rows.append({"model": p.model, "corpus": p.corpus, "step": p.step, "layer": i, "entropy": h, "max": m,
                         "run_dir": str(p.run.path)})
        rows.append({"model": p.model, "corpus": p.corpus, "step": p.step, "layer": "total", "entropy": p.total,
                     "max": p.max_total, "run_dir": str(p.run.path)})
    return rows


def _mean_by_step(pairs: Sequence[tuple[float, float]]) -> tuple[list[float], list[float], bool]:
    """Sorted steps, the mean value at each step, and whether any step had several values."""
    by_step: dict[float, list[float]] = {}
    for s, v in pairs:
        by_step.setdefault(s, []).append(v)
    steps = sorted(by_step)
    return steps, [sum(by_step[s]) / len(by_step[s]) for s in steps], any(len(v) > 1 for v in by_step.values())


def _band(ax, pairs: Sequence[tuple[float, float]], color, alpha: float = 0.2) -> None:
    """Shade the 95% Student-t interval of the mean at each step measured more than once (seeds)."""
    from kdyn.report.seeds import t_interval

    by_step: dict[float, list[float]] = {}
    for s, v in pairs:
        by_step.setdefault(s, []).append(v)
    band = [(s, iv.low, iv.high) for s in sorted(by_step) for iv in [t_interval(by_step[s])] if iv.low is not None]
    if band:
        ax.fill_between([b[0] for b in band], [b[1] for b in band], [b[2] for b in band], color=color, alpha=alpha,
                        lw=0)


def _symlog_x(ax, steps: Sequence[float]) -> None:
    positive = [s for s in steps if s > 0]
    linthresh = min(positive) if positive else 1.0
    ax.set_xscale("symlog", linthresh=linthresh, linscale=0.5)
    ax.set_xlim(left=-0.2 * linthresh)  # steps are never negative: no empty negative half


def _layer_colors(n: int):
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    return [cmap(i / max(n - 1, 1)) for i in range(n)]


def _layer_legend_or_colorbar(fig, ax, n_layers: int) -> None:
    if n_layers <= 8:
        ax.legend(fontsize=7, title="layer (depth)", title_fontsize=7, ncols=2 if n_layers > 4 else 1)
        return
    import matplotlib
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    sm = ScalarMappable(norm=Normalize(0, n_layers - 1), cmap=matplotlib.colormaps["viridis"])
    fig.colorbar(sm, ax=ax, label="layer (depth)")


#: Keys that are the x axis of the checkpoint figures, not a condition (model.revision follows the step).
STEP_KEYS = ("model.step", "model.revision")


@dataclass
class EntropySeries:
    """One condition of ``kdyn-entropy`` runs across checkpoint steps: same model, corpus and config up to the
    step and the seed keys; at each step, its seeds."""

    label: str
    model: str
    corpus: str
    points: list[EntropyPoint]

    def by_step(self) -> dict[Any, list[EntropyPoint]]:
        out: dict[Any, list[EntropyPoint]] = {}
        for p in sorted(self.points, key=lambda p: (_sort_step(p.step), str(p.run.path))):
            out.setdefault(p.step, []).append(p)
        return out

    def seed_counts(self) -> list[int]:
        """The number of measurements (seeds) at each step."""
        return [len(pts) for pts in self.by_step().values()]


def entropy_series(points: Sequence[EntropyPoint]) -> list[EntropySeries]:
    """``points`` as conditions × steps × seeds (first-seen order).

    Two measurements are seeds of one condition when their configs differ only in seed keys,
    bookkeeping and the step (`kdyn.report.seeds.seed_groups` with :data:`STEP_KEYS` ignored) and they
    measured the same model name on the same corpus; runs that differ in any other key are never pooled.
    Labels: ``model`` (``· corpus`` when several corpora), plus the condition when one model has several.
    """
    from kdyn.report.seeds import group_of, seed_groups

    conditions = group_of(seed_groups([p.run for p in points], ignore=STEP_KEYS))
    several_corpora = len({p.corpus for p in points}) > 1
    found: dict[tuple[str, str, str], list[EntropyPoint]] = {}
    labels: dict[str, str] = {}
    for p in points:
        group = conditions.get(id(p.run))
        key = group.key if group is not None else f"run:{p.run.path}"  # a run seed_groups skipped stands alone
        labels[key] = group.label if group is not None else p.run.name or p.run.path.name
        found.setdefault((p.model, p.corpus, key), []).append(p)
    per_name: dict[tuple[str, str], int] = {}
    for model, corpus, _ in found:
        per_name[(model, corpus)] = per_name.get((model, corpus), 0) + 1
    out = []
    for (model, corpus, key), pts in found.items():
        label = f"{model} · {corpus}" if several_corpora else model
        if per_name[(model, corpus)] > 1:
            label += f" [{labels[key]}]"
        out.append(EntropySeries(label, model, corpus, pts))
    return out


ENTROPY_SEED_COLUMNS = ["condition", "model", "corpus", "step", "layer", "n_seeds", "mean", "std", "ci95_low",
                        "ci95_high", "ci95_half_width", "few_seeds", "seeds", "run_dirs"]


def entropy_seed_rows(series: Sequence[EntropySeries]) -> list[dict[str, Any]]:
    """Rows of ``knowledge_entropy_seeds.csv``: per condition, step and layer (``total`` last), the mean
    entropy over the seeds with its 95% Student-t interval (`kdyn.report.seeds.t_interval`)."""
    from kdyn.report.seeds import interval_columns, seed_values, t_interval

    rows = []
    for s in series:
        for step, pts in s.by_step().items():
            n_layers = max((len(p.per_layer) for p in pts), default=0)
            common = {"condition": s.label, "model": s.model, "corpus": s.corpus, "step": step,
                      "seeds": [seed_values(p.run) for p in pts], "run_dirs": [str(p.run.path) for p in pts]}
            for i in range(n_layers):
                iv = t_interval([p.per_layer[i] for p in pts if i < len(p.per_layer)])
                rows.append({**common, "layer": i, **interval_columns(iv)})
            rows.append({**common, "layer": "total", **interval_columns(t_interval([p.total for p in pts]))})
    return rows


def _per_step_note(counts: Sequence[int]) -> str:
    from kdyn.report.seeds import seeds_note

    note = seeds_note(counts)
    return f"{note} per step; band: 95% t-interval" if max(counts, default=0) > 1 else f"{note} per step"


def knowledge_entropy(runs: Sequence[Run], out_dir: str | Path, *, fmt: str = "png") -> list[Path]:
    """``knowledge_entropy.csv`` and ``.<fmt>`` from the runs' ``entropy.json``; ``[]`` when none has one."""
    points = entropy_points(runs)
    if not points:
        return []
    out_dir = Path(out_dir)
    written = [atomic_write_text(out_dir / "knowledge_entropy.csv",
                                 csv_text(tidy_rows(points), ["model", "corpus", "step", "layer", "entropy", "max",
                                                               "run_dir"])),
               atomic_write_text(out_dir / "knowledge_entropy_seeds.csv",
                                 csv_text(entropy_seed_rows(entropy_series(points)), ENTROPY_SEED_COLUMNS))]
    plotted = [p for p in points if p.step is not None]
    if not plotted:
        return written

    from kdyn.report.integrity import duplicate_steps

    duplicates = duplicate_steps([p.run for p in plotted])
    series = entropy_series(plotted)
    layered = [s for s in series if any(p.per_layer for p in s.points)][:MAX_LAYER_PANELS]
    nrows, ncols = grid(1 + len(layered))
    fig, axes = new_figure(nrows, ncols)
    for ax in axes[1 + len(layered):]:
        ax.set_visible(False)

    # Left: total against step, one line per series, with the model's maximum dashed.
    ax = axes[0]
    all_steps = [float(p.step) for p in plotted]  # type: ignore[arg-type]
    colors = [f"C{i % 10}" for i in range(len(series))]
    for color, s in zip(colors, series):
        pts = s.points
        label = f"{s.label} ({seeds_note(s.seed_counts())})"
        steps, means, repeated = _mean_by_step([(float(p.step), p.total) for p in pts])  # type: ignore[arg-type]
        ax.plot(steps, means, marker="o", ms=4, color=color, label=label)
        if repeated:
            ax.scatter([float(p.step) for p in pts], [p.total for p in pts], s=10, color=color, alpha=0.4)  # type: ignore[arg-type]
            _band(ax, [(float(p.step), p.total) for p in pts], color)  # type: ignore[arg-type]
        flagged = [p for p in pts if id(p.run) in duplicates]
        if flagged:
            ax.plot([float(p.step) for p in flagged], [p.total for p in flagged], "x", color="red", ms=8, mew=1.5,  # type: ignore[arg-type]
                    label="identical weights as another step")
        maxima = sorted({p.max_total for p in pts if p.max_total is not None})
        for j, m in enumerate(maxima):
            ax.axhline(m, color=color, ls="--", lw=1, alpha=0.7,
                       label=f"{s.label}: max (uniform)" if j == 0 else None)
    _symlog_x(ax, all_steps)
    ax.set_xlabel("checkpoint step (symlog)")
    ax.set_ylabel("knowledge entropy  Σ_l H_l  (nats)")
    ax.set_title("Knowledge entropy by checkpoint")
    ax.grid(alpha=0.3)
    _legend(ax)

    # Then per-layer entropy against step, one panel per condition, one line per layer: the mean over the
    # condition's seeds at each step, with the 95% Student-t band where a step has several seeds.
    for ax, s in zip(axes[1:], layered):
        pts = s.points
        n_layers = max(len(p.per_layer) for p in pts)
        for i, color in enumerate(_layer_colors(n_layers)):
            pairs = [(float(p.step), p.per_layer[i]) for p in pts if i < len(p.per_layer)]  # type: ignore[arg-type]
            steps, means, repeated = _mean_by_step(pairs)
            ax.plot(steps, means, marker="o", ms=3, color=color, label=str(i))
            if repeated:
                _band(ax, pairs, color, alpha=0.12)
        maxima = {round(m, 9) for p in pts for m in (p.max_per_layer or [])}
        if len(maxima) == 1:
            ax.axhline(maxima.pop(), color="0.5", ls="--", lw=1, label="max")
        _symlog_x(ax, [float(p.step) for p in pts])  # type: ignore[arg-type]
        ax.set_xlabel("checkpoint step (symlog)")
        ax.set_ylabel("layer entropy  H_l  (nats)")
        ax.set_title(_short(f"Per layer: {s.label}", 70) + f"\n({_per_step_note(s.seed_counts())})", fontsize=9)
        ax.grid(alpha=0.3)
        _layer_legend_or_colorbar(fig, ax, n_layers)
    written.append(save_figure(fig, out_dir / f"knowledge_entropy.{fmt}", fmt=fmt))
    return written


# --- entropy logged during training (metrics.csv) ----------------------------------------------

Curves = dict[tuple[str, str], tuple[list[float], list[float]]]


def training_curves(runs: Sequence[Run]) -> list[tuple[Run, Curves]]:
    """For each run whose metrics.csv logged ``entropy/total``: {(metric, layer): (steps, values)}.

    ``metric`` is the column prefix (``entropy``, and e.g. ``entropy_heldout`` for entropy on a
    held-out set), ``layer`` is ``"total"`` or the layer index as text. Empty cells (not logged at
    that step) are dropped.
    """
    out = []
    for run in runs:
        columns = run.metrics()
        if not columns or "entropy/total" not in columns:
            continue
        n_rows = len(columns["entropy/total"])
        steps = [_number(v) for v in columns["step"]] if "step" in columns else [float(i) for i in range(n_rows)]
        curves: Curves = {}
        for column, cells in columns.items():
            m = _ENTROPY_COLUMN.match(str(column))
            if not m:
                continue
            pairs = sorted((s, v) for s, v in zip(steps, map(_number, cells)) if s is not None and v is not None)
            if pairs:
                curves[(m.group(1), m.group(2) if m.group(2) == "total" else m.group(3))] = (
                    [a for a, _ in pairs], [b for _, b in pairs])
        if ("entropy", "total") in curves:
            out.append((run, dict(sorted(curves.items(), key=lambda kv: _curve_order(kv[0])))))
    return out


def _number(text: str) -> float | None:
    """A metrics.csv cell as a float; ``None`` for an empty, non-numeric or NaN cell (not logged)."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return None if value != value else value  # NaN: not logged


def _curve_order(key: tuple[str, str]) -> tuple[int, str, int]:
    metric, layer = key
    return (0 if metric == "entropy" else 1, metric, -1 if layer == "total" else int(layer))


def entropy_during_training(runs: Sequence[Run], out_dir: str | Path, *, fmt: str = "png") -> list[Path]:
    """``entropy_during_training.<fmt>`` and ``.csv`` from metrics.csv; ``[]`` when no run logged entropy."""
    curves = training_curves(runs)
    if not curves:
        return []
    out_dir = Path(out_dir)
    labels = unique_labels([run for run, _ in curves])
    rows = []
    for run, c in curves:
        for (metric, layer), (steps, values) in c.items():
            for x, v in zip(steps, values):
                rows.append({"run": run.name, "label": labels[id(run)], "metric": metric, "step": int(x) if x.is_integer() else x,
                             "layer": layer if layer == "total" else int(layer), "entropy": v,
                             "run_dir": str(run.path)})
    from kdyn.report.seeds import group_of, seed_groups

    seeds_of = group_of(seed_groups([run for run, _ in curves]))
    conditions = training_conditions(curves, seeds_of, labels)
    written = [atomic_write_text(out_dir / "entropy_during_training.csv",
                                 csv_text(rows, ["run", "label", "metric", "step", "layer", "entropy", "run_dir"])),
               atomic_write_text(out_dir / "entropy_during_training_seeds.csv",
                                 csv_text(training_seed_rows(conditions), TRAINING_SEED_COLUMNS))]

    layered = [(label, members) for label, members in conditions
               if any(_layer_keys(c) for _, c in members)][:MAX_LAYER_PANELS]
    nrows, ncols = grid(1 + len(layered))
    fig, axes = new_figure(nrows, ncols)
    for ax in axes[1 + len(layered):]:
        ax.set_visible(False)
    ax = axes[0]
    styles = ["-", "--", ":", "-."]
    pooled: set[str] = set()
    for i, (run, c) in enumerate(curves):
        group = seeds_of.get(id(run))
        if group is not None and group.n_seeds > 1:  # seeds of one condition: their mean and its interval
            if group.key not in pooled:
                pooled.add(group.key)
                members = [cc for rr, cc in curves if seeds_of.get(id(rr)) is group]
                _pooled_totals(ax, members, f"C{i % 10}", styles,
                               f"{_short(group.label)} (mean over seeds, {seeds_note([group.n_seeds])})")
            continue
        metrics = [metric for metric, layer in c if layer == "total"]
        for j, metric in enumerate(metrics):
            steps, values = c[(metric, "total")]
            suffix = "" if metric == "entropy" else f" [{metric.removeprefix('entropy_') or metric}]"
            ax.plot(steps, values, ls=styles[j % len(styles)], marker="." if len(steps) < 50 else None,
                    color=f"C{i % 10}", label=_short(labels[id(run)]) + suffix)
    ax.set_xlabel("training step")
    ax.set_ylabel("knowledge entropy  Σ_l H_l  (nats)")
    ax.set_title("Knowledge entropy during training")
    ax.grid(alpha=0.3)
    _legend(ax)
    # Per-layer panels, one per condition: the mean over its seeds at each logged step, with the 95% band.
    from kdyn.report.seeds import t_interval

    for ax, (label, members) in zip(axes[1:], layered):
        label = labels[id(members[0][0])] if len(members) == 1 else label  # a lone run: named as in the total panel
        keys = sorted({k for _, c in members for k in _layer_keys(c)}, key=int)
        n_layers = int(keys[-1]) + 1
        colors = _layer_colors(n_layers)
        counts: list[int] = []
        for k in keys:
            by_step = _by_step([c for _, c in members], ("entropy", k))
            steps = sorted(by_step)
            intervals = [t_interval(by_step[x]) for x in steps]
            counts += [iv.n for iv in intervals]
            ax.plot(steps, [iv.mean for iv in intervals], color=colors[int(k)], label=k)
            band = [(x, iv.low, iv.high) for x, iv in zip(steps, intervals) if iv.low is not None]
            if band:
                ax.fill_between([b[0] for b in band], [b[1] for b in band], [b[2] for b in band],
                                color=colors[int(k)], alpha=0.2, lw=0)
        ax.set_xlabel("training step")
        ax.set_ylabel("layer entropy  H_l  (nats)")
        note = seeds_note([len(members)]) + (", band: 95% t-interval" if max(counts, default=0) > 1 else "")
        ax.set_title(f"Per layer: {_short(label)}\n({note})", fontsize=9)
        ax.grid(alpha=0.3)
        _layer_legend_or_colorbar(fig, ax, n_layers)
    written.append(save_figure(fig, out_dir / f"entropy_during_training.{fmt}", fmt=fmt))
    return written


def _layer_keys(c: Curves) -> list[str]:
    return sorted((layer for metric, layer in c if metric == "entropy" and layer != "total"), key=int)


def _by_step(members: Sequence[Curves], key: tuple[str, str]) -> dict[float, list[float]]:
    """{step: the value of each member that logged ``key`` at that step}."""
    by_step: dict[float, list[float]] = {}
    for c in members:
        for x, v in zip(*c.get(key, ([], []))):
            by_step.setdefault(x, []).append(v)
    return by_step


def training_conditions(curves: Sequence[tuple[Run, Curves]], seeds_of: dict, labels: dict[int, str]
                        ) -> list[tuple[str, list[tuple[Run, Curves]]]]:
    """The runs with entropy curves as conditions × seeds, ``[(label, [(run, curves)])]`` in first-seen order,
    labelled as in ``summary_seeds.csv`` (what differs between conditions); a run that is in no condition
    (not completed) stands alone under its own label."""
    found: dict[str, tuple[str, list[tuple[Run, Curves]]]] = {}
    for run, c in curves:
        group = seeds_of.get(id(run))
        if group is None:
            found[f"run:{run.path}"] = (labels[id(run)], [(run, c)])
        else:
            found.setdefault(group.key, (group.label, []))[1].append((run, c))
    return list(found.values())


TRAINING_SEED_COLUMNS = ["condition", "metric", "layer", "step", "n_seeds", "mean", "std", "ci95_low", "ci95_high",
                         "ci95_half_width", "few_seeds", "seeds", "run_dirs"]


def training_seed_rows(conditions: Sequence[tuple[str, list[tuple[Run, Curves]]]]) -> list[dict[str, Any]]:
    """Rows of ``entropy_during_training_seeds.csv``: per condition, logged column (metric × layer) and step,
    the mean over the condition's seeds with its 95% Student-t interval."""
    from kdyn.report.seeds import interval_columns, seed_values, t_interval

    rows = []
    for label, members in conditions:
        keys = sorted({k for _, c in members for k in c}, key=_curve_order)
        seeds = [seed_values(run) for run, _ in members]
        run_dirs = [str(run.path) for run, _ in members]
        for metric, layer in keys:
            by_step = _by_step([c for _, c in members], (metric, layer))
            for x in sorted(by_step):
                rows.append({"condition": label, "metric": metric, "layer": layer if layer == "total" else int(layer),
                             "step": int(x) if float(x).is_integer() else x, **interval_columns(t_interval(by_step[x])),
                             "seeds": seeds, "run_dirs": run_dirs})
    return rows


def _pooled_totals(ax, members: Sequence[Curves], color: str, styles: Sequence[str], label: str) -> None:
    """Mean total entropy over seeds at each logged step, with its 95% Student-t band."""
    from kdyn.report.seeds import t_interval

    metrics = list(dict.fromkeys(metric for c in members for metric, layer in c if layer == "total"))
    for j, metric in enumerate(metrics):
        by_step = _by_step(members, (metric, "total"))
        steps = sorted(by_step)
        intervals = [t_interval(by_step[x]) for x in steps]
        suffix = "" if metric == "entropy" else f" [{metric.removeprefix('entropy_') or metric}]"
        ax.plot(steps, [iv.mean for iv in intervals], ls=styles[j % len(styles)], color=color, label=label + suffix)
        band = [(x, iv.low, iv.high) for x, iv in zip(steps, intervals) if iv.low is not None]
        if band:
            ax.fill_between([b[0] for b in band], [b[1] for b in band], [b[2] for b in band], color=color, alpha=0.2,
                            lw=0)


def _legend(ax) -> None:
    """Inside the axes for a few lines, below them (never over the curves) for more."""
    n = len(ax.get_legend_handles_labels()[1])
    if n == 0:  # nothing labelled: no legend (and no matplotlib warning)
        return
    if n <= 3:
        ax.legend(fontsize=7)
    else:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0.0, -0.16), frameon=False)


def _short(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


FIGURES = [knowledge_entropy, entropy_during_training]
