"""Seeds as an axis of the report: conditions, means and 95% intervals over seeds.

Runs are *conditions × seeds*. Two runs belong to the same condition when their composed configs
are equal once the **seed keys** (:data:`SEED_KEYS`) and the **bookkeeping keys** (:data:`BOOKKEEPING`:
names, folders, resuming, logging, threads) are removed; runs that differ in any other key are never
pooled. :func:`seed_groups` builds the conditions; :func:`seed_summary` gives, for every numeric
metric of ``summary.csv`` (``results.*``, ``entropy.*``, ``trace.*``), the mean over the condition's
seeds, the sample standard deviation and the **Student-t 95% interval of the mean**
``mean ± t_{0.975, n-1} · s / √n`` — the interval for a mean of a few independent draws whose spread
is itself estimated (with 3 seeds t = 4.30, not the normal 1.96). A metric from fewer than
:data:`MIN_SEEDS` seeds is flagged ``few_seeds``; a condition whose seeds gave identical results is
flagged ``identical`` (the seeds varied nothing: a warning line says so).
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kdyn.report.collect import Run

#: Config keys that only choose a random draw: runs differing in them alone are seeds of one condition.
SEED_KEYS = ("seed", "inject.source.seed", "inject.placement_seed", "model.pretrain_seed", "model.init_seed")
#: Config keys (and key prefixes, ending in ".") that do not change the numbers a run produces.
BOOKKEEPING = ("run_id", "sweep_id", "skip_completed", "resume", "threads", "paths.", "hydra.", "logger",
               "trainer.enable_progress_bar", "trainer.enable_model_summary", "trainer.log_every_n_steps",
               "model.revision_lock", "data.num_workers")
#: Result values that measure the machine, not the model (never compared for "identical").
TIMING = ("wall_time_s", "seconds", "tokens_per_s", "probes_per_s", "seconds_per_example", "build_seconds",
          "output_dir", "run_dir")
MIN_SEEDS = 3
LEVEL = 0.95


# --- Student-t quantiles (no scipy needed) ----------------------------------------------------

def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta (modified Lentz)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        aa = m * (b - m) * x / ((a + m2 - 1.0) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(c) > tiny else 1.0 + aa / tiny
        h *= d * c
        aa = -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1.0))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(c) > tiny else 1.0 + aa / tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


@functools.lru_cache(maxsize=256)
def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t (bisection on :func:`t_cdf`, |error| < 1e-10)."""
    if not 0.0 < p < 1.0 or df <= 0:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    return 0.5 * (lo + hi)


@dataclass(frozen=True)
class Interval:
    """Mean of ``n`` values with its Student-t interval (``low``/``high`` are None for n < 2)."""

    n: int
    mean: float
    std: float | None
    low: float | None
    high: float | None

    @property
    def half_width(self) -> float | None:
        return None if self.low is None or self.high is None else (self.high - self.low) / 2


def t_interval(values: Sequence[float], level: float = LEVEL) -> Interval:
    """Mean and Student-t ``level`` interval of the mean of ``values`` (NaN/None dropped)."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(xs)
    if n == 0:
        return Interval(0, math.nan, None, None, None)
    mean = math.fsum(x / n for x in xs)  # x / n first: a sum of huge finite values (a fit's x-intercept) must not overflow
    if n < 2:
        return Interval(1, mean, None, None, None)
    scale = max(abs(x - mean) for x in xs)  # squares taken on a unit scale, for the same reason
    std = 0.0 if scale == 0 else scale * math.sqrt(math.fsum(((x - mean) / scale) ** 2 for x in xs) / (n - 1))
    half = t_quantile(0.5 + level / 2, n - 1) * std / math.sqrt(n)
    return Interval(n, mean, std, mean - half, mean + half)


# --- conditions -------------------------------------------------------------------------------

def _flat_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(_flat_config(value, f"{name}."))
        else:
            out[name] = value
    return out


def _ignored(key: str, extra: Sequence[str] = ()) -> bool:
    for k in (*SEED_KEYS, *BOOKKEEPING, *extra):
        if key == k or (k.endswith(".") and key.startswith(k)) or key.startswith(k + "."):
            return True
    return False


def condition_items(run: Run, ignore: Sequence[str] = ()) -> dict[str, Any]:
    """The run's config without seed and bookkeeping keys (and without ``ignore``): what makes a condition."""
    flat = _flat_config(run.config)
    # a tiny organism pretrained with another seed is a seed too (pretrain_overrides: ['seed=3', …])
    overrides = flat.get("model.pretrain_overrides")
    if isinstance(overrides, list):
        flat["model.pretrain_overrides"] = [o for o in overrides
                                            if str(o).split("=", 1)[0].lstrip("+~") not in ("seed", "model.init_seed")]
    return {k: v for k, v in flat.items() if not _ignored(k, ignore)}


def condition_key(run: Run, ignore: Sequence[str] = ()) -> str:
    return json.dumps(condition_items(run, ignore), sort_keys=True, default=str)


def seed_values(run: Run) -> dict[str, Any]:
    """The run's value of each seed key present in its config."""
    flat = _flat_config(run.config)
    out = {k: flat[k] for k in SEED_KEYS if k in flat}
    for o in flat.get("model.pretrain_overrides") or []:
        name, _, value = str(o).partition("=")
        if name.lstrip("+~") == "seed":
            out["model.pretrain_overrides:seed"] = value
    return out


@dataclass
class SeedGroup:
    """One condition and its runs (one per seed)."""

    key: str
    label: str
    runs: list[Run] = field(default_factory=list)

    @property
    def n_seeds(self) -> int:
        return len(self.runs)


def seed_groups(runs: Sequence[Run], ignore: Sequence[str] = ()) -> list[SeedGroup]:
    """Completed runs grouped by condition (first-seen order); labels name what differs between conditions."""
    groups: dict[str, SeedGroup] = {}
    items: dict[str, dict[str, Any]] = {}
    for run in runs:
        if run.status != "completed":
            continue
        key = condition_key(run, ignore)
        if key not in groups:
            groups[key] = SeedGroup(key, "")
            items[key] = condition_items(run, ignore)
        groups[key].runs.append(run)
    # Label each condition by the keys that differ between the conditions of the same task (kdyn-train
    # runs against kdyn-train runs, kdyn-entropy against kdyn-entropy), naming the task when there are several.
    by_task: dict[str, list[str]] = {}
    for key, group in groups.items():
        by_task.setdefault(_task_of(group.runs[0]), []).append(key)
    for task, keys in by_task.items():
        varying = sorted({k for key in keys for k in items[key]
                          if len({json.dumps(items[o].get(k), sort_keys=True, default=str) for o in keys}) > 1})
        for key in keys:
            parts = [f"{k}={_short_value(items[key].get(k))}" for k in varying if k in items[key]]
            label = " ".join(parts) if parts else "all runs"
            groups[key].label = f"{task}: {label}" if len(by_task) > 1 else label
    return list(groups.values())


def _task_of(run: Run) -> str:
    return str(run.config.get("task_name") or run.kind or "run")


def _short_value(value: Any) -> str:
    text = json.dumps(value, default=str) if isinstance(value, (list, dict)) else str(value)
    return text if len(text) <= 40 else text[:39] + "…"


def group_of(groups: Sequence[SeedGroup]) -> dict[int, SeedGroup]:
    """{id(run): its group}."""
    return {id(run): g for g in groups for run in g.runs}


# --- the summary over seeds -------------------------------------------------------------------

def _numeric(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _is_timing(metric: str) -> bool:
    last = metric.rsplit(".", 1)[-1]
    return last in TIMING


def _is_seed_echo(metric: str) -> bool:
    return metric.split(".", 1)[-1] in ("seed",)


#: The interval columns of every ``*_seeds.csv`` (one row per condition and measured quantity).
INTERVAL_COLUMNS = ["n_seeds", "mean", "std", "ci95_low", "ci95_high", "ci95_half_width", "few_seeds"]


def interval_columns(iv: Interval) -> dict[str, Any]:
    """``iv`` as the :data:`INTERVAL_COLUMNS` of a ``*_seeds.csv`` row (``few_seeds``: fewer than MIN_SEEDS)."""
    return {"n_seeds": iv.n, "mean": iv.mean, "std": iv.std, "ci95_low": iv.low, "ci95_high": iv.high,
            "ci95_half_width": iv.half_width, "few_seeds": iv.n < MIN_SEEDS}


def seeds_note(counts: Sequence[int]) -> str:
    """``n=3``, ``n=2–3`` (seeds per point vary), with ``, <3 seeds`` when any point has fewer than MIN_SEEDS."""
    ns = sorted({int(n) for n in counts if n})
    if not ns:
        return "n=0"
    text = f"n={ns[0]}" if len(ns) == 1 else f"n={ns[0]}–{ns[-1]}"
    return text + (f", <{MIN_SEEDS} seeds" if ns[0] < MIN_SEEDS else "")


def seed_summary(groups: Sequence[SeedGroup]) -> list[dict[str, Any]]:
    """One row per (condition, metric): n_seeds, mean, std, the 95% t-interval, and the flags."""
    from kdyn.report.table import summary_row

    rows = []
    for group in groups:
        per_run = [summary_row(r) for r in group.runs]
        metrics: dict[str, None] = {}
        for row in per_run:
            for k in row:
                if k.split(".", 1)[0] in ("results", "entropy", "trace") and not _is_seed_echo(k):
                    metrics.setdefault(k, None)
        identical = is_identical(group)
        for metric in metrics:
            values = [_numeric(row.get(metric)) for row in per_run]
            values = [v for v in values if v is not None]
            if not values:
                continue
            iv = t_interval(values)
            rows.append({"condition": group.label, "metric": metric, **interval_columns(iv), "identical_seeds": identical,
                         "seeds": json.dumps([seed_values(r) for r in group.runs], default=str)})
    return rows


def is_identical(group: SeedGroup) -> bool:
    """Several runs whose every result number (timings aside) is the same: the seeds changed nothing."""
    from kdyn.report.table import summary_row

    if group.n_seeds < 2:
        return False
    per_run = [summary_row(r) for r in group.runs]
    keys = {k for row in per_run for k in row
            if k.split(".", 1)[0] in ("results", "entropy", "trace") and not _is_timing(k) and not _is_seed_echo(k)}
    compared = 0
    for k in keys:
        values = [json.dumps(row.get(k), default=str) for row in per_run]  # numbers, and curves as JSON text
        compared += any(_numeric(row.get(k)) is not None for row in per_run)
        if len(set(values)) > 1:
            return False
    return compared > 0


def warning_lines(groups: Sequence[SeedGroup]) -> list[str]:
    """Lines for the terminal: identical seeds, and conditions with fewer than MIN_SEEDS seeds."""
    lines = []
    for g in groups:
        if is_identical(g):
            lines.append(f"warning: the {g.n_seeds} seeds of [{g.label}] gave identical results: the seed keys that "
                         "differ between them vary nothing in this experiment, so the interval is not a spread "
                         "(README: what each seed varies)")
    few = [g for g in groups if g.n_seeds < MIN_SEEDS]
    if few and any(g.n_seeds > 1 for g in groups):
        lines.append(f"note: {len(few)} of {len(groups)} conditions have fewer than {MIN_SEEDS} seeds (few_seeds=true "
                     "in summary_seeds.csv); their intervals are wide or absent")
    return lines


HEADLINE = ("results.final_loss", "entropy.total", "trace.")
_TW_PPL = re.compile(r"^results\.temporalwiki\.p(\d+)\.(C|UnC)_ppl_full$")


def headline_metrics(metrics: Iterable[str]) -> list[str]:
    """The metrics the terminal shows per condition (in the order given): the final loss, the total entropy,
    the knowledge headlines (effectivity, decay constant) and, for TemporalWiki runs, ``C_ppl_full`` and
    ``UnC_ppl_full`` after the last period (the other periods are in the CSVs)."""
    metrics = list(dict.fromkeys(metrics))
    periods = [int(m.group(1)) for m in map(_TW_PPL.match, metrics) if m]
    last = max(periods) if periods else None
    return [m for m in metrics if m in HEADLINE[:2] or _is_knowledge_headline(m)
            or ((tw := _TW_PPL.match(m)) is not None and int(tw.group(1)) == last)]


def metric_name(metric: str) -> str:
    """A metric as the terminal names it: ``results.temporalwiki.p4.C_ppl_full`` → ``temporalwiki.p4.C_ppl_full``."""
    return metric.split(".", 1)[1].replace("knowledge.scenarios.", "")


def format_seed_table(groups: Sequence[SeedGroup], rows: Sequence[Mapping[str, Any]]) -> str:
    """Per condition: seeds and the headline numbers as mean ± half-width (95% t-interval)."""
    lines = []
    by_condition: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        by_condition.setdefault(r["condition"], []).append(r)
    for g in groups:
        rows_here = by_condition.get(g.label, [])
        chosen = set(headline_metrics(r["metric"] for r in rows_here))
        parts = [f"{metric_name(r['metric'])} {format_interval(r)}" for r in rows_here if r["metric"] in chosen]
        flag = " (fewer than 3 seeds)" if g.n_seeds < MIN_SEEDS else ""
        lines.append(f"  [{g.label}] {g.n_seeds} seed{'s' if g.n_seeds != 1 else ''}{flag}" + (":" if parts else ""))
        lines += [f"      {part}" for part in parts]
    return "\n".join(lines)


def _is_knowledge_headline(metric: str) -> bool:
    return metric.startswith("results.knowledge.scenarios.") and metric.endswith((".mem.effectivity",
                                                                                 ".mem.fit.decay_constant"))


def format_half_width(x: float) -> str:
    """Two significant digits, without an exponent for large values (121.5 → ``120``, not ``1.2e+02``)."""
    text = f"{x:.2g}"
    if "e+" in text:
        text = f"{round(x, 1 - int(math.floor(math.log10(abs(x))))):.0f}"
    return text


def format_interval(row: Mapping[str, Any]) -> str:
    if row.get("ci95_half_width") is None:
        return f"{row['mean']:.4g} (n={row['n_seeds']})"
    return f"{row['mean']:.4g} ± {format_half_width(row['ci95_half_width'])} (n={row['n_seeds']})"


def write_seed_summary(groups: Sequence[SeedGroup], out_dir) -> tuple[Any, list[dict[str, Any]]]:
    """``<out_dir>/summary_seeds.csv`` (one row per condition × metric); returns (path, rows)."""
    import csv
    import io
    from pathlib import Path

    from kdyn.report.table import format_cell
    from kdyn.utils.io import atomic_write_text

    rows = seed_summary(groups)
    columns = ["condition", "metric", "n_seeds", "mean", "std", "ci95_low", "ci95_high", "ci95_half_width",
               "few_seeds", "identical_seeds", "seeds"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([format_cell(row.get(c)) for c in columns])
    return atomic_write_text(Path(out_dir) / "summary_seeds.csv", buf.getvalue()), rows
