"""The embedded tiny model's trajectory is built here, by the entry points — never by model loading.

Every entry point that loads a model (``kdyn-train``, ``kdyn-entropy``, ``kdyn-eval``, ``kdyn-trace``,
``kdyn-prepare``) calls :func:`ensure_model` before :func:`kdyn.models.loading.load_model`. For
``model=tiny`` it pretrains the trajectory on first use (one log line, under a file lock so that the
jobs of a sweep build it once); for every other model it does nothing. ``kdyn.models.tiny`` only
*finds* a built trajectory. The training job is passed in (``pretrain``: :func:`kdyn.train.train`),
so this module sits below the entry points and nothing under ``kdyn.models`` imports one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from kdyn.errors import KdynError
from kdyn.models.tiny import (
    TRAJECTORY_FILE,
    build_environment,
    is_tiny,
    pretrain_config,
    read_trajectory,
    trajectory_folder,
)
from kdyn.utils.io import exclusive_lock

log = logging.getLogger("kdyn.organism")

Pretrain = Callable[[DictConfig], Any]


def ensure_model(model_cfg: Mapping[str, Any], pretrain: Pretrain) -> None:
    """Make the model ``model_cfg`` names loadable: builds the tiny trajectory when it is missing."""
    if is_tiny(model_cfg):
        ensure_trajectory(model_cfg, pretrain)


def ensure_trajectory(model_cfg: Mapping[str, Any], pretrain: Pretrain) -> Path:
    """The folder of the tiny trajectory; pretrains it (once, under a file lock) when missing."""
    cfg = pretrain_config(model_cfg)
    folder = trajectory_folder(model_cfg, cfg)
    if read_trajectory(folder) is not None:
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(folder.with_suffix(".lock")):
        if read_trajectory(folder) is not None:  # another process built it while we waited
            return folder
        _build_trajectory(cfg, folder, pretrain)
    return folder


def _build_trajectory(cfg: DictConfig, folder: Path, pretrain: Pretrain) -> None:
    staging = folder.with_name(folder.name + ".building")
    shutil.rmtree(staging, ignore_errors=True)
    steps = list(cfg.callbacks.hf_trajectory.steps)
    log.info("tiny model trajectory not found: pretraining it once (%d steps, saves at %s) into %s",
             cfg.trainer.max_steps, steps, folder)
    OmegaConf.update(cfg, "paths.output_dir", str(staging / "run"), force_add=True)
    OmegaConf.update(cfg, "callbacks.hf_trajectory.dirpath", str(staging), force_add=True)
    start = time.time()
    with caller_random_state_kept():  # the run that asked for the model goes on as if it had been cached
        pretrain(cfg)
    record = read_trajectory(staging)
    if record is None:
        raise KdynError(f"pretraining the tiny model finished but wrote no {TRAJECTORY_FILE} in {staging}")
    record.update(fingerprint=folder.name.removeprefix("tiny-"), build_seconds=round(time.time() - start, 1),
                  environment=build_environment(), config=OmegaConf.to_container(cfg, resolve=True))
    (staging / TRAJECTORY_FILE).write_text(json.dumps(record, indent=2))
    staging.rename(folder)
    log.info("tiny model trajectory ready in %.0f s: %s", time.time() - start, folder)



#: What ``lightning.seed_everything`` sets in the environment (the nested pretraining reseeds).
_SEED_ENV = ("PL_GLOBAL_SEED", "PL_SEED_WORKERS")


@contextlib.contextmanager
def caller_random_state_kept() -> Iterator[None]:
    """Restore Python's, numpy's and torch's random states (and Lightning's seed variables) on exit.

    Pretraining the tiny model on first use reseeds every generator with its own seed; without this
    the run that triggered it would continue from another random state than the same command run
    once the model is cached.
    """
    py, np_state = random.getstate(), np.random.get_state()
    env = {key: os.environ.get(key) for key in _SEED_ENV}
    try:
        with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if torch.cuda.is_available() else []):
            yield
    finally:
        random.setstate(py)
        np.random.set_state(np_state)
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
