"""``throttle-check bench``: a profile of the device this runs on, for edge hardware.

What a small board (a router, a Raspberry Pi) can do matters before deploying a probe on it:
how long the first run compiles, how many packets per second it decodes and analyses on one
core and on all of them, with how much memory, and how fast it runs the statistics. Everything
is measured on a capture generated here (:func:`generate_capture`, seeded: TCP bulk downloads
with timestamps, headers only), so the command works from an installed package.

Every measurement runs in a fresh process: the Numba compile in a subprocess with an empty
temporary ``NUMBA_CACHE_DIR`` (cold) and then again with the cache it filled (cached);
throughput in spawned worker processes that first load every kernel from the cache on a small
capture; one of them then times each kind of work alone (one core), and finally all of them
start each run together on a barrier (all cores: every worker's packets over the span from the
first start to the last end). Each figure is the best of ``repeat`` runs.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click

from . import __version__

__all__ = ["BENCH_KEYS", "bench_command", "generate_capture", "run_bench"]

SCHEMA = "keepiton_throttle.bench/1"

#: The keys of ``bench --json``, with what each means (also the ``--help`` text).
BENCH_KEYS: dict[str, str] = {
    "schema": f"'{SCHEMA}'",
    "quick": "true with --quick",
    "software_version": "keepiton_throttle version",
    "cpu_model": "CPU model name (/proc/cpuinfo, else platform)",
    "cpu_cores": "logical CPUs of the machine",
    "cpu_usable": "CPUs this process may run on (workers in 'all cores')",
    "machine": "architecture (x86_64, aarch64, ...)",
    "python": "Python version",
    "numpy": "NumPy version",
    "numba": "Numba version",
    "numba_compile_scope": "kernels compiled cold: 'decode' (--quick) or 'all' (decode, flows, stats)",
    "numba_compile_cold_s": "first use with an empty Numba cache (compile), s",
    "numba_cached_s": "first use with that cache filled (load), s",
    "capture_packets": "packets of the generated capture",
    "capture_bytes": "bytes of the generated capture",
    "decode_pps_1core": "decode (reader + packet table), packets/s, one process",
    "decode_pps_all_cores": "decode, packets/s, one process per usable CPU together",
    "flows_pps_1core": "full flow analysis (decode + flows, RTT, goodput), packets/s, one process",
    "flows_pps_all_cores": "full flow analysis, packets/s, all usable CPUs",
    "native_available": "true when the native/ C reference decoder is built",
    "native_decode_pps_1core": "C reference decode, packets/s, one process (null if not built)",
    "native_decode_pps_all_cores": "C reference decode, packets/s, all usable CPUs (null if not built)",
    "peak_rss_mb": "peak resident memory of one process running decode and flow analysis, MB",
    "stats_pair_size": "values per side of each target/control pair",
    "stats_pairs_per_s_1core": "stats.compare_pairs pairs/s (KS, Mann-Whitney, bootstrap, permutation), 1 thread",
    "stats_pairs_per_s_all_cores": "stats.compare_pairs pairs/s, all Numba threads",
    "elapsed_s": "wall time of the whole benchmark, s",
}

QUICK_PACKETS = 200_000
FULL_PACKETS = 2_000_000
WARM_PACKETS = 2_000
STATS_PAIR_SIZE = 200
STATS_RESAMPLES = 2000  # the verdict's defaults (DetectionConfig.n_resamples, n_permutations)


# -- the capture ----------------------------------------------------------------------------------
def _record_dtype() -> Any:
    import numpy as np

    # one pcap record: header (16), Ethernet (14), IPv4 (20), TCP with NOP NOP timestamps (32)
    return np.dtype([
        ("ts_sec", "<u4"), ("ts_usec", "<u4"), ("caplen", "<u4"), ("wirelen", "<u4"),
        ("eth_dst", "u1", (6,)), ("eth_src", "u1", (6,)), ("ethertype", ">u2"),
        ("ip_vhl", "u1"), ("ip_tos", "u1"), ("ip_len", ">u2"), ("ip_id", ">u2"), ("ip_frag", ">u2"),
        ("ip_ttl", "u1"), ("ip_proto", "u1"), ("ip_sum", ">u2"), ("ip_src", ">u4"), ("ip_dst", ">u4"),
        ("sport", ">u2"), ("dport", ">u2"), ("seq", ">u4"), ("ack", ">u4"), ("doff", "u1"),
        ("flags", "u1"), ("win", ">u2"), ("tcp_sum", ">u2"), ("urg", ">u2"),
        ("nop", "u1", (2,)), ("ts_kind", "u1"), ("ts_len", "u1"), ("tsval", ">u4"), ("tsecr", ">u4"),
    ])


_FLOW_STRIDE = 1000  # a new flow every 1000 packets on average ...
_FLOW_WINDOW = 32  # ... and each packet belongs to one of the 32 newest
_CHUNK = 65_536
_MSS = 1448
_T0_NS = 1_714_000_000 * 1_000_000_000


def generate_capture(path: str | os.PathLike[str], *, packets: int, seed: int = 0) -> int:
    """Write a classic pcap of ``packets`` packets of TCP bulk downloads; return its size.

    Each flow (IPv4, client port > 32767, server port 443): SYN, SYN/ACK, ACK, then two
    1448-byte data segments per delayed ACK, all with the timestamps option (RFC 7323).
    Inter-arrival times are exponential (mean 10 us); 32 flows run at once. Headers only (the
    payload is not captured, wire lengths are full), built with NumPy a chunk at a time.
    """
    import numpy as np

    if packets < 0:
        raise ValueError(f"packets must be >= 0, got {packets}")
    dt = _record_dtype()
    assert dt.itemsize == 82
    count = np.zeros(packets // _FLOW_STRIDE + _FLOW_WINDOW + 1, dtype=np.int64)
    t_ns = _T0_NS
    with open(path, "wb") as out:
        out.write(np.array([0xA1B2C3D4, 0x00040002, 0, 0, 128, 1], "<u4").tobytes())
        for c, start in enumerate(range(0, packets, _CHUNK)):
            n = min(_CHUNK, packets - start)
            rng = np.random.default_rng([seed, c])
            i = start + np.arange(n, dtype=np.int64)
            flow = i // _FLOW_STRIDE + rng.integers(0, _FLOW_WINDOW, n)
            ts = t_ns + np.cumsum(rng.exponential(10_000, n).astype(np.int64) + 1)
            t_ns = int(ts[-1])
            order = np.argsort(flow, kind="stable")
            fs = flow[order]
            uniq, first, counts = np.unique(fs, return_index=True, return_counts=True)
            j = np.empty(n, dtype=np.int64)
            j[order] = np.arange(n) - np.repeat(first, counts) + count[fs]
            count[uniq] += counts

            m = j - 3
            phase = np.where(m >= 0, m % 3, -1)
            data = (phase == 0) | (phase == 1)
            c2s = (j == 0) | (j == 2) | (phase == 2)
            d = (m // 3) * 2 + phase  # data segment index
            acked = (m // 3) * 2 + 2  # segments covered by this ACK
            h = (flow * 2654435761) & 0xFFFFFFFF
            cisn, sisn = h, (h * 40503) & 0xFFFFFFFF
            client = (10 << 24) | (h & 0xFFFFFF)
            server = np.where(h & 1, 0xC6336400, 0xCB007100) | (1 + (h >> 8) % 254)
            cport = 32768 + (h >> 4) % 28000
            seq = np.select([j == 0, j == 1, data], [cisn, sisn, sisn + 1 + d * _MSS], cisn + 1)
            ack = np.select([j == 0, j == 1, data], [0, cisn + 1, cisn + 1], sisn + 1 + acked * _MSS)
            ack = np.where(j == 2, sisn + 1, ack)
            payload = np.where(data, _MSS, 0)
            t_ms = (ts - _T0_NS) // 1_000_000
            rtt_ms = 5 + h % 100

            r = np.zeros(n, dtype=dt)
            r["ts_sec"] = ts // 1_000_000_000
            r["ts_usec"] = ts % 1_000_000_000 // 1000
            r["caplen"] = 66
            r["wirelen"] = 66 + payload
            r["eth_dst"] = np.where(c2s[:, None], [2, 0, 0, 0, 0xAB, 0xCD], [2, 0, 0, 0xC0, 0xFF, 0xEE])
            r["eth_src"] = np.where(c2s[:, None], [2, 0, 0, 0xC0, 0xFF, 0xEE], [2, 0, 0, 0, 0xAB, 0xCD])
            r["ethertype"] = 0x0800
            r["ip_vhl"] = 0x45
            r["ip_len"] = 52 + payload
            r["ip_id"] = (h + j) & 0xFFFF
            r["ip_frag"] = 0x4000
            r["ip_ttl"] = np.where(c2s, 64, 52)
            r["ip_proto"] = 6
            r["ip_src"] = np.where(c2s, client, server)
            r["ip_dst"] = np.where(c2s, server, client)
            r["sport"] = np.where(c2s, cport, 443)
            r["dport"] = np.where(c2s, 443, cport)
            r["seq"] = seq & 0xFFFFFFFF
            r["ack"] = ack & 0xFFFFFFFF
            r["doff"] = 8 << 4
            r["flags"] = np.select([j == 0, j == 1], [0x02, 0x12], 0x10)
            r["win"] = np.where(c2s, 2000, 501)
            r["nop"] = 1
            r["ts_kind"] = 8
            r["ts_len"] = 10
            r["tsval"] = (np.where(c2s, h, h >> 3) + t_ms) & 0xFFFFFFFF
            r["tsecr"] = np.where(j == 0, 0, (np.where(c2s, h >> 3, h) + t_ms - rtt_ms // 2) & 0xFFFFFFFF)
            out.write(r.tobytes())
    return os.path.getsize(path)


# -- measurements (each in its own process) -------------------------------------------------------
def _run_kind(kind: str, path: str) -> int:
    """Do one kind of work on a capture; return the capture records it covered."""
    if kind == "decode":
        from .sources.capture import CaptureReader

        with CaptureReader(path) as reader:
            for _ in reader:
                pass
            return reader.stats.records
    if kind == "flows":
        from .flows import FlowBuilder
        from .sources.capture import CaptureReader

        builder = FlowBuilder()
        with CaptureReader(path) as reader:
            # no decoding ahead: "1 core" is one thread, and "all cores" runs a process per core
            for chunk in reader:
                builder.add(chunk)
            builder.finish()
            return reader.stats.records
    if kind == "native":
        from .native import read_capture_native

        return read_capture_native(path)[1]
    raise ValueError(f"unknown kind {kind!r}")


def _stats_pairs(n_pairs: int, *, threads: int | None) -> float:
    import numba
    import numpy as np

    from .stats import compare_pairs

    numba.set_num_threads(threads or numba.config.NUMBA_NUM_THREADS)  # type: ignore[attr-defined]
    rng = np.random.default_rng(1)
    ts = [rng.lognormal(12, 0.5, STATS_PAIR_SIZE) for _ in range(n_pairs)]
    cs = [rng.lognormal(12.5, 0.5, STATS_PAIR_SIZE) for _ in range(n_pairs)]
    t0 = time.perf_counter()
    compare_pairs(ts, cs, n_resamples=STATS_RESAMPLES, n_permutations=STATS_RESAMPLES, rng=0)
    return n_pairs / (time.perf_counter() - t0)


def _peak_rss_mb() -> float | None:
    from .batch import _peak_rss_kb

    kb = _peak_rss_kb()
    return None if kb is None else kb / 1024


def _timed(kind: str, path: str) -> tuple[float, float, int]:
    t0 = time.perf_counter()
    n = _run_kind(kind, path)
    return t0, time.perf_counter(), n


def _worker(rank: int, conn: Any, barrier: Any, kinds: list[str], capture: str, warm: str,
            repeat: int, stats_pairs: int) -> None:
    """A measuring process. Every worker loads its kernels on a small capture; then worker 0
    alone times each kind (one core) and the statistics, and finally all workers time each kind
    together, starting every run on ``barrier`` (all cores)."""
    out: dict[str, Any] = {}
    try:
        for kind in kinds:
            _run_kind(kind, warm)
        if rank == 0:
            _stats_pairs(2, threads=None)
            for kind in kinds:
                out[f"one:{kind}"] = [_timed(kind, capture) for _ in range(repeat)]
                if kind == "flows":
                    out["peak_rss_mb"] = _peak_rss_mb()
            out["stats_1"] = _stats_pairs(stats_pairs, threads=1)
            out["stats_all"] = _stats_pairs(stats_pairs, threads=None)
        for kind in kinds:
            runs = []
            for _ in range(repeat):
                barrier.wait(timeout=900)
                runs.append(_timed(kind, capture))
            out[f"all:{kind}"] = runs
    except BaseException as exc:  # reported by the parent
        barrier.abort()  # the others must not wait for this one
        out["error"] = f"{type(exc).__name__}: {exc}"
    conn.send(out)
    conn.close()


def _measure(n_procs: int, kinds: list[str], capture: str, warm: str, repeat: int,
             stats_pairs: int) -> dict[str, Any]:
    """Run ``_worker`` in ``n_procs`` spawned processes; packets/s per kind (best run)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(n_procs)
    procs, conns = [], []
    for rank in range(n_procs):
        recv, send = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_worker,
                        args=(rank, send, barrier, kinds, capture, warm, repeat, stats_pairs))
        p.start()
        send.close()
        procs.append(p)
        conns.append(recv)
    results = []
    for recv in conns:
        try:
            results.append(recv.recv())
        except EOFError:
            results.append({"error": "measuring process died"})
    for p in procs:
        p.join()
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        raise RuntimeError(f"benchmark worker failed: {errors[0]}")

    def best(runs_per_worker: list[list[tuple[float, float, int]]]) -> float:
        rates = []
        for rep in range(repeat):
            runs = [w[rep] for w in runs_per_worker]
            span = max(e for _, e, _ in runs) - min(s for s, _, _ in runs)
            rates.append(sum(n for _, _, n in runs) / span if span > 0 else 0.0)
        return max(rates)

    out: dict[str, Any] = {}
    for kind in kinds:
        out[f"one:{kind}"] = best([results[0][f"one:{kind}"]])
        out[f"all:{kind}"] = best([r[f"all:{kind}"] for r in results])
    for key in ("peak_rss_mb", "stats_1", "stats_all"):
        out[key] = results[0][key]
    return out


_COMPILE_CHILD = "from keepiton_throttle.bench import _compile_child; _compile_child()"


def _compile_child() -> None:
    """In a subprocess: time the first use of the kernels of ``argv[1]`` on capture ``argv[2]``."""
    scope, path = sys.argv[1], sys.argv[2]
    from .flows import FlowBuilder  # noqa: F401 - imports are not compile time
    from .sources.capture import CaptureReader  # noqa: F401
    from .stats import compare_pairs  # noqa: F401

    t0 = time.perf_counter()
    _run_kind("decode", path)
    if scope == "all":
        _run_kind("flows", path)
        _stats_pairs(2, threads=None)
    print(json.dumps({"seconds": time.perf_counter() - t0}))


def _compile_times(scope: str, warm: str, workdir: str) -> tuple[float, float]:
    cache = os.path.join(workdir, "numba-cache")
    os.makedirs(cache)
    env = {**os.environ, "NUMBA_CACHE_DIR": cache}
    times = []
    for _ in range(2):  # cold (fills the empty cache), then cached
        res = subprocess.run([sys.executable, "-c", _COMPILE_CHILD, scope, warm], env=env,
                             capture_output=True, text=True, timeout=900)
        if res.returncode != 0:
            raise RuntimeError(f"compile-time subprocess failed: {res.stderr.strip().splitlines()[-1:]}")
        times.append(float(json.loads(res.stdout.strip().splitlines()[-1])["seconds"]))
    return times[0], times[1]


def cpu_model() -> str:
    """The CPU's model name as the kernel reports it (ARM boards: 'Model' or 'Hardware')."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    found: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "model", "hardware", "cpu model", "processor") and value.strip():
            found.setdefault(key, value.strip())
    for key in ("model name", "cpu model", "model", "hardware"):
        if key in found and not found[key].isdigit():
            return found[key]
    return platform.processor() or platform.machine() or "unknown"


def run_bench(*, quick: bool = False, packets: int | None = None, jobs: int | None = None,
              seed: int = 0) -> dict[str, Any]:
    """Measure this device; returns the dict of :data:`BENCH_KEYS`."""
    import numba
    import numpy

    from .batch import default_jobs
    from .native import available

    started = time.perf_counter()
    n_packets = packets if packets is not None else (QUICK_PACKETS if quick else FULL_PACKETS)
    procs = jobs or default_jobs()
    native = available()
    scope = "decode" if quick else "all"
    repeat = 3  # best of 3: a quick run's figures are short and other processes disturb them
    with tempfile.TemporaryDirectory(prefix="kt-bench-") as tmp:
        capture = os.path.join(tmp, "bench.pcap")
        warm = os.path.join(tmp, "warm.pcap")
        generate_capture(warm, packets=WARM_PACKETS, seed=seed + 1)
        cold, cached = _compile_times(scope, warm, tmp)
        size = generate_capture(capture, packets=n_packets, seed=seed)
        kinds = ["decode", "flows"] + (["native"] if native else [])
        m = _measure(procs, kinds, capture, warm, repeat, stats_pairs=16 if quick else 128)
    return {
        "schema": SCHEMA,
        "quick": quick,
        "software_version": __version__,
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_usable": default_jobs(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "numba": numba.__version__,
        "numba_compile_scope": scope,
        "numba_compile_cold_s": cold,
        "numba_cached_s": cached,
        "capture_packets": n_packets,
        "capture_bytes": size,
        "decode_pps_1core": m["one:decode"],
        "decode_pps_all_cores": m["all:decode"],
        "flows_pps_1core": m["one:flows"],
        "flows_pps_all_cores": m["all:flows"],
        "native_available": native,
        "native_decode_pps_1core": m["one:native"] if native else None,
        "native_decode_pps_all_cores": m["all:native"] if native else None,
        "peak_rss_mb": m["peak_rss_mb"],
        "stats_pair_size": STATS_PAIR_SIZE,
        "stats_pairs_per_s_1core": m["stats_1"],
        "stats_pairs_per_s_all_cores": m["stats_all"],
        "elapsed_s": time.perf_counter() - started,
    }


# -- command line ---------------------------------------------------------------------------------
def _pps(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v / 1e6:.2f} Mpkt/s" if v >= 1e6 else f"{v / 1e3:.0f} kpkt/s"


def _print_table(r: dict[str, Any]) -> None:
    cores = r["cpu_usable"]
    rows = [
        ("CPU", f"{r['cpu_model']}, {r['cpu_cores']} logical CPUs ({cores} usable), {r['machine']}"),
        ("Software", f"keepiton_throttle {r['software_version']}, Python {r['python']}, "
                     f"NumPy {r['numpy']}, Numba {r['numba']}"),
        ("Numba compile", f"{r['numba_compile_cold_s']:.1f} s cold ({r['numba_compile_scope']} kernels), "
                          f"{r['numba_cached_s']:.2f} s from the cache"),
        ("Capture", f"{r['capture_packets']:,} packets, {r['capture_bytes'] / 1e6:.1f} MB "
                    f"(generated TCP bulk, headers only)"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        click.echo(f"{k:<{width}}  {v}")
    click.echo("")
    head = f"{'':<22}{'1 core':>14}{f'{cores} cores':>14}"
    click.echo(head)
    for label, a, b in (
        ("decode", r["decode_pps_1core"], r["decode_pps_all_cores"]),
        ("full analysis (flows)", r["flows_pps_1core"], r["flows_pps_all_cores"]),
        ("native C decode", r["native_decode_pps_1core"], r["native_decode_pps_all_cores"]),
    ):
        click.echo(f"{label:<22}{_pps(a):>14}{_pps(b):>14}")
    click.echo(f"{'statistics pairs/s':<22}{r['stats_pairs_per_s_1core']:>14.1f}"
               f"{r['stats_pairs_per_s_all_cores']:>14.1f}")
    click.echo("")
    rss = r["peak_rss_mb"]
    click.echo(f"Peak memory: {'-' if rss is None else f'{rss:.0f} MB'} (one process, decode + flows)"
               + ("" if r["native_available"] else "; native/ not built (make -C native)"))
    click.echo(f"Took {r['elapsed_s']:.1f} s.")


_HELP = """Profile this device: CPU, Numba compile time, packets/s, memory, statistics speed.

\b
Generates a capture (TCP bulk downloads, headers only) in a temporary directory and measures,
each in fresh processes: the Numba compile with an empty cache (cold) and from the filled
cache; decode and full flow analysis in packets/s on one core and on every usable core; the
same for the native/ C reference decoder when it is built; peak memory; and statistics
(target/control pairs compared per second). --quick (under 30 s) uses 200,000 packets and
compiles only the decode kernels cold; the full run 2,000,000 packets. Best of 3 runs each.

\b
Keys of --json:
""" + "\n".join(f"  {k:<28} {v}" for k, v in BENCH_KEYS.items())


@click.command("bench", help=_HELP)
@click.option("--quick", is_flag=True, help="A short run (under 30 s).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object with the keys above.")
@click.option("--packets", type=click.IntRange(min=10_000), default=None,
              help="Packets in the generated capture [default: 2,000,000; 200,000 with --quick].")
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=None,
              help="Processes for 'all cores' [default: every usable CPU].")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the generated capture.")
def bench_command(quick: bool, as_json: bool, packets: int | None, jobs: int | None, seed: int) -> None:
    try:
        result = run_bench(quick=quick, packets=packets, jobs=jobs, seed=seed)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        raise click.ClickException(str(exc).splitlines()[0]) from None
    if as_json:
        click.echo(json.dumps(result, indent=1))
    else:
        _print_table(result)
