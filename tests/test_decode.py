"""Round trips: frames built with scapy, written as pcap/pcapng, decode to the same fields."""

from __future__ import annotations

import gzip
import struct

import pytest
from scapy.layers.inet import GRE, IP, TCP, UDP
from scapy.layers.inet6 import (
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.l2 import CookedLinux, Dot1AD, Dot1Q, Ether, Loopback
from scapy.layers.ppp import HDLC, PPP, PPPoE
from scapy.layers.vxlan import VXLAN

from keepiton_throttle import packets as P
from keepiton_throttle.packets import address_halves, format_address
from keepiton_throttle.sources.capture import read_capture

from .conftest import pcap_bytes, pcapng_block, pcapng_epb, pcapng_idb, pcapng_shb, pcapng_spb

TS = 1_700_000_000_123_456_789  # ~1.7e18 ns: huge timestamps must survive exactly


def tcp_pkt(payload: bytes = b"hello", **kw: object) -> TCP:
    opts = [("MSS", 1460), ("WScale", 7), ("SAckOK", b""), ("Timestamp", (123456, 654321)),
            ("NOP", None), ("NOP", None), ("SAck", (1000, 2000, 3000, 4000))]
    return TCP(sport=40000, dport=443, seq=0xFFFFFF00, ack=77, flags="PA", window=501,
               options=opts, **kw) / payload  # type: ignore[arg-type]


def decode_one(data: bytes, write_file, **kw):  # type: ignore[no-untyped-def]
    path = write_file(pcap_bytes([(TS, data)], **kw))
    table, info, stats = read_capture(path)
    assert stats.damage == []
    return table, info


def check_ipv4_tcp(t: P.PacketTable, row: int = 0, payload: bytes = b"hello") -> None:
    r = t.row(row)
    assert r["ip_version"] == 4 and r["proto"] == 6 and r["status"] == P.STATUS_OK
    assert format_address(r["src_hi"], r["src_lo"], 4) == "192.0.2.1"
    assert format_address(r["dst_hi"], r["dst_lo"], 4) == "198.51.100.7"
    assert (r["sport"], r["dport"]) == (40000, 443)
    assert r["tcp_seq"] == 0xFFFFFF00 and r["tcp_ack"] == 77
    assert r["tcp_flags"] == P.TCP_PSH | P.TCP_ACK
    assert r["tcp_win"] == 501 and r["tcp_mss"] == 1460 and r["tcp_wscale"] == 7
    assert r["tcp_opts"] == P.OPT_MSS | P.OPT_WSCALE | P.OPT_SACK_PERM | P.OPT_TS | P.OPT_SACK
    assert (r["tcp_tsval"], r["tcp_tsecr"]) == (123456, 654321)
    assert (r["sack_n"], r["sack_le"], r["sack_re"]) == (2, 1000, 2000)
    assert r["payload_len"] == len(payload) and r["payload_caplen"] == len(payload)
    assert r["ttl"] == 64


IP4 = IP(src="192.0.2.1", dst="198.51.100.7", ttl=64)

LINK_CASES = [
    ("ethernet", 1, lambda p: Ether(src="00:11:22:33:44:55", dst="66:77:88:99:aa:bb") / p),
    ("vlan", 1, lambda p: Ether() / Dot1Q(vlan=5) / p),
    ("qinq", 1, lambda p: Ether() / Dot1AD(vlan=100) / Dot1Q(vlan=200) / p),
    ("qinqinq", 1, lambda p: Ether() / Dot1AD(vlan=1) / Dot1Q(vlan=2) / Dot1Q(vlan=3) / p),
    ("pppoe", 1, lambda p: Ether() / PPPoE(sessionid=7) / PPP(proto=0x0021) / p),
    ("vlan+pppoe", 1, lambda p: Ether() / Dot1AD(vlan=9) / Dot1Q(vlan=10) / PPPoE(sessionid=3) / PPP(proto=0x0021) / p),
    ("raw101", 101, lambda p: p),
    ("ipv4_228", 228, lambda p: p),
    ("sll", 113, lambda p: CookedLinux(pkttype=0, proto=0x0800) / p),
    ("null_le", 0, lambda p: Loopback(type=2) / p),
    ("loop_108", 108, lambda p: struct.pack(">I", 2) + bytes(p)),
    ("ppp9", 9, lambda p: PPP(proto=0x0021) / p),
    ("ppp9_hdlc", 9, lambda p: HDLC() / PPP(proto=0x0021) / p),
    ("ppp50", 50, lambda p: HDLC() / PPP(proto=0x0021) / p),
]


@pytest.mark.parametrize("name,linktype,wrap", LINK_CASES, ids=[c[0] for c in LINK_CASES])
def test_link_types_round_trip(name, linktype, wrap, write_file):  # type: ignore[no-untyped-def]
    frame = bytes(wrap(IP4 / tcp_pkt()))
    t, info = decode_one(frame, write_file, linktype=linktype)
    assert info.linktypes == [linktype]
    assert t.n == 1 and t.ts_ns[0] == TS // 1000 * 1000
    assert t.linktype[0] == linktype
    check_ipv4_tcp(t)
    assert t.caplen[0] == len(frame) and t.wirelen[0] == len(frame)
    # the payload offset points at the payload bytes in the file
    off = int(t.payload_off[0])
    data = pcap_bytes([(TS, frame)], linktype=linktype)
    assert data[off : off + 5] == b"hello"


def test_sll2_and_ipv6_raw_229(write_file):  # type: ignore[no-untyped-def]
    ip6 = IPv6(src="2001:db8::1", dst="2001:db8::2", hlim=33) / UDP(sport=5353, dport=443) / (b"\xc0" + b"q" * 30)
    # SLL2 (LINKTYPE 276): protocol(2) reserved(2) ifindex(4) arphrd(2) pkttype(1) addrlen(1) addr(8)
    sll2 = struct.pack(">HHIHBB8s", 0x86DD, 0, 3, 1, 0, 6, b"\x01" * 8)
    for lt, frame in ((276, sll2 + bytes(ip6)), (229, bytes(ip6))):
        t, _ = decode_one(frame, write_file, linktype=lt)
        r = t.row(0)
        assert r["ip_version"] == 6 and r["proto"] == 17 and r["status"] == 0
        assert format_address(r["src_hi"], r["src_lo"], 6) == "2001:db8::1"
        assert format_address(r["dst_hi"], r["dst_lo"], 6) == "2001:db8::2"
        assert (r["sport"], r["dport"], r["payload_len"], r["ttl"]) == (5353, 443, 31, 33)


def test_null_linktype_ipv6_families(write_file):  # type: ignore[no-untyped-def]
    ip6 = IPv6(src="::1", dst="::1") / TCP(sport=1, dport=2, flags="S")
    for fam in (10, 24, 28, 30):
        t, _ = decode_one(struct.pack("<I", fam) + bytes(ip6), write_file, linktype=0)
        assert t.ip_version[0] == 6 and t.proto[0] == 6 and t.tcp_flags[0] == P.TCP_SYN
    # written on a big-endian host: family in network order
    t, _ = decode_one(struct.pack(">I", 30) + bytes(ip6), write_file, linktype=0)
    assert t.ip_version[0] == 6


def test_ipv4_options_and_fragments(write_file):  # type: ignore[no-untyped-def]
    from scapy.layers.inet import IPOption_RR

    p = IP(src="192.0.2.1", dst="198.51.100.7", options=[IPOption_RR(routers=["1.2.3.4"])]) / tcp_pkt()
    t, _ = decode_one(bytes(Ether() / p), write_file)
    check_ipv4_tcp(t)
    big = IP(src="192.0.2.1", dst="198.51.100.7", id=9) / UDP(sport=1000, dport=2000) / (b"x" * 3000)
    frags = [bytes(Ether() / f) for f in __import__("scapy.all", fromlist=["fragment"]).fragment(big, 1400)]
    path = write_file(pcap_bytes([(TS + i, f) for i, f in enumerate(frags)]))
    t, _, _ = read_capture(path)
    assert list(t.ip_frag) == [P.FRAG_FIRST, P.FRAG_LATER, P.FRAG_LATER]
    assert (t.sport[0], t.dport[0]) == (1000, 2000) and t.sport[1] == 0
    assert t.payload_len[0] == 1400 - 8  # the UDP header's length field covers the whole datagram
    assert all(t.status == 0)


def test_ipv6_extension_chain_and_fragment(write_file):  # type: ignore[no-untyped-def]
    base = IPv6(src="2001:db8::a", dst="2001:db8::b")
    p = base / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / IPv6ExtHdrRouting() / tcp_pkt()
    t, _ = decode_one(bytes(Ether() / p), write_file)
    r = t.row(0)
    assert r["proto"] == 6 and r["status"] == 0 and (r["sport"], r["dport"]) == (40000, 443)
    assert r["tcp_tsval"] == 123456 and r["payload_len"] == 5
    first = base / IPv6ExtHdrFragment(offset=0, m=1, id=5) / UDP(sport=7, dport=8) / (b"a" * 16)
    later = base / IPv6ExtHdrFragment(offset=3, m=0, id=5, nh=17) / (b"b" * 16)
    path = write_file(pcap_bytes([(TS, bytes(Ether() / first)), (TS + 1, bytes(Ether() / later))]))
    t, _, _ = read_capture(path)
    assert list(t.ip_frag) == [P.FRAG_FIRST, P.FRAG_LATER]
    assert list(t.proto) == [17, 17] and t.sport[0] == 7 and t.sport[1] == 0


def test_tunnels_give_inner_rows(write_file):  # type: ignore[no-untyped-def]
    inner = Ether() / Dot1Q(vlan=3) / IP4 / tcp_pkt()
    vx = Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=5555, dport=4789) / VXLAN(vni=42) / inner
    gre = Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / GRE(proto=0x0800) / IP4 / tcp_pkt()
    gre_key = Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / GRE(key_present=1, key=7, seqnum_present=1, sequence_number=3, proto=0x0800) / IP4 / tcp_pkt()
    ipip = Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / IP4 / tcp_pkt()
    path = write_file(pcap_bytes([(TS + i, bytes(f)) for i, f in enumerate((vx, gre, gre_key, ipip))]))
    t, _, stats = read_capture(path)
    assert stats.records == 4 and t.n == 8
    assert list(t.encap) == [0, 1] * 4
    assert list(t.frame) == [1, 1, 2, 2, 3, 3, 4, 4]
    assert list(t.proto[::2]) == [17, 47, 47, 4]
    for row in (1, 3, 5, 7):
        check_ipv4_tcp(t, row)


def test_pcap_variants_and_gzip(write_file):  # type: ignore[no-untyped-def]
    frame = bytes(Ether() / IP4 / tcp_pkt())
    for nsec in (False, True):
        for be in (False, True):
            data = pcap_bytes([(TS, frame), (TS + 1500, frame)], nsec=nsec, big_endian=be)
            for gz in (False, True):
                path = write_file(gzip.compress(data) if gz else data, f"v{nsec}{be}{gz}.pcap")
                t, info, stats = read_capture(path)
                assert info.format == "pcap" and info.compressed == gz and info.nanosecond == nsec
                assert info.byte_order == ("big" if be else "little")
                expect = [TS, TS + 1500] if nsec else [TS // 1000 * 1000, (TS + 1500) // 1000 * 1000]
                assert list(t.ts_ns) == expect
                check_ipv4_tcp(t, 1)


def test_pcapng_interfaces_resolutions_and_blocks(write_file):  # type: ignore[no-untyped-def]
    eth = bytes(Ether() / IP4 / tcp_pkt())
    raw = bytes(IP4 / tcp_pkt())
    sec = 1_700_000_000
    for be in (False, True):
        data = b"".join([
            pcapng_shb(big_endian=be),
            pcapng_idb(1, big_endian=be),  # default resolution: microseconds
            pcapng_idb(101, tsresol=9, big_endian=be),  # nanoseconds
            pcapng_idb(1, tsresol=0x80 | 20, tsoffset=100, big_endian=be),  # 2^-20 s, +100 s
            pcapng_block(4, b"\0\0\0\0", big_endian=be),  # name resolution block: skipped
            pcapng_epb(0, sec * 1_000_000 + 5, eth, big_endian=be),
            pcapng_epb(1, sec * 1_000_000_000 + 7, raw, big_endian=be),
            pcapng_epb(2, (sec << 20) + (1 << 19), eth, big_endian=be),
            pcapng_block(0x40000BAD, b"custom", big_endian=be),  # unknown block: skipped
            pcapng_spb(eth, big_endian=be),
        ])
        path = write_file(data, f"x{be}.pcapng")
        t, info, stats = read_capture(path)
        assert stats.damage == [] and info.format == "pcapng"
        assert [i.linktype for i in info.interfaces] == [1, 101, 1]
        assert list(t.iface) == [0, 1, 2, 0]
        assert list(t.ts_ns) == [
            sec * 1_000_000_000 + 5000,
            sec * 1_000_000_000 + 7,
            (sec + 100) * 1_000_000_000 + 500_000_000,
            0,  # simple packet blocks carry no timestamp
        ]
        for row in range(4):
            check_ipv4_tcp(t, row)


def test_pcapng_second_section_switches_byte_order(write_file):  # type: ignore[no-untyped-def]
    eth = bytes(Ether() / IP4 / tcp_pkt())
    data = (pcapng_shb() + pcapng_idb(1) + pcapng_epb(0, 1, eth)
            + pcapng_shb(big_endian=True) + pcapng_idb(101, big_endian=True)
            + pcapng_epb(0, 2, bytes(IP4 / tcp_pkt()), big_endian=True))
    t, info, stats = read_capture(write_file(data, "two.pcapng"))
    assert stats.records == 2 and info.sections == 2
    assert list(t.linktype) == [1, 101]
    check_ipv4_tcp(t, 0)
    check_ipv4_tcp(t, 1)


def test_truncated_headers_and_snaplen(write_file):  # type: ignore[no-untyped-def]
    frame = bytes(Ether() / IP4 / tcp_pkt(b"x" * 1000))
    cuts = [10, 20, 34 + 10, 34 + 24, 34 + 30, 34 + 70]  # the TCP header is 60 bytes
    data = pcap_bytes([(TS, frame[:c]) for c in cuts], wirelens=[len(frame)] * len(cuts))
    t, _, stats = read_capture(write_file(data))
    assert stats.damage == [] and t.n == len(cuts)
    assert list(t.status) == [1, 1, 1, 1, 1, 0]
    assert list(t.wirelen) == [len(frame)] * len(cuts)
    # ports are known once 4 bytes of TCP are captured; the payload length stays the wire value
    assert t.sport[2] == 40000 and t.dport[2] == 443
    assert t.payload_len[5] == 1000 and t.payload_caplen[5] == 10


def test_unsupported_and_malformed(write_file):  # type: ignore[no-untyped-def]
    from scapy.layers.l2 import ARP

    arp = bytes(Ether() / ARP())
    bad_ihl = bytearray(bytes(Ether() / IP4 / tcp_pkt()))
    bad_ihl[14] = 0x43  # IHL 3 < 5
    bad_doff = bytearray(bytes(Ether() / IP4 / tcp_pkt()))
    bad_doff[14 + 20 + 12] = 0x20  # data offset 2 < 5
    data = pcap_bytes([(TS, arp), (TS, bytes(bad_ihl)), (TS, bytes(bad_doff))])
    t, _, _ = read_capture(write_file(data))
    assert list(t.status) == [P.STATUS_UNSUPPORTED, P.STATUS_MALFORMED, P.STATUS_MALFORMED]
    # an unknown link type: records are counted, rows are "unsupported"
    t, info, stats = read_capture(write_file(pcap_bytes([(TS, b"abc")], linktype=147), "u.pcap"))
    assert stats.records == 1 and t.status[0] == P.STATUS_UNSUPPORTED


def test_address_helpers_round_trip() -> None:
    for text, v in (("192.0.2.1", 4), ("2001:db8::1", 6), ("::1", 6)):
        hi, lo = address_halves(text)
        assert format_address(hi, lo, v) == text


def test_chunking_gives_the_same_table(write_file):  # type: ignore[no-untyped-def]
    """Small chunks (many kernel calls, records split across reads) change nothing."""
    from keepiton_throttle.sources.capture import CaptureReader

    frames = [bytes(Ether() / IP4 / tcp_pkt(b"y" * (i % 300))) for i in range(500)]
    path = write_file(pcap_bytes([(TS + i * 1000, f) for i, f in enumerate(frames)]))
    whole, _, _ = read_capture(path)
    with CaptureReader(path, chunk_bytes=4096, rows_per_chunk=1024) as r:
        chunks = list(r)
    assert len(chunks) > 10
    import numpy as np

    from keepiton_throttle.packets import PacketTable

    parts = PacketTable.concat([c.table for c in chunks])
    for b in whole.blocks:
        assert np.array_equal(whole.blocks[b], parts.blocks[b])
    # every chunk's payload offsets index its own data buffer
    for c in chunks:
        t = c.table
        for i in range(min(t.n, 5)):
            off = int(t.payload_off[i]) - c.data_offset
            assert bytes(c.data[off : off + 1]) == b"y" or t.payload_len[i] == 0


def test_kept_chunks_are_never_overwritten_by_recycled_blocks(write_file):  # type: ignore[no-untyped-def]
    """The reader reuses output blocks only once no view of them is alive."""
    import numpy as np

    from keepiton_throttle.sources.capture import CaptureReader

    frames = [bytes(Ether() / IP4 / tcp_pkt(b"z" * (i % 200))) for i in range(3000)]
    path = write_file(pcap_bytes([(TS + i * 1000, f) for i, f in enumerate(frames)]))
    with CaptureReader(path, chunk_bytes=4096, rows_per_chunk=1024) as r:
        kept = [c.table for c in r]  # every chunk kept alive
    with CaptureReader(path, chunk_bytes=4096, rows_per_chunk=1024) as r:
        fresh = [c.table.ts_ns.copy() for c in r]  # each chunk dropped: blocks get recycled
    assert len(kept) == len(fresh) > 10
    for t, ts in zip(kept, fresh, strict=True):
        assert np.array_equal(t.ts_ns, ts)


def test_payload_head_is_the_first_captured_payload_bytes(write_file):  # type: ignore[no-untyped-def]
    """``payload_head``: the first 8 captured payload bytes, big-endian, zero-padded on the
    right; 0 without a captured payload. Checked against the file's own bytes."""
    payloads = [b"", b"\xc3", b"\x16\x03\x01", b"\xc0\x00\x00\x00\x01\x08abc", b"0123456789abcdef"]
    frames = []
    for p in payloads:
        frames.append(bytes(Ether() / IP4 / tcp_pkt(p)))
        frames.append(bytes(Ether() / IP4 / UDP(sport=5000, dport=443) / p))
        frames.append(bytes(Ether() / IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP(sport=5000, dport=443) / p))
    frames.append(bytes(Ether() / IP(src="192.0.2.1", dst="192.0.2.2", proto=132) / b"\x01\x02\x03"))  # other
    # a frame cut 3 bytes into its payload: the head is what was captured
    cut = bytes(Ether() / IP4 / UDP(sport=5000, dport=443) / b"ABCDEFGHIJ")
    records = [(TS + i, f) for i, f in enumerate(frames)] + [(TS + 99, cut[: len(cut) - 7])]
    data = pcap_bytes(records, wirelens=[len(f) for f in frames] + [len(cut)])
    table, _, _ = read_capture(write_file(data))
    assert table.n == len(records)
    for i in range(table.n):
        n = int(table.payload_caplen[i])
        off = int(table.payload_off[i])
        head = data[off : off + min(n, 8)] if n else b""
        assert int(table.payload_head[i]) == int.from_bytes(head.ljust(8, b"\0"), "big"), i
    assert int(table.payload_head[-1]) == int.from_bytes(b"ABC".ljust(8, b"\0"), "big")
    assert int(table.payload_head[3 * 3 + 1]) >> 56 == 0xC0  # a QUIC long header's first byte


def test_kernel_column_constants_match_the_table_layout() -> None:
    """decode.py writes columns by constant index: they must be packets.py's layout."""
    from keepiton_throttle import decode as D

    assert (D._N_I64, D._N_U64, D._N_U32, D._N_U16, D._N_U8) == tuple(len(c) for _, _, c in P.BLOCKS)
    named = {"ts_ns": D._I_TS, "payload_off": D._I_POFF, "frame": D._I_FRAME,
             "src_hi": D._Q_SHI, "dst_lo": D._Q_DLO, "payload_head": D._Q_HEAD,
             "payload_caplen": D._W_PCAP, "sack_re": D._W_SRE, "tcp_mss": D._H_MSS,
             "tcp_wscale": D._B_WS, "ttl": D._B_TTL}
    for name, idx in named.items():
        assert P.COLUMNS[name][1] == idx, name
