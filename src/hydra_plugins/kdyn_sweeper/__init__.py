"""Hydra discovers sweepers only under ``hydra_plugins``: this is kdyn's, a thin shell over `kdyn.sweep`."""

from __future__ import annotations

from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper


class KdynSweeper(BasicSweeper):
    """Hydra's basic sweeper (same grid, same job order and batches) that validates every job's config
    before launching any, lets every job finish when one fails, and summarises the failures.
    See :func:`kdyn.sweep.sweep`."""

    def sweep(self, arguments: list[str]) -> Any:
        from kdyn.sweep import sweep

        return sweep(self, arguments)
