"""``kdyn-report --baseline KEY=VALUE``: conditions compared with a baseline paired over the seed draws they share.

The run folders are written by hand (``.hydra/config.yaml``, ``hydra.yaml`` with the group choices,
``overrides.yaml``, ``results.json``) with organisms whose offsets are large and a within-organism difference
that is nearly constant; the paired mean and half-width are checked against an independent computation
(statistics.mean / stdev and the printed t = 4.303 for 3 pairs)."""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

import pytest
import yaml

from kdyn.report.cli import main

T975_2 = 4.303  # two-sided 95% critical value of Student's t with 2 degrees of freedom (printed table)
OFFSET = {1: 100.0, 2: 200.0, 3: 400.0}   # organism → its baseline C_ppl after the last period
WORSE = {1: 0.08, 2: 0.10, 3: 0.12}       # organism → how much worse (relative) the intervention is
TARGETS = {"none": "kdyn.interventions.Intervention", "localize": "kdyn.interventions.localize.Localize"}


def write_run(root: Path, intervention: str, organism: int, c_ppl: float, *, lr: float = 3e-4,
              hydra_yaml: bool = True, loss: float | None = None, rule: str | None = None) -> Path:
    """One kdyn-train run folder (the published layout) with TemporalWiki numbers for periods p1 and p2."""
    folder = root / (f"intervention={intervention},model.pretrain_seed={organism},optim.lr={lr}"
                     + (f",rule={rule}" if rule else ""))
    (folder / ".hydra").mkdir(parents=True)
    config = {"task_name": "train", "seed": 0, "run_id": None,
              "model": {"name": "tiny", "step": 1200, "pretrain_seed": organism},
              "corpus": {"name": "temporalwiki"}, "optim": {"lr": lr},
              "intervention": {"_target_": TARGETS[intervention], "name": intervention, **({"rule": rule} if rule else {})}}
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    overrides = [f"intervention={intervention}", f"model.pretrain_seed={organism}", f"optim.lr={lr}"]
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if hydra_yaml:
        hydra = {"hydra": {"runtime": {"choices": {"model": "tiny", "corpus": "temporalwiki",
                                                   "intervention": intervention, "hydra/launcher": "basic"}},
                           "job": {"num": 0}, "overrides": {"task": overrides}}}
        (folder / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(hydra))
    results = {"status": "completed", "seed": 0, "final_loss": loss if loss is not None else c_ppl / 100.0,
               "temporalwiki": {"p1": {"C_ppl_full": 2 * c_ppl, "UnC_ppl_full": 50.0 + organism},
                                "p2": {"C_ppl_full": c_ppl, "UnC_ppl_full": 60.0 + organism}}}
    (folder / "results.json").write_text(json.dumps(results))
    return folder


def sweep(root: Path, **kwargs) -> Path:
    """2 conditions (none, localize) × 3 organisms."""
    for org, base in OFFSET.items():
        write_run(root, "none", org, base, **kwargs)
        write_run(root, "localize", org, base * (1 + WORSE[org]), **kwargs)
    return root


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def expected(values):
    """(mean, half-width of the 95% t-interval) of 3 values, computed independently of kdyn."""
    assert len(values) == 3
    return statistics.mean(values), T975_2 * statistics.stdev(values) / math.sqrt(3)


def row(rows, metric, condition_part="localize"):
    [r] = [r for r in rows if r["metric"] == metric and condition_part in r["condition"]]
    return r


@pytest.mark.parametrize("baseline", ["intervention=none", "intervention.name=none", "intervention=none (no hydra.yaml)"])
def test_paired_differences_match_an_independent_computation(tmp_path, capsys, baseline):
    no_hydra = baseline.endswith("(no hydra.yaml)")
    runs = sweep(tmp_path / "sweep", hydra_yaml=not no_hydra)
    out = tmp_path / "out"
    assert main([str(runs), "--out", str(out), "--no-figures", "--baseline", baseline.split()[0]]) == 0
    text = capsys.readouterr().out

    rows = read_csv(out / "summary_paired.csv")
    assert {r["condition"] for r in rows} == {"intervention._target_=kdyn.interventions.localize.Localize "
                                              "intervention.name=localize"}
    diffs = [OFFSET[o] * WORSE[o] for o in OFFSET]
    rels = [100 * WORSE[o] for o in OFFSET]
    mean, half = expected(diffs)
    rel_mean, rel_half = expected(rels)
    r = row(rows, "results.temporalwiki.p2.C_ppl_full")
    assert r["baseline"] == "intervention._target_=kdyn.interventions.Intervention intervention.name=none"
    assert int(r["n_pairs"]) == 3 and r["few_seeds"] == "false" and r["unpaired_runs"] == "0"
    assert float(r["mean_diff"]) == pytest.approx(mean)
    assert float(r["ci95_half_width"]) == pytest.approx(half, rel=1e-3)
    assert float(r["ci95_low"]) == pytest.approx(mean - half, rel=1e-3)
    assert float(r["mean_rel_pct"]) == pytest.approx(rel_mean)
    assert float(r["rel_ci95_half_width"]) == pytest.approx(rel_half, rel=1e-3)
    assert float(r["rel_ci95_low"]) > 0  # every organism is worse: the paired interval excludes 0 …
    assert float(r["baseline_mean"]) == pytest.approx(statistics.mean(OFFSET.values()))
    assert {d["model.pretrain_seed"] for d in json.loads(r["pairs"])} == {1, 2, 3}
    # … while the intervals over seeds of the two conditions overlap (the organisms' spread dominates)
    seeds = {s["condition"].split("name=")[-1]: s for s in read_csv(out / "summary_seeds.csv")
             if s["metric"] == "results.temporalwiki.p2.C_ppl_full"}
    assert float(seeds["localize"]["ci95_low"]) < float(seeds["none"]["ci95_high"])

    # the printed block: the headline metrics, C_ppl / UnC_ppl after the last period only (p1 is in the CSV)
    assert f"Paired against {baseline.split()[0]} [" in text
    block = text[text.index("Paired against"):]
    assert f"      temporalwiki.p2.C_ppl_full {mean:+.4g} ± {half:.2g}, {rel_mean:+.1f}% ± {rel_half:.1f}% (n=3)\n" in block
    assert "      temporalwiki.p2.UnC_ppl_full +0 ± 0, +0.0% ± 0.0% (n=3)\n" in block
    assert "temporalwiki.p1." not in text
    assert row(rows, "results.temporalwiki.p1.C_ppl_full")["n_pairs"] == "3"


def test_seeds_without_a_baseline_run_are_left_out_and_counted(tmp_path, capsys):
    runs = sweep(tmp_path / "sweep")
    write_run(runs, "localize", 4, 1000.0)   # organism 4 has no baseline run
    write_run(runs, "none", 5, 3000.0)       # organism 5 has no intervention run
    out = tmp_path / "out"
    assert main([str(runs), "--out", str(out), "--no-figures", "--baseline", "intervention=none"]) == 0
    text = capsys.readouterr().out
    r = row(read_csv(out / "summary_paired.csv"), "results.temporalwiki.p2.C_ppl_full")
    assert r["n_pairs"] == "3" and r["unpaired_runs"] == "1"
    assert float(r["mean_diff"]) == pytest.approx(expected([OFFSET[o] * WORSE[o] for o in OFFSET])[0])
    assert {d["model.pretrain_seed"] for d in json.loads(r["pairs"])} == {1, 2, 3}
    [note] = [line for line in text.splitlines() if line.startswith("note: [") and "without a baseline" in line]
    assert "1 run without a baseline run of the same seeds" in note and "model.pretrain_seed=4" in note


def test_runs_differing_in_a_non_seed_key_are_not_paired(tmp_path, capsys):
    runs = sweep(tmp_path / "sweep")                       # lr = 3e-4
    for org, base in OFFSET.items():                       # lr = 1e-3: the intervention is 20 better in every organism
        write_run(runs, "none", org, base + 7.0, lr=1e-3)
        write_run(runs, "localize", org, base - 13.0, lr=1e-3)
        write_run(runs, "localize", org, base, lr=1e-2)    # lr = 1e-2 has no baseline condition
    out = tmp_path / "out"
    assert main([str(runs), "--out", str(out), "--no-figures", "--baseline", "intervention=none"]) == 0
    text = capsys.readouterr().out
    rows = [r for r in read_csv(out / "summary_paired.csv") if r["metric"] == "results.temporalwiki.p2.C_ppl_full"]
    by_lr = {r["condition"].split("optim.lr=")[1].split()[0]: r for r in rows}
    assert set(by_lr) == {"0.0003", "0.001"}                # lr=1e-2 is never paired with another lr's baseline
    assert "optim.lr=0.001" in by_lr["0.001"]["baseline"] and "optim.lr=0.0003" in by_lr["0.0003"]["baseline"]
    assert float(by_lr["0.001"]["mean_diff"]) == pytest.approx(-20.0)
    assert float(by_lr["0.001"]["ci95_half_width"]) == pytest.approx(0.0, abs=1e-9)
    assert float(by_lr["0.0003"]["mean_diff"]) == pytest.approx(expected([OFFSET[o] * WORSE[o] for o in OFFSET])[0])
    assert "(2 baseline conditions)" in text
    [note] = [line for line in text.splitlines() if "is not paired" in line]
    assert "optim.lr=0.01" in note and "differs from every baseline condition outside intervention.* (in optim.lr)" in note


@pytest.mark.parametrize("baseline, message", [
    ("interventon=none", "no run has a config group or config key 'interventon' (config groups: corpus, intervention, model"),
    ("intervention.nam=none", "no run has a config group or config key 'intervention.nam'"),
    ("intervention=nonee", "--baseline intervention=nonee matches no completed run (in these runs intervention is "
                           "localize, none); pass one of these values"),
    ("model.pretrain_seed=1", "model.pretrain_seed is a seed key"),
    ("run_id=x", "run_id is a bookkeeping key"),
    ("intervention", "--baseline expects KEY=VALUE[,KEY=VALUE…] (e.g. --baseline intervention=none), got 'intervention'"),
    ("intervention=none,", "--baseline expects KEY=VALUE"),
    ("model.name=tiny", "--baseline model.name=tiny matches every condition (2): there is nothing to pair with it"),
    ("intervention.name=localize", "--baseline intervention.name=localize matches 2 conditions that differ only "
                                   "within intervention.* (intervention.rule=null / random_k); add a KEY=VALUE that "
                                   "picks one, e.g. --baseline intervention.name=localize,intervention.rule=null"),
])
def test_bad_baseline_is_one_line_exit_2(tmp_path, capsys, baseline, message):
    runs = sweep(tmp_path / "sweep")
    if baseline == "intervention.name=localize":
        write_run(runs, "localize", 1, 1.0, rule="random_k")  # a second localize condition: which one is meant?
    out = tmp_path / "out"
    assert main([str(runs), "--out", str(out), "--no-figures", "--baseline", baseline]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kdyn-report: error: --baseline "), captured.err
    assert message in lines[0]
    assert not (out / "summary.csv").exists() and not (out / "summary_paired.csv").exists()
