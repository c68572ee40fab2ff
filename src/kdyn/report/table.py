"""``summary.csv``: one row per run, and a short human-readable table for the terminal.

Columns, in order:

* identity: ``run_dir`` (absolute), ``run`` (short name), ``status``, ``kind``, ``error``,
  ``sweep_dir``, ``job_num``, ``task_name``, ``model``, ``model_step``, ``corpus``, ``seed``,
  ``condition`` and ``n_seeds`` (the runs it is pooled with over seeds, `kdyn.report.seeds`),
  ``identical_weights_as`` (other steps of the model with the same weight hash, `kdyn.report.integrity`);
* the chosen option of each config group (``group.model``, ``group.corpus``, … from
  ``.hydra/hydra.yaml``; kdyn's run groups first, then any others alphabetically);
* ``overrides`` (the command-line overrides joined by spaces);
* every value of ``results.json`` then of ``entropy.json``, flattened to dotted names with the prefix
  ``results.`` / ``entropy.`` (``results.model.step``, ``entropy.settings.seq_len`` …), in the order
  the files list them. Lists (e.g. ``entropy.per_layer``) are written as JSON strings.

Numbers are written with Python's ``repr``, so every float reads back exactly as the JSON held it,
and integers stay integers even when other runs lack the column (empty cell).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from kdyn.report.collect import Run

RUN_GROUPS = ("model", "corpus", "intervention", "trainer", "logger", "callbacks", "experiment")
IDENTITY = ("run_dir", "run", "status", "kind", "error", "sweep_dir", "job_num", "task_name",
            "model", "model_step", "corpus", "seed", "condition", "n_seeds", "identical_weights_as")


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts → ``{"a.b.c": scalar}``; lists and tuples become JSON strings."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            if value:
                out.update(flatten(value, f"{name}."))
            else:
                out[name] = "{}"
        elif isinstance(value, (list, tuple)):
            out[name] = json.dumps(value, default=str)
        else:
            out[name] = value
    return out


def summary_row(run: Run) -> dict[str, Any]:
    """The summary.csv row of one run (a dict of column → Python value)."""
    row: dict[str, Any] = {
        "run_dir": str(run.path),
        "run": run.name,
        "status": run.status,
        "kind": run.kind,
        "error": run.error,
        "sweep_dir": str(run.sweep_dir) if run.sweep_dir else None,
        "job_num": run.job_num,
        "task_name": run.config_value("task_name"),
        "model": run.model_name,
        "model_step": run.model_step,
        "corpus": run.corpus_name,
        "seed": run.seed,
    }
    for group, choice in run.choices.items():
        row[f"group.{group}"] = choice
    row["overrides"] = " ".join(run.overrides)
    if run.results is not None:
        row.update(flatten(run.results, "results."))
    if run.entropy is not None:
        row.update(flatten(run.entropy, "entropy."))
    if isinstance(run.trace, dict):
        row.update(flatten({k: v for k, v in run.trace.items() if k != "settings"}, "trace."))
    return row


def summary_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Identity columns, then ``group.*``, ``overrides``, ``results.*``, ``entropy.*``, then anything else."""
    seen: dict[str, None] = {}
    for row in rows:
        for key in row:
            seen.setdefault(key, None)
    groups = [k for k in seen if k.startswith("group.")]
    order = {g: i for i, g in enumerate(RUN_GROUPS)}
    groups.sort(key=lambda k: (order.get(k[len("group."):], len(order)), k))
    columns = [c for c in IDENTITY if c in seen] + groups + (["overrides"] if "overrides" in seen else [])
    columns += [k for k in seen if k.startswith("results.")] + [k for k in seen if k.startswith("entropy.")]
    columns += [k for k in seen if k.startswith("trace.")]
    columns += [k for k in seen if k not in set(columns)]
    return columns


def format_cell(value: Any) -> str:
    """CSV text of one value: exact numbers (``repr``), empty for None/NaN, JSON for containers."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str)
    return str(value)


def csv_text(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """``rows`` as CSV text with ``columns`` (cells written by :func:`format_cell`)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([format_cell(row.get(c)) for c in columns])
    return buf.getvalue()


# --- the terminal table -----------------------------------------------------------------------

def _headline(run: Run) -> str:
    """The one number that says most about a run."""
    parts = []
    if isinstance(run.results, dict) and isinstance(run.results.get("final_loss"), (int, float)):
        parts.append(f"loss {run.results['final_loss']:.4g}")
    if isinstance(run.entropy, dict) and isinstance(run.entropy.get("total"), (int, float)):
        text = f"H {run.entropy['total']:.4g}"
        if isinstance(run.entropy.get("normalized_total"), (int, float)):
            text += f" ({run.entropy['normalized_total']:.3f} of max)"
        parts.append(text)
    if not parts and run.status == "incomplete":
        parts.append("no result file; has last.ckpt: resumable" if run.resumable else "no result file, no checkpoint")
    elif not parts and run.error:
        parts.append(run.error)
    return "; ".join(parts)


def _truncate(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def format_table(runs: Sequence[Run], max_width: int = 36) -> str:
    """A fixed-width table of the runs (wide cells truncated with …) for the terminal."""
    header = ["run", "status", "kind", "model", "step", "corpus", "overrides", "result"]
    body = []
    for run in runs:
        step = run.model_step
        body.append([run.name, run.status, run.kind or "?", run.model_name or "", "" if step is None else str(step),
                     run.corpus_name or "", " ".join(run.overrides), _headline(run)])
    limits = [max_width + 12, 12, 7, 20, 8, 14, max_width, max_width + 12]
    cells = [[_truncate(c, lim) for c, lim in zip(row, limits)] for row in [header, *body]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
