"""The Fictional Knowledge record schema (Chang et al. 2024) and its validation."""

from __future__ import annotations

from typing import Any

from kdyn.errors import KdynError

FICTIONAL_LIST_KEYS = ("mem_input", "mem_target", "gen_input", "gen_target", "hard_gen_input",
                       "hard_gen_target")
FICTIONAL_KEYS = ("train_context", *FICTIONAL_LIST_KEYS, "paraphrases")
"""Keys of a Fictional Knowledge record (the paraphrased release)."""
FICTIONAL_EXTRA_KEYS = ("hard_gen_support", "new_entities", "facts")
"""Keys `new_knowledge(extras=True)` adds to each record (not in the real dataset)."""
N_PROBES = 5
N_PARAPHRASES = 9


# ---------------------------------------------------------------- Fictional Knowledge schema
def validate_fictional_schema(records: Any, require_paraphrases: bool = True) -> None:
    """Check records against the Fictional Knowledge schema; raise `KdynError` on the first problem.

    Each record must be a dict with a non-empty str "train_context", lists of exactly 5 strings
    under `FICTIONAL_LIST_KEYS` (inputs non-empty; targets non-empty without surrounding
    whitespace) and, unless `require_paraphrases` is False (the unparaphrased release), a list of
    non-empty strings under "paraphrases" (possibly empty). Extra keys are allowed.
    """
    if not isinstance(records, (list, tuple)):
        raise KdynError(f"fictional-knowledge data must be a list of records, "
                        f"got {type(records).__name__}")
    for i, rec in enumerate(records):
        where = f"fictional-knowledge record {i}"
        if not isinstance(rec, dict):
            raise KdynError(f"{where}: must be a dict, got {type(rec).__name__}")
        required = FICTIONAL_KEYS if require_paraphrases else FICTIONAL_KEYS[:-1]
        missing = [k for k in required if k not in rec]
        if missing:
            hint = (" (for fictional_knowledge.json without paraphrases, pass "
                    "require_paraphrases=False)" if missing == ["paraphrases"] else "")
            raise KdynError(f"{where}: missing key(s) {missing}{hint}")
        context = rec["train_context"]
        if not isinstance(context, str) or not context.strip():
            raise KdynError(f"{where}: 'train_context' must be a non-empty string")
        for key in FICTIONAL_LIST_KEYS:
            val = rec[key]
            if not isinstance(val, list) or len(val) != N_PROBES:
                got = f"list of length {len(val)}" if isinstance(val, list) else type(val).__name__
                raise KdynError(f"{where}: '{key}' must be a list of {N_PROBES} strings, got {got}")
            for j, s in enumerate(val):
                if not isinstance(s, str):
                    raise KdynError(f"{where}: '{key}'[{j}] must be a string, "
                                    f"got {type(s).__name__}")
                if not s.strip():
                    raise KdynError(f"{where}: '{key}'[{j}] is empty")
                if key.endswith("_target") and s != s.strip():
                    raise KdynError(f"{where}: '{key}'[{j}] = {s!r} has surrounding whitespace")
        if "paraphrases" in rec:
            para = rec["paraphrases"]
            if not isinstance(para, list):
                raise KdynError(f"{where}: 'paraphrases' must be a list, got {type(para).__name__}")
            for j, s in enumerate(para):
                if not isinstance(s, str) or not s.strip():
                    raise KdynError(f"{where}: 'paraphrases'[{j}] must be a non-empty string")
