"""A run folder belongs to one process (a second one fails in one line naming the holder), and
resume=false starts over so cleanly that a later plain rerun can never resume the old run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kdyn.errors import KdynError
from kdyn.train import train
from kdyn.utils.run_folder import REPLACED_DIR, RunFolderBusy, RunFolderLock
from tests.conftest import compose_cfg

REPO = Path(__file__).resolve().parents[1]

HOLDER = """
import sys, time
from kdyn.utils.run_folder import RunFolderLock
with RunFolderLock(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.read()   # hold the folder until the test closes our stdin
"""


def _args(saved_models, corpus_jsonl, *extra):
    return ["model=local", f"model.path={saved_models['olmo']}", "corpus=text", f"corpus.path={corpus_jsonl}",
            "trainer.max_steps=3", "data.seq_len=64", "data.batch_size=4", "inject.enabled=false",
            "callbacks.entropy.enabled=false", "callbacks.checkpoint.every_n_train_steps=1000",
            "trainer.enable_progress_bar=false", *extra]


@pytest.fixture
def holder(tmp_path):
    """Another process holding tmp_path/run (started and confirmed before the test body runs)."""
    folder = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert proc.stdout.readline().strip() == "locked"
    yield folder, proc
    proc.stdin.close()
    proc.wait(timeout=30)


def test_a_second_process_is_refused_naming_the_holder(holder):
    folder, proc = holder
    with pytest.raises(RunFolderBusy) as info:
        with RunFolderLock(folder):
            pass
    message = str(info.value)
    assert "\n" not in message and f"pid {proc.pid}" in message and str(folder) in message
    proc.stdin.close()
    proc.wait(timeout=30)
    with RunFolderLock(folder):  # released when the holder exits
        pass


def test_kdyn_train_refuses_a_folder_in_use_and_leaves_it_alone(holder, saved_models, corpus_jsonl, capsys):
    from kdyn.utils.entry import run_entry

    folder, proc = holder
    (folder / "metrics.csv").write_text("step\n0\n")  # the holder's work so far
    cfg = compose_cfg("train", _args(saved_models, corpus_jsonl), folder)
    with pytest.raises(SystemExit) as info:
        run_entry("kdyn-train", train, cfg)
    assert info.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("kdyn-train: error:")]
    assert len(err) == 1 and f"pid {proc.pid}" in err[0]
    assert (folder / "metrics.csv").read_text() == "step\n0\n"
    assert not (folder / "checkpoints").exists() and not (folder / "results.json").exists()


def test_the_holder_keeps_its_hydra_record(tmp_path):
    """Hydra writes .hydra/config.yaml before kdyn runs, also for a run that is then refused: the
    holder puts its own record back when it releases the folder."""
    folder = tmp_path / "run"
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text("optim:\n  lr: 0.0003\n")
    with RunFolderLock(folder):
        (folder / ".hydra" / "config.yaml").write_text("optim:\n  lr: 0.01\n")  # the refused run's Hydra
    assert (folder / ".hydra" / "config.yaml").read_text() == "optim:\n  lr: 0.0003\n"


def test_resume_false_then_a_plain_rerun_resumes_the_new_run(saved_models, corpus_jsonl, tmp_path):
    run = tmp_path / "run"
    first = train(compose_cfg("train", _args(saved_models, corpus_jsonl), run))
    changed = _args(saved_models, corpus_jsonl, "optim.lr=1e-2", "intervention=freeze", "intervention.layers=[layer_0]")
    second = train(compose_cfg("train", [*changed, "resume=false"], run))
    assert second["steps_this_session"] == 3  # trained from the start, not resumed
    assert (run / "layers.json").is_file()  # written while setting up this run: not moved aside with the old run
    assert second["final_loss"] != first["final_loss"]
    moved = list((run / REPLACED_DIR).iterdir())
    assert len(moved) == 1  # the first run's files, kept
    assert json.loads((moved[0] / "results.json").read_text())["final_loss"] == first["final_loss"]
    assert (moved[0] / "checkpoints" / "last.ckpt").is_file()

    third = train(compose_cfg("train", changed, run))  # resumes the lr=1e-2 run (finished: nothing to train)
    assert third["steps_this_session"] == 0
    assert third["final_loss"] == second["final_loss"]
    with pytest.raises(KdynError, match=r"different configuration \(.*optim.lr: 0.01 → 0.0003"):
        train(compose_cfg("train", _args(saved_models, corpus_jsonl), run))


def test_a_run_recorded_before_the_selector_keys_still_resumes(saved_models, corpus_jsonl, tmp_path):
    from kdyn.run import RUN_CONFIG

    run = tmp_path / "run"
    first = train(compose_cfg("train", _args(saved_models, corpus_jsonl), run))
    record = next(run.rglob(RUN_CONFIG))
    before = json.loads(record.read_text())
    older = {k: v for k, v in before.items() if k.rsplit(".", 1)[-1] not in ("_target_", "_partial_", "resolver", "reader")
             or k.startswith(("trainer.", "logger."))}  # what a run recorded before issue 13 holds
    assert {"optim._target_", "intervention._target_", "model.resolver", "inject.source.reader"} <= set(before) - set(older)
    record.write_text(json.dumps(older))
    again = train(compose_cfg("train", _args(saved_models, corpus_jsonl), run))
    assert again["steps_this_session"] == 0 and again["final_loss"] == first["final_loss"]
    # a real change is still refused
    record.write_text(json.dumps({**older, "optim.lr": 0.5}))
    with pytest.raises(KdynError, match=r"different configuration \(optim.lr: 0.5 → "):
        train(compose_cfg("train", _args(saved_models, corpus_jsonl), run))


def test_a_truncated_checkpoint_is_one_line_and_resume_false_starts_over(saved_models, corpus_jsonl, tmp_path):
    run = tmp_path / "run"
    args = _args(saved_models, corpus_jsonl)
    first = train(compose_cfg("train", args, run))
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    with pytest.raises(KdynError) as info:
        train(compose_cfg("train", args, run))
    assert "\n" not in str(info.value) and "resume=false" in str(info.value) and str(last) in str(info.value)
    again = train(compose_cfg("train", [*args, "resume=false"], run))  # the fix the message names works
    assert again["steps_this_session"] == 3 and again["final_loss"] == first["final_loss"]


@pytest.mark.slow
def test_kdyn_train_sigterm_exits_143_and_the_rerun_finishes(saved_models, corpus_jsonl, tmp_path):
    """The command line as a scheduler sees it: SIGTERM mid-run → checkpoint, results.json "interrupted",
    exit status 143, lock released; the same command again resumes and exits 0."""
    import signal
    import time

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    cmd = [sys.executable, "-m", "kdyn.train", *_args(saved_models, corpus_jsonl), "trainer.max_steps=400",
           "run_id=r"]
    run = tmp_path / "outputs" / "train" / "runs" / "r"
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (run / "hparams.yaml").is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)  # hparams.yaml: written when fit starts (Lightning's SIGTERM handler is in place)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-2000:]
    results = json.loads((run / "results.json").read_text())
    assert results["status"] == "interrupted" and 0 < results["steps"] < 400
    done = subprocess.run(cmd, cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    final = json.loads((run / "results.json").read_text())
    assert final["status"] == "completed" and final["steps"] == 400
    assert final["steps_this_session"] == 400 - results["steps"]
