"""kdyn-report: run discovery, summary.csv, knowledge-entropy figures, bad input.

Fake run folders are built with the exact on-disk layout of kdyn's Hydra entry points
(.hydra/config.yaml, overrides.yaml, hydra.yaml; results.json / entropy.json / error.json /
metrics.csv / checkpoints/last.ckpt). Everything is offline and takes a few seconds.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from kdyn.report.cli import main
from kdyn.report.collect import collect_runs, find_run_dirs, load_run
from kdyn.report.table import flatten

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
N_LAYERS = 4
D_FF = 512
MAX_LAYER = 6.238324625039508  # ln 512
# Per-layer knowledge entropy of the fake tiny checkpoints (many digits: exact round-trip is checked).
ENTROPY_PER_LAYER = {
    0: [6.2217619364765655, 6.20605006161972, 6.205631129826884, 6.198913337611248],
    25: [5.997312345678901, 5.801234567890123, 5.790123456789012, 5.731234567890123],
    100: [6.087654321098765, 6.100123456789012, 6.086543210987654, 6.120987654321098],
}
TRAIN_RESULTS = {
    "status": "completed", "steps": 200, "final_loss": 0.4484123456789012, "final_loss_mean10": 0.4570987654321098,
    "first_loss": 0.4511884748935699, "tokens_seen": 409600, "tokens_per_s": 13835.0, "train_wall_time_s": 29.6,
    "wall_time_s": 30.4,
    "groups": {"model": "tiny", "corpus": "synthetic", "intervention": "none", "trainer": "cpu", "logger": "csv",
               "experiment": None},
    "model": {"name": "tiny", "family": "tiny", "location": "/cache/tiny/step1200", "revision": None, "step": 1200,
              "parameters": 1574400},
    "corpus": {"name": "synthetic", "rows": 2000, "seq_len": 128},
    "seed": 0,
    "output_dir": "outputs/train/2026-11-21/23-28-30-558936",
}


# --- building fake runs -----------------------------------------------------------------------

def write_hydra(run_dir: Path, *, task: str, overrides: list[str], step, job_num=None,
                choices: dict | None = None) -> None:
    """The three files Hydra writes into every run folder."""
    hydra_dir = run_dir / ".hydra"
    hydra_dir.mkdir(parents=True)
    config = {
        "task_name": task, "seed": 0,
        "paths": {"output_dir": "${hydra:runtime.output_dir}", "cache_dir": "${oc.env:KDYN_CACHE_DIR,'~/.cache/kdyn'}"},
        "model": {"name": "tiny", "family": "tiny", "step": step, "path": None},
        "corpus": {"name": "synthetic", "world": {}},
    }
    if task == "train":
        config |= {"trainer": {"max_steps": 200}, "intervention": {"name": "none"}}
    OmegaConf.save(OmegaConf.create(config), hydra_dir / "config.yaml")
    OmegaConf.save(OmegaConf.create(overrides), hydra_dir / "overrides.yaml")
    choices = choices or {"model": "tiny", "corpus": "synthetic"}
    hydra_cfg = {"hydra": {
        "runtime": {"output_dir": str(run_dir),
                    "choices": {**choices, "hydra/launcher": "basic", "hydra/sweeper": "basic", "hydra": "default"}},
        "overrides": {"hydra": [], "task": overrides},
        "job": {"name": task, "num": "???" if job_num is None else job_num, "override_dirname": ",".join(overrides)},
    }}
    OmegaConf.save(OmegaConf.create(hydra_cfg), hydra_dir / "hydra.yaml")


def entropy_json(step: int) -> dict:
    per_layer = ENTROPY_PER_LAYER[step]
    total = sum(per_layer)
    return {
        "total": total, "per_layer": per_layer, "max_total": MAX_LAYER * N_LAYERS, "max_per_layer": [MAX_LAYER] * N_LAYERS,
        "normalized_total": total / (MAX_LAYER * N_LAYERS), "num_tokens": 163840, "num_sequences": 2048,
        "model": {"name": "tiny", "family": "tiny", "step": step, "location": f"/cache/tiny/step{step}", "revision": None},
        "corpus": {"name": "synthetic", "path": None},
        "settings": {"seq_len": 512, "batch_size": 16, "pack": False},
    }


def metrics_csv(path: Path, steps: int = 60, every: int = 10) -> dict[int, dict[str, float]]:
    """Lightning CSVLogger layout: entropy columns only filled every ``every`` steps. Returns what was logged."""
    columns = ["epoch", "step", "train/loss", "train/lr", "train/tokens_seen",
               *(f"entropy/layer_{i}" for i in range(N_LAYERS)), "entropy/total"]
    logged = {}
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for s in range(steps):
            row = {"epoch": 0, "step": s, "train/loss": 0.5 - s * 1e-3, "train/lr": 3e-4, "train/tokens_seen": 2048.0 * (s + 1)}
            if s % every == 0:
                layers = [6.1 + 0.001 * s + 0.01 * i for i in range(N_LAYERS)]
                row |= {f"entropy/layer_{i}": v for i, v in enumerate(layers)} | {"entropy/total": sum(layers)}
                logged[s] = row
            writer.writerow([row.get(c, "") for c in columns])
    return logged


@pytest.fixture
def outputs(tmp_path) -> Path:
    """outputs/ with: a 4-job entropy multirun (steps 0, 25, 100 + one failed job), a completed train run
    with entropy in metrics.csv, an incomplete (resumable) train run, and an entropy run with broken JSON."""
    root = tmp_path / "outputs"
    sweep = root / "entropy" / "multirun" / "2026-11-21" / "23-34-44-244110"
    sweep.mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"hydra": {"mode": "MULTIRUN"}, "model": {"name": "tiny"}}), sweep / "multirun.yaml")
    for job, step in enumerate([0, 25, 100]):
        write_hydra(sweep / str(job), task="entropy", overrides=[f"model.step={step}"], step=step, job_num=job)
        (sweep / str(job) / "entropy.json").write_text(json.dumps(entropy_json(step), indent=2))
    write_hydra(sweep / "3", task="entropy", overrides=["model.step=1500"], step=1500, job_num=3)
    (sweep / "3" / "error.json").write_text(json.dumps(
        {"status": "failed", "error": "tiny has no checkpoint at step 1500; valid steps are 0, 25, 50", "tool": "kdyn-entropy"}))

    train = root / "train" / "2026-11-21" / "23-28-30-558936"
    write_hydra(train, task="train", overrides=["trainer.max_steps=200"], step=None,
                choices={"model": "tiny", "corpus": "synthetic", "intervention": "none", "trainer": "cpu", "logger": "csv"})
    (train / "results.json").write_text(json.dumps(TRAIN_RESULTS, indent=2))
    metrics_csv(train / "metrics.csv")
    (train / "checkpoints" / "hf").mkdir(parents=True)
    (train / "checkpoints" / "last.ckpt").write_bytes(b"ckpt")

    incomplete = root / "train" / "2026-11-21" / "23-35-44-680315"
    write_hydra(incomplete, task="train", overrides=["trainer.max_steps=1000"], step=None)
    (incomplete / "checkpoints").mkdir()
    (incomplete / "checkpoints" / "last.ckpt").write_bytes(b"ckpt")

    broken = root / "entropy" / "2026-11-21" / "23-40-00-000001"
    write_hydra(broken, task="entropy", overrides=["model.step=50"], step=50)
    (broken / "entropy.json").write_text('{"total": 24.1, "per_layer": [6.0, ')  # cut off mid-write
    return root


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kdyn.report.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


# --- discovery and loading --------------------------------------------------------------------

def test_discovery_finds_every_run_once(outputs):
    sweep = next(outputs.glob("entropy/multirun/*/*"))
    dirs = find_run_dirs([outputs, sweep, sweep / "0"])  # overlapping roots: deduplicated
    assert len(dirs) == 7
    assert len(set(dirs)) == 7
    assert [d.name for d in dirs if d.parent == sweep] == ["0", "1", "2", "3"]
    assert not any(".hydra" in d.parts or "checkpoints" in d.parts for d in dirs)


def test_statuses_and_kinds(outputs):
    runs = {(r.path.parent.name if r.path.name.isdigit() else "") + "/" + r.path.name: r for r in collect_runs([outputs])}
    by_status = {}
    for r in runs.values():
        by_status.setdefault(r.status, []).append(r)
    assert {s: len(v) for s, v in by_status.items()} == {"completed": 4, "failed": 1, "incomplete": 1, "unreadable": 1}

    failed = by_status["failed"][0]
    assert failed.kind == "entropy" and failed.job_num == 3 and "step 1500" in failed.error
    incomplete = by_status["incomplete"][0]
    assert incomplete.kind == "train" and incomplete.resumable and "resumable" in incomplete.error
    unreadable = by_status["unreadable"][0]
    assert unreadable.kind == "entropy" and unreadable.error.startswith("entropy.json:")
    train = next(r for r in runs.values() if r.kind == "train" and r.status == "completed")
    assert train.results == TRAIN_RESULTS and train.model_step == 1200 and train.overrides == ["trainer.max_steps=200"]
    job1 = next(r for r in runs.values() if r.job_num == 1)
    assert job1.model_step == 25 and job1.sweep_dir == job1.path.parent
    assert job1.choices == {"model": "tiny", "corpus": "synthetic"}  # hydra/* groups left out


def test_load_run_never_raises_on_garbage(tmp_path):
    run = tmp_path / "r"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("model: [unclosed\n")
    (run / "results.json").write_text("[1, 2]")  # valid JSON, but not an object
    loaded = load_run(run)
    assert loaded.status == "unreadable"
    assert "config.yaml" in loaded.error and "results.json: expected a JSON object" in loaded.error


def test_flatten_nested_and_lists():
    flat = flatten({"a": 1, "b": {"c": 2.5, "d": {"e": None}}, "f": [1, 2], "g": {}}, "results.")
    assert flat == {"results.a": 1, "results.b.c": 2.5, "results.b.d.e": None, "results.f": "[1, 2]", "results.g": "{}"}


# --- the command -----------------------------------------------------------------------------

def test_report_end_to_end(outputs, tmp_path, capsys):
    out = tmp_path / "report"
    assert main([str(outputs), "--out", str(out)]) == 0
    stdout = capsys.readouterr().out

    rows = read_csv(out / "summary.csv")
    assert len(rows) == 7
    columns = list(rows[0])
    assert columns[:4] == ["run_dir", "run", "status", "kind"]
    assert columns.index("group.model") < columns.index("overrides") < columns.index("results.status") \
        < columns.index("entropy.total")
    statuses = sorted(r["status"] for r in rows)
    assert statuses == ["completed"] * 4 + ["failed", "incomplete", "unreadable"]
    assert all(r["error"] for r in rows if r["status"] != "completed")
    assert not any(r["error"] for r in rows if r["status"] == "completed")

    # Every number round-trips exactly from the JSON the run wrote.
    train = next(r for r in rows if r["kind"] == "train" and r["status"] == "completed")
    for key in ("final_loss", "final_loss_mean10", "first_loss", "tokens_per_s", "train_wall_time_s", "wall_time_s"):
        assert float(train[f"results.{key}"]) == TRAIN_RESULTS[key]
    assert train["results.steps"] == "200" and train["results.tokens_seen"] == "409600"
    assert train["results.model.step"] == "1200" and train["results.groups.model"] == "tiny"
    assert train["results.groups.experiment"] == "" and train["group.trainer"] == "cpu"
    assert train["overrides"] == "trainer.max_steps=200" and train["model_step"] == "1200"
    for row in (r for r in rows if r["kind"] == "entropy" and r["status"] == "completed"):
        step = int(row["model_step"])
        written = entropy_json(step)
        assert int(row["entropy.model.step"]) == step and row["overrides"] == f"model.step={step}"
        assert float(row["entropy.total"]) == written["total"]
        assert float(row["entropy.normalized_total"]) == written["normalized_total"]
        assert json.loads(row["entropy.per_layer"]) == ENTROPY_PER_LAYER[step]
        assert row["entropy.settings.pack"] == "false" and row["job_num"] == str(ENTROPY_PER_LAYER_JOBS[step])
        assert row["results.final_loss"] == ""  # other kind's columns stay empty

    # The tidy knowledge-entropy table: one row per layer plus the total, per measured step.
    tidy = read_csv(out / "knowledge_entropy.csv")
    assert list(tidy[0]) == ["model", "corpus", "step", "layer", "entropy", "max", "run_dir"]
    assert len(tidy) == 3 * (N_LAYERS + 1)
    for step, per_layer in ENTROPY_PER_LAYER.items():
        at_step = [r for r in tidy if r["step"] == str(step)]
        assert [r["layer"] for r in at_step] == ["0", "1", "2", "3", "total"]
        assert [float(r["entropy"]) for r in at_step[:N_LAYERS]] == per_layer
        assert float(at_step[-1]["entropy"]) == sum(per_layer)
        assert float(at_step[-1]["max"]) == MAX_LAYER * N_LAYERS
        assert all(float(r["max"]) == MAX_LAYER for r in at_step[:N_LAYERS])
        assert all(r["model"] == "tiny" and r["corpus"] == "synthetic" for r in at_step)

    # Entropy logged during training, tidy.
    logged = read_csv(out / "entropy_during_training.csv")
    totals = [r for r in logged if r["layer"] == "total"]
    assert [int(r["step"]) for r in totals] == [0, 10, 20, 30, 40, 50]
    assert len(logged) == 6 * (N_LAYERS + 1)
    assert {r["label"] for r in logged} == {"trainer.max_steps=200"}

    for name in ("knowledge_entropy.png", "entropy_during_training.png"):
        data = (out / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 20_000, name
    assert not list(out.glob(".*.tmp")) and not list(out.glob(".*png"))  # no leftover temporary files

    # stdout: the table, the files written, then the runs that did not complete.
    assert "kdyn-report: 7 runs (" in stdout
    assert "wrote " in stdout and "summary.csv" in stdout
    assert "1 run failed: entropy/multirun/2026-11-21/23-34-44-244110/3 (tiny has no checkpoint at step 1500" in stdout
    assert "1 run incomplete: train/2026-11-21/23-35-44-680315 (has last.ckpt: resumable)" in stdout
    assert "1 run unreadable: entropy/2026-11-21/23-40-00-000001 (entropy.json:" in stdout


ENTROPY_PER_LAYER_JOBS = {0: 0, 25: 1, 100: 2}


def test_default_out_is_the_single_dir_and_figures_skip_without_data(outputs, capsys):
    train = next(outputs.glob("train/*/23-28-30-558936"))
    # Only a training run without entropy.json: no knowledge_entropy figure, but the training curve.
    assert main([str(train)]) == 0
    assert (train / "summary.csv").is_file()
    assert not (train / "knowledge_entropy.png").exists() and not (train / "knowledge_entropy.csv").exists()
    assert (train / "entropy_during_training.png").read_bytes()[:8] == PNG_MAGIC
    # Reporting again does not take the report's own files for runs.
    assert len(read_csv(train / "summary.csv")) == 1
    assert main([str(train)]) == 0
    assert len(read_csv(train / "summary.csv")) == 1


def test_figure_registry_returns_nothing_without_data(tmp_path, outputs):
    from kdyn.report.figures import figure_functions, make_figures

    incomplete = load_run(next(outputs.glob("train/*/23-35-44-680315")))
    assert all(fn([incomplete], tmp_path / "figs", fmt="png") == [] for fn in figure_functions())
    assert make_figures([incomplete], tmp_path / "figs") == []
    assert not (tmp_path / "figs").exists() or not any((tmp_path / "figs").iterdir())


def test_several_dirs_default_to_report_folder_and_svg(outputs, tmp_path, capsys):
    sweep = next(outputs.glob("entropy/multirun/*/*"))
    train = next(outputs.glob("train/*/23-28-30-558936"))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    result = run_cli(str(sweep), str(train), "--format", "svg", cwd=cwd)
    assert result.returncode == 0, result.stderr
    assert len(read_csv(cwd / "report" / "summary.csv")) == 5
    assert (cwd / "report" / "knowledge_entropy.svg").read_text().lstrip().startswith("<?xml")


@pytest.mark.parametrize("case", ["missing", "empty"])
def test_bad_input_is_one_line_exit_2(tmp_path, case):
    target = tmp_path / "nothing-here"
    if case == "empty":
        (target / "sub").mkdir(parents=True)
        (target / "sub" / "notes.txt").write_text("no runs")
    result = run_cli(str(target))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("kdyn-report: error: ")
    if case == "missing":
        assert "does not exist" in lines[0]
    else:
        assert "no run folders (folders with .hydra/config.yaml) found under" in lines[0]
        assert "kdyn-report expects" in lines[0]
    assert not (target / "summary.csv").exists()


def test_main_returns_2_for_missing_dir(tmp_path, capsys):
    assert main([str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.startswith("kdyn-report: error: ")


def test_knowledge_entropy_several_models_corpora_repeats_and_odd_values(tmp_path, capsys):
    """Two models (4 and 12 layers), two corpora, two seeds at one step, a null step, non-numeric values."""
    root = tmp_path / "outputs"
    specs = [("tiny", "synthetic", 0, 0), ("tiny", "synthetic", 25, 0), ("tiny", "synthetic", 25, 1),
             ("tiny", "text", 25, 0), ("pythia-14m", "synthetic", 0, 0), ("pythia-14m", "synthetic", 1000, 0),
             ("gpt2", "synthetic", None, 0)]
    for i, (model, corpus, step, seed) in enumerate(specs):
        run = root / f"run{i}"
        write_hydra(run, task="entropy", overrides=[f"model={model}", f"seed={seed}"], step=step)
        n = 12 if model == "pythia-14m" else N_LAYERS
        per_layer = [5.0 + 0.01 * j + 0.001 * i for j in range(n)]
        (run / "entropy.json").write_text(json.dumps({
            "total": sum(per_layer), "per_layer": per_layer, "max_total": MAX_LAYER * n, "max_per_layer": [MAX_LAYER] * n,
            "model": {"name": model, "step": step}, "corpus": {"name": corpus}}))
    odd = root / "odd"
    write_hydra(odd, task="entropy", overrides=[], step=50)
    (odd / "entropy.json").write_text(json.dumps({"total": "n/a", "per_layer": ["x"], "model": {"step": 50}}))

    out = tmp_path / "report"
    assert main([str(root), "--out", str(out)]) == 0
    tidy = read_csv(out / "knowledge_entropy.csv")
    assert len(tidy) == 5 * (N_LAYERS + 1) + 2 * 13  # the odd run has no usable numbers: not in the table
    assert {r["step"] for r in tidy if r["model"] == "gpt2"} == {""}  # kept in the table, left out of the plot
    assert {r["corpus"] for r in tidy if r["model"] == "tiny"} == {"synthetic", "text"}
    data = (out / "knowledge_entropy.png").read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 20_000
    assert "warning" not in capsys.readouterr().err
    rows = read_csv(out / "summary.csv")
    assert len(rows) == 8 and {r["status"] for r in rows} == {"completed"}
