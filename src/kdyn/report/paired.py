"""Paired comparison against a baseline condition: ``kdyn-report DIR --baseline KEY=VALUE[,KEY=VALUE…]``.

When the seeds of a sweep are *organisms* (``model.pretrain_seed``) the spread between organisms can
swamp a difference that every organism shows: the intervals of :mod:`kdyn.report.seeds` overlap although
within each organism one condition is consistently worse. The paired comparison takes, for every
condition and every **seed draw** it shares with the baseline (the same value of every seed key,
:func:`kdyn.report.seeds.seed_values`), the difference of each metric — absolute, and relative in % of
the baseline's value — then the mean of these per-draw differences and their Student-t 95% interval
(:func:`kdyn.report.seeds.t_interval`), n = the number of matched pairs.

**The baseline.** ``KEY=VALUE`` pairs (all must hold) select it: ``KEY`` is a config group as chosen on the
command line (``intervention=none``, read from ``.hydra/hydra.yaml``), or a dotted config key
(``intervention.name=none``, ``optim.lr=0.001``); a node whose ``name`` is VALUE also matches
(``intervention=none`` on runs without ``hydra.yaml``). Seed and bookkeeping keys cannot select a
baseline. Several conditions may match (a sweep of interventions × learning rates): each other condition
is compared with **its counterpart**, the baseline condition equal to it in every key outside the
selector's *scope* (the config node of each KEY: ``intervention.*`` for ``intervention=…`` or
``intervention.name=…``; any key for a group that writes elsewhere, like ``experiment``), so runs that
differ from the baseline in another key (``optim.lr``) are never paired; a condition without a
counterpart is not paired (a note says why). Baseline conditions that differ from each other only within
the scope (``intervention.name=localize`` matching two rules) are ambiguous: an error asks for one more
KEY=VALUE.
Runs without a baseline run of the same seed draw are left out of the pairs (counted in a note); a seed
draw with several runs on one side is paired through their mean.

Bad input (a malformed ``--baseline``, a key no run has, a value no run has, a baseline that is every
condition, an ambiguous baseline) raises :class:`~kdyn.errors.KdynError` before anything is written.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kdyn.errors import KdynError
from kdyn.report.collect import Run
from kdyn.report.seeds import (MIN_SEEDS, SEED_KEYS, Interval, SeedGroup, _flat_config, _ignored, _is_seed_echo,
                               _numeric, condition_items, format_half_width, headline_metrics, interval_columns, metric_name,
                               seed_values, t_interval)

EXAMPLE = "e.g. --baseline intervention=none"
#: Columns of ``summary_paired.csv`` (one row per condition × metric).
COLUMNS = ["condition", "baseline", "metric", "n_pairs", "mean_diff", "std_diff", "ci95_low", "ci95_high",
           "ci95_half_width", "mean_rel_pct", "std_rel_pct", "rel_ci95_low", "rel_ci95_high", "rel_ci95_half_width",
           "few_seeds", "condition_mean", "baseline_mean", "unpaired_runs", "pairs"]
_MISSING = object()


# --- the selector -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Selector:
    """``--baseline`` as given and as (key, value) pairs."""

    text: str
    pairs: tuple[tuple[str, str], ...]


def parse_baseline(text: str) -> Selector:
    """``"intervention=none,optim.lr=0.001"`` → a :class:`Selector` (commas inside ``[…]``/``{…}`` stay in a value)."""
    given = str(text).strip()
    pairs = []
    for part in _split_commas(given) if given else []:
        key, eq, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or not key or not value:
            raise KdynError(f"--baseline expects KEY=VALUE[,KEY=VALUE…] ({EXAMPLE}), got {text!r}")
        pairs.append((key.lstrip("+~"), value))
    if not pairs:
        raise KdynError(f"--baseline expects KEY=VALUE[,KEY=VALUE…] ({EXAMPLE}), got {text!r}")
    return Selector(given, tuple(pairs))


def _split_commas(text: str) -> list[str]:
    """Split at the commas outside ``[…]``, ``{…}``, ``(…)`` and quotes."""
    parts, depth, quote, current = [], 0, None, []
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth = max(depth - 1, 0)
        elif ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    return [*parts, "".join(current)]


def _lookup(run: Run, flat: Mapping[str, Any], key: str) -> tuple[bool, Any]:
    """(found, value) of ``key`` for one run: its group choice, its config value, or its node's ``name``."""
    if "." not in key and key in run.choices:
        return True, run.choices[key]
    if key in flat:
        return True, flat[key]
    if f"{key}.name" in flat:
        return True, flat[f"{key}.name"]
    return False, None


def _same(value: Any, text: str) -> bool:
    """Whether a config value reads as ``text`` on the command line (``null``, ``1e-3``, ``true``, ``[1,2]``)."""
    if value is None:
        return text in ("null", "None", "~")
    if isinstance(value, bool):
        return text.lower() == str(value).lower()
    if isinstance(value, (int, float)):
        try:
            return float(text) == float(value)
        except ValueError:
            return False
    if isinstance(value, (list, dict)):
        import yaml

        try:
            return yaml.safe_load(text) == value or json.dumps(value, default=str) == text
        except yaml.YAMLError:
            return False
    return str(value) == text


def _check_keys(selector: Selector, runs: Sequence[Run], flats: Sequence[Mapping[str, Any]]) -> None:
    groups = sorted({g for r in runs for g in r.choices})
    for key, _ in selector.pairs:
        if key in SEED_KEYS or _ignored(key):
            kind = ("a seed key (the pairs are matched over it)" if key in SEED_KEYS
                    else "a bookkeeping key: it does not make a condition")
            raise KdynError(f"--baseline {key}=…: {key} is {kind}; select the baseline by a key that differs "
                            f"between conditions, {EXAMPLE}")
        if not any(_lookup(r, f, key)[0] for r, f in zip(runs, flats)):
            hint = f"config groups: {', '.join(groups)}; " if groups else ""
            raise KdynError(f"--baseline {key}=…: no run has a config group or config key {key!r} ({hint}a dotted "
                            f"key of .hydra/config.yaml also works, e.g. intervention.name=none)")


def _values_of(key: str, runs: Sequence[Run], flats: Sequence[Mapping[str, Any]]) -> list[str]:
    values = {}
    for r, f in zip(runs, flats):
        found, value = _lookup(r, f, key)
        if found:
            values.setdefault("null" if value is None else json.dumps(value, default=str) if isinstance(
                value, (list, dict)) else str(value), None)
    return sorted(values)


# --- comparisons ------------------------------------------------------------------------------

@dataclass
class Comparison:
    """One condition against its baseline condition: the matched seed draws and the runs left out."""

    group: SeedGroup
    baseline: SeedGroup | None
    pairs: list[tuple[dict[str, Any], list[Run], list[Run]]] = field(default_factory=list)  # draw, runs, baseline runs
    unpaired: list[Run] = field(default_factory=list)  # runs of the condition without a baseline run of their draw
    why: str | None = None                               # why the condition has no baseline condition


def _draw_key(run: Run) -> str:
    return json.dumps(seed_values(run), sort_keys=True, default=str)


def _differing(a: Mapping[str, Any], b: Mapping[str, Any]) -> set[str]:
    def text(d, k):
        return json.dumps(d.get(k, "\0missing"), sort_keys=True, default=str)
    return {k for k in a.keys() | b.keys() if text(a, k) != text(b, k)}


def compare(groups: Sequence[SeedGroup], selector: Selector) -> tuple[list[SeedGroup], list[Comparison]]:
    """(the baseline conditions, one :class:`Comparison` per other condition); raises KdynError on bad input."""
    runs = [r for g in groups for r in g.runs]
    if not runs:
        raise KdynError(f"--baseline {selector.text}: no completed run to pair; the runs must have finished")
    flats = {id(r): _flat_config(r.config) for r in runs}
    _check_keys(selector, runs, [flats[id(r)] for r in runs])

    def matches(run: Run) -> bool:
        for key, text in selector.pairs:
            found, value = _lookup(run, flats[id(run)], key)
            if not found or not _same(value, text):
                return False
        return True

    baselines = [g for g in groups if any(matches(r) for r in g.runs)]
    if not baselines:
        seen = "; ".join(f"{k} is {', '.join(_values_of(k, runs, [flats[id(r)] for r in runs])) or 'absent'}"
                         for k, _ in selector.pairs)
        raise KdynError(f"--baseline {selector.text} matches no completed run (in these runs {seen}); "
                        "pass one of these values")
    if len(baselines) == len(groups):
        raise KdynError(f"--baseline {selector.text} matches every condition ({len(groups)}): there is nothing "
                        "to pair with it; pass the value of the condition to compare the others against")

    items = {g.key: condition_items(g.runs[0]) for g in groups}
    prefixes = {key.split(".", 1)[0] for key, _ in selector.pairs}
    all_keys = {k for it in items.values() for k in it}
    # a group that writes elsewhere (# @package _global_, e.g. experiment) leaves no key under its name
    wildcard = any("." not in key and not any(k == key or k.startswith(key + ".") for k in all_keys)
                   for key, _ in selector.pairs)

    def in_scope(k: str) -> bool:
        return wildcard or any(k == p or k.startswith(p + ".") for p in prefixes)

    scope = "any key" if wildcard else "/".join(sorted(p + ".*" for p in prefixes))
    for i, a in enumerate(baselines):  # two baselines that differ only within the scope: which one is meant?
        for b in baselines[i + 1:]:
            diff = sorted(_differing(items[a.key], items[b.key]))
            if all(in_scope(k) for k in diff):
                shown = ", ".join(f"{k}={_short(items[a.key].get(k))} / {_short(items[b.key].get(k))}"
                                  for k in diff[:3]) + ("…" if len(diff) > 3 else "")
                raise KdynError(f"--baseline {selector.text} matches {len(baselines)} conditions that differ only "
                                f"within {scope} ({shown}); add a KEY=VALUE that picks one, e.g. "
                                f"--baseline {selector.text},{diff[0]}={_short(items[a.key].get(diff[0]))}")

    comparisons = []
    for group in groups:
        if group in baselines:
            continue
        # the counterpart: the baseline equal to this condition outside the scope (unique: see the check above)
        outside = {b.key: sorted(k for k in _differing(items[group.key], items[b.key]) if not in_scope(k))
                   for b in baselines}
        fit = [b for b in baselines if not outside[b.key]]
        if fit:
            comparisons.append(_pair(group, fit[0]))
        else:
            closest = min(outside.values(), key=len)
            comparisons.append(Comparison(group, None, unpaired=list(group.runs),
                                          why=f"it differs from every baseline condition outside {scope} (in "
                                              f"{', '.join(closest[:4])}{'…' if len(closest) > 4 else ''})"))
    return baselines, comparisons


def _short(value: Any) -> str:
    text = "null" if value is None else json.dumps(value, default=str) if isinstance(value, (list, dict)) else str(value)
    return text if len(text) <= 40 else text[:39] + "…"


def _pair(group: SeedGroup, baseline: SeedGroup) -> Comparison:
    by_draw: dict[str, list[Run]] = {}
    for run in baseline.runs:
        by_draw.setdefault(_draw_key(run), []).append(run)
    mine: dict[str, list[Run]] = {}
    for run in group.runs:
        mine.setdefault(_draw_key(run), []).append(run)
    out = Comparison(group, baseline)
    for key, runs in mine.items():
        if key in by_draw:
            out.pairs.append((seed_values(runs[0]), runs, by_draw[key]))
        else:
            out.unpaired += runs
    return out


# --- the numbers ------------------------------------------------------------------------------

def _renamed(iv: Interval, names: Mapping[str, str]) -> dict[str, Any]:
    cols = interval_columns(iv)
    return {new: cols[old] for old, new in names.items()}


_ABS = {"n_seeds": "n_pairs", "mean": "mean_diff", "std": "std_diff", "ci95_low": "ci95_low",
        "ci95_high": "ci95_high", "ci95_half_width": "ci95_half_width", "few_seeds": "few_seeds"}
_REL = {"mean": "mean_rel_pct", "std": "std_rel_pct", "ci95_low": "rel_ci95_low", "ci95_high": "rel_ci95_high",
        "ci95_half_width": "rel_ci95_half_width"}


def paired_rows(comparisons: Sequence[Comparison]) -> list[dict[str, Any]]:
    """One row per (condition, metric) of :data:`COLUMNS`: the per-draw differences' mean and t-interval."""
    from kdyn.report.table import summary_row

    cache: dict[int, dict[str, Any]] = {}

    def row_of(run: Run) -> dict[str, Any]:
        if id(run) not in cache:
            cache[id(run)] = summary_row(run)
        return cache[id(run)]

    def value(runs: Sequence[Run], metric: str) -> float | None:
        xs = [v for v in (_numeric(row_of(r).get(metric)) for r in runs) if v is not None]
        return math.fsum(xs) / len(xs) if xs else None

    rows = []
    for comp in comparisons:
        if comp.baseline is None or not comp.pairs:
            continue
        metrics: dict[str, None] = {}
        for _, runs, _ in comp.pairs:
            for run in runs:
                for k in row_of(run):
                    if k.split(".", 1)[0] in ("results", "entropy", "trace") and not _is_seed_echo(k):
                        metrics.setdefault(k, None)
        for metric in metrics:
            matched = [(draw, value(runs, metric), value(base, metric)) for draw, runs, base in comp.pairs]
            matched = [(d, x, b) for d, x, b in matched if x is not None and b is not None]
            if not matched:
                continue
            diff = t_interval([x - b for _, x, b in matched])
            rel = t_interval([100.0 * (x - b) / b for _, x, b in matched] if all(b != 0 for _, _, b in matched) else [])
            rows.append({"condition": comp.group.label, "baseline": comp.baseline.label, "metric": metric,
                         **_renamed(diff, _ABS), **_renamed(rel, _REL),
                         "condition_mean": math.fsum(x for _, x, _ in matched) / len(matched),
                         "baseline_mean": math.fsum(b for _, _, b in matched) / len(matched),
                         "unpaired_runs": len(comp.unpaired),
                         "pairs": json.dumps([d for d, _, _ in matched], default=str)})
    return rows


def write_paired_summary(comparisons: Sequence[Comparison], out_dir) -> tuple[Any, list[dict[str, Any]]]:
    """``<out_dir>/summary_paired.csv``; returns (path, rows)."""
    from pathlib import Path

    from kdyn.report.table import csv_text
    from kdyn.utils.io import atomic_write_text

    rows = paired_rows(comparisons)
    return atomic_write_text(Path(out_dir) / "summary_paired.csv", csv_text(rows, COLUMNS)), rows


# --- the terminal -----------------------------------------------------------------------------

def format_difference(row: Mapping[str, Any]) -> str:
    """``+23.1 ± 25, +10.8% ± 11.3% (n=3)``: the mean difference ± half-width, then relative to the baseline."""
    half = row.get("ci95_half_width")
    text = f"{row['mean_diff']:+.4g}" + (f" ± {format_half_width(half)}" if half is not None else "")
    rel = row.get("mean_rel_pct")
    if rel is not None and math.isfinite(rel):
        text += f", {rel:+.1f}%" + (f" ± {row['rel_ci95_half_width']:.1f}%"
                                    if row.get("rel_ci95_half_width") is not None else "")
    return text + f" (n={row['n_pairs']})"


def format_paired_table(baselines: Sequence[SeedGroup], comparisons: Sequence[Comparison],
                        rows: Sequence[Mapping[str, Any]]) -> str:
    """Per compared condition: its pairs and the headline metrics' differences (``format_difference``)."""
    by_condition: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        by_condition.setdefault(r["condition"], []).append(r)
    lines = []
    for comp in comparisons:
        if comp.baseline is None or not comp.pairs:
            continue
        here = by_condition.get(comp.group.label, [])
        chosen = set(headline_metrics(r["metric"] for r in here))
        n = len(comp.pairs)
        vs = f" − [{comp.baseline.label}]" if len(baselines) > 1 else ""
        flag = f" (fewer than {MIN_SEEDS})" if n < MIN_SEEDS else ""
        lines.append(f"  [{comp.group.label}]{vs} {n} pair{'s' if n != 1 else ''}{flag}:")
        lines += [f"      {metric_name(r['metric'])} {format_difference(r)}" for r in here if r["metric"] in chosen]
    return "\n".join(lines)


def paired_notes(comparisons: Sequence[Comparison]) -> list[str]:
    """Lines for the terminal: conditions not paired (and why), runs left out for want of a baseline seed."""
    lines = []
    for comp in comparisons:
        if comp.baseline is None:
            lines.append(f"note: [{comp.group.label}] is not paired: {comp.why}")
        elif comp.unpaired:
            draws = "; ".join(sorted({", ".join(f"{k}={v}" for k, v in seed_values(r).items()) or "no seed keys"
                                      for r in comp.unpaired}))
            k = len(comp.unpaired)
            lines.append(f"note: [{comp.group.label}]: {k} run{'s' if k != 1 else ''} without a baseline run of "
                         f"the same seeds ({draws}) left out of the pairs")
    return lines
