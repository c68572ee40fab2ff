"""kdyn-train end to end: every architecture through model=local, the run folder, bad inputs."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kdyn.errors import KdynError
from kdyn.train import train
from tests.conftest import ARCHS, FAST_TRAINER, QUICK_TINY


def _metrics(run: Path) -> list[dict]:
    with (run / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("arch", ARCHS)
def test_two_steps_per_architecture_through_model_local(arch, saved_models, corpus_jsonl, compose_train):
    cfg = compose_train("model=local", f"model.path={saved_models[arch]}", "corpus=text", f"corpus.path={corpus_jsonl}",
                        "trainer.max_steps=2", "data.seq_len=32", "data.batch_size=4", *FAST_TRAINER)
    results = train(cfg)
    run = Path(cfg.paths.output_dir)
    saved = json.loads((run / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    assert saved["steps"] == 2 and saved["status"] == "completed"
    assert saved["tokens_seen"] == 2 * 4 * 32  # packed rows carry no padding
    assert saved["groups"]["model"] == "local" and saved["groups"]["corpus"] == "text"
    assert torch.isfinite(torch.tensor(saved["final_loss"]))
    losses = [float(r["train/loss"]) for r in _metrics(run) if r.get("train/loss")]
    assert len(losses) == 2 and losses[-1] == pytest.approx(saved["final_loss"], rel=1e-5)
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "checkpoints" / "hf" / "config.json").is_file()
    # the checkpoint reloads with weights_only=True (hyperparameters are plain containers)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert ckpt["global_step"] == 2


def test_training_changes_weights_and_is_repeatable_with_a_seed(saved_models, corpus_jsonl, tmp_path):
    from tests.conftest import compose_cfg

    args = ["model=local", f"model.path={saved_models['olmo']}", "corpus=text", f"corpus.path={corpus_jsonl}",
            "trainer.max_steps=3", "data.seq_len=32", "data.batch_size=4", "corpus.shuffle=true", "seed=7",
            *FAST_TRAINER]
    a = train(compose_cfg("train", args, tmp_path / "a"))
    b = train(compose_cfg("train", args, tmp_path / "b"))
    c = train(compose_cfg("train", [*args[:-len(FAST_TRAINER) - 1], "seed=8", *FAST_TRAINER], tmp_path / "c"))
    assert a["final_loss"] == b["final_loss"]
    assert a["final_loss"] != c["final_loss"]
    from safetensors.torch import load_file

    before = load_file(saved_models["olmo"] / "model.safetensors")
    after = load_file(tmp_path / "a" / "checkpoints" / "hf" / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_tiny_model_builds_its_trajectory_once_and_picks_steps(compose_train, tmp_path):
    cfg = compose_train(*QUICK_TINY, "trainer.max_steps=1", "data.seq_len=32", "data.batch_size=2", *FAST_TRAINER)
    first = train(cfg)
    assert first["model"]["family"] == "tiny" and first["model"]["step"] == 12
    folder = Path(first["model"]["location"]).parent
    record = json.loads((folder / "trajectory.json").read_text())
    assert record["steps"] == [0, 6, 12]
    assert all((folder / f"step{s}" / "config.json").is_file() for s in record["steps"])
    mtime = (folder / "trajectory.json").stat().st_mtime
    cfg = compose_train(*QUICK_TINY, "model.step=6", "trainer.max_steps=1", "data.seq_len=32", "data.batch_size=2", *FAST_TRAINER)
    second = train(cfg)
    assert second["model"]["step"] == 6 and second["model"]["location"].endswith("step6")
    assert (folder / "trajectory.json").stat().st_mtime == mtime  # reused, not rebuilt
    with pytest.raises(KdynError, match=r"no checkpoint at step 7.*nearest: 6, 12"):
        train(compose_train(*QUICK_TINY, "model.step=7", *FAST_TRAINER))


@pytest.mark.parametrize("overrides, message", [
    (["model=pythia-160m", "model.step=1500"], "nearest"),
    (["model=local"], "model.path"),
    (["corpus=text"], "corpus.path is not set"),
    (["data.seq_len=100000"], "context"),
])
def test_bad_input_fails_before_training(overrides, message, compose_train, saved_models):
    extra = [] if any(o.startswith("model=") for o in overrides) else ["model=local", f"model.path={saved_models['gpt2']}"]
    with pytest.raises(KdynError, match=message):
        train(compose_train(*extra, "data.seq_len=32", *overrides, *FAST_TRAINER))


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "kdyn.train", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_cli_bad_input_prints_one_line_and_leaves_no_run_folder(tmp_path):
    proc = _cli(["model=pythia-160m", "model.step=1500"], tmp_path)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert errors[-1].startswith("kdyn-train: error: ") and "1500" in errors[-1]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("*.json"))
    assert not any(p.is_dir() for p in (tmp_path / "outputs").rglob(".hydra")) if (tmp_path / "outputs").exists() else True


def test_cli_unknown_model_name_is_one_clear_message(tmp_path):
    proc = _cli(["model=pythia-13m"], tmp_path)
    assert proc.returncode != 0
    assert "pythia-13m" in proc.stderr and "Traceback" not in proc.stderr


def test_default_config_runs_two_steps_on_a_saved_model(tmp_path, compose_train):
    """The README's `kdyn-train model=local model.path=DIR trainer.max_steps=2`, with every default
    (knowledge injection and per-step probes included) on a model saved with save_pretrained."""
    from kdyn.data.corpora import load_documents
    from kdyn.data.tokenizer import train_bpe_tokenizer
    from kdyn.models.scratch import ArchSpec, build_scratch_model

    tok = train_bpe_tokenizer(load_documents({"name": "synthetic", "max_documents": 800}), 2048)
    model = build_scratch_model(ArchSpec(arch="llama", vocab_size=len(tok), hidden_size=32, num_layers=2, num_heads=4,
                                         intermediate_size=64, max_position_embeddings=512,
                                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id), seed=0)
    model.save_pretrained(tmp_path / "llama")
    tok.save_pretrained(tmp_path / "llama")
    cfg = compose_train("model=local", f"model.path={tmp_path / 'llama'}", "trainer.max_steps=2",
                        "trainer.enable_progress_bar=false")
    results = train(cfg)
    assert results["steps"] == 2 and results["injection"]["events"] == 1 and results["injection"]["planned_events"] == 4
    run = Path(cfg.paths.output_dir)
    assert {row["step"] for row in csv.DictReader((run / "probes.csv").open())} == {"0", "1", "2"}
