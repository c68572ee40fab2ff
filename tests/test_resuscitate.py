"""intervention=resuscitate (Kim et al. 2025, Algorithm 1): the exact weight edit, its effect on the
coefficients, the guards, and an end-to-end training run."""

from __future__ import annotations

import copy
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from kdyn.errors import KdynError
from kdyn.interventions import InterventionContext, build_intervention
from kdyn.models.ffn import locate_ffn
from kdyn.train import train
from tests.conftest import FAST_TRAINER

GATED = ("olmo", "llama", "olmo2")
MEASURE = {"num_sequences": 8, "seq_len": 32, "batch_size": 4, "pack": False, "corpus": None}


def _ctx(model, tokenizer, corpus_jsonl, tmp_path) -> InterventionContext:
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"corpus": {"name": "text", "path": str(corpus_jsonl), "text_field": "text"},
                            "data": {"seq_len": 32}})
    return InterventionContext(model=model, tokenizer=tokenizer, module=None, ffn=locate_ffn(model),
                               output_dir=tmp_path, cfg=cfg)


def _tied_table(layers: int, d_ff: int, seed: int) -> torch.Tensor:
    """Positive rows whose median sits inside a block of equal values (ties at the threshold)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(layers):
        low, mid = d_ff // 4, d_ff // 2  # d_ff/4 values below the tie block, d_ff/2 tied values around the median
        values = torch.cat([torch.rand(low, generator=g) * 0.5 + 0.1, torch.full((mid,), 0.75),
                            torch.rand(d_ff - low - mid, generator=g) + 1.0])
        rows.append(values[torch.randperm(d_ff, generator=g)])
    return torch.stack(rows)


def _write_table(path: Path, table: torch.Tensor) -> Path:
    save_file({"mean_abs_coefficients": table.float().contiguous()}, str(path))
    return path


def _expected_up_rows(weight: torch.Tensor, row: np.ndarray, q: float, p: float) -> tuple[torch.Tensor, np.ndarray]:
    """My own loop over slots: Algorithm 1 with numpy's quantile."""
    threshold = np.quantile(row, q)
    selected = row <= threshold
    expected = weight.clone()
    for i in range(len(row)):
        if selected[i]:
            expected[i] = (weight[i].double() * (p * row.mean() / row[i])).to(weight.dtype)
    return expected, selected


@pytest.mark.parametrize("arch", GATED)
def test_edit_scales_exactly_the_selected_up_rows_and_nothing_else(arch, tiny_models, tokenizer, corpus_jsonl, tmp_path):
    model = copy.deepcopy(tiny_models[arch])
    ffn = locate_ffn(model)
    table = _tied_table(ffn.num_layers, ffn.d_ff[0], seed=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    q, p = 0.5, 2.0
    record = build_intervention({"name": "resuscitate", "q": q, "p": p, "measure": MEASURE,
                                 "coefficients": str(_write_table(tmp_path / "coefficients.safetensors", table))}
                                ).apply(_ctx(model, tokenizer, corpus_jsonl, tmp_path))
    after = model.state_dict()
    up_names = {layer.up_name + ".weight": layer.index for layer in ffn.layers}
    for name, value in after.items():
        if name not in up_names:
            assert torch.equal(value, before[name]), name  # gate, down, attention, norms, embeddings: bit-identical
            continue
        row = table[up_names[name]].double().numpy()
        expected, selected = _expected_up_rows(before[name], row, q, p)
        assert (row[selected] == np.quantile(row, q)).sum() > 1  # ties at the threshold exist ...
        assert torch.equal(value[~torch.from_numpy(selected)], before[name][~torch.from_numpy(selected)])
        torch.testing.assert_close(value, expected, rtol=1e-6, atol=0)  # ... and are scaled too
        layer = record["layers"][up_names[name]]
        assert layer["selected"] == int(selected.sum()) == layer["scaled"]
        assert layer["threshold"] == pytest.approx(float(np.quantile(row, q)))
        multipliers = p * row.mean() / row[selected]
        assert layer["multiplier"]["max"] == pytest.approx(multipliers.max())
        assert layer["multiplier"]["min"] == pytest.approx(multipliers.min())
    assert record["coefficients"]["kind"] == "file"
    assert set(record["knowledge_entropy"]) >= {"table", "before", "after", "measured_on"}


@pytest.mark.parametrize("arch", GATED)
def test_selected_coefficients_scale_by_exactly_their_multiplier(arch, tiny_models, tokenizer, corpus_jsonl, tmp_path):
    """SwiGLU is linear in the up branch: on the same MLP input, coefficient i becomes m_i × coefficient i."""
    old = copy.deepcopy(tiny_models[arch])
    new = copy.deepcopy(tiny_models[arch])
    ffn_old, ffn_new = locate_ffn(old), locate_ffn(new)
    table = torch.rand(ffn_new.num_layers, ffn_new.d_ff[0], generator=torch.Generator().manual_seed(3)) + 0.05
    q, p = 0.3, 2.5
    build_intervention({"name": "resuscitate", "q": q, "p": p, "measure": MEASURE,
                        "coefficients": str(_write_table(tmp_path / "c.safetensors", table))}
                       ).apply(_ctx(new, tokenizer, corpus_jsonl, tmp_path))
    mlp_inputs, coefficients = {}, {}
    new_modules, old_modules = dict(new.named_modules()), dict(old.named_modules())
    handles = [new_modules[layer.mlp_name].register_forward_pre_hook(
        lambda m, a, i=layer.index: mlp_inputs.__setitem__(i, a[0].detach())) for layer in ffn_new.layers]
    new(input_ids=torch.randint(0, 200, (2, 12)))
    for h in handles:
        h.remove()
    for which, modules, ffn in (("old", old_modules, ffn_old), ("new", new_modules, ffn_new)):
        for layer in ffn.layers:
            h = layer.down_proj.register_forward_pre_hook(
                lambda m, a, key=(which, layer.index): coefficients.__setitem__(key, a[0].detach()))
            modules[layer.mlp_name](mlp_inputs[layer.index])
            h.remove()
    for layer in ffn_new.layers:
        row = table[layer.index].double().numpy()
        selected = torch.from_numpy(row <= np.quantile(row, q))
        multiplier = torch.from_numpy(p * row.mean() / row).float()
        c_old, c_new = coefficients[("old", layer.index)], coefficients[("new", layer.index)]
        assert torch.equal(c_new[..., ~selected], c_old[..., ~selected])
        torch.testing.assert_close(c_new[..., selected], c_old[..., selected] * multiplier[selected], rtol=1e-5, atol=1e-7)


def test_dead_slots_are_counted_and_left_unchanged(tiny_models, tokenizer, corpus_jsonl, tmp_path, caplog):
    model = copy.deepcopy(tiny_models["olmo"])
    ffn = locate_ffn(model)
    table = torch.rand(ffn.num_layers, ffn.d_ff[0], generator=torch.Generator().manual_seed(5)) + 0.1
    table[0, :3] = 0.0
    up_before = ffn.layers[0].up_rows().detach().clone()
    with caplog.at_level(logging.WARNING, logger="kdyn.interventions.resuscitate"):
        record = build_intervention({"name": "resuscitate", "measure": MEASURE,
                                     "coefficients": str(_write_table(tmp_path / "c.safetensors", table))}
                                    ).apply(_ctx(model, tokenizer, corpus_jsonl, tmp_path))
    assert record["layers"][0]["dead"] == 3 and record["dead"] == 3
    assert record["layers"][0]["scaled"] == record["layers"][0]["selected"] - 3
    assert torch.equal(ffn.layers[0].up_rows()[:3], up_before[:3])
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert "3 selected slot(s) have C̄ = 0" in caplog.text


@pytest.mark.parametrize("arch", ("gpt2", "gpt_neox"))
def test_non_gated_models_are_refused_with_a_pointer_to_rescale(arch, tiny_models, tokenizer, corpus_jsonl, tmp_path):
    model = copy.deepcopy(tiny_models[arch])
    with pytest.raises(KdynError, match=r"not linear in any row.*intervention=rescale"):
        build_intervention({"name": "resuscitate", "measure": MEASURE}).apply(_ctx(model, tokenizer, corpus_jsonl, tmp_path))


def test_a_table_of_the_wrong_shape_names_both_shapes(tiny_models, tokenizer, corpus_jsonl, tmp_path):
    model = copy.deepcopy(tiny_models["olmo"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    path = _write_table(tmp_path / "c.safetensors", torch.rand(3, 64) + 0.1)
    with pytest.raises(KdynError, match=r"shape \[3 × 64\] but the model has \[2 × 64\]"):
        build_intervention({"name": "resuscitate", "coefficients": str(path), "measure": MEASURE}
                           ).apply(_ctx(model, tokenizer, corpus_jsonl, tmp_path))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing edited
    with pytest.raises(KdynError, match="no such file"):
        build_intervention({"name": "resuscitate", "coefficients": str(tmp_path / "missing"), "measure": MEASURE}
                           ).apply(_ctx(model, tokenizer, corpus_jsonl, tmp_path))


def test_training_run_records_counts_and_entropy_before_and_after(saved_models, corpus_jsonl, compose_train, tokenizer):
    from kdyn.data.corpora import load_documents
    from kdyn.data.sequences import document_batches
    from kdyn.metrics.knowledge_entropy import layer_entropy
    from kdyn.metrics.recorder import measure
    from kdyn.models.loading import load_model

    cfg = compose_train("intervention=resuscitate", "model=local", f"model.path={saved_models['olmo']}", "corpus=text",
                        f"corpus.path={corpus_jsonl}", "trainer.max_steps=2", "data.seq_len=32", "data.batch_size=4",
                        "intervention.measure.num_sequences=24", "intervention.measure.batch_size=8", *FAST_TRAINER)
    results = train(cfg)
    record = json.loads((Path(cfg.paths.output_dir) / "intervention.json").read_text())
    assert results["status"] == "completed" and record == results["intervention"]
    assert record["name"] == "resuscitate" and record["q"] == 0.5 and record["p"] == 2.0

    # an independent measurement of the same checkpoint on the same measurement set
    loaded = load_model({"name": "local", "family": "local", "path": str(saved_models["olmo"])}, seq_len=32)
    ffn = locate_ffn(loaded.model)
    batches = document_batches(load_documents({"name": "text", "path": str(corpus_jsonl)}), loaded.tokenizer,
                               num_sequences=24, seq_len=32, batch_size=8)
    table = torch.stack(measure(loaded.model, ffn, batches).mean_coefficients())
    bound = sum(math.log(d) for d in ffn.d_ff)
    entropy = record["knowledge_entropy"]
    for key in ("table", "before", "after"):
        assert math.isfinite(entropy[key]["total"]) and 0.0 <= entropy[key]["total"] <= bound
    assert entropy["before"]["per_layer"] == pytest.approx(layer_entropy(table).tolist(), rel=1e-9)
    for layer in record["layers"]:
        row = table[layer["layer"]].numpy()
        assert layer["selected"] == int((row <= np.quantile(row, 0.5)).sum())
    # layer 0's MLP input is untouched by the edit, so its C̄ after is exactly C̄ ⊙ multiplier
    row = table[0]
    selected = row <= torch.quantile(row, 0.5)
    predicted = torch.where(selected, row * (2.0 * row.mean() / row), row)
    assert entropy["after"]["per_layer"][0] == pytest.approx(float(layer_entropy(predicted.unsqueeze(0))[0]), rel=1e-6)
