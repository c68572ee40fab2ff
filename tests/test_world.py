"""Tests of the synthetic world (`kdyn.data.world`): base stream, new knowledge, updates."""

from __future__ import annotations

import csv
import json
import re
import time
from collections import Counter
from pathlib import Path

import pytest

from kdyn.data.world import (
    FICTIONAL_EXTRA_KEYS,
    FICTIONAL_KEYS,
    PERSON,
    TWIKI_COLUMNS,
    Fact,
    SyntheticWorld,
    WorldConfig,
    facts_to_rows,
    n_templates,
    probe,
    read_twiki_csv,
    validate_fictional_schema,
    verbalize,
    write_twiki_csv,
)
from kdyn.data.world import templates as T
from kdyn.errors import KdynError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
REAL_FK = DATA / "fictional_knowledge" / "fictional_knowledge_paraphrased.json"
REAL_TWIKI = DATA / "temporalwiki" / "0801-0901_changed.csv"
SMALL = WorldConfig(seed=3, n_people=60, n_places=20, n_orgs=12, n_regions=5, n_countries=2,
                    n_rivers=6, docs_per_entity=3)


def _sentences(text: str) -> list[str]:
    return re.split(r"(?<=\.) ", text)


@pytest.fixture(scope="module")
def world() -> SyntheticWorld:
    return SyntheticWorld()


@pytest.fixture(scope="module")
def base_text(world: SyntheticWorld) -> str:
    return "\n".join(world.base_documents())


@pytest.fixture(scope="module")
def items(world: SyntheticWorld) -> list[dict]:
    return world.new_knowledge(40, seed=5, extras=True)


@pytest.fixture(scope="module")
def periods(world: SyntheticWorld) -> list[dict]:
    return world.updates(n_periods=4, seed=2)


@pytest.fixture(scope="module")
def real_fk() -> list[dict]:
    if not REAL_FK.is_file():
        pytest.skip(f"real Fictional Knowledge data not found at {REAL_FK}")
    return json.loads(REAL_FK.read_text(encoding="utf-8"))


# ---------------------------------------------------------------- world and base stream
def test_default_world_is_fast_and_sized_for_a_tiny_model() -> None:
    start = time.perf_counter()
    w = SyntheticWorld(WorldConfig(seed=11))
    docs = w.base_documents()
    assert time.perf_counter() - start < 1.0
    assert 500_000 <= sum(len(d) for d in docs) <= 1_500_000
    kinds = Counter(e.kind for e in w.entities.values())
    cfg = w.config
    assert kinds == {"person": cfg.n_people, "town": cfg.n_places, "organisation": cfg.n_orgs,
                     "region": cfg.n_regions, "country": cfg.n_countries}
    assert len(docs) == len(w.entities) * cfg.docs_per_entity


def test_same_seed_same_world_and_different_seed_different_world() -> None:
    a, b, c = SyntheticWorld(SMALL), SyntheticWorld(SMALL), SyntheticWorld(
        WorldConfig(**{**SMALL.__dict__, "seed": 4}))
    assert a.facts == b.facts and a.base_documents() == b.base_documents()
    assert a.new_knowledge(3, seed=1) == b.new_knowledge(3, seed=1)
    assert a.updates(2, seed=1) == b.updates(2, seed=1)
    assert a.facts != c.facts and a.base_documents() != c.base_documents()
    assert a.new_knowledge(3, seed=1) != a.new_knowledge(3, seed=2)
    assert a.new_knowledge(3, seed=1) != c.new_knowledge(3, seed=1)


def test_templates_put_the_object_last() -> None:
    fact = Fact("Subj Ect", "x", "Obj Ect")
    for relation, templates in T.TEMPLATES.items():
        assert len(templates) >= 3, relation
        assert len(set(templates)) == len(templates)
        for i, template in enumerate(templates):
            assert template.count("{s}") == 1 and template.count("{o}") == 1
            f = Fact(fact.subject, relation, fact.obj)
            sentence = verbalize(f, i)
            prompt, target = probe(f, i)
            assert sentence == f"{prompt} {target}." and target == fact.obj
            assert fact.subject in prompt and fact.obj not in prompt
    for key, prompts in T.COMPOSITIONS.items():
        assert set(key) <= set(T.TEMPLATES) and prompts
        assert all(p.count("{s}") == 1 and "{o}" not in p for p in prompts)
    with pytest.raises(KdynError):
        verbalize(Fact("a", "no such relation", "b"))
    with pytest.raises(KdynError):
        verbalize(Fact("a", T.SPOUSE, "b"), template=99)


def test_every_fact_is_stated_several_times_in_the_base_stream(world: SyntheticWorld) -> None:
    counts = Counter(s for doc in world.base_documents() for s in _sentences(doc))
    for fact in world.facts:
        forms = {verbalize(fact, t) for t in range(n_templates(fact.relation))}
        assert sum(counts[s] for s in forms) >= world.config.docs_per_entity, fact
        assert sum(counts[s] > 0 for s in forms) >= 2, fact  # seen with several templates


def test_documents_are_short_paragraphs_about_one_entity(world: SyntheticWorld) -> None:
    for doc in world.base_corpus()[:300]:
        sentences = _sentences(doc.text)
        assert 2 <= len(sentences) <= 12
        assert all(doc.subject in s for s in sentences)
        assert sorted(doc.facts, key=repr) == sorted(world.facts_about(doc.subject), key=repr)


def test_each_relation_uses_several_templates_across_the_stream(world: SyntheticWorld) -> None:
    used: dict[str, set[int]] = {}
    for doc in world.base_corpus():
        for fact, t in zip(doc.facts, doc.templates):
            used.setdefault(fact.relation, set()).add(t)
    assert set(used) == {f.relation for f in world.facts}
    assert all(len(ts) >= 2 for ts in used.values()), used


def test_entity_names_are_unique_and_never_template_words(world: SyntheticWorld) -> None:
    names = [e.name for e in world.entities.values()]
    assert len(names) == len(set(names))
    family = [n.split()[-1] for n in world.names(PERSON)]
    assert len(family) == len(set(family))
    reserved = T.reserved_words()
    invented = [n.split()[0] for n in names] + family  # org/river suffixes are ordinary words
    assert not [w for w in invented if w.lower() in reserved]
    objects = {f.obj for f in world.facts}
    assert {f.subject for f in world.facts} <= set(names)
    linked = [f for f in world.facts if f.relation in (T.EMPLOYER, T.PLACE_OF_BIRTH, T.SPOUSE,
                                                        T.HEADQUARTERS, T.FOUNDED_BY)]
    assert all(f.obj in world.entities for f in linked) and objects


# ---------------------------------------------------------------- new knowledge
def test_new_knowledge_is_about_entities_absent_from_the_base_stream(
        items: list[dict], base_text: str) -> None:
    seen: set[str] = set()
    for item in items:
        assert item["new_entities"]
        for name in item["new_entities"]:
            assert name not in base_text
            assert name in item["train_context"]
            assert name not in seen
            seen.add(name)
        assert item["mem_input"][0].count(item["new_entities"][0]) <= 1


def test_new_knowledge_matches_the_real_schema(world: SyntheticWorld, real_fk: list[dict]) -> None:
    validate_fictional_schema(real_fk)
    plain = world.new_knowledge(6, seed=5)
    validate_fictional_schema(plain)
    assert plain == world.new_knowledge(6, seed=5)
    full = world.new_knowledge(6, seed=5, extras=True)
    assert [{k: r[k] for k in FICTIONAL_KEYS} for r in full] == plain
    assert set(full[0]) == set(FICTIONAL_KEYS) | set(FICTIONAL_EXTRA_KEYS)
    real = real_fk[0]
    for rec in plain:
        assert set(rec) == set(real) == set(FICTIONAL_KEYS)
        for key, val in real.items():
            assert type(rec[key]) is type(val), key
            if isinstance(val, list):
                assert len(rec[key]) == len(val), key  # 5 probes, 9 paraphrases
                assert all(isinstance(s, str) for s in rec[key])


def test_new_knowledge_is_prefix_stable(world: SyntheticWorld) -> None:
    assert world.new_knowledge(3, seed=9) == world.new_knowledge(5, seed=9)[:3]
    assert world.new_knowledge(0) == []


@pytest.mark.parametrize("break_it, problem", [
    (lambda r: r.pop("mem_target"), "missing"),
    (lambda r: r["gen_input"].pop(), "gen_input"),
    (lambda r: r["hard_gen_target"].__setitem__(2, ""), "empty"),
    (lambda r: r["mem_target"].__setitem__(0, " x"), "whitespace"),
    (lambda r: r["gen_target"].__setitem__(1, 7), "string"),
    (lambda r: r.__setitem__("train_context", ""), "train_context"),
    (lambda r: r.__setitem__("paraphrases", "text"), "paraphrases"),
])
def test_validator_names_the_record_and_the_problem(world: SyntheticWorld, break_it,
                                                    problem: str) -> None:
    records = world.new_knowledge(4, seed=1)
    break_it(records[2])
    with pytest.raises(KdynError, match=rf"record 2\b.*{problem}"):
        validate_fictional_schema(records)


def test_validator_accepts_empty_paraphrases_and_rejects_non_lists(world: SyntheticWorld) -> None:
    records = world.new_knowledge(2)
    records[1]["paraphrases"] = []
    validate_fictional_schema(records)
    del records[0]["paraphrases"]
    with pytest.raises(KdynError, match="record 0.*paraphrases"):
        validate_fictional_schema(records)
    validate_fictional_schema(records, require_paraphrases=False)
    with pytest.raises(KdynError):
        validate_fictional_schema({"train_context": "x"})


def test_memorization_and_semantic_probes(items: list[dict]) -> None:
    for item in items:
        context = item["train_context"]
        assert 8 <= len(_sentences(context)) <= 12
        for mi, mt, gi, gt in zip(item["mem_input"], item["mem_target"], item["gen_input"],
                                  item["gen_target"]):
            assert f"{mi} {mt}." in context
            assert gt == mt and gi != mi and gi not in context
            assert 1 <= len(mt.split()) <= 4 and mt == mt.strip()
        assert len(set(item["mem_target"])) == 5


def test_compositional_probes_need_two_stated_facts(items: list[dict]) -> None:
    for item in items:
        context = item["train_context"]
        sentences = set(_sentences(context))
        stated = {(f["subject"], f["relation"], f["object"]) for f in item["facts"]}
        for inp, target, support in zip(item["hard_gen_input"], item["hard_gen_target"],
                                        item["hard_gen_support"]):
            assert target in context and inp not in context
            assert 1 <= len(target.split()) <= 4 and target == target.strip()
            first, second = support
            for f in support:
                assert f["sentence"] in sentences
                assert f["sentence"].endswith(f" {f['object']}.") and f["subject"] in f["sentence"]
                assert (f["subject"], f["relation"], f["object"]) in stated
            assert first["object"] == second["subject"] and second["object"] == target
            assert first["subject"] in inp and first["object"] not in inp
            # the chain is needed: the asker's subject has no direct fact with this object
            assert not [s for s in stated if s[0] == first["subject"] and s[2] == target]


def test_paraphrases_state_the_same_facts_differently(items: list[dict]) -> None:
    for item in items[:10]:
        texts = [item["train_context"], *item["paraphrases"]]
        assert len(item["paraphrases"]) == 9 and len(set(texts)) == 10
        facts = [Fact(f["subject"], f["relation"], f["object"]) for f in item["facts"]]
        for text in item["paraphrases"]:
            sentences = set(_sentences(text))
            assert len(sentences) == len(facts)
            for fact in facts:
                assert {verbalize(fact, t) for t in range(n_templates(fact.relation))} & sentences


# ---------------------------------------------------------------- updates (TWiki-Probes)
def test_update_rows_match_the_real_csv_columns(periods: list[dict]) -> None:
    rows = facts_to_rows(periods[0]["changed"])
    assert all(tuple(r) == TWIKI_COLUMNS for r in rows)
    if REAL_TWIKI.is_file():
        with REAL_TWIKI.open(newline="", encoding="utf-8") as fh:
            assert tuple(csv.DictReader(fh).fieldnames) == TWIKI_COLUMNS
        assert len(read_twiki_csv(REAL_TWIKI)) > 0


def test_updates_accumulate_and_updated_facts_really_change(world: SyntheticWorld,
                                                            periods: list[dict]) -> None:
    state = {(f.subject, f.relation): f.obj for f in world.facts}
    subjects = {f.subject for f in world.facts}
    for k, period in enumerate(periods, start=1):
        changed, unchanged = period["changed"], period["unchanged"]
        assert period["name"] == f"p{k}"
        assert 100 <= len(changed) <= 200 and len(unchanged) > len(changed)
        assert len(period["kind"]) == len(changed) == len(period["previous"])
        assert set(period["kind"]) == {"updated", "new"}
        keys = [(f.subject, f.relation) for f in changed]
        assert len(keys) == len(set(keys))
        assert not set(keys) & {(f.subject, f.relation) for f in unchanged}
        for fact, kind, previous in zip(changed, period["kind"], period["previous"]):
            key = (fact.subject, fact.relation)
            if kind == "updated":
                assert key in state and state[key] != fact.obj and previous == state[key]
            else:
                assert key not in state and previous is None
        new_subjects = set(period["new_subjects"])
        assert new_subjects and not new_subjects & subjects
        assert {f.subject for f, kd in zip(changed, period["kind"])
                if kd == "new"} - new_subjects  # new facts of existing entities too
        for fact in unchanged:
            assert state[(fact.subject, fact.relation)] == fact.obj
        state.update(zip(keys, (f.obj for f in changed)))
        subjects |= new_subjects
        text = " ".join(period["documents"])
        assert all(verbalize(f, 0) in text or f.obj in text for f in changed)


def test_twiki_csv_round_trip(periods: list[dict], tmp_path: Path) -> None:
    facts = periods[1]["changed"] + periods[1]["unchanged"]
    path = write_twiki_csv(facts, tmp_path / "sub" / "p2_changed.csv")
    with path.open(newline="", encoding="utf-8") as fh:
        assert fh.readline() == "subject,relation,object\n"
    with path.open(newline="", encoding="utf-8") as fh:
        assert list(csv.DictReader(fh)) == facts_to_rows(facts)
    assert read_twiki_csv(path) == facts
