"""Save ``checkpoints/last.ckpt`` when the job is asked to stop (SIGTERM: SLURM pre-emption or time
limit), so a requeued or rerun job resumes exactly where this one stopped.

Lightning turns SIGTERM into an exception at the end of the current optimizer step (after every
callback of that step ran), which reaches ``on_exception`` on every rank; the checkpoint is saved
there, collectively, before the process exits. ``kdyn-train`` then writes ``results.json`` with
``"status": "interrupted"`` (``kdyn-report`` lists the run as interrupted, resumable) and exits with
status 143 (:data:`kdyn.errors.EXIT_INTERRUPTED`). The checkpoint is written atomically (temporary
name, then rename: :class:`kdyn.utils.atomic_checkpoint.AtomicCheckpointIO`) over the one ``last.ckpt``
that ``ModelCheckpoint`` also writes (``enable_version_counter: false``), so it always holds the newest step.

Under submitit (``hydra/launcher=slurm``) SLURM's warning signal (``USR2``, ``signal_delay_s`` before the
time limit or on pre-emption) reaches submitit's handler, which requeues the job and exits at once —
mid-step, before any checkpoint. This callback defers that handler to the end of the current step: the
signal stops training like SIGTERM does (checkpoint saved), and ``kdyn-train`` then calls submitit's
handler (:attr:`requeue`), which requeues the job (``max_num_timeout`` times) and exits; the requeued job
resumes from that checkpoint.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)


class PreemptionCheckpoint(pl.Callback):
    def __init__(self, dirpath: str, filename: str = "last.ckpt"):
        self.path = Path(dirpath) / filename
        self.requeue: Callable[[], None] | None = None  # the launcher's requeue, once its signal came
        self._deferred: tuple[signal.Signals, object] | None = None

    # ------------------------------------------------------------------ submitit's requeue signal
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        name = "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2").upper().removeprefix("SIG")
        sig = getattr(signal.Signals, name, None)
        try:
            handler = signal.getsignal(sig) if sig is not None else None
        except ValueError:  # not the main thread
            return
        if getattr(handler, "__name__", "") != "checkpoint_and_try_requeue":  # submitit's requeue handler
            return

        def defer(signum, frame):
            self.requeue = lambda: handler(signum, frame)
            trainer._signal_connector.received_sigterm = True  # stop at the end of this step, like SIGTERM
            log.warning("received %s (pre-emption / time limit): checkpointing at the end of this step, then "
                        "requeueing", signal.Signals(signum).name)

        signal.signal(sig, defer)
        self._deferred = (sig, handler)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._restore()

    def _restore(self) -> None:
        if self._deferred is not None:
            sig, handler = self._deferred
            signal.signal(sig, handler)
            self._deferred = None

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore()
        if not isinstance(exception, SIGTERMException):
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(str(self.path))
        log.warning("stopped by SIGTERM after step %d: saved %s; rerun the same command (or requeue) to resume",
                    trainer.global_step, self.path)
