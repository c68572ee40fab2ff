"""A CSV logger that keeps the metrics of earlier attempts when a run is resumed.

Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` when it starts. kdyn resumes runs in
their own folder, so this subclass reads the earlier rows first and writes back those measured up to
the checkpoint it resumes from: every row of a step below it, and the rows of the checkpoint's own step
that were logged before the checkpoint was saved (kdyn's ``log_scalars`` rows: learning rate, tokens,
entropy, probes). Lightning's own rows (``self.log``: ``train/loss``, with an ``epoch`` column) of that
step belong to the batch trained *after* the checkpoint, which the resumed run trains and logs again.
"""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.loggers import CSVLogger

from kdyn.utils.tables import rows_until


class ResumableCSVLogger(CSVLogger):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.resume_step: int | None = None
        self._kept_rows: list[dict] | None = None

    def keep_rows_until(self, step: int) -> None:
        """Call before training when resuming from a checkpoint at ``step``."""
        self.resume_step = int(step)
        self._kept_rows = rows_until(Path(self.log_dir) / "metrics.csv", self.resume_step, keep=_keep)

    @property
    def experiment(self):
        fresh = self._experiment is None
        writer = super().experiment
        if fresh and self._kept_rows:
            parsed = [{k: _number(v) for k, v in row.items() if v not in ("", None)} for row in self._kept_rows]
            writer.metrics = parsed + writer.metrics
            for row in parsed:
                for key in row:
                    if key not in writer.metrics_keys:
                        writer.metrics_keys.append(key)
            writer.metrics_keys.sort()
            self._kept_rows = None
        return writer


def _keep(row: dict, step: int) -> bool:
    try:
        row_step = int(float(row.get("step", "")))
    except ValueError:
        return False
    if row_step > step:
        return False
    if row_step == step:  # Lightning's rows of step s (they carry "epoch") belong to batch s, trained again
        return row.get("epoch") in ("", None)
    return True


def _number(value: str):
    try:
        number = float(value)
    except ValueError:
        return value
    return int(number) if number.is_integer() and "." not in value and "e" not in value.lower() else number
