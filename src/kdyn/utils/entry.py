"""Shared behaviour of the Hydra entry points: one clear error line, no half-written run folders."""

from __future__ import annotations

import logging
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from kdyn.errors import KdynError
from kdyn.utils.io import atomic_write_json
from kdyn.utils.run_folder import LOCK_FILE, OWNER_FILE, RunFolderBusy, RunFolderLock, is_global_rank_zero

log = logging.getLogger("kdyn")


class RunStarted:
    """Marks a run folder as holding real results (set once training/measuring begins)."""

    def __init__(self) -> None:
        self.started = False


def run_entry(tool: str, task: Callable[[DictConfig, RunStarted], Any], cfg: DictConfig,
              result_file: str = "results.json") -> Any:
    """Run ``task``; on bad input print ``<tool>: error: <message>`` and exit with status 2.

    If the error happened before the run produced anything, the run folder Hydra created is removed
    (single runs) or marked with ``error.json`` (multirun jobs, so reports can list the failure).
    """
    from kdyn.utils.quiet import quiet_third_party

    quiet_third_party()
    state = RunStarted()
    done = _completed(cfg, result_file)
    if done is not None:
        print(f"{tool}: skipping {done.parent} (skip_completed=true and its {result_file} is complete)", flush=True)
        import json

        return json.loads(done.read_text())
    try:
        with _hold_run_folder(cfg):
            return task(cfg, state)
    except Exception as e:
        multirun = _is_multirun()
        if not multirun and not isinstance(e, KdynError):
            raise  # a bug in a single run: the full traceback
        out = _output_dir()
        message = str(e) if isinstance(e, KdynError) else f"{type(e).__name__}: {' '.join(str(e).split())}"
        # a sweep goes on; its summary and kdyn-report list this job (a busy folder is another run's: left alone)
        if out is not None and multirun and not isinstance(e, RunFolderBusy):
            _log_to_file(f"{tool}: job failed: {message}", None if isinstance(e, KdynError) else e)
            atomic_write_json(out / "error.json", {"status": "failed", "error": message, "tool": tool})
        elif out is not None and not state.started and not isinstance(e, RunFolderBusy):
            _remove_if_fresh(out)
        print(f"{tool}: error: {message}", file=sys.stderr, flush=True)
        if multirun:
            raise
        sys.exit(2)


def _log_to_file(message: str, error: BaseException | None) -> None:
    """Write ``message`` (and the traceback of ``error``) to the job's log file only, not the console."""
    exc_info = (type(error), error, error.__traceback__) if error is not None else None
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, None, exc_info)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def _hold_run_folder(cfg: DictConfig):
    """The run folder's lock (global rank 0 only: the other ranks of a DDP job share rank 0's folder)."""
    import contextlib

    out = cfg.get("paths", {}).get("output_dir") if hasattr(cfg, "get") else None
    return RunFolderLock(str(out)) if out and is_global_rank_zero() else contextlib.nullcontext()


def _completed(cfg: DictConfig, result_file: str) -> Path | None:
    """The run's result file when ``skip_completed`` is set and the file reports a completed run."""
    import json

    if not cfg.get("skip_completed"):
        return None
    out = cfg.get("paths", {}).get("output_dir") if hasattr(cfg, "get") else None
    path = Path(str(out)) / result_file if out else None
    if path is None or not path.is_file():
        return None
    try:
        status = json.loads(path.read_text()).get("status", "completed")
    except (OSError, ValueError):
        return None
    return path if status == "completed" else None


def _output_dir() -> Path | None:
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else None
    except Exception:  # noqa: BLE001
        return None


def _is_multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:  # noqa: BLE001
        return False


def _remove_if_fresh(out: Path) -> None:
    """Delete a run folder that holds nothing but Hydra's own bookkeeping."""
    if not out.is_dir():
        return
    bookkeeping = {".hydra", LOCK_FILE, OWNER_FILE}
    extra = [p for p in out.iterdir() if p.name not in bookkeeping and p.suffix != ".log"]
    if not extra:
        logging.shutdown()
        shutil.rmtree(out, ignore_errors=True)
        parent = out.parent  # also the empty date folder of hydra.run.dir, at most two levels up
        for _ in range(2):
            if parent.name in ("", "outputs") or not parent.is_dir() or any(parent.iterdir()):
                break
            parent.rmdir()
            parent = parent.parent


def check_group_choices(tool: str, argv: list[str]) -> None:
    """Fail fast, in one line, when a command-line override names a config option that does not exist.

    Checks ``group=option`` (and sweeps ``group=a,b``) for kdyn's own config groups, so a typo such
    as ``model=pythia-13m`` prints the available options instead of Hydra's multi-line report.
    """
    from kdyn.config import CONF_DIR

    for arg in argv:
        if "=" not in arg or arg.startswith(("-", "+", "~", "hydra")):
            continue
        key, value = arg.split("=", 1)
        key = key.removeprefix("override ").strip()
        group_dir = CONF_DIR / key
        if "." in key or not group_dir.is_dir() or any(c in value for c in "()[]{}$*"):
            continue
        options = sorted(p.stem for p in group_dir.glob("*.yaml"))
        for choice in (v.strip() for v in value.split(",")):
            if choice and choice != "null" and choice not in options:
                print(f"{tool}: error: unknown {key} {choice!r}; available: {', '.join(options)}", file=sys.stderr)
                sys.exit(2)
    try:
        check_override_keys(tool, argv)
        check_override_values(tool, argv)
    except KdynError as e:
        print(f"{tool}: error: {e}", file=sys.stderr)
        sys.exit(2)


CONFIG_OF_TOOL = {"kdyn-train": "train", "kdyn-entropy": "entropy", "kdyn-eval": "eval", "kdyn-trace": "trace"}


def check_override_keys(tool: str, argv: list[str]) -> None:
    """Refuse ``a.b=value`` when the composed config has no key ``a.b``: one line listing the keys
    that exist there, instead of Hydra's report whose ``+a.b=value`` suggestion would add a key that
    nothing reads (``+`` on a checked node is refused by :func:`kdyn.validation.validate_config`).

    The config is composed once with the command line's group choices (``model=…``,
    ``experiment=…``), only when there is a plain dotted override to check — the config the command
    line names (``--config-dir sweeps --config-name seeds_resuscitation``, whose defaults may choose
    other options) when it names one.
    """
    from omegaconf import DictConfig, OmegaConf

    config_name = CONFIG_OF_TOOL.get(tool)
    source = _config_source(argv)
    if source is None:
        return  # --config-path (relative to a Python module): left to Hydra
    dotted, groups = [], []
    for arg in argv:
        if "=" not in arg or arg.startswith("-"):
            continue
        key, value = arg.split("=", 1)
        if key.startswith(("+", "~")) or key.startswith("hydra") or key.startswith("override "):
            if key.startswith(("+", "override ")) and "." not in key:
                groups.append(arg)
            continue
        if "." in key:
            dotted.append(key)
        elif "," not in value and not any(c in value for c in "()[]{}$*"):
            groups.append(arg)
        else:  # a group sweep: compose with its first option
            groups.append(f"{key}={value.split(',')[0].strip().removeprefix('choice(').strip()}")
    if config_name is None or not dotted:
        return
    from kdyn.config import compose_config

    try:
        base = compose_config(config_name, groups) if source == (None, None) else _compose_other(source, config_name, groups)
    except KdynError:
        return  # Hydra reports a bad group choice itself
    for key in dotted:
        if OmegaConf.select(base, key, default=_MISSING) is not _MISSING:
            continue
        parent_key, _, name = key.rpartition(".")
        parent = OmegaConf.select(base, parent_key, default=None)
        while parent is None and "." in parent_key:
            parent_key, _, name = parent_key.rpartition(".")
            parent = OmegaConf.select(base, parent_key, default=None)
        if not isinstance(parent, DictConfig):
            raise KdynError(f"unknown key {key}: {parent_key or key} is not a config node here; check the name")
        valid = ", ".join(str(k) for k in parent.keys())
        extra = (f"; an extra argument of {parent.get('_target_')} is passed with +{key}=…" if "_target_" in parent
                 else "")
        raise KdynError(f"unknown key {key} (a typo?); valid {parent_key} keys: {valid}{extra}")


_MISSING = object()


def _config_source(argv: list[str]) -> tuple[str | None, str | None] | None:
    """``(config_dir, config_name)`` given by ``--config-dir``/``--config-name`` (``None`` for those not
    given); ``None`` when ``--config-path`` names a folder relative to a module."""
    found: dict[str, str | None] = {"dir": None, "name": None}
    flags = {"-cd": "dir", "--config-dir": "dir", "-cn": "name", "--config-name": "name"}
    for i, arg in enumerate(argv):
        flag, _, value = arg.partition("=")
        if flag in ("-cp", "--config-path"):
            return None
        if flag in flags:
            found[flags[flag]] = value or (argv[i + 1] if i + 1 < len(argv) else None)
    return found["dir"], found["name"]


def _compose_other(source: tuple[str | None, str | None], config_name: str, overrides: list[str]) -> Any:
    """Compose the config a command line names with ``--config-dir``/``--config-name`` (kdyn's conf/ stays
    on the search path, as Hydra keeps the app's own config folder)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from kdyn.config import CONF_DIR

    config_dir, name = source
    folder = Path(config_dir).expanduser().resolve() if config_dir else CONF_DIR
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(folder), version_base="1.3"):
            return compose(name or config_name, overrides=[f"hydra.searchpath=[file://{CONF_DIR}]", *overrides])
    except Exception:  # noqa: BLE001 - a bad folder or option: Hydra's own report follows
        raise KdynError("cannot compose the named config") from None
    finally:
        GlobalHydra.instance().clear()
# Options after which the command line composes another config than the tool's, or sweeps: its values
# are then checked by Hydra and by the sweeper's pre-validation of every job.
_OTHER_COMPOSITION = ("-m", "--multirun", "-cn", "--config-name", "-cp", "--config-path", "-cd", "--config-dir",
                      "-sc", "--shell-completion")


def check_override_values(tool: str, argv: list[str]) -> None:
    """Compose the tool's config with the command line's overrides, so that a composition error is one
    line instead of Hydra's multi-line report: a value or key the typed schemas (:mod:`kdyn.schemas`)
    refuse (``data.batch_size=abc``, a typo in an experiment preset) names the key; any other is Hydra's
    text on one line. A multirun is checked job by job by the sweeper."""
    config_name = CONFIG_OF_TOOL.get(tool)
    flags = {a.split("=", 1)[0] for a in argv if a.startswith("-")}
    overrides = [a for a in argv if ("=" in a or a.startswith("~")) and not a.startswith(("-", "hydra", "+hydra", "~hydra"))]
    if config_name is None or not overrides or flags & set(_OTHER_COMPOSITION):
        return
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from kdyn.config import CONF_DIR, compose_error_line  # importing kdyn.config registers the schemas

    if GlobalHydra.instance().is_initialized():
        return
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            compose(config_name, overrides=overrides)
    except Exception as e:  # noqa: BLE001 - Hydra's composition errors (and OmegaConf's within them)
        raise KdynError(compose_error_line(e, config_name, overrides)) from None
