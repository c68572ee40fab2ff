"""TemporalWiki evaluation at period boundaries (``callbacks.periods``).

For a segmented corpus (``corpus=temporalwiki``) the run trains period after period. Before the
first update and after the last update of each period, the callback scores the TWiki probes —
``changed`` (C_ppl: new and updated facts) and ``unchanged`` (UnC_ppl: forgetting) — of the period
just trained (``evaluate=current``, as TemporalWiki: a model is evaluated on the probes of the
interval it was just trained on; at step 0 the first period's probes) or of every period
(``evaluate=all``). Perplexity is reported on the whole ``subject relation object`` string (as
TemporalWiki) and on the object only. Rows go to ``temporalwiki.csv`` as they are measured; a
non-segmented corpus makes the callback do nothing.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

from kdyn.callbacks.cadence import OncePerStep
from kdyn.callbacks.log_utils import log_scalars
from kdyn.data.periods import is_segmented, load_periods
from kdyn.data.probes import BATCH_OVERHEAD_TOKENS
from kdyn.data.temporalwiki import period_probes
from kdyn.errors import KdynError
from kdyn.metrics.probe_scoring import ProbeSet
from kdyn.metrics.twiki_perplexity import perplexities
from kdyn.utils.results import ResultSection
from kdyn.utils.tables import restart_table

log = logging.getLogger(__name__)

TABLE = "temporalwiki.csv"
COLUMNS = ["step", "after_period", "probe_period", "scenario", "n", "ppl_full", "ppl_object",
           "ppl_full_token_weighted", "ppl_object_token_weighted"]


class PeriodEvaluator(OncePerStep):
    def __init__(self, dirpath: str, batch_tokens: int = 8192, evaluate: str = "current", max_len: int | None = None,
                 batch_overhead_tokens: int = BATCH_OVERHEAD_TOKENS):
        if evaluate not in ("current", "all"):
            raise KdynError(f"callbacks.periods.evaluate must be current or all, got {evaluate!r}")
        self.path = Path(dirpath) / TABLE
        self.batch_tokens, self.evaluate, self.max_len = int(batch_tokens), evaluate, max_len
        self.batch_overhead_tokens = int(batch_overhead_tokens)
        self.active = False
        self.boundaries: dict[int, str] = {}
        self.period_names: list[str] = []
        self._sets: dict[str, ProbeSet] = {}
        self.rows: list[dict[str, Any]] = []

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        datamodule = getattr(trainer, "datamodule", None)
        corpus = getattr(datamodule, "corpus", None)
        if corpus is None or not is_segmented(corpus):
            return
        self.active = True
        datamodule.prepare_rows()
        for period in load_periods(corpus):
            self._sets[period.name] = ProbeSet(period_probes(period), pl_module.tokenizer,
                                               batch_tokens=self.batch_tokens, max_len=self.max_len,
                                               batch_overhead_tokens=self.batch_overhead_tokens)
            self.period_names.append(period.name)
        for segment in datamodule.segments(trainer):
            self.boundaries[segment.end_step] = segment.name

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.active:
            return
        self.start_steps(trainer)
        if trainer.is_global_zero:  # a resumed run keeps the rows measured up to its checkpoint
            restart_table(self.path, COLUMNS, trainer.global_step)
        if trainer.global_step == 0:
            names = self.period_names if self.evaluate == "all" else self.period_names[:1]
            self._score(trainer, pl_module, 0, "before", names)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.active or not self.new_step(trainer):
            return
        step = trainer.global_step
        period = self.boundaries.get(step)
        if period is not None:
            self._score(trainer, pl_module, step, period, self.period_names if self.evaluate == "all" else [period])

    def _score(self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int, after: str,
               names: list[str]) -> None:
        if not trainer.is_global_zero:  # probes are few; rank zero scores them all
            return
        rows, logged = [], {}
        for name in names:
            probe_set = self._sets[name]
            ppl = perplexities(probe_set.score(pl_module.model, device=pl_module.device), probe_set.probes,
                               n_predicted=probe_set.n_predicted)
            for scenario, values in ppl.items():
                row = {"step": step, "after_period": after, "probe_period": name, "scenario": scenario,
                       **{k: values.get(k) for k in COLUMNS[4:]}}
                rows.append(row)
                if name == (after if after != "before" else names[0]):
                    tag = "C" if scenario == "changed" else "UnC"
                    logged[f"twiki/{tag}_ppl_full"] = values["ppl_full"]
                    logged[f"twiki/{tag}_ppl_object"] = values["ppl_object"]
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=COLUMNS).writerows(rows)
        self.rows += rows
        log_scalars(trainer, logged, step=step)

    def result_section(self, out: Path) -> ResultSection | None:
        """results.json["temporalwiki"] (segmented corpora only) and its lines of the summary table."""
        if not self.active:
            return None
        summary = summarize_table(self.path)
        rows = [(f"after {period}", f"C_ppl {v.get('C_ppl_full', float('nan')):.2f} (object "
                 f"{v.get('C_ppl_object', float('nan')):.2f}), UnC_ppl {v.get('UnC_ppl_full', float('nan')):.2f} "
                 f"(object {v.get('UnC_ppl_object', float('nan')):.2f})") for period, v in (summary or {}).items()]
        return ResultSection({"temporalwiki": summary}, rows)


def summarize_table(path: str | Path) -> dict[str, Any] | None:
    """results.json["temporalwiki"]: per period trained, C_ppl and UnC_ppl on that period's probes."""
    path = Path(path)
    if not path.is_file():
        return None
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    out: dict[str, Any] = {}
    for row in rows:
        if row["after_period"] != "before" and row["probe_period"] != row["after_period"]:
            continue
        key = "before" if row["after_period"] == "before" else row["after_period"]
        tag = "C" if row["scenario"] == "changed" else "UnC"
        entry = out.setdefault(key, {"step": int(row["step"]), "probe_period": row["probe_period"]})
        entry[f"{tag}_ppl_full"] = float(row["ppl_full"])
        entry[f"{tag}_ppl_object"] = float(row["ppl_object"])
        entry[f"{tag}_n"] = int(row["n"])
    return out or None
