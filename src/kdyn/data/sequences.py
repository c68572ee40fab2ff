"""Fixed measurement sets: the first N documents as right-padded batches, or packed full rows."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from kdyn.data.packing import pack_rows
from kdyn.errors import KdynError


def document_batches(documents: Sequence[str], tokenizer, *, num_sequences: int, seq_len: int, batch_size: int,
                     sort_by_length: bool = True, key: str = "entropy") -> list[dict[str, torch.Tensor]]:
    """The first ``num_sequences`` documents, each ``tokenizer(text, truncation=True, max_length=seq_len)``,
    in right-padded batches (padding masked out). Length-sorting only changes which documents share a
    batch (less padding), never which documents are measured."""
    _check_count(len(documents), num_sequences, key, "documents")
    encoded = [tokenizer(text, truncation=True, max_length=seq_len)["input_ids"] for text in documents[:num_sequences]]
    encoded = [ids for ids in encoded if ids]
    if not encoded:
        raise KdynError("every selected document tokenises to nothing; the corpus has no text to measure")
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i])) if sort_by_length else list(range(len(encoded)))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    batches = []
    for start in range(0, len(order), batch_size):
        chunk = [encoded[i] for i in order[start:start + batch_size]]
        width = max(len(ids) for ids in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, seq in enumerate(chunk):
            ids[row, :len(seq)] = torch.tensor(seq)
            mask[row, :len(seq)] = 1
        batches.append({"input_ids": ids, "attention_mask": mask})
    return batches


def packed_batches(documents: Sequence[str], tokenizer, *, num_sequences: int, seq_len: int, batch_size: int,
                   key: str = "entropy") -> list[dict[str, torch.Tensor]]:
    """``num_sequences`` full rows of ``seq_len`` tokens, packed from the documents in order."""
    rows = pack_rows(documents, tokenizer, seq_len, max_rows=num_sequences)
    _check_count(rows.shape[0], num_sequences, key, f"packed rows of {seq_len} tokens")
    return [{"input_ids": chunk, "attention_mask": torch.ones_like(chunk)} for chunk in rows.split(batch_size)]


def _check_count(available: int, wanted: int, key: str, what: str) -> None:
    if available == 0:
        raise KdynError(f"the corpus is empty: it holds no {what}")
    if wanted > available:
        raise KdynError(f"{key}.num_sequences={wanted} but the corpus holds only {available} {what}; "
                        f"lower {key}.num_sequences to at most {available} or use a larger corpus")
    if wanted < 1:
        raise KdynError(f"{key}.num_sequences must be at least 1, got {wanted}")
