"""The training stream: a corpus packed into ``seq_len`` rows, served as batches indexed by step.

The batch of optimizer step ``s`` is a pure function of ``s`` (and the seed): global batch ``s``
holds the packed rows at stream positions ``s·G … s·G+G−1`` (``G`` = ``data.batch_size`` ×
devices × gradient-accumulation steps), in corpus order or in a seeded per-epoch permutation. So

* a resumed run continues exactly where it stopped (the loader starts at the restored step);
* injections (issue: knowledge injection) are transforms keyed by step and global row;
* under DDP each rank takes its own slice of the global batch — no sampler is involved.

Rows are served by a `RowTable` (`kdyn.data.rows`): a token store's memory map (`kdyn.data.store`),
pretraining files read in place, or an in-memory tensor. The stream asks the table for the rows of
one micro-batch at a time, so memory does not grow with the corpus and resuming at step N is a seek.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from itertools import islice
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from kdyn.data import corpora
from kdyn.data.packing import pack_rows
from kdyn.data.rows import ConcatRows, RowTable, TensorRows, as_row_table
from kdyn.data.sources import hub
from kdyn.errors import KdynError

# transform(batch, step, global_rows) -> batch; global_rows are the rows' positions in the global batch.
BatchTransform = Callable[[dict, int, torch.Tensor], dict]
ENCODE_CHUNK = 512  # documents of a streamed corpus tokenised at a time


@dataclass
class Segment:
    """A stretch of the run trained on its own rows (e.g. one TemporalWiki period)."""

    name: str
    rows: RowTable  # (a [rows, seq_len] tensor is wrapped in TensorRows)
    start_step: int
    num_steps: int

    def __post_init__(self):
        self.rows = as_row_table(self.rows)

    @property
    def end_step(self) -> int:
        return self.start_step + self.num_steps


class TrainingStream(Dataset):
    """Micro-batch ``k`` → this rank's batch (``step = k // accumulate``).

    With ``segments`` the run is a sequence of stretches, each serving (and wrapping over) its own
    rows; otherwise one segment of ``rows`` (a `RowTable` or a ``[rows, seq_len]`` tensor) covers
    every step. The rows' length is the table's ``seq_len`` (it may differ from ``data.seq_len``,
    e.g. Pythia's 2,049-token instances).
    """

    def __init__(self, rows: RowTable | torch.Tensor | None, batch_size: int, *, world_size: int = 1, rank: int = 0,
                 accumulate: int = 1, shuffle: bool = False, seed: int = 0,
                 transforms: list[BatchTransform] | None = None, start_step: int = 0, num_steps: int = 0,
                 segments: list[Segment] | None = None):
        self.segments = segments or [Segment("all", rows, 0, 1 << 62)]
        self.batch_size = batch_size
        self.world_size, self.rank, self.accumulate = world_size, rank, accumulate
        self.shuffle, self.seed = shuffle, seed
        self.transforms = list(transforms or [])
        self.start_step, self.num_steps = start_step, num_steps
        self._perm_key, self._perm = None, None

    @property
    def rows(self) -> RowTable:
        return self.segments[0].rows

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size * self.accumulate

    def __len__(self) -> int:
        return max(0, self.num_steps - self.start_step) * self.accumulate

    def __getitem__(self, k: int) -> dict[str, Any]:
        micro_index = self.start_step * self.accumulate + k
        step, micro = divmod(micro_index, self.accumulate)
        global_rows = (micro * self.world_size + self.rank) * self.batch_size + torch.arange(self.batch_size)
        ids = self.rows_for(step, global_rows)
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "step": torch.tensor(step)}
        for transform in self.transforms:
            batch = transform(batch, step, global_rows)
        return batch

    def segment_of(self, step: int) -> tuple[int, Segment]:
        for index, segment in enumerate(self.segments):
            if segment.start_step <= step < segment.end_step:
                return index, segment
        raise IndexError(f"step {step} is past the last segment (ends at {self.segments[-1].end_step})")

    def rows_for(self, step: int, global_rows: torch.Tensor) -> torch.Tensor:
        """The packed rows of ``global_rows`` of the global batch of ``step``."""
        index, segment = self.segment_of(step)
        positions = (step - segment.start_step) * self.global_batch_size + global_rows
        return self._rows_at(index, segment.rows, positions)

    def rows_at(self, positions: torch.Tensor) -> torch.Tensor:
        """Packed rows at absolute positions of the first segment's stream (wrapping into epochs)."""
        return self._rows_at(0, self.segments[0].rows, positions)

    def _rows_at(self, index: int, table: RowTable, positions: torch.Tensor) -> torch.Tensor:
        n = len(table)
        epochs, offsets = np.divmod(np.asarray(positions, dtype=np.int64), n)
        if self.shuffle:
            shuffled = np.empty_like(offsets)
            for epoch in np.unique(epochs).tolist():
                here = epochs == epoch
                shuffled[here] = self._order(index, epoch, n)[offsets[here]]
            offsets = shuffled
        return table.rows(offsets)

    def _order(self, index: int, epoch: int, n: int) -> np.ndarray:
        if (index, epoch) != self._perm_key:
            gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch + 7919 * index)
            self._perm, self._perm_key = torch.randperm(n, generator=gen).numpy(), (index, epoch)
        return self._perm


class StepOrderedStream(IterableDataset):
    """Serves a `TrainingStream` in step order as an iterable.

    Lightning restarts a *sized* loader from its first item when it resumes mid-epoch (and may start
    a new epoch after the restored batch count); an iterable of unknown length has no epochs, so a
    resumed run simply continues from the step the loader was created at (the restored global
    step). With several workers each takes every n-th micro-batch; the DataLoader interleaves them
    back in order.
    """

    def __init__(self, stream: TrainingStream):
        self.stream = stream

    def __iter__(self):
        worker = get_worker_info()
        workers, wid = (worker.num_workers, worker.id) if worker else (1, 0)
        for k in range(wid, len(self.stream), workers):
            yield self.stream[k]


class StreamingTrainingStream(IterableDataset):
    """The same contract for streamed hub corpora (no store): rows in stream order.

    Resuming does not re-read the stream: after each micro-batch the stream records where the next
    one starts — the ``datasets`` iterator's own ``state_dict()`` at the start of the tokenised chunk
    that holds it, and the token offset into that chunk — and `resume_state` hands that back for the
    checkpoint. Given one (``resume``), a new stream loads it into the dataset and skips only those
    tokens. Without one (or for a dataset that cannot report its state) it falls back to skipping
    the rows before the start step.
    """

    def __init__(self, corpus: Mapping[str, Any], tokenizer, seq_len: int, batch_size: int, *, world_size: int = 1,
                 rank: int = 0, accumulate: int = 1, transforms: list[BatchTransform] | None = None,
                 start_step: int = 0, num_steps: int = 0, resume: dict | None = None):
        self.corpus, self.tokenizer, self.seq_len, self.batch_size = dict(corpus), tokenizer, seq_len, batch_size
        self.world_size, self.rank, self.accumulate = world_size, rank, accumulate
        self.transforms = list(transforms or [])
        self.start_step, self.num_steps = start_step, num_steps
        self.resume = resume if resume and resume.get("micro_index") == start_step * accumulate else None
        self._positions: dict[int, dict] = {}  # micro index -> where its first row starts (recent ones)

    def resume_state(self, step: int) -> dict | None:
        """Where the first micro-batch of ``step`` starts (recorded once the micro-batch before it was
        served; None otherwise)."""
        return self._positions.get(step * self.accumulate)

    def _dataset(self):
        import datasets

        ds = hub.hub_dataset(self.corpus)
        if isinstance(ds, datasets.Dataset):  # a local datasets folder: iterable, hence resumable, too
            ds = ds.to_iterable_dataset()
        return ds

    def _chunks(self, ds, docs_before: int):
        """(dataset state before the chunk, documents before it, its tokens) per chunk of documents."""
        from kdyn.data.packing import iter_token_chunks

        limit = self.corpus.get("max_documents")
        texts = hub.hub_texts(ds, self.corpus)
        while True:
            state = ds.state_dict() if hasattr(ds, "state_dict") else None
            take = ENCODE_CHUNK if not limit else min(ENCODE_CHUNK, int(limit) - docs_before)
            docs = [] if take <= 0 else list(islice(texts, take))
            if not docs:
                return
            tokens = [t for ids in iter_token_chunks(docs, self.tokenizer) for t in ids]
            yield state, docs_before, tokens
            docs_before += len(docs)

    def _rows(self):
        """(row, where the next row starts) in stream order, from the resume point if any."""
        ds = self._dataset()
        docs_before, skip = 0, 0
        if self.resume is not None and hasattr(ds, "load_state_dict"):
            ds.load_state_dict(self.resume["dataset"])
            docs_before, skip = int(self.resume["documents_before"]), int(self.resume["skip_tokens"])
        pending: list[int] = []  # tokens not yet served are pending[head:]
        head = 0
        anchors: list[tuple[Any, int, int]] = []  # (state, documents before, tokens) of chunks still pending
        offset = 0  # pending[head] is token `offset` of anchors[0]'s chunk
        for state, before, tokens in self._chunks(ds, docs_before):
            anchors.append((state, before, len(tokens)))
            pending, head = pending[head:] + tokens, 0
            if skip:  # resuming: the tokens before the restored row were served before the checkpoint
                cut = min(skip, len(pending))
                head, offset, skip = cut, offset + cut, skip - cut
            while len(pending) - head >= self.seq_len:
                while offset >= anchors[0][2]:  # the first pending token lies in a later chunk
                    offset -= anchors.pop(0)[2]
                state0, before0, _ = anchors[0]
                # where the row after this one starts (relative to the same chunk: it may lie beyond it)
                yield pending[head:head + self.seq_len], {"dataset": state0, "documents_before": before0,
                                                          "skip_tokens": offset + self.seq_len}
                head, offset = head + self.seq_len, offset + self.seq_len
            while anchors and offset >= anchors[0][2]:
                offset -= anchors.pop(0)[2]

    def __iter__(self):
        per_micro = self.batch_size * self.world_size
        resumed = self.resume is not None
        skip = 0 if resumed else self.start_step * self.accumulate * per_micro
        micro_index, buffer = self.start_step * self.accumulate, []
        for pos, (row, after) in enumerate(self._rows()):
            if pos < skip:
                continue
            buffer.append(row)
            if len(buffer) < per_micro:
                continue
            step = micro_index // self.accumulate
            if step >= self.num_steps:
                return
            self._positions[micro_index + 1] = {**after, "micro_index": micro_index + 1}
            for old in [k for k in self._positions if k < micro_index - 8 * self.accumulate]:
                del self._positions[old]
            micro = micro_index % self.accumulate
            local = buffer[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
            ids = torch.tensor(local, dtype=torch.long)
            global_rows = (micro * self.world_size + self.rank) * self.batch_size + torch.arange(self.batch_size)
            batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "step": torch.tensor(step)}
            for transform in self.transforms:
                batch = transform(batch, step, global_rows)
            yield batch
            buffer, micro_index = [], micro_index + 1


class CorpusDataModule(pl.LightningDataModule):
    """``corpus`` and ``data`` config nodes → the training stream.

    ``corpus.shuffle=false`` (the default) serves rows in corpus order, as the papers train; with
    ``true`` each epoch is a seeded permutation (``seed``). With ``data.store.enabled`` (the default)
    finite corpora are tokenised once into a token store and served from its memory map; a streamed
    hub corpus uses a store when ``corpus.max_documents`` bounds it or ``kdyn-prepare`` built one,
    and is otherwise streamed.
    """

    def __init__(self, corpus: Mapping[str, Any], data: Mapping[str, Any], tokenizer, seed: int = 0,
                 vocab_size: int | None = None):
        super().__init__()
        self.corpus, self.data, self.tokenizer, self.seed = dict(corpus), dict(data), tokenizer, seed
        self.vocab_size = vocab_size  # the model's embedding rows: every token id must be below it
        self.rows: RowTable | None = None
        self.segment_rows: list[tuple[str, RowTable]] | None = None  # segmented corpora (periods)
        self.store = None  # the TokenStore the rows come from, if any
        self.transforms: list[BatchTransform] = []
        self._streaming: bool | None = None
        self._stream: StreamingTrainingStream | None = None  # the streamed corpus' stream, for checkpoints
        self._stream_resume: dict | None = None  # its position restored from a checkpoint

    @property
    def hub_streamed(self) -> bool:
        return self.corpus.get("name") == "hub" and bool(self.corpus.get("streaming", True))

    @property
    def streaming(self) -> bool:
        """Rows come straight from a streamed hub corpus (no store)."""
        if self._streaming is None:
            self._streaming = self.hub_streamed and not (self.store_enabled and (
                self.corpus.get("max_documents") or self._existing_store() is not None))
        return self._streaming

    @property
    def seq_len(self) -> int:
        return int(self.data["seq_len"])

    @property
    def store_enabled(self) -> bool:
        return bool((self.data.get("store") or {}).get("enabled", False))

    @property
    def store_dir(self):
        from kdyn.data.store import default_store_dir

        folder = (self.data.get("store") or {}).get("dir")
        return folder or default_store_dir()

    def _existing_store(self):
        from pathlib import Path

        from kdyn.data.store import open_store, store_name

        return open_store(Path(self.store_dir).expanduser() / store_name(self.corpus, self.tokenizer), self.corpus,
                          self.tokenizer)

    def prepare_rows(self) -> None:
        """Tokenise and pack now, or open the token store (called before training starts so input
        errors surface early)."""
        if self.rows is not None or self.streaming:
            return
        reader = corpora.as_corpus(self.corpus)
        if callable(getattr(reader, "token_rows", None)):  # already tokenised, read in place (corpus=pretraining)
            self.rows = reader.token_rows(self.data)
        elif self.store_enabled:
            self._rows_from_store()
        else:
            self._rows_in_memory()
        if self.segment_rows is None and len(self.rows) < int(self.data["batch_size"]):
            raise KdynError(
                f"corpus {corpora.describe(self.corpus)} packs into {len(self.rows)} rows of {self.rows.seq_len} "
                f"tokens, fewer than one batch (data.batch_size={self.data['batch_size']}); lower data.batch_size "
                "or data.seq_len")
        self._check_vocab()

    def _rows_in_memory(self) -> None:
        from kdyn.data.periods import is_segmented, segment_documents

        if is_segmented(self.corpus):
            self.segment_rows = [(name, TensorRows(pack_rows(docs, self.tokenizer, self.seq_len)))
                                 for name, docs in segment_documents(self.corpus)]
            self.rows = ConcatRows([rows for _, rows in self.segment_rows])
            return
        self.rows = TensorRows(pack_rows(corpora.load_documents(self.corpus), self.tokenizer, self.seq_len,
                                         self.data.get("max_rows")))

    def _rows_from_store(self) -> None:
        import logging
        import time

        from kdyn.data.periods import is_segmented
        from kdyn.data.store import build_store, describe_store

        started = time.perf_counter()
        self.store, built = build_store(self.corpus, self.tokenizer, self.store_dir)
        seconds = time.perf_counter() - started
        logging.getLogger("kdyn.data").info(
            "token store %s: %s", f"built in {seconds:.1f} s ({self.store.num_tokens / max(seconds, 1e-9) / 1e6:.2f} "
            "M tokens/s)" if built else "opened", describe_store(self.store))
        if is_segmented(self.corpus):
            self.segment_rows = self.store.segment_rows(self.seq_len)
            self.rows = ConcatRows([rows for _, rows in self.segment_rows])
        else:
            self.rows = self.store.rows(self.seq_len, self.data.get("max_rows"))

    def _check_vocab(self) -> None:
        """Every token id must have an embedding row (a store or files tokenised for another model)."""
        if not self.vocab_size:
            return
        tables = [rows for _, rows in self.segment_rows] if self.segment_rows else [self.rows]
        for table in tables:
            if callable(getattr(table, "check_vocabulary", None)):  # files read in place: checked as they are served
                table.check_vocabulary(int(self.vocab_size))
                continue
            largest = getattr(table, "max_token_id", None)
            if largest is None and isinstance(table, TensorRows):
                largest = int(table.tensor.max())
            if largest is not None and largest >= int(self.vocab_size):
                raise KdynError(
                    f"corpus {corpora.describe(self.corpus)} holds token id {largest}, but the model's vocabulary has "
                    f"{self.vocab_size} entries: the data was tokenised with another tokenizer; use data tokenised "
                    "with this model's tokenizer, or the model the data was made for")

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        world_size = trainer.world_size if trainer is not None else 1
        rank = trainer.global_rank if trainer is not None else 0
        accumulate = trainer.accumulate_grad_batches if trainer is not None else 1
        start = trainer.global_step if trainer is not None else 0
        num_steps = self.total_steps(trainer)
        common = dict(world_size=world_size, rank=rank, accumulate=accumulate, transforms=self.transforms,
                      start_step=start, num_steps=num_steps)
        if self.streaming:
            dataset = StreamingTrainingStream(self.corpus, self.tokenizer, self.seq_len, int(self.data["batch_size"]),
                                              resume=self._stream_resume, **common)
            self._stream = dataset
        else:
            self.prepare_rows()
            dataset = StepOrderedStream(TrainingStream(
                self.rows, int(self.data["batch_size"]), shuffle=bool(self.corpus.get("shuffle", False)),
                seed=int(self.seed), segments=self.segments(trainer), **common))
        workers = int(self.data.get("num_workers", 0))
        return DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers, persistent_workers=False)

    def state_dict(self) -> dict[str, Any]:
        """Saved in each checkpoint: for a streamed corpus, where the stream stands at the saved step
        (so the resumed run seeks there instead of re-reading the stream)."""
        stream, trainer = getattr(self, "_stream", None), self.trainer
        if stream is None or trainer is None:
            return {}
        return {"stream": stream.resume_state(int(trainer.global_step))}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._stream_resume = (state_dict or {}).get("stream")

    def segments(self, trainer=None) -> list[Segment] | None:
        """The run's segments (one per period) with their step ranges, for segmented corpora."""
        if self.segment_rows is None:
            return None
        per_step = int(self.data["batch_size"]) * (trainer.world_size if trainer is not None else 1) * (
            trainer.accumulate_grad_batches if trainer is not None else 1)
        epochs = float(self.corpus.get("epochs_per_period", 1))
        segments, start = [], 0
        for name, rows in self.segment_rows:
            steps = max(1, -(-int(len(rows) * epochs) // per_step))
            segments.append(Segment(name, rows, start, steps))
            start += steps
        return segments

    def total_steps(self, trainer=None) -> int:
        """Optimizer steps of the run: the periods' total for segmented corpora (capped by a smaller
        positive ``trainer.max_steps``), else ``trainer.max_steps``, or ``data.epochs`` passes."""
        segments = self.segments(trainer)
        if segments is not None:
            total = segments[-1].end_step
            if trainer is not None and trainer.max_steps and 0 < trainer.max_steps < total:
                return int(trainer.max_steps)
            return total
        if trainer is not None and trainer.max_steps and trainer.max_steps > 0:
            return int(trainer.max_steps)
        if self.rows is None:
            raise KdynError("a streamed corpus has no known length: set trainer.max_steps")
        world = trainer.world_size if trainer is not None else 1
        accumulate = trainer.accumulate_grad_batches if trainer is not None else 1
        per_step = int(self.data["batch_size"]) * world * accumulate
        return max(1, int(float(self.data.get("epochs", 1)) * len(self.rows)) // per_step)
