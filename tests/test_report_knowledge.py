"""kdyn-report's knowledge figures recover known retention power laws from probes.csv."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from kdyn.report.cli import main
from tests.test_report import PNG_MAGIC, write_hydra

V0, V_ACQ, T_END = 2.0, 1.0, 120


def _run(root: Path, step: int, decay: float) -> Path:
    """A completed train run whose once-items retain exactly R(t) = 1 − decay·log10 t after t_LAM = 1."""
    run = root / f"step{step}"
    write_hydra(run, task="train", overrides=[f"model.step={step}"], step=step)
    cfg_path = run / ".hydra" / "config.yaml"
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(cfg_path)
    cfg.inject = {"enabled": True, "metrics": {"window": 5, "iqr_multiplier": None, "af_mode": "last",
                                               "af_aggregate": "curve", "max_pre_gap": 0}}
    OmegaConf.save(cfg, cfg_path)
    with (run / "injections.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "event", "row", "item", "scenario", "version", "tokens", "truncated", "mode"])
        for item in range(3):
            w.writerow([0, 0, item, item, "once", "original", 100, False, "replace"])
    with (run / "probes.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "item", "scenario", "probe_type", "probe_idx", "nll", "nll_first", "nll_full", "n_target"])
        for t in range(T_END + 1):
            for item in range(3):
                for idx in range(5):
                    if t == 0:
                        v = V0
                    elif t == 1:
                        v = V_ACQ
                    else:
                        r = 1 - decay * math.log10(t - 1)
                        v = V0 + (V_ACQ - V0) * r
                    w.writerow([t, item, "once", "mem", idx, v, v, v, 2])
    (run / "results.json").write_text(json.dumps({"status": "completed", "model": {"name": "tiny", "step": step}}))
    return run


def test_decay_constants_and_effectivity_are_recovered(tmp_path):
    _run(tmp_path, 100, 0.3)
    _run(tmp_path, 400, 0.5)
    out = tmp_path / "report"
    assert main([str(tmp_path), "--out", str(out)]) == 0
    with (out / "knowledge_by_step.csv").open() as f:
        rows = {int(r["step"]): r for r in csv.DictReader(f)}
    assert float(rows[100]["decay_constant"]) == pytest.approx(0.3, abs=1e-9)
    assert float(rows[400]["decay_constant"]) == pytest.approx(0.5, abs=1e-9)
    assert float(rows[100]["effectivity"]) == pytest.approx(V0 - V_ACQ)
    assert float(rows[100]["acquisition"]) == pytest.approx((V0 - V_ACQ) / V0)
    v_end = V0 + (V_ACQ - V0) * (1 - 0.3 * math.log10(T_END - 1))
    assert float(rows[100]["forgetting"]) == pytest.approx((v_end - V_ACQ) / (V0 - V_ACQ))
    for name in ("retention.png", "knowledge_by_step.png"):  # one retention figure compares the conditions
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    assert not list(out.glob("retention_*.png"))
