"""Per-step wall time: the interval between consecutive batch starts (all hooks, data and the
optimizer step included). ``torch.cuda.synchronize`` is called only when ``sync_cuda`` is set, so
the timer itself adds no host sync by default."""

from __future__ import annotations

import statistics
import time

import lightning.pytorch as pl
import torch


class StepTimer(pl.Callback):
    def __init__(self, sync_cuda: bool = False, skip_first: int = 1):
        self.sync_cuda = sync_cuda
        self.skip_first = skip_first
        self.times: list[float] = []
        self._last: float | None = None

    def _now(self) -> float:
        if self.sync_cuda and torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        now = self._now()
        if self._last is not None:
            self.times.append(now - self._last)
        self._last = now

    def on_train_end(self, trainer, pl_module) -> None:
        if self._last is not None:
            self.times.append(self._now() - self._last)
        self._last = None

    def median(self) -> float | None:
        kept = self.times[self.skip_first:] or self.times
        return statistics.median(kept) if kept else None
