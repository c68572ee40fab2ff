"""The LightningModule's loss, optimizer groups and learning-rate schedule."""

from __future__ import annotations

import math

import pytest
import torch

from kdyn.errors import KdynError
from kdyn.module import CausalLMModule, causal_lm_loss, lr_lambda


def test_loss_matches_transformers_own_loss(tiny_models):
    model = tiny_models["olmo"]
    ids = torch.randint(2, model.config.vocab_size, (3, 12))
    with torch.no_grad():
        out = model(input_ids=ids, labels=ids)
        ours, n = causal_lm_loss(out.logits, ids, torch.ones_like(ids))
    torch.testing.assert_close(ours, out.loss)
    assert int(n) == 3 * 11


def test_padding_is_excluded_from_the_loss(tiny_models):
    model = tiny_models["gpt_neox"]
    ids = torch.randint(2, model.config.vocab_size, (2, 10))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # right padding in the second row
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
        loss, n = causal_lm_loss(logits, ids, mask)
    # Independent: per-token NLL of every (position -> next token) pair whose target is real.
    logp = torch.log_softmax(logits.float(), -1)
    terms = [-logp[b, t, ids[b, t + 1]] for b in range(2) for t in range(9) if mask[b, t + 1] == 1]
    assert int(n) == len(terms) == 9 + 5
    torch.testing.assert_close(loss, torch.stack(terms).mean())


def test_lr_schedule_warmup_and_decay_endpoints():
    kw = dict(warmup_steps=10, total_steps=110, min_lr_ratio=0.1)
    assert lr_lambda(0, schedule="cosine", **kw) == pytest.approx(0.1)
    assert lr_lambda(9, schedule="cosine", **kw) == pytest.approx(1.0)
    assert lr_lambda(10, schedule="cosine", **kw) == pytest.approx(1.0)
    assert lr_lambda(60, schedule="cosine", **kw) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_lambda(110, schedule="cosine", **kw) == pytest.approx(0.1)
    assert lr_lambda(60, schedule="linear", **kw) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_lambda(100, schedule="constant", **kw) == 1.0
    with pytest.raises(KdynError, match="scheduler"):
        lr_lambda(50, schedule="exotic", **kw)


def test_frozen_parameters_never_reach_the_optimizer(tiny_models):
    import copy

    model = copy.deepcopy(tiny_models["llama"])
    frozen = {n for n, _ in model.named_parameters() if n.startswith("model.layers.0.")}
    for n, p in model.named_parameters():
        p.requires_grad_(n not in frozen)
    module = CausalLMModule(model, {"lr": 1e-3, "weight_decay": 0.1})
    groups = module.parameter_groups()
    in_groups = {n for g in groups for n in g["param_names"]}
    assert in_groups.isdisjoint(frozen)
    assert in_groups | frozen == {n for n, _ in model.named_parameters()}
    for g in groups:  # weight decay only on matrices
        params = dict(model.named_parameters())
        assert all((params[n].ndim >= 2) == (g["weight_decay"] > 0) for n in g["param_names"])


def test_lr_multipliers_make_their_own_groups(tiny_models):
    model = tiny_models["gpt2"]
    module = CausalLMModule(model, {"lr": 1e-3, "weight_decay": 0.0})
    target = "transformer.h.1.mlp.c_fc.weight"
    module.lr_multipliers = {target: 2.5}
    groups = module.parameter_groups()
    owner = next(g for g in groups if target in g["param_names"])
    assert owner["lr"] == pytest.approx(2.5e-3) and owner["param_names"] == [target]
    assert all(g["lr"] == pytest.approx(1e-3) for g in groups if g is not owner)


def test_unknown_scheduler_is_rejected_at_construction(tiny_models):
    with pytest.raises(KdynError, match="optim.scheduler"):
        CausalLMModule(tiny_models["gpt2"], {"lr": 1e-3, "scheduler": "wsd"})


def step_halving(*, warmup_steps, total_steps, min_lr_ratio, every):
    """A schedule of the tests' own (named by _target_ below): halve the rate every ``every`` steps."""
    return lambda step: 0.5 ** (step // every)


def _multipliers(module, steps):
    scheduler = module.configure_optimizers()["lr_scheduler"]["scheduler"]
    return [scheduler.lr_lambdas[0](s) for s in steps]


@pytest.mark.parametrize("name", ["cosine", "linear", "constant"])
def test_short_schedule_name_is_the_target_node_with_the_same_numbers(tiny_models, name):
    optim = {"lr": 1e-3, "warmup_steps": 3, "min_lr_ratio": 0.1, "total_steps": 13}
    short = CausalLMModule(tiny_models["gpt2"], {**optim, "scheduler": name})
    node = CausalLMModule(tiny_models["gpt2"], {**optim, "scheduler": {"_target_": f"kdyn.module.{name}"}})
    steps = range(16)
    got = _multipliers(short, steps)
    assert got == _multipliers(node, steps)  # exactly equal, not approximately
    progress = [min(1.0, max(0.0, (s - 3) / 10)) for s in steps]  # the closed forms, written here
    after = {"constant": [1.0] * 16, "linear": [0.1 + 0.9 * (1 - p) for p in progress],
             "cosine": [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)) for p in progress]}[name]
    assert got == pytest.approx([(s + 1) / 3 if s < 3 else after[s] for s in steps])


def test_a_schedule_of_ones_own_is_named_by_target_with_its_own_keys(tiny_models):
    module = CausalLMModule(tiny_models["gpt2"], {
        "lr": 1e-3, "total_steps": 10, "scheduler": {"_target_": "tests.test_module.step_halving", "every": 2}})
    assert _multipliers(module, range(6)) == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]


@pytest.mark.parametrize("scheduler", [{"_target_": "tests.test_module.no_such_schedule"}, {"every": 2}])
def test_bad_schedule_node_is_one_line_at_construction(tiny_models, scheduler):
    with pytest.raises(KdynError, match=r"optim\.scheduler") as info:
        CausalLMModule(tiny_models["gpt2"], {"lr": 1e-3, "scheduler": scheduler})
    assert "\n" not in str(info.value)


def test_schedule_factory_missing_its_own_key_is_one_line(tiny_models):
    module = CausalLMModule(tiny_models["gpt2"], {"lr": 1e-3, "scheduler": {"_target_": "tests.test_module.step_halving"}})
    with pytest.raises(KdynError, match=r"optim\.scheduler\._target_=tests\.test_module\.step_halving") as info:
        module.configure_optimizers()
    assert "\n" not in str(info.value)


def test_optimizer_is_the_optim_target_with_the_yaml_defaults(tiny_models):
    from omegaconf import OmegaConf

    from kdyn.config import CONF_DIR

    written = OmegaConf.load(CONF_DIR / "train.yaml").optim  # the defaults, read here independently
    module = CausalLMModule(tiny_models["gpt2"], {"lr": 1e-3})
    optimizer = module.configure_optimizers()["optimizer"]
    assert type(optimizer) is torch.optim.AdamW and written["_target_"] == "torch.optim.AdamW"
    for group in optimizer.param_groups:
        assert tuple(group["betas"]) == tuple(written.betas) and group["eps"] == written.eps
        assert group["lr"] == pytest.approx(1e-3)
        assert group["weight_decay"] in (0.0, written.weight_decay)
    # A partial node takes the schedule of conf/train.yaml (no second default in the code).
    assert module.optim["scheduler"] == written.scheduler and module.optim["warmup_steps"] == written.warmup_steps


def test_another_optimizer_class_by_target(tiny_models):
    from kdyn.config import compose_config, to_plain

    cfg = compose_config("train", ["optim._target_=torch.optim.SGD", "~optim.betas", "~optim.eps", "+optim.momentum=0.5"])
    module = CausalLMModule(tiny_models["gpt2"], to_plain(cfg.optim))
    optimizer = module.configure_optimizers()["optimizer"]
    assert type(optimizer) is torch.optim.SGD
    assert all(g["momentum"] == 0.5 and g["lr"] == pytest.approx(cfg.optim.lr) for g in optimizer.param_groups)


@pytest.mark.parametrize("change", [{"_target_": "torch.optim.NoSuchOptimizer"}, {"_target_": "torch.optim.SGD"},
                                    {"_partial_": False}])
def test_bad_optimizer_target_is_one_line(tiny_models, change):
    from kdyn.config import compose_config, to_plain

    module = CausalLMModule(tiny_models["gpt2"], {**to_plain(compose_config("train").optim), **change})
    with pytest.raises(KdynError, match=r"optim\._") as info:
        module.configure_optimizers()
    assert "\n" not in str(info.value)
