"""``coefficients.safetensors``: the [layers × d_ff] table of mean |memory coefficient| of a checkpoint.

Written by ``kdyn-entropy``, read by resuscitation and rescaling (``intervention.coefficients``).
One tensor ``mean_abs_coefficients`` when every layer has the same width, else ``layer_<i>`` per layer;
the metadata names the model, its step, the token count and the definition.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from kdyn.utils.io import atomic_path

COEFFICIENTS_FILE = "coefficients.safetensors"


def save_coefficients(path: Path, metric, record: Mapping[str, Any]) -> None:
    """Write ``metric``'s mean coefficients (a `KnowledgeEntropy`) atomically, described by ``record``."""
    from safetensors.torch import save_file

    tensors = {f"layer_{i}": c.float().contiguous() for i, c in enumerate(metric.mean_coefficients())}
    if len(set(metric.d_ff)) == 1:
        tensors = {"mean_abs_coefficients": torch.stack(list(tensors.values()))}
    metadata = {"model": str(record["model"]["name"]), "step": str(record["model"]["step"]),
                "num_tokens": str(record["num_tokens"]), "definition": "mean |down_proj input| over non-padding tokens"}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_coefficients(path: str | Path) -> torch.Tensor | list[torch.Tensor]:
    """The ``[layers × d_ff]`` table of C̄ written by kdyn-entropy (a list when widths differ)."""
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    if "mean_abs_coefficients" in tensors:
        return tensors["mean_abs_coefficients"]
    return [tensors[f"layer_{i}"] for i in range(len(tensors))]
