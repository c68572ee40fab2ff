"""Shared fixtures: offline environment, tiny models of every architecture, composed real configs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
ARCHS = ("olmo", "olmo2", "llama", "gpt_neox", "gpt2")

# A quick tiny-model trajectory for tests (the real default pretrains for minutes).
QUICK_TINY = [
    "model.pretrain_overrides=['trainer.max_steps=12','callbacks.hf_trajectory.steps=[0,6,12]',"
    "'data.seq_len=64','data.batch_size=4','trainer.enable_progress_bar=false']",
]


def shared_data(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not available: {path}")
    return path


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Never touch the user's ~/.cache/kdyn: tests build tiny trajectories in a session folder."""
    from kdyn.utils.quiet import quiet_third_party

    quiet_third_party()
    cache = tmp_path_factory.mktemp("kdyn-cache")
    os.environ["KDYN_CACHE_DIR"] = str(cache)
    yield cache


@pytest.fixture(scope="session")
def corpus_jsonl(tmp_path_factory) -> Path:
    """A small local corpus in the `corpus=text` jsonl contract (WikiText sentences, or generated)."""
    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    source = SHARED_DATA / "wikitext-2" / "valid.txt"
    if source.exists():
        paragraphs = [p.strip() for p in source.read_text(encoding="utf-8").split("\n \n") if len(p.strip()) > 200]
    else:  # still a real corpus, just synthetic text
        paragraphs = [f"Document {i} talks about topic {i % 7} and the number {i * 13}. " * 5 for i in range(400)]
    with path.open("w") as f:
        for text in paragraphs[:300]:
            f.write(json.dumps({"text": text}) + "\n")
    return path


@pytest.fixture(scope="session")
def tokenizer(corpus_jsonl):
    from kdyn.data.tokenizer import train_bpe_tokenizer

    texts = [json.loads(line)["text"] for line in corpus_jsonl.read_text().splitlines()]
    return train_bpe_tokenizer(texts, vocab_size=512)


def tiny_spec(arch: str, tokenizer):
    from kdyn.models.scratch import ArchSpec

    return ArchSpec(arch=arch, vocab_size=len(tokenizer), hidden_size=32, num_layers=2, num_heads=4,
                    intermediate_size=64, max_position_embeddings=128, bos_token_id=tokenizer.bos_token_id,
                    eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


@pytest.fixture(scope="session")
def tiny_models(tokenizer):
    """{arch: freshly initialised tiny model} for every supported architecture."""
    from kdyn.models.scratch import build_scratch_model

    return {arch: build_scratch_model(tiny_spec(arch, tokenizer), seed=0).eval() for arch in ARCHS}


@pytest.fixture(scope="session")
def saved_models(tmp_path_factory, tiny_models, tokenizer) -> dict[str, Path]:
    """{arch: save_pretrained folder holding model + tokenizer}, for `model=local model.path=...`."""
    root = tmp_path_factory.mktemp("saved-models")
    out = {}
    for arch, model in tiny_models.items():
        folder = root / arch
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        out[arch] = folder
    return out


def compose_cfg(config_name: str, overrides: list[str], output_dir: Path):
    """The real composed config (as the entry point sees it), writing into ``output_dir``."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from kdyn.config import CONF_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    GlobalHydra.instance().clear()
    return cfg


@pytest.fixture
def compose_train(tmp_path):
    """Compose the real config; each call gets its own run folder (run0, run1, …)."""
    calls = []

    def _compose(*overrides: str, config_name: str = "train"):
        calls.append(None)
        return compose_cfg(config_name, list(overrides), tmp_path / f"run{len(calls) - 1}")

    return _compose


FAST_TRAINER = ["inject.enabled=false", "trainer.enable_progress_bar=false", "logger=csv", "callbacks.checkpoint.every_n_train_steps=1000"]
