"""Slow, obviously correct twins of the kernels in ``keepiton_throttle/_stats_kernels.py``.

Exact where it can be: Python integers and ``fractions.Fraction`` for lattice-path counts and
null distributions, plain enumeration of resamples and relabellings for the resampling laws.
Each twin is used by ``tests/test_stats.py`` to check its kernel.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from fractions import Fraction

import numpy as np
import numpy.typing as npt

MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


# -- random streams --------------------------------------------------------------------------
def mix64(z: int) -> int:
    """SplitMix64's finaliser on Python ints (Steele, Lea & Flood 2014)."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def unit(z: int) -> float:
    return (mix64(z) >> 11) / 2.0**53


def stream_start(seed: int, pair: int, stream: int) -> int:
    """Start of stream ``stream`` (0: bootstrap of the target, 1: of the control,
    2: permutations) of pair ``pair``."""
    return mix64(seed ^ mix64((pair * 4 + stream + GOLDEN) & MASK64))


# -- sorting, quantiles ----------------------------------------------------------------------
def sort(a: npt.ArrayLike) -> list[float]:
    return sorted(np.asarray(a, dtype=float).tolist())


def quantile(a: npt.ArrayLike, q: float) -> float:
    """Hyndman & Fan type 7 (numpy's default 'linear'), from its definition; an exact order
    statistic (or two equal neighbours) is returned as is, where numpy's lerp makes
    ``x + (inf - x) * 0`` a NaN."""
    s = sorted(np.asarray(a, dtype=float).tolist())
    pos = q * (len(s) - 1)
    j = math.floor(pos)
    g = pos - j
    if g == 0.0 or s[j] == s[j + 1]:
        return s[j]
    return s[j] + g * (s[j + 1] - s[j])


# -- exact null distributions ----------------------------------------------------------------
def ks_exact_sf(n1: int, n2: int, h: int) -> float:
    """P(lcm * D >= h) under H0: count the lattice paths that stay strictly inside the band
    |i n2/g - j n1/g| < h with integer arithmetic; every path is equally likely."""
    if h <= 0:
        return 1.0
    g = math.gcd(n1, n2)
    inside = [[0] * (n2 + 1) for _ in range(n1 + 1)]
    for i in range(n1 + 1):
        for j in range(n2 + 1):
            if abs(i * (n2 // g) - j * (n1 // g)) >= h:
                continue
            if i == 0 and j == 0:
                inside[i][j] = 1
            else:
                inside[i][j] = (inside[i - 1][j] if i else 0) + (inside[i][j - 1] if j else 0)
    return float(1 - Fraction(inside[n1][n2], math.comb(n1 + n2, n1)))


def mwu_counts(n1: int, n2: int) -> list[int]:
    """Number of label arrangements with U = u, u = 0..n1*n2, by the recursion on the largest
    pooled value: it belongs to sample 1 (adds n2 to U) or to sample 2."""
    table: dict[tuple[int, int], list[int]] = {}
    for i in range(n1 + 1):
        for j in range(n2 + 1):
            if i == 0 or j == 0:
                c = [0] * (i * j + 1)
                c[0] = 1
            else:
                c = [0] * (i * j + 1)
                for u, v in enumerate(table[i - 1, j]):
                    c[u + j] += v
                for u, v in enumerate(table[i, j - 1]):
                    c[u] += v
            table[i, j] = c
    return table[n1, n2]


def mwu_exact_cdf(n1: int, n2: int, kmax: int) -> float:
    if kmax < 0:
        return 0.0
    counts = mwu_counts(n1, n2)
    return float(Fraction(sum(counts[: kmax + 1]), math.comb(n1 + n2, n1)))


# -- bootstrap median --------------------------------------------------------------------------
def boot_index_law(n: int) -> dict[tuple[int, int], Fraction]:
    """Exact law of (J1, J2), the indices of the two middle order statistics (J1 == J2 for an
    odd n) of n draws with replacement from range(n), by enumerating all n**n resamples."""
    k = (n + 1) // 2
    law: Counter[tuple[int, int]] = Counter()
    for draw in itertools.product(range(n), repeat=n):
        s = sorted(draw)
        law[(s[k - 1], s[k] if n % 2 == 0 else s[k - 1])] += 1
    return {key: Fraction(v, n**n) for key, v in law.items()}


def boot_index_law_trinomial(n: int) -> dict[tuple[int, str], Fraction]:
    """P(J1 = a) ('j1') and P(J1 = J2 = a) ('both') from the trinomial law of
    (#draws < a, #draws == a, #draws > a), for sizes too large to enumerate."""
    k = (n + 1) // 2
    out: dict[tuple[int, str], Fraction] = {}
    for a in range(n):
        pl, pe, pg = Fraction(a, n), Fraction(1, n), Fraction(n - a - 1, n)
        j1 = Fraction(0)
        both = Fraction(0)
        for lo in range(n + 1):
            for e in range(n - lo + 1):
                if lo < k <= lo + e:
                    pr = (math.factorial(n) // (math.factorial(lo) * math.factorial(e)
                                                * math.factorial(n - lo - e))
                          * pl**lo * pe**e * pg ** (n - lo - e))
                    j1 += pr
                    if lo + e >= k + 1:
                        both += pr
        out[(a, "j1")] = j1
        out[(a, "both")] = both
    return out


def boot_medians(xs: npt.ArrayLike, n_resamples: int, rng: np.random.Generator
                 ) -> npt.NDArray[np.float64]:
    """Medians of bootstrap resamples, the textbook way."""
    x = np.asarray(xs, dtype=float)
    idx = rng.integers(0, x.size, size=(n_resamples, x.size))
    return np.asarray(np.median(x[idx], axis=1), dtype=np.float64)


def boot_median_law(xs: npt.ArrayLike) -> dict[float, Fraction]:
    """Exact law of the bootstrap median of a small sample (enumeration)."""
    x = sorted(np.asarray(xs, dtype=float).tolist())
    law: dict[float, Fraction] = {}
    for (j1, j2), pr in boot_index_law(len(x)).items():
        v = 0.5 * (x[j1] + x[j2]) if j1 != j2 else x[j1]
        law[v] = law.get(v, Fraction(0)) + pr
    return law


# -- permutation test ------------------------------------------------------------------------
def perm_position_law(nt: int, nc: int) -> list[Fraction]:
    """P(the target's k-th smallest sits at pooled position p), k = (nt+1)//2, enumerating
    every nt-subset of the pooled positions."""
    n = nt + nc
    k = (nt + 1) // 2
    counts = [0] * n
    for subset in itertools.combinations(range(n), nt):
        counts[subset[k - 1]] += 1
    total = math.comb(n, nt)
    return [Fraction(c, total) for c in counts]


def perm_medians(zs: npt.ArrayLike, nt: int, n_resamples: int, rng: np.random.Generator
                 ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """(target, control) medians of random relabellings, the textbook way."""
    z = np.asarray(zs, dtype=float)
    perms = z[np.argsort(rng.random((n_resamples, z.size)), axis=1)]  # uniform permutations
    return (np.asarray(np.median(perms[:, :nt], axis=1), dtype=np.float64),
            np.asarray(np.median(perms[:, nt:], axis=1), dtype=np.float64))


def perm_median_law(zs: npt.ArrayLike, nt: int) -> dict[tuple[float, float], Fraction]:
    """Exact law of (target median, control median) over all relabellings."""
    z = np.asarray(zs, dtype=float)
    law: Counter[tuple[float, float]] = Counter()
    idx = np.arange(z.size)
    subsets = list(itertools.combinations(range(z.size), nt))
    for subset in subsets:
        mask = np.isin(idx, subset)
        law[(float(np.median(z[mask])), float(np.median(z[~mask])))] += 1
    return {key: Fraction(v, len(subsets)) for key, v in law.items()}


def log_median_ratio(x: npt.ArrayLike, y: npt.ArrayLike) -> float:
    return float(np.log1p(np.median(np.asarray(x, dtype=float)))
                 - np.log1p(np.median(np.asarray(y, dtype=float))))


def permutation_pvalue_exact(x: npt.ArrayLike, y: npt.ArrayLike) -> float:
    """P(|T*| >= |T|) over all relabellings (scipy's 100-eps relative tolerance)."""
    xa = np.asarray(x, dtype=float)
    z = np.concatenate([xa, np.asarray(y, dtype=float)])
    obs = abs(log_median_ratio(xa, y))
    cut = obs - 100 * np.finfo(float).eps * obs
    idx = np.arange(z.size)
    hits = 0
    total = 0
    for subset in itertools.combinations(range(z.size), xa.size):
        mask = np.isin(idx, subset)
        hits += int(abs(log_median_ratio(z[mask], z[~mask])) >= cut)
        total += 1
    return hits / total


# -- pair statistics -------------------------------------------------------------------------
def ks_statistic(x: npt.ArrayLike, y: npt.ArrayLike) -> float:
    """max_v |F_x(v) - F_y(v)| over the pooled values."""
    xa = np.asarray(x, dtype=float)
    ya = np.asarray(y, dtype=float)
    v = np.concatenate([xa, ya])[:, None]
    return float(np.max(np.abs(np.mean(xa <= v, axis=1) - np.mean(ya <= v, axis=1))))


def mwu_u(x: npt.ArrayLike, y: npt.ArrayLike) -> float:
    """U of x: pairs with x > y, plus one half per tie."""
    xa = np.asarray(x, dtype=float)[:, None]
    ya = np.asarray(y, dtype=float)[None, :]
    return float(np.sum(xa > ya) + 0.5 * np.sum(xa == ya))


def benjamini_hochberg(p: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """q_i = min over j with p_(j) >= p_i (in sorted order) of p_(j) m / j, capped at 1."""
    pa = np.asarray(p, dtype=float)
    m = pa.size
    order = np.argsort(pa, kind="stable")
    ranks = np.empty(m, dtype=int)
    ranks[order] = np.arange(1, m + 1)
    ps = pa[order]
    out = np.empty(m)
    for i in range(m):
        r = ranks[i]
        out[i] = min(1.0, min(ps[j - 1] * m / j for j in range(r, m + 1)))
    return out
