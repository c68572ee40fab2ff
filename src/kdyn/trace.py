"""``kdyn-trace``: per-layer gradient norms of a checkpoint on diagnostic sets (Fernandez et al. 2024).

compose (conf/trace.yaml) → diagnostic clozes (errors before any weights are loaded) → load model
(fp32) → tokenise + subsample → per example: one forward, backward of the span loss and of the LM
loss (`kdyn.metrics.grad_norms`) → ``layer_stats.json`` (g_span, g_lm, r per layer and set; read by
`kdyn.interventions.layer_selection`) and ``layer_stats.png`` (heatmap of r, sets × layers, and the
raw norms).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from kdyn import launch
from kdyn.config import CONF_DIR, to_plain
from kdyn.errors import KdynError
from kdyn.report.layer_stats import plot_layer_stats, print_layer_stats
from kdyn.utils.entry import RunStarted, check_group_choices, run_entry

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
    from kdyn.metrics.grad_norms import trace_layer_norms
    from kdyn.models.ffn import locate_ffn, parameter_groups_by_layer
    from kdyn.models.provenance import model_record
    from kdyn.train import train

    state = launch.begin(cfg, "trace", state)
    settings = to_plain(cfg.trace)  # granularity and norm: checked by validate_config (kdyn.validation.Trace)
    clozes = diagnostic_clozes(settings)  # bad set names, missing files: fail before loading weights
    for name, (items, origin) in clozes.items():
        if not items:
            raise KdynError(f"diagnostic set {name!r} is empty ({origin}); choose another set, period or source")

    model_cfg = to_plain(cfg.model) | ({"dtype": settings["dtype"]} if settings.get("dtype") else {})
    max_len = settings.get("max_len")
    loaded = launch.load_checkpoint(model_cfg, train, tokenizer_corpus=to_plain(cfg.get("corpus")),
                                    seq_len=int(max_len) if max_len else None, seq_len_key="trace.max_len")
    ffn = locate_ffn(loaded.model, to_plain(cfg.model.get("ffn")))
    groups = parameter_groups_by_layer(loaded.model, ffn, split=settings["granularity"])
    seed = int(settings.get("seed") or 0)
    sets = {name: tokenize_clozes(subsample(items, settings.get("max_examples"), seed, name), loaded.tokenizer, max_len)
            for name, (items, _) in clozes.items()}
    model, device = launch.on_device(loaded, settings["device"], "trace.device")
    with launch.measuring(state) as clock:
        results = {name: trace_layer_norms(model, examples, groups, settings["norm"], device)
                   for name, examples in sets.items()}
    record = {
        "status": "completed",
        "model": model_record(loaded, model_type=ffn.model_type,
                              dtype=str(next(model.parameters()).dtype).removeprefix("torch.")),
        "architecture": model_architecture(loaded.model, ffn),  # training refuses these stats for another model
        "granularity": settings["granularity"],
        "norm": settings["norm"],
        "layers": next(iter(results.values())).layers,
        "sets": {name: {**res.to_dict(), "origin": clozes[name][1], "n_available": len(clozes[name][0])}
                 for name, res in results.items()},
        "settings": settings,
        "definition": DEFINITION,
        "seconds": round(clock.seconds, 3),
        "seconds_per_example": round(clock.seconds / max(sum(len(e) for e in sets.values()), 1), 5),
    }
    _check_finite(record)
    out = Path(cfg.paths.output_dir)
    launch.write_result(out / STATS_FILE, record)
    if settings["plot"]:
        plot_layer_stats(record, out / PLOT_FILE)
    print_layer_stats(record, out)
    return record


def _check_finite(record: dict[str, Any]) -> None:
    for name, entry in record["sets"].items():
        bad = [layer for layer, v in zip(record["layers"], entry["r"]) if not math.isfinite(v)]
        if bad:
            raise KdynError(f"set {name}: the LM-loss gradient of {bad[0]} is zero, so r is undefined; "
                            "check that the model's parameters take part in its forward pass")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="trace")
def _hydra_main(cfg: DictConfig) -> Any:
    return run_entry("kdyn-trace", trace_checkpoint, cfg, result_file=STATS_FILE)


def main() -> None:
    check_group_choices("kdyn-trace", sys.argv[1:])
    _hydra_main()


if __name__ == "__main__":
    main()
