"""Building one new-knowledge item (a Fictional Knowledge record) from facts about new entities."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import kdyn.data.world.templates as T
from kdyn.data.world.facts import Fact, n_templates, probe, verbalize
from kdyn.data.world.schema import N_PARAPHRASES, N_PROBES


@dataclass
class ItemBuilder:
    """Facts of one new-knowledge item and how to turn them into a Fictional Knowledge record."""

    world: Any  # the SyntheticWorld the item extends (its facts decide the compositions)
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
