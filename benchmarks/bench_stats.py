"""Throughput of ``compare_pairs`` against scipy.stats doing the same work, in one run.

Usage::

    python benchmarks/bench_stats.py [--pairs 10000] [--scipy-pairs 100] [--seed 1]
                                     [--no-compile] [--json out.json]

Workload: ``--pairs`` target/control pairs of goodput samples (bit/s), each sample 50-300 values
(gamma-distributed, seeded), ``n_resamples=2000`` bootstrap resamples and
``n_permutations=2000`` permutations per pair (compare_pairs' defaults).

* ours: ``compare_pairs`` over all pairs, with 1 Numba thread and with all threads (the best of
  ``--repeat`` runs each, after a warm-up on a few pairs so that the compile or cache load is not
  timed). Per pair: KS (exact p), Mann-Whitney U, Wehe area, ratio of medians with percentile
  bootstrap CI, permutation p-value of the log median ratio.
* scipy: on the first ``--scipy-pairs`` pairs, ``ks_2samp`` + ``mannwhitneyu`` + ``bootstrap``
  (percentile, 2000 resamples, vectorised statistic), scaled to 1,000 pairs; and the same plus
  ``permutation_test`` (2000 resamples, vectorised), which is what compare_pairs computes.
* cold compile: one ``compare_pairs`` call in a fresh interpreter with an empty
  ``NUMBA_CACHE_DIR`` (wall and CPU seconds), and with the warm cache.

Target (issue): well under 1 s per 1,000 pairs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TARGET_S_PER_1000 = 1.0
N_RESAMPLES = 2000

_COMPILE_SNIPPET = """
import time, numpy as np
w, c = time.perf_counter(), time.process_time()
from keepiton_throttle.stats import compare_pairs
compare_pairs([np.arange(60.0)], [np.arange(70.0) + 0.5], rng=1)
print(time.perf_counter() - w, time.process_time() - c)
"""


def make_pairs(n: int, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    ts = [rng.gamma(2.0, 2e6, rng.integers(50, 301)) for _ in range(n)]
    cs = [rng.gamma(2.0, 2.2e6, rng.integers(50, 301)) for _ in range(n)]
    return ts, cs


def time_ours(ts: list[np.ndarray], cs: list[np.ndarray], threads: int, repeat: int
              ) -> tuple[float, float]:
    """Best (wall, CPU) seconds of ``repeat`` runs."""
    import numba

    from keepiton_throttle.stats import compare_pairs

    numba.set_num_threads(threads)
    compare_pairs(ts[:8], cs[:8], rng=0)
    best = (float("inf"), float("inf"))
    for _ in range(repeat):
        w, c = time.perf_counter(), time.process_time()
        compare_pairs(ts, cs, n_resamples=N_RESAMPLES, n_permutations=N_RESAMPLES, rng=1)
        best = min(best, (time.perf_counter() - w, time.process_time() - c))
    return best


def time_scipy(ts: list[np.ndarray], cs: list[np.ndarray], *, permutations: bool
               ) -> tuple[float, float]:
    import scipy.stats as ss

    def ratio(a: np.ndarray, b: np.ndarray, axis: int) -> np.ndarray:
        return np.median(a, axis=axis) / np.median(b, axis=axis)

    def log_ratio(a: np.ndarray, b: np.ndarray, axis: int) -> np.ndarray:
        return np.log1p(np.median(a, axis=axis)) - np.log1p(np.median(b, axis=axis))

    rng = np.random.default_rng(1)
    w, cpu = time.perf_counter(), time.process_time()
    for t, c in zip(ts, cs, strict=True):
        ss.ks_2samp(t, c)
        ss.mannwhitneyu(t, c)
        ss.bootstrap((t, c), ratio, method="percentile", n_resamples=N_RESAMPLES,
                     vectorized=True, rng=rng)
        if permutations:
            ss.permutation_test((t, c), log_ratio, n_resamples=N_RESAMPLES, vectorized=True,
                                rng=rng)
    return time.perf_counter() - w, time.process_time() - cpu


def cold_compile() -> dict[str, float]:
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        for label in ("cold", "warm"):
            r = subprocess.run([sys.executable, "-c", _COMPILE_SNIPPET], env=env, check=True,
                               capture_output=True, text=True, cwd=Path(__file__).parents[1])
            wall, cpu = map(float, r.stdout.split())
            out[f"{label}_wall_s"] = wall
            out[f"{label}_cpu_s"] = cpu
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=10_000)
    ap.add_argument("--scipy-pairs", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-compile", action="store_true", help="skip the cold-compile run")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import numba

    ts, cs = make_pairs(args.pairs, args.seed)
    all_threads = int(numba.config.NUMBA_NUM_THREADS)  # type: ignore[attr-defined]
    per_k = 1000.0 / args.pairs
    res: dict[str, Any] = {"pairs": args.pairs, "threads": all_threads,
                           "mean_size": float(np.mean([t.size for t in ts + cs])),
                           "cpus": os.cpu_count(), "loadavg": os.getloadavg()}
    res["ours_1_thread"] = [v * per_k for v in time_ours(ts, cs, 1, args.repeat)]
    res["ours_all_threads"] = [v * per_k for v in time_ours(ts, cs, all_threads, args.repeat)]
    sk = 1000.0 / args.scipy_pairs
    sts, scs = ts[: args.scipy_pairs], cs[: args.scipy_pairs]
    res["scipy_ks_mwu_boot"] = [v * sk for v in time_scipy(sts, scs, permutations=False)]
    res["scipy_ks_mwu_boot_perm"] = [v * sk for v in time_scipy(sts, scs, permutations=True)]
    if not args.no_compile:
        res["compile"] = cold_compile()

    print(f"compare_pairs: {args.pairs} pairs, 50-300 values per sample (mean "
          f"{res['mean_size']:.0f}), {N_RESAMPLES} bootstrap resamples + {N_RESAMPLES} "
          f"permutations per pair; {res['cpus']} CPUs, load average "
          f"{res['loadavg'][0]:.1f} at start")
    print("wall: elapsed seconds; CPU: process CPU seconds (all threads), unaffected by other "
          "load on the machine")
    print(f"{'per 1,000 pairs':50s}{'wall s':>9s}{'CPU s':>9s}{'wall / ours 1 thr':>19s}"
          f"{'wall / ours all':>17s}")
    rows = [("ours, 1 thread", res["ours_1_thread"]),
            (f"ours, all threads ({all_threads})", res["ours_all_threads"]),
            (f"scipy ks+mwu+bootstrap ({args.scipy_pairs} pairs, scaled)",
             res["scipy_ks_mwu_boot"]),
            (f"scipy ks+mwu+bootstrap+permutation ({args.scipy_pairs})",
             res["scipy_ks_mwu_boot_perm"])]
    for name, (wall, cpu) in rows:
        print(f"{name:50s}{wall:9.3f}{cpu:9.3f}{wall / res['ours_1_thread'][0]:19.1f}"
              f"{wall / res['ours_all_threads'][0]:17.1f}")
    if "compile" in res:
        c = res["compile"]
        print(f"first call, empty NUMBA_CACHE_DIR (compiles): {c['cold_wall_s']:.1f} s wall, "
              f"{c['cold_cpu_s']:.1f} s CPU; warm cache: {c['warm_wall_s']:.2f} s wall, "
              f"{c['warm_cpu_s']:.2f} s CPU (interpreter start-up excluded, imports included)")
    ok = res["ours_all_threads"][0] < TARGET_S_PER_1000
    print(f"target (< {TARGET_S_PER_1000:.0f} s per 1,000 pairs): {'met' if ok else 'NOT met'}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
