"""``kdyn-entropy``: the knowledge entropy of one checkpoint on a fixed measurement set.

compose (conf/entropy.yaml) → load model → first ``num_sequences`` documents (right-padded, or
packed) → forward passes with hooks on the FFN down projections → ``entropy.json`` and
``coefficients.safetensors`` (the [layers × d_ff] table of mean |coefficient|, reused by
resuscitation).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from kdyn import launch
from kdyn.config import CONF_DIR, to_plain
from kdyn.metrics.coefficients import COEFFICIENTS_FILE, load_coefficients, save_coefficients
from kdyn.utils.entry import RunStarted, check_group_choices, run_entry

__all__ = ["COEFFICIENTS_FILE", "load_coefficients", "measure_checkpoint"]  # the file's reader lives in metrics


def measure_checkpoint(cfg: DictConfig, state: RunStarted | None = None) -> dict[str, Any]:
    """Measure the knowledge entropy described by a composed ``entropy`` config; returns entropy.json."""
    from kdyn.data import corpora
    from kdyn.data.sequences import document_batches, packed_batches
    from kdyn.metrics.knowledge_entropy import max_entropy
    from kdyn.metrics.recorder import measure
    from kdyn.models.ffn import locate_ffn
    from kdyn.models.provenance import model_record
    from kdyn.train import train

    state = launch.begin(cfg, "entropy", state)
    settings = to_plain(cfg.entropy)
    loaded = launch.load_checkpoint(to_plain(cfg.model), train, tokenizer_corpus=to_plain(cfg.corpus),
                                    seq_len=int(settings["seq_len"]), seq_len_key="entropy.seq_len")
    ffn = locate_ffn(loaded.model, to_plain(cfg.model.get("ffn")))
    documents = corpora.load_documents(to_plain(cfg.corpus))
    common = dict(num_sequences=int(settings["num_sequences"]), seq_len=int(settings["seq_len"]),
                  batch_size=int(settings["batch_size"]))
    if settings.get("pack"):
        batches = packed_batches(documents, loaded.tokenizer, **common)
    else:
        batches = document_batches(documents, loaded.tokenizer, sort_by_length=bool(settings["sort_by_length"]),
                                   **common)
    model, device = launch.on_device(loaded, settings["device"], "entropy.device")
    with launch.measuring(state) as clock:
        metric = measure(model, ffn, batches, device=device)
        result = metric.compute()
    per_layer = [float(h) for h in result["per_layer"]]
    maxima = max_entropy(ffn.d_ff)
    out = Path(cfg.paths.output_dir)
    record = {
        "status": "completed",
        "total": float(sum(per_layer)),
        "per_layer": per_layer,
        "max_total": float(sum(maxima)),
        "max_per_layer": maxima,
        "normalized_total": float(sum(per_layer) / sum(maxima)),
        "num_tokens": int(result["tokens"]),
        "num_sequences": int(sum(b["input_ids"].shape[0] for b in batches)),
        "d_ff": list(ffn.d_ff),
        "model": model_record(loaded, model_type=ffn.model_type),
        "corpus": {"name": cfg.corpus.name, "path": cfg.corpus.get("path")},
        "settings": settings,
        "padding": "excluded (the official code counts padding tokens)",
        "seconds": round(clock.seconds, 3),
        "tokens_per_s": round(int(result["tokens"]) / max(clock.seconds, 1e-9), 1),
    }
    if settings["save_coefficients"]:
        save_coefficients(out / COEFFICIENTS_FILE, metric, record)
        record["coefficients_file"] = COEFFICIENTS_FILE
    return launch.write_result(out / "entropy.json", record, _summary(record, out))


def _summary(record: dict[str, Any], out: Path) -> str:
    model, layers = record["model"], ", ".join(f"{h:.3f}" for h in record["per_layer"])
    step = f" (step {model['step']})" if model["step"] is not None else ""
    return (f"kdyn-entropy: {out}\n"
            f"  model            {model['name']}{step}\n"
            f"  knowledge entropy {record['total']:.4f} of max {record['max_total']:.4f} "
            f"({100 * record['normalized_total']:.1f}%)\n"
            f"  per layer        [{layers}]\n"
            f"  measured         {record['num_sequences']} sequences, {record['num_tokens']:,} tokens "
            f"in {record['seconds']:.1f} s")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="entropy")
def _hydra_main(cfg: DictConfig) -> Any:
    return run_entry("kdyn-entropy", measure_checkpoint, cfg, result_file="entropy.json")


def main() -> None:
    check_group_choices("kdyn-entropy", sys.argv[1:])
    _hydra_main()


if __name__ == "__main__":
    main()
