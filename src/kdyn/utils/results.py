"""How the parts of a run contribute their own sections of ``results.json`` (one small protocol).

Any object the training job holds — a callback, the datamodule, the injection schedule's summary —
may define ``result_section(out) -> ResultSection | None``. After ``Trainer.fit`` (global rank zero,
a run not interrupted) :func:`collect_result_sections` merges every section's values into
``results.json`` and appends its rows to the printed summary table; the composition root
(``kdyn.train``) names no feature.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


@dataclass
class ResultSection:
    values: dict[str, Any]                                     # top-level keys of results.json
    rows: list[tuple[str, str]] = field(default_factory=list)  # (label, text) lines of the summary table


@runtime_checkable
class ContributesResults(Protocol):
    def result_section(self, out: Path) -> ResultSection | None: ...


def collect_result_sections(parts: Iterable[Any], out: Path) -> ResultSection:
    """The sections of every part that contributes one, in order, merged."""
    merged = ResultSection({})
    for part in parts:
        if not isinstance(part, ContributesResults):
            continue
        section = part.result_section(out)
        if section is not None:
            merged.values.update(section.values)
            merged.rows.extend(section.rows)
    return merged
