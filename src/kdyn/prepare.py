"""``kdyn-prepare``: build the token store of a training config ahead of time (e.g. on a CPU node).

Takes the same overrides as ``kdyn-train`` (it composes ``conf/train.yaml``), loads only the model's
tokenizer, tokenises the corpus into ``data.store.dir`` with a progress bar and prints the store's
size and throughput. A store that already exists is opened and described, not rebuilt.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import hydra
from omegaconf import DictConfig

from kdyn.config import CONF_DIR, to_plain
from kdyn.errors import KdynError
from kdyn.utils.entry import check_group_choices


def prepare(cfg: DictConfig, progress: bool = True) -> dict[str, Any]:
    """Build (or open) the store of ``cfg``'s corpus and tokenizer; returns what was done."""
    from kdyn.data.corpora import as_corpus
    from kdyn.data.periods import is_segmented
    from kdyn.data.store import build_store, describe_store
    from kdyn.organism import ensure_model
    from kdyn.train import train

    corpus, data = to_plain(cfg.corpus), to_plain(cfg.data)
    if callable(getattr(as_corpus(corpus), "token_rows", None)):  # read in place (corpus=pretraining)
        raise KdynError("corpus=pretraining is already tokenised and read in place: there is no store to prepare")
    ensure_model(to_plain(cfg.model), pretrain=train)  # model=tiny: pretrained once, on first use
    tokenizer = _load_tokenizer(to_plain(cfg.model), corpus)
    started = time.perf_counter()
    store, built = build_store(corpus, tokenizer, (data.get("store") or {}).get("dir"), progress=progress)
    seconds = time.perf_counter() - started
    seq_len = int(data["seq_len"])
    rows = ([len(r) for _, r in store.segment_rows(seq_len)] if is_segmented(corpus)
            else [len(store.rows(seq_len, data.get("max_rows")))])
    result = {"folder": str(store.folder), "built": built, "seconds": round(seconds, 2),
              "tokens": store.num_tokens, "documents": store.num_documents, "bytes": store.size_bytes,
              "tokens_per_s": round(store.num_tokens / max(seconds, 1e-9)), "rows": sum(rows), "seq_len": seq_len}
    verb = f"built in {seconds:.1f} s ({result['tokens_per_s'] / 1e6:.2f} M tokens/s)" if built else "already built"
    print(f"kdyn-prepare: {verb}: {describe_store(store)}; {sum(rows):,} rows of {seq_len} tokens", flush=True)
    return result


def _load_tokenizer(model_cfg: dict[str, Any], corpus: dict[str, Any]):
    """The tokenizer ``kdyn-train`` would load for ``model_cfg``, without the model's weights."""
    from kdyn.models.loading import _checkpoint_record, load_model, resolve

    ref = resolve(model_cfg)
    if ref.family == "scratch":  # its tokenizer is trained with the (small) model
        return load_model(model_cfg, tokenizer_corpus=corpus).tokenizer
    from transformers import AutoTokenizer

    checkpoint = _checkpoint_record(model_cfg, ref)
    revision = checkpoint.get("commit") if checkpoint.get("repo") and checkpoint.get("commit") else ref.revision
    try:
        return AutoTokenizer.from_pretrained(ref.location, revision=revision,
                                             trust_remote_code=bool(model_cfg.get("trust_remote_code", False)))
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0].rstrip(".") if str(e).strip() else type(e).__name__
        raise KdynError(f"cannot load the tokenizer of {ref.describe()}: {first}") from None


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def _hydra_main(cfg: DictConfig) -> Any:
    from kdyn.utils.quiet import quiet_third_party

    quiet_third_party()
    try:
        return prepare(cfg)
    except KdynError as e:
        print(f"kdyn-prepare: error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)


def main() -> None:
    check_group_choices("kdyn-prepare", sys.argv[1:])
    # a preparation leaves no run folder: Hydra writes its outputs nowhere
    sys.argv += ["hydra.output_subdir=null", "hydra.run.dir=.", "hydra/job_logging=none", "hydra/hydra_logging=none"]
    _hydra_main()


if __name__ == "__main__":
    main()
