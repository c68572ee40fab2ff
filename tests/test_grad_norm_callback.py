"""GradNormLogger: logged per-layer norms equal the pre-clipping gradients of each step's batch."""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F

from kdyn.errors import KdynError
from tests.conftest import FAST_TRAINER

_BLOCK = re.compile(r"^(.*?\.(?:layers|h)\.(\d+))\.(.+)$")


def group_of(name: str) -> str:
    m = _BLOCK.match(name)
    return f"layer_{m.group(2)}" if m else "other"


def norms_by_group(model) -> dict[str, float]:
    """sqrt(Σ grad²) per group over parameters that have a gradient, plus the total."""
    squares: dict[str, float] = {}
    for name, p in model.named_parameters():
        if p.grad is not None:
            squares[group_of(name)] = squares.get(group_of(name), 0.0) + float(p.grad.double().pow(2).sum())
    out = {f"grad_norm/{g}": math.sqrt(s) for g, s in squares.items()}
    out["grad_norm/total"] = math.sqrt(sum(squares.values()))
    return out


class FreezeLayer0(pl.Callback):
    """Freezes block 0 before the optimizer is built (as an intervention would)."""

    def setup(self, trainer, pl_module, stage):
        for name, p in pl_module.model.named_parameters():
            if group_of(name) == "layer_0":
                p.requires_grad_(False)


@pytest.mark.parametrize("accumulate, freeze", [(1, False), (2, False), (1, True)])
def test_logged_norms_are_the_pre_clipping_gradients_of_each_batch(accumulate, freeze, saved_models, corpus_jsonl,
                                                                   compose_train, tokenizer):
    """With lr=0 the weights never change, so every step's gradient can be recomputed independently."""
    from transformers import AutoModelForCausalLM

    from kdyn.data.corpora import load_documents
    from kdyn.data.datamodule import TrainingStream
    from kdyn.data.packing import pack_rows
    from kdyn.train import train

    cfg = compose_train("model=local", f"model.path={saved_models['olmo']}", "corpus=text",
                        f"corpus.path={corpus_jsonl}",
                        "trainer.max_steps=3", "data.seq_len=16", "data.batch_size=2",
                        f"trainer.accumulate_grad_batches={accumulate}", "optim.lr=0.0", "optim.warmup_steps=0",
                        "trainer.gradient_clip_val=0.01", "callbacks.grad_norms.enabled=true",
                        "callbacks.grad_norms.every_n_steps=1", "callbacks.entropy.enabled=false",
                        "callbacks.export_hf.enabled=false", *FAST_TRAINER)
    train(cfg, extra_callbacks=[FreezeLayer0()] if freeze else None)
    with (Path(cfg.paths.output_dir) / "metrics.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r.get("grad_norm/total")]
    assert [int(r["step"]) for r in rows] == [1, 2, 3]  # logged at the number of updates done

    model = AutoModelForCausalLM.from_pretrained(saved_models["olmo"]).train()
    if freeze:
        for name, p in model.named_parameters():
            p.requires_grad_(group_of(name) != "layer_0")
    rows_tensor = pack_rows(load_documents({"name": "text", "path": str(corpus_jsonl)}), tokenizer, 16)
    stream = TrainingStream(rows_tensor, 2, accumulate=accumulate, num_steps=3)
    for logged, stream_step in zip(rows, range(3)):  # update s+1 trains the batch of stream step s
        model.zero_grad(set_to_none=True)
        for k in range(len(stream)):
            batch = stream[k]
            if int(batch["step"]) != stream_step:
                continue
            ids = batch["input_ids"]
            logits = model(input_ids=ids).logits
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)).float(), ids[:, 1:].reshape(-1))
            (loss / accumulate).backward()
        expected = norms_by_group(model)
        logged_keys = {k for k, v in logged.items() if k.startswith("grad_norm/") and v not in ("", None)}
        assert logged_keys == set(expected)
        for key, value in expected.items():
            assert float(logged[key]) == pytest.approx(value, rel=1e-4), key
        assert expected["grad_norm/total"] > 10 * 0.01  # clipping to 0.01 would have changed every logged norm
    assert bool(rows[0].get("grad_norm/layer_0")) != freeze  # a frozen block has no gradient and is not logged


class _Logger:
    def __init__(self):
        self.calls = []

    def log_metrics(self, metrics, step):
        self.calls.append((step, dict(metrics)))


def test_only_every_n_steps_and_frozen_parameters_are_skipped(tiny_models, tokenizer):
    from kdyn.callbacks.grad_norms import GradNormLogger

    model = tiny_models["gpt2"]
    frozen = [p for n, p in model.named_parameters() if group_of(n) == "layer_1" or n.endswith("wte.weight")]
    for p in frozen:
        p.requires_grad_(False)
    try:
        ids = torch.tensor([tokenizer("The river flows past the old mill.")["input_ids"]])
        model.zero_grad(set_to_none=True)
        logits = model(input_ids=ids).logits
        F.cross_entropy(logits[0, :-1], ids[0, 1:]).backward()
        expected = norms_by_group(model)
        logger = _Logger()
        cb = GradNormLogger(every_n_steps=5, split="block")
        trainer = SimpleNamespace(global_step=3, is_global_zero=True, loggers=[logger], strategy=None)
        module = SimpleNamespace(model=model)
        cb.on_fit_start(trainer, module)
        cb.on_before_optimizer_step(trainer, module, None)  # update 4: not a log step
        assert logger.calls == []
        trainer.global_step = 4
        cb.on_before_optimizer_step(trainer, module, None)  # update 5
        (step, values), = logger.calls
        assert step == 5
        assert set(values) == {"grad_norm/layer_0", "grad_norm/other", "grad_norm/total"} == set(expected)
        for key in expected:
            assert values[key] == pytest.approx(expected[key], rel=1e-5)
    finally:
        for p in frozen:
            p.requires_grad_(True)
        model.zero_grad(set_to_none=True)


def test_attn_mlp_split_names_and_bad_arguments(tiny_models, tokenizer):
    from kdyn.callbacks.grad_norms import GradNormLogger

    model = tiny_models["llama"]
    ids = torch.tensor([tokenizer("Bread and salt.")["input_ids"]])
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(input_ids=ids).logits[0, :-1], ids[0, 1:]).backward()
    logger = _Logger()
    cb = GradNormLogger(every_n_steps=1, split="attn_mlp")
    trainer = SimpleNamespace(global_step=0, is_global_zero=True, loggers=[logger], strategy=None)
    cb.on_fit_start(trainer, SimpleNamespace(model=model))
    cb.on_before_optimizer_step(trainer, SimpleNamespace(model=model), None)
    model.zero_grad(set_to_none=True)
    values = logger.calls[0][1]
    assert sorted(values) == sorted(["grad_norm/layer_0.attn", "grad_norm/layer_0.mlp", "grad_norm/layer_1.attn",
                                     "grad_norm/layer_1.mlp", "grad_norm/other", "grad_norm/total"])
    assert values["grad_norm/total"] == pytest.approx(math.sqrt(sum(v ** 2 for k, v in values.items()
                                                                    if not k.endswith("total"))), rel=1e-9)
    with pytest.raises(KdynError, match="every_n_steps"):
        GradNormLogger(every_n_steps=0)
    with pytest.raises(KdynError, match="split"):
        GradNormLogger(split="heads")
