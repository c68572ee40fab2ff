"""The LightningModule: next-token training of any Hugging Face causal LM.

Read top to bottom: forward → loss (padding ignored, fp32 cross-entropy) → AdamW with decay/no-decay
groups (and optional per-parameter learning-rate multipliers, used by ``intervention=localize_alr``)
→ warmup + cosine/linear/constant schedule. The optimizer class is the ``optim`` node's ``_target_``
(``torch.optim.AdamW``, ``_partial_``: built here with the parameter groups); the LR schedule is
``optim.scheduler``: a node ``{_target_: <factory>, …}`` (a plain function below, or one of your
own) or the short spelling ``cosine``/``linear``/``constant`` (= ``{_target_: kdyn.module.<name>}``);
every default is the one in ``conf/train.yaml``. Frozen parameters (``requires_grad=False``) never reach
the optimizer, so no state, weight decay or momentum touches them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn

from kdyn.errors import KdynError

# The short spellings of optim.scheduler: each names the factory of that name in this module.
SCHEDULES = ("cosine", "linear", "constant")
# Keys of the optim node that shape the LR schedule (total_steps: the run length when there is no
# Trainer); the others are the optimizer's arguments.
SCHEDULE_KEYS = ("scheduler", "warmup_steps", "min_lr_ratio", "total_steps")


def optim_config(optim: Mapping[str, Any]) -> dict[str, Any]:
    """``optim`` over the defaults of ``conf/train.yaml``'s optim node (the one place they live). A node
    that names its optimizer (``_target_``, e.g. the composed config) keeps exactly its optimizer
    arguments and only takes missing schedule keys; a node without (a few keys given from Python)
    gets the whole default node under it."""
    from omegaconf import OmegaConf

    from kdyn.config import to_plain, yaml_node

    defaults = to_plain(yaml_node("train", "optim"))
    if "_target_" in optim:
        defaults = {k: v for k, v in defaults.items() if k in SCHEDULE_KEYS}
    return to_plain(OmegaConf.merge(defaults, dict(optim)))


def build_optimizer(optim: Mapping[str, Any], groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """The optimizer of ``optim._target_`` (``_partial_``: its keys but the schedule's become the
    class's keyword arguments, the parameter groups its first argument)."""
    from hydra.utils import instantiate

    if not optim.get("_partial_"):
        raise KdynError("optim._partial_ must be true: the module builds the optimizer with its parameter groups")
    spec = {k: v for k, v in optim.items() if k not in SCHEDULE_KEYS}
    try:
        return instantiate(spec, _convert_="all")(groups)
    except Exception as e:  # noqa: BLE001 - a wrong class path or an argument the class does not take
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise KdynError(f"optim._target_={spec.get('_target_')}: cannot build the optimizer ({reason}); "
                        "give a torch.optim class (default torch.optim.AdamW) and only keys it takes "
                        "(remove the others with ~optim.<key>)") from None


# ------------------------------------------------------------------------------ LR schedules
# A schedule is a plain factory: keyword arguments (the optim node's warmup_steps and min_lr_ratio, the
# run's total_steps, plus any key of its own optim.scheduler node) -> a function of the optimizer step
# returning the multiplier of the peak learning rate. The config names it by _target_; nothing to register.
def _with_warmup(after: Callable[[int], float], warmup_steps: int) -> Callable[[int], float]:
    """``after`` preceded by a linear warmup over ``warmup_steps`` steps (1/w, 2/w, …, 1)."""
    return lambda step: (step + 1) / warmup_steps if warmup_steps > 0 and step < warmup_steps else after(step)


def _progress(step: int, warmup_steps: int, total_steps: int) -> float:
    """Fraction of the decay done after ``step`` steps (0 at the end of warmup, 1 at ``total_steps``)."""
    decay_steps = max(1, total_steps - warmup_steps)
    return min(1.0, max(0.0, (step - warmup_steps) / decay_steps))


def constant(*, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> Callable[[int], float]:
    """Warmup, then the peak learning rate throughout."""
    return _with_warmup(lambda step: 1.0, warmup_steps)


def cosine(*, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> Callable[[int], float]:
    """Warmup, then a half cosine from the peak to ``lr × min_lr_ratio`` at ``total_steps``."""
    return _with_warmup(lambda step: min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (
        1.0 + math.cos(math.pi * _progress(step, warmup_steps, total_steps))), warmup_steps)


def linear(*, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> Callable[[int], float]:
    """Warmup, then a straight line from the peak to ``lr × min_lr_ratio`` at ``total_steps``."""
    return _with_warmup(lambda step: min_lr_ratio + (1.0 - min_lr_ratio) * (
        1.0 - _progress(step, warmup_steps, total_steps)), warmup_steps)


def schedule_node(scheduler: Any) -> dict[str, Any]:
    """``optim.scheduler`` as a ``_target_`` node: a short name ``cosine`` is ``{_target_:
    kdyn.module.cosine}``; a mapping must name its factory by ``_target_`` (its other keys are the
    factory's own keyword arguments)."""
    if isinstance(scheduler, str) and scheduler in SCHEDULES:
        return {"_target_": f"{__name__}.{scheduler}"}
    if isinstance(scheduler, Mapping) and isinstance(scheduler.get("_target_"), str):
        return {str(k): v for k, v in scheduler.items() if k != "_partial_"}
    raise KdynError(f"unknown optim.scheduler {scheduler!r}; choose one of {', '.join(SCHEDULES)} "
                    "or name a schedule factory: optim.scheduler={_target_:<module>.<function>}")


def make_schedule(scheduler: Any, *, warmup_steps: int, total_steps: int,
                  min_lr_ratio: float) -> Callable[[int], float]:
    """The step → LR-multiplier function of ``optim.scheduler`` (a short name or a ``_target_`` node)."""
    from hydra.utils import instantiate

    node = schedule_node(scheduler)
    try:
        factory = instantiate({**node, "_partial_": True}, _convert_="all")
        return factory(warmup_steps=warmup_steps, total_steps=total_steps, min_lr_ratio=min_lr_ratio)
    except Exception as e:  # noqa: BLE001 - a wrong function path or an argument the factory does not take
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise KdynError(f"optim.scheduler._target_={node['_target_']}: cannot build the LR schedule ({reason}); "
                        "give a function (*, warmup_steps, total_steps, min_lr_ratio, **its keys) -> "
                        f"(step -> multiplier), e.g. {__name__}.cosine") from None


def lr_lambda(step: int, *, warmup_steps: int, total_steps: int, schedule: Any, min_lr_ratio: float) -> float:
    """Multiplier of the peak learning rate after ``step`` optimizer steps (``schedule``: as
    ``optim.scheduler``)."""
    return make_schedule(schedule, warmup_steps=warmup_steps, total_steps=total_steps,
                         min_lr_ratio=min_lr_ratio)(step)


def causal_lm_loss(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                   labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean next-token cross-entropy over non-padding targets; returns (loss, number of targets)."""
    if labels is None:
        labels = input_ids if attention_mask is None else input_ids.masked_fill(attention_mask == 0, -100)
    # Shift the labels, not the logits: slicing [B, T, V] logits would copy them (and their gradient).
    # Labels one token longer than the inputs carry the last position's target (GPT-NeoX's 2,049-token rows).
    if labels.size(1) == logits.size(1) + 1:
        targets = labels[:, 1:]
    else:
        targets = F.pad(labels[:, 1:], (0, 1), value=-100)
    n_targets = (targets != -100).sum()
    flat = logits.reshape(-1, logits.size(-1))
    loss = F.cross_entropy(flat if flat.dtype == torch.float32 else flat.float(), targets.reshape(-1),
                           ignore_index=-100, reduction="sum")
    return loss / n_targets.clamp(min=1), n_targets


class CausalLMModule(pl.LightningModule):
    """Wraps a loaded HF causal LM; ``optim`` is the plain-dict ``optim`` config node; ``tokenizer`` is
    the model's (callbacks that score probes read ``pl_module.tokenizer``)."""

    def __init__(self, model: nn.Module, optim: Mapping[str, Any], run_info: Mapping[str, Any] | None = None,
                 tokenizer: Any = None):
        super().__init__()
        self.model = model.train()  # from_pretrained returns eval mode; training uses dropout if the model has any
        self.tokenizer = tokenizer
        self.optim = optim_config(optim)
        self._check_schedule()
        # Plain containers only, so checkpoints reload with torch.load(weights_only=True).
        self.save_hyperparameters({"optim": self.optim, "run": dict(run_info or {})})
        # name -> learning-rate multiplier; set by interventions before the optimizer is built.
        self.lr_multipliers: dict[str, float] = {}
        self.register_buffer("tokens_seen", torch.zeros((), dtype=torch.long), persistent=True)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        logits = self(batch["input_ids"], batch.get("attention_mask"))
        loss, n_targets = causal_lm_loss(logits, batch["input_ids"], batch.get("attention_mask"), batch.get("labels"))
        mask = batch.get("attention_mask")
        n_tokens = mask.sum() if mask is not None else torch.tensor(batch["input_ids"].numel(), device=self.device)
        global_loss, n_tokens = self._global_loss_and_tokens(loss.detach(), n_targets, n_tokens)
        self.tokens_seen += n_tokens.to(self.tokens_seen.dtype)
        self.log("train/loss", global_loss, prog_bar=True, on_step=True, on_epoch=False)
        return {"loss": loss, "global_loss": global_loss}

    def _global_loss_and_tokens(self, loss: torch.Tensor, n_targets: torch.Tensor,
                                n_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss over the *global* batch (token-weighted: every rank's loss sum over every rank's
        targets) and the global batch's tokens, so what is logged and reported does not depend on the
        number of devices. One process: the local values, untouched. Several: one all-reduce of three
        numbers per step (fp64, so token counts stay exact)."""
        trainer = self._trainer
        if trainer is None or trainer.world_size <= 1:
            return loss, n_tokens
        sums = torch.stack([loss.double() * n_targets.double(), n_targets.double(), n_tokens.double()])
        sums = trainer.strategy.reduce(sums, reduce_op="sum")
        return (sums[0] / sums[1].clamp(min=1)).to(loss.dtype), sums[2].round().long()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Learning rate and tokens seen, every ``trainer.log_every_n_steps`` steps, straight to the
        loggers (one host read per log, none on the other steps)."""
        trainer = self._trainer
        step = trainer.global_step if trainer is not None else 0
        if (trainer is None or not trainer.loggers or step % max(1, trainer.log_every_n_steps)
                or step == getattr(self, "_last_logged_step", -1)):
            return
        self._last_logged_step = step
        from kdyn.callbacks.log_utils import log_scalars

        values: dict[str, float] = {"train/tokens_seen": float(self.tokens_seen)}
        schedulers = self.lr_schedulers()
        if schedulers is not None:
            values["train/lr"] = float(schedulers.get_last_lr()[0])  # the rate of the next update
        log_scalars(trainer, values, step=trainer.global_step)

    # ----------------------------------------------------------------------------------- optimizer
    def configure_optimizers(self):
        groups = self.parameter_groups()
        if not groups:
            raise KdynError("no trainable parameters: every parameter is frozen; check the intervention's layer choice")
        optimizer = build_optimizer(self.optim, groups)
        total = self._total_steps()
        schedule = make_schedule(self.optim["scheduler"], warmup_steps=int(self.optim["warmup_steps"]),
                                 total_steps=total, min_lr_ratio=float(self.optim["min_lr_ratio"]))
        # a lambda: LambdaLR keeps no state of it in checkpoints, whatever object a factory returns
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: schedule(step))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _check_schedule(self) -> None:
        """Fail at construction, in one line, on a schedule that is not a short name or whose
        ``_target_`` does not name a function."""
        from hydra.utils import get_method

        target = schedule_node(self.optim["scheduler"])["_target_"]
        try:
            get_method(target)
        except Exception as e:  # noqa: BLE001 - no such module or function
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise KdynError(f"optim.scheduler._target_={target}: not a function ({reason}); "
                            f"name a schedule factory such as {__name__}.cosine") from None

    def parameter_groups(self) -> list[dict[str, Any]]:
        """AdamW groups keyed by (weight decay?, lr multiplier); frozen parameters are left out.

        Matrices get ``optim.weight_decay``; biases, norms and other vectors get none. Parameters
        that share a multiplier share a group, so the LR scheduler scales every group alike and
        per-layer rates keep their ratios through warmup and decay.
        """
        lr, weight_decay = float(self.optim["lr"]), float(self.optim["weight_decay"])
        buckets: dict[tuple[bool, float], list[nn.Parameter]] = {}
        names: dict[tuple[bool, float], list[str]] = {}
        for name, param in self.model.named_parameters():
            if not param.requires_grad:
                continue
            key = (param.ndim >= 2, float(self.lr_multipliers.get(name, 1.0)))
            buckets.setdefault(key, []).append(param)
            names.setdefault(key, []).append(name)
        groups = []
        for (decay, mult), params in sorted(buckets.items(), key=lambda kv: (not kv[0][0], kv[0][1])):
            groups.append({
                "params": params,
                "param_names": names[(decay, mult)],
                "lr": lr * mult,
                "lr_multiplier": mult,
                "weight_decay": weight_decay if decay else 0.0,
            })
        return groups

    def _total_steps(self) -> int:
        trainer = getattr(self, "_trainer", None)
        if trainer is not None and trainer.max_steps and trainer.max_steps > 0:
            return int(trainer.max_steps)
        if trainer is not None:
            return int(trainer.estimated_stepping_batches)
        return int(self.optim.get("total_steps", 1000))
