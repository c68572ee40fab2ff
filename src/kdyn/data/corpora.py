"""Corpora: where documents come from (``corpus=`` config group) — the facade every consumer calls.

Every corpus yields plain-text documents in a deterministic order; `packing` turns them into
``seq_len`` rows. Each corpus is a `kdyn.data.sources.base.Corpus` subclass — one module of
`kdyn.data.sources`, or any importable module — chosen by ``corpus._target_`` (``conf/corpus/*.yaml``),
or, for a node without one, the corpus class of module ``kdyn.data.sources.<corpus.name>``. Local files are
validated as they are read, so a bad path or a malformed line fails before training starts, with the line
number and what was expected.

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

(``corpus=pretraining``, already-tokenised files read in place, is served by `kdyn.data.pretraining`.)
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable, Iterator, Mapping
from itertools import islice
from typing import Any, Protocol

from hydra.utils import get_class

from kdyn.errors import KdynError

SOURCES = "kdyn.data.sources"
"""The package holding one module per shipped corpus (imported by name: the facade sits below it)."""


class CorpusReader(Protocol):
    """What a corpus object offers (`kdyn.data.sources.base.Corpus` implements it)."""

    def documents(self) -> Iterable[str]: ...

    def describe(self) -> str: ...


def corpus_kinds() -> tuple[str, ...]:
    """The corpora shipped in `kdyn.data.sources` (one module each)."""
    package = importlib.import_module(SOURCES)
    return tuple(sorted(m.name for m in pkgutil.iter_modules(package.__path__)
                        if not m.name.startswith("_") and m.name != "base"))


def _is_corpus_class(value: Any) -> bool:
    return isinstance(value, type) and issubclass(value, dict) and callable(getattr(value, "documents", None))


def corpus_class(corpus: Mapping[str, Any]) -> type:
    """The corpus class of a node: ``corpus._target_``, else the one defined in ``kdyn.data.sources.<corpus.name>``."""
    target = corpus.get("_target_")
    if target:
        try:
            cls = get_class(str(target))
        except Exception as e:  # Hydra: ImportError / ValueError, with a multi-line message
            raise KdynError(f"corpus._target_={target} cannot be imported ({str(e).splitlines()[0]}); name a "
                            f"Corpus class, e.g. kdyn.data.sources.text.TextCorpus") from None
        if not _is_corpus_class(cls):
            raise KdynError(f"corpus._target_={target} is not a corpus class; derive it from "
                            f"kdyn.data.sources.base.Corpus and implement documents()")
        return cls
    kind = corpus.get("name")
    if not isinstance(kind, str) or kind not in corpus_kinds():
        raise KdynError(f"unknown corpus {kind!r}; choose one of {', '.join(corpus_kinds())}, or set "
                        f"corpus._target_ to a Corpus class of your own module")
    module = importlib.import_module(f"{SOURCES}.{kind}")
    return next(v for v in vars(module).values() if _is_corpus_class(v) and v.__module__ == module.__name__)


def as_corpus(corpus: Mapping[str, Any]) -> CorpusReader:
    """The node as a corpus object (itself when it already is one, e.g. built by Hydra's instantiate)."""
    if callable(getattr(corpus, "documents", None)):
        return corpus  # type: ignore[return-value]
    return corpus_class(corpus)({k: v for k, v in corpus.items() if k != "_target_"})


def iter_documents(corpus: Mapping[str, Any]) -> Iterator[str]:
    """Documents of the corpus described by the ``corpus`` config node, in file order."""
    docs = iter(as_corpus(corpus).documents())
    limit = corpus.get("max_documents")
    return islice(docs, int(limit)) if limit else docs


def load_documents(corpus: Mapping[str, Any]) -> list[str]:
    """All documents of a finite corpus; raises a clear error when it holds none."""
    docs = list(iter_documents(corpus))
    if not docs:
        raise KdynError(f"corpus {describe(corpus)} holds no documents (is the file empty?)")
    return docs


def describe(corpus: Mapping[str, Any]) -> str:
    """The corpus in messages (its class's ``describe()``; ``corpus.name`` when it names no known corpus)."""
    try:
        return as_corpus(corpus).describe()
    except KdynError:
        return str(corpus.get("name"))
