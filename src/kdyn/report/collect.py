"""Find run folders and load what each one left, without ever failing on one malformed run.

A *run folder* is any folder holding ``.hydra/config.yaml`` (a single Hydra run, or one job of a
multirun sweep). :func:`collect_runs` walks the folders it is given, finds every run folder at any
depth and loads each into a :class:`Run`:

* ``results.json`` (``kdyn-train``) and/or ``entropy.json`` (``kdyn-entropy``): the results;
* ``error.json``: a multirun job that failed on bad input (``status=failed``);
* ``results.json`` with ``status=interrupted``: stopped by SIGTERM (exit 143) after saving
  ``checkpoints/last.ckpt`` (resumable);
* none of these: ``status=incomplete`` (crashed, killed or still running; resumable when
  ``checkpoints/last.ckpt`` exists);
* a result file that is not valid JSON (or a config that is not valid YAML): ``status=unreadable``
  with the parser's message in ``error``.

Bad *input* (a folder that does not exist, a folder without any run) raises
:class:`~kdyn.errors.KdynError`.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdyn.errors import KdynError

RESULT_FILES = {"train": "results.json", "entropy": "entropy.json", "trace": "layer_stats.json"}
ERROR_FILE = "error.json"
METRICS_FILE = "metrics.csv"
LAST_CKPT = Path("checkpoints") / "last.ckpt"
# Folders never searched for runs: bookkeeping, checkpoints, logger and cache folders.
_PRUNE = {".hydra", "checkpoints", "wandb", "__pycache__", "node_modules", ".git", "lightning_logs"}
_TOOL_KIND = {"kdyn-train": "train", "kdyn-entropy": "entropy", "kdyn-trace": "trace", "kdyn-eval": "eval"}


@dataclass
class Run:
    """Everything one run folder says about its run (missing pieces are ``None`` / empty)."""

    path: Path                                   # the run folder (resolved)
    status: str = "incomplete"                   # completed | failed | incomplete | unreadable | interrupted | …
    kind: str | None = None                      # train | entropy | both | None (unknown)
    config: dict[str, Any] = field(default_factory=dict)       # .hydra/config.yaml (interpolations unresolved)
    overrides: list[str] = field(default_factory=list)         # .hydra/overrides.yaml
    choices: dict[str, Any] = field(default_factory=dict)      # hydra.runtime.choices (hydra/* groups left out)
    job_num: int | None = None                   # hydra.job.num (multirun jobs only)
    results: dict[str, Any] | None = None        # results.json
    entropy: dict[str, Any] | None = None        # entropy.json
    trace: dict[str, Any] | None = None          # layer_stats.json (kdyn-trace)
    error: str | None = None                     # why the run failed / is incomplete / is unreadable
    resumable: bool = False                      # incomplete but has checkpoints/last.ckpt
    name: str = ""                               # short display name (relative to the searched folder)
    _metrics: Any = field(default=None, repr=False)
    _metrics_loaded: bool = field(default=False, repr=False)

    # --- convenient identity -------------------------------------------------------------
    @property
    def sweep_dir(self) -> Path | None:
        """The multirun sweep folder holding this job (``multirun.yaml`` next to it), if any."""
        return self.path.parent if (self.path.parent / "multirun.yaml").is_file() else None

    def config_value(self, dotted: str, default: Any = None) -> Any:
        """A value of the composed config by dotted key (``model.step``); interpolations stay strings."""
        node: Any = self.config
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        if isinstance(node, str) and (node == "???" or node.startswith("${")):
            return default
        return node

    def _from_results(self, section: str, key: str) -> Any:
        for source in (self.entropy, self.results):
            if isinstance(source, dict) and isinstance(source.get(section), dict):
                value = source[section].get(key)
                if value is not None:
                    return value
        return None

    @property
    def model_name(self) -> str | None:
        value = self._from_results("model", "name") or self.config_value("model.name") or self.choices.get("model")
        return None if value is None else str(value)

    @property
    def model_step(self) -> Any:
        """The checkpoint step measured/trained from: the result file's ``model.step``, else the config's."""
        value = self._from_results("model", "step")
        return value if value is not None else self.config_value("model.step")

    @property
    def corpus_name(self) -> str | None:
        value = self._from_results("corpus", "name") or self.config_value("corpus.name") or self.choices.get("corpus")
        return None if value is None else str(value)

    @property
    def seed(self) -> Any:
        for source in (self.results, self.entropy):
            if isinstance(source, dict) and source.get("seed") is not None:
                return source["seed"]
        return self.config_value("seed")

    @property
    def label(self) -> str:
        """A legend label: the command-line overrides, else the run's name."""
        return " ".join(self.overrides) if self.overrides else (self.name or self.path.name)

    # --- lazily loaded metrics ---------------------------------------------------------------
    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    def metrics(self) -> dict[str, list[str]] | None:
        """``metrics.csv`` as columns, ``{header: [cell text per row]}`` (``None`` when absent or
        unreadable); loaded once."""
        if not self._metrics_loaded:
            self._metrics_loaded = True
            if self.metrics_path.is_file():
                try:
                    with open(self.metrics_path, newline="", encoding="utf-8") as f:
                        rows = list(csv.reader(f))
                    header = rows[0] if rows else []
                    self._metrics = {name: [row[i] if i < len(row) else "" for row in rows[1:]]
                                     for i, name in enumerate(header)}
                except Exception:  # noqa: BLE001 - a broken metrics file only loses this run's curves
                    self._metrics = None
        return self._metrics


def natural_key(path: Path | str) -> list[Any]:
    """Sort key that orders ``2`` before ``10`` (multirun job folders)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def find_run_dirs(paths: Iterable[str | Path]) -> list[Path]:
    """Every run folder (holding ``.hydra/config.yaml``) at or below ``paths``: resolved, deduplicated, sorted.

    Raises :class:`KdynError` when a path does not exist or is not a folder. Symbolic links to
    folders are not followed (no cycles); bookkeeping folders (``.hydra``, ``checkpoints``,
    ``wandb``, hidden folders) are not searched.
    """
    found: dict[Path, None] = {}
    for given in paths:
        root = Path(given).expanduser()
        if not root.exists():
            raise KdynError(f"{given} does not exist; pass a run folder, a multirun sweep folder or a folder holding runs (e.g. outputs/)")
        if not root.is_dir():
            raise KdynError(f"{given} is not a folder; pass a run folder, a multirun sweep folder or a folder holding runs (e.g. outputs/)")
        for run_dir in _walk_runs(root.resolve()):
            found.setdefault(run_dir, None)
    return sorted(found, key=natural_key)


def _walk_runs(root: Path) -> Iterable[Path]:
    for dirpath, dirnames, _ in os.walk(root, onerror=lambda e: None):
        here = Path(dirpath)
        if (here / ".hydra" / "config.yaml").is_file():
            yield here
        dirnames[:] = [d for d in dirnames if d not in _PRUNE and not d.startswith(".")]


def collect_runs(paths: Sequence[str | Path]) -> list[Run]:
    """Find and load every run below ``paths`` (see module docstring). Raises on bad input only."""
    if not paths:
        raise KdynError("no folder given; pass one or more run folders, multirun sweep folders or e.g. outputs/")
    found: dict[Path, None] = {}
    for given in paths:
        run_dirs = find_run_dirs([given])  # raises the one-line error for a missing folder
        if not run_dirs:
            raise KdynError(
                f"no run folders (folders with .hydra/config.yaml) found under {given}; kdyn-report expects "
                "the output folder of kdyn-train / kdyn-entropy: a run folder, a multirun sweep folder, or a "
                "folder holding them such as outputs/"
            )
        for run_dir in run_dirs:
            found.setdefault(run_dir, None)
    roots = [Path(p).expanduser().resolve() for p in paths]
    runs: list[Run] = []
    for run_dir in sorted(found, key=natural_key):
        run = load_run(run_dir)
        run.name = _short_name(run_dir, roots)
        runs.append(run)
    return runs


def _short_name(run_dir: Path, roots: Sequence[Path]) -> str:
    best = None
    for root in roots:
        try:
            rel = run_dir.relative_to(root)
        except ValueError:
            continue
        text = root.name if str(rel) == "." else str(rel)
        if best is None or len(text) < len(best):
            best = text
    return best or str(run_dir)


def _read_json(path: Path) -> tuple[Any, str | None]:
    """(data, None) or (None, one-line error)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return None, f"{path.name}: {_one_line(e)}"
    if not isinstance(data, dict):
        return None, f"{path.name}: expected a JSON object, found {type(data).__name__}"
    return data, None


def _read_yaml(path: Path) -> tuple[Any, str | None]:
    from omegaconf import OmegaConf

    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=False), None
    except Exception as e:  # noqa: BLE001 - any parser problem makes the run unreadable, not the report
        return None, f".hydra/{path.name}: {_one_line(e)}"


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def load_run(path: str | Path) -> Run:
    """Load one run folder. Never raises for malformed content: problems become ``status``/``error``."""
    path = Path(path).resolve()
    run = Run(path=path, name=path.name)
    problems: list[str] = []

    # Hydra's record of the run.
    hydra_dir = path / ".hydra"
    config, err = _read_yaml(hydra_dir / "config.yaml")
    if err:
        problems.append(err)
    elif isinstance(config, dict):
        run.config = config
    if (hydra_dir / "overrides.yaml").is_file():
        overrides, err = _read_yaml(hydra_dir / "overrides.yaml")
        if err:
            problems.append(err)
        elif isinstance(overrides, list):
            run.overrides = [str(o) for o in overrides]
    if (hydra_dir / "hydra.yaml").is_file():
        hydra_cfg, err = _read_yaml(hydra_dir / "hydra.yaml")
        if err:
            problems.append(err)
        elif isinstance(hydra_cfg, dict):
            _read_hydra(run, hydra_cfg)

    # What the run produced.
    for kind, filename in RESULT_FILES.items():
        file = path / filename
        if file.is_file():
            data, err = _read_json(file)
            if err:
                problems.append(err)
            elif kind == "train":
                run.results = data
            elif kind == "trace":
                run.trace = data
            else:
                run.entropy = data
    error_data = None
    if (path / ERROR_FILE).is_file():
        error_data, err = _read_json(path / ERROR_FILE)
        if err:
            problems.append(err)

    run.kind = _kind(run, error_data)
    if problems:
        run.status = "unreadable"
        run.error = "; ".join(problems)
    elif run.results is not None or run.entropy is not None or run.trace is not None:
        statuses = [str(d.get("status") or "completed") for d in (run.results, run.entropy, run.trace)
                    if isinstance(d, dict)]
        bad = [s for s in statuses if s != "completed"]
        run.status = bad[0] if bad else "completed"
        if error_data is not None and bad:
            run.error = str(error_data.get("error") or "")
        if run.status == "interrupted":  # kdyn-train stopped by SIGTERM (exit 143) after saving last.ckpt
            run.resumable = (path / LAST_CKPT).is_file()
            step = (run.results or {}).get("steps")
            run.error = (f"stopped by SIGTERM after step {step}" + ("; has last.ckpt: resumable (rerun or requeue)"
                                                                     if run.resumable else ""))
    elif error_data is not None:
        run.status = str(error_data.get("status") or "failed")
        run.error = str(error_data.get("error") or "failed (error.json holds no message)")
    else:
        run.status = "incomplete"
        run.resumable = (path / LAST_CKPT).is_file()
        run.error = "no results.json, entropy.json, layer_stats.json or error.json (crashed, killed or still running)"
        if run.resumable:
            run.error += "; has last.ckpt: resumable"
    return run


def _read_hydra(run: Run, hydra_cfg: dict[str, Any]) -> None:
    hydra = hydra_cfg.get("hydra", hydra_cfg)
    if not isinstance(hydra, dict):
        return
    runtime = hydra.get("runtime") or {}
    choices = runtime.get("choices") if isinstance(runtime, dict) else None
    if isinstance(choices, dict):
        run.choices = {k: v for k, v in choices.items() if not str(k).startswith("hydra")}
    job = hydra.get("job") or {}
    num = job.get("num") if isinstance(job, dict) else None
    if isinstance(num, int) and not isinstance(num, bool):
        run.job_num = num
    elif isinstance(num, str) and num.isdigit():
        run.job_num = int(num)
    if not run.overrides:  # older runs without overrides.yaml
        task = (hydra.get("overrides") or {}).get("task") if isinstance(hydra.get("overrides"), dict) else None
        if isinstance(task, list):
            run.overrides = [str(o) for o in task]


def _kind(run: Run, error_data: dict[str, Any] | None) -> str | None:
    if run.trace is not None or (run.path / RESULT_FILES["trace"]).is_file():
        return "trace"
    has_train, has_entropy = run.results is not None, run.entropy is not None
    if not (has_train or has_entropy):  # unreadable / failed / incomplete: infer from the tool or task
        has_train = (run.path / RESULT_FILES["train"]).is_file()
        has_entropy = (run.path / RESULT_FILES["entropy"]).is_file()
    if has_train and has_entropy:
        return "both"
    if has_train:
        return "train"
    if has_entropy:
        return "entropy"
    if error_data and error_data.get("tool") in _TOOL_KIND:
        return _TOOL_KIND[error_data["tool"]]
    task = run.config_value("task_name")
    if task in ("train", "entropy", "trace", "eval"):
        return task
    return None


STATUS_ORDER = ("completed", "interrupted", "failed", "unreadable", "incomplete")


def count_statuses(runs: Sequence[Run]) -> dict[str, list[Run]]:
    """{status: runs}: completed first, then interrupted, failed, unreadable, incomplete, then any other."""
    out: dict[str, list[Run]] = {}
    for run in runs:
        out.setdefault(run.status, []).append(run)
    rank = {s: i for i, s in enumerate(STATUS_ORDER)}
    return dict(sorted(out.items(), key=lambda kv: rank.get(kv[0], len(rank))))
