"""Layer statistics record the model they were traced on; localize and localize_alr refuse them for
another model (one check), in one line naming both models' layer counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdyn.errors import KdynError
from kdyn.trace import trace_checkpoint
from kdyn.train import train
from tests.conftest import FAST_TRAINER


def _llama(tmp_path: Path, tokenizer, layers: int) -> Path:
    from kdyn.models.scratch import build_scratch_model
    from tests.conftest import tiny_spec

    spec = tiny_spec("llama", tokenizer)
    model = build_scratch_model(type(spec)(**{**spec.__dict__, "num_layers": layers}), seed=1)
    folder = tmp_path / f"llama{layers}"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def traced4(tmp_path, tokenizer, compose_train):
    """kdyn-trace's layer_stats.json of a 4-layer model, and that model."""
    model = _llama(tmp_path, tokenizer, 4)
    cfg = compose_train("model=local", f"model.path={model}", "trace.max_examples=4", "trace.sets=[new_entities]",
                        "trace.plot=false", config_name="trace")
    trace_checkpoint(cfg)
    return Path(cfg.paths.output_dir) / "layer_stats.json", model


def _train(compose_train, model, corpus_jsonl, *overrides):
    return train(compose_train("model=local", f"model.path={model}", "corpus=text", f"corpus.path={corpus_jsonl}",
                               "trainer.max_steps=1", "data.seq_len=32", "data.batch_size=2", *overrides,
                               *FAST_TRAINER))


def test_stats_record_the_traced_model(traced4):
    stats, _ = traced4
    record = json.loads(stats.read_text())
    assert record["architecture"]["num_layers"] == 4 == len(record["layers"])
    assert len(record["architecture"]["d_ff"]) == 4


@pytest.mark.parametrize("intervention", ["localize", "localize_alr"])
def test_stats_of_another_model_are_refused(intervention, traced4, tmp_path, tokenizer, corpus_jsonl, compose_train):
    stats, model4 = traced4
    model3 = _llama(tmp_path, tokenizer, 3)
    args = [f"intervention={intervention}", f"intervention.layer_stats={stats}", "intervention.set_name=new_entities"]
    with pytest.raises(KdynError) as info:
        _train(compose_train, model3, corpus_jsonl, *args)
    message = str(info.value)
    assert "\n" not in message and "num_layers=4" in message and "num_layers=3" in message and "kdyn-trace" in message
    _train(compose_train, model4, corpus_jsonl, *args)  # the traced model itself is accepted


def test_stats_without_a_record_must_name_this_models_layers(tmp_path, tokenizer, corpus_jsonl, compose_train):
    """Older layer_stats.json files (no "architecture"): a 4-layer profile is refused on a 3-layer model
    even when the layers it selects exist there."""
    r = [0.5, 2.0, 1.0, 0.5]  # above the mean: layer_1 only, which a 3-layer model also has
    stats = tmp_path / "old.json"
    stats.write_text(json.dumps({"layers": [f"layer_{i}" for i in range(4)], "granularity": "block", "norm": "l2",
                                 "sets": {"updated": {"g_span": r, "g_lm": [1.0] * 4, "r": r, "n_examples": 5}}}))
    with pytest.raises(KdynError, match=r"this model's layers are \['layer_0', 'layer_1', 'layer_2'\]"):
        _train(compose_train, _llama(tmp_path, tokenizer, 3), corpus_jsonl, "intervention=localize",
               f"intervention.layer_stats={stats}")
