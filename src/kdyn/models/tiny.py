"""The embedded tiny model: a small OLMo-architecture LM that kdyn pretrains itself, offline.

``kdyn-train experiment=tiny_pretrain`` trains it from scratch (``model=scratch``: a fresh model and
a byte-level BPE tokenizer trained on the same synthetic corpus) and saves Hugging Face checkpoints
on a roughly logarithmic step grid. ``model=tiny`` uses that trajectory. This module only *finds* it:
loading never trains. The entry points build it on first use (:func:`kdyn.organism.ensure_model`).

A trajectory lives in ``<model.trajectory_dir>/tiny-<fingerprint>/`` where the fingerprint hashes
everything that shapes the weights (architecture, corpus, data, optimizer, steps, seed) and the
*build environment* (:func:`build_environment`: the versions of torch, transformers, tokenizers,
lightning, numpy and Python, torch's CPU kernel level, and a hash of the synthetic-world generator's
source), so changing ``model.pretrain_overrides`` or ``model.pretrain_seed``, or upgrading a library
that shapes the weights or the tokenizer, builds a new trajectory instead of silently reusing another
one:

    tiny-3f2a9c1e/
      trajectory.json      {"steps": [0, 25, …], "fingerprint": …, "config": {…}}
      step0/ step25/ …     save_pretrained folders (model + tokenizer): usable with model=local
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from kdyn.data import world
from kdyn.errors import KdynError
from kdyn.models.checkpoints import CheckpointRef, model_family, nearest_steps

TRAJECTORY_FILE = "trajectory.json"
# Config nodes of the pretraining run that determine the trajectory's weights.
_FINGERPRINT_KEYS = ("model", "corpus", "data", "optim", "seed", "trainer.max_steps", "trainer.precision",
                     "trainer.accumulate_grad_batches", "trainer.gradient_clip_val", "callbacks.hf_trajectory.steps")
# Keys of those nodes that do not shape the weights (bookkeeping).
_NOT_FINGERPRINTED = ("revision_lock",)
# Keys added to those nodes after trajectories were first fingerprinted: hashed only when they differ
# from these values (the choice every existing trajectory was built with), so its folder stays valid.
_FINGERPRINTED_IF_CHANGED = {"optim": {"_target_": "torch.optim.AdamW", "_partial_": True},
                             "model": {"resolver": "kdyn.models.checkpoints.resolve_scratch"}}
# Libraries whose versions shape the weights (kernels, initialisation, optimiser) or the tokenizer.
_SHAPING_LIBRARIES = ("torch", "transformers", "tokenizers", "lightning", "numpy")
# Modules whose source generates the synthetic world the tokenizer and the model are trained on.
_WORLD_MODULES = (world.__name__, *world.SOURCE_MODULES)


# ----------------------------------------------------------------------------------- trajectories
def pretrain_config(model_cfg: Mapping[str, Any]):
    """The composed ``experiment=tiny_pretrain`` config this tiny model is (or will be) built from."""
    from kdyn.config import compose_config

    overrides = ["experiment=tiny_pretrain", "logger=csv"]
    seed = model_cfg.get("pretrain_seed")
    if seed is not None:  # a different organism: other initial weights and another data order
        try:
            seed = int(seed)
        except (TypeError, ValueError):
            raise KdynError(f"model.pretrain_seed={seed!r} is not an integer; use e.g. model.pretrain_seed=1") from None
        overrides += [f"seed={seed}", f"model.init_seed={seed}"]
    overrides += [str(o) for o in (model_cfg.get("pretrain_overrides") or [])]
    return compose_config("train", overrides)


def build_environment() -> dict[str, str]:
    """What of the software and machine shapes the trajectory's bytes (part of its fingerprint)."""
    import importlib
    import importlib.metadata
    import inspect
    import platform

    import torch

    env = {}
    for name in _SHAPING_LIBRARIES:
        try:
            env[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            env[name] = "absent"
    env["python"] = ".".join(platform.python_version_tuple()[:2])
    env["machine"] = platform.machine()
    env["torch_cpu_capability"] = str(torch.backends.cpu.get_cpu_capability())
    source = "".join(inspect.getsource(importlib.import_module(m)) for m in _WORLD_MODULES)
    env["world_generator"] = hashlib.sha256(source.encode()).hexdigest()[:12]
    return env


def fingerprint(pretrain_cfg, environment: Mapping[str, str] | None = None) -> str:
    picked = {}
    for key in _FINGERPRINT_KEYS:
        node = OmegaConf.select(pretrain_cfg, key)
        value = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
        if isinstance(value, dict):
            same = _FINGERPRINTED_IF_CHANGED.get(key, {})
            value = {k: v for k, v in value.items() if k not in _NOT_FINGERPRINTED
                     and not (k in same and v == same[k])}
        picked[key] = value
    picked["environment"] = dict(build_environment() if environment is None else environment)
    blob = json.dumps(picked, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:10]


def trajectory_root(model_cfg: Mapping[str, Any]) -> Path:
    root = model_cfg.get("trajectory_dir")
    if not root:
        raise KdynError("model.trajectory_dir is not set (the folder where the tiny model's trajectory lives)")
    return Path(str(root)).expanduser()


def read_trajectory(folder: Path) -> dict[str, Any] | None:
    path = folder / TRAJECTORY_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def is_tiny(model_cfg: Mapping[str, Any]) -> bool:
    """Whether ``model_cfg`` names the embedded tiny model (``model=tiny`` or ``model.family=tiny``)."""
    return model_family(model_cfg) == "tiny"


def trajectory_folder(model_cfg: Mapping[str, Any], pretrain_cfg=None) -> Path:
    """Where the trajectory of ``model_cfg`` lives (built or not): ``<trajectory_dir>/tiny-<fingerprint>``."""
    cfg = pretrain_config(model_cfg) if pretrain_cfg is None else pretrain_cfg
    return trajectory_root(model_cfg) / f"tiny-{fingerprint(cfg)}"


def resolve_tiny(model_cfg: Mapping[str, Any]) -> CheckpointRef:
    """``model=tiny model.step=N`` → the saved checkpoint folder of step N (default: the last)."""
    folder = trajectory_folder(model_cfg)
    record = read_trajectory(folder)
    if record is None:
        raise KdynError(f"the tiny model's trajectory is not built yet ({folder}); loading never trains: from Python "
                        "call kdyn.organism.ensure_model(model_cfg, pretrain=kdyn.train.train) before loading it "
                        "(every kdyn command with model=tiny does this, pretraining it once on first use)")
    steps = [int(s) for s in record["steps"]]
    step = model_cfg.get("step")
    if step is None:
        step = steps[-1]
    else:
        try:
            step = int(step)
        except (TypeError, ValueError):
            raise KdynError(f"model.step={step!r} is not an integer step") from None
    if step not in steps:
        below, above = nearest_steps(steps, step)
        near = ", ".join(str(s) for s in (below, above) if s is not None)
        raise KdynError(f"the tiny model has no checkpoint at step {step}; saved steps are {steps} (nearest: {near})")
    return CheckpointRef(name=str(model_cfg.get("name", "tiny")), family="tiny", location=str(folder / f"step{step}"),
                         revision=None, step=step)
