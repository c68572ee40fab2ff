"""Log per-layer gradient L2 norms during training (``callbacks.grad_norms``; Fernandez et al. 2024).

Measured in ``on_before_optimizer_step``: in Lightning 2.x the precision plugin calls it after the
closure's backward (so with gradient accumulation the gradients of every micro-batch are summed, and
it runs once per optimizer step), after AMP unscaling and **before** ``clip_gradients`` — the logged
norms are the raw, pre-clipping gradients. At that point ``trainer.global_step`` counts the updates
done *before* this one, so the values are logged at ``step = global_step + 1``: the number of
updates done once this gradient has been applied, kdyn's step convention (``grad_norm/*`` at step
``s`` is the gradient of the batch trained in update ``s``, i.e. stream step ``s − 1``).

Every ``every_n_steps`` optimizer steps it logs ``grad_norm/layer_<i>`` (``split=block``) or
``grad_norm/layer_<i>.attn`` / ``.mlp`` (``split=attn_mlp``), ``grad_norm/other`` (embeddings, final
norm, head) and ``grad_norm/total`` (all parameters with a gradient, what norm clipping sees).
Parameters without a gradient (frozen: ``grad is None``) are skipped; a group with no gradient at all
is not logged. Between log steps nothing is computed and nothing is synchronised with the host.
Under DDP the gradients are already all-reduced; rank 0 computes and logs. FSDP (sharded gradients)
is not supported.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch

from kdyn.callbacks.log_utils import log_scalars
from kdyn.errors import KdynError
from kdyn.metrics.grad_norms import GroupedParameters, group_norms, group_parameters
from kdyn.models.ffn import locate_ffn, parameter_groups_by_layer

PREFIX = "grad_norm"


class GradNormLogger(pl.Callback):
    def __init__(self, every_n_steps: int = 10, split: str = "block", ffn: Mapping[str, Any] | None = None):
        if isinstance(every_n_steps, bool) or int(every_n_steps) < 1:
            raise KdynError(f"callbacks.grad_norms.every_n_steps must be at least 1, got {every_n_steps}")
        if split not in ("block", "attn_mlp"):
            raise KdynError(f"callbacks.grad_norms.split must be 'block' or 'attn_mlp', got {split!r}")
        self.every_n_steps = int(every_n_steps)
        self.split = split
        self.ffn_overrides = dict(ffn or {})
        self.grouped: GroupedParameters | None = None
        self.last_logged: dict[str, float] = {}

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After the strategy has set the model up and the intervention froze what it freezes.
        from lightning.pytorch.strategies import FSDPStrategy

        if isinstance(trainer.strategy, FSDPStrategy):
            raise KdynError("callbacks.grad_norms does not support FSDP (sharded gradients); "
                            "use trainer=gpu or trainer=ddp, or set callbacks.grad_norms.enabled=false")
        model = pl_module.model
        groups = parameter_groups_by_layer(model, locate_ffn(model, self.ffn_overrides), split=self.split)
        self.grouped = group_parameters(model, groups, drop_frozen_groups=True)

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        step = trainer.global_step + 1  # updates done once this gradient is applied
        if step % self.every_n_steps != 0 or not trainer.is_global_zero or self.grouped is None:
            return
        values = self.compute(self.grouped)
        self.last_logged = values
        log_scalars(trainer, values, step=step)

    @staticmethod
    def compute(grouped: GroupedParameters) -> dict[str, float]:
        """``{grad_norm/<group>: L2 norm, grad_norm/total: …}`` of the current ``.grad`` (None skipped)."""
        grads = [p.grad for p in grouped.params]
        has_grad = torch.zeros(len(grouped.names), dtype=torch.bool)
        present = [k for k, g in enumerate(grads) if g is not None]
        has_grad[grouped.index[present]] = True
        norms = group_norms(grads, grouped, "l2")
        total = norms.square().sum().sqrt()
        values = torch.cat([norms, total[None]]).tolist()  # the one host sync
        out = {f"{PREFIX}/{name}": v for name, v, ok in zip(grouped.names, values, has_grad.tolist()) if ok}
        if present:
            out[f"{PREFIX}/total"] = values[-1]
        return out
