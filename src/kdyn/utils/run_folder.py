"""A run folder belongs to one process at a time, and ``resume=false`` starts it over cleanly.

* :class:`RunFolderLock` — an OS file lock (``filelock``: ``flock`` on ``<run>/.kdyn.lock``) held for
  the whole run by the process that writes the folder (global rank 0). A second run of the same
  folder fails at once with one line naming the holder (pid, host, start time, command). The OS drops
  the lock when the holder exits in any way (even ``kill -9``), so a stale lock cannot block a rerun.
  Hydra writes the refused run's ``.hydra/*.yaml`` before kdyn's code runs; the holder restores its
  own record when it releases the folder.
* :func:`start_over` — ``resume=false`` moves what an earlier run left (checkpoints, metrics, results
  …) into ``<run>/replaced/<UTC time>/``, so a later plain rerun can never resume the old run's
  checkpoint, and nothing the old run produced is lost.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import socket
import sys
from pathlib import Path

from kdyn.errors import KdynError
from kdyn.utils.io import atomic_write_bytes

LOCK_FILE = ".kdyn.lock"
OWNER_FILE = ".kdyn.lock.json"
REPLACED_DIR = "replaced"
# Left in place by start_over: Hydra's record of the new run, its log, the lock.
_KEEP = {".hydra", LOCK_FILE, OWNER_FILE, REPLACED_DIR}


class RunFolderBusy(KdynError):
    """Another live process holds the run folder (nothing of this run was written into it)."""


class RunFolderLock:
    """``with RunFolderLock(folder): …`` — hold ``folder`` for this process, or raise :class:`RunFolderBusy`."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self._lock = None
        self._record: dict[Path, bytes] = {}

    def __enter__(self) -> RunFolderLock:
        from filelock import FileLock, Timeout

        self.folder.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.folder / LOCK_FILE), timeout=0, thread_local=False)
        try:
            lock.acquire()
        except Timeout:
            raise RunFolderBusy(f"run folder {self.folder} is in use by {describe_owner(self.folder)}; wait for that "
                                "run to finish (or stop it: it saves a checkpoint and this command then resumes it), "
                                "or give this run another run_id / output folder") from None
        self._lock = lock
        self._record = {p: p.read_bytes() for p in sorted((self.folder / ".hydra").glob("*.yaml"))}
        owner = {"pid": os.getpid(), "host": socket.gethostname(),
                 "since": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
                 "command": " ".join(sys.argv)}
        (self.folder / OWNER_FILE).write_text(json.dumps(owner) + "\n")
        return self

    def __exit__(self, *exc) -> None:
        if self._lock is not None:
            for path, content in self._record.items():  # a refused run's Hydra overwrote them: put ours back
                if not path.is_file() or path.read_bytes() != content:
                    atomic_write_bytes(path, content)
            (self.folder / OWNER_FILE).unlink(missing_ok=True)
            self._lock.release()
            self._lock = None


def describe_owner(folder: Path) -> str:
    try:
        owner = json.loads((folder / OWNER_FILE).read_text())
        return (f"pid {owner.get('pid')} on {owner.get('host')} (since {owner.get('since')}: "
                f"{owner.get('command') or '?'})")
    except (OSError, ValueError):
        return "another process (it has not recorded its pid yet)"


def start_over(folder: str | Path) -> Path | None:
    """Move everything an earlier run left in ``folder`` to ``folder/replaced/<UTC time>/``; returns
    that folder, or None when there was nothing to move."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    old = [p for p in folder.iterdir() if p.name not in _KEEP and p.suffix != ".log"]
    if not old:
        return None
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H-%M-%S-%fZ")
    target = folder / REPLACED_DIR / stamp
    target.mkdir(parents=True)
    for path in old:
        shutil.move(str(path), str(target / path.name))
    return target


def is_global_rank_zero() -> bool:
    """Whether this process is global rank 0 (read from the launcher's environment, as Lightning does,
    before any Trainer exists): the one process of a DDP job that owns and writes the run folder."""
    for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "JSM_NAMESPACE_RANK"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key]) == 0
    return True


def is_bookkeeping(path: Path) -> bool:
    """Files that do not make a run folder hold results (the lock and its owner record)."""
    return path.name in (LOCK_FILE, OWNER_FILE)
