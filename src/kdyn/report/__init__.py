"""``kdyn-report``: find runs, summarise them in one table, draw the figures.

    from kdyn.report import collect_runs, write_summary, make_figures
    runs = collect_runs(["outputs/"])          # list[Run]; raises KdynError on bad input only
    write_summary(runs, "report")              # report/summary.csv
    make_figures(runs, "report")               # report/knowledge_entropy.png, …

Modules: ``collect`` (discovery and loading), ``table`` (rows and the terminal table), ``summary`` (summary.csv),
``figures`` (the registry of figure functions), ``cli`` (the ``kdyn-report`` entry point).
"""

from kdyn.report.collect import Run, collect_runs, find_run_dirs, load_run
from kdyn.report.figures import figure_functions, make_figures
from kdyn.report.summary import summary_csv, write_summary
from kdyn.report.table import format_table

__all__ = ["Run", "collect_runs", "find_run_dirs", "load_run", "figure_functions", "make_figures",
           "format_table", "summary_csv", "write_summary"]
