"""Row tables: the packed training rows a `TrainingStream` serves, wherever they live.

A row table maps a row position to ``seq_len`` token ids. The training stream asks for the rows of
one micro-batch at a time, so a table backed by a memory map (a token store, a Megatron ``.bin``,
OLMo ``.npy`` files) never holds more than those rows in memory.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch


@runtime_checkable
class RowTable(Protocol):
    """``len(table)`` rows of ``table.seq_len`` token ids; ``table.rows(positions)`` → ``[n, seq_len]`` int64."""

    seq_len: int

    def __len__(self) -> int: ...

    def rows(self, positions: np.ndarray) -> torch.Tensor: ...


class TensorRows:
    """An in-memory ``[rows, seq_len]`` tensor as a row table (small corpora, tests)."""

    def __init__(self, tensor: torch.Tensor):
        if tensor.dim() != 2:
            raise ValueError(f"expected a [rows, seq_len] tensor, got shape {tuple(tensor.shape)}")
        self.tensor = tensor
        self.seq_len = int(tensor.shape[1])

    def __len__(self) -> int:
        return int(self.tensor.shape[0])

    def rows(self, positions: np.ndarray) -> torch.Tensor:
        index = torch.as_tensor(np.asarray(positions, dtype=np.int64))
        return self.tensor[index].to(torch.long)


class ConcatRows:
    """Several row tables of one ``seq_len`` one after another (e.g. the periods of a segmented corpus)."""

    def __init__(self, tables: list[RowTable]):
        if not tables:
            raise ValueError("ConcatRows needs at least one table")
        lengths = {int(t.seq_len) for t in tables}
        if len(lengths) != 1:
            raise ValueError(f"tables of different seq_len {sorted(lengths)} cannot be concatenated")
        self.tables = list(tables)
        self.seq_len = lengths.pop()
        self.starts = np.cumsum([0] + [len(t) for t in tables])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def rows(self, positions: np.ndarray) -> torch.Tensor:
        positions = np.asarray(positions, dtype=np.int64)
        which = np.searchsorted(self.starts, positions, side="right") - 1
        out = torch.empty((len(positions), self.seq_len), dtype=torch.long)
        for t in np.unique(which):
            mask = which == t
            out[torch.from_numpy(mask)] = self.tables[t].rows(positions[mask] - self.starts[t])
        return out


def as_row_table(rows) -> RowTable:
    """A row table as is; a ``[rows, seq_len]`` tensor wrapped in `TensorRows`."""
    return TensorRows(rows) if isinstance(rows, torch.Tensor) else rows
