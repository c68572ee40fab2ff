"""Checkpoint integrity: what a run loaded (commit + weight hashes), revision locks, identical steps,
and the tiny organism's bit-identical pretraining on one machine."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from kdyn.errors import KdynError
from kdyn.models.checkpoints import CheckpointRef
from kdyn.models.provenance import apply_lock, describe_checkpoint, describe_local, file_sha256

from .conftest import QUICK_TINY


def _hub_ref(revision="step3000"):
    return CheckpointRef(name="pythia-160m", family="pythia", location="EleutherAI/pythia-160m", revision=revision,
                         step=3000)


class FakeHub:
    """``HfApi.model_info(..., files_metadata=True)`` answering from a dict {revision: (commit, {file: sha256})}."""

    def __init__(self, branches):
        self.branches = branches
        self.calls = []

    def model_info(self, repo, revision=None, files_metadata=False):
        self.calls.append((repo, revision, files_metadata))
        commit, files = self.branches[revision]
        siblings = [SimpleNamespace(rfilename=name, size=100, blob_id="b" * 40,
                                    lfs=SimpleNamespace(sha256=sha, size=100, pointer_size=130)) for name, sha in files.items()]
        siblings.append(SimpleNamespace(rfilename="config.json", size=10, blob_id="c" * 40, lfs=None))
        return SimpleNamespace(sha=commit, siblings=siblings)


def test_file_sha256_streams_to_the_same_digest(tmp_path):
    data = bytes(range(256)) * 9000  # > 2 MiB: several chunks
    (tmp_path / "w.bin").write_bytes(data)
    assert file_sha256(tmp_path / "w.bin") == hashlib.sha256(data).hexdigest()


def test_hub_record_comes_from_file_metadata():
    hub = FakeHub({"step3000": ("a" * 40, {"model.safetensors": "1" * 64, "pytorch_model.bin": "2" * 64})})
    record = describe_checkpoint(_hub_ref(), api=hub)
    assert hub.calls == [("EleutherAI/pythia-160m", "step3000", True)]
    assert record["repo"] == "EleutherAI/pythia-160m" and record["requested_revision"] == "step3000"
    assert record["commit"] == "a" * 40
    assert {n: f["sha256"] for n, f in record["files"].items()} == {"model.safetensors": "1" * 64,
                                                                    "pytorch_model.bin": "2" * 64}
    # one fingerprint over the weight files, independent of their order
    expected = hashlib.sha256(json.dumps([["model.safetensors", "1" * 64], ["pytorch_model.bin", "2" * 64]]).encode())
    assert record["weights_sha256"] == expected.hexdigest()


def test_locked_hub_revision_fails_when_the_branch_moved(tmp_path):
    lock = tmp_path / "revisions.lock.json"
    before = FakeHub({"step3000": ("a" * 40, {"model.safetensors": "1" * 64})})
    pinned = apply_lock(lock, _hub_ref(), describe_checkpoint(_hub_ref(), api=before))
    assert pinned["commit"] == "a" * 40
    assert json.loads(lock.read_text())["EleutherAI/pythia-160m@step3000"]["commit"] == "a" * 40
    # same branch, same commit: passes
    apply_lock(lock, _hub_ref(), describe_checkpoint(_hub_ref(), api=before))
    moved = FakeHub({"step3000": ("b" * 40, {"model.safetensors": "9" * 64})})
    with pytest.raises(KdynError, match=r"branch moved.*model\.revision=a{40}"):
        apply_lock(lock, _hub_ref(), describe_checkpoint(_hub_ref(), api=moved))
    # the suggested fix works: the commit itself as the revision is pinned (and loads the locked bytes)
    by_commit = FakeHub({"a" * 40: ("a" * 40, {"model.safetensors": "1" * 64})})
    ref = _hub_ref(revision="a" * 40)
    assert apply_lock(lock, ref, describe_checkpoint(ref, api=by_commit))["commit"] == "a" * 40


def test_unresolvable_checkpoint_under_a_lock_is_one_clear_error(tmp_path):
    class Down:
        def model_info(self, *a, **k):
            raise OSError("connection refused")

    record = describe_checkpoint(_hub_ref(), api=Down())
    assert "connection refused" in record["error"]
    with pytest.raises(KdynError, match="cannot resolve EleutherAI/pythia-160m@step3000"):
        apply_lock(tmp_path / "lock.json", _hub_ref(), record)


def test_changed_local_file_under_a_lock_fails(tmp_path, saved_models):
    from kdyn.models.loading import load_model

    folder = tmp_path / "ckpt"
    shutil.copytree(saved_models["olmo"], folder)
    lock = tmp_path / "lock.json"
    cfg = {"name": "local", "family": "local", "path": str(folder), "revision_lock": str(lock)}
    loaded = load_model(cfg)
    weights = next(p for p in folder.iterdir() if p.suffix == ".safetensors")
    assert loaded.checkpoint["files"][weights.name]["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert json.loads(lock.read_text())[str(folder.resolve())]["files"][weights.name] == \
        hashlib.sha256(weights.read_bytes()).hexdigest()
    load_model(cfg)  # unchanged: loads again
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit in the last weight
    weights.write_bytes(bytes(data))
    with pytest.raises(KdynError, match=rf"weight file '{weights.name}' of .* changed since it was locked"):
        load_model(cfg)


def test_model_record_carries_what_was_loaded(saved_models):
    from kdyn.models.loading import load_model
    from kdyn.models.provenance import model_record

    loaded = load_model({"name": "local", "family": "local", "path": str(saved_models["gpt2"])})
    record = model_record(loaded, parameters=1)
    assert record["name"] == loaded.ref.name and record["parameters"] == 1 and record["commit"] is None
    files = sorted(p.name for p in Path(saved_models["gpt2"]).iterdir() if p.suffix == ".safetensors")
    assert sorted(record["loaded"]["files"]) == files and record["weights_sha256"]


def test_two_steps_with_identical_weights_have_one_fingerprint(tmp_path, saved_models):
    a, b = tmp_path / "step100", tmp_path / "step200"
    shutil.copytree(saved_models["llama"], a)
    shutil.copytree(saved_models["llama"], b)
    fa, fb = describe_local(a), describe_local(b)
    assert fa["files"] == fb["files"]
    from kdyn.models.provenance import weights_fingerprint

    assert weights_fingerprint(fa["files"]) == weights_fingerprint(fb["files"])
    assert weights_fingerprint(describe_local(saved_models["olmo"])["files"]) != weights_fingerprint(fa["files"])


# --- the organism --------------------------------------------------------------------------------

def test_tiny_fingerprint_covers_the_build_environment():
    from kdyn.models.tiny import build_environment, fingerprint, pretrain_config

    cfg = pretrain_config({})
    env = build_environment()
    assert {"torch", "transformers", "tokenizers", "world_generator"} <= set(env)
    assert fingerprint(cfg) == fingerprint(cfg, env)          # stable within one install
    assert fingerprint(cfg, {**env, "torch": "0.0.0"}) != fingerprint(cfg, env)
    assert fingerprint(cfg, {**env, "tokenizers": "0.0.0"}) != fingerprint(cfg, env)
    assert fingerprint(pretrain_config({"pretrain_seed": 1})) != fingerprint(cfg)
    # bookkeeping keys do not rebuild the organism
    assert fingerprint(pretrain_config({"pretrain_overrides": ["model.revision_lock=x.json"]})) == fingerprint(cfg)


def test_loading_the_tiny_model_never_trains(tmp_path, monkeypatch):
    """A missing trajectory is one clear error from load_model (the entry points build it first)."""
    import time

    from omegaconf import OmegaConf

    from kdyn.models.loading import load_model
    from kdyn.organism import ensure_model

    cfg = {"name": "tiny", "family": "tiny", "trajectory_dir": str(tmp_path / "cache"),
           "pretrain_overrides": list(OmegaConf.from_dotlist(QUICK_TINY).model.pretrain_overrides)}
    started = time.perf_counter()
    with pytest.raises(KdynError, match=r"not built yet.*ensure_model"):
        load_model(cfg)
    assert time.perf_counter() - started < 30 and not any((tmp_path / "cache").glob("tiny-*/step*"))
    calls = []
    ensure_model({"name": "local", "family": "local", "path": str(tmp_path)}, pretrain=calls.append)
    assert calls == []  # every other model: nothing to build


@pytest.mark.slow
def test_tiny_pretraining_is_bit_identical_on_one_machine(tmp_path):
    from omegaconf import OmegaConf

    from kdyn.organism import ensure_trajectory
    from kdyn.train import train

    quick = OmegaConf.from_dotlist(QUICK_TINY).model.pretrain_overrides
    folders = [ensure_trajectory({"trajectory_dir": str(tmp_path / f"build{i}"), "pretrain_overrides": list(quick)},
                                 pretrain=train)
               for i in (1, 2)]
    assert folders[0].name == folders[1].name
    # every file of every saved step: weights, config, tokenizer (the run/ log folder names its own paths)
    files = sorted(p.relative_to(folders[0]) for p in folders[0].glob("step*/*") if p.is_file())
    assert any(f.suffix == ".safetensors" for f in files) and any("tokenizer" in f.name for f in files)
    for rel in files:
        assert (folders[0] / rel).read_bytes() == (folders[1] / rel).read_bytes(), rel


def test_building_the_tiny_model_on_first_use_leaves_the_callers_random_state_as_it_was(tmp_path, monkeypatch):
    """The run that triggers the tiny pretraining continues from the same random state as a rerun
    that finds the model cached (the nested pretraining reseeds every generator)."""
    import os
    import random

    import numpy as np
    import torch
    from lightning.pytorch import seed_everything

    import kdyn.organism as organism

    def fake_pretrain(cfg):  # reseeds and draws, as the real pretraining does, then writes its record
        seed_everything(1234, workers=True, verbose=False)
        random.random(), np.random.rand(), torch.rand(3)
        staging = Path(cfg.callbacks.hf_trajectory.dirpath)
        staging.mkdir(parents=True, exist_ok=True)
        (staging / organism.TRAJECTORY_FILE).write_text(json.dumps({"steps": [0]}))

    monkeypatch.setattr(organism, "read_trajectory",
                        lambda folder: json.loads((folder / organism.TRAJECTORY_FILE).read_text())
                        if (folder / organism.TRAJECTORY_FILE).is_file() else None)
    seed_everything(7, workers=True, verbose=False)
    expected = (random.random(), float(np.random.rand()), torch.rand(2).tolist(), os.environ.get("PL_GLOBAL_SEED"))
    seed_everything(7, workers=True, verbose=False)
    organism.ensure_trajectory({"trajectory_dir": str(tmp_path / "traj")}, fake_pretrain)
    after = (random.random(), float(np.random.rand()), torch.rand(2).tolist(), os.environ.get("PL_GLOBAL_SEED"))
    assert (tmp_path / "traj").is_dir() and any((tmp_path / "traj").iterdir())  # it really built one
    assert after == expected
