"""Per-layer gradient norms of a span loss and of the LM loss (Fernandez et al. 2024, kdyn's definition).

For each diagnostic example separately (batch of 1, model in eval mode, fp32 loss):

* ``L_span`` = mean cross-entropy over the salient-span tokens only (token ``t`` predicted from ``t − 1``);
* ``L_lm``   = mean cross-entropy over every predicted token of the same sequence.

Per parameter group ``ℓ`` (`kdyn.models.ffn.parameter_groups_by_layer`: blocks, or attn/mlp halves;
``other`` = embeddings, final norm, head) the L2 norm of the concatenated gradients is taken
(``norm="l2"``), or that norm divided by √(number of elements) (``"l2_per_sqrt_numel"``, to compare
groups of different sizes). Over examples::

    g_span(ℓ) = mean_x ||∇_ℓ L_span(x)||    g_lm(ℓ) = mean_x ||∇_ℓ L_lm(x)||    r(ℓ) = g_span(ℓ) / g_lm(ℓ)

One forward and two ``torch.autograd.grad`` calls per example; ``.grad`` is never written.
Frozen parameters (``requires_grad=False``) are left out of the norms and never unfrozen.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdyn.errors import KdynError

NORMS = ("l2", "l2_per_sqrt_numel")
OTHER = "other"
_LAYER_KEY = re.compile(r"^layer_(\d+)(?:\.(attn|mlp))?$")


def ordered_group_names(groups: Iterable[str]) -> list[str]:
    """Layer groups in depth order (``layer_0`` < ``layer_0.attn`` < ``layer_0.mlp`` < ``layer_1``), ``other`` last."""
    def key(name: str) -> tuple[int, int, str]:
        m = _LAYER_KEY.match(name)
        if m is None:
            return (1 << 30, 0, name)
        return (int(m.group(1)), {None: 0, "attn": 1, "mlp": 2}[m.group(2)], name)

    return sorted(groups, key=key)


@dataclass
class GroupedParameters:
    """Trainable parameters flattened in group order; ``index[k]`` is the group of ``params[k]``."""

    names: list[str]  # group names: layers in depth order, then "other" (if any)
    params: list[nn.Parameter]
    index: torch.Tensor  # [len(params)] long
    numel: torch.Tensor  # [len(names)] float64: elements per group

    @property
    def layer_names(self) -> list[str]:
        return [n for n in self.names if n != OTHER]


def group_parameters(model: nn.Module, groups: Mapping[str, Sequence[str]],
                     drop_frozen_groups: bool = False) -> GroupedParameters:
    """Resolve ``{group: [parameter names]}`` to parameter objects (frozen ones skipped).

    A layer group with no trainable parameter is dropped when ``drop_frozen_groups``, else an error
    (for tracing, its norm would be meaningless).
    """
    named = dict(model.named_parameters())
    names, params, index, numel = [], [], [], []
    for group in ordered_group_names(groups):
        trainable = [named[n] for n in groups[group] if named[n].requires_grad]
        if not trainable:
            if group == OTHER or drop_frozen_groups:
                continue
            raise KdynError(f"parameter group {group} has no trainable parameter (all requires_grad=False); "
                            "trace a model whose parameters are not frozen")
        gi = len(names)
        names.append(group)
        params.extend(trainable)
        index.extend([gi] * len(trainable))
        numel.append(float(sum(p.numel() for p in trainable)))
    return GroupedParameters(names, params, torch.tensor(index, dtype=torch.long),
                             torch.tensor(numel, dtype=torch.float64))


def group_norms(grads: Sequence[torch.Tensor | None], grouped: GroupedParameters, norm: str = "l2") -> torch.Tensor:
    """``[groups]`` norms of the concatenated gradients of each group (None = zero gradient).

    Computed on the gradients' device in float64 (float32 on MPS), with no host synchronisation.
    """
    if norm not in NORMS:
        raise KdynError(f"unknown norm {norm!r}; choose one of {', '.join(NORMS)}")
    present = [k for k, g in enumerate(grads) if g is not None]
    if not present:
        return torch.zeros(len(grouped.names), dtype=torch.float64)
    device = grads[present[0]].device
    dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
    per_tensor = torch.stack(torch._foreach_norm([grads[k] for k in present])).to(dtype)
    squares = torch.zeros(len(grouped.names), dtype=dtype, device=device)
    squares.index_add_(0, grouped.index.to(device)[torch.tensor(present, device=device)], per_tensor.square())
    out = squares.sqrt()
    if norm == "l2_per_sqrt_numel":
        out = out / grouped.numel.to(device, dtype).sqrt()
    return out


def span_and_lm_losses(model: nn.Module, input_ids: torch.Tensor,
                       span_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(L_span, L_lm)`` of one sequence (``[T]`` ids and mask), cross-entropy in fp32."""
    if input_ids.ndim != 1 or span_mask.shape != input_ids.shape:
        raise KdynError("a diagnostic example needs 1-D input_ids and a span_mask of the same shape")
    target_mask = span_mask[1:].to(input_ids.device)
    if input_ids.numel() < 2 or not bool(target_mask.any()):
        raise KdynError("a diagnostic example needs a non-empty span after at least one context token")
    logits = model(input_ids=input_ids[None], use_cache=False).logits[0, :-1].float()
    token_ce = F.cross_entropy(logits, input_ids[1:], reduction="none")
    return token_ce[target_mask].mean(), token_ce.mean()


def example_grad_norms(model: nn.Module, input_ids: torch.Tensor, span_mask: torch.Tensor,
                       grouped: GroupedParameters, norm: str = "l2") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group gradient norms ``(span, lm)`` (each ``[groups]`` float64) of one example."""
    loss_span, loss_lm = span_and_lm_losses(model, input_ids, span_mask)
    g_span = torch.autograd.grad(loss_span, grouped.params, retain_graph=True, allow_unused=True)
    span_norms = group_norms(g_span, grouped, norm)
    del g_span
    g_lm = torch.autograd.grad(loss_lm, grouped.params, allow_unused=True)
    return span_norms, group_norms(g_lm, grouped, norm)


@dataclass
class LayerGradStats:
    """Mean per-example gradient norms of one diagnostic set, per group (layers in depth order)."""

    layers: list[str]
    g_span: list[float]
    g_lm: list[float]
    n_examples: int
    other: dict[str, float] = field(default_factory=dict)  # g_span, g_lm, r of the "other" group
    seconds: float = 0.0

    @property
    def r(self) -> list[float]:
        return [s / lm if lm > 0 else math.nan for s, lm in zip(self.g_span, self.g_lm)]

    def to_dict(self) -> dict[str, Any]:
        return {"g_span": self.g_span, "g_lm": self.g_lm, "r": self.r, "n_examples": self.n_examples,
                "other": self.other, "seconds": round(self.seconds, 3)}


def trace_layer_norms(model: nn.Module, examples: Sequence[Any], groups: Mapping[str, Sequence[str]],
                      norm: str = "l2", device: torch.device | str | None = None) -> LayerGradStats:
    """g_span, g_lm (and r) per layer group over ``examples`` (objects with ``input_ids``, ``span_mask``).

    The model is put in eval mode for the measurement; afterwards its train/eval mode is restored and
    its gradients are set to None. ``requires_grad`` is never changed.
    """
    if norm not in NORMS:
        raise KdynError(f"unknown trace.norm {norm!r}; choose one of {', '.join(NORMS)}")
    if not examples:
        raise KdynError("no diagnostic examples to trace; the set is empty")
    grouped = group_parameters(model, groups)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    sums_span = torch.zeros(len(grouped.names), dtype=torch.float64)
    sums_lm = torch.zeros(len(grouped.names), dtype=torch.float64)
    start = time.perf_counter()
    model.eval()
    try:
        with torch.enable_grad():
            for ex in examples:
                span, lm = example_grad_norms(model, ex.input_ids.to(device), ex.span_mask.to(device), grouped, norm)
                sums_span += span.cpu().double()
                sums_lm += lm.cpu().double()
    finally:
        model.train(was_training)
        model.zero_grad(set_to_none=True)
    n = len(examples)
    mean_span, mean_lm = (sums_span / n).tolist(), (sums_lm / n).tolist()
    layer_idx = [i for i, name in enumerate(grouped.names) if name != OTHER]
    other: dict[str, float] = {}
    if OTHER in grouped.names:
        k = grouped.names.index(OTHER)
        other = {"g_span": mean_span[k], "g_lm": mean_lm[k],
                 "r": mean_span[k] / mean_lm[k] if mean_lm[k] > 0 else math.nan}
    return LayerGradStats(layers=[grouped.names[i] for i in layer_idx], g_span=[mean_span[i] for i in layer_idx],
                          g_lm=[mean_lm[i] for i in layer_idx], n_examples=n, other=other,
                          seconds=time.perf_counter() - start)
