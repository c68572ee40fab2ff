"""Layer-restricted continual training (Fernandez et al. 2024, Traced Gradient Layers).

* ``intervention=localize`` (TGL+FP): train only the layers chosen from ``kdyn-trace``'s relative
  gradient norms r(l) — above the mean (the paper's rule), the top-k, an explicit list, or k random
  layers (the ablation; k defaults to the above-mean count). Everything else is frozen with
  ``requires_grad_(False)`` before the optimizer is built, so no optimizer state, weight decay or
  momentum ever touches it.
* ``intervention=localize_alr`` (TGL+ALR): every layer trains, with learning rate
  lr · r(l) / mean_l r(l), clipped; the per-layer rates are AdamW parameter groups, so warmup and
  decay scale them alike.
* ``intervention=freeze``: freeze an explicit list of layers (``layers``), train the rest.

Parameters outside the transformer blocks (embeddings, final norm, LM head) are trained by
localize/localize_alr unless ``train_other=false``. The chosen layers, frozen parameter counts and
rates go to ``intervention.json`` and ``layers.json`` in the run folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kdyn.errors import KdynError
from kdyn.interventions import Intervention, InterventionContext, register
from kdyn.utils.io import atomic_write_json


def _groups(ctx: InterventionContext, split: str) -> dict[str, list[str]]:
    from kdyn.models.ffn import parameter_groups_by_layer

    return parameter_groups_by_layer(ctx.model, ctx.ffn, split)


def _freeze_all_but(ctx: InterventionContext, groups: dict[str, list[str]], trained: Sequence[str],
                    train_other: bool) -> dict[str, Any]:
    keep = set(trained) | ({"other"} if train_other else set())
    unknown = sorted(set(trained) - set(groups))
    if unknown:
        raise KdynError(f"unknown layers {unknown}; this model's layers are {sorted(k for k in groups if k != 'other')}")
    params = dict(ctx.model.named_parameters())
    frozen = trainable = 0
    for group, names in groups.items():
        for name in names:
            train = group in keep
            params[name].requires_grad_(train)
            if train:
                trainable += params[name].numel()
            else:
                frozen += params[name].numel()
    if trainable == 0:
        raise KdynError("the chosen layers leave no trainable parameter")
    return {"trained_layers": [g for g in groups if g in keep and g != "other"], "train_other": train_other,
            "frozen_parameters": frozen, "trainable_parameters": trainable}


@register("localize")
class Localize(Intervention):
    """Train only the layers selected from traced gradient norms (TGL+FP)."""

    def __init__(self, layer_stats: str | None = None, set_name: str = "updated", rule: str = "above_mean",
                 k: int | None = None, layers: Sequence[str] | None = None, seed: int = 0, split: str = "block",
                 train_other: bool = True):
        super().__init__()
        self.layer_stats, self.set_name, self.rule = layer_stats, set_name, rule
        self.k, self.layers, self.seed, self.split, self.train_other = k, layers, seed, split, train_other

    def check(self) -> None:
        from kdyn.interventions.layer_selection import load_layer_stats

        if self.rule == "explicit" and not self.layers:
            raise KdynError("intervention.rule=explicit needs intervention.layers=[layer_0,...]")
        if self.rule != "explicit" and not self.layer_stats:
            raise KdynError(f"intervention=localize with rule={self.rule} needs intervention.layer_stats=PATH "
                            "(a kdyn-trace run folder or its layer_stats.json)")
        if self.layer_stats:
            load_layer_stats(self.layer_stats)

    def apply(self, ctx: InterventionContext) -> dict[str, Any]:
        from kdyn.interventions.layer_selection import check_traced_model, load_layer_stats, select_layers

        self.check()
        if self.rule == "explicit":
            stats = load_layer_stats(self.layer_stats) if self.layer_stats else None
            chosen = (select_layers(stats, self.set_name, rule="explicit", layers=self.layers) if stats
                      else [str(x) if not isinstance(x, int) else f"layer_{x}" for x in self.layers])
        else:
            stats = load_layer_stats(self.layer_stats)
            chosen = select_layers(stats, self.set_name, rule=self.rule, k=self.k, layers=self.layers, seed=self.seed)
        split = stats.get("granularity", self.split) if stats else self.split
        groups = _groups(ctx, split)
        if stats:
            check_traced_model(stats, ctx.model, ctx.ffn, f"intervention.layer_stats={self.layer_stats}", groups)
        record = {"rule": self.rule, "set": self.set_name, "layer_stats": self.layer_stats, "granularity": split,
                  "selected": chosen,
                  **_freeze_all_but(ctx, groups, chosen, self.train_other)}
        atomic_write_json(ctx.output_dir / "layers.json", record)
        return record


@register("freeze")
class Freeze(Intervention):
    """Freeze an explicit list of layers; train everything else."""

    def __init__(self, layers: Sequence[str] | None = None, split: str = "block", freeze_other: bool = False):
        super().__init__()
        self.layers, self.split, self.freeze_other = list(layers or []), split, freeze_other

    def check(self) -> None:
        if not self.layers:
            raise KdynError("intervention=freeze needs intervention.layers=[layer_0,...] (the layers to freeze)")

    def apply(self, ctx: InterventionContext) -> dict[str, Any]:
        self.check()
        groups = _groups(ctx, self.split)
        trained = [g for g in groups if g != "other" and g not in self.layers]
        unknown = sorted(set(self.layers) - set(groups))
        if unknown:
            raise KdynError(f"unknown layers {unknown}; this model's layers are {sorted(k for k in groups if k != 'other')}")
        record = {"frozen_layers": self.layers, "granularity": self.split,
                  **_freeze_all_but(ctx, groups, trained, not self.freeze_other)}
        atomic_write_json(ctx.output_dir / "layers.json", record)
        return record


@register("localize_alr")
class LocalizeALR(Intervention):
    """Per-layer learning rates lr · r(l)/mean(r), clipped (TGL+ALR)."""

    def __init__(self, layer_stats: str | None = None, set_name: str = "updated", clip: Sequence[float] = (0.0, 5.0),
                 split: str = "block", other_multiplier: float = 1.0):
        super().__init__()
        self.layer_stats, self.set_name, self.clip = layer_stats, set_name, tuple(clip)
        self.split, self.other_multiplier = split, float(other_multiplier)

    def check(self) -> None:
        from kdyn.interventions.layer_selection import load_layer_stats

        if not self.layer_stats:
            raise KdynError("intervention=localize_alr needs intervention.layer_stats=PATH "
                            "(a kdyn-trace run folder or its layer_stats.json)")
        load_layer_stats(self.layer_stats)

    def apply(self, ctx: InterventionContext) -> dict[str, Any]:
        from kdyn.interventions.layer_selection import alr_multipliers, check_traced_model, load_layer_stats

        self.check()
        stats = load_layer_stats(self.layer_stats)
        split = stats.get("granularity", self.split)
        multipliers = alr_multipliers(stats, self.set_name, clip=self.clip)
        groups = _groups(ctx, split)
        check_traced_model(stats, ctx.model, ctx.ffn, f"intervention.layer_stats={self.layer_stats}", groups)
        per_param = {}
        for group, names in groups.items():
            mult = self.other_multiplier if group == "other" else float(multipliers.get(group, 1.0))
            for name in names:
                per_param[name] = mult
        ctx.module.lr_multipliers = per_param
        base_lr = float(ctx.module.optim["lr"])
        record = {"set": self.set_name, "layer_stats": self.layer_stats, "granularity": split, "clip": list(self.clip),
                  "multipliers": multipliers, "rates": {g: base_lr * m for g, m in multipliers.items()},
                  "other_multiplier": self.other_multiplier}
        atomic_write_json(ctx.output_dir / "layers.json", record)
        return record
