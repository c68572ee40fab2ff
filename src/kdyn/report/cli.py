"""``kdyn-report DIR [DIR ...] [--out OUTDIR] [--format png] [--baseline KEY=VALUE]``: summarise runs and draw
their figures.

Each DIR may be a run folder, a multirun sweep folder or any folder holding runs at any depth
(``outputs/``). Writes ``summary.csv`` (one row per run, failed and incomplete runs included) and
the figures whose data exist (``knowledge_entropy.png`` …) into ``--out`` (default: the DIR when one
is given, ``./report`` when several), prints a table of the runs, then the runs that did not
complete. ``--baseline KEY=VALUE[,KEY=VALUE…]`` adds the paired comparison of every condition with that
baseline over the seeds they share (``summary_paired.csv``, :mod:`kdyn.report.paired`). Bad input (a DIR
that does not exist or holds no run, a ``--baseline`` no run matches) prints one line and exits with 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from kdyn.errors import KdynError

PROG = "kdyn-report"
FORMATS = ("png", "pdf", "svg")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Summarise kdyn runs (summary.csv, a table) and draw their figures (knowledge entropy, …).",
        epilog="Each DIR may be a run folder, a multirun sweep folder, or any folder holding runs at any depth "
               "(e.g. outputs/). A run folder is a folder holding .hydra/config.yaml.",
    )
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="run folder(s), sweep folder(s) or e.g. outputs/")
    parser.add_argument("--out", "-o", metavar="OUTDIR",
                        help="where summary.csv and the figures go (default: DIR when one is given, ./report otherwise)")
    parser.add_argument("--format", dest="fmt", default="png", choices=FORMATS, help="figure file format (default: png)")
    parser.add_argument("--no-figures", action="store_true", help="write summary.csv only")
    parser.add_argument("--baseline", metavar="KEY=VALUE[,KEY=VALUE...]",
                        help="also compare every condition with this one, paired over the seeds they share "
                             "(mean difference and its 95%% t-interval; summary_paired.csv), e.g. intervention=none "
                             "(a config group as chosen, or a dotted config key such as intervention.name=none)")
    return parser


def _display(path: Path) -> str:
    """``path`` relative to the working directory when it is below it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _clip(text: str, width: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _problem_lines(runs) -> list[str]:
    """``2 runs failed: a (why), b (why)`` — one line per status other than completed."""
    from kdyn.report.collect import count_statuses

    lines = []
    for status, group in count_statuses(runs).items():
        if status == "completed":
            continue
        items = []
        for run in group:
            if status == "incomplete":
                why = "has last.ckpt: resumable" if run.resumable else "no result file, no checkpoint"
            else:
                why = run.error or ""
            items.append(f"{run.name} ({_clip(why)})" if why else run.name)
        noun = "run" if len(group) == 1 else "runs"
        lines.append(f"{len(group)} {noun} {status}: " + ", ".join(items))
    return lines


def report(dirs: Sequence[str], out: str | None = None, fmt: str = "png", figures: bool = True,
           baseline: str | None = None) -> int:
    """The whole command (raises :class:`KdynError` on bad input); returns the exit status."""
    from kdyn.report.collect import collect_runs, count_statuses
    from kdyn.report.summary import write_summary
    from kdyn.report.table import format_table

    runs = collect_runs(dirs)
    selector = None
    if baseline is not None:
        from kdyn.report.paired import parse_baseline

        selector = parse_baseline(baseline)  # bad input fails before anything is written
    out_dir = Path(out) if out else (Path(dirs[0]) if len(dirs) == 1 else Path("report"))
    if out_dir.exists() and not out_dir.is_dir():
        raise KdynError(f"--out {out_dir} is a file; pass a folder for summary.csv and the figures")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise KdynError(f"cannot create the output folder {out_dir}: {e.strerror or e}; pass another with --out") from None

    from kdyn.report.integrity import duplicate_lines
    from kdyn.report.seeds import format_seed_table, seed_groups, warning_lines, write_seed_summary

    groups = seed_groups(runs)
    paired = None
    if selector is not None:
        from kdyn.report.paired import compare, write_paired_summary

        baselines, comparisons = compare(groups, selector)
    seeds_csv, seed_rows = write_seed_summary(groups, out_dir)
    written = [write_summary(runs, out_dir), seeds_csv]
    if selector is not None:
        paired_csv, paired_rows = write_paired_summary(comparisons, out_dir)
        written.append(paired_csv)
        paired = (baselines, comparisons, paired_rows)
    if figures:
        from kdyn.report.figures import make_figures

        written += make_figures(runs, out_dir, fmt=fmt)

    counts = ", ".join(f"{len(g)} {s}" for s, g in count_statuses(runs).items())
    print(f"{PROG}: {len(runs)} run{'s' if len(runs) != 1 else ''} ({counts})")
    print(format_table(runs))
    print()
    if groups:
        print(f"Over seeds (mean ± half-width of the 95% Student-t interval, n seeds) in {len(groups)} "
              f"condition{'s' if len(groups) != 1 else ''}:")
        print(format_seed_table(groups, seed_rows))
    notes = warning_lines(groups) + duplicate_lines(runs)
    if paired is not None:
        from kdyn.report.paired import format_paired_table, paired_notes

        baselines, comparisons, paired_rows = paired
        which = f" [{baselines[0].label}]" if len(baselines) == 1 else f" ({len(baselines)} baseline conditions)"
        print()
        print(f"Paired against {selector.text}{which} (mean difference, 95% t-interval, n pairs; "
              "relative in % of the baseline):")
        print(format_paired_table(baselines, comparisons, paired_rows) or "  no condition shares a seed draw with it")
        notes += paired_notes(comparisons)
    if notes:
        print()
        print("\n".join(notes))
    print()
    for path in written:
        print(f"wrote {_display(path)}")
    problems = _problem_lines(runs)
    if problems:
        print()
        print("\n".join(problems))
    sys.stdout.flush()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point (``kdyn-report``): returns 0, or 2 after printing ``kdyn-report: error: …`` for bad input."""
    args = build_parser().parse_args(argv)
    try:
        return report(args.dirs, args.out, args.fmt, figures=not args.no_figures, baseline=args.baseline)
    except KdynError as e:
        print(f"{PROG}: error: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
