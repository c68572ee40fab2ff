"""Knowledge injection into the training stream (Chang et al. 2024; Kim et al. 2025).

An *event* happens every ``interval`` steps from ``first_step`` (``num_events`` in all). At event
``e`` every scheduled item contributes one text (`kdyn.data.knowledge.injected_text`: the original,
a paraphrase, or nothing) plus EOS. The texts are placed, in item order, into consecutive global rows
of the batch of that step starting at ``first_row``; several texts share a row when they fit (as the
official code concatenates paragraphs when the batch is small), a text longer than a row is cut.

``placement_seed`` (``inject.placement_seed``, the run's ``seed`` by default) varies where the texts
land: ``0`` is the layout above, exactly; any other value shuffles the order of the event's texts
(which texts share a row) and draws the rows they go to at random among the batch rows from
``first_row`` on, independently at every event. It changes neither which items are injected
(``inject.source.seed``) nor when.

``mode=replace`` overwrites the start of the row with the knowledge (the rest of the base row
stays); ``mode=prepend`` puts the knowledge in front of the base row and drops the row's tail
(``cat(knowledge, row)[:seq_len]``, which is what both official codebases execute). Either way every
row keeps ``seq_len`` tokens and no padding.

Step convention: the batch of stream step ``s`` is trained in optimizer update ``s + 1``; probes at
step ``s`` measure the model after ``s`` updates, so ``v[t_i]`` is just before injection ``i``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from kdyn.errors import KdynError

log = logging.getLogger(__name__)

MODES = ("replace", "prepend")


@dataclass(frozen=True)
class InjectedText:
    item: int
    scenario: str
    version: str
    tokens: tuple[int, ...]
    truncated: bool


@dataclass
class InjectionEvent:
    step: int
    event: int
    rows: list[list[InjectedText]] = field(default_factory=list)  # rows[r] → global row global_rows[r]
    global_rows: list[int] | None = None  # None: first_row + r (placement_seed 0)


@dataclass
class InjectionPlan:
    events: list[InjectionEvent]
    mode: str
    seq_len: int
    first_row: int
    planned_events: int = 0  # events in the configured schedule (more than `events` when the run is shorter)
    truncated_texts: int = 0
    placement_seed: int = 0

    def __post_init__(self) -> None:
        self._by_step = {e.step: e for e in self.events}
        self._row_tokens: dict[int, dict[int, torch.Tensor]] = {
            e.step: {self.global_row(e, r): torch.tensor([t for text in row for t in text.tokens],
                                                         dtype=torch.long)[: self.seq_len]
                     for r, row in enumerate(e.rows)}
            for e in self.events
        }

    def global_row(self, event: InjectionEvent, r: int) -> int:
        """The global batch row that receives ``event.rows[r]``."""
        return self.first_row + r if event.global_rows is None else event.global_rows[r]

    @property
    def steps(self) -> list[int]:
        return [e.step for e in self.events]

    def steps_by_item(self) -> dict[int, list[int]]:
        """The steps at which each item was injected."""
        out: dict[int, list[int]] = {}
        for event in self.events:
            for row in event.rows:
                for text in row:
                    out.setdefault(text.item, []).append(event.step)
        return out

    def scenario_of_item(self) -> dict[int, str]:
        return {text.item: text.scenario for e in self.events for row in e.rows for text in row}

    def exposures(self) -> dict[int, int]:
        return {item: len(steps) for item, steps in self.steps_by_item().items()}

    def describe(self) -> dict[str, Any]:
        """Counts for results.json: events run and planned, texts, truncations, exposures per scenario."""
        exposures: dict[str, int] = {}
        scenario = self.scenario_of_item()
        for item, n in self.exposures().items():
            exposures[scenario[item]] = exposures.get(scenario[item], 0) + n
        return {"events": len(self.events), "planned_events": self.planned_events, "steps": self.steps,
                "texts": sum(len(row) for e in self.events for row in e.rows), "truncated_texts": self.truncated_texts,
                "exposures_by_scenario": exposures, "mode": self.mode}

    def to_rows(self) -> list[dict[str, Any]]:
        """One record per injected text: what was injected where (written to injections.csv)."""
        rows = []
        for event in self.events:
            for r, texts in enumerate(event.rows):
                for text in texts:
                    rows.append({"step": event.step, "event": event.event, "row": self.global_row(event, r),
                                 "item": text.item,
                                 "scenario": text.scenario, "version": text.version, "tokens": len(text.tokens),
                                 "truncated": text.truncated, "mode": self.mode})
        return rows

    def __call__(self, batch: dict, step: int, global_rows: torch.Tensor) -> dict:
        """Stream transform: write this step's knowledge into the rows this rank holds."""
        rows = self._row_tokens.get(step)
        if not rows:
            return batch
        ids = batch["input_ids"]
        for local, global_row in enumerate(global_rows.tolist()):
            knowledge = rows.get(global_row)
            if knowledge is not None:
                n = knowledge.shape[0]
                if self.mode == "replace":
                    ids[local, :n] = knowledge
                else:
                    ids[local] = torch.cat([knowledge, ids[local, : ids.shape[1] - n]])  # rows may hold a label token
        return batch


def build_plan(items: Sequence[Any], tokenizer, *, seq_len: int, global_batch_size: int, max_steps: int,
               interval: int, num_events: int, first_step: int = 0, once_per_event: int | None = None,
               mode: str = "replace", first_row: int = 0, eos: bool = True,
               placement_seed: int = 0) -> InjectionPlan:
    """Schedule ``items`` (`KnowledgeItem`s with scenarios) into the stream and validate the schedule.

    ``once_per_event=None`` injects every ``once`` item at the first event (Chang et al.); an integer
    ``k`` spreads them ``k`` per event in order (Kim et al.: 6 per event). ``placement_seed`` != 0
    shuffles the texts of each event and the rows they land in (see the module docstring).
    """
    from kdyn.data.knowledge import injected_text, injected_version

    if mode not in MODES:
        raise KdynError(f"unknown inject.mode {mode!r}; choose replace or prepend")
    if interval < 1 or num_events < 1:
        raise KdynError(f"inject.interval ({interval}) and inject.num_events ({num_events}) must be at least 1")
    last = first_step + (num_events - 1) * interval
    planned = num_events
    if last >= max_steps:
        fitting = max(0, min(num_events, -(-(max_steps - first_step) // interval)))
        log.warning(
            "the injection schedule is longer than the run: its last of %d events is at step %d (first_step=%d, "
            "interval=%d) but trainer.max_steps=%d, so only %d of %d events are injected; raise trainer.max_steps "
            "above %d (and leave a tail to measure retention) to run the whole schedule",
            num_events, last, first_step, interval, max_steps, fitting, num_events, last)
        num_events = fitting
    once_items = [it for it in items if it.scenario == "once"]
    if once_per_event is not None and len(once_items) > once_per_event * planned:
        raise KdynError(f"{len(once_items)} once items cannot be spread {once_per_event} per event over {num_events} "
                        f"events; raise inject.once_per_event to {-(-len(once_items) // num_events)}")
    eos_id = tokenizer.eos_token_id if eos else None
    capacity = global_batch_size - first_row
    events, n_truncated = [], 0
    for e in range(num_events):
        texts: list[InjectedText] = []
        for item in items:
            if item.scenario == "once" and once_per_event is not None:
                position = once_items.index(item)
                if position // once_per_event != e:
                    continue
                text = injected_text(item, 0)
            else:
                text = injected_text(item, e)
            if text is None:
                continue
            ids = tokenizer(text, add_special_tokens=False)["input_ids"] + ([eos_id] if eos_id is not None else [])
            truncated = len(ids) > seq_len
            n_truncated += truncated
            version = injected_version(item, 0 if (item.scenario == "once") else e)
            texts.append(InjectedText(item.item, item.scenario, version, tuple(ids[:seq_len]), truncated))
        placer = random.Random(f"kdyn-injection-placement:{placement_seed}:{e}") if placement_seed else None
        if placer is not None:
            placer.shuffle(texts)
        rows = _pack(texts, seq_len)
        step = first_step + e * interval
        if len(rows) > capacity:
            raise KdynError(
                f"injection event {e} (step {step}) needs {len(rows)} rows of {seq_len} tokens for {len(texts)} texts but "
                f"the global batch has {capacity} rows from inject.first_row={first_row}; use fewer items, a larger "
                f"data.batch_size, or a longer data.seq_len")
        global_rows = None if placer is None else sorted(placer.sample(range(first_row, global_batch_size), len(rows)))
        events.append(InjectionEvent(step=step, event=e, rows=rows, global_rows=global_rows))
    if n_truncated:
        log.warning("%d injected texts were longer than data.seq_len=%d tokens and were cut", n_truncated, seq_len)
    return InjectionPlan(events=events, mode=mode, seq_len=seq_len, first_row=first_row,
                         planned_events=planned, truncated_texts=n_truncated, placement_seed=int(placement_seed))


def _pack(texts: list[InjectedText], seq_len: int) -> list[list[InjectedText]]:
    """Consecutive texts share a row while they fit (first fit in order)."""
    rows: list[list[InjectedText]] = []
    used = seq_len
    for text in texts:
        if used + len(text.tokens) > seq_len:
            rows.append([])
            used = 0
        rows[-1].append(text)
        used += len(text.tokens)
    return rows


def plan_from_config(inject: Mapping[str, Any], items: Sequence[Any], tokenizer, *, seq_len: int,
                     global_batch_size: int, max_steps: int) -> InjectionPlan:
    """`build_plan` from the ``inject`` config node."""
    return build_plan(items, tokenizer, seq_len=seq_len, global_batch_size=global_batch_size, max_steps=max_steps,
                      interval=int(inject["interval"]), num_events=int(inject["num_events"]),
                      first_step=int(inject.get("first_step", 0)),
                      once_per_event=None if inject.get("once_per_event") is None else int(inject["once_per_event"]),
                      mode=str(inject.get("mode", "replace")), first_row=int(inject.get("first_row", 0)),
                      eos=bool(inject.get("eos", True)), placement_seed=int(inject.get("placement_seed") or 0))
