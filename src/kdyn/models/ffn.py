"""Where each architecture keeps its FFN "memories" — the only module that knows architecture names.

Following Geva et al. (2021) and Kim et al. (2025), an FFN layer is a key-value memory
``FFN(x) = f(x K^T) V``; the *memory coefficients* ``C = f(x K^T)`` are exactly the forward
**input** of the layer's down projection, a ``[batch, tokens, d_ff]`` tensor:

=================  ===========================  =====================================
architecture       down projection (hook here)  coefficient
=================  ===========================  =====================================
OLMo/OLMo-2/Llama  ``mlp.down_proj``            ``act(gate_proj(x)) * up_proj(x)``
GPT-NeoX (Pythia)  ``mlp.dense_4h_to_h``        ``gelu(dense_h_to_4h(x))``
GPT-2              ``mlp.c_proj`` (Conv1D)      ``act(c_fc(x))``
=================  ===========================  =====================================

Modules are matched by *suffix* of their dotted name (``model.layers.3.mlp.down_proj``), so every
model that reuses these names (Mistral, Qwen2, Gemma, Falcon, …) works too. GPT-2's attention also
has a ``c_proj`` (``attn.c_proj``) and GPT-NeoX's has ``attention.dense``: matching the ``mlp.``
prefix keeps them out. For an unknown architecture, ``model.ffn.down_proj=<suffix>`` (and
``model.ffn.up_proj=<suffix>`` for gated MLPs) points kdyn at the right modules.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kdyn.errors import KdynError

# (down-projection suffix, up-projection suffix or None, gated?) — tried in order.
_KNOWN_FFN_PATTERNS: tuple[tuple[str, str | None, bool], ...] = (
    ("mlp.down_proj", "mlp.up_proj", True),  # OLMo, OLMo-2, Llama, Mistral, Qwen2, Gemma
    ("mlp.dense_4h_to_h", None, False),  # GPT-NeoX (Pythia), Falcon, BLOOM
    ("mlp.c_proj", None, False),  # GPT-2 (Conv1D)
    ("mlp.fc_out", None, False),  # GPT-J
    ("mlp.fc2", None, False),  # Phi
)

_LAYER_INDEX = re.compile(r"\.(\d+)\.")


@dataclass(frozen=True)
class FFNLayer:
    """One transformer block's FFN, as kdyn sees it."""

    index: int
    block_name: str  # e.g. "model.layers.3" — the whole transformer block
    mlp_name: str  # e.g. "model.layers.3.mlp" — parent of the down projection
    down_name: str  # e.g. "model.layers.3.mlp.down_proj"
    down_proj: nn.Module  # its forward input is the memory coefficients [B, T, d_ff]
    up_name: str | None
    up_proj: nn.Module | None  # gated MLPs only: row i of its weight feeds coefficient i linearly
    d_ff: int

    def up_rows(self) -> torch.Tensor:
        """The up-projection weight as ``[d_ff, d_model]`` (row i scales coefficient i exactly)."""
        if self.up_proj is None:
            raise KdynError(
                f"layer {self.index} has a non-gated MLP: there is no linear up projection whose rows "
                "scale the memory coefficients (use intervention=rescale instead of resuscitate)"
            )
        return _weight_as_out_in(self.up_proj)


@dataclass(frozen=True)
class FFNMap:
    """All FFN layers of a model, in depth order."""

    model_type: str
    gated: bool
    layers: tuple[FFNLayer, ...]

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def d_ff(self) -> tuple[int, ...]:
        return tuple(layer.d_ff for layer in self.layers)

    def down_modules(self) -> list[nn.Module]:
        return [layer.down_proj for layer in self.layers]

    def hook_coefficients(self, make_hook: Callable[[int], Callable], prepend: bool = False) -> list:
        """Register ``make_hook(layer index)`` as a forward pre-hook on every down projection (its input
        is the memory coefficients); ``prepend`` runs it before the hooks already there. Returns the
        handles (``handle.remove()`` undoes it)."""
        return [layer.down_proj.register_forward_pre_hook(make_hook(layer.index), prepend=prepend)
                for layer in self.layers]


def locate_ffn(model: nn.Module, overrides: Mapping[str, Any] | None = None) -> FFNMap:
    """Find, per layer, the down projection (and up projection of gated MLPs) of ``model``.

    ``overrides`` is the ``model.ffn`` config node: ``down_proj`` / ``up_proj`` module-name suffixes
    that replace the built-in table for architectures kdyn does not know.
    """
    overrides = dict(overrides or {})
    model_type = _model_type(model)
    modules = dict(model.named_modules())
    down_suffix = overrides.get("down_proj")
    if down_suffix:
        up_suffix = overrides.get("up_proj")
        candidates = [(str(down_suffix), str(up_suffix) if up_suffix else None, bool(up_suffix))]
    else:
        candidates = list(_KNOWN_FFN_PATTERNS)

    for down_suffix, up_suffix, gated in candidates:
        down_names = _ordered_matches(modules, down_suffix)
        if not down_names:
            continue
        layers = []
        for index, down_name in enumerate(down_names):
            mlp_name = down_name[: -len(down_suffix.split(".")[-1]) - 1]
            block_name = _block_name(down_name)
            up_name = None
            if up_suffix is not None:
                up_name = mlp_name + "." + up_suffix.split(".")[-1]
                if up_name not in modules:
                    raise KdynError(
                        f"found down projection {down_name!r} but no up projection {up_name!r} in a "
                        f"{model_type} model; set model.ffn.up_proj to the right module suffix, or null "
                        "for a non-gated MLP"
                    )
            down = modules[down_name]
            layers.append(
                FFNLayer(
                    index=index,
                    block_name=block_name,
                    mlp_name=mlp_name,
                    down_name=down_name,
                    down_proj=down,
                    up_name=up_name,
                    up_proj=modules[up_name] if up_name else None,
                    d_ff=_input_features(down, down_name),
                )
            )
        _check_layer_count(model, model_type, layers, down_suffix)
        return FFNMap(model_type=model_type, gated=gated and up_suffix is not None, layers=tuple(layers))

    known = ", ".join(p[0] for p in _KNOWN_FFN_PATTERNS)
    tried = f"model.ffn.down_proj={down_suffix!r}" if overrides.get("down_proj") else f"the known names ({known})"
    raise KdynError(
        f"cannot locate the FFN down projections of model type {model_type!r} "
        f"({type(model).__name__}): no module name ends with {tried}. Point kdyn at them with "
        "model.ffn.down_proj=<suffix of the down projection's module name, e.g. mlp.fc2> "
        "(and model.ffn.up_proj=<suffix> for a gated MLP)"
    )


def parameter_groups_by_layer(model: nn.Module, ffn: FFNMap, split: str = "block") -> dict[str, list[str]]:
    """Group parameter names by transformer layer.

    ``split="block"`` gives ``layer_<i>``; ``split="attn_mlp"`` gives ``layer_<i>.attn`` (everything
    in the block outside the MLP: attention and norms) and ``layer_<i>.mlp``. Parameters outside
    every block (embeddings, final norm, LM head) are returned under ``"other"``.
    """
    if split not in ("block", "attn_mlp"):
        raise KdynError(f"unknown layer split {split!r}: use 'block' or 'attn_mlp'")
    groups: dict[str, list[str]] = {}
    for name, _ in model.named_parameters():
        key = "other"
        for layer in ffn.layers:
            if name.startswith(layer.block_name + "."):
                key = f"layer_{layer.index}"
                if split == "attn_mlp":
                    key += ".mlp" if name.startswith(layer.mlp_name + ".") else ".attn"
                break
        groups.setdefault(key, []).append(name)
    return groups


def _ordered_matches(modules: Mapping[str, nn.Module], suffix: str) -> list[str]:
    names = [n for n in modules if n == suffix or n.endswith("." + suffix)]
    return sorted(names, key=_layer_sort_key)


def _layer_sort_key(name: str) -> tuple[int, str]:
    match = _LAYER_INDEX.search("." + name + ".")
    return (int(match.group(1)) if match else -1, name)


def _block_name(down_name: str) -> str:
    parts = down_name.split(".")
    for i in range(len(parts) - 1, -1, -1):
        if parts[i].isdigit():
            return ".".join(parts[: i + 1])
    return ".".join(parts[:-2]) or parts[0]


def _model_type(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    return str(getattr(config, "model_type", None) or type(model).__name__)


def _input_features(module: nn.Module, name: str) -> int:
    if isinstance(module, nn.Linear):
        return module.in_features
    if type(module).__name__ == "Conv1D":  # GPT-2: weight is stored [in, out]
        return int(module.weight.shape[0])
    if hasattr(module, "in_features"):
        return int(module.in_features)
    raise KdynError(f"the FFN down projection {name!r} is a {type(module).__name__}, not a linear layer")


def _weight_as_out_in(module: nn.Module) -> torch.Tensor:
    if type(module).__name__ == "Conv1D":
        return module.weight.t()
    return module.weight


def _check_layer_count(model: nn.Module, model_type: str, layers: list[FFNLayer], suffix: str) -> None:
    config = getattr(model, "config", None)
    expected = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    if expected is not None and expected != len(layers):
        raise KdynError(
            f"found {len(layers)} modules ending in {suffix!r} in a {model_type} model with {expected} "
            "layers; set model.ffn.down_proj to a suffix that matches exactly one module per layer"
        )
