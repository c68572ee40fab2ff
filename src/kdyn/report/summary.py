"""``summary.csv`` of a report: every run's row (:func:`kdyn.report.table.summary_row`) with its seed
condition (:mod:`kdyn.report.seeds`) and the steps whose weights are identical (:mod:`kdyn.report.integrity`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from kdyn.report.collect import Run
from kdyn.report.integrity import duplicate_steps
from kdyn.report.seeds import group_of, seed_groups
from kdyn.report.table import csv_text, summary_columns, summary_row
from kdyn.utils.io import atomic_write_text


def summary_csv(runs: Sequence[Run]) -> str:
    rows = [summary_row(r) for r in runs]
    duplicates = duplicate_steps(runs)
    groups = group_of(seed_groups(runs))
    for run, row in zip(runs, rows):
        if id(run) in groups:  # the condition this run is a seed of, and how many seeds it has
            row["condition"], row["n_seeds"] = groups[id(run)].label, groups[id(run)].n_seeds
        if id(run) in duplicates:
            row["identical_weights_as"] = "steps " + " ".join(str(s) for s in duplicates[id(run)])
    return csv_text(rows, summary_columns(rows))


def write_summary(runs: Sequence[Run], out_dir: str | Path) -> Path:
    """Write ``<out_dir>/summary.csv`` atomically; returns its path."""
    return atomic_write_text(Path(out_dir) / "summary.csv", summary_csv(runs))
