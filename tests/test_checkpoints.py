"""Checkpoint resolution (kdyn.models.checkpoints): configs, step tables and error messages. No network."""

from __future__ import annotations

import functools
import json
import re
from importlib import resources
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from kdyn.errors import KdynError
from kdyn.models.checkpoints import (
    OLMO2_MODELS,
    OLMO_MODELS,
    PYTHIA_STEPS,
    CheckpointRef,
    branch_for_step,
    load_branch_table,
    load_step_list,
    nearest_steps,
    resolve_checkpoint,
    valid_steps,
)

CONF_MODEL = Path(__file__).resolve().parents[1] / "conf" / "model"
BRANCHES = resources.files("kdyn.models").joinpath("branches")
BRANCH_RE = re.compile(r"^step(\d+)-tokens(\d+)B$")

SIZES = ["14m", "31m", "70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b"]
DEDUPED_SIZES = [s for s in SIZES if s not in ("14m", "31m")]
OUR_CONFIGS = (
    [f"pythia-{s}" for s in SIZES]
    + [f"pythia-{s}-deduped" for s in DEDUPED_SIZES]
    + ["olmo-1b", "olmo-7b", "gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "local", "hub"]
)
SCHEMA_KEYS = {
    "name", "family", "repo", "step", "revision", "path", "dtype", "attn_implementation", "trust_remote_code", "ffn",
    "revision_lock", "resolver",
}
CHECKPOINT_FAMILIES = {"pythia", "olmo", "olmo2", "gpt2", "local", "hub", "tiny"}


def load(name: str):
    """The composed config of conf/model/<name>.yaml (its family base + its own keys)."""
    return OmegaConf.create(_composed(name))


@functools.lru_cache(maxsize=None)
def _composed(name: str) -> dict:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_MODEL), version_base="1.3"):
        return OmegaConf.to_container(compose(name), resolve=False)


def raw_branch_lines(filename: str) -> list[str]:
    """The non-comment lines of a branches/ file, parsed here independently of the module."""
    text = BRANCHES.joinpath(filename).read_text(encoding="utf-8")
    return [ln.split("#", 1)[0].strip() for ln in text.splitlines() if ln.split("#", 1)[0].strip()]


def message(excinfo) -> str:
    return str(excinfo.value)


# ---------------------------------------------------------------- config files


def test_all_our_configs_exist():
    on_disk = {p.stem for p in CONF_MODEL.glob("*.yaml")}
    assert set(OUR_CONFIGS) <= on_disk, sorted(set(OUR_CONFIGS) - on_disk)
    assert not {"pythia-14m-deduped", "pythia-31m-deduped"} & on_disk


# `scratch` builds a fresh model (kdyn.models.scratch.build_scratch); every other family resolves here.
RESOLVED_HERE = sorted(p for p in CONF_MODEL.glob("*.yaml") if p.stem != "scratch")


@pytest.mark.parametrize("path", RESOLVED_HERE, ids=lambda p: p.stem)
def test_config_file_loads_and_its_default_resolves(path):
    cfg = load(path.stem)
    assert cfg.name == path.stem
    assert cfg.get("family") in CHECKPOINT_FAMILIES
    if path.stem in OLMO2_MODELS:
        assert set(cfg.keys()) == SCHEMA_KEYS | {"stage", "ingredient"}
    if path.stem in OUR_CONFIGS:
        assert set(cfg.keys()) == SCHEMA_KEYS
        assert set(cfg.ffn.keys()) == {"layers", "down_proj", "up_proj", "up_half"}
        assert cfg.dtype in ("float32", "bfloat16", "float16")
    if cfg.family == "local":
        with pytest.raises(KdynError, match=r"model\.path=DIR"):
            resolve_checkpoint(cfg)
        return
    if cfg.family == "hub":
        with pytest.raises(KdynError, match=r"model\.repo=ORG/NAME"):
            resolve_checkpoint(cfg)
        return
    ref = resolve_checkpoint(cfg)
    assert isinstance(ref, CheckpointRef)
    assert ref.family == cfg.family and ref.name == cfg.name
    if cfg.family in ("pythia", "olmo"):
        steps = valid_steps(cfg)
        assert cfg.step == max(steps), "the default step should be the final checkpoint"
        assert ref.step == cfg.step and ref.location == cfg.repo


def test_default_configs_resolve_to_expected_refs():
    assert resolve_checkpoint(load("pythia-160m")) == CheckpointRef(
        "pythia-160m", "pythia", "EleutherAI/pythia-160m", "step143000", 143000
    )
    assert resolve_checkpoint(load("olmo-1b")).revision == "step738020-tokens3094B"
    olmo7 = resolve_checkpoint(load("olmo-7b"))
    assert (olmo7.location, olmo7.revision, olmo7.step) == ("allenai/OLMo-7B-hf", None, 557000)
    gpt2 = resolve_checkpoint(load("gpt2-xl"))
    assert (gpt2.location, gpt2.revision, gpt2.step) == ("openai-community/gpt2-xl", None, None)


def test_describe():
    ref = resolve_checkpoint({**OmegaConf.to_container(load("pythia-160m")), "step": 3000})
    assert ref.describe() == "EleutherAI/pythia-160m@step3000"
    assert resolve_checkpoint(load("gpt2")).describe() == "openai-community/gpt2@main"


# ---------------------------------------------------------------- Pythia


def test_pythia_step_table():
    assert len(PYTHIA_STEPS) == 154
    assert len(set(PYTHIA_STEPS)) == 154 and list(PYTHIA_STEPS) == sorted(PYTHIA_STEPS)
    assert {0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512} <= set(PYTHIA_STEPS)
    assert {k * 1000 for k in range(1, 144)} <= set(PYTHIA_STEPS)
    assert max(PYTHIA_STEPS) == 143000
    assert not {3, 513, 1500, 144000} & set(PYTHIA_STEPS)


@pytest.mark.parametrize("step", [0, 1, 512, 1000, 77000, 143000])
def test_pythia_revision_string(step):
    ref = resolve_checkpoint({"name": "pythia-410m-deduped", "family": "pythia", "step": step})
    assert ref.revision == f"step{step}" and ref.step == step
    assert ref.location == "EleutherAI/pythia-410m-deduped"


@pytest.mark.parametrize("size", SIZES)
def test_pythia_deduped_variants_exist_except_14m_31m(size):
    resolve_checkpoint({"name": f"pythia-{size}", "family": "pythia", "step": 1000})
    deduped = {"name": f"pythia-{size}-deduped", "family": "pythia", "step": 1000}
    if size in ("14m", "31m"):
        with pytest.raises(KdynError, match="no deduplicated run") as e:
            resolve_checkpoint(deduped)
        assert f"model=pythia-{size}" in message(e)
    else:
        assert resolve_checkpoint(deduped).location == f"EleutherAI/pythia-{size}-deduped"


def _independent_neighbours(steps, step):
    below = [s for s in steps if s < step]
    above = [s for s in steps if s > step]
    return (max(below) if below else None, min(above) if above else None)


@pytest.mark.parametrize("step", [3, 513, 999, 1500, 142999, 150000])
def test_pythia_invalid_step_names_nearest(step):
    cfg = {**OmegaConf.to_container(load("pythia-160m")), "step": step}
    with pytest.raises(KdynError) as e:
        resolve_checkpoint(cfg)
    below, above = _independent_neighbours(PYTHIA_STEPS, step)
    expected = ", ".join(str(s) for s in (below, above) if s is not None)
    msg = message(e)
    assert f"pythia-160m has no checkpoint at step {step}" in msg
    assert f"(nearest: {expected})" in msg
    assert "every 1000 from 1000 to 143000" in msg


def test_step_accepts_digit_strings_and_rejects_garbage():
    base = OmegaConf.to_container(load("pythia-70m"))
    assert resolve_checkpoint({**base, "step": "3000"}).revision == "step3000"
    assert resolve_checkpoint({**base, "step": 3000.0}).revision == "step3000"
    for bad, pattern in [(-1, "non-negative"), ("-5", "non-negative"), ("3k", "non-negative integer"),
                         (1500.5, "whole number"), (True, "non-negative integer"), ([1], "non-negative integer")]:
        with pytest.raises(KdynError, match=pattern) as e:
            resolve_checkpoint({**base, "step": bad})
        assert "model.step=3000" in message(e)


def test_pythia_null_step_is_main():
    ref = resolve_checkpoint({**OmegaConf.to_container(load("pythia-1b")), "step": None})
    assert ref.revision is None and ref.step == 143000


def test_explicit_revision_bypasses_the_table():
    base = OmegaConf.to_container(load("pythia-160m"))
    ref = resolve_checkpoint({**base, "step": 1500, "revision": "step1500"})
    assert ref.revision == "step1500" and ref.step == 1500
    ref = resolve_checkpoint({**base, "revision": "a1b2c3d"})
    assert ref.revision == "a1b2c3d" and ref.step is None


def test_nearest_steps():
    assert nearest_steps([0, 10, 20], 15) == (10, 20)
    assert nearest_steps([0, 10, 20], 10) == (10, 10)
    assert nearest_steps([0, 10, 20], 25) == (20, None)
    assert nearest_steps([5, 10], 1) == (None, 5)


# ---------------------------------------------------------------- OLMo


@pytest.mark.parametrize("name", sorted(OLMO_MODELS))
def test_olmo_branch_table_file_is_well_formed(name):
    filename = OLMO_MODELS[name].table
    header = BRANCHES.joinpath(filename).read_text(encoding="utf-8").splitlines()[0]
    assert header.startswith("#"), "each table starts with a header recording its sources"
    lines = raw_branch_lines(filename)
    parsed = []
    for line in lines:
        m = BRANCH_RE.match(line)
        assert m, f"{filename}: {line!r} is not step<N>-tokens<T>B"
        parsed.append((int(m.group(1)), int(m.group(2))))
    steps = [s for s, _ in parsed]
    tokens = [t for _, t in parsed]
    assert all(a < b for a, b in zip(steps, steps[1:])), "steps strictly increase"
    assert all(a <= b for a, b in zip(tokens, tokens[1:])), "token counts never decrease"
    table = load_branch_table(filename)
    assert list(table.items()) == [(s, ln) for (s, _), ln in zip(parsed, lines)]


def test_olmo_1b_table_content():
    table = load_branch_table("olmo-1b-hf.txt")
    assert len(table) == 23
    assert table[1000] == "step1000-tokens4B"
    assert table[10000] == "step10000-tokens41B"
    assert table[738020] == "step738020-tokens3094B"
    official = load_step_list("olmo-1b-official-steps.txt")
    assert len(official) == 351 and official[0] == 1000 and official[-1] == 738020
    assert set(table) <= set(official), "every -hf branch is one of the official checkpoints"


def test_olmo_valid_step_returns_its_branch():
    table = load_branch_table("olmo-1b-hf.txt")
    for step, branch in table.items():
        ref = resolve_checkpoint({**OmegaConf.to_container(load("olmo-1b")), "step": step})
        assert (ref.location, ref.revision, ref.step) == ("allenai/OLMo-1B-hf", branch, step)
    assert valid_steps(load("olmo-1b")) == list(table)


def test_olmo_invalid_step_names_nearest():
    table = list(load_branch_table("olmo-1b-hf.txt"))
    official = load_step_list("olmo-1b-official-steps.txt")
    base = OmegaConf.to_container(load("olmo-1b"))
    # an official checkpoint whose -hf branch name kdyn does not know
    step = next(s for s in official if s not in table)
    with pytest.raises(KdynError) as e:
        resolve_checkpoint({**base, "step": step})
    below, above = _independent_neighbours(table, step)
    assert f"(nearest: {below}, {above})" in message(e)
    assert "model.revision=" in message(e) and "official checkpoint" in message(e)
    # a step that is no checkpoint at all
    with pytest.raises(KdynError) as e:
        resolve_checkpoint({**base, "step": 6000})
    below, above = _independent_neighbours(table, 6000)
    assert "has no checkpoint at step 6000" in message(e) and f"(nearest: {below}, {above})" in message(e)


def test_olmo_explicit_revision_bypasses_table():
    base = OmegaConf.to_container(load("olmo-1b"))
    ref = resolve_checkpoint({**base, "step": 6000, "revision": "step6000-tokens25B"})
    assert ref.revision == "step6000-tokens25B" and ref.step == 6000
    ref = resolve_checkpoint({**OmegaConf.to_container(load("olmo-7b")), "revision": "step20000-tokens88B"})
    assert ref.location == "allenai/OLMo-7B-hf" and ref.revision == "step20000-tokens88B"


def test_olmo_7b_intermediate_step_explains_where_checkpoints_are():
    with pytest.raises(KdynError) as e:
        resolve_checkpoint({**OmegaConf.to_container(load("olmo-7b")), "step": 20000})
    assert "557000" in message(e) and "allenai/OLMo-7B" in message(e) and "model.revision" in message(e)


def test_olmo_table_is_tied_to_its_repo():
    base = OmegaConf.to_container(load("olmo-1b"))
    with pytest.raises(KdynError, match="model.revision"):
        resolve_checkpoint({**base, "repo": "allenai/OLMo-1B", "step": 20000})


def test_branch_for_step():
    refs = ["main", "step1000-tokens4B", "step10000-tokens41B", "stage1-step10000-tokens42B"]
    assert branch_for_step(refs, 10000) == "step10000-tokens41B"
    assert branch_for_step(["step3000", "main"], 3000) == "step3000"
    assert branch_for_step(refs, 2000) is None


class _Refs:
    def __init__(self, names):
        self.branches = [type("Ref", (), {"name": n})() for n in names]


@pytest.fixture
def hub_branches(monkeypatch, tmp_path):
    """Pretend the hub is reachable and lists the given branches (no network in tests)."""
    import huggingface_hub

    from kdyn.models import checkpoints

    calls = []

    def install(names=None, error=None):
        def list_repo_refs(repo, **kwargs):
            calls.append(repo)
            if error is not None:
                raise error
            return _Refs(names)

        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setenv("KDYN_CACHE_DIR", str(tmp_path / "kdyn-cache"))  # a fresh branch cache per test
        monkeypatch.setattr(huggingface_hub, "list_repo_refs", list_repo_refs)
        checkpoints._repo_branches.cache_clear()
        return calls

    yield install
    checkpoints._repo_branches.cache_clear()


def test_official_olmo_step_missing_from_the_table_is_looked_up_on_the_hub(hub_branches):
    calls = hub_branches(["main", "step20000-tokens84B", "step30000-tokens126B", "step30000-foo"])
    base = OmegaConf.to_container(load("olmo-1b"))
    ref = resolve_checkpoint({**base, "step": 30000})
    assert (ref.location, ref.revision, ref.step) == ("allenai/OLMo-1B-hf", "step30000-tokens126B", 30000)
    resolve_checkpoint({**base, "step": 30000})
    assert calls == ["allenai/OLMo-1B-hf"]  # listed once per process
    with pytest.raises(KdynError, match="no checkpoint at step 30001"):  # not official: never looked up
        resolve_checkpoint({**base, "step": 30001})


def test_hub_lookup_failures_and_offline_say_why(hub_branches, monkeypatch):
    base = {**OmegaConf.to_container(load("olmo-1b")), "step": 30000}
    hub_branches(error=OSError("connection refused"))
    with pytest.raises(KdynError, match="listing the branches of allenai/OLMo-1B-hf failed.*connection refused"):
        resolve_checkpoint(base)
    hub_branches(["main", "step20000-tokens84B"])
    with pytest.raises(KdynError, match="has no branch step30000"):
        resolve_checkpoint(base)
    calls = hub_branches(["step30000-tokens126B"])
    before = len(calls)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(KdynError, match="HF_HUB_OFFLINE is set") as e:
        resolve_checkpoint(base)
    assert len(calls) == before and "model.revision" in message(e)  # offline: the hub is never asked


# ---------------------------------------------------------------- OLMo-2

OLMO2_LISTING = [  # what a mocked hub lists for allenai/OLMo-2-1124-7B
    "main", "stage1-step0-tokens0B", "stage1-step1000-tokens5B", "stage1-step2000-tokens9B",
    "stage1-step5000-tokens21B", "stage1-step928646-tokens3896B",
    "stage2-ingredient1-step1000-tokens5B", "stage2-ingredient1-step11931-tokens50B",
    "stage2-ingredient2-step1000-tokens5B", "stage2-ingredient2-step11931-tokens50B",
]


def olmo2(name="olmo2-7b", **overrides):
    return {**OmegaConf.to_container(load(name)), **overrides}


@pytest.mark.parametrize("name", sorted(OLMO2_MODELS))
def test_olmo2_anchor_tables_hold_the_readme_branches(name):
    """Each anchor file starts with a source header; its lines are the OLMo README's stage end points."""
    filename = OLMO2_MODELS[name].anchors
    assert BRANCHES.joinpath(filename).read_text(encoding="utf-8").startswith("# ")
    lines = raw_branch_lines(filename)
    expected = {  # copied from allenai/OLMo README (commit 59a53e3f), sections "Stage 1" / "Stage 2 for the ..."
        "olmo2-1b": ["stage1-step1907359-tokens4001B"] + [f"stage2-ingredient{k}-step23852-tokens51B" for k in (1, 2, 3)],
        "olmo2-7b": ["stage1-step928646-tokens3896B"] + [f"stage2-ingredient{k}-step11931-tokens50B" for k in (1, 2, 3)],
        "olmo2-13b": ["stage1-step596057-tokens5001B"] + [f"stage2-ingredient{k}-step11931-tokens100B" for k in (1, 2, 3)]
        + ["stage2-ingredient4-step35773-tokens300B"],
    }[name]
    assert lines == expected


def test_olmo2_default_is_main_and_anchors_resolve_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("KDYN_CACHE_DIR", str(tmp_path))
    ref = resolve_checkpoint(load("olmo2-7b"))
    assert (ref.family, ref.location, ref.revision, ref.step) == ("olmo2", "allenai/OLMo-2-1124-7B", None, None)
    ref = resolve_checkpoint(olmo2(step=928646))
    assert (ref.revision, ref.step) == ("stage1-step928646-tokens3896B", 928646)
    ref = resolve_checkpoint(olmo2("olmo2-13b", step=35773, stage=2, ingredient=4))
    assert ref.revision == "stage2-ingredient4-step35773-tokens300B"
    ref = resolve_checkpoint(olmo2("olmo2-1b", step=23852, ingredient=3))  # ingredient alone implies stage 2
    assert (ref.location, ref.revision) == ("allenai/OLMo-2-0425-1B", "stage2-ingredient3-step23852-tokens51B")


def test_olmo2_stage1_step_is_resolved_from_the_hub_once_and_cached(hub_branches, tmp_path):
    calls = hub_branches(OLMO2_LISTING)
    ref = resolve_checkpoint(olmo2(step=5000))
    assert (ref.revision, ref.step) == ("stage1-step5000-tokens21B", 5000)
    assert resolve_checkpoint(olmo2(step=1000, stage=1)).revision == "stage1-step1000-tokens5B"
    assert calls == ["allenai/OLMo-2-1124-7B"]  # one listing per process
    cache = json.loads((tmp_path / "kdyn-cache" / "branches" / "allenai--OLMo-2-1124-7B.json").read_text())
    assert cache["repo"] == "allenai/OLMo-2-1124-7B" and sorted(cache["branches"]) == sorted(OLMO2_LISTING)


def test_olmo2_rerun_uses_the_cache_without_asking_the_hub(hub_branches, monkeypatch):
    hub_branches(OLMO2_LISTING)
    resolve_checkpoint(olmo2(step=2000))  # lists and writes the cache
    from kdyn.models import checkpoints

    checkpoints._repo_branches.cache_clear()  # a new process
    calls = hub_branches(OLMO2_LISTING)
    calls.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_checkpoint(olmo2(step=2000)).revision == "stage1-step2000-tokens9B"
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert resolve_checkpoint(olmo2(step=1000, stage=2, ingredient=2)).revision == "stage2-ingredient2-step1000-tokens5B"
    assert calls == []  # both found in the cache: the hub was never asked


def test_olmo2_stage2_ingredient_is_resolved(hub_branches):
    hub_branches(OLMO2_LISTING)
    ref = resolve_checkpoint(olmo2(step=1000, stage=2, ingredient=1))
    assert (ref.revision, ref.step) == ("stage2-ingredient1-step1000-tokens5B", 1000)
    # the same step of stage 1 is a different branch
    assert resolve_checkpoint(olmo2(step=1000)).revision == "stage1-step1000-tokens5B"


def test_olmo2_missing_step_names_the_nearest_steps_of_its_series(hub_branches):
    hub_branches(OLMO2_LISTING)
    with pytest.raises(KdynError) as e:
        resolve_checkpoint(olmo2(step=3000))
    assert "stage 1" in message(e) and "2000, 5000" in message(e) and "model.step" in message(e)
    with pytest.raises(KdynError) as e:
        resolve_checkpoint(olmo2(step=5000, stage=2, ingredient=2))
    assert "stage 2 ingredient 2" in message(e) and "nearest stage 2 ingredient 2 steps are 1000, 11931" in message(e)
    with pytest.raises(KdynError, match=r"no stage 2 ingredient 7 branches \(stage-2 ingredients: 1, 2\)"):
        resolve_checkpoint(olmo2(step=5000, stage=2, ingredient=7))
    # following the advice: a nearest step resolves
    assert resolve_checkpoint(olmo2(step=2000)).revision == "stage1-step2000-tokens9B"


def test_olmo2_offline_never_asks_the_hub_and_names_model_revision(hub_branches, monkeypatch):
    calls = hub_branches(OLMO2_LISTING)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(KdynError) as e:
        resolve_checkpoint(olmo2(step=5000))
    assert calls == []
    text = message(e)
    assert "HF_HUB_OFFLINE is set" in text and "model.revision=stage1-step5000-tokens<T>B" in text
    assert "928646" in text  # the nearest anchor
    # following the advice: the branch name passed as model.revision loads without any lookup
    ref = resolve_checkpoint(olmo2(step=5000, revision="stage1-step5000-tokens21B"))
    assert (ref.revision, ref.step) == ("stage1-step5000-tokens21B", 5000) and calls == []
    ref = resolve_checkpoint(olmo2(revision="stage2-ingredient2-step1000-tokens5B"))
    assert ref.step == 1000


def test_olmo2_hub_failure_says_why(hub_branches):
    hub_branches(error=OSError("connection refused"))
    with pytest.raises(KdynError, match="listing the branches of allenai/OLMo-2-1124-7B failed.*connection refused"):
        resolve_checkpoint(olmo2(step=5000))


@pytest.mark.parametrize("overrides, match, fixed", [
    ({"step": 1000, "stage": 2}, r"model\.ingredient=k, e\.g\. model\.ingredient=1", {"ingredient": 1}),
    ({"step": 1000, "stage": 1, "ingredient": 2}, r"set model\.stage=2", {"stage": 2}),
    ({"step": 1000, "stage": 3}, r"model\.stage=1, or model\.stage=2", {"stage": 1}),
    ({"step": 1000, "ingredient": 0}, r"numbered from 1", {"ingredient": 1}),
    ({"stage": 2, "ingredient": 1}, r"pass model\.step=N \(its final step is 11931\)", {"step": 11931}),
])
def test_olmo2_stage_and_ingredient_errors_and_their_fixes(overrides, match, fixed, hub_branches):
    hub_branches(OLMO2_LISTING)
    with pytest.raises(KdynError, match=match):
        resolve_checkpoint(olmo2(**overrides))
    assert resolve_checkpoint(olmo2(**{**overrides, **fixed})).revision.startswith("stage")


def test_olmo2_through_model_hub_uses_the_same_resolution(hub_branches):
    hub_branches(OLMO2_LISTING)
    ref = resolve_checkpoint({"name": "hub", "family": "hub", "repo": "allenai/OLMo-2-1124-7B", "step": 5000})
    assert (ref.family, ref.revision, ref.step) == ("hub", "stage1-step5000-tokens21B", 5000)


def test_olmo1_lookup_also_uses_the_branch_cache(hub_branches, monkeypatch):
    calls = hub_branches(["main", "step30000-tokens126B"])
    base = {**OmegaConf.to_container(load("olmo-1b")), "step": 30000}
    assert resolve_checkpoint(base).revision == "step30000-tokens126B"
    from kdyn.models import checkpoints

    checkpoints._repo_branches.cache_clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_checkpoint(base).revision == "step30000-tokens126B" and calls == ["allenai/OLMo-1B-hf"]


# ---------------------------------------------------------------- GPT-2, hub


def test_gpt2_rejects_step():
    with pytest.raises(KdynError, match="only its final checkpoint") as e:
        resolve_checkpoint({**OmegaConf.to_container(load("gpt2")), "step": 1000})
    assert "model.step=null" in message(e)
    assert valid_steps(load("gpt2")) is None


def test_hub_requires_repo_and_accepts_any_repo():
    with pytest.raises(KdynError, match=r"pass model\.repo=ORG/NAME"):
        resolve_checkpoint(load("hub"))
    base = OmegaConf.to_container(load("hub"))
    ref = resolve_checkpoint({**base, "repo": "Qwen/Qwen2.5-0.5B"})
    assert (ref.family, ref.location, ref.revision, ref.step) == ("hub", "Qwen/Qwen2.5-0.5B", None, None)
    ref = resolve_checkpoint({**base, "repo": "org/model", "revision": "ckpt-500", "step": 500})
    assert ref.revision == "ckpt-500" and ref.step == 500


def test_hub_step_without_revision():
    base = OmegaConf.to_container(load("hub"))
    with pytest.raises(KdynError, match=r"model\.revision=<branch>"):
        resolve_checkpoint({**base, "repo": "org/model", "step": 500})
    # a repo kdyn has a table for: the step is checked against it
    assert resolve_checkpoint({**base, "repo": "EleutherAI/pythia-160m", "step": 3000}).revision == "step3000"
    with pytest.raises(KdynError, match=r"nearest: 1000, 2000"):
        resolve_checkpoint({**base, "repo": "EleutherAI/pythia-160m", "step": 1500})


@pytest.mark.parametrize("repo", ["/data/ckpt", "./ckpt", "a/b/c", "bad repo", "org/--x"])
def test_hub_rejects_malformed_repo(repo):
    with pytest.raises(KdynError, match="model.repo"):
        resolve_checkpoint({**OmegaConf.to_container(load("hub")), "repo": repo})


def test_unknown_family_is_rejected():
    with pytest.raises(KdynError, match="not a kdyn model family"):
        resolve_checkpoint({"name": "x", "family": "llama"})


def test_tiny_is_passed_through():
    ref = resolve_checkpoint({"name": "tiny", "family": "tiny", "step": None})
    assert ref == CheckpointRef(name="tiny", family="tiny", location=None, revision=None, step=None)


# ---------------------------------------------------------------- local


def _local(path) -> dict:
    return {**OmegaConf.to_container(load("local")), "path": None if path is None else str(path)}


def _save_pretrained_like(d: Path, *, config=True, tokenizer=True, weights=True) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    if config:
        (d / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    if tokenizer:
        (d / "tokenizer.json").write_text("{}")
    if weights:
        (d / "model.safetensors").write_bytes(b"\0")
    return d


def test_local_missing_path():
    with pytest.raises(KdynError, match=r"pass model\.path=DIR"):
        resolve_checkpoint(_local(None))


def test_local_nonexistent_dir(tmp_path):
    with pytest.raises(KdynError, match="does not exist"):
        resolve_checkpoint(_local(tmp_path / "nope"))


def test_local_path_is_a_file(tmp_path):
    f = tmp_path / "model.bin"
    f.write_bytes(b"")
    with pytest.raises(KdynError, match="not a directory"):
        resolve_checkpoint(_local(f))


def test_local_without_config(tmp_path):
    d = _save_pretrained_like(tmp_path / "ckpt", config=False)
    with pytest.raises(KdynError, match="no config.json") as e:
        resolve_checkpoint(_local(d))
    assert "tokenizer.json" in message(e), "the message lists what the folder does contain"


def test_local_with_broken_config(tmp_path):
    d = _save_pretrained_like(tmp_path / "ckpt")
    (d / "config.json").write_text("{not json")
    with pytest.raises(KdynError, match="not valid JSON"):
        resolve_checkpoint(_local(d))


def test_local_without_tokenizer(tmp_path):
    d = _save_pretrained_like(tmp_path / "ckpt", tokenizer=False)
    with pytest.raises(KdynError, match="no tokenizer files") as e:
        resolve_checkpoint(_local(d))
    assert "tokenizer.save_pretrained" in message(e)


def test_local_without_weights(tmp_path):
    d = _save_pretrained_like(tmp_path / "ckpt", weights=False)
    with pytest.raises(KdynError, match="no model weights"):
        resolve_checkpoint(_local(d))


def test_local_ok_and_vocab_merges_count_as_tokenizer(tmp_path):
    d = _save_pretrained_like(tmp_path / "ckpt", tokenizer=False)
    (d / "vocab.json").write_text("{}")
    (d / "merges.txt").write_text("")
    ref = resolve_checkpoint({**_local(d), "step": "250"})
    assert (ref.family, ref.location, ref.revision, ref.step) == ("local", str(d.resolve()), None, 250)
    assert ref.describe() == f"{d.resolve()} (local)"


def test_local_rejects_revision(tmp_path):
    d = _save_pretrained_like(tmp_path / "ckpt")
    with pytest.raises(KdynError, match="no revisions"):
        resolve_checkpoint({**_local(d), "revision": "main"})
