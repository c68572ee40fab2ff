"""Half the layers frozen (``intervention=freeze``) against full training: step time and AdamW state.

Both variants are real kdyn-train runs (callbacks, logger and injection off) of the same model
and data, alternated; step time is the median over the steps after a warm-up, min over repeats.
The optimizer state is the sum of the bytes of every tensor in ``trainer.optimizers[0].state``
read at the end of training (`bench_common.StepClock`). Frozen parameters never reach the
optimizer, so its state should shrink by the frozen share of the parameters. The expected step
time comes from the FLOP count: a frozen block still runs its forward and, because the embeddings
below it keep training, the backward through its inputs (2 of the 6 FLOPs per parameter and
token are saved: no weight gradients), and it has no optimizer update.
"""

from __future__ import annotations

from bench_common import (
    BARE,
    PYTHIA_160M,
    TINY_SIZES,
    Row,
    fmt_bytes,
    local_model_overrides,
    run_kdyn,
    shared_model,
    temp_dir,
    train_flops,
)


def run(quick: bool = False, tiny_only: bool = False) -> list[Row]:
    out = temp_dir("kdyn-bench-freeze-")
    rows: list[Row] = []
    #        label, name, sizes, frozen layers, seq_len, batch, steps, warm-up skipped, repeats
    cases = [("tiny (4 layers), layers 0–1 frozen", "tiny", TINY_SIZES, 2, 128, 16, 12 if quick else 40, 2,
              1 if quick else 3),
             ("Pythia-160m config (12 layers), layers 0–5 frozen", "pythia160m", PYTHIA_160M, 6,
              128 if quick else 256, 2 if quick else 4, 3 if quick else 8, 1 if quick else 2, 1 if quick else 2)]
    for label, name, sizes, n_frozen, seq_len, batch_size, steps, skip, repeats in (cases[:1] if tiny_only else cases):
        bench_model = shared_model(name, sizes)
        shape = bench_model.extra
        layers = ",".join(f"layer_{i}" for i in range(n_frozen))
        base = [*BARE, *local_model_overrides(bench_model, seq_len, batch_size, steps)]
        variants = {"full": base, "frozen": [*base, "intervention=freeze", f"intervention.layers=[{layers}]"]}
        times = {k: [] for k in variants}
        state, trainable = {}, {}
        for repeat in range(repeats):
            for variant, overrides in variants.items():
                clock, results = run_kdyn(overrides, out / f"{name}-{variant}-{repeat}")
                times[variant].append(clock.median(skip))
                state[variant], trainable[variant] = clock.optimizer_state_bytes, clock.optimizer_params
                if variant == "frozen":
                    frozen_count = int(results["intervention"]["frozen_parameters"])
        full, frozen = min(times["full"]), min(times["frozen"])
        # Expected: per token 6·N FLOPs for trained matmul parameters, 4·N for frozen block ones
        # (forward + input gradients), attention unchanged (it has no parameters).
        total_flops = train_flops(shape, batch_size, seq_len)
        saved_flops = 2.0 * frozen_count * batch_size * seq_len
        expected = (total_flops - saved_flops) / total_flops
        ratio = frozen / full
        rows.append(Row("freeze", label, "step time frozen ÷ full", ratio, "×", "< 1 (drops)", ratio < 1,
                        f"{full * 1e3:.0f} → {frozen * 1e3:.0f} ms/step; ×{expected:.2f} expected from FLOPs "
                        f"(no weight gradients for {frozen_count / 1e6:.2f}M frozen params); median step, min of "
                        f"{repeats} alternated runs"))
        share = frozen_count / trainable["full"]
        drop = 1 - state["frozen"] / state["full"]
        rows.append(Row("freeze", label, "optimizer state drop", 100 * drop, "%", f"≈ frozen share {100 * share:.1f}%",
                        abs(drop - share) <= 0.02,
                        f"AdamW state {fmt_bytes(state['full'])} → {fmt_bytes(state['frozen'])}; optimizer holds "
                        f"{trainable['full'] / 1e6:.2f}M → {trainable['frozen'] / 1e6:.2f}M params"))
    return rows
