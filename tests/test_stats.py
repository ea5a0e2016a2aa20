"""Statistics stage: every kernel against its slow twin (``naive_stats.py``), every public
function against scipy.stats (1.17) or, for Monte Carlo methods, against scipy's exact answer
within Monte Carlo error."""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import numba
import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal

from keepiton_throttle import _stats_kernels as K
from keepiton_throttle import stats as S
from keepiton_throttle.errors import InputError

from . import naive_stats as N

HYP = settings(max_examples=150, deadline=None, derandomize=True)


def _c(a: object) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float64)


# == kernels against their slow twins ========================================================
def test_splitmix_matches_twin() -> None:
    for z in [0, 1, 2**63, 2**64 - 1, 0x123456789ABCDEF0]:
        assert int(K.mix64(np.uint64(z))) == N.mix64(z)
        assert float(K.unit(np.uint64(z))) == N.unit(z)
    for seed, pair, stream in [(0, 0, 0), (1, 0, 2), (2**64 - 1, 12345, 1)]:
        assert int(K.stream_start(np.uint64(seed), 4 * pair + stream)) == N.stream_start(
            seed, pair, stream)


def test_heapsort_matches_sorted() -> None:
    rng = np.random.default_rng(1)
    for n in [0, 1, 2, 3, 7, 64, 301]:
        for a in [rng.normal(size=n), rng.integers(0, 3, n).astype(float),
                  np.full(n, 5.0), np.r_[np.inf, -np.inf, rng.normal(size=n)] * 1e9]:
            b = _c(a)
            K.heapsort(b)
            assert b.tolist() == N.sort(a)


def test_quantile_matches_definition_and_numpy() -> None:
    rng = np.random.default_rng(2)
    for n in [1, 2, 3, 10, 2000]:
        for a in [rng.normal(size=n), rng.integers(0, 4, n).astype(float),
                  np.r_[rng.gamma(2.0, size=n), np.inf, np.inf]]:
            for q in [0.0, 0.025, 0.5, 0.975, 1.0]:
                got = K.quantile(_c(a), q)
                assert got == pytest.approx(N.quantile(a, q), rel=1e-14, abs=0.0)
                if np.isfinite(a).all():
                    assert got == pytest.approx(np.quantile(a, q), rel=1e-14, abs=1e-300)


def test_ks_exact_sf_matches_lattice_count() -> None:
    """Every attainable D for all sizes up to 12, then a few larger ones."""
    for n1 in range(1, 13):
        for n2 in range(1, 13):
            lcm = n1 * n2 // math.gcd(n1, n2)
            for h in range(lcm + 1):
                assert K.ks_exact_sf(n1, n2, h) == pytest.approx(N.ks_exact_sf(n1, n2, h),
                                                                 rel=1e-13, abs=0.0)
    for n1, n2 in [(30, 45), (40, 40), (17, 60), (1, 50)]:
        lcm = n1 * n2 // math.gcd(n1, n2)
        for h in range(1, lcm + 1, max(1, lcm // 40)):
            assert K.ks_exact_sf(n1, n2, h) == pytest.approx(N.ks_exact_sf(n1, n2, h),
                                                             rel=1e-13, abs=0.0)


def test_mwu_exact_cdf_matches_counts() -> None:
    for n1 in range(1, 9):
        for n2 in [*range(1, 13), 25, 40]:
            counts = N.mwu_counts(n1, n2)
            total = math.comb(n1 + n2, n1)
            cum = 0
            for k in range(n1 * n2 // 2 + 1):
                cum += counts[k]
                assert K.mwu_exact_cdf(n1, n2, k) == pytest.approx(
                    float(Fraction(cum, total)), rel=1e-13, abs=0.0)
    assert K.mwu_exact_cdf(3, 4, -1) == 0.0
    assert K.mwu_exact_cdf(3, 4, 12) == 1.0


def _boot_tables(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    cdf, stay, first = np.empty(n), np.empty(n), np.empty(n)
    K.boot_table(n, cdf, stay, first, np.empty(n, dtype=np.int64))
    return cdf, stay, first


def test_boot_table_matches_enumeration() -> None:
    """The joint law of the two middle indices implied by the tables equals the law found by
    enumerating all n**n resamples."""
    for n in range(1, 7):
        cdf, stay, first = _boot_tables(n)
        p1 = np.diff(np.r_[0.0, cdf])
        implied: dict[tuple[int, int], float] = {}
        for a in range(n):
            if n % 2:
                implied[(a, a)] = p1[a]
                continue
            implied[(a, a)] = p1[a] * stay[a]
            rest = p1[a] * (1.0 - stay[a])
            m = n - 1 - a
            for t in range(m):
                implied[(a, a + 1 + t)] = rest * first[m - t]
                rest *= 1.0 - first[m - t]
        exact = N.boot_index_law(n)
        for key in set(implied) | set(exact):
            assert implied.get(key, 0.0) == pytest.approx(float(exact.get(key, 0)), abs=1e-14)


@pytest.mark.parametrize("n", [7, 8, 15, 24])
def test_boot_table_matches_trinomial_law(n: int) -> None:
    cdf, stay, _ = _boot_tables(n)
    p1 = np.diff(np.r_[0.0, cdf])
    law = N.boot_index_law_trinomial(n)
    for a in range(n):
        assert p1[a] == pytest.approx(float(law[(a, "j1")]), abs=1e-14)
        if n % 2 == 0 and law[(a, "j1")] > 1e-12:
            assert stay[a] == pytest.approx(float(law[(a, "both")] / law[(a, "j1")]), abs=1e-9)


def test_boot_table_large_n_matches_binomial_tail() -> None:
    for n in [101, 300, 1001]:
        cdf, _, _ = _boot_tables(n)
        k = (n + 1) // 2
        want = scipy.stats.binom.sf(k - 1, n, np.arange(1, n + 1) / n)
        # log C(n, k) from lgamma carries ~n * 1e-16 relative error into the pmf: a bias of
        # ~1e-13 in the probability of drawing an index, far below Monte Carlo error
        assert_allclose(cdf, want, rtol=0, atol=1e-11)


def _chi2_pvalue(draws: list[object], law: dict[object, float]) -> float:
    """Chi-square goodness of fit; categories with expected count < 5 are pooled."""
    n = len(draws)
    counts: dict[object, int] = {}
    for d in draws:
        counts[d] = counts.get(d, 0) + 1
    assert set(counts) <= set(law), "a draw outside the support of the exact law"
    obs, exp, pool_o, pool_e = [], [], 0, 0.0
    for key, pr in law.items():
        if pr * n < 5:
            pool_o += counts.get(key, 0)
            pool_e += pr * n
        else:
            obs.append(counts.get(key, 0))
            exp.append(pr * n)
    if pool_e > 0:
        obs.append(pool_o)
        exp.append(pool_e)
    exp_a = np.array(exp) * (n / sum(exp))
    return float(scipy.stats.chisquare(obs, exp_a).pvalue)


@pytest.mark.parametrize("xs", [[1.0, 2.0, 4.0], [1.0, 2.0, 4.0, 8.0], [0.0, 0.0, 3.0, 5.0, 9.0],
                                [1.0, 2.0, 3.0, 5.0, 8.0, 13.0]])
def test_boot_medians_follow_exact_law(xs: list[float]) -> None:
    out = np.empty(100_000)
    K.boot_medians(_c(xs), np.uint64(N.stream_start(11, 0, 0)), out)
    law = {k: float(v) for k, v in N.boot_median_law(xs).items()}
    assert _chi2_pvalue(out.tolist(), law) > 1e-4  # type: ignore[arg-type]


@pytest.mark.parametrize("n", [60, 61])
def test_boot_medians_match_naive_resampling(n: int) -> None:
    rng = np.random.default_rng(n)
    xs = np.sort(np.round(rng.gamma(2.0, 1e6, n), -5))  # ties on purpose
    out = np.empty(20_000)
    K.boot_medians(xs, np.uint64(N.stream_start(3, 1, 0)), out)
    naive = N.boot_medians(xs, 20_000, np.random.default_rng(5))
    assert scipy.stats.ks_2samp(out, naive, method="asymp").pvalue > 1e-4
    assert set(np.unique(out)) <= set(np.unique(np.r_[naive, (xs[:-1] + xs[1:]) / 2, xs]))


def test_perm_table_matches_enumeration() -> None:
    for nt in range(1, 8):
        for nc in range(1, 8):
            cdf = np.empty(nt + nc)
            K.perm_table(nt, nc, cdf, np.empty(nt + nc, dtype=np.int64))
            want = [float(p) for p in N.perm_position_law(nt, nc)]
            assert_allclose(np.diff(np.r_[0.0, cdf]), want, rtol=0, atol=1e-14)


def test_perm_table_large_does_not_overflow() -> None:
    nt, nc = 3000, 2500
    cdf = np.empty(nt + nc)
    K.perm_table(nt, nc, cdf, np.empty(nt + nc, dtype=np.int64))
    assert np.all(np.diff(cdf) >= 0) and cdf[-1] == 1.0 and np.isfinite(cdf).all()
    pmf = np.diff(np.r_[0.0, cdf])
    assert abs(pmf @ np.arange(nt + nc) - (nt + nc) / 2) < 3


@pytest.mark.parametrize("zs,nt", [([1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 21.0], 3),
                                   ([1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 21.0, 34.0], 4),
                                   ([0.0, 0.0, 1.0, 1.0, 2.0, 5.0, 5.0, 9.0, 10.0], 4),
                                   ([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0], 6),
                                   ([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0], 2)])
def test_perm_medians_follow_exact_law(zs: list[float], nt: int) -> None:
    mt, mc = np.empty(100_000), np.empty(100_000)
    K.perm_medians(_c(zs), nt, np.uint64(N.stream_start(7, 0, 2)), mt, mc)
    law = {k: float(v) for k, v in N.perm_median_law(zs, nt).items()}
    assert _chi2_pvalue(list(zip(mt.tolist(), mc.tolist(), strict=True)), law) > 1e-4  # type: ignore[arg-type]


@pytest.mark.parametrize("nt,nc", [(40, 55), (55, 40), (50, 51), (3, 120)])
def test_perm_medians_match_naive_relabelling(nt: int, nc: int) -> None:
    rng = np.random.default_rng(nt * 1000 + nc)
    zs = np.sort(np.round(rng.gamma(2.0, 1e6, nt + nc), -5))
    mt, mc = np.empty(20_000), np.empty(20_000)
    K.perm_medians(zs, nt, np.uint64(N.stream_start(9, 0, 2)), mt, mc)
    nmt, nmc = N.perm_medians(zs, nt, 20_000, np.random.default_rng(1))
    for a, b in [(mt, nmt), (mc, nmc), (np.log1p(mt) - np.log1p(mc), np.log1p(nmt) - np.log1p(nmc))]:
        assert scipy.stats.ks_2samp(a, b, method="asymp").pvalue > 1e-4


# == public functions against scipy ==========================================================
@st.composite
def samples(draw: st.DrawFn, *, min_size: int = 1, max_size: int = 300,
            nonnegative: bool = False) -> np.ndarray:
    n = draw(st.integers(min_size, max_size))
    kind = draw(st.sampled_from(["ties", "continuous", "huge", "constant", "mixed"]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if kind == "ties":
        x = rng.integers(0, draw(st.integers(1, 6)), n).astype(float)
    elif kind == "continuous":
        x = rng.gamma(2.0, 1.0, n) if nonnegative else rng.normal(size=n)
    elif kind == "huge":
        x = 1e9 + rng.integers(0, 50, n).astype(float) * draw(st.sampled_from([1.0, 1e6]))
    elif kind == "constant":
        x = np.full(n, draw(st.sampled_from([0.0, 3.0, 1e9])))
    else:
        x = np.where(rng.random(n) < 0.3, 0.0, rng.gamma(2.0, 1e6, n))
    return x if nonnegative else x - draw(st.sampled_from([0.0, 0.0, 5.0]))


@HYP
@given(samples(), samples())
def test_ks_2samp_matches_scipy(x: np.ndarray, y: np.ndarray) -> None:
    ours = S.ks_2samp(x, y)
    ref = scipy.stats.ks_2samp(x, y, method="auto")
    assert ours.statistic == pytest.approx(float(ref.statistic), rel=0, abs=1e-12)
    assert ours.pvalue == pytest.approx(float(ref.pvalue), rel=1e-10, abs=0.0)
    assert ours.method == "exact" and (ours.n_target, ours.n_control) == (x.size, y.size)
    assert ours.statistic == pytest.approx(N.ks_statistic(x, y), abs=1e-12)


@pytest.mark.parametrize("n1,n2,shift", [(10001, 20, 0.5), (12000, 15000, 0.03),
                                         (10000, 9999, 0.05), (10000, 10000, 0.02)])
def test_ks_2samp_large_matches_scipy(n1: int, n2: int, shift: float) -> None:
    rng = np.random.default_rng(n1 + n2)
    x = rng.normal(size=n1)
    y = rng.normal(size=n2) + shift
    ours = S.ks_2samp(x, y)
    ref = scipy.stats.ks_2samp(x, y)
    assert ours.method == ("asymp" if max(n1, n2) > 10000 else "exact")
    assert ours.statistic == pytest.approx(float(ref.statistic), rel=0, abs=1e-12)
    assert ours.pvalue == pytest.approx(float(ref.pvalue), rel=1e-9, abs=0.0)


@HYP
@given(samples(), samples())
def test_mannwhitneyu_matches_scipy(x: np.ndarray, y: np.ndarray) -> None:
    ours = S.mannwhitneyu(x, y)
    ref = scipy.stats.mannwhitneyu(x, y, alternative="two-sided", method="auto")
    assert ours.statistic == float(ref.statistic) == N.mwu_u(x, y)
    ties = np.unique(np.r_[x, y]).size < x.size + y.size
    exact = min(x.size, y.size) <= 8 and not ties
    assert ours.method == ("exact" if exact else "asymptotic")
    assert ours.pvalue == pytest.approx(float(ref.pvalue), rel=1e-10 if exact else 1e-9, abs=0.0)


@pytest.mark.parametrize("n1,n2", [(1, 1), (1, 7), (8, 8), (8, 9), (3, 500), (8, 1000)])
def test_mannwhitneyu_exact_edges_match_scipy(n1: int, n2: int) -> None:
    rng = np.random.default_rng(n1 * n2)
    for shift in [0.0, 1.0, 3.0]:
        x = rng.normal(size=n1) + shift
        y = rng.normal(size=n2)
        ours = S.mannwhitneyu(x, y)
        ref = scipy.stats.mannwhitneyu(x, y)
        assert ours.statistic == float(ref.statistic)
        assert ours.pvalue == pytest.approx(float(ref.pvalue), rel=1e-10, abs=0.0)


def test_constant_and_single_value_samples() -> None:
    for x, y in [([3.0] * 5, [3.0] * 7), ([1.0], [2.0]), ([2.0], [2.0]), ([0.0] * 40, [0.0])]:
        ks, mw = S.ks_2samp(x, y), S.mannwhitneyu(x, y)
        rks, rmw = scipy.stats.ks_2samp(x, y), scipy.stats.mannwhitneyu(x, y)
        assert (ks.statistic, ks.pvalue) == (float(rks.statistic), float(rks.pvalue))
        assert (mw.statistic, mw.pvalue) == pytest.approx((float(rmw.statistic),
                                                           float(rmw.pvalue)), rel=1e-12)


@HYP
@given(st.lists(st.one_of(st.floats(0, 1), st.sampled_from([0.0, 1.0, 0.05, 0.01])),
                max_size=60))
def test_benjamini_hochberg_matches_scipy(p: list[float]) -> None:
    ours = S.benjamini_hochberg(p)
    if len(p) == 0:
        assert ours.shape == (0,)
        return
    assert_array_equal(ours, np.asarray(scipy.stats.false_discovery_control(p, method="bh")))
    assert_allclose(ours, N.benjamini_hochberg(p), rtol=1e-15, atol=0)


# == Wehe ====================================================================================
def test_wehe_area_test_definition() -> None:
    rng = np.random.default_rng(3)
    control = rng.normal(8e6, 5e5, 200).clip(0)
    throttled = rng.normal(3e6, 5e5, 200).clip(0)
    r = S.wehe_area_test(throttled, control)
    mt, mc = throttled.mean(), control.mean()
    assert r.statistic == pytest.approx(abs(mt - mc) / max(mt, mc), rel=1e-12)
    assert (r.mean_target, r.mean_control) == pytest.approx((mt, mc), rel=1e-12)
    assert r.pvalue == S.ks_2samp(throttled, control).pvalue
    assert r.threshold == 0.5 and r.differentiated and not r.inconclusive
    # the larger mean above fast_bps switches to the 0.3 threshold
    fast = S.wehe_area_test(throttled * 2, control * 2)
    assert fast.threshold == 0.3 and fast.differentiated
    # a large area without KS evidence (two values each) is inconclusive
    small = S.wehe_area_test([1e6, 1.1e6], [5e6, 5.2e6])
    assert small.statistic > 0.5 and small.pvalue >= 0.01
    assert small.inconclusive and not small.differentiated
    same = S.wehe_area_test(control, control)
    assert same.statistic == 0.0 and not same.differentiated and not same.inconclusive
    zeros = S.wehe_area_test([0.0, 0.0], [0.0, 0.0, 0.0])
    assert zeros.statistic == 0.0 and not zeros.differentiated


# == resampling ==============================================================================
def _abs_log_median_ratio(x: np.ndarray, y: np.ndarray, axis: int) -> np.ndarray:
    return np.abs(np.log1p(np.median(x, axis=axis)) - np.log1p(np.median(y, axis=axis)))


@pytest.mark.parametrize("n1,n2", [(5, 6), (6, 7), (4, 9), (7, 7)])
def test_permutation_test_matches_scipy_exact(n1: int, n2: int) -> None:
    rng = np.random.default_rng(n1 * 10 + n2)
    x = np.round(rng.gamma(2.0, 1e6, n1), -5)
    y = np.round(rng.gamma(2.0, 1.4e6, n2), -5)
    exact = scipy.stats.permutation_test((x, y), _abs_log_median_ratio, vectorized=True,
                                         n_resamples=np.inf, alternative="greater").pvalue
    assert exact == pytest.approx(N.permutation_pvalue_exact(x, y), abs=1e-12)
    b = 20_000
    r = S.permutation_test(x, y, n_resamples=b, rng=42)
    assert r.statistic == pytest.approx(N.log_median_ratio(x, y), rel=1e-14)
    assert r.n_resamples == b
    se = math.sqrt(exact * (1 - exact) / b)
    assert abs(r.pvalue - exact) < 5 * se + 2 / b


def test_permutation_test_handles_zero_medians() -> None:
    r = S.permutation_test([0.0, 0.0, 0.0, 1e6], [2e6, 3e6, 0.0], n_resamples=999, rng=1)
    assert r.statistic == pytest.approx(-math.log1p(2e6)) and 0 < r.pvalue <= 1
    same = S.permutation_test([0.0, 0.0], [0.0, 0.0, 0.0], n_resamples=99, rng=1)
    assert same.statistic == 0.0 and same.pvalue == 1.0


def test_bootstrap_matches_scipy_percentile() -> None:
    rng = np.random.default_rng(7)
    for n1, n2 in [(40, 55), (101, 60)]:
        x = rng.gamma(2.0, 1e6, n1)
        y = rng.gamma(2.0, 1.2e6, n2)
        ref = scipy.stats.bootstrap(
            (x, y), lambda a, b, axis: np.median(a, axis=axis) / np.median(b, axis=axis),
            method="percentile", n_resamples=50_000, rng=1).confidence_interval
        ours = S.bootstrap_median_ratio(x, y, n_resamples=50_000, rng=2)
        width = ref.high - ref.low
        assert ours.statistic == pytest.approx(np.median(x) / np.median(y), rel=1e-15)
        assert ours.ci[0] == pytest.approx(ref.low, abs=0.05 * width)
        assert ours.ci[1] == pytest.approx(ref.high, abs=0.05 * width)
        assert (ours.confidence_level, ours.n_resamples, ours.method) == (0.95, 50_000,
                                                                          "percentile")


def test_bootstrap_zero_medians() -> None:
    inf = S.bootstrap_median_ratio([1e6, 2e6, 3e6], [0.0, 0.0, 0.0], rng=1)
    assert inf.statistic == math.inf and inf.ci == (math.inf, math.inf)
    nan = S.bootstrap_median_ratio([0.0, 0.0, 5.0], [0.0, 0.0, 1.0], rng=1)
    assert math.isnan(nan.statistic) and all(math.isnan(v) for v in nan.ci)


def test_seeds_reproduce() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.gamma(2, 1e6, 80), rng.gamma(2, 1e6, 90)
    assert S.permutation_test(x, y, rng=5) == S.permutation_test(x, y, rng=5)
    assert S.bootstrap_median_ratio(x, y, rng=5) == S.bootstrap_median_ratio(x, y, rng=5)
    g1, g2 = np.random.default_rng(9), np.random.default_rng(9)
    assert S.bootstrap_median_ratio(x, y, rng=g1) == S.bootstrap_median_ratio(x, y, rng=g2)
    assert S.permutation_test(x, y, rng=5) != S.permutation_test(x, y, rng=6)


# == compare_pairs ===========================================================================
def _pairs(n: int, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    ts = [rng.gamma(2.0, 1e6, rng.integers(2, 120)) for _ in range(n)]
    cs = [rng.gamma(2.0, 1.1e6, rng.integers(2, 120)) for _ in range(n)]
    return ts, cs


def test_compare_pairs_single_pair_equals_single_functions() -> None:
    ts, cs = _pairs(3, 1)
    for i in range(3):
        t, c = ts[i], cs[i]
        (row,) = S.compare_pairs([t], [c], n_resamples=500, n_permutations=700, rng=17)
        boot = S.bootstrap_median_ratio(t, c, n_resamples=500, rng=17)
        perm = S.permutation_test(t, c, n_resamples=700, rng=17)
        ks, mw = S.ks_2samp(t, c), S.mannwhitneyu(t, c)
        area = S.wehe_area_test(t, c).statistic
        assert (row.ratio, row.ratio_ci_low, row.ratio_ci_high) == (boot.statistic, *boot.ci)
        assert (row.ks_statistic, row.ks_pvalue) == (ks.statistic, ks.pvalue)
        assert (row.mwu_statistic, row.mwu_pvalue) == (mw.statistic, mw.pvalue)
        assert (row.area, row.perm_pvalue) == (area, perm.pvalue)


def test_compare_pairs_independent_of_thread_count() -> None:
    ts, cs = _pairs(64, 2)
    threads = min(2, int(numba.config.NUMBA_NUM_THREADS))  # type: ignore[attr-defined]
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = S.compare_pairs(ts, cs, n_resamples=300, n_permutations=300, rng=3)
        numba.set_num_threads(threads)
        many = S.compare_pairs(ts, cs, n_resamples=300, n_permutations=300, rng=3)
    finally:
        numba.set_num_threads(before)
    assert one == many
    # a pair's streams depend on (seed, index) only: a prefix of a batch is unchanged
    prefix = S.compare_pairs(ts[:10], cs[:10], n_resamples=300, n_permutations=300, rng=3)
    assert prefix == one[:10]


def test_compare_pairs_small_pairs_give_nan() -> None:
    ts, cs = _pairs(3, 4)
    rows = S.compare_pairs([ts[0], [1.0], [], ts[1]], [cs[0], cs[1], cs[2], [2.0]],
                           n_resamples=100, n_permutations=100, rng=1)
    assert not any(math.isnan(v) for v in vars(rows[0]).values())
    for r in rows[1:]:
        assert all(math.isnan(v) for v in vars(r).values())
    assert S.compare_pairs([], [], rng=1) == []
    skip = S.compare_pairs(ts[:1], cs[:1], n_resamples=0, n_permutations=0, rng=1)[0]
    assert math.isnan(skip.ratio_ci_low) and math.isnan(skip.perm_pvalue)
    assert not math.isnan(skip.ratio) and not math.isnan(skip.ks_pvalue)


def test_compare_pairs_asymptotic_ks() -> None:
    rng = np.random.default_rng(8)
    x, y = rng.normal(5.0, 1.0, 10050), rng.normal(5.1, 1.0, 300)
    (row,) = S.compare_pairs([x], [y], n_resamples=10, n_permutations=10, rng=1)
    ref = scipy.stats.ks_2samp(x, y)
    assert row.ks_pvalue == pytest.approx(float(ref.pvalue), rel=1e-9)


# == input validation ========================================================================
@pytest.mark.parametrize("bad,msg", [
    ([], "`target` must not be empty"),
    ([1.0, np.nan], "`target` must contain only finite values"),
    ([1.0, np.inf], "`target` must contain only finite values"),
    ([[1.0, 2.0]], "`target` must be one-dimensional"),
    (["a", "b"], "`target` must be a 1-D array of real numbers"),
    ([1 + 2j], "`target` must be a 1-D array of real numbers"),
])
def test_bad_samples_name_the_parameter(bad: Any, msg: str) -> None:
    fns: list[Callable[..., Any]] = [S.ks_2samp, S.mannwhitneyu, S.wehe_area_test,
                                     S.permutation_test, S.bootstrap_median_ratio]
    for fn in fns:
        with pytest.raises(InputError, match=msg):
            fn(bad, [1.0, 2.0])
        with pytest.raises(ValueError, match=msg.replace("target", "control")):
            fn([1.0, 2.0], bad)


def test_bad_options_name_the_parameter() -> None:
    x, y = [1.0, 2.0, 3.0], [2.0, 3.0]
    with pytest.raises(InputError, match="`target` must be non-negative"):
        S.permutation_test([-1.0, 2.0], y)
    with pytest.raises(InputError, match="`n_resamples` must be an integer >= 1"):
        S.permutation_test(x, y, n_resamples=0)
    with pytest.raises(InputError, match="`n_resamples` must be an integer"):
        S.bootstrap_median_ratio(x, y, n_resamples=2.5)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="`confidence_level` must be in"):
        S.bootstrap_median_ratio(x, y, confidence_level=1.0)
    with pytest.raises(InputError, match="`rng` must be None, an int seed"):
        S.permutation_test(x, y, rng="seed")
    with pytest.raises(InputError, match="`rng` must be None, an int seed"):
        S.permutation_test(x, y, rng=True)
    with pytest.raises(InputError, match="`rng` seed must be >= 0"):
        S.permutation_test(x, y, rng=-1)
    with pytest.raises(InputError, match="`alpha` must be in"):
        S.wehe_area_test(x, y, alpha=0.0)
    with pytest.raises(InputError, match="`area_threshold` must be in"):
        S.wehe_area_test(x, y, area_threshold=2.0)
    with pytest.raises(InputError, match="`fast_bps` must be a number"):
        S.wehe_area_test(x, y, fast_bps=float("nan"))
    with pytest.raises(InputError, match="`pvalues` must be in"):
        S.benjamini_hochberg([0.5, 1.5])
    with pytest.raises(InputError, match="`pvalues` must contain only finite"):
        S.benjamini_hochberg([0.5, np.nan])
    with pytest.raises(InputError, match="same length"):
        S.compare_pairs([x], [y, y])
    with pytest.raises(InputError, match=r"`controls\[1\]` must contain only finite"):
        S.compare_pairs([x, x], [y, [1.0, np.nan]])
    with pytest.raises(InputError, match=r"`targets\[0\]` must be non-negative"):
        S.compare_pairs([[-1.0, 1.0]], [y])
    with pytest.raises(InputError, match="`targets` must be a sequence"):
        S.compare_pairs("abc", [y])
    with pytest.raises(InputError, match="`n_permutations` must be an integer >= 0"):
        S.compare_pairs([x], [y], n_permutations=-1)
