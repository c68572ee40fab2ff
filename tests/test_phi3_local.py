"""A new user's Phi-3 (fused gate_up_proj) through the entry points, with no model.ffn override:
``kdyn-entropy model=local model.path=<phi3>`` (the CLI) and a short continual-training run."""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from kdyn.train import train
from tests.conftest import FAST_TRAINER
from tests.test_mlp_layouts import NUM_LAYERS, build, independent_entropy


@pytest.fixture(scope="module")
def phi3_dir(tmp_path_factory, tokenizer) -> Path:
    folder = tmp_path_factory.mktemp("phi3") / "tiny-phi3"
    build("phi3", tokenizer).save_pretrained(folder)
    clean = copy.deepcopy(tokenizer)  # as trained: without the truncation state earlier calls left on the session one
    clean.backend_tokenizer.no_truncation()
    clean.backend_tokenizer.no_padding()
    clean.save_pretrained(folder)
    return folder


def _independent(phi3_dir, corpus_jsonl, tokenizer, n):
    model = AutoModelForCausalLM.from_pretrained(phi3_dir).eval()
    texts = [json.loads(line)["text"] for line in corpus_jsonl.read_text().splitlines()[:n]]  # the first n documents
    modules = [model.get_submodule(f"model.layers.{i}.mlp.down_proj") for i in range(NUM_LAYERS)]
    return independent_entropy(model, tokenizer, texts, modules)


def test_kdyn_entropy_on_a_saved_phi3_equals_an_independent_computation(phi3_dir, corpus_jsonl, compose_train,
                                                                        tokenizer):
    from kdyn.entropy import measure_checkpoint

    cfg = compose_train("model=local", f"model.path={phi3_dir}", "corpus=text", f"corpus.path={corpus_jsonl}",
                        "entropy.num_sequences=12", "entropy.seq_len=64", "entropy.batch_size=4", config_name="entropy")
    record = measure_checkpoint(cfg)
    expected, count = _independent(phi3_dir, corpus_jsonl, tokenizer, 12)
    assert record["num_tokens"] == count
    assert record["per_layer"] == pytest.approx(expected, rel=1e-6, abs=1e-9)


@pytest.mark.slow
def test_kdyn_entropy_cli_on_a_saved_phi3_equals_an_independent_computation(phi3_dir, corpus_jsonl, tmp_path,
                                                                              tokenizer):
    n, seq_len = 12, 64
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "kdyn.entropy", "model=local", f"model.path={phi3_dir}", "corpus=text",
         f"corpus.path={corpus_jsonl}", f"entropy.num_sequences={n}", f"entropy.seq_len={seq_len}",
         "entropy.batch_size=4", "entropy.device=cpu"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [result] = list(tmp_path.rglob("entropy.json"))
    record = json.loads(result.read_text())
    expected, count = _independent(phi3_dir, corpus_jsonl, tokenizer, n)
    assert record["num_tokens"] == count
    assert record["per_layer"] == pytest.approx(expected, rel=1e-6, abs=1e-9)


def test_continual_training_on_a_saved_phi3_runs(phi3_dir, corpus_jsonl, compose_train):
    cfg = compose_train("model=local", f"model.path={phi3_dir}", "corpus=text", f"corpus.path={corpus_jsonl}",
                        "trainer.max_steps=2", "data.seq_len=32", "data.batch_size=4", "callbacks.entropy.every_n_steps=1",
                        *FAST_TRAINER)
    results = train(cfg)
    assert results["status"] == "completed"
    with (Path(cfg.paths.output_dir) / "metrics.csv").open() as f:
        logged = [float(r["entropy/total"]) for r in csv.DictReader(f) if r.get("entropy/total")]
    bound = NUM_LAYERS * math.log(64)
    assert len(logged) == 2 and all(0.0 < h <= bound for h in logged)  # the default entropy callback ran


def test_resuscitation_on_a_saved_phi3_edits_the_up_half(phi3_dir, corpus_jsonl, compose_train):
    cfg = compose_train("intervention=resuscitate", "model=local", f"model.path={phi3_dir}", "corpus=text",
                        f"corpus.path={corpus_jsonl}", "trainer.max_steps=1", "data.seq_len=32", "data.batch_size=4",
                        "intervention.measure.num_sequences=8", "intervention.measure.batch_size=4", *FAST_TRAINER)
    results = train(cfg)
    record = results["intervention"]
    assert results["status"] == "completed" and record["name"] == "resuscitate"
    assert 0 < record["scaled"] <= record["slots"] == NUM_LAYERS * 64
    assert torch.isfinite(torch.tensor(record["knowledge_entropy"]["after"]["total"]))


@pytest.mark.parametrize("overrides", [[], ["model.ffn.up_proj=null"]])
def test_up_proj_null_on_the_command_line_alone_is_fine(overrides, phi3_dir, corpus_jsonl, compose_train):
    from kdyn.entropy import measure_checkpoint

    cfg = compose_train("model=local", f"model.path={phi3_dir}", "corpus=text", f"corpus.path={corpus_jsonl}",
                        "entropy.num_sequences=4", "entropy.seq_len=32", *overrides, config_name="entropy")
    assert measure_checkpoint(cfg)["d_ff"] == [64] * NUM_LAYERS


def test_gradient_tracing_then_localised_training_on_a_saved_phi3(phi3_dir, corpus_jsonl, compose_train):
    from kdyn.trace import trace_checkpoint

    cfg = compose_train("model=local", f"model.path={phi3_dir}", "trace.max_examples=2", "trace.granularity=attn_mlp",
                        "trace.knowledge_source.num_items=2", "threads=1", config_name="trace")
    trace_checkpoint(cfg)
    stats = json.loads((Path(cfg.paths.output_dir) / "layer_stats.json").read_text())
    assert stats["layers"] == ["layer_0.attn", "layer_0.mlp", "layer_1.attn", "layer_1.mlp"]
    assert all(r > 0 for entry in stats["sets"].values() for r in entry["r"])
    run = compose_train("intervention=localize", f"intervention.layer_stats={cfg.paths.output_dir}", "model=local",
                        f"model.path={phi3_dir}", "corpus=text", f"corpus.path={corpus_jsonl}", "trainer.max_steps=1",
                        "data.seq_len=32", "data.batch_size=4", *FAST_TRAINER)
    results = train(run)
    assert results["status"] == "completed" and results["intervention"]["name"] == "localize"
