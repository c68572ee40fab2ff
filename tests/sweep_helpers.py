"""A callback that fails a training job mid-run like an out-of-memory error does (for tests/test_sweeps.py)."""

from __future__ import annotations

import lightning.pytorch as pl


class FailAtStep(pl.Callback):
    """Raise ``RuntimeError("CUDA out of memory …")`` when training reaches ``step``."""

    def __init__(self, step: int = 0):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step >= self.step:
            raise RuntimeError(f"CUDA out of memory at step {trainer.global_step} (simulated by the test)")


class KillAtStep(pl.Callback):
    """Kill the job's process outright (SIGKILL, as the kernel's out-of-memory killer does) at ``step``."""

    def __init__(self, step: int = 0):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step >= self.step:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGKILL)
