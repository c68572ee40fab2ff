"""Checkpoints are replaced atomically: written to a temporary name in the same folder, then renamed.

A job killed while saving (SIGKILL after the grace period, a full disk) leaves the previous
``last.ckpt`` intact instead of a truncated file; a reader never sees half a checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from kdyn.utils.io import atomic_path


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        target = Path(path)
        if "://" in str(path):  # remote filesystems: fsspec's own write
            return super().save_checkpoint(checkpoint, path, storage_options)
        with atomic_path(target) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)
        return None
