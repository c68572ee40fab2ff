"""Knowledge-entropy costs: measurement against a bare forward, training with the callback against without.

The measurement (`kdyn.metrics.recorder.measure`) and a bare ``inference_mode`` forward run the same
batches, alternated, median of repeats. The training cost is measured inside one kdyn-train run
(callbacks and injection off, CSV logger on): the entropy callback records and logs on every other
step (`AlternatingEntropyLogger`), and the median duration of those steps is compared with the
median of the steps in between.
"""

from __future__ import annotations

import torch

from bench_common import (
    BARE,
    PYTHIA_160M,
    TINY_SIZES,
    Row,
    alternate,
    local_model_overrides,
    median,
    run_kdyn,
    shared_model,
    shared_tokenizer,
    workdir,
)
from kdyn.callbacks.entropy import EntropyLogger


class AlternatingEntropyLogger(EntropyLogger):
    """The real entropy callback (logging every step, to the CSV logger) on even batches only; on odd
    batches its hooks stay attached but disarmed and nothing is logged. Comparing even and odd step
    times of one run measures the callback's cost side by side: machine load drifts affect both alike,
    which separate runs (each a few steps of a 160M model on a shared 2-core machine) do not give."""

    def __init__(self):
        super().__init__(every_n_steps=1)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx % 2 == 0:
            super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
        else:
            self.recorder.armed = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx % 2 == 0:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        else:
            self._last_step = trainer.global_step


def run(quick: bool = False) -> list[Row]:
    from transformers import AutoModelForCausalLM

    from kdyn.data.corpora import load_documents
    from kdyn.data.sequences import packed_batches
    from kdyn.metrics.recorder import measure
    from kdyn.models.ffn import locate_ffn

    root = workdir()
    tokenizer = shared_tokenizer()
    docs = load_documents({"name": "synthetic"})
    rows: list[Row] = []
    cases = [("tiny (OLMo arch)", TINY_SIZES, 128, 16, 40 if not quick else 10, 60 if not quick else 12),
             ("Pythia-160m config", PYTHIA_160M, 256, 4, 3 if not quick else 1, 8 if not quick else 3)]
    for name, sizes, seq_len, batch_size, n_batches, train_steps in cases:
        bench_model = shared_model("tiny" if sizes is TINY_SIZES else "pythia160m", sizes)
        params = f"{bench_model.parameters / 1e6:.1f}M params"
        model = AutoModelForCausalLM.from_pretrained(bench_model.folder).eval()
        ffn = locate_ffn(model)
        batches = packed_batches(docs, tokenizer, num_sequences=n_batches * batch_size, seq_len=seq_len,
                                 batch_size=batch_size)
        tokens = sum(b["input_ids"].numel() for b in batches)

        def bare():
            with torch.inference_mode():
                for b in batches:
                    model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False)

        def measured():
            measure(model, ffn, batches).compute()

        bare()  # warm-up
        times = alternate({"bare": bare, "measured": measured}, repeats=2 if quick else 5)
        ratio = median(times["bare"]) / median(times["measured"])
        rows.append(Row("entropy", name, "measurement tokens/s ÷ bare forward tokens/s", ratio, "×", "≥ 0.9",
                        ratio >= 0.9, f"{params}; {tokens / median(times['measured']):,.0f} tok/s measured"))

        steps = train_steps * 2
        clock, _ = run_kdyn([*BARE, "logger=csv", *local_model_overrides(bench_model, seq_len, batch_size, steps)],
                            root / f"run-{bench_model.name}-paired", extra=[AlternatingEntropyLogger()])
        durations = clock.steps(2)  # step i: batch start i → batch start i + 1 (its logging included)
        first = 2  # steps 0, 1 are skipped: even offsets are the recorded steps
        with_cb = [d for i, d in enumerate(durations, start=first) if i % 2 == 0]
        without = [d for i, d in enumerate(durations, start=first) if i % 2 == 1]
        slowdown = median(with_cb) / median(without) - 1
        rows.append(Row("entropy", name, "train step time with entropy callback (every step)", 100 * slowdown, "% slower",
                        "≤ 3%", slowdown <= 0.03,
                        f"{median(without) * 1e3:.0f} ms → {median(with_cb) * 1e3:.0f} ms per step; median of "
                        f"{len(with_cb)} recorded vs {len(without)} unrecorded steps, alternated in one run"))
    return rows
