"""Tests of the acquisition / retention metrics (`kdyn.metrics.retention`).

Every expected value is computed independently of the code under test: from the closed form of a
synthetic curve, from numpy (`np.percentile`, `np.polyfit`), or from a plain-Python loop.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from kdyn.errors import KdynError
from kdyn.metrics.retention import (
    acquisition_forgetting,
    chang_injection_plan,
    effectivity,
    fit_power_law_retention,
    iqr_filter,
    iqr_mean,
    local_acquisition_max,
    retainability,
    summarize_probe_metrics,
)

# ------------------------------------------------------------------------------------------------
# Reference implementations (plain Python loops over (step, value) pairs, windows in steps)
# ------------------------------------------------------------------------------------------------

def ref_lam(steps: list[int], curve: list[float], t_i: int, window: int) -> tuple[float, float]:
    best_t, best_v = math.nan, math.nan
    for s, val in zip(steps, curve):
        if t_i < s <= t_i + window and not math.isnan(val):
            if math.isnan(best_v) or val < best_v:  # strict: earliest of ties wins
                best_t, best_v = s, val
    return best_t, best_v


def ref_value(steps: list[int], curve: list[float], t: int) -> float:
    return curve[steps.index(t)] if t in steps else math.nan


# ------------------------------------------------------------------------------------------------
# Power-law fit
# ------------------------------------------------------------------------------------------------

def test_exact_power_law_is_recovered() -> None:
    a, b = 0.12, 0.9
    t = np.arange(0, 1001)  # t = 0 must be ignored by the fit
    r = np.where(t > 0, b - a * np.log10(np.maximum(t, 1)), 123.0)
    fit = fit_power_law_retention(t, r)
    assert fit["n"] == 1000
    assert fit["decay_constant"] == pytest.approx(a, abs=1e-9)
    assert fit["slope"] == pytest.approx(-a, abs=1e-9)
    assert fit["intercept"] == pytest.approx(b, abs=1e-9)
    assert fit["r_squared"] == pytest.approx(1.0, abs=1e-12)
    assert fit["slope_stderr"] == pytest.approx(0.0, abs=1e-9)
    assert fit["decays"] is True
    assert fit["x_intercept_log10"] == pytest.approx(b / a, rel=1e-9)  # 7.5
    assert fit["x_intercept_t"] == pytest.approx(10 ** 7.5, rel=1e-8)
    # the fitted line is zero at the x-intercept
    assert -fit["decay_constant"] * fit["x_intercept_log10"] + fit["intercept"] == \
        pytest.approx(0.0, abs=1e-9)


def test_noisy_power_law_matches_numpy_and_stderr_is_calibrated() -> None:
    rng = np.random.default_rng(0)
    a, b, sigma = 0.08, 0.7, 0.02
    t = np.arange(1, 401)
    x = np.log10(t)
    estimates, stderrs = [], []
    for _ in range(300):
        r = b - a * x + rng.normal(0.0, sigma, size=t.size)
        fit = fit_power_law_retention(t, r)
        # independent: numpy's polyfit with covariance scaled by chi2 / (n - 2)
        coef, cov = np.polyfit(x, r, 1, cov=True)
        assert fit["slope"] == pytest.approx(coef[0], rel=1e-9, abs=1e-12)
        assert fit["intercept"] == pytest.approx(coef[1], rel=1e-9, abs=1e-12)
        assert fit["slope_stderr"] == pytest.approx(math.sqrt(cov[0, 0]), rel=1e-9)
        assert fit["r_squared"] == pytest.approx(np.corrcoef(x, r)[0, 1] ** 2, rel=1e-9)
        estimates.append(fit["decay_constant"])
        stderrs.append(fit["slope_stderr"])
    # the first fit recovers a within its own 1σ-based tolerance (4σ)
    assert abs(estimates[0] - a) < 4 * stderrs[0]
    # the stderr is calibrated: spread of the estimates ≈ reported 1σ
    assert np.std(estimates) == pytest.approx(np.mean(stderrs), rel=0.15)
    assert abs(np.mean(estimates) - a) < 4 * np.mean(stderrs) / math.sqrt(len(estimates))


def test_non_decaying_fit_is_flagged() -> None:
    t = np.arange(1, 50)
    rising = fit_power_law_retention(t, 0.5 + 0.1 * np.log10(t))
    assert rising["decays"] is False and rising["decay_constant"] == pytest.approx(-0.1)
    assert rising["x_intercept_t"] == math.inf and rising["x_intercept_log10"] == math.inf
    flat = fit_power_law_retention(t, np.full(t.size, 0.5))
    assert flat["decays"] is False and math.isnan(flat["r_squared"])
    too_few = fit_power_law_retention([0, 5], [1.0, 0.5])
    assert too_few["n"] == 1 and math.isnan(too_few["decay_constant"])


# ------------------------------------------------------------------------------------------------
# Local acquisition maximum and effectivity
# ------------------------------------------------------------------------------------------------

def test_flat_curve_has_zero_effectivity_and_is_skipped() -> None:
    values = np.full((3, 400), 2.5)
    e = effectivity(None, values, [0, 100, 200])
    assert e.shape == (3, 3) and np.all(e == 0.0)
    ret = retainability(None, values, t_last=200)
    assert ret.n_skipped == 3 and ret.skipped.all() and ret.n_missing == 0
    assert np.all(np.isnan(ret.R))


def test_known_dip_is_the_lam_and_effectivity_is_the_drop() -> None:
    v = np.full(300, 3.0)
    v[101:151] = 2.6       # the whole window (100, 150] improves a bit …
    v[130] = 2.0           # … with a dip at 130
    v[160] = 1.0           # outside the window: ignored
    t_lam, v_lam = local_acquisition_max(None, v, 100, window=50)
    assert t_lam.tolist() == [130.0] and v_lam.tolist() == [2.0]
    e = effectivity(None, v, [100], window=50)
    assert e[0, 0] == pytest.approx(3.0 - 2.0)
    # ties go to the earliest step
    v[140] = 2.0
    assert local_acquisition_max(None, v, 100)[0].tolist() == [130.0]


def test_window_boundaries_are_in_steps() -> None:
    t_i, w = 200, 50
    base = np.full(400, 5.0)
    inside = base.copy()
    inside[t_i + w] = 1.0           # last step of (t_i, t_i + w]: included
    outside = base.copy()
    outside[t_i + w + 1] = 1.0      # just after the window: ignored
    at_injection = base.copy()
    at_injection[t_i] = 1.0         # v[t_i] is before the injection: not a candidate
    t_lam, v_lam = local_acquisition_max(None, np.stack([inside, outside, at_injection]), t_i, w)
    assert t_lam.tolist() == [t_i + w, t_i + 1, t_i + 1]
    assert v_lam.tolist() == [1.0, 5.0, 5.0]
    e = effectivity(None, np.stack([inside, outside, at_injection]), [t_i], w)
    assert e[:, 0].tolist() == [4.0, 0.0, 1.0 - 5.0]


def _random_curves(n: int, length: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 3.0 + np.cumsum(rng.normal(0.0, 0.05, size=(n, length)), axis=1)


def test_sparse_evaluation_matches_reference_on_the_subsampled_curve() -> None:
    k, window = 10, 50
    dense = _random_curves(6, 1301, seed=1)
    inj = [0, 100, 200, 300, 400, 500, 600, 700, 800, 900]
    steps = np.arange(0, 1301, k)
    sparse = dense[:, steps]
    # the same sparse data written as a dense curve with NaN at unevaluated steps
    gappy = np.full_like(dense, np.nan)
    gappy[:, steps] = sparse

    s_list = steps.tolist()
    e_sparse = effectivity(steps, sparse, inj, window)
    assert np.array_equal(e_sparse, effectivity(None, gappy, inj, window), equal_nan=True)
    for q in range(dense.shape[0]):
        curve = sparse[q].tolist()
        for i, t_i in enumerate(inj):
            _, v_lam = ref_lam(s_list, curve, t_i, window)
            assert e_sparse[q, i] == pytest.approx(ref_value(s_list, curve, t_i) - v_lam)

    ret = retainability(steps, sparse, t_last=900, window=window)
    ret_gappy = retainability(None, gappy, t_last=900, window=window)
    assert np.array_equal(ret.t, np.arange(0, 1300 - 950 + 1, k))  # offsets are in steps
    assert np.array_equal(ret.t_lam, ret_gappy.t_lam)
    keep = np.isin(ret_gappy.t, ret.t)
    assert np.array_equal(ret.R, ret_gappy.R[:, keep], equal_nan=True)
    for q in range(dense.shape[0]):
        curve = sparse[q].tolist()
        t_lam, v_lam = ref_lam(s_list, curve, 900, window)
        for j, t in enumerate(ret.t.tolist()):
            expected = (ref_value(s_list, curve, int(t_lam) + t) - curve[0]) / (v_lam - curve[0])
            assert ret.R[q, j] == pytest.approx(expected)


def test_pre_injection_value_may_come_from_an_earlier_evaluation() -> None:
    # Kim et al.-style grid: evaluations at 0, 160, 320; injections at t_i = 159, 319
    steps = np.array([0, 160, 320])
    values = np.array([[4.0, 3.0, 2.5]])
    assert np.all(np.isnan(effectivity(steps, values, [159, 319])))  # exact pre value needed
    e = effectivity(steps, values, [159, 319], max_pre_gap=None)
    assert e.tolist() == [[1.0, 0.5]]


# ------------------------------------------------------------------------------------------------
# Retainability
# ------------------------------------------------------------------------------------------------

def test_retainability_of_a_known_forgetting_curve() -> None:
    t_last, window, T = 100, 50, 700
    v0, v_min, lam_offset = 4.0, 2.0, 7
    t_lam = t_last + lam_offset
    r_true = lambda t: 1.0 - 0.2 * np.log10(1.0 + t)  # noqa: E731
    v = np.full(T + 1, v0)
    v[t_last + 1:t_lam] = 3.0
    after = np.arange(t_lam, T + 1) - t_lam
    v[t_lam:] = v0 + (v_min - v0) * r_true(after)  # R = (v - v0) / (v_min - v0) = r_true
    flat = np.full(T + 1, 1.5)
    ret = retainability(None, np.stack([v, flat]), t_last=t_last, window=window)
    assert ret.t.tolist() == list(range(0, T - (t_last + window) + 1))
    assert ret.t_lam[0] == t_lam
    assert ret.skipped.tolist() == [False, True] and ret.n_skipped == 1
    assert ret.R[0, 0] == pytest.approx(1.0)
    assert np.allclose(ret.R[0], r_true(ret.t), atol=1e-12)
    assert np.all(np.isnan(ret.R[1]))
    # without an evaluation at step 0 the θ0 baseline must be given explicitly
    with pytest.raises(KdynError, match="t0_value"):
        retainability(np.arange(5, 300), np.ones((1, 295)), t_last=100)
    ret2 = retainability(np.arange(5, 300), v[5:300][None], t_last=100, t0_value=v0)
    assert ret2.R[0, 0] == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------------
# IQR filter
# ------------------------------------------------------------------------------------------------

def _numpy_iqr_mask(x: np.ndarray, m: float) -> np.ndarray:
    q1, q3 = np.percentile(x, 25), np.percentile(x, 75)
    return (x >= q1 - m * (q3 - q1)) & (x <= q3 + m * (q3 - q1))


def test_iqr_filter_drops_an_injected_outlier() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(0.0, 1.0, size=200)
    x = np.clip(x, -2.0, 2.0)
    x[17] = 50.0
    mask = iqr_filter(x, 2.0)
    assert not mask[17] and mask.sum() == 199
    assert np.array_equal(mask, _numpy_iqr_mask(x, 2.0))
    mean, n = iqr_mean(x, 2.0)
    assert n == 199 and mean == pytest.approx(np.delete(x, 17).mean())


def test_iqr_multiplier_1_5_vs_2_0() -> None:
    x = np.arange(1.0, 101.0)  # Q1 = 25.75, Q3 = 75.25, IQR = 49.5
    q1, q3 = np.percentile(x, [25, 75])
    iqr = q3 - q1
    mid = q3 + 1.75 * iqr  # beyond the 1.5 fence, inside the 2.0 fence
    far = q3 + 2.5 * iqr
    y = np.append(x, [mid, far])
    m15, m20 = iqr_filter(y, 1.5), iqr_filter(y, 2.0)
    assert np.array_equal(m15, _numpy_iqr_mask(y, 1.5))
    assert np.array_equal(m20, _numpy_iqr_mask(y, 2.0))
    assert m15[:-2].all() and m20[:-2].all()
    assert not m15[-2] and m20[-2]          # the moderate outlier survives only at 2.0
    assert not m15[-1] and not m20[-1]
    assert np.all(m20 >= m15)               # a larger multiplier keeps a superset


def test_iqr_filter_per_axis_and_nan() -> None:
    rng = np.random.default_rng(4)
    R = rng.normal(0.5, 0.1, size=(40, 6))  # probes × offsets
    R[3, 2] = 9.0
    R[5, :] = np.nan                        # a skipped probe
    mask = iqr_filter(R, 2.0, axis=0)
    assert not mask[5].any() and not mask[3, 2]
    means, n = iqr_mean(R, 2.0, axis=0)
    for j in range(R.shape[1]):
        col = R[~np.isnan(R[:, j]), j]
        kept = col[_numpy_iqr_mask(col, 2.0)]
        assert np.array_equal(mask[~np.isnan(R[:, j]), j], _numpy_iqr_mask(col, 2.0))
        assert n[j] == kept.size and means[j] == pytest.approx(kept.mean())
    assert n[2] == 38


# ------------------------------------------------------------------------------------------------
# Acquisition / forgetting
# ------------------------------------------------------------------------------------------------

def _af_curve(v0: float, v_acq: float, v_end: float, t_ref: int, lam: int, T: int) -> np.ndarray:
    v = np.full(T + 1, v0)
    v[t_ref + 1:] = (v_acq + v_end) / 2   # after the window: somewhere in between …
    v[t_ref + lam] = v_acq                # … with the acquisition minimum inside the window
    v[T] = v_end
    return v


def test_acquisition_forgetting_on_known_curves() -> None:
    T, t_ref = 400, 100
    specs = [(5.0, 3.0, 4.0), (4.0, 2.0, 2.5), (2.0, 1.0, 2.0)]
    values = np.stack([_af_curve(*sp, t_ref=t_ref, lam=10, T=T) for sp in specs]
                      + [np.full(T + 1, 3.0)])  # a flat probe: F is degenerate
    af = acquisition_forgetting(None, values, [0, t_ref], mode="last")
    exp_a = [(v0 - va) / v0 for v0, va, _ in specs] + [0.0]
    exp_f = [(ve - va) / (v0 - va) for v0, va, ve in specs]
    assert np.allclose(af.per_probe_acquisition, exp_a)
    assert np.allclose(af.per_probe_forgetting[:3], exp_f) and np.isnan(af.per_probe_forgetting[3])
    assert af.acquisition == pytest.approx(np.mean(exp_a))          # 0.4, 0.5, 0.5, 0
    assert af.forgetting == pytest.approx(np.mean(exp_f))           # 0.5, 0.25, 1
    assert (af.n_acquisition, af.n_forgetting) == (4, 3)
    assert (af.n_skipped_forgetting, af.n_skipped_acquisition, af.n_missing) == (1, 0, 0)
    assert af.t_acq[:3].tolist() == [t_ref + 10] * 3

    # F = 1 - R(end - t_acq) with R from `retainability`
    ret = retainability(None, values, t_last=t_ref, max_t=T - (t_ref + 10))
    assert np.allclose(af.per_probe_forgetting[:3], 1.0 - ret.R[:3, -1])

    # "curve" aggregation: the formulas on the probe-mean curve
    mean_curve = values.mean(axis=0)
    mv0, mva, mve = mean_curve[0], mean_curve[t_ref + 1:t_ref + 51].min(), mean_curve[T]
    afc = acquisition_forgetting(None, values, [0, t_ref], aggregate="curve")
    assert afc.acquisition == pytest.approx((mv0 - mva) / mv0)
    assert afc.forgetting == pytest.approx((mve - mva) / (mv0 - mva))

    # "first" mode uses the first injection's acquisition
    aff = acquisition_forgetting(None, values, [0, t_ref], mode="first")
    v_acq_first = values[:, 1:51].min(axis=1)
    assert np.allclose(aff.v_acq, v_acq_first)

    # a zero θ0 loss makes A degenerate
    zero = np.zeros((1, T + 1))
    afz = acquisition_forgetting(None, zero, [t_ref])
    assert afz.n_skipped_acquisition == 1 and math.isnan(afz.acquisition)


# ------------------------------------------------------------------------------------------------
# Summary
# ------------------------------------------------------------------------------------------------

def _all_plain(x: object) -> bool:
    if isinstance(x, dict):
        return all(isinstance(k, str) and _all_plain(v) for k, v in x.items())
    if isinstance(x, list):
        return all(_all_plain(v) for v in x)
    return x is None or type(x) in (bool, int, float, str)


def test_summarize_groups_and_is_json_serialisable() -> None:
    plan = chang_injection_plan()  # paraphrase/duplicate: 0..900, once: 0
    assert plan["paraphrase"] == list(range(0, 1000, 100)) and plan["once"] == [0]
    T = 1100
    drops = {("paraphrase", "mem"): 0.3, ("paraphrase", "gen"): 0.1,
             ("duplicate", "mem"): 0.5, ("once", "mem"): 0.2}
    curves, meta = [], []
    rng = np.random.default_rng(5)
    for (scenario, ptype), drop in drops.items():
        for _ in range(4):
            v = np.full(T + 1, 3.0 + rng.uniform(0, 0.5))
            level = v[0]
            for t_i in plan[scenario]:  # a step down of `drop` five steps after each injection
                level -= drop
                v[t_i + 5:] = level
            curves.append(v)
            meta.append({"scenario": scenario, "probe_type": ptype})
    curves.append(np.full(T + 1, 2.0))  # a flat once/gen probe: skipped
    meta.append({"scenario": "once", "probe_type": "gen"})
    values = np.stack(curves)

    out = summarize_probe_metrics(None, values, meta, plan)
    text = json.dumps(out)
    assert _all_plain(json.loads(text)) and _all_plain(out)
    assert set(out) == {"paraphrase", "duplicate", "once"}
    assert set(out["paraphrase"]) == {"mem", "gen"} and set(out["once"]) == {"mem", "gen"}
    for (scenario, ptype), drop in drops.items():
        g = out[scenario][ptype]
        n_inj = len(plan[scenario])
        assert g["n_probes"] == 4 and g["n_skipped"] == 0
        assert g["effectivity"] == pytest.approx(drop)
        assert g["effectivity_per_injection"] == pytest.approx([drop] * n_inj)
        # no forgetting after the last step down: R = 1 everywhere, A = total drop / v0
        assert np.allclose(g["retention"]["R"], 1.0)
        assert len(g["retention"]["t"]) == T - (900 + 50) + 1  # same length for every scenario
        assert g["forgetting"] == pytest.approx(0.0)
        idx = [q for q, m in enumerate(meta)
               if (m["scenario"], m["probe_type"]) == (scenario, ptype)]
        exp_a = np.mean([n_inj * drop / values[q, 0] for q in idx])
        assert g["acquisition"] == pytest.approx(exp_a)
    flat = out["once"]["gen"]
    assert flat["n_probes"] == 1 and flat["n_skipped"] == 1
    assert flat["effectivity"] == 0.0
    assert all(r is None for r in flat["retention"]["R"])  # NaN → None
    assert flat["fit"]["decay_constant"] is None and flat["forgetting"] is None


def _official_remove_outliers_iqr(data: list[float], multiplier: float = 2.0) -> list[float]:
    q1, q3 = np.percentile(data, 25), np.percentile(data, 75)
    iqr = q3 - q1
    return [x for x in data if q1 - multiplier * iqr <= x <= q3 + multiplier * iqr]


def test_summary_matches_a_transcription_of_the_official_loop() -> None:
    """Plain-Python transcription of `measure_scores`/`get_probe_measurements` (target key,
    normalize=True, margin=50), one scenario block per scenario, IQR ×2.0 per block."""
    rng = np.random.default_rng(6)
    n_eval, per_block = 1030, 30
    values = np.round(3 + np.cumsum(rng.normal(0, 0.05, size=(3 * per_block, n_eval)), axis=1), 2)
    scenarios = ["paraphrase", "duplicate", "once"]
    meta = [{"scenario": scenarios[q // per_block], "probe_type": "mem"}
            for q in range(values.shape[0])]
    plan = chang_injection_plan()
    out = summarize_probe_metrics(None, values, meta, plan)
    for b, sc in enumerate(scenarios):
        block = values[b * per_block:(b + 1) * per_block].tolist()
        last = 900 if sc != "once" else 0
        mean_r = []
        for interval in range(n_eval - 950):  # `range(len(result) - 950)`
            forg = []
            for v in block:
                window = v[last + 1:last + 51]
                sp = min(range(len(window)), key=window.__getitem__) + last + 1
                if v[0] == v[sp]:
                    continue
                forg.append((v[sp + interval] - v[0]) / (v[sp] - v[0]))
            kept = _official_remove_outliers_iqr(forg)
            mean_r.append(sum(kept) / len(kept))
        learn, per_injection = [], []
        for v in block:
            row = []
            for t_i in plan[sc]:
                window = v[t_i + 1:t_i + 51]
                sp = min(range(len(window)), key=window.__getitem__) + t_i + 1
                row.append(v[t_i] - v[sp])
            learn.extend(row)
            per_injection.append(row)
        g = out[sc]["mem"]
        assert g["retention"]["t"] == list(range(n_eval - 950))
        assert g["retention"]["R"] == pytest.approx(mean_r, abs=1e-12)
        kept = _official_remove_outliers_iqr(learn)
        assert g["effectivity"] == pytest.approx(sum(kept) / len(kept), abs=1e-12)
        exp_per = [np.mean(_official_remove_outliers_iqr(list(col))) for col in zip(*per_injection)]
        assert g["effectivity_per_injection"] == pytest.approx(exp_per, abs=1e-12)


def test_bad_inputs_raise_kdyn_errors() -> None:
    with pytest.raises(KdynError, match="strictly increasing"):
        effectivity([0, 2, 1], np.ones((1, 3)), [0])
    with pytest.raises(KdynError, match="one entry per evaluation"):
        effectivity([0, 1], np.ones((1, 3)), [0])
    with pytest.raises(KdynError, match="window"):
        local_acquisition_max(None, np.ones(10), 0, window=0)
    with pytest.raises(KdynError, match="injection_plan"):
        summarize_probe_metrics(None, np.ones((1, 200)), [{"scenario": "x", "probe_type": "mem"}],
                                {"once": [0]})
    with pytest.raises(KdynError, match="probe_meta"):
        summarize_probe_metrics(None, np.ones((2, 200)), [{"scenario": "once", "probe_type": "m"}],
                                {"once": [0]})


def test_forgetting_is_undefined_when_nothing_was_acquired() -> None:
    # probe 0 improves after the injection at t=0 (0.8 → 0.5) and ends at 0.65: half forgotten;
    # probe 1 gets worse after the injection (nothing acquired): its forgetting is skipped, not a huge ratio.
    t = np.arange(11)
    v = np.array([[0.8, 0.5, 0.5, 0.55, 0.6, 0.6, 0.6, 0.62, 0.64, 0.65, 0.65],
                  [0.8, 0.81, 0.82, 0.83, 0.84, 0.85, 0.86, 0.87, 0.88, 0.89, 0.9]])
    af = acquisition_forgetting(t, v, [0], window=2, aggregate="probe")
    assert af.n_skipped_forgetting == 1
    assert af.forgetting == pytest.approx((0.65 - 0.5) / (0.8 - 0.5))
