"""Pieces of a training run built from config: callbacks, loggers, the Trainer, the summary table."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from kdyn.errors import KdynError

log = logging.getLogger("kdyn.run")


def build_callbacks(cfg: DictConfig, loaded: Any = None) -> list[pl.Callback]:
    """Instantiate every enabled node of ``cfg.callbacks`` (a dict of named ``_target_`` nodes).

    A node is skipped when it is null or has ``enabled: false``; ``enabled`` is not passed on.
    """
    callbacks = []
    for name, node in (cfg.get("callbacks") or {}).items():
        if node is None or not node.get("enabled", True):
            continue
        if "_target_" not in node:
            raise KdynError(f"callbacks.{name} has no _target_ (the callback class to build)")
        params = OmegaConf.to_container(node, resolve=True)
        params.pop("enabled", None)
        try:
            callbacks.append(instantiate(params, _convert_="all"))
        except Exception as e:  # instantiate wraps constructor errors; unwrap ours
            raise _unwrap(e, f"callbacks.{name}") from None
    return callbacks


def build_loggers(cfg: DictConfig, groups: Mapping[str, str | None]) -> list[Any]:
    """Instantiate ``cfg.logger`` nodes; W&B runs are named, grouped and tagged from the chosen groups."""
    loggers = []
    for name, node in (cfg.get("logger") or {}).items():
        if node is None:
            continue
        params = OmegaConf.to_container(node, resolve=True)
        if str(params.get("_target_", "")).endswith("WandbLogger"):
            _fill_wandb(params, cfg, groups)
        try:
            loggers.append(instantiate(params, _convert_="all"))
        except Exception as e:
            raise _unwrap(e, f"logger.{name}") from None
    return loggers


def run_name(cfg: DictConfig, groups: Mapping[str, str | None]) -> str:
    model = groups.get("model") or "model"
    step = OmegaConf.select(cfg, "model.step")
    parts = [f"{model}@{step}" if step is not None else model, groups.get("corpus"), groups.get("intervention")]
    if groups.get("experiment"):
        parts.insert(0, groups["experiment"])
    return "-".join(str(p) for p in parts if p)


def _fill_wandb(params: dict, cfg: DictConfig, groups: Mapping[str, str | None]) -> None:
    params["name"] = params.get("name") or run_name(cfg, groups)
    tags = list(params.get("tags") or [])
    for key in ("model", "corpus", "intervention", "experiment"):
        if groups.get(key):
            tags.append(f"{key}:{groups[key]}")
    step = OmegaConf.select(cfg, "model.step")
    if step is not None:
        tags.append(f"step:{step}")
    params["tags"] = tags
    if params.get("mode") is None:
        params["mode"] = os.environ.get("WANDB_MODE", "offline")
    params.pop("offline", None)
    params["group"] = params.get("group") or _sweep_name()
    params["id"] = params.get("id") or _persistent_wandb_id(Path(cfg.paths.output_dir))
    params.setdefault("resume", "allow")  # a resumed run continues its W&B run


def _sweep_name() -> str | None:
    """The multirun folder's name, so a sweep's runs form one W&B group."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            return Path(str(HydraConfig.get().sweep.dir)).name
    except Exception:  # noqa: BLE001 - outside Hydra there is no sweep
        pass
    return None


def _persistent_wandb_id(out: Path) -> str:
    """The run folder's W&B id (created once), so every attempt of a run logs to the same W&B run."""
    import secrets

    path = out / "wandb_id.txt"
    if path.is_file():
        return path.read_text().strip()
    out.mkdir(parents=True, exist_ok=True)
    run_id = secrets.token_hex(4)
    path.write_text(run_id + "\n")
    return run_id


def finish_loggers(loggers: list[Any]) -> None:
    """Close W&B runs so sequential multirun jobs never share one."""
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger":
            try:
                import wandb

                if wandb.run is not None:
                    wandb.finish()
            except Exception as e:  # noqa: BLE001 - closing must never hide the run's own error
                log.warning("could not close the W&B run: %s", e)


def build_trainer(cfg: DictConfig, callbacks: list[pl.Callback], loggers: list[Any], model: Any = None) -> pl.Trainer:
    params = OmegaConf.to_container(cfg.trainer, resolve=True)
    params.setdefault("_target_", "lightning.pytorch.Trainer")
    if isinstance(params.get("strategy"), dict):
        params["strategy"] = build_strategy(params["strategy"], model)
    try:
        return instantiate(
            params,
            plugins=_with_atomic_checkpoints(params.pop("plugins", None)),
            callbacks=callbacks,
            logger=loggers or False,
            default_root_dir=str(cfg.paths.output_dir),
            use_distributed_sampler=False,  # the training stream slices batches per rank itself
            enable_checkpointing=any(isinstance(c, pl.callbacks.ModelCheckpoint) for c in callbacks),
            _convert_="all",
        )
    except Exception as e:
        raise _unwrap(e, "trainer") from None


def _with_atomic_checkpoints(plugins: Any) -> list[Any]:
    """The configured Trainer plugins (built), plus atomic checkpoint writes unless one sets its own CheckpointIO."""
    from kdyn.utils.atomic_checkpoint import AtomicCheckpointIO

    plugins = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
    plugins = [instantiate(p) if isinstance(p, dict) and "_target_" in p else p for p in plugins]
    if any("CheckpointIO" in type(p).__name__ for p in plugins):
        return plugins
    return [*plugins, AtomicCheckpointIO()]


def build_strategy(params: dict, model: Any) -> Any:
    """Instantiate a strategy node; ``transformer_blocks`` wrap/checkpoint policies become the model's
    decoder-layer classes (from its ``_no_split_modules``), so FSDP shards block by block."""
    from hydra.utils import get_class

    params = dict(params)
    target = params.pop("_target_")
    for key in ("auto_wrap_policy", "activation_checkpointing_policy"):
        if params.get(key) == "transformer_blocks":
            params[key] = _block_classes(model)
    try:
        return get_class(target)(**params)
    except Exception as e:
        raise _unwrap(e, "trainer.strategy") from None


def _block_classes(model: Any) -> set[type]:
    names = set(getattr(model, "_no_split_modules", None) or [])
    classes = {type(m) for m in (model.modules() if model is not None else []) if type(m).__name__ in names}
    if not classes:
        raise KdynError("cannot find the model's transformer-block class for FSDP wrapping (no _no_split_modules); "
                        "set trainer.strategy.auto_wrap_policy to a set of module classes in Python")
    return classes


# Keys that may differ between the attempts of one run without changing what it computes.
_VOLATILE = ("paths", "hydra", "run_id", "sweep_id", "skip_completed", "resume", "threads", "logger", "sweep",
             "trainer.enable_progress_bar", "callbacks.progress", "callbacks.checkpoint.every_n_train_steps",
             "data.store")  # the store serves the same rows as in-memory packing, wherever it lives
RUN_CONFIG = "run_config.json"
# Keys that name the object a node chooses, added to the shipped configs (issue 13) after some runs were
# recorded: absent from an older run's record, they are no change (its objects were the same).
ADDED_SELECTOR_KEYS = ("_target_", "_partial_", "resolver", "reader")
SHOWN_CHANGES = 8


def comparable_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config minus keys that do not change the computation, flattened to dotted keys."""
    plain = {k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k]
             for k in cfg if k != "hydra"}
    flat: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if any(prefix == v or prefix.startswith(v + ".") for v in _VOLATILE):
            return
        if isinstance(node, dict):
            for key, value in node.items():
                walk(f"{prefix}.{key}" if prefix else str(key), value)
        else:
            flat[prefix] = node

    walk("", plain)
    return flat


def resume_path(cfg: DictConfig) -> str | None:
    """``checkpoints/last.ckpt`` of this run folder, when a previous attempt of the SAME config left one.

    A checkpoint written under a different configuration is never resumed silently: the error names
    the keys that differ.
    """
    folder = Path(cfg.paths.output_dir) / "checkpoints"
    last = folder / "last.ckpt"
    if not last.is_file() or not cfg.get("resume", True):
        return None
    recorded = folder / RUN_CONFIG
    if recorded.is_file():
        import json

        before = json.loads(recorded.read_text())
        now = json.loads(json.dumps(comparable_config(cfg), default=str))
        changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k)
                         and not (k not in before and k.rsplit(".", 1)[-1] in ADDED_SELECTOR_KEYS))
        if changed:
            shown = ", ".join(f"{k}: {before.get(k)!r} → {now.get(k)!r}" for k in changed[:SHOWN_CHANGES])
            raise KdynError(f"{cfg.paths.output_dir} holds a checkpoint of a different configuration ({shown}"
                            f"{' …' if len(changed) > SHOWN_CHANGES else ''}); use another run_id / run folder, or resume=false "
                            "to start over in this folder")
    return str(last)


def record_config(cfg: DictConfig) -> None:
    """Write the comparable config next to the checkpoints (checked when the run is resumed)."""
    from kdyn.utils.io import atomic_write_json

    atomic_write_json(Path(cfg.paths.output_dir) / "checkpoints" / RUN_CONFIG, comparable_config(cfg))


def print_summary(tool: str, results: Mapping[str, Any], extra_rows: list[tuple[str, str]] = ()) -> None:
    model = results.get("model", {})
    groups = results.get("groups", {})
    rows = [
        ("model", f"{model.get('name')} (step {model.get('step')})" if model.get("step") is not None else model.get("name")),
        ("corpus", groups.get("corpus")),
        ("intervention", groups.get("intervention")),
        ("steps", results.get("steps")),
        ("tokens seen", f"{results.get('tokens_seen', 0):,}"),
        ("final loss", _loss_text(results)),
        ("wall time", f"{results.get('wall_time_s', 0):.1f} s ({results.get('tokens_per_s', 0):,.0f} tokens/s in training)"),
    ]
    rows += list(extra_rows)
    width = max(len(str(k)) for k, _ in rows)
    lines = [f"{tool} {results.get('status', 'finished')}: {results.get('output_dir')}"]
    lines += [f"  {str(k).ljust(width)}  {v}" for k, v in rows if v is not None]
    print("\n".join(lines), flush=True)


def _loss_text(results: Mapping[str, Any]) -> str | None:
    if results.get("final_loss") is None:
        return None
    text = f"{results['final_loss']:.4f}"
    if results.get("final_loss_mean10") is not None:
        text += f" (mean of last 10 steps {results['final_loss_mean10']:.4f}; first step {results['first_loss']:.4f})"
    return text


def _unwrap(error: Exception, where: str) -> Exception:
    """Hydra's instantiate wraps constructor errors; surface a KdynError or a one-line message."""
    cause = error
    while cause.__cause__ is not None:
        cause = cause.__cause__
    if isinstance(cause, KdynError):
        return cause
    message = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    return KdynError(f"cannot build {where}: {message}")
