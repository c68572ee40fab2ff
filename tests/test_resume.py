"""Runs are resumable: a SIGTERM mid-way saves last.ckpt (and exits 143 with results.json "interrupted"), a
rerun resumes and ends exactly like an uninterrupted run (every metrics row, every weight), also after a
second preemption; a checkpoint of another config is never resumed; skip_completed skips."""

from __future__ import annotations

import csv
import json
import os
import signal
from pathlib import Path

import lightning.pytorch as pl
import pytest

from kdyn.errors import KdynError
from kdyn.train import train
from tests.conftest import compose_cfg


class SigtermAt(pl.Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def _args(saved_models, corpus_jsonl):
    return ["model=local", f"model.path={saved_models['olmo']}", "corpus=text", f"corpus.path={corpus_jsonl}",
            "corpus.shuffle=true", "trainer.max_steps=8", "data.seq_len=128", "data.batch_size=8",
            "inject.source.num_items=6", "inject.scenarios.paraphrase=2", "inject.scenarios.duplicate=2",
            "inject.scenarios.once=2", "inject.interval=2", "inject.num_events=2", "inject.metrics.window=2",
            "callbacks.entropy.every_n_steps=3", "callbacks.checkpoint.every_n_train_steps=1000",
            "trainer.enable_progress_bar=false", "optim.scheduler=cosine", "optim.warmup_steps=2", "seed=3"]


def _rows(path: Path, key: str | None = None) -> list[dict]:
    with path.open() as f:
        rows = list(csv.DictReader(f))
    return [r for r in rows if key is None or r.get(key)]


def test_sigterm_then_rerun_matches_an_uninterrupted_run(saved_models, corpus_jsonl, tmp_path):
    args = _args(saved_models, corpus_jsonl)
    straight = train(compose_cfg("train", args, tmp_path / "straight"))

    interrupted = tmp_path / "interrupted"
    with pytest.raises(SystemExit):
        train(compose_cfg("train", args, interrupted), extra_callbacks=[SigtermAt(5)])
    assert (interrupted / "checkpoints" / "last.ckpt").is_file()
    assert json.loads((interrupted / "results.json").read_text())["status"] == "interrupted"

    resumed = train(compose_cfg("train", args, interrupted))
    assert resumed["steps_this_session"] == 3
    for key in ("steps", "tokens_seen", "final_loss", "final_loss_mean10", "first_loss"):
        assert resumed[key] == pytest.approx(straight[key], rel=1e-6), key
    assert json.dumps(resumed["knowledge"], sort_keys=True) == json.dumps(straight["knowledge"], sort_keys=True)
    assert _rows(interrupted / "probes.csv") == _rows(tmp_path / "straight" / "probes.csv")
    for key in ("train/loss", "entropy/total"):
        a = [(r["step"], float(r[key])) for r in _rows(tmp_path / "straight" / "metrics.csv", key)]
        b = [(r["step"], float(r[key])) for r in _rows(interrupted / "metrics.csv", key)]
        assert [s for s, _ in a] == [s for s, _ in b], key
        assert [v for _, v in a] == pytest.approx([v for _, v in b], rel=1e-6), key


def test_a_checkpoint_of_another_config_is_not_resumed(saved_models, corpus_jsonl, tmp_path):
    args = _args(saved_models, corpus_jsonl)
    run = tmp_path / "run"
    with pytest.raises(SystemExit):
        train(compose_cfg("train", args, run), extra_callbacks=[SigtermAt(2)])
    with pytest.raises(KdynError, match=r"different configuration \(optim.lr"):
        train(compose_cfg("train", [*args, "optim.lr=1e-3"], run))


def test_skip_completed_returns_the_saved_results_without_training(saved_models, corpus_jsonl, tmp_path, capsys):
    from kdyn.utils.entry import run_entry

    args = [*_args(saved_models, corpus_jsonl), "trainer.max_steps=4", "inject.enabled=false"]
    first = train(compose_cfg("train", args, tmp_path / "run"))
    mtime = (tmp_path / "run" / "results.json").stat().st_mtime
    again = run_entry("kdyn-train", train, compose_cfg("train", [*args, "skip_completed=true"], tmp_path / "run"))
    assert "skipping" in capsys.readouterr().out
    assert again["final_loss"] == first["final_loss"]
    assert (tmp_path / "run" / "results.json").stat().st_mtime == mtime


def _metric_rows(path: Path) -> list[tuple]:
    """Every metrics.csv row as (step, ((key, value), …)) with empty cells left out, in file order."""
    out = []
    for row in _rows(path):
        cells = tuple(sorted((k, float(v)) for k, v in row.items() if v not in ("", None) and k != "step"))
        out.append((int(float(row["step"])), cells))
    return out


def _final_weights(run: Path) -> dict:
    import torch

    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]


def test_preempted_twice_matches_an_uninterrupted_run_row_for_row(saved_models, corpus_jsonl, tmp_path):
    """SIGTERM, resume, SIGTERM again, resume: one last.ckpt that always holds the newest step, exit
    status 143 at each preemption, every metrics row and every weight equal to an uninterrupted run."""
    import torch

    args = _args(saved_models, corpus_jsonl)
    straight = train(compose_cfg("train", args, tmp_path / "straight"))

    run = tmp_path / "preempted"
    for stop_at in (3, 6):
        with pytest.raises(SystemExit) as info:
            train(compose_cfg("train", args, run), extra_callbacks=[SigtermAt(stop_at)])
        assert info.value.code == 143
        ckpts = sorted(p.name for p in (run / "checkpoints").glob("*.ckpt"))
        assert ckpts == ["last.ckpt"], ckpts
        from kdyn.train import checkpoint_step

        assert checkpoint_step(str(run / "checkpoints" / "last.ckpt")) == stop_at
        marker = json.loads((run / "results.json").read_text())
        assert marker["status"] == "interrupted" and marker["steps"] == stop_at
    resumed = train(compose_cfg("train", args, run))
    assert resumed["status"] == "completed"
    assert resumed["steps_this_session"] == 2
    for key in ("steps", "tokens_seen", "final_loss", "final_loss_mean10", "first_loss"):
        assert resumed[key] == straight[key], key
    assert _metric_rows(run / "metrics.csv") == _metric_rows(tmp_path / "straight" / "metrics.csv")
    assert _rows(run / "probes.csv") == _rows(tmp_path / "straight" / "probes.csv")
    a, b = _final_weights(tmp_path / "straight"), _final_weights(run)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_rerunning_a_finished_run_trains_nothing(saved_models, corpus_jsonl, tmp_path):
    args = [*_args(saved_models, corpus_jsonl), "trainer.max_steps=3", "inject.enabled=false"]
    first = train(compose_cfg("train", args, tmp_path / "run"))
    rows = _metric_rows(tmp_path / "run" / "metrics.csv")
    again = train(compose_cfg("train", args, tmp_path / "run"))
    assert again["steps"] == 3 and again["steps_this_session"] == 0
    assert again["final_loss"] == first["final_loss"] and again["tokens_seen"] == first["tokens_seen"]
    assert _metric_rows(tmp_path / "run" / "metrics.csv") == rows


class SignalAt(pl.Callback):
    def __init__(self, step: int, signum: int):
        self.step, self.signum = step, signum

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


def test_submitit_requeue_signal_checkpoints_at_the_step_end_then_requeues(saved_models, corpus_jsonl, tmp_path):
    """submitit's USR2 handler requeues and exits at once; kdyn defers it to the end of the step, saves
    last.ckpt, writes results.json "interrupted", then lets the handler requeue; the requeued job resumes."""
    from kdyn.train import checkpoint_step

    args = [*_args(saved_models, corpus_jsonl), "trainer.max_steps=5", "inject.enabled=false"]
    run = tmp_path / "run"
    seen = []

    def checkpoint_and_try_requeue(signum, frame):  # the name submitit's JobEnvironment handler has
        seen.append(json.loads((run / "results.json").read_text())["steps"])
        seen.append(checkpoint_step(str(run / "checkpoints" / "last.ckpt")))
        raise SystemExit(-1)  # submitit: scontrol requeue, then sys.exit(-1)

    previous = signal.signal(signal.SIGUSR2, checkpoint_and_try_requeue)
    try:
        with pytest.raises(SystemExit) as info:
            train(compose_cfg("train", args, run), extra_callbacks=[SignalAt(2, signal.SIGUSR2)])
        assert signal.getsignal(signal.SIGUSR2) is checkpoint_and_try_requeue  # handed back
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert info.value.code == -1 and seen == [2, 2]
    resumed = train(compose_cfg("train", args, run))
    assert resumed["steps"] == 5 and resumed["steps_this_session"] == 3
