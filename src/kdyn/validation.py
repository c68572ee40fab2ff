"""Input checks of every entry point, in one place: ``validate_config(cfg, task)``.

Each config node that a person types numbers into has a typed schema here (a dataclass whose
fields carry the type and the allowed range); the YAML files keep the defaults, the schemas only
say what a value may be. ``validate_config`` runs before a run folder holds anything (and before a
multirun launches its jobs), and raises :class:`kdyn.errors.KdynError` with one line naming the key,
the value, what is allowed and how to fix it.

Nodes marked ``strict`` also refuse keys that the schema does not know (a typo such as
``+optim.lrr=0.1`` would otherwise be silently ignored); nodes that are passed on to a class
(``trainer``, ``callbacks.*``) accept extra keyword arguments and only have their known keys checked.
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
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from kdyn.errors import KdynError

TASKS = ("train", "entropy", "eval", "trace")
SCHEDULES = ("cosine", "linear", "constant")  # kdyn.module.SCHEDULES, the short spellings (checked equal in the tests)
KNOWLEDGE_SOURCES = ("synthetic", "fictional_knowledge")  # kdyn.data.knowledge's (checked equal in the tests)
TRACE_GRANULARITIES = ("block", "attn_mlp")  # kdyn.trace.GRANULARITIES (checked equal in the tests)
TRACE_NORMS = ("l2", "l2_per_sqrt_numel")  # kdyn.metrics.grad_norms.NORMS (checked equal in the tests)
DEVICE = r"auto|cpu|mps|cuda(:\d+)?"


def spec(*, min: float | None = None, max: float | None = None, above: float | None = None,
         below: float | None = None, choices: Sequence[Any] | None = None, also: Sequence[Any] = (),
         length: int | None = None, pattern: str | None = None, target: bool = False, hint: str = "") -> Any:
    """A schema field: allowed range (``min``/``max`` inclusive, ``above``/``below`` exclusive), a
    closed set of ``choices``, extra allowed values ``also`` (e.g. ``-1``), a list ``length``, a regular
    expression a string must match in full (``pattern``), ``target``: a mapping value must name its
    object by ``_target_``, and a ``hint`` appended to the error."""
    return field(default=None, metadata={"min": min, "max": max, "above": above, "below": below,
                                         "choices": choices, "also": tuple(also), "length": length, "pattern": pattern,
                                         "target": target, "hint": hint})


# ------------------------------------------------------------------------------------ schemas
@dataclass
class TopLevel:
    seed: int = spec(min=0, max=2**32 - 1)
    threads: int | None = spec(min=1, hint="torch threads (null: torch's default)")
    skip_completed: bool = spec()
    resume: bool = spec()
    run_id: str | int | None = spec()
    sweep_id: str | int | None = spec()


@dataclass
class Data:
    seq_len: int = spec(min=2, hint="tokens per packed row")
    batch_size: int = spec(min=1, hint="rows per device per micro-batch")
    epochs: float = spec(above=0, hint="passes over the corpus when trainer.max_steps is -1")
    max_rows: int | None = spec(min=1, hint="null: every packed row")
    num_workers: int = spec(min=0)


@dataclass
class Optim:
    lr: float = spec(min=0, hint="the peak learning rate, e.g. 3e-4 (0: measure without updating the weights)")
    weight_decay: float = spec(min=0)
    betas: list[float] = spec(min=0, below=1, length=2, hint="AdamW's [beta1, beta2]")
    eps: float = spec(above=0)
    scheduler: str | dict = spec(choices=SCHEDULES, target=True,
                                 hint="or a factory node: optim.scheduler={_target_:<module>.<function>}")
    warmup_steps: int = spec(min=0)
    min_lr_ratio: float = spec(min=0, max=1, hint="cosine/linear decay to lr × min_lr_ratio")


@dataclass
class Inject:  # the injection schedule (its item source and scenarios are checked by kdyn.data.knowledge)
    enabled: bool = spec()
    once_per_event: int | None = spec(min=1, hint="null: every once item at the first event")
    interval: int = spec(min=1, hint="steps between injection events")
    num_events: int = spec(min=1)
    first_step: int = spec(min=0, hint="stream step of the first event")
    first_row: int = spec(min=0, hint="first global batch row that receives knowledge")
    eos: bool = spec()
    source: dict = spec()
    scenarios: dict = spec()
    metrics: dict = spec()


@dataclass
class InjectSource:  # one node serves every knowledge source (kdyn.data.knowledge reads it)
    name: str = spec(choices=KNOWLEDGE_SOURCES)
    num_items: int = spec(min=1, hint="synthetic: how many new entities")
    seed: int = spec(min=0)
    world: dict = spec()
    path: str | None = spec(hint="fictional_knowledge: a folder or .json file (null: the hub dataset)")
    hub_dataset: str = spec()
    items: list[int] = spec(min=0, length=2, hint="fictional_knowledge: [start, stop] of the items used")


@dataclass
class InjectMetrics:
    window: int = spec(min=1, hint="steps after an injection searched for the local acquisition maximum")
    iqr_multiplier: float | None = spec(above=0, hint="null: no outlier filter")
    af_mode: str = spec(choices=("last", "first"))
    af_aggregate: str = spec(choices=("curve", "probe"))
    max_pre_gap: int | None = spec(min=0)
    drop_flat_probes: bool = spec()


@dataclass
class Corpus:  # keys shared by every corpus option (the others are checked by each corpus' reader)
    max_documents: int | None = spec(min=1, hint="null: every document")
    shuffle: bool = spec()


@dataclass
class Trainer:
    max_steps: int = spec(min=1, also=(-1,), hint="optimizer steps; -1: train data.epochs epochs")
    max_epochs: int | None = spec(min=1, also=(-1,))
    accumulate_grad_batches: int = spec(min=1)
    log_every_n_steps: int = spec(min=1)
    gradient_clip_val: float | None = spec(min=0, hint="null or 0: no clipping")
    num_nodes: int = spec(min=1)


@dataclass
class Entropy:
    num_sequences: int = spec(min=1)
    seq_len: int = spec(min=2)
    batch_size: int = spec(min=1)
    pack: bool = spec()
    sort_by_length: bool = spec()
    device: str = spec(pattern=DEVICE, hint="auto | cpu | cuda | cuda:<index> | mps")
    save_coefficients: bool = spec()


@dataclass
class Probes:
    batch_tokens: int = spec(min=1, hint="padded tokens per scoring batch at most")
    batch_overhead_tokens: int = spec(min=0)
    types: list[str] = spec()  # probe type names are checked by kdyn.data.probes.build_probes
    include_paragraph: bool = spec()
    max_len: int = spec(min=2)
    device: str = spec(pattern=DEVICE, hint="auto | cpu | cuda | cuda:<index> | mps")


@dataclass
class Trace:
    sets: list[str] = spec()  # set names are checked where they are defined (kdyn.data.diagnostics)
    granularity: str = spec(choices=TRACE_GRANULARITIES)
    norm: str = spec(choices=TRACE_NORMS)
    max_examples: int = spec(min=1)
    max_len: int = spec(min=2)
    seed: int = spec(min=0)
    dtype: str = spec()
    device: str = spec()
    plot: bool = spec()
    knowledge_source: dict = spec()
    twiki: dict = spec()


@dataclass
class EveryNSteps:  # callbacks.entropy / probes / grad_norms (the other keys go to the callback)
    every_n_steps: int = spec(min=1)


@dataclass
class Checkpoint:
    every_n_train_steps: int | None = spec(min=0, hint="0 or null: only at the end and on SIGTERM")


# (task, dotted node, schema, strict: unknown keys refused)
NODES: tuple[tuple[tuple[str, ...], str, type, bool], ...] = (
    (TASKS, "", TopLevel, False),
    (("train",), "data", Data, True),
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
            raise KdynError(f"{path} must be a config node (a mapping), got {_show(node)}")
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
        if name not in node:
            continue
        key = f"{path}.{name}" if path else name
        value = _value(node, name, key)
        _check_value(key, value, hints[name], f.metadata)


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
    kinds = [a for a in args if a is not type(None)] if origin in (typing.Union, _UnionType) else [hint]
    if value in meta["also"] and not isinstance(value, bool):
        return
    for kind in kinds:
        if _is_kind(value, kind):
            break
    else:
        _fail(key, value, f"must be {_kind_text(kinds)}", meta)
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
        _fail(key, shown, f"must be between {_num(lo)} and {_num(hi)}{also}", meta)
    if lo is not None and value < lo:
        _fail(key, shown, f"must be ≥ {_num(lo)}{also}", meta)
    if hi is not None and value > hi:
        _fail(key, shown, f"must be ≤ {_num(hi)}{also}", meta)
    if above is not None and value <= above:
        _fail(key, shown, f"must be > {_num(above)}{also}", meta)
    if below is not None and value >= below:
        _fail(key, shown, f"must be < {_num(below)}{also}", meta)


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


def _kind_text(kinds: list[Any]) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a mapping"}
    parts = []
    for kind in kinds:
        origin = typing.get_origin(kind) or kind
        if origin is list:
            item = (typing.get_args(kind) or (Any,))[0]
            parts.append(f"a list of {names.get(item, 'values').removeprefix('an ').removeprefix('a ')}s")
        else:
            parts.append(names.get(origin, str(origin)))
    return " or ".join(parts)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _show(value: Any) -> str:
    return "null" if value is None else repr(value) if isinstance(value, str) else str(value).lower() \
        if isinstance(value, bool) else str(value)


def _fail(key: str, value: Any, rule: str, meta: Mapping[str, Any]) -> None:
    hint = f" ({meta['hint']})" if meta.get("hint") else ""
    raise KdynError(f"{key}={_show(value)}: {rule}{hint}; set a valid {key}")
