"""Report figures: a registry of figure functions, and the helpers they share.

A *figure function* has the signature ``fn(runs, out_dir, *, fmt="png") -> list[Path]``: it draws
what it can from the loaded runs (:class:`kdyn.report.collect.Run`), writes its files into
``out_dir`` and returns their paths — or returns ``[]`` when its data is absent (e.g. no run has
``entropy.json``). It must never fail on one malformed run: skip what cannot be read.

To add figures, write a module here that defines ``FIGURES = [fn, ...]`` and add its name to
:data:`FIGURE_MODULES`. Figures are drawn with matplotlib's Agg canvas on ``Figure`` objects (no
pyplot, no display, no global backend switch); :func:`save_figure` writes atomically.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdyn.utils.io import atomic_path

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from kdyn.report.collect import Run

FigureFunction = Callable[..., list[Path]]

# Modules defining FIGURES = [figure functions]; drawn in this order.
FIGURE_MODULES: list[str] = [
    "kdyn.report.figures.entropy",
    "kdyn.report.figures.knowledge",
    "kdyn.report.figures.interventions",
]


def figure_functions() -> list[FigureFunction]:
    """Every registered figure function, in order (imports the figure modules on first use)."""
    out: list[FigureFunction] = []
    for name in FIGURE_MODULES:
        out.extend(importlib.import_module(name).FIGURES)
    return out


def make_figures(runs: Sequence[Run], out_dir: str | Path, fmt: str = "png",
                 on_error: Callable[[str], Any] | None = None) -> list[Path]:
    """Run every figure function; returns the files written.

    A figure function that raises does not stop the others: ``on_error`` (default: print to
    stderr) gets ``"<function>: <message>"``.
    """
    out_dir = Path(out_dir)
    written: list[Path] = []
    for fn in figure_functions():
        try:
            written.extend(fn(runs, out_dir, fmt=fmt))
        except Exception as e:  # noqa: BLE001 - one broken figure must not lose the rest of the report
            message = f"{fn.__name__}: {' '.join(str(e).split()) or type(e).__name__}"
            if on_error is None:
                print(f"kdyn-report: warning: figure skipped: {message}", file=sys.stderr)
            else:
                on_error(message)
    return written


def new_figure(nrows: int = 1, ncols: int = 1, panel_size: tuple[float, float] = (5.2, 4.0)):
    """A ``Figure`` on an Agg canvas with an ``nrows × ncols`` grid of axes (returned as a flat list)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(panel_size[0] * ncols, panel_size[1] * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, [ax for row in axes for ax in row]


def save_figure(fig: Figure, path: str | Path, fmt: str = "png", dpi: int = 150) -> Path:
    """Save ``fig`` to ``path`` atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    with atomic_path(path, suffix=f".{fmt}") as tmp:
        fig.savefig(tmp, format=fmt, dpi=dpi)
    return path


def grid(n_panels: int, max_cols: int = 3) -> tuple[int, int]:
    """(rows, cols) for ``n_panels`` panels, at most ``max_cols`` per row."""
    cols = max(1, min(n_panels, max_cols))
    return (n_panels + cols - 1) // cols, cols


def unique_labels(runs: Sequence[Run]) -> dict[int, str]:
    """{id(run): legend label}: the overrides (or run name); a label shared by several runs is prefixed
    with each run's folder name (``job 3: …`` for multirun jobs) so it survives truncation."""
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.label] = counts.get(run.label, 0) + 1
    out = {}
    for run in runs:
        label = run.label
        if counts[label] > 1:
            tag = f"job {run.path.name}" if run.path.name.isdigit() else run.path.name
            label = f"{tag}: {label}"
        out[id(run)] = label
    return out
