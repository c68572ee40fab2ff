"""The device a measurement runs on, from a config value (``auto``, ``cpu``, ``cuda``, ``cuda:<index>``)."""

from __future__ import annotations

import torch

from kdyn.errors import KdynError


def pick_device(name: str | None, key: str) -> torch.device:
    """``auto`` (or null): CUDA when available, else the CPU; any other value as torch spells it."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(str(name))
    except RuntimeError:
        raise KdynError(f"unknown {key} {name!r}; use auto, cpu, cuda or cuda:<index>") from None
