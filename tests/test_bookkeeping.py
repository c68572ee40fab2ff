"""The shared bookkeeping helpers: once-per-step cadence, resumable per-step tables, atomic writes."""

from __future__ import annotations

import csv
from types import SimpleNamespace

import pytest

from kdyn.callbacks.cadence import OncePerStep
from kdyn.utils.io import atomic_path, atomic_write_text
from kdyn.utils.tables import restart_table, rows_until


def test_once_per_step_fires_once_per_optimizer_step_under_accumulation():
    accumulate, steps, start = 3, 4, 2  # resumed at step 2
    trainer = SimpleNamespace(global_step=start)
    callback = OncePerStep()
    assert callback.start_steps(trainer) == start
    fired = []
    for micro_batch in range(accumulate * steps):
        if micro_batch % accumulate == accumulate - 1:  # the optimizer steps after the k-th micro-batch
            trainer.global_step += 1
        if callback.new_step(trainer):
            fired.append(trainer.global_step)
    assert fired == [3, 4, 5, 6]


def _write(path, rows, columns=("step", "value")):
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows(rows)


def _read(path):
    with path.open(newline="") as f:
        return list(csv.reader(f))


def test_restart_table_keeps_the_rows_up_to_the_resume_step(tmp_path):
    path = tmp_path / "probes.csv"
    _write(path, [[0, "a"], [2, "b"], [4, "c"], [4, "d"], [6, "e"]])
    kept = restart_table(path, ["step", "value"], 4)
    assert [r["value"] for r in kept] == ["a", "b", "c", "d"]
    assert _read(path) == [["step", "value"], ["0", "a"], ["2", "b"], ["4", "c"], ["4", "d"]]


@pytest.mark.parametrize("exists", [True, False])
def test_restart_table_at_step_zero_or_without_a_table_is_a_header(tmp_path, exists):
    path = tmp_path / "t.csv"
    if exists:
        _write(path, [[0, "a"], [1, "b"]])
    restart_table(path, ["step", "value"], 0 if exists else 5)
    assert _read(path) == [["step", "value"]]


def test_rows_until_with_a_custom_rule(tmp_path):
    path = tmp_path / "metrics.csv"
    _write(path, [[1, ""], [2, "x"], [2, ""], [3, ""]], columns=("step", "epoch"))
    def rule(row, step):
        return int(row["step"]) < step or (int(row["step"]) == step and row["epoch"] == "")

    kept = rows_until(path, 2, keep=rule)
    assert [(r["step"], r["epoch"]) for r in kept] == [("1", ""), ("2", "")]
    assert rows_until(tmp_path / "absent.csv", 2) == []


def test_atomic_path_replaces_on_success_and_leaves_the_old_file_on_failure(tmp_path):
    target = tmp_path / "sub" / "result.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed while writing")
    assert target.read_text() == "old"
    assert sorted(p.name for p in target.parent.iterdir()) == ["result.json"]  # no temporary file left
    with atomic_path(target, suffix=".bin") as tmp:
        assert tmp.parent == target.parent and tmp != target
        tmp.write_bytes(b"new")
        assert target.read_text() == "old"  # not visible before the block ends
    assert target.read_bytes() == b"new"
