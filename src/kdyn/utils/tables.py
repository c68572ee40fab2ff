"""Resumable per-step tables: CSV files with a ``step`` column that a resumed run cuts back.

A run resumed from a checkpoint at step s trains the steps after s again, so every per-step table
keeps only the rows measured up to s (:func:`restart_table`), and the run appends from there: the
resumed table then equals an uninterrupted run's, row for row.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from pathlib import Path

from kdyn.utils.io import atomic_write_text

Row = dict[str, str]


def rows_until(path: str | Path, step: int, keep: Callable[[Row, int], bool] | None = None) -> list[Row]:
    """The rows of the CSV ``path`` measured up to ``step`` (``keep(row, step)`` decides, when given;
    by default ``int(row["step"]) <= step``); [] when the file does not exist."""
    path = Path(path)
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return [r for r in rows if (keep(r, step) if keep is not None else _step_of(r) <= step)]


def restart_table(path: str | Path, columns: Sequence[str], step: int) -> list[Row]:
    """Start the table ``path`` at training step ``step``: a header only at step 0 (or when there is
    no table yet), else the header and the rows measured up to ``step``. Returns the kept rows."""
    kept = rows_until(path, step) if step > 0 else []
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns))
    writer.writeheader()
    writer.writerows(kept)
    atomic_write_text(path, buffer.getvalue())
    return kept


def _step_of(row: Row) -> int:
    return int(float(row["step"]))
