"""Corpora: where documents come from (``corpus=`` config group).

Every corpus yields plain-text documents in a deterministic order; `packing` turns them into
``seq_len`` rows. Local files are validated up front so a bad path or a malformed line fails
before training starts, with the line number and what was expected.

==============  ==============================================================================
``synthetic``   the embedded fictional world's base text (offline default)
``text``        a local ``.txt`` (one document per paragraph / line / file) or ``.jsonl``
                (one ``{"text": ...}`` object per line)
``wikitext``    WikiText (hub ``Salesforce/wikitext``, or a local folder of ``*.txt`` splits)
``hub``         any Hugging Face dataset (streaming for Dolma/PubMed-sized data)
``temporalwiki`` TWiki-Probes or synthetic update periods, verbalised (`kdyn.data.periods`)
``fictional_knowledge`` Chang et al.'s Fictional Knowledge dataset (local folder / .json, or the hub):
                its paragraphs and/or paraphrases as documents (the injected knowledge itself is
                ``inject.source``, see `kdyn.data.knowledge`)
==============  ==============================================================================
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from itertools import islice
from pathlib import Path
from typing import Any

from kdyn.errors import KdynError

CORPUS_KINDS = ("synthetic", "text", "wikitext", "hub", "temporalwiki", "fictional_knowledge")
FK_TEXTS = ("train_context", "paraphrases", "both")


def iter_documents(corpus: Mapping[str, Any]) -> Iterator[str]:
    """Documents of the corpus described by the ``corpus`` config node, in file order."""
    kind = corpus.get("name")
    if kind not in CORPUS_KINDS:
        raise KdynError(f"unknown corpus {kind!r}; choose one of {', '.join(CORPUS_KINDS)}")
    docs = {
        "synthetic": _synthetic_documents,
        "text": _text_documents,
        "wikitext": _wikitext_documents,
        "hub": _hub_documents,
        "temporalwiki": _period_documents,
        "fictional_knowledge": _fictional_knowledge_documents,
    }[kind](corpus)
    limit = corpus.get("max_documents")
    return islice(docs, int(limit)) if limit else docs


def load_documents(corpus: Mapping[str, Any]) -> list[str]:
    """All documents of a finite corpus; raises a clear error when it holds none."""
    docs = list(iter_documents(corpus))
    if not docs:
        raise KdynError(f"corpus {describe(corpus)} holds no documents (is the file empty?)")
    return docs


def describe(corpus: Mapping[str, Any]) -> str:
    kind = corpus.get("name")
    if kind == "text" or (kind == "wikitext" and corpus.get("path")):
        return f"{kind} ({corpus.get('path')})"
    if kind == "hub":
        return f"hub ({corpus.get('dataset')})"
    if kind == "fictional_knowledge":
        return f"fictional_knowledge ({corpus.get('path') or corpus.get('hub_dataset')})"
    return str(kind)


# ----------------------------------------------------------------------------------- synthetic
def _synthetic_documents(corpus: Mapping[str, Any]) -> Iterator[str]:
    from kdyn.data.world import SyntheticWorld

    world = SyntheticWorld(world_config(corpus))
    yield from world.base_documents()


def world_config(corpus: Mapping[str, Any]):
    """The `WorldConfig` of a ``corpus=synthetic`` node (``corpus.world.*``)."""
    from kdyn.data.world import WorldConfig

    values = dict(corpus.get("world") or {})
    known = set(WorldConfig.__dataclass_fields__)
    unknown = sorted(set(values) - known)
    if unknown:
        raise KdynError(f"unknown corpus.world keys {unknown}; valid keys are {sorted(known)}")
    return WorldConfig(**values)


# ----------------------------------------------------------------------------------- local text
def _require_file(path: Any, key: str = "corpus.path") -> Path:
    if not path:
        raise KdynError(f"{key} is not set: pass {key}=FILE (a .txt or .jsonl file)")
    p = Path(str(path)).expanduser()
    if not p.exists():
        raise KdynError(f"{key}={path} does not exist")
    if not p.is_file():
        raise KdynError(f"{key}={path} is not a file")
    return p


def _text_documents(corpus: Mapping[str, Any]) -> Iterator[str]:
    path = _require_file(corpus.get("path"))
    if path.suffix == ".jsonl":
        yield from _jsonl_documents(path, corpus.get("text_field", "text"))
    else:
        yield from _txt_documents(path, corpus.get("txt_split", "paragraph"))


def _jsonl_documents(path: Path, field: str) -> Iterator[str]:
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            line = _utf8(raw, path, lineno)
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise KdynError(f"{path}:{lineno}: not valid JSON ({e.msg}); expected one {{\"{field}\": ...}} object per line") from None
            if not isinstance(record, dict) or field not in record:
                keys = sorted(record) if isinstance(record, dict) else type(record).__name__
                raise KdynError(
                    f"{path}:{lineno}: no {field!r} field (found {keys}); every line must be a JSON object "
                    f"with a {field!r} string, or set corpus.text_field to the field that holds the text"
                )
            text = record[field]
            if not isinstance(text, str):
                raise KdynError(f"{path}:{lineno}: field {field!r} is a {type(text).__name__}, expected a string")
            if text.strip():
                yield text


def _utf8(raw: bytes, path: Path, lineno: int = 1) -> str:
    """Decode one line (or a whole file) of a corpus; bad bytes are one line naming file, line and column."""
    if b"\x00" in raw:
        line = lineno + raw[:raw.index(b"\x00")].count(b"\n")
        raise KdynError(f"{path}:{line}: holds NUL bytes — a binary file, not a text corpus; corpus.path must be "
                        "a UTF-8 .jsonl or text file")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = lineno + raw[:e.start].count(b"\n")
        column = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise KdynError(f"{path}:{line}:{column}: byte 0x{raw[e.start]:02x} is not UTF-8 text; corpora are read as "
                        "UTF-8: convert the file (e.g. iconv -f latin1 -t utf-8) or fix that line") from None


def _txt_documents(path: Path, split: str) -> Iterator[str]:
    text = _utf8(path.read_bytes(), path).replace("\r\n", "\n").replace("\r", "\n")  # universal newlines
    if split == "file":
        if text.strip():
            yield text
    elif split == "line":
        yield from (line.strip() for line in text.splitlines() if line.strip())
    elif split == "paragraph":
        block: list[str] = []
        for line in text.splitlines():
            if line.strip():
                block.append(line.strip())
            elif block:
                yield "\n".join(block)
                block = []
        if block:
            yield "\n".join(block)
    else:
        raise KdynError(f"unknown corpus.txt_split {split!r}; choose paragraph, line or file")


# ----------------------------------------------------------------------------------- wikitext
_WIKITEXT_FILES = {
    "train": ("train.txt", "wiki.train.raw", "wiki.train.tokens"),
    "validation": ("valid.txt", "wiki.valid.raw", "wiki.valid.tokens"),
    "test": ("test.txt", "wiki.test.raw", "wiki.test.tokens"),
}


def _wikitext_documents(corpus: Mapping[str, Any]) -> Iterator[str]:
    split = corpus.get("split", "validation")
    if split not in _WIKITEXT_FILES:
        raise KdynError(f"unknown corpus.split {split!r} for wikitext; choose train, validation or test")
    if corpus.get("path"):
        folder = Path(str(corpus["path"])).expanduser()
        if not folder.is_dir():
            raise KdynError(f"corpus.path={corpus['path']} is not a folder; give the folder holding WikiText's {_WIKITEXT_FILES[split][0]}")
        for name in _WIKITEXT_FILES[split]:
            if (folder / name).is_file():
                yield from _wikitext_articles((folder / name).read_text(encoding="utf-8").splitlines())
                return
        raise KdynError(f"no {split} split in {folder}: expected one of {', '.join(_WIKITEXT_FILES[split])}")
        return
    lines = (row["text"] for row in _load_hub(corpus.get("hub_dataset", "Salesforce/wikitext"),
                                              corpus.get("hub_config", "wikitext-2-raw-v1"), split, streaming=False))
    yield from _wikitext_articles(lines)


def _wikitext_articles(lines) -> Iterator[str]:
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


# ----------------------------------------------------------------------------------- periods
def _period_documents(corpus: Mapping[str, Any]) -> Iterator[str]:
    """Every period's training text, in period order (kdyn-train serves them as separate segments)."""
    from kdyn.data.periods import segment_documents

    for _, docs in segment_documents(corpus):
        yield from docs


# ----------------------------------------------------------------------------------- fictional knowledge
def _fictional_knowledge_documents(corpus: Mapping[str, Any]) -> Iterator[str]:
    """Per record of ``corpus.items`` (validated schema): its ``train_context`` paragraph, its
    paraphrases, or both (the paragraph first), in record order."""
    from kdyn.data.knowledge import knowledge_records

    texts = corpus.get("texts", "train_context")
    if texts not in FK_TEXTS:
        raise KdynError(f"unknown corpus.texts {texts!r} for fictional_knowledge; choose one of {', '.join(FK_TEXTS)}")
    source = {"name": "fictional_knowledge", "path": corpus.get("path"),
              "hub_dataset": corpus.get("hub_dataset"), "items": corpus.get("items")}
    try:
        records = knowledge_records(source)
    except KdynError as e:
        raise KdynError(str(e).replace("inject.source", "corpus")) from None
    if texts == "paraphrases" and not any(rec["paraphrases"] for rec in records):
        raise KdynError("corpus.texts=paraphrases, but these Fictional Knowledge records have no paraphrases; "
                        "use the dataset's fictional_knowledge_paraphrased.json or corpus.texts=train_context")
    for rec in records:
        if texts in ("train_context", "both"):
            yield rec["train_context"]
        if texts in ("paraphrases", "both"):
            yield from rec["paraphrases"]


# ----------------------------------------------------------------------------------- hub
def _hub_documents(corpus: Mapping[str, Any]) -> Iterator[str]:
    return hub_texts(hub_dataset(corpus), corpus)


def hub_dataset(corpus: Mapping[str, Any]):
    """The ``datasets`` dataset of a ``corpus=hub`` node (an `IterableDataset` when streamed)."""
    name = corpus.get("dataset")
    if not name:
        raise KdynError("corpus=hub needs corpus.dataset=ORG/NAME (a Hugging Face dataset) or a local datasets folder")
    return _load_hub(name, corpus.get("subset"), corpus.get("split", "train"), streaming=bool(corpus.get("streaming", True)))


def hub_texts(rows, corpus: Mapping[str, Any]) -> Iterator[str]:
    """The non-empty ``corpus.text_field`` strings of a hub dataset's rows, in order."""
    name, field = corpus.get("dataset"), corpus.get("text_field", "text")
    for i, row in enumerate(rows):
        if field not in row:
            raise KdynError(f"dataset {name}: row {i} has no {field!r} field (found {sorted(row)}); set corpus.text_field")
        text = row[field]
        if isinstance(text, str) and text.strip():
            yield text


def _load_hub(name: str, subset: str | None, split: str, streaming: bool):
    import datasets

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
