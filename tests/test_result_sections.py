"""results.json sections contributed by the run's parts (kdyn.utils.results), not by kdyn.train."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from kdyn.utils.results import ResultSection, collect_result_sections
from tests.conftest import FAST_TRAINER


class _Part:
    def __init__(self, section):
        self.section = section

    def result_section(self, out):
        return self.section


def test_sections_are_merged_in_order_and_parts_without_one_are_skipped(tmp_path):
    parts = [object(), _Part(ResultSection({"a": 1}, [("a", "1")])), _Part(None),
             _Part(ResultSection({"b": {"x": 2}}, [("b", "2")]))]
    merged = collect_result_sections(parts, tmp_path)
    assert merged.values == {"a": 1, "b": {"x": 2}} and list(merged.values) == ["a", "b"]
    assert merged.rows == [("a", "1"), ("b", "2")]


def test_temporalwiki_section_comes_from_the_periods_callback(saved_models, compose_train, capsys):
    from kdyn.train import train

    cfg = compose_train("model=local", f"model.path={saved_models['llama']}", "corpus=temporalwiki",
                        "corpus.n_periods=2", "corpus.max_changed=6", "corpus.max_unchanged=6", "data.seq_len=32",
                        "data.batch_size=4", "callbacks.periods.max_len=32", *FAST_TRAINER, "trainer.max_steps=-1")
    results = train(cfg)
    out = Path(cfg.paths.output_dir)
    with (out / "temporalwiki.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    # independently: per period trained, the row of that period's own probes (and the step-0 "before" rows)
    expected = {}
    for row in rows:
        after = row["after_period"]
        if after != "before" and row["probe_period"] != after:
            continue
        tag = "C" if row["scenario"] == "changed" else "UnC"
        entry = expected.setdefault(after, {"step": int(row["step"]), "probe_period": row["probe_period"]})
        entry[f"{tag}_ppl_full"] = float(row["ppl_full"])
        entry[f"{tag}_ppl_object"] = float(row["ppl_object"])
        entry[f"{tag}_n"] = int(row["n"])
    assert len(expected) == 3  # before + 2 periods
    assert results["temporalwiki"] == expected
    assert json.loads((out / "results.json").read_text())["temporalwiki"] == expected
    assert "injection" not in results  # inject.enabled=false: that part contributes nothing
    printed = capsys.readouterr().out
    assert all(f"after {period}" in printed for period in expected)
