"""``kdyn-eval``: score the knowledge probes of any checkpoint, without training.

Writes ``probes.csv`` in the same long format as training runs (``step`` = the checkpoint's step,
or 0 when unknown) and ``results.json`` with the mean target NLL per scenario and probe type.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from kdyn import launch
from kdyn.config import CONF_DIR, chosen_groups, to_plain
from kdyn.utils.device import pick_device
from kdyn.utils.entry import RunStarted, check_group_choices, run_entry
from kdyn.utils.io import write_csv


def evaluate(cfg: DictConfig, state: RunStarted | None = None) -> dict[str, Any]:
    """Score the knowledge probes described by a composed ``eval`` config; returns results.json."""
    from kdyn.callbacks.probes import COLUMNS
    from kdyn.metrics.probe_scoring import ProbeSet
    from kdyn.models.loading import context_length
    from kdyn.models.provenance import model_record
    from kdyn.train import train

    state = launch.begin(cfg, "eval", state)
    settings = to_plain(cfg.probes)
    loaded = launch.load_checkpoint(to_plain(cfg.model), train)
    limit = min(int(settings["max_len"]), context_length(loaded.model) or int(settings["max_len"]))
    probe_set = ProbeSet.from_knowledge(
        to_plain(cfg.knowledge.source), to_plain(cfg.knowledge.scenarios), int(cfg.knowledge.num_events),
        loaded.tokenizer, types=settings["types"], include_paragraph=bool(settings.get("include_paragraph")),
        max_len=limit, batch_tokens=int(settings["batch_tokens"]),
        batch_overhead_tokens=int(settings["batch_overhead_tokens"]))
    probes, items = probe_set.probes, probe_set.items
    device = pick_device(settings["device"], "probes.device")

    with launch.measuring(state) as clock:  # the move to the device included
        scores = probe_set.score(loaded.model.to(device), device=device)
    seconds = clock.seconds
    step = loaded.ref.step if loaded.ref.step is not None else 0
    rows, means = [], defaultdict(list)
    for probe in probes:
        i = probe.index
        rows.append(dict(zip(COLUMNS, [step, probe.item, probe.scenario, probe.probe_type, probe.probe_idx,
                                        float(scores["nll"][i]), float(scores["nll_first"][i]),
                                        float(scores["nll_full"][i]), int(scores["n_target"][i])])))
        means[(probe.scenario, probe.probe_type)].append(float(scores["nll"][i]))
    out = Path(cfg.paths.output_dir)
    write_csv(out / "probes.csv", rows)
    summary: dict[str, dict[str, float]] = defaultdict(dict)
    for (scenario, probe_type), values in means.items():
        summary[scenario][probe_type] = sum(values) / len(values)
    results = {
        "status": "completed",
        "mean_nll": summary,
        "num_probes": len(probes),
        "num_items": len(items),
        "probes_per_s": round(len(probes) / max(seconds, 1e-9), 1),
        "padding_efficiency": round(probe_set.padding_efficiency, 4),
        "seconds": round(seconds, 3),
        "groups": chosen_groups(cfg),
        "model": model_record(loaded),
        "knowledge": to_plain(cfg.knowledge.source),
        "output_dir": str(out),
    }
    lines = [f"kdyn-eval: {out}", f"  model   {loaded.ref.describe()}",
             f"  probes  {len(probes)} of {len(items)} items in {seconds:.1f} s"]
    for scenario, by_type in summary.items():
        lines.append(f"  {scenario:<11} " + "  ".join(f"{t}: NLL {v:.3f}" for t, v in by_type.items()))
    return launch.write_result(out / "results.json", results, "\n".join(lines))


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="eval")
def _hydra_main(cfg: DictConfig) -> Any:
    return run_entry("kdyn-eval", evaluate, cfg)


def main() -> None:
    check_group_choices("kdyn-eval", sys.argv[1:])
    _hydra_main()


if __name__ == "__main__":
    main()
