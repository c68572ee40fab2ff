"""Where the Hydra configs live, and composing them from Python (tests, the tiny-model builder)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from kdyn import schemas
from kdyn.errors import KdynError


def _find_conf_dir() -> Path:
    here = Path(__file__).resolve()
    for candidate in (here.parents[2] / "conf", here.parent / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise KdynError(
        "cannot find kdyn's conf/ folder; install kdyn from its repository with `pip install -e .`"
    )


CONF_DIR = _find_conf_dir()

# Config groups whose chosen option names a run (W&B name/tags, results.json "groups").
RUN_GROUPS = ("model", "corpus", "intervention", "trainer", "logger", "experiment")


def compose_config(config_name: str, overrides: Sequence[str] = (), return_hydra_config: bool = False) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with overrides, inside or outside a running Hydra app."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        if GlobalHydra.instance().is_initialized():
            return compose(config_name, overrides=list(overrides), return_hydra_config=return_hydra_config)
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name, overrides=list(overrides), return_hydra_config=return_hydra_config)
    except (HydraException, OmegaConfBaseException) as e:
        raise KdynError(compose_error_line(e, config_name, overrides)) from None


def compose_error_line(error: BaseException, config_name: str, overrides: Sequence[str] = ()) -> str:
    """One line for a composition error: a value or key the schemas refuse reads like
    :func:`kdyn.validation.validate_config`'s message; any other (a missing option …) is Hydra's text
    on one line."""
    explained = schemas.compose_error(error)
    if explained is not None:
        return explained
    return f"cannot compose {config_name} with overrides {list(overrides)}: {' '.join(str(error).split())}"


def chosen_groups(cfg: DictConfig) -> dict[str, str | None]:
    """The option chosen in each run-defining config group (``model: pythia-160m`` …)."""
    choices: Mapping[str, Any] = {}
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            choices = HydraConfig.get().runtime.choices
    except Exception:  # noqa: BLE001 - outside a Hydra app there are simply no recorded choices
        choices = {}
    out: dict[str, str | None] = {}
    for group in RUN_GROUPS:
        value = choices.get(group) if choices else None
        if value is None and group in ("model", "corpus", "intervention"):
            node = cfg.get(group)
            value = node.get("name") if isinstance(node, DictConfig) else None
        out[group] = None if value is None else str(value)
    return out


def yaml_node(config_name: str, path: str) -> DictConfig | None:
    """Node ``path`` of ``conf/<config_name>.yaml`` as written there (the node's defaults, the one
    place they live; interpolations unresolved); ``None`` when the file has no such mapping."""
    node = OmegaConf.select(OmegaConf.load(CONF_DIR / f"{config_name}.yaml"), path)
    return node if isinstance(node, DictConfig) else None


def to_plain(node: Any) -> Any:
    """A resolved plain container (dict/list/scalars) of a config node."""
    if isinstance(node, DictConfig) or OmegaConf.is_config(node):
        return OmegaConf.to_container(node, resolve=True)
    return node


# ----------------------------------------------------------------------------------- run folders
def _run_dir(task: str, run_id: Any = None) -> str:
    """``outputs/<task>/runs/<run_id>`` (a rerun resumes) or a fresh timestamped folder."""
    import datetime

    if run_id not in (None, "", "null"):
        return f"outputs/{task}/runs/{_safe(str(run_id))}"
    now = datetime.datetime.now()
    return f"outputs/{task}/{now:%Y-%m-%d}/{now:%H-%M-%S-%f}"


def _sweep_dir(task: str, sweep_id: Any = None) -> str:
    """``outputs/<task>/multirun/<sweep_id>`` (a rerun finds its jobs) or a fresh timestamped folder."""
    import datetime

    if sweep_id not in (None, "", "null"):
        return f"outputs/{task}/multirun/{_safe(str(sweep_id))}"
    now = datetime.datetime.now()
    return f"outputs/{task}/multirun/{now:%Y-%m-%d}/{now:%H-%M-%S-%f}"


def _job_dir(num: Any, override_dirname: Any, sweep_id: Any = None) -> str:
    """A multirun job's folder: its number, or — in a named sweep — its overrides, so that a rerun of
    the sweep (even with a reordered grid) maps every job to the same folder."""
    import hashlib

    if sweep_id in (None, "", "null") or not override_dirname:
        return str(num)
    name = _safe(str(override_dirname))
    if len(name) > 120:
        name = name[:100] + "-" + hashlib.sha1(name.encode()).hexdigest()[:10]
    return name


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.=,+@" else "_" for c in text).strip("._") or "run"


schemas.register()  # the typed schemas the YAML files extend (kdyn_schema/<config>/<node>)

for _name, _fn in (("kdyn_run_dir", _run_dir), ("kdyn_sweep_dir", _sweep_dir), ("kdyn_job_dir", _job_dir)):
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _fn, use_cache=True)
