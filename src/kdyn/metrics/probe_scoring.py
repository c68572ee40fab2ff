"""Probe scoring: the one pipeline build → tokenise → batch → score, shared by every consumer.

`ProbeSet` holds probes tokenised and cut into length-bucketed batches once (`kdyn.data.probes`:
`tokenize_probes`, `make_batches` with the optimal DP cut); `ProbeSet.score` runs the model over them
(`score_batches`: teacher-forced NLLs indexed by `Probe.index`). The probes callback, the periods
callback, ``kdyn-eval`` and TemporalWiki evaluation all score through it. The data layer builds the
probes and never runs a model; this module does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from kdyn.data.knowledge import KnowledgeItem, assign_scenarios, knowledge_records
from kdyn.data.probes import (
    BATCH_OVERHEAD_TOKENS,
    PROBE_TYPES,
    Probe,
    ProbeBatch,
    build_probes,
    make_batches,
    padding_efficiency,
    tokenize_probes,
)

_MAX_LOGSUMEXP_ELEMENTS = 1 << 24  # fp32 elements per log-sum-exp chunk (64 MB)
SCORE_KEYS = ("nll", "nll_first", "nll_full", "n_target")


def pad_id(tokenizer) -> int:
    """The id probes are right-padded with: the tokenizer's pad token, else its EOS."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


class ProbeSet:
    """Probes tokenised (``max_len``: inputs truncated from the left) and batched once, scored many times.

    ``n_predicted[p.index]`` is the number of tokens ``nll_full`` averages over (length − 1), which the
    TemporalWiki perplexities need. ``items`` are the knowledge items the probes came from (if any).
    """

    def __init__(self, probes: Sequence[Probe], tokenizer, *, batch_tokens: int = 8192, max_len: int | None = None,
                 batch_overhead_tokens: int = BATCH_OVERHEAD_TOKENS, items: Sequence[KnowledgeItem] = ()) -> None:
        self.probes = list(probes)
        self.items = list(items)
        tokenized = tokenize_probes(self.probes, tokenizer, max_len=max_len)
        self.batches: list[ProbeBatch] = make_batches(tokenized, self.probes, batch_tokens=int(batch_tokens),
                                                      pad_id=pad_id(tokenizer),
                                                      batch_overhead_tokens=int(batch_overhead_tokens))
        size = 1 + max((p.index for p in self.probes), default=-1)
        self.n_predicted = torch.zeros(size, dtype=torch.long)
        for probe, (ids, _) in zip(self.probes, tokenized):
            self.n_predicted[probe.index] = len(ids) - 1

    @classmethod
    def from_knowledge(cls, source: Mapping[str, Any], scenarios: Mapping[str, int], num_events: int, tokenizer, *,
                       types: Sequence[str] = PROBE_TYPES, include_paragraph: bool = False, **batching: Any) -> ProbeSet:
        """The probes of the items an ``inject.source`` / ``knowledge.source`` node selects, split into
        ``scenarios`` (`kdyn.data.knowledge.assign_scenarios`)."""
        items = assign_scenarios(knowledge_records(source), scenarios, int(num_events))
        probes = build_probes(items, types, include_paragraph=include_paragraph)
        return cls(probes, tokenizer, items=items, **batching)

    def __len__(self) -> int:
        return len(self.probes)

    @property
    def padding_efficiency(self) -> float:
        return padding_efficiency(self.batches)

    def shard(self, rank: int, world_size: int) -> list[ProbeBatch]:
        """The batches rank ``rank`` of ``world_size`` scores (round robin)."""
        return self.batches[rank::world_size]

    def score(self, model: torch.nn.Module, device: torch.device | str | None = None,
              batches: Sequence[ProbeBatch] | None = None) -> dict[str, torch.Tensor]:
        """`score_batches` over every batch (or the given subset, e.g. `shard`)."""
        return score_batches(model, self.batches if batches is None else batches, device=device)


def score_probes(model: torch.nn.Module, tokenizer, probes: Sequence[Probe], *, batch_tokens: int = 8192,
                 max_len: int | None = None, device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
    """`score_batches` on ``probes`` plus ``n_predicted`` (tokens scored by ``nll_full``: length − 1), which
    `kdyn.metrics.twiki_perplexity.perplexities` needs for the full-string token-weighted and
    TemporalWiki-style numbers."""
    probe_set = ProbeSet(probes, tokenizer, batch_tokens=batch_tokens, max_len=max_len)
    return {**probe_set.score(model, device=device), "n_predicted": probe_set.n_predicted}


# ---------------------------------------------------------------- scoring
@torch.inference_mode()
def score_batches(model: torch.nn.Module, batches: Sequence[ProbeBatch],
                  device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
    """Teacher-forced NLLs, as CPU tensors indexed by `Probe.index` (length max index + 1; NaN / 0 for
    probes absent from ``batches``):

    ``nll`` mean NLL of the target tokens; ``nll_first`` NLL of the first target token; ``nll_full`` mean
    NLL of every predicted token (positions 1..len-1); ``n_target`` the number of target tokens. Token t
    is predicted from the logits at t-1; log-sum-exp is taken in fp32 at the real positions only. The
    model runs in eval mode and gets its previous mode back.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    n = 1 + max((int(b.probe_index.max()) for b in batches if len(b.probe_index)), default=-1)
    out = {k: torch.full((n,), float("nan")) for k in ("nll", "nll_first", "nll_full")}
    out["n_target"] = torch.zeros(n, dtype=torch.long)
    was_training = model.training
    model.eval()
    try:
        for b in batches:
            for key, value in _score_batch(model, b, device).items():
                out[key][b.probe_index] = value.to("cpu", out[key].dtype)
    finally:
        model.train(was_training)
    return out


def _score_batch(model: torch.nn.Module, b: ProbeBatch, device: torch.device) -> dict[str, torch.Tensor]:
    ids = b.input_ids.to(device)
    mask = b.attention_mask.to(device)
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1]  # predicts 1..T-1
    predicted = mask[:, 1:].bool()                           # [B, T-1]: real tokens at 1..T-1
    token_nll = torch.zeros(predicted.shape, dtype=torch.float32, device=device)
    token_nll[predicted] = _token_nll(logits[predicted], ids[:, 1:][predicted])
    target = b.target_mask.to(device)[:, 1:]
    n_target = target.sum(1)
    first = target.int().argmax(1, keepdim=True)             # first True along the row
    return {
        "nll": (token_nll * target).sum(1) / n_target,
        "nll_first": token_nll.gather(1, first).squeeze(1),
        "nll_full": token_nll.sum(1) / predicted.sum(1),
        "n_target": n_target,
    }


def _token_nll(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """−log softmax(logits)[token] per row in fp32, without an fp32 copy of all rows at once."""
    picked = logits.gather(1, tokens.unsqueeze(1)).squeeze(1).float()
    step = max(1, _MAX_LOGSUMEXP_ELEMENTS // max(1, logits.shape[-1]))
    lse = torch.cat([torch.logsumexp(logits[i:i + step].float(), dim=-1)
                     for i in range(0, logits.shape[0], step)])
    return lse - picked
