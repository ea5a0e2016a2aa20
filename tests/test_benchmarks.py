"""Smoke tests of the benchmark capture generator: what it writes decodes to what it meant.

No timing here: ``benchmarks/bench_decode.py`` measures speed; these tests only check that its
input is right.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from keepiton_throttle import packets as P
from keepiton_throttle.sources.capture import CaptureReader, read_capture
from keepiton_throttle.summary import summarize

GEN = Path(__file__).resolve().parent.parent / "benchmarks" / "gen_capture.py"
N = 2_000


def generate(out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(GEN), "-o", str(out), *args],
                          capture_output=True, text=True, check=True, timeout=120)


@pytest.fixture(scope="module")
def pcap(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    d = tmp_path_factory.mktemp("gen")
    out = generate(d / "g.pcap", "-n", str(N), "--seed", "7", "--intent", str(d / "g.npz"), "--json")
    with np.load(d / "g.npz") as z:
        intent = {k: z[k] for k in z.files}
    intent["_desc"] = json.loads(out.stdout)
    return d / "g.pcap", intent


INTENT_COLUMNS = (
    "ts_ns", "wirelen", "caplen", "ip_version", "proto", "src_hi", "src_lo", "dst_hi", "dst_lo",
    "sport", "dport", "ttl", "tcp_flags", "tcp_seq", "tcp_ack", "tcp_win", "tcp_tsval",
    "tcp_tsecr", "tcp_opts", "tcp_mss", "tcp_wscale", "sack_n", "sack_le", "sack_re",
    "payload_len",
)


@pytest.mark.parametrize("fmt", ["pcap", "pcapng.gz"])
def test_decodes_to_the_generators_intent(fmt: str, pcap, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path, intent = pcap
    if fmt != "pcap":
        path = tmp_path / f"g.{fmt}"
        generate(path, "-n", str(N), "--seed", "7", "--pcapng", "--gzip")
    table, info, stats = read_capture(path)
    assert (info.format, info.compressed) == (("pcap", False) if fmt == "pcap" else ("pcapng", True))
    assert stats.records == table.records == table.n == N
    assert stats.damage == [] and not stats.stopped_early
    assert (table.status == P.STATUS_OK).all()
    assert (table.linktype == 1).all()
    for name in INTENT_COLUMNS:
        np.testing.assert_array_equal(table.column(name), intent[name].astype(table.column(name).dtype),
                                      err_msg=name)


def test_spot_checks(pcap) -> None:  # type: ignore[no-untyped-def]
    path, intent = pcap
    table, _, _ = read_capture(path)
    tcp = table.proto == 6
    # a mix of the traffic the benchmark promises
    assert 0.7 < tcp.mean() < 0.95
    assert (table.ip_version == 6).any() and (table.proto == 17).any()
    assert (table.caplen <= 128).all() and table.wirelen.max() == 1514
    assert (np.diff(table.ts_ns) >= 0).all() and table.ts_ns[0] > 1_700_000_000 * 10**9
    # SYNs carry MSS, window scale 7, SACK-permitted and timestamps (TSecr 0)
    syn = np.flatnonzero(table.tcp_flags == P.TCP_SYN)
    assert syn.size > 0
    s = table.row(int(syn[0]))
    assert s["tcp_opts"] == P.OPT_MSS | P.OPT_WSCALE | P.OPT_SACK_PERM | P.OPT_TS
    assert s["tcp_mss"] in (1460, 1440) and s["tcp_wscale"] == 7 and s["tcp_tsecr"] == 0
    # bulk data: full-sized segments, server to client, with timestamps
    data = np.flatnonzero(tcp & (table.payload_len > 0))
    assert set(np.unique(table.payload_len[data])) == {1428, 1448}
    assert (table.tcp_opts[data] == P.OPT_TS).all()
    # SACK blocks start one segment above the cumulative ACK
    sack = np.flatnonzero(table.sack_n > 0)
    assert sack.size > 0 and set(np.unique(table.sack_n[sack])) <= {1, 2, 3}
    seg = np.where(table.ip_version[sack] == 6, 1428, 1448).astype(np.uint32)
    assert (table.sack_le[sack] - table.tcp_ack[sack] == seg).all()  # uint32: wraps like TCP
    # one conversation per generated flow, and the generator's own counts agree
    desc, summary = intent["_desc"], summarize(path)
    assert summary.tcp_conversations + summary.udp_conversations == desc["flows"]
    assert (summary.packets, summary.udp, summary.ipv6) == (N, desc["udp"], desc["ipv6"])


def test_quic_first_bytes(pcap) -> None:  # type: ignore[no-untyped-def]
    path, intent = pcap
    firsts = []
    with CaptureReader(path) as reader:
        for chunk in reader:
            t = chunk.table
            for i in np.flatnonzero(t.proto == 17):
                assert t.dport[i] == 443 or t.sport[i] == 443
                off = int(t.payload_off[i]) - chunk.data_offset
                firsts.append(int(chunk.data[off]))
    want = intent["quic_first"][intent["proto"] == 17]
    assert firsts == want.tolist()
    # long headers (form bit set) at the start of flows, short headers (fixed bit only) after
    assert {0xC3, 0xC1, 0xE1} <= set(firsts) and {0x41, 0x61} & set(firsts)


def test_prefix_and_size_modes(tmp_path: Path) -> None:
    generate(tmp_path / "a.pcap", "-n", "1000")
    generate(tmp_path / "b.pcap", "-n", "1500")
    a, b = (tmp_path / "a.pcap").read_bytes(), (tmp_path / "b.pcap").read_bytes()
    assert b.startswith(a) and len(b) > len(a)
    generate(tmp_path / "s.pcap", "--size", "300kB", "--snaplen", "1514")
    size = (tmp_path / "s.pcap").stat().st_size
    assert 300_000 <= size < 300_000 + 16 + 1514
    table, _, stats = read_capture(tmp_path / "s.pcap")
    assert stats.damage == [] and table.n > 200 and (table.caplen == table.wirelen).all()


def test_bad_size_is_a_usage_error(tmp_path: Path) -> None:
    p = subprocess.run([sys.executable, str(GEN), "-o", str(tmp_path / "x.pcap"), "--size", "2XB"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "size must look like 2GB" in p.stderr
