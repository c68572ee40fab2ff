"""A small, deterministic, fictional world to pretrain on, then teach new knowledge and updates.

`SyntheticWorld(WorldConfig(seed=...))` invents countries, regions, towns, organisations and people
(names built from syllables, all unique) linked by Wikidata-style relations. It provides:

- `base_documents()`: the "old world" text stream, short paragraphs about one entity each, every
  fact stated several times with varied templates and sentence order;
- `new_knowledge(n)`: items about brand-new entities in the schema of the Fictional Knowledge
  dataset (Chang et al. 2024): paragraph, 9 paraphrases, memorization / semantic / compositional
  probes (see `validate_fictional_schema`);
- `updates(n_periods)`: periods in the schema of TWiki-Probes (Jang et al. 2022): changed facts
  (updated or new) and unchanged control facts, plus the documents that state the changes.

All randomness comes from `random.Random` instances seeded by strings derived from the config seed,
so every output is a pure function of its arguments and the config.

==============  ==================================================================================
``config``      `WorldConfig` (sizes, seed) and `world_config` (from a config node)
``facts``       `Fact`, `Entity`, `Document`; sentences (`verbalize`, `probe`); TWiki-Probes CSV rows
``names``       invented names (`NameMaker`), random dates and populations
``generator``   `SyntheticWorld`: the base world and text
``items``       one new-knowledge item → a Fictional Knowledge record
``simulation``  the world's updates, period by period
``schema``      the Fictional Knowledge record schema and `validate_fictional_schema`
``templates``   word lists and sentence templates (static data)
==============  ==================================================================================
"""

from kdyn.data.world.config import WorldConfig, world_config
from kdyn.data.world.facts import (
    COUNTRY,
    ENTITY_KINDS,
    ORGANISATION,
    PERSON,
    REGION,
    TOWN,
    TWIKI_COLUMNS,
    Document,
    Entity,
    Fact,
    facts_to_rows,
    n_templates,
    probe,
    read_twiki_csv,
    verbalize,
    write_twiki_csv,
)
from kdyn.data.world.generator import SyntheticWorld
from kdyn.data.world.schema import (
    FICTIONAL_EXTRA_KEYS,
    FICTIONAL_KEYS,
    FICTIONAL_LIST_KEYS,
    N_PARAPHRASES,
    N_PROBES,
    validate_fictional_schema,
)

SOURCE_MODULES = tuple(f"{__name__}.{m}" for m in ("config", "facts", "names", "generator", "items", "simulation",
                                                    "schema", "templates"))
"""The modules whose source generates the world (a trained tiny model's fingerprint hashes them)."""

__all__ = [
    "COUNTRY", "ENTITY_KINDS", "FICTIONAL_EXTRA_KEYS", "FICTIONAL_KEYS", "FICTIONAL_LIST_KEYS", "N_PARAPHRASES",
    "N_PROBES", "ORGANISATION", "PERSON", "REGION", "SOURCE_MODULES", "TOWN", "TWIKI_COLUMNS", "Document", "Entity",
    "Fact", "SyntheticWorld", "WorldConfig", "facts_to_rows", "n_templates", "probe", "read_twiki_csv", "verbalize",
    "validate_fictional_schema", "world_config", "write_twiki_csv",
]
