"""Layer-restricted training: frozen parameters are bit-identical and never reach the optimizer; ALR
parameter groups carry the planned per-layer rates through warmup and decay."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from safetensors.torch import load_file

from kdyn.errors import KdynError
from kdyn.train import train
from tests.conftest import FAST_TRAINER

R = [0.5, 2.0, 1.0, 0.5]  # relative gradient norms of a 4-layer model: mean 1.0, above mean: layer_1


def _stats(path: Path, r=R, granularity="block") -> Path:
    n = len(r)
    stats = {"layers": [f"layer_{i}" for i in range(n)], "granularity": granularity, "norm": "l2",
             "sets": {"updated": {"g_span": [x * 2 for x in r], "g_lm": [2.0] * n, "r": r, "n_examples": 10}}}
    path.write_text(json.dumps(stats))
    return path


@pytest.fixture
def model4(tmp_path, tokenizer):
    from kdyn.models.scratch import build_scratch_model
    from tests.conftest import tiny_spec

    spec = tiny_spec("llama", tokenizer)
    spec = type(spec)(**{**spec.__dict__, "num_layers": 4})
    model = build_scratch_model(spec, seed=1)
    folder = tmp_path / "llama4"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


class OptimizerSpy(pl.Callback):
    """Records which parameters the optimizer holds and the learning rate of each at every step."""

    def __init__(self):
        self.names: set[str] = set()
        self.lrs: list[dict[str, float]] = []

    def on_train_start(self, trainer, pl_module):
        for group in trainer.optimizers[0].param_groups:
            self.names |= set(group["param_names"])

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.lrs.append({n: g["lr"] for g in optimizer.param_groups for n in g["param_names"]})


def _run(compose_train, folder, corpus_jsonl, *overrides, spy=None):
    cfg = compose_train("model=local", f"model.path={folder}", "corpus=text", f"corpus.path={corpus_jsonl}",
                        "trainer.max_steps=4", "data.seq_len=32", "data.batch_size=4", *overrides, *FAST_TRAINER)
    results = train(cfg, extra_callbacks=[spy] if spy else None)
    return results, Path(cfg.paths.output_dir)


def test_localize_above_mean_trains_only_the_selected_block(tmp_path, model4, corpus_jsonl, compose_train):
    spy = OptimizerSpy()
    results, run = _run(compose_train, model4, corpus_jsonl, "intervention=localize",
                        f"intervention.layer_stats={_stats(tmp_path / 's.json')}", spy=spy)
    assert results["intervention"]["selected"] == ["layer_1"]
    before, after = load_file(model4 / "model.safetensors"), load_file(run / "checkpoints" / "hf" / "model.safetensors")
    for name in before:
        in_block = name.startswith("model.layers.")
        trained = not in_block or name.startswith("model.layers.1.")
        assert torch.equal(before[name], after[name]) != trained or "norm" in name, name
        if in_block and not trained:
            assert name not in spy.names  # frozen: no optimizer state, no weight decay, no momentum
    assert any(n.startswith("model.layers.1.") for n in spy.names)
    assert json.loads((run / "layers.json").read_text())["selected"] == ["layer_1"]


def test_random_k_uses_the_above_mean_count_and_its_seed(tmp_path, model4, corpus_jsonl, compose_train):
    stats = _stats(tmp_path / "s.json", r=[3.0, 2.0, 0.1, 0.1])  # above mean: layer_0, layer_1
    chosen = []
    for seed in (0, 0, 5):
        results, _ = _run(compose_train, model4, corpus_jsonl, "intervention=localize", "intervention.rule=random_k",
                          f"intervention.layer_stats={stats}", f"intervention.seed={seed}")
        chosen.append(results["intervention"]["selected"])
    assert len(chosen[0]) == 2 and chosen[0] == chosen[1]


def test_freeze_explicit_layers(model4, corpus_jsonl, compose_train):
    results, run = _run(compose_train, model4, corpus_jsonl, "intervention=freeze", "intervention.layers=[layer_0,layer_3]")
    before, after = load_file(model4 / "model.safetensors"), load_file(run / "checkpoints" / "hf" / "model.safetensors")
    for name in before:
        frozen = name.startswith(("model.layers.0.", "model.layers.3."))
        if frozen:
            assert torch.equal(before[name], after[name]), name
    assert results["intervention"]["frozen_layers"] == ["layer_0", "layer_3"]


def test_alr_groups_carry_planned_rates_through_warmup_and_decay(tmp_path, model4, corpus_jsonl, compose_train):
    from kdyn.module import lr_lambda

    spy = OptimizerSpy()
    lr = 1e-3
    _, run = _run(compose_train, model4, corpus_jsonl, "intervention=localize_alr",
                  f"intervention.layer_stats={_stats(tmp_path / 's.json')}", f"optim.lr={lr}", "optim.scheduler=cosine",
                  "optim.warmup_steps=2", "optim.min_lr_ratio=0.1", spy=spy)
    planned = {f"layer_{i}": r / (sum(R) / len(R)) for i, r in enumerate(R)}
    for step, lrs in enumerate(spy.lrs):
        schedule = lr_lambda(step, warmup_steps=2, total_steps=4, schedule="cosine", min_lr_ratio=0.1)
        for name, value in lrs.items():
            layer = name.split(".")[2] if name.startswith("model.layers.") else None
            mult = planned[f"layer_{layer}"] if layer is not None else 1.0
            assert value == pytest.approx(lr * mult * schedule), (step, name)
    record = json.loads((run / "layers.json").read_text())
    assert record["multipliers"] == pytest.approx(planned)


def test_localize_without_stats_or_with_unknown_layers_is_a_clear_error(tmp_path, model4, corpus_jsonl, compose_train):
    with pytest.raises(KdynError, match="layer_stats"):
        _run(compose_train, model4, corpus_jsonl, "intervention=localize")
    with pytest.raises(KdynError, match="layer_9"):
        _run(compose_train, model4, corpus_jsonl, "intervention=freeze", "intervention.layers=[layer_9]")
