"""Comparisons of target-flow goodput with control flows: tests, effect sizes, intervals.

Every public function takes 1-D samples of goodput (bit/s, one value per time bin), validates
them (``InputError``, a ``ValueError``, naming the parameter) and returns a frozen result
dataclass with ``statistic`` and ``pvalue`` first, in the manner of :mod:`scipy.stats`. The
arithmetic is in the Numba kernels of ``_stats_kernels.py``; :func:`compare_pairs` runs a whole
batch of pairs in one parallel kernel.

Agreement with SciPy (checked by ``tests/test_stats.py``): :func:`ks_2samp` and
:func:`mannwhitneyu` give the statistic and p-value of ``scipy.stats.ks_2samp`` and
``scipy.stats.mannwhitneyu`` (two-sided, ``method='auto'``), :func:`benjamini_hochberg` those of
``scipy.stats.false_discovery_control(method='bh')``. The resampling functions are Monte Carlo
estimates of the same quantities as ``scipy.stats.permutation_test`` and
``scipy.stats.bootstrap(method='percentile')``, with their own (counter-based) random streams.

Randomness comes only through the keyword ``rng``: ``None`` (fresh OS entropy), an int seed
(>= 0) or a :class:`numpy.random.Generator` (one 64-bit seed is drawn from it). The same seed
gives the same results, on any number of threads.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from . import _stats_kernels as K
from .errors import InputError

__all__ = [
    "AreaTestResult",
    "BootstrapRatioResult",
    "KSResult",
    "MannWhitneyResult",
    "PairComparison",
    "PermutationResult",
    "benjamini_hochberg",
    "bootstrap_median_ratio",
    "compare_pairs",
    "ks_2samp",
    "mannwhitneyu",
    "permutation_test",
    "wehe_area_test",
]

FloatArray = npt.NDArray[np.float64]

_NO_SEED = np.uint64(0)  # seed of the calls that draw no random numbers


# -- results ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class KSResult:
    """Two-sided two-sample Kolmogorov-Smirnov test.

    ``statistic`` is D = max |F_target - F_control|; ``method`` is ``'exact'`` or ``'asymp'``
    (scipy's names).
    """

    statistic: float
    pvalue: float
    method: str
    n_target: int
    n_control: int


@dataclass(frozen=True)
class MannWhitneyResult:
    """Two-sided Mann-Whitney U test; ``statistic`` is the U of the target sample.

    ``method`` is ``'exact'`` or ``'asymptotic'`` (scipy's names).
    """

    statistic: float
    pvalue: float
    method: str
    n_target: int
    n_control: int


@dataclass(frozen=True)
class AreaTestResult:
    """Wehe's differentiation test: normalised throughput difference plus a KS test.

    ``statistic`` is the area (normalised difference of mean throughputs), ``pvalue`` the KS
    p-value; ``differentiated`` when the area reaches ``threshold`` and the KS test rejects,
    ``inconclusive`` when the area reaches it but the KS test does not.
    """

    statistic: float
    pvalue: float
    differentiated: bool
    inconclusive: bool
    threshold: float
    mean_target: float
    mean_control: float


@dataclass(frozen=True)
class PermutationResult:
    """Two-sided permutation test of the log ratio of medians (see :func:`permutation_test`)."""

    statistic: float
    pvalue: float
    n_resamples: int


@dataclass(frozen=True)
class BootstrapRatioResult:
    """Ratio of medians target/control with a bootstrap confidence interval ``ci``."""

    statistic: float
    ci: tuple[float, float]
    confidence_level: float
    n_resamples: int
    method: str


@dataclass(frozen=True)
class PairComparison:
    """All comparisons of one target/control pair (:func:`compare_pairs`); NaN when the pair
    has fewer than two values on a side."""

    ratio: float
    ratio_ci_low: float
    ratio_ci_high: float
    ks_statistic: float
    ks_pvalue: float
    mwu_statistic: float
    mwu_pvalue: float
    area: float
    perm_pvalue: float


# -- input validation ------------------------------------------------------------------------
def _sample_iv(x: Any, name: str, *, nonnegative: bool = False,
               allow_small: bool = False) -> FloatArray:
    """``x`` as a C-contiguous float64 vector of finite values, or InputError naming ``name``."""
    try:
        a = np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise InputError(f"`{name}` must be a 1-D array of real numbers ({exc})") from None
    if a.dtype.kind not in "biuf":
        raise InputError(f"`{name}` must be a 1-D array of real numbers, not dtype {a.dtype}")
    if a.ndim != 1:
        raise InputError(f"`{name}` must be one-dimensional (got shape {a.shape})")
    if a.size == 0 and not allow_small:
        raise InputError(f"`{name}` must not be empty")
    a = np.ascontiguousarray(a, dtype=np.float64)
    if not np.isfinite(a).all():
        raise InputError(f"`{name}` must contain only finite values (found NaN or inf)")
    if nonnegative and (a < 0).any():
        raise InputError(f"`{name}` must be non-negative (goodput in bit/s)")
    return a


def _int_iv(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool | np.bool_):
        raise InputError(f"`{name}` must be an integer >= {minimum}, not a bool")
    try:
        v = operator.index(value)
    except TypeError:
        raise InputError(f"`{name}` must be an integer >= {minimum} (got {value!r})") from None
    if v < minimum:
        raise InputError(f"`{name}` must be an integer >= {minimum} (got {v})")
    return v


def _unit_interval_iv(value: Any, name: str, *, closed: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"`{name}` must be a number in {'[0, 1]' if closed else '(0, 1)'}"
                         f" (got {value!r})") from None
    ok = (0.0 <= v <= 1.0) if closed else (0.0 < v < 1.0)
    if not ok:
        raise InputError(f"`{name}` must be in {'[0, 1]' if closed else '(0, 1)'} (got {v})")
    return v


def _rng_iv(rng: Any) -> np.uint64:
    """One 64-bit seed from ``rng`` (None, an int >= 0 or a numpy Generator)."""
    if rng is None:
        return np.uint64(np.random.SeedSequence().generate_state(1, np.uint64)[0])
    if isinstance(rng, np.random.Generator):
        return np.uint64(rng.integers(0, 2**64, dtype=np.uint64))
    if isinstance(rng, bool | np.bool_):
        raise InputError("`rng` must be None, an int seed >= 0 or a numpy.random.Generator")
    try:
        seed = operator.index(rng)
    except TypeError:
        raise InputError("`rng` must be None, an int seed >= 0 or a numpy.random.Generator "
                         f"(got {type(rng).__name__})") from None
    if seed < 0:
        raise InputError(f"`rng` seed must be >= 0 (got {seed})")
    # SeedSequence spreads any non-negative int (of any size) over 64 well-mixed bits
    return np.uint64(np.random.SeedSequence(seed).generate_state(1, np.uint64)[0])


def _two_sample_iv(target: Any, control: Any, *, nonnegative: bool = False
                   ) -> tuple[FloatArray, FloatArray]:
    return (_sample_iv(target, "target", nonnegative=nonnegative),
            _sample_iv(control, "control", nonnegative=nonnegative))


def _ks_2samp_iv(target: Any, control: Any) -> tuple[FloatArray, FloatArray]:
    return _two_sample_iv(target, control)


def _mannwhitneyu_iv(target: Any, control: Any) -> tuple[FloatArray, FloatArray]:
    return _two_sample_iv(target, control)


def _wehe_area_test_iv(target: Any, control: Any, area_threshold: Any,
                       fast_area_threshold: Any, fast_bps: Any, alpha: Any
                       ) -> tuple[FloatArray, FloatArray, float, float, float, float]:
    t, c = _two_sample_iv(target, control, nonnegative=True)
    at = _unit_interval_iv(area_threshold, "area_threshold", closed=True)
    ft = _unit_interval_iv(fast_area_threshold, "fast_area_threshold", closed=True)
    try:
        fb = float(fast_bps)
    except (TypeError, ValueError):
        raise InputError(f"`fast_bps` must be a number of bit/s >= 0 (got {fast_bps!r})"
                         ) from None
    if not fb >= 0.0:  # also rejects NaN
        raise InputError(f"`fast_bps` must be a number of bit/s >= 0 (got {fb})")
    return t, c, at, ft, fb, _unit_interval_iv(alpha, "alpha")


def _permutation_test_iv(target: Any, control: Any, n_resamples: Any, rng: Any
                         ) -> tuple[FloatArray, FloatArray, int, np.uint64]:
    t, c = _two_sample_iv(target, control, nonnegative=True)
    return t, c, _int_iv(n_resamples, "n_resamples", 1), _rng_iv(rng)


def _bootstrap_median_ratio_iv(target: Any, control: Any, n_resamples: Any,
                               confidence_level: Any, rng: Any
                               ) -> tuple[FloatArray, FloatArray, int, float, np.uint64]:
    t, c = _two_sample_iv(target, control, nonnegative=True)
    return (t, c, _int_iv(n_resamples, "n_resamples", 1),
            _unit_interval_iv(confidence_level, "confidence_level"), _rng_iv(rng))


def _benjamini_hochberg_iv(pvalues: Any) -> FloatArray:
    p = _sample_iv(pvalues, "pvalues", allow_small=True)
    if ((p < 0) | (p > 1)).any():
        raise InputError("`pvalues` must be in [0, 1]")
    return p


def _compare_pairs_iv(targets: Any, controls: Any, n_resamples: Any, n_permutations: Any,
                      confidence_level: Any, rng: Any
                      ) -> tuple[list[FloatArray], list[FloatArray], int, int, float, np.uint64]:
    for seq, name in ((targets, "targets"), (controls, "controls")):
        if isinstance(seq, str | bytes) or not isinstance(seq, Sequence | np.ndarray):
            raise InputError(f"`{name}` must be a sequence of 1-D arrays")
    if len(targets) != len(controls):
        raise InputError(f"`targets` and `controls` must have the same length "
                         f"(got {len(targets)} and {len(controls)})")
    ts = [_sample_iv(t, f"targets[{i}]", nonnegative=True, allow_small=True)
          for i, t in enumerate(targets)]
    cs = [_sample_iv(c, f"controls[{i}]", nonnegative=True, allow_small=True)
          for i, c in enumerate(controls)]
    return (ts, cs, _int_iv(n_resamples, "n_resamples", 0),
            _int_iv(n_permutations, "n_permutations", 0),
            _unit_interval_iv(confidence_level, "confidence_level"), _rng_iv(rng))


# -- kernels ---------------------------------------------------------------------------------
def _run_pair(t: FloatArray, c: FloatArray, what: int, *, n_boot: int = 0, n_perm: int = 0,
              confidence_level: float = 0.95, seed: np.uint64 = _NO_SEED) -> FloatArray:
    out = np.empty((1, K.N_OUT))
    with np.errstate(over="ignore"):  # uint64 wrap-around when NUMBA_DISABLE_JIT=1
        K.pairs_stats(t, np.array([0, t.size], dtype=np.int64), c,
                      np.array([0, c.size], dtype=np.int64), 1, what, n_boot, n_perm,
                      float(confidence_level), seed, out)
    return out[0]


def _ks_asymptotic_pvalue(d: npt.ArrayLike, n1: npt.ArrayLike, n2: npt.ArrayLike) -> FloatArray:
    """scipy's 'asymp' branch: kstwo.sf(d, round(n1 n2 / (n1 + n2)))."""
    from scipy.stats import kstwo  # imported here: scipy.stats takes ~0.5 s to import

    n1f = np.asarray(n1, dtype=np.float64)
    n2f = np.asarray(n2, dtype=np.float64)
    en = np.round(n1f * n2f / (n1f + n2f))
    return np.asarray(np.clip(kstwo.sf(d, en), 0.0, 1.0), dtype=np.float64)


# -- public API ------------------------------------------------------------------------------
def ks_2samp(target: npt.ArrayLike, control: npt.ArrayLike) -> KSResult:
    """Two-sided two-sample Kolmogorov-Smirnov test, as ``scipy.stats.ks_2samp``.

    The p-value is exact while both samples have at most 10,000 values (the probability that
    a random lattice path leaves the band |x/m - y/n| < D; Hodges 1958, computed with
    Viehmann's recursion for 1 - p, arXiv:2102.08037), otherwise asymptotic:
    ``kstwo.sf(D, round(m n / (m + n)))``. Like scipy, the exact branch reports D rounded to
    its lattice value h / lcm(m, n).
    """
    t, c = _ks_2samp_iv(target, control)
    out = _run_pair(t, c, K.DO_KS)
    d = float(out[K.OUT_KS_D])
    if out[K.OUT_KS_EXACT] == 1.0:
        return KSResult(d, float(out[K.OUT_KS_P]), "exact", t.size, c.size)
    p = float(_ks_asymptotic_pvalue(d, t.size, c.size))
    return KSResult(d, p, "asymp", t.size, c.size)


def mannwhitneyu(target: npt.ArrayLike, control: npt.ArrayLike) -> MannWhitneyResult:
    """Two-sided Mann-Whitney U test, as ``scipy.stats.mannwhitneyu(method='auto')``.

    ``statistic`` is U of the target (mid-ranks for ties). The p-value is exact (the null
    distribution of U) when a sample has at most 8 values and there are no ties, otherwise
    the normal approximation with tie and continuity corrections.
    """
    t, c = _mannwhitneyu_iv(target, control)
    out = _run_pair(t, c, K.DO_MWU)
    method = "exact" if out[K.OUT_MWU_EXACT] == 1.0 else "asymptotic"
    return MannWhitneyResult(float(out[K.OUT_MWU_U]), float(out[K.OUT_MWU_P]), method,
                             t.size, c.size)


def wehe_area_test(target: npt.ArrayLike, control: npt.ArrayLike, *,
                   area_threshold: float = 0.5, fast_area_threshold: float = 0.3,
                   fast_bps: float = 10e6, alpha: float = 0.01) -> AreaTestResult:
    """Wehe's test for differentiation (Li, Akhavan Niaki, Choffnes, Gill & Mislove, "A
    Large-Scale Analysis of Deployed Traffic Differentiation Practices", 2019;
    NEU-SNS/wehe-py3 ``src/testHypothesis.py``, ``doTests``).

    ``statistic`` is the normalised difference of mean throughputs
    ``|mean_t - mean_c| / max(mean_t, mean_c)`` (0 when both means are 0), compared with
    ``area_threshold``, or ``fast_area_threshold`` when the larger mean exceeds ``fast_bps``
    (inputs in bit/s): a fixed throughput difference matters less on a fast path. The flow
    pair is *differentiated* when the area reaches the threshold and the KS test
    (:func:`ks_2samp`, ``pvalue``) rejects at ``alpha``, *inconclusive* when the area reaches
    it but the KS test does not reject.

    Wehe's own ``doTests`` normalises differently: it integrates the difference of the two
    empirical quantile functions over quantile levels 0.001..1 (the signed area between the
    CDFs) and divides by the smaller of the two maxima, and it checks the KS result with a
    jackknife (100 KS tests on random halves). We follow the definition of the issue (mean
    throughputs, normalised by the larger one), which lies in [0, 1] and needs no quadrature;
    for distributions that differ by a shift both measure the same relative gap.
    """
    t, c, at, ft, fb, a = _wehe_area_test_iv(target, control, area_threshold,
                                             fast_area_threshold, fast_bps, alpha)
    out = _run_pair(t, c, K.DO_KS | K.DO_MEANS)
    mt = float(out[K.OUT_MEAN_T])
    mc = float(out[K.OUT_MEAN_C])
    if out[K.OUT_KS_EXACT] == 1.0:
        p = float(out[K.OUT_KS_P])
    else:
        p = float(_ks_asymptotic_pvalue(out[K.OUT_KS_D], t.size, c.size))
    area = float(out[K.OUT_AREA])
    threshold = ft if max(mt, mc) > fb else at
    large = area >= threshold
    return AreaTestResult(area, p, large and p < a, large and p >= a, threshold, mt, mc)


def permutation_test(target: npt.ArrayLike, control: npt.ArrayLike, *,
                     n_resamples: int = 9999, rng: Any = None) -> PermutationResult:
    """Two-sided permutation test of the log ratio of median goodputs.

    ``statistic`` is ``log1p(median(target)) - log1p(median(control))``: the log of the ratio
    of medians with 1 bit/s added to each. Goodput medians can be exactly 0 (a stalled flow),
    where a plain log ratio is infinite or undefined; adding 1 bit/s keeps the statistic
    finite and monotone in each median, and changes it by less than 1e-3 wherever the medians
    exceed 1 kbit/s. The p-value is ``(#{|T*| >= |T|} + 1) / (n_resamples + 1)`` over random
    relabellings of the pooled sample (the ``+1`` makes it a valid p-value, as in scipy's
    randomised test), with scipy's relative tolerance 100 eps for ties of ``|T*|`` and ``|T|``.

    Two-sided means ``|T*| >= |T|`` here; ``scipy.stats.permutation_test(alternative=
    'two-sided')`` doubles the smaller one-sided p-value instead. The two agree when the null
    distribution of T is symmetric, which it is not for unequal sample sizes; scipy's
    ``permutation_test`` with the statistic ``|T|`` and ``alternative='greater'`` is the exact
    counterpart of this test.
    """
    t, c, n, seed = _permutation_test_iv(target, control, n_resamples, rng)
    out = _run_pair(t, c, K.DO_PERM, n_perm=n, seed=seed)
    return PermutationResult(float(out[K.OUT_PERM_STAT]), float(out[K.OUT_PERM_P]), n)


def bootstrap_median_ratio(target: npt.ArrayLike, control: npt.ArrayLike, *,
                           n_resamples: int = 2000, confidence_level: float = 0.95,
                           rng: Any = None) -> BootstrapRatioResult:
    """Ratio of medians target/control with a percentile bootstrap confidence interval.

    Each sample is resampled independently (as ``scipy.stats.bootstrap(paired=False,
    method='percentile')``); the interval is the linear-interpolation quantiles
    ``(1 -+ confidence_level) / 2`` of the resampled ratios. A control median of 0 gives a
    ratio of +inf (NaN when the target median is 0 too); if any resampled ratio is NaN the
    interval is (NaN, NaN).
    """
    t, c, n, level, seed = _bootstrap_median_ratio_iv(target, control, n_resamples,
                                                      confidence_level, rng)
    out = _run_pair(t, c, K.DO_BOOT, n_boot=n, confidence_level=level, seed=seed)
    return BootstrapRatioResult(float(out[K.OUT_RATIO]),
                                (float(out[K.OUT_CI_LO]), float(out[K.OUT_CI_HI])),
                                level, n, "percentile")


def benjamini_hochberg(pvalues: npt.ArrayLike) -> FloatArray:
    """Benjamini-Hochberg adjusted p-values, as ``scipy.stats.false_discovery_control(p,
    method='bh')``: ``min_{j >= i} p_(j) m / j`` over the sorted p-values, capped at 1."""
    p = _benjamini_hochberg_iv(pvalues)
    m = p.size
    if m == 0:
        return p.copy()
    order = np.argsort(p)
    ps = p[order]
    adj = ps * (m / np.arange(1, m + 1))
    adj = np.minimum.accumulate(adj[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.clip(adj, 0.0, 1.0)
    return out


def compare_pairs(targets: Sequence[npt.ArrayLike], controls: Sequence[npt.ArrayLike], *,
                  n_resamples: int = 2000, n_permutations: int = 2000,
                  confidence_level: float = 0.95, rng: Any = None) -> list[PairComparison]:
    """Compare many target/control pairs at once (one parallel Numba kernel over pairs).

    For each pair: the ratio of medians with its percentile bootstrap interval
    (``n_resamples``), the KS and Mann-Whitney tests, Wehe's normalised area and the
    permutation p-value of the log ratio of medians (``n_permutations``). Pair ``i`` draws from
    its own random stream, derived from ``(seed, i)``: results do not depend on the number of
    threads, and a pair alone equals :func:`bootstrap_median_ratio` and
    :func:`permutation_test` with the same ``rng``. A pair with fewer than two values on a side
    gives NaN everywhere instead of raising; ``n_resamples=0`` or ``n_permutations=0`` skip the
    interval or the permutation test (NaN).
    """
    ts, cs, n_boot, n_perm, level, seed = _compare_pairs_iv(targets, controls, n_resamples,
                                                          n_permutations, confidence_level, rng)
    n_pairs = len(ts)
    if n_pairs == 0:
        return []
    nt = np.array([t.size for t in ts], dtype=np.int64)
    nc = np.array([c.size for c in cs], dtype=np.int64)
    t_off = np.zeros(n_pairs + 1, dtype=np.int64)
    c_off = np.zeros(n_pairs + 1, dtype=np.int64)
    np.cumsum(nt, out=t_off[1:])
    np.cumsum(nc, out=c_off[1:])
    tv = np.ascontiguousarray(np.concatenate(ts), dtype=np.float64)
    cv = np.ascontiguousarray(np.concatenate(cs), dtype=np.float64)
    out = np.empty((n_pairs, K.N_OUT))
    with np.errstate(over="ignore"):
        K.pairs_stats(tv, t_off, cv, c_off, 2, K.DO_ALL, n_boot, n_perm, level, seed, out)
    asymp = (out[:, K.OUT_KS_EXACT] == 0.0) & (nt >= 2) & (nc >= 2)
    if asymp.any():
        out[asymp, K.OUT_KS_P] = _ks_asymptotic_pvalue(out[asymp, K.OUT_KS_D], nt[asymp],
                                                       nc[asymp])
    cols = (K.OUT_RATIO, K.OUT_CI_LO, K.OUT_CI_HI, K.OUT_KS_D, K.OUT_KS_P, K.OUT_MWU_U,
            K.OUT_MWU_P, K.OUT_AREA, K.OUT_PERM_P)
    rows = out[:, cols].tolist()
    return [PairComparison(*r) for r in rows]
