"""Shared benchmark helpers: result rows, models of known sizes, timed kdyn-train runs."""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import lightning.pytorch as pl
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
    def markdown(rows: list[Row]) -> str:
        lines = ["| section | case | metric | value | target | met | note |", "|---|---|---|---|---|---|---|"]
        for r in rows:
            value = f"{r.value:.4g}" if isinstance(r.value, float) else str(r.value)
            met = "" if r.met is None else ("yes" if r.met else "**no**")
            note = r.note.replace("|", "\\|")
            lines.append(f"| {r.section} | {r.case} | {r.metric} | {value} {r.unit} | {r.target} | {met} | {note} |")
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
    """A temporary folder, removed when the process exits."""
    return temp_dir()


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


# ------------------------------------------------------------------- shared run helpers (issue 7)
# Models and the tokenizer are built once per process and shared by the sections that need them;
# every temporary folder made here is removed when the process exits.
_TEMP_DIRS: list[Path] = []
_CACHE: dict = {}


def temp_dir(prefix: str = "kdyn-bench-") -> Path:
    """A temporary folder removed at exit (Pythia-160m-sized models and checkpoints are large)."""
    import atexit
    import shutil

    if not _TEMP_DIRS:
        atexit.register(lambda: [shutil.rmtree(d, ignore_errors=True) for d in _TEMP_DIRS])
    path = Path(tempfile.mkdtemp(prefix=prefix))
    _TEMP_DIRS.append(path)
    return path


def shared_tokenizer():
    if "tokenizer" not in _CACHE:
        _CACHE["tokenizer"] = synthetic_tokenizer()
    return _CACHE["tokenizer"]


def shared_model(name: str, sizes: dict) -> BenchModel:
    """`saved_model` once per process per (name, sizes); ``extra`` holds the sizes FLOP counts need."""
    key = ("model", name, tuple(sorted(sizes.items())))
    if key not in _CACHE:
        if "models_root" not in _CACHE:
            _CACHE["models_root"] = temp_dir("kdyn-bench-models-")
        bench_model = saved_model(name, sizes, shared_tokenizer(), _CACHE["models_root"])
        bench_model.extra.update(model_shape(bench_model.folder))
        _CACHE[key] = bench_model
    return _CACHE[key]


def model_shape(folder: Path) -> dict:
    """Sizes of a saved model for FLOP counts: layers, width, vocabulary and parameter counts.

    ``matmul_params`` are the parameters that multiply every token: everything but the input
    embedding (a lookup), i.e. the blocks, the final norm and the LM head.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight.numel()
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is model.get_input_embeddings().weight
    head_params = 0 if head is None or tied else head.weight.numel()
    return {"layers": int(config.num_hidden_layers), "d_model": int(config.hidden_size),
            "vocab": int(config.vocab_size), "params": int(total),
            "matmul_params": int(total if tied else total - embedding),  # a tied embedding is the head's matmul
            "non_embedding_params": int(total - embedding - head_params)}


def train_flops(shape: dict, batch_size: int, seq_len: int) -> float:
    """Model FLOPs of one training step (forward + backward): 6·N·tokens + 12·L·d·T² per sequence.

    N = ``matmul_params`` (non-embedding parameters plus the LM head, which is a matmul over the
    vocabulary); the attention term counts QKᵀ and AV over the full T×T square (eager attention
    computes all of it) for forward (4·L·d·T²) and backward (twice that).
    """
    tokens = batch_size * seq_len
    return 6.0 * shape["matmul_params"] * tokens + 12.0 * shape["layers"] * shape["d_model"] * seq_len ** 2 * batch_size


class StepClock(pl.Callback):
    """Records every batch start (the interval between two covers one whole optimizer step: data,
    forward, backward, clipping, optimizer, every hook) and, at the end of training, the size of
    ``trainer.optimizers[0].state``. CUDA is synchronised at each mark only with ``sync_cuda``."""

    def __init__(self, sync_cuda: bool = False):
        self.sync_cuda = sync_cuda
        self.starts: list[float] = []
        self.end: float | None = None
        self.optimizer_state_bytes: int | None = None
        self.optimizer_params: int | None = None
        self.trainable_params: int | None = None

    def _now(self) -> float:
        if self.sync_cuda and torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.starts.append(self._now())

    def on_train_end(self, trainer, pl_module) -> None:
        self.end = self._now()
        optimizer = trainer.optimizers[0] if trainer.optimizers else None
        if optimizer is not None:
            self.optimizer_state_bytes = optimizer_state_bytes(optimizer)
            self.optimizer_params = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
        self.trainable_params = sum(p.numel() for p in pl_module.parameters() if p.requires_grad)

    def steps(self, skip: int) -> list[float]:
        """Durations of the steps after the first ``skip``, batch start to next batch start (the last
        step, which ends with the end-of-training work, is left out: see `tail`)."""
        durations = [b - a for a, b in zip(self.starts, self.starts[1:])]
        return durations[skip:] or durations

    def tail(self) -> float:
        """From the last batch start to the end of training: one step plus any end-of-training work."""
        return (self.end - self.starts[-1]) if self.end is not None and self.starts else float("nan")

    def median(self, skip: int) -> float:
        return statistics.median(self.steps(skip))

    def mean(self, skip: int) -> float:
        return statistics.fmean(self.steps(skip))


def optimizer_state_bytes(optimizer) -> int:
    """Bytes of every tensor held in ``optimizer.state`` (AdamW: exp_avg, exp_avg_sq, step)."""
    total = 0
    for state in optimizer.state.values():
        for value in state.values():
            if torch.is_tensor(value):
                total += value.numel() * value.element_size()
    return total


def run_kdyn(overrides: list[str], out: Path, sync_cuda: bool = False, quiet: bool = True, extra: list | None = None):
    """One real kdyn-train run (Python API, the composed ``train`` config plus ``overrides``, nothing
    else added but the ``extra`` callbacks); returns its `StepClock` and results. The run's summary
    table is not printed."""
    import contextlib
    import io

    from omegaconf import open_dict

    from kdyn.config import compose_config
    from kdyn.train import train

    cfg = compose_config("train", list(overrides))
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
    clock = StepClock(sync_cuda=sync_cuda)
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink) if quiet else contextlib.nullcontext():
        results = train(cfg, extra_callbacks=[*(extra or []), clock])
    return clock, results


# kdyn-train with every callback, logger and the knowledge injection off: the bare training loop.
BARE = ["callbacks=none", "logger=none", "inject.enabled=false", "trainer.enable_progress_bar=false"]


def local_model_overrides(bench_model: BenchModel, seq_len: int, batch_size: int, steps: int) -> list[str]:
    return ["model=local", f"model.path={bench_model.folder}", f"data.seq_len={seq_len}",
            f"data.batch_size={batch_size}", f"trainer.max_steps={steps}"]


def bench_threads() -> int:
    return int(os.environ.get("KDYN_BENCH_THREADS", torch.get_num_threads()))


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"
