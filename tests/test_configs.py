"""Every config option composes with the real entry-point configs."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from kdyn.config import CONF_DIR
from kdyn.run import build_strategy
from tests.conftest import compose_cfg

GROUPS = ["model", "corpus", "intervention", "trainer", "logger", "callbacks", "experiment"]


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("group, option", [(g, o) for g in GROUPS for o in _options(g)])
def test_every_option_composes_and_resolves(group, option, tmp_path):
    cfg = compose_cfg("train", [f"{group}={option}"], tmp_path)
    # every interpolation resolves (Hydra's own node holds job-time values that compose leaves unset)
    plain = {k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k]
             for k in cfg if k != "hydra"}
    assert plain["model"]["name"] and plain["corpus"]["name"]
    assert plain["trainer"]["_target_"] == "lightning.pytorch.Trainer"


def test_default_train_config_is_the_offline_tiny_job(tmp_path):
    cfg = compose_cfg("train", [], tmp_path)
    assert cfg.model.name == "tiny" and cfg.corpus.name == "synthetic"
    assert cfg.trainer.accelerator == "cpu" and list(cfg.logger) == ["csv"]
    assert cfg.hydra.runtime.choices.model == "tiny"


def test_fsdp_wraps_the_models_transformer_blocks(tmp_path, tiny_models):
    cfg = compose_cfg("train", ["trainer=fsdp"], tmp_path)
    params = OmegaConf.to_container(cfg.trainer.strategy, resolve=True)
    strategy = build_strategy(params, tiny_models["olmo"])
    policy = strategy.kwargs["auto_wrap_policy"]
    assert {c.__name__ for c in policy._module_classes} == {"OlmoDecoderLayer"}
