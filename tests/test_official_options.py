"""Official-analysis options of the knowledge metrics (Chang et al.'s ``ppl_analysis.py``)."""

from __future__ import annotations

import numpy as np

from kdyn.metrics.retention import summarize_probe_metrics


def _curves() -> tuple[np.ndarray, list[dict], dict]:
    """Two probes, injections at steps 0 and 10, dense evaluation 0..30.

    Probe 0 ("flat"): learns at the first injection (5 → 4 at step 1), is back at 5 by step 2 and
    stays there, so its minimum after the last injection equals its start value v[0] = 5.
    Probe 1: 5 → 4.5 after injection 0, 4.5 → 3.5 after injection 10, then slowly back up.
    """
    n = 31
    flat = np.full(n, 5.0)
    flat[1] = 4.0
    learner = np.full(n, 4.5)
    learner[0] = 5.0
    learner[11:] = 3.5 + 0.01 * np.arange(n - 11)
    values = np.stack([flat, learner])
    meta = [{"scenario": "s", "probe_type": "mem"}] * 2
    return values, meta, {"s": [0, 10]}


def test_flat_probes_are_kept_by_default_and_dropped_officially():
    values, meta, plan = _curves()
    kept = summarize_probe_metrics(None, values, meta, plan, window=5, iqr_multiplier=None)["s"]["mem"]
    official = summarize_probe_metrics(None, values, meta, plan, window=5, iqr_multiplier=None,
                                       drop_flat_probes=True)["s"]["mem"]
    # By hand: E(flat) = [5 - 4, 5 - 5] = [1, 0]; E(learner) = [5 - 4.5, 4.5 - 3.5] = [0.5, 1].
    assert kept["n_skipped"] == 1 and official["n_skipped"] == 1      # the flat probe has no R either way
    assert np.isclose(kept["effectivity"], (1 + 0 + 0.5 + 1) / 4)
    assert np.allclose(kept["effectivity_per_injection"], [(1 + 0.5) / 2, (0 + 1) / 2])
    assert kept["n_flat_dropped"] == 0
    assert np.isclose(official["effectivity"], (0.5 + 1) / 2)
    assert np.allclose(official["effectivity_per_injection"], [0.5, 1.0])
    assert official["n_flat_dropped"] == 1
    # Retention is the same (the flat probe is skipped there in both modes).
    assert kept["retention"] == official["retention"]
