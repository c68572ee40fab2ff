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
