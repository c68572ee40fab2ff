"""Config nodes that choose an object do it by ``_target_`` (one module + one YAML file, no registry)."""

from __future__ import annotations

import importlib

import pytest
from omegaconf import OmegaConf

from kdyn.config import CONF_DIR, compose_config, to_plain

INTERVENTIONS = sorted(p.stem for p in (CONF_DIR / "intervention").glob("*.yaml"))


def _resolve(path: str):
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("name", INTERVENTIONS)
def test_every_intervention_file_names_its_class(name):
    from kdyn.interventions import Intervention, build_intervention

    node = compose_config("train", [f"intervention={name}"]).intervention
    assert "_target_" in node, f"conf/intervention/{name}.yaml has no _target_"
    cls = _resolve(node._target_)
    built = build_intervention(to_plain(node))
    assert type(built) is cls and issubclass(cls, Intervention)
    assert built.name == node.name  # what intervention.json records


def test_a_node_without_target_still_builds_the_builtin_by_name():
    from kdyn.interventions import build_intervention

    node = to_plain(compose_config("train", ["intervention=rescale"]).intervention)
    target = node.pop("_target_")
    assert type(build_intervention(node)) is _resolve(target)


def test_optim_node_names_the_optimizer_class():
    node = OmegaConf.load(CONF_DIR / "train.yaml").optim
    assert node._target_ == "torch.optim.AdamW" and node._partial_ is True


MODELS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml") if p.stem not in ("local", "scratch"))


@pytest.mark.parametrize("name", MODELS)
def test_every_model_file_names_its_resolver_and_it_resolves_like_the_family(name):
    from kdyn.models import checkpoints

    extra = ["model.repo=EleutherAI/pythia-160m", "model.step=1000"] if name == "hub" else []
    node = to_plain(compose_config("train", [f"model={name}", *extra]).model)
    function = _resolve(node["resolver"])
    assert function is getattr(checkpoints, f"resolve_{node['family']}")
    without = {k: v for k, v in node.items() if k != "resolver"}  # the built-in fallback by family
    assert checkpoints.resolve_checkpoint(node) == checkpoints.resolve_checkpoint(without)


def test_a_new_family_is_its_resolver_function_and_one_yaml(tmp_path, monkeypatch):
    from kdyn.models.checkpoints import CheckpointRef, resolve_checkpoint

    (tmp_path / "my_family.py").write_text(
        "from kdyn.models.checkpoints import CheckpointRef\n"
        "def resolve(cfg, name):\n"
        "    step = int(cfg['step'])\n"
        "    return CheckpointRef(name=name, family='mine', location=cfg['repo'], revision=f'ckpt-{step:06d}', step=step)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    node = {"name": "m", "family": "mine", "resolver": "my_family.resolve", "repo": "org/m", "step": 42}
    assert resolve_checkpoint(node) == CheckpointRef(name="m", family="mine", location="org/m",
                                                     revision="ckpt-000042", step=42)


def test_bad_resolver_is_one_line():
    from kdyn.errors import KdynError
    from kdyn.models.checkpoints import resolve_checkpoint

    with pytest.raises(KdynError, match=r"model\.resolver=nowhere\.resolve cannot be imported") as info:
        resolve_checkpoint({"name": "m", "family": "mine", "resolver": "nowhere.resolve"})
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF_DIR / "corpus").glob("*.yaml")))
def test_every_corpus_file_names_its_class(name):
    from kdyn.data.corpora import as_corpus
    from kdyn.data.sources.base import Corpus

    node = OmegaConf.load(CONF_DIR / "corpus" / f"{name}.yaml")
    cls = _resolve(node._target_)
    assert issubclass(cls, Corpus) and type(as_corpus({"name": name, "_target_": node._target_})) is cls


def test_pretraining_corpus_gives_rows_not_documents():
    from kdyn.data.corpora import as_corpus
    from kdyn.data.pretraining import open_pretraining_rows  # the old import path stays
    from kdyn.errors import KdynError

    reader = as_corpus(to_plain(compose_config("train", ["corpus=pretraining"]).corpus))
    assert callable(reader.token_rows) and callable(open_pretraining_rows)
    with pytest.raises(KdynError, match="already tokenised"):
        list(reader.documents())


@pytest.mark.parametrize("name", ["synthetic", "fictional_knowledge"])
def test_inject_source_reader_follows_its_name(name):
    from kdyn.data import knowledge

    node = to_plain(compose_config("train", [f"inject.source.name={name}"]).inject.source)
    assert _resolve(node["reader"]) is getattr(knowledge, f"{name}_records")


def test_inject_source_reader_reads_like_the_name_fallback_and_can_be_ones_own(tmp_path, monkeypatch):
    from kdyn.data.knowledge import knowledge_records
    from kdyn.errors import KdynError

    node = to_plain(compose_config("train", ["inject.source.num_items=3"]).inject.source)
    by_reader = knowledge_records(node)
    assert by_reader == knowledge_records({k: v for k, v in node.items() if k != "reader"})
    assert [r["item"] for r in by_reader] == [0, 1, 2]
    (tmp_path / "my_source.py").write_text("def read(node, key):\n    return [{'item': 7, 'n': node['n']}]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert knowledge_records({"reader": "my_source.read", "n": 5}) == [{"item": 7, "n": 5}]
    with pytest.raises(KdynError, match=r"inject\.source\.reader=my_source\.nope cannot be imported") as info:
        knowledge_records({"reader": "my_source.nope"})
    assert "\n" not in str(info.value)
