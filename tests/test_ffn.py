"""The FFN locator finds, for every architecture, the module whose input is the memory coefficients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdyn.errors import KdynError
from kdyn.models.ffn import locate_ffn, parameter_groups_by_layer
from tests.conftest import ARCHS


def _independent_coefficients(arch: str, mlp: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The coefficient formula per architecture, written out from the papers (not from ffn.py)."""
    if arch in ("olmo", "olmo2", "llama"):
        return F.silu(mlp.gate_proj(x)) * mlp.up_proj(x)
    if arch == "gpt_neox":
        return mlp.act(mlp.dense_h_to_4h(x))
    if arch == "gpt2":
        return mlp.act(mlp.c_fc(x))
    raise AssertionError(arch)


@pytest.mark.parametrize("arch", ARCHS)
def test_down_projection_input_is_the_memory_coefficient(arch, tiny_models):
    model = tiny_models[arch]
    ffn = locate_ffn(model)
    assert ffn.num_layers == model.config.num_hidden_layers
    assert ffn.gated == (arch in ("olmo", "olmo2", "llama"))
    captured, mlp_inputs = {}, {}
    handles = []
    for layer in ffn.layers:
        mlp = model.get_submodule(layer.mlp_name)
        handles.append(layer.down_proj.register_forward_pre_hook(
            lambda m, args, i=layer.index: captured.__setitem__(i, args[0].detach())))
        handles.append(mlp.register_forward_pre_hook(
            lambda m, args, i=layer.index: mlp_inputs.__setitem__(i, args[0].detach())))
    ids = torch.randint(0, model.config.vocab_size, (2, 9))
    with torch.no_grad():
        model(input_ids=ids)
    for h in handles:
        h.remove()
    for layer in ffn.layers:
        mlp = model.get_submodule(layer.mlp_name)
        with torch.no_grad():
            expected = _independent_coefficients(arch, mlp, mlp_inputs[layer.index])
        assert captured[layer.index].shape == (2, 9, layer.d_ff)
        torch.testing.assert_close(captured[layer.index], expected)


def test_gpt2_attention_projection_is_not_mistaken_for_the_mlp(tiny_models):
    ffn = locate_ffn(tiny_models["gpt2"])
    assert all(".mlp.c_proj" in layer.down_name and ".attn." not in layer.down_name for layer in ffn.layers)
    # Conv1D stores [in, out]: d_ff is the input size of c_proj.
    assert ffn.d_ff == (tiny_models["gpt2"].config.n_inner,) * 2


def test_up_rows_scale_coefficients_linearly(tiny_models):
    model = tiny_models["llama"]
    layer = locate_ffn(model).layers[0]
    rows = layer.up_rows()
    assert rows.shape == (layer.d_ff, model.config.hidden_size)
    assert rows.data_ptr() == layer.up_proj.weight.data_ptr()  # a view, so edits reach the model


def test_non_gated_mlp_has_no_up_rows(tiny_models):
    layer = locate_ffn(tiny_models["gpt_neox"]).layers[0]
    with pytest.raises(KdynError, match="rescale"):
        layer.up_rows()


def test_unknown_architecture_names_model_type_and_config_key():
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.ffn_in, self.ffn_out = torch.nn.Linear(4, 8), torch.nn.Linear(8, 4)

    class Strange(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.ModuleList([Block(), Block()])

    with pytest.raises(KdynError) as err:
        locate_ffn(Strange())
    assert "Strange" in str(err.value) and "model.ffn.down_proj" in str(err.value)
    ffn = locate_ffn(Strange(), {"down_proj": "ffn_out"})
    assert [layer.down_name for layer in ffn.layers] == ["blocks.0.ffn_out", "blocks.1.ffn_out"]
    assert ffn.d_ff == (8, 8)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_parameter_groups_cover_every_parameter_once(arch, tiny_models):
    model = tiny_models[arch]
    ffn = locate_ffn(model)
    for split in ("block", "attn_mlp"):
        groups = parameter_groups_by_layer(model, ffn, split)
        names = [n for members in groups.values() for n in members]
        assert sorted(names) == sorted(n for n, _ in model.named_parameters())
        assert len(names) == len(set(names))
    split = parameter_groups_by_layer(model, ffn, "attn_mlp")
    assert all(".mlp." in n for n in split["layer_0.mlp"])
    assert not any(".mlp." in n for n in split["layer_0.attn"])
