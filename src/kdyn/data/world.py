"""A small, deterministic, fictional world to pretrain on, then teach new knowledge and updates.

`SyntheticWorld(WorldConfig(seed=...))` invents countries, regions, towns, organisations and people
(names built from syllables, all unique) linked by Wikidata-style relations. It provides:

- `base_documents()`: the "old world" text stream, short paragraphs about one entity each, every
  fact stated several times with varied templates and sentence order;
- `new_knowledge(n)`: items about brand-new entities in the schema of the Fictional Knowledge
  dataset (Chang et al. 2024): paragraph, 9 paraphrases, memorization / semantic / compositional
  probes (see `validate_fictional_schema`);
- `updates(n_periods)`: periods in the schema of TWiki-Probes (Jang et al. 2022): changed facts
  (updated or new) and unchanged control facts, plus the documents that state the changes.

All randomness comes from `random.Random` instances seeded by strings derived from the config seed,
so every output is a pure function of its arguments and the config.
"""

from __future__ import annotations

import csv
import random
import re
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdyn.data import world_templates as T
from kdyn.errors import KdynError

PERSON, TOWN, REGION, COUNTRY, ORGANISATION = "person", "town", "region", "country", "organisation"
ENTITY_KINDS = (COUNTRY, REGION, TOWN, ORGANISATION, PERSON)

FICTIONAL_LIST_KEYS = ("mem_input", "mem_target", "gen_input", "gen_target", "hard_gen_input",
                       "hard_gen_target")
FICTIONAL_KEYS = ("train_context", *FICTIONAL_LIST_KEYS, "paraphrases")
"""Keys of a Fictional Knowledge record (the paraphrased release)."""
FICTIONAL_EXTRA_KEYS = ("hard_gen_support", "new_entities", "facts")
"""Keys `new_knowledge(extras=True)` adds to each record (not in the real dataset)."""
TWIKI_COLUMNS = ("subject", "relation", "object")
N_PROBES = 5
N_PARAPHRASES = 9

_BASE_YEAR = 1930  # the "present" of the old world; update period k happens in year 1930 + k
_AWKWARD = re.compile(r"[aeiou]{3}|[^aeiou]{4}|([a-z])\1")  # vowel or consonant pile-ups, doubles
_NAMESPACES = {"base": 0, "new_knowledge": 1, "updates": 2}


@dataclass(frozen=True)
class WorldConfig:
    """Sizes of the world. The defaults give a base stream of ~1M characters.

    `n_places` counts towns; regions and countries are sized separately. Every document states
    all facts of its entity, so `docs_per_entity` is the number of exposures of each fact.
    """

    seed: int = 0
    n_people: int = 600
    n_places: int = 120
    n_orgs: int = 80
    n_regions: int = 16
    n_countries: int = 4
    n_rivers: int = 20
    n_given_names: int = 80
    docs_per_entity: int = 4
    spouse_fraction: float = 0.4
    educated_fraction: float = 0.6

    def __post_init__(self) -> None:
        for name in ("n_people", "n_places", "n_orgs", "n_regions", "n_countries", "n_rivers",
                     "n_given_names", "docs_per_entity"):
            if getattr(self, name) < 1:
                raise KdynError(f"WorldConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.n_orgs < 2 or self.n_people < 2 or self.n_places < 2:
            raise KdynError("WorldConfig needs at least 2 people, 2 places and 2 organisations")
        for name in ("spouse_fraction", "educated_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise KdynError(f"WorldConfig.{name} must be in [0, 1], got {getattr(self, name)}")


def world_config(values: Mapping[str, Any] | None, key: str = "corpus.world") -> WorldConfig:
    """The `WorldConfig` of a config node's ``world`` mapping; ``key`` names that node in messages."""
    values = dict(values or {})
    known = set(WorldConfig.__dataclass_fields__)
    unknown = sorted(set(values) - known)
    if unknown:
        raise KdynError(f"unknown {key} keys {unknown}; valid keys are {sorted(known)}")
    return WorldConfig(**values)


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


# ---------------------------------------------------------------- names
class _NameMaker:
    """Invents pronounceable capitalised words from syllables, never repeating one.

    Words are split into namespaces by a CRC of the word, so names invented for the base world,
    for new knowledge and for updates can never coincide. Outside the base namespace a word is
    also rejected if it occurs inside any base word (so it is never a substring of the base text).
    """

    def __init__(self, rng: random.Random, namespace: str, taken: set[str],
                 base_words: str = "") -> None:
        self._rng = rng
        self._namespace = _NAMESPACES[namespace]
        self.taken = taken
        self._base_words = base_words
        self._reserved = T.reserved_words()

    def core(self, syllables: tuple[int, int] = (2, 2)) -> str:
        """A random lower-case syllable string (not checked for uniqueness)."""
        rng = self._rng
        n = rng.randint(*syllables)
        return "".join(rng.choice(T.ONSETS) + rng.choice(T.VOWELS) + rng.choice(T.CODAS)
                       for _ in range(n))

    def usable(self, word: str, check_namespace: bool = True) -> bool:
        """Whether `word` is fresh, well formed, in this namespace, and may be claimed."""
        low = word.lower()
        return (4 <= len(word) <= 11 and not _AWKWARD.search(low) and low not in self._reserved
                and word not in self.taken
                and (not check_namespace or zlib.crc32(low.encode()) % 3 == self._namespace)
                and (not self._base_words or low not in self._base_words))

    def word(self, endings: Sequence[str] = ("",), syllables: tuple[int, int] = (2, 2),
             derived: str | None = None) -> tuple[str, str]:
        """Claim a new word; returns (word, core). If `derived` is a suffix, core+derived is also
        claimed (e.g. a language name from a country's core)."""
        for _ in range(100_000):
            core = self.core(syllables)
            word = (core + self._rng.choice(endings)).capitalize()
            if not self.usable(word):
                continue
            if derived is not None:
                other = (core + derived).capitalize()
                if not self.usable(other, check_namespace=False) or other == word:
                    continue
                self.taken.add(other)
            self.taken.add(word)
            return word, core
        raise KdynError("could not invent enough unique names; lower the WorldConfig sizes")


def _date(rng: random.Random, year: int) -> str:
    return f"{rng.randint(1, 28)} {rng.choice(T.MONTHS)} {year}"


def _population(rng: random.Random) -> int:
    return int(round(800 * (150 ** rng.random()), -2))  # log-uniform in ~[800, 120000]


# ---------------------------------------------------------------- the world
class SyntheticWorld:
    """The old world: entities, facts, and the base text stream (see the module docstring)."""

    def __init__(self, config: WorldConfig = WorldConfig()) -> None:
        self.config = config
        self._rng = random.Random(f"kdyn-world/{config.seed}")
        self._entities: dict[str, Entity] = {}
        self._facts: dict[str, dict[str, str]] = {}  # subject -> relation -> object
        self._birth_year: dict[str, int] = {}
        self._taken: set[str] = set()
        self._names = _NameMaker(self._rng, "base", self._taken)
        self._corpus: list[Document] | None = None
        self._build()
        # new names must not occur inside any base name or template word (see _NameMaker)
        self._base_words = "\n".join(sorted({w.lower() for w in self._taken}
                                            | T.reserved_words()))

    # ---------------------------------------------------------------- public views
    @property
    def entities(self) -> dict[str, Entity]:
        """All entities by name, in generation order (countries, regions, towns, orgs, people)."""
        return dict(self._entities)

    @property
    def facts(self) -> list[Fact]:
        """All facts of the old world, grouped by subject in entity order."""
        return [Fact(s, r, o) for s, rels in self._facts.items() for r, o in rels.items()]

    def names(self, kind: str) -> list[str]:
        """Names of the entities of one kind."""
        return [e.name for e in self._entities.values() if e.kind == kind]

    def facts_about(self, subject: str) -> list[Fact]:
        """The facts whose subject is `subject`."""
        return [Fact(subject, r, o) for r, o in self._facts.get(subject, {}).items()]

    def value(self, subject: str, relation: str) -> str | None:
        """The object of (subject, relation) in the old world, or None."""
        return self._facts.get(subject, {}).get(relation)

    @property
    def given_names(self) -> list[str]:
        """The pool of given names (shared by many people; family names are unique)."""
        return list(self._given)

    verbalize = staticmethod(verbalize)
    probe = staticmethod(probe)

    # ---------------------------------------------------------------- generation
    def _add(self, name: str, kind: str) -> None:
        if name in self._entities:
            raise RuntimeError(f"duplicate entity name {name!r}")  # _NameMaker prevents this
        self._entities[name] = Entity(name, kind)
        self._facts[name] = {}

    def _set(self, subject: str, relation: str, obj: str | int) -> None:
        self._facts[subject][relation] = str(obj)

    def _build(self) -> None:
        cfg, rng, names = self.config, self._rng, self._names
        countries, languages = [], []
        for _ in range(cfg.n_countries):
            name, _core = names.word(T.COUNTRY_ENDINGS, derived=T.LANGUAGE_ENDING)
            countries.append(name)
            languages.append((_core + T.LANGUAGE_ENDING).capitalize())
            self._add(name, COUNTRY)
        regions = [names.word(T.REGION_ENDINGS)[0] for _ in range(cfg.n_regions)]
        for i, region in enumerate(regions):
            self._add(region, REGION)
            self._set(region, T.COUNTRY, countries[i % len(countries)])
        rivers = [names.word()[0] + T.RIVER_SUFFIX for _ in range(cfg.n_rivers)]
        towns = [names.word(T.TOWN_ENDINGS)[0] for _ in range(cfg.n_places)]
        population: dict[str, int] = {}
        for i, town in enumerate(towns):
            self._add(town, TOWN)
            region = regions[i] if i < len(regions) else rng.choice(regions)
            population[town] = _population(rng)
            pop = population[town]
            self._set(town, T.INSTANCE_OF, "city" if pop >= 40000 else "town" if pop >= 4000
                      else "village")
            self._set(town, T.ADMIN_ENTITY, region)
            self._set(town, T.COUNTRY, self._facts[region][T.COUNTRY])
            self._set(town, T.INCEPTION, rng.randint(800, 1700))
            if rng.random() < 0.7:
                self._set(town, T.BODY_OF_WATER, rng.choice(rivers))
            self._set(town, T.POPULATION, pop)
        for region in regions:  # capital: the most populous town of the region
            inside = [t for t in towns if self._facts[t][T.ADMIN_ENTITY] == region]
            if inside:
                self._set(region, T.CAPITAL, max(inside, key=lambda t: (population[t], t)))
        for country, language in zip(countries, languages):
            inside = [t for t in towns if self._facts[t][T.COUNTRY] == country]
            if inside:
                self._set(country, T.CAPITAL, max(inside, key=lambda t: (population[t], t)))
            self._set(country, T.OFFICIAL_LANGUAGE, language)
            self._set(country, T.INCEPTION, rng.randint(900, 1500))

        industries = list(T.INDUSTRIES)
        orgs: list[str] = []
        for i in range(cfg.n_orgs):
            # every 8th organisation is a college, so that "educated at" has objects
            industry = T.COLLEGE_INDUSTRY if i % 8 == 0 else rng.choice(
                [x for x in industries if x != T.COLLEGE_INDUSTRY])
            orgs.append(self._new_org(names, industry, rng.randint(1865, 1920), rng.choice(towns)))

        self._given = [names.word()[0] for _ in range(cfg.n_given_names)]
        colleges = [o for o in orgs if self._facts[o][T.INDUSTRY] == T.COLLEGE_INDUSTRY]
        people: list[str] = []
        for _ in range(cfg.n_people):
            people.append(self._new_person(names, rng, rng.randint(1835, 1905), towns, orgs,
                                           colleges if rng.random() < cfg.educated_fraction
                                           else []))
        order = people[:]
        rng.shuffle(order)
        n_married = int(cfg.spouse_fraction * len(order)) // 2 * 2
        for a, b in zip(order[0:n_married:2], order[1:n_married:2]):
            self._set(a, T.SPOUSE, b)
            self._set(b, T.SPOUSE, a)
        for org in orgs:  # founders and directors need people, so they come last
            inception = int(self._facts[org][T.INCEPTION])
            old_enough = [p for p in people if self._birth_year[p] <= inception - 20]
            founder = (rng.choice(old_enough) if old_enough
                       else min(people, key=lambda p: (self._birth_year[p], p)))
            staff = [p for p in people if self._facts[p][T.EMPLOYER] == org and p != founder]
            director = rng.choice(staff or [p for p in people if p != founder])
            self._set(org, T.FOUNDED_BY, founder)
            self._set(org, T.DIRECTOR, director)

    def _new_org(self, names: _NameMaker, industry: str, inception: int, hq: str) -> str:
        """Invent and register an organisation (founder and director are set by the caller)."""
        kind, suffixes, _jobs = T.INDUSTRIES[industry]
        name = f"{names.word()[0]} {self._rng.choice(suffixes)}"
        self._add(name, ORGANISATION)
        self._set(name, T.INSTANCE_OF, kind)
        self._set(name, T.INCEPTION, inception)
        self._set(name, T.HEADQUARTERS, hq)
        self._set(name, T.INDUSTRY, industry)
        return name

    def _person_name(self, names: _NameMaker, rng: random.Random) -> str:
        return f"{rng.choice(self._given)} {names.word(T.FAMILY_ENDINGS)[0]}"

    def _new_person(self, names: _NameMaker, rng: random.Random, year: int, towns: list[str],
                    employers: list[str], colleges: list[str]) -> str:
        """Invent and register a person with the standard attributes (no spouse)."""
        name = self._person_name(names, rng)
        self._add(name, PERSON)
        self._birth_year[name] = year
        birthplace = rng.choice(towns)
        employer = rng.choice(employers)
        self._set(name, T.DATE_OF_BIRTH, _date(rng, year))
        self._set(name, T.PLACE_OF_BIRTH, birthplace)
        self._set(name, T.CITIZENSHIP, self._facts[birthplace][T.COUNTRY])
        jobs = T.INDUSTRIES[self._facts[employer][T.INDUSTRY]][2]
        self._set(name, T.OCCUPATION, rng.choice(jobs))
        self._set(name, T.EMPLOYER, employer)
        self._set(name, T.RESIDENCE, birthplace if rng.random() < 0.5 else rng.choice(towns))
        if colleges:
            self._set(name, T.EDUCATED_AT, rng.choice(colleges))
        return name

    # ---------------------------------------------------------------- base text stream
    def base_corpus(self) -> list[Document]:
        """The old-world documents with their facts and template choices (deterministic order).

        Each entity gets `docs_per_entity` documents; each document states all facts of the entity
        in a shuffled order. Fact f uses template (offset_f + k) mod n in document k, so a fact
        appears with min(docs_per_entity, n) different templates.
        """
        if self._corpus is None:
            rng = random.Random(f"kdyn-world/{self.config.seed}/docs")
            docs: list[Document] = []
            for subject, rels in self._facts.items():
                facts = [Fact(subject, r, o) for r, o in rels.items()]
                offsets = [rng.randrange(n_templates(f.relation)) for f in facts]
                for k in range(self.config.docs_per_entity):
                    order = list(range(len(facts)))
                    rng.shuffle(order)
                    chosen = [(facts[i], (offsets[i] + k) % n_templates(facts[i].relation))
                              for i in order]
                    docs.append(_document(subject, chosen))
            rng.shuffle(docs)
            self._corpus = docs
        return list(self._corpus)

    def base_documents(self) -> list[str]:
        """The old-world text stream: one short paragraph per document, deterministic order."""
        return [d.text for d in self.base_corpus()]

    def _new_name_maker(self, rng: random.Random, namespace: str) -> _NameMaker:
        return _NameMaker(rng, namespace, set(self._taken), self._base_words)

    # ---------------------------------------------------------------- new knowledge
    def new_knowledge(self, n_items: int, seed: int = 0, extras: bool = False) -> list[dict]:
        """`n_items` records in the Fictional Knowledge schema about new entities.

        Each item is about a new person (2/3) or organisation (1/3) whose name never occurs in the
        base stream, linked to existing towns, organisations and people. The paragraph states six
        facts of the new entity plus five "bridging" facts; probes: 5 memorization (cut from the
        paragraph), 5 semantic (another template), 5 compositional (two chained facts). Output is
        a function of (world seed, `seed`) and is prefix-stable in `n_items`. With `extras`, each
        record also has `FICTIONAL_EXTRA_KEYS`: the two supporting facts of every compositional
        probe (with their sentences), the names of the new entities, and the paragraph's facts.
        """
        if n_items < 0:
            raise KdynError(f"n_items must be >= 0, got {n_items}")
        rng = random.Random(f"kdyn-world/{self.config.seed}/new-knowledge/{seed}")
        names = self._new_name_maker(rng, "new_knowledge")
        records = []
        for _ in range(n_items):
            make = self._person_item if rng.random() < 2 / 3 else self._org_item
            item = make(rng, names)
            records.append(item.render(rng, extras))
        return records

    def _person_item(self, rng: random.Random, names: _NameMaker) -> _Item:
        towns, orgs = self.names(TOWN), self.names(ORGANISATION)
        colleges = [o for o in orgs if self._facts[o][T.INDUSTRY] == T.COLLEGE_INDUSTRY]
        item = _Item(self)
        person = item.new(self._person_name(names, rng))
        birthplace = rng.choice(towns)
        employer = rng.choice(orgs)
        item.main(person, T.DATE_OF_BIRTH, _date(rng, rng.randint(1850, 1905)))
        item.main(person, T.PLACE_OF_BIRTH, birthplace)
        item.main(person, T.OCCUPATION,
                  rng.choice(T.INDUSTRIES[self._facts[employer][T.INDUSTRY]][2]))
        item.main(person, T.EMPLOYER, employer)
        extra = [T.RESIDENCE, T.SPOUSE] + ([T.EDUCATED_AT] if colleges else [])
        for relation in sorted(rng.sample(extra, 2), key=extra.index):
            if relation == T.RESIDENCE:
                item.main(person, relation, rng.choice([t for t in towns if t != birthplace]))
            elif relation == T.EDUCATED_AT:
                item.main(person, relation, rng.choice(colleges))
            else:
                spouse = item.new(self._person_name(names, rng))
                item.main(person, relation, spouse)
                item.hidden(spouse, T.DATE_OF_BIRTH, _date(rng, rng.randint(1850, 1905)))
                item.hidden(spouse, T.PLACE_OF_BIRTH, rng.choice(towns))
                item.hidden(spouse, T.OCCUPATION, rng.choice(_ALL_OCCUPATIONS))
        item.choose_compositions(rng)
        return item

    def _org_item(self, rng: random.Random, names: _NameMaker) -> _Item:
        towns, people = self.names(TOWN), self.names(PERSON)
        item = _Item(self)
        industry = rng.choice(list(T.INDUSTRIES))
        kind, suffixes, jobs = T.INDUSTRIES[industry]
        org = item.new(f"{names.word()[0]} {rng.choice(suffixes)}")
        inception = rng.randint(1865, 1925)
        old_enough = [p for p in people if self._birth_year[p] <= inception - 20] or people
        director = item.new(self._person_name(names, rng))
        item.main(org, T.INSTANCE_OF, kind, probe=False)
        item.main(org, T.INCEPTION, str(inception))
        item.main(org, T.HEADQUARTERS, rng.choice(towns))
        item.main(org, T.FOUNDED_BY, rng.choice(old_enough))
        item.main(org, T.INDUSTRY, industry)
        item.main(org, T.DIRECTOR, director)
        item.hidden(director, T.DATE_OF_BIRTH, _date(rng, rng.randint(1850, 1905)))
        item.hidden(director, T.PLACE_OF_BIRTH, rng.choice(towns))
        item.choose_compositions(rng)
        return item

    # ---------------------------------------------------------------- updates
    def updates(self, n_periods: int = 4, seed: int = 0, *, n_updated: int = 90,
                n_new_facts: int = 40, n_new_entities: int = 6, n_unchanged: int = 400,
                docs_per_subject: int = 2) -> list[dict[str, Any]]:
        """`n_periods` periods of world changes in the TWiki-Probes schema, accumulating.

        Period k (named "pk", year 1930+k) is relative to the world after period k-1. Its dict:
        - "changed": list[Fact]: `n_updated` updated facts (same subject and relation as before,
          a different object: employer, residence, occupation, director, population), about
          `n_new_facts` new facts of existing entities (deaths, awards, marriages, owners,
          twin towns) and the facts of `n_new_entities` brand-new people and organisations;
        - "kind": list parallel to "changed", "updated" or "new"; "previous": the former object
          (None for new facts);
        - "unchanged": up to `n_unchanged` facts true before and after, none sharing a
          (subject, relation) pair with "changed";
        - "new_subjects": the entities created in this period;
        - "documents": `docs_per_subject` paragraphs per changed subject stating its current facts
          (the training text of the period; its randomness does not affect the facts).
        """
        for arg, val in (("n_periods", n_periods), ("n_updated", n_updated),
                         ("n_new_facts", n_new_facts), ("n_new_entities", n_new_entities),
                         ("n_unchanged", n_unchanged), ("docs_per_subject", docs_per_subject)):
            if val < 0:
                raise KdynError(f"updates(): {arg} must be >= 0, got {val}")
        rng = random.Random(f"kdyn-world/{self.config.seed}/updates/{seed}")
        doc_rng = random.Random(f"kdyn-world/{self.config.seed}/updates/{seed}/docs")
        sim = _Simulation(self, rng, self._new_name_maker(rng, "updates"))
        periods = []
        for k in range(1, n_periods + 1):
            period = sim.period(_BASE_YEAR + k, n_updated, n_new_facts, n_new_entities, n_unchanged)
            subjects = list(dict.fromkeys(f.subject for f in period["changed"]))
            period["documents"] = [sim.document(s, doc_rng) for s in subjects
                                   for _ in range(docs_per_subject)]
            period["name"] = f"p{k}"
            periods.append(period)
        return periods


_ALL_OCCUPATIONS = sorted({job for _k, _s, jobs in T.INDUSTRIES.values() for job in jobs})


def _document(subject: str, chosen: Sequence[tuple[Fact, int]]) -> Document:
    return Document(subject, " ".join(verbalize(f, t) for f, t in chosen),
                    tuple(f for f, _ in chosen), tuple(t for _, t in chosen))


# ---------------------------------------------------------------- new-knowledge item builder
@dataclass
class _Item:
    """Facts of one new-knowledge item and how to turn them into a Fictional Knowledge record."""

    world: SyntheticWorld
    new_entities: list[str] = field(default_factory=list)
    main_facts: list[Fact] = field(default_factory=list)
    probe_facts: list[Fact] = field(default_factory=list)
    extra: dict[tuple[str, str], str] = field(default_factory=dict)  # facts of new side entities
    compositions: list[tuple[Fact, Fact, tuple[str, str]]] = field(default_factory=list)

    def new(self, name: str) -> str:
        self.new_entities.append(name)
        return name

    def main(self, subject: str, relation: str, obj: str, probe: bool = True) -> None:
        fact = Fact(subject, relation, obj)
        self.main_facts.append(fact)
        if probe:
            self.probe_facts.append(fact)

    def hidden(self, subject: str, relation: str, obj: str) -> None:
        """A fact of a new side entity, stated only if a compositional probe needs it."""
        self.extra[(subject, relation)] = obj

    def _lookup(self, subject: str, relation: str) -> str | None:
        return self.extra.get((subject, relation), self.world.value(subject, relation))

    def choose_compositions(self, rng: random.Random) -> None:
        """Pick 5 two-hop chains (at most 2 per first hop, distinct bridging facts).

        A chain whose answer is also the object of a direct fact of the subject (e.g. the spouse
        was born in the subject's own birthplace) is skipped: it could be answered in one hop.
        """
        direct = {f.obj for f in self.main_facts}
        options = []
        for fact in self.main_facts:
            for r1, r2 in T.COMPOSITIONS:
                obj = self._lookup(fact.obj, r2) if r1 == fact.relation else None
                if obj is not None and obj not in direct:
                    options.append((fact, Fact(fact.obj, r2, obj), (r1, r2)))
        rng.shuffle(options)
        per_first: dict[str, int] = {}
        bridges: set[Fact] = set()
        for first, second, key in options:
            if len(self.compositions) == N_PROBES:
                break
            if per_first.get(first.relation, 0) < 2 and second not in bridges:
                self.compositions.append((first, second, key))
                per_first[first.relation] = per_first.get(first.relation, 0) + 1
                bridges.add(second)
        if len(self.compositions) < N_PROBES:
            raise RuntimeError("not enough compositional chains for a new-knowledge item")

    def _groups(self) -> list[list[Fact]]:
        """Main facts, each followed by the bridging facts about its object."""
        return [[f] + [second for first, second, _ in self.compositions if first == f]
                for f in self.main_facts]

    def _paragraph(self, rng: random.Random) -> tuple[str, dict[Fact, int]]:
        groups = self._groups()
        rng.shuffle(groups)
        chosen = [(f, rng.randrange(n_templates(f.relation))) for g in groups for f in g]
        return " ".join(verbalize(f, t) for f, t in chosen), dict(chosen)

    def render(self, rng: random.Random, extras: bool) -> dict[str, Any]:
        """The Fictional Knowledge record (all probe properties are asserted here)."""
        context, used = self._paragraph(rng)
        mem_facts = sorted(rng.sample(self.probe_facts, N_PROBES),
                           key=lambda f: context.index(verbalize(f, used[f])))
        record: dict[str, Any] = {"train_context": context}
        mem = [probe(f, used[f]) for f in mem_facts]
        record["mem_input"] = [p for p, _ in mem]
        record["mem_target"] = [t for _, t in mem]
        gen = []
        for f in mem_facts:
            options = [t for t in range(n_templates(f.relation))
                       if t != used[f] and probe(f, t)[0] not in context]
            if not options:
                raise RuntimeError(f"no semantic-probe template left for {f}")
            gen.append(probe(f, rng.choice(options)))
        record["gen_input"] = [p for p, _ in gen]
        record["gen_target"] = [t for _, t in gen]
        hard_inputs = []
        for first, _second, key in self.compositions:
            options = [t.replace("{s}", first.subject) for t in T.COMPOSITIONS[key]]
            options = [o for o in options if o not in context]
            if not options:
                raise RuntimeError(f"every composition template of {key} occurs in the paragraph")
            hard_inputs.append(rng.choice(options))
        record["hard_gen_input"] = hard_inputs
        record["hard_gen_target"] = [second.obj for _, second, _ in self.compositions]
        record["paraphrases"] = self._paraphrases(rng, context)
        for inp, target in zip(record["mem_input"], record["mem_target"]):
            assert f"{inp} {target}" in context
        if extras:
            record["hard_gen_support"] = [
                [_fact_dict(f, verbalize(f, used[f])) for f in (first, second)]
                for first, second, _ in self.compositions]
            record["new_entities"] = list(self.new_entities)
            record["facts"] = [_fact_dict(f, verbalize(f, used[f])) for f in used]
        return record

    def _paraphrases(self, rng: random.Random, context: str) -> list[str]:
        seen, out = {context}, []
        for _ in range(1000):
            if len(out) == N_PARAPHRASES:
                return out
            text, _used = self._paragraph(rng)
            if text not in seen:
                seen.add(text)
                out.append(text)
        raise RuntimeError("could not make distinct paraphrases")


def _fact_dict(fact: Fact, sentence: str) -> dict[str, str]:
    return {"subject": fact.subject, "relation": fact.relation, "object": fact.obj,
            "sentence": sentence}


# ---------------------------------------------------------------- update simulation
class _Simulation:
    """The evolving world state behind `SyntheticWorld.updates` (one instance per call)."""

    def __init__(self, world: SyntheticWorld, rng: random.Random, names: _NameMaker) -> None:
        self.world, self.rng, self.names = world, rng, names
        self.state: dict[str, dict[str, str]] = {s: dict(r) for s, r in world._facts.items()}
        self.kind = {name: e.kind for name, e in world._entities.items()}
        self.birth_year = dict(world._birth_year)
        self.alive = [p for p, k in self.kind.items() if k == PERSON]
        self.awards = [names.word()[0] + rng.choice(T.AWARD_SUFFIXES) for _ in range(12)]

    def of_kind(self, kind: str) -> list[str]:
        return [n for n, k in self.kind.items() if k == kind]

    def period(self, year: int, n_updated: int, n_new_facts: int, n_new_entities: int,
               n_unchanged: int) -> dict[str, Any]:
        rng = self.rng
        changed: dict[tuple[str, str], str] = {}
        kinds: list[str] = []
        previous: list[str | None] = []

        def change(subject: str, relation: str, obj: str) -> None:
            old = self.state.get(subject, {}).get(relation)
            assert (subject, relation) not in changed and old != obj
            changed[(subject, relation)] = obj
            kinds.append("new" if old is None else "updated")
            previous.append(old)

        towns, orgs = self.of_kind(TOWN), self.of_kind(ORGANISATION)
        updaters = [(self._update_employer, 35), (self._update_residence, 25),
                    (self._update_occupation, 10), (self._update_director, 15),
                    (self._update_population, 15)]
        for _ in range(50 * n_updated):
            if len(changed) >= n_updated:
                break
            fn = rng.choices([u for u, _ in updaters], [w for _, w in updaters])[0]
            proposal = fn(towns, orgs)
            if proposal and (proposal[0], proposal[1]) not in changed:
                change(*proposal)
        n_before = len(changed)
        adders = [(self._add_death, 30), (self._add_award, 30), (self._add_marriage, 20),
                  (self._add_owner, 10), (self._add_twin, 10)]
        for _ in range(50 * n_new_facts):
            if len(changed) - n_before >= n_new_facts:
                break
            fn = rng.choices([a for a, _ in adders], [w for _, w in adders])[0]
            proposals = fn(year, towns, orgs, changed)
            for proposal in proposals:
                change(*proposal)
        new_subjects = []
        for _ in range(n_new_entities):
            as_person = rng.random() < 0.7 or len(self.alive) < 2  # an org needs two people
            subject, kind, facts = (self._new_person(year, towns, orgs) if as_person
                                    else self._new_org(year, towns))
            self.kind[subject] = kind
            new_subjects.append(subject)
            for relation, obj in facts:
                change(subject, relation, obj)
        for (s, r), o in changed.items():
            self.state.setdefault(s, {})[r] = o
            if r == T.DATE_OF_DEATH and s in self.alive:
                self.alive.remove(s)
        pool = [(s, r) for s, rels in self.state.items() for r in rels if (s, r) not in changed]
        keep = sorted(rng.sample(range(len(pool)), min(n_unchanged, len(pool))))
        return {"year": year,
                "changed": [Fact(s, r, o) for (s, r), o in changed.items()],
                "kind": kinds, "previous": previous,
                "unchanged": [Fact(*pool[i], self.state[pool[i][0]][pool[i][1]]) for i in keep],
                "new_subjects": new_subjects}

    # ---- updated facts: (subject, relation, new object) or None
    def _pick_other(self, options: list[str], current: str | None) -> str | None:
        options = [o for o in options if o != current]
        return self.rng.choice(options) if options else None

    def _update_employer(self, towns: list[str], orgs: list[str]) -> tuple[str, str, str] | None:
        if not self.alive:
            return None
        person = self.rng.choice(self.alive)
        new = self._pick_other(orgs, self.state[person].get(T.EMPLOYER))
        return (person, T.EMPLOYER, new) if new else None

    def _update_residence(self, towns: list[str], orgs: list[str]) -> tuple[str, str, str] | None:
        if not self.alive:
            return None
        person = self.rng.choice(self.alive)
        new = self._pick_other(towns, self.state[person].get(T.RESIDENCE))
        return (person, T.RESIDENCE, new) if new else None

    def _update_occupation(self, towns: list[str], orgs: list[str]) -> tuple[str, str, str] | None:
        if not self.alive:
            return None
        person = self.rng.choice(self.alive)
        new = self._pick_other(_ALL_OCCUPATIONS, self.state[person].get(T.OCCUPATION))
        return (person, T.OCCUPATION, new) if new else None

    def _update_director(self, towns: list[str], orgs: list[str]) -> tuple[str, str, str] | None:
        org = self.rng.choice(orgs)
        new = self._pick_other(self.alive, self.state[org].get(T.DIRECTOR))
        return (org, T.DIRECTOR, new) if new else None

    def _update_population(self, towns: list[str], orgs: list[str]) -> tuple[str, str, str] | None:
        town = self.rng.choice(towns)
        old = int(self.state[town][T.POPULATION])
        new = max(old + 100, int(round(old * self.rng.uniform(1.03, 1.25), -2)))
        return (town, T.POPULATION, str(new))

    # ---- new facts of existing entities: list of (subject, relation, object)
    def _free(self, subjects: list[str], relation: str,
              changed: dict[tuple[str, str], str]) -> list[str]:
        return [s for s in subjects
                if relation not in self.state[s] and (s, relation) not in changed]

    def _add_death(self, year: int, towns: list[str], orgs: list[str],
                   changed: dict[tuple[str, str], str]) -> list[tuple[str, str, str]]:
        old = [p for p in self._free(self.alive, T.DATE_OF_DEATH, changed)
               if self.birth_year[p] <= year - 55]
        if not old:
            return []
        person = self.rng.choice(old)
        home = self.state[person][T.RESIDENCE]
        place = home if self.rng.random() < 0.6 else self.rng.choice(towns)
        return [(person, T.PLACE_OF_DEATH, place),
                (person, T.DATE_OF_DEATH, _date(self.rng, year))]

    def _add_award(self, year: int, towns: list[str], orgs: list[str],
                   changed: dict[tuple[str, str], str]) -> list[tuple[str, str, str]]:
        free = self._free(self.alive, T.AWARD, changed)
        return [(self.rng.choice(free), T.AWARD, self.rng.choice(self.awards))] if free else []

    def _add_marriage(self, year: int, towns: list[str], orgs: list[str],
                      changed: dict[tuple[str, str], str]) -> list[tuple[str, str, str]]:
        free = self._free(self.alive, T.SPOUSE, changed)
        if len(free) < 2:
            return []
        a, b = self.rng.sample(free, 2)
        return [(a, T.SPOUSE, b), (b, T.SPOUSE, a)]

    def _add_owner(self, year: int, towns: list[str], orgs: list[str],
                   changed: dict[tuple[str, str], str]) -> list[tuple[str, str, str]]:
        banks = [o for o in orgs if self.state[o][T.INDUSTRY] == "banking"]
        owned = [o for o in self._free(orgs, T.OWNED_BY, changed) if o not in banks]
        if not banks or not owned:
            return []
        return [(self.rng.choice(owned), T.OWNED_BY, self.rng.choice(banks))]

    def _add_twin(self, year: int, towns: list[str], orgs: list[str],
                  changed: dict[tuple[str, str], str]) -> list[tuple[str, str, str]]:
        free = self._free(towns, T.TWINNED, changed)
        if len(free) < 2:
            return []
        a, b = self.rng.sample(free, 2)
        return [(a, T.TWINNED, b), (b, T.TWINNED, a)]

    # ---- brand-new entities: (name, entity kind, [(relation, object)])
    def _new_person(self, year: int, towns: list[str],
                    orgs: list[str]) -> tuple[str, str, list[tuple[str, str]]]:
        rng, state = self.rng, self.state
        name = self.world._person_name(self.names, rng)
        birth = rng.randint(1895, 1910)
        self.birth_year[name] = birth
        self.alive.append(name)
        birthplace, employer = rng.choice(towns), rng.choice(orgs)
        facts = [(T.DATE_OF_BIRTH, _date(rng, birth)), (T.PLACE_OF_BIRTH, birthplace),
                 (T.CITIZENSHIP, state[birthplace][T.COUNTRY]),
                 (T.OCCUPATION, rng.choice(T.INDUSTRIES[state[employer][T.INDUSTRY]][2])),
                 (T.EMPLOYER, employer), (T.RESIDENCE, rng.choice(towns))]
        return name, PERSON, facts

    def _new_org(self, year: int, towns: list[str]) -> tuple[str, str, list[tuple[str, str]]]:
        rng = self.rng
        industry = rng.choice([x for x in T.INDUSTRIES if x != T.COLLEGE_INDUSTRY])
        kind, suffixes, _jobs = T.INDUSTRIES[industry]
        name = f"{self.names.word()[0]} {rng.choice(suffixes)}"
        founder, director = rng.sample(self.alive, 2)
        return name, ORGANISATION, [(T.INSTANCE_OF, kind), (T.INCEPTION, str(year)),
                      (T.HEADQUARTERS, rng.choice(towns)), (T.FOUNDED_BY, founder),
                      (T.INDUSTRY, industry), (T.DIRECTOR, director)]

    def document(self, subject: str, rng: random.Random) -> str:
        """A paragraph stating all current facts of `subject` (random templates and order)."""
        facts = [Fact(subject, r, o) for r, o in self.state[subject].items()]
        rng.shuffle(facts)
        return _document(subject, [(f, rng.randrange(n_templates(f.relation))) for f in facts]).text


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


# ---------------------------------------------------------------- Fictional Knowledge schema
def validate_fictional_schema(records: Any, require_paraphrases: bool = True) -> None:
    """Check records against the Fictional Knowledge schema; raise `KdynError` on the first problem.

    Each record must be a dict with a non-empty str "train_context", lists of exactly 5 strings
    under `FICTIONAL_LIST_KEYS` (inputs non-empty; targets non-empty without surrounding
    whitespace) and, unless `require_paraphrases` is False (the unparaphrased release), a list of
    non-empty strings under "paraphrases" (possibly empty). Extra keys are allowed.
    """
    if not isinstance(records, (list, tuple)):
        raise KdynError(f"fictional-knowledge data must be a list of records, "
                        f"got {type(records).__name__}")
    for i, rec in enumerate(records):
        where = f"fictional-knowledge record {i}"
        if not isinstance(rec, dict):
            raise KdynError(f"{where}: must be a dict, got {type(rec).__name__}")
        required = FICTIONAL_KEYS if require_paraphrases else FICTIONAL_KEYS[:-1]
        missing = [k for k in required if k not in rec]
        if missing:
            hint = (" (for fictional_knowledge.json without paraphrases, pass "
                    "require_paraphrases=False)" if missing == ["paraphrases"] else "")
            raise KdynError(f"{where}: missing key(s) {missing}{hint}")
        context = rec["train_context"]
        if not isinstance(context, str) or not context.strip():
            raise KdynError(f"{where}: 'train_context' must be a non-empty string")
        for key in FICTIONAL_LIST_KEYS:
            val = rec[key]
            if not isinstance(val, list) or len(val) != N_PROBES:
                got = f"list of length {len(val)}" if isinstance(val, list) else type(val).__name__
                raise KdynError(f"{where}: '{key}' must be a list of {N_PROBES} strings, got {got}")
            for j, s in enumerate(val):
                if not isinstance(s, str):
                    raise KdynError(f"{where}: '{key}'[{j}] must be a string, "
                                    f"got {type(s).__name__}")
                if not s.strip():
                    raise KdynError(f"{where}: '{key}'[{j}] is empty")
                if key.endswith("_target") and s != s.strip():
                    raise KdynError(f"{where}: '{key}'[{j}] = {s!r} has surrounding whitespace")
        if "paraphrases" in rec:
            para = rec["paraphrases"]
            if not isinstance(para, list):
                raise KdynError(f"{where}: 'paraphrases' must be a list, got {type(para).__name__}")
            for j, s in enumerate(para):
                if not isinstance(s, str) or not s.strip():
                    raise KdynError(f"{where}: 'paraphrases'[{j}] must be a non-empty string")
