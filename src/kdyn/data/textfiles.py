"""Reading local text corpora: a checked path, UTF-8 decoding with file:line:column errors, and the
documents of a ``.jsonl`` (one ``{"text": ...}`` object per line) or ``.txt`` file (per paragraph / line /
file). Used by ``corpus=text`` (`kdyn.data.sources.text`) and by TemporalWiki periods trained on files."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kdyn.errors import KdynError

TXT_SPLITS = ("paragraph", "line", "file")


def require_file(path: Any, key: str = "corpus.path") -> Path:
    """``path`` as an existing file, or a one-line error naming the config ``key``."""
    if not path:
        raise KdynError(f"{key} is not set: pass {key}=FILE (a .txt or .jsonl file)")
    p = Path(str(path)).expanduser()
    if not p.exists():
        raise KdynError(f"{key}={path} does not exist")
    if not p.is_file():
        raise KdynError(f"{key}={path} is not a file")
    return p


def jsonl_documents(path: Path, field: str) -> Iterator[str]:
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            line = utf8(raw, path, lineno)
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


def utf8(raw: bytes, path: Path, lineno: int = 1) -> str:
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


def txt_documents(path: Path, split: str) -> Iterator[str]:
    text = utf8(path.read_bytes(), path).replace("\r\n", "\n").replace("\r", "\n")  # universal newlines
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
