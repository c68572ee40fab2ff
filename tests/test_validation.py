"""Every bad number of an entry point is refused in one line naming the key, before anything runs;
the defaults and every shipped preset pass."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kdyn.config import CONF_DIR, compose_config
from kdyn.errors import KdynError
from kdyn.validation import validate_config

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("task", ["train", "entropy", "eval", "trace"])
def test_defaults_pass(task):
    validate_config(compose_config(task), task)


@pytest.mark.parametrize("preset", sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml")))
def test_every_experiment_preset_passes(preset):
    validate_config(compose_config("train", [f"experiment={preset}"]), "train")


@pytest.mark.parametrize("trainer", ["cpu", "gpu", "ddp", "fsdp"])
def test_every_trainer_passes(trainer):
    validate_config(compose_config("train", [f"trainer={trainer}"]), "train")


@pytest.mark.parametrize(("task", "override", "key"), [
    ("train", "data.batch_size=0", "data.batch_size"),
    ("train", "data.batch_size=-1", "data.batch_size"),
    ("train", "data.seq_len=1", "data.seq_len"),
    ("train", "optim.lr=-1", "optim.lr"),
    ("train", "optim.lr=abc", "optim.lr"),
    ("train", "data.epochs=0", "data.epochs"),
    ("train", "seed=abc", "seed"),
    ("train", "seed=-1", "seed"),
    ("train", "threads=0", "threads"),
    ("train", "resume=maybe", "resume"),
    ("train", "optim.min_lr_ratio=-1", "optim.min_lr_ratio"),
    ("train", "optim.min_lr_ratio=1.5", "optim.min_lr_ratio"),
    ("train", "optim.warmup_steps=-3", "optim.warmup_steps"),
    ("train", "optim.warmup_steps=1.5", "optim.warmup_steps"),
    ("train", "optim.betas=[0.9,1.0]", "optim.betas"),
    ("train", "optim.betas=[0.9]", "optim.betas"),
    ("train", "optim.eps=0", "optim.eps"),
    ("train", "optim.weight_decay=-0.1", "optim.weight_decay"),
    ("train", "optim.scheduler=cosin", "optim.scheduler"),
    ("train", "optim.scheduler={every:2}", "optim.scheduler"),
    ("train", "trainer.max_steps=0", "trainer.max_steps"),
    ("train", "trainer.max_steps=-2", "trainer.max_steps"),
    ("train", "trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches"),
    ("train", "trainer.log_every_n_steps=0", "trainer.log_every_n_steps"),
    ("train", "callbacks.entropy.every_n_steps=0", "callbacks.entropy.every_n_steps"),
    ("train", "callbacks.probes.every_n_steps=0", "callbacks.probes.every_n_steps"),
    ("train", "inject.first_step=-2", "inject.first_step"),
    ("train", "inject.first_row=-1", "inject.first_row"),
    ("train", "inject.interval=0", "inject.interval"),
    ("train", "inject.metrics.window=0", "inject.metrics.window"),
    ("train", "inject.metrics.af_mode=middle", "inject.metrics.af_mode"),
    ("train", "+inject.metrics.windw=3", "inject.metrics.windw"),
    ("train", "corpus.max_documents=0", "corpus.max_documents"),
    ("entropy", "corpus.max_documents=0", "corpus.max_documents"),
    ("train", "+optim.lrr=0.1", "optim.lrr"),
    ("train", "+data.batchsize=4", "data.batchsize"),
    ("entropy", "entropy.batch_size=0", "entropy.batch_size"),
    ("entropy", "entropy.num_sequences=0", "entropy.num_sequences"),
    ("entropy", "+entropy.seqlen=4", "entropy.seqlen"),
    ("eval", "probes.batch_tokens=0", "probes.batch_tokens"),
    ("eval", "probes.device=gpu", "probes.device"),
    ("entropy", "entropy.device=foo", "entropy.device"),
    ("trace", "trace.max_examples=0", "trace.max_examples"),
])
def test_bad_values_are_one_line_naming_the_key(task, override, key):
    with pytest.raises(KdynError) as info:  # a wrong type is refused while composing (kdyn.schemas), a range here
        validate_config(compose_config(task, [override]), task)
    message = str(info.value)
    assert "\n" not in message
    assert key in message


def test_unknown_key_lists_the_valid_ones():
    with pytest.raises(KdynError, match=r"valid optim keys: _target_, _partial_, lr, .*min_lr_ratio"):
        validate_config(compose_config("train", ["+optim.lrr=0.1"]), "train")


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:1", "mps"])
def test_device_names_pass(device):
    validate_config(compose_config("entropy", [f"entropy.device={device}"]), "entropy")


@pytest.mark.parametrize("override", ["optim.lr=0", "data.epochs=0.5", "data.epochs=2"])
def test_boundary_values_that_make_sense_pass(override):
    """lr=0 measures without updating (the gradient-norm tests rely on it); epochs may be fractional."""
    validate_config(compose_config("train", [override]), "train")


@pytest.mark.parametrize("scheduler", ["cosine", "{_target_:kdyn.module.linear}", "{_target_:my.schedules.wsd,decay:0.2}"])
def test_schedule_short_name_or_target_node_passes(scheduler):
    cfg = compose_config("train", [f"optim.scheduler={scheduler}"])
    validate_config(cfg, "train")
    assert cfg.optim.scheduler == "cosine" or cfg.optim.scheduler._target_.endswith((".linear", ".wsd"))


def test_another_optimizer_class_takes_its_own_arguments():
    """The README's example: optim names another class, whose keyword arguments are not AdamW's."""
    overrides = ["optim._target_=torch.optim.SGD", "~optim.betas", "~optim.eps", "+optim.momentum=0.9"]
    validate_config(compose_config("train", overrides), "train")
    with pytest.raises(KdynError, match="unknown key optim.momentum"):  # AdamW's node stays closed
        validate_config(compose_config("train", ["+optim.momentum=0.9"]), "train")


def test_extra_trainer_arguments_are_allowed():
    validate_config(compose_config("train", ["+trainer.profiler=simple"]), "train")


def test_schedules_agree_with_the_module():
    from kdyn.module import SCHEDULES
    from kdyn.validation import SCHEDULES as CHECKED

    assert tuple(CHECKED) == tuple(SCHEDULES)


def test_knowledge_sources_agree_with_the_reader():
    from kdyn.data.knowledge import _SOURCE_KEYS
    from kdyn.validation import KNOWLEDGE_SOURCES

    assert tuple(KNOWLEDGE_SOURCES) == tuple(_SOURCE_KEYS)


def test_trace_choices_agree_with_the_tracer():
    from kdyn.metrics.grad_norms import NORMS
    from kdyn.trace import GRANULARITIES
    from kdyn.validation import TRACE_GRANULARITIES, TRACE_NORMS

    assert (tuple(TRACE_GRANULARITIES), tuple(TRACE_NORMS)) == (tuple(GRANULARITIES), tuple(NORMS))


def _yaml_keys(path: Path) -> list[str]:
    """Top-level keys of one YAML file, read here independently of kdyn (defaults list left out)."""
    from omegaconf import OmegaConf

    return [str(k) for k in OmegaConf.load(path).keys() if k != "defaults"]


# (task, overrides, the refused key, the node whose valid keys are listed, a file whose keys they include)
GROUP_TYPOS = [
    ("train", ["+model.foo=1"], "model.foo", "model", "model/tiny.yaml"),
    ("entropy", ["model=pythia-160m", "+model.stepp=3"], "model.stepp", "model", "model/base/checkpoint.yaml"),
    ("eval", ["+model.ffn.down=x"], "model.ffn.down", "model.ffn", None),
    ("train", ["intervention=localize", "+intervention.q=0.5"], "intervention.q", "intervention",
     "intervention/localize.yaml"),
    ("train", ["intervention=rescale", "+intervention.measure.seqlen=9"], "intervention.measure.seqlen",
     "intervention.measure", None),
    ("train", ["corpus=temporalwiki", "+corpus.period=x"], "corpus.period", "corpus", "corpus/temporalwiki.yaml"),
    ("entropy", ["+corpus.maxdocs=3"], "corpus.maxdocs", "corpus", "corpus/synthetic.yaml"),
    ("train", ["+inject.source.numitems=3"], "inject.source.numitems", "inject.source", None),
]


@pytest.mark.parametrize(("task", "overrides", "key", "node", "file"), GROUP_TYPOS)
def test_unknown_key_in_a_group_node_is_refused_with_the_valid_ones(task, overrides, key, node, file):
    with pytest.raises(KdynError) as info:
        validate_config(compose_config(task, overrides), task)
    message = str(info.value)
    assert "\n" not in message and f"unknown key {key} " in message
    listed = re.search(rf"valid {re.escape(node)} keys[^:]*: ([^.]*(?:\.[^ ][^.]*)*)\. Fix", message).group(1).split(", ")
    if file is not None:
        assert set(_yaml_keys(CONF_DIR / file)) <= set(listed)
    assert key.rsplit(".", 1)[1] not in listed


def test_group_keys_follow_the_chosen_option():
    # scratch has init_seed, tiny does not: the same key is valid for one option and refused for the other
    validate_config(compose_config("train", ["model=scratch", "model.init_seed=3"]), "train")
    with pytest.raises(KdynError, match="unknown key model.init_seed .*model=tiny"):
        validate_config(compose_config("train", ["+model.init_seed=3"]), "train")
    # a model named differently from its file is checked against the file Hydra chose (model=hub)
    cfg = compose_config("train", ["model=hub", "model.name=mine", "model.repo=org/mine"])
    validate_config(cfg, "train")


@pytest.mark.parametrize("args", [["optim.lrr=0.1"], ["+optim.lrr=0.1"], ["data.batch_size=0"], ["data.batch_size=abc"],
                                  ["optim.betas=[0.9,x]"], ["inject.metrics.window=1.5", "experiment=kim2025"],
                                  ["+optim.lr=1"], ["~optim.foo"]])
def test_command_line_refuses_in_one_line_and_writes_nothing(tmp_path, args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "KDYN_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "kdyn.train", *args, "run_id=bad"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    # torch may log its own import-time warnings (glog format "W1201 15:27:53 …"); nothing else may appear
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not re.match(r"[WI]\d{4} ", line)]
    assert len(lines) == 1 and lines[0].startswith("kdyn-train: error:"), proc.stderr
    key = args[0].lstrip("+").split("=")[0]
    assert key in lines[0]
    assert not (tmp_path / "outputs" / "train" / "runs" / "bad").exists()
