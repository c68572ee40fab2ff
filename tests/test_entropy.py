"""Knowledge entropy: against an independent computation, invariances, DDP, bounds, the CLI, the callback."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from kdyn.data.sequences import document_batches
from kdyn.errors import KdynError
from kdyn.metrics.knowledge_entropy import KnowledgeEntropy, layer_entropy
from kdyn.metrics.recorder import measure
from kdyn.models.ffn import locate_ffn
from tests.conftest import ARCHS, FAST_TRAINER

DOCS = [
    "The river flows past the old mill and into the valley.",
    "A short one.",
    "Merchants from the coast brought salt, silver and stories of distant islands to the market town every spring.",
    "Three.",
    "The council met at dawn to decide who would guard the northern gate during the long winter months ahead.",
    "Bread.",
    "An archive holds letters written by the founders, their children and the scribes who served them for decades.",
]


def independent_entropy(model, tokenizer, texts, down_modules, seq_len=64):
    """One unpadded sequence at a time; explicit loops; the formula written out (not kdyn's code)."""
    sums = [None] * len(down_modules)
    count = 0
    captured = {}
    handles = [m.register_forward_pre_hook(lambda mod, args, i=i: captured.__setitem__(i, args[0][0].detach().double()))
               for i, m in enumerate(down_modules)]
    try:
        with torch.no_grad():
            for text in texts:
                ids = tokenizer(text, truncation=True, max_length=seq_len)["input_ids"]
                model(input_ids=torch.tensor([ids]))
                count += len(ids)
                for i in range(len(down_modules)):
                    total = captured[i].abs().sum(0)
                    sums[i] = total if sums[i] is None else sums[i] + total
    finally:
        for h in handles:
            h.remove()
    entropies = []
    for s in sums:
        mean = s / count
        p = mean / mean.sum()
        entropies.append(float(-(p * torch.log(p)).sum()))
    return entropies, count


@pytest.mark.parametrize("arch", ARCHS)
def test_matches_independent_computation_with_padded_batches(arch, tiny_models, tokenizer):
    model = tiny_models[arch]
    ffn = locate_ffn(model)
    batches = document_batches(DOCS, tokenizer, num_sequences=len(DOCS), seq_len=64, batch_size=3)
    assert any(int(b["attention_mask"].min()) == 0 for b in batches)  # padding really present
    result = measure(model, ffn, batches).compute()
    expected, count = independent_entropy(model, tokenizer, DOCS, [layer.down_proj for layer in ffn.layers])
    assert int(result["tokens"]) == count
    torch.testing.assert_close(result["per_layer"], torch.tensor(expected, dtype=torch.float64), rtol=1e-6, atol=1e-9)
    assert float(result["total"]) == pytest.approx(sum(expected), rel=1e-6)


def test_invariant_to_batch_size_and_padding_layout(tiny_models, tokenizer):
    model = tiny_models["olmo"]
    ffn = locate_ffn(model)
    results = []
    for batch_size in (1, 2, 3, 7):
        for sort in (True, False):
            batches = document_batches(DOCS, tokenizer, num_sequences=len(DOCS), seq_len=64, batch_size=batch_size,
                                       sort_by_length=sort)
            results.append(measure(model, ffn, batches).compute()["per_layer"])
    for r in results[1:]:
        torch.testing.assert_close(r, results[0], rtol=1e-6, atol=1e-9)


def test_bounds_uniform_is_maximal_and_one_hot_is_zero():
    d = 16
    uniform = layer_entropy(torch.ones(1, d))
    assert float(uniform) == pytest.approx(math.log(d))
    one_hot = torch.zeros(1, d)
    one_hot[0, 3] = 5.0
    assert float(layer_entropy(one_hot)) == pytest.approx(0.0)
    gen = torch.Generator().manual_seed(0)
    random = torch.rand(50, d, generator=gen) ** 4
    h = layer_entropy(random)
    assert bool((h >= 0).all()) and bool((h <= math.log(d) + 1e-12).all()) and bool((h < math.log(d)).all())
    with pytest.raises(KdynError, match="zero total"):
        layer_entropy(torch.zeros(1, d))


def test_real_model_entropy_is_within_bounds(tiny_models, tokenizer):
    model = tiny_models["gpt_neox"]
    ffn = locate_ffn(model)
    batches = document_batches(DOCS, tokenizer, num_sequences=len(DOCS), seq_len=64, batch_size=4)
    per_layer = measure(model, ffn, batches).compute()["per_layer"]
    assert all(0 <= float(h) <= math.log(d) for h, d in zip(per_layer, ffn.d_ff))


def test_metric_accumulates_in_float64_whatever_the_input_precision():
    metric = KnowledgeEntropy([4])
    metric.update(0, torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.bfloat16), 2)
    assert metric.abs_sum.dtype == torch.float64


def _ddp_worker(rank: int, world: int, init_file: str, model_dir: str, out_file: str) -> None:
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir)
        tok = AutoTokenizer.from_pretrained(model_dir)
        batches = document_batches(DOCS, tok, num_sequences=len(DOCS), seq_len=64, batch_size=2)
        metric = measure(model, locate_ffn(model), batches[rank::world])  # each rank: its shard
        result = metric.compute()  # all-reduces sums and counts before the entropy
        if rank == 0:
            torch.save({k: v.clone() for k, v in result.items()}, out_file)
        # both ranks leave together: a rank tearing gloo down while the other is still inside it can
        # abort the process ("terminate called without an active exception", seen once in ~20 runs)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_two_process_ddp_equals_one_process(saved_models, tiny_models, tokenizer, tmp_path):
    import torch.multiprocessing as mp
    from transformers import AutoModelForCausalLM

    model_dir = str(saved_models["llama"])
    out = tmp_path / "ddp.pt"
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), model_dir, str(out)), nprocs=2, join=True)
    distributed = torch.load(out)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    batches = document_batches(DOCS, tokenizer, num_sequences=len(DOCS), seq_len=64, batch_size=2)
    single = measure(model, locate_ffn(model), batches).compute()
    assert float(distributed["tokens"]) == float(single["tokens"])
    torch.testing.assert_close(distributed["per_layer"], single["per_layer"], rtol=1e-9, atol=1e-12)
    # and it is not the mean of the two shards' entropies
    halves = [measure(model, locate_ffn(model), batches[r::2]).compute()["per_layer"] for r in range(2)]
    assert not torch.allclose((halves[0] + halves[1]) / 2, single["per_layer"], rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------------------------- kdyn-entropy
def test_kdyn_entropy_writes_entropy_json_and_the_coefficient_table(saved_models, corpus_jsonl, compose_train):
    from kdyn.entropy import load_coefficients, measure_checkpoint

    cfg = compose_train("model=local", f"model.path={saved_models['olmo']}", "corpus=text", f"corpus.path={corpus_jsonl}",
                        "entropy.num_sequences=20", "entropy.seq_len=48", "entropy.batch_size=6", config_name="entropy")
    record = measure_checkpoint(cfg)
    out = Path(cfg.paths.output_dir)
    saved = json.loads((out / "entropy.json").read_text())
    assert saved["total"] == pytest.approx(sum(saved["per_layer"]))
    assert saved["max_total"] == pytest.approx(sum(math.log(d) for d in saved["d_ff"]))
    assert saved["num_sequences"] == 20 and saved["model"]["family"] == "local"
    table = load_coefficients(out / "coefficients.safetensors")
    assert table.shape == (len(saved["per_layer"]), saved["d_ff"][0])
    recomputed = layer_entropy(table.double())
    torch.testing.assert_close(recomputed, torch.tensor(saved["per_layer"], dtype=torch.float64), rtol=1e-5, atol=1e-6)
    assert record["num_tokens"] == saved["num_tokens"] > 0


def test_packed_measurement_uses_full_rows(saved_models, corpus_jsonl, compose_train):
    from kdyn.entropy import measure_checkpoint

    cfg = compose_train("model=local", f"model.path={saved_models['gpt2']}", "corpus=text", f"corpus.path={corpus_jsonl}",
                        "entropy.num_sequences=5", "entropy.seq_len=32", "entropy.pack=true", config_name="entropy")
    record = measure_checkpoint(cfg)
    assert record["num_tokens"] == 5 * 32


@pytest.mark.parametrize("overrides, message", [
    (["entropy.num_sequences=100000"], "holds only"),
    (["model.ffn.down_proj=mlp.nonexistent"], "cannot locate"),
])
def test_kdyn_entropy_bad_input(overrides, message, saved_models, corpus_jsonl, compose_train):
    from kdyn.entropy import measure_checkpoint

    cfg = compose_train("model=local", f"model.path={saved_models['olmo']}", "corpus=text", f"corpus.path={corpus_jsonl}",
                        "entropy.seq_len=64", *overrides, config_name="entropy")
    with pytest.raises(KdynError, match=message):
        measure_checkpoint(cfg)


def test_empty_corpus_is_a_clear_error(tmp_path, saved_models, compose_train):
    from kdyn.entropy import measure_checkpoint

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    cfg = compose_train("model=local", f"model.path={saved_models['olmo']}", "corpus=text", f"corpus.path={empty}",
                        "entropy.seq_len=64", config_name="entropy")
    with pytest.raises(KdynError, match="no documents"):
        measure_checkpoint(cfg)


# ----------------------------------------------------------------------------------- callback
def _csv_rows(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("accumulate", [1, 2])
def test_callback_logs_entropy_of_the_training_batches_since_the_last_log(accumulate, saved_models, corpus_jsonl,
                                                                          compose_train, tokenizer):
    """With lr=0 the weights never change, so the logged value must equal an independent computation
    over exactly the micro-batches served since the previous log."""
    from transformers import AutoModelForCausalLM

    from kdyn.data.corpora import load_documents
    from kdyn.data.datamodule import TrainingStream
    from kdyn.data.packing import pack_rows
    from kdyn.train import train

    cfg = compose_train("model=local", f"model.path={saved_models['gpt_neox']}", "corpus=text",
                        f"corpus.path={corpus_jsonl}", "trainer.max_steps=4", "data.seq_len=16", "data.batch_size=2",
                        f"trainer.accumulate_grad_batches={accumulate}", "optim.lr=0.0", "optim.warmup_steps=0",
                        "callbacks.entropy.every_n_steps=2", *FAST_TRAINER)
    train(cfg)
    rows = [r for r in _csv_rows(Path(cfg.paths.output_dir) / "metrics.csv") if r.get("entropy/total")]
    assert [int(r["step"]) for r in rows] == [2, 4]

    model = AutoModelForCausalLM.from_pretrained(saved_models["gpt_neox"])
    ffn = locate_ffn(model)
    rows_tensor = pack_rows(load_documents({"name": "text", "path": str(corpus_jsonl)}), tokenizer, 16)
    stream = TrainingStream(rows_tensor, 2, accumulate=accumulate, num_steps=4)
    for logged, steps in zip(rows, ([0, 1], [2, 3])):
        micro = [stream[k] for k in range(len(stream)) if int(stream[k]["step"]) in steps]
        expected = measure(model, ffn, micro).compute()
        assert float(logged["entropy/total"]) == pytest.approx(float(expected["total"]), rel=1e-5)
        assert float(logged["entropy/layer_1"]) == pytest.approx(float(expected["per_layer"][1]), rel=1e-5)


def test_callback_hooks_are_attached_in_setup_and_removed_in_teardown(tiny_models):
    from types import SimpleNamespace

    from kdyn.callbacks.entropy import EntropyLogger

    model = tiny_models["olmo2"]
    downs = [layer.down_proj for layer in locate_ffn(model).layers]
    before = [len(m._forward_pre_hooks) for m in downs]
    cb = EntropyLogger(every_n_steps=1)
    cb.setup(None, SimpleNamespace(model=model), "fit")
    assert [len(m._forward_pre_hooks) for m in downs] == [b + 1 for b in before]
    cb.teardown(None, SimpleNamespace(model=model), "fit")
    assert [len(m._forward_pre_hooks) for m in downs] == before


def test_every_n_steps_must_be_positive():
    from kdyn.callbacks.entropy import EntropyLogger

    with pytest.raises(KdynError, match="every_n_steps"):
        EntropyLogger(every_n_steps=0)
