"""The testbed in real network namespaces: lifecycle, and what the censor does to real packets.

Every rate and delay is measured from a tcpdump capture taken in the client namespace (parsed
with dpkt), never from the censor's own counters. DPI verdicts are read from the censor's flow
table (``censor.stats.json``), the only place they are visible for flows that pass untouched.
Each test brings up its own testbed under a unique name and tears it down in ``finally``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import select
import shutil
import signal
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from keepiton_throttle.testbed import manager
from keepiton_throttle.testbed.cli import testbed_group as tb_cli
from keepiton_throttle.testbed.client import fetch_quic, fetch_tcp
from keepiton_throttle.testbed.netns import Topology, in_netns, netns_exists, run_in_netns
from keepiton_throttle.testbed.profiles import Profile, load_profile, profile_from_dict

dpkt = pytest.importorskip("dpkt")

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("tcpdump") is None,
    reason="needs root, iproute2 and tcpdump",
)
pytestmark = [pytest.mark.netns, needs_root]

CLIENT_IP = "10.77.0.1"
SERVER_IP = "10.77.0.2"
_counter = itertools.count()


def unique_name() -> str:
    return f"kt{os.getpid() % 100000}x{next(_counter)}"


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEEPITON_TESTBED_STATE", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))


@contextlib.contextmanager
def running_testbed(profile: Profile, **kw: Any) -> Iterator[dict[str, Any]]:
    name = unique_name()
    try:
        yield manager.up(profile, name=name, **kw)
    finally:
        manager.down(name)
        assert not any(netns_exists(ns) for ns in Topology(name=name).namespaces)


@contextlib.contextmanager
def capture(ns: str, path: Path, iface: str = "c0") -> Iterator[Path]:
    """tcpdump in ``ns`` while the block runs (frames cut to 256 bytes)."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, "tcpdump", "-i", iface, "-w", str(path), "-U", "-s", "256", "-n", "-Z", "root"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        ready, _, _ = select.select([proc.stderr], [], [], 10)
        assert ready, "tcpdump did not start"
        assert b"listening" in proc.stderr.readline()
        yield path
        time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def read_packets(path: Path) -> list[tuple[float, Any]]:
    """(timestamp s, dpkt IP) for every IPv4 frame of a capture."""
    out = []
    with open(path, "rb") as fh:
        for ts, buf in dpkt.pcap.Reader(fh):
            eth = dpkt.ethernet.Ethernet(buf)
            if isinstance(eth.data, dpkt.ip.IP):
                out.append((ts, eth.data))
    return out


def udp_payloads(pkts: list[tuple[float, Any]], *, src: str, dst_port: int | None = None,
                 src_port: int | None = None) -> list[tuple[float, int, bytes]]:
    """(ts, IP length, UDP payload prefix) of UDP packets from ``src``."""
    out = []
    for ts, ip in pkts:
        if socket.inet_ntoa(ip.src) != src or not isinstance(ip.data, dpkt.udp.UDP):
            continue
        u = ip.data
        if (dst_port is None or u.dport == dst_port) and (src_port is None or u.sport == src_port):
            out.append((ts, ip.len, bytes(u.data)))
    return out


def udp_socket(ns: str, ip: str, port: int) -> socket.socket:
    with in_netns(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.bind((ip, port))
    return s


def quic_initial(sni: str) -> list[bytes]:
    """The first datagram(s) of an aioquic client connecting with ``sni``."""
    from aioquic.h3.connection import H3_ALPN
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection

    conn = QuicConnection(configuration=QuicConfiguration(is_client=True, alpn_protocols=list(H3_ALPN),
                                                          server_name=sni))
    conn.connect((SERVER_IP, 443), now=0.0)
    return [d for d, _ in conn.datagrams_to_send(now=0.0)]


def tail_rate_bps(samples: list[tuple[float, int]], *, skip_s: float) -> float:
    """IP bit rate of ``(ts, ip_len)`` samples after ``skip_s`` seconds (first packet excluded)."""
    t0 = samples[0][0]
    tail = [(t, n) for t, n in samples if t >= t0 + skip_s]
    assert len(tail) >= 10, f"only {len(tail)} packets in the tail"
    return sum(n for _, n in tail[1:]) * 8 / (tail[-1][0] - tail[0][0])


def paced(total_s: float, rate_bps: float, size: int) -> Iterator[int]:
    """Yield packet indices at absolute times that give ``rate_bps`` for ``size``-byte IP packets."""
    gap = size * 8 / rate_bps
    start = time.monotonic()
    i = 0
    while (t := start + i * gap) < start + total_s:
        delay = t - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        yield i
        i += 1


# ---------------------------------------------------------------------- lifecycle


def test_cli_up_status_down(tmp_path: Path) -> None:
    runner = CliRunner()
    name = unique_name()
    try:
        res = runner.invoke(tb_cli, ["up", "--profile", "clean", "--name", name, "--no-serve"])
        assert res.exit_code == 0, res.output
        assert f"testbed {name} up with profile clean" in res.output
        res = runner.invoke(tb_cli, ["status", "--name", name, "--json"])
        assert res.exit_code == 0, res.output
        st = json.loads(res.output)
        assert st["healthy"] and st["profile"] == "clean"
        pid = st["processes"]["censor"]["pid"]
        assert all(st["namespaces"].values())
        res = runner.invoke(tb_cli, ["up", "--profile", "clean", "--name", name, "--no-serve"])
        assert res.exit_code == 1 and "already up" in res.output
    finally:
        res = runner.invoke(tb_cli, ["down", "--name", name])
    assert res.exit_code == 0 and "down" in res.output
    assert not manager.pid_alive(pid)
    assert not any(netns_exists(ns) for ns in Topology(name=name).namespaces)
    res = runner.invoke(tb_cli, ["status", "--name", name])
    assert res.exit_code == 1 and "is not up" in res.output
    res = runner.invoke(tb_cli, ["down", "--name", name])
    assert res.exit_code == 0 and "nothing to do" in res.output


def test_failed_up_leaves_nothing_behind() -> None:
    name = unique_name()
    with pytest.raises(manager.TestbedError, match="serve exited"):
        manager.up(load_profile("clean"), name=name, serve_args=("--max-bytes", "0"))
    assert not any(netns_exists(ns) for ns in Topology(name=name).namespaces)
    assert not manager.state_dir(name).exists()


def test_bad_profile_is_a_usage_error() -> None:
    res = CliRunner().invoke(tb_cli, ["up", "--profile", "no-such-profile", "--name", unique_name()])
    assert res.exit_code == 2 and "unknown profile" in res.output


# ---------------------------------------------------------------------- delay, jitter, loss


def test_delay_jitter_and_loss_from_client_capture(tmp_path: Path) -> None:
    prof = profile_from_dict({"seed": 11, "link": {"delay_ms": 30, "jitter_ms": 4, "loss": 0.1}}, name="imp")
    with running_testbed(prof, serve=False) as st:
        cli, srv = st["topology"]["namespaces"]["client"], st["topology"]["namespaces"]["server"]
        echo = udp_socket(srv, SERVER_IP, 7000)
        probe = udp_socket(cli, CLIENT_IP, 6000)
        sink = udp_socket(cli, CLIENT_IP, 6001)
        stream_n = 3000
        stop = threading.Event()

        def server() -> None:
            echo.settimeout(0.2)
            started = False
            while not stop.is_set():
                try:
                    data, addr = echo.recvfrom(2048)
                except TimeoutError:
                    continue
                if data == b"go":
                    if started:
                        continue
                    started = True
                    for i in range(stream_n):  # one-way stream for the loss count
                        echo.sendto(b"S" + i.to_bytes(4, "big") + b"\0" * 100, (CLIENT_IP, 6001))
                        if i % 10 == 9:
                            time.sleep(0.001)
                else:
                    echo.sendto(data, addr)

        th = threading.Thread(target=server, daemon=True)
        th.start()
        try:
            with capture(cli, tmp_path / "imp.pcap"):
                probe.sendto(b"P" + (0).to_bytes(4, "big"), (SERVER_IP, 7000))  # warm-up: ARP
                time.sleep(0.3)
                for i in range(1, 121):
                    probe.sendto(b"P" + i.to_bytes(4, "big"), (SERVER_IP, 7000))
                    time.sleep(0.012)
                probe.sendto(b"go", (SERVER_IP, 7000))
                probe.sendto(b"go", (SERVER_IP, 7000))
                time.sleep(1.5)
        finally:
            stop.set()
            th.join()
            for s in (echo, probe, sink):
                s.close()
    pkts = read_packets(tmp_path / "imp.pcap")
    sent = {p[:5]: ts for ts, _, p in udp_payloads(pkts, src=CLIENT_IP, dst_port=7000) if p[:1] == b"P"}
    back = {p[:5]: ts for ts, _, p in udp_payloads(pkts, src=SERVER_IP, src_port=7000) if p[:1] == b"P"}
    rtts = [(back[k] - sent[k]) * 1000 for k in sent if k in back and k != b"P\0\0\0\0"]
    # loss 10 % each way: ~81 of 120 round trips survive
    assert 60 <= len(rtts) <= 110, len(rtts)
    assert 58.0 <= statistics.median(rtts) <= 62.5, rtts  # 2 x 30 ms
    # jitter +-4 ms each way; the top decile is left to scheduling noise on a busy machine
    assert min(rtts) >= 60 - 8 - 0.5, rtts
    assert statistics.quantiles(rtts, n=10)[-1] <= 60 + 8 + 3, rtts
    assert statistics.pstdev(rtts) > 1.0, rtts  # jitter is really there
    stream = [int.from_bytes(p[1:5], "big") for _, _, p in udp_payloads(pkts, src=SERVER_IP, dst_port=6001)]
    assert stream == sorted(stream) and len(set(stream)) == len(stream), stream  # no reordering, no dups
    # both "go"s may be lost (1 %): then there is no stream to count
    assert stream, "the stream never started"
    lost = 1 - len(stream) / stream_n
    assert abs(lost - 0.1) < 0.025, lost  # 4.5 sigma of a binomial(3000, 0.1)


# ---------------------------------------------------------------------- policing and shaping


def _blast(sock: socket.socket, dest: tuple[str, int], *, seconds: float, rate_bps: float, stop: threading.Event,
           echo: bool = False) -> None:
    payload = b"BLST" + b"\0" * 1196  # 1228-byte IP packets
    sock.setblocking(False)
    for _ in paced(seconds, rate_bps, 1228):
        if stop.is_set():
            return
        with contextlib.suppress(BlockingIOError):
            sock.sendto(payload, dest)
        if echo:
            while True:
                try:
                    data, addr = sock.recvfrom(2048)
                except BlockingIOError:
                    break
                if data.startswith(b"PRB"):
                    sock.sendto(b"ECH" + data[3:], addr)


def test_policing_delivers_the_configured_rate(tmp_path: Path) -> None:
    prof = load_profile("twitter-2021")  # police 130 kbit/s on *.twimg.com, bucket 24576 B
    rate = prof.rules[0].rate_bps
    with running_testbed(prof, serve=False) as st:
        cli, srv = st["topology"]["namespaces"]["client"], st["topology"]["namespaces"]["server"]
        server = udp_socket(srv, SERVER_IP, 443)
        target = udp_socket(cli, CLIENT_IP, 6100)
        control = udp_socket(cli, CLIENT_IP, 6101)
        stop = threading.Event()
        threads = []
        try:
            with capture(cli, tmp_path / "police.pcap"):
                for sock, sni in ((target, "pbs.twimg.com"), (control, "www.example.org")):
                    for d in quic_initial(sni):
                        sock.sendto(d, (SERVER_IP, 443))
                server.settimeout(2)
                peers = set()
                while len(peers) < 2:
                    peers.add(server.recvfrom(2048)[1])
                for peer in peers:
                    th = threading.Thread(target=_blast, args=(server, peer),
                                          kwargs={"seconds": 4.5, "rate_bps": 800_000, "stop": stop}, daemon=True)
                    th.start()
                    threads.append(th)
                for th in threads:
                    th.join()
        finally:
            stop.set()
            for s in (server, target, control):
                s.close()
        stats = json.loads(Path(st["files"]["censor_stats"]).read_text())
    pkts = read_packets(tmp_path / "police.pcap")
    by_port: dict[int, list[tuple[float, int]]] = {6100: [], 6101: []}
    for ts, ip in pkts:
        if socket.inet_ntoa(ip.src) == SERVER_IP and isinstance(ip.data, dpkt.udp.UDP) and ip.data.dport in by_port:
            by_port[ip.data.dport].append((ts, ip.len))
    policed = tail_rate_bps(by_port[6100], skip_s=1.0)
    unpoliced = tail_rate_bps(by_port[6101], skip_s=1.0)
    assert abs(policed - rate) / rate < 0.10, policed
    assert abs(unpoliced - 800_000) / 800_000 < 0.10, unpoliced
    # the first second carries the bucket on top of the rate
    first = sum(n for t, n in by_port[6100] if t < by_port[6100][0][0] + 1.0)
    assert first > 24576 * 0.8
    snis = {f["sni"]: f["dpi"] for f in stats["flows"]}
    assert snis == {"pbs.twimg.com": "matched", "www.example.org": "not-matched"}


def test_shaping_adds_the_queueing_delay(tmp_path: Path) -> None:
    prof = profile_from_dict({
        "link": {"delay_ms": 10},
        "rule": [{"patterns": ["*.googlevideo.com"], "action": "shape", "rate_bps": 1_000_000,
                  "bucket_bytes": 3000, "queue_bytes": 60_000, "direction": "down"}],
    }, name="shape")
    queue_delay_s = 60_000 * 8 / 1_000_000  # 0.48 s with a full queue
    with running_testbed(prof, serve=False) as st:
        cli, srv = st["topology"]["namespaces"]["client"], st["topology"]["namespaces"]["server"]
        server = udp_socket(srv, SERVER_IP, 443)
        client = udp_socket(cli, CLIENT_IP, 6200)
        stop = threading.Event()
        try:
            with capture(cli, tmp_path / "shape.pcap"):
                for d in quic_initial("rr3---sn-abc.googlevideo.com"):
                    client.sendto(d, (SERVER_IP, 443))
                server.settimeout(2)
                peer = server.recvfrom(2048)[1]
                for i in range(3):  # unloaded RTT: probes echoed by hand
                    client.sendto(b"PRB" + i.to_bytes(4, "big"), (SERVER_IP, 443))
                    while not (data := server.recvfrom(2048))[0].startswith(b"PRB"):
                        pass
                    server.sendto(b"ECH" + data[0][3:], data[1])
                    time.sleep(0.1)
                th = threading.Thread(target=_blast, args=(server, peer),
                                      kwargs={"seconds": 3.5, "rate_bps": 2_000_000, "stop": stop, "echo": True},
                                      daemon=True)
                th.start()
                for i in range(3, 33):  # loaded RTT
                    client.sendto(b"PRB" + i.to_bytes(4, "big"), (SERVER_IP, 443))
                    time.sleep(0.1)
                th.join()
                time.sleep(0.7)  # drain the queue
        finally:
            stop.set()
            for s in (server, client):
                s.close()
    pkts = read_packets(tmp_path / "shape.pcap")
    out = {p[3:7]: ts for ts, _, p in udp_payloads(pkts, src=CLIENT_IP, dst_port=443) if p.startswith(b"PRB")}
    back = {p[3:7]: ts for ts, _, p in udp_payloads(pkts, src=SERVER_IP, src_port=443) if p.startswith(b"ECH")}
    rtt = {int.from_bytes(k, "big"): back[k] - out[k] for k in out if k in back}
    idle = [rtt[i] for i in range(3) if i in rtt]
    loaded = [rtt[i] for i in range(15, 33) if i in rtt]  # > 1 s into the blast: queue full
    assert len(idle) == 3 and len(loaded) >= 15, rtt
    assert all(0.019 <= r < 0.03 for r in idle), idle  # 2 x 10 ms
    added = statistics.median(loaded) - statistics.median(idle)
    assert abs(added - queue_delay_s) / queue_delay_s < 0.10, added
    down = [(ts, n) for ts, n, p in udp_payloads(pkts, src=SERVER_IP, src_port=443) if p.startswith(b"BLST")]
    shaped = tail_rate_bps(down, skip_s=1.0)
    assert abs(shaped - 1_000_000) / 1_000_000 < 0.10, shaped


# ---------------------------------------------------------------------- DPI end to end


@pytest.mark.parametrize("mode", ["reassemble", "first-segment"])
def test_dpi_over_tcp_and_quic_and_split_hello(mode: str, tmp_path: Path) -> None:
    data = load_profile("twitter-2021").to_dict()
    data["dpi_mode"] = mode
    prof = profile_from_dict(data, name=f"tw-{mode}")
    cases = [  # (transport, sni, split, expected)
        ("tcp", "abs.twimg.com", False, "matched"),
        ("tcp", "t.co", False, "matched"),
        ("tcp", "microsoft.com", False, "not-matched"),  # contains "t.co" as a substring
        ("tcp", "cdn.jsdelivr.net", False, "not-matched"),
        ("tcp", "pbs.twimg.com", True, "matched" if mode == "reassemble" else "not-matched"),
        ("quic", "video.twimg.com", False, "matched"),
        ("quic", "www.example.org", False, "not-matched"),
    ]
    with running_testbed(prof, serve=True) as st:
        cli = st["topology"]["namespaces"]["client"]
        ports = {}
        for transport, sni, split, _ in cases:
            if transport == "tcp":
                res = run_in_netns(cli, fetch_tcp, SERVER_IP, 443, sni, 2000, split_hello=split, timeout=10)
            else:
                res = run_in_netns(cli, fetch_quic, SERVER_IP, 443, sni, 2000, timeout=10)
            assert res["ok"], (sni, res)
            ports[("tcp" if transport == "tcp" else "udp", res["local_port"])] = sni
        stats_path = Path(st["files"]["censor_stats"])
        deadline = time.monotonic() + 5
        while True:
            stats = json.loads(stats_path.read_text())
            seen = {(f["proto"], f["client"][1]): f for f in stats["flows"]}
            if all(k in seen for k in ports) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    for (_transport, sni, _split, expected), key in zip(cases, ports, strict=True):
        flow = seen[key]
        assert flow["dpi"] == expected, (mode, sni, flow)
        if expected == "matched":
            assert flow["sni"] == sni


def test_tcp_download_through_policer(tmp_path: Path) -> None:
    """End to end: kernel TCP (bbr) from ``serve`` through DPI and the 130 kbit/s policer."""
    prof = load_profile("twitter-2021")
    rate = prof.rules[0].rate_bps
    nbytes = 100_000
    with running_testbed(prof, serve=True, serve_args=("--congestion-control", "bbr")) as st:
        cli = st["topology"]["namespaces"]["client"]
        with capture(cli, tmp_path / "tcp.pcap"):
            res = run_in_netns(cli, fetch_tcp, SERVER_IP, 443, "abs.twimg.com", nbytes, timeout=30)
    assert res["ok"], res
    pkts = read_packets(tmp_path / "tcp.pcap")
    down = [(ts, ip.len, len(ip.data.data)) for ts, ip in pkts
            if socket.inet_ntoa(ip.src) == SERVER_IP and isinstance(ip.data, dpkt.tcp.TCP)
            and ip.data.dport == res["local_port"]]
    assert down
    goodput = nbytes * 8 / (down[-1][0] - down[0][0])
    assert goodput <= 1.25 * rate + 24576 * 8 / (down[-1][0] - down[0][0])
    tail = tail_rate_bps([(t, n) for t, n, _ in down], skip_s=2.0)
    assert abs(tail - rate) / rate < 0.20, tail
