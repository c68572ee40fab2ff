"""Knowledge entropy (Kim et al., ICLR 2025) from FFN memory coefficients.

For layer l with d_ff memory slots, the coefficients are the forward input of the down projection
(`kdyn.models.ffn`). Over a corpus D of non-padding tokens t:

    C̄_l   = Σ_t |C_l(t)| / |D|                 (a vector over the layer's d_ff slots)
    P_l   = C̄_l / Σ_i C̄_l,i
    H_l   = −Σ_i P_l,i · ln P_l,i              (0 ≤ H_l ≤ ln d_ff; maximal for uniform C̄_l)
    H(θ)  = Σ_l H_l                             (knowledge entropy)

Padding tokens are excluded (the official code, kaistAI/Knowledge-Entropy `analysis/entropy.py`,
counts them because its masking line is commented out; its data has little padding). The official
code averages per *sequence* (`/ batch_num`); since P_l normalises away any global scale, averaging
per token gives the same P_l when sequences are unpadded. Sums are accumulated in float64 whatever
the model's precision.

Under DDP, per-slot sums and token counts are all-reduced *before* the entropy is taken — the
entropy of a mean is not the mean of entropies — which `KnowledgeEntropy`'s ``sum`` states do.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torchmetrics import Metric

from kdyn.errors import KdynError


def layer_entropy(mean_coefficients: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of each row of a ``[layers, d_ff]`` table of mean |coefficients|.

    Slots with zero mass contribute 0 (the limit of p ln p); a layer with no mass at all has
    undefined entropy and raises.
    """
    c = mean_coefficients.double()
    mass = c.sum(-1, keepdim=True)
    if bool((mass <= 0).any()):
        raise KdynError("a layer has zero total coefficient mass (no tokens measured?); knowledge entropy is undefined")
    p = c / mass
    plogp = torch.where(p > 0, p * torch.log(p), torch.zeros_like(p))
    return -plogp.sum(-1)


def max_entropy(d_ff: Sequence[int]) -> list[float]:
    """ln d_ff per layer: the entropy of uniform coefficients."""
    return [math.log(d) for d in d_ff]


class KnowledgeEntropy(Metric):
    """Accumulates Σ|coefficient| per slot and the token count, per layer; computes the entropy.

    Layers may have different widths: their sums live in one flat ``[Σ d_ff]`` state.
    """

    full_state_update = False
    higher_is_better = None

    def __init__(self, d_ff: Sequence[int], **kwargs):
        super().__init__(**kwargs)
        self.d_ff = [int(d) for d in d_ff]
        if not self.d_ff:
            raise KdynError("knowledge entropy needs at least one FFN layer")
        self.offsets = [0]
        for d in self.d_ff:
            self.offsets.append(self.offsets[-1] + d)
        self.add_state("abs_sum", default=torch.zeros(self.offsets[-1], dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("tokens", default=torch.zeros(len(self.d_ff), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, layer: int, abs_sum: torch.Tensor, tokens: torch.Tensor | int) -> None:
        """Add one batch's reduced coefficients of ``layer``: ``abs_sum`` is ``[d_ff]``."""
        lo, hi = self.offsets[layer], self.offsets[layer + 1]
        self.abs_sum[lo:hi] += abs_sum.to(self.abs_sum.dtype)
        self.tokens[layer] += tokens if isinstance(tokens, int) else tokens.to(self.tokens.dtype)

    def mean_coefficients(self) -> list[torch.Tensor]:
        """C̄_l per layer (float64)."""
        if bool((self.tokens <= 0).any()):
            raise KdynError("no tokens were measured for some FFN layer; knowledge entropy is undefined")
        return [self.abs_sum[self.offsets[i]:self.offsets[i + 1]] / self.tokens[i] for i in range(len(self.d_ff))]

    def compute(self) -> dict[str, torch.Tensor]:
        per_layer = torch.stack([layer_entropy(c.unsqueeze(0))[0] for c in self.mean_coefficients()])
        return {"per_layer": per_layer, "total": per_layer.sum(), "tokens": self.tokens[0]}

    def table(self) -> torch.Tensor:
        """The ``[layers, d_ff]`` table of C̄ (layers must share d_ff) — reused by resuscitation."""
        if len(set(self.d_ff)) != 1:
            raise KdynError("layers have different FFN widths; there is no rectangular coefficient table")
        return torch.stack(self.mean_coefficients())
