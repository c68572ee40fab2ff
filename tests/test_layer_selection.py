"""Layer selection and ALR multipliers from traced layer statistics, on hand-made stats."""

from __future__ import annotations

import json
import random

import pytest

from kdyn.errors import KdynError
from kdyn.interventions.layer_selection import (
    alr_multipliers,
    combine_sets,
    load_layer_stats,
    select_layers,
    validate_layer_stats,
)

LAYERS = [f"layer_{i}" for i in range(6)]
R_NEW = [0.5, 2.0, 1.5, 0.25, 1.25, 3.0]  # mean 1.4167
R_UPD = [3.0, 0.5, 0.5, 2.0, 0.5, 0.5]  # mean 1.1667


def make_stats(**sets):
    out = {"granularity": "block", "norm": "l2", "layers": list(LAYERS), "sets": {}}
    for name, r in sets.items():
        g_lm = [1.0 + i for i in range(len(r))]
        out["sets"][name] = {"g_span": [x * y for x, y in zip(r, g_lm)], "g_lm": g_lm, "r": list(r), "n_examples": 10}
    return out


STATS = make_stats(new_entities=R_NEW, updated=R_UPD)


def above_mean(r):
    mean = sum(r) / len(r)
    return [LAYERS[i] for i, v in enumerate(r) if v > mean]


def test_above_mean_selects_layers_over_the_mean():
    assert select_layers(STATS, "new_entities") == above_mean(R_NEW) == ["layer_1", "layer_2", "layer_5"]
    assert select_layers(STATS, "updated", "above_mean") == above_mean(R_UPD) == ["layer_0", "layer_3"]


def test_top_k_and_bottom_k_return_depth_order():
    by_r = sorted(range(6), key=lambda i: -R_NEW[i])
    assert select_layers(STATS, "new_entities", "top_k", k=2) == [LAYERS[i] for i in sorted(by_r[:2])]
    assert select_layers(STATS, "new_entities", "top_k", k=2) == ["layer_1", "layer_5"]
    assert select_layers(STATS, "new_entities", "bottom_k", k=2) == ["layer_0", "layer_3"]
    # ties go to the shallower layer
    assert select_layers(STATS, "updated", "top_k", k=3) == ["layer_0", "layer_1", "layer_3"]
    with pytest.raises(KdynError, match="needs an integer k"):
        select_layers(STATS, "updated", "top_k")
    with pytest.raises(KdynError, match="needs an integer k"):
        select_layers(STATS, "updated", "top_k", k=7)


def test_score_g_span_selects_on_the_raw_norm():
    g_span = STATS["sets"]["new_entities"]["g_span"]
    assert select_layers(STATS, "new_entities", "top_k", k=1, score="g_span") == [LAYERS[g_span.index(max(g_span))]]


def test_explicit_is_validated_and_sorted():
    assert select_layers(STATS, "new_entities", "explicit", layers=["layer_4", "layer_0", 2]) == [
        "layer_0", "layer_2", "layer_4"]
    with pytest.raises(KdynError, match="'layer_9' is not in the layer stats"):
        select_layers(STATS, "new_entities", "explicit", layers=["layer_9"])
    with pytest.raises(KdynError, match="non-empty list"):
        select_layers(STATS, "new_entities", "explicit", layers=[])


def test_random_k_is_deterministic_per_seed_with_the_above_mean_k():
    k_default = len(above_mean(R_NEW))
    picks = {seed: select_layers(STATS, "new_entities", "random_k", seed=seed) for seed in range(20)}
    assert all(len(p) == k_default and p == sorted(p, key=LAYERS.index) for p in picks.values())
    assert picks[3] == select_layers(STATS, "new_entities", "random_k", seed=3)
    assert picks[3] == sorted((LAYERS[i] for i in random.Random(3).sample(range(6), k_default)), key=LAYERS.index)
    assert len({tuple(p) for p in picks.values()}) > 1
    assert len(select_layers(STATS, "new_entities", "random_k", k=5, seed=0)) == 5


def test_flat_profile_has_no_above_mean_layer():
    flat = make_stats(control=[1.0] * 6)
    with pytest.raises(KdynError, match="flat"):
        select_layers(flat, "control")
    with pytest.raises(KdynError, match="pass k"):
        select_layers(flat, "control", "random_k")


def test_alr_multipliers_have_mean_one_and_respect_the_clip():
    mult = alr_multipliers(STATS, "new_entities", clip=(0.0, 100.0))
    mean = sum(R_NEW) / 6
    assert list(mult) == LAYERS
    assert list(mult.values()) == pytest.approx([r / mean for r in R_NEW])
    assert sum(mult.values()) / 6 == pytest.approx(1.0)
    clipped = alr_multipliers(STATS, "new_entities", clip=(0.5, 1.5))
    assert list(clipped.values()) == pytest.approx([min(1.5, max(0.5, r / mean)) for r in R_NEW])
    assert min(clipped.values()) == 0.5 and max(clipped.values()) == 1.5
    with pytest.raises(KdynError, match="clip"):
        alr_multipliers(STATS, "new_entities", clip=(2.0, 1.0))


def test_combine_sets_averages_r_over_sets():
    combined = combine_sets(STATS, ["new_entities", "updated"])
    mean_r = [(a + b) / 2 for a, b in zip(R_NEW, R_UPD)]
    assert combined["sets"]["new_entities+updated"]["r"] == pytest.approx(mean_r)
    assert combined["sets"]["new_entities+updated"]["n_examples"] == 20
    assert "new_entities+updated" not in STATS["sets"]  # the input is not modified
    assert select_layers(STATS, ["new_entities", "updated"]) == above_mean(mean_r)
    assert combine_sets(STATS, ["new_entities", "updated"], how="max")["sets"]["new_entities+updated"]["r"] == [
        max(a, b) for a, b in zip(R_NEW, R_UPD)]


def test_unknown_set_and_rule_are_errors():
    with pytest.raises(KdynError, match="'changed' is not in the layer stats; available: new_entities, updated"):
        select_layers(STATS, "changed")
    with pytest.raises(KdynError, match="unknown layer-selection rule"):
        select_layers(STATS, "updated", "top_half")


def test_load_layer_stats_reads_a_run_folder_and_names_problems(tmp_path):
    (tmp_path / "layer_stats.json").write_text(json.dumps(STATS))
    assert load_layer_stats(tmp_path) == STATS
    assert load_layer_stats(tmp_path / "layer_stats.json") == STATS
    with pytest.raises(KdynError, match="not found"):
        load_layer_stats(tmp_path / "elsewhere")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(KdynError, match="not valid JSON"):
        load_layer_stats(tmp_path / "bad.json")
    short = make_stats(updated=R_UPD)
    short["sets"]["updated"]["r"] = R_UPD[:4]
    with pytest.raises(KdynError, match=r"sets.updated.r must be a list of 6 numbers"):
        validate_layer_stats(short)
    nan = make_stats(updated=R_UPD)
    nan["sets"]["updated"]["g_lm"][2] = float("nan")
    with pytest.raises(KdynError, match="finite"):
        validate_layer_stats(nan)
    with pytest.raises(KdynError, match="'layers'"):
        validate_layer_stats({"sets": {}})
