"""Knowledge-entropy costs: measurement against a bare forward, training with the callback against without."""

from __future__ import annotations

import torch

from bench_common import (PYTHIA_160M, TINY_SIZES, Row, alternate, kdyn_train_step_time, median, shared_model,
                          shared_tokenizer, workdir)


def run(quick: bool = False) -> list[Row]:
    from kdyn.data.corpora import load_documents
    from kdyn.data.sequences import packed_batches
    from kdyn.metrics.recorder import measure
    from kdyn.models.ffn import locate_ffn
    from transformers import AutoModelForCausalLM

    root = workdir()
    tokenizer = shared_tokenizer()
    docs = load_documents({"name": "synthetic"})
    rows: list[Row] = []
    cases = [("tiny (OLMo arch)", TINY_SIZES, 128, 16, 40 if not quick else 10, 60 if not quick else 12),
             ("Pythia-160m config", PYTHIA_160M, 256, 4, 3 if not quick else 1, 6 if not quick else 3)]
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

        step_times = {"without": [], "with": []}
        for repeat in range(1 if quick else 2):
            for variant, enabled in (("without", "false"), ("with", "true")):
                step, _ = kdyn_train_step_time(
                    ["model=local", f"model.path={bench_model.folder}", f"trainer.max_steps={train_steps}",
                     f"data.seq_len={seq_len}", f"data.batch_size={batch_size}",
                     f"callbacks.entropy.enabled={enabled}", "callbacks.entropy.every_n_steps=1", "inject.enabled=false"],
                    root / f"run-{bench_model.name}-{variant}-{repeat}")
                step_times[variant].append(step)
        slowdown = min(step_times["with"]) / min(step_times["without"]) - 1
        rows.append(Row("entropy", name, "train step time with entropy callback (every step)", 100 * slowdown, "% slower",
                        "≤ 3%", slowdown <= 0.03,
                        f"{min(step_times['without']) * 1e3:.0f} ms → {min(step_times['with']) * 1e3:.0f} ms per step"))
    return rows
