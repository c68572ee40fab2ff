"""`SyntheticWorld`: entities, facts and the base text; new knowledge and updates built on it."""

from __future__ import annotations

import random
from typing import Any

import kdyn.data.world.templates as T
from kdyn.data.world.config import WorldConfig
from kdyn.data.world.facts import (
    COUNTRY,
    ORGANISATION,
    PERSON,
    REGION,
    TOWN,
    Document,
    Entity,
    Fact,
    make_document,
    n_templates,
    probe,
    verbalize,
)
from kdyn.data.world.items import ItemBuilder
from kdyn.data.world.names import ALL_OCCUPATIONS, NameMaker, random_date, random_population
from kdyn.data.world.simulation import UpdateSimulation
from kdyn.errors import KdynError

_BASE_YEAR = 1930  # the "present" of the old world; update period k happens in year 1930 + k


class SyntheticWorld:
    """The old world: entities, facts, and the base text stream (see the module docstring)."""

    def __init__(self, config: WorldConfig | None = None) -> None:
        self.config = config = WorldConfig() if config is None else config
        self._rng = random.Random(f"kdyn-world/{config.seed}")
        self._entities: dict[str, Entity] = {}
        self._facts: dict[str, dict[str, str]] = {}  # subject -> relation -> object
        self._birth_year: dict[str, int] = {}
        self._taken: set[str] = set()
        self._names = NameMaker(self._rng, "base", self._taken)
        self._corpus: list[Document] | None = None
        self._build()
        # new names must not occur inside any base name or template word (see NameMaker)
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
            raise RuntimeError(f"duplicate entity name {name!r}")  # NameMaker prevents this
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
            population[town] = random_population(rng)
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

    def _new_org(self, names: NameMaker, industry: str, inception: int, hq: str) -> str:
        """Invent and register an organisation (founder and director are set by the caller)."""
        kind, suffixes, _jobs = T.INDUSTRIES[industry]
        name = f"{names.word()[0]} {self._rng.choice(suffixes)}"
        self._add(name, ORGANISATION)
        self._set(name, T.INSTANCE_OF, kind)
        self._set(name, T.INCEPTION, inception)
        self._set(name, T.HEADQUARTERS, hq)
        self._set(name, T.INDUSTRY, industry)
        return name

    def _person_name(self, names: NameMaker, rng: random.Random) -> str:
        return f"{rng.choice(self._given)} {names.word(T.FAMILY_ENDINGS)[0]}"

    def _new_person(self, names: NameMaker, rng: random.Random, year: int, towns: list[str],
                    employers: list[str], colleges: list[str]) -> str:
        """Invent and register a person with the standard attributes (no spouse)."""
        name = self._person_name(names, rng)
        self._add(name, PERSON)
        self._birth_year[name] = year
        birthplace = rng.choice(towns)
        employer = rng.choice(employers)
        self._set(name, T.DATE_OF_BIRTH, random_date(rng, year))
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
                    docs.append(make_document(subject, chosen))
            rng.shuffle(docs)
            self._corpus = docs
        return list(self._corpus)

    def base_documents(self) -> list[str]:
        """The old-world text stream: one short paragraph per document, deterministic order."""
        return [d.text for d in self.base_corpus()]

    def _new_name_maker(self, rng: random.Random, namespace: str) -> NameMaker:
        return NameMaker(rng, namespace, set(self._taken), self._base_words)

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

    def _person_item(self, rng: random.Random, names: NameMaker) -> ItemBuilder:
        towns, orgs = self.names(TOWN), self.names(ORGANISATION)
        colleges = [o for o in orgs if self._facts[o][T.INDUSTRY] == T.COLLEGE_INDUSTRY]
        item = ItemBuilder(self)
        person = item.new(self._person_name(names, rng))
        birthplace = rng.choice(towns)
        employer = rng.choice(orgs)
        item.main(person, T.DATE_OF_BIRTH, random_date(rng, rng.randint(1850, 1905)))
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
                item.hidden(spouse, T.DATE_OF_BIRTH, random_date(rng, rng.randint(1850, 1905)))
                item.hidden(spouse, T.PLACE_OF_BIRTH, rng.choice(towns))
                item.hidden(spouse, T.OCCUPATION, rng.choice(ALL_OCCUPATIONS))
        item.choose_compositions(rng)
        return item

    def _org_item(self, rng: random.Random, names: NameMaker) -> ItemBuilder:
        towns, people = self.names(TOWN), self.names(PERSON)
        item = ItemBuilder(self)
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
        item.hidden(director, T.DATE_OF_BIRTH, random_date(rng, rng.randint(1850, 1905)))
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
        sim = UpdateSimulation(self, rng, self._new_name_maker(rng, "updates"))
        periods = []
        for k in range(1, n_periods + 1):
            period = sim.period(_BASE_YEAR + k, n_updated, n_new_facts, n_new_entities, n_unchanged)
            subjects = list(dict.fromkeys(f.subject for f in period["changed"]))
            period["documents"] = [sim.document(s, doc_rng) for s in subjects
                                   for _ in range(docs_per_subject)]
            period["name"] = f"p{k}"
            periods.append(period)
        return periods
