"""Compatibility alias: the synthetic world's word lists and templates live in `kdyn.data.world.templates`."""

from kdyn.data.world.templates import *  # noqa: F403
