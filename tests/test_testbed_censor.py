"""The censor's sans-I/O core, driven with synthetic frames and a fake clock (no namespaces)."""

from __future__ import annotations

import random
import struct
from typing import Any

import pytest

from keepiton_throttle.testbed.censor import (
    DOWN,
    DROP,
    FORWARD,
    QUEUED,
    UP,
    CensorCore,
    Policer,
    Shaper,
)
from keepiton_throttle.testbed.client import client_hello_bytes, split_offset
from keepiton_throttle.testbed.profiles import Profile, profile_from_dict

MS = 1_000_000
S = 1_000_000_000
CLIENT = bytes([10, 77, 0, 1])
SERVER = bytes([10, 77, 0, 2])


def frame(src: bytes, dst: bytes, proto: int, l4: bytes) -> bytes:
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 0, 0x4000, 64, proto, 0, src, dst)
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + l4


def tcp(sport: int, dport: int, seq: int, flags: int, payload: bytes = b"") -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, flags, 65535, 0, 0) + payload


def udp(sport: int, dport: int, payload: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def up_tcp(payload: bytes = b"", seq: int = 1001, flags: int = 0x18, sport: int = 40000) -> bytes:
    return frame(CLIENT, SERVER, 6, tcp(sport, 443, seq, flags, payload))


def down_tcp(size: int, sport: int = 40000) -> bytes:
    return frame(SERVER, CLIENT, 6, tcp(443, sport, 1, 0x10, b"\0" * size))


def profile(**kw: Any) -> Profile:
    return profile_from_dict(kw, name="test")


POLICE = {
    "dpi": {"mode": "reassemble"},
    "rule": [
        {
            "patterns": ["*.twimg.com", "twimg.com", "t.co"],
            "action": "police",
            "rate_bps": 80_000,
            "bucket_bytes": 3000,
        }
    ],
}


def feed(core: CensorCore, f: bytes, d: int, now: int) -> int:
    return core.ingress(memoryview(f), len(f), d, now)


def flows(core: CensorCore) -> list[dict[str, Any]]:
    return core.stats()["flows"]


# ---------------------------------------------------------------------- token buckets


def test_policer_long_run_rate_is_configured_rate() -> None:
    pol = Policer(200_000, 5000, now_ns=0)
    passed = 0
    for i in range(10_000):  # 1000-byte packets offered at 8 Mbit/s for 10 s
        if pol.admit(1000, i * MS):
            passed += 1000
    expected = 5000 + 200_000 / 8 * 10
    assert abs(passed - expected) <= 1000


def test_policer_passes_conforming_traffic() -> None:
    pol = Policer(1_000_000, 3000, now_ns=0)
    assert all(pol.admit(1250, i * 10 * MS) for i in range(1000))  # exactly 1 Mbit/s


def test_shaper_spaces_departures_and_bounds_the_queue() -> None:
    sh = Shaper(1_000_000, 1500, 30_000, now_ns=0)
    departs = []
    drops = 0
    for i in range(400):  # 1500-byte packets at 2 Mbit/s
        t = sh.schedule(1500, i * 6 * MS)
        if t < 0:
            drops += 1
        else:
            departs.append((i * 6 * MS, t))
    gaps = [b[1] - a[1] for a, b in zip(departs[5:], departs[6:], strict=False)]
    assert all(abs(g - 12 * MS) <= 1000 for g in gaps)  # 1500 B at 1 Mbit/s = 12 ms
    assert drops > 150  # half the offered load cannot fit
    delays = [t - a for a, t in departs[100:]]
    assert max(delays) <= 30_000 * 8 / 1_000_000 * S + 12 * MS  # queue_bytes * 8 / rate


# ---------------------------------------------------------------------- link effects


def test_no_policy_zero_delay_is_fast_path() -> None:
    core = CensorCore(profile(), now_ns=0)
    assert feed(core, up_tcp(b"x"), UP, 0) == FORWARD
    assert feed(core, down_tcp(100), DOWN, 0) == FORWARD
    assert core.next_deadline_ns() is None


def test_delay_holds_frames_for_the_configured_time() -> None:
    core = CensorCore(profile(link={"delay_ms": 10}), now_ns=0)
    f = down_tcp(100)
    assert feed(core, f, DOWN, 5 * MS) == QUEUED
    assert core.pop_due(15 * MS - 1) == []
    assert core.next_deadline_ns() == 15 * MS
    assert core.pop_due(15 * MS) == [(DOWN, f)]


def test_jitter_never_reorders() -> None:
    core = CensorCore(
        profile(link={"delay_ms": 10, "jitter_ms": 5}), now_ns=0, rng=random.Random(3)
    )
    for i in range(2000):
        feed(
            core, frame(SERVER, CLIENT, 17, udp(443, 5000, struct.pack("!I", i))), DOWN, i * 100_000
        )
    out = core.pop_due(10 * S)
    seqs = [struct.unpack_from("!I", f, 42)[0] for _, f in out]
    assert seqs == list(range(2000))
    times = [t for t, _ in core._lines[DOWN]]
    assert times == sorted(times)


def test_jitter_spreads_delay_within_bounds() -> None:
    core = CensorCore(
        profile(link={"delay_ms": 20, "jitter_ms": 5}), now_ns=0, rng=random.Random(4)
    )
    delays = []
    for i in range(300):  # 50 ms apart: never held back by the frame ahead
        t0 = i * 50 * MS
        feed(core, down_tcp(10), DOWN, t0)
        t = core.next_deadline_ns()
        assert t is not None
        delays.append(t - t0)
        core.pop_due(t)
    assert 15 * MS <= min(delays) < 16 * MS and 24 * MS < max(delays) <= 25 * MS


def test_loss_is_seeded_and_at_the_configured_rate() -> None:
    def run(seed: int) -> list[int]:
        core = CensorCore(profile(link={"loss": 0.1}, seed=seed), now_ns=0)
        return [feed(core, down_tcp(10), DOWN, i) for i in range(20_000)]

    a = run(7)
    assert a == run(7)
    assert a != run(8)
    assert abs(a.count(DROP) / len(a) - 0.1) < 0.01


def test_link_rate_limits_everything() -> None:
    core = CensorCore(
        profile(link={"rate_bps": 1_000_000, "burst_bytes": 1500, "limit_bytes": 1_000_000}),
        now_ns=0,
    )
    for i in range(100):
        feed(core, down_tcp(1460), DOWN, i * MS)  # 1500-byte IP packets at 12 Mbit/s
    last = max(t for t, _ in core._lines[DOWN])
    assert abs(last - 99 * 12 * MS) < 2 * MS


# ---------------------------------------------------------------------- DPI


def handshake(
    core: CensorCore, hello: bytes, *, cut: int | None = None, sport: int = 40000, now: int = 0
) -> None:
    feed(core, up_tcp(seq=1000, flags=0x02, sport=sport), UP, now)  # SYN, isn 1000
    if cut is None:
        feed(core, up_tcp(hello, seq=1001, sport=sport), UP, now)
    else:
        feed(core, up_tcp(hello[:cut], seq=1001, sport=sport), UP, now)
        feed(core, up_tcp(hello[cut:], seq=1001 + cut, sport=sport), UP, now)


@pytest.mark.parametrize(
    "sni,matched",
    [
        ("abs.twimg.com", True),
        ("video.twimg.com", True),
        ("twimg.com", True),
        ("t.co", True),
        ("TWIMG.com", True),
        ("microsoft.com", False),
        ("nottwimg.com", False),
        ("twimg.com.example.org", False),
        ("cdn.jsdelivr.net", False),
    ],
)
def test_dpi_tcp_matches_configured_snis_only(sni: str, matched: bool) -> None:
    core = CensorCore(profile(**POLICE), now_ns=0)
    handshake(core, client_hello_bytes(sni))
    (flow,) = flows(core)
    assert flow["sni"] == sni
    assert flow["dpi"] == ("matched" if matched else "not-matched")


@pytest.mark.parametrize("mode,matched", [("reassemble", True), ("first-segment", False)])
def test_split_client_hello_evades_first_segment_only(mode: str, matched: bool) -> None:
    core = CensorCore(profile(**dict(POLICE, dpi={"mode": mode})), now_ns=0)
    hello = client_hello_bytes("abs.twimg.com")
    handshake(core, hello, cut=split_offset(hello, "abs.twimg.com"))
    (flow,) = flows(core)
    assert flow["dpi"] == ("matched" if matched else "not-matched")


def test_reassembly_handles_out_of_order_segments() -> None:
    core = CensorCore(profile(**POLICE), now_ns=0)
    hello = client_hello_bytes("pbs.twimg.com")
    cut = split_offset(hello, "pbs.twimg.com")
    feed(core, up_tcp(seq=5000, flags=0x02), UP, 0)
    feed(core, up_tcp(hello[cut:], seq=5001 + cut), UP, 0)
    assert flows(core)[0]["dpi"] == "pending"
    feed(core, up_tcp(hello[:cut], seq=5001), UP, 0)
    assert flows(core)[0]["dpi"] == "matched"


def test_unsplit_hello_matches_in_first_segment_mode() -> None:
    core = CensorCore(profile(**dict(POLICE, dpi={"mode": "first-segment"})), now_ns=0)
    handshake(core, client_hello_bytes("abs.twimg.com"))
    assert flows(core)[0]["dpi"] == "matched"


def test_garbage_is_not_matched_and_passes() -> None:
    core = CensorCore(profile(**POLICE), now_ns=0)
    feed(core, up_tcp(seq=1, flags=0x02), UP, 0)
    assert feed(core, up_tcp(b"GET / HTTP/1.1\r\n\r\n", seq=2), UP, 0) == FORWARD
    (flow,) = flows(core)
    assert flow["dpi"] == "not-matched" and flow["dpi_error"]


def test_matched_flow_is_policed_and_others_are_not() -> None:
    core = CensorCore(profile(**POLICE), now_ns=0)
    handshake(core, client_hello_bytes("abs.twimg.com"), sport=40000)
    handshake(core, client_hello_bytes("example.org"), sport=40001)
    # 1500-byte packets at 12 Mbit/s for 1 s down each flow
    res: dict[int, list[int]] = {40000: [], 40001: []}
    for i in range(1000):
        for port in res:
            res[port].append(feed(core, down_tcp(1460, sport=port), DOWN, i * MS))
    passed = res[40000].count(FORWARD) * 1500
    assert abs(passed - (3000 + 80_000 / 8)) <= 1500  # bucket + 1 s at 80 kbit/s
    assert res[40001].count(FORWARD) == 1000


def test_onset_lets_the_first_bytes_through() -> None:
    rule = dict(POLICE["rule"][0], onset_bytes=60_000)  # type: ignore[arg-type]
    core = CensorCore(profile(**dict(POLICE, rule=[rule])), now_ns=0)
    handshake(core, client_hello_bytes("abs.twimg.com"))
    out = [feed(core, down_tcp(1460), DOWN, i * MS) for i in range(200)]
    first_drop = out.index(DROP)
    assert 38 <= first_drop <= 42 + 3000 // 1500  # 60 kB of onset (+ the bucket) then policing


def test_shaped_flow_is_delayed_not_dropped() -> None:
    shape = {
        "dpi": {"mode": "reassemble"},
        "rule": [
            {
                "patterns": ["*.googlevideo.com"],
                "action": "shape",
                "rate_bps": 1_200_000,
                "bucket_bytes": 1500,
                "queue_bytes": 150_000,
                "direction": "down",
            }
        ],
    }
    core = CensorCore(profile(**shape), now_ns=0)
    handshake(core, client_hello_bytes("rr1.googlevideo.com"))
    out = [feed(core, down_tcp(1460), DOWN, 0) for _ in range(50)]
    assert out.count(DROP) == 0 and out.count(QUEUED) >= 49
    due = core.pop_due(490 * MS)  # 1500 B at 1.2 Mbit/s = 10 ms each
    assert 48 <= len(due) <= 50
    assert feed(core, up_tcp(b"ack"), UP, 0) == FORWARD  # direction "down" only


def test_dpi_quic_initial() -> None:
    from aioquic.h3.connection import H3_ALPN
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection

    core = CensorCore(profile(**POLICE), now_ns=0)
    for port, sni in ((50000, "video.twimg.com"), (50001, "www.example.org")):
        conn = QuicConnection(
            configuration=QuicConfiguration(
                is_client=True, alpn_protocols=list(H3_ALPN), server_name=sni
            )
        )
        conn.connect(("10.77.0.2", 443), now=0.0)
        for data, _ in conn.datagrams_to_send(now=0.0):
            feed(core, frame(CLIENT, SERVER, 17, udp(port, 443, data)), UP, 0)
    got = {f["sni"]: f["dpi"] for f in flows(core)}
    assert got == {"video.twimg.com": "matched", "www.example.org": "not-matched"}


def test_non_quic_udp_is_not_matched() -> None:
    core = CensorCore(profile(**POLICE), now_ns=0)
    feed(core, frame(CLIENT, SERVER, 17, udp(5353, 53, b"\x12\x34" + b"\0" * 30)), UP, 0)
    assert flows(core)[0]["dpi"] == "not-matched"


def test_truncated_frames_do_not_crash() -> None:
    core = CensorCore(profile(**POLICE), now_ns=0)
    full = up_tcp(client_hello_bytes("abs.twimg.com"))
    for n in range(0, 80):
        core.ingress(memoryview(full), n, UP, 0)
    arp = b"\xff" * 6 + b"\x02" * 6 + b"\x08\x06" + b"\0" * 28
    assert feed(core, arp, UP, 0) == FORWARD
