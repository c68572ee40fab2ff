"""kdyn-eval: probes of a checkpoint scored without training, in the same table format as training runs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from kdyn.errors import KdynError
from kdyn.eval import evaluate
from tests.conftest import shared_data


def test_eval_scores_every_probe_like_an_independent_computation(saved_models, compose_train):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kdyn.data.knowledge import assign_scenarios, knowledge_records
    from kdyn.data.probes import build_probes, make_batches, tokenize_probes
    from kdyn.metrics.probe_scoring import score_batches

    cfg = compose_train("model=local", f"model.path={saved_models['gpt2']}", "model.step=7", "knowledge.source.num_items=6",
                        "knowledge.scenarios.paraphrase=2", "knowledge.scenarios.duplicate=2",
                        "knowledge.scenarios.once=2", "probes.max_len=128", "probes.batch_tokens=300",
                        config_name="eval")
    results = evaluate(cfg)
    run = Path(cfg.paths.output_dir)
    with (run / "probes.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 * 15 == results["num_probes"]
    assert {r["step"] for r in rows} == {"7"}  # the checkpoint's step labels the rows
    model = AutoModelForCausalLM.from_pretrained(saved_models["gpt2"])
    tok = AutoTokenizer.from_pretrained(saved_models["gpt2"])
    items = assign_scenarios(knowledge_records(cfg.knowledge.source), dict(cfg.knowledge.scenarios), 4)
    probes = build_probes(items)
    scores = score_batches(model, make_batches(tokenize_probes(probes, tok, max_len=128), probes, batch_tokens=4096,
                                               pad_id=tok.pad_token_id or tok.eos_token_id))
    for row, probe in zip(rows, probes):
        assert (int(row["item"]), row["probe_type"], int(row["probe_idx"])) == (probe.item, probe.probe_type,
                                                                                 probe.probe_idx)
        assert float(row["nll"]) == pytest.approx(float(scores["nll"][probe.index]), rel=1e-4)
    saved = json.loads((run / "results.json").read_text())
    mem = [float(r["nll"]) for r in rows if r["scenario"] == "once" and r["probe_type"] == "mem"]
    assert saved["mean_nll"]["once"]["mem"] == pytest.approx(sum(mem) / len(mem), rel=1e-6)


def test_eval_on_the_real_fictional_knowledge_data(saved_models, compose_train):
    path = shared_data("fictional_knowledge")
    cfg = compose_train("model=local", f"model.path={saved_models['llama']}", "knowledge.source.name=fictional_knowledge",
                        f"knowledge.source.path={path}", "knowledge.source.items=[0,12]",
                        "knowledge.scenarios.paraphrase=4", "knowledge.scenarios.duplicate=4",
                        "knowledge.scenarios.once=4", "knowledge.num_events=10", "probes.max_len=128",
                        config_name="eval")
    results = evaluate(cfg)
    assert results["num_probes"] == 12 * 15 and 0 < results["padding_efficiency"] <= 1


def test_eval_rejects_paraphrase_items_without_paraphrases(saved_models, compose_train):
    path = shared_data("fictional_knowledge")
    cfg = compose_train("model=local", f"model.path={saved_models['llama']}", "knowledge.source.name=fictional_knowledge",
                        f"knowledge.source.path={path}", "knowledge.scenarios.paraphrase=50",
                        "knowledge.scenarios.duplicate=0", "knowledge.scenarios.once=0", "knowledge.num_events=10",
                        config_name="eval")
    with pytest.raises(KdynError, match="paraphrase"):
        evaluate(cfg)
