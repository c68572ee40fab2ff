"""The training job around ``Trainer.fit``, in the order :func:`kdyn.train.train` runs it.

- :func:`build_train_job`: everything before ``fit`` — validate, seed, build (or find) the model, load
  it, the datamodule, the LightningModule, the intervention, callbacks, loggers, the Trainer, and the
  stream fitted to the Trainer (run length, injection plan). Every bad input fails here, before the
  run folder holds anything;
- :func:`write_run_record`: the files written once training starts (the config compared on resume,
  ``intervention.json``, ``injections.csv``);
- :func:`collect_results`: ``results.json`` (every part adds its own section, ``kdyn.utils.results``)
  and the summary table.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from kdyn.config import chosen_groups, to_plain
from kdyn.launch.common import begin, load_checkpoint
from kdyn.launch.trainer import check_launch, fit_stream, interrupted_section
from kdyn.utils.io import atomic_write_json, write_csv
from kdyn.utils.results import collect_result_sections
from kdyn.utils.run_folder import is_global_rank_zero, start_over

log = logging.getLogger("kdyn.train")  # these lines belong to the training job's log
# kdyn.run (Lightning) is imported where it is used: importing kdyn.launch stays as light as torch, so
# kdyn-entropy/-eval/-trace start (and refuse a bad command line) as fast as before.


@dataclass
class TrainJob:
    """What ``Trainer.fit`` runs, and what the results are collected from."""

    cfg: DictConfig
    out: Path
    started: float              # time.time() when the job began (results.json: wall_time_s)
    groups: dict[str, Any]      # the chosen config groups
    loaded: Any                 # kdyn.models.loading.LoadedModel
    datamodule: Any             # kdyn.data.datamodule.CorpusDataModule
    module: Any                 # kdyn.module.CausalLMModule
    intervention_record: dict[str, Any]
    summary: Any                # kdyn.callbacks.summary.RunSummary (also the first callback)
    callbacks: list[Any]
    loggers: list[Any]
    trainer: Any                # lightning.pytorch.Trainer
    plan: Any                   # the injection plan, or None


def build_train_job(cfg: DictConfig, pretrain: Callable[[DictConfig], Any],
                    extra_callbacks: list | None = None) -> TrainJob:
    """Validate ``cfg`` and build every part of its training job (``pretrain``: builds model=tiny)."""
    from kdyn import run
    from kdyn.callbacks.summary import RunSummary
    from kdyn.data.datamodule import CorpusDataModule
    from kdyn.interventions import apply_intervention
    from kdyn.module import CausalLMModule

    begin(cfg, "train", seed=True)  # validate first: every refusal is one line naming the key
    started = time.time()
    out = Path(cfg.paths.output_dir)
    _start_over_if_asked(out, cfg)
    loaded = load_checkpoint(to_plain(cfg.model), pretrain, tokenizer_corpus=to_plain(cfg.corpus),
                             seq_len=int(cfg.data.seq_len))
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
    check_launch(trainer)
    plan = fit_stream(cfg, trainer, datamodule, loaded)  # run length, injection plan, pretraining-order checks
    return TrainJob(cfg, out, started, groups, loaded, datamodule, module, intervention_record, summary, callbacks,
                    loggers, trainer, plan)


def _start_over_if_asked(out: Path, cfg: DictConfig) -> None:
    """resume=false: move an earlier run's files aside, before this run writes anything (W&B id, layers.json, …)."""
    if not cfg.get("resume", True) and is_global_rank_zero():
        moved = start_over(out)
        if moved is not None:
            log.info("resume=false: moved the earlier run's files to %s", moved)


def write_run_record(job: TrainJob) -> None:
    """The run folder's record of what is being trained (global rank zero)."""
    from kdyn import run

    job.out.mkdir(parents=True, exist_ok=True)
    if job.trainer.is_global_zero:
        run.record_config(job.cfg)
        atomic_write_json(job.out / "intervention.json", job.intervention_record)
        if job.plan is not None:
            write_csv(job.out / "injections.csv", job.plan.to_rows())


def collect_results(job: TrainJob, preempted: bool) -> dict[str, Any]:
    """``results.json`` of the job after ``fit`` (written and summarised by global rank zero); returned."""
    from kdyn import run
    from kdyn.metrics.knowledge_summary import InjectionResults
    from kdyn.models.provenance import model_record

    cfg, out, trainer, loaded, datamodule = job.cfg, job.out, job.trainer, job.loaded, job.datamodule
    results = {
        "status": "interrupted" if preempted or trainer.interrupted else "completed",
        **job.summary.summary(job.module, trainer),
        "wall_time_s": round(time.time() - job.started, 2),
        "groups": job.groups,
        "model": model_record(loaded, parameters=sum(p.numel() for p in loaded.model.parameters())),
        "corpus": {"name": cfg.corpus.name, "rows": len(datamodule.rows) if datamodule.rows is not None else None,
                   "seq_len": int(cfg.data.seq_len)},
        "seed": int(cfg.seed),
        "intervention": job.intervention_record,
        "output_dir": str(out),
    }
    extra_rows = []
    if trainer.is_global_zero and not preempted:  # each part adds its own section (kdyn.utils.results)
        knowledge = [InjectionResults(job.plan, to_plain(cfg.inject.metrics))] if job.plan is not None else []
        sections = collect_result_sections([*job.callbacks, datamodule, *knowledge], out)
        results.update(sections.values)
        extra_rows = sections.rows
    if preempted:  # results.json says so (kdyn-report: interrupted); the exit status tells the scheduler
        results["interrupted"], extra_rows = interrupted_section(out, results["steps"])
    if trainer.is_global_zero:
        atomic_write_json(out / "results.json", results)
        run.print_summary("kdyn-train", results, extra_rows)
    return results
