"""What a config value may be: one dataclass schema per typed config node, registered in Hydra's ConfigStore.

Each schema field carries a type (OmegaConf enforces it while Hydra composes) and, through
:func:`spec`, the allowed range that :func:`kdyn.validation.validate_config` checks after composition.
The defaults stay in the YAML files (``conf/train.yaml`` …): every field here is ``MISSING``, and a
YAML file extends its schemas through its defaults list (Hydra's "Structured Config schema" pattern)::

    defaults:
      - kdyn_schema/train/data@data     # the schema Data, stored under that name by register()
      - _self_

Composing then refuses, with the key's path, a wrong type anywhere (``data.batch_size=abc``) and an
unknown key that a YAML file merges into a typed node (a typo in an experiment preset). ``+key=…`` on
the command line adds a key past the schema (Hydra's ``+`` opens the node); ``validate_config``'s
strict nodes refuse it. A number field is ``Number`` (an int or a float, kept as written), so a
composed config holds exactly the values it held before the schemas (the tiny model's fingerprint
hashes some of them).

Nodes that are passed on to a class with extra keyword arguments (``trainer``, ``callbacks.*``) and the
group nodes (``model``, ``corpus``, ``intervention``, whose keys depend on the chosen option) are
checked by ``validate_config`` only. :func:`compose_error` turns OmegaConf's refusal during composition
into the same one-line message ``validate_config`` gives.

No heavy imports: omegaconf (and Hydra's ConfigStore when registering) only.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

TASKS = ("train", "entropy", "eval", "trace")
SCHEDULES = ("cosine", "linear", "constant")  # kdyn.module.SCHEDULES, the short spellings (checked equal in the tests)
KNOWLEDGE_SOURCES = ("synthetic", "fictional_knowledge")  # kdyn.data.knowledge's (checked equal in the tests)
TRACE_GRANULARITIES = ("block", "attn_mlp")  # kdyn.trace.GRANULARITIES (checked equal in the tests)
TRACE_NORMS = ("l2", "l2_per_sqrt_numel")  # kdyn.metrics.grad_norms.NORMS (checked equal in the tests)
DEVICE = r"auto|cpu|mps|cuda(:\d+)?"

Number = int | float  # a number, kept as written (3 stays 3, 3.0 stays 3.0)


def spec(*, min: float | None = None, max: float | None = None, above: float | None = None,
         below: float | None = None, choices: Sequence[Any] | None = None, also: Sequence[Any] = (),
         length: int | None = None, pattern: str | None = None, target: bool = False, kind: Any = None,
         hint: str = "") -> Any:
    """A schema field (no default: the YAML file holds it): allowed range (``min``/``max`` inclusive,
    ``above``/``below`` exclusive), a closed set of ``choices``, extra allowed values ``also`` (e.g.
    ``-1``), a list ``length``, a regular expression a string must match in full (``pattern``),
    ``target``: a mapping value must name its object by ``_target_``, ``kind``: the type
    ``validate_config`` checks when OmegaConf cannot express it (the field is then ``Any``), and a
    ``hint`` appended to the error."""
    return field(default=MISSING, metadata={"min": min, "max": max, "above": above, "below": below,
                                            "choices": choices, "also": tuple(also), "length": length,
                                            "pattern": pattern, "target": target, "kind": kind, "hint": hint})


# ------------------------------------------------------------------------------------ schemas
# Field order = key order of the YAML files (a composed config lists its keys in the schema's order).
@dataclass
class TopLevel:
    seed: int = spec(min=0, max=2**32 - 1)
    threads: int | None = spec(min=1, hint="torch threads (null: torch's default)")
    skip_completed: bool = spec()
    resume: bool = spec()
    run_id: str | int | None = spec()
    sweep_id: str | int | None = spec()


@dataclass
class DataStore:
    enabled: bool = spec()
    dir: str | None = spec(hint="folder holding the token stores (null: $KDYN_CACHE_DIR/stores)")


@dataclass
class Data:
    seq_len: int = spec(min=2, hint="tokens per packed row")
    batch_size: int = spec(min=1, hint="rows per device per micro-batch")
    epochs: Number = spec(above=0, hint="passes over the corpus when trainer.max_steps is -1")
    max_rows: int | None = spec(min=1, hint="null: every packed row")
    num_workers: int = spec(min=0)
    store: DataStore = field(default_factory=DataStore)


@dataclass
class Optim:
    _target_: str = spec(hint="the optimizer class, e.g. torch.optim.AdamW")
    _partial_: bool = spec()
    lr: Number = spec(min=0, hint="the peak learning rate, e.g. 3e-4 (0: measure without updating the weights)")
    weight_decay: Number = spec(min=0)
    betas: list[Number] = spec(min=0, below=1, length=2, hint="AdamW's [beta1, beta2]")
    eps: Number = spec(above=0)
    scheduler: Any = spec(choices=SCHEDULES, target=True, kind=str | dict,
                          hint="or a factory node: optim.scheduler={_target_:<module>.<function>}")
    warmup_steps: int = spec(min=0)
    min_lr_ratio: Number = spec(min=0, max=1, hint="cosine/linear decay to lr × min_lr_ratio")


@dataclass
class InjectSource:  # one node serves every knowledge source (kdyn.data.knowledge reads it)
    reader: str = spec(hint="the function (node, key) -> records, e.g. kdyn.data.knowledge.synthetic_records")
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
    iqr_multiplier: Number | None = spec(above=0, hint="null: no outlier filter")
    af_mode: str = spec(choices=("last", "first"))
    af_aggregate: str = spec(choices=("curve", "probe"))
    max_pre_gap: int | None = spec(min=0)
    drop_flat_probes: bool = spec()


@dataclass
class Inject:  # the injection schedule (its item source and scenarios are checked by kdyn.data.knowledge)
    enabled: bool = spec()
    source: InjectSource = field(default_factory=InjectSource)
    scenarios: dict = spec()
    once_per_event: int | None = spec(min=1, hint="null: every once item at the first event")
    interval: int = spec(min=1, hint="steps between injection events")
    num_events: int = spec(min=1)
    first_step: int = spec(min=0, hint="stream step of the first event")
    mode: str = spec()
    first_row: int = spec(min=0, hint="first global batch row that receives knowledge")
    placement_seed: int = spec()
    eos: bool = spec()
    metrics: InjectMetrics = field(default_factory=InjectMetrics)


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


# (config, dotted node, schema, open): the schemas a YAML file extends, stored as
# kdyn_schema/<config>/<node> (package: the node) and named first in that file's defaults list. An open
# node also takes keys its schema does not name, and ~key deletes one: optim's are the optimizer
# class's keyword arguments (optim._target_=torch.optim.SGD '~optim.betas' +optim.momentum=0.9).
STORED: tuple[tuple[str, str, type, bool], ...] = (
    ("train", "data", Data, False),
    ("train", "optim", Optim, True),
    ("train", "inject", Inject, False),
    ("entropy", "entropy", Entropy, False),
    ("eval", "probes", Probes, False),
    ("trace", "trace", Trace, False),
)
SCHEMA_GROUP = "kdyn_schema"


def register() -> None:
    """Store every schema of ``STORED`` in Hydra's ConfigStore (idempotent: storing again replaces)."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    cs = ConfigStore.instance()
    for config, node, schema, is_open in STORED:
        typed = OmegaConf.structured(schema, flags={"struct": False}) if is_open else schema
        cs.store(group=f"{SCHEMA_GROUP}/{config}", name=node, node=typed, package=node)


# ------------------------------------------------------------------------------------ messages
def field_of(path: str) -> tuple[dataclasses.Field, Any] | None:
    """The schema field (and its type) at dotted ``path`` of a stored node (list indices dropped)."""
    parts = [p for p in re.sub(r"\[\d+\]", "", path).split(".") if p]
    roots = {node: schema for _, node, schema, _ in STORED}
    schema = roots.get(parts[0]) if parts else None
    found = None
    for name in parts[1:]:
        if schema is None or not dataclasses.is_dataclass(schema):
            return None
        fields = {f.name: f for f in dataclasses.fields(schema)}
        if name not in fields:
            return None
        hint = typing.get_type_hints(schema)[name]
        found = (fields[name], hint)
        schema = hint if dataclasses.is_dataclass(hint) else None
    return found


def schema_of(path: str) -> type | None:
    """The schema dataclass of the stored node at dotted ``path`` (``inject.metrics`` → InjectMetrics)."""
    roots = {node: schema for _, node, schema, _ in STORED}
    parts = path.split(".")
    schema = roots.get(parts[0])
    for name in parts[1:]:
        hint = typing.get_type_hints(schema).get(name) if dataclasses.is_dataclass(schema) else None
        schema = hint if dataclasses.is_dataclass(hint) else None
    return schema


def compose_error(error: BaseException) -> str | None:
    """One line for OmegaConf's refusal of a value or a key while Hydra composes (``None`` when
    ``error`` carries none): the same words as :func:`kdyn.validation.validate_config`'s."""
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

    cause: BaseException | None = error
    while cause is not None and not isinstance(cause, OmegaConfBaseException):
        cause = cause.__cause__ or cause.__context__
    if cause is None:
        return None
    key = str(getattr(cause, "full_key", "") or "")
    first = str(getattr(cause, "msg", "") or str(cause)).strip().splitlines()[0] if str(cause).strip() else ""
    where = _where(error)
    override = re.search(r"Error merging override ([^=\s]+)=", str(error))
    if override and key and not key.startswith(override.group(1)):  # a list element: its index only
        key = f"{override.group(1)}[{key}]" if key.isdigit() else override.group(1)
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and key:
        parent, _, name = key.rpartition(".")
        schema = schema_of(parent) if parent else None
        valid = f"; valid {parent} keys: {', '.join(f.name for f in dataclasses.fields(schema))}" if schema else ""
        return f"unknown key {key} (a typo?){where}{valid}. Fix the name on the command line or in the config file"
    if isinstance(cause, ValidationError) and key:
        found = field_of(key)
        value = getattr(cause, "value", None)
        if found is not None:
            f, hint = found
            meta = f.metadata or {}
            item = re.search(r"\[\d+\]$", key) is not None  # one element of a list
            return bad_value(key, value, f"must be {kind_text(kinds_of(meta.get('kind') or hint, item=item))}",
                             meta) + where
        return f"{key}={show(value)}: {first}; set a valid {key}{where}"
    return f"{first}{where}" + (f" ({key})" if key and key not in first else "")


def _where(error: BaseException) -> str:
    """`` in <file>`` when Hydra says which config file it was merging."""
    match = re.search(r"(?:merging|In) '([^']+)'", str(error))
    return f" (in {match.group(1)}.yaml)" if match and "=" not in match.group(1) else ""


def kinds_of(hint: Any, item: bool = False) -> list[Any]:
    """The types a value of ``hint`` may have (``None`` left out; ``item``: of one list element)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if item and origin is list:
        return kinds_of((args or (Any,))[0])
    if origin in (typing.Union, _UnionType):
        return [k for a in args if a is not type(None) for k in kinds_of(a)]
    return [hint]


try:
    from types import UnionType as _UnionType
except ImportError:  # pragma: no cover - Python < 3.10
    _UnionType = typing.Union


def kind_text(kinds: list[Any]) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a mapping"}
    if float in kinds:  # an int is a number too
        kinds = [k for k in kinds if k is not int]
    parts = []
    for kind in kinds:
        origin = typing.get_origin(kind) or kind
        if origin is list:
            items = kinds_of((typing.get_args(kind) or (Any,))[0])
            item = "number" if float in items else names.get(items[0], "values").removeprefix("an ").removeprefix("a ")
            parts.append(f"a list of {item}s")
        else:
            parts.append(names.get(origin, str(origin)))
    return " or ".join(dict.fromkeys(parts))


def num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def show(value: Any) -> str:
    return "null" if value is None else repr(value) if isinstance(value, str) else str(value).lower() \
        if isinstance(value, bool) else str(value)


def bad_value(key: str, value: Any, rule: str, meta: Mapping[str, Any]) -> str:
    """``<key>=<value>: <rule> (<hint>); set a valid <key>`` — every refused value reads like this."""
    hint = f" ({meta['hint']})" if meta.get("hint") else ""
    return f"{key}={show(value)}: {rule}{hint}; set a valid {key}"
