"""``intervention=resuscitate``: Kim et al. (2025), Algorithm 1, "Resuscitating low memory coefficients".

A one-shot weight edit before continual training (then the run trains normally, optimizer fresh),
exactly as the official ``analysis/change_parameters.py``: from the table C̄ of mean |coefficients|
of the *same* checkpoint, for every layer l

    threshold_l = torch.quantile(C̄_l, q)                   (per layer)
    S_l         = {i : C̄_l,i ≤ threshold_l}                 (ties included)
    up_rows_l[i] ← up_rows_l[i] · p · mean(C̄_l) / C̄_l,i    for i ∈ S_l

Only the up (value) half of the gated MLP is scaled — the gate, the down projection and attention
are untouched and nothing is renormalised. Because a SwiGLU coefficient ``silu(g_i·x) · (u_i·x)`` is
linear in the up row u_i, slot i's coefficient is multiplied by exactly that factor for every token,
so each selected slot is pushed to ≈ p × its layer's mean coefficient (later layers then see
changed inputs). The arithmetic is float64, the result cast back to the weight's dtype. Where the
up projection has a bias, the row's bias entry is scaled too (the coefficient is linear in both).

**Fused gate/up layouts** (Phi-3/GLM ``gate_up_proj`` = ``[gate; up]``, OLMo-1 native ``ff_proj`` =
``[up; gate]``): the up rows are the up half of the fused weight, located by ``kdyn.models.ffn``'s
table (or ``model.ffn.up_proj`` + ``model.ffn.up_half``); only that half is edited.

**Dead slots** (C̄_l,i = 0, e.g. an all-zero up row): their multiplier would be infinite (the
official code would write inf/NaN weights). They are counted as selected but left unchanged, with a
warning giving the count: a coefficient that is exactly zero for every token stays zero under any
finite row scale, so skipping loses nothing that clamping could have bought.

**Non-gated MLPs** (GPT-NeoX/Pythia, GPT-2, Phi-2, MPT, ...): the coefficient ``gelu(W_in x)`` is not
linear in any row of the up projection, so no row scale sets it; this raises before anything is
measured and points to ``intervention=rescale`` (or, for a gated MLP with unknown names, to
``model.ffn.up_proj``).

**Record** (``intervention.json``): ``q``, ``p``, the table's source, per layer the selected /
scaled / dead counts, the threshold and the multiplier's min/mean/max; knowledge entropy of the table
that drove the selection, and *before* and *after* the edit measured on the measurement set
``intervention.measure`` (so both are measured alike even when the table came from a file).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from kdyn.errors import KdynError
from kdyn.interventions import Intervention, InterventionContext, register
from kdyn.interventions.measurement import (
    coefficient_table,
    entropy_record,
    measure_table,
    measurement_batches,
    select_slots,
)

log = logging.getLogger(__name__)


@register("resuscitate")
class Resuscitate(Intervention):
    """Scale the up-projection rows of each layer's low-C̄ slots by ``p · mean(C̄_l) / C̄_l,i``."""

    def __init__(self, q: float = 0.5, p: float = 2.0, coefficients: str | None = None,
                 measure: dict[str, Any] | None = None):
        super().__init__(q=q, p=p, coefficients=coefficients, measure=measure)
        if not 0.0 <= float(q) <= 1.0:
            raise KdynError(f"intervention.q must be a quantile in [0, 1], got {q}")
        if not float(p) > 0:
            raise KdynError(f"intervention.p (the amplifying factor) must be positive, got {p}")
        self.q, self.p = float(q), float(p)
        self.coefficients = coefficients
        self.measure = dict(measure or {})

    def apply(self, ctx: InterventionContext) -> dict[str, Any]:
        ffn = ctx.ffn
        ffn.require_up_rows("intervention=resuscitate")  # before any measurement: fail fast
        batches, measured_on = measurement_batches(self.measure, ctx.cfg, ctx.tokenizer)
        table, source = coefficient_table(ctx, self.coefficients, self.measure, batches=batches)
        if source["kind"] == "file":
            before = measure_table(ctx.model, ffn, batches)
        else:
            before, source["measurement_set"] = table, measured_on
        layers = resuscitate(ffn, table, self.q, self.p)
        after = measure_table(ctx.model, ffn, batches)

        dead = sum(layer["dead"] for layer in layers)
        if dead:
            log.warning("resuscitate: %d selected slot(s) have C̄ = 0 (dead: no coefficient to amplify, the "
                        "multiplier would be infinite); their up rows are left unchanged", dead)
        selected = sum(layer["selected"] for layer in layers)
        d_ff = sum(ffn.d_ff)
        log.info("resuscitate: scaled the up rows of %d of %d slots (q=%g, p=%g)", selected - dead, d_ff, self.q, self.p)
        return {
            "q": self.q,
            "p": self.p,
            "coefficients": source,
            "selected": selected,
            "scaled": selected - dead,
            "dead": dead,
            "slots": d_ff,
            "layers": layers,
            "knowledge_entropy": {
                "measured_on": measured_on,
                "table": entropy_record(table),
                "before": entropy_record(before),
                "after": entropy_record(after),
                "note": "table: the C̄ that drove the selection; before/after: measured on the measurement set "
                        "(intervention.measure) just before and just after the edit",
            },
        }


@torch.no_grad()
def resuscitate(ffn: Any, table: list[torch.Tensor], q: float, p: float) -> list[dict[str, Any]]:
    """Edit the up rows of ``ffn``'s layers in place from ``table``; returns one record per layer."""
    records = []
    for layer, row in zip(ffn.layers, table):
        row = row.double().cpu()
        mask, threshold = select_slots(row, "quantile", q=q)
        live = mask & (row > 0)
        index = live.nonzero(as_tuple=True)[0]
        multiplier = row.mean() / row[index] * p  # the official code's expression and order
        weight = layer.up_rows()  # [d_ff, d_model] view of the up rows (one half of a fused gate/up weight)
        bias = layer.up_bias()  # [d_ff] view, or None: a coefficient is linear in its row AND its bias entry
        if index.numel():
            rows = index.to(weight.device)
            factor = multiplier.to(weight.device)
            weight[rows] = (weight[rows].double() * factor.unsqueeze(1)).to(weight.dtype)
            if bias is not None:
                bias[rows] = (bias[rows].double() * factor).to(bias.dtype)
        records.append({
            "layer": layer.index,
            "d_ff": layer.d_ff,
            "selected": int(mask.sum()),
            "scaled": int(index.numel()),
            "dead": int((mask & (row <= 0)).sum()),
            "threshold": threshold,
            "multiplier": ({"min": float(multiplier.min()), "mean": float(multiplier.mean()),
                            "max": float(multiplier.max())} if index.numel() else None),
        })
    return records
