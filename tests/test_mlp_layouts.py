"""Every MLP layout the hub ships: the locator finds the down projection of tiny random models of each
(gated or not, fused or not, under ``mlp.`` or not), knowledge entropy equals an independent
computation on each, fused gate/up resuscitation scales exactly the selected coefficients, and every
locator message's advice works when followed."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

from kdyn.data.sequences import document_batches
from kdyn.errors import KdynError
from kdyn.interventions.resuscitate import resuscitate
from kdyn.metrics.recorder import measure
from kdyn.models.ffn import locate_ffn
from tests.test_entropy import DOCS

# model_type -> (extra config, down projection of layer {i} (written here, not taken from kdyn), has up rows)
LAYOUTS = {
    "phi3": ({}, "model.layers.{i}.mlp.down_proj", True),  # fused gate_up_proj = [gate; up]
    "glm": ({}, "model.layers.{i}.mlp.down_proj", True),  # fused gate_up_proj = [gate; up]
    "qwen2": ({}, "model.layers.{i}.mlp.down_proj", True),
    "mistral": ({}, "model.layers.{i}.mlp.down_proj", True),
    "gemma2": ({"head_dim": 8}, "model.layers.{i}.mlp.down_proj", True),
    "gemma": ({"head_dim": 8}, "model.layers.{i}.mlp.down_proj", True),
    "cohere": ({}, "model.layers.{i}.mlp.down_proj", True),
    "stablelm": ({}, "model.layers.{i}.mlp.down_proj", True),
    "nemotron": ({"num_key_value_heads": 4}, "model.layers.{i}.mlp.down_proj", False),  # act(up_proj x): no gate
    "recurrent_gemma": ({"block_types": ["recurrent", "attention"], "lru_width": 32, "head_dim": 8,
                         "num_key_value_heads": 1}, "model.layers.{i}.mlp_block.down_proj", True),
    "phi": ({}, "model.layers.{i}.mlp.fc2", False),
    "gptj": ({"n_inner": 64, "rotary_dim": 4}, "transformer.h.{i}.mlp.fc_out", False),
    "codegen": ({"n_inner": 64, "rotary_dim": 4}, "transformer.h.{i}.mlp.fc_out", False),
    "falcon": ({"ffn_hidden_size": 64}, "transformer.h.{i}.mlp.dense_4h_to_h", False),
    "bloom": ({"n_head": 4}, "transformer.h.{i}.mlp.dense_4h_to_h", False),
    "persimmon": ({}, "model.layers.{i}.mlp.dense_4h_to_h", False),
    "gpt_neo": ({"attention_types": [[["global"], 2]], "num_layers": 2}, "transformer.h.{i}.mlp.c_proj", False),
    "gpt_bigcode": ({"n_inner": 64}, "transformer.h.{i}.mlp.c_proj", False),
    "starcoder2": ({}, "model.layers.{i}.mlp.c_proj", False),
    "mpt": ({"expansion_ratio": 2}, "transformer.blocks.{i}.ffn.down_proj", False),  # act(up_proj x): no gate
    "opt": ({"ffn_dim": 64, "word_embed_proj_dim": 32}, "model.decoder.layers.{i}.fc2", False),  # not under mlp.
    "xglm": ({"ffn_dim": 64}, "model.layers.{i}.fc2", False),
    "biogpt": ({}, "biogpt.layers.{i}.fc2", False),
}
NUM_LAYERS = 2


def independent_entropy(model, tokenizer, texts, down_modules):
    """One unpadded document at a time, explicit sums, the formula written out (not kdyn's code).
    Coefficients are reshaped to [tokens, d_ff]: OPT-style layers run their MLP on [batch·tokens, d]."""
    sums, count, captured = [0.0] * len(down_modules), 0, {}
    handles = [m.register_forward_pre_hook(
        lambda mod, args, i=i: captured.__setitem__(i, args[0].detach().double().reshape(-1, args[0].shape[-1])))
        for i, m in enumerate(down_modules)]
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, truncation=True, max_length=64)["input_ids"]
            model(input_ids=torch.tensor([ids]))
            count += len(ids)
            for i in range(len(down_modules)):
                assert captured[i].shape[0] == len(ids)
                sums[i] = sums[i] + captured[i].abs().sum(0)
    for h in handles:
        h.remove()
    entropies = []
    for s in sums:
        p = (s / count) / (s / count).sum()
        entropies.append(float(-(p * torch.log(p)).sum()))
    return entropies, count


def build(model_type: str, tokenizer, **extra) -> nn.Module:
    kwargs = dict(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=NUM_LAYERS, num_attention_heads=4,
                  num_key_value_heads=2, intermediate_size=64, max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id,
                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    kwargs.update(extra)
    config = AutoConfig.for_model(model_type, **kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    return model.eval()


@pytest.fixture(scope="module")
def layout_models(tokenizer):
    return {t: build(t, tokenizer, **extra) for t, (extra, _, _) in LAYOUTS.items()}


@pytest.mark.parametrize("model_type", LAYOUTS)
def test_locator_finds_the_down_projection_of_every_layout(model_type, layout_models):
    model = layout_models[model_type]
    _, down, has_up_rows = LAYOUTS[model_type]
    ffn = locate_ffn(model)
    assert [layer.down_name for layer in ffn.layers] == [down.format(i=i) for i in range(NUM_LAYERS)]
    assert ffn.gated == has_up_rows
    for layer in ffn.layers:
        assert layer.d_ff == model.get_submodule(layer.down_name).weight.shape[1]  # nn.Linear: [out, in]


@pytest.mark.parametrize("model_type", LAYOUTS)
def test_knowledge_entropy_equals_an_independent_computation_on_every_layout(model_type, layout_models, tokenizer):
    model = layout_models[model_type]
    _, down, _ = LAYOUTS[model_type]
    batches = document_batches(DOCS, tokenizer, num_sequences=len(DOCS), seq_len=64, batch_size=3)
    result = measure(model, locate_ffn(model), batches).compute()
    modules = [model.get_submodule(down.format(i=i)) for i in range(NUM_LAYERS)]  # named here, not by kdyn
    expected, count = independent_entropy(model, tokenizer, DOCS, modules)
    assert int(result["tokens"]) == count
    torch.testing.assert_close(result["per_layer"], torch.tensor(expected, dtype=torch.float64), rtol=1e-6, atol=1e-9)


def _fused_gate_up(mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:  # transformers' Phi3MLP / GlmMLP
    gate, up = mlp.gate_up_proj(x).chunk(2, dim=-1)
    return mlp.activation_fn(gate) * up


COEFFICIENT = {  # the coefficient written out per family, from the MLP's own submodules and its input
    "phi3": _fused_gate_up,
    "glm": _fused_gate_up,
    "qwen2": lambda mlp, x: F.silu(mlp.gate_proj(x)) * mlp.up_proj(x),
    "mistral": lambda mlp, x: F.silu(mlp.gate_proj(x)) * mlp.up_proj(x),
    "gemma2": lambda mlp, x: F.gelu(mlp.gate_proj(x), approximate="tanh") * mlp.up_proj(x),
    "nemotron": lambda mlp, x: F.relu(mlp.up_proj(x)) ** 2,
    "mpt": lambda mlp, x: F.gelu(mlp.up_proj(x)),
    "phi": lambda mlp, x: mlp.activation_fn(mlp.fc1(x)),
}


@pytest.mark.parametrize("model_type", COEFFICIENT)
def test_the_down_projection_input_is_the_coefficient_formula(model_type, layout_models):
    model = layout_models[model_type]
    layer = locate_ffn(model).layers[0]
    mlp = model.get_submodule(layer.mlp_name)
    seen = {}
    h1 = mlp.register_forward_pre_hook(lambda m, args: seen.__setitem__("x", args[0].detach()))
    h2 = layer.down_proj.register_forward_pre_hook(lambda m, args: seen.__setitem__("c", args[0].detach()))
    with torch.no_grad():
        model(input_ids=torch.randint(0, model.config.vocab_size, (2, 7)))
        expected = COEFFICIENT[model_type](mlp, seen["x"])
    h1.remove(), h2.remove()
    torch.testing.assert_close(seen["c"], expected)


# ------------------------------------------------------------------------------ fused resuscitation


class OlmoNativeBlock(nn.Module):
    """OLMo-1's native (hf_olmo) sequential block FFN: ff_proj = [up; gate], SwiGLU, ff_out."""

    def __init__(self, d: int, d_ff: int):
        super().__init__()
        self.ff_proj, self.ff_out = nn.Linear(d, 2 * d_ff, bias=False), nn.Linear(d_ff, d, bias=False)

    def forward(self, x):
        up, gate = self.ff_proj(x).chunk(2, dim=-1)  # olmo.model.SwiGLU: `x, gate = x.chunk(2, dim=-1)`
        return x + self.ff_out(F.silu(gate) * up)


class OlmoNative(nn.Module):
    def __init__(self, d=16, d_ff=24, layers=2):
        super().__init__()
        self.transformer = nn.Module()
        self.transformer.blocks = nn.ModuleList([OlmoNativeBlock(d, d_ff) for _ in range(layers)])
        self.transformer.ff_out = nn.Linear(d, 50, bias=False)  # the LM head is ALSO called ff_out

    def forward(self, x):
        for block in self.transformer.blocks:
            x = block(x)
        return self.transformer.ff_out(x)


def _coefficients(model, ffn, run) -> dict[int, torch.Tensor]:
    out = {}
    handles = ffn.hook_coefficients(lambda i: lambda m, args: out.__setitem__(i, args[0].detach().double()))
    with torch.no_grad():
        run(model)
    for h in handles:
        h.remove()
    return out


def _expected_factor(row: torch.Tensor, q: float, p: float) -> torch.Tensor:
    """Algorithm 1 written out: slots at or below the layer's q-quantile get p * mean / C̄_i, others 1."""
    row = row.double()
    selected = row <= torch.quantile(row, q)
    return torch.where(selected, p * row.mean() / row, torch.ones_like(row))


def _assert_edit_scales_exactly_the_selected_coefficients(model, run, mlp_inputs_of, overrides=None, q=0.5, p=2.0):
    """Edit with ``resuscitate``; then feed each layer's MLP the input it saw before the edit, so the
    after/before ratio of every coefficient must be exactly the factor of its slot."""
    ffn = locate_ffn(model, overrides)
    before = _coefficients(model, ffn, run)
    inputs = mlp_inputs_of(model, ffn, run)
    table = [before[i].abs().reshape(-1, layer.d_ff).mean(0) for i, layer in enumerate(ffn.layers)]
    untouched = {n: t.clone() for n, t in model.named_parameters()}
    resuscitate(ffn, [t.float() for t in table], q, p)
    changed = {n for n, t in model.named_parameters() if not torch.equal(t, untouched[n])}
    edited = {f"{layer.up_name}.weight" for layer in ffn.layers}
    edited |= {f"{layer.up_name}.bias" for layer in ffn.layers if layer.up_proj.bias is not None}
    assert changed == edited  # the up rows (and their bias entries), nothing else
    for i, layer in enumerate(ffn.layers):
        mlp = model.get_submodule(layer.mlp_name)
        after = _coefficients(model, ffn, lambda m, mlp=mlp, i=i: mlp(inputs[i]))[i]
        factor = _expected_factor(table[i].float(), q, p)
        assert int((factor != 1).sum()) > 0
        torch.testing.assert_close(after, before[i] * factor, rtol=1e-5, atol=1e-7)
    return ffn


def _mlp_inputs(model, ffn, run) -> dict[int, torch.Tensor]:
    out = {}
    handles = [model.get_submodule(layer.mlp_name).register_forward_pre_hook(
        lambda m, args, i=layer.index: out.__setitem__(i, args[0].detach())) for layer in ffn.layers]
    with torch.no_grad():
        run(model)
    for h in handles:
        h.remove()
    return out


@pytest.mark.parametrize("model_type", ["phi3", "glm"])
def test_fused_gate_up_resuscitation_scales_exactly_the_selected_coefficients(model_type, layout_models):
    model = copy.deepcopy(layout_models[model_type])
    ids = torch.randint(0, model.config.vocab_size, (3, 11), generator=torch.Generator().manual_seed(1))
    gate_before = [model.get_submodule(f"model.layers.{i}.mlp.gate_up_proj").weight[:64].clone()
                   for i in range(NUM_LAYERS)]
    ffn = _assert_edit_scales_exactly_the_selected_coefficients(model, lambda m: m(input_ids=ids), _mlp_inputs)
    assert all(layer.up_half == 1 for layer in ffn.layers)  # [gate; up]: the second half
    for i in range(NUM_LAYERS):  # the gate half of the fused weight is untouched
        assert torch.equal(model.get_submodule(f"model.layers.{i}.mlp.gate_up_proj").weight[:64], gate_before[i])


def test_olmo1_native_fused_ff_proj_is_up_first():
    torch.manual_seed(0)
    model = OlmoNative().eval()
    x = torch.randn(2, 9, 16)
    ffn = _assert_edit_scales_exactly_the_selected_coefficients(
        model, lambda m: m(x), lambda m, f, run: _block_inputs(m, f, run))
    assert [layer.down_name for layer in ffn.layers] == ["transformer.blocks.0.ff_out", "transformer.blocks.1.ff_out"]
    assert all(layer.up_half == 0 for layer in ffn.layers)


def _block_inputs(model, ffn, run):
    return _mlp_inputs(model, ffn, run)  # the block is the MLP's parent here: its input is the FFN input


def test_up_bias_is_scaled_with_its_row(tokenizer):
    model = build("llama", tokenizer, mlp_bias=True)
    ids = torch.randint(0, model.config.vocab_size, (2, 8), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():  # a bias large enough to matter
        for layer in locate_ffn(model).layers:
            layer.up_proj.bias.normal_(0, 1.0)
    _assert_edit_scales_exactly_the_selected_coefficients(model, lambda m: m(input_ids=ids), _mlp_inputs)


# ------------------------------------------------------------------------------ messages, followed


def test_up_proj_null_alone_is_accepted(layout_models):
    ffn = locate_ffn(layout_models["phi3"], {"layers": None, "down_proj": None, "up_proj": None, "up_half": None})
    assert ffn.gated and ffn.layers[0].down_name == "model.layers.0.mlp.down_proj"


def test_non_gated_resuscitation_points_to_rescale_and_rescale_works(layout_models, tokenizer, corpus_jsonl, tmp_path):
    from kdyn.interventions import build_intervention
    from tests.test_resuscitate import MEASURE, _ctx

    model = copy.deepcopy(layout_models["phi"])  # Phi-1/2: fc2(gelu(fc1 x)), not gated
    with pytest.raises(KdynError, match="use intervention=rescale") as err:
        build_intervention({"name": "resuscitate", "measure": MEASURE}).apply(_ctx(model, tokenizer, corpus_jsonl,
                                                                                   tmp_path))
    assert "\n" not in str(err.value)
    # following the advice: intervention=rescale needs only the down projection
    record = build_intervention({"name": "rescale", "measure": MEASURE}).apply(_ctx(model, tokenizer, corpus_jsonl,
                                                                                   tmp_path))
    assert record["slots"] == NUM_LAYERS * 64 and 0 < record["selected"] < record["slots"]


class GatedW(nn.Module):
    """A gated MLP with names kdyn's table does not know: down_proj(silu(w1 x) * w3 x)."""

    def __init__(self, d=16, d_ff=24):
        super().__init__()
        self.w1, self.w3 = nn.Linear(d, d_ff, bias=False), nn.Linear(d, d_ff, bias=False)
        self.down_proj = nn.Linear(d_ff, d, bias=False)

    def forward(self, x):
        return x + self.down_proj(F.silu(self.w1(x)) * self.w3(x))


class TinyW(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([nn.Module(), nn.Module()])
        for block in self.layers:
            block.mlp = GatedW()

    def forward(self, x):
        for block in self.layers:
            x = block.mlp(x)
        return x


def test_unknown_gated_names_message_names_up_proj_and_following_it_works():
    torch.manual_seed(0)
    model = TinyW().eval()
    with pytest.raises(KdynError, match=r"set model\.ffn\.up_proj=") as err:
        locate_ffn(model).require_up_rows("intervention=resuscitate")
    assert "\n" not in str(err.value)
    x = torch.randn(2, 5, 16)
    _assert_edit_scales_exactly_the_selected_coefficients(model, lambda m: m(x), _mlp_inputs, {"up_proj": "w3"})


def test_wrong_up_proj_lists_the_siblings_and_one_of_them_works():
    model = TinyW()
    with pytest.raises(KdynError, match=r"its siblings: w1, w3") as err:
        locate_ffn(model, {"up_proj": "up"})
    assert "model.ffn.up_proj" in str(err.value)
    assert locate_ffn(model, {"up_proj": "w3"}).layers[1].up_name == "layers.1.mlp.w3"


def test_fused_up_proj_without_up_half_asks_for_it_and_following_it_works(layout_models):
    model = copy.deepcopy(layout_models["phi3"])
    with pytest.raises(KdynError, match=r"model\.ffn\.up_half=first or model\.ffn\.up_half=second"):
        locate_ffn(model, {"up_proj": "gate_up_proj"})
    ids = torch.randint(0, model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(3))
    _assert_edit_scales_exactly_the_selected_coefficients(
        model, lambda m: m(input_ids=ids), _mlp_inputs, {"up_proj": "gate_up_proj", "up_half": "second"})


def test_up_half_alone_or_invalid_says_what_to_set_and_following_it_works(layout_models):
    model = layout_models["phi3"]
    with pytest.raises(KdynError, match=r"set model\.ffn\.up_proj="):
        locate_ffn(model, {"up_half": "second"})
    with pytest.raises(KdynError, match=r"model\.ffn\.up_half=first or model\.ffn\.up_half=second"):
        locate_ffn(model, {"up_proj": "gate_up_proj", "up_half": "2nd"})
    assert locate_ffn(model, {"up_proj": "gate_up_proj", "up_half": "second"}).layers[0].up_half == 1
    assert locate_ffn(model, {"up_half": None}).layers[0].up_half == 1


def test_up_proj_of_the_wrong_width_is_refused_and_null_works(layout_models):
    model = layout_models["phi3"]
    with pytest.raises(KdynError, match=r"not this MLP's up projection.*model\.ffn\.up_proj to the right module name, or null"):
        locate_ffn(model, {"up_proj": "down_proj"})  # a sibling, but d_model wide
    assert locate_ffn(model, {"up_proj": None}).layers[0].up_name == "model.layers.0.mlp.gate_up_proj"


def test_mixture_of_experts_is_named_and_the_shared_expert_advice_works(tokenizer):
    model = build("qwen2_moe", tokenizer, num_experts=2, num_experts_per_tok=1, moe_intermediate_size=16,
                  shared_expert_intermediate_size=64)
    with pytest.raises(KdynError, match=r"mixture-of-experts.*model\.ffn\.down_proj=mlp\.shared_expert\.down_proj") as e:
        locate_ffn(model)
    assert "\n" not in str(e.value)
    ffn = locate_ffn(model, {"down_proj": "mlp.shared_expert.down_proj"})
    assert ffn.gated and [layer.down_name for layer in ffn.layers] == [
        f"model.layers.{i}.mlp.shared_expert.down_proj" for i in range(NUM_LAYERS)]
    batches = document_batches(DOCS, tokenizer, num_sequences=len(DOCS), seq_len=64, batch_size=3)
    result = measure(model, ffn, batches).compute()
    expected, _ = independent_entropy(model, tokenizer, DOCS, [layer.down_proj for layer in ffn.layers])
    torch.testing.assert_close(result["per_layer"], torch.tensor(expected, dtype=torch.float64), rtol=1e-6, atol=1e-9)


def test_mixture_of_experts_without_a_dense_module_says_so(tokenizer):
    model = build("mixtral", tokenizer, num_local_experts=2, num_experts_per_tok=1)
    with pytest.raises(KdynError, match="mixture-of-experts.*no such dense module"):
        locate_ffn(model)


class TwoPerLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.config = type("Config", (), {"num_hidden_layers": 2, "model_type": "twoperlayer"})()
        self.blocks = nn.ModuleList([nn.ModuleDict({"a": nn.ModuleDict({"out": nn.Linear(8, 4)}),
                                                    "b": nn.ModuleDict({"out": nn.Linear(12, 4)})}) for _ in range(2)])


def test_ambiguous_down_suffix_asks_for_a_unique_one_and_following_it_works():
    with pytest.raises(KdynError, match="matches exactly one module per layer"):
        locate_ffn(TwoPerLayer(), {"down_proj": "out"})
    ffn = locate_ffn(TwoPerLayer(), {"down_proj": "b.out"})
    assert [layer.down_name for layer in ffn.layers] == ["blocks.0.b.out", "blocks.1.b.out"] and ffn.d_ff == (12, 12)


@pytest.mark.parametrize("model_type, ffn_params", [
    ("opt", {"fc1", "fc2"}),  # the FFN sits directly in the decoder layer
    ("phi3", {"mlp.gate_up_proj", "mlp.down_proj"}),
    ("mpt", {"ffn.up_proj", "ffn.down_proj"}),
])
def test_attn_mlp_groups_put_only_the_ffn_in_mlp(model_type, ffn_params, layout_models):
    from kdyn.models.ffn import parameter_groups_by_layer

    model = layout_models[model_type]
    groups = parameter_groups_by_layer(model, locate_ffn(model), "attn_mlp")
    block = LAYOUTS[model_type][1].format(i=0).rsplit(".", 2 if ".mlp." in LAYOUTS[model_type][1]
                                                        or ".ffn." in LAYOUTS[model_type][1] else 1)[0]
    modules = {n[len(block) + 1:].rsplit(".", 1)[0] for n in groups["layer_0.mlp"]}
    assert modules == ffn_params
    attn = {n[len(block) + 1:] for n in groups["layer_0.attn"]}
    assert attn and not any(n.startswith(tuple(ffn_params)) for n in attn)
