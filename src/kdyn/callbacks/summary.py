"""Collects what a run's ``results.json`` summarises: losses, tokens, wall time (no per-step host sync)."""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl
import torch


class RunSummary(pl.Callback):
    """Keeps the training losses as detached tensors and reads them once, at the end."""

    def __init__(self) -> None:
        self.losses: list[torch.Tensor] = []
        self.start_time: float | None = None
        self.end_time: float | None = None
        self.start_step = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start_time = time.perf_counter()
        self.start_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs: Any, batch: Any, batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None:
            self.losses.append(loss.detach())

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.end_time = time.perf_counter()

    def summary(self, pl_module: pl.LightningModule, trainer: pl.Trainer) -> dict[str, Any]:
        losses = torch.stack(self.losses).float().cpu() if self.losses else torch.empty(0)
        wall = (self.end_time or time.perf_counter()) - (self.start_time or time.perf_counter())
        tokens = int(pl_module.tokens_seen.item())
        return {
            "steps": int(trainer.global_step),
            "steps_this_session": int(trainer.global_step - self.start_step),
            "final_loss": float(losses[-1]) if len(losses) else None,
            "final_loss_mean10": float(losses[-10:].mean()) if len(losses) else None,
            "first_loss": float(losses[0]) if len(losses) else None,
            "tokens_seen": tokens,
            "train_wall_time_s": round(wall, 3),
            "tokens_per_s": round(len(self.losses) and tokens / max(wall, 1e-9), 1),
        }
