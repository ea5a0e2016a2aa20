"""Forwarding capacity and added latency of the userspace censor, against a direct veth.

Run as root::

    python benchmarks/bench_censor.py [--seconds 3] [--pings 500]

One testbed is brought up with a second, direct veth pair between the client and server
namespaces, so both paths are measured in the same run on the same machine. The censor runs
with zero delay and either no policy at all (``censor``) or the twitter-2021 DPI rules on
traffic that does not match (``censor+dpi``: every flow is tracked and its ClientHello parsed,
nothing is throttled). The censor process is pinned to one CPU, the load generators to the
other.

Measured:

* TCP goodput of one bulk download (server -> client), MTU-sized frames (offloads are off);
* UDP: 1,472-byte payloads (1,514-byte frames) sent as fast as one sender can for the same
  time; delivered rate and loss at the receiver;
* UDP echo round-trip time of 64-byte datagrams, median and 99th percentile, one at a time.

Targets (issue 5): >= 100 Mbit/s of 1,500-byte frames on one core; < 1 ms added delay.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from keepiton_throttle.testbed import manager  # noqa: E402
from keepiton_throttle.testbed.netns import in_netns  # noqa: E402
from keepiton_throttle.testbed.profiles import load_profile, profile_from_dict  # noqa: E402

PORT_TCP = 5201
PORT_UDP = 5202
PORT_ECHO = 5203


def tcp_goodput(cli: str, srv: str, server_ip: str, seconds: float) -> float:
    """Mbit/s of one TCP bulk transfer from the server namespace to the client namespace."""
    with in_netns(srv):
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((server_ip, PORT_TCP))
        ls.listen(1)

    def sender() -> None:
        conn, _ = ls.accept()
        data = b"\0" * (1 << 20)
        end = time.monotonic() + seconds
        try:
            while time.monotonic() < end:
                conn.sendall(data)
        except OSError:
            pass
        conn.close()

    t = threading.Thread(target=sender, daemon=True)
    t.start()
    with in_netns(cli):
        s = socket.create_connection((server_ip, PORT_TCP), timeout=10)
    buf = bytearray(1 << 20)
    total = 0
    t0 = time.monotonic()
    while True:
        n = s.recv_into(buf)
        if not n:
            break
        total += n
    dt = time.monotonic() - t0
    s.close()
    ls.close()
    t.join()
    return total * 8 / dt / 1e6


def udp_blast(cli: str, srv: str, client_ip: str, server_ip: str, seconds: float) -> tuple[float, float, float]:
    """(offered Mbit/s, delivered Mbit/s, loss fraction) of 1,472-byte datagrams server -> client."""
    with in_netns(cli):
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        rx.bind((client_ip, PORT_UDP))
        rx.settimeout(0.5)
    with in_netns(srv):
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tx.connect((client_ip, PORT_UDP))
    payload = bytearray(1472)
    sent = [0]

    def sender() -> None:
        end = time.monotonic() + seconds
        n = 0
        while time.monotonic() < end:
            for _ in range(64):
                try:
                    tx.send(payload)
                    n += 1
                except OSError:  # ENOBUFS: the veth queue is full, try again
                    pass
        sent[0] = n

    got = 0
    first = last = None
    t = threading.Thread(target=sender, daemon=True)
    t.start()
    buf = bytearray(2048)
    while True:
        try:
            rx.recv_into(buf)
        except TimeoutError:
            if not t.is_alive():
                break
            continue
        last = time.monotonic()
        if first is None:
            first = last
        got += 1
    t.join()
    rx.close()
    tx.close()
    frame_bits = (1472 + 42) * 8
    offered = sent[0] * frame_bits / seconds / 1e6
    span = (last - first) if first is not None and last is not None and last > first else seconds
    delivered = got * frame_bits / span / 1e6
    return offered, delivered, 1 - got / max(1, sent[0])


def udp_rtt(cli: str, srv: str, client_ip: str, server_ip: str, count: int) -> tuple[float, float]:
    """(median, p99) round-trip time in microseconds of 64-byte UDP echoes."""
    with in_netns(srv):
        echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        echo.bind((server_ip, PORT_ECHO))
        echo.settimeout(1.0)
    stop = threading.Event()

    def responder() -> None:
        while not stop.is_set():
            try:
                data, addr = echo.recvfrom(2048)
            except TimeoutError:
                continue
            echo.sendto(data, addr)

    t = threading.Thread(target=responder, daemon=True)
    t.start()
    with in_netns(cli):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.connect((server_ip, PORT_ECHO))
        s.settimeout(1.0)
    rtts = []
    msg = b"x" * 64
    for i in range(count + 20):
        t0 = time.perf_counter_ns()
        s.send(msg)
        try:
            s.recv(2048)
        except TimeoutError:
            continue
        if i >= 20:  # warm-up (ARP, caches)
            rtts.append((time.perf_counter_ns() - t0) / 1000)
        time.sleep(0.001)
    stop.set()
    t.join()
    s.close()
    echo.close()
    rtts.sort()
    return statistics.median(rtts), rtts[int(0.99 * (len(rtts) - 1))]


def measure(label: str, profile_dict: dict[str, object], args: argparse.Namespace) -> dict[str, dict[str, float]]:
    name = f"kb{os.getpid() % 100000}"
    profile = profile_from_dict(profile_dict, name=label)
    state = manager.up(profile, name=name, serve=False, direct_link=True)
    try:
        censor_pid = int(state["pids"]["censor"])
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) >= 2:
            os.sched_setaffinity(censor_pid, {cpus[-1]})
            os.sched_setaffinity(0, set(cpus[:-1]))
        topo = state["topology"]
        cli, srv = topo["namespaces"]["client"], topo["namespaces"]["server"]
        out: dict[str, dict[str, float]] = {}
        paths = {"direct": ("10.77.1.1", "10.77.1.2"), label: (topo["client_ip"], topo["server_ip"])}
        for path, (cip, sip) in paths.items():
            if path == "direct" and args.skip_direct:
                continue
            r: dict[str, float] = {}
            r["rtt_med_us"], r["rtt_p99_us"] = udp_rtt(cli, srv, cip, sip, args.pings)
            r["tcp_mbps"] = tcp_goodput(cli, srv, sip, args.seconds)
            r["udp_offered_mbps"], r["udp_mbps"], r["udp_loss"] = udp_blast(cli, srv, cip, sip, args.seconds)
            out[path] = r
        return out
    finally:
        manager.down(name)
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="duration of each throughput test (s)")
    ap.add_argument("--pings", type=int, default=500, help="number of RTT samples")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_censor needs root (network namespaces)", file=sys.stderr)
        return 1
    plain = {"link": {"delay_ms": 0}}
    dpi = load_profile("twitter-2021").to_dict()
    dpi["link"] = {"delay_ms": 0}
    args.skip_direct = False
    res = measure("censor", plain, args)
    args.skip_direct = True
    res.update(measure("censor+dpi", dpi, args))
    d = res["direct"]
    rows = [
        ("TCP goodput (Mbit/s)", "tcp_mbps", "{:.0f}"),
        ("UDP 1514-B frames offered (Mbit/s)", "udp_offered_mbps", "{:.0f}"),
        ("UDP 1514-B frames delivered (Mbit/s)", "udp_mbps", "{:.0f}"),
        ("UDP loss at that load", "udp_loss", "{:.1%}"),
        ("RTT median (us)", "rtt_med_us", "{:.0f}"),
        ("RTT p99 (us)", "rtt_p99_us", "{:.0f}"),
    ]
    cols = ["direct", "censor", "censor+dpi"]
    print(f"{'metric':38s}" + "".join(f"{c:>12s}" for c in cols) + f"{'censor/direct':>15s}{'dpi/direct':>12s}")
    for title, key, fmt in rows:
        vals = "".join(f"{fmt.format(res[c][key]):>12s}" for c in cols)
        ratios = "".join(
            f"{(res[c][key] / d[key] if d[key] else float('nan')):>{w}.2f}" for c, w in (("censor", 15), ("censor+dpi", 12))
        )
        print(f"{title:38s}{vals}{ratios if key != 'udp_loss' else ''}")
    for c in ("censor", "censor+dpi"):
        added = res[c]["rtt_med_us"] - d["rtt_med_us"]
        print(f"added delay through {c}: {added:.0f} us round trip, ~{added / 2:.0f} us one way (median)")
    ok = min(res["censor"]["udp_mbps"], res["censor"]["tcp_mbps"]) >= 100 and \
        res["censor"]["rtt_med_us"] - d["rtt_med_us"] < 1000
    print(f"target (>= 100 Mbit/s of 1500-B frames, < 1 ms added): {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
