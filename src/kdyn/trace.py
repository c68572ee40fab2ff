"""``kdyn-trace``: per-layer gradient norms of a checkpoint on diagnostic sets (Fernandez et al. 2024).

compose (conf/trace.yaml) → diagnostic clozes (errors before any weights are loaded) → load model
(fp32) → tokenise + subsample → per example: one forward, backward of the span loss and of the LM
loss (`kdyn.metrics.grad_norms`) → ``layer_stats.json`` (g_span, g_lm, r per layer and set; read by
`kdyn.interventions.layer_selection`) and ``layer_stats.png`` (heatmap of r, sets × layers, and the
raw norms).
"""

from __future__ import annotations

import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig

from kdyn.config import CONF_DIR, to_plain
from kdyn.errors import KdynError
from kdyn.utils.entry import RunStarted, check_group_choices, run_entry
from kdyn.utils.io import atomic_write_json
from kdyn.validation import validate_config

log = logging.getLogger("kdyn.trace")

STATS_FILE = "layer_stats.json"
PLOT_FILE = "layer_stats.png"
GRANULARITIES = ("block", "attn_mlp")
DEFINITION = ("g_span(l) = mean over examples of ||grad_l L_span|| (CE on the salient span only); "
              "g_lm(l) = the same for L_lm (CE on every predicted token of the sequence); r(l) = g_span(l) / g_lm(l); "
              "batch of 1, eval mode, fp32 loss")


def trace_checkpoint(cfg: DictConfig, state: RunStarted | None = None) -> dict[str, Any]:
    """Trace the checkpoint described by a composed ``trace`` config; returns layer_stats.json."""
    from kdyn.data.diagnostics import diagnostic_clozes, subsample, tokenize_clozes
    from kdyn.interventions.layer_selection import model_architecture
    from kdyn.metrics.grad_norms import NORMS, trace_layer_norms
    from kdyn.models.ffn import locate_ffn, parameter_groups_by_layer
    from kdyn.models.loading import load_model
    from kdyn.models.provenance import model_record
    from kdyn.organism import ensure_model
    from kdyn.train import train

    validate_config(cfg, "trace")
    state = state or RunStarted()
    settings = to_plain(cfg.trace)
    if settings.get("granularity") not in GRANULARITIES:
        raise KdynError(f"unknown trace.granularity {settings.get('granularity')!r}; choose one of "
                        f"{', '.join(GRANULARITIES)}")
    if settings.get("norm") not in NORMS:
        raise KdynError(f"unknown trace.norm {settings.get('norm')!r}; choose one of {', '.join(NORMS)}")
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    clozes = diagnostic_clozes(settings)  # bad set names, missing files: fail before loading weights
    for name, (items, origin) in clozes.items():
        if not items:
            raise KdynError(f"diagnostic set {name!r} is empty ({origin}); choose another set, period or source")

    model_cfg = to_plain(cfg.model)
    if settings.get("dtype"):
        model_cfg["dtype"] = settings["dtype"]
    max_len = settings.get("max_len")
    ensure_model(model_cfg, pretrain=train)  # model=tiny: pretrained once, on first use
    loaded = load_model(model_cfg, tokenizer_corpus=to_plain(cfg.get("corpus")),
                        seq_len=int(max_len) if max_len else None, seq_len_key="trace.max_len")
    ffn = locate_ffn(loaded.model, to_plain(cfg.model.get("ffn")))
    groups = parameter_groups_by_layer(loaded.model, ffn, split=settings["granularity"])
    seed = int(settings.get("seed") or 0)
    sets = {name: tokenize_clozes(subsample(items, settings.get("max_examples"), seed, name), loaded.tokenizer, max_len)
            for name, (items, _) in clozes.items()}
    device = _device(settings.get("device", "auto"))
    model = loaded.model.to(device)

    state.started = True
    start = time.perf_counter()
    results = {name: trace_layer_norms(model, examples, groups, settings["norm"], device)
               for name, examples in sets.items()}
    seconds = time.perf_counter() - start
    layers = next(iter(results.values())).layers
    n_total = sum(len(e) for e in sets.values())
    record = {
        "status": "completed",
        "model": model_record(loaded, model_type=ffn.model_type,
                              dtype=str(next(model.parameters()).dtype).removeprefix("torch.")),
        "architecture": model_architecture(loaded.model, ffn),  # training refuses these stats for another model
        "granularity": settings["granularity"],
        "norm": settings["norm"],
        "layers": layers,
        "sets": {name: {**res.to_dict(), "origin": clozes[name][1], "n_available": len(clozes[name][0])}
                 for name, res in results.items()},
        "settings": settings,
        "definition": DEFINITION,
        "seconds": round(seconds, 3),
        "seconds_per_example": round(seconds / max(n_total, 1), 5),
    }
    _check_finite(record)
    out = Path(cfg.paths.output_dir)
    atomic_write_json(out / STATS_FILE, record)
    if settings.get("plot", True):
        plot_layer_stats(record, out / PLOT_FILE)
    _print(record, out)
    return record


def _check_finite(record: dict[str, Any]) -> None:
    for name, entry in record["sets"].items():
        bad = [layer for layer, v in zip(record["layers"], entry["r"]) if not math.isfinite(v)]
        if bad:
            raise KdynError(f"set {name}: the LM-loss gradient of {bad[0]} is zero, so r is undefined; "
                            "check that the model's parameters take part in its forward pass")


def plot_layer_stats(record: dict[str, Any], path: Path) -> Path:
    """Left: heatmap of r(ℓ), sets × layers (* marks r above the set's mean over layers).

    Right: g_span (solid) and g_lm (dashed) per set, log scale.
    """
    import numpy as np

    from kdyn.report.figures import new_figure, save_figure

    layers, sets = record["layers"], list(record["sets"])
    r = np.array([record["sets"][s]["r"] for s in sets])
    width = max(5.2, 0.45 * len(layers) + 2.5)
    fig, (heat, lines) = new_figure(1, 2, panel_size=(width, max(3.2, 0.5 * len(sets) + 2.2)))
    image = heat.imshow(r, aspect="auto", cmap="viridis")
    ticks = [n.removeprefix("layer_") for n in layers]
    rotation = 90 if len(layers) > 12 else 0
    heat.set_xticks(range(len(layers)), ticks, rotation=rotation)
    heat.set_yticks(range(len(sets)), sets)
    heat.set_xlabel("layer")
    heat.set_title(f"r = g_span / g_lm ({record['granularity']}, {record['norm']}); * above the set's mean",
                   fontsize=9)
    if len(layers) * len(sets) <= 160:
        mid = (r.min() + r.max()) / 2
        for i in range(len(sets)):
            above = r[i] > r[i].mean()
            for j in range(len(layers)):
                heat.text(j, i, f"{r[i, j]:.2f}" + ("*" if above[j] else ""), ha="center", va="center",
                          fontsize=7, color="black" if r[i, j] > mid else "white")
    fig.colorbar(image, ax=heat, shrink=0.8)
    for k, name in enumerate(sets):
        color = f"C{k}"
        lines.plot(range(len(layers)), record["sets"][name]["g_span"], color=color, marker="o", ms=3,
                   label=f"{name} span")
        lines.plot(range(len(layers)), record["sets"][name]["g_lm"], color=color, ls="--", label=f"{name} LM")
    lines.set_xticks(range(len(layers)), ticks, rotation=rotation)
    lines.set_yscale("log")
    lines.set_xlabel("layer")
    lines.set_ylabel("mean per-example gradient norm")
    lines.legend(fontsize=7)
    model = record["model"]
    fig.suptitle(f"{model['name']}" + (f" step {model['step']}" if model.get("step") is not None else ""), fontsize=10)
    return save_figure(fig, path)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise KdynError(f"unknown trace.device {name!r}; use auto, cpu, cuda or cuda:<index>") from None


def _print(record: dict[str, Any], out: Path) -> None:
    from kdyn.interventions.layer_selection import select_layers

    model = record["model"]
    step = f" (step {model['step']})" if model["step"] is not None else ""
    short = [n.removeprefix("layer_") for n in record["layers"]]
    width = max(6, *(len(s) for s in short)) + 1
    name_w = max(12, *(len(s) for s in record["sets"]))
    lines = [f"kdyn-trace: {out}",
             f"  model        {model['name']}{step}",
             f"  layers       {len(record['layers'])} ({record['granularity']}), norm {record['norm']}",
             "  r = g_span / g_lm per layer:",
             f"    {'set':<{name_w}} " + "".join(f"{s:>{width}}" for s in short) + "    n  above mean"]
    for name, entry in record["sets"].items():
        try:
            chosen = ", ".join(n.removeprefix("layer_") for n in select_layers(record, name, "above_mean"))
        except KdynError:
            chosen = "(flat)"
        lines.append(f"    {name:<{name_w}} " + "".join(f"{v:>{width}.3f}" for v in entry["r"])
                     + f"  {entry['n_examples']:>4}  {chosen}")
    n = sum(e["n_examples"] for e in record["sets"].values())
    lines.append(f"  measured     {n} examples in {record['seconds']:.1f} s "
                 f"({1000 * record['seconds_per_example']:.1f} ms each)")
    print("\n".join(lines), flush=True)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="trace")
def _hydra_main(cfg: DictConfig) -> Any:
    return run_entry("kdyn-trace", trace_checkpoint, cfg, result_file=STATS_FILE)


def main() -> None:
    check_group_choices("kdyn-trace", sys.argv[1:])
    _hydra_main()


if __name__ == "__main__":
    main()
