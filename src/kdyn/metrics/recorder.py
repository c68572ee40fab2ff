"""Capture FFN memory coefficients with forward pre-hooks and reduce them immediately.

A hook on each down projection receives the coefficients ``[B, T, d_ff]``; it adds Σ|c| over the
batch's non-padding tokens (fp32, then float64 in the metric) and the token count to a
`KnowledgeEntropy` metric and keeps nothing else — no activation outlives the forward pass.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

from kdyn.metrics.knowledge_entropy import KnowledgeEntropy
from kdyn.models.ffn import FFNMap


class CoefficientRecorder:
    """Hooks the FFN down projections of a model and feeds a `KnowledgeEntropy` metric.

    ``armed`` gates recording (e.g. off during gradient-checkpoint recomputation or evaluation);
    ``set_mask`` gives the attention mask of the batch about to be run (``None``: no padding).
    """

    prepend = False  # True: the hooks run before the ones already on the down projections

    def __init__(self, ffn: FFNMap, metric: KnowledgeEntropy | None = None):
        self.ffn = ffn
        self._metric = metric if metric is not None else KnowledgeEntropy(ffn.d_ff)
        self.armed = True
        self._mask: torch.Tensor | None = None
        self._tokens: torch.Tensor | int = 0
        self._handles: list = []
        # Hooks add into these plain float64 buffers (cheaper than a torchmetrics update per layer and
        # batch); they are moved into the metric whenever the metric is read.
        self._pending_sum: torch.Tensor | None = None
        self._pending_tokens: torch.Tensor | None = None
        self._offsets = self._metric.offsets

    @property
    def metric(self) -> KnowledgeEntropy:
        """The metric, with everything recorded so far added to it."""
        self.flush()
        return self._metric

    def flush(self) -> None:
        if self._pending_sum is None:
            return
        device = self._metric.abs_sum.device
        sums, tokens = self._pending_sum.to(device), self._pending_tokens.to(device)
        for layer in range(len(self._offsets) - 1):
            self._metric.update(layer, sums[self._offsets[layer]:self._offsets[layer + 1]], tokens[layer])
        self._pending_sum = self._pending_tokens = None

    # --------------------------------------------------------------------------------- lifecycle
    def attach(self) -> CoefficientRecorder:
        if not self._handles:
            self._handles = self.ffn.hook_coefficients(self._hook, prepend=self.prepend)
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def __enter__(self) -> CoefficientRecorder:
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()

    # --------------------------------------------------------------------------------- recording
    def set_mask(self, attention_mask: torch.Tensor | None) -> None:
        """The mask of the next forward (``None``: every position is a real token). No host sync."""
        if attention_mask is None:
            self._mask = None
            self._tokens = None
        else:
            self._mask = attention_mask.reshape(-1).float()
            self._tokens = self._mask.sum()

    def _hook(self, layer: int):
        def hook(module, args):
            if not self.armed:
                return None
            x = args[0].detach()
            flat = x.reshape(-1, x.shape[-1])
            # A mask-vector product is the fastest Σ_t m_t·|c_t| on CPU and GPU (one |c| temporary).
            if self._mask is None:
                weights = torch.ones(flat.shape[0], device=flat.device, dtype=torch.float32)
                tokens = flat.shape[0]
            else:
                weights, tokens = self._mask.to(flat.device), self._tokens
            if self._pending_sum is None or self._pending_sum.device != flat.device:
                self.flush()
                self._pending_sum = torch.zeros(self._offsets[-1], dtype=torch.float64, device=flat.device)
                self._pending_tokens = torch.zeros(len(self._offsets) - 1, dtype=torch.float64, device=flat.device)
            self._pending_sum[self._offsets[layer]:self._offsets[layer + 1]] += weights @ flat.abs().float()
            self._pending_tokens[layer] += tokens
            return None

        return hook

    def reset(self) -> None:
        self._pending_sum = self._pending_tokens = None
        self._metric.reset()


@torch.inference_mode()
def measure(model: torch.nn.Module, ffn: FFNMap, batches: Iterable[Mapping[str, torch.Tensor]],
            device: torch.device | str | None = None) -> KnowledgeEntropy:
    """Run ``batches`` (``input_ids`` + ``attention_mask``) through ``model`` and return the metric."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    recorder = CoefficientRecorder(ffn)
    recorder.metric.to(device)
    try:
        with recorder:
            for batch in batches:
                ids = batch["input_ids"].to(device, non_blocking=True)
                mask = batch.get("attention_mask")
                mask = mask.to(device, non_blocking=True) if mask is not None else None
                recorder.set_mask(mask)
                model(input_ids=ids, attention_mask=mask, use_cache=False)
    finally:
        model.train(was_training)
    return recorder.metric
