"""Knowledge injection: schedules, row invariants, bad schedules, and the full train → probes → metrics path."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from kdyn.data.datamodule import TrainingStream
from kdyn.data.injection import build_plan
from kdyn.data.knowledge import assign_scenarios, knowledge_records
from kdyn.errors import KdynError
from tests.conftest import shared_data


def _items(n_each=3, events=4):
    records = knowledge_records({"name": "synthetic", "num_items": 3 * n_each, "seed": 0})
    return assign_scenarios(records, {"paraphrase": n_each, "duplicate": n_each, "once": n_each}, events)


def test_chang_layout_exposures_and_versions(tokenizer):
    items = _items()
    plan = build_plan(items, tokenizer, seq_len=1024, global_batch_size=32, max_steps=100, interval=10, num_events=4)
    assert plan.steps == [0, 10, 20, 30]
    exposures = plan.exposures()
    for item in items:
        assert exposures[item.item] == {"paraphrase": 4, "duplicate": 4, "once": 1}[item.scenario]
    versions = {(r["item"], r["event"]): r["version"] for r in plan.to_rows()}
    for item in items:
        if item.scenario == "paraphrase":
            assert [versions[(item.item, e)] for e in range(4)] == ["original", "paraphrase_0", "paraphrase_1",
                                                                   "paraphrase_2"]
        if item.scenario == "duplicate":
            assert {versions[(item.item, e)] for e in range(4)} == {"original"}


def test_kim_layout_spreads_once_items(tokenizer):
    records = knowledge_records({"name": "synthetic", "num_items": 8, "seed": 0})
    items = assign_scenarios(records, {"paraphrase": 2, "once": 6}, 3)
    plan = build_plan(items, tokenizer, seq_len=1024, global_batch_size=16, max_steps=100, interval=16, num_events=3,
                      first_step=15, once_per_event=2, mode="prepend")
    assert plan.steps == [15, 31, 47]
    by_item = plan.steps_by_item()
    once = [it.item for it in items if it.scenario == "once"]
    assert [by_item[i] for i in once] == [[15], [15], [31], [31], [47], [47]]
    assert all(len(by_item[it.item]) == 3 for it in items if it.scenario == "paraphrase")


@pytest.mark.parametrize("mode", ["replace", "prepend"])
def test_injected_rows_keep_seq_len_and_hold_the_knowledge(mode, tokenizer):
    items = _items(n_each=2, events=2)
    seq_len = 96
    plan = build_plan(items, tokenizer, seq_len=seq_len, global_batch_size=8, max_steps=20, interval=5, num_events=2,
                      mode=mode)
    base = torch.arange(48 * seq_len).reshape(48, seq_len) % 1000 + 5000  # ids no tokenizer produces
    stream = TrainingStream(base.clone(), 8, num_steps=6, transforms=[plan])
    for step in range(6):
        batch = stream[step]["input_ids"]
        assert batch.shape == (8, seq_len)
        original = base[step * 8:(step + 1) * 8]
        event = next((e for e in plan.events if e.step == step), None)
        if event is None:
            assert torch.equal(batch, original)
            continue
        for r in range(8):
            if r >= len(event.rows):
                assert torch.equal(batch[r], original[r])
                continue
            knowledge = [t for text in event.rows[r] for t in text.tokens][:seq_len]
            n = len(knowledge)
            assert batch[r, :n].tolist() == knowledge
            rest = original[r, n:] if mode == "replace" else original[r, : seq_len - n]
            assert torch.equal(batch[r, n:], rest)


def test_ddp_ranks_together_inject_exactly_the_planned_rows(tokenizer):
    items = _items(n_each=2, events=2)
    plan = build_plan(items, tokenizer, seq_len=512, global_batch_size=8, max_steps=10, interval=3, num_events=2)
    base = torch.full((64, 512), 7)
    injected_rows = Counter()
    for rank in range(2):
        stream = TrainingStream(base.clone(), 4, world_size=2, rank=rank, num_steps=6, transforms=[plan])
        for k in range(len(stream)):
            batch = stream[k]
            for r in range(4):
                if (batch["input_ids"][r] != 7).any():
                    injected_rows[int(batch["step"])] += 1
    assert dict(injected_rows) == {e.step: len(e.rows) for e in plan.events}


def test_schedule_longer_than_the_run_keeps_the_events_that_fit_and_warns(tokenizer, caplog):
    plan = build_plan(_items(), tokenizer, seq_len=512, global_batch_size=32, max_steps=30, interval=10, num_events=4)
    assert plan.steps == [0, 10, 20] and plan.describe()["planned_events"] == 4
    assert "last of 4 events is at step 30" in caplog.text and "only 3 of 4 events" in caplog.text
    assert build_plan(_items(), tokenizer, seq_len=512, global_batch_size=32, max_steps=2, interval=10,
                      num_events=4).steps == [0]


def test_more_injected_texts_than_rows_is_an_error_with_counts(tokenizer):
    with pytest.raises(KdynError, match=r"needs 9 rows .* batch has 4 rows"):
        build_plan(_items(), tokenizer, seq_len=64, global_batch_size=4, max_steps=100, interval=10, num_events=2)


def test_real_fictional_knowledge_chang_layout(tokenizer):
    path = shared_data("fictional_knowledge")
    records = knowledge_records({"name": "fictional_knowledge", "path": str(path)})
    items = assign_scenarios(records, {"paraphrase": 40, "duplicate": 40, "once": 40}, 10)
    plan = build_plan(items, tokenizer, seq_len=4096, global_batch_size=128, max_steps=1000, interval=100, num_events=10)
    counts = Counter(plan.scenario_of_item()[i] for i, n in plan.exposures().items() for _ in range(n))
    assert counts == {"paraphrase": 400, "duplicate": 400, "once": 40}


# ----------------------------------------------------------------------------------- end to end
def _read(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_training_with_injection_scores_probes_and_reports_metrics(saved_models, corpus_jsonl, compose_train):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kdyn.data.probes import build_probes, make_batches, tokenize_probes
    from kdyn.metrics.probe_scoring import score_batches
    from kdyn.train import train

    cfg = compose_train("model=local", f"model.path={saved_models['llama']}", "corpus=text", f"corpus.path={corpus_jsonl}",
                        "trainer.max_steps=12", "data.seq_len=128", "data.batch_size=8", "inject.source.num_items=6",
                        "inject.scenarios.paraphrase=2", "inject.scenarios.duplicate=2", "inject.scenarios.once=2",
                        "inject.interval=3", "inject.num_events=3", "inject.metrics.window=2",
                        "callbacks.probes.every_n_steps=1", "trainer.enable_progress_bar=false",
                        "callbacks.checkpoint.every_n_train_steps=1000")
    results = train(cfg)
    run = Path(cfg.paths.output_dir)
    injections = _read(run / "injections.csv")
    assert {int(r["step"]) for r in injections} == {0, 3, 6}
    probes = _read(run / "probes.csv")
    steps = sorted({int(r["step"]) for r in probes})
    assert steps == list(range(13))
    assert len(probes) == 13 * 6 * 15
    # step-0 scores are the untrained model's: recompute them independently of the callback
    model = AutoModelForCausalLM.from_pretrained(saved_models["llama"])
    tok = AutoTokenizer.from_pretrained(saved_models["llama"])
    items = assign_scenarios(knowledge_records(cfg.inject.source), dict(cfg.inject.scenarios), 3)
    all_probes = build_probes(items)
    scores = score_batches(model, make_batches(tokenize_probes(all_probes, tok, max_len=128), all_probes,
                                               batch_tokens=512, pad_id=tok.pad_token_id))
    key = {(p.item, p.probe_type, p.probe_idx): p.index for p in all_probes}
    for row in (r for r in probes if r["step"] == "0"):
        expected = float(scores["nll"][key[(int(row["item"]), row["probe_type"], int(row["probe_idx"]))]])
        assert float(row["nll"]) == pytest.approx(expected, rel=1e-4)
    knowledge = json.loads((run / "results.json").read_text())["knowledge"]
    assert knowledge == json.loads(json.dumps(results["knowledge"]))
    assert set(knowledge["scenarios"]) == {"paraphrase", "duplicate", "once"}
    assert set(knowledge["scenarios"]["once"]) == {"mem", "gen", "hard_gen"}
    assert knowledge["scenarios"]["paraphrase"]["mem"]["injection_steps"] == [0, 3, 6]


@pytest.fixture(scope="module")
def world_tokenizer():
    """The tiny model's tokenizer recipe: BPE 2048 on the synthetic base stream (same token lengths)."""
    from kdyn.data.corpora import load_documents
    from kdyn.data.tokenizer import train_bpe_tokenizer

    return train_bpe_tokenizer(load_documents({"name": "synthetic"}), 2048)


@pytest.mark.parametrize("preset, exposures", [
    ("chang2024", {"paraphrase": 10, "duplicate": 10, "once": 1}),
    ("kim2025", {"paraphrase": 10, "once": 1}),
])
def test_presets_compose_into_valid_schedules(preset, exposures, compose_train, world_tokenizer):
    from kdyn.data.injection import plan_from_config

    cfg = compose_train(f"experiment={preset}")
    items = assign_scenarios(knowledge_records(cfg.inject.source), dict(cfg.inject.scenarios), cfg.inject.num_events)
    plan = plan_from_config(cfg.inject, items, world_tokenizer, seq_len=cfg.data.seq_len,
                            global_batch_size=cfg.data.batch_size, max_steps=cfg.trainer.max_steps)
    scenario = plan.scenario_of_item()
    assert {scenario[i]: n for i, n in plan.exposures().items()} == exposures
    assert not any(r["truncated"] for r in plan.to_rows())
    if preset == "kim2025":
        assert plan.steps == [159 + 160 * k for k in range(10)]
        assert cfg.callbacks.probes.every_n_steps == 160
    else:
        assert plan.steps == [100 * k for k in range(10)] and cfg.callbacks.probes.every_n_steps == 1
