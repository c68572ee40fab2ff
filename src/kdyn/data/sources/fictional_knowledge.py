"""``corpus=fictional_knowledge``: Chang et al.'s Fictional Knowledge dataset (a local folder / .json, or
the hub) as a text corpus: per record its ``train_context`` paragraph, its paraphrases, or both. (The
injected knowledge itself is ``inject.source``, see `kdyn.data.knowledge`.)"""

from __future__ import annotations

from collections.abc import Iterator

from kdyn.data.knowledge import knowledge_records
from kdyn.data.sources.base import Corpus
from kdyn.errors import KdynError

FK_TEXTS = ("train_context", "paraphrases", "both")


class FictionalKnowledgeCorpus(Corpus):
    def documents(self) -> Iterator[str]:
        """Per record of ``corpus.items`` (validated schema): its ``train_context`` paragraph, its
        paraphrases, or both (the paragraph first), in record order."""
        return _documents(self)

    def describe(self) -> str:
        return f"fictional_knowledge ({self.get('path') or self.get('hub_dataset')})"


def _documents(corpus: Corpus) -> Iterator[str]:
    texts = corpus.get("texts", "train_context")
    if texts not in FK_TEXTS:
        raise KdynError(f"unknown corpus.texts {texts!r} for fictional_knowledge; choose one of {', '.join(FK_TEXTS)}")
    source = {"name": "fictional_knowledge", "path": corpus.get("path"),
              "hub_dataset": corpus.get("hub_dataset"), "items": corpus.get("items")}
    records = knowledge_records(source, key="corpus")
    if texts == "paraphrases" and not any(rec["paraphrases"] for rec in records):
        raise KdynError("corpus.texts=paraphrases, but these Fictional Knowledge records have no paraphrases; "
                        "use the dataset's fictional_knowledge_paraphrased.json or corpus.texts=train_context")
    for rec in records:
        if texts in ("train_context", "both"):
            yield rec["train_context"]
        if texts in ("paraphrases", "both"):
            yield from rec["paraphrases"]

