"""Silence third-party noise that says nothing about the run (kept out of the researcher's log)."""

from __future__ import annotations

import logging
import warnings

_DROPPED_WARNINGS = (
    r".*isinstance\(treespec, LeafSpec\).*",  # torch/lightning internal deprecation
    r".*Experiment logs directory .* exists and is not empty.*",  # CSVLogger writing into the run folder
    r".*does not have many workers which may be a bottleneck.*",  # in-memory batches need no workers
    r".*Checkpoint directory .* exists and is not empty.*",
)


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "💡 Tip" not in str(record.getMessage())


def quiet_third_party() -> None:
    for pattern in _DROPPED_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropTips())
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass
