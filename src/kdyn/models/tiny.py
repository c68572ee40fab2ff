"""The embedded tiny model: a small OLMo-architecture LM that kdyn pretrains itself, offline.

``kdyn-train experiment=tiny_pretrain`` trains it from scratch (``model=scratch``: a fresh model and
a byte-level BPE tokenizer trained on the same synthetic corpus) and saves Hugging Face checkpoints
on a roughly logarithmic step grid. ``model=tiny`` uses that trajectory, building it on first use.

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

import contextlib
import fcntl
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from kdyn.errors import KdynError
from kdyn.models.checkpoints import CheckpointRef, nearest_steps

log = logging.getLogger(__name__)

TRAJECTORY_FILE = "trajectory.json"
# Config nodes of the pretraining run that determine the trajectory's weights.
_FINGERPRINT_KEYS = ("model", "corpus", "data", "optim", "seed", "trainer.max_steps", "trainer.precision",
                     "trainer.accumulate_grad_batches", "trainer.gradient_clip_val", "callbacks.hf_trajectory.steps")
# Keys of those nodes that do not shape the weights (bookkeeping).
_NOT_FINGERPRINTED = ("revision_lock",)
# Libraries whose versions shape the weights (kernels, initialisation, optimiser) or the tokenizer.
_SHAPING_LIBRARIES = ("torch", "transformers", "tokenizers", "lightning", "numpy")
# Modules whose source generates the synthetic world the tokenizer and the model are trained on.
_WORLD_MODULES = ("kdyn.data.world", "kdyn.data.world_templates")


# ----------------------------------------------------------------------------------- scratch models
def build_scratch(model_cfg: Mapping[str, Any], corpus_cfg: Mapping[str, Any] | None):
    """A fresh model (``model.arch``) and a BPE tokenizer trained on ``corpus_cfg``'s documents."""
    from kdyn.data.corpora import load_documents
    from kdyn.data.tokenizer import train_bpe_tokenizer
    from kdyn.models.scratch import build_scratch_model, spec_from_mapping

    if corpus_cfg is None:
        raise KdynError("model=scratch needs a corpus to train its tokenizer on")
    tokenizer = train_bpe_tokenizer(load_documents(corpus_cfg), int(model_cfg.get("tokenizer_vocab_size", 2048)))
    arch = dict(model_cfg.get("arch") or {})
    arch.update(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = build_scratch_model(spec_from_mapping(arch), seed=int(model_cfg.get("init_seed", 0)))
    return model, tokenizer


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
            value = {k: v for k, v in value.items() if k not in _NOT_FINGERPRINTED}
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


def ensure_trajectory(model_cfg: Mapping[str, Any]) -> Path:
    """The folder of the tiny trajectory; pretrains it (once, under a file lock) when missing."""
    cfg = pretrain_config(model_cfg)
    folder = trajectory_root(model_cfg) / f"tiny-{fingerprint(cfg)}"
    if read_trajectory(folder) is not None:
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(folder.with_suffix(".lock")):
        if read_trajectory(folder) is not None:  # another process built it while we waited
            return folder
        _build_trajectory(cfg, folder)
    return folder


def _build_trajectory(cfg, folder: Path) -> None:
    from kdyn.train import train

    staging = folder.with_name(folder.name + ".building")
    shutil.rmtree(staging, ignore_errors=True)
    steps = list(cfg.callbacks.hf_trajectory.steps)
    log.info("tiny model trajectory not found: pretraining it once (%d steps, saves at %s) into %s",
             cfg.trainer.max_steps, steps, folder)
    OmegaConf.update(cfg, "paths.output_dir", str(staging / "run"), force_add=True)
    OmegaConf.update(cfg, "callbacks.hf_trajectory.dirpath", str(staging), force_add=True)
    start = time.time()
    train(cfg)
    record = read_trajectory(staging)
    if record is None:
        raise KdynError(f"pretraining the tiny model finished but wrote no {TRAJECTORY_FILE} in {staging}")
    record.update(fingerprint=folder.name.removeprefix("tiny-"), build_seconds=round(time.time() - start, 1),
                  environment=build_environment(), config=OmegaConf.to_container(cfg, resolve=True))
    (staging / TRAJECTORY_FILE).write_text(json.dumps(record, indent=2))
    staging.rename(folder)
    log.info("tiny model trajectory ready in %.0f s: %s", time.time() - start, folder)


def resolve_tiny(model_cfg: Mapping[str, Any]) -> CheckpointRef:
    """``model=tiny model.step=N`` → the saved checkpoint folder of step N (default: the last)."""
    folder = ensure_trajectory(model_cfg)
    steps = [int(s) for s in read_trajectory(folder)["steps"]]
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


@contextlib.contextmanager
def _file_lock(path: Path):
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
