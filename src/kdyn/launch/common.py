"""The steps every entry point shares (``kdyn-train``, ``kdyn-entropy``, ``kdyn-eval``, ``kdyn-trace``).

:func:`begin` (validate, seed, threads) → :func:`load_checkpoint` (build model=tiny on first use, then
load) → :func:`on_device` → :func:`measuring` (from here the run folder holds results; timed) →
:func:`write_result` (the result file, written atomically, and the printed summary).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from kdyn.utils.entry import RunStarted
from kdyn.utils.io import atomic_write_json
from kdyn.validation import validate_config


def begin(cfg: DictConfig, task: str, state: RunStarted | None = None, seed: bool = False) -> RunStarted:
    """Validate ``cfg`` as a ``task`` config (before anything else), seed everything (``seed``: from
    ``cfg.seed``), apply ``cfg.threads``; returns the run's state (``state``, or a new one)."""
    validate_config(cfg, task)
    if seed:
        import lightning.pytorch as pl

        pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    return state or RunStarted()


def load_checkpoint(model_cfg: dict[str, Any], pretrain: Callable[[DictConfig], Any], **load_args: Any) -> Any:
    """The model ``model_cfg`` names, loaded (``kdyn.models.loading.load_model(model_cfg, **load_args)``);
    model=tiny is pretrained once, on first use, by ``pretrain`` (:func:`kdyn.train.train`)."""
    from kdyn.models.loading import load_model
    from kdyn.organism import ensure_model

    ensure_model(model_cfg, pretrain=pretrain)
    return load_model(model_cfg, **load_args)


def on_device(loaded: Any, choice: str, key: str) -> tuple[torch.nn.Module, torch.device]:
    """The loaded model moved to the device ``choice`` (the config key ``key``: named in errors)."""
    from kdyn.utils.device import pick_device

    device = pick_device(choice, key)
    return loaded.model.to(device), device


@dataclass
class Clock:
    seconds: float = 0.0


@contextmanager
def measuring(state: RunStarted) -> Iterator[Clock]:
    """Mark the run started (its folder now holds results: kept on a later error) and time the block."""
    state.started = True
    clock = Clock()
    start = time.perf_counter()
    yield clock
    clock.seconds = time.perf_counter() - start


def write_result(path: Path, record: dict[str, Any], summary: str | None = None) -> dict[str, Any]:
    """Write ``record`` to ``path`` (atomically), print ``summary``; returns ``record``."""
    atomic_write_json(path, record)
    if summary is not None:
        print(summary, flush=True)
    return record
