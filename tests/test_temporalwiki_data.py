"""Tests of TemporalWiki periods, the training-text stand-in (`kdyn.data.temporalwiki`) and probe perplexities
(`kdyn.metrics.twiki_perplexity`)."""

from __future__ import annotations

import collections
import csv
import math
import zipfile
from pathlib import Path

import pytest
import torch

from kdyn.data.probes import make_batches, tokenize_probes
from kdyn.data.temporalwiki import (
    GENERIC_TEMPLATE,
    PERIODS,
    TWIKI_TEMPLATES,
    Period,
    load_twiki_periods,
    period_probes,
    synthetic_periods,
    training_documents,
    verbalize_twiki,
)
from kdyn.data.world import Fact, SyntheticWorld, WorldConfig, verbalize, write_twiki_csv
from kdyn.errors import KdynError
from kdyn.metrics.probe_scoring import score_batches, score_probes
from kdyn.metrics.twiki_perplexity import perplexities
from tests.conftest import shared_data

SMALL_WORLD = {"seed": 3, "n_people": 60, "n_places": 20, "n_orgs": 12, "n_regions": 5, "n_countries": 2,
               "n_rivers": 6, "docs_per_entity": 3}
SMALL_SIZES = {"n_updated": 12, "n_new_facts": 8, "n_new_entities": 2, "n_unchanged": 40}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models: one intra-op thread is far faster than several contending ones (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def twiki_dir() -> Path:
    return shared_data("temporalwiki")


@pytest.fixture(scope="module")
def real(twiki_dir) -> list[Period]:
    return load_twiki_periods(str(twiki_dir))


@pytest.fixture(scope="module")
def synth() -> list[Period]:
    return synthetic_periods(SMALL_WORLD, n_periods=3, seed=1, **SMALL_SIZES)


def dict_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def ends_with_object(sentence: str, obj: str) -> bool:
    return sentence.endswith(obj + ".") or (obj.endswith((".", "!", "?")) and sentence.endswith(obj))


# ---------------------------------------------------------------- loading real files
def test_real_files_load_in_order_with_counts(real, twiki_dir) -> None:
    assert [p.name for p in real] == list(PERIODS)
    for p in real:
        for scenario in ("changed", "unchanged"):
            rows = dict_rows(twiki_dir / f"{p.name}_{scenario}.csv")
            facts = getattr(p, scenario)
            assert len(facts) == len(rows)
            assert facts[0] == Fact(rows[0]["subject"], rows[0]["relation"], rows[0]["object"])
            assert facts[-1] == Fact(rows[-1]["subject"], rows[-1]["relation"], rows[-1]["object"])
            assert p.rows(scenario) == tuple(range(len(rows)))
        assert p.kinds is None and p.origin == "twiki"
        assert len(p.documents) == len({f.subject for f in p.changed})


def test_subset_selection_is_chronological_and_unknown_period_fails(twiki_dir) -> None:
    picked = load_twiki_periods(str(twiki_dir), periods=["1101-1201", "0801-0901"], max_changed=3, max_unchanged=3)
    assert [p.name for p in picked] == ["0801-0901", "1101-1201"]
    with pytest.raises(KdynError, match=r"unknown TWiki-Probes period\(s\) \['0801-0902'\].*0801-0901, 0901-1001"):
        load_twiki_periods(str(twiki_dir), periods=["0801-0902"])


def test_seeded_subsampling_keeps_rows_and_file_order(real, twiki_dir) -> None:
    a = load_twiki_periods(str(twiki_dir), periods=["0901-1001"], max_changed=50, max_unchanged=20, seed=4)[0]
    b = load_twiki_periods(str(twiki_dir), periods=["0901-1001"], max_changed=50, max_unchanged=20, seed=4)[0]
    c = load_twiki_periods(str(twiki_dir), periods=["0901-1001"], max_changed=50, max_unchanged=20, seed=5)[0]
    full = real[1]
    assert a == b and a.changed_rows != c.changed_rows
    assert (len(a.changed), len(a.unchanged)) == (50, 20)
    assert list(a.changed_rows) == sorted(set(a.changed_rows))
    assert all(full.changed[r] == f for r, f in zip(a.changed_rows, a.changed))
    assert all(full.unchanged[r] == f for r, f in zip(a.unchanged_rows, a.unchanged))


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_malformed_csv_names_file_and_line(tmp_path: Path) -> None:
    good = "subject,relation,object\nA,country,B\n"
    _write(tmp_path / "p1_changed.csv", good)
    _write(tmp_path / "p1_unchanged.csv", good + "C,country,D\nE,country,F,G\n")
    with pytest.raises(KdynError, match=r"p1_unchanged\.csv:4: expected 3 fields"):
        load_twiki_periods(str(tmp_path))
    _write(tmp_path / "p1_unchanged.csv", good + "C,,D\n")
    with pytest.raises(KdynError, match=r"p1_unchanged\.csv:3: empty relation"):
        load_twiki_periods(str(tmp_path))
    _write(tmp_path / "p1_unchanged.csv", "subj,rel,obj\nA,country,B\n")
    with pytest.raises(KdynError, match=r"p1_unchanged\.csv:1: header must be subject,relation,object"):
        load_twiki_periods(str(tmp_path))
    _write(tmp_path / "p1_unchanged.csv", good + 'C,country,"D\n')
    with pytest.raises(KdynError, match=r"p1_unchanged\.csv:\d+: malformed CSV"):
        load_twiki_periods(str(tmp_path))


def test_missing_folder_empty_folder_and_offline_hub(tmp_path: Path) -> None:
    with pytest.raises(KdynError, match="does not exist.*shared/data/temporalwiki"):
        load_twiki_periods(str(tmp_path / "nowhere"))
    _write(tmp_path / "p1_changed.csv", "subject,relation,object\nA,country,B\n")  # no unchanged partner
    with pytest.raises(KdynError, match="no <period>_changed.csv"):
        load_twiki_periods(str(tmp_path))
    with pytest.raises(KdynError, match="pass a local folder.*shared/data/temporalwiki"):
        load_twiki_periods(None)  # conftest sets HF_HUB_OFFLINE=1


def test_zip_archive_like_the_hub_release(tmp_path: Path, synth) -> None:
    folder = tmp_path / "twiki_probes"
    for p in synth[:2]:
        write_twiki_csv(p.changed, folder / f"{p.name}_changed.csv")
        write_twiki_csv(p.unchanged, folder / f"{p.name}_unchanged.csv")
    archive = tmp_path / "TWiki_Probes.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted(folder.iterdir()):
            zf.write(f, f"twiki_probes/{f.name}")
        zf.writestr("__MACOSX/twiki_probes/._p1_changed.csv", b"\x00\x05\x16\x07 not a csv")
    from_zip, from_dir = load_twiki_periods(str(archive)), load_twiki_periods(str(folder))
    assert [p.name for p in from_zip] == ["p1", "p2"]
    assert from_zip == from_dir
    assert [(p.changed, p.unchanged) for p in from_zip] == [(p.changed, p.unchanged) for p in synth[:2]]


# ---------------------------------------------------------------- verbaliser
def test_verbaliser_ends_with_object_for_every_real_relation(real) -> None:
    for p in real:
        for fact in p.changed:
            sentence = verbalize_twiki(fact)
            assert ends_with_object(sentence, fact.obj), (fact, sentence)
            assert fact.subject in sentence
    counts = collections.Counter(f.relation for p in real for f in p.changed)
    for relation, _n in counts.most_common(15):
        assert relation in TWIKI_TEMPLATES, relation
        fact = Fact("Xq", relation, "Yq")
        assert verbalize_twiki(fact) != GENERIC_TEMPLATE.format(s="Xq", r=relation, o="Yq")
    assert verbalize_twiki(Fact("Anna", "place of birth", "Oslo")) == "Anna was born in Oslo."
    assert verbalize_twiki(Fact("Beryl", "work location", "Washington D.C.")) == "Beryl work location Washington D.C."
    assert verbalize_twiki(Fact("{o} {r}", "zzz", "{s}")) == "{o} {r} zzz {s}."  # no re-substitution


def test_every_template_ends_with_the_object() -> None:
    for relation, template in TWIKI_TEMPLATES.items():
        assert template.endswith(" {o}.") and template.count("{s}") == 1 and template.count("{o}") == 1, relation


# ---------------------------------------------------------------- training documents
def _assert_facts_in_documents(facts, docs, sentence) -> None:
    """Each fact's sentence is in a document that also names its subject and object."""
    joined = "\x00".join(docs)
    for fact in facts:
        pos = joined.find(sentence(fact))
        assert pos >= 0, fact
        doc = docs[joined.count("\x00", 0, pos)]
        assert sentence(fact) in doc and fact.subject in doc and fact.obj in doc, fact


def test_training_documents_state_every_changed_fact(real, synth) -> None:
    p = real[2]
    docs = training_documents(p, seed=0)
    assert len(docs) == len({f.subject for f in p.changed})
    _assert_facts_in_documents(p.changed, docs, verbalize_twiki)
    assert sorted(training_documents(p, source="documents")) == sorted(docs)
    for q in synth:  # synthetic: the world's own templates, and the world's own paragraphs
        _assert_facts_in_documents(q.changed, training_documents(q), lambda f: verbalize(f, 0))
        world_docs = training_documents(q, source="documents")
        assert sorted(world_docs) == sorted(q.documents)
        for fact in q.changed:
            assert any(fact.subject in d and fact.obj in d for d in world_docs), fact


def test_replay_counts_and_determinism(real) -> None:
    p = real[0]
    n_docs = len(training_documents(p))
    changed_docs = set(training_documents(p))
    mixed = training_documents(p, replay_unchanged=0.1, seed=3)
    replay = [d for d in mixed if d not in changed_docs]
    assert abs(len(replay) - 0.1 * len(p.unchanged)) <= 1 and len(mixed) == n_docs + len(replay)
    assert set(replay) <= {verbalize_twiki(f) for f in p.unchanged}
    base = [f"Base document number {i}." for i in range(500)]
    mixed = training_documents(p, replay_documents=base, replay_fraction=0.25, seed=3)
    used = [d for d in mixed if d in set(base)]
    assert abs(len(used) - 0.25 * n_docs) <= 1 and len(set(used)) == len(used)
    small = training_documents(p, replay_documents=base[:10], replay_fraction=0.5, seed=3)
    counts = collections.Counter(d for d in small if d in set(base[:10]))
    assert sum(counts.values()) == round(0.5 * n_docs) and max(counts.values()) - min(counts.values()) <= 1
    again = training_documents(p, replay_documents=base, replay_fraction=0.25, seed=3)
    other = training_documents(p, replay_documents=base, replay_fraction=0.25, seed=4)
    assert again == mixed and other != mixed
    for bad, match in ((dict(replay_fraction=0.5), "needs replay_documents"),
                       (dict(replay_unchanged=1.5), r"replay_unchanged must be in \[0, 1\]"),
                       (dict(source="wikipedia"), "unknown training source")):
        with pytest.raises(KdynError, match=match):
            training_documents(p, **bad)


# ---------------------------------------------------------------- synthetic periods
def test_synthetic_periods_match_world_updates(synth) -> None:
    raw = SyntheticWorld(WorldConfig(**SMALL_WORLD)).updates(3, 1, **SMALL_SIZES)
    assert [p.name for p in synth] == [r["name"] for r in raw]
    for p, r in zip(synth, raw):
        assert isinstance(p, Period) and p.origin == "synthetic"
        assert all(isinstance(f, Fact) for f in (*p.changed, *p.unchanged))
        assert all(isinstance(d, str) and d for d in p.documents)
        assert p.changed == tuple(r["changed"]) and p.unchanged == tuple(r["unchanged"])
        assert p.documents == tuple(r["documents"])
        assert p.kinds is not None and len(p.kinds) == len(p.changed)
        assert set(p.kinds) == {"updated", "new"}
        for fact, kind, prev in zip(p.changed, p.kinds, r["previous"]):
            assert (prev is None) == (kind == "new")
            if kind == "updated":
                assert prev != fact.obj
        assert not {(f.subject, f.relation) for f in p.changed} & {(f.subject, f.relation) for f in p.unchanged}
    with pytest.raises(KdynError, match="unknown synthetic period size"):
        synthetic_periods(SMALL_WORLD, n_periods=1, n_changed=5)
    with pytest.raises(KdynError, match="unknown world setting"):
        synthetic_periods({"n_persons": 5}, n_periods=1)


# ---------------------------------------------------------------- probes and perplexities
def test_period_probes_fields(real) -> None:
    p = load_twiki_periods(str(shared_data("temporalwiki")), periods=["0801-0901"], max_changed=7,
                           max_unchanged=5)[0]
    probes = period_probes(p, start_index=10)
    assert [q.index for q in probes] == list(range(10, 22))
    assert [q.scenario for q in probes] == ["changed"] * 7 + ["unchanged"] * 5
    assert [q.item for q in probes] == [*p.changed_rows, *p.unchanged_rows]
    for q, f in zip(probes, (*p.changed, *p.unchanged)):
        assert (q.input, q.target, q.probe_type, q.probe_idx) == (f"{f.subject} {f.relation}", f.obj, "twiki", 0)
        assert f"{q.input} {q.target}" == f"{f.subject} {f.relation} {f.obj}"  # TemporalWiki's probe string
        assert real[0].changed[q.item] == f if q.scenario == "changed" else real[0].unchanged[q.item] == f


def reference_perplexities(model, tokenizer, probes, batch: int) -> dict[str, dict[str, float]]:
    """Independent: each probe run unpadded, float64 log-softmax; TemporalWiki-style batch means too."""
    per: dict[str, list[tuple[list[float], int]]] = collections.defaultdict(list)
    for p in probes:
        tgt = tokenizer.encode(" " + p.target, add_special_tokens=False)
        ids = tokenizer.encode(p.input, add_special_tokens=False) + tgt
        with torch.no_grad():
            logp = model(torch.tensor([ids])).logits[0].double().log_softmax(-1)
        per[p.scenario].append(([-float(logp[t - 1, ids[t]]) for t in range(1, len(ids))], len(tgt)))
    out = {}
    for scenario, rows in per.items():
        full = [sum(n) / len(n) for n, _ in rows]
        obj = [sum(n[-k:]) / k for n, k in rows]
        tokens_full = [x for n, _ in rows for x in n]
        tokens_obj = [x for n, k in rows for x in n[-k:]]
        batches = [rows[i:i + batch] for i in range(0, len(rows), batch)]
        batch_means = [sum(x for n, _ in b for x in n) / sum(len(n) for n, _ in b) for b in batches]
        out[scenario] = {"ppl_full": math.exp(sum(full) / len(full)), "ppl_object": math.exp(sum(obj) / len(obj)),
                         "ppl_full_token_weighted": math.exp(sum(tokens_full) / len(tokens_full)),
                         "ppl_object_token_weighted": math.exp(sum(tokens_obj) / len(tokens_obj)),
                         "ppl_full_twiki": math.exp(sum(batch_means) / len(batch_means)), "n": len(rows)}
    return out


@pytest.mark.parametrize("arch", ["olmo", "gpt2"])
@pytest.mark.parametrize("source", ["real", "synthetic"])
def test_perplexities_match_independent_computation(arch, source, tiny_models, tokenizer, synth) -> None:
    if source == "real":
        period = load_twiki_periods(str(shared_data("temporalwiki")), periods=["1101-1201"], max_changed=23,
                                    max_unchanged=17, seed=2)[0]
    else:
        period = Period("p", synth[0].changed[:23], synth[0].unchanged[:17], (), None)
    probes = period_probes(period)
    model = tiny_models[arch]
    ref = reference_perplexities(model, tokenizer, probes, batch=5)

    tokenized = tokenize_probes(probes, tokenizer)
    scores = score_batches(model, make_batches(tokenized, probes, 256, pad_id=tokenizer.pad_token_id))
    plain = perplexities(scores, probes)  # the per-probe statistics alone
    full = perplexities(score_probes(model, tokenizer, probes, batch_tokens=256), probes, twiki_batch_size=5)
    for scenario, n in (("changed", 23), ("unchanged", 17)):
        assert plain[scenario]["n"] == full[scenario]["n"] == ref[scenario]["n"] == n
        for key in ("ppl_full", "ppl_object", "ppl_object_token_weighted"):
            assert plain[scenario][key] == pytest.approx(ref[scenario][key], rel=1e-5), key
        assert math.isnan(plain[scenario]["ppl_full_token_weighted"])  # needs the token counts
        for key in ("ppl_full", "ppl_object", "ppl_full_token_weighted", "ppl_object_token_weighted",
                    "ppl_full_twiki"):
            assert full[scenario][key] == pytest.approx(ref[scenario][key], rel=1e-5), key
        # the aggregations genuinely differ on the same scores
        assert full[scenario]["ppl_full"] != pytest.approx(full[scenario]["ppl_full_token_weighted"], rel=1e-6)


def test_perplexities_reject_unscored_probes(tiny_models, tokenizer, synth) -> None:
    probes = period_probes(Period("p", synth[0].changed[:4], synth[0].unchanged[:4], (), None))
    scores = score_probes(tiny_models["olmo"], tokenizer, probes[:6])
    with pytest.raises(KdynError, match="have no score"):
        perplexities(scores, probes)
    scores = score_probes(tiny_models["olmo"], tokenizer, [probes[0], probes[-1]])
    with pytest.raises(KdynError, match="NaN scores"):
        perplexities(scores, probes)
