"""Input checks of every entry point, in one place: ``validate_config(cfg, task)``.

Each config node that a person types numbers into has a typed schema in :mod:`kdyn.schemas` (a
dataclass whose fields carry the type and the allowed range; those of ``data``, ``optim``, ``inject``,
``entropy``, ``probes`` and ``trace`` are registered in Hydra's ConfigStore, so composing already
refuses a wrong type); the YAML files keep the defaults, the schemas only say what a value may be.
``validate_config`` checks the ranges (and the types of the nodes no YAML file extends a schema for)
before a run folder holds anything (and before a multirun launches its jobs), and raises
:class:`kdyn.errors.KdynError` with one line naming the key, the value, what is allowed and how to fix it.

Nodes marked ``strict`` also refuse keys that the schema does not know (a typo such as
``+optim.lrr=0.1``: Hydra's ``+`` adds a key past a registered schema, and would otherwise be silently
ignored) unless the node names another class by ``_target_`` than its YAML file (the extra keys are
then that class's arguments); nodes that are passed on to a class (``trainer``, ``callbacks.*``)
accept extra keyword arguments and only have their known keys checked.
The group nodes ``model``, ``corpus`` and ``intervention`` (``GROUP_NODES``) accept exactly the keys of
the chosen option's own YAML file (its defaults list included, nested nodes too): ``+model.foo`` or
``+intervention.qq`` is refused with the valid keys listed.

No heavy imports: this module needs omegaconf only (the sweep pre-validation imports it cheaply).
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from kdyn.errors import KdynError
from kdyn.schemas import (  # noqa: F401 - the constants are kdyn.validation's names too (tests, callers)
    DEVICE,
    KNOWLEDGE_SOURCES,
    SCHEDULES,
    TASKS,
    TRACE_GRANULARITIES,
    TRACE_NORMS,
    Checkpoint,
    Corpus,
    Data,
    DataStore,
    Entropy,
    EveryNSteps,
    Inject,
    InjectMetrics,
    InjectSource,
    Optim,
    Probes,
    TopLevel,
    Trace,
    Trainer,
    bad_value,
    kind_text,
    kinds_of,
    num,
    show,
    spec,
)

# (task, dotted node, schema, strict: unknown keys refused)
NODES: tuple[tuple[tuple[str, ...], str, type, bool], ...] = (
    (TASKS, "", TopLevel, False),
    (("train",), "data", Data, True),
    (("train",), "data.store", DataStore, True),
    (("train",), "optim", Optim, True),
    (("train",), "trainer", Trainer, False),
    (("train",), "inject", Inject, True),
    (("train",), "inject.metrics", InjectMetrics, True),
    (("train",), "inject.source", InjectSource, True),
    (("train", "entropy"), "corpus", Corpus, False),
    (("train",), "callbacks.entropy", EveryNSteps, False),
    (("train",), "callbacks.probes", EveryNSteps, False),
    (("train",), "callbacks.grad_norms", EveryNSteps, False),
    (("train",), "callbacks.checkpoint", Checkpoint, False),
    (("entropy",), "entropy", Entropy, True),
    (("eval",), "probes", Probes, True),
    (("trace",), "trace", Trace, True),
)


# (tasks, group): nodes whose valid keys are those of the chosen option's YAML file
GROUP_NODES: tuple[tuple[tuple[str, ...], str], ...] = (
    (TASKS, "model"),
    (("train", "entropy"), "corpus"),
    (("train",), "intervention"),
)


# ------------------------------------------------------------------------------------ checks
def validate_config(cfg: DictConfig, task: str) -> None:
    """Check the composed config of entry point ``task`` (train | entropy | eval | trace).

    Raises :class:`KdynError` with one line naming the first bad key; returns None when every
    checked setting has the right type and range.
    """
    if task not in TASKS:
        raise KdynError(f"validate_config: unknown task {task!r}; one of {', '.join(TASKS)}")
    for tasks, path, schema, strict in NODES:
        if task not in tasks:
            continue
        node = cfg if not path else OmegaConf.select(cfg, path, default=None)
        if node is None:
            continue
        if not isinstance(node, DictConfig):
            raise KdynError(f"{path} must be a config node (a mapping), got {show(node)}")
        strict = strict and not _other_class(task, path, node)
        check_node(node, schema, path, strict=strict, known=_declared_keys(task, path))
    for tasks, group in GROUP_NODES:
        if task in tasks and isinstance(cfg.get(group), DictConfig):
            check_group_keys(cfg, group)


def check_group_keys(cfg: DictConfig, group: str) -> None:
    """Refuse a key of ``cfg[group]`` (at any depth) that the chosen option's YAML file does not have;
    an option that cannot be told (no file of that name) is not checked here."""
    option = _chosen_option(cfg, group)
    written = _option_tree(group, option) if option is not None else None
    if written is None:
        return
    _compare_keys(cfg[group], written, group, f"{group}={option}")


def _compare_keys(node: DictConfig, written: Mapping[str, Any], path: str, option: str) -> None:
    unknown = sorted(str(k) for k in node.keys() if str(k) not in written)
    if unknown:
        raise KdynError(f"unknown key {path}.{unknown[0]} (a typo?); valid {path} keys of {option}: "
                        f"{', '.join(map(str, written))}. Fix the name on the command line or in the config file")
    for key, sub in written.items():  # a mapping written empty ({}) is free-form: not compared
        value = node._get_node(key)
        if isinstance(sub, dict) and sub and isinstance(value, DictConfig) and not value._is_none():
            _compare_keys(value, sub, f"{path}.{key}", option)


def _chosen_option(cfg: DictConfig, group: str) -> str | None:
    """The option file of ``group`` the config was composed from: the node's ``name`` when a file has
    that name, otherwise Hydra's recorded choice (``model=hub model.name=mine``)."""
    from kdyn.config import CONF_DIR

    name = OmegaConf.select(cfg, f"{group}.name", default=None, throw_on_resolution_failure=False)
    if isinstance(name, str) and (CONF_DIR / group / f"{name}.yaml").is_file():
        return name
    try:
        from hydra.core.hydra_config import HydraConfig

        choice = HydraConfig.get().runtime.choices.get(group) if HydraConfig.initialized() else None
    except Exception:  # noqa: BLE001 - outside a Hydra app there is no recorded choice
        choice = None
    return str(choice) if choice and (CONF_DIR / group / f"{choice}.yaml").is_file() else None


_OPTION_TREES: dict[tuple[str, str], dict[str, Any] | None] = {}


def _option_tree(group: str, option: str) -> dict[str, Any] | None:
    """The key tree of ``conf/<group>/<option>.yaml`` composed alone (``None`` if it does not compose)."""
    if (group, option) not in _OPTION_TREES:
        import warnings

        from kdyn.config import compose_config

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                node = compose_config(f"{group}/{option}")[group]
            tree = _key_tree(node)
        except Exception:  # noqa: BLE001 - an option that does not compose alone: not checked here
            tree = None
        _OPTION_TREES[group, option] = tree
    return _OPTION_TREES[group, option]


def _key_tree(node: DictConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in node.keys():
        child = node._get_node(key)
        out[str(key)] = _key_tree(child) if isinstance(child, DictConfig) and not child._is_none() else None
    return out


def check_node(node: DictConfig, schema: type, path: str, strict: bool, known: Sequence[str] = ()) -> None:
    """Check every key of ``node`` that ``schema`` declares; with ``strict``, refuse keys that neither
    the schema nor ``known`` (the node's keys in the entry point's own YAML file) declare."""
    fields = {f.name: f for f in dataclasses.fields(schema)}
    hints = typing.get_type_hints(schema)
    if strict:
        valid = list(dict.fromkeys([*known, *fields]))
        unknown = sorted(str(k) for k in node.keys() if str(k) not in valid)
        if unknown:
            key = f"{path}.{unknown[0]}" if path else unknown[0]
            raise KdynError(f"unknown key {key} (a typo?); valid {path} keys: {', '.join(valid)}. "
                            "Fix the name on the command line or in the config file")
    for name, f in fields.items():
        if name not in node or not f.metadata:  # a nested schema (no spec): checked as its own node
            continue
        key = f"{path}.{name}" if path else name
        value = _value(node, name, key)
        _check_value(key, value, f.metadata.get("kind") or hints[name], f.metadata)


def _value(node: DictConfig, name: str, key: str) -> Any:
    try:
        value = node[name]
    except Exception as e:  # noqa: BLE001 - an interpolation that cannot resolve
        raise KdynError(f"{key}: cannot resolve its value ({str(e).splitlines()[0]})") from None
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _check_value(key: str, value: Any, hint: Any, meta: Mapping[str, Any]) -> None:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    optional = origin in (typing.Union, _UnionType) and type(None) in args
    if value is None:
        if optional:
            return
        _fail(key, value, "must be set (null is not allowed)", meta)
    kinds = kinds_of(hint)
    if value in meta["also"] and not isinstance(value, bool):
        return
    for kind in kinds:
        if _is_kind(value, kind):
            break
    else:
        _fail(key, value, f"must be {kind_text(kinds)}", meta)
    if isinstance(value, list):
        if meta["length"] is not None and len(value) != meta["length"]:
            _fail(key, value, f"must be a list of {meta['length']} values", meta)
        for item in value:
            _check_range(key, value, item, meta)
    elif not isinstance(value, dict):
        _check_range(key, value, value, meta)
    elif meta.get("target") and not isinstance(value.get("_target_"), str):
        _fail(key, value, "a mapping must name its function by _target_", meta)


def _check_range(key: str, shown: Any, value: Any, meta: Mapping[str, Any]) -> None:
    if meta["choices"] is not None and value not in meta["choices"]:
        _fail(key, shown, f"must be one of {', '.join(map(str, meta['choices']))}", meta)
    if meta["pattern"] is not None and isinstance(value, str) and not re.fullmatch(meta["pattern"], value):
        _fail(key, shown, "is not a valid value", meta)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if isinstance(value, float) and not math.isfinite(value):
        _fail(key, shown, "must be a finite number", meta)
    also = f" (or {', '.join(map(str, meta['also']))})" if meta["also"] else ""
    lo, hi, above, below = meta["min"], meta["max"], meta["above"], meta["below"]
    if lo is not None and hi is not None and not lo <= value <= hi:
        _fail(key, shown, f"must be between {num(lo)} and {num(hi)}{also}", meta)
    if lo is not None and value < lo:
        _fail(key, shown, f"must be ≥ {num(lo)}{also}", meta)
    if hi is not None and value > hi:
        _fail(key, shown, f"must be ≤ {num(hi)}{also}", meta)
    if above is not None and value <= above:
        _fail(key, shown, f"must be > {num(above)}{also}", meta)
    if below is not None and value >= below:
        _fail(key, shown, f"must be < {num(below)}{also}", meta)


# ------------------------------------------------------------------------------------ helpers
_DECLARED: dict[tuple[str, str], tuple[str, ...]] = {}


def _declared_keys(task: str, path: str) -> tuple[str, ...]:
    """The keys of node ``path`` in ``conf/<task>.yaml`` (the composed defaults' own keys)."""
    if (task, path) not in _DECLARED:
        from kdyn.config import CONF_DIR

        keys: tuple[str, ...] = ()
        try:
            node = OmegaConf.select(OmegaConf.load(CONF_DIR / f"{task}.yaml"), path) if path else None
            keys = tuple(str(k) for k in node.keys()) if isinstance(node, DictConfig) else ()
        except Exception:  # noqa: BLE001 - a missing/odd file: the schema alone decides
            keys = ()
        _DECLARED[task, path] = keys
    return _DECLARED[task, path]


try:
    from types import UnionType as _UnionType
except ImportError:  # pragma: no cover - Python < 3.10
    _UnionType = typing.Union


def _is_kind(value: Any, kind: Any) -> bool:
    origin = typing.get_origin(kind) or kind
    if origin is bool:
        return isinstance(value, bool)
    if origin is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin is str:
        return isinstance(value, str)
    if origin is list:
        item = (typing.get_args(kind) or (Any,))[0]
        return isinstance(value, list) and (item is Any or all(_is_kind(v, item) for v in value))
    if origin is dict:
        return isinstance(value, dict)
    return True


def _other_class(task: str, path: str, node: DictConfig) -> bool:
    """Whether ``node`` names another class (``_target_``) than the entry point's YAML file: its extra
    keys are then that class's keyword arguments (``optim._target_=torch.optim.SGD +optim.momentum=0.9``),
    checked when the object is built."""
    if "_target_" not in node:
        return False
    from kdyn.config import yaml_node

    written = yaml_node(task, path) if path else None
    return written is not None and node.get("_target_") != written.get("_target_")


def _fail(key: str, value: Any, rule: str, meta: Mapping[str, Any]) -> None:
    raise KdynError(bad_value(key, value, rule, meta))
