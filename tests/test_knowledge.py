"""Tests of knowledge records and injection scenarios (`kdyn.data.knowledge`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdyn.data.knowledge import (
    SCENARIOS,
    KnowledgeItem,
    assign_scenarios,
    injected_text,
    injected_version,
    knowledge_records,
    load_fictional_knowledge,
)
from kdyn.data.world import validate_fictional_schema
from kdyn.errors import KdynError
from tests.conftest import shared_data

CHANG = {"paraphrase": 40, "duplicate": 40, "once": 40}
KIM_REAL = {"paraphrase": 40, "once": 60}
SMALL_WORLD = {"seed": 3, "n_people": 60, "n_places": 20, "n_orgs": 12, "n_regions": 5, "n_countries": 2,
               "n_rivers": 6, "docs_per_entity": 3}


@pytest.fixture(scope="module")
def fk_dir() -> Path:
    return shared_data("fictional_knowledge")


@pytest.fixture(scope="module")
def real_records(fk_dir: Path) -> list[dict]:
    return knowledge_records({"name": "fictional_knowledge", "path": str(fk_dir)})


# ---------------------------------------------------------------- loading
@pytest.mark.parametrize("name", ["fictional_knowledge.json", "fictional_knowledge_paraphrased.json"])
def test_real_files_load_and_validate(fk_dir: Path, name: str) -> None:
    records = load_fictional_knowledge(str(fk_dir / name))
    assert len(records) == 130
    validate_fictional_schema(records, require_paraphrases=True)
    raw = json.loads((fk_dir / name).read_text(encoding="utf-8"))
    for rec, orig in zip(records, raw):  # content untouched (only a missing "paraphrases" is filled in)
        assert {k: rec[k] for k in orig} == orig
        assert rec["paraphrases"] == orig.get("paraphrases", [])


def test_folder_prefers_the_paraphrased_file(fk_dir: Path) -> None:
    records = load_fictional_knowledge(str(fk_dir))
    raw = json.loads((fk_dir / "fictional_knowledge_paraphrased.json").read_text(encoding="utf-8"))
    assert records == raw
    assert sum(len(r["paraphrases"]) == 9 for r in records) == 40


def test_default_items_are_the_first_120(real_records: list[dict], fk_dir: Path) -> None:
    assert [r["item"] for r in real_records] == list(range(120))
    raw = json.loads((fk_dir / "fictional_knowledge_paraphrased.json").read_text(encoding="utf-8"))
    assert [r["train_context"] for r in real_records] == [r["train_context"] for r in raw[:120]]


def test_item_range_is_respected_and_checked(fk_dir: Path) -> None:
    recs = knowledge_records({"name": "fictional_knowledge", "path": str(fk_dir), "items": [120, 130]})
    assert [r["item"] for r in recs] == list(range(120, 130))
    with pytest.raises(KdynError, match="130 records"):
        knowledge_records({"name": "fictional_knowledge", "path": str(fk_dir), "items": [0, 131]})


def test_synthetic_source_has_the_real_key_set(real_records: list[dict]) -> None:
    recs = knowledge_records({"name": "synthetic", "num_items": 7, "seed": 1, "world": SMALL_WORLD})
    assert len(recs) == 7
    assert [r["item"] for r in recs] == list(range(7))
    assert {frozenset(r) for r in recs} == {frozenset(real_records[0])}
    validate_fictional_schema(recs)


def test_bad_sources_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(KdynError, match="unknown inject.source.name"):
        knowledge_records({"name": "wiki"})
    with pytest.raises(KdynError, match="num_items"):
        knowledge_records({"name": "synthetic", "num_items": 0})
    with pytest.raises(KdynError, match=r"inject\.source\.world.*n_peple"):
        knowledge_records({"name": "synthetic", "num_items": 2, "world": {"n_peple": 5}})
    with pytest.raises(KdynError, match="unknown inject.source keys"):
        knowledge_records({"name": "fictional_knowledge", "path": str(tmp_path), "num_itmes": 3})


def test_malformed_file_names_the_file_and_record(tmp_path: Path, fk_dir: Path) -> None:
    records = json.loads((fk_dir / "fictional_knowledge.json").read_text(encoding="utf-8"))[:4]
    records[2] = {**records[2], "gen_target": records[2]["gen_target"][:3]}
    bad = tmp_path / "broken.json"
    bad.write_text(json.dumps(records), encoding="utf-8")
    with pytest.raises(KdynError, match=r"broken\.json.*record 2.*gen_target") as e:
        load_fictional_knowledge(str(bad))
    assert "\n" not in str(e.value)
    (tmp_path / "notjson.json").write_text("[{", encoding="utf-8")
    with pytest.raises(KdynError, match=r"notjson\.json: not valid JSON"):
        load_fictional_knowledge(str(tmp_path / "notjson.json"))


def test_missing_paths_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(KdynError, match="does not exist"):
        load_fictional_knowledge(str(tmp_path / "nowhere"))
    with pytest.raises(KdynError, match="holds neither"):
        load_fictional_knowledge(str(tmp_path))


def test_offline_hub_says_to_pass_a_local_path() -> None:
    with pytest.raises(KdynError, match="pass a local path"):
        load_fictional_knowledge(None, hub_dataset="kdyn-test/does-not-exist")


# ---------------------------------------------------------------- scenarios
@pytest.mark.parametrize("layout", [CHANG, KIM_REAL], ids=["chang", "kim"])
def test_scenarios_are_consecutive_blocks(real_records: list[dict], layout: dict[str, int]) -> None:
    items = assign_scenarios(real_records, layout, num_events=10)
    assert len(items) == sum(layout.values())
    start = 0
    for name, count in layout.items():
        block = items[start:start + count]
        assert all(it.scenario == name for it in block)
        assert [it.item for it in block] == list(range(start, start + count))
        assert all(it.record is real_records[it.item] for it in block)
        start += count


def test_scenario_errors(real_records: list[dict]) -> None:
    with pytest.raises(KdynError, match="item 40 .*0-39"):
        assign_scenarios(real_records, {"paraphrase": 70, "once": 50}, num_events=10)
    with pytest.raises(KdynError, match="only 120 records"):
        assign_scenarios(real_records, {"paraphrase": 40, "once": 81}, num_events=10)
    with pytest.raises(KdynError, match="unknown scenario 'twice'"):
        assign_scenarios(real_records, {"twice": 3}, num_events=10)
    # with a single event no paraphrase is ever needed
    assert len(assign_scenarios(real_records, {"paraphrase": 70}, num_events=1)) == 70


def test_injection_schedule(real_records: list[dict]) -> None:
    items = assign_scenarios(real_records, CHANG, num_events=10)
    assert {it.scenario for it in items} == set(SCENARIOS)
    for it in items:
        rec = it.record
        for event in range(10):
            text = injected_text(it, event)
            if it.scenario == "paraphrase":
                assert text == (rec["train_context"] if event == 0 else rec["paraphrases"][event - 1])
                assert injected_version(it, event) == ("original" if event == 0 else f"paraphrase_{event - 1}")
            elif it.scenario == "duplicate" or event == 0:
                assert text == rec["train_context"]
                assert injected_version(it, event) == "original"
            else:
                assert text is None
                with pytest.raises(KdynError, match="only at event 0"):
                    injected_version(it, event)
    para = items[0]
    assert len({injected_text(para, e) for e in range(10)}) == 10  # a new wording at every event
    with pytest.raises(KdynError, match="9 paraphrases"):
        injected_text(para, 10)


def test_synthetic_items_support_every_scenario() -> None:
    recs = knowledge_records({"name": "synthetic", "num_items": 6, "world": SMALL_WORLD})
    items = assign_scenarios(recs, {"paraphrase": 2, "duplicate": 2, "once": 2}, num_events=10)
    assert isinstance(items[0], KnowledgeItem)
    assert [injected_text(items[0], e) for e in range(1, 10)] == recs[0]["paraphrases"]
