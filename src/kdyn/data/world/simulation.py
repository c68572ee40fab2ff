"""The evolving world state behind `SyntheticWorld.updates`: changed and unchanged facts per period."""

from __future__ import annotations

import random
from typing import Any

import kdyn.data.world.templates as T
from kdyn.data.world.facts import ORGANISATION, PERSON, TOWN, Fact, make_document, n_templates
from kdyn.data.world.names import ALL_OCCUPATIONS, NameMaker, random_date


class UpdateSimulation:
    """The evolving world state behind `SyntheticWorld.updates` (one instance per call)."""

    def __init__(self, world: Any, rng: random.Random, names: NameMaker) -> None:  # world: the SyntheticWorld
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
        new = self._pick_other(ALL_OCCUPATIONS, self.state[person].get(T.OCCUPATION))
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
                (person, T.DATE_OF_DEATH, random_date(self.rng, year))]

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
        facts = [(T.DATE_OF_BIRTH, random_date(rng, birth)), (T.PLACE_OF_BIRTH, birthplace),
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
        return make_document(subject, [(f, rng.randrange(n_templates(f.relation))) for f in facts]).text
