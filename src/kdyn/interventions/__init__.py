"""Interventions (``intervention=`` config group): what is done to the model before/while it trains.

Every intervention is a small class named by the ``_target_`` of its ``conf/intervention/<name>.yaml``
(one module + one YAML file, no registry to edit; ``name`` is what ``intervention.json`` records; a
node without ``_target_``, e.g. an older saved config, falls back to the built-in class of that
``name``). ``kdyn-train`` builds the chosen one from the ``intervention`` node and calls, in this order:

0. ``check()`` — the parameters alone, no model (also run for every job before a sweep starts).
1. ``apply(ctx)`` — after the model is loaded and *before* the optimizer is built: edit weights
   (resuscitate), freeze parameters with ``requires_grad_(False)`` (localize, freeze), or set
   per-parameter learning-rate multipliers on ``ctx.module.lr_multipliers`` (localize_alr). It
   returns a JSON-serialisable record of what it did, written to ``intervention.json`` in the run
   folder and into ``results.json["intervention"]``.
2. ``callbacks()`` — Lightning callbacks the intervention needs during training (rescale).

Interventions never look up architecture names themselves: `kdyn.models.ffn` does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from torch import nn

from kdyn.errors import KdynError


@dataclass
class InterventionContext:
    """What an intervention may use."""

    model: nn.Module  # the HF causal LM (also ctx.module.model)
    tokenizer: Any
    module: Any  # kdyn.module.CausalLMModule (lr_multipliers lives here)
    ffn: Any  # kdyn.models.ffn.FFNMap
    output_dir: Path
    cfg: Any = None  # the full composed config (DictConfig), for reading other nodes
    extra: dict[str, Any] = field(default_factory=dict)


class Intervention:
    """Base class: does nothing."""

    name = "none"

    def __init__(self, **params: Any):
        self.params = params

    def check(self) -> None:
        """Refuse missing or unusable parameters (one-line :class:`KdynError`) without a model: called by
        ``apply`` and before a sweep launches any job (`kdyn.sweep`)."""

    def apply(self, ctx: InterventionContext) -> dict[str, Any]:
        return {"name": self.name}

    def callbacks(self) -> list[pl.Callback]:
        return []


# Fallback for nodes without ``_target_`` only: built-in name -> class.
_REGISTRY: dict[str, Callable[..., Intervention]] = {"none": Intervention}


def register(name: str):
    def wrap(cls):
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def build_intervention(node: Mapping[str, Any] | None) -> Intervention:
    """The intervention described by an ``intervention`` config node: ``_target_`` (the class, any
    importable :class:`Intervention` subclass: every shipped YAML names one) or, without it, ``name``
    (a built-in one), plus its parameters."""
    params = dict(node or {"name": "none"})
    if params.get("_target_") is not None:
        return _from_target(params)
    _load_builtin()
    name = params.pop("name", "none")
    if name not in _REGISTRY:
        raise KdynError(f"unknown intervention {name!r}; choose one of {', '.join(sorted(_REGISTRY))}")
    try:
        return _REGISTRY[name](**params)
    except TypeError as e:
        raise KdynError(f"intervention={name}: {e}") from None


def apply_intervention(cfg: Any, loaded: Any, module: Any, out: Path) -> tuple[Intervention, dict[str, Any]]:
    """Build the intervention of ``cfg.intervention`` and apply it to ``loaded.model`` before the optimizer
    exists; returns it and its record (``intervention.json``, ``results.json["intervention"]``)."""
    from kdyn.config import to_plain
    from kdyn.models.ffn import locate_ffn

    intervention = build_intervention(to_plain(cfg.intervention))
    if intervention.name == "none":
        return intervention, {"name": "none"}
    ffn = locate_ffn(loaded.model, to_plain(cfg.model.get("ffn")))
    ctx = InterventionContext(model=loaded.model, tokenizer=loaded.tokenizer, module=module, ffn=ffn, output_dir=out,
                              cfg=cfg)
    return intervention, {"name": intervention.name, **intervention.apply(ctx)}


def _from_target(params: dict[str, Any]) -> Intervention:
    from hydra.utils import get_class

    target = str(params.pop("_target_"))
    name = params.pop("name", None)
    try:
        cls = get_class(target)
    except Exception as e:  # noqa: BLE001 - a wrong path or a module that fails to import
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise KdynError(f"intervention._target_={target} cannot be imported ({reason}); give the class's full "
                        "import path, e.g. my_package.my_module.MyIntervention, on the PYTHONPATH") from None
    if not (isinstance(cls, type) and issubclass(cls, Intervention)):
        raise KdynError(f"intervention._target_={target} is not a subclass of kdyn.interventions.Intervention")
    try:
        intervention = cls(**params)
    except TypeError as e:
        raise KdynError(f"intervention={name or target}: {e}") from None
    if name is not None:
        intervention.name = str(name)  # the config's name is the one recorded in intervention.json
    return intervention


def _load_builtin() -> None:
    import importlib

    for module in ("resuscitate", "rescale", "localize"):
        try:
            importlib.import_module(f"kdyn.interventions.{module}")
        except ModuleNotFoundError as e:
            if e.name != f"kdyn.interventions.{module}":
                raise
