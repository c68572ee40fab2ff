"""The table of mean |memory coefficients| C̄ that coefficient interventions select slots from.

Resuscitation and rescaling both need, per FFN layer l, the vector C̄_l over its d_ff slots (the
quantity knowledge entropy is computed from, `kdyn.metrics.knowledge_entropy`). It comes either

* from a file: ``intervention.coefficients=PATH`` — the ``coefficients.safetensors`` that
  ``kdyn-entropy`` writes, or that run's folder — which must describe the *same* checkpoint; or
* from a measurement on the fly on the *measurement set* ``intervention.measure``
  (``num_sequences``, ``seq_len``, ``batch_size``, ``pack``, ``corpus``; ``corpus: null`` means the
  training corpus ``cfg.corpus``), built exactly as ``kdyn-entropy`` builds its set.

Tables are handled as one float64 vector per layer (layers may differ in width). Measurements run
on the device the model is on when the intervention is applied (the CPU before the Trainer moves it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from kdyn.errors import KdynError
from kdyn.metrics.knowledge_entropy import layer_entropy
from kdyn.metrics.slots import SELECTIONS, select_slots
from kdyn.models.ffn import FFNMap

Table = list[torch.Tensor]  # C̄_l per layer, float64 [d_ff_l]

__all__ = ["SELECTIONS", "Table", "coefficient_table", "select_slots"]  # selection: kdyn.metrics.slots


def coefficient_table(ctx: Any, coefficients: str | Path | None, measure: Mapping[str, Any] | None,
                      batches: Sequence[Mapping[str, torch.Tensor]] | None = None) -> tuple[Table, dict[str, Any]]:
    """C̄ of ``ctx.model`` from the file ``coefficients``, else measured on ``batches`` (the measurement set
    built from ``measure`` when not given); checked against the model. Returns it and its source."""
    if coefficients:
        table, file, metadata = load_table(coefficients)
        source = {"kind": "file", "path": str(file), "metadata": metadata}
        check_table(table, ctx.ffn, str(file))
        return table, source
    described: dict[str, Any] | None = None
    if batches is None:
        batches, described = measurement_batches(measure, ctx.cfg, ctx.tokenizer)
    table = measure_table(ctx.model, ctx.ffn, batches)
    check_table(table, ctx.ffn, "the measurement set")
    return table, {"kind": "measured", **({"measurement_set": described} if described else {})}


def measurement_batches(measure: Mapping[str, Any] | None, cfg: Any, tokenizer: Any,
                        key: str = "intervention.measure") -> tuple[list[dict[str, torch.Tensor]], dict[str, Any]]:
    """The measurement set described by ``measure`` and a description of it for the record."""
    from kdyn.config import to_plain
    from kdyn.data import corpora
    from kdyn.data.sequences import document_batches, packed_batches

    node = dict(to_plain(measure) or {})
    corpus = to_plain(node.get("corpus")) or (to_plain(cfg.corpus) if cfg is not None else None)
    if not corpus:
        raise KdynError(f"{key}.corpus is null and there is no training corpus to fall back on; set {key}.corpus")
    seq_len = node.get("seq_len") or (int(cfg.data.seq_len) if cfg is not None else None)
    if not seq_len:
        raise KdynError(f"{key}.seq_len is not set; give the measurement set's sequence length")
    common = dict(num_sequences=int(node.get("num_sequences", 256)), seq_len=int(seq_len),
                  batch_size=int(node.get("batch_size", 16)), key=key)
    if common["batch_size"] < 1:
        raise KdynError(f"{key}.batch_size must be at least 1, got {common['batch_size']}")
    documents = corpora.load_documents(corpus)
    pack = bool(node.get("pack", False))
    batches = packed_batches(documents, tokenizer, **common) if pack else document_batches(documents, tokenizer, **common)
    tokens = int(sum(int(b["attention_mask"].sum()) for b in batches))
    described = {"corpus": corpora.describe(corpus), "from_training_corpus": node.get("corpus") is None,
                 "num_sequences": common["num_sequences"], "seq_len": common["seq_len"], "pack": pack,
                 "num_tokens": tokens}
    return batches, described


def measure_table(model: torch.nn.Module, ffn: FFNMap, batches: Sequence[Mapping[str, torch.Tensor]]) -> Table:
    """C̄ per layer (float64) of ``model`` on ``batches`` (eval mode, padding excluded)."""
    from kdyn.metrics.recorder import measure

    metric = measure(model, ffn, batches)
    return [c.detach().double().cpu() for c in metric.mean_coefficients()]


def load_table(path: str | Path, key: str = "intervention.coefficients") -> tuple[Table, Path, dict[str, str]]:
    """The table in a ``coefficients.safetensors`` (or a kdyn-entropy run folder holding one)."""
    from safetensors import safe_open

    from kdyn.metrics.coefficients import COEFFICIENTS_FILE, load_coefficients

    file = Path(path).expanduser()
    if file.is_dir():
        file = file / COEFFICIENTS_FILE
    if not file.is_file():
        raise KdynError(f"{key}={path}: no such file; give the {COEFFICIENTS_FILE} that kdyn-entropy wrote for this "
                        f"checkpoint (or its run folder), or set {key}=null to measure the table now")
    try:
        loaded = load_coefficients(file)
        with safe_open(str(file), framework="pt") as f:
            metadata = dict(f.metadata() or {})
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise KdynError(f"{key}={path}: not a kdyn coefficients file ({e}); write one with kdyn-entropy") from None
    rows = list(loaded) if isinstance(loaded, list) else list(loaded.unbind(0)) if loaded.ndim == 2 else [loaded]
    return [r.detach().double().cpu() for r in rows], file, metadata


def check_table(table: Table, ffn: FFNMap, source: str) -> None:
    """Raise unless ``table`` has one row of d_ff non-negative finite values per FFN layer of the model."""
    shape = _shape(table)
    expected = _shape_of(ffn.d_ff)
    if [t.ndim for t in table] != [1] * len(table) or tuple(t.numel() for t in table) != ffn.d_ff:
        raise KdynError(f"the coefficient table from {source} has shape {shape} but the model has {expected} "
                        "(layers × d_ff); use a table measured on this very checkpoint (kdyn-entropy) or set "
                        "intervention.coefficients=null to measure it now")
    for i, row in enumerate(table):
        if not bool(torch.isfinite(row).all()) or bool((row < 0).any()):
            raise KdynError(f"the coefficient table from {source} has negative or non-finite values in layer {i}; "
                            "C̄ is a mean of absolute values — regenerate it with kdyn-entropy")


def entropy_record(table: Table) -> dict[str, Any]:
    """Knowledge entropy of a C̄ table: ``total`` and ``per_layer`` (nats), and the maximum Σ ln d_ff."""
    per_layer = [float(layer_entropy(row.unsqueeze(0))[0]) for row in table]
    return {"total": float(sum(per_layer)), "per_layer": per_layer,
            "max_total": float(sum(math.log(row.numel()) for row in table))}


def _shape(table: Table) -> str:
    widths = sorted({tuple(t.shape) for t in table})
    if len(widths) == 1 and len(widths[0]) == 1:
        return f"[{len(table)} × {widths[0][0]}]"
    return f"{len(table)} rows of shapes {[list(t.shape) for t in table]}"


def _shape_of(d_ff: Sequence[int]) -> str:
    widths = set(d_ff)
    if len(widths) == 1:
        return f"[{len(d_ff)} × {next(iter(widths))}]"
    return f"{len(d_ff)} layers of widths {list(d_ff)}"
