"""``corpus=text``: a local ``.txt`` (one document per paragraph / line / file) or ``.jsonl`` file (one
``{"text": ...}`` object per line). Files are validated as they are read: a malformed line fails with its
file, line (and column) and what was expected (`kdyn.data.textfiles`)."""

from __future__ import annotations

from collections.abc import Iterator

from kdyn.data.sources.base import Corpus
from kdyn.data.textfiles import jsonl_documents, require_file, txt_documents


class TextCorpus(Corpus):
    def documents(self) -> Iterator[str]:
        path = require_file(self.get("path"))
        if path.suffix == ".jsonl":
            yield from jsonl_documents(path, self.get("text_field", "text"))
        else:
            yield from txt_documents(path, self.get("txt_split", "paragraph"))

    def describe(self) -> str:
        return f"text ({self.get('path')})"
