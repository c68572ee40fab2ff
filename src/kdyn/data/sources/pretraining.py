"""``corpus=pretraining``: a checkpoint's own pretraining data, already tokenised and read in place
(Megatron/GPT-NeoX indexed datasets or OLMo numpy token files; the readers are in
`kdyn.data.pretraining`, whose import path stays). It has no text documents: the datamodule asks it
for its packed rows (``token_rows``) instead of tokenising ``documents()``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from kdyn.data.sources.base import Corpus
from kdyn.errors import KdynError


class PretrainingCorpus(Corpus):
    def token_rows(self, data: Mapping[str, Any]):
        """The instances as packed rows, in the original run's order (``kdyn.data.pretraining``)."""
        from kdyn.data.pretraining import open_pretraining_rows

        return open_pretraining_rows(self, data)

    def documents(self) -> Iterable[str]:
        raise KdynError("corpus=pretraining is already tokenised and read in place: it has no text documents "
                        "(and no token store to prepare)")
