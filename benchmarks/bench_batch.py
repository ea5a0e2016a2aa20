#!/usr/bin/env python3
"""Batch throughput of ``analyze`` with 1 and with N worker processes, and peak RSS per worker.

Generates a set of captures (``gen_capture.py``: TCP/IPv6/QUIC-like bulk traffic, headers only by
default) totalling ``--total`` bytes (default 2 GB in 16 files) under ``benchmarks/_out/batch/``,
then runs the batch engine (``keepiton_throttle.batch.run_batch``, what ``throttle-check analyze``
runs) over all of them in a fresh process per run: ``--jobs 1`` (in process) and ``--jobs N``
(a pool of N workers), alternating, best of ``--repeat``. Reported per configuration: wall time
of the batch (imports excluded), MB/s and packets/s, the speed-up over one job, and the largest
peak RSS of a process that analysed a file (``ru_maxrss``, reported by each worker with its
result). The generated files are deleted at the end unless ``--keep`` (kept files are reused
by the next run with the same parameters).

The issue's target on a 2-core machine: ``--jobs 2`` at least 1.7x ``--jobs 1`` on >= 2 GB, and
every worker below 400 MB. Other processes on the machine distort the ratio: the load average is
printed with the table, and "CPU busy" (CPU seconds spent analysing files, as the workers
report them, per wall second of the batch) shows how many cores the run actually got.

Usage::

    python benchmarks/bench_batch.py                    # 2 GB in 16 files, jobs 1 vs all cores
    python benchmarks/bench_batch.py --total 200MB --files 4 --repeat 1   # a smoke run
    python benchmarks/bench_batch.py --big 1GB          # also: one 1 GB file, jobs 1 (RSS probe)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from gen_capture import generate, parse_size  # noqa: E402

OUT = HERE / "_out" / "batch"
TARGET_RATIO = 1.7
TARGET_RSS_MB = 400.0


def _gen_one(args: tuple[str, int, int, int]) -> str:
    path, size, snaplen, seed = args
    if not Path(path).exists():
        generate(path, size=size, snaplen=snaplen, seed=seed)
    return path


def make_files(total: int, n: int, snaplen: int, jobs: int) -> list[str]:
    OUT.mkdir(parents=True, exist_ok=True)
    each = total // n
    specs = [(str(OUT / f"batch-{i:02d}-{each}B-s{snaplen}-seed{1000 + i}.pcap"), each, snaplen, 1000 + i)
             for i in range(n)]
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(_gen_one, specs))


def worker(jobs: int, paths: list[str]) -> dict[str, Any]:
    """In a fresh process: the batch over ``paths`` with ``jobs`` workers."""
    from keepiton_throttle.analysis import resolve_roles
    from keepiton_throttle.batch import run_batch

    roles = resolve_roles()
    t0 = time.perf_counter()
    res = run_batch(paths, roles, jobs=jobs)
    seconds = time.perf_counter() - t0
    if res.errors:
        raise SystemExit(f"batch failed on {res.errors[0].path}: {res.errors[0].error}")
    return {
        "jobs": jobs,
        "seconds": seconds,
        "files": len(res.files),
        "bytes": sum(f.size for f in res.files),
        "packets": sum(f.evidence.capture.packets for f in res.files if f.evidence is not None),
        "peak_rss_kb": res.peak_rss_kb,
        "peak_rss_kb_each": sorted({f.peak_rss_kb for f in res.files if f.peak_rss_kb}),
        "cpu_seconds": sum(f.cpu_s or 0.0 for f in res.files),
    }


def run(jobs: int, paths: list[str]) -> dict[str, Any]:
    """One batch in a fresh process."""
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, "--worker", str(jobs), *paths],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"worker failed:\n{out.stderr}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["process_seconds"] = time.perf_counter() - t0
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--total", default="2GB", help="bytes of captures in total (default 2GB)")
    ap.add_argument("--files", type=int, default=16, help="number of captures (default 16)")
    ap.add_argument("--snaplen", type=int, default=128, help="snaplen of the captures (default 128)")
    ap.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)),
                    help="workers of the parallel run (default: all cores)")
    ap.add_argument("--repeat", type=int, default=2, help="runs per configuration; the best counts")
    ap.add_argument("--big", help="also analyse one capture of this size with --jobs 1 (RSS probe)")
    ap.add_argument("--keep", action="store_true", help="keep the generated captures")
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    ap.add_argument("paths", nargs="*", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker is not None:
        print(json.dumps(worker(a.worker, a.paths)))
        return 0

    total = parse_size(a.total)
    t = time.perf_counter()
    paths = make_files(total, a.files, a.snaplen, a.jobs)
    size = sum(os.path.getsize(p) for p in paths)
    print(f"captures: {len(paths)} files, {size / 1e9:.2f} GB (snaplen {a.snaplen}) in {OUT} "
          f"[{time.perf_counter() - t:.0f} s]", file=sys.stderr)
    big = None
    if a.big:
        big = str(OUT / f"big-{parse_size(a.big)}B-s{a.snaplen}-seed7.pcap")
        _gen_one((big, parse_size(a.big), a.snaplen, 7))
    try:
        run(1, paths[:1])  # loads (or compiles) the Numba cache outside the timed runs
        load_before = os.getloadavg()
        results: dict[int, list[dict[str, Any]]] = {1: [], a.jobs: []}
        for _ in range(a.repeat):
            for jobs in (1, a.jobs):
                r = run(jobs, paths)
                results[jobs].append(r)
                print(f"  jobs {jobs}: {r['seconds']:.1f} s, peak RSS {r['peak_rss_kb'] / 1024:.0f} MB",
                      file=sys.stderr)
        probe = run(1, [big]) if big else None
        load_after = os.getloadavg()
    finally:
        if not a.keep:
            shutil.rmtree(OUT, ignore_errors=True)

    best = {j: min(rs, key=lambda r: r["seconds"]) for j, rs in results.items()}
    base = best[1]["seconds"]
    rows = []
    print("")
    print(f"{'configuration':<22}{'wall s':>8}{'MB/s':>9}{'Mpkt/s':>9}{'ratio':>8}{'peak RSS/worker':>17}"
          f"{'CPU busy':>10}")
    for jobs, r in best.items():
        ratio = base / r["seconds"]
        rss = r["peak_rss_kb"] / 1024
        busy = r["cpu_seconds"] / r["seconds"]  # cores kept busy analysing files
        rows.append({**r, "ratio": ratio, "peak_rss_mb": rss, "cpu_busy": busy})
        print(f"{f'analyze --jobs {jobs}':<22}{r['seconds']:>8.1f}{r['bytes'] / 1e6 / r['seconds']:>9.0f}"
              f"{r['packets'] / 1e6 / r['seconds']:>9.2f}{ratio:>7.2f}x{rss:>14.0f} MB{busy:>10.2f}")
    if probe:
        rss = probe["peak_rss_kb"] / 1024
        print(f"{'1 file ' + a.big + ', jobs 1':<22}{probe['seconds']:>8.1f}"
              f"{probe['bytes'] / 1e6 / probe['seconds']:>9.0f}{probe['packets'] / 1e6 / probe['seconds']:>9.2f}"
              f"{'':>8}{rss:>14.0f} MB")
    print("")
    ratio = base / best[a.jobs]["seconds"]
    worst = max(r["peak_rss_mb"] for r in rows)
    print(f"{size / 1e9:.2f} GB in {len(paths)} files, {best[1]['packets']:,} packets; load average "
          f"{load_before[0]:.2f} before, {load_after[0]:.2f} after (1 min); 'CPU busy': CPU seconds "
          f"spent analysing files per wall second (at most {a.jobs} with {a.jobs} jobs: less means "
          f"other processes took the cores)")
    print(f"target: --jobs {a.jobs} >= {TARGET_RATIO}x --jobs 1: {ratio:.2f}x "
          f"[{'ok' if ratio >= TARGET_RATIO else 'MISSED'}]; peak RSS per worker < {TARGET_RSS_MB:.0f} MB: "
          f"{worst:.0f} MB [{'ok' if worst < TARGET_RSS_MB else 'MISSED'}]")
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": rows, "probe": probe, "bytes": size,
                                            "load": [load_before, load_after]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
