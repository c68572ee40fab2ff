"""``corpus=pretraining``: a checkpoint's own pretraining data, already tokenised, read in place.

Two published layouts are memory-mapped as they are (nothing is converted, copied or loaded):

``megatron``  Megatron-LM / GPT-NeoX ``MMapIndexedDataset``: ``PREFIX.bin`` (the token ids of every
              sequence, back to back) + ``PREFIX.idx`` (little-endian: magic ``MMIDIDX\\x00\\x00``,
              uint64 version = 1, uint8 dtype code, uint64 number of sequences N, uint64 number of
              document-index entries D, then int32 sizes[N], int64 byte pointers[N], int64 doc_idx[D]).
              Pythia's pre-shuffled Pile is this layout with every sequence one 2,049-token training
              instance, stored in training order (the batch of step S is sequences [S·1024, (S+1)·1024)).
``numpy``     OLMo-style token files: headerless uint16/uint32 arrays, each file cut into
              ``sequence_length``-token instances (a file's remainder is dropped; files are numbered in
              the order given), optionally read in the order of a ``global_indices`` file (run position
              p → instance ``global_indices[p]``; OLMo writes it as a headerless uint32 memmap).

Instance ``i`` of the .bin is tokens ``[i·L, (i+1)·L)`` of its stream (what Pythia's
``utils/batch_viewer.py`` reads: it slices the index's sequences and reshapes the tokens to rows of
2,049); with L = ``data.seq_len + 1`` each row carries its last label and the module trains on
``row[:-1]`` → ``row[1:]`` as GPT-NeoX does (`kdyn.module.split_label_token`).

``corpus.start_step=S corpus.global_batch_size=B``: row 0 of the table is the instance at position
S·B of the original order, i.e. the first one of the batch the checkpoint of step S would have
trained on next. Faults (truncated or corrupted files, a wrong magic/version, an order file pointing
past the data, a token id outside the model's vocabulary) raise `KdynError` naming the file.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdyn.errors import KdynError

log = logging.getLogger(__name__)

FORMATS = ("megatron", "numpy")
MEGATRON_MAGIC = b"MMIDIDX\x00\x00"
MEGATRON_VERSION = 1
MEGATRON_HEADER = struct.Struct("<9sQBQQ")  # magic, version, dtype code, sequences, document-index entries
# Integer dtype codes shared by GPT-NeoX and Megatron-LM (6 and 7 are floats, and the two disagree on which).
MEGATRON_DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 8: np.uint16}
TOKEN_DTYPES = ("uint8", "uint16", "uint32", "uint64")  # OLMo's memmap_dtype choices
ORDER_CHECK = 1 << 16  # order entries checked at open (the rest per served batch)
NPY_MAGIC = b"\x93NUMPY"


# ----------------------------------------------------------------------------------- files
def _size(path: Path, what: str) -> int:
    if not path.is_file():
        raise KdynError(f"{what} {path} does not exist")
    return path.stat().st_size


def _npy_header(path: Path) -> tuple[int, tuple[int, ...], np.dtype] | None:
    """(data offset, shape, dtype) of a ``.npy`` file with a numpy header, else None (a raw memmap)."""
    with path.open("rb") as f:
        if f.read(len(NPY_MAGIC)) != NPY_MAGIC:
            return None
        f.seek(0)
        try:
            major, _ = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(f)
        except ValueError as e:
            raise KdynError(f"{path}: corrupted .npy header ({e})") from None
        if fortran or len(shape) != 1:
            raise KdynError(f"{path}: expected a 1-D array, found shape {shape}{' (Fortran order)' if fortran else ''}")
        return f.tell(), shape, dtype


def open_token_array(path: Path, dtype: np.dtype, what: str) -> np.ndarray:
    """A read-only 1-D memory map of ``path``: a ``.npy`` with a header (its own dtype), else headerless
    ``dtype`` (OLMo's token and order files are raw memmaps despite their ``.npy`` name)."""
    size = _size(path, what)
    header = _npy_header(path)
    if header is not None:
        offset, shape, dtype = header
        expected = offset + int(np.prod(shape)) * dtype.itemsize
        if size != expected:
            raise KdynError(f"{what} {path} is {size} bytes, expected {expected} ({shape[0]} × {dtype} after its "
                            f"header): truncated or corrupted")
        count = shape[0]
    else:
        dtype = np.dtype(dtype)
        offset = 0
        if size % dtype.itemsize:
            raise KdynError(f"{what} {path} is {size} bytes, not a multiple of {dtype.itemsize} ({dtype}): truncated, "
                            f"or the wrong corpus.dtype")
        count = size // dtype.itemsize
    if count == 0:
        return np.empty(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=(count,))


def read_megatron_index(idx: Path) -> dict[str, Any]:
    """The ``.idx`` of a Megatron/GPT-NeoX indexed dataset: dtype, sizes, pointers, doc_idx (memory-mapped)."""
    size = _size(idx, "index file")
    if size < MEGATRON_HEADER.size:
        raise KdynError(f"index file {idx} is {size} bytes, shorter than the {MEGATRON_HEADER.size}-byte "
                        f"MMIDIDX header: truncated")
    with idx.open("rb") as f:
        magic, version, code, n_seq, n_doc = MEGATRON_HEADER.unpack(f.read(MEGATRON_HEADER.size))
    if magic != MEGATRON_MAGIC:
        raise KdynError(f"{idx} is not a Megatron/GPT-NeoX index: it starts with {magic!r}, expected {MEGATRON_MAGIC!r} "
                        f"(an MMapIndexedDataset .idx; for OLMo-style token files use corpus.format=numpy)")
    if version != MEGATRON_VERSION:
        raise KdynError(f"{idx}: index version {version}, only version {MEGATRON_VERSION} (MMapIndexedDataset) is read")
    if code not in MEGATRON_DTYPES:
        raise KdynError(f"{idx}: dtype code {code} is not an integer token type; known codes: "
                        f"{', '.join(f'{c}={np.dtype(t).name}' for c, t in MEGATRON_DTYPES.items())}")
    expected = MEGATRON_HEADER.size + n_seq * (4 + 8) + n_doc * 8
    if size not in (expected, expected + n_seq):  # + n_seq: Megatron-LM's optional multimodal sequence modes
        raise KdynError(f"index file {idx} is {size} bytes, expected {expected} for its {n_seq} sequences and "
                        f"{n_doc} document-index entries: truncated or corrupted")
    off = MEGATRON_HEADER.size
    sizes = np.memmap(idx, dtype=np.int32, mode="r", offset=off, shape=(n_seq,)) if n_seq else np.empty(0, np.int32)
    pointers = (np.memmap(idx, dtype=np.int64, mode="r", offset=off + 4 * n_seq, shape=(n_seq,))
                if n_seq else np.empty(0, np.int64))
    return {"dtype": np.dtype(MEGATRON_DTYPES[code]), "sizes": sizes, "pointers": pointers, "sequences": n_seq,
            "documents": n_doc}


def megatron_prefix(path: str) -> Path:
    """``PREFIX``, ``PREFIX.bin`` or ``PREFIX.idx`` → ``PREFIX``."""
    p = Path(str(path)).expanduser()
    return p.with_suffix("") if p.suffix in (".bin", ".idx") else p


# ----------------------------------------------------------------------------------- instances
class InstanceFiles:
    """Token files cut into ``length``-token instances, numbered file after file (memory maps opened lazily,
    so the object pickles as paths into DataLoader workers)."""

    def __init__(self, files: Sequence[tuple[Path, np.dtype, int]], length: int):
        self.files = [(Path(p), np.dtype(d), int(n)) for p, d, n in files]  # (path, dtype, tokens) per file
        self.length = length
        counts = np.array([n // length for *_, n in self.files], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(counts)])
        self._arrays: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_arrays": None}

    @property
    def arrays(self) -> list[np.ndarray]:
        if self._arrays is None:
            self._arrays = [open_token_array(path, dtype, "token file") for path, dtype, _ in self.files]
        return self._arrays

    def where(self, instance: int) -> tuple[Path, int]:
        """(file, token offset) of an instance."""
        f = int(np.searchsorted(self.starts, instance, side="right")) - 1
        return self.files[f][0], (instance - int(self.starts[f])) * self.length

    def read(self, instances: np.ndarray) -> np.ndarray:
        out = np.empty((len(instances), self.length), dtype=np.int64)
        which = np.searchsorted(self.starts, instances, side="right") - 1
        for row, (f, i) in enumerate(zip(which.tolist(), instances.tolist())):
            start = (i - int(self.starts[f])) * self.length
            out[row] = self.arrays[f][start:start + self.length]
        return out


def megatron_instances(prefix: Path, length: int | None) -> InstanceFiles:
    """The ``.bin`` token stream of an indexed dataset, in index order, cut into ``length``-token instances
    (None: the length of its sequences when they all have one, else an error)."""
    idx, bin_path = Path(f"{prefix}.idx"), Path(f"{prefix}.bin")
    for p in (idx, bin_path):
        if not p.is_file():
            raise KdynError(f"corpus.path={prefix}: {p} does not exist (a Megatron/GPT-NeoX dataset is PREFIX.bin + "
                            f"PREFIX.idx; pass corpus.path=PREFIX)")
    index = read_megatron_index(idx)
    dtype, n_seq = index["dtype"], index["sequences"]
    if n_seq == 0:
        raise KdynError(f"{idx} indexes no sequences")
    first, last, last_size = int(index["pointers"][0]), int(index["pointers"][-1]), int(index["sizes"][-1])
    if first != 0 or last % dtype.itemsize:
        raise KdynError(f"{idx}: corrupted pointers (first {first}, last {last}; expected 0 and multiples of "
                        f"{dtype.itemsize})")
    tokens = last // dtype.itemsize + last_size
    expected, size = tokens * dtype.itemsize, _size(bin_path, "data file")
    if size != expected:
        raise KdynError(f"data file {bin_path} is {size} bytes, expected {expected} ({tokens} {dtype} tokens, as its "
                        f"index {idx.name} says): truncated or corrupted")
    return InstanceFiles([(bin_path, dtype, tokens)], length or fixed_length(index, tokens) or 0)


def fixed_length(index: Mapping[str, Any], tokens: int) -> int | None:
    """The instance length of an index whose sequences all have one length (Pythia's pre-shuffled Pile: 2,049),
    judged in O(1) from the first and last sizes and the token count; None for documents of varying length."""
    first, n_seq = int(index["sizes"][0]), index["sequences"]
    return first if int(index["sizes"][-1]) == first and tokens == first * n_seq else None


def numpy_instances(paths: Sequence[str], dtype: str, length: int) -> InstanceFiles:
    """OLMo-style token files (headerless ``dtype``, or ``.npy`` with a header), each cut into instances."""
    if dtype not in TOKEN_DTYPES:
        raise KdynError(f"unknown corpus.dtype {dtype!r}; choose one of {', '.join(TOKEN_DTYPES)}")
    files = []
    for path in paths:
        p = Path(str(path)).expanduser()
        array = open_token_array(p, np.dtype(dtype), "token file")
        files.append((p, array.dtype, len(array)))
        del array
    return InstanceFiles(files, length)


def numpy_paths(path: Any) -> list[str]:
    """``corpus.path`` for numpy token files: a file, a list of files (in order), or a folder (``*.npy``, sorted)."""
    if not path:
        raise KdynError("corpus.path is not set: pass corpus.path=FILE, a list [A.npy,B.npy] or a folder of .npy files")
    if isinstance(path, (list, tuple)):
        return [str(p) for p in path]
    p = Path(str(path)).expanduser()
    if p.is_dir():
        files = sorted(str(f) for f in p.glob("*.npy") if f.name != "global_indices.npy")
        if not files:
            raise KdynError(f"corpus.path={path} holds no .npy token files")
        return files
    if not p.exists():
        raise KdynError(f"corpus.path={path} does not exist")
    return [str(p)]


# ----------------------------------------------------------------------------------- the row table
class PretrainingRows:
    """A `RowTable` over already-tokenised pretraining instances: row p = instance ``order[first + p]``.

    ``seq_len`` is the instance length (``data.seq_len`` or ``data.seq_len + 1``; ``label_token`` says
    which). Token ids are checked against ``vocab_size`` in every served batch once it is set.
    """

    def __init__(self, instances: InstanceFiles, *, order: np.ndarray | None = None, first: int = 0,
                 label_token: bool = False, vocab_size: int | None = None, source: str = "",
                 order_path: Path | None = None, start_step: int = 0, original_batch: int | None = None,
                 max_rows: int | None = None):
        self.instances, self.order, self.first = instances, order, int(first)
        self.start_step, self.original_batch = start_step, original_batch
        self.max_rows = max_rows  # data.max_rows: serve (and wrap over) only the first rows from start_step
        self.seq_len = instances.length
        self.label_token = label_token
        self.vocab_size = vocab_size
        self.source, self.order_path = source, order_path

    def __getstate__(self) -> dict:
        """Pickle (spawned DataLoader workers, ddp_spawn) as paths: a memory map would be copied in full."""
        return {**self.__dict__, "order": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self.order_path is not None:
            self.order = open_token_array(self.order_path, np.dtype(np.uint32), "order file")

    def __len__(self) -> int:
        total = len(self.order) if self.order is not None else len(self.instances)
        return total - self.first if self.max_rows is None else min(total - self.first, self.max_rows)

    def instance_ids(self, positions: np.ndarray) -> np.ndarray:
        """The original instance numbers of row positions (validated against the data)."""
        positions = np.asarray(positions, dtype=np.int64)
        if positions.size and (positions.min() < 0 or positions.max() >= len(self)):
            raise IndexError(f"row positions must be in [0, {len(self)}), got {positions.min()}..{positions.max()}")
        at = positions + self.first
        ids = at if self.order is None else np.asarray(self.order[at], dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= len(self.instances)):
            bad = int(np.argmax((ids < 0) | (ids >= len(self.instances))))
            raise KdynError(f"order file {self.order_path}: entry {int(at[bad])} is instance {int(ids[bad])}, but "
                            f"{self.source} holds {len(self.instances)} instances of {self.seq_len} tokens (wrong "
                            f"corpus.sequence_length, or an order file of other data)")
        return ids

    def rows(self, positions: np.ndarray) -> torch.Tensor:
        ids = self.instance_ids(positions)
        tokens = self.instances.read(ids)
        if self.vocab_size is not None and tokens.size:
            self._check_tokens(tokens, ids)
        return torch.from_numpy(tokens)

    def _check_tokens(self, tokens: np.ndarray, ids: np.ndarray) -> None:
        bad_rows = np.flatnonzero((tokens.max(axis=1) >= self.vocab_size) | (tokens.min(axis=1) < 0))
        if bad_rows.size:
            r = int(bad_rows[0])
            token = int(tokens[r][(tokens[r] >= self.vocab_size) | (tokens[r] < 0)][0])
            path, offset = self.instances.where(int(ids[r]))
            raise KdynError(f"{path}: token id {token} in instance {int(ids[r])} (token offset {offset}) is outside "
                            f"the model's vocabulary of {self.vocab_size}: the data was tokenised for another model, "
                            f"or corpus.dtype/corpus.format is wrong")

    def note_global_batch(self, global_batch: int) -> None:
        """Say how kdyn's steps map onto the original run's (one log line)."""
        start, batch = self.start_step, self.original_batch
        if not batch or global_batch == batch:
            log.info("corpus=pretraining: kdyn step s trains on the original batch of step %d + s", start)
        else:
            log.warning("corpus=pretraining: kdyn's global batch (data.batch_size × devices × accumulation = %d) is not "
                        "corpus.global_batch_size=%d: the instances come in the original order, but kdyn step s "
                        "reads instances %d + s·%d onwards, not the original step %d + s; make the two equal to "
                        "train on the original steps", global_batch, batch, start * batch, global_batch, start)

    def check_vocabulary(self, vocab_size: int, rows: int = 64) -> None:
        """Check every later batch against ``vocab_size``, and the first ``rows`` rows now (fail before training)."""
        self.vocab_size = int(vocab_size)
        n = min(rows, len(self))
        if n:
            self.rows(np.arange(n))


def split_label_token(batch: dict, step: int, global_rows: torch.Tensor) -> dict:
    """Batch transform for rows of seq_len + 1 tokens: inputs ``row[:-1]`` and labels of the whole row, whose
    targets are ``row[1:]`` (GPT-NeoX's ``tokens = data[:, :-1]``, ``labels = data[:, 1:]``); the model never
    sees more than seq_len tokens and every input position has a target."""
    ids, mask = batch["input_ids"], batch.get("attention_mask")
    labels = batch.get("labels")
    if labels is None:
        labels = ids if mask is None else ids.masked_fill(mask == 0, -100)
    out = {**batch, "input_ids": ids[:, :-1], "labels": labels}
    if mask is not None:
        out["attention_mask"] = mask[:, :-1]
    return out


def open_pretraining_rows(corpus: Mapping[str, Any], data: Mapping[str, Any],
                          vocab_size: int | None = None) -> PretrainingRows:
    """The row table of a ``corpus=pretraining`` node, starting at ``corpus.start_step``'s first instance."""
    fmt = corpus.get("format", "megatron")
    if fmt not in FORMATS:
        raise KdynError(f"unknown corpus.format {fmt!r}; choose megatron (PREFIX.bin + PREFIX.idx) or numpy "
                        f"(OLMo-style token files)")
    if corpus.get("shuffle"):
        raise KdynError("corpus=pretraining serves the checkpoint's own data order; set corpus.shuffle=false "
                        "(for another order give corpus.global_indices=FILE)")
    seq_len = int(data["seq_len"])
    length = int(corpus["sequence_length"]) if corpus.get("sequence_length") else None
    if not corpus.get("path"):
        raise KdynError("corpus=pretraining needs corpus.path= (megatron: the PREFIX of PREFIX.bin/.idx; numpy: "
                        "a token file, a list of them, or a folder)")
    if fmt == "megatron":
        # Fixed-length sequences are the instances (Pythia: 2,049 = 2,048 inputs + 1 label); documents of varying
        # length are cut into data.seq_len + 1 tokens, the sample size GPT-NeoX trains on.
        prefix = megatron_prefix(corpus["path"])
        instances, source = megatron_instances(prefix, length), f"{prefix}.bin"
        if not instances.length:
            instances = InstanceFiles(instances.files, seq_len + 1)
    else:
        paths = numpy_paths(corpus["path"])
        instances = numpy_instances(paths, str(corpus.get("dtype", "uint16")), length or seq_len)
        source = paths[0] if len(paths) == 1 else f"{len(paths)} token files ({paths[0]} …)"
    length = instances.length
    if length not in (seq_len, seq_len + 1):
        raise KdynError(f"{source} holds {length}-token instances (corpus.sequence_length), but data.seq_len={seq_len} "
                        f"needs {seq_len} (OLMo-style: the instance is the input) or {seq_len + 1} (GPT-NeoX/Pythia: "
                        f"inputs + one label); set data.seq_len={length - 1}, or corpus.sequence_length")
    if len(instances) == 0:
        raise KdynError(f"{source} holds fewer than {length} tokens: no instance of corpus.sequence_length={length}")
    order, order_path = None, None
    if corpus.get("global_indices"):
        order_path = Path(str(corpus["global_indices"])).expanduser()
        order = open_token_array(order_path, np.dtype(np.uint32), "order file")
        if len(order) == 0:
            raise KdynError(f"order file {order_path} is empty")
        if order.dtype.kind not in "iu":
            raise KdynError(f"order file {order_path} holds {order.dtype} values; expected integer instance indices "
                            f"(OLMo: uint32)")
    total = len(order) if order is not None else len(instances)
    start_step, batch = int(corpus.get("start_step") or 0), corpus.get("global_batch_size")
    if start_step and not batch:
        raise KdynError(f"corpus.start_step={start_step} needs corpus.global_batch_size (the original run's "
                        f"instances per step: Pythia 1024, OLMo-1B 2048)")
    first = start_step * int(batch or 0)
    if first >= total:
        steps = total // int(batch) if batch else 0
        raise KdynError(f"corpus.start_step={start_step} is beyond the data: {source} holds {total} instances, "
                        f"{steps} steps of corpus.global_batch_size={batch} (start_step 0..{max(0, steps - 1)})")
    vocab = vocab_size if vocab_size is not None else corpus.get("vocab_size")
    table = PretrainingRows(instances, order=order, first=first, label_token=length == seq_len + 1,
                            vocab_size=int(vocab) if vocab else None, source=source, order_path=order_path,
                            start_step=start_step, original_batch=int(batch) if batch else None,
                            max_rows=int(data["max_rows"]) if data.get("max_rows") else None)
    table.instance_ids(np.arange(min(ORDER_CHECK, len(table))))  # the first steps' order entries, now
    log.info("corpus=pretraining: %s, %d instances of %d tokens%s; row 0 = instance position %d (start_step %d × %s)",
             source, len(instances), length, f" in the order of {order_path}" if order_path else "", first,
             start_step, batch)
    return table
