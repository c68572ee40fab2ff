"""TemporalWiki perplexities (C_ppl on changed facts, UnC_ppl on unchanged ones) from per-probe scores.

The probes are `kdyn.data.temporalwiki.period_probes`; their scores come from
`kdyn.metrics.probe_scoring` (`ProbeSet.score` / `score_probes`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence

import torch

from kdyn.data.probes import Probe
from kdyn.errors import KdynError

TWIKI_EVAL_BATCH_SIZE = 32  # TemporalWiki's configs/evaluation/GPT2/*/*.json


def _batches(n: int, size: int) -> Iterator[slice]:
    return (slice(i, min(i + size, n)) for i in range(0, n, size))


def perplexities(scores: Mapping[str, torch.Tensor], probes: Sequence[Probe], *,
                 n_predicted: torch.Tensor | None = None,
                 twiki_batch_size: int = TWIKI_EVAL_BATCH_SIZE) -> dict[str, dict[str, float]]:
    """Per scenario ("changed" → C_ppl, "unchanged" → UnC_ppl; other scenarios too), from per-probe scores.

    - ``ppl_full`` = exp(mean over probes of ``nll_full``): every probe's whole ``s r o`` string (all tokens
      but the first) weighs the same;
    - ``ppl_object`` = exp(mean over probes of ``nll``): object tokens only, given ``s r``;
    - ``ppl_full_token_weighted`` / ``ppl_object_token_weighted``: exp of the token-weighted mean NLL (every
      token weighs the same, as one batch of TemporalWiki would);
    - ``ppl_full_twiki``: TemporalWiki's number, exp(mean over consecutive batches of ``twiki_batch_size``
      probes in probe (= file) order of each batch's token-weighted mean CE);
    - ``n``: the number of probes.

    TemporalWiki (``evaluation_ppl.py``) reports exp(mean over batches of the batch's mean token CE) on the
    full string (its object-only mask is commented out): token-weighted within a batch of 32, batch-weighted
    across batches (the last, smaller batch weighs as much as a full one), so it depends on the batch size
    and the row order: with batches of 1 it would be ``ppl_full``, with one batch ``ppl_full_token_weighted``.
    It equals ``ppl_full_twiki`` when the tokenisation matches
    (kdyn tokenises ``s r`` and `` o`` separately — identical for byte-level BPE — and truncates long
    probes from the left; TemporalWiki's configs cap probes at 25 tokens, and a tokenizer's default right
    truncation would cut the object of longer probes — not verified against its code).
    The full-string token-weighted and ``_twiki`` numbers need the per-probe token counts: ``n_predicted``
    here or in ``scores`` (see `score_probes`); without them they are NaN.
    """
    if twiki_batch_size < 1:
        raise KdynError(f"twiki_batch_size must be >= 1, got {twiki_batch_size}")
    counts = n_predicted if n_predicted is not None else scores.get("n_predicted")
    size = len(scores["nll"])
    outside = [p for p in probes if p.index >= size]
    if outside:
        raise KdynError(f"{len(outside)} probe(s) have no score (first: index {outside[0].index}, scores for "
                        f"{size}); score the same probes you pass")
    by_scenario: dict[str, list[int]] = {}
    for p in probes:
        by_scenario.setdefault(p.scenario, []).append(p.index)
    out = {}
    for scenario, idx in by_scenario.items():
        i = torch.tensor(idx, dtype=torch.long)
        nll, full = scores["nll"][i].double(), scores["nll_full"][i].double()
        n_target = scores["n_target"][i].double()
        if torch.isnan(nll).any() or torch.isnan(full).any():
            raise KdynError(f"{int(torch.isnan(full).sum())} {scenario} probe(s) have NaN scores (not scored); "
                            f"score every probe before computing perplexities")
        res = {"ppl_full": math.exp(float(full.mean())), "ppl_object": math.exp(float(nll.mean())),
               "ppl_object_token_weighted": math.exp(float((nll * n_target).sum() / n_target.sum())),
               "ppl_full_token_weighted": float("nan"), "ppl_full_twiki": float("nan"), "n": len(idx)}
        if counts is not None:
            n_pred = counts[i].double()
            res["ppl_full_token_weighted"] = math.exp(float((full * n_pred).sum() / n_pred.sum()))
            means = [float((full[s] * n_pred[s]).sum() / n_pred[s].sum()) for s in _batches(len(idx), twiki_batch_size)]
            res["ppl_full_twiki"] = math.exp(sum(means) / len(means))
        out[scenario] = res
    return out
