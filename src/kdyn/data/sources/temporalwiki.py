"""``corpus=temporalwiki``: every period's training text, in period order (`kdyn.data.periods`; kdyn-train
serves the periods as separate segments)."""

from __future__ import annotations

from collections.abc import Iterator

from kdyn.data.periods import segment_documents
from kdyn.data.sources.base import Corpus


class TemporalWikiCorpus(Corpus):
    def documents(self) -> Iterator[str]:
        for _, docs in segment_documents(self):
            yield from docs
