"""Knowledge probes and their batched, teacher-forced scoring (Chang et al. 2024, §2 of the reference).

A probe is a cloze: the text ``input + " " + target`` is scored by the mean negative log-likelihood of
its target tokens given everything before them. Types: ``mem`` (memorization: a prefix cut from the
paragraph), ``gen`` (semantic generalization: the same fact in other words), ``hard_gen``
(compositional: two facts combined) and optionally ``paragraph`` (the item's ``train_context`` scored
as a whole: every token but the first).

Pipeline: `build_probes` → `tokenize_probes` → `make_batches` (length-bucketed, right-padded); the
metrics layer scores the batches (`kdyn.metrics.probe_scoring`: `ProbeSet`, `score_batches`, one tensor
per statistic indexed by `Probe.index`). This module never runs a model.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from kdyn.data.knowledge import KnowledgeItem
from kdyn.errors import KdynError

log = logging.getLogger(__name__)

PROBE_TYPES = ("mem", "gen", "hard_gen")
PARAGRAPH = "paragraph"


@dataclass(frozen=True)
class Probe:
    """One probe; ``index`` is its position in the probe list (the row of every score tensor)."""

    index: int
    item: int
    scenario: str
    probe_type: str
    probe_idx: int
    input: str
    target: str

    def describe(self) -> str:
        return f"(item {self.item}, {self.probe_type}, {self.probe_idx})"


def build_probes(items: Sequence[KnowledgeItem], types: Sequence[str] = PROBE_TYPES,
                 include_paragraph: bool = False) -> list[Probe]:
    """The probes of ``items``: per item, per type, the 5 ``<type>_input``/``<type>_target`` pairs.

    ``"paragraph"`` (in ``types`` or via ``include_paragraph``) adds one probe per item: input ``""``,
    target ``train_context``.
    """
    types = list(types) + ([PARAGRAPH] if include_paragraph and PARAGRAPH not in types else [])
    bad = [t for t in types if t not in (*PROBE_TYPES, PARAGRAPH)]
    if bad:
        raise KdynError(f"unknown probe type(s) {bad}; choose from {', '.join((*PROBE_TYPES, PARAGRAPH))}")
    probes: list[Probe] = []
    for it in items:
        for kind in types:
            if kind == PARAGRAPH:
                pairs = [("", it.record["train_context"])]
            else:
                pairs = list(zip(it.record[f"{kind}_input"], it.record[f"{kind}_target"], strict=True))
            for j, (inp, tgt) in enumerate(pairs):
                probes.append(Probe(len(probes), it.item, it.scenario, kind, j, inp, tgt))
    return probes


# ---------------------------------------------------------------- tokenisation
def _encode(tokenizer, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def tokenize_probes(probes: Sequence[Probe], tokenizer,
                    max_len: int | None = None) -> list[tuple[list[int], int]]:
    """``(token ids, n_target)`` per probe; the target is exactly the last ``n_target`` tokens.

    ``input`` and ``" " + target`` are tokenised separately without special tokens and concatenated
    (as Chang et al. locate the target span); a paragraph probe is its text tokenised once, with every
    token but the first scored. Probes longer than ``max_len`` lose tokens from the left of the input.
    For byte-level BPE tokenizers whose pre-tokenizer splits before spaces (GPT-2 / GPT-NeoX / OLMo
    style) this equals tokenising the joint string on all 1,800 real probes; `tokenization_mismatches`
    counts the probes where it does not, for other tokenizers.
    """
    empty = [i for i, p in enumerate(probes) if not p.target.strip()]
    is_par = [p.probe_type == PARAGRAPH for p in probes]
    inputs = _encode(tokenizer, [p.input for p, par in zip(probes, is_par) if not par])
    targets = _encode(tokenizer, [p.target if par else " " + p.target for p, par in zip(probes, is_par)])
    inputs_it = iter(inputs)
    out: list[tuple[list[int], int]] = []
    for i, (par, tgt) in enumerate(zip(is_par, targets)):
        ids, n_target = (tgt, len(tgt) - 1) if par else (next(inputs_it) + tgt, len(tgt))
        if n_target < 1 and probes[i].target.strip():
            empty.append(i)
        out.append((ids, n_target))
    if empty:
        shown = ", ".join(probes[i].describe() for i in sorted(empty)[:3])
        raise KdynError(f"{len(empty)} probe(s) have an empty target or one that tokenises to nothing "
                        f"(first: {shown}); fix or drop these probes in the data")
    no_input = [p for (ids, n), p in zip(out, probes) if len(ids) == n]
    if no_input:
        raise KdynError(f"{len(no_input)} probe(s) have an input that tokenises to nothing, so their first "
                        f"target token cannot be predicted (first: {no_input[0].describe()}); fix the data")
    return _truncate(out, probes, max_len) if max_len is not None else out


def _truncate(out: list[tuple[list[int], int]], probes: Sequence[Probe],
              max_len: int) -> list[tuple[list[int], int]]:
    truncated = 0
    for i, ((ids, n_target), p) in enumerate(zip(out, probes)):
        if len(ids) <= max_len:
            continue
        if p.probe_type == PARAGRAPH:
            out[i] = (ids[-max_len:], max_len - 1)
        elif n_target >= max_len:
            raise KdynError(f"probe {p.describe()} has a target of {n_target} tokens, which does not fit "
                            f"max_len={max_len} with its input; raise max_len")
        else:
            out[i] = (ids[-max_len:], n_target)
        truncated += 1
    if truncated:
        log.warning("%d of %d probes are longer than max_len=%d tokens: their inputs were truncated "
                    "from the left (targets kept)", truncated, len(out), max_len)
    return out


def tokenization_mismatches(probes: Sequence[Probe], tokenizer) -> list[int]:
    """Positions in ``probes`` where tokenising ``input + " " + target`` jointly differs from the
    separate tokenisation `tokenize_probes` uses (paragraph probes always agree)."""
    pairs = [(i, p) for i, p in enumerate(probes) if p.probe_type != PARAGRAPH]
    joint = _encode(tokenizer, [f"{p.input} {p.target}" for _, p in pairs])
    separate = tokenize_probes([p for _, p in pairs], tokenizer)
    return [i for (i, _), j, (s, _) in zip(pairs, joint, separate) if j != s]


# ---------------------------------------------------------------- batching
@dataclass
class ProbeBatch:
    """Right-padded probes. ``target_mask`` is True at positions whose *token* is a target token."""

    input_ids: torch.Tensor       # long [B, T]
    attention_mask: torch.Tensor  # long [B, T]
    target_mask: torch.Tensor     # bool [B, T]
    probe_index: torch.Tensor     # long [B]: Probe.index of each row


# The cost of one more forward call, counted in padded tokens: `make_batches` trades fewer, wider
# batches against less padding with it. On CPU small batches are as fast per token as big ones (they
# stay in cache), so the default is small; on a GPU, where each call has a fixed launch cost, raise it
# (e.g. 1024). benchmarks/bench_probes.py compares it with greedy filling.
BATCH_OVERHEAD_TOKENS = 32


def make_batches(tokenized: Sequence[tuple[list[int], int]], probes: Sequence[Probe],
                 batch_tokens: int = 8192, *, pad_id: int,
                 batch_overhead_tokens: int = BATCH_OVERHEAD_TOKENS) -> list[ProbeBatch]:
    """Length-bucketed batches: probes sorted by length and cut into consecutive batches of at most
    ``batch_tokens`` padded tokens (B × max length; a probe longer than that gets a batch of its own).

    The cut is optimal, not greedy: it minimises the computed (padded) tokens plus
    ``batch_overhead_tokens`` per batch over every partition of the sorted probes (`optimal_cuts`),
    so a short probe never pads up to a much longer one just because the budget had room.
    """
    if len(tokenized) != len(probes):
        raise KdynError(f"{len(tokenized)} tokenised probes for {len(probes)} probes; pass the output of "
                        f"tokenize_probes(probes, ...) with the same probes")
    if batch_tokens < 1:
        raise KdynError(f"batch_tokens must be >= 1, got {batch_tokens}")
    if batch_overhead_tokens < 0:
        raise KdynError(f"batch_overhead_tokens must be >= 0, got {batch_overhead_tokens}")
    order = sorted(range(len(probes)), key=lambda i: len(tokenized[i][0]))
    lengths = [len(tokenized[i][0]) for i in order]
    return [_collate([tokenized[i] for i in order[a:b]], [probes[i].index for i in order[a:b]], pad_id)
            for a, b in optimal_cuts(lengths, batch_tokens, batch_overhead_tokens)]


def optimal_cuts(lengths: Sequence[int], batch_tokens: int, overhead: float = BATCH_OVERHEAD_TOKENS,
                 ) -> list[tuple[int, int]]:
    """``[(start, end), …]`` slices of ascending ``lengths`` minimising Σ (size × last length + overhead)
    with size × last length <= ``batch_tokens`` (or size 1). Dynamic programming over the cut points;
    ties go to fewer batches."""
    if any(a > b for a, b in zip(lengths, lengths[1:])):
        raise ValueError("optimal_cuts needs ascending lengths")
    n = len(lengths)
    best = np.zeros(n + 1)
    start = [0] * (n + 1)
    for end in range(1, n + 1):
        width = lengths[end - 1]
        size_max = max(1, min(end, batch_tokens // width))  # the widest batch the budget allows
        begins = np.arange(end - size_max, end)             # ascending: the first minimum is the biggest batch
        costs = best[begins] + (end - begins) * width + overhead
        k = int(np.argmin(costs))
        best[end], start[end] = costs[k], int(begins[k])
    cuts, end = [], n
    while end > 0:
        cuts.append((start[end], end))
        end = start[end]
    return cuts[::-1]


def _collate(rows: list[tuple[list[int], int]], index: list[int], pad_id: int) -> ProbeBatch:
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    target = torch.zeros((len(rows), width), dtype=torch.bool)
    for r, (seq, n_target) in enumerate(rows):
        ids[r, :len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[r, :len(seq)] = 1
        target[r, len(seq) - n_target:len(seq)] = True
    return ProbeBatch(ids, mask, target, torch.tensor(index, dtype=torch.long))


def padding_efficiency(batches: Sequence[ProbeBatch]) -> float:
    """Real tokens / computed tokens (B × T summed over batches)."""
    computed = sum(b.input_ids.numel() for b in batches)
    return sum(int(b.attention_mask.sum()) for b in batches) / computed if computed else 1.0
