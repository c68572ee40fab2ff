"""kdyn benchmarks: print a table of measured ratios (and write it as CSV).

    python benchmarks/bench.py                    # every section
    python benchmarks/bench.py --only entropy     # one section
    python benchmarks/bench.py --quick            # fewer repeats (a smoke run)
    python benchmarks/bench.py --tiny-only        # skip the Pythia-160m-sized cases of the new sections

Sections: entropy, probes (measurement costs), overhead (kdyn-train vs a hand-written PyTorch loop),
callbacks (the cost of each default callback), freeze (half the layers frozen), trace (kdyn-trace per
diagnostic example), growth (step time and peak memory vs width, depth and sequence length, each case
in its own process), gpu (tokens/s and MFU in bf16; skipped without CUDA), data (the token store:
build throughput, peak memory vs corpus size, resume cost, tokens/s; KDYN_BENCH_DATA_CHARS sizes it). Environment: KDYN_BENCH_THREADS (torch threads),
KDYN_PEAK_FLOPS (the GPU's peak bf16 FLOP/s when it is not in bench_gpu's table),
KDYN_BENCH_DEVICE=gpu (run the growth section on the GPU).

Every comparison is a ratio measured side by side in the same run, alternating the variants
(the growth section runs each case in its own process, to measure its peak memory, and alternates
the cases), so machine load affects them alike; each section's docstring says how it times and
which statistic (median of steps, min or median of repeats) it keeps. Targets are printed next to the figures; nothing
here is a test — a missed target is reported, not failed.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import Row, machine_description  # noqa: E402

# section name -> (module, function, whether it has Pythia-sized cases that --tiny-only skips);
# modules are imported only when their section runs
SECTIONS = {
    "entropy": ("bench_entropy", "run", False),
    "probes": ("bench_probes", "run", False),
    "overhead": ("bench_overhead", "run_overhead", True),
    "callbacks": ("bench_overhead", "run_callbacks", True),
    "freeze": ("bench_freeze", "run", True),
    "trace": ("bench_trace", "run", True),
    "growth": ("bench_growth", "run", True),
    "gpu": ("bench_gpu", "run", True),
    "data": ("bench_data", "run", False),
}


def run_section(name: str, args) -> list[Row]:
    import importlib

    module, function, has_tiny_only = SECTIONS[name]
    kwargs = {"quick": args.quick, **({"tiny_only": args.tiny_only} if has_tiny_only else {})}
    return getattr(importlib.import_module(module), function)(**kwargs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help=f"comma-separated sections: {', '.join(SECTIONS)}")
    parser.add_argument("--quick", action="store_true", help="fewer repeats and steps (a smoke run)")
    parser.add_argument("--tiny-only", action="store_true",
                        help="skip the Pythia-160m-sized cases of overhead, freeze, growth (a faster smoke run)")
    parser.add_argument("--csv", default=str(Path(__file__).resolve().parent / "results.csv"))
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()] or list(SECTIONS)
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    import torch

    torch.set_num_threads(int(os.environ.get("KDYN_BENCH_THREADS", torch.get_num_threads())))
    print(f"machine: {machine_description()}", flush=True)
    rows: list[Row] = []
    for name in chosen:
        print(f"\n== {name} ==", flush=True)
        start = time.perf_counter()
        section_rows = run_section(name, args)
        for row in section_rows:
            print(row.line(), flush=True)
        print(f"({name}: {time.perf_counter() - start:.0f} s)", flush=True)
        rows += section_rows
    _write_csv(rows, Path(args.csv))
    print("\n" + Row.markdown(rows))
    print(f"\nwritten: {args.csv}")
    return 0


def _write_csv(rows: list[Row], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=Row.FIELDS + ["machine"])
        writer.writeheader()
        for row in rows:
            writer.writerow({**row.as_dict(), "machine": machine_description()})


if __name__ == "__main__":
    sys.exit(main())
