"""kdyn-trace: diagnostic sets, per-layer gradient norms against an independent backward, the CLI, bad input."""

from __future__ import annotations

import csv
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from kdyn.data.diagnostics import Cloze, build_diagnostic_sets, diagnostic_clozes, subsample, tokenize_clozes
from kdyn.errors import KdynError
from kdyn.metrics.grad_norms import trace_layer_norms
from kdyn.models.ffn import locate_ffn, parameter_groups_by_layer
from tests.conftest import ARCHS, shared_data

CLOZES = [
    Cloze("The capital of the northern region is", "Vairkeirdun", "a"),
    Cloze("Merchants from the coast brought salt and silver to the market town of", "Leleim", "b"),
    Cloze("Dandvand Zendkesin employer", "Rurnres Mills", "c"),
]
_BLOCK = re.compile(r"^(.*?\.(?:layers|h)\.(\d+))\.(.+)$")  # model.layers.3.x / transformer.h.3.x / gpt_neox.layers.3.x


def independent_group(name: str, granularity: str) -> str:
    """The test's own grouping from the parameter name alone."""
    m = _BLOCK.match(name)
    if m is None:
        return "other"
    group = f"layer_{m.group(2)}"
    if granularity == "attn_mlp":
        group += ".mlp" if m.group(3).startswith("mlp.") else ".attn"
    return group


def independent_norms(model, input_ids, span_mask, loss: str, granularity: str, per_sqrt_numel: bool = False):
    """zero_grad → loss.backward() → sqrt(Σ grad²) per group, with labels −100 outside the scored tokens."""
    model.zero_grad(set_to_none=True)
    labels = input_ids.clone()
    if loss == "span":
        labels[~span_mask] = -100
    logits = model(input_ids=input_ids[None]).logits[0]
    F.cross_entropy(logits[:-1].float(), labels[1:], ignore_index=-100).backward()
    squares, numel = {}, {}
    for name, p in model.named_parameters():
        g = independent_group(name, granularity)
        squares[g] = squares.get(g, 0.0) + (float(p.grad.double().pow(2).sum()) if p.grad is not None else 0.0)
        numel[g] = numel.get(g, 0) + p.numel()
    model.zero_grad(set_to_none=True)
    return {g: math.sqrt(s) / (math.sqrt(numel[g]) if per_sqrt_numel else 1.0) for g, s in squares.items()}


@pytest.mark.parametrize("granularity", ["block", "attn_mlp"])
@pytest.mark.parametrize("arch", ARCHS)
def test_per_layer_norms_equal_an_independent_backward(arch, granularity, tiny_models, tokenizer):
    model = tiny_models[arch]
    examples = tokenize_clozes(CLOZES, tokenizer, max_len=64)
    groups = parameter_groups_by_layer(model, locate_ffn(model), split=granularity)
    model.train()  # the measurement must switch to eval mode and restore this
    try:
        stats = trace_layer_norms(model, examples, groups, norm="l2")
        assert model.training
        assert all(p.grad is None for p in model.parameters())
        assert all(p.requires_grad for p in model.parameters())
    finally:
        model.eval()
    expected = {"span": {}, "lm": {}}
    for kind in expected:
        per_example = [independent_norms(model, ex.input_ids, ex.span_mask, kind, granularity) for ex in examples]
        expected[kind] = {g: sum(d[g] for d in per_example) / len(per_example) for g in per_example[0]}
    layer_names = sorted((g for g in expected["span"] if g != "other"),
                         key=lambda g: (int(g.split("_")[1].split(".")[0]), g))
    assert stats.layers == layer_names
    assert stats.g_span == pytest.approx([expected["span"][g] for g in layer_names], rel=1e-4)
    assert stats.g_lm == pytest.approx([expected["lm"][g] for g in layer_names], rel=1e-4)
    assert stats.other["g_span"] == pytest.approx(expected["span"]["other"], rel=1e-4)
    assert stats.other["g_lm"] == pytest.approx(expected["lm"]["other"], rel=1e-4)
    assert stats.r == pytest.approx([s / lm for s, lm in zip(stats.g_span, stats.g_lm)], rel=1e-12)
    assert stats.n_examples == len(examples)


def test_norm_per_sqrt_numel_divides_by_the_group_size(tiny_models, tokenizer):
    model = tiny_models["gpt2"]
    examples = tokenize_clozes(CLOZES[:2], tokenizer, max_len=64)
    groups = parameter_groups_by_layer(model, locate_ffn(model), split="attn_mlp")
    stats = trace_layer_norms(model, examples, groups, norm="l2_per_sqrt_numel")
    per_example = [independent_norms(model, ex.input_ids, ex.span_mask, "span", "attn_mlp", per_sqrt_numel=True)
                   for ex in examples]
    assert stats.g_span == pytest.approx([sum(d[g] for d in per_example) / 2 for g in stats.layers], rel=1e-4)


def test_frozen_layer_is_an_error_and_requires_grad_is_left_alone(tiny_models, tokenizer):
    model = tiny_models["llama"]
    frozen = [p for n, p in model.named_parameters() if independent_group(n, "block") == "layer_1"]
    for p in frozen:
        p.requires_grad_(False)
    try:
        with pytest.raises(KdynError, match="layer_1 has no trainable parameter"):
            trace_layer_norms(model, tokenize_clozes(CLOZES[:1], tokenizer), parameter_groups_by_layer(
                model, locate_ffn(model)))
        assert not any(p.requires_grad for p in frozen)
    finally:
        for p in frozen:
            p.requires_grad_(True)


def test_span_mask_covers_exactly_the_target_tokens(tokenizer):
    examples = tokenize_clozes(CLOZES, tokenizer)
    for cloze, ex in zip(CLOZES, examples):
        assert ex.span_mask.dtype == torch.bool and ex.span_mask.shape == ex.input_ids.shape
        assert tokenizer.decode(ex.input_ids[ex.span_mask]) == " " + cloze.span
        assert tokenizer.decode(ex.input_ids[~ex.span_mask]) == cloze.context
        span_positions = ex.span_mask.nonzero().flatten().tolist()
        assert span_positions == list(range(len(ex.input_ids) - len(span_positions), len(ex.input_ids)))
    cut = tokenize_clozes(CLOZES[1:2], tokenizer, max_len=8)[0]  # context cut from the left
    assert len(cut.input_ids) == 8 and tokenizer.decode(cut.input_ids[cut.span_mask]) == " Leleim"
    with pytest.raises(KdynError, match="raise trace.max_len"):
        tokenize_clozes(CLOZES[1:2], tokenizer, max_len=2)
    with pytest.raises(KdynError, match="empty span or context"):
        tokenize_clozes([Cloze("Some context", "", "x")], tokenizer)


def test_synthetic_sets_follow_the_world_and_the_knowledge_items():
    from kdyn.data.world import SyntheticWorld, WorldConfig

    sets = diagnostic_clozes({"sets": ["new_entities", "updated", "new_facts", "unchanged"],
                              "knowledge_source": {"name": "synthetic", "num_items": 4, "seed": 0},
                              "twiki": {"period": "p2"}})
    period = SyntheticWorld(WorldConfig()).updates(2)[1]
    updated = [f for f, k in zip(period["changed"], period["kind"]) if k == "updated"]
    new = [f for f, k in zip(period["changed"], period["kind"]) if k == "new"]
    assert [(c.context, c.span) for c in sets["updated"][0]] == [(f"{f.subject} {f.relation}", f.obj) for f in updated]
    assert [(c.context, c.span) for c in sets["new_facts"][0]] == [(f"{f.subject} {f.relation}", f.obj) for f in new]
    assert [c.span for c in sets["unchanged"][0]] == [f.obj for f in period["unchanged"]]
    items = SyntheticWorld(WorldConfig()).new_knowledge(4)
    assert [(c.context, c.span) for c in sets["new_entities"][0]] == [
        (i, t) for rec in items for i, t in zip(rec["mem_input"], rec["mem_target"])]


def test_subsampling_is_seeded_deterministic_and_keeps_order():
    items = list(range(100))
    a = subsample(items, 10, seed=0, name="updated")
    assert a == subsample(items, 10, seed=0, name="updated") and a == sorted(a) and len(a) == 10
    assert a != subsample(items, 10, seed=1, name="updated")
    assert subsample(items, 500, seed=0, name="updated") == items


def test_real_twiki_files_build_updated_and_unchanged_sets(tokenizer):
    folder = shared_data("temporalwiki")
    sets = diagnostic_clozes({"sets": ["updated", "new_facts", "unchanged"],
                              "twiki": {"path": str(folder), "period": "1001-1101"}})

    def rows(name):
        with (folder / name).open(newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))

    earlier = {r["subject"] for p in ("0801-0901", "0901-1001") for k in ("changed", "unchanged")
               for r in rows(f"{p}_{k}.csv")}
    changed = rows("1001-1101_changed.csv")
    known = [r for r in changed if r["subject"] in earlier]
    assert 0 < len(known) < len(changed)
    assert [(c.context, c.span) for c in sets["updated"][0]] == [(f"{r['subject']} {r['relation']}", r["object"])
                                                                 for r in known]
    assert len(sets["new_facts"][0]) == len(changed) - len(known)
    assert len(sets["unchanged"][0]) == len(rows("1001-1101_unchanged.csv"))
    assert "proxy" in sets["updated"][1]
    built = build_diagnostic_sets({"sets": ["updated", "unchanged"], "max_examples": 30, "max_len": 64,
                                   "twiki": {"path": str(folder), "period": "1001-1101"}}, tokenizer)
    assert [len(s.examples) for s in built.values()] == [30, 30]
    ex = built["unchanged"].examples[0]
    assert tokenizer.decode(ex.input_ids).endswith(tokenizer.decode(ex.input_ids[ex.span_mask]))


def test_fictional_knowledge_builds_new_entities():
    folder = shared_data("fictional_knowledge")
    source = {"name": "fictional_knowledge", "path": str(folder), "items": [0, 3]}
    sets = diagnostic_clozes({"sets": ["new_entities"], "knowledge_source": source})
    records = json.loads((folder / "fictional_knowledge_paraphrased.json").read_text())[:3]
    assert [(c.context, c.span) for c in sets["new_entities"][0]] == [
        (i, t) for rec in records for i, t in zip(rec["mem_input"], rec["mem_target"])]


@pytest.mark.parametrize("overrides, message", [
    (["trace.sets=[new_entities,fresh]"], "unknown diagnostic set"),
    (["trace.sets=[updated]", "trace.twiki.path=/nonexistent/twiki"], "is not a folder"),
    (["trace.sets=[updated]", "trace.twiki.period=p0"], "not a synthetic period"),
    (["trace.granularity=head"], "trace.granularity='head': must be one of block, attn_mlp"),
    (["trace.norm=l1"], "trace.norm='l1': must be one of l2, l2_per_sqrt_numel"),
])
def test_bad_input_fails_with_one_line(overrides, message, compose_train, saved_models):
    from kdyn.trace import trace_checkpoint

    cfg = compose_train("model=local", f"model.path={saved_models['olmo']}", *overrides, config_name="trace")
    with pytest.raises(KdynError, match=message) as info:
        trace_checkpoint(cfg)
    assert "\n" not in str(info.value)


def test_missing_period_and_empty_set_errors():
    folder = shared_data("temporalwiki")
    with pytest.raises(KdynError, match="available: 0801-0901"):
        diagnostic_clozes({"sets": ["unchanged"], "twiki": {"path": str(folder), "period": "0101-0201"}})
    with pytest.raises(KdynError, match="'updated' is empty"):  # no earlier period: nothing counts as updated
        build_diagnostic_sets({"sets": ["updated"], "twiki": {"path": str(folder), "period": "0801-0901"}}, None)


def test_kdyn_trace_writes_layer_stats_and_a_heatmap(compose_train, saved_models):
    from kdyn.interventions.layer_selection import load_layer_stats, select_layers
    from kdyn.trace import trace_checkpoint

    cfg = compose_train("model=local", f"model.path={saved_models['gpt_neox']}", "trace.max_examples=4",
                        "trace.granularity=attn_mlp", "trace.knowledge_source.num_items=2", "threads=1",
                        config_name="trace")
    record = trace_checkpoint(cfg)
    out = Path(cfg.paths.output_dir)
    stats = json.loads((out / "layer_stats.json").read_text())
    assert {"model", "granularity", "norm", "layers", "sets", "settings"} <= set(stats)
    assert stats["granularity"] == "attn_mlp" and stats["norm"] == "l2"
    assert stats["layers"] == ["layer_0.attn", "layer_0.mlp", "layer_1.attn", "layer_1.mlp"]
    assert list(stats["sets"]) == ["new_entities", "updated", "unchanged"]
    for entry in stats["sets"].values():
        assert entry["n_examples"] == 4
        assert len(entry["g_span"]) == len(entry["g_lm"]) == len(entry["r"]) == 4
        assert entry["r"] == pytest.approx([s / lm for s, lm in zip(entry["g_span"], entry["g_lm"])])
    assert stats["model"]["name"] == record["model"]["name"]
    assert (out / "layer_stats.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert load_layer_stats(out)["layers"] == stats["layers"]
    assert set(select_layers(stats, "updated")) <= set(stats["layers"])


def test_cli_prints_one_error_line_and_exits_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "kdyn.trace", "trace.sets=[fresh]", f"hydra.run.dir={tmp_path}/run"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("kdyn-trace: error: unknown diagnostic set(s) ['fresh']")
