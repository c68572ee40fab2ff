"""Keep benchmarks/bench.py from rotting: a quick run of its cheapest tiny-model sections.

Only checks that the sections run and fill their rows; the figures themselves are not tested
(targets are reported by the script, not asserted).
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_quick_tiny_sections(tmp_path):
    out = tmp_path / "results.csv"
    env = {**os.environ, "KDYN_BENCH_THREADS": os.environ.get("KDYN_BENCH_THREADS", "1")}
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench.py"), "--only", "overhead,freeze,trace,gpu", "--quick",
         "--tiny-only", "--csv", str(out)],
        capture_output=True, text=True, env=env, timeout=1800)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    rows = list(csv.DictReader(out.open()))
    sections = {r["section"] for r in rows}
    assert sections == {"overhead", "freeze", "trace", "gpu"}
    overhead = next(r for r in rows if r["section"] == "overhead")
    assert overhead["target"] == "≥ 0.95" and overhead["met"] in ("True", "False")
    assert "LOSSES DIFFER" not in overhead["note"]  # kdyn and the hand-written loop computed the same thing
    state = next(r for r in rows if r["section"] == "freeze" and r["metric"] == "optimizer state drop")
    assert state["met"] == "True"  # frozen parameters hold no AdamW state: exact, not a timing
    per_example = next(r for r in rows if r["section"] == "trace" and r["metric"] == "seconds per diagnostic example")
    assert float(per_example["value"]) > 0
    assert "| section | case |" in proc.stdout
