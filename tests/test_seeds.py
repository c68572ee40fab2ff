"""Seeds as an axis: the Student-t interval, grouping runs by condition, and the report over seeds."""

from __future__ import annotations

import csv
import json
import math
import random

import pytest

from kdyn.report.collect import Run
from kdyn.report.seeds import condition_key, seed_groups, seed_summary, t_interval, t_quantile, warning_lines

# Two-sided 95% critical values of Student's t from a printed table (e.g. NIST/SEMATECH e-Handbook 1.3.6.7.2).
T_TABLE = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 9: 2.262, 10: 2.228, 29: 2.045, 100: 1.984}


@pytest.mark.parametrize("df", sorted(T_TABLE))
def test_t_quantile_matches_the_printed_table(df):
    assert t_quantile(0.975, df) == pytest.approx(T_TABLE[df], abs=6e-4)
    assert t_quantile(0.025, df) == pytest.approx(-T_TABLE[df], abs=6e-4)


def test_t_interval_by_hand():
    iv = t_interval([1.0, 2.0, 4.0])
    mean, sd = 7 / 3, math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2)
    assert iv.n == 3 and iv.mean == pytest.approx(mean) and iv.std == pytest.approx(sd)
    assert iv.half_width == pytest.approx(4.303 * sd / math.sqrt(3), rel=2e-4)
    one = t_interval([5.0, float("nan"), None])
    assert one.n == 1 and one.mean == 5.0 and one.low is None and one.half_width is None


@pytest.mark.parametrize("n", [3, 5])
def test_t_interval_covers_the_true_mean_95_percent_of_the_time(n):
    rng = random.Random(1234)
    trials, hits = 4000, 0
    for _ in range(trials):
        iv = t_interval([rng.gauss(10.0, 3.0) for _ in range(n)])
        hits += iv.low <= 10.0 <= iv.high
    # binomial sd of the coverage at 4000 trials is 0.0034: ±4 sd around 0.95
    assert abs(hits / trials - 0.95) < 0.014
    # the normal interval (1.96) under-covers with 3 seeds — why the t-interval is used
    if n == 3:
        rng = random.Random(1234)
        normal_hits = 0
        for _ in range(trials):
            xs = [rng.gauss(10.0, 3.0) for _ in range(n)]
            iv = t_interval(xs)
            normal_hits += abs(iv.mean - 10.0) <= 1.96 * iv.std / math.sqrt(n)
        assert normal_hits / trials < 0.85  # theory: 2·F_t2(1.96) − 1 = 0.811


def _run(name, seed=0, lr=3e-4, loss=1.0, source_seed=0, **extra) -> Run:
    config = {"task_name": "train", "seed": seed, "run_id": name, "optim": {"lr": lr},
              "inject": {"source": {"seed": source_seed, "num_items": 30}},
              "paths": {"output_dir": f"/tmp/{name}"}, "model": {"name": "tiny", "pretrain_seed": None}}
    for dotted, value in extra.items():
        node = config
        *parents, last = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    from pathlib import Path

    return Run(path=Path(f"/tmp/{name}"), status="completed", kind="train", config=config, name=name,
               results={"status": "completed", "final_loss": loss, "seed": seed, "wall_time_s": random.random()})


def test_runs_differing_only_in_seed_keys_are_pooled_and_others_never():
    runs = [_run("a0", seed=0, loss=1.0), _run("a1", seed=1, loss=1.2), _run("a2", source_seed=5, loss=1.1),
            _run("a3", model__pretrain_seed=2, loss=1.3),
            _run("b0", seed=0, lr=1e-3, loss=2.0), _run("b1", seed=1, lr=1e-3, loss=2.2),
            _run("c0", seed=0, loss=1.0, inject__source__num_items=31)]
    groups = seed_groups(runs)
    assert [[r.name for r in g.runs] for g in groups] == [["a0", "a1", "a2", "a3"], ["b0", "b1"], ["c0"]]
    assert [g.label for g in groups] == ["inject.source.num_items=30 optim.lr=0.0003",
                                         "inject.source.num_items=30 optim.lr=0.001",
                                         "inject.source.num_items=31 optim.lr=0.0003"]
    # property: pooled runs have equal non-seed configs; runs of different groups differ in a non-seed key
    for i, g in enumerate(groups):
        assert len({condition_key(r) for r in g.runs}) == 1
        for h in groups[i + 1:]:
            assert condition_key(g.runs[0]) != condition_key(h.runs[0])


def test_labels_name_only_what_differs_within_a_task():
    """A report over a train sweep and an entropy sweep labels each condition by the keys that differ
    between conditions of its own task (not by every key the other task lacks), prefixed by the task."""
    trains = [_run("t0", seed=0, loss=1.0), _run("t1", seed=1, loss=1.1), _run("t2", seed=0, lr=1e-3, loss=2.0)]
    entropies = []
    for step in (25, 1200):
        for organism in (None, 1):
            run = _run(f"e{step}-{organism}", loss=0.0, model__pretrain_seed=organism, model__step=step)
            run.config = {"task_name": "entropy", "model": run.config["model"], "entropy": {"batch_size": 16}}
            run.kind = "entropy"
            entropies.append(run)
    groups = seed_groups(trains + entropies)
    assert [g.label for g in groups] == ["train: optim.lr=0.0003", "train: optim.lr=0.001",
                                         "entropy: model.step=25", "entropy: model.step=1200"]
    assert [g.n_seeds for g in groups] == [2, 1, 2, 2]


def test_random_configs_are_never_pooled_across_non_seed_differences():
    rng = random.Random(7)
    runs = [_run(f"r{i}", seed=rng.randint(0, 3), lr=rng.choice([1e-4, 3e-4]), source_seed=rng.randint(0, 2),
                 data__seq_len=rng.choice([64, 128])) for i in range(40)]
    for g in seed_groups(runs):
        assert len({(r.config["optim"]["lr"], r.config["data"]["seq_len"]) for r in g.runs}) == 1
    assert sum(g.n_seeds for g in seed_groups(runs)) == 40
    assert len(seed_groups(runs)) == len({(r.config["optim"]["lr"], r.config["data"]["seq_len"]) for r in runs})


def test_seed_summary_rows_and_flags():
    runs = [_run("a0", seed=0, loss=1.0), _run("a1", seed=1, loss=1.2), _run("a2", seed=2, loss=1.7),
            _run("b0", seed=0, lr=1e-3, loss=2.0), _run("b1", seed=1, lr=1e-3, loss=2.0)]
    groups = seed_groups(runs)
    rows = {(r["condition"], r["metric"]): r for r in seed_summary(groups)}
    a = rows[("optim.lr=0.0003", "results.final_loss")]
    sd = math.sqrt(sum((x - 1.3) ** 2 for x in (1.0, 1.2, 1.7)) / 2)
    assert a["n_seeds"] == 3 and a["mean"] == pytest.approx(1.3) and not a["few_seeds"]
    assert a["ci95_low"] == pytest.approx(1.3 - 4.303 * sd / math.sqrt(3), rel=1e-3)
    assert ("optim.lr=0.0003", "results.seed") not in rows  # the seed itself is no metric
    b = rows[("optim.lr=0.001", "results.final_loss")]
    assert b["few_seeds"] and b["identical_seeds"] and b["ci95_half_width"] == 0
    lines = warning_lines(groups)
    assert any("2 seeds of [optim.lr=0.001] gave identical results" in line for line in lines)
    assert not any("optim.lr=0.0003] gave identical" in line for line in lines)


def _write_run(folder, config, results=None, entropy=None):
    import yaml

    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    if results is not None:
        (folder / "results.json").write_text(json.dumps(results))
    if entropy is not None:
        (folder / "entropy.json").write_text(json.dumps(entropy))


def test_report_over_a_seed_sweep_prints_intervals(tmp_path, capsys):
    from kdyn.report.cli import main

    losses = {0: 0.61, 1: 0.66, 2: 0.64}
    for seed, loss in losses.items():
        _write_run(tmp_path / "sweep" / f"seed={seed}", {"task_name": "train", "seed": seed, "optim": {"lr": 1e-3}},
                   {"status": "completed", "final_loss": loss, "seed": seed})
    assert main([str(tmp_path / "sweep"), "--out", str(tmp_path / "out"), "--no-figures"]) == 0
    text = capsys.readouterr().out
    mean = sum(losses.values()) / 3
    half = 4.303 * math.sqrt(sum((x - mean) ** 2 for x in losses.values()) / 2) / math.sqrt(3)
    assert f"      final_loss {mean:.4g} ± {half:.2g} (n=3)\n" in text
    with (tmp_path / "out" / "summary_seeds.csv").open() as f:
        row = next(r for r in csv.DictReader(f) if r["metric"] == "results.final_loss")
    assert row["n_seeds"] == "3" and row["few_seeds"] == "false" and float(row["mean"]) == pytest.approx(mean)
    with (tmp_path / "out" / "summary.csv").open() as f:
        assert {r["n_seeds"] for r in csv.DictReader(f)} == {"3"}


def test_report_flags_steps_with_identical_weights(tmp_path, capsys):
    from kdyn.report.cli import main

    def entropy(step, digest, total):
        return {"status": "completed", "total": total, "per_layer": [total / 2, total / 2],
                "model": {"name": "pythia-70m", "step": step, "weights_sha256": digest}}

    for step, digest, total in ((1000, "a" * 64, 10.0), (2000, "b" * 64, 9.5), (3000, "b" * 64, 9.5)):
        _write_run(tmp_path / f"step{step}", {"task_name": "entropy", "seed": 0, "model": {"step": step}},
                   entropy=entropy(step, digest, total))
    assert main([str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    text = capsys.readouterr().out
    assert "pythia-70m: steps 2000, 3000 have identical weights" in text
    with (tmp_path / "out" / "summary.csv").open() as f:
        flags = {r["model_step"]: r["identical_weights_as"] for r in csv.DictReader(f)}
    assert flags == {"1000": "", "2000": "steps 3000", "3000": "steps 2000"}
    assert (tmp_path / "out" / "knowledge_entropy.png").is_file()


# --- what `seed` varies: where injected texts land --------------------------------------------

def _plan(tokenizer, seed, first_row=2):
    from kdyn.data.injection import build_plan
    from kdyn.data.knowledge import assign_scenarios, knowledge_records

    records = knowledge_records({"name": "synthetic", "num_items": 9, "seed": 0})
    items = assign_scenarios(records, {"paraphrase": 3, "duplicate": 3, "once": 3}, 3)
    return build_plan(items, tokenizer, seq_len=64, global_batch_size=24, max_steps=40, interval=10, num_events=3,
                      first_row=first_row, placement_seed=seed)


def test_placement_seed_zero_is_the_documented_layout(tokenizer):
    plan = _plan(tokenizer, 0)
    for event in plan.events:
        rows = [r for r in plan.to_rows() if r["step"] == event.step]
        # texts in item order, rows consecutive from first_row
        assert [r["item"] for r in rows] == sorted(r["item"] for r in rows)
        assert sorted({r["row"] for r in rows}) == list(range(2, 2 + len(event.rows)))


def test_placement_seed_moves_texts_but_not_what_or_when(tokenizer):
    base, moved, again = _plan(tokenizer, 0), _plan(tokenizer, 3), _plan(tokenizer, 3)
    what = lambda plan: sorted((r["step"], r["item"], r["version"]) for r in plan.to_rows())  # noqa: E731
    assert what(moved) == what(base)
    assert moved.to_rows() == again.to_rows()  # deterministic
    assert {(r["step"], r["row"], r["item"]) for r in moved.to_rows()} != {(r["step"], r["row"], r["item"])
                                                                          for r in base.to_rows()}
    assert all(2 <= r["row"] < 24 for r in moved.to_rows())
    # the stream transform writes every text into the row the plan names
    import torch

    for event in moved.events:
        batch = {"input_ids": torch.zeros(24, 64, dtype=torch.long)}
        moved(batch, event.step, torch.arange(24))
        for r, texts in enumerate(event.rows):
            row = moved.global_row(event, r)
            expected = [t for text in texts for t in text.tokens][:64]
            assert batch["input_ids"][row, : len(expected)].tolist() == expected
        untouched = set(range(24)) - {moved.global_row(event, r) for r in range(len(event.rows))}
        assert all(batch["input_ids"][u].abs().sum() == 0 for u in untouched)


@pytest.mark.slow
def test_two_seeds_of_the_default_job_differ(saved_models, corpus_jsonl, compose_train):
    from kdyn.train import train

    common = ["model=local", f"model.path={saved_models['llama']}", "corpus=text", f"corpus.path={corpus_jsonl}",
              "trainer.max_steps=6", "data.seq_len=128", "data.batch_size=8", "inject.source.num_items=6",
              "inject.scenarios.paraphrase=2", "inject.scenarios.duplicate=2", "inject.scenarios.once=2",
              "inject.interval=2", "inject.num_events=2", "inject.metrics.window=1", "trainer.enable_progress_bar=false",
              "callbacks.checkpoint.every_n_train_steps=1000"]
    losses = [train(compose_train(*common, f"seed={seed}"))["final_loss"] for seed in (1, 2)]
    assert losses[0] != losses[1]


SEED_SWEEPS = sorted(p.stem for p in (__import__("pathlib").Path(__file__).parents[1] / "sweeps").glob("seeds_*.yaml"))


@pytest.mark.parametrize("name", SEED_SWEEPS)
def test_seed_grids_compose_and_sweep_a_seed_key(name):
    import os

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from kdyn.config import CONF_DIR
    from kdyn.report.seeds import SEED_KEYS

    sweeps = CONF_DIR.parent / "sweeps"
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=os.fspath(sweeps), version_base="1.3"):
        cfg = compose(config_name=name, overrides=[f"hydra.searchpath=[file://{CONF_DIR}]"], return_hydra_config=True)
    GlobalHydra.instance().clear()
    params = dict(cfg.hydra.sweeper.params)
    assert any(key in SEED_KEYS for key in params), params
    assert cfg.sweep_id == name
    # distinct draws of a seed key (`null` is the default organism of model.pretrain_seed: a draw too)
    assert len({s.strip() for key in params if key in SEED_KEYS for s in str(params[key]).split(",")}) >= 3


def test_sweep_figures_compare_conditions_in_one_figure_without_legend_warnings(tmp_path, recwarn, capsys):
    from omegaconf import OmegaConf

    from kdyn.report.cli import main
    from tests.test_report_knowledge import _run as knowledge_run

    # a 2 × 2 sweep: model.step ∈ {100, 400} × seed ∈ {0, 1}
    for seed, decays in ((0, (0.3, 0.5)), (1, (0.4, 0.6))):
        for step, decay in zip((100, 400), decays):
            run = knowledge_run(tmp_path / f"seed{seed}", step, decay)
            cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
            cfg.seed = seed
            OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
    out = tmp_path / "report"
    assert main([str(tmp_path), "--out", str(out)]) == 0
    assert (out / "retention.png").is_file() and not list(out.glob("retention_*"))
    assert not [w for w in recwarn.list if "legend" in str(w.message).lower()]
    assert "legend" not in capsys.readouterr().err.lower()
    with (out / "knowledge_by_step.csv").open() as f:
        rows = list(csv.DictReader(f))
    # every seed's own point, tagged with its seed and its condition (the step is the x axis, not a condition)
    assert sorted((r["step"], r["seed"], round(float(r["decay_constant"]), 9)) for r in rows) == [
        ("100", "0", 0.3), ("100", "1", 0.4), ("400", "0", 0.5), ("400", "1", 0.6)]
    assert {r["condition"] for r in rows} == {"all runs"}


def test_interval_of_huge_finite_values_scales_instead_of_overflowing():
    """A metric such as a power-law fit's x-intercept can be ~1e300 in one seed: no OverflowError,
    and the interval is the small-number interval scaled (independent: the t quantile 4.303 for n=3)."""
    import statistics

    from kdyn.report.seeds import t_interval

    small = [1.0, 3.0, 2.5]
    iv = t_interval([x * 1e300 for x in small])
    assert iv.n == 3
    assert iv.mean == pytest.approx(statistics.mean(small) * 1e300, rel=1e-12)
    assert iv.std == pytest.approx(statistics.stdev(small) * 1e300, rel=1e-12)
    assert iv.half_width == pytest.approx(4.302652729911275 * statistics.stdev(small) / 3 ** 0.5 * 1e300, rel=1e-9)
    assert t_interval([5.0, 5.0, 5.0]).std == 0.0
