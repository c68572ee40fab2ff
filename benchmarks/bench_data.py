"""Data section: the token store against in-memory packing and a bare tokenizer pass (issue 11).

Corpora are ``.jsonl`` files of WikiText-2 paragraphs (``../shared/data/wikitext-2``) repeated to
size, written to a temporary folder; the model is a tiny OLMo-shaped model saved with the synthetic
BPE tokenizer (2,048 ids, so the store holds uint16). Sizes in characters: ``KDYN_BENCH_DATA_CHARS``
(``small,large``; default 10e6,160e6, ``--quick`` 1e6,4e6). Figures:

1. store build throughput ÷ a bare batch encode of the same file (``json`` parse + the fast tokenizer
   on batches of the same size, nothing written); alternated, min of repeats; same threads for both
   (``TOKENIZERS_PARALLELISM`` as the environment sets it; bench.py sets it to false);
2. peak RSS (``wait4``'s ``ru_maxrss``) of a real ``kdyn-train`` process (2 steps) on the large
   corpus ÷ on the small one, both with a warm store (built first by ``kdyn-prepare``, whose output
   line is reported); for reference, the small corpus with ``data.store.enabled=false``;
3. time from process start to the first training step (warm store), and a resume at step 10,000
   (a checkpoint whose step counters were set to 10,000) ÷ a start at step 0; median of repeats;
4. tokens/s of ``kdyn-train`` reading the store ÷ reading the same rows from an in-memory tensor
   (``data.store.enabled=false``); shuffled rows, median step time per run, alternated runs; and the
   time `TrainingStream` takes to serve one micro-batch from either;
5. the library choice: litdata's optimized dataset (litgpt's recipe: ``optimize`` with a
   ``TokensLoader``, read by a ``StreamingDataLoader``) against the numpy memory map, on the small
   corpus — build throughput (one process each), bytes per token on disk, time per batch read in
   order, and the first batch after a resume half-way.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_common import TINY_SIZES, Row, alternate, kdyn_train_step_time, shared_model, shared_tokenizer, temp_dir

REPO = Path(__file__).resolve().parents[1]
WIKITEXT = REPO.parent / "shared" / "data" / "wikitext-2"
RESUME_STEP = 10_000


def _sizes(quick: bool) -> tuple[int, int]:
    raw = os.environ.get("KDYN_BENCH_DATA_CHARS", "1e6,4e6" if quick else "10e6,160e6")
    small, large = (int(float(x)) for x in raw.split(","))
    return small, large


def write_corpus(path: Path, chars: int) -> Path:
    """WikiText-2 paragraphs (valid + test) as ``{"text": ...}`` lines, repeated until ``chars``."""
    paragraphs = []
    for name in ("valid.txt", "test.txt"):
        if (WIKITEXT / name).is_file():
            text = (WIKITEXT / name).read_text(encoding="utf-8")
            paragraphs += [p.strip() for p in text.split("\n \n") if len(p.strip()) > 100]
    if not paragraphs:
        raise SystemExit(f"bench_data needs WikiText-2 in {WIKITEXT}")
    written = 0
    with path.open("w", encoding="utf-8") as f:
        while written < chars:
            for p in paragraphs:
                f.write(json.dumps({"text": p}) + "\n")
                written += len(p)
                if written >= chars:
                    break
    return path


def _bare_encode(path: Path, tokenizer) -> int:
    from kdyn.data.store import ENCODE_BATCH

    tokens, batch = 0, []
    with path.open(encoding="utf-8") as f:
        for line in f:
            batch.append(json.loads(line)["text"])
            if len(batch) == ENCODE_BATCH:
                tokens += sum(len(x) for x in tokenizer(batch, add_special_tokens=False)["input_ids"])
                batch = []
    if batch:
        tokens += sum(len(x) for x in tokenizer(batch, add_special_tokens=False)["input_ids"])
    return tokens


def _build_ratio(path: Path, tokenizer, repeats: int, work: Path) -> list[Row]:
    import shutil

    from kdyn.data.store import build_store

    corpus = {"name": "text", "path": str(path), "text_field": "text", "max_documents": None}
    count = {}

    def store():
        shutil.rmtree(work / "build", ignore_errors=True)
        count["tokens"] = build_store(corpus, tokenizer, work / "build")[0].num_tokens

    times = alternate({"bare": lambda: _bare_encode(path, tokenizer), "store": store}, repeats)
    bare, built = min(times["bare"]), min(times["store"])
    ratio = bare / built
    return [Row("data", f"store build ({path.stat().st_size / 1e6:.0f} MB jsonl)", "build ÷ bare batch encode (throughput)",
                ratio, "×", "≥ 0.8", ratio >= 0.8,
                f"{count['tokens'] / built / 1e6:.2f} vs {count['tokens'] / bare / 1e6:.2f} M tok/s "
                f"(store {built:.1f} s, bare {bare:.1f} s, min of {repeats})")]


def _train_args(model: Path, corpus: Path, stores: Path, *extra: str) -> list[str]:
    return ["model=local", f"model.path={model}", "corpus=text", f"corpus.path={corpus}", f"data.store.dir={stores}",
            "data.seq_len=128", "data.batch_size=8", "inject.enabled=false", "logger=none",
            "trainer.enable_progress_bar=false", "callbacks.entropy.enabled=false", "callbacks.export_hf.enabled=false",
            *extra]


def _peak_rss(cmd: list[str], cwd: Path) -> tuple[float, float, str]:
    """(peak RSS in GB, wall seconds, output tail) of one process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"})
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} … failed ({proc.returncode}): {out[-2000:]}")
    return usage.ru_maxrss / 1e6, time.perf_counter() - start, out.strip().splitlines()[-1] if out.strip() else ""


def _rss_rows(model: Path, small: Path, large: Path, stores: Path, work: Path, repeats: int) -> list[Row]:
    bin_dir = Path(sys.executable).parent
    notes = []
    for corpus in (small, large):  # warm the stores (kdyn-prepare's own report)
        _, seconds, line = _peak_rss([str(bin_dir / "kdyn-prepare"), *_train_args(model, corpus, stores)], work)
        notes.append(f"{corpus.name}: {line.removeprefix('kdyn-prepare: ')}")
    peaks: dict[str, list[float]] = {"small": [], "large": [], "small, no store": []}
    walls: dict[str, list[float]] = {k: [] for k in peaks}
    for i in range(repeats):
        for name, corpus, extra in (("small", small, []), ("large", large, []),
                                    ("small, no store", small, ["data.store.enabled=false"])):
            run_dir = work / f"rss-{i}-{name.replace(' ', '').replace(',', '')}"
            rss, wall, _ = _peak_rss([str(bin_dir / "kdyn-train"), *_train_args(
                model, corpus, stores, "trainer.max_steps=2", "callbacks.checkpoint.enabled=false", *extra,
                f"hydra.run.dir={run_dir}")], work)
            peaks[name].append(rss)
            walls[name].append(wall)
    peak = {k: min(v) for k, v in peaks.items()}
    ratio = peak["large"] / peak["small"]
    return [
        Row("data", f"kdyn-train 2 steps, {large.stat().st_size / 1e6:.0f} vs {small.stat().st_size / 1e6:.0f} MB corpus",
            "peak RSS large ÷ small (warm store)", ratio, "×", "≤ 1.2", ratio <= 1.2,
            f"{peak['large']:.2f} vs {peak['small']:.2f} GB; start to finish {min(walls['large']):.1f} vs "
            f"{min(walls['small']):.1f} s; without the store (small): {peak['small, no store']:.2f} GB, "
            f"{min(walls['small, no store']):.1f} s"),
        Row("data", "kdyn-prepare (warming the stores)", "store built", float("nan"), "", "", None, "; ".join(notes)),
    ]


# ----------------------------------------------------------------------------------- time to the first step
def _child_first_step(spec: str) -> None:
    """In a fresh process: run kdyn-train's `train` and print when the first step started and its step."""
    import lightning.pytorch as pl
    from omegaconf import open_dict

    from kdyn.config import compose_config
    from kdyn.train import train

    args = json.loads(spec)

    class FirstStep(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if not hasattr(self, "seconds"):
                self.seconds, self.step = time.time() - args["launched"], int(trainer.global_step)
            if trainer.global_step >= self.step + 1:
                trainer.should_stop = True

    cfg = compose_config("train", args["overrides"])
    with open_dict(cfg):
        cfg.paths.output_dir = args["out"]
    first = FirstStep()
    train(cfg, extra_callbacks=[first])
    print("FIRST_STEP " + json.dumps({"seconds": first.seconds, "step": first.step}), flush=True)


def _first_step(overrides: list[str], out: Path) -> dict:
    spec = json.dumps({"overrides": overrides, "out": str(out), "launched": time.time()})
    proc = subprocess.run([sys.executable, __file__, "--child-first-step", spec], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"})
    for line in proc.stdout.splitlines():
        if line.startswith("FIRST_STEP "):
            return json.loads(line.removeprefix("FIRST_STEP "))
    raise RuntimeError(f"first-step run failed ({proc.returncode}): {(proc.stdout + proc.stderr)[-2000:]}")


def _set_step(ckpt: Path, step: int) -> None:
    """Rewrite a Lightning checkpoint as if it had been saved after ``step`` optimizer steps."""
    import torch

    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    before = int(state["global_step"])

    def bump(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("ready", "started", "processed", "completed") and isinstance(value, int) and value == before:
                    node[key] = step
                elif key == "_batches_that_stepped":
                    node[key] = step
                else:
                    bump(value)

    bump(state["loops"])
    state["global_step"] = step
    torch.save(state, ckpt)


def _resume_rows(model: Path, small: Path, stores: Path, work: Path, repeats: int) -> list[Row]:
    total = f"trainer.max_steps={RESUME_STEP + 4}"
    base = _train_args(model, small, stores, total, "corpus.shuffle=true")
    resumable = work / "resume-source"
    _first_step(base, resumable)  # one step, then last.ckpt at the end of training
    _set_step(resumable / "checkpoints" / "last.ckpt", RESUME_STEP)
    import shutil

    times: dict[str, list[float]] = {"start": [], "resume": []}
    for i in range(repeats):
        first = _first_step(base, work / f"start-{i}")
        assert first["step"] == 0, first
        times["start"].append(first["seconds"])
        folder = work / f"resume-{i}"
        shutil.copytree(resumable, folder)
        (folder / "checkpoints" / "run_config.json").unlink()  # it records the source folder's paths
        resumed = _first_step(base, folder)
        assert resumed["step"] == RESUME_STEP, resumed
        times["resume"].append(resumed["seconds"])
    start, resume = statistics.median(times["start"]), statistics.median(times["resume"])
    ratio = resume / start
    return [Row("data", f"time to first step (warm store, {small.stat().st_size / 1e6:.0f} MB corpus)",
                f"resume at step {RESUME_STEP:,} ÷ start at step 0", ratio, "×", "≤ 1.5", ratio <= 1.5,
                f"{resume:.2f} vs {start:.2f} s from process start (median of {repeats})")]


# ----------------------------------------------------------------------------------- tokens/s
def _throughput_rows(model: Path, small: Path, stores: Path, work: Path, repeats: int, steps: int) -> list[Row]:
    base = _train_args(model, small, stores, f"trainer.max_steps={steps}", "corpus.shuffle=true")
    medians: dict[str, list[float]] = {"store": [], "memory": []}
    for i in range(repeats):
        for name, extra in (("store", []), ("memory", ["data.store.enabled=false"])):
            seconds, results = kdyn_train_step_time([*base, *extra], work / f"tps-{name}-{i}")
            medians[name].append(seconds)
    store, memory = statistics.median(medians["store"]), statistics.median(medians["memory"])
    tokens = 8 * 128
    ratio = memory / store
    access = _batch_access(small, stores)
    return [Row("data", "kdyn-train reading the store", "tokens/s store ÷ in-memory tensor", ratio, "×", "≥ 0.97",
                ratio >= 0.97, f"{tokens / store:,.0f} vs {tokens / memory:,.0f} tok/s (median step of {steps}, "
                f"median of {repeats} alternated runs, shuffled rows)"),
            Row("data", "one micro-batch from the stream (8 × 128, shuffled)", "store ÷ in-memory tensor (time)",
                access["store"] / access["memory"], "×", "", None,
                f"{access['store'] * 1e6:.0f} vs {access['memory'] * 1e6:.0f} µs per batch = "
                f"{access['store'] / store:.3%} of a {store * 1e3:.0f} ms step")]


def _batch_access(corpus: Path, stores: Path, batches: int = 3000) -> dict[str, float]:
    """Seconds per micro-batch served by `TrainingStream` from the store and from a tensor of its rows."""
    import numpy as np

    from kdyn.data.datamodule import TrainingStream
    from kdyn.data.rows import TensorRows
    from kdyn.data.store import build_store

    table = build_store({"name": "text", "path": str(corpus), "text_field": "text", "txt_split": "paragraph",
                         "max_documents": None},
                        shared_tokenizer(), stores)[0].rows(128)
    tables = {"store": table, "memory": TensorRows(table.rows(np.arange(len(table))))}
    out = {}
    for name, rows in tables.items():
        stream = TrainingStream(rows, 8, shuffle=True, seed=0, num_steps=batches)
        start = time.perf_counter()
        for k in range(batches):
            stream[k]
        out[name] = (time.perf_counter() - start) / batches
    return out


# ----------------------------------------------------------------------------------- library choice
def _litdata_build(corpus: Path, tokenizer, out: Path, workers: int = 1) -> None:
    """litgpt's recipe: `litdata.optimize` over blocks of 1,024 lines, each document's ids + EOS an item."""
    import shutil

    import torch
    from litdata import TokensLoader, optimize

    starts, lines = [0], 0
    with corpus.open("rb") as f:
        for _ in f:
            lines += 1
            if lines % 1024 == 0:
                starts.append(f.tell())
    size = corpus.stat().st_size
    blocks = [(a, b) for a, b in zip(starts, [*starts[1:], size]) if b > a]
    eos = tokenizer.eos_token_id

    def tokenize(block):
        with corpus.open("rb") as f:
            f.seek(block[0])
            data = f.read(block[1] - block[0]).decode("utf-8")
        texts = [json.loads(line)["text"] for line in data.splitlines() if line.strip()]
        for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
            yield torch.tensor([*ids, eos], dtype=torch.int32)

    shutil.rmtree(out, ignore_errors=True)
    optimize(fn=tokenize, inputs=blocks, output_dir=str(out), chunk_bytes="64MB", item_loader=TokensLoader(),
             num_workers=workers, verbose=False, start_method="fork")


def _library_rows(corpus: Path, tokenizer, work: Path, repeats: int) -> list[Row]:
    """litdata's optimized dataset (TokensLoader, StreamingDataLoader) against the numpy memory map."""
    import shutil

    import numpy as np
    from litdata import StreamingDataLoader, StreamingDataset, TokensLoader

    from kdyn.data.datamodule import TrainingStream
    from kdyn.data.store import build_store

    node = {"name": "text", "path": str(corpus), "text_field": "text", "txt_split": "paragraph", "max_documents": None}
    lit_dir, store_root = work / "litdata", work / "library-store"

    def store_build():
        shutil.rmtree(store_root, ignore_errors=True)
        build_store(node, tokenizer, store_root)

    builds = alternate({"store": store_build, "litdata": lambda: _litdata_build(corpus, tokenizer, lit_dir)}, repeats)
    store = build_store(node, tokenizer, store_root)[0]
    table = store.rows(128)
    lit_bytes = sum(p.stat().st_size for p in lit_dir.iterdir())

    def lit_loader():
        dataset = StreamingDataset(str(lit_dir), item_loader=TokensLoader(block_size=128), shuffle=False, drop_last=True)
        return StreamingDataLoader(dataset, batch_size=8, num_workers=0)

    batches = len(table) // 8
    stream = TrainingStream(table, 8, num_steps=batches)
    start = time.perf_counter()
    for k in range(batches):
        stream[k]
    store_read = (time.perf_counter() - start) / batches
    start, count = time.perf_counter(), 0
    for _ in lit_loader():
        count += 1
    lit_read = (time.perf_counter() - start) / count
    # resume half-way: the memory map seeks; litdata restores its loader state
    middle = batches // 2
    start = time.perf_counter()
    resumed = TrainingStream(store.rows(128), 8, num_steps=batches, start_step=middle)[0]["input_ids"]
    store_resume = time.perf_counter() - start
    loader = lit_loader()
    it = iter(loader)
    for _ in range(middle):
        next(it)
    state = loader.state_dict()
    expected = next(it)
    start = time.perf_counter()
    again = lit_loader()
    again.load_state_dict(state)
    got = next(iter(again))
    lit_resume = time.perf_counter() - start
    same = bool(np.array_equal(got.numpy(), expected.numpy())) and bool(np.array_equal(resumed.numpy(), table.rows(
        np.arange(middle * 8, middle * 8 + 8)).numpy()))
    tokens = store.num_tokens
    b_store, b_lit = min(builds["store"]), min(builds["litdata"])
    return [
        Row("data", "library: build (same file, 1 process)", "tokens/s memmap store ÷ litdata.optimize",
            b_lit / b_store, "×", "", None, f"{tokens / b_store / 1e6:.2f} vs {tokens / b_lit / 1e6:.2f} M tok/s; on disk "
            f"{store.size_bytes / tokens:.2f} vs {lit_bytes / tokens:.2f} bytes/token"),
        Row("data", "library: read 8 × 128 batches in order", "µs per batch memmap ÷ litdata", store_read / lit_read,
            "×", "", None, f"{store_read * 1e6:.0f} vs {lit_read * 1e6:.0f} µs"),
        Row("data", f"library: resume at batch {middle:,}", "first batch, memmap ÷ litdata", store_resume / lit_resume,
            "×", "", None, f"{store_resume * 1e3:.2f} vs {lit_resume * 1e3:.2f} ms; same rows as uninterrupted: {same}"),
    ]


def run(quick: bool = False) -> list[Row]:
    small_chars, large_chars = _sizes(quick)
    work = temp_dir("kdyn-bench-data-")
    small = write_corpus(work / f"wikitext-{small_chars / 1e6:g}M.jsonl", small_chars)
    large = write_corpus(work / f"wikitext-{large_chars / 1e6:g}M.jsonl", large_chars)
    tokenizer = shared_tokenizer()
    model = shared_model("tiny", TINY_SIZES).folder
    stores = work / "stores"
    repeats = 1 if quick else 3
    rows = _build_ratio(small, tokenizer, repeats, work)
    try:
        import litdata  # noqa: F401 - only this comparison needs it (pip install litdata)
    except ImportError:
        rows.append(Row("data", "library: litdata vs memory map", "skipped", float("nan"), "", "", None,
                        "litdata is not installed (pip install litdata to measure it)"))
    else:
        rows += _library_rows(small, tokenizer, work, repeats)
    rows += _rss_rows(model, small, large, stores, work, 1 if quick else 2)
    rows += _resume_rows(model, small, stores, work, repeats)
    # 150 steps x 5 alternated runs: with 40 x 3 the step-time noise (±7%) hid a 0.04% data cost
    rows += _throughput_rows(model, small, stores, work, 1 if quick else 5, 8 if quick else 150)
    return rows


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child-first-step":
        _child_first_step(sys.argv[2])
    else:
        for row in run(quick="--quick" in sys.argv):
            print(row.line())
