"""Token store: a corpus tokenised once into a memory-mapped file that every run reads in place.

A store is one folder, ``<data.store.dir>/<corpus kind>-<key>/`` (``key`` hashes the corpus config,
the tokenizer and the EOS handling), holding

==================  =================================================================================
``tokens.bin``      the token ids of every document, each followed by EOS, concatenated in corpus
                    order; headerless little-endian ``uint16`` (vocabulary ≤ 65,536) or ``uint32``
``docs.npy``        ``int64 [documents + 1]`` offsets into ``tokens.bin``: document ``d`` (its EOS
                    included) is ``tokens[docs[d]:docs[d+1]]``
``manifest.json``   format version, kdyn version, corpus node and content fingerprint, tokenizer
                    fingerprint, EOS handling, dtype, token/document counts, largest token id, and
                    the segments (one per TemporalWiki period: name, document and token ranges)
==================  =================================================================================

Packing reads rows straight from the memory map: row ``i`` of a segment is
``tokens[start + i·seq_len : start + (i+1)·seq_len]``, the incomplete tail dropped — the same rows
`kdyn.data.packing.pack_rows` builds in memory, bit for bit. A store is written under a staging
name and renamed when complete, under a file lock, so concurrent jobs build it once and nobody ever
sees half a store; documents are streamed and tokenised in batches (the fast tokenizer's batch
encode runs on every core), never held in memory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterable, Iterator, Mapping
from itertools import chain, islice
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdyn.errors import KdynError

log = logging.getLogger("kdyn.store")

FORMAT = "kdyn-token-store/1"
TOKENS_FILE, DOCS_FILE, MANIFEST_FILE = "tokens.bin", "docs.npy", "manifest.json"
ENCODE_BATCH = 1024  # documents per call to the tokenizer's batch encode
# corpus keys that change how rows are served, not which tokens the store holds
_SERVING_KEYS = ("shuffle", "epochs_per_period")
# corpus keys that may name local files or folders: their size and mtime join the content fingerprint
_PATH_KEYS = ("path", "dataset", "hub_dataset")


# ----------------------------------------------------------------------------------- fingerprints
def _sha(*parts: Any) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()


def corpus_identity(corpus: Mapping[str, Any]) -> dict[str, Any]:
    """The corpus node without the keys that only change how rows are served (e.g. ``shuffle``)."""
    return {k: v for k, v in dict(corpus).items() if k not in _SERVING_KEYS}


def _local_files(node: Any) -> Iterator[Path]:
    if isinstance(node, Mapping):
        for key, value in node.items():
            if key in _PATH_KEYS and isinstance(value, str) and value:
                path = Path(value).expanduser()
                if path.is_file():
                    yield path.resolve()
                elif path.is_dir():
                    yield from sorted(p.resolve() for p in path.rglob("*") if p.is_file())
            else:
                yield from _local_files(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            yield from _local_files(value)


def corpus_fingerprint(corpus: Mapping[str, Any]) -> str:
    """The corpus node, the kdyn version (code-generated corpora) and the size and modification time
    of every local file it reads: a store whose fingerprint differs is rebuilt."""
    import kdyn

    files = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in _local_files(corpus_identity(corpus))]
    return _sha(corpus_identity(corpus), kdyn.__version__, files)


_TOKENIZER_FINGERPRINTS: dict[int, tuple[Any, str, int]] = {}  # id -> (tokenizer, fingerprint, length)


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of the tokenizer's full definition (vocabulary, merges, normalisation, added tokens)."""
    known = _TOKENIZER_FINGERPRINTS.get(id(tokenizer))
    if known is not None and known[0] is tokenizer and len(tokenizer) == known[2]:
        return known[1]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # truncation/padding are call-time settings the tokenizer rewrites on use (``truncation=True``),
        # not part of what ids it produces: leave them out so the fingerprint does not drift
        definition = json.loads(backend.to_str())
        definition.pop("truncation", None)
        definition.pop("padding", None)
    else:  # a slow tokenizer: its vocabulary and class
        definition = [type(tokenizer).__name__, sorted(tokenizer.get_vocab().items())]
    fingerprint = _sha(definition, getattr(tokenizer, "eos_token_id", None))
    _TOKENIZER_FINGERPRINTS[id(tokenizer)] = (tokenizer, fingerprint, len(tokenizer))
    return fingerprint


def eos_handling(tokenizer) -> dict[str, Any]:
    eos = tokenizer.eos_token_id
    if eos is None:
        raise KdynError("the tokenizer has no EOS token to separate packed documents")
    return {"after_each_document": True, "eos_token_id": int(eos)}


def store_name(corpus: Mapping[str, Any], tokenizer) -> str:
    """``<corpus kind>-<16 hex>``: the store folder of this (corpus, tokenizer, EOS handling)."""
    key = _sha(corpus_identity(corpus), tokenizer_fingerprint(tokenizer), eos_handling(tokenizer))[:16]
    return f"{corpus.get('name', 'corpus')}-{key}"


def default_store_dir() -> Path:
    return Path(os.environ.get("KDYN_CACHE_DIR", "~/.cache/kdyn")).expanduser() / "stores"


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


# ----------------------------------------------------------------------------------- reading
class StoreRows:
    """Row table over a stretch of a memory-mapped token file: row ``i`` is
    ``tokens[start + i·seq_len : start + (i+1)·seq_len]`` (the incomplete tail dropped).

    ``rows(positions)`` copies only the requested rows out of the map; ``array`` stays a view.
    """

    def __init__(self, tokens: np.ndarray, start: int, num_tokens: int, seq_len: int, max_rows: int | None = None,
                 max_token_id: int | None = None):
        if seq_len < 2:
            raise KdynError(f"seq_len must be at least 2, got {seq_len}")
        n = num_tokens // seq_len
        if max_rows is not None:
            n = min(n, int(max_rows))
        self.seq_len = int(seq_len)
        self.array = tokens[start:start + n * seq_len].reshape(n, seq_len)
        self.max_token_id = max_token_id

    def __len__(self) -> int:
        return int(self.array.shape[0])

    def rows(self, positions: np.ndarray) -> torch.Tensor:
        index = np.asarray(positions, dtype=np.int64)
        return torch.from_numpy(np.asarray(self.array[index], dtype=np.int64))


class TokenStore:
    """A complete store folder, opened read-only (the token file is memory-mapped, never loaded)."""

    def __init__(self, folder: Path, manifest: dict[str, Any]):
        self.folder, self.manifest = folder, manifest
        self.tokens = np.memmap(folder / TOKENS_FILE, dtype=np.dtype(manifest["dtype"]), mode="r",
                                shape=(int(manifest["num_tokens"]),)) if manifest["num_tokens"] else np.zeros(
            0, dtype=np.dtype(manifest["dtype"]))
        self._docs: np.ndarray | None = None

    @property
    def num_tokens(self) -> int:
        return int(self.manifest["num_tokens"])

    @property
    def num_documents(self) -> int:
        return int(self.manifest["num_documents"])

    @property
    def docs(self) -> np.ndarray:
        """Document start offsets (``[documents + 1]``, memory-mapped)."""
        if self._docs is None:
            self._docs = np.load(self.folder / DOCS_FILE, mmap_mode="r")
        return self._docs

    @property
    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.folder.iterdir() if p.is_file())

    def segment_rows(self, seq_len: int, max_rows: int | None = None) -> list[tuple[str, StoreRows]]:
        """One row table per segment (each packed on its own, like `pack_rows` per period)."""
        out = []
        for seg in self.manifest["segments"]:
            rows = StoreRows(self.tokens, seg["token_start"], seg["token_end"] - seg["token_start"], seq_len, max_rows,
                             self.manifest.get("max_token_id"))
            if len(rows) == 0:
                what = f"segment {seg['name']!r} of the corpus" if len(self.manifest["segments"]) > 1 else "the corpus"
                raise KdynError(
                    f"{what} has fewer than seq_len={seq_len} tokens ({seg['token_end'] - seg['token_start']}); "
                    "use a larger corpus or a smaller data.seq_len")
            out.append((seg["name"], rows))
        return out

    def rows(self, seq_len: int, max_rows: int | None = None) -> StoreRows:
        """The whole store packed into ``seq_len`` rows (a single-segment corpus)."""
        (_, rows), *rest = self.segment_rows(seq_len, max_rows)
        if rest:
            raise ValueError("a segmented store has one row table per segment: use segment_rows")
        return rows


def _read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text())
        if manifest.get("format") != FORMAT:
            raise ValueError(f"format {manifest.get('format')!r}, expected {FORMAT!r}")
        for key in ("num_tokens", "num_documents", "dtype", "segments", "tokenizer", "eos", "corpus"):
            manifest[key]  # noqa: B018 - presence check
        return manifest
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise KdynError(f"token store manifest {path} is unreadable ({e}); delete the folder {folder} "
                        "and rerun (the store is rebuilt)") from None


def _check_files(folder: Path, manifest: dict[str, Any]) -> None:
    tokens = folder / TOKENS_FILE
    expected = int(manifest["num_tokens"]) * np.dtype(manifest["dtype"]).itemsize
    actual = tokens.stat().st_size if tokens.is_file() else None
    if actual != expected:
        found = "is missing" if actual is None else f"is {actual:,} bytes"
        raise KdynError(
            f"token store file {tokens} {found}, expected {expected:,} bytes ({manifest['num_tokens']:,} tokens × "
            f"{np.dtype(manifest['dtype']).itemsize} bytes, per its manifest): truncated or corrupted; delete the "
            f"folder {folder} and rerun (the store is rebuilt)")
    docs = folder / DOCS_FILE
    try:
        offsets = np.load(docs, mmap_mode="r")
        ok = offsets.shape == (int(manifest["num_documents"]) + 1,) and int(offsets[-1]) == int(manifest["num_tokens"])
    except (OSError, ValueError) as e:
        ok, offsets = False, e
    if not ok:
        raise KdynError(
            f"token store file {docs} does not hold {int(manifest['num_documents']) + 1:,} int64 document offsets "
            f"ending at {manifest['num_tokens']:,} (per its manifest): truncated or corrupted; delete the folder "
            f"{folder} and rerun (the store is rebuilt)")


def open_store(folder: Path, corpus: Mapping[str, Any], tokenizer) -> TokenStore | None:
    """The complete store in ``folder`` if it matches ``corpus`` and ``tokenizer``; ``None`` when there
    is none or the corpus changed since it was built (rebuild it). Raises on a store that is corrupt or
    was built with another tokenizer or EOS handling."""
    if not (folder / MANIFEST_FILE).is_file():
        return None
    manifest = _read_manifest(folder)
    differs = []
    if manifest["tokenizer"].get("fingerprint") != tokenizer_fingerprint(tokenizer):
        differs.append(f"tokenizer (built with {manifest['tokenizer'].get('name_or_path')!r}, "
                       f"this run uses {getattr(tokenizer, 'name_or_path', '?')!r})")
    if manifest["eos"] != eos_handling(tokenizer):
        differs.append(f"EOS handling (built with {manifest['eos']}, this run uses {eos_handling(tokenizer)})")
    if manifest["corpus"].get("identity") != json.loads(json.dumps(corpus_identity(corpus), default=str)):
        differs.append("corpus config")
    if differs:
        raise KdynError(f"token store {folder} does not match this run: its {' and its '.join(differs)} differ; "
                        f"delete the folder and rerun (the store is rebuilt), or set data.store.dir to another folder")
    if manifest["corpus"].get("fingerprint") != corpus_fingerprint(corpus):
        log.info("the corpus files changed since token store %s was built: rebuilding it", folder)
        return None
    _check_files(folder, manifest)
    return TokenStore(folder, manifest)


# ----------------------------------------------------------------------------------- building
def corpus_segments(corpus: Mapping[str, Any]) -> list[tuple[str, Iterable[str]]]:
    """[(segment name, documents)]: one per period for segmented corpora, else one ``all``."""
    from kdyn.data import corpora
    from kdyn.data.periods import is_segmented, segment_documents

    if is_segmented(corpus):
        return list(segment_documents(corpus))
    return [("all", corpora.iter_documents(corpus))]


def _batches(documents: Iterable[str], size: int) -> Iterator[list[str]]:
    it = iter(documents)
    while batch := list(islice(it, size)):
        yield batch


def _write_store(staging: Path, corpus: Mapping[str, Any], tokenizer, progress: bool) -> dict[str, Any]:
    """Tokenise the corpus into ``staging`` (batch by batch, appending); returns the manifest."""
    import kdyn

    eos = eos_handling(tokenizer)["eos_token_id"]
    dtype = token_dtype(len(tokenizer))
    limit = np.iinfo(dtype).max
    offsets = [0]
    segments, num_tokens, max_id = [], 0, -1
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(unit="tok", unit_scale=True, desc="tokenising", dynamic_ncols=True)
    try:
        with open(staging / TOKENS_FILE, "wb") as out:
            for name, documents in corpus_segments(corpus):
                seg = {"name": str(name), "doc_start": len(offsets) - 1, "token_start": num_tokens}
                for batch in _batches(documents, ENCODE_BATCH):
                    ids = tokenizer(batch, add_special_tokens=False)["input_ids"]
                    lengths = np.fromiter((len(x) + 1 for x in ids), dtype=np.int64, count=len(ids))
                    total = int(lengths.sum())
                    flat = np.fromiter(chain.from_iterable(chain(x, (eos,)) for x in ids), dtype=np.int64, count=total)
                    batch_max = int(flat.max())
                    if batch_max > limit:
                        raise KdynError(f"token id {batch_max} does not fit the store's {dtype.name} "
                                        f"(tokenizer length {len(tokenizer)}): the tokenizer reports a wrong length")
                    max_id = max(max_id, batch_max)
                    out.write(flat.astype(dtype).tobytes())
                    offsets.extend((num_tokens + np.cumsum(lengths)).tolist())
                    num_tokens += total
                    if bar is not None:
                        bar.update(total)
                seg.update(doc_end=len(offsets) - 1, token_end=num_tokens)
                segments.append(seg)
            out.flush()
            os.fsync(out.fileno())
    finally:
        if bar is not None:
            bar.close()
    if num_tokens == 0:
        from kdyn.data.corpora import describe

        raise KdynError(f"corpus {describe(corpus)} holds no documents (is the file empty?)")
    np.save(staging / DOCS_FILE, np.asarray(offsets, dtype=np.int64))
    manifest = {
        "format": FORMAT,
        "kdyn_version": kdyn.__version__,
        "corpus": {"identity": json.loads(json.dumps(corpus_identity(corpus), default=str)),
                   "fingerprint": corpus_fingerprint(corpus)},
        "tokenizer": {"fingerprint": tokenizer_fingerprint(tokenizer), "name_or_path": getattr(tokenizer, "name_or_path", None),
                      "vocab_size": len(tokenizer)},
        "eos": eos_handling(tokenizer),
        "dtype": dtype.str,
        "num_tokens": num_tokens,
        "num_documents": len(offsets) - 1,
        "max_token_id": max_id,
        "segments": segments,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
    return manifest


def _unwritable(root: Path, e: OSError) -> KdynError:
    return KdynError(f"cannot write a token store under {root} ({e.strerror or e}); set data.store.dir to a "
                     "writable folder, or data.store.enabled=false to pack the corpus in memory")


def build_store(corpus: Mapping[str, Any], tokenizer, root: str | Path | None = None, *,
                progress: bool = False) -> tuple[TokenStore, bool]:
    """Open the store of (corpus, tokenizer) under ``root``, building it first if needed.

    Returns ``(store, built)``. Concurrent callers serialise on ``<root>/<name>.lock``: the first
    builds into ``<name>.staging-<pid>`` and renames it to ``<name>``; the others then open it.
    A staging folder left by an interrupted build is removed by the next builder.
    """
    from filelock import FileLock

    root = Path(root).expanduser() if root else default_store_dir()
    name = store_name(corpus, tokenizer)
    folder = root / name
    store = open_store(folder, corpus, tokenizer)  # fast path: complete, matching, no lock needed
    if store is not None:
        return store, False
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(root / f"{name}.lock"))
        lock.acquire()
    except OSError as e:
        raise _unwritable(root, e) from None
    try:
        store = open_store(folder, corpus, tokenizer)  # another job may have built it meanwhile
        if store is not None:
            return store, False
        for stale in root.glob(f"{name}.staging-*"):  # we hold the lock: any staging folder is abandoned
            shutil.rmtree(stale, ignore_errors=True)
        staging = root / f"{name}.staging-{os.getpid()}"
        try:
            staging.mkdir()
        except OSError as e:
            raise _unwritable(root, e) from None
        try:
            _write_store(staging, corpus, tokenizer, progress)
            if folder.exists():  # an outdated store (its corpus changed): replace it
                old = root / f"{name}.old-{os.getpid()}"
                os.replace(folder, old)
                shutil.rmtree(old, ignore_errors=True)
            os.replace(staging, folder)
        except OSError as e:
            raise _unwritable(root, e) from None
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        return open_store(folder, corpus, tokenizer), True
    finally:
        lock.release()


def describe_store(store: TokenStore) -> str:
    m = store.manifest
    return (f"{store.num_tokens:,} tokens, {store.num_documents:,} documents, {np.dtype(m['dtype']).name}, "
            f"{store.size_bytes / 1e6:.1f} MB in {store.folder}")
