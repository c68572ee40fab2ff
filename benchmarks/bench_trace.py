"""The cost of ``kdyn-trace`` per diagnostic example, against one plain training forward + backward.

``kdyn-trace`` runs per example one forward and two backward passes (the span loss, then the LM loss
on the retained graph) and reduces the gradients to one norm per layer group, at batch size 1. The
reference is a plain forward + LM-loss backward of the same examples at batch size 1, so the
expected ratio from the FLOP count is (2 + 4 + 4) / (2 + 4) ≈ 1.67 (forward 2, backward 4 FLOPs per
parameter and token). Both are timed in the same process, alternated; min over repeats. The trace
figure is the whole ``trace_checkpoint`` call's ``seconds_per_example`` (tokenisation and loading
excluded: it times the tracing loop only).
"""

from __future__ import annotations

import contextlib
import io
import time

import torch
import torch.nn.functional as F

from bench_common import PYTHIA_160M, TINY_SIZES, Row, shared_model, temp_dir


def run(quick: bool = False, tiny_only: bool = False) -> list[Row]:
    out = temp_dir("kdyn-bench-trace-")
    rows: list[Row] = []
    #        label, name, sizes, examples per set, repeats
    cases = [("tiny (OLMo arch)", "tiny", TINY_SIZES, 20 if quick else 100, 1 if quick else 2),
             ("Pythia-160m config", "pythia160m", PYTHIA_160M, 3 if quick else 10, 1)]
    for label, name, sizes, n_examples, repeats in (cases[:1] if tiny_only else cases):
        bench_model = shared_model(name, sizes)
        trace_s, plain_s = [], []
        for repeat in range(repeats):
            record, examples, model = _trace(bench_model, n_examples, out / f"{name}-{repeat}")
            trace_s.append(record["seconds_per_example"])
            plain_s.append(_plain_step(model, examples))
        per_example, plain = min(trace_s), min(plain_s)
        sets = record["sets"]
        n_total = sum(s["n_examples"] for s in sets.values())
        tokens = sum(len(e.input_ids) for e in examples) / max(1, len(examples))
        rows.append(Row("trace", f"{label}, {len(sets)} sets × {n_examples} examples", "seconds per diagnostic example",
                        per_example, "s", "", None,
                        f"{bench_model.parameters / 1e6:.1f}M params; {1 / per_example:.1f} examples/s; "
                        f"{n_total} examples of ≈{tokens:.0f} tokens; min of {repeats}"))
        rows.append(Row("trace", f"{label}, {len(sets)} sets × {n_examples} examples",
                        "trace ÷ plain forward + backward per example", per_example / plain, "×", "", None,
                        f"×1.67 expected from FLOPs (1 forward, 2 backward); plain fwd+bwd {plain * 1e3:.1f} ms vs trace {per_example * 1e3:.1f} ms per example "
                        f"(batch 1)"))
    return rows


def _trace(bench_model, n_examples: int, out):
    from omegaconf import open_dict

    from kdyn.config import compose_config, to_plain
    from kdyn.data.diagnostics import diagnostic_clozes, subsample, tokenize_clozes
    from kdyn.models.loading import load_model
    from kdyn.trace import trace_checkpoint

    cfg = compose_config("trace", ["model=local", f"model.path={bench_model.folder}",
                                   f"trace.max_examples={n_examples}", "trace.plot=false", "trace.device=cpu"])
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
    with contextlib.redirect_stdout(io.StringIO()):
        record = trace_checkpoint(cfg)
    # the same examples, for the plain reference
    loaded = load_model(to_plain(cfg.model), seq_len=int(cfg.trace.max_len), seq_len_key="trace.max_len")
    settings = to_plain(cfg.trace)
    examples = [ex for name, (items, _) in diagnostic_clozes(settings).items()
                for ex in tokenize_clozes(subsample(items, n_examples, int(settings["seed"]), name), loaded.tokenizer,
                                          int(settings["max_len"]))]
    return record, examples, loaded.model


def _plain_step(model: torch.nn.Module, examples) -> float:
    model.eval()
    start = time.perf_counter()
    for ex in examples:
        ids = ex.input_ids.unsqueeze(0) if ex.input_ids.dim() == 1 else ex.input_ids
        logits = model(input_ids=ids, use_cache=False).logits
        targets = F.pad(ids[:, 1:], (0, 1), value=-100)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)
        torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad])
    return (time.perf_counter() - start) / len(examples)
