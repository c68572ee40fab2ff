"""``kdyn-train``: continual (pre)training of any causal-LM checkpoint, configured by Hydra.

compose (conf/train.yaml) → load model + corpus (validated before anything runs) → callbacks,
loggers, Trainer → ``fit`` (resuming from ``checkpoints/last.ckpt`` when the run folder has one) →
``results.json`` + a summary table.
"""

from __future__ import annotations

import sys
from typing import Any

import hydra
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from kdyn import launch, run
from kdyn.config import CONF_DIR
from kdyn.launch import checkpoint_step  # noqa: F401 - still importable as kdyn.train.checkpoint_step
from kdyn.utils.entry import RunStarted, check_group_choices, run_entry


def train(cfg: DictConfig, state: RunStarted | None = None, extra_callbacks: list | None = None) -> dict[str, Any]:
    """Run one training job described by a composed ``train`` config; returns its results.

    ``extra_callbacks`` (Python API only) are added to the configured ones, e.g. a `StepTimer`.
    """
    # 1. Everything that can be wrong with the input fails here, before a run folder holds anything:
    #    validate, seed, ensure + load the model, datamodule, module, intervention, callbacks, loggers,
    #    Trainer, the stream fitted to it (run length, injection plan).
    state = state or RunStarted()
    job = launch.build_train_job(cfg, pretrain=train, extra_callbacks=extra_callbacks)

    # 2. Train (resuming when this run folder already holds a checkpoint of the same config).
    ckpt = run.resume_path(cfg)
    state.started = True
    launch.write_run_record(job)  # the config compared on resume, intervention.json, injections.csv
    if ckpt:
        launch.resume_loggers(job.loggers, ckpt)  # metrics.csv keeps the rows measured up to the checkpoint
    preempted = False
    try:
        job.trainer.fit(job.module, datamodule=job.datamodule, ckpt_path=ckpt, weights_only=False)
    except SIGTERMException:  # PreemptionCheckpoint saved last.ckpt: report it, then exit EXIT_INTERRUPTED
        preempted = True
    finally:
        run.finish_loggers(job.loggers)

    # 3. Summarise: results.json (each part adds its own section) and the summary table.
    results = launch.collect_results(job, preempted)
    if preempted:
        launch.requeue_and_exit(job.callbacks)
    return results


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def _hydra_main(cfg: DictConfig) -> Any:
    return run_entry("kdyn-train", train, cfg)


def main() -> None:
    check_group_choices("kdyn-train", sys.argv[1:])
    _hydra_main()


if __name__ == "__main__":
    main()
