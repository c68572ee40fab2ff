"""Model families share base YAML files (conf/model/base/): each composed `model` node is the full
schema, with the model's own name and repo, and the defaults written out here independently."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

CONF_MODEL = Path(__file__).resolve().parents[1] / "conf" / "model"

# The model schema's defaults (what every hub checkpoint config held before the bases existed).
SCHEMA = {"step": None, "revision": None, "path": None, "dtype": "float32", "attn_implementation": "sdpa",
          "trust_remote_code": False, "ffn": {"layers": None, "down_proj": None, "up_proj": None, "up_half": None},
          "revision_lock": None}
PYTHIA_SIZES = ["14m", "31m", "70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b"]
PYTHIA = {f"pythia-{s}": f"EleutherAI/pythia-{s}" for s in PYTHIA_SIZES}
PYTHIA |= {f"pythia-{s}-deduped": f"EleutherAI/pythia-{s}-deduped" for s in PYTHIA_SIZES if s not in ("14m", "31m")}
GPT2 = {n: f"openai-community/{n}" for n in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")}
OLMO = {"olmo-1b": ("allenai/OLMo-1B-hf", 738020), "olmo-7b": ("allenai/OLMo-7B-hf", 557000)}
OLMO2 = {"olmo2-1b": "allenai/OLMo-2-0425-1B", "olmo2-7b": "allenai/OLMo-2-1124-7B",
         "olmo2-13b": "allenai/OLMo-2-1124-13B"}


def expected(stem: str) -> dict:
    node = _expected(stem)
    return {**node, "resolver": f"kdyn.models.checkpoints.resolve_{node['family']}"}  # the family's function


def _expected(stem: str) -> dict:
    if stem in PYTHIA:
        return {**SCHEMA, "name": stem, "family": "pythia", "repo": PYTHIA[stem], "step": 143000}
    if stem in GPT2:
        return {**SCHEMA, "name": stem, "family": "gpt2", "repo": GPT2[stem]}
    if stem in OLMO:
        repo, step = OLMO[stem]
        return {**SCHEMA, "name": stem, "family": "olmo", "repo": repo, "step": step}
    if stem in OLMO2:
        return {**SCHEMA, "name": stem, "family": "olmo2", "repo": OLMO2[stem], "stage": None, "ingredient": None}
    if stem in ("hub", "local"):
        return {**SCHEMA, "name": stem, "family": stem, "repo": None}
    raise KeyError(stem)


def composed_model(stem: str) -> dict:
    """The `model` node as `model=<stem>` composes it (Hydra, the real conf/)."""
    from hydra import compose, initialize_config_dir

    from kdyn.config import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={stem}"])
    return OmegaConf.to_container(cfg.model, resolve=False)


FAMILY_FILES = sorted([*PYTHIA, *GPT2, *OLMO, *OLMO2, "hub", "local"])


def test_every_family_file_is_listed_here():
    on_disk = {p.stem for p in CONF_MODEL.glob("*.yaml")}
    assert on_disk - set(FAMILY_FILES) == {"tiny", "scratch"}


@pytest.mark.parametrize("stem", FAMILY_FILES)
def test_family_file_composes_to_the_full_schema(stem):
    assert composed_model(stem) == expected(stem)


@pytest.mark.parametrize("stem", [*PYTHIA, *GPT2, *OLMO2])
def test_family_file_holds_only_its_own_keys(stem):
    raw = yaml.safe_load((CONF_MODEL / f"{stem}.yaml").read_text())
    assert set(raw) == {"defaults", "name", "repo"}
    assert raw["name"] == stem


def test_an_override_still_applies_on_top_of_the_base():
    from hydra import compose, initialize_config_dir

    from kdyn.config import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["model=pythia-160m", "model.step=3000", "model.dtype=bfloat16"])
    assert (cfg.model.name, cfg.model.step, cfg.model.dtype, cfg.model.family) == ("pythia-160m", 3000, "bfloat16",
                                                                                 "pythia")
