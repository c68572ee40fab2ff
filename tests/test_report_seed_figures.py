"""The per-layer figures over seeds: the gradient-norm heatmap (kdyn-trace) and the per-layer knowledge-entropy
panels (kdyn-entropy across steps, entropy logged during training) pool the seeds of a condition — the mean
and the Student-t 95% interval, checked here against an independent computation (statistics + printed t)."""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

import pytest
import yaml

from kdyn.report.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
T975 = {1: 12.706, 2: 4.303}  # two-sided 95% critical values of Student's t (printed table), by df
LAYERS = ["layer_0", "layer_1", "layer_2", "layer_3"]
SETS = ("new_entities", "updated", "unchanged")


def expected(values):
    """(mean, half-width of the 95% t-interval) computed independently of kdyn."""
    n = len(values)
    return statistics.mean(values), T975[n - 1] * statistics.stdev(values) / math.sqrt(n)


def write_run(folder: Path, config: dict, files: dict[str, str]) -> Path:
    """A run folder as the entry points leave it: .hydra/config.yaml + overrides.yaml and the result files."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([]))
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def captured(monkeypatch):
    """The matplotlib figures the report saves, by file name (to read titles and cell texts)."""
    import kdyn.report.figures as figures
    import kdyn.report.figures.entropy as entropy_figures
    import kdyn.report.figures.interventions as intervention_figures

    figs = {}
    original = figures.save_figure

    def save(fig, path, fmt="png", dpi=150):
        figs[Path(path).name] = fig
        return original(fig, path, fmt, dpi=60)

    for module in (figures, entropy_figures, intervention_figures):
        monkeypatch.setattr(module, "save_figure", save)
    return figs


# --- kdyn-trace: the gradient-norm heatmap --------------------------------------------------------------

def trace_config(pretrain_seed, max_len=128, run_id="tgl_${model.pretrain_seed}"):
    return {"task_name": "trace", "seed": 0, "run_id": run_id, "sweep_id": None, "threads": None,
            "trace": {"sets": list(SETS), "granularity": "block", "norm": "l2", "max_examples": 200,
                      "max_len": max_len, "seed": 0},
            "paths": {"output_dir": "${hydra:runtime.output_dir}"},
            "model": {"name": "tiny", "family": "tiny", "step": None, "pretrain_seed": pretrain_seed,
                      "pretrain_overrides": []}}


def layer_stats(numbers: dict[str, dict[str, list[float]]]) -> str:
    sets = {name: {**q, "n_examples": 50, "other": {}, "seconds": 0.1, "origin": "test", "n_available": 50}
            for name, q in numbers.items()}
    return json.dumps({"status": "completed", "model": {"name": "tiny", "family": "tiny", "step": 1200},
                       "architecture": {"num_layers": 4}, "granularity": "block", "norm": "l2", "layers": LAYERS,
                       "sets": sets, "settings": {}, "definition": "r = g_span / g_lm", "seconds": 1.0,
                       "seconds_per_example": 0.01})


def trace_numbers(k: float) -> dict[str, dict[str, list[float]]]:
    """Known, distinct numbers per seed ``k``: g_lm, g_span and r = g_span / g_lm per set and layer."""
    out = {}
    for s, name in enumerate(SETS):
        g_lm = [10.0 + s + 0.5 * j + 0.3 * k for j in range(4)]
        g_span = [20.0 + 2 * s + j * j * (1 + 0.2 * k) + k for j in range(4)]
        out[name] = {"g_span": g_span, "g_lm": g_lm, "r": [a / b for a, b in zip(g_span, g_lm)]}
    return out


def test_gradient_norms_pool_the_seeds_of_a_condition(tmp_path, captured):
    root = tmp_path / "runs"
    seeds = {None: 0.0, 1: 1.0, 2: 2.5}  # three tiny organisms: a seed key (model.pretrain_seed)
    for organism, k in seeds.items():
        write_run(root / f"tgl_tiny_organism_{organism}", trace_config(organism),
                  {"layer_stats.json": layer_stats(trace_numbers(k))})
    # another condition (max_len is no seed key): two seeds, never pooled with the three above
    other = {1: 7.0, 2: 9.0}
    for organism, k in other.items():
        write_run(root / f"long_{organism}", trace_config(organism, max_len=256),
                  {"layer_stats.json": layer_stats(trace_numbers(k))})

    out = tmp_path / "report"
    assert main([str(root), "--out", str(out)]) == 0
    rows = read_csv(out / "gradient_norms_seeds.csv")
    conditions = sorted({r["condition"] for r in rows})
    assert conditions == ["trace.max_len=128", "trace.max_len=256"]
    assert len(rows) == 2 * len(SETS) * len(LAYERS) * 3  # conditions × sets × layers × (r, g_span, g_lm)
    for condition, ks in (("trace.max_len=128", seeds.values()), ("trace.max_len=256", other.values())):
        for name in SETS:
            r_means = []
            for j, layer in enumerate(LAYERS):
                for quantity in ("r", "g_span", "g_lm"):
                    row = next(r for r in rows if (r["condition"], r["set"], r["layer"], r["quantity"])
                               == (condition, name, layer, quantity))
                    values = [trace_numbers(k)[name][quantity][j] for k in ks]
                    mean, half = expected(values)
                    assert int(row["n_seeds"]) == len(values)
                    assert float(row["mean"]) == pytest.approx(mean, rel=1e-12)
                    assert float(row["ci95_half_width"]) == pytest.approx(half, rel=2e-4)
                    assert float(row["ci95_low"]) == pytest.approx(mean - half, rel=2e-4)
                    assert row["few_seeds"] == ("true" if len(values) < 3 else "false")
                    if quantity == "r":
                        r_means.append((float(row["mean"]), row["above_set_mean"]))
            set_mean = statistics.mean(m for m, _ in r_means)
            assert [flag for _, flag in r_means] == ["true" if m > set_mean else "false" for m, _ in r_means]
    three = next(r for r in rows if r["condition"] == "trace.max_len=128")
    assert [s.get("model.pretrain_seed") for s in json.loads(three["seeds"])] == [1, 2, None]  # folder order

    assert (out / "gradient_norms.png").read_bytes()[:8] == PNG_MAGIC
    fig = captured["gradient_norms.png"]
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert len(panels) == 2  # one heatmap per condition, not per run
    by_condition = {("128" if "trace.max_len=128" in ax.get_title() else "256"): ax for ax in panels}
    assert "(n=3)" in by_condition["128"].get_title()
    assert "(n=2, <3 seeds)" in by_condition["256"].get_title()
    # every cell shows the mean and, below it, ± the half-width
    mean, half = expected([trace_numbers(k)["updated"]["r"][2] for k in seeds.values()])
    cells = [t.get_text() for t in by_condition["128"].texts]
    assert len(cells) == len(SETS) * len(LAYERS) and all("\n±" in c for c in cells)
    assert cells[1 * len(LAYERS) + 2].replace("*", "") == f"{mean:.2f}\n±{half:.2f}"


def test_a_single_trace_run_is_its_own_condition(tmp_path, captured):
    write_run(tmp_path / "one", trace_config(None), {"layer_stats.json": layer_stats(trace_numbers(0.0))})
    assert main([str(tmp_path), "--out", str(tmp_path / "report")]) == 0
    rows = read_csv(tmp_path / "report" / "gradient_norms_seeds.csv")
    r0 = next(r for r in rows if (r["set"], r["layer"], r["quantity"]) == ("new_entities", "layer_0", "r"))
    assert r0["n_seeds"] == "1" and r0["few_seeds"] == "true" and r0["ci95_half_width"] == ""
    assert float(r0["mean"]) == trace_numbers(0.0)["new_entities"]["r"][0]
    title = [ax.get_title() for ax in captured["gradient_norms.png"].axes if ax.get_title()][0]
    assert "(n=1, <3 seeds)" in title
    assert not any("±" in t.get_text() for ax in captured["gradient_norms.png"].axes for t in ax.texts)


# --- kdyn-entropy across checkpoint steps: the per-layer panels -------------------------------------------

def entropy_config(pretrain_seed, step, num_sequences=2048):
    return {"task_name": "entropy", "seed": 0, "run_id": None,
            "entropy": {"num_sequences": num_sequences, "batch_size": 16, "seq_len": 512},
            "paths": {"output_dir": "${hydra:runtime.output_dir}"},
            "model": {"name": "tiny", "family": "tiny", "step": step, "revision": None, "pretrain_seed": pretrain_seed},
            "corpus": {"name": "synthetic"}}


def per_layer_entropy(step: int, k: float) -> list[float]:
    return [6.2 - 0.001 * step * (1 + 0.1 * i) + 0.01 * k * (i + 1) ** 2 for i in range(4)]


def entropy_file(step: int, k: float) -> str:
    per_layer = per_layer_entropy(step, k)
    return json.dumps({"status": "completed", "total": sum(per_layer), "per_layer": per_layer,
                       "max_total": 4 * math.log(512), "max_per_layer": [math.log(512)] * 4,
                       "model": {"name": "tiny", "family": "tiny", "step": step}, "corpus": {"name": "synthetic"}})


def test_knowledge_entropy_per_layer_pools_seeds_per_step(tmp_path, captured):
    root = tmp_path / "entropy"
    seeds = {None: 0.0, 1: 1.0, 2: 3.0}
    for organism, k in seeds.items():
        for step in (0, 100):
            write_run(root / f"model.pretrain_seed={organism},model.step={step}", entropy_config(organism, step),
                      {"entropy.json": entropy_file(step, k)})
    # entropy.num_sequences is no seed key: another condition (two seeds at step 100 only)
    other = {1: 5.0, 2: 6.0}
    for organism, k in other.items():
        write_run(root / f"short_{organism}", entropy_config(organism, 100, num_sequences=64),
                  {"entropy.json": entropy_file(100, k)})

    out = tmp_path / "report"
    assert main([str(root), "--out", str(out)]) == 0
    rows = read_csv(out / "knowledge_entropy_seeds.csv")
    labels = list(dict.fromkeys(r["condition"] for r in rows))
    assert labels == ["tiny [entropy.num_sequences=2048]", "tiny [entropy.num_sequences=64]"]
    assert len(rows) == 2 * 5 + 1 * 5  # (condition, step) × (4 layers + total)
    for label, ks, steps in ((labels[0], seeds.values(), (0, 100)), (labels[1], other.values(), (100,))):
        for step in steps:
            for layer in ("0", "1", "2", "3", "total"):
                row = next(r for r in rows if (r["condition"], r["step"], r["layer"]) == (label, str(step), layer))
                values = [sum(per_layer_entropy(step, k)) if layer == "total" else per_layer_entropy(step, k)[int(layer)]
                          for k in ks]
                mean, half = expected(values)
                assert int(row["n_seeds"]) == len(values) and row["few_seeds"] == str(len(values) < 3).lower()
                assert float(row["mean"]) == pytest.approx(mean, rel=1e-12)
                assert float(row["ci95_half_width"]) == pytest.approx(half, rel=2e-4)
                assert float(row["ci95_high"]) == pytest.approx(mean + half, rel=2e-4)
    assert (out / "knowledge_entropy.png").read_bytes()[:8] == PNG_MAGIC

    fig = captured["knowledge_entropy.png"]
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.get_title().startswith("Per layer")]
    assert len(panels) == 2  # one per condition
    assert "num_sequences=2048" in panels[0].get_title() and "(n=3 per step; band" in panels[0].get_title()
    assert "num_sequences=64" in panels[1].get_title() and "n=2, <3 seeds" in panels[1].get_title()
    # a band per layer line (the 95% t-interval), and the mean line through the pooled means
    from matplotlib.collections import PolyCollection

    assert sum(isinstance(c, PolyCollection) for c in panels[0].collections) == 4
    layer2 = next(line for line in panels[0].get_lines() if line.get_label() == "2")
    assert list(layer2.get_xdata()) == [0.0, 100.0]
    assert layer2.get_ydata()[1] == pytest.approx(statistics.mean(per_layer_entropy(100, k)[2] for k in seeds.values()))
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "tiny [entropy.num_sequences=2048] (n=3)" in legend and "tiny [entropy.num_sequences=64] (n=2, <3 seeds)" in legend


# --- entropy logged during training: the per-layer panels -------------------------------------------------

def train_config(seed, lr=3e-4):
    return {"task_name": "train", "seed": seed, "run_id": None, "optim": {"lr": lr},
            "inject": {"source": {"seed": seed}}, "paths": {"output_dir": "${hydra:runtime.output_dir}"},
            "model": {"name": "tiny", "step": 1200}, "trainer": {"max_steps": 30}}


def logged(step: int, layer: int, k: float) -> float:
    return 6.1 - 0.002 * step + 0.01 * layer + 0.02 * k * (layer + 1) + 0.0005 * k * step


def metrics_text(k: float) -> str:
    columns = ["step", "train/loss", *(f"entropy/layer_{i}" for i in range(3)), "entropy/total"]
    lines = [",".join(columns)]
    for step in range(0, 30):
        cells = [str(step), "0.5"]
        if step % 10 == 0:
            layers = [logged(step, i, k) for i in range(3)]
            cells += [repr(v) for v in layers] + [repr(sum(layers))]
        else:
            cells += [""] * 4
        lines.append(",".join(cells))
    return "\n".join(lines) + "\n"


def test_entropy_during_training_per_layer_pools_seeds(tmp_path, captured):
    root = tmp_path / "train"
    seeds = {0: 0.0, 1: 1.0, 2: 4.0}
    for seed, k in seeds.items():
        write_run(root / f"seed={seed}", train_config(seed),
                  {"results.json": json.dumps({"status": "completed", "final_loss": 0.5 + 0.01 * k, "seed": seed}),
                   "metrics.csv": metrics_text(k)})
    write_run(root / "z_lr", train_config(0, lr=1e-3),  # optim.lr is no seed key: its own condition
              {"results.json": json.dumps({"status": "completed", "final_loss": 0.4, "seed": 0}),
               "metrics.csv": metrics_text(9.0)})

    out = tmp_path / "report"
    assert main([str(root), "--out", str(out)]) == 0
    rows = read_csv(out / "entropy_during_training_seeds.csv")
    assert list(dict.fromkeys(r["condition"] for r in rows)) == ["optim.lr=0.0003", "optim.lr=0.001"]
    assert len(rows) == 2 * 4 * 3  # conditions × (3 layers + total) × logged steps
    for step in (0, 10, 20):
        for layer in ("0", "1", "2", "total"):
            row = next(r for r in rows if (r["condition"], r["metric"], r["layer"], r["step"])
                       == ("optim.lr=0.0003", "entropy", layer, str(step)))
            values = [sum(logged(step, i, k) for i in range(3)) if layer == "total" else logged(step, int(layer), k)
                      for k in seeds.values()]
            mean, half = expected(values)
            assert row["n_seeds"] == "3" and row["few_seeds"] == "false"
            assert float(row["mean"]) == pytest.approx(mean, rel=1e-12)
            assert float(row["ci95_half_width"]) == pytest.approx(half, rel=2e-4)
            single = next(r for r in rows if (r["condition"], r["layer"], r["step"]) == ("optim.lr=0.001", layer, str(step)))
            assert single["n_seeds"] == "1" and single["few_seeds"] == "true" and single["ci95_half_width"] == ""
            assert float(single["mean"]) == pytest.approx(
                sum(logged(step, i, 9.0) for i in range(3)) if layer == "total" else logged(step, int(layer), 9.0))
    assert (out / "entropy_during_training.png").read_bytes()[:8] == PNG_MAGIC

    fig = captured["entropy_during_training.png"]
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.get_title().startswith("Per layer")]
    assert len(panels) == 2  # one per condition, not one per run
    assert "optim.lr=0.0003" in panels[0].get_title() and "(n=3, band: 95% t-interval)" in panels[0].get_title()
    assert "z_lr" in panels[1].get_title() and "(n=1, <3 seeds)" in panels[1].get_title()  # a lone run: its name
    from matplotlib.collections import PolyCollection

    assert sum(isinstance(c, PolyCollection) for c in panels[0].collections) == 3  # a band per layer
    assert not any(isinstance(c, PolyCollection) for c in panels[1].collections)  # one seed: no band
