"""Rescale selected memory coefficients during training (``intervention=rescale``; any architecture).

A forward **pre**-hook on each FFN down projection multiplies its input — the memory coefficients
``[B, T, d_ff]`` (`kdyn.models.ffn`) — by a per-slot vector: ``factor`` on the selected slots, exactly
1 elsewhere. Unlike resuscitation's weight edit this works for GELU MLPs too (Pythia, GPT-2), and it
scales the coefficient itself, so the gradients flowing into the up/gate (or ``W_in``) rows of the
selected slots are scaled alike.

Hook order: the scaling hook is registered with ``prepend=True``, ahead of every other pre-hook on
the module, so hooks registered by other callbacks — the knowledge-entropy recorder — see the
*effective* (scaled) coefficients the layer actually uses. This callback's own recorder (for
``recompute=every_n_steps``) is prepended after it and so runs *before* it: re-selection uses the
model's *raw* coefficients, otherwise boosted slots would look active and leave the selection at the
next re-selection only to re-enter at the one after.

Modes: the hooks scale in training mode; in eval mode (probe scoring, held-out entropy, which run in
``model.eval()``) only with ``at_eval=True``. ``anneal=True`` uses
``f(s) = factor + (1 − factor) · s / max_steps`` at ``s = trainer.global_step`` updates done, so the
batch of update s+1 trains with f(s), and the model at step ``max_steps`` (the end) has f = 1.

Selection: the initial one is given (`kdyn.interventions.rescale` makes it before training); with
``recompute=every_n_steps`` it is redone every ``every_n_steps`` optimizer steps from C̄ of the
training micro-batches since the last selection (armed per micro-batch and disarmed before backward,
like the entropy logger; all-reduced over DDP ranks before selecting). Each selection is written to
``rescale_selection.json`` (step, source, per-layer counts, thresholds and slot indices) and the
current one is saved in the Lightning checkpoint, so a resumed run continues with it (the partial
accumulation since the last selection is not saved: it restarts at the resume).

Logged every optimizer step: ``rescale/factor`` and ``rescale/selected`` (slots, all layers).
Hooks are removed in ``teardown`` and, since Lightning 2.x runs callbacks' ``teardown`` only after a
clean fit, also in ``on_exception``: a failed run never leaves the model scaled.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from kdyn.callbacks.cadence import OncePerStep
from kdyn.callbacks.log_utils import log_scalars
from kdyn.errors import KdynError
from kdyn.metrics.recorder import CoefficientRecorder
from kdyn.metrics.slots import select_slots
from kdyn.models.ffn import FFNMap
from kdyn.utils.io import atomic_write_text

SELECTION_FILE = "rescale_selection.json"
RECOMPUTE = ("start", "every_n_steps")


def annealed_factor(factor: float, step: int, max_steps: int) -> float:
    """``factor`` linearly annealed to 1: f(0) = factor, f(max_steps) = 1 (constant afterwards)."""
    if max_steps <= 0:
        return float(factor)
    progress = min(max(step, 0) / max_steps, 1.0)
    return float(factor) + (1.0 - float(factor)) * progress


class _RawRecorder(CoefficientRecorder):
    """A recorder whose hooks run before every hook already on the module (the raw coefficients)."""

    prepend = True


class RescaleCoefficients(OncePerStep):
    """Multiply the selected memory coefficients of every layer by ``factor`` (see the module docstring)."""

    def __init__(self, ffn: FFNMap, masks: Sequence[torch.Tensor], *, factor: float = 2.0, select: str = "quantile",
                 q: float | None = 0.5, k: int | None = None, recompute: str = "start", every_n_steps: int = 100,
                 at_eval: bool = False, anneal: bool = False, dirpath: str | Path | None = None,
                 source: str = "initial", thresholds: Sequence[float | None] | None = None):
        if recompute not in RECOMPUTE:
            raise KdynError(f"intervention.recompute must be one of {', '.join(RECOMPUTE)}, got {recompute!r}")
        if int(every_n_steps) < 1:
            raise KdynError(f"intervention.every_n_steps must be at least 1, got {every_n_steps}")
        self.ffn = ffn
        self.factor, self.select, self.q, self.k = float(factor), select, q, k
        self.recompute, self.every_n_steps = recompute, int(every_n_steps)
        self.at_eval, self.anneal = bool(at_eval), bool(anneal)
        self.dirpath = Path(dirpath) if dirpath is not None else None
        self.step = 0  # updates done; follows trainer.global_step during fit
        self.max_steps = 0  # for annealing; set from the trainer at fit start
        self.masks: list[torch.Tensor] = []
        self.history: list[dict[str, Any]] = []
        self.recorder: _RawRecorder | None = None
        self._handles: list = []
        self._cache: list[tuple[float, torch.Tensor] | None] = []
        self._trainer: pl.Trainer | None = None
        self.set_selection(masks, step=0, source=source, thresholds=thresholds)

    # ------------------------------------------------------------------------------ selection
    def set_selection(self, masks: Sequence[torch.Tensor], step: int, source: str,
                      thresholds: Sequence[float | None] | None = None) -> dict[str, Any]:
        """Use ``masks`` (one bool ``[d_ff]`` per layer) from now on; returns the history entry."""
        masks = [torch.as_tensor(m, dtype=torch.bool).detach().cpu().reshape(-1) for m in masks]
        if tuple(m.numel() for m in masks) != self.ffn.d_ff:
            raise KdynError(f"rescale selection has widths {[m.numel() for m in masks]} but the model's FFN layers "
                            f"have {list(self.ffn.d_ff)}")
        self.masks = masks
        self._cache = [None] * len(masks)
        thresholds = list(thresholds) if thresholds is not None else [None] * len(masks)
        entry = {"step": int(step), "source": source, "selected": self.selected(),
                 "layers": [{"layer": i, "selected": int(m.sum()), "threshold": t,
                             "indices": m.nonzero(as_tuple=True)[0].tolist()}
                            for i, (m, t) in enumerate(zip(masks, thresholds))]}
        self.history.append(entry)
        return entry

    def selected(self) -> int:
        return int(sum(int(m.sum()) for m in self.masks))

    def current_factor(self) -> float:
        step = self._trainer.global_step if self._trainer is not None else self.step
        return annealed_factor(self.factor, step, self.max_steps) if self.anneal else self.factor

    # ------------------------------------------------------------------------------ hooks
    def attach(self) -> RescaleCoefficients:
        """Register the scaling pre-hooks (prepended: every other hook sees the scaled coefficients)."""
        if not self._handles:
            self._handles = self.ffn.hook_coefficients(self._hook, prepend=True)
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self.recorder is not None:
            self.recorder.detach()
            self.recorder = None

    def _scale(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        factor = self.current_factor()
        cached = self._cache[layer]
        if cached is None or cached[0] != factor or cached[1].device != x.device or cached[1].dtype != x.dtype:
            # A normal tensor even inside inference_mode (probe scoring): a cached inference tensor could
            # not be saved for backward by a later training forward.
            with torch.inference_mode(False), torch.no_grad():
                mask = self.masks[layer].to(x.device)
                scale = torch.ones(mask.shape, dtype=x.dtype, device=x.device).masked_fill(mask, factor)
            self._cache[layer] = cached = (factor, scale)
        return cached[1]

    def _hook(self, layer: int):
        def hook(module: torch.nn.Module, args: tuple) -> tuple | None:
            if not (module.training or self.at_eval) or not bool(self.masks[layer].any()):
                return None
            x = args[0]
            return (x * self._scale(layer, x), *args[1:])

        return hook

    # ------------------------------------------------------------------------------ lifecycle
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer
        self.attach()
        if self.recompute == "every_n_steps":
            self.recorder = _RawRecorder(self.ffn).attach()  # prepended after the scaling hook: runs before it
            self.recorder.armed = False

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.detach()
        self._trainer = None

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        # Lightning 2.x runs callbacks' teardown only after a clean fit: remove the hooks here too.
        self.teardown(trainer, pl_module, "fit")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.max_steps = int(trainer.max_steps) if trainer.max_steps and trainer.max_steps > 0 \
            else int(trainer.estimated_stepping_batches)
        self.step = self.start_steps(trainer)
        if self.recorder is not None:
            self.recorder.metric.to(pl_module.device)
            self.recorder.reset()
        if trainer.is_global_zero:
            self._resume_history(trainer.global_step)
            self._write()
        self._log(trainer)

    def on_train_batch_start(self, trainer, pl_module, batch: Any, batch_idx: int) -> None:
        if self.recorder is not None:
            self.recorder.set_mask(batch.get("attention_mask") if isinstance(batch, Mapping) else None)
            self.recorder.armed = True

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        if self.recorder is not None:
            self.recorder.armed = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.recorder is not None:
            self.recorder.armed = False
        if not self.new_step(trainer):  # mid gradient accumulation
            return
        step = self.step = trainer.global_step
        if self.recorder is not None and step % self.every_n_steps == 0:
            self._reselect(trainer, step)
        self._log(trainer)

    # ------------------------------------------------------------------------------ helpers
    def _reselect(self, trainer: pl.Trainer, step: int) -> None:
        metric = self.recorder.metric
        with metric.sync_context():  # under DDP: sums and token counts of every rank
            table = [c.detach().double().cpu() for c in metric.mean_coefficients()]
        chosen = [select_slots(row, self.select, q=self.q, k=self.k) for row in table]
        since = self.history[-1]["step"] if self.history else 0
        self.set_selection([m for m, _ in chosen], step=step, thresholds=[t for _, t in chosen],
                           source=f"training batches of updates {since + 1}-{step}")
        self.recorder.reset()
        if trainer.is_global_zero:
            self._write()

    def _log(self, trainer: pl.Trainer) -> None:
        log_scalars(trainer, {"rescale/factor": self.current_factor(), "rescale/selected": self.selected()},
                    step=trainer.global_step)

    def _write(self) -> None:
        if self.dirpath is not None:
            atomic_write_text(self.dirpath / SELECTION_FILE, json.dumps({"selections": self.history}) + "\n")

    def _resume_history(self, step: int) -> None:
        """On resume, keep the selections the interrupted run wrote up to ``step``, then the current one."""
        path = self.dirpath / SELECTION_FILE if self.dirpath is not None else None
        if step == 0 or path is None or not path.is_file():
            return
        try:
            earlier = [e for e in json.loads(path.read_text())["selections"] if int(e["step"]) <= step]
        except (ValueError, KeyError, TypeError):
            return
        current = self.history[-1]
        if earlier and earlier[-1]["step"] == current["step"]:
            earlier = earlier[:-1]
        self.history = [*earlier, current]

    # ------------------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        last = self.history[-1] if self.history else {"step": 0, "source": "initial"}
        return {"masks": [m.clone() for m in self.masks], "step": int(last["step"]), "source": str(last["source"]),
                "thresholds": [layer.get("threshold") for layer in last.get("layers", [])]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("masks"):
            self.history = []
            self.set_selection(state_dict["masks"], step=int(state_dict.get("step", 0)),
                               source=str(state_dict.get("source", "checkpoint")),
                               thresholds=state_dict.get("thresholds") or None)
