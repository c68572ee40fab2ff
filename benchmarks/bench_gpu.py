"""GPU throughput and model FLOPs utilisation (MFU) of kdyn-train in bf16 (needs CUDA; not run in CI).

The Pythia-160m-sized config (fresh weights) trains with ``trainer.accelerator=gpu
trainer.precision=bf16-mixed`` and every callback, logger and the injection off, once with kdyn's
default eager attention and once with ``model.attn_implementation=sdpa``, alternated. Step time:
median over the steps after a warm-up (CUDA synchronised at every batch start), min over repeats.

MFU = achieved model FLOP/s ÷ the GPU's peak dense bf16 FLOP/s, where the model FLOPs of a step are
6·N·tokens + 12·L·d·T² per sequence (`bench_common.train_flops`; N = every parameter that
multiplies a token, i.e. all but the input embedding). The peak comes from ``KDYN_PEAK_FLOPS``
(FLOP/s, e.g. ``312e12``) when set, else from the table below, matched against
``torch.cuda.get_device_name()``; an unknown GPU gets its tokens/s but no MFU.
"""

from __future__ import annotations

import os

import torch

from bench_common import BARE, PYTHIA_160M, Row, local_model_overrides, run_kdyn, shared_model, temp_dir, train_flops

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' datasheets, FLOP/s. The first
# entry whose key occurs in the device name wins, so more specific names come first.
PEAK_BF16_FLOPS = [
    ("H100 NVL", 835e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),       # SXM ("NVIDIA H100 80GB HBM3")
    ("H800", 989e12),
    ("H200", 989e12),
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),       # SXM and PCIe, 40 and 80 GB
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("A10G", 125e12),       # AWS's A10 variant; NVIDIA publishes no figure (A10's assumed)
    ("A10", 125e12),
    ("A6000", 155e12),      # RTX A6000
    ("RTX 6000 Ada", 364e12),
    ("RTX 4090", 165e12),   # fp32 accumulation (what PyTorch's bf16 matmuls use)
    ("RTX 3090", 71e12),
]


def peak_flops(device_name: str) -> tuple[float | None, str]:
    """(peak bf16 FLOP/s, where it came from) for a CUDA device name."""
    env = os.environ.get("KDYN_PEAK_FLOPS")
    if env:
        return float(env), "KDYN_PEAK_FLOPS"
    for key, flops in PEAK_BF16_FLOPS:
        if key.lower() in device_name.lower():
            return flops, f"table entry {key!r}"
    return None, "unknown GPU: set KDYN_PEAK_FLOPS"


def run(quick: bool = False, tiny_only: bool = False) -> list[Row]:
    case = "Pythia-160m config, bf16-mixed"
    if not torch.cuda.is_available():
        return [Row("gpu", case, "tokens/s and MFU", float("nan"),
                    note="skipped: no CUDA device (torch.cuda.is_available() is False)")]
    if tiny_only:
        return [Row("gpu", case, "tokens/s and MFU", float("nan"), note="skipped: --tiny-only")]
    device = torch.cuda.get_device_name(0)
    peak, source = peak_flops(device)
    bench_model = shared_model("pythia160m", PYTHIA_160M)
    batch_size, seq_len = (8, 512) if quick else (16, 1024)
    steps, skip, repeats = (10, 3, 1) if quick else (40, 5, 3)
    out = temp_dir("kdyn-bench-gpu-")
    base = [*BARE, *local_model_overrides(bench_model, seq_len, batch_size, steps),
            "trainer.accelerator=gpu", "trainer.devices=1", "trainer.precision=bf16-mixed"]
    times: dict[str, list[float]] = {"eager": [], "sdpa": []}
    for repeat in range(repeats):
        for attn in times:
            clock, _ = run_kdyn([*base, f"model.attn_implementation={attn}"], out / f"{attn}-{repeat}", sync_cuda=True)
            times[attn].append(clock.median(skip))
    flops = train_flops(bench_model.extra, batch_size, seq_len)
    rows = []
    for attn, values in times.items():
        step = min(values)
        label = f"{case}, {attn} attention, {batch_size}×{seq_len}"
        rows.append(Row("gpu", label, "tokens/s", batch_size * seq_len / step, "tok/s",
                        note=f"{device}; {step * 1e3:.1f} ms/step; median step of {steps - 1 - skip}, min of {repeats}"))
        achieved = flops / step
        rows.append(Row("gpu", label, "MFU (model FLOP/s ÷ peak bf16)", 100 * achieved / peak if peak else float("nan"),
                        "%", note=f"{achieved / 1e12:.1f} TFLOP/s achieved; peak "
                                  f"{f'{peak / 1e12:.0f} TFLOP/s' if peak else '?'} ({source}); "
                                  f"{flops / 1e12:.2f} TFLOP per step"))
    return rows
