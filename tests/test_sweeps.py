"""A 2 × 2 multirun on the tiny model through submitit_local, then kdyn-report on it."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import QUICK_TINY


def _kdyn(module: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=900)


def test_two_by_two_multirun_through_submitit_local_then_report(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", "hydra/launcher=local", f"hydra.sweep.dir={sweep}", *QUICK_TINY, "model.step=6,12", "seed=0,1",
            "trainer.max_steps=3", "data.seq_len=64", "data.batch_size=4", "inject.enabled=false",
            "trainer.enable_progress_bar=false", "callbacks.checkpoint.every_n_train_steps=1000"]
    proc = _kdyn("kdyn.train", args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = sorted(sweep.glob("*/results.json"))
    assert len(results) == 4
    assert (sweep / ".submitit").is_dir()  # really launched through submitit

    report = _kdyn("kdyn.report.cli", [str(sweep)], tmp_path)
    assert report.returncode == 0, report.stderr[-2000:]
    with (sweep / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and {r["status"] for r in rows} == {"completed"}
    assert {(r["model_step"], r["seed"]) for r in rows} == {("6", "0"), ("6", "1"), ("12", "0"), ("12", "1")}


def test_a_missing_option_in_a_sweep_override_is_one_clear_line(tmp_path):
    proc = _kdyn("kdyn.train", ["-m", "intervention=none,resuscitat"], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("kdyn-train: error: unknown intervention 'resuscitat'")
