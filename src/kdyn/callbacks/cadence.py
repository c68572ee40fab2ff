"""Acting once per optimizer step under gradient accumulation (the base class of step-driven callbacks).

Lightning calls ``on_train_batch_end`` after every *micro*-batch; with
``trainer.accumulate_grad_batches=k`` the global step advances only every k-th call. A callback that
measures or logs "every n steps" derives from :class:`OncePerStep`, calls :meth:`start_steps` in
``on_train_start`` (the step a run starts or resumes at) and asks :meth:`new_step` in
``on_train_batch_end``: true exactly once per optimizer step.
"""

from __future__ import annotations

import lightning.pytorch as pl


class OncePerStep(pl.Callback):
    _last_step: int = -1

    def start_steps(self, trainer: pl.Trainer) -> int:
        """Remember the step training starts (or resumes) at; returns it."""
        self._last_step = int(trainer.global_step)
        return self._last_step

    def new_step(self, trainer: pl.Trainer) -> bool:
        """True on the first call after an optimizer step, False mid gradient accumulation."""
        step = int(trainer.global_step)
        if step == self._last_step:
            return False
        self._last_step = step
        return True
