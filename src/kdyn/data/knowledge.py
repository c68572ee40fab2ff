"""Knowledge to inject: Fictional Knowledge records (Chang et al. 2024) or synthetic ones, and their schedule.

A *record* is a dict in the Fictional Knowledge schema (`kdyn.data.world.FICTIONAL_KEYS`): a paragraph
(``train_context``), its ``paraphrases`` and 5 memorization / semantic / compositional probes. Records come
from the real dataset (`load_fictional_knowledge`) or from the synthetic world (`SyntheticWorld.new_knowledge`);
`knowledge_records` picks them from the ``inject.source`` config node.

`assign_scenarios` splits records into consecutive blocks, one per *scenario*, and `injected_text` says which
text of an item is injected at injection event ``k`` (Chang et al. §1; Kim et al. §3.3):

==============  =====================================================================================
``paraphrase``  event 0: ``train_context``; event k >= 1: ``paraphrases[k-1]`` (a new wording each time)
``duplicate``   ``train_context`` at every event
``once``        ``train_context`` at event 0 only (callers spreading `once` items over events, as Kim et
                al. do, call ``injected_text(item, 0)`` at the event they choose)
==============  =====================================================================================
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdyn.data.world import SyntheticWorld, validate_fictional_schema, world_config
from kdyn.errors import KdynError

SCENARIOS = ("paraphrase", "duplicate", "once")
DEFAULT_HUB_DATASET = "kaist-ai/fictional-knowledge"
FK_FILES = ("fictional_knowledge_paraphrased.json", "fictional_knowledge.json")
"""File names looked for (in this order) when a folder is given."""
DEFAULT_ITEMS = (0, 120)
"""Items used by Chang et al.; 120-129 are spares."""
_SOURCE_KEYS = {
    "synthetic": {"name", "num_items", "seed", "world"},
    "fictional_knowledge": {"name", "path", "hub_dataset", "items"},
}


# ---------------------------------------------------------------- loading
def load_fictional_knowledge(path: str | Path | None, hub_dataset: str = DEFAULT_HUB_DATASET,
                             key: str = "inject.source") -> list[dict]:
    """The Fictional Knowledge records from a folder, a ``.json`` file or (``path=None``) the hub.

    A folder must hold ``fictional_knowledge_paraphrased.json`` (preferred) or ``fictional_knowledge.json``;
    a file must be a JSON list of records. Records are validated (paraphrases optional); a record without
    ``paraphrases`` gets an empty list, so every record has the same keys. ``key`` names the config node
    in messages.
    """
    if path is None or str(path) == "":
        records, where = _load_from_hub(hub_dataset, key), f"hub dataset {hub_dataset}"
    else:
        file = _resolve_file(Path(str(path)).expanduser())
        records, where = _read_json(file), str(file)
    try:
        validate_fictional_schema(records, require_paraphrases=False)
    except KdynError as e:
        raise KdynError(f"{where}: {e}") from None
    return [rec if "paraphrases" in rec else {**rec, "paraphrases": []} for rec in records]


def _resolve_file(path: Path) -> Path:
    if path.is_dir():
        for name in FK_FILES:
            if (path / name).is_file():
                return path / name
        raise KdynError(f"{path} holds neither {' nor '.join(FK_FILES)}; pass the folder of the "
                        f"Fictional Knowledge dataset or one of its .json files")
    if not path.exists():
        raise KdynError(f"Fictional Knowledge path {path} does not exist; pass a folder holding "
                        f"{FK_FILES[0]} (e.g. ../shared/data/fictional_knowledge) or a .json file")
    return path


def _read_json(file: Path) -> Any:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise KdynError(f"{file}: not valid JSON ({e.msg} at line {e.lineno}); expected a JSON list "
                        f"of Fictional Knowledge records") from None
    except (OSError, UnicodeDecodeError) as e:
        raise KdynError(f"{file}: cannot be read ({e}); pass a UTF-8 .json file") from None


def _load_from_hub(hub_dataset: str, key: str) -> list[dict]:
    try:
        import datasets

        data = datasets.load_dataset(hub_dataset)
        split = data["train"] if "train" in data else data[next(iter(data))]
        return [dict(row) for row in split]
    except Exception as e:  # offline, missing, renamed: all mean "give a local path"
        raise KdynError(f"cannot load hub dataset {hub_dataset} ({type(e).__name__}); pass a local path "
                        f"instead, e.g. {key}.path=../shared/data/fictional_knowledge") from None


# ---------------------------------------------------------------- the inject.source node
def knowledge_records(source: Mapping[str, Any], key: str = "inject.source") -> list[dict]:
    """The records chosen by the ``inject.source`` node, in order, each with ``"item"`` (its source index).

    ``source.reader`` names the reader, a function ``(node, key) -> records`` (not ``_target_``: the
    node is nested into callback configs that Hydra instantiates recursively): in
    ``conf/train.yaml`` it is ``kdyn.data.knowledge.<name>_records`` by interpolation, so
    ``inject.source.name=synthetic|fictional_knowledge`` stays the spelling; a node without one (the
    corpus and kdyn-trace nodes, a dict from Python) is read by its ``name``. ``{name: synthetic,
    num_items, seed (0), world ({})}`` or ``{name: fictional_knowledge, path (None: hub), hub_dataset,
    items ([0, 120])}``. ``key`` names the node in messages (``corpus`` when a corpus reads these
    records, ``trace.knowledge_source`` in kdyn-trace).
    """
    target = source.get("reader")
    if not target:
        name = source.get("name")
        if name not in _SOURCE_KEYS:
            raise KdynError(f"unknown {key}.name {name!r}; choose one of {', '.join(_SOURCE_KEYS)}")
        target = f"{__name__}.{name}_records"
    if target in _BUILTIN_READERS:
        # One config node serves every built-in source, so keys of the other sources are allowed (and ignored).
        unknown = sorted(set(source) - set().union(*_SOURCE_KEYS.values()) - {"reader"})
        if unknown:
            raise KdynError(f"unknown {key} keys {unknown}; valid keys are "
                            f"{sorted(set().union(*_SOURCE_KEYS.values()))}")
    return _reader(target, key)(source, key)


def synthetic_records(source: Mapping[str, Any], key: str = "inject.source") -> list[dict]:
    """``inject.source.name=synthetic``: ``num_items`` new entities of the embedded world (items 0, 1, …)."""
    num_items = source.get("num_items")
    if isinstance(num_items, bool) or not isinstance(num_items, int) or num_items < 1:
        raise KdynError(f"{key}.num_items must be a positive integer, got {num_items!r}")
    config = world_config(source.get("world"), key=f"{key}.world")
    records = SyntheticWorld(config).new_knowledge(num_items, seed=int(source.get("seed") or 0))
    return [{**rec, "item": i} for i, rec in enumerate(records)]


def fictional_knowledge_records(source: Mapping[str, Any], key: str = "inject.source") -> list[dict]:
    """``inject.source.name=fictional_knowledge``: Chang et al.'s items ``[start, stop)`` (numbered as in the dataset)."""
    records = load_fictional_knowledge(source.get("path"), source.get("hub_dataset") or DEFAULT_HUB_DATASET, key=key)
    start, stop = _item_range(source.get("items"), len(records), key)
    return [{**rec, "item": start + i} for i, rec in enumerate(records[start:stop])]


_BUILTIN_READERS = tuple(f"{__name__}.{name}_records" for name in _SOURCE_KEYS)


def _reader(target: str, key: str):
    from hydra.utils import get_method

    try:
        return get_method(str(target))
    except Exception as e:  # noqa: BLE001 - a wrong path or a module that fails to import
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise KdynError(f"{key}.reader={target} cannot be imported ({reason}); {key}.name is one of "
                        f"{', '.join(_SOURCE_KEYS)}, or {key}.reader names a function (node, key) -> records") from None


def _item_range(items: Any, n_records: int, key: str) -> tuple[int, int]:
    if items is None:
        items = DEFAULT_ITEMS
    try:
        start, stop = (int(x) for x in items)
    except (TypeError, ValueError):
        raise KdynError(f"{key}.items must be [start, stop], got {items!r}") from None
    if not 0 <= start < stop <= n_records:
        raise KdynError(f"{key}.items=[{start}, {stop}] is out of range: the dataset has "
                        f"{n_records} records (need 0 <= start < stop <= {n_records})")
    return start, stop


# ---------------------------------------------------------------- scenarios and schedule
@dataclass(frozen=True)
class KnowledgeItem:
    """One record to inject, with its index in the source dataset and its scenario."""

    item: int
    scenario: str
    record: dict


def assign_scenarios(records: Sequence[dict], scenarios: Mapping[str, int],
                     num_events: int) -> list[KnowledgeItem]:
    """Consecutive blocks of ``records``, one per scenario in the order of ``scenarios`` (name → count).

    E.g. ``{"paraphrase": 40, "duplicate": 40, "once": 40}`` (Chang et al.) or ``{"paraphrase": 70,
    "once": 60}`` (Kim et al.). Records beyond the total are not used. Paraphrase items need at least
    ``num_events - 1`` paraphrases.
    """
    if isinstance(num_events, bool) or not isinstance(num_events, int) or num_events < 1:
        raise KdynError(f"the number of injection events must be a positive integer, got {num_events!r}")
    for name, count in scenarios.items():
        if name not in SCENARIOS:
            raise KdynError(f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}")
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise KdynError(f"scenario {name!r} needs a count >= 0, got {count!r}")
    total = sum(scenarios.values())
    if total > len(records):
        raise KdynError(f"the scenarios ask for {total} items ({dict(scenarios)}) but there are only "
                        f"{len(records)} records; lower the counts or select more records (inject.source.items)")
    out: list[KnowledgeItem] = []
    for name, count in scenarios.items():
        for rec in records[len(out):len(out) + count]:
            item = KnowledgeItem(int(rec.get("item", len(out))), name, rec)
            if name == "paraphrase" and len(rec.get("paraphrases") or ()) < num_events - 1:
                raise KdynError(
                    f"item {item.item} is in the paraphrase scenario but has "
                    f"{len(rec.get('paraphrases') or ())} paraphrases, fewer than the {num_events - 1} "
                    f"needed for {num_events} events (the real dataset has paraphrases only for items "
                    f"0-39); put fewer items in the paraphrase scenario or use fewer events")
            out.append(item)
    return out


def injected_text(item: KnowledgeItem, event: int) -> str | None:
    """The text of ``item`` injected at event ``event`` (0-based), or None when nothing is injected."""
    version = _version(item, event)
    if version is None:
        return None
    if version == "original":
        return item.record["train_context"]
    return item.record["paraphrases"][int(version.rsplit("_", 1)[1])]


def injected_version(item: KnowledgeItem, event: int) -> str:
    """Which wording is injected: ``"original"`` or ``"paraphrase_<k>"`` (= ``paraphrases[k]``, event k+1)."""
    version = _version(item, event)
    if version is None:
        raise KdynError(f"item {item.item} (scenario once) is injected only at event 0, not at event {event}")
    return version


def _version(item: KnowledgeItem, event: int) -> str | None:
    if event < 0:
        raise KdynError(f"injection events are numbered from 0, got {event}")
    if item.scenario not in SCENARIOS:
        raise KdynError(f"item {item.item} has unknown scenario {item.scenario!r}; choose from {SCENARIOS}")
    if event == 0 or item.scenario == "duplicate":
        return "original"
    if item.scenario == "once":
        return None
    n = len(item.record.get("paraphrases") or ())
    if event - 1 >= n:
        raise KdynError(f"item {item.item} has {n} paraphrases, so it cannot be injected at event {event}; "
                        f"use at most {n + 1} events")
    return f"paraphrase_{event - 1}"
