"""The README's "Architecture" worked examples, run as written: every fenced block in that section
whose first line is ``# <path>`` is written to a temporary folder (conf files under an extra Hydra
search path, Python modules on sys.path), then composed, resolved and trained."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from tests.conftest import FAST_TRAINER, compose_cfg

README = Path(__file__).resolve().parents[1] / "README.md"


def architecture_files() -> dict[str, str]:
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Architecture\n", 1)[1].split("\n## ", 1)[0]
    files = {}
    for body in re.findall(r"```(?:yaml|python)\n(.*?)```", section, flags=re.S):
        first = body.splitlines()[0]
        match = re.match(r"#\s+(\S+\.(?:yaml|py))\b", first)
        if match:
            files[match.group(1)] = body
    return files


@pytest.fixture
def examples(tmp_path, monkeypatch):
    """{path: file} written under tmp_path; conf/ becomes an extra search path, modules importable."""
    files = architecture_files()
    for rel, body in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path, files


def _compose(root: Path, out: Path, *overrides: str):
    return compose_cfg("train", [f"hydra.searchpath=[file://{root / 'conf'}]", *overrides], out)


def test_the_readme_shows_both_examples():
    assert {"conf/model/base/smollm.yaml", "conf/model/smollm-135m.yaml", "my_interventions.py",
            "conf/intervention/scale_ffn_output.yaml"} <= set(architecture_files())


def test_new_model_family_composes_resolves_and_is_located(examples, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    from kdyn.models.checkpoints import resolve_checkpoint
    from kdyn.models.ffn import locate_ffn
    from kdyn.models.loading import resolve

    root, _ = examples
    cfg = _compose(root, tmp_path / "run", "model=smollm-135m")
    node = dict(cfg.model)
    # the schema's keys and defaults, this model's own name/repo, the family of its base
    assert (node["name"], node["repo"], node["family"], node["step"], node["dtype"]) == (
        "smollm-135m", "HuggingFaceTB/SmolLM-135M", "hub", None, "float32")
    assert set(node) == {"name", "family", "repo", "step", "revision", "path", "dtype", "attn_implementation",
                         "trust_remote_code", "ffn", "revision_lock", "resolver"}
    assert node["resolver"] == "kdyn.models.checkpoints.resolve_hub"  # named in the family's base file
    ref = resolve(cfg.model)
    assert (ref.name, ref.family, ref.location, ref.revision) == ("smollm-135m", "hub", "HuggingFaceTB/SmolLM-135M",
                                                                  None)
    pinned = resolve_checkpoint({**node, "revision": "step1000"})
    assert pinned.revision == "step1000"
    # a Llama architecture (what SmolLM is): ffn.py finds its memories without overrides
    config = AutoConfig.for_model("llama", vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=32)
    assert locate_ffn(AutoModelForCausalLM.from_config(config)).num_layers == 2


def test_new_intervention_is_built_from_its_target_and_trains(examples, tmp_path, saved_models, corpus_jsonl):
    from safetensors.torch import load_file

    from kdyn.errors import KdynError
    from kdyn.interventions import build_intervention
    from kdyn.models.ffn import locate_ffn
    from kdyn.models.loading import load_model
    from kdyn.train import train

    root, _ = examples
    overrides = ["model=local", f"model.path={saved_models['llama']}", "corpus=text", f"corpus.path={corpus_jsonl}",
                 "intervention=scale_ffn_output", "intervention.factor=0.25", "data.seq_len=32", "data.batch_size=2",
                 *FAST_TRAINER]
    # apply() alone: every down projection is the original times the factor
    cfg = _compose(root, tmp_path / "apply", *overrides)
    intervention = build_intervention(dict(cfg.intervention))
    assert intervention.name == "scale_ffn_output"
    model = load_model({"name": "local", "family": "local", "path": str(saved_models["llama"])}).model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ffn = locate_ffn(model)
    record = intervention.apply(type("Ctx", (), {"ffn": ffn, "model": model})())
    assert record == {"factor": 0.25, "layers": ffn.num_layers}
    down = {id(m.weight) for m in ffn.down_modules()}
    for name, param in model.named_parameters():
        expected = before[name] * 0.25 if id(param) in down else before[name]
        assert torch.equal(param.detach(), expected), name
    # through kdyn-train: the record lands in intervention.json and results.json
    cfg = _compose(root, tmp_path / "run", *overrides, "trainer.max_steps=2")
    results = train(cfg)
    out = Path(cfg.paths.output_dir)
    assert results["intervention"] == {"name": "scale_ffn_output", "factor": 0.25, "layers": 2}
    assert json.loads((out / "intervention.json").read_text()) == results["intervention"]
    assert load_file(out / "checkpoints" / "hf" / "model.safetensors")  # trained and exported
    with pytest.raises(KdynError, match="must be positive"):
        build_intervention({**dict(cfg.intervention), "factor": -1}).check()
    with pytest.raises(KdynError, match=r"cannot be imported.*full import path"):
        build_intervention({"_target_": "my_interventions.Nope", "name": "x"})
