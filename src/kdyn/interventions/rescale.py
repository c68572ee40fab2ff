"""``intervention=rescale``: multiply low-activity memory coefficients by a factor during training.

The training-time counterpart of resuscitation that works for every architecture: instead of
editing up-projection rows (possible only for gated MLPs), a forward pre-hook on each down
projection multiplies the selected coefficients themselves (`kdyn.callbacks.rescale`).

``apply`` makes the initial selection before training from C̄ of the checkpoint —
``intervention.coefficients`` (a kdyn-entropy ``coefficients.safetensors`` or its run folder) or
measured on the measurement set ``intervention.measure`` — per layer with ``select``:
``quantile`` (C̄ ≤ per-layer ``q``-quantile, ties included), ``bottom_k`` or ``top_k`` (``k`` slots).
``recompute=every_n_steps`` re-selects during training from the training batches' raw C̄.
The returned record (``intervention.json``) holds the settings and the initial selection's
per-layer counts and thresholds; the slot indices of every selection go to ``rescale_selection.json``.
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl

from kdyn.callbacks.rescale import RECOMPUTE, SELECTION_FILE, RescaleCoefficients
from kdyn.errors import KdynError
from kdyn.interventions import Intervention, InterventionContext, register
from kdyn.interventions.measurement import SELECTIONS, coefficient_table, entropy_record, select_slots


@register("rescale")
class Rescale(Intervention):
    """Scale the selected coefficients by ``factor`` in every training forward (see the module docstring)."""

    def __init__(self, factor: float = 2.0, select: str = "quantile", q: float | None = 0.5, k: int | None = None,
                 recompute: str = "start", every_n_steps: int = 100, at_eval: bool = False, anneal: bool = False,
                 coefficients: str | None = None, measure: dict[str, Any] | None = None):
        super().__init__(factor=factor, select=select, q=q, k=k, recompute=recompute, every_n_steps=every_n_steps,
                         at_eval=at_eval, anneal=anneal, coefficients=coefficients, measure=measure)
        if not math.isfinite(float(factor)) or float(factor) < 0:
            raise KdynError(f"intervention.factor must be a finite number ≥ 0, got {factor}")
        if select not in SELECTIONS:
            raise KdynError(f"intervention.select must be one of {', '.join(SELECTIONS)}, got {select!r}")
        if select == "quantile" and (q is None or not 0.0 <= float(q) <= 1.0):
            raise KdynError(f"intervention.select=quantile needs intervention.q in [0, 1], got {q}")
        if select != "quantile" and (k is None or int(k) < 1):
            raise KdynError(f"intervention.select={select} needs intervention.k ≥ 1 (slots per layer), got {k}")
        if recompute not in RECOMPUTE:
            raise KdynError(f"intervention.recompute must be one of {', '.join(RECOMPUTE)}, got {recompute!r}")
        if int(every_n_steps) < 1:
            raise KdynError(f"intervention.every_n_steps must be at least 1, got {every_n_steps}")
        self.factor, self.select = float(factor), select
        self.q = float(q) if q is not None else None
        self.k = int(k) if k is not None else None
        self.recompute, self.every_n_steps = recompute, int(every_n_steps)
        self.at_eval, self.anneal = bool(at_eval), bool(anneal)
        self.coefficients, self.measure = coefficients, dict(measure or {})
        self._callback: RescaleCoefficients | None = None

    def apply(self, ctx: InterventionContext) -> dict[str, Any]:
        table, source = coefficient_table(ctx, self.coefficients, self.measure)
        chosen = [select_slots(row, self.select, q=self.q, k=self.k) for row in table]
        self._callback = RescaleCoefficients(
            ctx.ffn, [m for m, _ in chosen], factor=self.factor, select=self.select, q=self.q, k=self.k,
            recompute=self.recompute, every_n_steps=self.every_n_steps, at_eval=self.at_eval, anneal=self.anneal,
            dirpath=ctx.output_dir, source=f"initial: {source['kind']}", thresholds=[t for _, t in chosen])
        return {
            "factor": self.factor, "select": self.select, "q": self.q, "k": self.k,
            "recompute": self.recompute, "every_n_steps": self.every_n_steps if self.recompute != "start" else None,
            "at_eval": self.at_eval, "anneal": self.anneal,
            "coefficients": source,
            "knowledge_entropy_of_table": entropy_record(table),
            "selected": self._callback.selected(),
            "slots": sum(ctx.ffn.d_ff),
            "layers": [{"layer": i, "d_ff": int(m.numel()), "selected": int(m.sum()), "threshold": t}
                       for i, (m, t) in enumerate(chosen)],
            "selection_file": SELECTION_FILE,
            "hook": "forward pre-hook on each FFN down projection, prepended (other hooks see the scaled coefficients)",
        }

    def callbacks(self) -> list[pl.Callback]:
        if self._callback is None:
            raise KdynError("intervention=rescale: apply() must run before callbacks() (it makes the selection)")
        return [self._callback]
