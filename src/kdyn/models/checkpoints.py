"""Checkpoint resolution: turn ``model=<name> model.step=<N>`` into a hub repo and branch, before any download.

Researchers pick a checkpoint with two Hydra overrides, ``model=<name>`` (a file in ``conf/model/``)
and ``model.step=<N>`` (a training step). :func:`resolve_checkpoint` checks the pair against what is
known to exist and returns a :class:`CheckpointRef` (repo id or local folder, branch, step). It is
pure: no downloads; the only I/O is reading kdyn's own package data, for ``model=local`` looking
at the folder, and, for an official OLMo-1B step missing from kdyn's table or an OLMo-2 step that
is not an anchor, reading the branch cache and (once, when the hub is reachable) the repo's branch
list (see below). Anything invalid raises :class:`kdyn.errors.KdynError` with
one message that says what is wrong and how to fix it, so a bad step fails in milliseconds instead of
after (or halfway through) a multi-gigabyte download.

Families (``model.family``)
---------------------------
``pythia``
    ``EleutherAI/pythia-<size>[-deduped]`` for sizes 14m, 31m, 70m, 160m, 410m, 1b, 1.4b, 2.8b,
    6.9b, 12b (14m and 31m have no deduped run). Branch ``step<N>`` for the 154 steps of
    :data:`PYTHIA_STEPS`: 0, 1, 2, 4, ..., 512, then every 1000 from 1000 to 143000 (the Pythia
    paper's schedule; also TransformerLens' ``PYTHIA_CHECKPOINTS``). 143000 is the final checkpoint,
    identical to ``main``. ``model.step=null`` means ``main``.
``olmo``
    ``olmo-1b`` -> ``allenai/OLMo-1B-hf``, ``olmo-7b`` -> ``allenai/OLMo-7B-hf``. Branch names such as
    ``step20000-tokens83B`` carry a token count that cannot be computed from the step, so kdyn ships
    step->branch tables as package data in ``kdyn/models/branches/`` (one branch per line, ``#``
    comments; each file's header records its sources):

    * ``olmo-1b-hf.txt`` - a PARTIAL table: the 23 OLMo-1B-hf branch names (step1000-tokens4B ...
      step738020-tokens3094B) seen verbatim in public code that loads ``allenai/OLMo-1B-hf``. No full
      copy of the -hf branch list was found; the original ``allenai/OLMo-1B`` repo's revisions.txt
      does not apply, because the -hf conversion labels tokens differently (OLMo-1B
      ``step330000-tokens1384B`` vs OLMo-1B-hf ``step330000-tokens1383B``).
    * ``olmo-1b-official-steps.txt`` - the 351 steps of ``checkpoints/official/OLMo-1B.csv`` in
      ``allenai/OLMo`` (commit 620eaf24d21e5848b66f35705efced3ecd42cb02), which is where the -hf
      branches were converted from (351 branches, step1000 ... step738020). Used only to tell the
      user "this checkpoint exists, but kdyn does not know its branch name"; never to build one.
    * ``olmo-7b-hf.txt`` - no intermediate branches: the OLMo-7B-hf model card says the
      intermediate checkpoints "have not yet been converted into Hugging Face Transformers format,
      but are available in allenai/OLMo-7B". kdyn knows only ``main`` = step 557000 (Ai2, in
      https://huggingface.co/allenai/OLMo-7B/discussions/15).

    A step the table lacks fails with the nearest known steps (the one below and the one above) —
    except an official OLMo-1B step: unless ``HF_HUB_OFFLINE`` is set, kdyn then lists the repo's
    branches once (``huggingface_hub.list_repo_refs``, cached per process) and uses the branch named
    ``step<N>-tokens<T>B``; offline, or if the listing fails, the error says so and how to proceed.
``olmo2``
    ``olmo2-1b`` -> ``allenai/OLMo-2-0425-1B``, ``olmo2-7b`` -> ``allenai/OLMo-2-1124-7B``, ``olmo2-13b`` ->
    ``allenai/OLMo-2-1124-13B``. Two training stages with separate step counters: ``model.step=N``
    with ``model.stage=1`` (default) is branch ``stage1-step<N>-tokens<T>B``; ``model.stage=2
    model.ingredient=k`` (one of the mid-training runs, "ingredients") is
    ``stage2-ingredient<k>-step<N>-tokens<T>B``; ``model.step=null`` is ``main`` (the released model).
    The token count cannot be computed from the step, so the branch is found, in order, among the
    anchor branches the OLMo README documents (``olmo2-*.txt`` in ``kdyn/models/branches/``: the end
    of stage 1 and of every ingredient), the branch cache, and the hub's branch list
    (:func:`list_branches`). A step with no branch fails with the nearest steps of the same stage and
    ingredient; offline, from the anchors and the cache, naming ``model.revision``.

Branch listings (``olmo-1b`` official steps and ``olmo2``) are asked of the hub at most once per repo
and process, never when ``HF_HUB_OFFLINE`` is set, and written to
``$KDYN_CACHE_DIR/branches/<org>--<name>.json`` (default ``~/.cache/kdyn``), which later runs read
first, so a rerun resolves the same step without the hub.
``gpt2``
    ``gpt2``, ``gpt2-medium``, ``gpt2-large``, ``gpt2-xl`` -> ``openai-community/gpt2`` etc. (the
    canonical ids since 2024; the legacy ids ``gpt2``, ``gpt2-medium``, ... redirect to them). OpenAI
    released only final weights, so ``model.step`` must be null.
``local``
    ``model=local model.path=DIR``: any ``save_pretrained`` folder. The folder must exist and hold
    ``config.json``, tokenizer files and weights. ``model.step`` is optional metadata (e.g. the step
    of your own run that wrote the folder): validated as a non-negative integer and recorded in
    :attr:`CheckpointRef.step`, never checked against a table. ``model.revision`` must be null.
``hub``
    ``model=hub model.repo=ORG/NAME [model.revision=...]``: any Hugging Face causal LM. kdyn cannot
    know a generic repo's branches, so ``model.step`` alone is an error unless the repo is one kdyn
    has a table for (then the step is checked against that table); with ``model.revision`` the step
    is recorded as metadata.
``tiny``
    Built in memory by another kdyn module; returned untouched (location and revision None).

An explicit ``model.revision`` (branch, tag or commit) always wins over ``model.step`` and bypasses
the tables, for every hub-backed family. The ref's step is then read from the revision name when it
looks like ``step<N>[-tokens<T>B]`` (else None: unknown), except for ``hub`` where a given
``model.step`` is kept as metadata.
"""

from __future__ import annotations

import bisect
import json
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

from kdyn.errors import KdynError
from kdyn.utils.io import atomic_write_text

__all__ = [
    "FAMILIES",
    "GPT2_MODELS",
    "KNOWN_MODELS",
    "OLMO2_MODELS",
    "OLMO_MODELS",
    "PYTHIA_FINAL_STEP",
    "PYTHIA_MODELS",
    "PYTHIA_STEPS",
    "CheckpointRef",
    "branch_for_step",
    "cached_branches",
    "list_branches",
    "parse_olmo2_branch",
    "lookup_branch",
    "load_branch_table",
    "load_step_list",
    "model_family",
    "nearest_steps",
    "resolve_checkpoint",
    "valid_steps",
]

FAMILIES: tuple[str, ...] = ("pythia", "olmo", "olmo2", "gpt2", "local", "hub", "tiny", "scratch")


@dataclass(frozen=True)
class CheckpointRef:
    """A resolved checkpoint: where the weights live and which version of them."""

    name: str  # e.g. "pythia-160m"
    family: str  # pythia | olmo | olmo2 | gpt2 | local | hub | tiny
    location: str | None  # hub repo id or local directory
    revision: str | None  # hub revision/branch (None = default branch)
    step: int | None  # training step of the checkpoint (None if unknown)

    def describe(self) -> str:
        """One line for logs: ``EleutherAI/pythia-160m@step3000``, ``/data/ckpt (local)``."""
        if self.family == "local":
            return f"{self.location} (local)"
        if self.family == "tiny":
            return f"tiny@step{self.step} ({self.location})"
        if self.location is None:
            return f"{self.name} ({self.family})"
        return f"{self.location}@{self.revision or 'main'}"


# --------------------------------------------------------------------------------------------------
# Pythia
# --------------------------------------------------------------------------------------------------

#: The 154 Pythia checkpoint steps: 0, the powers of two 1 ... 512, then every 1000 up to 143000.
PYTHIA_STEPS: tuple[int, ...] = (0,) + tuple(2**k for k in range(10)) + tuple(range(1000, 143_001, 1000))
PYTHIA_FINAL_STEP = 143_000  # == branch main
_PYTHIA_SIZES = ("14m", "31m", "70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b")
_PYTHIA_NO_DEDUPED = ("14m", "31m")  # EleutherAI trained no deduplicated-Pile run at these sizes
PYTHIA_MODELS: Mapping[str, str] = MappingProxyType(
    {f"pythia-{s}": f"EleutherAI/pythia-{s}" for s in _PYTHIA_SIZES}
    | {f"pythia-{s}-deduped": f"EleutherAI/pythia-{s}-deduped" for s in _PYTHIA_SIZES if s not in _PYTHIA_NO_DEDUPED}
)
_PYTHIA_STEPS_TEXT = "0, 1, 2, 4, …, 512 and every 1000 from 1000 to 143000"

# --------------------------------------------------------------------------------------------------
# OLMo
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _OlmoSpec:
    repo: str
    table: str  # branch table, a file in kdyn/models/branches/
    official_steps: str | None  # steps that exist as official checkpoints (for messages only)
    main_step: int | None  # training step of branch `main`, when a source states it
    missing_hint: str  # how to load a step the table lacks


OLMO_MODELS: Mapping[str, _OlmoSpec] = MappingProxyType(
    {
        "olmo-1b": _OlmoSpec(
            repo="allenai/OLMo-1B-hf",
            table="olmo-1b-hf.txt",
            official_steps="olmo-1b-official-steps.txt",
            main_step=None,
            missing_hint=(
                "look up its branch name with huggingface_hub.list_repo_refs('allenai/OLMo-1B-hf') "
                "and pass model.revision=<branch> (e.g. model.revision=step{step}-tokens<N>B)"
            ),
        ),
        "olmo-7b": _OlmoSpec(
            repo="allenai/OLMo-7B-hf",
            table="olmo-7b-hf.txt",
            official_steps=None,
            main_step=557_000,
            missing_hint=(
                "Set model.step=557000 (or null), or load an intermediate checkpoint elsewhere: the "
                "OLMo-7B-hf model card says they were not converted to Transformers format and live as "
                "branches of allenai/OLMo-7B, which needs `pip install ai2-olmo`: model=hub "
                "model.repo=allenai/OLMo-7B model.revision=step{step}-tokens<N>B model.trust_remote_code=true "
                "(branch names: huggingface_hub.list_repo_refs('allenai/OLMo-7B')). If allenai/OLMo-7B-hf "
                "has such a branch, pass model.revision=<branch>"
            ),
        ),
    }
)

_BRANCH_RE = re.compile(r"^step(\d+)-tokens(\d+)B$")
_REVISION_STEP_RE = re.compile(r"^(?:stage\d+-)?(?:ingredient\d+-)?step(\d+)(?:-tokens\d+B)?$")


@dataclass(frozen=True)
class _Olmo2Spec:
    repo: str
    anchors: str  # the anchor branches documented in the OLMo README, a file in kdyn/models/branches/


OLMO2_MODELS: Mapping[str, _Olmo2Spec] = MappingProxyType(
    {
        "olmo2-1b": _Olmo2Spec(repo="allenai/OLMo-2-0425-1B", anchors="olmo2-0425-1b.txt"),
        "olmo2-7b": _Olmo2Spec(repo="allenai/OLMo-2-1124-7B", anchors="olmo2-1124-7b.txt"),
        "olmo2-13b": _Olmo2Spec(repo="allenai/OLMo-2-1124-13B", anchors="olmo2-1124-13b.txt"),
    }
)
_OLMO2_BRANCH_RE = re.compile(r"^stage(?:1|2-ingredient(\d+))-step(\d+)-tokens(\d+)B$")
_PLAIN_STEP_RE = re.compile(r"^step(\d+)(?:-tokens\d+B)?$")

# --------------------------------------------------------------------------------------------------
# GPT-2
# --------------------------------------------------------------------------------------------------

#: Canonical hub ids (the legacy ids "gpt2", "gpt2-medium", ... redirect to these).
GPT2_MODELS: Mapping[str, str] = MappingProxyType(
    {n: f"openai-community/{n}" for n in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")}
)

#: Every named model: name -> (family, default repo).
KNOWN_MODELS: Mapping[str, tuple[str, str]] = MappingProxyType(
    {n: ("pythia", r) for n, r in PYTHIA_MODELS.items()}
    | {n: ("olmo", s.repo) for n, s in OLMO_MODELS.items()}
    | {n: ("olmo2", s.repo) for n, s in OLMO2_MODELS.items()}
    | {n: ("gpt2", r) for n, r in GPT2_MODELS.items()}
)
_REPO_TO_NAME: dict[str, str] = {repo.lower(): n for n, (_, repo) in KNOWN_MODELS.items()} | {
    n: n for n in GPT2_MODELS  # legacy gpt2 ids
}

_HUB_ID_RE = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9._-]*/)?[A-Za-z0-9][A-Za-z0-9._-]*$")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.txt")
_WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json", "pytorch_model.bin.index.json")

# --------------------------------------------------------------------------------------------------
# Package data
# --------------------------------------------------------------------------------------------------


def _read_data_lines(filename: str) -> list[tuple[int, str]]:
    """(line number, content) of a branches/ data file, comments and blank lines removed."""
    try:
        text = resources.files("kdyn.models").joinpath("branches", filename).read_text(encoding="utf-8")
    except FileNotFoundError as exc:  # pragma: no cover - packaging error
        raise KdynError(
            f"kdyn's data file kdyn/models/branches/{filename} is missing; reinstall kdyn "
            "(pyproject must ship models/branches/*.txt as package data)"
        ) from exc
    out = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        content = raw.split("#", 1)[0].strip()
        if content:
            out.append((lineno, content))
    return out


@cache
def load_branch_table(filename: str) -> Mapping[int, str]:
    """Read a step->branch table (``step<N>-tokens<T>B`` per line) shipped in ``kdyn/models/branches/``.

    The table is validated: every line must be a branch name, steps strictly increase and token
    counts never decrease. Returns a read-only mapping in step order.
    """
    table: dict[int, str] = {}
    last_step, last_tokens = -1, -1
    for lineno, content in _read_data_lines(filename):
        m = _BRANCH_RE.match(content)
        if m is None:
            raise KdynError(
                f"kdyn/models/branches/{filename}:{lineno}: {content!r} is not a branch name step<N>-tokens<T>B"
            )
        step, tokens = int(m.group(1)), int(m.group(2))
        if step <= last_step or tokens < last_tokens:
            raise KdynError(
                f"kdyn/models/branches/{filename}:{lineno}: {content} breaks the order "
                "(steps must strictly increase, token counts must not decrease)"
            )
        table[step] = content
        last_step, last_tokens = step, tokens
    return MappingProxyType(table)


@cache
def load_step_list(filename: str) -> tuple[int, ...]:
    """Read a list of training steps (one integer per line) shipped in ``kdyn/models/branches/``."""
    steps = []
    for lineno, content in _read_data_lines(filename):
        if not content.isdigit():
            raise KdynError(f"kdyn/models/branches/{filename}:{lineno}: {content!r} is not a step number")
        steps.append(int(content))
    if steps != sorted(set(steps)):
        raise KdynError(f"kdyn/models/branches/{filename}: steps must strictly increase")
    return tuple(steps)


def branch_for_step(branches: Iterable[str], step: int) -> str | None:
    """Pick the branch for ``step`` from a live branch listing (pure; the caller does the listing).

    For loaders that fetch ``huggingface_hub.list_repo_refs(repo).branches`` themselves: returns the
    branch named ``step<step>`` or ``step<step>-tokens<T>B``, or None when there is none.
    """
    for name in sorted(branches):
        m = _PLAIN_STEP_RE.match(name)
        if m is not None and int(m.group(1)) == step:
            return name
    return None


def lookup_branch(repo: str, step: int) -> tuple[str | None, str]:
    """``(branch, "")`` for ``step`` from the branch list of ``repo``, or ``(None, why not)``.

    Looks in the cached listing first (:func:`cached_branches`), then lists the hub once per process
    (:func:`list_branches`: never with ``HF_HUB_OFFLINE`` set).
    """
    branch = branch_for_step(cached_branches(repo), step)
    if branch is not None:
        return branch, ""
    branches, why_not = list_branches(repo)
    if branches is None:
        return None, why_not
    branch = branch_for_step(branches, step)
    if branch is None:
        return None, f"{repo} has no branch step{step}[-tokens<N>B] among its {len(branches)} branches"
    logging.getLogger(__name__).info("%s: step %d is branch %s (looked up on the hub)", repo, step, branch)
    return branch, ""


def list_branches(repo: str) -> tuple[tuple[str, ...] | None, str]:
    """``(branch names, "")`` of ``repo`` from the hub, or ``(None, why not)``; never raises.

    The hub is asked at most once per repo and process (``huggingface_hub.list_repo_refs``), never when
    ``HF_HUB_OFFLINE`` is set; a successful listing is written to the branch cache
    (``$KDYN_CACHE_DIR/branches/<org>--<name>.json``) so that a rerun finds its branch without asking.
    """
    if _hub_offline():
        return None, f"HF_HUB_OFFLINE is set, so kdyn did not list the branches of {repo} on the hub"
    try:
        branches = _repo_branches(repo)
    except Exception as exc:  # network, auth, a missing huggingface_hub: report, never crash here
        return None, f"listing the branches of {repo} failed ({type(exc).__name__}: {exc})"
    _write_branch_cache(repo, branches)
    return branches, ""


def cached_branches(repo: str) -> tuple[str, ...]:
    """The branch names of ``repo`` from kdyn's branch cache (empty when never listed or unreadable)."""
    try:
        data = json.loads(_branch_cache_path(repo).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ()
    names = data.get("branches") if isinstance(data, dict) and data.get("repo") == repo else None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return ()
    return tuple(names)


def _branch_cache_path(repo: str) -> Path:
    root = Path(os.path.expandvars(os.environ.get("KDYN_CACHE_DIR", "~/.cache/kdyn"))).expanduser()
    return root / "branches" / (repo.replace("/", "--") + ".json")


def _write_branch_cache(repo: str, branches: Sequence[str]) -> None:
    from datetime import datetime, timezone

    path = _branch_cache_path(repo)
    if cached_branches(repo) == tuple(sorted(branches)):
        return
    record = {"repo": repo, "listed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "source": "huggingface_hub.list_repo_refs", "branches": sorted(branches)}
    try:
        atomic_write_text(path, json.dumps(record, indent=1))
    except OSError as exc:  # a read-only cache only costs a hub listing next time
        logging.getLogger(__name__).debug("could not write the branch cache %s: %s", path, exc)


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


@cache
def _repo_branches(repo: str) -> tuple[str, ...]:
    from huggingface_hub import list_repo_refs

    return tuple(ref.name for ref in list_repo_refs(repo).branches)


def parse_olmo2_branch(name: str) -> tuple[int, int | None, int] | None:
    """``(stage, ingredient or None, step)`` of an OLMo-2 branch name, or None for any other name.

    ``stage1-step928646-tokens3896B`` -> ``(1, None, 928646)``;
    ``stage2-ingredient1-step11931-tokens50B`` -> ``(2, 1, 11931)``.
    """
    m = _OLMO2_BRANCH_RE.match(name)
    if m is None:
        return None
    ingredient = int(m.group(1)) if m.group(1) is not None else None
    return (1 if ingredient is None else 2), ingredient, int(m.group(2))


@cache
def load_olmo2_anchors(filename: str) -> tuple[str, ...]:
    """The OLMo-2 anchor branches shipped in ``kdyn/models/branches/`` (validated branch names)."""
    names = []
    for lineno, content in _read_data_lines(filename):
        if parse_olmo2_branch(content) is None:
            raise KdynError(f"kdyn/models/branches/{filename}:{lineno}: {content!r} is not an OLMo-2 branch name "
                            "(stage1-step<N>-tokens<T>B or stage2-ingredient<k>-step<N>-tokens<T>B)")
        names.append(content)
    return tuple(names)


# --------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------


def nearest_steps(steps: Sequence[int], step: int) -> tuple[int | None, int | None]:
    """The valid step just below ``step`` and the one just above (None past either end).

    If ``step`` is itself valid, returns ``(step, step)``.
    """
    ordered = sorted(set(steps))
    i = bisect.bisect_left(ordered, step)
    if i < len(ordered) and ordered[i] == step:
        return step, step
    below = ordered[i - 1] if i > 0 else None
    above = ordered[i] if i < len(ordered) else None
    return below, above


def _nearest_text(steps: Sequence[int], step: int) -> str:
    below, above = nearest_steps(steps, step)
    return ", ".join(str(s) for s in (below, above) if s is not None)


def _list_text(steps: Sequence[int]) -> str:
    steps = sorted(steps)
    if len(steps) <= 8:
        return ", ".join(map(str, steps))
    return ", ".join(map(str, steps[:4])) + ", …, " + ", ".join(map(str, steps[-2:]))


_USED_KEYS = ("name", "family", "repo", "step", "revision", "path", "stage", "ingredient")


def _as_dict(model_cfg: Any) -> dict[str, Any]:
    try:
        from omegaconf import DictConfig, OmegaConf
        from omegaconf.errors import OmegaConfBaseException
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        DictConfig = None  # type: ignore[assignment,misc]
    if DictConfig is not None and isinstance(model_cfg, DictConfig):
        # Resolve only the keys read here: other keys may interpolate into the rest of the composed
        # config (e.g. ${paths.cache_dir}) and are none of this module's business.
        out: dict[str, Any] = dict(OmegaConf.to_container(model_cfg, resolve=False))  # type: ignore[arg-type]
        for key in _USED_KEYS:
            if OmegaConf.is_missing(model_cfg, key):
                raise KdynError(
                    f"model.{key} is mandatory (???) in this config; pass model.{key}=... on the command line"
                )
            if key in model_cfg:
                try:
                    out[key] = model_cfg[key]
                except OmegaConfBaseException as exc:
                    raise KdynError(f"model.{key} could not be read from the config: {exc}") from exc
        return out
    if isinstance(model_cfg, Mapping):
        return dict(model_cfg)
    raise KdynError(f"the model config must be a mapping (the `model` config group); got {type(model_cfg).__name__}")


def _parse_step(value: Any, who: str) -> int | None:
    """``model.step`` as int: accepts ints, integral floats and digit strings; None stays None."""
    if value is None:
        return None
    fix = "set model.step to a training step such as model.step=3000 (or model.step=null)"
    if isinstance(value, bool):
        raise KdynError(f"{who}: model.step must be a non-negative integer, got {value!r}; {fix}")
    if isinstance(value, float):
        if not value.is_integer():
            raise KdynError(f"{who}: model.step must be a whole number of training steps, got {value!r}; {fix}")
        value = int(value)
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("-") and text[1:].isdigit():
            value = int(text)
        elif text.isdigit():
            value = int(text)
        else:
            raise KdynError(f"{who}: model.step must be a non-negative integer, got {value!r}; {fix}")
    if not isinstance(value, int):
        raise KdynError(
            f"{who}: model.step must be a non-negative integer, got {value!r} ({type(value).__name__}); {fix}"
        )
    if value < 0:
        raise KdynError(f"{who}: model.step must be non-negative, got {value}; {fix}")
    return value


def _parse_revision(value: Any, who: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise KdynError(
            f"{who}: model.revision must be a branch, tag or commit name, got {value!r}; "
            "e.g. model.revision=main (or model.revision=null to select by model.step)"
        )
    text = str(value).strip()
    if not text:
        raise KdynError(f"{who}: model.revision is empty; pass a branch/tag/commit or model.revision=null")
    return text


def _step_from_revision(revision: str) -> int | None:
    m = _REVISION_STEP_RE.match(revision)
    return int(m.group(1)) if m else None


def _check_repo_id(repo: Any, who: str) -> str:
    if not isinstance(repo, str) or not repo.strip():
        raise KdynError(f"{who}: model.repo must be a Hugging Face model id ORG/NAME, got {repo!r}")
    repo = repo.strip()
    if repo.startswith(("/", "./", "../", "~")) or "\\" in repo or repo.count("/") > 1:
        raise KdynError(
            f"{who}: model.repo={repo!r} looks like a local path, not a Hugging Face model id ORG/NAME; "
            "to load a folder written by save_pretrained use model=local model.path=DIR"
        )
    if not _HUB_ID_RE.match(repo) or "--" in repo or ".." in repo or len(repo) > 96:
        raise KdynError(
            f"{who}: model.repo={repo!r} is not a valid Hugging Face model id; expected ORG/NAME "
            "(letters, digits, '-', '_', '.'), e.g. model.repo=EleutherAI/pythia-160m"
        )
    return repo


def _explicit(name: str, family: str, repo: str, revision: str, step: int | None = None) -> CheckpointRef:
    return CheckpointRef(
        name=name,
        family=family,
        location=repo,
        revision=revision,
        step=step if step is not None else _step_from_revision(revision),
    )


# --------------------------------------------------------------------------------------------------
# Families
# --------------------------------------------------------------------------------------------------


def resolve_pythia(cfg: dict[str, Any], name: str | None) -> CheckpointRef:
    repo_cfg = cfg.get("repo")
    if name not in PYTHIA_MODELS:
        m = re.fullmatch(r"pythia-(14m|31m)-deduped", str(name))
        if m:
            raise KdynError(
                f"{name} does not exist: EleutherAI trained no deduplicated run of pythia-{m.group(1)} "
                f"(deduped variants exist for 70m … 12b); use model=pythia-{m.group(1)}"
            )
        if repo_cfg is None:
            raise KdynError(
                f"unknown Pythia model {name!r}; valid names are {', '.join(PYTHIA_MODELS)} "
                "(or give model.repo=ORG/NAME for another repo with Pythia's step<N> branches)"
            )
    who = str(name) if name is not None else str(repo_cfg)
    repo = _check_repo_id(repo_cfg, who) if repo_cfg is not None else PYTHIA_MODELS[who]
    revision = _parse_revision(cfg.get("revision"), who)
    if revision is not None:
        return _explicit(who, "pythia", repo, revision)
    step = _parse_step(cfg.get("step"), who)
    if step is None:
        return CheckpointRef(name=who, family="pythia", location=repo, revision=None, step=PYTHIA_FINAL_STEP)
    if step not in PYTHIA_STEPS:
        raise KdynError(
            f"{who} has no checkpoint at step {step}; valid steps are {_PYTHIA_STEPS_TEXT} "
            f"(nearest: {_nearest_text(PYTHIA_STEPS, step)}). Set model.step to one of them, "
            "or pass model.revision=<branch> to load a hub branch directly"
        )
    return CheckpointRef(name=who, family="pythia", location=repo, revision=f"step{step}", step=step)


def _olmo_spec(name: str | None) -> _OlmoSpec:
    spec = OLMO_MODELS.get(str(name))
    if spec is None:
        raise KdynError(
            f"unknown OLMo model {name!r}; kdyn has step tables for {', '.join(OLMO_MODELS)}. For another OLMo "
            "repo use model=hub model.repo=ORG/NAME model.revision=<branch>"
        )
    return spec


def _olmo_steps(spec: _OlmoSpec) -> list[int]:
    steps = set(load_branch_table(spec.table))
    if spec.main_step is not None:
        steps.add(spec.main_step)
    return sorted(steps)


def _repo_or_pinned(cfg: dict[str, Any], who: str, family: str, default_repo: str) -> tuple[str, CheckpointRef | None]:
    """``model.repo`` (checked) or the model's own repo, and the checkpoint when ``model.revision`` pins one."""
    repo_cfg = cfg.get("repo")
    repo = _check_repo_id(repo_cfg, who) if repo_cfg is not None else default_repo
    revision = _parse_revision(cfg.get("revision"), who)
    return repo, (_explicit(who, family, repo, revision) if revision is not None else None)


def resolve_olmo(cfg: dict[str, Any], name: str | None) -> CheckpointRef:
    spec = _olmo_spec(name)
    who = str(name)
    repo, pinned = _repo_or_pinned(cfg, who, "olmo", spec.repo)
    if pinned is not None:
        return pinned
    step = _parse_step(cfg.get("step"), who)
    if repo.lower() != spec.repo.lower():
        if step is None:
            return CheckpointRef(name=who, family="olmo", location=repo, revision=None, step=None)
        raise KdynError(
            f"{who}: kdyn's step table (kdyn/models/branches/{spec.table}) is for {spec.repo}, not {repo}, "
            f"and OLMo branch names differ between repos; pass model.revision=<branch of {repo}> "
            f"instead of model.step={step}, or drop the model.repo override"
        )
    if step is None:
        return CheckpointRef(name=who, family="olmo", location=repo, revision=None, step=spec.main_step)
    table = load_branch_table(spec.table)
    if step in table:
        return CheckpointRef(name=who, family="olmo", location=repo, revision=table[step], step=step)
    if step == spec.main_step:
        return CheckpointRef(name=who, family="olmo", location=repo, revision=None, step=step)
    known = _olmo_steps(spec)
    nearest = _nearest_text(known, step)
    hint = spec.missing_hint.format(step=step)
    if spec.official_steps is not None:
        official = load_step_list(spec.official_steps)
        if step in official:
            branch, why_not = lookup_branch(spec.repo, step)
            if branch is not None:
                return CheckpointRef(name=who, family="olmo", location=repo, revision=branch, step=step)
            raise KdynError(
                f"{who}: step {step} is an official checkpoint, but kdyn does not know its {spec.repo} branch "
                f"name (the -tokens<N>B part cannot be computed from the step, kdyn's table "
                f"kdyn/models/branches/{spec.table} lists only {len(table)} verified branches, and {why_not}). "
                f"Either set model.step to a step kdyn knows (nearest: {nearest}), or {hint}"
            )
        raise KdynError(
            f"{who} has no checkpoint at step {step}: it is not one of the {len(official)} official checkpoints "
            f"listed in kdyn/models/branches/{spec.official_steps} (nearest: {_nearest_text(official, step)}). "
            f"kdyn can resolve steps {_list_text(known)} (nearest: {nearest}); set model.step to one of them, "
            f"or pass model.revision=<branch> to load a branch of {spec.repo} directly"
        )
    what = (
        f"kdyn knows {len(known)} of its checkpoints, at steps {_list_text(known)} (nearest: {nearest})"
        if len(known) > 1
        else f"kdyn knows only its final checkpoint, step {known[0]} (branch main)"
    )
    raise KdynError(f"{who} ({spec.repo}) has no checkpoint at step {step} that kdyn can resolve; {what}. {hint}")


def _parse_positive(value: Any, key: str, who: str, fix: str) -> int | None:
    if value is None:
        return None
    text = str(value).strip()
    if isinstance(value, bool) or not text.isdigit() or int(text) < 1:
        raise KdynError(f"{who}: model.{key} must be a positive whole number, got {value!r}; {fix}")
    return int(text)


def _olmo2_series(stage: int, ingredient: int | None) -> str:
    return "stage 1" if stage == 1 else f"stage 2 ingredient {ingredient}"


def _olmo2_find(branches: Iterable[str], stage: int, ingredient: int | None, step: int) -> str | None:
    for name in sorted(branches):
        if parse_olmo2_branch(name) == (stage, ingredient, step):
            return name
    return None


def resolve_olmo2(cfg: dict[str, Any], name: str | None) -> CheckpointRef:
    spec = OLMO2_MODELS.get(str(name))
    if spec is None:
        raise KdynError(f"unknown OLMo-2 model {name!r}; valid names are {', '.join(OLMO2_MODELS)}. For another "
                        "repo use model=hub model.repo=ORG/NAME model.revision=<branch>")
    who = str(name)
    repo, pinned = _repo_or_pinned(cfg, who, "olmo2", spec.repo)
    if pinned is not None:
        return pinned
    step = _parse_step(cfg.get("step"), who)
    stage = _parse_positive(cfg.get("stage"), "stage", who, "use model.stage=1 (pretraining) or model.stage=2 "
                            "(mid-training, with model.ingredient=k)")
    ingredient = _parse_positive(cfg.get("ingredient"), "ingredient", who,
                                 "stage-2 ingredients are numbered from 1, e.g. model.ingredient=1")
    stage = stage if stage is not None else (2 if ingredient is not None else 1)
    anchors = load_olmo2_anchors(spec.anchors) if repo.lower() == spec.repo.lower() else ()
    if stage not in (1, 2):
        raise KdynError(f"{who}: model.stage={stage} does not exist; OLMo-2 has stage 1 (pretraining) and stage 2 "
                        "(mid-training): set model.stage=1, or model.stage=2 with model.ingredient=k")
    if stage == 1 and ingredient is not None:
        raise KdynError(f"{who}: model.ingredient={ingredient} applies to stage 2 only (stage 1 is one run); set "
                        "model.stage=2 to load that ingredient, or model.ingredient=null for stage 1")
    if stage == 2 and ingredient is None:
        present = sorted({p[1] for p in map(parse_olmo2_branch, anchors) if p and p[1] is not None})
        raise KdynError(f"{who}: stage 2 was trained as separate runs ('ingredients'{', numbered ' if present else ''}"
                        f"{', '.join(map(str, present))}), each with its own branches; choose one with "
                        f"model.ingredient=k, e.g. model.ingredient={present[0] if present else 1}")
    if step is None:
        if cfg.get("stage") is not None or ingredient is not None:
            last = [p[2] for p in map(parse_olmo2_branch, anchors) if p and p[:2] == (stage, ingredient)]
            example = f" (its final step is {max(last)})" if last else ""
            raise KdynError(f"{who}: model.step is null, which means the released model (branch main), but "
                            f"model.stage/model.ingredient ask for {_olmo2_series(stage, ingredient)}; pass "
                            f"model.step=N{example}, or drop model.stage and model.ingredient to load main")
        return CheckpointRef(name=who, family="olmo2", location=repo, revision=None, step=None)

    series = _olmo2_series(stage, ingredient)
    wanted = f"stage1-step{step}-tokens<T>B" if stage == 1 else f"stage2-ingredient{ingredient}-step{step}-tokens<T>B"
    known = tuple(anchors) + cached_branches(repo)
    branch = _olmo2_find(known, stage, ingredient, step)
    if branch is not None:
        return CheckpointRef(name=who, family="olmo2", location=repo, revision=branch, step=step)
    listed, why_not = list_branches(repo)
    if listed is not None:
        branch = _olmo2_find(listed, stage, ingredient, step)
        if branch is not None:
            logging.getLogger(__name__).info("%s: %s step %d is branch %s (looked up on the hub)", repo, series,
                                             step, branch)
            return CheckpointRef(name=who, family="olmo2", location=repo, revision=branch, step=step)
    pool = listed if listed is not None else known
    parsed = [p for p in map(parse_olmo2_branch, pool) if p is not None]
    steps = sorted({p[2] for p in parsed if p[:2] == (stage, ingredient)})
    if steps:
        text = _nearest_text(steps, step)
        nearest = f"the nearest {series} step{'s are' if ',' in text else ' is'} {text}"
    else:
        ingredients = sorted({p[1] for p in parsed if p[1] is not None})
        nearest = f"there are no {series} branches" + (
            f" (stage-2 ingredients: {', '.join(map(str, ingredients))})" if ingredients else "")
    if listed is not None:
        raise KdynError(
            f"{who}: {repo} has no {series} checkpoint at step {step} (no branch {wanted} among its {len(listed)} "
            f"branches); {nearest}. Set model.step to one of them, or pass model.revision=<branch>")
    raise KdynError(
        f"{who}: kdyn cannot find the {series} branch for step {step} ({wanted}): {why_not}, and the {len(known)} "
        f"branches it knows without the hub (kdyn/models/branches/{spec.anchors} and its branch cache) do not include "
        f"it; {nearest}. Set model.step to one of those, or pass the branch name as model.revision={wanted} "
        f"(names: huggingface_hub.list_repo_refs('{repo}')), or run once with the hub reachable so kdyn lists and "
        "caches the branches")


def resolve_gpt2(cfg: dict[str, Any], name: str | None) -> CheckpointRef:
    if name not in GPT2_MODELS:
        raise KdynError(f"unknown GPT-2 model {name!r}; valid names are {', '.join(GPT2_MODELS)}")
    who = str(name)
    repo_cfg = cfg.get("repo")
    repo = _check_repo_id(repo_cfg, who) if repo_cfg is not None else GPT2_MODELS[who]
    step = _parse_step(cfg.get("step"), who)
    if step is not None:
        raise KdynError(
            f"{who} has only its final checkpoint (OpenAI released no intermediate GPT-2 checkpoints), so "
            f"model.step={step} cannot be honoured; remove it or set model.step=null. For a model with "
            "training checkpoints use a Pythia or OLMo config, e.g. model=pythia-160m model.step=3000"
        )
    revision = _parse_revision(cfg.get("revision"), who)
    return CheckpointRef(name=who, family="gpt2", location=repo, revision=revision, step=None)


def resolve_local(cfg: dict[str, Any], name: str | None) -> CheckpointRef:
    who = "model=local" if name in (None, "local") else f"model={name} (local)"
    raw = cfg.get("path")
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        raise KdynError(
            f"{who} needs the checkpoint folder: pass model.path=DIR, a directory written by "
            "save_pretrained (config.json, tokenizer files and weights)"
        )
    if _parse_revision(cfg.get("revision"), who) is not None:
        raise KdynError(f"{who}: a local folder has no revisions; remove model.revision (or set model.revision=null)")
    step = _parse_step(cfg.get("step"), who)  # metadata only
    path = Path(os.path.expandvars(str(raw).strip())).expanduser()
    if not path.is_absolute():
        path = Path.cwd() / path
    if not path.exists():
        raise KdynError(
            f"{who}: model.path={raw!r} does not exist (looked for {path}); "
            "pass model.path=DIR of a save_pretrained folder"
        )
    if not path.is_dir():
        raise KdynError(
            f"{who}: model.path={raw!r} is a file, not a directory; pass the folder that contains config.json"
        )
    present = sorted(p.name for p in path.iterdir())
    listing = ", ".join(present[:12]) + (", …" if len(present) > 12 else "") if present else "nothing"
    config = path / "config.json"
    if not config.is_file():
        raise KdynError(
            f"{who}: {path} has no config.json, so it is not a save_pretrained model folder (it contains: "
            f"{listing}); save the model with model.save_pretrained(DIR) or point model.path at the right folder"
        )
    try:
        parsed = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KdynError(f"{who}: {config} is not valid JSON ({exc}); re-save the model with save_pretrained") from exc
    if not isinstance(parsed, dict):
        raise KdynError(
            f"{who}: {config} must hold a JSON object (a model config); re-save the model with save_pretrained"
        )
    has_tokenizer = any((path / f).is_file() for f in _TOKENIZER_FILES) or (
        (path / "vocab.json").is_file() and (path / "merges.txt").is_file()
    )
    if not has_tokenizer:
        raise KdynError(
            f"{who}: {path} has no tokenizer files (expected tokenizer.json, tokenizer_config.json, "
            f"tokenizer.model, vocab.txt, or vocab.json + merges.txt; it contains: {listing}); "
            "save the tokenizer next to the model with tokenizer.save_pretrained(DIR)"
        )
    if not any(any(path.glob(g)) for g in _WEIGHT_GLOBS):
        raise KdynError(
            f"{who}: {path} has no model weights (expected *.safetensors or pytorch_model*.bin; it contains: "
            f"{listing}); save them with model.save_pretrained(DIR)"
        )
    ref_name = str(name) if name not in (None, "local") else path.name
    return CheckpointRef(name=ref_name, family="local", location=str(path.resolve()), revision=None, step=step)


def resolve_hub(cfg: dict[str, Any], name: str | None) -> CheckpointRef:
    who = "model=hub"
    raw = cfg.get("repo")
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        raise KdynError(
            f"{who} needs a Hugging Face model id: pass model.repo=ORG/NAME, e.g. model.repo=EleutherAI/pythia-160m"
        )
    repo = _check_repo_id(raw, who)
    ref_name = repo if name in (None, "hub") else str(name)
    revision = _parse_revision(cfg.get("revision"), who)
    step = _parse_step(cfg.get("step"), who)
    if revision is not None:
        return _explicit(ref_name, "hub", repo, revision, step)
    if step is None:
        return CheckpointRef(name=ref_name, family="hub", location=repo, revision=None, step=None)
    known = _REPO_TO_NAME.get(repo.lower())
    if known is not None:
        family, _ = KNOWN_MODELS[known]
        ref = _RESOLVERS[family]({**cfg, "repo": repo, "name": known}, known)
        return CheckpointRef(name=ref_name, family="hub", location=ref.location, revision=ref.revision, step=ref.step)
    raise KdynError(
        f"{who}: kdyn cannot map model.step={step} to a branch of {repo} (it only knows the branch names of "
        f"{', '.join(['pythia-*', *OLMO_MODELS, *OLMO2_MODELS])}); pass the branch explicitly with model.revision=<branch> "
        f"(model.step={step} is then kept as the recorded training step)"
    )


def resolve_tiny(cfg: dict[str, Any], name: str | None) -> CheckpointRef:
    """The trajectory's folder and step are found by :func:`kdyn.models.tiny.resolve_tiny` (it may not be built)."""
    return CheckpointRef(name=str(name or "tiny"), family="tiny", location=None, revision=None, step=cfg.get("step"))


def resolve_scratch(cfg: dict[str, Any], name: str | None) -> CheckpointRef:
    """A fresh model (:func:`kdyn.models.scratch.build_scratch`): nothing to find, step 0."""
    return CheckpointRef(name=str(name or "scratch"), family="scratch", location=None, revision=None, step=0)


# Fallback for nodes without ``model.resolver`` (every shipped YAML names its family's function).
_RESOLVERS = {
    "pythia": resolve_pythia,
    "olmo": resolve_olmo,
    "olmo2": resolve_olmo2,
    "gpt2": resolve_gpt2,
    "local": resolve_local,
    "hub": resolve_hub,
    "tiny": resolve_tiny,
    "scratch": resolve_scratch,
}


def _family_and_name(cfg: dict[str, Any]) -> tuple[str, str | None]:
    name = cfg.get("name")
    name = None if name is None else str(name).strip()
    family = cfg.get("family")
    if family is None:
        if name in KNOWN_MODELS:
            return KNOWN_MODELS[name][0], name
        if name in FAMILIES:
            return name, name
        raise KdynError(
            f"the model config {name!r} has no `family`; set model.family to one of {', '.join(FAMILIES)} "
            "(or choose a shipped config: model=pythia-160m, model=olmo-1b, model=gpt2, model=local, model=hub)"
        )
    family = str(family).strip().lower()
    if family not in _RESOLVERS and cfg.get("resolver") is None:
        raise KdynError(f"model.family={family!r} is not a kdyn model family; use one of {', '.join(FAMILIES)}")
    return family, name


# --------------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------------


def model_family(model_cfg: Mapping[str, Any]) -> str:
    """The family of a ``model`` node (``model.family``, or the family of a known ``model.name``)."""
    return _family_and_name(_as_dict(model_cfg))[0]


def resolve_checkpoint(model_cfg: Mapping[str, Any]) -> CheckpointRef:
    """Check ``model_cfg`` (the Hydra ``model`` group) and say exactly which checkpoint it means.

    Pure: no network and no downloads. Raises :class:`KdynError` for an unknown model, an invalid
    step (naming the nearest valid ones), a bad repo id or an unusable local folder.
    """
    cfg = _as_dict(model_cfg)
    family, name = _family_and_name(cfg)
    return _resolver(cfg, family)(cfg, name)


def _resolver(cfg: dict[str, Any], family: str):
    """``model.resolver``: the function ``(model node as dict, name) -> CheckpointRef`` named in the
    family's base YAML (one module + one YAML for a new family); a node without one (a few keys
    given from Python) falls back to the built-in family's."""
    path = cfg.get("resolver")
    if path is None:
        return _RESOLVERS[family]
    from hydra.utils import get_method

    try:
        return get_method(str(path))
    except Exception as e:  # noqa: BLE001 - a wrong path or a module that fails to import
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise KdynError(f"model.resolver={path} cannot be imported ({reason}); give the full import path of a "
                        "function (model node, name) -> CheckpointRef, e.g. kdyn.models.checkpoints.resolve_hub") from None


def valid_steps(model_cfg: Mapping[str, Any]) -> list[int] | None:
    """The steps ``model.step`` may take for this config, or None when no step table applies.

    Pythia: the 154 :data:`PYTHIA_STEPS`. OLMo: the steps of kdyn's branch table (plus the step of
    ``main`` when known). GPT-2, local, tiny and generic hub repos: None.
    """
    cfg = _as_dict(model_cfg)
    family, name = _family_and_name(cfg)
    if family == "hub":
        repo = cfg.get("repo")
        known = _REPO_TO_NAME.get(str(repo).strip().lower()) if repo is not None else None
        if known is None:
            return None
        family, name = KNOWN_MODELS[known][0], known
    if family == "pythia":
        return list(PYTHIA_STEPS)
    if family == "olmo":
        return _olmo_steps(_olmo_spec(name))
    return None
