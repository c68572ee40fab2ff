"""Save Hugging Face ``save_pretrained`` folders: a pretraining trajectory, or the final model."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_only

from kdyn.utils.io import atomic_write_text

log = logging.getLogger(__name__)


def save_hf(pl_module: pl.LightningModule, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pl_module.model.save_pretrained(folder)
    tokenizer = getattr(pl_module, "tokenizer", None)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)


class SaveHFTrajectory(pl.Callback):
    """Saves ``<dirpath>/step<N>`` at each step in ``steps`` (step 0 = before any update) and
    writes ``<dirpath>/trajectory.json`` listing the steps saved so far."""

    def __init__(self, dirpath: str, steps: Sequence[int]):
        self.dirpath = Path(dirpath)
        self.steps = sorted({int(s) for s in steps})
        self.saved: list[int] = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._maybe_save(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._maybe_save(trainer, pl_module)

    @rank_zero_only
    def _maybe_save(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        step = trainer.global_step
        if step in self.steps and step not in self.saved:
            save_hf(pl_module, self.dirpath / f"step{step}")
            self.saved.append(step)
            atomic_write_text(self.dirpath / "trajectory.json", json.dumps({"steps": self.saved}, indent=2))
            log.info("saved trajectory checkpoint step%d", step)


class ExportFinalHF(pl.Callback):
    """At the end of training, saves the model and tokenizer to ``<dirpath>`` (usable with model=local)."""

    def __init__(self, dirpath: str):
        self.dirpath = Path(dirpath)

    @rank_zero_only
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        save_hf(pl_module, self.dirpath)
