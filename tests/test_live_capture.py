"""The live capture: pcapng writer, TPACKET_V3 block conversion, BPF chaining, privileges, and a
real ring capture on the loopback interface of a private network namespace."""

from __future__ import annotations

import ctypes.util
import io
import os
import shutil
import socket
import struct
import subprocess
import threading
import types
from pathlib import Path

import pytest
from click.testing import CliRunner

from keepiton_throttle.errors import PrivilegeError
from keepiton_throttle.live import capture as cap
from keepiton_throttle.live.capture import (
    BPF_JMP_JA,
    BPF_RET_K,
    PRIVILEGE_HINT,
    PcapngWriter,
    chain_by_direction,
    compile_bpf,
    convert_block,
    direction_filters,
    run_bpf,
)
from keepiton_throttle.sources.capture import read_capture, read_capture_bytes

TS = 1_700_000_000_123_456_789  # ~1.7e18 ns: must survive exactly

# the BPF compiler is libpcap's (through Scapy); CI installs it with tcpdump
requires_libpcap = pytest.mark.skipif(ctypes.util.find_library("pcap") is None, reason="libpcap not installed")


def _frame(src: str, dst: str, sport: int, dport: int, payload: bytes, *, udp: bool = False) -> bytes:
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.l2 import Ether

    l4 = UDP(sport=sport, dport=dport) if udp else TCP(sport=sport, dport=dport, flags="PA", seq=1000)
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src=src, dst=dst) / l4 / payload)


# ---------------------------------------------------------------------- writer


def test_pcapng_writer_round_trip_through_read_capture(tmp_path: Path) -> None:
    frames = [_frame("10.0.0.1", "10.0.0.2", 40000, 443, b"x" * n) for n in (0, 1, 2, 3, 1000)]
    raw_ip = frames[1][14:]
    path = tmp_path / "w.pcapng"
    with open(path, "wb") as fh:
        w = PcapngWriter(fh, comment="test")
        eth = w.add_interface(1, 65535, "eth-test")
        raw = w.add_interface(101, 256, "tun-test")
        for k, f in enumerate(frames):
            w.write_packet(eth, TS + k, f)
        w.write_packet(raw, TS + 99, raw_ip)
        cut = frames[-1][:100]  # a server->client packet cut to its headers
        w.write_packet(eth, TS + 100, cut, wirelen=len(frames[-1]))
        w.write_stats(eth, ts_ns=TS + 200, received=7, dropped=0, start_ns=TS)
    table, info, stats = read_capture(path)
    assert info.format == "pcapng" and stats.damaged == 0
    assert [i.linktype for i in info.interfaces] == [1, 101]
    assert [i.ts_exp for i in info.interfaces] == [9, 9]
    assert table.n == 7
    assert table.ts_ns.tolist() == [TS, TS + 1, TS + 2, TS + 3, TS + 4, TS + 99, TS + 100]
    assert table.iface.tolist() == [0, 0, 0, 0, 0, 1, 0]
    assert table.caplen.tolist() == [len(f) for f in frames] + [len(raw_ip), 100]
    assert table.wirelen.tolist()[-1] == len(frames[-1])
    # byte counts come from the IP header, so the cut packet still counts its 1000 bytes
    assert table.payload_len.tolist() == [0, 1, 2, 3, 1000, 1, 1000]
    assert set(table.dport.tolist()[:5]) == {443}


def _tpacket_block(frames: list[bytes], *, mac: int = 66) -> bytes:
    """A TPACKET_V3 block as the kernel lays it out (linux/if_packet.h), for ``frames``."""
    pkts = []
    for k, f in enumerate(frames):
        snap = min(len(f), 256) if k % 2 else len(f)  # every other packet cut, as the filter does
        body = bytearray(mac) + f[:snap]
        hdr = struct.pack("<IIIIIIHH", 0, TS // 10**9, TS % 10**9 + k, snap, len(f), 1, mac, mac)
        body[:len(hdr)] = hdr
        body += b"\0" * (-len(body) % 16)
        pkts.append(body)
    for k in range(len(pkts) - 1):
        struct.pack_into("<I", pkts[k], 0, len(pkts[k]))
    first = 48
    blk = struct.pack("<IIIIIIQ", 3, 0, 1, len(frames), first, first + sum(map(len, pkts)), 7)
    return blk + b"\0" * (first - len(blk)) + b"".join(pkts)


def test_convert_block_writes_the_same_records_as_the_writer() -> None:
    frames = [_frame("10.0.0.2", "10.0.0.1", 443, 40000, b"y" * n) for n in (10, 1400, 3, 700)]
    block = b"\0" * 4096 + _tpacket_block(frames)  # at an offset, as inside the ring
    fast = io.BytesIO()
    w = PcapngWriter(fast)
    w.add_interface(1, 65535, "veth")
    out = bytearray()
    assert convert_block(block, 4096, 0, out) == len(frames)
    fast.write(out)
    slow = io.BytesIO()
    w2 = PcapngWriter(slow)
    w2.add_interface(1, 65535, "veth")
    for k, f in enumerate(frames):
        snap = min(len(f), 256) if k % 2 else len(f)
        w2.write_packet(0, TS + k, f[:snap], wirelen=len(f))
    assert fast.getvalue() == slow.getvalue()
    table, _, stats = read_capture_bytes(fast.getvalue())
    assert stats.damaged == 0 and table.n == 4
    assert table.ts_ns.tolist() == [TS + k for k in range(4)]
    assert table.payload_len.tolist() == [10, 1400, 3, 700]


def test_convert_block_of_an_empty_block() -> None:
    out = bytearray()
    assert convert_block(_tpacket_block([]), 0, 0, out) == 0 and out == bytearray()


# ---------------------------------------------------------------------- BPF


def test_chain_by_direction_rewrites_returns_into_forward_jumps() -> None:
    accept_all = [(BPF_RET_K, 0, 0, 65535)]
    reject_all = [(BPF_RET_K, 0, 0, 0)]
    prog = chain_by_direction(reject_all, accept_all, snap_up=9999, snap_down=256)
    assert prog == [(BPF_JMP_JA, 0, 0, 0), (BPF_JMP_JA, 0, 0, 1),
                    (BPF_RET_K, 0, 0, 9999), (BPF_RET_K, 0, 0, 256), (BPF_RET_K, 0, 0, 0)]
    assert run_bpf(prog, b"\0" * 1000) == 256
    assert run_bpf(chain_by_direction(accept_all, accept_all, snap_up=9999, snap_down=256), b"\0" * 1000) == 1000
    assert run_bpf(chain_by_direction(reject_all, reject_all, snap_up=9999, snap_down=256), b"\0" * 10) == 0
    with pytest.raises(ValueError, match="empty BPF program"):
        chain_by_direction([], accept_all, snap_up=1, snap_down=1)
    with pytest.raises(ValueError, match="accumulator"):
        chain_by_direction([(0x16, 0, 0, 0)], accept_all, snap_up=1, snap_down=1)


@requires_libpcap
def test_direction_filters_keep_client_packets_whole_and_cut_server_packets() -> None:
    up, down = direction_filters([("10.77.0.2", 443), ("10.77.0.9", 8443), ("10.77.0.2", 443)])
    assert up.count("dst host") == 2 and down.count("src host") == 2
    prog = chain_by_direction(compile_bpf(up, linktype=1), compile_bpf(down, linktype=1),
                              snap_up=65535, snap_down=256)
    hello = _frame("10.77.0.1", "10.77.0.2", 40000, 443, b"h" * 1400)
    data = _frame("10.77.0.2", "10.77.0.1", 443, 40000, b"d" * 1400)
    quic_down = _frame("10.77.0.9", "10.77.0.1", 8443, 40000, b"q" * 1200, udp=True)
    other = _frame("10.77.0.5", "10.77.0.1", 443, 40000, b"o" * 100)
    wrong_port = _frame("10.77.0.2", "10.77.0.1", 80, 40000, b"o" * 100)
    assert run_bpf(prog, hello) == len(hello)
    assert run_bpf(prog, data) == 256
    assert run_bpf(prog, quic_down) == 256
    assert run_bpf(prog, other) == 0 and run_bpf(prog, wrong_port) == 0
    loop = chain_by_direction(compile_bpf(up, linktype=1), compile_bpf(down, linktype=1),
                              snap_up=65535, snap_down=256, drop_outgoing=True)
    assert run_bpf(loop, hello, pkttype=0) == len(hello)
    assert run_bpf(loop, hello, pkttype=cap.PACKET_OUTGOING) == 0
    with pytest.raises(ValueError, match="no endpoint"):
        direction_filters([])


# ---------------------------------------------------------------------- privileges


@pytest.fixture
def no_cap_net_raw(monkeypatch: pytest.MonkeyPatch) -> None:
    """A test double of the socket module whose AF_PACKET sockets fail as without CAP_NET_RAW."""
    real = socket

    def fake_socket(family: int = -1, *args: object, **kw: object) -> socket.socket:
        if family == real.AF_PACKET:
            raise PermissionError(1, "Operation not permitted")
        return real.socket(family, *args, **kw)  # type: ignore[arg-type]

    double = types.SimpleNamespace(**{k: getattr(real, k) for k in dir(real) if not k.startswith("__")})
    double.socket = fake_socket
    monkeypatch.setattr(cap, "socket", double)


def test_missing_cap_net_raw_says_how_to_grant_it(no_cap_net_raw: None) -> None:
    with pytest.raises(PrivilegeError) as info:
        cap.open_packet_socket()
    assert str(info.value) == PRIVILEGE_HINT
    assert "sudo" in PRIVILEGE_HINT and "setcap cap_net_raw,cap_net_admin+eip" in PRIVILEGE_HINT
    assert "--no-capture" in PRIVILEGE_HINT


def test_run_without_capture_privileges_is_one_clear_line(no_cap_net_raw: None, tmp_path: Path) -> None:
    from keepiton_throttle.live.cli import run_command

    res = CliRunner().invoke(run_command, ["--target", "twitter", "--out", str(tmp_path / "o")])
    assert res.exit_code == 1
    assert res.output.strip().splitlines() == [f"Error: {PRIVILEGE_HINT}"]
    assert not (tmp_path / "o").exists()  # nothing was measured


# ---------------------------------------------------------------------- a real capture

needs_root = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root")


@needs_root
@requires_libpcap
@pytest.mark.netns
def test_ring_capture_of_a_loopback_download(tmp_path: Path) -> None:
    from keepiton_throttle.testbed.netns import run_in_netns

    ns = f"klc{os.getpid() % 100000}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        path = tmp_path / "lo.pcapng"
        stats, nbytes, port = run_in_netns(ns, _loopback_download, path)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=True)
    assert nbytes == 2_000_000 and stats.dropped == 0
    assert stats.packets == stats.interfaces[0].kernel_packets > 10
    with pytest.raises(Exception, match="exists"):
        cap.RingCapture(path, ["lo"], [("127.0.0.1", port)]).start()
    table, info, rs = read_capture(path)
    assert rs.damaged == 0 and table.n == stats.packets
    assert [i.name for i in info.interfaces] == ["lo"]
    up = table.dport == port
    down = table.sport == port
    assert (up | down).all()  # nothing but the measured flow
    assert (table.caplen[down] <= 256).all() and (table.caplen[up] == table.wirelen[up]).all()
    data = down & (table.payload_len > 0)
    seq = table.tcp_seq[data].astype(int)
    rel = (seq - seq[0]) % 2**32
    # every byte of the body is in the capture (a retransmission may add some)
    assert int((rel + table.payload_len[data]).max()) == 2_000_000 and int(table.payload_len[down].sum()) >= 2_000_000
    assert int(table.payload_len[up].sum()) == 700  # the request, whole
    assert (table.ts_ns[1:] >= table.ts_ns[:-1]).all()


def _loopback_download(path: Path) -> tuple[cap.CaptureStats, int, int]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    port = srv.getsockname()[1]

    def serve() -> None:
        c, _ = srv.accept()
        got = 0
        while got < 700:
            got += len(c.recv(4096))
        c.sendall(b"z" * 2_000_000)
        c.close()

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    rc = cap.RingCapture(path, ["lo"], [("127.0.0.1", port)], block_size=1 << 16, block_count=8, retire_ms=10)
    rc.start()
    n = 0
    with socket.create_connection(("127.0.0.1", port)) as c:
        c.sendall(b"r" * 700)
        while data := c.recv(1 << 16):
            n += len(data)
    th.join()
    srv.close()
    return rc.stop(), n, port
