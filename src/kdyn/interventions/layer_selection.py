"""Turn traced layer statistics (``layer_stats.json`` of ``kdyn-trace``) into a layer choice or LR multipliers.

Pure functions over the stats dict (Fernandez et al. 2024, TGL; see ``kdyn.metrics.grad_norms``):

* `select_layers` — which layers to train (TGL+FP freezes the rest):

  ==============  ==================================================================================
  ``above_mean``  layers whose score exceeds the mean score over layers (the paper's rule; k is
                  data-dependent)
  ``top_k``       the ``k`` highest scores (ties: the shallower layer first)
  ``bottom_k``    the ``k`` lowest scores (ablation)
  ``explicit``    the given ``layers`` (names such as ``layer_3``; ints are shorthand for
                  ``layer_<i>``), validated against the stats
  ``random_k``    ``k`` layers drawn uniformly with ``seed``; ``k`` defaults to the size of the
                  ``above_mean`` selection of the same stats (the ablation "any freezing")
  ==============  ==================================================================================

  The score is the relative gradient norm ``r`` by default (``score="g_span"`` or ``"g_lm"`` for the
  raw-norm ablation). Results are layer names in depth order.
* `alr_multipliers` — TGL+ALR: ``lr_ℓ = lr · r(ℓ) / mean_ℓ r(ℓ)``, clipped to ``clip``.
* `combine_sets` — select on several diagnostic sets at once (mean, or max, of ``r`` over sets);
  every function also accepts a list of set names and combines them by the mean.

Layer names match ``kdyn.models.ffn.parameter_groups_by_layer(model, ffn, split=stats["granularity"])``.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kdyn.errors import KdynError

STATS_FILE = "layer_stats.json"
RULES = ("above_mean", "top_k", "bottom_k", "explicit", "random_k")
SCORES = ("r", "g_span", "g_lm")
SET_KEYS = ("g_span", "g_lm", "r")


# ---------------------------------------------------------------- loading and validation
def load_layer_stats(path_or_run_dir: str | Path) -> dict[str, Any]:
    """Read and validate ``layer_stats.json`` (a file, or a ``kdyn-trace`` run folder holding one)."""
    path = Path(str(path_or_run_dir)).expanduser()
    if path.is_dir():
        path = path / STATS_FILE
    if not path.is_file():
        raise KdynError(f"layer statistics not found: {path}; pass a layer_stats.json file or a kdyn-trace "
                        "run folder (run kdyn-trace first)")
    try:
        stats = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise KdynError(f"{path}: not valid JSON ({e}); re-run kdyn-trace") from None
    validate_layer_stats(stats, where=str(path))
    return stats


# Keys of a Hugging Face config that do not change the architecture (paths, dtype, runtime switches).
_VOLATILE_CONFIG_KEYS = ("transformers_version", "torch_dtype", "dtype", "use_cache", "attn_implementation",
                         "output_attentions", "output_hidden_states", "return_dict", "architectures")


def model_architecture(model: Any, ffn: Any) -> dict[str, Any]:
    """What identifies a model's layers: the number of FFN layers, their widths and a hash of its
    architecture config (``layer_stats.json`` records it; training refuses stats of another model)."""
    import hashlib

    config = model.config.to_dict() if hasattr(model, "config") else {}
    kept = {k: v for k, v in config.items() if not str(k).startswith("_") and k not in _VOLATILE_CONFIG_KEYS}
    digest = hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return {"num_layers": int(ffn.num_layers), "d_ff": [int(d) for d in ffn.d_ff],
            "model_type": config.get("model_type"), "config_sha256": digest}


def check_traced_model(stats: Mapping[str, Any], model: Any, ffn: Any, where: str,
                       groups: Mapping[str, Any] | None = None) -> None:
    """Refuse layer statistics traced on another model (one check for localize and localize_alr).

    ``stats["architecture"]`` (written by kdyn-trace) must match this model's; stats without it (older
    files) must at least name exactly this model's layers (``groups``: its parameter groups by layer).
    """
    traced = stats.get("architecture")
    here = model_architecture(model, ffn)
    source = stats.get("model") or {}
    named = f"{source.get('name', '?')} (step {source.get('step')})" if source else "another model"
    fix = "trace this model with kdyn-trace (same model=… / model.step=…) and pass that run's layer_stats.json"
    if isinstance(traced, Mapping):
        for key in ("num_layers", "d_ff", "config_sha256"):
            if traced.get(key) != here[key]:
                raise KdynError(f"{where} was traced on {named} with {key}={traced.get(key)}, but this model has "
                                f"{key}={here[key]}; {fix}")
    if groups is not None:
        layers = [str(x) for x in stats.get("layers", [])]
        mine = [g for g in groups if g != "other"]
        if sorted(layers) != sorted(mine):
            raise KdynError(f"{where} names layers {layers} but this model's layers are {mine} (traced on {named}); "
                            f"{fix}")


def validate_layer_stats(stats: Any, where: str = "layer stats") -> None:
    """Raise `KdynError` naming the first problem of a layer-stats dict."""
    if not isinstance(stats, Mapping):
        raise KdynError(f"{where}: expected a JSON object with 'layers' and 'sets', got {type(stats).__name__}")
    layers = stats.get("layers")
    if not isinstance(layers, list) or not layers or not all(isinstance(x, str) for x in layers):
        raise KdynError(f"{where}: 'layers' must be a non-empty list of layer names")
    if len(set(layers)) != len(layers):
        raise KdynError(f"{where}: 'layers' repeats a name: {layers}")
    sets = stats.get("sets")
    if not isinstance(sets, Mapping) or not sets:
        raise KdynError(f"{where}: 'sets' must be a non-empty object of diagnostic sets")
    for name, entry in sets.items():
        if not isinstance(entry, Mapping):
            raise KdynError(f"{where}: set {name!r} must be an object with {', '.join(SET_KEYS)}")
        for key in SET_KEYS:
            values = entry.get(key)
            if not isinstance(values, list) or len(values) != len(layers):
                raise KdynError(f"{where}: sets.{name}.{key} must be a list of {len(layers)} numbers (one per layer)")
            bad = [v for v in values if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
                   or v < 0]
            if bad:
                raise KdynError(f"{where}: sets.{name}.{key} holds {bad[0]!r}; every value must be a finite "
                                "number >= 0")
        n = entry.get("n_examples")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise KdynError(f"{where}: sets.{name}.n_examples must be a positive integer, got {n!r}")


def _set_entry(stats: Mapping[str, Any], set_name: str | Sequence[str]) -> Mapping[str, Any]:
    validate_layer_stats(stats)
    if not isinstance(set_name, str):
        names = list(set_name)
        if len(names) == 1:
            set_name = names[0]
        else:
            return combine_sets(stats, names)["sets"][combined_name(names)]
    if set_name not in stats["sets"]:
        raise KdynError(f"diagnostic set {set_name!r} is not in the layer stats; available: "
                        f"{', '.join(stats['sets'])}")
    return stats["sets"][set_name]


def layer_scores(stats: Mapping[str, Any], set_name: str | Sequence[str], score: str = "r") -> list[float]:
    """The per-layer ``score`` (``r``, ``g_span`` or ``g_lm``) of a set (or the mean over several sets)."""
    if score not in SCORES:
        raise KdynError(f"unknown score {score!r}; choose one of {', '.join(SCORES)}")
    return [float(v) for v in _set_entry(stats, set_name)[score]]


# ---------------------------------------------------------------- combining sets
def combined_name(set_names: Sequence[str]) -> str:
    return "+".join(set_names)


def combine_sets(stats: Mapping[str, Any], set_names: Sequence[str], how: str = "mean") -> dict[str, Any]:
    """A copy of ``stats`` with one more set, ``"a+b+…"``: per layer the mean (or max) of each set's values.

    ``r`` is combined directly (mean of the sets' ratios, not a ratio of means); ``n_examples`` is the sum.
    """
    validate_layer_stats(stats)
    names = list(set_names)
    if not names:
        raise KdynError("combine_sets needs at least one diagnostic set name")
    if how not in ("mean", "max"):
        raise KdynError(f"unknown combination {how!r}; use 'mean' or 'max'")
    missing = [n for n in names if n not in stats["sets"]]
    if missing:
        raise KdynError(f"diagnostic set(s) {missing} are not in the layer stats; "
                        f"available: {', '.join(stats['sets'])}")
    entries = [stats["sets"][n] for n in names]
    reduce = (lambda xs: sum(xs) / len(xs)) if how == "mean" else max
    combined = {key: [float(reduce([e[key][i] for e in entries])) for i in range(len(stats["layers"]))]
                for key in SET_KEYS}
    combined["n_examples"] = sum(int(e["n_examples"]) for e in entries)
    combined["combined_from"] = {"sets": names, "how": how}
    out = dict(stats)
    out["sets"] = {**stats["sets"], combined_name(names): combined}
    return out


# ---------------------------------------------------------------- selection
def select_layers(stats: Mapping[str, Any], set_name: str | Sequence[str], rule: str = "above_mean",
                  k: int | None = None, layers: Sequence[str | int] | None = None, seed: int = 0,
                  score: str = "r") -> list[str]:
    """The layers to train, in depth order (see the module docstring for the rules)."""
    if rule not in RULES:
        raise KdynError(f"unknown layer-selection rule {rule!r}; choose one of {', '.join(RULES)}")
    names = list(stats.get("layers") or []) if isinstance(stats, Mapping) else []
    if rule == "explicit":
        validate_layer_stats(stats)
        return _explicit(names, layers)
    values = layer_scores(stats, set_name, score)
    n = len(values)
    if rule == "above_mean":
        chosen = _above_mean(values)
        if not chosen:
            raise KdynError(f"no layer's {score} exceeds the mean over layers ({_fmt(values)}): the profile is "
                            "flat; use rule top_k or explicit")
    elif rule in ("top_k", "bottom_k"):
        k = _check_k(k, n, rule)
        sign = -1.0 if rule == "top_k" else 1.0
        chosen = sorted(range(n), key=lambda i: (sign * values[i], i))[:k]
    else:  # random_k
        if k is None:
            k = len(_above_mean(values))
            if k == 0:
                raise KdynError("random_k: the above_mean selection is empty (flat profile), so k has no "
                                "default; pass k")
        k = _check_k(k, n, rule)
        chosen = random.Random(int(seed)).sample(range(n), k)
    return [names[i] for i in sorted(chosen)]


def _above_mean(values: Sequence[float]) -> list[int]:
    mean = sum(values) / len(values)
    return [i for i, v in enumerate(values) if v > mean]


def _check_k(k: Any, n: int, rule: str) -> int:
    if k is None or isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise KdynError(f"rule {rule} needs an integer k between 1 and the number of layers ({n}), got {k!r}")
    return k


def _explicit(names: list[str], layers: Sequence[str | int] | None) -> list[str]:
    if not layers:
        raise KdynError(f"rule explicit needs a non-empty list of layers; available: {', '.join(names)}")
    wanted = []
    for layer in layers:
        name = f"layer_{layer}" if isinstance(layer, int) and not isinstance(layer, bool) else str(layer)
        if name not in names:
            raise KdynError(f"layer {layer!r} is not in the layer stats; available: {', '.join(names)}")
        wanted.append(name)
    return [n for n in names if n in set(wanted)]


def _fmt(values: Sequence[float]) -> str:
    return ", ".join(f"{v:.4g}" for v in values)


# ---------------------------------------------------------------- adaptive learning rates
def alr_multipliers(stats: Mapping[str, Any], set_name: str | Sequence[str],
                    clip: Sequence[float] = (0.0, 5.0), score: str = "r") -> dict[str, float]:
    """``{layer: clip(r(ℓ) / mean_ℓ r(ℓ))}`` (mean 1 before clipping; TGL+ALR)."""
    lo, hi = (float(c) for c in clip)
    if not 0.0 <= lo <= hi:
        raise KdynError(f"ALR clip must be [low, high] with 0 <= low <= high, got {list(clip)}")
    values = layer_scores(stats, set_name, score)
    mean = sum(values) / len(values)
    if mean <= 0:
        raise KdynError(f"the mean {score} over layers is {mean}; per-layer learning rates are undefined")
    return {name: min(hi, max(lo, v / mean)) for name, v in zip(stats["layers"], values)}
