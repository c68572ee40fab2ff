"""kdyn.launch: the steps the entry points share (validate → seed/threads → … → timed measurement →
result file) and the training job built before ``Trainer.fit``, without writing the run folder."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from kdyn import launch
from kdyn.config import compose_config
from kdyn.errors import KdynError
from kdyn.utils.entry import RunStarted
from tests.conftest import FAST_TRAINER


def test_begin_validates_before_it_seeds_or_sets_threads():
    threads = torch.get_num_threads()
    cfg = compose_config("train", ["seed=abc", f"threads={threads + 1}"])
    with pytest.raises(KdynError, match="seed"):  # one line naming the key, not int()'s ValueError
        launch.begin(cfg, "train", seed=True)
    assert torch.get_num_threads() == threads


def test_begin_seeds_from_the_config_applies_threads_and_keeps_the_given_state():
    threads = torch.get_num_threads()
    state = RunStarted()
    try:
        assert launch.begin(compose_config("train", ["seed=11", "threads=2"]), "train", state, seed=True) is state
        assert torch.get_num_threads() == 2
        drawn = torch.rand(4)
    finally:
        torch.set_num_threads(threads)
    torch.manual_seed(11)
    assert torch.equal(drawn, torch.rand(4))
    assert isinstance(launch.begin(compose_config("entropy"), "entropy"), RunStarted)


def test_measuring_marks_the_run_started_and_times_the_block():
    state = RunStarted()
    with launch.measuring(state) as clock:
        assert state.started  # from here a failure keeps the run folder (it holds results)
        time.sleep(0.05)
    assert 0.05 <= clock.seconds < 5
    failed = RunStarted()
    with pytest.raises(RuntimeError), launch.measuring(failed):
        raise RuntimeError("measurement failed")
    assert failed.started


def test_write_result_writes_the_file_and_prints_the_summary(tmp_path, capsys):
    record = {"status": "completed", "total": 1.5}
    assert launch.write_result(tmp_path / "r.json", record, "tool: done") is record
    assert json.loads((tmp_path / "r.json").read_text()) == record
    assert capsys.readouterr().out == "tool: done\n"
    launch.write_result(tmp_path / "quiet.json", record)
    assert capsys.readouterr().out == ""


def test_the_training_job_is_built_without_writing_the_run_folder(saved_models, corpus_jsonl, compose_train):
    cfg = compose_train("model=local", f"model.path={saved_models['gpt2']}", "corpus=text", f"corpus.path={corpus_jsonl}",
                        "trainer.max_steps=3", "data.seq_len=32", "data.batch_size=4", *FAST_TRAINER)
    out = Path(cfg.paths.output_dir)
    job = launch.build_train_job(cfg, pretrain=lambda _: pytest.fail("model=local needs no pretraining"))
    assert not out.exists()  # a later refusal (e.g. resuming another config) leaves nothing behind
    assert job.callbacks[0] is job.summary and all(c in job.trainer.callbacks for c in job.callbacks)
    assert job.trainer.max_steps == 3 and job.plan is None and job.module.model is job.loaded.model
    launch.write_run_record(job)
    assert json.loads((out / "intervention.json").read_text()) == job.intervention_record
    assert (out / "checkpoints" / "run_config.json").is_file() and not (out / "injections.csv").exists()
