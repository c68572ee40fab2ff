"""Score knowledge probes during training (``callbacks.probes``) into a long table.

Every probe (memorization ``mem``, semantic ``gen``, compositional ``hard_gen``) of the injected
items is scored at step 0 (before any update) and every ``every_n_steps`` optimizer steps:
batched, length-bucketed, teacher-forced NLL of the target span (`kdyn.metrics.probe_scoring`). Rows are
appended to ``<dirpath>/probes.csv`` as they are measured (``step`` = updates done), so a crash
loses nothing already scored; a resumed run first drops rows measured after its checkpoint. Mean
NLL per scenario and probe type also goes to the loggers as ``probes/<scenario>/<type>``.
"""

from __future__ import annotations

import csv
import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from kdyn.callbacks.cadence import OncePerStep
from kdyn.callbacks.log_utils import log_scalars
from kdyn.data.probes import BATCH_OVERHEAD_TOKENS
from kdyn.errors import KdynError
from kdyn.metrics.probe_scoring import ProbeSet
from kdyn.utils.tables import restart_table

log = logging.getLogger(__name__)

COLUMNS = ["step", "item", "scenario", "probe_type", "probe_idx", "nll", "nll_first", "nll_full", "n_target"]
TABLE = "probes.csv"


class ProbeScorer(OncePerStep):
    def __init__(self, source: Mapping[str, Any], scenarios: Mapping[str, int], num_events: int, dirpath: str,
                 every_n_steps: int = 1, batch_tokens: int = 8192, types: Sequence[str] = ("mem", "gen", "hard_gen"),
                 include_paragraph: bool = False, max_len: int | None = None,
                 batch_overhead_tokens: int = BATCH_OVERHEAD_TOKENS):
        if int(every_n_steps) < 1:
            raise KdynError(f"callbacks.probes.every_n_steps must be at least 1, got {every_n_steps}")
        self.source, self.scenarios, self.num_events = dict(source), dict(scenarios), int(num_events)
        self.path = Path(dirpath) / TABLE
        self.every_n_steps = int(every_n_steps)
        self.batch_tokens, self.types = int(batch_tokens), tuple(types)
        self.include_paragraph, self.max_len = include_paragraph, max_len
        self.batch_overhead_tokens = int(batch_overhead_tokens)
        self.probe_set: ProbeSet | None = None
        self.scored_steps: list[int] = []

    # ----------------------------------------------------------------------------- lifecycle
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        probe_set = ProbeSet.from_knowledge(
            self.source, self.scenarios, self.num_events, pl_module.tokenizer, types=self.types,
            include_paragraph=self.include_paragraph, batch_tokens=self.batch_tokens, max_len=self.max_len,
            batch_overhead_tokens=self.batch_overhead_tokens)
        self.probe_set = probe_set
        log.info("scoring %d probes of %d items every %d steps (%d batches, %.0f%% padding efficiency)",
                 len(probe_set), len(probe_set.items), self.every_n_steps, len(probe_set.batches),
                 100 * probe_set.padding_efficiency)

    @property
    def probes(self) -> list:
        return self.probe_set.probes if self.probe_set is not None else []

    @property
    def batches(self) -> list:
        return self.probe_set.batches if self.probe_set is not None else []

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        step = self.start_steps(trainer)
        if trainer.is_global_zero:  # a resumed run keeps the rows measured up to its checkpoint
            restart_table(self.path, COLUMNS, step)
        if step == 0:
            self._score(trainer, pl_module, step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.new_step(trainer):
            return  # mid gradient accumulation
        step = trainer.global_step
        if step % self.every_n_steps == 0 or step == trainer.max_steps:
            self._score(trainer, pl_module, step)

    # ----------------------------------------------------------------------------- scoring
    def _score(self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int) -> None:
        shard = self.probe_set.shard(trainer.global_rank, trainer.world_size)
        scores = self.probe_set.score(pl_module.model, device=pl_module.device, batches=shard) if shard else None
        indices = torch.cat([b.probe_index for b in shard]) if shard else torch.empty(0, dtype=torch.long)
        local = {k: (v[indices].cpu() if scores is not None else torch.empty(0)) for k, v in
                 (scores or {"nll": None, "nll_first": None, "nll_full": None, "n_target": None}).items()}
        gathered = _gather(trainer, indices.tolist(), local)
        self.scored_steps.append(step)
        if not trainer.is_global_zero:
            return
        rows, means = [], defaultdict(list)
        for index, values in sorted(gathered.items()):
            probe = self.probes[index]
            rows.append([step, probe.item, probe.scenario, probe.probe_type, probe.probe_idx,
                         f"{values['nll']:.6g}", f"{values['nll_first']:.6g}", f"{values['nll_full']:.6g}",
                         int(values["n_target"])])
            means[f"probes/{probe.scenario}/{probe.probe_type}"].append(values["nll"])
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerows(rows)
        log_scalars(trainer, {k: sum(v) / len(v) for k, v in means.items()}, step=step)


def _gather(trainer: pl.Trainer, indices: list[int], local: dict[str, torch.Tensor]) -> dict[int, dict[str, float]]:
    """{probe index: scores} from every rank (all ranks take part; only rank zero uses the result)."""
    mine = {i: {k: float(v[n]) for k, v in local.items()} for n, i in enumerate(indices)}
    if trainer.world_size == 1 or not torch.distributed.is_initialized():
        return mine
    everyone: list[Any] = [None] * trainer.world_size
    torch.distributed.all_gather_object(everyone, mine)
    merged: dict[int, dict[str, float]] = {}
    for part in everyone:
        merged.update(part)
    return merged
