"""A ``kdyn-trace`` record shown: the console table (r per layer and set) and ``layer_stats.png``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdyn.errors import KdynError


def plot_layer_stats(record: dict[str, Any], path: Path) -> Path:
    """Left: heatmap of r(ℓ), sets × layers (* marks r above the set's mean over layers).

    Right: g_span (solid) and g_lm (dashed) per set, log scale.
    """
    import numpy as np

    from kdyn.report.figures import new_figure, save_figure

    layers, sets = record["layers"], list(record["sets"])
    r = np.array([record["sets"][s]["r"] for s in sets])
    width = max(5.2, 0.45 * len(layers) + 2.5)
    fig, (heat, lines) = new_figure(1, 2, panel_size=(width, max(3.2, 0.5 * len(sets) + 2.2)))
    image = heat.imshow(r, aspect="auto", cmap="viridis")
    ticks = [n.removeprefix("layer_") for n in layers]
    rotation = 90 if len(layers) > 12 else 0
    heat.set_xticks(range(len(layers)), ticks, rotation=rotation)
    heat.set_yticks(range(len(sets)), sets)
    heat.set_xlabel("layer")
    heat.set_title(f"r = g_span / g_lm ({record['granularity']}, {record['norm']}); * above the set's mean",
                   fontsize=9)
    if len(layers) * len(sets) <= 160:
        mid = (r.min() + r.max()) / 2
        for i in range(len(sets)):
            above = r[i] > r[i].mean()
            for j in range(len(layers)):
                heat.text(j, i, f"{r[i, j]:.2f}" + ("*" if above[j] else ""), ha="center", va="center",
                          fontsize=7, color="black" if r[i, j] > mid else "white")
    fig.colorbar(image, ax=heat, shrink=0.8)
    for k, name in enumerate(sets):
        color = f"C{k}"
        lines.plot(range(len(layers)), record["sets"][name]["g_span"], color=color, marker="o", ms=3,
                   label=f"{name} span")
        lines.plot(range(len(layers)), record["sets"][name]["g_lm"], color=color, ls="--", label=f"{name} LM")
    lines.set_xticks(range(len(layers)), ticks, rotation=rotation)
    lines.set_yscale("log")
    lines.set_xlabel("layer")
    lines.set_ylabel("mean per-example gradient norm")
    lines.legend(fontsize=7)
    model = record["model"]
    fig.suptitle(f"{model['name']}" + (f" step {model['step']}" if model.get("step") is not None else ""), fontsize=10)
    return save_figure(fig, path)


def print_layer_stats(record: dict[str, Any], out: Path) -> None:
    from kdyn.interventions.layer_selection import select_layers

    model = record["model"]
    step = f" (step {model['step']})" if model["step"] is not None else ""
    short = [n.removeprefix("layer_") for n in record["layers"]]
    width = max(6, *(len(s) for s in short)) + 1
    name_w = max(12, *(len(s) for s in record["sets"]))
    lines = [f"kdyn-trace: {out}",
             f"  model        {model['name']}{step}",
             f"  layers       {len(record['layers'])} ({record['granularity']}), norm {record['norm']}",
             "  r = g_span / g_lm per layer:",
             f"    {'set':<{name_w}} " + "".join(f"{s:>{width}}" for s in short) + "    n  above mean"]
    for name, entry in record["sets"].items():
        try:
            chosen = ", ".join(n.removeprefix("layer_") for n in select_layers(record, name, "above_mean"))
        except KdynError:
            chosen = "(flat)"
        lines.append(f"    {name:<{name_w}} " + "".join(f"{v:>{width}.3f}" for v in entry["r"])
                     + f"  {entry['n_examples']:>4}  {chosen}")
    n = sum(e["n_examples"] for e in record["sets"].values())
    lines.append(f"  measured     {n} examples in {record['seconds']:.1f} s "
                 f"({1000 * record['seconds_per_example']:.1f} ms each)")
    print("\n".join(lines), flush=True)
