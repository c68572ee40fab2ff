"""Tokenise documents and pack them into fixed-length rows, like pretraining data.

Documents are joined with the tokenizer's EOS token and cut into ``seq_len`` rows; the incomplete
tail is dropped. Rows therefore carry no padding (their attention mask is all ones).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from kdyn.errors import KdynError

_TOKENIZE_CHUNK = 512  # documents tokenised per call to the fast tokenizer


def iter_token_chunks(documents: Iterable[str], tokenizer, add_eos: bool = True) -> Iterator[list[int]]:
    """Token ids of each document (plus EOS), tokenised in chunks for speed."""
    eos = tokenizer.eos_token_id
    if add_eos and eos is None:
        raise KdynError("the tokenizer has no EOS token to separate packed documents")
    chunk: list[str] = []
    for doc in documents:
        chunk.append(doc)
        if len(chunk) == _TOKENIZE_CHUNK:
            yield from _encode(chunk, tokenizer, eos if add_eos else None)
            chunk = []
    if chunk:
        yield from _encode(chunk, tokenizer, eos if add_eos else None)


def _encode(docs: list[str], tokenizer, eos: int | None) -> Iterator[list[int]]:
    for ids in tokenizer(docs, add_special_tokens=False)["input_ids"]:
        yield ids + [eos] if eos is not None else ids


def pack_rows(documents: Iterable[str], tokenizer, seq_len: int, max_rows: int | None = None) -> torch.Tensor:
    """A ``[rows, seq_len]`` LongTensor of packed token ids."""
    if seq_len < 2:
        raise KdynError(f"seq_len must be at least 2, got {seq_len}")
    rows: list[list[int]] = []
    buffer: list[int] = []
    for ids in iter_token_chunks(documents, tokenizer):
        buffer.extend(ids)
        while len(buffer) >= seq_len:
            rows.append(buffer[:seq_len])
            buffer = buffer[seq_len:]
            if max_rows is not None and len(rows) >= max_rows:
                return torch.tensor(rows, dtype=torch.long)
    if not rows:
        raise KdynError(
            f"the corpus has fewer than seq_len={seq_len} tokens ({len(buffer)}); use a larger corpus or a smaller data.seq_len"
        )
    return torch.tensor(rows, dtype=torch.long)


def iter_packed_rows(documents: Iterable[str], tokenizer, seq_len: int) -> Iterator[list[int]]:
    """Streaming variant of `pack_rows` for corpora too large to hold in memory."""
    buffer: list[int] = []
    for ids in iter_token_chunks(documents, tokenizer):
        buffer.extend(ids)
        while len(buffer) >= seq_len:
            yield buffer[:seq_len]
            buffer = buffer[seq_len:]
