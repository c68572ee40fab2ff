"""Tests of probe building, tokenisation, batching (`kdyn.data.probes`) and scoring (`kdyn.metrics.probe_scoring`)."""

from __future__ import annotations

import copy
import itertools
import logging
import random

import pytest
import torch

from kdyn.data import probes as P
from kdyn.data.knowledge import assign_scenarios, knowledge_records
from kdyn.data.probes import (
    PROBE_TYPES,
    Probe,
    build_probes,
    make_batches,
    padding_efficiency,
    tokenize_probes,
)
from kdyn.errors import KdynError
from kdyn.metrics import probe_scoring as S
from kdyn.metrics.probe_scoring import score_batches
from tests.conftest import ARCHS, shared_data

MAX_LEN = 128  # the tiny test models' context
SMALL_WORLD = {"seed": 3, "n_people": 60, "n_places": 20, "n_orgs": 12, "n_regions": 5, "n_countries": 2,
               "n_rivers": 6, "docs_per_entity": 3}


@pytest.fixture(scope="module")
def real_items():
    records = knowledge_records({"name": "fictional_knowledge", "path": str(shared_data("fictional_knowledge"))})
    return assign_scenarios(records, {"paraphrase": 40, "duplicate": 40, "once": 40}, num_events=10)


@pytest.fixture(scope="module")
def synth_items():
    records = knowledge_records({"name": "synthetic", "num_items": 6, "seed": 2, "world": SMALL_WORLD})
    return assign_scenarios(records, {"paraphrase": 2, "duplicate": 2, "once": 2}, num_events=10)


@pytest.fixture(scope="module")
def real_subset(real_items) -> list[Probe]:
    """40 of the 1,800 real probes, spread over items, types and scenarios (indices kept)."""
    return build_probes(real_items)[::45]


@pytest.fixture(scope="module")
def synth_probes(synth_items) -> list[Probe]:
    return build_probes(synth_items[:4], include_paragraph=True)


def reference_scores(model, tokenizer, probe: Probe) -> tuple[float, float, float, int]:
    """(nll, nll_first, nll_full, n_target) of one probe: unbatched, unpadded, float64 log-softmax."""
    if probe.probe_type == "paragraph":
        ids = tokenizer.encode(probe.target, add_special_tokens=False)[-MAX_LEN:]
        n = len(ids) - 1
    else:
        tgt = tokenizer.encode(" " + probe.target, add_special_tokens=False)
        ids = (tokenizer.encode(probe.input, add_special_tokens=False) + tgt)[-MAX_LEN:]
        n = len(tgt)
    with torch.no_grad():
        logp = model(torch.tensor([ids])).logits[0].double().log_softmax(-1)
    nll = [-float(logp[t - 1, ids[t]]) for t in range(1, len(ids))]
    target = nll[len(nll) - n:]
    return sum(target) / n, target[0], sum(nll) / len(nll), n


# ---------------------------------------------------------------- building and tokenising
def test_build_probes_counts_and_fields(real_items) -> None:
    probes = build_probes(real_items)
    assert len(probes) == len(real_items) * len(PROBE_TYPES) * 5 == 1800
    assert [p.index for p in probes] == list(range(len(probes)))
    for p in probes[::7]:
        rec = real_items[p.item].record
        assert (p.input, p.target) == (rec[f"{p.probe_type}_input"][p.probe_idx],
                                       rec[f"{p.probe_type}_target"][p.probe_idx])
        assert p.scenario == real_items[p.item].scenario
    two = build_probes(real_items[:10], types=("mem", "hard_gen"), include_paragraph=True)
    assert len(two) == 10 * (2 * 5 + 1)
    para = [p for p in two if p.probe_type == "paragraph"]
    assert [(p.input, p.target) for p in para] == [("", it.record["train_context"]) for it in real_items[:10]]
    with pytest.raises(KdynError, match="unknown probe type"):
        build_probes(real_items, types=("mem", "cloze"))


@pytest.mark.parametrize("source", ["real", "synthetic"])
def test_target_span_is_the_last_n_target_tokens(source, real_items, synth_items, tokenizer) -> None:
    items = real_items if source == "real" else synth_items
    probes = build_probes(items, include_paragraph=True)
    tokenized = tokenize_probes(probes, tokenizer)
    for p, (ids, n) in zip(probes, tokenized):
        if p.probe_type == "paragraph":
            assert tokenizer.decode(ids) == p.target and n == len(ids) - 1
        else:
            assert tokenizer.decode(ids[len(ids) - n:]) == " " + p.target
            assert tokenizer.decode(ids[:len(ids) - n]) == p.input


def test_empty_targets_are_reported_with_their_count(tokenizer) -> None:
    probes = [Probe(0, 3, "once", "mem", 0, "The capital is", "Paris"),
              Probe(1, 3, "once", "gen", 1, "The capital is", ""),
              Probe(2, 4, "once", "hard_gen", 2, "The capital is", "   "),
              Probe(3, 5, "once", "paragraph", 0, "", "")]
    with pytest.raises(KdynError, match=r"^3 probe\(s\) have an empty target.*\(item 3, gen, 1\)") as e:
        tokenize_probes(probes, tokenizer)
    assert "\n" not in str(e.value)


def test_long_probes_lose_input_from_the_left(real_items, tokenizer, caplog) -> None:
    probes = build_probes(real_items[:8], include_paragraph=True)
    full = tokenize_probes(probes, tokenizer)
    with caplog.at_level(logging.WARNING, logger=P.__name__):
        cut = tokenize_probes(probes, tokenizer, max_len=40)
    n_long = sum(len(ids) > 40 for ids, _ in full)
    assert 0 < n_long < len(probes)
    assert f"{n_long} of {len(probes)} probes" in caplog.text
    for p, (ids, n), (cids, cn) in zip(probes, full, cut):
        assert cids == ids[-40:]
        assert cn == (min(n, 39) if p.probe_type == "paragraph" else n)


# ---------------------------------------------------------------- batching
@pytest.mark.parametrize("batch_tokens", [1, 300, 8192])
def test_batches_are_bucketed_right_padded_and_complete(real_items, tokenizer, batch_tokens) -> None:
    probes = build_probes(real_items[:30], include_paragraph=batch_tokens == 8192)
    tokenized = tokenize_probes(probes, tokenizer)
    batches = make_batches(tokenized, probes, batch_tokens, pad_id=tokenizer.pad_token_id)
    seen = torch.cat([b.probe_index for b in batches]).tolist()
    assert sorted(seen) == [p.index for p in probes]
    for b in batches:
        bsz, width = b.input_ids.shape
        assert bsz == 1 or bsz * width <= batch_tokens
        for row, idx in enumerate(b.probe_index.tolist()):
            ids, n = tokenized[idx]
            assert b.attention_mask[row].tolist() == [1] * len(ids) + [0] * (width - len(ids))
            assert b.input_ids[row, :len(ids)].tolist() == ids
            assert (b.input_ids[row, len(ids):] == tokenizer.pad_token_id).all()
            assert b.target_mask[row].nonzero().flatten().tolist() == list(range(len(ids) - n, len(ids)))
    real = sum(len(ids) for ids, _ in tokenized)
    computed = sum(b.input_ids.shape[0] * b.input_ids.shape[1] for b in batches)
    eff = padding_efficiency(batches)
    assert 0 < eff <= 1 and eff == pytest.approx(real / computed)
    if batch_tokens == 1:
        assert len(batches) == len(probes) and eff == 1.0


# ---------------------------------------------------------------- scoring
@pytest.mark.parametrize("arch", ARCHS)
def test_scores_match_an_unbatched_float64_reference(arch, tiny_models, tokenizer, real_subset,
                                                     synth_probes) -> None:
    model = tiny_models[arch]
    for probes in (real_subset, synth_probes):
        tokenized = tokenize_probes(probes, tokenizer, max_len=MAX_LEN)
        by_size = {bt: score_batches(model, make_batches(tokenized, probes, bt, pad_id=tokenizer.pad_token_id))
                   for bt in (1, 8192)}
        ref = torch.tensor([reference_scores(model, tokenizer, p) for p in probes], dtype=torch.float64)
        index = torch.tensor([p.index for p in probes])
        for scores in by_size.values():
            assert len(scores["nll"]) == max(p.index for p in probes) + 1
            for col, key in enumerate(("nll", "nll_first", "nll_full")):
                torch.testing.assert_close(scores[key][index].double(), ref[:, col], rtol=0, atol=1e-5)
            assert scores["n_target"][index].tolist() == ref[:, 3].long().tolist()
        # padding is ignored: one probe per batch and big batches agree
        for key in ("nll", "nll_first", "nll_full"):
            torch.testing.assert_close(by_size[1][key], by_size[8192][key], rtol=0, atol=1e-5, equal_nan=True)


def test_chunked_logsumexp_and_bf16(tiny_models, tokenizer, synth_probes, monkeypatch) -> None:
    model = tiny_models["llama"]
    tokenized = tokenize_probes(synth_probes, tokenizer, max_len=MAX_LEN)
    batches = make_batches(tokenized, synth_probes, 8192, pad_id=tokenizer.pad_token_id)
    whole = score_batches(model, batches)
    monkeypatch.setattr(S, "_MAX_LOGSUMEXP_ELEMENTS", 3 * len(tokenizer))  # 3 positions per chunk
    chunked = score_batches(model, batches)
    for key in ("nll", "nll_first", "nll_full"):
        torch.testing.assert_close(chunked[key], whole[key], rtol=0, atol=1e-6)
    half = copy.deepcopy(model).to(torch.bfloat16)
    singles = make_batches(tokenized, synth_probes, 1, pad_id=tokenizer.pad_token_id)
    scores = score_batches(half, singles)
    ref = torch.tensor([reference_scores(half, tokenizer, p)[0] for p in synth_probes], dtype=torch.float64)
    torch.testing.assert_close(scores["nll"].double(), ref, rtol=0, atol=1e-4)


def test_scoring_runs_in_eval_mode_and_restores_the_mode(tiny_models, tokenizer, synth_probes) -> None:
    model = tiny_models["gpt2"]
    modes: list[bool] = []
    handle = model.register_forward_pre_hook(lambda mod, args: modes.append(mod.training))
    tokenized = tokenize_probes(synth_probes[:5], tokenizer, max_len=MAX_LEN)
    batches = make_batches(tokenized, synth_probes[:5], 1, pad_id=tokenizer.pad_token_id)
    try:
        model.train()
        score_batches(model, batches)
        assert model.training and modes == [False] * len(batches)
    finally:
        handle.remove()
        model.eval()


def _partition_cost(lengths, cuts, overhead):
    return sum((b - a) * lengths[b - 1] + overhead for a, b in cuts)


def test_optimal_cuts_match_a_brute_force_search() -> None:
    rng = random.Random(0)
    for trial in range(60):
        n = rng.randint(1, 9)
        lengths = sorted(rng.randint(1, 40) for _ in range(n))
        budget = rng.choice([1, 30, 60, 120, 400])
        overhead = rng.choice([0, 5, 50])
        best = None
        for mask in itertools.product([False, True], repeat=n - 1):  # every set of cut points
            bounds = [0] + [i + 1 for i, cut in enumerate(mask) if cut] + [n]
            cuts = list(zip(bounds, bounds[1:]))
            if all(b - a == 1 or (b - a) * lengths[b - 1] <= budget for a, b in cuts):
                cost = _partition_cost(lengths, cuts, overhead)
                best = cost if best is None else min(best, cost)
        cuts = P.optimal_cuts(lengths, budget, overhead)
        assert [a for a, _ in cuts] == [0] + [b for _, b in cuts[:-1]] and cuts[-1][1] == n  # a partition
        assert all(b - a == 1 or (b - a) * lengths[b - 1] <= budget for a, b in cuts)
        assert _partition_cost(lengths, cuts, overhead) == best, (trial, lengths, budget, overhead)


def test_batching_pads_less_than_greedy_filling(real_items, tokenizer) -> None:
    probes = build_probes(real_items[:60])
    tokenized = tokenize_probes(probes, tokenizer)
    lengths = sorted(len(ids) for ids, _ in tokenized)
    greedy: list[list[int]] = []  # fill each batch while the budget allows (the obvious alternative)
    for length in lengths:
        if greedy and (len(greedy[-1]) + 1) * length <= 4096:
            greedy[-1].append(length)
        else:
            greedy.append([length])
    greedy_cost = sum(len(g) * g[-1] + P.BATCH_OVERHEAD_TOKENS for g in greedy)
    batches = make_batches(tokenized, probes, 4096, pad_id=tokenizer.pad_token_id)
    cost = sum(b.input_ids.numel() + P.BATCH_OVERHEAD_TOKENS for b in batches)
    assert cost <= greedy_cost


def test_probe_set_scores_every_probe_like_the_unbatched_reference(tiny_models, tokenizer) -> None:
    """`ProbeSet` (the one pipeline every consumer scores through): the knowledge source's probes, each
    scored once; its shards partition the batches; ``n_predicted`` is every token but the first."""
    from kdyn.metrics.probe_scoring import ProbeSet

    source = {"name": "synthetic", "num_items": 3, "seed": 5, "world": SMALL_WORLD}
    scenarios = {"paraphrase": 1, "duplicate": 1, "once": 1}
    probe_set = ProbeSet.from_knowledge(source, scenarios, 2, tokenizer, types=("mem", "gen"), include_paragraph=True,
                                        batch_tokens=256, max_len=MAX_LEN)
    assert [it.scenario for it in probe_set.items] == ["paraphrase", "duplicate", "once"]
    assert len(probe_set) == 3 * (2 * 5 + 1)
    assert [p.index for p in probe_set.probes] == list(range(len(probe_set)))
    shards = [probe_set.shard(rank, 3) for rank in range(3)]
    rows = sorted(int(i) for shard in shards for b in shard for i in b.probe_index)
    assert rows == list(range(len(probe_set))) and sum(map(len, shards)) == len(probe_set.batches)
    model = tiny_models["olmo"]
    scores = probe_set.score(model)
    for p in probe_set.probes:
        nll, first, full, n = reference_scores(model, tokenizer, p)
        assert (float(scores["nll"][p.index]), float(scores["nll_full"][p.index])) == pytest.approx((nll, full), abs=1e-5)
        assert float(scores["nll_first"][p.index]) == pytest.approx(first, abs=1e-5)
        assert int(scores["n_target"][p.index]) == n
        whole = (tokenizer.encode(p.target, add_special_tokens=False) if p.probe_type == "paragraph" else
                 tokenizer.encode(p.input, add_special_tokens=False) + tokenizer.encode(" " + p.target,
                                                                                        add_special_tokens=False))
        assert int(probe_set.n_predicted[p.index]) == min(len(whole), MAX_LEN) - 1
