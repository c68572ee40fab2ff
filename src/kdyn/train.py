"""``kdyn-train``: continual (pre)training of any causal-LM checkpoint, configured by Hydra.

compose (conf/train.yaml) → load model + corpus (validated before anything runs) → callbacks,
loggers, Trainer → ``fit`` (resuming from ``checkpoints/last.ckpt`` when the run folder has one) →
``results.json`` + a summary table.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from kdyn import launch, run
from kdyn.config import CONF_DIR, chosen_groups, to_plain
from kdyn.launch import checkpoint_step  # noqa: F401 - still importable as kdyn.train.checkpoint_step
from kdyn.utils.entry import RunStarted, check_group_choices, run_entry
from kdyn.utils.io import atomic_write_json, write_csv
from kdyn.utils.results import collect_result_sections
from kdyn.utils.run_folder import is_global_rank_zero, start_over
from kdyn.validation import validate_config

log = logging.getLogger("kdyn.train")


def train(cfg: DictConfig, state: RunStarted | None = None, extra_callbacks: list | None = None) -> dict[str, Any]:
    """Run one training job described by a composed ``train`` config; returns its results.

    ``extra_callbacks`` (Python API only) are added to the configured ones, e.g. a `StepTimer`.
    """
    from kdyn.callbacks.summary import RunSummary
    from kdyn.data.datamodule import CorpusDataModule
    from kdyn.interventions import apply_intervention
    from kdyn.metrics.knowledge_summary import InjectionResults
    from kdyn.models.loading import load_model
    from kdyn.models.provenance import model_record
    from kdyn.module import CausalLMModule
    from kdyn.organism import ensure_model

    validate_config(cfg, "train")
    state = state or RunStarted()
    started = time.time()
    out = Path(cfg.paths.output_dir)
    if not cfg.get("resume", True) and is_global_rank_zero():  # start over: move an earlier run's files aside
        moved = start_over(out)  # first, before this run writes anything (W&B id, layers.json, …)
        if moved is not None:
            log.info("resume=false: moved the earlier run's files to %s", moved)
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))

    # 1. Everything that can be wrong with the input fails here, before a run folder holds anything.
    ensure_model(to_plain(cfg.model), pretrain=train)  # model=tiny: pretrained once, on first use
    loaded = load_model(to_plain(cfg.model), tokenizer_corpus=to_plain(cfg.corpus), seq_len=int(cfg.data.seq_len))
    datamodule = CorpusDataModule(to_plain(cfg.corpus), to_plain(cfg.data), loaded.tokenizer, seed=int(cfg.seed),
                                  vocab_size=loaded.model.get_input_embeddings().num_embeddings)
    datamodule.prepare_rows()
    groups = chosen_groups(cfg)
    module = CausalLMModule(loaded.model, to_plain(cfg.optim), run_info={"groups": groups, "model": loaded.ref.describe()},
                            tokenizer=loaded.tokenizer)
    intervention, intervention_record = apply_intervention(cfg, loaded, module, out)
    summary = RunSummary()
    callbacks = [summary, *run.build_callbacks(cfg, loaded), *intervention.callbacks(), *(extra_callbacks or [])]
    loggers = run.build_loggers(cfg, groups)
    trainer = run.build_trainer(cfg, callbacks, loggers, loaded.model)
    launch.check_launch(trainer)
    plan = launch.fit_stream(cfg, trainer, datamodule, loaded)  # run length, injection plan, pretraining-order checks

    # 2. Train (resuming when this run folder already holds a checkpoint of the same config).
    ckpt = run.resume_path(cfg)
    state.started = True
    out.mkdir(parents=True, exist_ok=True)
    if trainer.is_global_zero:
        run.record_config(cfg)
        atomic_write_json(out / "intervention.json", intervention_record)
        if plan is not None:
            write_csv(out / "injections.csv", plan.to_rows())
    if ckpt:
        launch.resume_loggers(loggers, ckpt)  # metrics.csv keeps the rows measured up to the checkpoint
    preempted = False
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt, weights_only=False)
    except SIGTERMException:  # PreemptionCheckpoint saved last.ckpt: report it, then exit EXIT_INTERRUPTED
        preempted = True
    finally:
        run.finish_loggers(loggers)

    # 3. Summarise.
    results = {
        "status": "interrupted" if preempted or trainer.interrupted else "completed",
        **summary.summary(module, trainer),
        "wall_time_s": round(time.time() - started, 2),
        "groups": groups,
        "model": model_record(loaded, parameters=sum(p.numel() for p in loaded.model.parameters())),
        "corpus": {"name": cfg.corpus.name, "rows": len(datamodule.rows) if datamodule.rows is not None else None,
                   "seq_len": int(cfg.data.seq_len)},
        "seed": int(cfg.seed),
        "intervention": intervention_record,
        "output_dir": str(out),
    }
    extra_rows = []
    if trainer.is_global_zero and not preempted:  # each part adds its own section (kdyn.utils.results)
        knowledge = [InjectionResults(plan, to_plain(cfg.inject.metrics))] if plan is not None else []
        sections = collect_result_sections([*callbacks, datamodule, *knowledge], out)
        results.update(sections.values)
        extra_rows = sections.rows
    if preempted:  # results.json says so (kdyn-report: interrupted); the exit status tells the scheduler
        results["interrupted"], extra_rows = launch.interrupted_section(out, results["steps"])
    if trainer.is_global_zero:
        atomic_write_json(out / "results.json", results)
        run.print_summary("kdyn-train", results, extra_rows)
    if preempted:
        launch.requeue_and_exit(callbacks)
    return results


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def _hydra_main(cfg: DictConfig) -> Any:
    return run_entry("kdyn-train", train, cfg)


def main() -> None:
    check_group_choices("kdyn-train", sys.argv[1:])
    _hydra_main()


if __name__ == "__main__":
    main()
