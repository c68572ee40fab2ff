"""Invented names: pronounceable words from syllables, never repeated; random dates and populations."""

from __future__ import annotations

import random
import re
import zlib
from collections.abc import Sequence

import kdyn.data.world.templates as T
from kdyn.errors import KdynError

_AWKWARD = re.compile(r"[aeiou]{3}|[^aeiou]{4}|([a-z])\1")  # vowel or consonant pile-ups, doubles
_NAMESPACES = {"base": 0, "new_knowledge": 1, "updates": 2}
ALL_OCCUPATIONS = sorted({job for _k, _s, jobs in T.INDUSTRIES.values() for job in jobs})


class NameMaker:
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


def random_date(rng: random.Random, year: int) -> str:
    return f"{rng.randint(1, 28)} {rng.choice(T.MONTHS)} {year}"


def random_population(rng: random.Random) -> int:
    return int(round(800 * (150 ** rng.random()), -2))  # log-uniform in ~[800, 120000]
