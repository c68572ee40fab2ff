"""Shared benchmark helpers: result rows, models of known sizes, timed kdyn-train runs."""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch


@dataclass
class Row:
    section: str
    case: str
    metric: str
    value: float
    unit: str = ""
    target: str = ""
    met: bool | None = None
    note: str = ""

    FIELDS = ["section", "case", "metric", "value", "unit", "target", "met", "note"]

    def as_dict(self) -> dict:
        d = asdict(self)
        d["value"] = f"{self.value:.4g}" if isinstance(self.value, float) else self.value
        return d

    def line(self) -> str:
        status = "" if self.met is None else ("  ok" if self.met else "  MISSED")
        target = f"  (target {self.target})" if self.target else ""
        value = f"{self.value:.4g}" if isinstance(self.value, float) else str(self.value)
        return f"{self.case:<34} {self.metric:<44} {value:>10} {self.unit:<8}{target}{status}  {self.note}"

    @staticmethod
    def markdown(rows: list["Row"]) -> str:
        lines = ["| section | case | metric | value | target | met |", "|---|---|---|---|---|---|"]
        for r in rows:
            value = f"{r.value:.4g}" if isinstance(r.value, float) else str(r.value)
            met = "" if r.met is None else ("yes" if r.met else "**no**")
            lines.append(f"| {r.section} | {r.case} | {r.metric} | {value} {r.unit} | {r.target} | {met} |")
        return "\n".join(lines)


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, {gpu}, torch {torch.__version__}"


# ----------------------------------------------------------------------------------- models
PYTHIA_160M = dict(arch="gpt_neox", hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072,
                   max_position_embeddings=2048, vocab_size=50304)
TINY_SIZES = dict(arch="olmo", hidden_size=128, num_layers=4, num_heads=4, intermediate_size=512,
                  max_position_embeddings=512)


@dataclass
class BenchModel:
    name: str
    folder: Path
    parameters: int
    extra: dict = field(default_factory=dict)


def saved_model(name: str, sizes: dict, tokenizer, root: Path) -> BenchModel:
    """A freshly initialised model of the given sizes, saved with ``tokenizer`` (for model=local)."""
    from kdyn.models.scratch import ArchSpec, build_scratch_model

    sizes = dict(sizes)
    sizes.setdefault("vocab_size", len(tokenizer))
    sizes["vocab_size"] = max(sizes["vocab_size"], len(tokenizer))
    spec = ArchSpec(**sizes, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                    pad_token_id=tokenizer.pad_token_id)
    model = build_scratch_model(spec, seed=0)
    folder = root / name
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return BenchModel(name, folder, sum(p.numel() for p in model.parameters()))


def synthetic_tokenizer():
    from kdyn.data.corpora import load_documents
    from kdyn.data.tokenizer import train_bpe_tokenizer

    return train_bpe_tokenizer(load_documents({"name": "synthetic"}), 2048)


def workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="kdyn-bench-"))


# ----------------------------------------------------------------------------------- timing
def alternate(variants: dict, repeats: int) -> dict[str, list[float]]:
    """Call each variant ``repeats`` times, interleaved (a, b, a, b, …); returns their durations."""
    times = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def kdyn_train_step_time(overrides: list[str], out: Path) -> tuple[float, dict]:
    """Median step time (s) of a real kdyn-train run with the given overrides."""
    from omegaconf import open_dict

    from kdyn.callbacks.timer import StepTimer
    from kdyn.config import compose_config
    from kdyn.train import train

    cfg = compose_config("train", [*overrides, "logger=none", "trainer.enable_progress_bar=false",
                                   "callbacks.checkpoint.enabled=false", "callbacks.export_hf.enabled=false"])
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
    timer = StepTimer(skip_first=2)
    results = train(cfg, extra_callbacks=[timer])
    return timer.median(), results


def median(xs: list[float]) -> float:
    return statistics.median(xs)
