"""Multiruns: a 2 × 2 sweep through submitit_local then kdyn-report; sweeps that fail well (kdyn.sweep):
invalid jobs refused before launch, jobs failing at run time summarised while the others complete."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import QUICK_TINY

REPO = Path(__file__).resolve().parents[1]


def _kdyn(module: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
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


# ------------------------------------------------------------------ sweeps that fail well (kdyn.sweep)
TINY_RUN = [*QUICK_TINY, "trainer.max_steps=2", "data.seq_len=64", "data.batch_size=4", "inject.enabled=false",
            "trainer.enable_progress_bar=false", "callbacks.checkpoint.every_n_train_steps=1000"]
FAIL_CALLBACK = "+callbacks.fail._target_=tests.sweep_helpers.FailAtStep"


def _lines(text: str, prefix: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(prefix)]


def test_invalid_jobs_are_listed_one_line_each_and_nothing_is_launched(tmp_path):
    sweep = tmp_path / "sweep"
    proc = _kdyn("kdyn.train", ["-m", f"hydra.sweep.dir={sweep}", "intervention=none,localize,localize_alr",
                                "seed=0,1"], tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert not sweep.exists() and not (tmp_path / "outputs").exists()  # nothing launched, no folder written
    assert "Traceback" not in proc.stderr
    # Hydra's grid order: the first override varies slowest. localize / localize_alr lack layer_stats.
    grid = [(i, s) for i in ("none", "localize", "localize_alr") for s in (0, 1)]
    expected = {n: f"[intervention={i} seed={s}]" for n, (i, s) in enumerate(grid) if i != "none"}
    lines = _lines(proc.stderr, "kdyn-train: job ")
    assert len(lines) == len(expected)
    for line in lines:
        num = int(line.split()[2])
        assert line.startswith(f"kdyn-train: job {num} {expected[num]}: "), line
        assert "intervention.layer_stats=PATH" in line
    assert {int(line.split()[2]) for line in lines} == set(expected)
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("kdyn-train: error: 4 of 6 jobs are invalid") and "nothing was launched" in last
    assert "sweep.validate=false" in last


def test_a_wrong_type_in_a_sweep_is_named_like_a_single_run_names_it(tmp_path):
    """The typed schemas refuse `abc` while a job composes: the job's line names the key, as a single run's does."""
    sweep = tmp_path / "sweep"
    proc = _kdyn("kdyn.train", ["-m", f"hydra.sweep.dir={sweep}", "data.batch_size=abc,4"], tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert not sweep.exists() and "Traceback" not in proc.stderr
    lines = _lines(proc.stderr, "kdyn-train: job ")
    assert len(lines) == 1 and lines[0].startswith("kdyn-train: job 0 [data.batch_size=abc]: data.batch_size='abc'")
    assert "must be an integer" in lines[0]
    single = _kdyn("kdyn.train", ["data.batch_size=abc"], tmp_path)
    assert single.returncode == 2
    assert lines[0].split("]: ", 1)[1] in single.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("module", ["kdyn.entropy", pytest.param("kdyn.eval", marks=pytest.mark.slow),
                                    pytest.param("kdyn.trace", marks=pytest.mark.slow)])
def test_every_tool_validates_its_sweep_before_launching(tmp_path, module):
    """pythia-70m has no step 1001 (steps 1000 and 2000 exist): known without a download."""
    sweep = tmp_path / "sweep"
    tool = "kdyn-" + module.split(".")[1]
    proc = _kdyn(module, ["-m", f"hydra.sweep.dir={sweep}", "model=pythia-70m", "model.step=1000,1001,2000"], tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert not sweep.exists()
    lines = _lines(proc.stderr, f"{tool}: job ")
    assert len(lines) == 1 and lines[0].startswith(f"{tool}: job 1 [model.step=1001]: "), proc.stderr[-2000:]
    assert "no checkpoint at step 1001" in lines[0]
    assert proc.stderr.strip().splitlines()[-1].startswith(f"{tool}: error: 1 of 3 jobs are invalid")


def test_sweep_validate_false_launches_and_every_failure_is_counted(tmp_path):
    """Followed advice: with sweep.validate=false the jobs run, fail on their own, and are summarised."""
    sweep = tmp_path / "sweep"
    proc = _kdyn("kdyn.entropy", ["-m", f"hydra.sweep.dir={sweep}", "model=pythia-70m", "model.step=1001,1002",
                                  "sweep.validate=false"], tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    for num, step in enumerate((1001, 1002)):
        error = json.loads((sweep / str(num) / "error.json").read_text())
        assert error["status"] == "failed" and f"step {step}" in error["error"]
        line = _lines(proc.stderr, f"kdyn-entropy: job {num} ")
        assert len(line) == 1 and line[0].startswith(f"kdyn-entropy: job {num} [model.step={step}] failed: ")
        assert f"(run folder {sweep / str(num)}" in line[0]
    assert proc.stderr.strip().splitlines()[-1].startswith("kdyn-entropy: error: 2 of 2 jobs failed, 0 completed")


def _check_runtime_failure(proc, sweep: Path, tmp_path: Path) -> None:
    """Job 0 failed mid-training (a simulated out-of-memory error), job 1 still completed."""
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert json.loads((sweep / "1" / "results.json").read_text())["status"] == "completed"
    assert not (sweep / "0" / "results.json").exists()
    error = json.loads((sweep / "0" / "error.json").read_text())
    assert error["status"] == "failed" and error["error"].startswith("RuntimeError: CUDA out of memory at step 0")
    summary = _lines(proc.stderr, "kdyn-train: job 0 ")
    assert len(summary) == 1, proc.stderr[-3000:]
    # the job's overrides as Hydra passes them to the job (it spells the swept booleans True/False)
    assert summary[0].startswith("kdyn-train: job 0 [+callbacks.fail.enabled=True] failed: RuntimeError: CUDA out of")
    assert f"(run folder {sweep / '0'}" in summary[0]
    assert proc.stderr.strip().splitlines()[-1].startswith("kdyn-train: error: 1 of 2 jobs failed, 1 completed")

    report = _kdyn("kdyn.report.cli", [str(sweep)], tmp_path)
    assert report.returncode == 0, report.stderr[-2000:]
    with (sweep / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["status"] for r in rows) == ["completed", "failed"]
    assert "1 run failed: 0 (RuntimeError: CUDA out of memory" in report.stdout


def test_a_job_failing_at_run_time_leaves_the_others_running(tmp_path):
    sweep = tmp_path / "sweep"
    proc = _kdyn("kdyn.train", ["-m", f"hydra.sweep.dir={sweep}", FAIL_CALLBACK, "+callbacks.fail.enabled=true,false",
                                *TINY_RUN], tmp_path)
    _check_runtime_failure(proc, sweep, tmp_path)
    assert "Traceback" not in proc.stderr  # one line on the console; the traceback is in the job's log
    assert "Traceback" in (sweep / "0" / "train.log").read_text()


@pytest.mark.slow
def test_a_job_failing_at_run_time_under_submitit_local(tmp_path):
    sweep = tmp_path / "sweep"
    proc = _kdyn("kdyn.train", ["-m", "hydra/launcher=local", f"hydra.sweep.dir={sweep}", FAIL_CALLBACK,
                                "+callbacks.fail.enabled=true,false", *TINY_RUN], tmp_path)
    _check_runtime_failure(proc, sweep, tmp_path)


@pytest.mark.slow
def test_a_job_killed_outright_under_submitit_local(tmp_path):
    """SIGKILL (the kernel's out-of-memory killer): submitit stops waiting; the sweep names the job, exits 1,
    and the other job still completes."""
    import time

    sweep = tmp_path / "sweep"
    proc = _kdyn("kdyn.train", ["-m", "hydra/launcher=local", f"hydra.sweep.dir={sweep}",
                                "+callbacks.kill._target_=tests.sweep_helpers.KillAtStep",
                                "+callbacks.kill.enabled=true,false", *TINY_RUN], tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    line = _lines(proc.stderr, "kdyn-train: job 0 ")
    assert len(line) == 1 and "failed: no result when the launcher stopped waiting" in line[0], proc.stderr[-3000:]
    assert f"(run folder {sweep / '0'}" in line[0]
    assert "Traceback" not in proc.stderr
    deadline = time.time() + 300
    while not (sweep / "1" / "results.json").is_file() and time.time() < deadline:
        time.sleep(2)
    assert json.loads((sweep / "1" / "results.json").read_text())["status"] == "completed"
    assert not (sweep / "0" / "results.json").exists()


def test_a_sweep_file_that_overrides_a_group_accepts_that_options_keys_on_the_command_line(tmp_path):
    """sweeps/seeds_resuscitation.yaml chooses intervention=resuscitate in its defaults: its own keys
    narrow the grid on the command line (as the file says), and a misspelt one is still refused, per job."""
    from kdyn.config import CONF_DIR

    sweeps = str(CONF_DIR.parent / "sweeps")
    sweep = tmp_path / "sweep"
    # data.batch_size=0 makes every job invalid, so nothing launches: the jobs listed are the narrowed grid
    proc = _kdyn("kdyn.train", ["-m", "--config-dir", sweeps, "--config-name", "seeds_resuscitation",
                                f"hydra.sweep.dir={sweep}", "intervention.p=1.5", "intervention.q=0.1,0.5",
                                "data.batch_size=0"], tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "unknown key intervention.p" not in proc.stderr
    lines = _lines(proc.stderr, "kdyn-train: job ")
    assert len(lines) == 6 and all("data.batch_size" in line for line in lines), proc.stderr[-3000:]  # 2 cells × 3 seeds
    assert proc.stderr.strip().splitlines()[-1].startswith("kdyn-train: error: 6 of 6 jobs are invalid")
    typo = _kdyn("kdyn.train", ["-m", "--config-dir", sweeps, "--config-name", "seeds_resuscitation",
                                f"hydra.sweep.dir={sweep}", "intervention.pp=1.5"], tmp_path)
    assert typo.returncode == 2 and not sweep.exists()
    assert "intervention.pp" in typo.stderr and "Traceback" not in typo.stderr
