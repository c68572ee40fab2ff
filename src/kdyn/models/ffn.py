"""Where each architecture keeps its FFN "memories" — the only module that knows architecture names.

Following Geva et al. (2021) and Kim et al. (2025), an FFN layer is a key-value memory
``FFN(x) = f(x K^T) V``; the *memory coefficients* ``C = f(x K^T)`` are exactly the forward
**input** of the layer's down projection, a ``[batch, tokens, d_ff]`` tensor. Knowledge entropy,
rescaling, gradient tracing and localisation need nothing else, so locating a model's FFN means
finding one down projection per layer (:data:`DOWN_PROJECTIONS`, matched by module-name *suffix*):

=========================  =======================================  ======================================
down projection (suffix)   models (transformers ``model_type``)     coefficient (down projection's input)
=========================  =======================================  ======================================
``mlp.down_proj``          OLMo, OLMo-2, Llama, Mistral, Qwen2/3,   ``act(gate_proj(x)) * up_proj(x)``, or
                           Gemma-1/2/3, Cohere, StableLM, Granite,  ``act(gate) * up`` of a fused
                           Phi-3, GLM, Nemotron                     ``gate_up_proj``; Nemotron ``act(up(x))``
``mlp.dense_4h_to_h``      GPT-NeoX (Pythia), Falcon, BLOOM,        ``act(dense_h_to_4h(x))``
                           Persimmon
``mlp.c_proj``             GPT-2 (Conv1D), GPT-Neo, GPT-BigCode,    ``act(c_fc(x))``
                           StarCoder2
``mlp.fc_out``             GPT-J, CodeGen                           ``act(fc_in(x))``
``mlp.fc2``                Phi-1/1.5/2                              ``act(fc1(x))``
``ffn.down_proj``          MPT                                      ``act(up_proj(x))``
``mlp_block.down_proj``    RecurrentGemma                           ``act(gate_proj(x)) * up_proj(x)``
``ff_out``                 OLMo-1 native (``hf_olmo``)              ``silu(gate) * up`` of a fused ``ff_proj``
``fc2``                    OPT, XGLM, BioGPT (no ``mlp.`` module)   ``act(fc1(x))``
=========================  =======================================  ======================================

Matching the ``mlp.`` prefix keeps GPT-2's attention ``attn.c_proj`` out; only modules inside a
numbered block count when any are (OLMo-1's LM head is also called ``ff_out``).

**Up rows** (resuscitation only). A *gated* coefficient ``act(g_i·x) · (u_i·x + b_i)`` is linear
in the up row ``u_i`` (and its bias), so scaling that row scales coefficient i exactly for every
token. The up projection is looked up next to the down projection (:data:`UP_PROJECTIONS`): a
separate ``up_proj`` beside a ``gate_proj``, or one half of a fused projection whose
``2·d_ff`` outputs are chunked in two — Phi-3/GLM's ``gate_up_proj`` is ``[gate; up]`` (transformers'
``Phi3MLP``: ``gate, up = chunk(2)``), OLMo-1's native ``ff_proj`` is ``[up; gate]`` (``olmo.model.SwiGLU``:
``x, gate = x.chunk(2)``). A non-gated coefficient ``act(W_in x)`` has no such row; then
:attr:`FFNLayer.up_proj` is None and only resuscitation refuses (pointing to ``intervention=rescale``).

**Mixture-of-experts** models (Mixtral, Qwen2-MoE, OLMoE, Phi-MoE, JetMoE, GPT-OSS) have no dense
FFN whose input is one coefficient vector per token, so there is no default: the locator says so,
and ``model.ffn.down_proj`` can point it at a dense sub-module that runs on every token (Qwen2-MoE's
``mlp.shared_expert.down_proj``).

**Overrides** (the ``model.ffn`` config node), each on its own: ``down_proj=<suffix>`` replaces
the down-projection table; ``up_proj=<name>`` names the up projection beside it (a sibling module
name such as ``w3``), with ``up_half=first|second`` when that module is fused (``2·d_ff`` outputs).
``null`` means "kdyn's table".
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kdyn.errors import KdynError

#: (down-projection suffix, models) — tried in order; the first suffix with matches wins.
DOWN_PROJECTIONS: tuple[tuple[str, str], ...] = (
    ("mlp.down_proj", "OLMo, OLMo-2, Llama, Mistral, Qwen2, Gemma, Cohere, StableLM, Phi-3, GLM, Nemotron"),
    ("mlp.dense_4h_to_h", "GPT-NeoX (Pythia), Falcon, BLOOM, Persimmon"),
    ("mlp.c_proj", "GPT-2, GPT-Neo, GPT-BigCode, StarCoder2"),
    ("mlp.fc_out", "GPT-J, CodeGen"),
    ("mlp.fc2", "Phi-1/1.5/2"),
    ("ffn.down_proj", "MPT"),
    ("mlp_block.down_proj", "RecurrentGemma"),
    ("ff_out", "OLMo-1 native (hf_olmo)"),
    ("fc2", "OPT, XGLM, BioGPT"),
)


@dataclass(frozen=True)
class UpLayout:
    """A module beside the down projection whose output feeds the coefficients linearly."""

    name: str  # sibling module name, e.g. "up_proj"
    gate: str | None  # a sibling that must exist too (a separate gate: then `name` is the linear half)
    half: int | None  # fused [2·d_ff] output: 0 = the first half is up, 1 = the second; None = not fused
    models: str


#: Tried in order, per layer, among the down projection's siblings.
UP_PROJECTIONS: tuple[UpLayout, ...] = (
    UpLayout("up_proj", gate="gate_proj", half=None, models="Llama, OLMo, OLMo-2, Mistral, Qwen2, Gemma, ..."),
    UpLayout("gate_up_proj", gate=None, half=1, models="Phi-3, GLM, GLM-4 ([gate; up])"),
    UpLayout("ff_proj", gate=None, half=0, models="OLMo-1 native ([up; gate])"),
)

#: Layouts whose FFN sits directly in the block (no MLP module of its own): the down projection's
#: suffix -> the input projections beside it, so `attn_mlp` parameter groups can tell FFN from attention.
_FLAT_FFN_INPUTS: Mapping[str, tuple[str, ...]] = {"fc2": ("fc1",), "ff_out": ("ff_proj",)}
_HALVES = {"first": 0, "second": 1, "0": 0, "1": 1}
_MOE_CONFIG_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")
_LAYER_INDEX = re.compile(r"\.(\d+)\.")


@dataclass(frozen=True)
class FFNLayer:
    """One transformer block's FFN, as kdyn sees it."""

    index: int
    block_name: str  # e.g. "model.layers.3" — the whole transformer block
    mlp_name: str  # e.g. "model.layers.3.mlp" — parent of the down projection
    down_name: str  # e.g. "model.layers.3.mlp.down_proj"
    down_proj: nn.Module  # its forward input is the memory coefficients [B, T, d_ff]
    up_name: str | None  # the module holding the up rows (None: no coefficient is linear in any row)
    up_proj: nn.Module | None
    d_ff: int
    up_half: int | None = None  # fused up projection: which half of its 2·d_ff outputs is up
    ffn_modules: tuple[str, ...] = ()  # when the FFN has no module of its own (OPT's fc1/fc2): its modules

    def owns(self, parameter_name: str) -> bool:
        """Whether a parameter belongs to this layer's FFN (rather than attention, norms, ...)."""
        if self.mlp_name != self.block_name:
            return parameter_name.startswith(self.mlp_name + ".")
        return any(parameter_name.startswith(m + ".") for m in self.ffn_modules)

    def up_rows(self) -> torch.Tensor:
        """The up rows as a ``[d_ff, d_model]`` view of the weight (row i scales coefficient i exactly)."""
        if self.up_proj is None:
            raise KdynError(_no_up_rows_message(self))
        weight = _weight_as_out_in(self.up_proj)
        if self.up_half is not None:
            weight = weight[self.up_half * self.d_ff:(self.up_half + 1) * self.d_ff]
        return weight

    def up_bias(self) -> torch.Tensor | None:
        """The up projection's bias entries of the ``d_ff`` up rows (a view), or None when it has none."""
        bias = getattr(self.up_proj, "bias", None) if self.up_proj is not None else None
        if bias is None:
            return None
        if self.up_half is not None:
            bias = bias[self.up_half * self.d_ff:(self.up_half + 1) * self.d_ff]
        return bias


@dataclass(frozen=True)
class FFNMap:
    """All FFN layers of a model, in depth order."""

    model_type: str
    gated: bool  # every layer has up rows (a coefficient linear in one row): resuscitation can edit them
    layers: tuple[FFNLayer, ...]

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def d_ff(self) -> tuple[int, ...]:
        return tuple(layer.d_ff for layer in self.layers)

    def down_modules(self) -> list[nn.Module]:
        return [layer.down_proj for layer in self.layers]

    def require_up_rows(self, who: str) -> None:
        """Raise (one line, with the fix) unless every layer has up rows; ``who`` names the caller."""
        missing = next((layer for layer in self.layers if layer.up_proj is None), None)
        if missing is not None:
            raise KdynError(f"{who} needs the up rows of a gated MLP, but this {self.model_type} model's "
                            + _no_up_rows_message(missing))

    def hook_coefficients(self, make_hook: Callable[[int], Callable], prepend: bool = False) -> list:
        """Register ``make_hook(layer index)`` as a forward pre-hook on every down projection (its input
        is the memory coefficients); ``prepend`` runs it before the hooks already there. Returns the
        handles (``handle.remove()`` undoes it)."""
        return [layer.down_proj.register_forward_pre_hook(make_hook(layer.index), prepend=prepend)
                for layer in self.layers]


def locate_ffn(model: nn.Module, overrides: Mapping[str, Any] | None = None) -> FFNMap:
    """Find, per layer, the down projection of ``model`` (and its up rows where the MLP is gated).

    ``overrides`` is the ``model.ffn`` config node: ``down_proj`` (a module-name suffix), ``up_proj``
    (a sibling module name) and ``up_half`` (``first``/``second`` for a fused up projection), each
    replacing the built-in table on its own; None/null keeps the table.
    """
    overrides = dict(overrides or {})
    model_type = _model_type(model)
    modules = dict(model.named_modules())
    down_override = _text(overrides.get("down_proj"))
    up_override = _text(overrides.get("up_proj"))
    half_override = _parse_half(overrides.get("up_half"))
    if half_override is not None and up_override is None:
        raise KdynError(
            f"model.ffn.up_half={overrides.get('up_half')} says which half of a fused up projection is up, "
            "but model.ffn.up_proj does not name that module; set model.ffn.up_proj=<its name, e.g. "
            "gate_up_proj> too (or model.ffn.up_half=null)")

    if down_override is None:
        _refuse_mixture_of_experts(model, model_type, modules)
        candidates = [suffix for suffix, _ in DOWN_PROJECTIONS]
    else:
        candidates = [down_override]
    for down_suffix in candidates:
        down_names = _ordered_matches(modules, down_suffix)
        if not down_names:
            continue
        layers = []
        for index, down_name in enumerate(down_names):
            parent = down_name.rsplit(".", 1)[0] if "." in down_name else ""
            down = modules[down_name]
            d_ff = _input_features(down, down_name)
            up_name, up_half = (_explicit_up(modules, parent, down_name, d_ff, up_override, half_override, model_type)
                                if up_override is not None else _table_up(modules, parent, d_ff))
            block_name = _block_name(down_name)
            flat = ()
            if parent == block_name:  # no MLP container: name the FFN's own modules
                inputs = _FLAT_FFN_INPUTS.get(down_name.rsplit(".", 1)[-1], ())
                flat = tuple(dict.fromkeys(
                    [down_name, *(n for n in (_join(parent, i) for i in inputs) if n in modules), *filter(None, [up_name])]))
            layers.append(FFNLayer(
                index=index,
                block_name=block_name,
                mlp_name=parent,
                down_name=down_name,
                down_proj=down,
                up_name=up_name,
                up_proj=modules[up_name] if up_name else None,
                d_ff=d_ff,
                up_half=up_half,
                ffn_modules=flat,
            ))
        _check_layer_count(model, model_type, layers, down_suffix)
        gated = all(layer.up_proj is not None for layer in layers)
        return FFNMap(model_type=model_type, gated=gated, layers=tuple(layers))

    known = ", ".join(suffix for suffix, _ in DOWN_PROJECTIONS)
    tried = f"model.ffn.down_proj={down_override!r}" if down_override else f"the known names ({known})"
    raise KdynError(
        f"cannot locate the FFN down projections of model type {model_type!r} "
        f"({type(model).__name__}): no module name ends with {tried}. Point kdyn at them with "
        "model.ffn.down_proj=<suffix of the down projection's module name, e.g. mlp.fc2> (the module whose "
        "input is the d_ff-wide activation, one per layer)"
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
                    key += ".mlp" if layer.owns(name) else ".attn"
                break
        groups.setdefault(key, []).append(name)
    return groups


# --------------------------------------------------------------------------------------------------
# Up rows
# --------------------------------------------------------------------------------------------------


def _table_up(modules: Mapping[str, nn.Module], parent: str, d_ff: int) -> tuple[str | None, int | None]:
    """The first :data:`UP_PROJECTIONS` layout present beside the down projection, with the right width."""
    for layout in UP_PROJECTIONS:
        name = _join(parent, layout.name)
        if name not in modules or (layout.gate is not None and _join(parent, layout.gate) not in modules):
            continue
        width = _output_features(modules[name])
        if width == (d_ff if layout.half is None else 2 * d_ff):
            return name, layout.half
    return None, None


def _explicit_up(modules: Mapping[str, nn.Module], parent: str, down_name: str, d_ff: int, up: str,
                 half: int | None, model_type: str) -> tuple[str, int | None]:
    name = _join(parent, up.split(".")[-1])
    if name not in modules:
        siblings = sorted(n[len(parent) + 1:] for n in modules
                          if n.startswith(parent + ".") and "." not in n[len(parent) + 1:] and n != down_name)
        raise KdynError(
            f"model.ffn.up_proj={up!r}: there is no module {name!r} beside the down projection {down_name!r} in "
            f"this {model_type} model (its siblings: {', '.join(siblings) or 'none'}); set model.ffn.up_proj to the "
            "one whose output is multiplied by the activated gate (or null for kdyn's table)")
    width = _output_features(modules[name])
    if width == d_ff:
        return name, None
    if width == 2 * d_ff:
        if half is None:
            raise KdynError(
                f"model.ffn.up_proj={up!r} ({name}) is fused: it has {width} = 2 x {d_ff} outputs, gate and up "
                "together; say which half is up with model.ffn.up_half=first or model.ffn.up_half=second "
                "(the half that is NOT passed through the activation)")
        return name, half
    raise KdynError(
        f"model.ffn.up_proj={up!r} ({name}) has {width} outputs, but the down projection reads d_ff={d_ff} "
        f"coefficients, so it is not this MLP's up projection (that has {d_ff} outputs, or {2 * d_ff} when fused); "
        "set model.ffn.up_proj to the right module name, or null")


def _no_up_rows_message(layer: FFNLayer) -> str:
    return (
        f"layer {layer.index} ({layer.mlp_name or 'top level'}) has no up projection whose rows scale the memory coefficients "
        "linearly: kdyn found no gated up projection beside its down projection (an up_proj next to a gate_proj, "
        "or a fused gate_up_proj / ff_proj). If the MLP is not gated (act(W_in x), e.g. GPT-NeoX, GPT-2, Phi-2), its "
        "coefficient is not linear in any row, so no row scale can set it: use intervention=rescale instead. If it is gated with other module names, "
        "set model.ffn.up_proj=<the linear (non-activated) projection's name> (plus model.ffn.up_half=first|second "
        "if it is fused with the gate)"
    )


# --------------------------------------------------------------------------------------------------
# Mixture of experts
# --------------------------------------------------------------------------------------------------


def _refuse_mixture_of_experts(model: nn.Module, model_type: str, modules: Mapping[str, nn.Module]) -> None:
    config = getattr(model, "config", None)
    experts = next((int(getattr(config, key)) for key in _MOE_CONFIG_KEYS
                    if isinstance(getattr(config, key, None), int) and getattr(config, key) > 1), None)
    if experts is None and not any(n.endswith(".experts") for n in modules):
        return
    shared = _ordered_matches(modules, "shared_expert.down_proj")
    hint = (
        "; this model has a dense shared expert that runs on every token, so e.g. "
        "model.ffn.down_proj=mlp.shared_expert.down_proj measures that" if shared else
        "; this model has no such dense module, so use a dense model for knowledge-entropy experiments"
    )
    raise KdynError(
        f"{model_type} ({type(model).__name__}) is a mixture-of-experts model ({experts or 'several'} experts per "
        "layer, a few chosen per token): knowledge entropy is defined over ONE dense FFN's coefficients per token, "
        "so kdyn has no default down projection for it. To measure a dense sub-module of each layer, name its "
        f"down projection with model.ffn.down_proj=<suffix>{hint}"
    )


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _parse_half(value: Any) -> int | None:
    if value is None:
        return None
    key = str(value).strip().lower()
    if key not in _HALVES:
        raise KdynError(
            f"model.ffn.up_half={value!r} is not a half: use model.ffn.up_half=first or model.ffn.up_half=second "
            "(or null when the up projection is not fused)")
    return _HALVES[key]


def _join(parent: str, name: str) -> str:
    return f"{parent}.{name}" if parent else name


def _ordered_matches(modules: Mapping[str, nn.Module], suffix: str) -> list[str]:
    names = [n for n in modules if n == suffix or n.endswith("." + suffix)]
    in_blocks = [n for n in names if _LAYER_INDEX.search("." + n + ".")]
    return sorted(in_blocks or names, key=_layer_sort_key)


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


def _output_features(module: nn.Module) -> int | None:
    if isinstance(module, nn.Linear):
        return module.out_features
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        return None
    return int(weight.shape[1] if type(module).__name__ == "Conv1D" else weight.shape[0])


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
