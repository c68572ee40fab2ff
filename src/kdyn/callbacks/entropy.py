"""Log knowledge entropy during training (``callbacks.entropy``).

Hooks on the FFN down projections reduce every training micro-batch's coefficients immediately
(Σ|c| per slot + token count); every ``every_n_steps`` optimizer steps the callback logs
``entropy/total`` and ``entropy/layer_<i>`` over the batches since the last log and starts afresh
(at ``step`` = the number of optimizer updates done, like every kdyn callback).
Recording is armed in ``on_train_batch_start`` and disarmed in ``on_before_backward``, so
gradient-checkpoint recomputation and any evaluation forward passes are never counted. Under DDP the
metric all-reduces sums and counts before taking the entropy.

Optionally (``heldout.enabled``, the paper's protocol) it also measures a fixed held-out sample —
the first ``heldout.num_sequences`` documents of ``heldout.corpus`` — at step 0 and at every log
step, logged as ``entropy_heldout/*``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl

from kdyn.callbacks.cadence import OncePerStep
from kdyn.callbacks.log_utils import log_scalars
from kdyn.metrics.recorder import CoefficientRecorder, measure
from kdyn.models.ffn import locate_ffn

log = logging.getLogger(__name__)


class EntropyLogger(OncePerStep):
    def __init__(self, every_n_steps: int = 10, per_layer: bool = True, ffn: Mapping[str, Any] | None = None,
                 heldout: Mapping[str, Any] | None = None):
        if int(every_n_steps) < 1:
            from kdyn.errors import KdynError

            raise KdynError(f"callbacks.entropy.every_n_steps must be at least 1, got {every_n_steps}")
        self.every_n_steps = int(every_n_steps)
        self.per_layer = per_layer
        self.ffn_overrides = dict(ffn or {})
        self.heldout = dict(heldout or {})
        self.recorder: CoefficientRecorder | None = None
        self._heldout_batches: list | None = None
        self.last_logged: dict[str, float] = {}

    # ----------------------------------------------------------------------------- lifecycle
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        ffn = locate_ffn(pl_module.model, self.ffn_overrides)
        self.recorder = CoefficientRecorder(ffn).attach()
        self.recorder.armed = False
        if self.heldout.get("enabled"):
            self._heldout_batches = self._build_heldout(pl_module, trainer)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.recorder is not None:
            self.recorder.detach()
            self.recorder = None

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        # Lightning skips teardown when training fails: never leave hooks on the model (the sums stay,
        # so a pre-emption checkpoint saved by another callback still holds them)
        if self.recorder is not None:
            self.recorder.detach()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.recorder.reset()
        self._restore()  # a resumed run continues the sums it had accumulated since its last log
        self.recorder.metric.to(pl_module.device)
        self.start_steps(trainer)
        if self._heldout_batches is not None and trainer.global_step == 0:
            self._log_heldout(trainer, pl_module)

    # ----------------------------------------------------------------------------- resume state
    def state_dict(self) -> dict[str, Any]:
        """The sums accumulated since the last log, so a resumed run logs what an uninterrupted one would."""
        if self.recorder is None:
            return {}
        metric = self.recorder.metric
        return {"abs_sum": metric.abs_sum.detach().cpu().clone(), "tokens": metric.tokens.detach().cpu().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._pending_state = state

    def _restore(self) -> None:
        state = getattr(self, "_pending_state", None)
        if state and self.recorder is not None and state["abs_sum"].shape == self.recorder.metric.abs_sum.shape:
            self.recorder.metric.abs_sum.copy_(state["abs_sum"])
            self.recorder.metric.tokens.copy_(state["tokens"])
        self._pending_state = None

    # ----------------------------------------------------------------------------- recording
    def on_train_batch_start(self, trainer, pl_module, batch: Any, batch_idx: int) -> None:
        self.recorder.set_mask(batch.get("attention_mask") if isinstance(batch, Mapping) else None)
        self.recorder.armed = True

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        self.recorder.armed = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.recorder.armed = False
        if not self.new_step(trainer):  # mid gradient accumulation: no optimizer step yet
            return
        if trainer.global_step % self.every_n_steps != 0:
            return
        self._log(trainer, "entropy", self.recorder.metric.compute())
        self.recorder.reset()
        if self._heldout_batches is not None:
            self._log_heldout(trainer, pl_module)

    # ----------------------------------------------------------------------------- helpers
    def _log(self, trainer: pl.Trainer, prefix: str, result: Mapping[str, Any]) -> None:
        values = {f"{prefix}/total": result["total"]}
        if self.per_layer:
            values.update({f"{prefix}/layer_{i}": h for i, h in enumerate(result["per_layer"])})
        self.last_logged = {k: float(v) for k, v in values.items()}
        log_scalars(trainer, values, step=trainer.global_step)

    def _log_heldout(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        shard = self._heldout_batches[trainer.global_rank::trainer.world_size]
        metric = measure(pl_module.model, self.recorder.ffn, shard, device=pl_module.device)
        self._log(trainer, "entropy_heldout", metric.compute())

    def _build_heldout(self, pl_module: pl.LightningModule, trainer: pl.Trainer) -> list:
        from kdyn.data import corpora
        from kdyn.data.sequences import document_batches, packed_batches

        tokenizer = getattr(pl_module, "tokenizer", None)
        corpus = self.heldout.get("corpus")
        if tokenizer is None or not corpus:
            from kdyn.errors import KdynError

            raise KdynError("callbacks.entropy.heldout needs a corpus node and the model's tokenizer")
        documents = corpora.load_documents(corpus)
        common = dict(num_sequences=int(self.heldout.get("num_sequences", 256)), seq_len=int(self.heldout["seq_len"]),
                      batch_size=int(self.heldout.get("batch_size", 16)), key="callbacks.entropy.heldout")
        if self.heldout.get("pack"):
            return packed_batches(documents, tokenizer, **common)
        return document_batches(documents, tokenizer, **common)
