"""Probe scoring: throughput on the 1,800 real Fictional Knowledge probes, and the share of step time
that per-step probing costs in the default run."""

from __future__ import annotations

from pathlib import Path

from bench_common import Row, alternate, kdyn_train_step_time, median, workdir

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fictional_knowledge"


def run(quick: bool = False) -> list[Row]:

    from kdyn.data.knowledge import assign_scenarios, knowledge_records
    from kdyn.data.probes import build_probes, make_batches, padding_efficiency, tokenize_probes
    from kdyn.metrics.probe_scoring import score_batches
    from kdyn.models.loading import load_model

    rows: list[Row] = []
    tiny = load_model({"name": "tiny", "family": "tiny", "step": None, "dtype": "float32",
                       "trajectory_dir": str(Path("~/.cache/kdyn/tiny").expanduser()) if not _env_cache() else _env_cache(),
                       "pretrain_overrides": []})
    if SHARED.is_dir():
        records = knowledge_records({"name": "fictional_knowledge", "path": str(SHARED)})
        items = assign_scenarios(records, {"paraphrase": 40, "duplicate": 40, "once": 40}, 10)
        label = "1,800 real probes"
    else:
        records = knowledge_records({"name": "synthetic", "num_items": 120})
        items = assign_scenarios(records, {"paraphrase": 40, "duplicate": 40, "once": 40}, 10)
        label = "1,800 synthetic probes (../shared/data absent)"
    probes = build_probes(items)
    tokenizer = tiny.tokenizer
    tokenized = tokenize_probes(probes, tokenizer, max_len=512)
    real = sum(len(ids) for ids, _ in tokenized)
    for batch_tokens in (4096, 16384):
        # kdyn's optimal cut of the length-sorted probes against filling each batch while it fits
        variants = {"optimal": make_batches(tokenized, probes, batch_tokens=batch_tokens, pad_id=tokenizer.pad_token_id),
                    "greedy": _greedy_batches(tokenized, probes, batch_tokens, tokenizer.pad_token_id)}
        for batches in variants.values():
            score_batches(tiny.model, batches[:1])  # warm-up
        times = alternate({k: (lambda b=b: score_batches(tiny.model, b)) for k, b in variants.items()},
                          repeats=1 if quick else 3)
        rate = {k: len(probes) / median(t) for k, t in times.items()}
        batches = variants["optimal"]
        rows.append(Row("probes", f"tiny, {label}, batch_tokens={batch_tokens}", "probes/s", rate["optimal"],
                        "probes/s", note=f"{real / median(times['optimal']):,.0f} real tok/s; padding efficiency "
                        f"{padding_efficiency(batches):.3f} (real/computed tokens) in {len(batches)} batches; greedy "
                        f"filling: {rate['greedy']:.0f} probes/s, efficiency "
                        f"{padding_efficiency(variants['greedy']):.3f} in {len(variants['greedy'])} batches"))

    root = workdir()
    steps = 12 if quick else 40
    times = {}
    for every in ("1", "1000000"):
        step_time, _ = kdyn_train_step_time([f"trainer.max_steps={steps}", f"callbacks.probes.every_n_steps={every}",
                                             "inject.interval=5", "inject.num_events=2"], root / f"probes-{every}")
        times[every] = step_time
    share = 1 - times["1000000"] / times["1"]
    rows.append(Row("probes", "default run (tiny, 450 synthetic probes)", "share of step time spent probing every step",
                    100 * share, "%", note=f"{times['1000000'] * 1e3:.0f} ms → {times['1'] * 1e3:.0f} ms per step"))
    return rows


def _env_cache() -> str | None:
    import os

    return str(Path(os.environ["KDYN_CACHE_DIR"]).expanduser() / "tiny") if os.environ.get("KDYN_CACHE_DIR") else None


def _greedy_batches(tokenized, probes, batch_tokens: int, pad_id: int):
    """The obvious alternative: sort by length and fill each batch while B × max length fits."""
    from kdyn.data.probes import _collate

    groups: list[list[int]] = []
    for i in sorted(range(len(probes)), key=lambda i: len(tokenized[i][0])):
        if groups and (len(groups[-1]) + 1) * len(tokenized[i][0]) <= batch_tokens:
            groups[-1].append(i)
        else:
            groups.append([i])
    return [_collate([tokenized[i] for i in g], [probes[i].index for i in g], pad_id) for g in groups]
