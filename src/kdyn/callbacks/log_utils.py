"""Write scalars straight to the run's loggers at an explicit step.

kdyn's callbacks log the state of the model after ``step`` optimizer updates (``step`` =
``trainer.global_step``), once, when they measure it. Going through ``LightningModule.log`` would
re-emit a callback's last value on every later batch and forbids logging in ``on_train_start``.
"""

from __future__ import annotations

from collections.abc import Mapping

import lightning.pytorch as pl
import torch


def log_scalars(trainer: pl.Trainer, values: Mapping[str, float | torch.Tensor], step: int | None = None) -> None:
    if not trainer.is_global_zero or not trainer.loggers:
        return
    plain = {k: float(v.item() if isinstance(v, torch.Tensor) else v) for k, v in values.items()}
    step = trainer.global_step if step is None else step
    for logger in trainer.loggers:
        logger.log_metrics(plain, step=step)
