"""Knowledge acquisition and retention metrics over per-probe loss curves (pure numpy functions).

These re-implement the analysis of Chang et al. 2024, "How do LLMs acquire factual knowledge during
pretraining?" (arXiv 2406.11813; official code ``kaistAI/factual-knowledge-acquisition``, files
``analysis/ppl_analysis.py`` and ``analysis/forgetting_plot.py``), plus the acquisition /
forgetting summary A(θ), F(θ) of Kim et al. 2025, "Knowledge entropy decay" (arXiv 2410.01380),
for which the official repository ships no script (see `acquisition_forgetting`).

Data convention
---------------
A *probe curve* is ``v[t]``: the probe's loss (mean target-token negative log-likelihood, i.e.
cross-entropy; lower is better) after ``t`` optimizer updates since the start of the continual run.
``v[0]`` is the model θ0 before any update. The paper's log-probability is ``ℓ = -v``. Curves of
many probes form an array ``values`` of shape ``[n_probes, n_eval]``.

Every function takes ``(steps, values)``: ``steps`` is the 1-D array of evaluated step numbers
(strictly increasing, ``len(steps) == values.shape[-1]``), or ``None`` for a dense curve evaluated
at every step (``steps = 0, 1, …, n_eval - 1``). A 1-D ``values`` is one probe (it is treated as
``[1, n_eval]``; outputs keep the probe axis). Missing evaluations may be NaN. **Windows and
offsets are in steps, not indices**, so curves scored only every ``k`` steps work unchanged:
a window ``(t_i, t_i + w]`` simply contains fewer evaluations, and retention offsets are the step
differences that were actually evaluated.

An *injection* at step ``t_i`` means the injected batch is trained in update ``t_i + 1``, so
``v[t_i]`` is the last loss before the injection. (Chang et al. inject at ``t_i = 0, 100, …,
900``. Kim et al. inject in the batches of global steps 160, 320, …, 1600, i.e. at
``t_i = 159, 319, …, 1599`` in this convention, and evaluate at steps 0, 160, …, 1600.)

Public functions
----------------
- `local_acquisition_max`: t_LAM, the best (lowest-loss) evaluation within a window after an
  injection.
- `effectivity`: E(q, i) = v[t_i] - v[t_LAM(q, i)].
- `retainability`: R(q, t) after the last injection, normalised by θ0.
- `iqr_filter`, `iqr_mean`: the official IQR outlier filter (multiplier 2.0 by default).
- `fit_power_law_retention`: OLS of R against log10 t (decay constant, x-intercept).
- `acquisition_forgetting`: Kim et al.'s A(θ) and F(θ) (definition documented there).
- `summarize_probe_metrics`: all of the above per (scenario, probe type), as JSON-ready dict.
- `chang_injection_plan`: the injection steps of Chang et al.'s three scenarios.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

from kdyn.errors import KdynError

__all__ = [
    "DEFAULT_IQR_MULTIPLIER",
    "DEFAULT_WINDOW",
    "AcquisitionForgetting",
    "Retainability",
    "acquisition_forgetting",
    "chang_injection_plan",
    "effectivity",
    "fit_power_law_retention",
    "iqr_filter",
    "iqr_mean",
    "local_acquisition_max",
    "retainability",
    "summarize_probe_metrics",
]

DEFAULT_WINDOW = 50
"""t_w of Chang et al.: the local-acquisition window (``margin=50`` in ``ppl_analysis.py``)."""
DEFAULT_IQR_MULTIPLIER = 2.0
"""Multiplier of the official ``remove_outliers_iqr`` (``ppl_analysis.py:15``); the paper
reportedly states 1.5 (unverified against the PDF)."""

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


# --------------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------------

def _as_curves(steps: ArrayLike | None, values: ArrayLike) -> tuple[IntArray, FloatArray]:
    """Validate ``(steps, values)``; return int64 ``[n_eval]`` steps, float64 ``[n, n_eval]``."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim == 1:
        v = v[None, :]
    if v.ndim != 2:
        raise KdynError(f"values must be a 1-D curve or a 2-D [n_probes, n_eval] array, "
                        f"got shape {v.shape}")
    if v.shape[1] == 0:
        raise KdynError("values has no evaluations (its last axis is empty)")
    if steps is None:
        return np.arange(v.shape[1], dtype=np.int64), v
    s_raw = np.asarray(steps)
    if s_raw.ndim != 1 or s_raw.shape[0] != v.shape[1]:
        raise KdynError(f"steps must be 1-D with one entry per evaluation ({v.shape[1]}), "
                        f"got shape {s_raw.shape}")
    if s_raw.dtype.kind not in "iu":
        if s_raw.dtype.kind != "f" or not np.all(np.isfinite(s_raw)) or \
                not np.all(s_raw == np.round(s_raw)):
            raise KdynError("steps must be whole step numbers (integers)")
    s = s_raw.astype(np.int64)
    if s.size and s[0] < 0:
        raise KdynError(f"steps must be >= 0, got {int(s[0])}")
    if np.any(np.diff(s) <= 0):
        raise KdynError("steps must be strictly increasing (sort the evaluations by step and "
                        "drop duplicates)")
    return s, v


def _check_window(window: int) -> int:
    if isinstance(window, bool) or int(window) != window or int(window) < 1:
        raise KdynError(f"window must be a positive whole number of steps, got {window!r}")
    return int(window)


def _as_step(t: Any, what: str) -> int:
    if isinstance(t, bool) or not float(t).is_integer() or int(t) < 0:
        raise KdynError(f"{what} must be a non-negative whole step number, got {t!r}")
    return int(t)


def _as_injection_steps(injection_steps: ArrayLike) -> list[int]:
    arr = np.atleast_1d(np.asarray(injection_steps))
    if arr.ndim != 1 or arr.size == 0:
        raise KdynError("injection_steps must be a non-empty list of step numbers")
    out = [_as_step(t, "each injection step") for t in arr.tolist()]
    if any(b <= a for a, b in zip(out, out[1:])):
        raise KdynError(f"injection_steps must be strictly increasing, got {out}")
    return out


def _window_min(steps: IntArray, v: FloatArray, lo: int, hi: int) -> tuple[FloatArray, FloatArray]:
    """Per row, the earliest evaluated step in ``(lo, hi]`` with the lowest non-NaN value."""
    n = v.shape[0]
    cols = np.flatnonzero((steps > lo) & (steps <= hi))
    t_out = np.full(n, np.nan)
    v_out = np.full(n, np.nan)
    if cols.size == 0:
        return t_out, v_out
    sub = v[:, cols]
    nan = np.isnan(sub)
    has = ~nan.all(axis=1)
    j = np.argmin(np.where(nan, np.inf, sub), axis=1)  # argmin returns the first (earliest) tie
    rows = np.flatnonzero(has)
    t_out[rows] = steps[cols[j[rows]]]
    v_out[rows] = sub[rows, j[rows]]
    return t_out, v_out


def _value_at(steps: IntArray, v: FloatArray, t: int, max_gap: int | None = 0) -> FloatArray:
    """Per row, the latest non-NaN value at an evaluated step in ``[t - max_gap, t]``.

    ``max_gap=0`` requires an evaluation exactly at ``t``; ``None`` accepts any earlier step.
    """
    lo = -1 if max_gap is None else t - int(max_gap)
    cols = np.flatnonzero((steps <= t) & (steps >= lo))
    out = np.full(v.shape[0], np.nan)
    if cols.size == 0:
        return out
    sub = v[:, cols]
    ok = ~np.isnan(sub)
    has = ok.any(axis=1)
    last = sub.shape[1] - 1 - np.argmax(ok[:, ::-1], axis=1)
    rows = np.flatnonzero(has)
    out[rows] = sub[rows, last[rows]]
    return out


def _baseline(steps: IntArray, v: FloatArray, t0_value: ArrayLike | None) -> FloatArray:
    """v[0] per probe (the θ0 loss), or the user-given ``t0_value`` (scalar or ``[n_probes]``)."""
    if t0_value is None:
        if steps[0] != 0:
            raise KdynError(f"the first evaluation is at step {int(steps[0])}, not 0, so the "
                            "pre-training baseline v[0] is unknown; pass t0_value (the θ0 loss "
                            "of each probe)")
        return v[:, 0].copy()
    b = np.asarray(t0_value, dtype=np.float64)
    if b.ndim == 0:
        return np.full(v.shape[0], float(b))
    if b.shape != (v.shape[0],):
        raise KdynError(f"t0_value must be a scalar or have one entry per probe ({v.shape[0]}), "
                        f"got shape {b.shape}")
    return b.copy()


# --------------------------------------------------------------------------------------------
# Chang et al. 2024: local acquisition maximum, effectivity, retainability
# --------------------------------------------------------------------------------------------

def local_acquisition_max(
    steps: ArrayLike | None,
    values: ArrayLike,
    t_inject: int,
    window: int = DEFAULT_WINDOW,
) -> tuple[FloatArray, FloatArray]:
    """Local acquisition maximum t_LAM of each probe after an injection at step ``t_inject``.

    Formula (Chang et al. 2024; ``ppl_analysis.py:86-92`` at HEAD ``f8eaa5c``, ``margin=50``)::

        t_LAM(q, i) = argmax_{t_i < t <= t_i + t_w} ℓ(q; θ_t)
                    = argmin_{t_i < t <= t_i + t_w} v_q[t]

    i.e. the official ``values = v[t_i+1 : t_i+margin+1]; sp = argmin(values) + t_i + 1``. The
    window is in steps: with sparse evaluation only the evaluated steps inside
    ``(t_inject, t_inject + window]`` are candidates. Ties go to the earliest step (as Python's
    ``min(range(...), key=...)`` in the official code). NaN evaluations are ignored.

    Returns:
        ``(t_lam, v_lam)``, both float arrays of shape ``[n_probes]``: the step of the minimum and
        the loss there. Both are NaN for a probe with no non-NaN evaluation in the window.
    """
    s, v = _as_curves(steps, values)
    t0 = _as_step(t_inject, "t_inject")
    return _window_min(s, v, t0, t0 + _check_window(window))


def effectivity(
    steps: ArrayLike | None,
    values: ArrayLike,
    injection_steps: ArrayLike,
    window: int = DEFAULT_WINDOW,
    max_pre_gap: int | None = 0,
) -> FloatArray:
    """Effectivity E(q, i) of every injection for every probe: the immediate log-prob gain.

    Formula (Chang et al. 2024; ``ppl_analysis.py:94-95``, the ``--absolute`` CE analysis)::

        E(q, i) = ℓ(q; θ_{t_LAM(q,i)}) - ℓ(q; θ_{t_i}) = v_q[t_i] - v_q[t_LAM(q, i)]

    an absolute difference of mean target-token NLL (nats), not a percentage. Negative values
    (the probe got worse) are kept, as in the official code. t_LAM is `local_acquisition_max`.

    Args:
        injection_steps: the injection steps t_i (strictly increasing).
        max_pre_gap: how far before t_i the pre-injection evaluation may be. ``0`` (default)
            requires an evaluation exactly at t_i (true for dense curves and for every-k
            evaluation when k divides the t_i); a larger value uses the latest evaluation in
            ``[t_i - max_pre_gap, t_i]``; ``None`` uses the latest evaluation at or before t_i.

    Returns:
        float array ``[n_probes, n_injections]``; NaN where the pre-injection value or t_LAM is
        missing.
    """
    s, v = _as_curves(steps, values)
    w = _check_window(window)
    inj = _as_injection_steps(injection_steps)
    if max_pre_gap is not None and (int(max_pre_gap) != max_pre_gap or max_pre_gap < 0):
        raise KdynError(f"max_pre_gap must be None or a non-negative integer, got {max_pre_gap!r}")
    out = np.full((v.shape[0], len(inj)), np.nan)
    for i, t_i in enumerate(inj):
        pre = _value_at(s, v, t_i, max_pre_gap)
        _, v_lam = _window_min(s, v, t_i, t_i + w)
        out[:, i] = pre - v_lam
    return out


class Retainability(NamedTuple):
    """Result of `retainability`.

    Attributes:
        t: offsets from t_LAM (steps), int array ``[n_t]``; ``t[0] == 0`` for the default grid.
        R: retainability as a *fraction* (the official code multiplies by 100), float array
            ``[n_probes, n_t]``; NaN for skipped/missing probes and for offsets not evaluated.
        t_lam: t_LAM of each probe after the last injection, float array ``[n_probes]``.
        skipped: bool ``[n_probes]``: v[t_LAM] == v[0] (zero denominator), skipped as in the
            official code.
        missing: bool ``[n_probes]``: no evaluation in the window, or no θ0 value (NaN).
    """

    t: IntArray
    R: FloatArray
    t_lam: FloatArray
    skipped: NDArray[np.bool_]
    missing: NDArray[np.bool_]

    @property
    def n_skipped(self) -> int:
        """Number of probes skipped because v[t_LAM] == v[0]."""
        return int(self.skipped.sum())

    @property
    def n_missing(self) -> int:
        """Number of probes without the data to compute R."""
        return int(self.missing.sum())


def retainability(
    steps: ArrayLike | None,
    values: ArrayLike,
    t_last: int,
    t0_value: ArrayLike | None = None,
    window: int = DEFAULT_WINDOW,
    max_t: int | None = None,
    *,
    t_offsets: ArrayLike | None = None,
    skip_atol: float = 0.0,
) -> Retainability:
    """Retainability R(q, t) after the LAST injection, normalised by the pre-injection model θ0.

    Formula (Chang et al. 2024; ``ppl_analysis.py:52-77`` with the default ``normalize=True``)::

        t_LAM = argmin_{t_last < s <= t_last + t_w} v[s]
        R(q, t) = (ℓ(θ_{t_LAM+t}) - ℓ(θ_0)) / (ℓ(θ_{t_LAM}) - ℓ(θ_0))
                = (v[t_LAM + t] - v[0]) / (v[t_LAM] - v[0])

    so R = 1 at t = 0 and R = 0 means the probe is back to the θ0 baseline. The official code
    multiplies by 100; **this function returns fractions**. Probes with ``v[t_LAM] == v[0]`` are
    skipped (R is NaN) and reported in ``skipped``, as the official ``if init_ppl==min_ppl:
    continue``; ``skip_atol > 0`` widens that to ``|v[t_LAM] - v[0]| <= skip_atol``. Probes whose
    loss *rose* (v[t_LAM] > v[0]) are kept, as in the official code. For the paraphrase and
    duplicate scenarios t_last = 900; for "once" it is 0.

    Args:
        t_last: the last injection step.
        t0_value: the θ0 loss per probe (scalar or ``[n_probes]``); default: the evaluation at
            step 0 (an error if step 0 was not evaluated).
        max_t: largest offset. Default ``steps[-1] - (t_last + window)``, the largest offset
            available for every probe whatever its t_LAM; this is the official sweep length
            ``range(len(result) - 950)`` for t_last = 900 and window 50.
        t_offsets: explicit offsets (steps) to report; default: every offset in ``[0, max_t]``
            at which at least one probe was evaluated (``0, 1, …`` for dense curves, multiples
            of k for every-k evaluation when k divides t_last).
        skip_atol: tolerance of the skip test (0 = the official exact equality).

    Returns:
        a `Retainability` ``(t, R, t_lam, skipped, missing)``; ``n_skipped`` counts the skips.
    """
    s, v = _as_curves(steps, values)
    w = _check_window(window)
    t_last = _as_step(t_last, "t_last")
    base = _baseline(s, v, t0_value)
    t_lam, v_lam = _window_min(s, v, t_last, t_last + w)
    denom = v_lam - base
    missing = np.isnan(t_lam) | np.isnan(base)
    skipped = ~missing & (np.abs(denom) <= float(skip_atol))
    good = ~missing & ~skipped

    if t_offsets is not None:
        offs = np.unique(np.asarray(t_offsets, dtype=np.int64))
        if offs.size and offs[0] < 0:
            raise KdynError("t_offsets must be >= 0")
    else:
        if max_t is None:
            max_t = int(s[-1]) - (t_last + w)
            if max_t < 0:
                raise KdynError(f"the curves end at step {int(s[-1])}, before the end of the "
                                f"acquisition window {t_last + w}; pass max_t explicitly")
        if max_t < 0:
            raise KdynError(f"max_t must be >= 0, got {max_t}")
        if good.any():
            d = s[None, :] - t_lam[good, None].astype(np.int64)
            offs = np.unique(d[(d >= 0) & (d <= max_t)])
        else:
            offs = np.zeros(0, dtype=np.int64)

    R = np.full((v.shape[0], offs.size), np.nan)
    rows = np.flatnonzero(good)
    if rows.size and offs.size:
        target = t_lam[rows, None].astype(np.int64) + offs[None, :]
        idx = np.clip(np.searchsorted(s, target), 0, s.size - 1)
        found = s[idx] == target
        vals = np.where(found, v[rows[:, None], idx], np.nan)
        R[rows] = (vals - base[rows, None]) / denom[rows, None]
    return Retainability(offs.astype(np.int64), R, t_lam, skipped, missing)


# --------------------------------------------------------------------------------------------
# Outlier filtering
# --------------------------------------------------------------------------------------------

def iqr_filter(values: ArrayLike, multiplier: float = DEFAULT_IQR_MULTIPLIER,
               axis: int | None = None) -> NDArray[np.bool_]:
    """Mask of the entries kept by the IQR rule ``Q1 - m·IQR <= x <= Q3 + m·IQR``.

    Same rule as the official ``remove_outliers_iqr`` (``ppl_analysis.py:15``, default
    multiplier 2.0; the paper reportedly uses 1.5): Q1, Q3 are ``np.percentile`` 25/75 with
    linear interpolation, computed over ``axis`` (``None``: over all entries). NaN entries are
    ignored when computing the quartiles and never kept.

    How the official code applies it: once per *scenario block* (40 paragraphs × 5 probes) and
    probe type, on the list of per-probe values. For retainability this is done at each offset t
    separately (the probe values R(q, t) of that scenario, after dropping skipped probes), and the
    reported curve is the mean of the kept values (`iqr_mean` with ``axis=0`` on
    ``Retainability.R`` restricted to one scenario and probe type). For effectivity the list holds
    every (probe, injection) value of the block; per-injection effectivity filters across probes
    for each injection. `summarize_probe_metrics` does exactly this.

    Returns:
        bool array of the same shape as ``values``.
    """
    x = np.asarray(values, dtype=np.float64)
    m = float(multiplier)
    if not m >= 0:
        raise KdynError(f"the IQR multiplier must be >= 0, got {multiplier!r}")
    if x.size == 0:
        return np.zeros(x.shape, dtype=bool)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices give NaN bounds
        q1, q3 = np.nanpercentile(x, [25.0, 75.0], axis=axis, keepdims=True)
    iqr = q3 - q1
    return (x >= q1 - m * iqr) & (x <= q3 + m * iqr)


def iqr_mean(values: ArrayLike, multiplier: float | None = DEFAULT_IQR_MULTIPLIER,
             axis: int | None = None) -> tuple[FloatArray | float, NDArray[np.int64] | int]:
    """Mean of the entries kept by `iqr_filter` (``multiplier=None``: of all non-NaN entries).

    Returns:
        ``(mean, n_kept)`` reduced over ``axis`` (floats/ints when ``axis`` is None); the mean is
        NaN where nothing is kept.
    """
    x = np.asarray(values, dtype=np.float64)
    keep = ~np.isnan(x) if multiplier is None else iqr_filter(x, multiplier, axis)
    n = keep.sum(axis=axis)
    total = np.where(keep, x, 0.0).sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, total / np.maximum(n, 1), np.nan)
    if axis is None:
        return float(mean), int(n)
    return mean.astype(np.float64), n.astype(np.int64)


# --------------------------------------------------------------------------------------------
# Power-law forgetting fit
# --------------------------------------------------------------------------------------------

def fit_power_law_retention(t: ArrayLike, r: ArrayLike) -> dict[str, Any]:
    """OLS fit of retention against log10 t: ``R(t) ≈ -a·log10(t) + b`` (Chang et al. 2024).

    As ``forgetting_plot.py:83-160`` (``plot_trendline``): ``slope, intercept =
    np.polyfit(log10(t), R, 1)``, decay constant ``a = -slope``, ``b = intercept``. Only points
    with ``t > 0`` and finite t, R are used (the official script drops t = 0 via ``[1:]``; pass R
    as fractions, i.e. official values / 100). With ``x = log10 t``, n points, residuals e::

        slope_stderr = sqrt(Σe² / (n - 2)) / sqrt(Σ(x - x̄)²)     (1σ, classic OLS)
        r_squared    = 1 - Σe² / Σ(R - R̄)²
        x_intercept_log10 = b / a,   x_intercept_t = 10 ** (b / a)     (where R reaches 0)

    ``x_intercept_t`` is in the units of ``t`` (steps, or tokens if you pass tokens).

    Returns:
        dict with plain-Python values: ``decay_constant`` (a), ``intercept`` (b), ``slope``,
        ``slope_stderr`` (NaN if n < 3), ``r_squared`` (NaN if R is constant),
        ``x_intercept_log10``, ``x_intercept_t``, ``n``, and ``decays`` (bool, ``a > 0``). When
        ``a <= 0`` retention does not decay and the "forgetting time" is undefined: ``decays`` is
        False and both x-intercept values are ``inf`` if ``b > 0`` (never reaches 0 going
        forward) and NaN otherwise. With fewer than 2 usable points or a single distinct t, every
        fitted value is NaN.
    """
    tt = np.asarray(t, dtype=np.float64).ravel()
    rr = np.asarray(r, dtype=np.float64).ravel()
    if tt.shape != rr.shape:
        raise KdynError(f"t and r must have the same length, got {tt.size} and {rr.size}")
    ok = np.isfinite(tt) & np.isfinite(rr) & (tt > 0)
    x = np.log10(tt[ok])
    y = rr[ok]
    n = int(x.size)
    nan = float("nan")
    result: dict[str, Any] = {"decay_constant": nan, "intercept": nan, "slope": nan,
                              "slope_stderr": nan, "r_squared": nan, "x_intercept_log10": nan,
                              "x_intercept_t": nan, "n": n, "decays": False}
    if n < 2:
        return result
    xm, ym = x.mean(), y.mean()
    sxx = float(np.sum((x - xm) ** 2))
    if sxx == 0.0:
        return result
    slope = float(np.sum((x - xm) * (y - ym)) / sxx)
    intercept = float(ym - slope * xm)
    resid = y - (slope * x + intercept)
    ssr = float(np.sum(resid ** 2))
    sst = float(np.sum((y - ym) ** 2))
    a, b = -slope, intercept
    result.update(decay_constant=a, intercept=b, slope=slope,
                  slope_stderr=math.sqrt(ssr / (n - 2)) / math.sqrt(sxx) if n > 2 else nan,
                  r_squared=1.0 - ssr / sst if sst > 0 else nan, decays=a > 0)
    if a > 0:
        xl = b / a
        result["x_intercept_log10"] = xl
        result["x_intercept_t"] = math.inf if xl > 308 else 10.0 ** xl
    else:
        result["x_intercept_log10"] = result["x_intercept_t"] = math.inf if b > 0 else nan
    return result


# --------------------------------------------------------------------------------------------
# Kim et al. 2025: acquisition A(θ) and forgetting F(θ)
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AcquisitionForgetting:
    """Result of `acquisition_forgetting` (see there for the definitions).

    ``acquisition``/``forgetting`` are the aggregate A and F (fractions; NaN if no probe is
    usable). The ``per_probe_*`` arrays are ``[n_probes]`` (NaN where skipped or missing).
    ``n_acquisition``/``n_forgetting`` count the probes averaged (``aggregate="probe"``);
    ``n_skipped_*`` count degenerate denominators (v0 == 0 for A, v0 == v_acq for F);
    ``n_missing`` counts probes lacking v0, v_acq or v_end.
    """

    acquisition: float
    forgetting: float
    per_probe_acquisition: FloatArray
    per_probe_forgetting: FloatArray
    v0: FloatArray
    v_acq: FloatArray
    v_end: FloatArray
    t_acq: FloatArray
    end_step: int
    n_probes: int
    n_acquisition: int
    n_forgetting: int
    n_skipped_acquisition: int
    n_skipped_forgetting: int
    n_missing: int
    mode: str
    aggregate: str

    def to_dict(self) -> dict[str, Any]:
        """The scalar fields as a JSON-serialisable dict (NaN → None)."""
        return {"acquisition": _jsonable(self.acquisition),
                "forgetting": _jsonable(self.forgetting),
                "end_step": self.end_step, "n_probes": self.n_probes,
                "n_acquisition": self.n_acquisition, "n_forgetting": self.n_forgetting,
                "n_skipped_acquisition": self.n_skipped_acquisition,
                "n_skipped_forgetting": self.n_skipped_forgetting, "n_missing": self.n_missing,
                "mode": self.mode, "aggregate": self.aggregate}


def acquisition_forgetting(
    steps: ArrayLike | None,
    values: ArrayLike,
    injection_steps: ArrayLike,
    mode: Literal["last", "first"] = "last",
    aggregate: Literal["probe", "curve"] = "probe",
    window: int = DEFAULT_WINDOW,
    t0_value: ArrayLike | None = None,
    end_step: int | None = None,
    skip_atol: float = 0.0,
) -> AcquisitionForgetting:
    """Knowledge acquisition A(θ) and forgetting F(θ) of Kim et al. 2025 (definition chosen here).

    Kim et al. name A(θ) and F(θ) (Fig. 1) and compute them post hoc from the probe losses; the
    official repository has no script for them and the exact formula is unconfirmed against the
    paper. This function uses the reading that follows Chang et al. 2024, for each probe q::

        v0    = v_q[0]                      loss of θ0, before any injection
        t_acq = t_LAM after the reference injection t_ref (argmin of v_q in (t_ref, t_ref + window])
        v_acq = v_q[t_acq]
        v_end = v_q[end_step]               default: the last evaluated step
        A_q = (v0 - v_acq) / v0              relative loss improvement from θ0 to acquisition
        F_q = (v_end - v_acq) / (v0 - v_acq) fraction of the acquired improvement lost by the end

    ``mode="last"`` (default): t_ref is the last injection, so ``F_q = 1 - R(q, end_step - t_acq)``
    with `retainability`'s R; ``mode="first"``: t_ref is the first injection, so A is the gain of a
    single exposure and F is the net loss of it by the end (negative if later re-exposures
    improved the probe further). With Kim et al.'s evaluation every 160 steps the window
    ``(t_ref, t_ref + 50]`` holds just the evaluation right after the injection update, so v_acq is
    "the evaluation right after the injection". Caveat: in Kim et al.'s schedule the last
    injection is in the final update, so ``mode="last"`` gives v_end = v_acq and F ≡ 0 there; use
    ``mode="first"`` (or per-injection groups of "once" items) for that schedule.

    ``aggregate="probe"`` (default): A, F are means over probes of A_q, F_q, skipping probes with a
    degenerate denominator (v0 == 0 for A; ``v0 - v_acq <= skip_atol`` for F — forgetting is a
    fraction of what was acquired, undefined when the loss did not improve) and probes with
    missing data; the numbers skipped are returned.
    ``aggregate="curve"``: the formulas are applied once to the probe-mean curve (NaN-mean over
    probes at each step; t_acq is the argmin of the mean curve), i.e. a ratio of means, which is
    what can be computed from Kim et al.'s logged per-evaluator mean losses. Per-probe values are
    returned in both cases. A and F are fractions (not percentages).
    """
    if mode not in ("last", "first"):
        raise KdynError(f"mode must be 'last' or 'first', got {mode!r}")
    if aggregate not in ("probe", "curve"):
        raise KdynError(f"aggregate must be 'probe' or 'curve', got {aggregate!r}")
    s, v = _as_curves(steps, values)
    w = _check_window(window)
    inj = _as_injection_steps(injection_steps)
    t_ref = inj[-1] if mode == "last" else inj[0]
    if end_step is None:
        end = int(s[-1])
    else:
        end = _as_step(end_step, "end_step")
        if not np.any(s == end):
            raise KdynError(f"end_step {end} was not evaluated (the evaluated steps run from "
                            f"{int(s[0])} to {int(s[-1])})")
    if end <= t_ref:
        raise KdynError(f"end_step {end} must come after the reference injection at {t_ref}")

    def per_probe(curves: FloatArray, base: FloatArray) -> tuple[FloatArray, ...]:
        t_acq, v_acq = _window_min(s, curves, t_ref, t_ref + w)
        v_end = _value_at(s, curves, end, 0)
        missing = np.isnan(base) | np.isnan(v_acq) | np.isnan(v_end)
        skip_a = ~missing & (base == 0)
        gain = base - v_acq
        # Forgetting is a fraction of what was acquired: undefined when nothing was (gain <= 0).
        skip_f = ~missing & (gain <= float(skip_atol))
        with np.errstate(divide="ignore", invalid="ignore"):
            a_q = np.where(missing | skip_a, np.nan, gain / base)
            f_q = np.where(missing | skip_f, np.nan, (v_end - v_acq) / gain)
        return a_q, f_q, t_acq, v_acq, v_end, missing, skip_a, skip_f

    base = _baseline(s, v, t0_value)
    a_q, f_q, t_acq, v_acq, v_end, missing, skip_a, skip_f = per_probe(v, base)
    if aggregate == "probe":
        n_a, n_f = int(np.sum(~np.isnan(a_q))), int(np.sum(~np.isnan(f_q)))
        a_mean = float(np.nanmean(a_q)) if n_a else float("nan")
        f_mean = float(np.nanmean(f_q)) if n_f else float("nan")
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean_curve = np.nanmean(v, axis=0)[None, :]
            mean_base = np.array([np.nanmean(base)])
        a_c, f_c, *_ = per_probe(mean_curve, mean_base)
        a_mean, f_mean = float(a_c[0]), float(f_c[0])
        n_a, n_f = int(np.sum(~np.isnan(a_q))), int(np.sum(~np.isnan(f_q)))
    return AcquisitionForgetting(
        acquisition=a_mean, forgetting=f_mean, per_probe_acquisition=a_q,
        per_probe_forgetting=f_q, v0=base, v_acq=v_acq, v_end=v_end, t_acq=t_acq, end_step=end,
        n_probes=int(v.shape[0]), n_acquisition=n_a, n_forgetting=n_f,
        n_skipped_acquisition=int(skip_a.sum()), n_skipped_forgetting=int(skip_f.sum()),
        n_missing=int(missing.sum()), mode=mode, aggregate=aggregate)


# --------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------

def chang_injection_plan(interval: int = 100, n_events: int = 10, start: int = 0
                         ) -> dict[str, list[int]]:
    """Injection steps of Chang et al.'s scenarios: paraphrase and duplicate get ``n_events``
    injections every ``interval`` steps from ``start`` (0, 100, …, 900); once gets the first."""
    events = [start + interval * i for i in range(n_events)]
    return {"paraphrase": list(events), "duplicate": list(events), "once": events[:1]}


def _jsonable(x: Any) -> Any:
    """Plain-Python, JSON-safe copy: numpy scalars/arrays → float/int/list; NaN/±inf → None."""
    if isinstance(x, dict):
        return {str(k): _jsonable(val) for k, val in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(val) for val in x]
    if isinstance(x, np.ndarray):
        return [_jsonable(val) for val in x.tolist()]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        f = float(x)
        return f if math.isfinite(f) else None
    return x


def summarize_probe_metrics(
    steps: ArrayLike | None,
    values: ArrayLike,
    probe_meta: Sequence[Mapping[str, Any]],
    injection_plan: Mapping[str, Sequence[int]],
    *,
    window: int = DEFAULT_WINDOW,
    iqr_multiplier: float | None = DEFAULT_IQR_MULTIPLIER,
    max_t: int | None = None,
    max_pre_gap: int | None = 0,
    af_mode: Literal["last", "first"] = "last",
    af_aggregate: Literal["probe", "curve"] = "probe",
    drop_flat_probes: bool = False,
) -> dict[str, dict[str, dict[str, Any]]]:
    """All metrics per (scenario, probe type), as a nested JSON-serialisable dict.

    Probes are grouped by ``probe_meta[q]["scenario"]`` and ``probe_meta[q]["probe_type"]``; the
    injection steps of a scenario come from ``injection_plan[scenario]`` (e.g.
    `chang_injection_plan`: 10 events for paraphrase/duplicate, the first only for once). Per
    group, following the official ``measure_scores`` (``ppl_analysis.py``):

    - ``effectivity``: IQR-filtered mean of all E(q, i) of the group (every probe × injection,
      filtered together as the official per-block list); ``effectivity_per_injection``: for each
      injection, the IQR-filtered mean over probes;
    - ``retention``: ``{"t": offsets, "R": mean R(t), "n": probes kept}``; at each offset t the
      non-skipped R(q, t) of the group are IQR-filtered and averaged (fractions, not %). t_last is
      the scenario's last injection. ``max_t`` defaults to one value for all groups,
      ``steps[-1] - (latest t_last + window)``, so the curves of all scenarios have the same
      length as in the official sweep;
    - ``fit``: `fit_power_law_retention` of the mean R(t) over t > 0;
    - ``acquisition``, ``forgetting`` and ``acquisition_forgetting`` (counts): from
      `acquisition_forgetting` with ``af_mode``/``af_aggregate`` (no IQR filtering);
    - ``n_probes``, ``n_skipped`` (retainability skips, v[t_LAM] == v[0]), ``n_missing``,
      ``injection_steps``.

    ``drop_flat_probes=True`` is the official code's behaviour for effectivity: a probe whose
    minimum after the last injection equals its start value (``init_ppl == min_ppl``, a
    retainability skip) is dropped from *effectivity* too, because ``get_probe_measurements``
    (``ppl_analysis.py:75-76``) ``continue``s before it computes the effectivity of the probe's
    injections (``ppl_analysis.py:82-95``). The default ``False`` keeps those probes in
    effectivity (their injections did happen); ``n_flat_dropped`` counts the probes dropped.

    ``iqr_multiplier=None`` disables outlier filtering. All numbers are plain Python; NaN and
    infinities become None, so ``json.dumps`` works. Groups appear in order of first appearance.
    """
    s, v = _as_curves(steps, values)
    if len(probe_meta) != v.shape[0]:
        raise KdynError(f"probe_meta has {len(probe_meta)} entries but values has {v.shape[0]} "
                        "probes; give one {'scenario', 'probe_type'} dict per probe")
    w = _check_window(window)
    groups: dict[tuple[str, str], list[int]] = {}
    for q, meta in enumerate(probe_meta):
        try:
            key = (str(meta["scenario"]), str(meta["probe_type"]))
        except (KeyError, TypeError):
            raise KdynError(f"probe_meta[{q}] must be a dict with keys 'scenario' and "
                            f"'probe_type', got {meta!r}") from None
        groups.setdefault(key, []).append(q)
    plans: dict[str, list[int]] = {}
    for scenario, _ in groups:
        if scenario not in injection_plan:
            raise KdynError(f"scenario {scenario!r} has no entry in injection_plan (known: "
                            f"{sorted(injection_plan)}); add its list of injection steps")
        plans[scenario] = _as_injection_steps(injection_plan[scenario])
    if max_t is None:
        max_t = int(s[-1]) - (max(p[-1] for p in plans.values()) + w)
        if max_t < 0:
            raise KdynError(f"the curves end at step {int(s[-1])}, before the end of the last "
                            "acquisition window; pass max_t explicitly")

    out: dict[str, dict[str, dict[str, Any]]] = {}
    for (scenario, probe_type), idx in groups.items():
        inj = plans[scenario]
        vg = v[idx]
        eff = effectivity(s, vg, inj, w, max_pre_gap)
        ret = retainability(s, vg, inj[-1], window=w, max_t=max_t)
        if drop_flat_probes:
            eff = eff[~ret.skipped]
        eff_mean, _ = iqr_mean(eff, iqr_multiplier, axis=None)
        eff_per_inj, _ = iqr_mean(eff, iqr_multiplier, axis=0)
        r_mean, r_n = iqr_mean(ret.R, iqr_multiplier, axis=0)
        fit = fit_power_law_retention(ret.t, r_mean)
        af = acquisition_forgetting(s, vg, inj, mode=af_mode, aggregate=af_aggregate, window=w)
        out.setdefault(scenario, {})[probe_type] = _jsonable({
            "effectivity": eff_mean,
            "effectivity_per_injection": eff_per_inj,
            "retention": {"t": ret.t, "R": r_mean, "n": r_n},
            "fit": fit,
            "acquisition": af.acquisition,
            "forgetting": af.forgetting,
            "acquisition_forgetting": af.to_dict(),
            "n_probes": len(idx),
            "n_skipped": ret.n_skipped,
            "n_missing": ret.n_missing,
            "n_flat_dropped": ret.n_skipped if drop_flat_probes else 0,
            "injection_steps": inj,
        })
    return out
