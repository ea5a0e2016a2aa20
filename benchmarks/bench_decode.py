#!/usr/bin/env python3
"""Decode throughput and peak memory of keepiton_throttle against its peers, in one run.

Every contender runs in its own process (this script re-invoked with ``--worker``, or the peer's
own program); its peak RSS is that process's ``ru_maxrss`` from ``os.wait4``. Packets per second
are measured inside the worker around the decode loop alone (interpreter start-up and imports
excluded), except for tshark and ``throttle-check inspect``, which are timed as whole processes.

Contenders (same generated capture, same fields: timestamps, lengths, addresses, ports, TTL,
protocol, TCP seq/ack/flags/window and options (MSS, window scale, timestamps, SACK), UDP length):

* ours: ``CaptureReader`` iterating all chunks. The first run is reported as it came (cold);
  then a warm-up, then the best of ``--repeat`` runs with the Numba cache warm, both per process
  (the first chunk pays the cache load) and in-process steady state (a second pass in the same
  process). One more run with ``NUMBA_CACHE_DIR`` pointing to an empty directory gives the
  compile time a new user pays once.
  A last row times our decode loop alone over a mapping already faulted in, as C's warm row.
* ``native/kt_bench`` (the C99 reference), built with ``make -C native`` if missing, two ways:
  a whole pass as a reader pays it (mmap, decode, munmap: mapping 4 KiB pages costs about 10 %
  of the pass) and the decode loop alone over a warm mapping. Each is compared with our like.
* dpkt: Ethernet -> IP/IPv6 -> TCP/UDP objects, TCP options parsed, one row tuple per packet.
* scapy ``PcapReader`` on a prefix of the capture (scapy is slow), rate scaled to the whole file.
* tshark ``-T fields`` on a prefix, rate corrected for start-up (timed on a 1,000-packet prefix).
* nfstream (a flow meter, not a packet table: a loose comparison), when installed.

Then ``throttle-check inspect`` on the capture as a whole process (empty Numba cache, warm cache),
and its peak RSS on a >= 2 GiB capture of full frames (snaplen 1514, ~2.06 M packets).

The table gives each rate twice: per second of wall-clock time and per second of the worker's CPU
time (for kt_bench: the CPU of 1 + R decodes minus that of 1, over R). On a shared machine the
CPU column is the steadier one; the load average is printed at the start and the end.

Usage::

    python benchmarks/bench_decode.py                 # full run (~3 minutes, ~2.2 GB of disk)
    python benchmarks/bench_decode.py --quick         # 200k packets, no 2 GiB file (CI smoke)
    python benchmarks/bench_decode.py --json out.json

Generated captures are kept in ``benchmarks/_out/`` and reused while their parameters match.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
NATIVE = REPO / "native"
OUT_DIR = HERE / "_out"

# The targets.
TARGET_VS_C = 0.8
TARGET_VS_DPKT = 100.0
TARGET_INSPECT_WARM_S = 1.5
TARGET_RSS_2GB_MB = 300.0

TSHARK_FIELDS = (
    "frame.time_epoch frame.len frame.cap_len ip.src ip.dst ipv6.src ipv6.dst ip.ttl ipv6.hlim "
    "ip.proto ipv6.nxt tcp.srcport tcp.dstport udp.srcport udp.dstport udp.length tcp.seq_raw "
    "tcp.ack_raw tcp.flags tcp.window_size_value tcp.len tcp.options.mss_val "
    "tcp.options.wscale.shift tcp.options.timestamp.tsval tcp.options.timestamp.tsecr "
    "tcp.options.sack_le tcp.options.sack_re"
).split()


# ==================================================================================================
# Workers: one contender, in this process, printing one JSON line.
# ==================================================================================================
def _worker_ours(path: str) -> dict[str, Any]:
    import inspect

    t0 = time.perf_counter()
    import keepiton_throttle
    from keepiton_throttle.sources.capture import CaptureReader

    t1 = time.perf_counter()

    def one_pass(**kw: Any) -> tuple[int, int, float, float, float]:
        records = rows = 0
        start, cpu = time.perf_counter(), time.process_time()
        first = 0.0
        with CaptureReader(path, **kw) as reader:
            for chunk in reader:
                if not first:
                    first = time.perf_counter() - start
                rows += chunk.table.n
            records = reader.stats.records
        return records, rows, time.perf_counter() - start, time.process_time() - cpu, first

    records, rows, cold, cold_cpu, first_chunk = one_pass()  # pays the cache load (or compile)
    _, _, steady, steady_cpu, _ = one_pass()
    res = {"records": records, "rows": rows, "seconds": cold, "cpu_s": cold_cpu,
           "first_chunk_s": first_chunk, "steady_s": steady, "steady_cpu_s": steady_cpu,
           "import_s": t1 - t0, "package": os.path.dirname(keepiton_throttle.__file__)}
    if "reuse_buffers" in inspect.signature(CaptureReader).parameters:
        _, _, res["steady_reuse_s"], res["steady_reuse_cpu_s"], _ = one_pass(reuse_buffers=True)
    res.update(_decode_loop_warm(path, records))
    return res


def _decode_loop_warm(path: str, records: int, repeat: int = 3) -> dict[str, Any]:
    """Our kernel alone, as kt_bench's warm passes run C's: one mapping of the whole (classic
    pcap) file, faulted in by a first pass, one reused block of 65,536 rows, best of ``repeat``."""
    import mmap

    import numpy as np

    from keepiton_throttle.decode import STOP_OUTPUT_FULL, decode_records
    from keepiton_throttle.packets import allocate_blocks
    from keepiton_throttle.sources.capture import CaptureReader

    with CaptureReader(path) as reader:
        info, fmt, swapped, snaplen = reader.info, reader._fmt, reader._swapped, reader._snaplen
        if info.format != "pcap":
            return {}
        ifs = reader._iface_arrays()
    blocks = allocate_blocks(65536)
    out = [blocks["i64"], blocks["u64"], blocks["u32"], blocks["u16"], blocks["u8"]]
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    buf = np.frombuffer(mm, dtype=np.uint8)
    best = best_cpu = float("inf")
    for _ in range(1 + repeat):
        start, cpu = time.perf_counter(), time.process_time()
        pos, recs = 24, 0
        while True:
            p, _r, k, stop, _info = decode_records(buf[pos:], buf.size - pos, pos, fmt, swapped,
                                                   snaplen, *ifs, recs, *out, 0)
            pos += p
            recs += k
            if stop != STOP_OUTPUT_FULL:
                break
        wall, used = time.perf_counter() - start, time.process_time() - cpu
        if recs != records:
            raise SystemExit(f"decode loop read {recs} records, expected {records}")
        best, best_cpu = min(best, wall), min(best_cpu, used)
    del buf
    mm.close()
    return {"loop_warm_s": best, "loop_warm_cpu_s": best_cpu}


def _worker_dpkt(path: str) -> dict[str, Any]:
    import dpkt

    eth_cls, ip_cls, ip6_cls = dpkt.ethernet.Ethernet, dpkt.ip.IP, dpkt.ip6.IP6
    tcp_cls, udp_cls, parse_opts = dpkt.tcp.TCP, dpkt.udp.UDP, dpkt.tcp.parse_opts
    be32 = int.from_bytes
    rows: list[tuple[Any, ...]] = []
    errors = 0
    start, cpu = time.perf_counter(), time.process_time()
    with open(path, "rb") as fh:
        reader = dpkt.pcapng.Reader(fh) if path.endswith((".pcapng",)) else dpkt.pcap.Reader(fh)
        for ts, buf in reader:
            try:
                eth = eth_cls(buf)
            except (dpkt.UnpackError, dpkt.NeedData):
                errors += 1
                continue
            ip = eth.data
            if isinstance(ip, ip_cls):
                src, dst, ttl, proto, plen = ip.src, ip.dst, ip.ttl, ip.p, ip.len - ip.hl * 4
            elif isinstance(ip, ip6_cls):
                src, dst, ttl, proto, plen = ip.src, ip.dst, ip.hlim, ip.nxt, ip.plen
            else:
                rows.append((ts, len(buf)))
                continue
            l4 = ip.data
            if isinstance(l4, tcp_cls):
                mss = ws = tsval = tsecr = sle = sre = nsack = 0
                for kind, val in parse_opts(l4.opts):
                    if kind == 8 and len(val) == 8:
                        tsval, tsecr = be32(val[:4], "big"), be32(val[4:], "big")
                    elif kind == 5 and len(val) >= 8:
                        sle, sre, nsack = be32(val[:4], "big"), be32(val[4:8], "big"), len(val) // 8
                    elif kind == 2 and len(val) == 2:
                        mss = be32(val, "big")
                    elif kind == 3 and len(val) == 1:
                        ws = val[0]
                rows.append((ts, len(buf), src, dst, ttl, proto, l4.sport, l4.dport, l4.seq, l4.ack,
                             l4.flags, l4.win, plen - l4.off * 4, mss, ws, tsval, tsecr, sle, sre,
                             nsack))
            elif isinstance(l4, udp_cls):
                rows.append((ts, len(buf), src, dst, ttl, proto, l4.sport, l4.dport, l4.ulen - 8))
            else:
                rows.append((ts, len(buf), src, dst, ttl, proto))
    seconds = time.perf_counter() - start
    return {"records": len(rows) + errors, "seconds": seconds, "errors": errors,
            "cpu_s": time.process_time() - cpu}


def _worker_scapy(path: str) -> dict[str, Any]:
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.utils import PcapReader

    n = 0
    rows: list[tuple[Any, ...]] = []
    start, cpu = time.perf_counter(), time.process_time()
    with PcapReader(path) as reader:
        for pkt in reader:
            n += 1
            ip = pkt.getlayer(IP) or pkt.getlayer(IPv6)
            if ip is None:
                continue
            v4 = ip.version == 4
            row: tuple[Any, ...] = (pkt.time, pkt.wirelen, ip.src, ip.dst,
                                    ip.ttl if v4 else ip.hlim, ip.proto if v4 else ip.nh)
            if TCP in pkt:
                t = pkt[TCP]
                row += (t.sport, t.dport, t.seq, t.ack, int(t.flags), t.window, dict(t.options))
            elif UDP in pkt:
                u = pkt[UDP]
                row += (u.sport, u.dport, u.len)
            rows.append(row)
    return {"records": n, "seconds": time.perf_counter() - start, "cpu_s": time.process_time() - cpu}


def _worker_nfstream(path: str) -> dict[str, Any]:
    from nfstream import NFStreamer

    start = time.perf_counter()
    packets = flows = 0  # (its meter runs in a child process: no in-process CPU time)
    # n_dissections=0: no nDPI, header decode and flow metering only; one meter process.
    for flow in NFStreamer(source=path, n_dissections=0, statistical_analysis=False, n_meters=1):
        packets += flow.bidirectional_packets
        flows += 1
    return {"records": packets, "seconds": time.perf_counter() - start, "flows": flows}


WORKERS = {"ours": _worker_ours, "dpkt": _worker_dpkt, "scapy": _worker_scapy,
           "nfstream": _worker_nfstream}


# ==================================================================================================
# The driver.
# ==================================================================================================
class Proc:
    """A finished child process: exit code, wall and CPU time, peak RSS (MB), output, JSON line."""

    def __init__(self, rc: int, wall: float, cpu: float, rss_mb: float, out: str, err: str) -> None:
        self.rc, self.wall, self.cpu, self.rss_mb, self.out, self.err = rc, wall, cpu, rss_mb, out, err

    @property
    def result(self) -> dict[str, Any]:
        for line in reversed(self.out.strip().splitlines()):
            if line.startswith("{"):
                res: dict[str, Any] = json.loads(line)
                return res
        raise RuntimeError(f"no JSON line in output (exit {self.rc}): {self.err.strip()[-400:]}")


def run(cmd: list[str], *, env: dict[str, str] | None = None, stdout_null: bool = False) -> Proc:
    """Run ``cmd``; return its exit code, wall time and peak RSS (from wait4, this child only)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL if stdout_null else out, stderr=err,
                             stdin=subprocess.DEVNULL, env=env)
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - start
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Proc(p.returncode, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024,
                    out.read().decode(errors="replace"), err.read().decode(errors="replace"))


def worker(name: str, path: Path, env: dict[str, str] | None = None) -> Proc:
    return run([sys.executable, str(Path(__file__).resolve()), "--worker", name, str(path)], env=env)


def env_with(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    return env


def capture(packets: int | None, *, size: int | None = None, snaplen: int = 128, seed: int = 0
            ) -> tuple[Path, dict[str, Any]]:
    """Generate (or reuse) a capture under benchmarks/_out; return its path and description."""
    sys.path.insert(0, str(HERE))
    import gen_capture

    path = gen_capture.default_path(packets=packets, size=size, snaplen=snaplen, seed=seed,
                                    pcapng=False, gz=False)
    meta = path.with_name(path.name + ".json")
    if path.exists() and meta.exists():
        desc: dict[str, Any] = json.loads(meta.read_text())
        if desc.get("file_bytes") == path.stat().st_size and desc.get("generator") == _gen_version():
            return path, desc
    t = time.perf_counter()
    desc = gen_capture.generate(path, packets=packets, size=size, snaplen=snaplen, seed=seed)
    desc["seconds"] = round(time.perf_counter() - t, 2)
    desc["generator"] = _gen_version()
    meta.write_text(json.dumps(desc))
    print(f"  generated {path.name}: {desc['packets']:,} packets, {desc['bytes']:,} bytes "
          f"in {desc['seconds']} s", flush=True)
    return path, desc


def _gen_version() -> int:
    """Changes whenever gen_capture.py changes, so stale captures are regenerated."""
    st = (HERE / "gen_capture.py").stat()
    return int(st.st_mtime_ns) ^ st.st_size


def inspect_cmd(path: Path) -> list[str]:
    exe = shutil.which("throttle-check")
    base = [exe] if exe else [sys.executable, "-m", "keepiton_throttle.cli"]
    return [*base, "inspect", str(path)]


def native_bench() -> tuple[Path | None, str]:
    """Path of native/kt_bench, building it if needed, or None and why."""
    exe = NATIVE / "kt_bench"
    if exe.exists() and os.access(exe, os.X_OK):
        return exe, ""
    if not (NATIVE / "Makefile").exists():
        return None, "native/ has no Makefile yet (C reference not available)"
    if shutil.which("make") is None or shutil.which("cc") is None:
        return None, "make or cc not installed"
    p = run(["make", "-s", "-C", str(NATIVE)])
    if p.rc != 0 or not exe.exists():
        return None, f"make -C native failed: {(p.err or p.out).strip()[-300:]}"
    return exe, ""



def print_load_and_notes(load0: tuple[float, ...], load1: tuple[float, ...], notes: list[str]) -> None:
    """The load average around a run (a busy machine lowers wall-clock rates), then the notes."""
    print(f"load average {load0[0]:.2f} at start, {load1[0]:.2f} at end on {os.cpu_count()} cores"
          + ("  (busy machine: wall-clock rates are low; the CPU column is steadier)"
             if max(load0[0], load1[0]) > 1.5 else ""))
    for note in notes:
        print("note:", note)


def record_target(targets: list[dict[str, Any]], name: str, ok: bool | None, shown: str, *,
                  width: int = 32, **extra: Any) -> None:
    """Print one target line (PASS / FAIL / n/a when not measured) and keep it for --json."""
    verdict = "n/a" if ok is None else ("PASS" if ok else "FAIL")
    targets.append({"target": name, "result": verdict, "shown": shown, **extra})
    print(f"target {name:<{width}} {verdict:<5} {shown}")

def fmt_rate(x: float | None) -> str:
    if x is None:
        return "-"
    if x >= 1e6:
        return f"{x / 1e6:.2f} M"
    return f"{x / 1e3:.1f} k"


def fmt_ratio(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.3g}x"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", nargs=2, metavar=("NAME", "FILE"), help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true",
                    help="200k packets, small prefixes, one repeat, no 2 GiB capture (CI smoke)")
    ap.add_argument("--packets", type=int, help="packets in the main capture (default 1,000,000)")
    ap.add_argument("--repeat", type=int, help="warm runs of ours, C and inspect (default 3)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip", action="append", default=[],
                    help="skip a contender: native, dpkt, scapy, tshark, nfstream, compile, 2gb")
    ap.add_argument("--json", metavar="FILE", help="also write the results to FILE as JSON")
    a = ap.parse_args(argv)

    if a.worker:
        name, path = a.worker
        print(json.dumps(WORKERS[name](path)))
        return 0

    packets = a.packets or (200_000 if a.quick else 1_000_000)
    repeat = a.repeat or (1 if a.quick else 3)
    scapy_n = min(packets, 5_000 if a.quick else 20_000)
    tshark_n = min(packets, 20_000 if a.quick else 100_000)
    skip = set(a.skip) | ({"2gb"} if a.quick else set())

    load0 = os.getloadavg()
    print(f"== keepiton_throttle decode benchmark ({'quick' if a.quick else 'full'})", flush=True)
    print(f"  {_cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"load average {load0[0]:.2f} at start", flush=True)
    main_path, desc = capture(packets, seed=a.seed)
    print(f"  capture: {main_path.relative_to(REPO)}: {desc['packets']:,} packets, "
          f"{desc['bytes'] / 1e6:.1f} MB, snaplen {desc['snaplen']}, {desc['flows']:,} flows, "
          f"{desc['udp']:,} UDP, {desc['ipv6']:,} IPv6, {desc['sack']:,} with SACK", flush=True)
    n_main = desc["packets"]
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    results: dict[str, Any] = {"capture": desc, "rows": rows, "notes": notes,
                               "loadavg_start": load0, "argv": sys.argv[1:]}

    def add(name: str, n: int, seconds: float, cpu: float | None, rss: float | None,
            note: str = "", **extra: Any) -> dict[str, Any]:
        row = {"contender": name, "packets_per_s": n / seconds,
               "cpu_packets_per_s": n / cpu if cpu else None, "seconds": seconds, "cpu_s": cpu,
               "peak_rss_mb": rss, "note": note, **extra}
        rows.append(row)
        cpu_rate = row["cpu_packets_per_s"]
        print(f"  {name}: {fmt_rate(row['packets_per_s'])}pkt/s"
              + (f" ({fmt_rate(cpu_rate)}pkt/s of CPU)" if cpu_rate else "")
              + f", {rss or 0:.0f} MB {note}", flush=True)
        return row

    def skipped(name: str, why: str) -> None:
        rows.append({"contender": name, "packets_per_s": None, "cpu_packets_per_s": None,
                     "peak_rss_mb": None, "note": f"skipped: {why}"})
        print(f"  {name}: skipped: {why}", flush=True)

    # --- ours -----------------------------------------------------------------------------------
    print("-- ours (CaptureReader over all chunks)", flush=True)
    first = worker("ours", main_path)
    r0 = first.result
    if r0["records"] != n_main:
        raise SystemExit(f"our reader decoded {r0['records']} records, expected {n_main}")
    print(f"  package: {r0['package']}", flush=True)
    results["package"] = r0["package"]
    warm = [worker("ours", main_path) for _ in range(repeat)]
    best = min(warm, key=lambda p: p.result["seconds"])
    steady = min(warm, key=lambda p: p.result["steady_s"]).result
    ours = add("ours, steady state (in-process 2nd pass)", n_main, steady["steady_s"],
               steady["steady_cpu_s"], best.rss_mb, f"best of {repeat}")
    if "steady_reuse_s" in steady:
        rs = min(warm, key=lambda p: p.result["steady_reuse_s"]).result
        add("ours, steady state, reuse_buffers=True", n_main, rs["steady_reuse_s"],
            rs["steady_reuse_cpu_s"], best.rss_mb, f"best of {repeat}")
    loop_warm = None
    if "loop_warm_s" in steady:
        lw = min(warm, key=lambda p: p.result["loop_warm_s"]).result
        loop_warm = add("ours, decode loop on a warm mapping", n_main, lw["loop_warm_s"],
                        lw["loop_warm_cpu_s"], best.rss_mb,
                        f"best of {repeat}; as kt_bench's warm passes (65,536-row block)")
    add("ours, per process, warm Numba cache", n_main, best.result["seconds"],
        best.result["cpu_s"], best.rss_mb,
        f"first chunk {best.result['first_chunk_s']:.2f} s (Numba cache load)")
    add("ours, first run (cold, as found)", n_main, r0["seconds"], r0["cpu_s"], first.rss_mb,
        f"first chunk {r0['first_chunk_s']:.2f} s")
    compile_s = None
    if "compile" in skip:
        skipped("ours, empty NUMBA_CACHE_DIR", "--skip compile")
    else:
        with tempfile.TemporaryDirectory(prefix="kt-numba-") as cache:
            c = worker("ours", main_path, env=env_with(NUMBA_CACHE_DIR=cache))
        rc = c.result
        compile_s = rc["first_chunk_s"] - best.result["first_chunk_s"]
        add("ours, empty NUMBA_CACHE_DIR (compiles)", n_main, rc["seconds"], rc["cpu_s"],
            c.rss_mb, f"compile ~{compile_s:.1f} s, paid once per install", compile_s=compile_s)
    results["ours"] = {"steady_s": steady["steady_s"], "steady_cpu_s": steady["steady_cpu_s"],
                       "per_process_s": best.result["seconds"], "cold_s": r0["seconds"],
                       "compile_s": compile_s, "import_s": best.result["import_s"]}

    # --- native C reference ---------------------------------------------------------------------
    c_row = c_warm = None
    print("-- native/kt_bench (C99 reference)", flush=True)
    if "native" in skip:
        skipped("native C kt_bench", "--skip native")
    else:
        exe, why = native_bench()
        if exe is None:
            skipped("native C kt_bench", why)
        else:
            reps = max(repeat, 3)
            runs = {}
            for kind in ("fresh", "warm"):
                # CPU per pass: a run of 1 + reps passes minus a run of 1, over reps (start-up and
                # the first touch of the file cancel out)
                one = run([str(exe), str(main_path), "1", kind])
                p = run([str(exe), str(main_path), str(1 + reps), kind])
                if p.rc != 0 or one.rc != 0:
                    bad = p if p.rc != 0 else one
                    skipped("native C kt_bench", f"exit {bad.rc}: {bad.err.strip()[-300:]}")
                    break
                runs[kind] = (p, max(p.cpu - one.cpu, 1e-9) / reps)
            if len(runs) == 2:
                (pf, cpu_f), (pw, cpu_w) = runs["fresh"], runs["warm"]
                res = pf.result
                c_row = add("native C kt_bench (map, decode, unmap per pass)", n_main,
                            float(res["seconds"]), cpu_f, pf.rss_mb,
                            f"best of {1 + reps}; one reused block of rows", raw=res)
                c_warm = add("native C kt_bench, decode loop on a warm mapping", n_main,
                             float(pw.result["seconds_warm"]), cpu_w, pw.rss_mb,
                             f"best of {1 + reps}; pages already mapped", raw=pw.result)
                for r_ in (res, pw.result):
                    if r_.get("records") != n_main:
                        notes.append(f"kt_bench reported {r_.get('records')} records, expected {n_main}")

    # --- Python peers ---------------------------------------------------------------------------
    dpkt_row = None
    print("-- peers", flush=True)
    for name in ("dpkt", "scapy", "nfstream"):
        if name in skip:
            skipped(name, f"--skip {name}")
            continue
        try:
            __import__(name)
        except ImportError as exc:
            skipped(name, f"not installed ({exc}); pip install {name}")
            continue
        path, n = main_path, n_main
        if name == "scapy":
            path, _ = capture(scapy_n, seed=a.seed)
            n = scapy_n
        p = worker(name, path)
        if p.rc != 0:
            skipped(name, f"failed (exit {p.rc}): {p.err.strip()[-300:]}")
            continue
        res = p.result
        if res["records"] != n and name != "nfstream":
            notes.append(f"{name} read {res['records']} records, expected {n}")
        note = ""
        if name == "dpkt" and res["errors"]:
            note = f"{res['errors']} unpack errors"
        elif name == "scapy":
            note = f"{n:,}-packet prefix, scaled: {n_main * res['seconds'] / n:.0f} s for {n_main:,}"
        elif name == "nfstream":
            note = (f"flow meter (no nDPI), not a packet table; {res['flows']:,} flows, "
                    f"{res['records']:,} packets in them")
        row = add(name, n, res["seconds"], res.get("cpu_s"), p.rss_mb, note)
        if name == "dpkt":
            dpkt_row = row

    if "tshark" in skip:
        skipped("tshark -T fields", "--skip tshark")
    elif shutil.which("tshark") is None:
        skipped("tshark -T fields", "tshark not installed (apt-get install tshark)")
    else:
        small, _ = capture(1_000, seed=a.seed)
        prefix, _ = capture(tshark_n, seed=a.seed)
        cmd = ["tshark", "-n", "-r", "{}", "-T", "fields"]
        for fld in TSHARK_FIELDS:
            cmd += ["-e", fld]
        t_small = run([str(small) if x == "{}" else x for x in cmd], stdout_null=True)
        t_big = run([str(prefix) if x == "{}" else x for x in cmd], stdout_null=True)
        if t_big.rc != 0:
            skipped("tshark -T fields", f"exit {t_big.rc}: {t_big.err.strip()[-300:]}")
        else:
            n = tshark_n - 1_000
            secs = max(t_big.wall - t_small.wall, 1e-9)
            add("tshark -T fields", n, secs, max(t_big.cpu - t_small.cpu, 1e-9), t_big.rss_mb,
                f"{tshark_n:,}-packet prefix minus start-up (1,000-packet run, "
                f"{t_small.wall:.2f} s); scaled: {n_main * secs / n:.0f} s for {n_main:,}")

    # --- throttle-check inspect -----------------------------------------------------------------
    print("-- throttle-check inspect (whole process)", flush=True)
    cmd = inspect_cmd(main_path)
    with tempfile.TemporaryDirectory(prefix="kt-numba-") as cache:
        cold = run(cmd, env=env_with(NUMBA_CACHE_DIR=cache), stdout_null=True)
    run(cmd, stdout_null=True)  # warm the default cache
    warm_runs = [run(cmd, stdout_null=True) for _ in range(max(repeat, 1))]
    for p in (cold, *warm_runs):
        if p.rc != 0:
            raise SystemExit(f"throttle-check inspect failed (exit {p.rc}): {p.err.strip()[-400:]}")
    inspect_warm = statistics.median(p.wall for p in warm_runs)
    inspect_cpu = statistics.median(p.cpu for p in warm_runs)
    inspect_rss = max(p.rss_mb for p in warm_runs)
    results["inspect"] = {"cold_s": cold.wall, "warm_s": inspect_warm, "warm_cpu_s": inspect_cpu,
                          "warm_all_s": [p.wall for p in warm_runs], "peak_rss_mb": inspect_rss,
                          "cold_rss_mb": cold.rss_mb}
    print(f"  empty Numba cache {cold.wall:.2f} s; warm {inspect_warm:.2f} s wall, "
          f"{inspect_cpu:.2f} s CPU (median of {len(warm_runs)}); peak RSS {inspect_rss:.0f} MB",
          flush=True)

    rss_2gb = None
    if "2gb" in skip:
        print("-- 2 GiB capture: skipped" + (" (--quick)" if a.quick else ""), flush=True)
    else:
        print("-- throttle-check inspect on a >= 2 GiB capture (snaplen 1514, full frames)",
              flush=True)
        big, bdesc = capture(None, size=2 << 30, snaplen=1514, seed=a.seed)
        p = run(inspect_cmd(big), stdout_null=True)
        if p.rc != 0:
            raise SystemExit(f"inspect on {big} failed (exit {p.rc}): {p.err.strip()[-400:]}")
        rss_2gb = p.rss_mb
        results["inspect_2gb"] = {"bytes": bdesc["bytes"], "packets": bdesc["packets"],
                                  "seconds": p.wall, "cpu_s": p.cpu, "peak_rss_mb": rss_2gb}
        print(f"  {bdesc['bytes'] / 2**30:.2f} GiB, {bdesc['packets']:,} packets: {p.wall:.2f} s "
              f"({bdesc['packets'] / p.wall / 1e6:.2f} M pkt/s whole process), "
              f"peak RSS {rss_2gb:.0f} MB", flush=True)
    load1 = os.getloadavg()
    results["loadavg_end"] = load1

    # --- the table --------------------------------------------------------------------------------
    for r in rows:
        for key, ref in (("x_ours", ours), ("x_c", c_row)):
            r[key] = r["packets_per_s"] / ref["packets_per_s"] if r["packets_per_s"] and ref else None
    w = max(len(r["contender"]) for r in rows)
    print()
    print(f"{'contender':<{w}}  {'packets/s':>10}  {'(CPU)':>9}  {'x ours':>8}  {'x C':>8}  "
          f"{'peak RSS MB':>11}  note")
    print(f"{'-' * w}  {'-' * 10}  {'-' * 9}  {'-' * 8}  {'-' * 8}  {'-' * 11}  ----")
    for r in rows:
        rss = "-" if r["peak_rss_mb"] is None else f"{r['peak_rss_mb']:.0f}"
        print(f"{r['contender']:<{w}}  {fmt_rate(r['packets_per_s']):>10}  "
              f"{fmt_rate(r['cpu_packets_per_s']):>9}  {fmt_ratio(r['x_ours']):>8}  "
              f"{fmt_ratio(r['x_c']):>8}  {rss:>11}  {r['note']}")
    print()
    print(f"throttle-check inspect, {n_main:,} packets: empty Numba cache {cold.wall:.2f} s; warm "
          f"{inspect_warm:.2f} s wall ({inspect_cpu:.2f} s CPU), peak RSS {inspect_rss:.0f} MB")
    if "inspect_2gb" in results:
        b = results["inspect_2gb"]
        print(f"throttle-check inspect, {b['bytes'] / 2**30:.2f} GiB / {b['packets']:,} packets: "
              f"{b['seconds']:.2f} s, peak RSS {b['peak_rss_mb']:.0f} MB")
    print_load_and_notes(load0, load1, notes)

    # --- targets --------------------------------------------------------------------------------
    targets: list[dict[str, Any]] = []

    target = functools.partial(record_target, targets, width=32)

    def ratio(r1: dict[str, Any] | None, r2: dict[str, Any] | None, key: str) -> float | None:
        return r1[key] / r2[key] if r1 and r2 and r1.get(key) and r2.get(key) else None

    print()
    vs_c, vs_c_cpu = ratio(ours, c_row, "packets_per_s"), ratio(ours, c_row, "cpu_packets_per_s")
    target(f"reader >= {TARGET_VS_C}x C's", None if vs_c is None else vs_c >= TARGET_VS_C,
           "C not available" if vs_c is None else
           f"ours/C = {vs_c:.2f} wall" + (f", {vs_c_cpu:.2f} CPU" if vs_c_cpu else "")
           + " (a whole pass: map, decode, unmap)",
           value=vs_c, value_cpu=vs_c_cpu)
    vs_l = ratio(loop_warm, c_warm, "packets_per_s")
    vs_l_cpu = ratio(loop_warm, c_warm, "cpu_packets_per_s")
    target(f"decode loop >= {TARGET_VS_C}x C's", None if vs_l is None else vs_l >= TARGET_VS_C,
           "not measured" if vs_l is None else
           f"ours/C = {vs_l:.2f} wall" + (f", {vs_l_cpu:.2f} CPU" if vs_l_cpu else "")
           + " (warm mapping, kernel alone)", value=vs_l, value_cpu=vs_l_cpu)
    vs_d, vs_d_cpu = ratio(ours, dpkt_row, "packets_per_s"), ratio(ours, dpkt_row, "cpu_packets_per_s")
    target(f"ours >= {TARGET_VS_DPKT:.0f}x dpkt", None if vs_d is None else vs_d >= TARGET_VS_DPKT,
           "dpkt not run" if vs_d is None else
           f"ours/dpkt = {vs_d:.0f} wall" + (f", {vs_d_cpu:.0f} CPU" if vs_d_cpu else ""),
           value=vs_d, value_cpu=vs_d_cpu)
    target(f"inspect warm < {TARGET_INSPECT_WARM_S} s", inspect_warm < TARGET_INSPECT_WARM_S,
           f"{inspect_warm:.2f} s wall, {inspect_cpu:.2f} s CPU ({n_main:,} packets)",
           value=inspect_warm, value_cpu=inspect_cpu)
    target(f"peak memory < {TARGET_RSS_2GB_MB:.0f} MB on 2 GB",
           None if rss_2gb is None else rss_2gb < TARGET_RSS_2GB_MB,
           "not run" if rss_2gb is None else f"{rss_2gb:.0f} MB", value=rss_2gb)
    print("(the reader ratio pairs ours' steady-state row, the plain CaptureReader, with C's pass "
          "that maps and unmaps the file as a reader must; the loop ratio pairs both decode loops "
          "on a mapping already faulted in; per-process rows add the Numba cache load)")
    results["targets"] = targets
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))
        print(f"results written to {a.json}")
    return 0


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    sys.exit(main())
