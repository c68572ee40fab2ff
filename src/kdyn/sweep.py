"""Sweeps that fail well: every job checked before any starts, every job run when one fails, one line each.

``kdyn-train -m …`` (and ``kdyn-entropy`` / ``kdyn-eval`` / ``kdyn-trace``) sweep with
``hydra_plugins.kdyn_sweeper.KdynSweeper`` (``conf/hydra/sweeper/kdyn.yaml``, chosen in
``conf/hydra/default.yaml``): Hydra's basic sweeper — the same grid, job order, batches and launchers —
whose :meth:`sweep` is :func:`sweep` here:

1. **Before launching.** Every job's config is composed exactly as the launcher will compose it and
   checked with the single-run checks (:func:`check_job`: the config resolves,
   :func:`kdyn.validation.validate_config`, the model choice resolves, the intervention has what it
   needs). Invalid jobs are listed, one line each with their overrides, and nothing is launched
   (exit status 2). ``sweep.validate=false`` skips this step.
2. **Running.** A job that fails (bad input found late, out of memory, a node lost after its requeues)
   does not stop the others: the launcher runs every job; each failed job gets ``error.json`` in its
   run folder (so ``kdyn-report`` lists it next to the completed ones) and one summary line naming the
   job, its overrides and the run folder holding its log. The sweep then exits with status 1 and a count.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from kdyn.errors import KdynError

log = logging.getLogger("kdyn.sweep")

TASKS = ("train", "entropy", "eval", "trace")
ERROR_FILE = "error.json"  # kdyn.report.collect.ERROR_FILE
EXIT_INVALID = 2           # bad input: nothing was launched
EXIT_FAILED = 1            # some jobs failed at run time


@dataclass
class Job:
    """One job of a sweep: its number (``hydra.job.num``), its overrides and (once known) its run folder."""

    num: int
    overrides: list[str]
    folder: Path | None = None

    def describe(self, shown: Sequence[str] | None = None) -> str:
        """``job 3 [intervention=localize seed=1]``: the overrides that tell this job from the others."""
        parts = [o for o in self.overrides if shown is None or _key(o) in shown]
        return f"job {self.num} [{' '.join(parts) or 'no overrides'}]"


# --------------------------------------------------------------------------------------- the sweep
def sweep(sweeper: Any, arguments: Sequence[str]) -> list[Sequence[Any]]:
    """:meth:`BasicSweeper.sweep` that validates first and survives failed jobs (see the module docstring)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    config: DictConfig = sweeper.config
    tool = tool_name(config)
    loader = sweeper.hydra_context.config_loader
    parser = OverridesParser.create(config_loader=loader)
    try:
        parsed = parser.parse_overrides([*sweeper._parse_config(), *arguments])
        batches = sweeper.split_arguments(parsed, sweeper.max_batch_size)
    except Exception as e:  # noqa: BLE001 - Hydra's parser errors: one line, exit 2
        _exit(tool, f"cannot read the sweep's overrides: {_one_line(e)}", EXIT_INVALID)
    sweeper.overrides = batches  # BasicSweeper's own bookkeeping stays consistent
    jobs = [Job(num=i, overrides=[str(o) for o in overrides])
            for i, overrides in enumerate(o for batch in batches for o in batch)]
    shown = swept_keys(jobs)

    if bool(OmegaConf.select(config, "sweep.validate", default=True)):
        invalid = validate_jobs(config, loader, jobs, task_of(config))
        if invalid:
            for job, message in invalid:
                print(f"{tool}: {job.describe(shown)}: {message}", file=sys.stderr)
            _exit(tool, f"{len(invalid)} of {len(jobs)} jobs are invalid (listed above); nothing was launched. Fix "
                  "them, or launch anyway with sweep.validate=false (the invalid jobs then fail on their own)",
                  EXIT_INVALID)
        log.info("validated the configs of %d jobs", len(jobs))

    sweep_dir = Path(str(config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(config, sweep_dir / "multirun.yaml")

    returns: list[Sequence[Any]] = []
    failures: list[tuple[Job, str]] = []
    start = 0
    for batch in batches:
        batch_jobs = jobs[start:start + len(batch)]
        try:
            sweeper.validate_batch_is_legal(batch)
        except Exception as e:  # noqa: BLE001 - composition errors (with sweep.validate=false): one line
            _exit(tool, f"{batch_jobs[0].describe(shown)}: {_one_line(e)}", EXIT_INVALID)
        try:
            results = list(sweeper.launcher.launch(batch, initial_job_idx=start))
        except Exception as e:  # noqa: BLE001 - e.g. submitit: a job lost after its requeues
            print(f"{tool}: the launcher stopped waiting for this batch: {_clip(_one_line(e))}", file=sys.stderr)
            results = []
            for job in batch_jobs:  # those without a result file now: killed, lost, or (submitit) still running
                job.folder = job_folder(config, loader, job)
                if not _has_result(job.folder):
                    failures.append((job, "no result when the launcher stopped waiting: the job was killed, lost "
                                          "after its requeues, or is still running (its log says which)"))
        else:
            for job, result in zip(batch_jobs, results):
                problem = job_failure(result)
                if problem is not None:
                    job.folder = _result_folder(result) or job_folder(config, loader, job)
                    failures.append((job, record_failure(job.folder, problem, tool)))
        returns.append(results)
        start += len(batch)

    if failures:
        for job, message in failures:
            print(f"{tool}: {job.describe(shown)} failed: {message} (run folder {_log_hint(job.folder)})",
                  file=sys.stderr)
        done = len(jobs) - len(failures)
        _exit(tool, f"{len(failures)} of {len(jobs)} jobs failed, {done} completed; `kdyn-report {sweep_dir}` lists "
              "them all", EXIT_FAILED)
    return returns


def _exit(tool: str, message: str, status: int) -> None:
    print(f"{tool}: error: {message}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    raise SystemExit(status)


# ---------------------------------------------------------------------------------- validation
def validate_jobs(config: DictConfig, loader: Any, jobs: Sequence[Job], task: str) -> list[tuple[Job, str]]:
    """``(job, one-line reason)`` for every job whose config fails the single-run checks."""
    invalid = []
    for job in jobs:
        try:
            job_cfg = compose_job(config, loader, job)
            job.folder = _folder_of(job_cfg)
            check_job(job_cfg, task, job.folder)
        except KdynError as e:
            invalid.append((job, _one_line(e)))
        except Exception as e:  # noqa: BLE001 - Hydra composition / OmegaConf errors are bad input too
            invalid.append((job, _composition_line(e, job)))
    return invalid


def _composition_line(error: Exception, job: Job) -> str:
    """A job's composition error in the words a single run uses (a schema's refusal names the key)."""
    from kdyn.schemas import compose_error

    return compose_error(error) or _one_line(error)


def compose_job(config: DictConfig, loader: Any, job: Job) -> DictConfig:
    """The job's config as the launcher composes it (``load_sweep_config`` + its job number)."""
    job_cfg = loader.load_sweep_config(config, list(job.overrides))
    with open_dict(job_cfg):
        job_cfg.hydra.job.id = job.num
        job_cfg.hydra.job.num = job.num
    return job_cfg


def check_job(job_cfg: DictConfig, task: str, folder: Path | None = None) -> None:
    """The checks a single run of ``task`` makes before training or measuring, without loading a model.

    Raises :class:`KdynError` (one line) on the first problem.
    """
    cfg = _task_config(job_cfg, folder)
    try:
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except Exception as e:  # noqa: BLE001 - a missing value (???) or an interpolation that cannot resolve
        raise KdynError(f"the config does not resolve: {_one_line(e)}") from None
    from kdyn.validation import validate_config

    validate_config(cfg, task)
    if isinstance(cfg.get("model"), DictConfig):
        from kdyn.config import to_plain
        from kdyn.models.checkpoints import resolve_checkpoint

        if cfg.model.get("family") != "scratch":
            resolve_checkpoint(to_plain(cfg.model))
    if task == "train" and isinstance(cfg.get("intervention"), DictConfig):
        from kdyn.config import to_plain
        from kdyn.interventions import build_intervention

        build_intervention(to_plain(cfg.intervention)).check()


def _task_config(job_cfg: DictConfig, folder: Path | None) -> DictConfig:
    """The job's task config without the ``hydra`` node, its output folder filled in (never created)."""
    cfg = OmegaConf.masked_copy(job_cfg, [k for k in job_cfg.keys() if k != "hydra"])
    with open_dict(cfg):
        if isinstance(cfg.get("paths"), DictConfig):
            cfg.paths.output_dir = str(folder) if folder is not None else "."
    return cfg


def _folder_of(job_cfg: DictConfig) -> Path | None:
    try:
        return Path(str(job_cfg.hydra.sweep.dir)) / str(job_cfg.hydra.sweep.subdir)
    except Exception:  # noqa: BLE001 - only used to name the folder in messages
        return None


def job_folder(config: DictConfig, loader: Any, job: Job) -> Path | None:
    """Where the launcher puts ``job`` (``hydra.sweep.dir/hydra.sweep.subdir``)."""
    if job.folder is not None:
        return job.folder
    try:
        return _folder_of(compose_job(config, loader, job))
    except Exception:  # noqa: BLE001
        return None


# ------------------------------------------------------------------------------------ failures
def job_failure(result: Any) -> str | None:
    """Why a launched job did not complete (one line), or None when it completed."""
    from hydra.core.utils import JobStatus

    status = getattr(result, "status", None)
    value = getattr(result, "_return_value", None)
    if status == JobStatus.COMPLETED:
        if isinstance(value, dict) and value.get("status") not in (None, "completed"):
            return f"{value['status']} (rerun the sweep to resume it)"
        return None
    if isinstance(value, BaseException):
        return _one_line(value) if isinstance(value, KdynError) else f"{type(value).__name__}: {_one_line(value)}"
    return f"job status {getattr(status, 'name', status)}"


def record_failure(folder: Path | None, problem: str, tool: str) -> str:
    """The failure's message: the job's own ``error.json`` when it wrote one, else ``problem`` (then
    written to ``error.json`` so reports list the job as failed)."""
    import json

    if folder is None:
        return problem
    path = folder / ERROR_FILE
    if path.is_file():
        try:
            return str(json.loads(path.read_text()).get("error") or problem)
        except (OSError, ValueError):
            return problem
    results = [folder / name for name in ("results.json", "entropy.json", "layer_stats.json")]
    if folder.is_dir() and not any(p.is_file() for p in results):
        from kdyn.utils.io import atomic_write_json

        atomic_write_json(path, {"status": "failed", "error": problem, "tool": tool})
    return problem


def _result_folder(result: Any) -> Path | None:
    try:
        return Path(str(result.hydra_cfg.hydra.runtime.output_dir))
    except Exception:  # noqa: BLE001
        return None


def _has_result(folder: Path | None) -> bool:
    if folder is None:
        return False
    return any((folder / name).is_file() for name in ("results.json", "entropy.json", "layer_stats.json"))


def _log_hint(folder: Path | None) -> str:
    if folder is None:
        return "unknown"
    logs = sorted(p.name for p in folder.glob("*.log")) if folder.is_dir() else []
    return f"{folder}, log {logs[0]}" if logs else str(folder)


# -------------------------------------------------------------------------------------- naming
def tool_name(config: DictConfig) -> str:
    return f"kdyn-{task_of(config)}"


def task_of(config: DictConfig) -> str:
    """The entry point of a sweep: the file ``@hydra.main`` is in (``hydra.job.name``), else the config's nodes."""
    name = str(OmegaConf.select(config, "hydra.job.name", default="") or "")
    if name in TASKS:
        return name
    for task, node in (("entropy", "entropy"), ("trace", "trace"), ("eval", "probes")):
        if node in config:
            return task
    return "train"


def swept_keys(jobs: Sequence[Job]) -> set[str] | None:
    """Keys whose value differs between jobs (None: show every override, e.g. for a single job)."""
    if len(jobs) < 2:
        return None
    values: dict[str, set[str]] = {}
    for job in jobs:
        for override in job.overrides:
            values.setdefault(_key(override), set()).add(override)
    keys = {k for k, v in values.items() if len(v) > 1}
    return keys or None


def _key(override: str) -> str:
    return override.split("=", 1)[0]


def _clip(text: str, width: int = 240) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _one_line(e: BaseException | str) -> str:
    text = " ".join(str(e).split())
    return text or type(e).__name__
