"""TemporalWiki (Jang et al., EMNLP 2022): TWiki-Probes periods, a training-text stand-in, the periods' probes.

A *period* (``0801-0901`` = Wikidata snapshots 2021-08-01 → 2021-09-01) has ``changed`` rows (updated or
new facts: the acquisition probes, C_ppl) and ``unchanged`` rows (facts identical in both snapshots: the
forgetting probes, UnC_ppl). Each row is a ``subject,relation,object`` triple of English Wikidata labels.

- `load_twiki_periods`: the real probe files, from a local folder (or ``TWiki_Probes.zip``) or the hub;
- `synthetic_periods`: periods of the same type from the embedded synthetic world (`SyntheticWorld.updates`),
  where each changed row is known to be "updated" or "new";
- `training_documents`: the text one trains on for a period. **The real TemporalWiki training stream (the
  multi-GB Wikipedia diffsets) is not available here; kdyn's stand-in is the period's changed facts
  verbalised as sentences — a knowledge-injection proxy, not real Wikipedia drift.** Label results so;
- `period_probes`: the probes as `kdyn.data.probes.Probe` (text ``subject relation object``, TemporalWiki's
  probe string). Scoring them (C_ppl / UnC_ppl) is the metrics layer's job: `kdyn.metrics.probe_scoring`
  and `kdyn.metrics.twiki_perplexity.perplexities` (which says how the aggregation relates to TemporalWiki's).
"""

from __future__ import annotations

import csv
import io
import math
import random
import re
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import IO, Any

from kdyn.data.probes import Probe
from kdyn.data.world import TWIKI_COLUMNS, Fact, SyntheticWorld, WorldConfig
from kdyn.data.world import verbalize as world_verbalize
from kdyn.data.world.templates import TEMPLATES as WORLD_TEMPLATES
from kdyn.errors import KdynError

PERIODS = ("0801-0901", "0901-1001", "1001-1101", "1101-1201")
"""The four TWiki-Probes periods, in chronological order."""
HUB_FILE = "TWiki_Probes.zip"
SCENARIOS = ("changed", "unchanged")
PROBE_TYPE = "twiki"
LOCAL_HINT = "../shared/data/temporalwiki"

GENERIC_TEMPLATE = "{s} {r} {o}."
"""The fallback sentence: TemporalWiki's own probe string plus a full stop."""
TWIKI_TEMPLATES: dict[str, str] = {
    # the 40 most frequent relations of the four real *_changed.csv files (7,067 rows, 351 relations)
    # plus the most frequent ones of the unchanged files (used for replay). Every template ends in
    # "{o}.", so the object is always the last words of the sentence, as in the probe string.
    "occupation": "{s} worked as {o}.",
    "languages spoken written or signed": "{s} speaks {o}.",
    "place of birth": "{s} was born in {o}.",
    "instance of": "{s} is an instance of {o}.",
    "place of death": "{s} died in {o}.",
    "country of citizenship": "{s} is a citizen of {o}.",
    "country": "{s} is in {o}.",
    "located in the administrative territorial entity": "{s} is located in {o}.",
    "language of work or name": "The language of {s} is {o}.",
    "educated at": "{s} was educated at {o}.",
    "has part": "{s} includes {o}.",
    "given name": "{s} has the given name {o}.",
    "country for sport": "{s} competes for {o}.",
    "native language": "The native language of {s} is {o}.",
    "different from": "{s} is not to be confused with {o}.",
    "cast member": "The cast of {s} includes {o}.",
    "form of creative work": "{s} is a work in the form of {o}.",
    "employer": "{s} works for {o}.",
    "member of": "{s} is a member of {o}.",
    "subclass of": "{s} is a type of {o}.",
    "position held": "{s} held the position of {o}.",
    "member of sports team": "{s} plays for {o}.",
    "sport": "The sport of {s} is {o}.",
    "award received": "{s} received the award {o}.",
    "characters": "The characters of {s} include {o}.",
    "replaces": "{s} replaced {o}.",
    "family name": "{s} has the family name {o}.",
    "set in environment": "{s} is set in the environment of {o}.",
    "genre": "The genre of {s} is {o}.",
    "sibling": "{s} is a sibling of {o}.",
    "applies to part": "{s} applies to the part {o}.",
    "field of work": "{s} works in the field of {o}.",
    "academic major": "{s} majored in {o}.",
    "father": "The father of {s} is {o}.",
    "academic degree": "{s} holds the degree {o}.",
    "participant in": "{s} took part in {o}.",
    "spouse": "{s} is married to {o}.",
    "part of": "{s} is part of {o}.",
    "location": "{s} is located in {o}.",
    "child": "The child of {s} is {o}.",
    "residence": "{s} lives in {o}.",
    "country of origin": "The country of origin of {s} is {o}.",
    "replaced by": "{s} was replaced by {o}.",
    "notable work": "A notable work of {s} is {o}.",
    # frequent in the unchanged files
    "taxon rank": "The taxon rank of {s} is {o}.",
    "performer": "{s} is performed by {o}.",
    "position played on team / speciality": "{s} plays as {o}.",
    "director": "{s} was directed by {o}.",
    "sex or gender": "The gender of {s} is {o}.",
    "record label": "The record label of {s} is {o}.",
    "stated in": "{s} is stated in {o}.",
    "member of political party": "{s} is a member of the political party {o}.",
}
# Deliberately generic: "of" (a Wikidata qualifier, P642, that leaked into the probes as a relation).


@dataclass(frozen=True)
class Period:
    """One TemporalWiki period (real or synthetic).

    ``documents`` is the period's training text: for real TWiki-Probes the verbalised changed facts (the
    stand-in described in `training_documents`), for synthetic periods the world's own paragraphs.
    ``kinds`` is "updated" | "new" per changed row when known (synthetic), else None (real: the files do
    not say). ``changed_rows`` / ``unchanged_rows`` are the rows' indices in their source files (data rows,
    0-based, header excluded); empty means 0..n-1. ``origin`` is "twiki" or "synthetic" and chooses the
    verbaliser (the generic TWiki one or the world's templates).
    """

    name: str
    changed: tuple[Fact, ...]
    unchanged: tuple[Fact, ...]
    documents: tuple[str, ...]
    kinds: tuple[str, ...] | None
    changed_rows: tuple[int, ...] = ()
    unchanged_rows: tuple[int, ...] = ()
    origin: str = "twiki"

    def __post_init__(self) -> None:
        for scenario in SCENARIOS:
            rows, facts = getattr(self, f"{scenario}_rows"), getattr(self, scenario)
            if rows and len(rows) != len(facts):
                raise KdynError(f"period {self.name}: {len(rows)} {scenario}_rows for {len(facts)} "
                                f"{scenario} facts; pass one row index per fact or none")
        if self.kinds is not None and len(self.kinds) != len(self.changed):
            raise KdynError(f"period {self.name}: {len(self.kinds)} kinds for {len(self.changed)} changed "
                            f"facts; pass one kind per changed fact or kinds=None")
        if self.origin not in ("twiki", "synthetic"):
            raise KdynError(f"period {self.name}: origin must be 'twiki' or 'synthetic', got {self.origin!r}")

    def rows(self, scenario: str) -> tuple[int, ...]:
        """The source-file row index of each fact of ``scenario`` ("changed" | "unchanged")."""
        facts = getattr(self, scenario)
        return getattr(self, f"{scenario}_rows") or tuple(range(len(facts)))


# ---------------------------------------------------------------- verbalising
def verbalize_twiki(fact: Fact) -> str:
    """The sentence stating a real TWiki fact: a relation-specific template (`TWIKI_TEMPLATES`) or
    `GENERIC_TEMPLATE`. The sentence ends with the object, followed by "." unless the object already
    ends with ".", "!" or "?" (e.g. "Washington D.C.")."""
    template = TWIKI_TEMPLATES.get(fact.relation, GENERIC_TEMPLATE)
    prefix = template[: -len("{o}.")]
    values = {"s": fact.subject, "r": fact.relation}
    head = re.sub(r"\{([sr])\}", lambda m: values[m.group(1)], prefix)  # one pass: no re-substitution
    return head + fact.obj + ("" if fact.obj.endswith((".", "!", "?")) else ".")


def verbalize_fact(fact: Fact, origin: str = "twiki") -> str:
    """`verbalize_twiki`, or for a synthetic period the world's first template of the relation."""
    if origin == "synthetic" and fact.relation in WORLD_TEMPLATES:
        return world_verbalize(fact, 0)
    return verbalize_twiki(fact)


def verbalized_documents(facts: Sequence[Fact], origin: str = "twiki") -> list[str]:
    """One document per subject (in order of first appearance) joining the sentences of its facts."""
    groups: dict[str, list[str]] = {}
    for fact in facts:
        groups.setdefault(fact.subject, []).append(verbalize_fact(fact, origin))
    return [" ".join(sentences) for sentences in groups.values()]


# ---------------------------------------------------------------- real TWiki-Probes files
class _Source:
    """The CSV files of a folder or of a TWiki_Probes.zip: file name → (location for messages, opener)."""

    def __init__(self, where: str, files: dict[str, tuple[str, Callable[[], IO[str]]]]) -> None:
        self.where, self.files = where, files

    def open(self, name: str) -> IO[str]:
        return self.files[name][1]()

    def describe(self, name: str) -> str:
        return self.files[name][0]


def _folder_source(folder: Path) -> _Source:
    def opener(p: Path) -> Callable[[], IO[str]]:
        return lambda: p.open(newline="", encoding="utf-8-sig")

    return _Source(str(folder), {p.name: (str(p), opener(p)) for p in sorted(folder.glob("*.csv"))
                                 if p.is_file()})


def _zip_source(path: Path) -> _Source:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise KdynError(f"{path}: not a readable zip file ({e}); pass the folder of the extracted "
                        f"TWiki-Probes CSVs, e.g. {LOCAL_HINT}") from None

    def opener(member: str) -> Callable[[], IO[str]]:
        return lambda: io.TextIOWrapper(archive.open(member), encoding="utf-8-sig", newline="")

    files = {}
    for member in archive.namelist():  # skip macOS resource forks (__MACOSX/, ._name)
        base = member.rsplit("/", 1)[-1]
        if base.endswith(".csv") and "__MACOSX" not in member and not base.startswith("._"):
            files[base] = (f"{path}!{member}", opener(member))
    return _Source(str(path), files)


def _hub_source(hub_repo: str) -> _Source:
    try:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(repo_id=hub_repo, filename=HUB_FILE, repo_type="dataset")
    except Exception as e:  # offline, missing, renamed: all mean "give a local folder"
        raise KdynError(f"cannot download {HUB_FILE} from hub dataset {hub_repo} ({type(e).__name__}); pass a "
                        f"local folder of TWiki-Probes CSVs instead, e.g. path={LOCAL_HINT}") from None
    return _zip_source(Path(path))


def _open_source(path: str | Path | None, hub_repo: str) -> _Source:
    if path is None or str(path) == "":
        return _hub_source(hub_repo)
    p = Path(str(path)).expanduser()
    if p.is_file() and p.suffix == ".zip":
        return _zip_source(p)
    if not p.is_dir():
        raise KdynError(f"TWiki-Probes folder {p} does not exist; pass a folder holding <period>_changed.csv "
                        f"and <period>_unchanged.csv (e.g. {LOCAL_HINT}), a TWiki_Probes.zip, or path=None "
                        f"to download from the hub")
    return _folder_source(p)


def _period_key(name: str) -> tuple:
    """Chronological order: the known periods first in their order, then natural order of the names."""
    if name in PERIODS:
        return (0, PERIODS.index(name))
    return (1, [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)])


def available_periods(source: _Source) -> list[str]:
    """Periods with both a changed and an unchanged file, chronologically."""
    names = {n[: -len("_changed.csv")] for n in source.files if n.endswith("_changed.csv")}
    return sorted((n for n in names if f"{n}_unchanged.csv" in source.files), key=_period_key)


def _read_rows(source: _Source, name: str) -> list[Fact]:
    """The validated rows of one TWiki-Probes CSV (header subject,relation,object; 3 non-empty fields)."""
    where = source.describe(name)
    facts: list[Fact] = []
    line = 1
    reader = None
    try:
        with source.open(name) as fh:
            reader = csv.reader(fh, strict=True)
            header = next(reader, None)
            if header is None:
                raise KdynError(f"{where}:1: empty file; expected the header {','.join(TWIKI_COLUMNS)}")
            if tuple(h.strip() for h in header) != TWIKI_COLUMNS:
                raise KdynError(f"{where}:1: header must be {','.join(TWIKI_COLUMNS)}, got {','.join(header)}; "
                                f"pass TWiki-Probes CSVs")
            for row in reader:
                line = reader.line_num
                if not row:  # a blank line
                    continue
                if len(row) != 3:
                    raise KdynError(f"{where}:{line}: expected 3 fields (subject,relation,object), got "
                                    f"{len(row)}: {','.join(row)[:80]!r}; quote fields that contain commas")
                if not all(v.strip() for v in row):
                    empty = [c for c, v in zip(TWIKI_COLUMNS, row) if not v.strip()]
                    raise KdynError(f"{where}:{line}: empty {', '.join(empty)}; every row needs a subject, "
                                    f"a relation and an object")
                facts.append(Fact(*row))
    except csv.Error as e:
        line = reader.line_num if reader is not None else line
        raise KdynError(f"{where}:{line}: malformed CSV ({e}); fix or re-extract the file") from None
    except UnicodeDecodeError as e:
        raise KdynError(f"{where}: not UTF-8 near line {line + 1} ({e.reason}); re-extract the file") from None
    return facts


def _subsample(n: int, cap: int | None, rng_key: str) -> list[int]:
    """Sorted row indices: all of them, or a seeded sample of ``cap``."""
    if cap is None or cap >= n:
        return list(range(n))
    if cap < 0:
        raise KdynError(f"max_changed / max_unchanged must be >= 0, got {cap}")
    return sorted(random.Random(rng_key).sample(range(n), cap))


def load_twiki_periods(path: str | Path | None, periods: Sequence[str] | None = None,
                       hub_repo: str = "seonghyeonye/TemporalWiki", max_changed: int | None = None,
                       max_unchanged: int | None = None, seed: int = 0) -> list[Period]:
    """The TWiki-Probes periods, chronologically.

    ``path``: a folder holding ``<period>_changed.csv`` and ``<period>_unchanged.csv`` (e.g.
    ``../shared/data/temporalwiki``), a ``TWiki_Probes.zip``, or None to download ``TWiki_Probes.zip`` from
    the hub dataset ``hub_repo`` (needs network access). ``periods`` selects a subset (any order; the result
    is chronological). ``max_changed`` / ``max_unchanged`` cap the rows per file with a seeded sample that
    keeps file order (row indices are kept in `Period.changed_rows` / `unchanged_rows`). Rows are kept
    verbatim; each period's ``documents`` are the verbalised changed facts (`training_documents`).
    """
    source = _open_source(path, hub_repo)
    available = available_periods(source)
    if not available:
        raise KdynError(f"{source.where} holds no <period>_changed.csv + <period>_unchanged.csv pair; pass the "
                        f"TWiki-Probes folder, e.g. {LOCAL_HINT}")
    chosen = available
    if periods is not None:
        if isinstance(periods, str):
            periods = [periods]
        unknown = [p for p in periods if p not in available]
        if unknown:
            raise KdynError(f"unknown TWiki-Probes period(s) {unknown}; available in {source.where}: "
                            f"{', '.join(available)}")
        chosen = [p for p in available if p in set(periods)]
    out = []
    for name in chosen:
        facts, rows = {}, {}
        for scenario, cap in (("changed", max_changed), ("unchanged", max_unchanged)):
            all_facts = _read_rows(source, f"{name}_{scenario}.csv")
            keep = _subsample(len(all_facts), cap, f"kdyn-twiki/{seed}/{name}/{scenario}")
            facts[scenario] = tuple(all_facts[i] for i in keep)
            rows[scenario] = tuple(keep)
        out.append(Period(name=name, changed=facts["changed"], unchanged=facts["unchanged"],
                          documents=tuple(verbalized_documents(facts["changed"])), kinds=None,
                          changed_rows=rows["changed"], unchanged_rows=rows["unchanged"], origin="twiki"))
    return out


# ---------------------------------------------------------------- synthetic periods
_SIZE_KEYS = ("n_updated", "n_new_facts", "n_new_entities", "n_unchanged", "docs_per_subject")


def synthetic_periods(world_config: Mapping[str, Any] | None = None, n_periods: int = 4, seed: int = 0,
                      **sizes: int) -> list[Period]:
    """Periods from `SyntheticWorld(WorldConfig(**world_config)).updates(n_periods, seed, **sizes)`.

    ``sizes``: ``n_updated``, ``n_new_facts``, ``n_new_entities``, ``n_unchanged``, ``docs_per_subject``.
    ``documents`` are the world's paragraphs about each changed subject (natural sentences, several
    templates); ``kinds`` says which changed rows are "updated" and which "new".
    """
    bad = sorted(set(sizes) - set(_SIZE_KEYS))
    if bad:
        raise KdynError(f"unknown synthetic period size(s) {bad}; choose from {', '.join(_SIZE_KEYS)}")
    config = dict(world_config or {})
    known = {f.name for f in fields(WorldConfig)}
    if set(config) - known:
        raise KdynError(f"unknown world setting(s) {sorted(set(config) - known)}; choose from {sorted(known)}")
    world = SyntheticWorld(WorldConfig(**config))
    return [Period(name=p["name"], changed=tuple(p["changed"]), unchanged=tuple(p["unchanged"]),
                   documents=tuple(p["documents"]), kinds=tuple(p["kind"]), origin="synthetic")
            for p in world.updates(n_periods, seed, **sizes)]


# ---------------------------------------------------------------- training text
def _count(fraction: float, n: int) -> int:
    return int(math.floor(fraction * n + 0.5))


def training_documents(period: Period, *, source: str = "verbalized", replay_unchanged: float = 0.0,
                       replay_documents: Sequence[str] = (), replay_fraction: float = 0.0,
                       seed: int = 0) -> list[str]:
    """The training stream of one period, shuffled deterministically by ``seed``.

    **Stand-in, not the real thing.** TemporalWiki trains on monthly Wikipedia diffsets (multi-GB, not
    available here). kdyn instead trains on the period's changed facts verbalised as sentences: a
    knowledge-injection proxy, not real Wikipedia drift. Results must say so.

    ``source``: "verbalized" (default) — one short document per changed subject (order of first
    appearance) joining one sentence per changed fact; real rows use `verbalize_twiki` (relation
    templates, else "{subject} {relation} {object}."), synthetic rows the world's templates; the
    object is always the last words of its sentence. "documents" — ``period.documents`` as stored
    (synthetic: the world's paragraphs, which restate *all* current facts of each changed subject
    with varied templates; real: the same as "verbalized").

    Mix-Review replay: ``replay_unchanged`` ∈ [0, 1] adds round(fraction × #unchanged) of the period's
    unchanged facts (a seeded sample), one sentence document each; ``replay_documents`` (e.g. base-corpus
    documents) are mixed in at round(``replay_fraction`` × #changed documents) documents, sampled
    without replacement (whole passes over a seeded permutation when more are asked than given).
    """
    if source == "verbalized":
        docs = verbalized_documents(period.changed, period.origin)
    elif source == "documents":
        docs = list(period.documents)
    else:
        raise KdynError(f"unknown training source {source!r}; choose 'verbalized' or 'documents'")
    if not 0.0 <= replay_unchanged <= 1.0:
        raise KdynError(f"replay_unchanged must be in [0, 1] (a fraction of the unchanged facts), "
                        f"got {replay_unchanged}")
    if replay_fraction < 0:
        raise KdynError(f"replay_fraction must be >= 0, got {replay_fraction}")
    rng = random.Random(f"kdyn-twiki/{period.name}/{seed}")
    n_unchanged = _count(replay_unchanged, len(period.unchanged))
    replay = [verbalize_fact(period.unchanged[i], period.origin)
              for i in sorted(rng.sample(range(len(period.unchanged)), n_unchanged))]
    n_base = _count(replay_fraction, len(docs))
    if n_base and not replay_documents:
        raise KdynError(f"replay_fraction={replay_fraction} needs replay_documents (e.g. the base corpus); "
                        f"pass them or set replay_fraction=0")
    base: list[str] = []
    while len(base) < n_base:
        order = list(range(len(replay_documents)))
        rng.shuffle(order)
        base.extend(replay_documents[i] for i in order[: n_base - len(base)])
    stream = docs + replay + base
    rng.shuffle(stream)
    return stream


# ---------------------------------------------------------------- probes and perplexity
def period_probes(period: Period, start_index: int = 0) -> list[Probe]:
    """The changed then the unchanged rows as probes: input ``subject + " " + relation``, target the object
    (probe text = TemporalWiki's ``subject relation object``); ``item`` is the row index in its file,
    ``probe_type`` "twiki", ``probe_idx`` 0, ``index`` consecutive from ``start_index``."""
    probes: list[Probe] = []
    for scenario in SCENARIOS:
        for row, fact in zip(period.rows(scenario), getattr(period, scenario)):
            probes.append(Probe(start_index + len(probes), row, scenario, PROBE_TYPE, 0,
                                f"{fact.subject} {fact.relation}", fact.obj))
    return probes
