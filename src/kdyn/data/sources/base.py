"""`Corpus`: a ``corpus`` config node that reads itself.

A corpus is a `dict` subclass holding its config keys (``name``, ``max_documents``, ``shuffle`` and its
own), so every consumer that reads the node as a mapping keeps working, whether the node arrives as a
plain dict (``to_plain(cfg.corpus)``) or was built by Hydra's ``instantiate`` (e.g. nested in a callback's
config through ``${corpus}``). A subclass implements `documents`; ``_target_`` always names its class, so
the node round-trips through YAML/JSON unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


class Corpus(dict):
    """One corpus: ``documents()`` yields its plain-text documents in a deterministic order."""

    def __init__(self, node: Mapping[str, Any] | None = None, /, **keys: Any) -> None:
        super().__init__(node or {}, **keys)
        self["_target_"] = f"{type(self).__module__}.{type(self).__qualname__}"

    def documents(self) -> Iterable[str]:
        """The documents, before ``max_documents`` is applied (`kdyn.data.corpora.iter_documents` does that)."""
        raise NotImplementedError(f"{type(self).__qualname__} does not define documents()")

    def describe(self) -> str:
        """The corpus in messages."""
        return str(self.get("name"))
