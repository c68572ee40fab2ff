"""Build a freshly initialised Hugging Face causal LM from a handful of sizes.

Used to pretrain kdyn's embedded tiny model and, in tests and benchmarks, to get a small model of
every supported architecture without downloading anything (litgpt-style tiny configs).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from kdyn.errors import KdynError

SUPPORTED_ARCHS = ("olmo", "olmo2", "llama", "gpt_neox", "gpt2")


@dataclass(frozen=True)
class ArchSpec:
    """Sizes of a from-scratch model. ``arch`` is a transformers ``model_type``."""

    arch: str = "olmo"
    vocab_size: int = 2048
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 512
    max_position_embeddings: int = 256
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None

    def to_hf_config(self):
        if self.arch not in SUPPORTED_ARCHS:
            raise KdynError(f"unknown architecture {self.arch!r}; choose one of {', '.join(SUPPORTED_ARCHS)}")
        ids = dict(bos_token_id=self.bos_token_id, eos_token_id=self.eos_token_id, pad_token_id=self.pad_token_id)
        if self.arch == "gpt2":
            return AutoConfig.for_model(
                "gpt2",
                vocab_size=self.vocab_size,
                n_embd=self.hidden_size,
                n_layer=self.num_layers,
                n_head=self.num_heads,
                n_inner=self.intermediate_size,
                n_positions=self.max_position_embeddings,
                tie_word_embeddings=self.tie_word_embeddings,
                resid_pdrop=0.0,
                embd_pdrop=0.0,
                attn_pdrop=0.0,
                **ids,
            )
        extra = {"rotary_pct": 0.25, "use_parallel_residual": True} if self.arch == "gpt_neox" else {}
        return AutoConfig.for_model(
            self.arch,
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            intermediate_size=self.intermediate_size,
            max_position_embeddings=self.max_position_embeddings,
            tie_word_embeddings=self.tie_word_embeddings,
            **ids,
            **extra,
        )


def build_scratch_model(spec: ArchSpec, seed: int | None = None) -> PreTrainedModel:
    """A randomly initialised causal LM (deterministic when ``seed`` is given), in fp32, eager attention."""
    config = spec.to_hf_config()
    config._attn_implementation = "eager"
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    else:
        model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    return model


def spec_from_mapping(values) -> ArchSpec:
    """An ``ArchSpec`` from a config node, rejecting unknown keys with a clear message."""
    values = dict(values)
    known = set(asdict(ArchSpec()).keys())
    unknown = sorted(set(values) - known)
    if unknown:
        raise KdynError(f"unknown architecture keys {unknown}; valid keys are {sorted(known)}")
    return ArchSpec(**values)


def build_scratch(model_cfg: Mapping[str, Any], corpus_cfg: Mapping[str, Any] | None):
    """``model=scratch``: a fresh model (``model.arch``) and a BPE tokenizer trained on ``corpus_cfg``'s documents."""
    from kdyn.data.corpora import load_documents
    from kdyn.data.tokenizer import train_bpe_tokenizer

    if corpus_cfg is None:
        raise KdynError("model=scratch needs a corpus to train its tokenizer on")
    tokenizer = train_bpe_tokenizer(load_documents(corpus_cfg), int(model_cfg.get("tokenizer_vocab_size", 2048)))
    arch = dict(model_cfg.get("arch") or {})
    arch.update(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = build_scratch_model(spec_from_mapping(arch), seed=int(model_cfg.get("init_seed", 0)))
    return model, tokenizer
