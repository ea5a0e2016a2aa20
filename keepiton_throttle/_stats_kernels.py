"""Private Numba kernels of the statistics stage. No validation, no raise: see ``stats.py``.

One entry point, so that a cold start compiles little: :func:`pairs_stats`, the parallel
kernel (``prange`` over pairs), calls :func:`pair_stats` for each pair; the ``what`` bit mask
picks the statistics, and the single-pair functions of ``stats.py`` call it with one pair.
Inputs are float64 C-contiguous arrays; results go to a preallocated row per pair (fields
``OUT_*`` below). Every helper is checked against its slow twin in ``tests/naive_stats.py``.

Randomness is counter-based: stream ``s`` of pair ``i`` of a batch seeded with ``seed`` is a
SplitMix64 sequence (Steele, Lea & Flood, OOPSLA 2014) starting at a hash of
``(seed, 4 i + s)``. A pair's results thus depend neither on the number of threads nor on the
other pairs of the batch, and the bootstrap of each sample and the permutation test have
streams of their own (so each single-pair function reproduces the numbers of the batch).

Resampling never materialises a resample. A bootstrap median is drawn from the exact law of
the median's order-statistic *indices* (binomial tails, and the joint law of the two middle
indices for an even size); a permuted (target, control) median pair from the negative
hypergeometric law of the target median's position in the pooled sorted sample, then a short
sequential walk to the control median. Both are O(1) to O(sqrt(n)) work per resample instead of
O(n) random draws and a median.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .config import NUMBA_FLAGS, kernel

#: ``njit(cache=True, nogil=True, parallel=True)``: the one parallel kernel of this module
parallel_kernel = njit(cache=NUMBA_FLAGS["cache"], nogil=NUMBA_FLAGS["nogil"], parallel=True)

# -- what to compute (bit mask) ---------------------------------------------------------------
DO_KS = 1
DO_MWU = 2
DO_MEANS = 4  # means and Wehe's normalised area
DO_BOOT = 8
DO_PERM = 16
DO_ALL = DO_KS | DO_MWU | DO_MEANS | DO_BOOT | DO_PERM

# -- random streams of a pair ----------------------------------------------------------------
STREAM_BOOT_TARGET = 0
STREAM_BOOT_CONTROL = 1
STREAM_PERM = 2

# -- output row ------------------------------------------------------------------------------
OUT_KS_D = 0
OUT_KS_P = 1  # NaN when OUT_KS_EXACT is 0: the wrapper adds the asymptotic p-value
OUT_KS_EXACT = 2
OUT_MWU_U = 3  # U of the target sample
OUT_MWU_P = 4
OUT_MWU_EXACT = 5
OUT_MEAN_T = 6
OUT_MEAN_C = 7
OUT_AREA = 8
OUT_RATIO = 9
OUT_CI_LO = 10
OUT_CI_HI = 11
OUT_PERM_STAT = 12
OUT_PERM_P = 13
N_OUT = 14

#: scipy.stats.ks_2samp(method='auto') is exact up to this sample size
KS_MAX_EXACT_N = 10000
#: scipy.stats.mannwhitneyu(method='auto') is exact when a sample has at most this many values
MWU_MAX_EXACT_N = 8

# SplitMix64 constants (Steele et al. 2014; the finaliser is Stafford's "Mix13")
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_SH30 = np.uint64(30)
_SH27 = np.uint64(27)
_SH31 = np.uint64(31)
_SH11 = np.uint64(11)
_SH32 = np.uint64(32)
_LOW32 = np.uint64(0xFFFFFFFF)
_TWO_M53 = 1.0 / 9007199254740992.0
_EPS100 = 100.0 * 2.220446049250313e-16  # scipy.stats.permutation_test's relative tolerance


# -- random numbers --------------------------------------------------------------------------
@kernel
def mix64(z):
    """SplitMix64 finaliser: a bijective avalanche of a uint64."""
    z = (z ^ (z >> _SH30)) * _MIX1
    z = (z ^ (z >> _SH27)) * _MIX2
    return z ^ (z >> _SH31)


@kernel
def unit(z):
    """The double in [0, 1) of SplitMix64 output for state ``z`` (top 53 bits).

    Callers advance a scalar state with ``z += _GOLDEN`` (passing arrays between kernels costs
    atomic reference counting on every call, which dominated the resampling loops)."""
    return float(mix64(z) >> _SH11) * _TWO_M53


@kernel
def stream_start(seed, stream_id):
    """First state of a random stream of a batch seeded ``seed``; stream ``s`` (STREAM_*) of
    pair ``i`` has ``stream_id = 4 * i + s`` (computed by the caller: a literal argument would
    compile one specialisation per stream)."""
    return mix64(seed ^ mix64(np.uint64(stream_id) + _GOLDEN))


@kernel
def build_guide(cdf, guide):
    """guide[g] = smallest i with cdf[i] > g / guide.size (Chen & Asau 1974).

    The smallest i with u < cdf[i] is then found by scanning up from guide[int(u * size)]:
    O(1) expected steps, without the mispredicted branches of a binary search."""
    i = 0
    size = guide.size
    for g in range(size):
        while cdf[i] <= g / size:
            i += 1
        guide[g] = i


# -- sorting and selection (np.sort costs seconds of compile time; these a fraction) ----------
@kernel
def heapsort(a):
    """Sort ``a`` in place (no NaN): heap construction and sort-down share one sift loop."""
    n = a.size
    start = n // 2
    end = n
    while end > 1:
        if start > 0:
            start -= 1
        else:
            end -= 1
            a[0], a[end] = a[end], a[0]
        root = start
        while True:
            c = 2 * root + 1
            if c >= end:
                break
            if c + 1 < end and a[c] < a[c + 1]:
                c += 1
            if a[root] < a[c]:
                a[root], a[c] = a[c], a[root]
                root = c
            else:
                break


@kernel
def quantile(a, q):
    """Linear-interpolation quantile (numpy's default, 'type 7') of ``a`` (no NaN).

    Reorders ``a`` in place: Hoare's quickselect (median-of-three pivot) puts the j-th
    smallest at a[j], the next order statistic is the minimum of a[j+1:]. O(n), no sort.
    """
    n = a.size
    pos = q * (n - 1)
    j = int(math.floor(pos))
    g = pos - j
    lo = 0
    hi = n - 1
    while hi > lo:
        mid = (lo + hi) >> 1
        if a[mid] < a[lo]:
            a[mid], a[lo] = a[lo], a[mid]
        if a[hi] < a[lo]:
            a[hi], a[lo] = a[lo], a[hi]
        if a[hi] < a[mid]:
            a[hi], a[mid] = a[mid], a[hi]
        pivot = a[mid]
        i = lo
        k = hi
        while i <= k:
            while a[i] < pivot:
                i += 1
            while pivot < a[k]:
                k -= 1
            if i <= k:
                a[i], a[k] = a[k], a[i]
                i += 1
                k -= 1
        if j <= k:
            hi = k
        elif j >= i:
            lo = i
        else:
            break
    below = a[j]
    if j + 1 >= n or g == 0.0:
        return below
    above = a[j + 1]
    for i in range(j + 2, n):
        if a[i] < above:
            above = a[i]
    if above == below:  # also keeps inf (inf - inf would be NaN)
        return below
    return below + g * (above - below)


# -- exact null distributions of the rank statistics -----------------------------------------
@kernel
def ks_exact_sf(n1, n2, h):
    """P(D >= h / lcm(n1, n2)) for the two-sided two-sample KS statistic D under H0.

    Lattice paths from (0, 0) to (m, n) (m >= n), one step per pooled observation; a path
    has D >= h/lcm when it touches |i*n/g - j*m/g| >= h (Hodges 1958). Q(i, j), the share of
    paths to (i, j) that have touched that boundary, is 1 on the boundary and
    Q(i, j) = (i Q(i-1, j) + j Q(i, j-1)) / (i + j) inside (Viehmann 2021, arXiv:2102.08037):
    convex combinations, so no overflow and no cancellation; the p-value is Q(m, n).
    One column is kept; the inside window slides up monotonically.
    """
    if h <= 0:
        return 1.0
    m, n = (n1, n2) if n1 >= n2 else (n2, n1)
    g = m
    b = n
    while b:
        g, b = b, g % b
    mg = m // g
    ng = n // g
    col = np.empty(n + 1)
    hi = min((h - 1) // mg, n)  # column 0: inside while j*mg < h
    for j in range(n + 1):
        col[j] = 0.0 if j <= hi else 1.0
    lo = 0
    for i in range(1, m + 1):
        # inside: i*ng - h < j*mg < i*ng + h
        new_lo = max((i * ng - h) // mg + 1, 0)
        new_hi = min((i * ng + h - 1) // mg, n)
        if new_lo > new_hi:
            return 1.0
        for j in range(lo, new_lo):
            col[j] = 1.0
        prev = 1.0
        fi = float(i)
        for j in range(new_lo, new_hi + 1):
            w = 1.0 / (fi + j)  # off the dependency chain through prev
            v = (fi * col[j] + j * prev) * w
            col[j] = v
            prev = v
        lo = new_lo
    return col[n]


@kernel
def mwu_exact_cdf(n1, n2, kmax):
    """P(U <= kmax) for the Mann-Whitney U of samples of sizes n1, n2 without ties under H0.

    The counts of U are the coefficients of the Gaussian binomial [n1+n2 choose m]_q,
    m = min(n1, n2), built as prod_{i<=m} (1 - q^(n+i)) / (1 - q^i) truncated after q^kmax,
    rescaled to probabilities after each factor: O(m * kmax).
    """
    m = min(n1, n2)
    n = max(n1, n2)
    if kmax < 0:
        return 0.0
    if kmax >= m * n:
        return 1.0
    c = np.empty(kmax + 1)
    for k in range(kmax + 1):
        c[k] = 0.0
    c[0] = 1.0
    for i in range(1, m + 1):
        s = n + i
        for k in range(kmax, s - 1, -1):
            c[k] -= c[k - s]
        for k in range(i, kmax + 1):
            c[k] += c[k - i]
        f = i / (n + i)
        for k in range(kmax + 1):
            c[k] *= f
    total = 0.0
    for k in range(kmax + 1):
        total += c[k]
    return min(max(total, 0.0), 1.0)


# -- bootstrap median: law of the median's order-statistic index ------------------------------
@kernel
def boot_table(n, cdf, stay, first, guide):
    """Law of the bootstrap median's indices into the sorted sample of size ``n``.

    A resample draws n indices uniformly; C_a, the number of draws <= a, is Binomial(n,
    (a+1)/n). The k-th smallest drawn index J1 (k = (n+1)//2) has cdf[a] = P(J1 <= a) =
    P(C_a >= k). For an even n the median also needs J2, the (k+1)-th smallest: stay[a] =
    P(J2 = a | J1 = a) = 1 - (P(C_a = k) - P(C_{a-1} = k) ((n-a-1)/(n-a))^(n-k)) / P(J1 = a);
    otherwise C_a = k and J2 - a - 1 is the minimum T of the n - k draws above a, uniform on
    the m = n-1-a indices above: first[m] = P(T = 0) = 1 - (1 - 1/m)^(n-k), and given T >= s,
    T - s is such a minimum over m - s indices. Binomial tails are summed from k in the
    direction in which the terms decrease, until a term is below 1e-17 of the sum.
    """
    k = (n + 1) // 2
    logc = math.lgamma(n + 1.0) - math.lgamma(k + 1.0) - math.lgamma(n - k + 1.0)
    even = n % 2 == 0
    prev_cdf = 0.0
    prev_pk = 0.0
    for a in range(n):
        j = a + 1  # C_a ~ Binomial(n, j / n)
        if j == n:
            tail = 1.0
            pk = 1.0 if k == n else 0.0
        else:
            pk = math.exp(logc + k * math.log(j / n) + (n - k) * math.log((n - j) / n))
            odds = j / (n - j)
            t = pk
            i = k
            if k * n >= (n + 1) * j - n:  # k >= (n + 1)p - 1: terms decrease upwards
                tail = pk
                while i < n:
                    t *= (n - i) / (i + 1) * odds
                    i += 1
                    tail += t
                    if t <= 1e-17 * tail:
                        break
            else:  # terms decrease downwards: 1 - P(C_a <= k - 1)
                s = 0.0
                while i > 0:
                    t *= i / (n - i + 1) / odds
                    i -= 1
                    s += t
                    if t <= 1e-17 * s:
                        break
                tail = 1.0 - s
        tail = min(max(tail, prev_cdf), 1.0)
        cdf[a] = tail
        if even:
            pm = tail - prev_cdf
            q = 1.0
            if pm > 0.0:
                q = 1.0 - (pk - prev_pk * ((n - a - 1) / (n - a)) ** (n - k)) / pm
                q = min(max(q, 0.0), 1.0)
            stay[a] = q
            m = a  # first[] is indexed by m, the number of indices above J1
            first[m] = 1.0 - (1.0 - 1.0 / m) ** (n - k) if m > 0 else 1.0
        prev_cdf = tail
        prev_pk = pk
    cdf[n - 1] = 1.0
    build_guide(cdf, guide)


@kernel
def boot_medians(xs, z, out):
    """Fill ``out`` with the medians of bootstrap resamples of the sorted sample ``xs``, drawn
    from the exact law of the median's indices (boot_table) with the stream starting at ``z``.
    Returns the final stream state."""
    n = xs.size
    cdf = np.empty(n)
    stay = np.empty(n)
    first = np.empty(n)
    guide = np.empty(n, dtype=np.int64)
    boot_table(n, cdf, stay, first, guide)
    even = n % 2 == 0
    for b in range(out.size):
        z += _GOLDEN
        u = unit(z)
        j1 = guide[int(u * n)]
        while u >= cdf[j1]:
            j1 += 1
        v = xs[j1]
        if even:
            z += _GOLDEN
            if unit(z) >= stay[j1]:
                m = n - j1 - 1  # J2 - j1 - 1: minimum of n/2 uniform draws on {0..m-1}
                t = 0
                while True:
                    z += _GOLDEN
                    if unit(z) < first[m - t]:  # first[1] == 1 ends the walk
                        break
                    t += 1
                v = 0.5 * (v + xs[j1 + 1 + t])
        out[b] = v
    return z


# -- permutation test: law of the permuted medians' positions --------------------------------
@kernel
def perm_table(nt, nc, cdf, guide):
    """cdf[p] = P(the target median's k-th order statistic sits at pooled position <= p).

    The target is a uniformly random nt-subset of the N = nt + nc pooled positions; its k-th
    smallest (k = (nt+1)//2) is at p with probability C(p, k-1) C(N-1-p, nt-k) / C(N, nt)
    (negative hypergeometric). Weights by the ratio recurrence, rescaled against overflow.
    """
    big_n = nt + nc
    k = (nt + 1) // 2
    lo = k - 1
    hi = big_n - 1 - (nt - k)
    for p in range(big_n):
        cdf[p] = 0.0
    cdf[lo] = 1.0
    for p in range(lo, hi):
        w = cdf[p] * (p + 1.0) / (p + 2.0 - k) * (big_n - 1.0 - p - (nt - k)) / (big_n - 1.0 - p)
        if w > 1e250:
            for q in range(lo, p + 1):
                cdf[q] *= 1e-250
            w *= 1e-250
        cdf[p + 1] = w
    total = 0.0
    for p in range(lo, big_n):
        total += cdf[p]
        cdf[p] = total
    for p in range(lo, big_n):
        cdf[p] /= total
    cdf[big_n - 1] = 1.0
    build_guide(cdf, guide)


@kernel
def perm_medians(zs, nt, z, out_t, out_c):
    """Fill ``out_t``, ``out_c`` with the medians of the target (``nt`` values) and the control
    (the rest) under random relabellings of the pooled sorted sample ``zs``, drawing from the
    stream starting at ``z``. Returns the final stream state.

    Draw the position P of the target's k-th smallest from perm_table's law. Given P, the k-1
    other targets below P and the nt-k above are uniformly placed on each side, independently,
    so the control order statistics (and the target's (k+1)-th for an even nt) are found by
    sequential sampling walking away from P: the walk ends where the control median is,
    O(sqrt(N)) steps under the null. Each step is a Bernoulli(c / m) decided on 32 random bits
    (``u32 * m < c * 2**32``, two steps per 64-bit draw, twice as fast as a double): the
    probability is off by less than 2**-32 per step, some 1e-8 per relabelling in total
    variation, far below any Monte Carlo error.
    """
    big_n = zs.size
    nc = big_n - nt
    cdf = np.empty(big_n)
    guide = np.empty(big_n, dtype=np.int64)
    perm_table(nt, nc, cdf, guide)
    kt = (nt + 1) // 2
    kc = (nc + 1) // 2
    even_t = nt % 2 == 0
    even_c = nc % 2 == 0
    bits = np.uint64(0)  # walk steps take 32-bit halves of a 64-bit draw, two per draw
    have = 0
    for b in range(out_t.size):
        z += _GOLDEN
        u = unit(z)
        p = guide[int(u * big_n)]
        while u >= cdf[p]:
            p += 1
        left_t = kt - 1
        left_c = p - left_t
        c_lo = -1  # positions of the control's kc-th and (kc+1)-th smallest
        c_hi = -1
        if kc <= left_c:
            need = left_c - kc + 1  # rank of the kc-th control counted from p-1 downwards
            tt = left_t
            cc = left_c
            found = 0
            pos = p - 1
            while found < need:
                if have == 0:
                    z += _GOLDEN
                    bits = mix64(z)
                    have = 2
                u32 = bits & _LOW32
                bits >>= _SH32
                have -= 1
                # a control with probability cc / (tt + cc); counters updated without a
                # branch (a 50/50 branch mispredicts every other step)
                ic = int(u32 * np.uint64(tt + cc) < (np.uint64(cc) << _SH32))
                found += ic
                cc -= ic
                tt -= 1 - ic
                if (ic == 1) & even_c & (found == need - 1):
                    c_hi = pos
                pos -= 1
            c_lo = pos + 1
        r_lo = kc - left_c if kc > left_c else 0  # ranks among controls right of p (0: none)
        r_hi = kc + 1 - left_c if (even_c and kc + 1 > left_c) else 0
        need_c = max(r_lo, r_hi)
        t_hi = -1
        if even_t or need_c > 0:
            tt = nt - kt
            cc = big_n - 1 - p - tt
            fc = 0
            pos = p + 1
            while ((t_hi < 0) & even_t) | (fc < need_c):
                if have == 0:
                    z += _GOLDEN
                    bits = mix64(z)
                    have = 2
                u32 = bits & _LOW32
                bits >>= _SH32
                have -= 1
                it = int(u32 * np.uint64(tt + cc) < (np.uint64(tt) << _SH32))  # a target
                ic = 1 - it
                if (it == 1) & (t_hi < 0):
                    t_hi = pos
                tt -= it
                cc -= ic
                fc += ic
                if (ic == 1) & (fc == r_lo):
                    c_lo = pos
                if (ic == 1) & (fc == r_hi):
                    c_hi = pos
                pos += 1
        out_t[b] = 0.5 * (zs[p] + zs[t_hi]) if even_t else zs[p]
        out_c[b] = 0.5 * (zs[c_lo] + zs[c_hi]) if even_c else zs[c_lo]
    return z


# -- one pair --------------------------------------------------------------------------------
@kernel
def pair_stats(x, y, what, n_boot, n_perm, confidence_level, seed, pair, out):
    """Every statistic of the pair (target ``x``, control ``y``) selected by ``what``.

    ``out`` (length N_OUT) is filled with NaN first; fields not computed stay NaN. Division
    by a zero median is spelled out: Numba would raise where IEEE gives inf or NaN.
    """
    for f in range(out.size):
        out[f] = np.nan
    n1 = x.size
    n2 = y.size
    xs = np.empty(n1)
    ys = np.empty(n2)
    for i in range(n1):
        xs[i] = x[i]
    for i in range(n2):
        ys[i] = y[i]
    heapsort(xs)
    heapsort(ys)
    k1 = (n1 - 1) // 2
    k2 = (n2 - 1) // 2
    med_t = xs[k1] if n1 % 2 == 1 else 0.5 * (xs[k1] + xs[k1 + 1])
    med_c = ys[k2] if n2 % 2 == 1 else 0.5 * (ys[k2] + ys[k2 + 1])

    if what & (DO_KS | DO_MWU):
        g = n1
        b = n2
        while b:
            g, b = b, g % b
        n1g = n1 // g
        n2g = n2 // g
        hmax = 0  # max |F1 - F2| * lcm, exact in integers
        dmax = 0.0  # the same in floating point, as scipy computes it
        u1 = 0.0
        tie_term = 0.0
        i = 0
        j = 0
        while i < n1 or j < n2:
            v = xs[i] if (j >= n2 or (i < n1 and xs[i] <= ys[j])) else ys[j]
            i0 = i
            j0 = j
            while i < n1 and xs[i] == v:
                i += 1
            while j < n2 and ys[j] == v:
                j += 1
            cx = i - i0
            cy = j - j0
            u1 += cx * j0 + 0.5 * cx * cy
            t = float(cx + cy)
            tie_term += t * t * t - t
            hmax = max(hmax, abs(i * n2g - j * n1g))
            dmax = max(dmax, abs(i / n1 - j / n2))
        if what & DO_KS:
            exact = False
            p = np.nan
            if max(n1, n2) <= KS_MAX_EXACT_N:
                dmax = hmax * 1.0 / (n1g * n2)  # scipy reports D on the lattice, h / lcm
                p = ks_exact_sf(n1, n2, hmax)
                exact = 0.0 <= p <= 1.0
            out[OUT_KS_D] = dmax
            out[OUT_KS_EXACT] = 1.0 if exact else 0.0
            if exact:
                out[OUT_KS_P] = p
        if what & DO_MWU:
            nn = n1 * n2
            u = max(u1, nn - u1)
            if (n1 > MWU_MAX_EXACT_N and n2 > MWU_MAX_EXACT_N) or tie_term > 0.0:
                n = n1 + n2
                var = nn / 12.0 * ((n + 1.0) - tie_term / (n * (n - 1.0)))
                num = u - nn / 2.0 - 0.5  # continuity correction
                if var > 0.0:
                    z = num / math.sqrt(var)
                elif var == 0.0:
                    z = np.nan if num == 0.0 else (np.inf if num > 0.0 else -np.inf)
                else:
                    z = np.nan
                # 2 * ndtr(-z), with Cephes' split between erf and erfc (scipy.special.ndtr)
                w = -z * 0.7071067811865476
                if abs(w) < 0.7071067811865476:
                    p = 1.0 + math.erf(w)
                else:
                    p = math.erfc(abs(w))
                    if w > 0.0:
                        p = 2.0 - p
                out[OUT_MWU_EXACT] = 0.0
            else:
                p = 2.0 * mwu_exact_cdf(n1, n2, int(nn - u))
                out[OUT_MWU_EXACT] = 1.0
            out[OUT_MWU_U] = u1
            out[OUT_MWU_P] = min(p, 1.0)

    if what & DO_MEANS:
        mt = 0.0
        for v in x:
            mt += v
        mt /= n1
        mc = 0.0
        for v in y:
            mc += v
        mc /= n2
        big = max(mt, mc)
        out[OUT_MEAN_T] = mt
        out[OUT_MEAN_C] = mc
        out[OUT_AREA] = abs(mt - mc) / big if big > 0.0 else 0.0

    if what & DO_BOOT:
        if med_c != 0.0:
            out[OUT_RATIO] = med_t / med_c
        elif med_t != 0.0:
            out[OUT_RATIO] = np.inf
        if n_boot > 0:
            mts = np.empty(n_boot)
            mcs = np.empty(n_boot)
            boot_medians(xs, stream_start(seed, 4 * pair + STREAM_BOOT_TARGET), mts)
            boot_medians(ys, stream_start(seed, 4 * pair + STREAM_BOOT_CONTROL), mcs)
            r = mts  # ratios overwrite the target medians
            has_nan = False
            for b in range(n_boot):
                mt = mts[b]
                mc = mcs[b]
                if mc != 0.0:
                    r[b] = mt / mc
                elif mt != 0.0:
                    r[b] = np.inf
                else:
                    has_nan = True
            if not has_nan:
                alpha = (1.0 - confidence_level) / 2.0
                out[OUT_CI_LO] = quantile(r, alpha)
                out[OUT_CI_HI] = quantile(r, 1.0 - alpha)

    if what & DO_PERM:
        obs = math.log1p(med_t) - math.log1p(med_c)
        out[OUT_PERM_STAT] = obs
        if n_perm > 0:
            zs = np.empty(n1 + n2)
            i = 0
            j = 0
            for k in range(n1 + n2):
                if j >= n2 or (i < n1 and xs[i] <= ys[j]):
                    zs[k] = xs[i]
                    i += 1
                else:
                    zs[k] = ys[j]
                    j += 1
            mts = np.empty(n_perm)
            mcs = np.empty(n_perm)
            perm_medians(zs, n1, stream_start(seed, 4 * pair + STREAM_PERM), mts, mcs)
            cut = abs(obs) - _EPS100 * abs(obs)
            # |log1p(a) - log1p(b)| >= cut decided on (1+a)/(1+b) against exp(cut) with a 1e-12
            # margin (far above the rounding of the logs); log1p only inside the margin
            e_hi = math.exp(cut) * (1.0 + 1e-12)
            e_lo = math.exp(cut) * (1.0 - 1e-12)
            count = 0
            for b in range(n_perm):
                at = 1.0 + mts[b]
                ac = 1.0 + mcs[b]
                if at >= e_hi * ac or ac >= e_hi * at:
                    count += 1
                elif at > e_lo * ac or ac > e_lo * at:
                    if abs(math.log1p(mts[b]) - math.log1p(mcs[b])) >= cut:
                        count += 1
            out[OUT_PERM_P] = (count + 1.0) / (n_perm + 1.0)


@parallel_kernel
def pairs_stats(xv, x_off, yv, y_off, min_size, what, n_boot, n_perm, confidence_level, seed,
                out):
    """pair_stats of every pair: pair i is ``xv[x_off[i]:x_off[i+1]]`` against
    ``yv[y_off[i]:y_off[i+1]]``, results in ``out[i]``. The only entry point from Python (one
    compiled specialisation); a pair with fewer than ``min_size`` values on a side gets a NaN
    row."""
    for i in prange(out.shape[0]):
        pair = np.int64(i)
        x = xv[x_off[pair]:x_off[pair + 1]]
        y = yv[y_off[pair]:y_off[pair + 1]]
        row = out[pair]
        if x.size < min_size or y.size < min_size:
            for f in range(row.size):
                row[f] = np.nan
        else:
            pair_stats(x, y, what, n_boot, n_perm, confidence_level, seed, pair, row)
