"""Collects what a run's ``results.json`` summarises: losses, tokens, wall time (no per-step host sync).

Losses stay detached device tensors until the end. The first loss, the last ten losses and the
training wall time are part of the callback's checkpoint state, so a resumed run reports the same
summary as an uninterrupted one.
"""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl
import torch

RECENT = 10


class RunSummary(pl.Callback):
    def __init__(self) -> None:
        self.first_loss: float | None = None  # from an earlier session, when resumed
        self.previous_recent: list[float] = []  # last losses of earlier sessions
        self.previous_wall = 0.0
        self.losses: list[torch.Tensor] = []  # this session's last losses, read once at the end
        self._first: torch.Tensor | None = None
        self.start_time: float | None = None
        self.end_time: float | None = None
        self.start_step: int | None = None  # None: this session trained nothing (a finished run rerun)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start_time = time.perf_counter()
        self.start_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs: Any, batch: Any, batch_idx: int) -> None:
        # the global batch's loss under DDP (CausalLMModule returns it next to this rank's loss)
        loss = outputs.get("global_loss", outputs["loss"]) if isinstance(outputs, dict) else outputs
        if loss is not None:
            if self.first_loss is None and self._first is None:
                self._first = loss.detach()
            self.losses.append(loss.detach())
            if len(self.losses) > RECENT:
                self.losses.pop(0)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.end_time = time.perf_counter()

    # ------------------------------------------------------------------------------ resume state
    def _session_losses(self) -> list[float]:
        if not self.losses:
            return []
        if self.first_loss is None and self._first is not None:
            self.first_loss = float(self._first)
        return torch.stack(self.losses).float().cpu().tolist()

    def _wall(self) -> float:
        session = 0.0 if self.start_time is None else (self.end_time or time.perf_counter()) - self.start_time
        return self.previous_wall + session

    def state_dict(self) -> dict[str, Any]:
        recent = (self.previous_recent + self._session_losses())[-RECENT:]
        return {"first_loss": self.first_loss, "recent": recent, "wall": self._wall()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.first_loss = state.get("first_loss")
        self.previous_recent = list(state.get("recent", []))
        self.previous_wall = float(state.get("wall", 0.0))

    # ------------------------------------------------------------------------------ summary
    def summary(self, pl_module: pl.LightningModule, trainer: pl.Trainer) -> dict[str, Any]:
        recent = (self.previous_recent + self._session_losses())[-RECENT:]
        wall = self._wall()
        tokens = int(pl_module.tokens_seen.item())
        return {
            "steps": int(trainer.global_step),
            "steps_this_session": 0 if self.start_step is None else int(trainer.global_step - self.start_step),
            "final_loss": recent[-1] if recent else None,
            "final_loss_mean10": sum(recent) / len(recent) if recent else None,
            "first_loss": self.first_loss,
            "tokens_seen": tokens,
            "train_wall_time_s": round(wall, 3),
            "tokens_per_s": round(tokens / wall, 1) if wall > 0 else None,
        }
