"""Save ``checkpoints/last.ckpt`` when the job is asked to stop (SIGTERM: SLURM pre-emption or time
limit), so a requeued or rerun job resumes exactly where this one stopped.

Lightning turns SIGTERM into an exception at the end of the current optimizer step (after every
callback of that step ran), which reaches ``on_exception`` on every rank; the checkpoint is saved
there, collectively, before the process exits. ``kdyn-train`` then writes ``results.json`` with
``"status": "interrupted"`` (``kdyn-report`` lists the run as interrupted, resumable) and exits with
status 143 (:data:`kdyn.errors.EXIT_INTERRUPTED`). The checkpoint is written atomically (temporary
name, then rename: :class:`kdyn.utils.atomic_checkpoint.AtomicCheckpointIO`) over the one ``last.ckpt``
that ``ModelCheckpoint`` also writes (``enable_version_counter: false``), so it always holds the newest step.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)


class PreemptionCheckpoint(pl.Callback):
    def __init__(self, dirpath: str, filename: str = "last.ckpt"):
        self.path = Path(dirpath) / filename

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(str(self.path))
        log.warning("stopped by SIGTERM after step %d: saved %s; rerun the same command (or requeue) to resume",
                    trainer.global_step, self.path)
