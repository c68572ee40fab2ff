"""``corpus=hub``: any Hugging Face dataset (or a local ``datasets`` folder), streamed by default for
Dolma/PubMed-sized data."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from kdyn.data.sources.base import Corpus
from kdyn.errors import KdynError


class HubCorpus(Corpus):
    def documents(self) -> Iterator[str]:
        return hub_texts(hub_dataset(self), self)

    def describe(self) -> str:
        return f"hub ({self.get('dataset')})"


def hub_dataset(corpus: Mapping[str, Any]):
    """The ``datasets`` dataset of a ``corpus=hub`` node (an `IterableDataset` when streamed)."""
    name = corpus.get("dataset")
    if not name:
        raise KdynError("corpus=hub needs corpus.dataset=ORG/NAME (a Hugging Face dataset) or a local datasets folder")
    return load_hub(name, corpus.get("subset"), corpus.get("split", "train"), streaming=bool(corpus.get("streaming", True)))


def hub_texts(rows, corpus: Mapping[str, Any]) -> Iterator[str]:
    """The non-empty ``corpus.text_field`` strings of a hub dataset's rows, in order."""
    name, field = corpus.get("dataset"), corpus.get("text_field", "text")
    for i, row in enumerate(rows):
        if field not in row:
            raise KdynError(f"dataset {name}: row {i} has no {field!r} field (found {sorted(row)}); set corpus.text_field")
        text = row[field]
        if isinstance(text, str) and text.strip():
            yield text


def load_hub(name: str, subset: str | None, split: str, streaming: bool):
    """A split of a hub dataset or of a local ``datasets`` folder; failures are one line suggesting a local copy."""
    import datasets  # heavy, and only these corpora need it

    try:
        if Path(name).expanduser().is_dir():
            ds = datasets.load_from_disk(str(Path(name).expanduser()))
            return ds[split] if isinstance(ds, datasets.DatasetDict) else ds
        return datasets.load_dataset(name, subset, split=split, streaming=streaming)
    except (FileNotFoundError, ConnectionError, ValueError, OSError) as e:
        raise KdynError(
            f"cannot load dataset {name!r} (subset={subset}, split={split}): {str(e).splitlines()[0]}. "
            "Offline? Pass a local copy with corpus.path=... (corpus=text or corpus=wikitext)."
        ) from None
