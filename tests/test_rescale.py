"""intervention=rescale: the coefficient-scaling pre-hook, slot selections, eval mode, annealing,
hook removal, non-gated architectures and end-to-end training runs."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from kdyn.callbacks.rescale import RescaleCoefficients, annealed_factor
from kdyn.errors import KdynError
from kdyn.interventions import build_intervention
from kdyn.interventions.measurement import select_slots
from kdyn.models.ffn import locate_ffn
from kdyn.train import train
from tests.conftest import FAST_TRAINER


def _masks(ffn, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(d, generator=g) < 0.4 for d in ffn.d_ff]


def _capture(module: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The input the down projection sees (after every pre-hook registered before this one) and its output."""
    seen = {}
    handle = module.register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0].detach().clone()))
    try:
        out = module(x)
    finally:
        handle.remove()
    return seen["x"], out.detach()


@pytest.mark.parametrize("arch", ("olmo", "gpt2", "gpt_neox"))
def test_hook_scales_exactly_the_selected_coefficients(arch, tiny_models):
    model = copy.deepcopy(tiny_models[arch]).train()
    ffn = locate_ffn(model)
    masks = _masks(ffn)
    params = {k: v.clone() for k, v in model.state_dict().items()}
    callback = RescaleCoefficients(ffn, masks, factor=3.0).attach()
    try:
        for layer, mask in zip(ffn.layers, masks):
            x = torch.randn(2, 5, layer.d_ff)
            raw_seen, _ = _capture(layer.down_proj, x)  # registered after the scaling hook
            assert torch.equal(raw_seen[..., ~mask], x[..., ~mask])
            assert torch.equal(raw_seen[..., mask], x[..., mask] * 3.0)
            callback.detach()
            plain_seen, plain_out = _capture(layer.down_proj, raw_seen)
            callback.attach()
            assert torch.equal(plain_seen, raw_seen)
            assert torch.equal(_capture(layer.down_proj, x)[1], plain_out)  # the layer computes on the scaled input
    finally:
        callback.detach()
    assert all(torch.equal(v, params[k]) for k, v in model.state_dict().items())  # no weight is touched
    for layer in ffn.layers:  # without the hook the input passes unchanged
        x = torch.randn(2, 3, layer.d_ff)
        assert torch.equal(_capture(layer.down_proj, x)[0], x)


def test_scaling_hook_runs_before_hooks_registered_earlier(tiny_models):
    model = copy.deepcopy(tiny_models["llama"]).train()
    ffn = locate_ffn(model)
    seen = {}
    layer = ffn.layers[0]
    earlier = layer.down_proj.register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0].detach().clone()))
    mask = torch.zeros(layer.d_ff, dtype=torch.bool)
    mask[::3] = True
    callback = RescaleCoefficients(ffn, [mask] + [torch.zeros(d, dtype=torch.bool) for d in ffn.d_ff[1:]],
                                   factor=0.5).attach()
    try:
        x = torch.randn(1, 4, layer.d_ff)
        layer.down_proj(x)
        assert torch.equal(seen["x"][..., mask], x[..., mask] * 0.5)  # e.g. the entropy recorder sees it scaled
    finally:
        callback.detach()
        earlier.remove()


@pytest.mark.parametrize("select", ("quantile", "bottom_k", "top_k"))
def test_selections_match_an_independent_computation(select):
    g = torch.Generator().manual_seed(2)
    row = torch.randint(0, 12, (97,), generator=g).double() / 7  # many ties
    mask, threshold = select_slots(row, select, q=0.3, k=20)
    values = row.numpy()
    if select == "quantile":
        expected = values <= np.quantile(values, 0.3)
        assert threshold == pytest.approx(np.quantile(values, 0.3))
    else:
        order = np.argsort(values if select == "bottom_k" else -values, kind="stable")
        expected = np.zeros(len(values), dtype=bool)
        expected[order[:20]] = True
        assert mask.sum() == 20 and threshold is None
    assert np.array_equal(mask.numpy(), expected)
    with pytest.raises(KdynError, match="k between 1 and d_ff=97"):
        select_slots(row, "bottom_k", k=98)


def test_eval_mode_is_scaled_only_with_at_eval(tiny_models):
    model = copy.deepcopy(tiny_models["olmo"])
    ffn = locate_ffn(model)
    masks = _masks(ffn, seed=1)
    layer, mask = ffn.layers[1], masks[1]
    x = torch.randn(2, 4, layer.d_ff)
    for at_eval in (False, True):
        callback = RescaleCoefficients(ffn, masks, factor=2.0, at_eval=at_eval).attach()
        try:
            model.eval()
            seen, _ = _capture(layer.down_proj, x)
            assert torch.equal(seen, torch.where(mask, x * 2.0, x) if at_eval else x)
            model.train()
            assert torch.equal(_capture(layer.down_proj, x)[0], torch.where(mask, x * 2.0, x))
        finally:
            callback.detach()


def test_anneal_is_linear_and_reaches_one_at_the_last_step(tiny_models):
    for step in range(0, 11):
        assert annealed_factor(3.0, step, 10) == pytest.approx(3.0 + (1.0 - 3.0) * step / 10)
    assert annealed_factor(3.0, 10, 10) == 1.0 and annealed_factor(3.0, 25, 10) == 1.0
    assert annealed_factor(0.5, 5, 10) == pytest.approx(0.75)
    ffn = locate_ffn(tiny_models["gpt2"])
    callback = RescaleCoefficients(ffn, _masks(ffn), factor=3.0, anneal=True)
    callback.max_steps, callback.step = 4, 2
    assert callback.current_factor() == pytest.approx(2.0)
    callback.anneal = False
    assert callback.current_factor() == 3.0


def test_hooks_are_removed_at_teardown(tiny_models):
    ffn = locate_ffn(copy.deepcopy(tiny_models["gpt_neox"]))
    counts = [len(layer.down_proj._forward_pre_hooks) for layer in ffn.layers]
    callback = RescaleCoefficients(ffn, _masks(ffn), factor=2.0, recompute="every_n_steps", every_n_steps=5)
    trainer = SimpleNamespace(global_step=0)
    callback.setup(trainer, None, "fit")
    assert [len(layer.down_proj._forward_pre_hooks) for layer in ffn.layers] == [c + 2 for c in counts]  # scale + recorder
    callback.teardown(trainer, None, "fit")
    assert [len(layer.down_proj._forward_pre_hooks) for layer in ffn.layers] == counts


def test_reselection_uses_the_raw_coefficients_of_training_batches(tiny_models, tmp_path):
    model = copy.deepcopy(tiny_models["olmo"]).train()
    ffn = locate_ffn(model)
    d_ff = ffn.d_ff[0]
    everything = [torch.ones(d, dtype=torch.bool) for d in ffn.d_ff]
    callback = RescaleCoefficients(ffn, everything, factor=10.0, select="bottom_k", k=3,
                                   recompute="every_n_steps", every_n_steps=1, dirpath=tmp_path)
    trainer = SimpleNamespace(global_step=0, is_global_zero=True, loggers=[])
    callback.setup(trainer, None, "fit")
    try:
        x = torch.rand(2, 4, d_ff) + 1.0
        x[..., [5, 9, 11]] = 0.01  # the three least active slots
        mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
        callback.on_train_batch_start(trainer, None, {"attention_mask": mask}, 0)
        for layer in ffn.layers:
            layer.down_proj(x)
        callback.on_before_backward(trainer, None, None)
        for layer in ffn.layers:
            layer.down_proj(x * 100)  # not armed: not counted
        raw = (x * mask.unsqueeze(-1)).abs().sum((0, 1)).double() / mask.sum()
        table = callback.recorder.metric.mean_coefficients()
        assert all(torch.allclose(t, raw) for t in table)  # unscaled, although every slot is scaled ×10
        trainer.global_step = 1
        callback.on_train_batch_end(trainer, None, None, None, 0)
    finally:
        callback.teardown(trainer, None, "fit")
    assert [m.nonzero().flatten().tolist() for m in callback.masks] == [[5, 9, 11]] * ffn.num_layers
    saved = json.loads((tmp_path / "rescale_selection.json").read_text())["selections"]
    assert [s["step"] for s in saved] == [0, 1] and saved[1]["layers"][0]["indices"] == [5, 9, 11]


def test_bad_options_fail_with_one_line():
    with pytest.raises(KdynError, match="select must be one of"):
        build_intervention({"name": "rescale", "select": "random"})
    with pytest.raises(KdynError, match="needs intervention.k"):
        build_intervention({"name": "rescale", "select": "top_k", "k": None})
    with pytest.raises(KdynError, match="recompute must be one of"):
        build_intervention({"name": "rescale", "recompute": "always"})


def _metric_rows(run: Path) -> list[dict]:
    with (run / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("arch", ("olmo", "gpt2"))
def test_two_step_training_run_with_rescale(arch, saved_models, corpus_jsonl, compose_train):
    cfg = compose_train("intervention=rescale", "model=local", f"model.path={saved_models[arch]}", "corpus=text",
                        f"corpus.path={corpus_jsonl}", "trainer.max_steps=2", "data.seq_len=32", "data.batch_size=4",
                        "intervention.measure.num_sequences=16", "intervention.factor=3.0", "intervention.anneal=true",
                        "intervention.recompute=every_n_steps", "intervention.every_n_steps=1", *FAST_TRAINER)
    results = train(cfg)
    run = Path(cfg.paths.output_dir)
    assert results["status"] == "completed" and results["steps"] == 2
    record = json.loads((run / "intervention.json").read_text())
    assert record["name"] == "rescale" and record["factor"] == 3.0 and record["coefficients"]["kind"] == "measured"
    assert [layer["selected"] for layer in record["layers"]] == [32, 32]  # median of 64 distinct values
    factors = {int(r["step"]): float(r["rescale/factor"]) for r in _metric_rows(run) if r.get("rescale/factor")}
    assert factors == pytest.approx({0: 3.0, 1: 2.0, 2: 1.0})
    selections = json.loads((run / "rescale_selection.json").read_text())["selections"]
    assert [s["step"] for s in selections] == [0, 1, 2]
    assert all(sum(len(layer["indices"]) for layer in s["layers"]) == s["selected"] for s in selections)


def test_hooks_are_removed_when_training_fails(saved_models, corpus_jsonl, compose_train):
    class Boom(pl.Callback):
        model = None

        def on_train_start(self, trainer, pl_module):
            Boom.model = pl_module.model

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            raise RuntimeError("boom")

    cfg = compose_train("intervention=rescale", "model=local", f"model.path={saved_models['gpt_neox']}", "corpus=text",
                        f"corpus.path={corpus_jsonl}", "trainer.max_steps=2", "data.seq_len=32", "data.batch_size=4",
                        "intervention.measure.num_sequences=8", "intervention.select=bottom_k", "intervention.k=5",
                        "callbacks.entropy.enabled=false", *FAST_TRAINER)
    with pytest.raises(RuntimeError, match="boom"):
        train(cfg, extra_callbacks=[Boom()])
    assert all(len(layer.down_proj._forward_pre_hooks) == 0 for layer in locate_ffn(Boom.model).layers)


def test_scaling_under_inference_mode_then_training_backward(tiny_models):
    """at_eval=True: probe scoring runs in inference mode; the next training step must still backpropagate."""
    model = copy.deepcopy(tiny_models["olmo"])
    ffn = locate_ffn(model)
    callback = RescaleCoefficients(ffn, _masks(ffn), factor=2.0, at_eval=True).attach()
    ids = torch.randint(0, 200, (2, 8))
    try:
        model.eval()
        with torch.inference_mode():
            model(input_ids=ids)
        model.train()
        model(input_ids=ids, labels=ids).loss.backward()
    finally:
        callback.detach()
    assert all(layer.down_proj.weight.grad is not None for layer in ffn.layers)
