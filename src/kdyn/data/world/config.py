"""`WorldConfig`: the sizes and seed of the synthetic world, and `world_config` for a config node."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kdyn.errors import KdynError


@dataclass(frozen=True)
class WorldConfig:
    """Sizes of the world. The defaults give a base stream of ~1M characters.

    `n_places` counts towns; regions and countries are sized separately. Every document states
    all facts of its entity, so `docs_per_entity` is the number of exposures of each fact.
    """

    seed: int = 0
    n_people: int = 600
    n_places: int = 120
    n_orgs: int = 80
    n_regions: int = 16
    n_countries: int = 4
    n_rivers: int = 20
    n_given_names: int = 80
    docs_per_entity: int = 4
    spouse_fraction: float = 0.4
    educated_fraction: float = 0.6

    def __post_init__(self) -> None:
        for name in ("n_people", "n_places", "n_orgs", "n_regions", "n_countries", "n_rivers",
                     "n_given_names", "docs_per_entity"):
            if getattr(self, name) < 1:
                raise KdynError(f"WorldConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.n_orgs < 2 or self.n_people < 2 or self.n_places < 2:
            raise KdynError("WorldConfig needs at least 2 people, 2 places and 2 organisations")
        for name in ("spouse_fraction", "educated_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise KdynError(f"WorldConfig.{name} must be in [0, 1], got {getattr(self, name)}")


def world_config(values: Mapping[str, Any] | None, key: str = "corpus.world") -> WorldConfig:
    """The `WorldConfig` of a config node's ``world`` mapping; ``key`` names that node in messages."""
    values = dict(values or {})
    known = set(WorldConfig.__dataclass_fields__)
    unknown = sorted(set(values) - known)
    if unknown:
        raise KdynError(f"unknown {key} keys {unknown}; valid keys are {sorted(known)}")
    return WorldConfig(**values)
