"""How step time and peak memory grow with model width, depth and sequence length.

Two series of real kdyn-train runs (callbacks, logger and injection off, fp32):

* model size, at a fixed batch of tokens: the tiny OLMo-arch model → 2× width (hidden, FFN and
  heads doubled) → 2× depth → the Pythia-160m-sized config (GPT-NeoX arch, 50k vocabulary);
* sequence length 128, 256, 512, 1024 on the tiny model, at a fixed number of tokens per step
  (the batch shrinks as rows grow), so only the attention term grows.

Every case runs in its own process (``python bench_growth.py --child SPEC``), which reports its
median step time (after a warm-up) and its peak memory: on CPU its peak resident size minus its
resident size right after its imports (Linux: the high-water mark ``VmHWM``, reset after the
imports through ``/proc/self/clear_refs`` — ``ru_maxrss`` would also count the memory of the
parent it was forked from, see `_peak_rss`; elsewhere ``ru_maxrss`` minus its value after the
imports); on GPU (``KDYN_BENCH_DEVICE=gpu``) ``torch.cuda.max_memory_allocated``. The cases
alternate (one pass over every case per repeat); the min step time and the median peak over the
repeats are kept. Each figure is divided by the first case of its series and compared with the
expected growth:

* step time against the model FLOPs, 6·N·tokens + 12·L·d·T² per sequence (N: every parameter
  that multiplies a token, i.e. all but the input embedding; `bench_common.train_flops`);
* memory against a rough estimate: 16 B per parameter (fp32 weights, gradients, two AdamW
  moments) plus fp32 activations kept for backward ≈ 4 B × [L·tokens·(10·d + 4·d_ff) +
  2·L·B·heads·T² (eager attention's score matrices) + 4·tokens·V (logits, their float copy,
  log-softmax and its gradient)].

The note says "as expected" when the step-time ratio is within ×0.8–1.25 of the FLOP ratio, and
when the memory added over the series' base case is within 25% (or 16 MB) of the estimated
addition (fixed costs — data, allocator, library buffers — are not in the estimate and cancel in
the difference). kdyn loads models with ``sdpa`` attention by default (no T×T score matrix is kept);
the longest sequence also runs with ``model.attn_implementation=eager``, to show what those matrices
cost.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench_common import Row

MARK = "GROWTH_RESULT "


def _sizes():
    from bench_common import PYTHIA_160M, TINY_SIZES

    tiny = {**TINY_SIZES, "max_position_embeddings": 1024}  # rotary: the context does not change the weights
    wide = {**tiny, "hidden_size": 2 * tiny["hidden_size"], "intermediate_size": 2 * tiny["intermediate_size"],
            "num_heads": 2 * tiny["num_heads"]}
    deep = {**tiny, "num_layers": 2 * tiny["num_layers"]}
    return {"tiny": tiny, "tiny-2x-width": wide, "tiny-2x-depth": deep, "pythia160m": PYTHIA_160M}


def memory_estimate(shape: dict, sizes: dict, batch_size: int, seq_len: int, eager: bool = True) -> float:
    tokens = batch_size * seq_len
    d, d_ff, layers, heads = sizes["hidden_size"], sizes["intermediate_size"], sizes["num_layers"], sizes["num_heads"]
    scores = 2 * layers * batch_size * heads * seq_len ** 2 if eager else 0  # sdpa keeps no T×T matrix
    activations = layers * tokens * (10 * d + 4 * d_ff) + scores + 4 * tokens * shape["vocab"]
    return 16.0 * shape["params"] + 4.0 * activations


def _verdict(measured: float, expected: float, what: str, fixed: str) -> str:
    q = measured / expected
    if 0.8 <= q <= 1.25:
        return "as expected"
    if q > 1.25:
        return f"grows faster than {what}"
    return f"grows slower than {what} ({fixed} weigh on the smaller case)"


def run(quick: bool = False, tiny_only: bool = False) -> list[Row]:
    from bench_common import Row, bench_threads, shared_model, temp_dir, train_flops

    sizes = _sizes()
    names = [n for n in sizes if not (tiny_only and n == "pythia160m")]
    models = {n: shared_model(n if n == "pythia160m" else f"growth-{n}", sizes[n]) for n in names}
    model_tokens = 256 if quick else 1024
    seq_tokens = 1024 if quick else 2048
    cases = []  # (series, label, model name, batch, seq_len, steps, skip, extra overrides)
    for n in names:
        big = n == "pythia160m"
        steps = (3 if quick else 5) if big else (8 if quick else 30)
        cases.append(("model size", n, n, model_tokens // 128, 128, steps, 1 if big else 2, ()))
    for seq_len in (128, 256, 512, 1024):
        cases.append(("sequence length", f"tiny, seq_len {seq_len}", "tiny", seq_tokens // seq_len, seq_len,
                      8 if quick else 24, 2, ()))
    # kdyn loads models with sdpa attention; the same longest case with eager attention (T×T scores)
    cases.append(("sequence length", "tiny, seq_len 1024, eager attention", "tiny", seq_tokens // 1024, 1024,
                  8 if quick else 24, 2, ("model.attn_implementation=eager",)))
    repeats = 1 if quick else 2
    device = os.environ.get("KDYN_BENCH_DEVICE", "cpu")
    out = temp_dir("kdyn-bench-growth-")
    results: dict[str, list[dict]] = {c[1]: [] for c in cases}
    for repeat in range(repeats):
        for _series, label, name, batch_size, seq_len, steps, skip, extra in cases:
            spec = {"folder": str(models[name].folder), "batch_size": batch_size, "seq_len": seq_len, "steps": steps,
                    "skip": skip, "threads": bench_threads(), "device": device, "extra": list(extra),
                    "out": str(out / f"{label.replace(' ', '_').replace(',', '')}-{repeat}")}
            results[label].append(_child(spec))

    rows: list[Row] = []
    base: dict[str, tuple] = {}
    for series, label, name, batch_size, seq_len, _steps, _skip, extra in cases:
        shape = models[name].extra
        step = min(r["step_s"] for r in results[label])
        peak = statistics.median(r["peak_bytes"] for r in results[label])
        flops = train_flops(shape, batch_size, seq_len)
        memory = memory_estimate(shape, sizes[name], batch_size, seq_len, eager="model.attn_implementation=eager" in extra)
        case = (f"{label} ({models[name].parameters / 1e6:.1f}M params), {batch_size}×{seq_len}"
                if series == "model size" else f"{label}, batch {batch_size}")
        if series not in base:
            base[series] = (step, peak, flops, memory, label)
            how = "CUDA max allocated" if device == "gpu" else "child's peak RSS above its RSS after imports"
            rows.append(Row("growth", case, f"step time ({series} series base)", step * 1e3, "ms",
                            note=f"{flops / step / 1e9:.1f} GFLOP/s achieved; {flops / 1e9:.1f} GFLOP per step; "
                                 f"median step, min of {repeats} runs"))
            rows.append(Row("growth", case, f"peak memory ({series} series base)", peak / 2 ** 20, "MB",
                            note=f"{how}; rough estimate {memory / 2 ** 20:.0f} MB"))
            continue
        b_step, b_peak, b_flops, b_memory, b_label = base[series]
        t_ratio, t_expected = step / b_step, flops / b_flops
        verdict = _verdict(t_ratio, t_expected, "the FLOPs", "fixed per-step costs")
        rows.append(Row("growth", case, f"step time ÷ {b_label}", t_ratio, "×",
                        note=f"×{t_ratio:.2f} vs ×{t_expected:.2f} expected from FLOPs: {verdict}; "
                             f"{step * 1e3:.0f} ms/step, {flops / step / 1e9:.1f} GFLOP/s"))
        # fixed costs (data, allocator, library buffers) are not in the estimate: judge the growth
        # over the base case, where they cancel
        m_ratio, m_expected = peak / b_peak, memory / b_memory
        grown, expected_growth = peak - b_peak, memory - b_memory
        verdict = ("as expected" if abs(grown - expected_growth) <= max(0.25 * abs(expected_growth), 16 * 2 ** 20)
                   else "grows faster than the estimate" if grown > expected_growth else "grows slower than the estimate")
        rows.append(Row("growth", case, f"peak memory ÷ {b_label}", m_ratio, "×",
                        note=f"×{m_ratio:.2f} vs ×{m_expected:.2f} estimated; {peak / 2 ** 20:.0f} MB, "
                             f"{grown / 2 ** 20:+.0f} MB over the base vs {expected_growth / 2 ** 20:+.0f} MB "
                             f"estimated: {verdict}"))
    return rows


def _child(spec: dict) -> dict:
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)],
                          capture_output=True, text=True, env={**os.environ})
    for line in proc.stdout.splitlines():
        if line.startswith(MARK):
            return json.loads(line[len(MARK):])
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
    raise RuntimeError(f"growth case {spec} failed (exit {proc.returncode}):\n{tail}")


def child_main(spec: dict) -> None:
    """One case: a kdyn-train run in this fresh process; prints its step time and peak memory."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    import kdyn.train  # noqa: F401 - every import the run needs, before the baseline
    from bench_common import BARE, BenchModel, local_model_overrides, run_kdyn
    from kdyn.callbacks.summary import RunSummary  # noqa: F401
    from kdyn.config import compose_config  # noqa: F401
    from kdyn.data.datamodule import CorpusDataModule  # noqa: F401
    from kdyn.models.loading import load_model  # noqa: F401
    from kdyn.module import CausalLMModule  # noqa: F401
    from kdyn.run import build_trainer  # noqa: F401

    AutoModelForCausalLM._model_mapping[type(AutoConfig.from_pretrained(spec["folder"]))]  # imports the model's module
    torch.set_num_threads(int(spec["threads"]))
    gpu = spec["device"] == "gpu"
    baseline, reset = _memory_baseline()
    folder = Path(spec["folder"])
    overrides = [*BARE, *local_model_overrides(BenchModel(folder.name, folder, 0), spec["seq_len"], spec["batch_size"],
                                               spec["steps"])]
    if gpu:
        overrides += ["trainer.accelerator=gpu", "trainer.devices=1"]
        torch.cuda.reset_peak_memory_stats()
    clock, _ = run_kdyn([*overrides, *spec.get("extra", [])], Path(spec["out"]), sync_cuda=gpu)
    peak = torch.cuda.max_memory_allocated() if gpu else _peak_rss(reset) - baseline
    print(MARK + json.dumps({"step_s": clock.median(int(spec["skip"])), "peak_bytes": int(peak),
                             "baseline_bytes": int(baseline), "high_water_mark_reset": reset}), flush=True)


def _proc_status(key: str) -> int:
    with open("/proc/self/status") as f:
        return 1024 * next(int(line.split()[1]) for line in f if line.startswith(key + ":"))


def _memory_baseline() -> tuple[int, bool]:
    """(bytes, reset?): the resident size right after the imports, with the high-water mark reset to
    it, so that transient import-time memory does not hide a small case's peak. Where /proc is not
    available, the baseline is ``ru_maxrss`` itself."""
    import gc
    import resource

    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux ≥ 4.0)
        return _proc_status("VmRSS"), True
    except (OSError, StopIteration, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, False  # kilobytes on Linux


def _peak_rss(reset: bool) -> int:
    """The process's peak resident size: ``VmHWM`` where the reset worked, else ``ru_maxrss``.

    ``ru_maxrss`` alone is not this process's own peak: at exec Linux folds the high-water mark of
    the pre-exec image — the fork of the parent benchmark process, which may hold a 160M-parameter
    model — into it, and a reset does not clear that part. ``VmHWM`` is the current image's only.
    """
    import resource

    if reset:
        return _proc_status("VmHWM")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("WANDB_MODE", "disabled")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        child_main(json.loads(sys.argv[2]))
    else:
        sys.exit("run through bench.py: python benchmarks/bench.py --only growth")
