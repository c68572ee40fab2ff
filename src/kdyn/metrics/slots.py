"""Choosing FFN memory slots of one layer from its mean |coefficient| row C̄ (resuscitation, rescaling)."""

from __future__ import annotations

import torch

from kdyn.errors import KdynError

SELECTIONS = ("quantile", "bottom_k", "top_k")


def select_slots(row: torch.Tensor, select: str = "quantile", q: float | None = 0.5,
                 k: int | None = None) -> tuple[torch.Tensor, float | None]:
    """The slots of one layer chosen from its C̄ ``row``: a bool mask, and the quantile threshold.

    ``quantile``: C̄_i ≤ torch.quantile(C̄, q) (ties at the threshold included, as Kim et al.);
    ``bottom_k`` / ``top_k``: the k smallest / largest C̄ (ties broken by the lower slot index).
    """
    row = row.double()
    if select == "quantile":
        threshold = torch.quantile(row, float(q))
        return row <= threshold, float(threshold)
    if select not in ("bottom_k", "top_k"):
        raise KdynError(f"unknown selection {select!r}; choose one of {', '.join(SELECTIONS)}")
    if k is None or not 1 <= int(k) <= row.numel():
        raise KdynError(f"select={select} needs k between 1 and d_ff={row.numel()}, got {k}")
    order = torch.argsort(row, descending=select == "top_k", stable=True)
    mask = torch.zeros(row.numel(), dtype=torch.bool)
    mask[order[: int(k)]] = True
    return mask, None
