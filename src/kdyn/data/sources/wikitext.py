"""``corpus=wikitext``: WikiText, from a local folder of ``{train,valid,test}.txt`` (or ``wiki.*.raw``)
splits, else the hub dataset; lines are grouped into articles."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from kdyn.data.sources.base import Corpus
from kdyn.data.sources.hub import load_hub
from kdyn.errors import KdynError

WIKITEXT_FILES = {
    "train": ("train.txt", "wiki.train.raw", "wiki.train.tokens"),
    "validation": ("valid.txt", "wiki.valid.raw", "wiki.valid.tokens"),
    "test": ("test.txt", "wiki.test.raw", "wiki.test.tokens"),
}


class WikitextCorpus(Corpus):
    def documents(self) -> Iterator[str]:
        split = self.get("split", "validation")
        if split not in WIKITEXT_FILES:
            raise KdynError(f"unknown corpus.split {split!r} for wikitext; choose train, validation or test")
        if self.get("path"):
            yield from _local_articles(Path(str(self["path"])).expanduser(), self["path"], split)
            return
        lines = (row["text"] for row in load_hub(self.get("hub_dataset", "Salesforce/wikitext"),
                                                 self.get("hub_config", "wikitext-2-raw-v1"), split, streaming=False))
        yield from articles(lines)

    def describe(self) -> str:
        return f"wikitext ({self.get('path')})" if self.get("path") else "wikitext"


def _local_articles(folder: Path, given: Any, split: str) -> Iterator[str]:
    if not folder.is_dir():
        raise KdynError(f"corpus.path={given} is not a folder; give the folder holding WikiText's {WIKITEXT_FILES[split][0]}")
    for name in WIKITEXT_FILES[split]:
        if (folder / name).is_file():
            yield from articles((folder / name).read_text(encoding="utf-8").splitlines())
            return
    raise KdynError(f"no {split} split in {folder}: expected one of {', '.join(WIKITEXT_FILES[split])}")


def articles(lines: Iterable[str]) -> Iterator[str]:
    """Group WikiText lines into articles (a new article starts at a ``= Title =`` heading)."""
    article: list[str] = []
    for raw in lines:
        line = raw.strip()
        if not line:
            continue
        if line.startswith("= ") and line.endswith(" =") and not line.startswith("= ="):
            if article:
                yield "\n".join(article)
            article = [line.strip("= ").strip()]
        else:
            article.append(line)
    if article:
        yield "\n".join(article)
