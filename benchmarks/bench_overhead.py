"""kdyn-train against a hand-written PyTorch loop (``overhead``) and the cost of each default
callback (``callbacks``).

overhead
    The same model (fresh weights saved once, loaded by both), the same packed rows in the same
    order (kdyn's step-indexed stream: step ``s`` trains rows ``s·B … s·B+B−1``), AdamW with the same
    lr/betas/eps and decay-on-matrices groups, warmup + cosine through ``LambdaLR``, gradient
    clipping at 1.0, fp32, same batch size and sequence length. kdyn runs with every callback,
    logger and the injection off. Both are timed the same way: the interval between consecutive
    batch starts (everything of one optimizer step), median over the steps after a warm-up; the
    two variants alternate, and the best (min) of the repeats is kept. The final losses of the two
    are printed side by side: equal losses show that both computed the same thing.

callbacks
    ``callbacks=none`` against the same run with one callback switched on (the others of
    ``callbacks=default`` off), then all default callbacks with the CSV logger and the injection
    (the full default configuration), all on the tiny model at kdyn-train's default shape
    (``data.batch_size`` rows of ``data.seq_len`` tokens; ``--quick``: 32 rows of 128). Periodic
    work (a checkpoint every N steps) only shows in an average, so here a run's step time is the
    MEAN over the steps after a warm-up; variants alternate and the min over repeats is kept.
    ``entropy`` is measured by the ``entropy`` section and not repeated here; ``periods`` is inert
    outside TemporalWiki corpora.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from bench_common import (
    BARE,
    PYTHIA_160M,
    TINY_SIZES,
    Row,
    StepClock,
    local_model_overrides,
    run_kdyn,
    shared_model,
    temp_dir,
)

# Optimizer and schedule used by both variants of the overhead comparison.
OPTIM = dict(lr=3e-4, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8, warmup_steps=3, min_lr_ratio=0.1)


def _optim_overrides() -> list[str]:
    return [f"optim.lr={OPTIM['lr']}", f"optim.weight_decay={OPTIM['weight_decay']}",
            f"optim.betas=[{OPTIM['betas'][0]},{OPTIM['betas'][1]}]", f"optim.eps={OPTIM['eps']}",
            "optim.scheduler=cosine", f"optim.warmup_steps={OPTIM['warmup_steps']}",
            f"optim.min_lr_ratio={OPTIM['min_lr_ratio']}", "trainer.gradient_clip_val=1.0",
            "trainer.precision=32-true", "model.dtype=float32"]


# ------------------------------------------------------------------------------ the hand-written loop
def packed_rows(overrides: list[str], tokenizer, seq_len: int) -> torch.Tensor:
    """The rows kdyn trains on: the composed config's corpus, packed by kdyn's packer."""
    from kdyn.config import compose_config, to_plain
    from kdyn.data.corpora import load_documents
    from kdyn.data.packing import pack_rows

    cfg = compose_config("train", overrides)
    return pack_rows(load_documents(to_plain(cfg.corpus)), tokenizer, seq_len)


def hand_loop(folder: Path, rows: torch.Tensor, batch_size: int, steps: int) -> tuple[StepClock, list[float]]:
    """A minimal PyTorch training loop: returns its clock (batch-start marks) and the losses."""
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [{"params": [p for p in params if p.ndim >= 2], "weight_decay": OPTIM["weight_decay"]},
         {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}],
        lr=OPTIM["lr"], betas=OPTIM["betas"], eps=OPTIM["eps"])
    warmup, floor = OPTIM["warmup_steps"], OPTIM["min_lr_ratio"]

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, steps - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    clock, losses = StepClock(), []
    n = rows.shape[0]
    for step in range(steps):
        ids = rows[torch.arange(step * batch_size, (step + 1) * batch_size) % n]
        clock.starts.append(time.perf_counter())
        logits = model(input_ids=ids, use_cache=False).logits
        # the cheapest correct loss (shift the labels, not the logits), as a careful hand-written loop would
        targets = F.pad(ids[:, 1:], (0, 1), value=-100)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())
    clock.end = time.perf_counter()
    return clock, [float(x) for x in losses]


# ------------------------------------------------------------------------------ overhead
def run_overhead(quick: bool = False, tiny_only: bool = False) -> list[Row]:
    from transformers import AutoTokenizer

    out = temp_dir("kdyn-bench-overhead-")
    rows: list[Row] = []
    #        label, name, sizes, seq_len, batch, steps, warm-up steps skipped, repeats
    cases = [("tiny (OLMo arch)", "tiny", TINY_SIZES, 128, 16, 12 if quick else 60, 2, 2 if quick else 3),
             ("Pythia-160m config", "pythia160m", PYTHIA_160M, 128 if quick else 256, 2 if quick else 4,
              3 if quick else 8, 1 if quick else 2, 1 if quick else 2)]
    for label, name, sizes, seq_len, batch_size, steps, skip, repeats in cases[:1] if tiny_only else cases:
        bench_model = shared_model(name, sizes)
        overrides = [*BARE, *local_model_overrides(bench_model, seq_len, batch_size, steps), *_optim_overrides()]
        data = packed_rows(overrides, AutoTokenizer.from_pretrained(bench_model.folder), seq_len)
        times = {"kdyn": [], "loop": []}
        losses = {}
        for repeat in range(repeats):
            clock, results = run_kdyn(overrides, out / f"{name}-kdyn-{repeat}")
            times["kdyn"].append(clock.median(skip))
            losses["kdyn"] = results["final_loss"]
            clock, loop_losses = hand_loop(bench_model.folder, data, batch_size, steps)
            times["loop"].append(clock.median(skip))
            losses["loop"] = loop_losses[-1]
        tokens = batch_size * seq_len
        kdyn_tps, loop_tps = tokens / min(times["kdyn"]), tokens / min(times["loop"])
        ratio = kdyn_tps / loop_tps
        same = math.isclose(losses["kdyn"], losses["loop"], rel_tol=1e-3)
        rows.append(Row(
            "overhead", f"{label}, {batch_size}×{seq_len}, {steps} steps",
            "kdyn tokens/s ÷ hand-written loop tokens/s", ratio, "×", "≥ 0.95", ratio >= 0.95,
            f"{bench_model.parameters / 1e6:.1f}M params; kdyn {kdyn_tps:,.0f} vs loop {loop_tps:,.0f} tok/s "
            f"({min(times['kdyn']) * 1e3:.0f} vs {min(times['loop']) * 1e3:.0f} ms/step; median step, min of {repeats} "
            f"alternated runs); final loss {losses['kdyn']:.4f} vs {losses['loop']:.4f}"
            + ("" if same else " — LOSSES DIFFER: the two loops do not compute the same thing")))
    return rows


# ------------------------------------------------------------------------------ callbacks
ALL_CALLBACKS = ("progress", "checkpoint", "preemption", "export_hf", "entropy", "probes", "periods", "grad_norms")


def _only(name: str | None, extra: list[str] = ()) -> list[str]:
    """callbacks=default with every callback off but ``name``."""
    return ["callbacks=default", "logger=none", "inject.enabled=false", "trainer.enable_progress_bar=false",
            *[f"callbacks.{c}.enabled={'true' if c == name else 'false'}" for c in ALL_CALLBACKS], *extra]


def _default_shape() -> tuple[int, int]:
    from kdyn.config import compose_config

    cfg = compose_config("train", [])
    return int(cfg.data.seq_len), int(cfg.data.batch_size)


def run_callbacks(quick: bool = False, tiny_only: bool = False) -> list[Row]:
    """Tiny model only (``tiny_only`` changes nothing)."""
    out = temp_dir("kdyn-bench-callbacks-")
    bench_model = shared_model("tiny", TINY_SIZES)
    # kdyn-train's default shape (conf/train.yaml data.*); --quick: 32×128 (the default injection
    # needs 30 rows at step 0)
    seq_len, batch_size = (128, 32) if quick else _default_shape()
    steps = 8 if quick else 24
    every = 3 if quick else 8  # checkpoint period
    skip = 2
    repeats = 1 if quick else 2
    base = local_model_overrides(bench_model, seq_len, batch_size, steps)
    variants = {
        "none": [*BARE],
        "probes": _only("probes", ["callbacks.probes.every_n_steps=1"]),
        "checkpoint": _only("checkpoint", [f"callbacks.checkpoint.every_n_train_steps={every}"]),
        "grad_norms": _only("grad_norms", ["callbacks.grad_norms.every_n_steps=1"]),
        "preemption": _only("preemption"),
        "export_hf": _only("export_hf"),
        "csv logger": ["callbacks=none", "logger=csv", "inject.enabled=false", "trainer.enable_progress_bar=false"],
        # injection as configured, its events squeezed into the short run
        "full default": ["callbacks=default", "logger=csv", "trainer.enable_progress_bar=false",
                         f"inject.interval={max(1, steps // 5)}"],
    }
    means: dict[str, list[float]] = {k: [] for k in variants}
    tails: dict[str, list[float]] = {k: [] for k in variants}
    for repeat in range(repeats):
        for name, overrides in variants.items():
            clock, _ = run_kdyn([*base, *overrides], out / f"{name.replace(' ', '_')}-{repeat}")
            means[name].append(clock.mean(skip))
            tails[name].append(clock.tail() - clock.mean(skip))
    best = {k: min(v) for k, v in means.items()}
    base_ms = best["none"] * 1e3
    how = f"mean step of {steps - 1 - skip} steps, min of {repeats}"
    rows: list[Row] = []
    shape = f", {batch_size}×{seq_len}"

    def slower(name: str) -> float:
        return 100 * (best[name] / best["none"] - 1)

    def add(case: str, name: str, note: str, metric: str = "train step time vs callbacks=none") -> None:
        rows.append(Row("callbacks", case + shape, metric, slower(name), "% slower",
                        note=f"{base_ms:.0f} → {best[name] * 1e3:.0f} ms/step; {note}{how}"))

    add("probes (every step, 450 default probes)", "probes", "the injection itself is off; ")
    n_saves = len(range(every, steps, every))
    per_save = (best["checkpoint"] - best["none"]) * (steps - 1 - skip) / max(1, n_saves)
    add(f"checkpoint (every {every} steps)", "checkpoint",
        f"≈ {per_save * 1e3:.0f} ms per save (last.ckpt: weights, AdamW state, loop state); ")
    add("grad_norms (every step)", "grad_norms", "")
    add("preemption (SIGTERM handler)", "preemption", "acts only on SIGTERM; ")
    # the last step plus the end-of-training work, less a typical step of the same run
    tail = min(tails["export_hf"]) - min(tails["none"])
    rows.append(Row("callbacks", "export_hf (once, at train end)" + shape, "seconds added at the end of training", tail,
                    "s", note=f"save_pretrained of {bench_model.parameters / 1e6:.1f}M params + tokenizer; per-step "
                              f"cost {slower('export_hf'):+.1f}%"))
    add("csv logger (logger=csv)", "csv logger", "", metric="train step time vs logger=none")
    add("full default (callbacks=default, csv, injection)", "full default",
        f"entropy every 10, probes every step, checkpoint every 100, export at end, injection every "
        f"{max(1, steps // 5)} steps; entropy every step: see section entropy; ")
    rows.append(Row("callbacks", "periods", "not applicable", float("nan"),
                    note="PeriodEvaluator is inert unless the corpus is segmented (corpus=temporalwiki)"))
    return rows
