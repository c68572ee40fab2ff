"""Between building the Trainer and ``Trainer.fit``: what needs the Trainer (its world size,
accumulation, launcher) and must still fail before the run folder holds anything.

- :func:`check_launch`: refuse a launch that cannot work (local multirun + DDP);
- :func:`fit_stream`: fit the training stream to the Trainer — the run length of segmented corpora,
  the knowledge-injection schedule, the checks of ``corpus=pretraining``;
- :func:`checkpoint_step`, :func:`resume_loggers`: the step of the checkpoint a run resumes from, and
  the loggers cut back to it;
- after ``fit`` stopped on SIGTERM: :func:`interrupted_section` of ``results.json`` and
  :func:`requeue_and_exit` (exit status ``EXIT_INTERRUPTED``).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from omegaconf import DictConfig

from kdyn.config import to_plain
from kdyn.errors import EXIT_INTERRUPTED, KdynError

log = logging.getLogger("kdyn.train")  # these lines belong to the training job's log


def fit_stream(cfg: DictConfig, trainer: Any, datamodule: Any, loaded: Any):
    """Fit ``datamodule``'s stream to ``trainer``; returns the injection plan (None: no injection)."""
    _set_run_length(trainer, datamodule)
    plan = _injection_plan(cfg, loaded.tokenizer, trainer, datamodule)
    if hasattr(datamodule.rows, "note_global_batch"):  # corpus=pretraining (token ids checked by the datamodule)
        per_step = int(cfg.data.batch_size) * trainer.world_size * trainer.accumulate_grad_batches
        datamodule.rows.note_global_batch(per_step)
        if datamodule.rows.label_token:  # the last transform: injection writes into the whole rows first
            from kdyn.data.pretraining import split_label_token

            datamodule.transforms.append(split_label_token)
    return plan


def check_launch(trainer) -> None:
    """Local multirun + DDP re-executes the sweep in every extra rank (Lightning #11300): refuse it."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
            return
        launcher = str(HydraConfig.get().launcher.get("_target_", ""))
    except Exception:  # noqa: BLE001 - outside Hydra nothing to check
        return
    strategy = type(trainer.strategy).__name__
    if trainer.world_size > 1 and launcher.endswith("BasicLauncher") and "Spawn" not in strategy:
        raise KdynError(
            "a local multirun cannot run DDP: Lightning re-executes the command line for every extra rank, which "
            "would restart the whole sweep. Launch DDP sweeps with hydra/launcher=slurm (srun starts the ranks), "
            "run DDP jobs one at a time without -m, or use trainer.strategy=ddp_spawn for a local test")


def checkpoint_step(path: str) -> int:
    """The global step of a Lightning checkpoint, read without loading its tensors."""
    try:
        return int(torch.load(path, map_location="cpu", mmap=True, weights_only=False)["global_step"])
    except Exception as e:  # noqa: BLE001 - truncated, corrupted or not a Lightning checkpoint
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise KdynError(f"cannot read the checkpoint {path} ({reason}): it is truncated or corrupted (a job killed "
                        "while saving?); start over with resume=false (the earlier files move to replaced/<time>/) "
                        "or delete the file") from None


def _set_run_length(trainer, datamodule) -> None:
    """Segmented corpora (TemporalWiki periods) define the run's length; a smaller positive
    ``trainer.max_steps`` cuts it short (with a warning naming the periods left out)."""
    segments = datamodule.segments(trainer)
    if segments is None:
        return
    total = datamodule.total_steps(trainer)
    if total < segments[-1].end_step:
        left_out = [s.name for s in segments if s.end_step > total]
        log.warning("trainer.max_steps=%d stops before the end of the periods (%d steps); not completed: %s",
                    total, segments[-1].end_step, ", ".join(left_out))
    else:
        log.info("corpus=%s: %d periods in %d steps (%s)", datamodule.corpus.get("name"), len(segments), total,
                 ", ".join(f"{s.name}: {s.num_steps}" for s in segments))
    trainer.fit_loop.epoch_loop.max_steps = total


def _injection_plan(cfg: DictConfig, tokenizer, trainer, datamodule):
    """The knowledge-injection schedule of ``cfg.inject`` (validated), attached to the training stream."""
    if not cfg.inject.get("enabled"):
        return None
    from kdyn.data.injection import plan_from_config
    from kdyn.data.knowledge import assign_scenarios, knowledge_records

    items = assign_scenarios(knowledge_records(to_plain(cfg.inject.source)), to_plain(cfg.inject.scenarios),
                             int(cfg.inject.num_events))
    global_batch = int(cfg.data.batch_size) * trainer.world_size * int(trainer.accumulate_grad_batches)
    plan = plan_from_config(to_plain(cfg.inject), items, tokenizer, seq_len=int(cfg.data.seq_len),
                            global_batch_size=global_batch, max_steps=datamodule.total_steps(trainer))
    datamodule.transforms.append(plan)
    return plan


def resume_loggers(loggers: list[Any], ckpt: str) -> int:
    """Loggers that keep earlier rows keep those measured up to the checkpoint ``ckpt``; returns its step."""
    from kdyn.loggers import ResumableCSVLogger

    step = checkpoint_step(ckpt)
    log.info("resuming from %s (step %d)", ckpt, step)
    for logger in loggers:
        if isinstance(logger, ResumableCSVLogger):
            logger.keep_rows_until(step)
    return step


def interrupted_section(out: Any, steps: int) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """``results.json["interrupted"]`` of a run stopped by SIGTERM, and its line of the summary table."""
    section = {"signal": "SIGTERM", "checkpoint": str(out / "checkpoints" / "last.ckpt"),
               "exit_code": EXIT_INTERRUPTED, "resume": "rerun the same command or requeue the job"}
    rows = [("resume", f"stopped by SIGTERM after step {steps}; checkpoint saved: rerun the same command (or "
                       "requeue) to continue")]
    return section, rows


def requeue_and_exit(callbacks: list[Any]) -> None:
    """A launcher's requeue signal (submitit): requeue now (it exits the job); else exit EXIT_INTERRUPTED."""
    for callback in callbacks:
        if getattr(callback, "requeue", None) is not None:
            callback.requeue()
    raise SystemExit(EXIT_INTERRUPTED)
