"""What a run loaded, byte for byte: the one place that records and pins checkpoints.

:func:`describe_checkpoint` resolves a :class:`~kdyn.models.checkpoints.CheckpointRef` to the commit
and the content hash of each weight file, without downloading anything extra:

* hub repositories, online: ``HfApi.model_info(repo, revision, files_metadata=True)`` — the commit
  (``sha``) and the sha256 the hub stores for every LFS file;
* hub repositories, offline (``HF_HUB_OFFLINE=1``): the local Hugging Face cache — the snapshot
  folder is named by the commit, and an LFS blob is stored under its sha256;
* local folders (``model=local``, the tiny trajectory): sha256 of each weight file, read streaming.

:func:`model_record` is the ``model`` section every entry point writes into ``results.json`` /
``entropy.json`` / ``layer_stats.json``; ``weights_sha256`` (one hash over the weight files' hashes)
lets ``kdyn-report`` flag two steps of one trajectory that serve identical weights.

:func:`apply_lock` implements ``model.revision_lock=FILE``: the first run pins each
``<repo>@<revision>`` (or local folder) to its commit and file hashes; later runs load that commit
and fail with one clear line when the branch moved or a local file changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kdyn.errors import KdynError
from kdyn.utils.io import atomic_write_text, exclusive_lock

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".msgpack", ".h5", ".gguf")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20


def is_weight_file(name: str) -> bool:
    """Weight files (``model.safetensors``, ``pytorch_model-00001-of-00002.bin`` …), not their indexes."""
    return name.endswith(WEIGHT_SUFFIXES) and "/" not in name.strip("/") and not name.endswith("training_args.bin")


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, read in 1 MiB chunks (never the whole file in memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weights_fingerprint(files: Mapping[str, Mapping[str, Any]]) -> str | None:
    """One sha256 over the sorted ``(file name, sha256)`` pairs of the weight files (None when a hash is missing)."""
    if not files or any(not f.get("sha256") for f in files.values()):
        return None
    blob = json.dumps(sorted((name, f["sha256"]) for name, f in files.items())).encode()
    return hashlib.sha256(blob).hexdigest()


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


# ------------------------------------------------------------------------------------ describing
def describe_local(folder: str | Path) -> dict[str, Any]:
    """``{"commit": None, "files": {name: {"sha256", "size", "source": "local"}}}`` of a folder's weight files."""
    folder = Path(folder)
    files = {}
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if path.is_file() and is_weight_file(path.name):
            files[path.name] = {"sha256": file_sha256(path), "size": path.stat().st_size, "source": "local"}
    return {"commit": None, "files": files}


def describe_hub(repo: str, revision: str | None, api: Any = None) -> dict[str, Any]:
    """Commit and weight-file sha256 of ``repo@revision`` from the hub's metadata (nothing downloaded)."""
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    info = api.model_info(repo, revision=revision, files_metadata=True)
    files = {}
    for sibling in info.siblings or []:
        if not is_weight_file(sibling.rfilename):
            continue
        lfs = sibling.lfs
        sha = lfs.get("sha256") if isinstance(lfs, Mapping) else getattr(lfs, "sha256", None)
        files[sibling.rfilename] = {"sha256": sha, "size": sibling.size, "source": "hub metadata",
                                    **({} if sha else {"git_blob": sibling.blob_id})}
    return {"commit": info.sha, "files": files}


def describe_hub_cache(repo: str, revision: str | None) -> dict[str, Any]:
    """Commit and weight-file sha256 of ``repo@revision`` from the local Hugging Face cache (offline)."""
    from huggingface_hub import snapshot_download

    snapshot = Path(snapshot_download(repo, revision=revision, local_files_only=True))
    files = {}
    for path in sorted(snapshot.iterdir()):
        if not (path.is_file() and is_weight_file(path.name)):
            continue
        blob = Path(os.path.realpath(path)).name
        if _SHA256.match(blob):  # the hub cache stores an LFS file under its sha256
            files[path.name] = {"sha256": blob, "size": path.stat().st_size, "source": "hub cache (blob name)"}
        else:
            files[path.name] = {"sha256": file_sha256(path), "size": path.stat().st_size, "source": "local"}
    return {"commit": snapshot.name, "files": files}


def describe_checkpoint(ref, api: Any = None) -> dict[str, Any]:
    """``{"repo", "requested_revision", "commit", "files", "weights_sha256"}`` for a checkpoint reference.

    Never raises for an unreachable hub: the record then carries ``"error"`` (the load itself
    reports missing checkpoints).
    """
    record: dict[str, Any] = {"repo": None, "requested_revision": ref.revision, "commit": None, "files": {}}
    location = ref.location
    try:
        if location is None:  # a scratch model: nothing was loaded
            return {**record, "weights_sha256": None}
        if Path(str(location)).expanduser().is_dir():
            record.update(path=str(Path(str(location)).expanduser().resolve()), **describe_local(Path(str(location)).expanduser()))
        else:
            record["repo"] = str(location)
            if api is None and _offline():
                record.update(describe_hub_cache(str(location), ref.revision))
            else:
                record.update(describe_hub(str(location), ref.revision, api=api))
    except Exception as e:  # noqa: BLE001 - a record we cannot complete must not stop the run
        record["error"] = " ".join(str(e).split())[:300] or type(e).__name__
    record["weights_sha256"] = weights_fingerprint(record["files"])
    return record


def model_record(loaded, **extra: Any) -> dict[str, Any]:
    """The ``model`` section of every result file: what was asked for and exactly what was loaded."""
    ref = loaded.ref
    checkpoint = getattr(loaded, "checkpoint", None) or describe_checkpoint(ref)
    record = {"name": ref.name, "family": ref.family, "step": ref.step, "location": ref.location,
              "revision": ref.revision, **extra,
              "commit": checkpoint.get("commit"), "weights_sha256": checkpoint.get("weights_sha256"),
              "loaded": checkpoint}
    return record


# ------------------------------------------------------------------------------------ locking
def lock_key(ref) -> str:
    """``repo@revision`` for hub checkpoints, the resolved folder for local ones."""
    location = str(ref.location)
    if Path(location).expanduser().is_dir():
        return str(Path(location).expanduser().resolve())
    return f"{location}@{ref.revision or 'main'}"


def apply_lock(lock_file: str | Path, ref, checkpoint: dict[str, Any]) -> dict[str, Any]:
    """Check ``checkpoint`` (from :func:`describe_checkpoint`) against ``lock_file``, or pin it there.

    Returns the checkpoint record to load (its ``commit`` is what the hub load must use). Raises
    :class:`KdynError` when the checkpoint cannot be resolved, the branch now points to another
    commit, or a weight file's hash changed.
    """
    path = Path(str(lock_file)).expanduser()
    key = lock_key(ref)
    if checkpoint.get("error"):
        raise KdynError(f"model.revision_lock={lock_file}: cannot resolve {key} to verify it against the lock "
                        f"({checkpoint['error']}); run with network access (or with the checkpoint in the Hugging Face "
                        "cache), or drop model.revision_lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(path.with_name(path.name + ".lock")):
        entries = _read_lock(path)
        pinned = entries.get(key)
        if pinned is None:
            entries[key] = {"commit": checkpoint.get("commit"),
                            "files": {n: f.get("sha256") for n, f in checkpoint.get("files", {}).items()}}
            atomic_write_text(path, json.dumps(entries, indent=2, sort_keys=True) + "\n")
            return checkpoint
    if pinned.get("commit") and checkpoint.get("commit") != pinned["commit"]:
        raise KdynError(
            f"model.revision_lock={lock_file} pins {key} to commit {pinned['commit']}, but it now resolves to "
            f"{checkpoint.get('commit')} (the branch moved); to load the locked bytes use "
            f"model.revision={pinned['commit']}, or delete the entry {key!r} from {lock_file} to pin the new commit")
    now = {n: f.get("sha256") for n, f in checkpoint.get("files", {}).items()}
    locked_files = pinned.get("files") or {}
    changed = sorted(n for n in set(now) | set(locked_files) if now.get(n) != locked_files.get(n))
    if changed:
        first = changed[0]
        raise KdynError(
            f"model.revision_lock={lock_file}: weight file {first!r} of {key} changed since it was locked "
            f"(sha256 {str(locked_files.get(first))[:12]}… locked, {str(now.get(first))[:12]}… now"
            f"{'; ' + str(len(changed) - 1) + ' more files differ' if len(changed) > 1 else ''}); restore the "
            f"locked file, or delete the entry {key!r} from {lock_file} to pin the current bytes")
    return checkpoint


def _read_lock(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise KdynError(f"model.revision_lock={path} is not a readable JSON lock file ({' '.join(str(e).split())}); "
                        "fix or delete it (a missing file is created by the next run)") from None
    if not isinstance(data, dict):
        raise KdynError(f"model.revision_lock={path} holds {type(data).__name__}, not a JSON object; delete it to re-pin")
    return data

