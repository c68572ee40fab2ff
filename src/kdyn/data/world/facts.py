"""Facts, entities and documents of the synthetic world; sentences stating facts; TWiki-Probes CSV rows."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import kdyn.data.world.templates as T
from kdyn.errors import KdynError

PERSON, TOWN, REGION, COUNTRY, ORGANISATION = "person", "town", "region", "country", "organisation"
ENTITY_KINDS = (COUNTRY, REGION, TOWN, ORGANISATION, PERSON)
TWIKI_COLUMNS = ("subject", "relation", "object")


@dataclass(frozen=True)
class Fact:
    """A (subject, relation, object) triple; `relation` is a Wikidata-style label."""

    subject: str
    relation: str
    obj: str


@dataclass(frozen=True)
class Entity:
    """A named thing of the world; `kind` is one of `ENTITY_KINDS`."""

    name: str
    kind: str


@dataclass(frozen=True)
class Document:
    """A paragraph about `subject`; its sentences state `facts` with the given template numbers."""

    subject: str
    text: str
    facts: tuple[Fact, ...]
    templates: tuple[int, ...]


# ---------------------------------------------------------------- sentences
def n_templates(relation: str) -> int:
    """Number of sentence templates of `relation`."""
    return len(_templates(relation))


def _templates(relation: str) -> tuple[str, ...]:
    try:
        return T.TEMPLATES[relation]
    except KeyError:
        raise KdynError(f"unknown relation {relation!r}; known: {sorted(T.TEMPLATES)}") from None


def _template(relation: str, template: int) -> str:
    templates = _templates(relation)
    if not 0 <= template < len(templates):
        raise KdynError(f"relation {relation!r} has templates 0..{len(templates) - 1}, "
                        f"got {template}")
    return templates[template]


def verbalize(fact: Fact, template: int = 0) -> str:
    """The sentence stating `fact` with template number `template` (object last, then '.')."""
    return _template(fact.relation, template).replace("{s}", fact.subject).replace("{o}", fact.obj)


def probe(fact: Fact, template: int = 0) -> tuple[str, str]:
    """Cloze probe of `fact`: (sentence up to the object, without the trailing space; object)."""
    text = _template(fact.relation, template)
    return text[: -len(" {o}.")].replace("{s}", fact.subject), fact.obj

def make_document(subject: str, chosen: Sequence[tuple[Fact, int]]) -> Document:
    return Document(subject, " ".join(verbalize(f, t) for f, t in chosen),
                    tuple(f for f, _ in chosen), tuple(t for _, t in chosen))


# ---------------------------------------------------------------- TWiki-Probes CSV
def facts_to_rows(facts: Iterable[Fact]) -> list[dict[str, str]]:
    """Facts as TWiki-Probes rows: dicts with keys "subject", "relation", "object"."""
    return [{"subject": f.subject, "relation": f.relation, "object": f.obj} for f in facts]


def write_twiki_csv(facts: Iterable[Fact], path: str | Path) -> Path:
    """Write facts in the TWiki-Probes CSV format (header subject,relation,object; LF endings)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(TWIKI_COLUMNS), lineterminator="\n")
        writer.writeheader()
        writer.writerows(facts_to_rows(facts))
    return path


def read_twiki_csv(path: str | Path) -> list[Fact]:
    """Read a TWiki-Probes CSV (real or written by `write_twiki_csv`) as facts."""
    path = Path(path)
    if not path.is_file():
        raise KdynError(f"TWiki-Probes file not found: {path}")
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if tuple(reader.fieldnames or ()) != TWIKI_COLUMNS:
            raise KdynError(f"{path}: header must be {','.join(TWIKI_COLUMNS)}, "
                            f"got {reader.fieldnames}")
        return [Fact(r["subject"], r["relation"], r["object"]) for r in reader]
