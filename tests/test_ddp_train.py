"""Under DDP every reported number is the global one: 2 CPU processes (gloo) with data.batch_size=4
train the same global batches as 1 process with data.batch_size=8, and metrics.csv / results.json
report the same train/loss (token-weighted over the global batch) and tokens_seen (summed over ranks)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kdyn.train import train
from tests.conftest import compose_cfg

REPO = Path(__file__).resolve().parents[1]


def _args(saved_models, corpus_jsonl):
    # max_rows: an uneven last document length would pad differently; full packed rows keep counts equal
    return ["model=local", f"model.path={saved_models['olmo']}", "corpus=text", f"corpus.path={corpus_jsonl}",
            "trainer.max_steps=3", "data.seq_len=64", "inject.enabled=false", "callbacks.entropy.enabled=false",
            "callbacks.checkpoint.every_n_train_steps=1000", "callbacks.export_hf.enabled=false",
            "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1", "seed=1"]


def _series(path: Path, key: str) -> list[tuple[int, float]]:
    with path.open() as f:
        return [(int(float(r["step"])), float(r[key])) for r in csv.DictReader(f) if r.get(key)]


@pytest.mark.slow
def test_two_process_ddp_reports_the_global_numbers(saved_models, corpus_jsonl, tmp_path):
    one = tmp_path / "one"
    single = train(compose_cfg("train", [*_args(saved_models, corpus_jsonl), "data.batch_size=8"], one))

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    cmd = [sys.executable, "-m", "kdyn.train", *_args(saved_models, corpus_jsonl), "data.batch_size=4",
           "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true",
           "run_id=ddp"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = tmp_path / "outputs" / "train" / "runs" / "ddp"
    results = json.loads((two / "results.json").read_text())

    assert results["tokens_seen"] == single["tokens_seen"] == 3 * 8 * 64
    assert results["final_loss"] == pytest.approx(single["final_loss"], rel=1e-4)
    assert results["first_loss"] == pytest.approx(single["first_loss"], rel=1e-4)
    assert _series(two / "metrics.csv", "train/tokens_seen") == _series(one / "metrics.csv", "train/tokens_seen")
    a, b = _series(one / "metrics.csv", "train/loss"), _series(two / "metrics.csv", "train/loss")
    assert [s for s, _ in a] == [s for s, _ in b] == [0, 1, 2]
    assert [v for _, v in b] == pytest.approx([v for _, v in a], rel=1e-4)
