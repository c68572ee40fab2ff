"""The typed schemas registered in Hydra's ConfigStore: the YAML files extend them, composing refuses a
wrong type or a misspelt key with the key's path (one line), and the defaults live only in the YAML."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
from omegaconf import MISSING, OmegaConf

from kdyn.config import CONF_DIR, compose_config, compose_error_line
from kdyn.errors import KdynError
from kdyn.schemas import STORED, schema_of

NODES = [(config, node) for config, node, _, _ in STORED]


def _written(config: str, node: str):
    """Node ``node`` of ``conf/<config>.yaml`` as written (read here with OmegaConf alone)."""
    return OmegaConf.select(OmegaConf.load(CONF_DIR / f"{config}.yaml"), node)


def schema_of_field(schema, name):
    import typing

    hint = typing.get_type_hints(schema)[name]
    return hint if dataclasses.is_dataclass(hint) else None


def _keys(schema) -> dict | None:
    """The schema's field names, nested schemas as nested dicts (leaves: None)."""
    if schema is None:
        return None
    return {f.name: _keys(schema_of_field(schema, f.name)) for f in dataclasses.fields(schema)}


def _yaml_keys(written, like: dict) -> dict:
    """The keys of a YAML node, descending where ``like`` has a nested schema."""
    return {str(k): _yaml_keys(written[k], like[str(k)]) if isinstance(like.get(str(k)), dict) else None
            for k in written}


@pytest.mark.parametrize(("config", "node"), NODES)
def test_every_schema_is_named_first_in_its_yaml_defaults(config, node):
    defaults = [str(d).split("  #")[0] for d in OmegaConf.load(CONF_DIR / f"{config}.yaml").defaults]
    assert f"kdyn_schema/{config}/{node}" in defaults
    assert defaults.index(f"kdyn_schema/{config}/{node}") < defaults.index("_self_")


@pytest.mark.parametrize(("config", "node"), NODES)
def test_schema_names_exactly_the_yaml_keys_and_holds_no_default(config, node):
    schema = schema_of(node)
    typed = _keys(schema)
    # the same keys in the same order, nested nodes too (a typed node lists its keys in the schema's order)
    assert json.dumps(typed) == json.dumps(_yaml_keys(_written(config, node), typed))
    # every default is the YAML's: the schema's fields are all MISSING (nested schemas too)
    def missing(s):
        for f in dataclasses.fields(s):
            inner = schema_of_field(s, f.name)
            if inner is not None:
                missing(inner)
            else:
                assert f.default is MISSING, f"{s.__name__}.{f.name} has a default"
    missing(schema)


@pytest.mark.parametrize(("config", "node"), NODES)
def test_composed_node_is_the_yaml_node_value_for_value(config, node):
    """Typing changes no value: ints stay ints (the tiny model's fingerprint hashes data and optim)."""
    composed = compose_config(config)
    assert OmegaConf.get_type(OmegaConf.select(composed, node)) is schema_of(node)
    got = OmegaConf.to_container(OmegaConf.select(composed, node), resolve=False)
    want = OmegaConf.to_container(_written(config, node), resolve=False)
    assert json.dumps(got) == json.dumps(want)


@pytest.mark.parametrize(("override", "line"), [
    ("data.batch_size=abc", "data.batch_size='abc': must be an integer"),
    ("data.epochs=many", "data.epochs='many': must be a number"),
    ("optim.lr=abc", "optim.lr='abc': must be a number"),
    ("optim.betas=[0.9,x]", "optim.betas[1]='x': must be a number"),
    ("inject.metrics.window=1.5", "inject.metrics.window=1.5: must be an integer"),
    ("inject.source.items=[0,x]", "inject.source.items[1]='x': must be an integer"),
    ("data.store.enabled=maybe", "data.store.enabled='maybe': must be true or false"),
    ("data.foo=1", "unknown key data.foo (a typo?); valid data keys: seq_len, batch_size"),
])
def test_composing_refuses_a_wrong_type_in_one_line_naming_the_key(override, line):
    with pytest.raises(KdynError) as info:
        compose_config("train", [override])
    message = str(info.value)
    assert "\n" not in message and message.startswith(line), message
    assert "set a valid" in message or "Fix the name" in message


def test_a_typo_in_a_preset_file_is_refused_with_the_key_and_the_file(tmp_path):
    from hydra import compose, initialize_config_dir

    conf = shutil.copytree(CONF_DIR, tmp_path / "conf")
    (conf / "experiment" / "typo.yaml").write_text("# @package _global_\ninject:\n  metrics:\n    windw: 3\n")
    (conf / "experiment" / "wrong.yaml").write_text("# @package _global_\noptim:\n  warmup_steps: ten\n")
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        for preset, line in [("typo", "unknown key inject.metrics.windw (a typo?) (in experiment/typo.yaml); "
                                      "valid inject.metrics keys: window, iqr_multiplier"),
                             ("wrong", "optim.warmup_steps='ten': must be an integer")]:
            with pytest.raises(Exception) as info:
                compose("train", overrides=[f"experiment={preset}"])
            message = compose_error_line(info.value, "train")
            assert "\n" not in message and message.startswith(line), message
            assert f"experiment/{preset}.yaml" in message


def test_optim_takes_another_optimizers_arguments_and_drops_adamws():
    cfg = compose_config("train", ["optim._target_=torch.optim.SGD", "~optim.betas", "~optim.eps",
                                   "+optim.momentum=0.9"])
    assert "betas" not in cfg.optim and cfg.optim.momentum == 0.9
    with pytest.raises(KdynError, match=r"^optim\.lr='x': must be a number"):  # its known keys stay typed
        compose_config("train", ["optim._target_=torch.optim.SGD", "optim.lr=x"])
