"""``corpus=synthetic``: the embedded fictional world's base text (the offline default), generated
deterministically from ``corpus.world`` (`kdyn.data.world.WorldConfig` fields)."""

from __future__ import annotations

from collections.abc import Iterator

from kdyn.data.sources.base import Corpus
from kdyn.data.world import SyntheticWorld, world_config


class SyntheticCorpus(Corpus):
    def documents(self) -> Iterator[str]:
        yield from SyntheticWorld(world_config(self.get("world"), key="corpus.world")).base_documents()
