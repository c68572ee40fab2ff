"""Load a model and its tokenizer from a ``model`` config node (hub revision, local dir, tiny, scratch)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from kdyn.errors import KdynError
from kdyn.models.checkpoints import CheckpointRef, resolve_checkpoint
from kdyn.models.provenance import apply_lock, describe_checkpoint
from kdyn.models.scratch import build_scratch
from kdyn.models.tiny import resolve_tiny

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: Any
    ref: CheckpointRef
    checkpoint: dict[str, Any] = field(default_factory=dict)  # commit + weight hashes (kdyn.models.provenance)

    @property
    def context_length(self) -> int | None:
        return context_length(self.model)


def resolve(model_cfg: Mapping[str, Any]) -> CheckpointRef:
    """Validate the model choice and find where it lives — no download, no training (the one place
    every family, the embedded tiny trajectory and a scratch model included, is resolved).

    ``model=tiny`` needs its trajectory built first (:func:`kdyn.organism.ensure_model`, which every
    entry point calls); a missing one is a :class:`KdynError` saying so.
    """
    ref = resolve_checkpoint(model_cfg)
    return resolve_tiny(model_cfg) if ref.family == "tiny" else ref


def load_model(model_cfg: Mapping[str, Any], tokenizer_corpus: Mapping[str, Any] | None = None,
               seq_len: int | None = None, seq_len_key: str = "data.seq_len") -> LoadedModel:
    """Load (or, for ``family=scratch``, build) the model and tokenizer the config names.

    ``tokenizer_corpus`` is the corpus a scratch model's tokenizer is trained on. When ``seq_len``
    is given it is checked against the model's context *before* the weights are loaded.
    """
    ref = resolve(model_cfg)
    dtype = _dtype(model_cfg.get("dtype", "float32"))
    if ref.family == "scratch":
        model, tokenizer = build_scratch(model_cfg, tokenizer_corpus)
        if seq_len is not None:
            check_seq_len(model_cfg, seq_len, context_length(model), seq_len_key)
        return LoadedModel(model.to(dtype), tokenizer, ref)
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    checkpoint = _checkpoint_record(model_cfg, ref)
    revision = checkpoint.get("commit") if checkpoint.get("repo") and checkpoint.get("commit") else ref.revision
    kwargs = dict(revision=revision, trust_remote_code=bool(model_cfg.get("trust_remote_code", False)))
    from safetensors import SafetensorError

    try:
        config = AutoConfig.from_pretrained(ref.location, **kwargs)
        if seq_len is not None:
            check_seq_len(model_cfg, seq_len, context_length(config), seq_len_key)
        tokenizer = AutoTokenizer.from_pretrained(ref.location, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(
            ref.location, config=config, dtype=dtype,
            attn_implementation=model_cfg.get("attn_implementation") or "sdpa", **kwargs
        )
    except (OSError, ValueError, SafetensorError) as e:
        first = str(e).strip().splitlines()[0].rstrip(".") if str(e).strip() else type(e).__name__
        hint = (" HF_HUB_OFFLINE=1 is set, so the checkpoint must already be in the Hugging Face cache; download it "
                "on a machine with network access, or use model=local model.path=DIR.") if offline else ""
        if isinstance(e, SafetensorError):  # e.g. a truncated model.safetensors (an interrupted download or copy)
            hint = (f" The weights file in {ref.location} is truncated or corrupted: delete it and download or copy "
                    "it again.")
        raise KdynError(f"cannot load {ref.describe()}: {first}.{hint}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # GPT-2 has none; padding is always masked out
    return LoadedModel(model, tokenizer, ref, checkpoint)


def _checkpoint_record(model_cfg: Mapping[str, Any], ref: CheckpointRef) -> dict[str, Any]:
    """The commit and weight hashes to load (checked against / pinned in ``model.revision_lock``)."""
    checkpoint = describe_checkpoint(ref)
    lock = model_cfg.get("revision_lock")
    return apply_lock(lock, ref, checkpoint) if lock else checkpoint


def context_length(model_or_config) -> int | None:
    """The longest sequence the model accepts (``None`` when its config does not say)."""
    config = getattr(model_or_config, "config", model_or_config)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_seq_len(model_cfg: Mapping[str, Any], seq_len: int, limit: int | None, key: str = "data.seq_len") -> None:
    if limit is not None and seq_len > limit:
        raise KdynError(f"{key}={seq_len} is longer than {model_cfg.get('name')}'s context of {limit} tokens; use {key}<={limit}")


def _dtype(name: str) -> torch.dtype:
    if str(name) not in DTYPES:
        raise KdynError(f"unknown model.dtype {name!r}; choose float32, bfloat16 or float16")
    return DTYPES[str(name)]


def is_hf_dir(path: Path) -> bool:
    return (path / "config.json").is_file()
