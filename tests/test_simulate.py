"""The download simulator: determinism, the capture it writes, and the throttles it applies.

Each check runs the simulated pcap through the real pipeline (``sources.capture`` and
``flows``), so it tests what a detector will see. Expected values come from the scenario's
parameters (a policer's rate, a shaper's queue, a stall's byte count), with tolerances that
leave room for TCP's and QUIC's own dynamics.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from keepiton_throttle import simulate as sim
from keepiton_throttle.flows import analyze_file, flow_records
from keepiton_throttle.protocols import quic, tls
from keepiton_throttle.simulate import Scenario, Throttle, scenario_grid, simulate
from keepiton_throttle.sources.capture import read_capture
from keepiton_throttle.testbed.censor import Policer, Shaper

TRANSPORTS = ("tcp", "quic")


def _run(tmp_path: Path, sc: Scenario, name: str = "sim.pcap") -> tuple[sim.SimResult, dict[str, dict[str, Any]]]:
    res = simulate(sc)
    path = tmp_path / name
    res.write_pcap(path)
    table, series = analyze_file(path)
    recs = {r["sni"]: r for r in flow_records(table, series)}
    return res, recs


def _records(pcap: bytes) -> list[tuple[int, int, int, bytes]]:
    """(ts_ns, caplen, wirelen, frame) of every record of a classic little-endian ns pcap."""
    magic, _, _, _, _, _, linktype = struct.unpack_from("<IHHiIII", pcap, 0)
    assert magic == 0xA1B23C4D and linktype == 1
    out, pos = [], 24
    while pos < len(pcap):
        sec, nsec, cap, wire = struct.unpack_from("<IIII", pcap, pos)
        out.append((sec * 10**9 + nsec, cap, wire, pcap[pos + 16 : pos + 16 + cap]))
        pos += 16 + cap
    assert pos == len(pcap)
    return out


# ---------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_same_seed_same_bytes(transport: str) -> None:
    sc = Scenario(transport=transport, loss=0.01, jitter_ms=5, target_bytes=200_000,
                  control_bytes=200_000, throttle=Throttle.police(400e3, 16000), seed=7)
    a, b = simulate(sc), simulate(sc)
    assert a.pcap == b.pcap
    assert a.truth == b.truth
    assert simulate(sc, rng=8).pcap != a.pcap
    assert simulate(sc, rng=np.random.default_rng(7)).pcap == a.pcap


def test_handshakes_are_seeded_and_real() -> None:
    hello = sim.tls_client_hello("abs.twimg.com", rng=3)
    assert hello == sim.tls_client_hello("abs.twimg.com", rng=3)
    assert hello != sim.tls_client_hello("abs.twimg.com", rng=4)
    parsed = tls.find_client_hello(hello)
    assert parsed is not None and parsed.sni == "abs.twimg.com" and 0x0304 in parsed.versions

    dgram, dcid, scid = sim.quic_client_initial("video.twimg.com", rng=5)
    assert (dgram, dcid, scid) == sim.quic_client_initial("video.twimg.com", rng=5)
    assert len(dgram) >= 1200  # RFC 9000 sec 14.1
    hdr = quic.parse_long_header(dgram)
    assert hdr.version == 1 and hdr.dcid == dcid and hdr.scid == scid
    info = quic.client_initial_info([dgram])
    assert info is not None and info.client_hello is not None
    assert info.client_hello.sni == "video.twimg.com"


# ---------------------------------------------------------------------------- the capture


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_pcap_decodes_and_flows_have_the_snis(tmp_path: Path, transport: str) -> None:
    sc = Scenario(transport=transport, rtt_ms=30, target_sni="pbs.twimg.com",
                  control_sni="www.wikipedia.org", target_bytes=300_000, control_bytes=300_000, seed=1)
    res, recs = _run(tmp_path, sc)
    table, info, stats = read_capture(tmp_path / "sim.pcap")
    assert info.format == "pcap" and info.nanosecond and info.linktypes == [1]
    assert stats.damaged == 0 and table.records == res.stats.packets
    assert set(recs) == {"pbs.twimg.com", "www.wikipedia.org"}
    for r in recs.values():
        assert r["transport"] == transport
        assert r["server"].endswith(":443") and r["vantage"] in ("client", "unknown")
        assert r["goodput_bytes_down"] >= 300_000
    t, c = recs["pbs.twimg.com"], recs["www.wikipedia.org"]
    assert t["client"] != c["client"] and t["server"] == c["server"]
    assert c["start"] < t["start"]  # control first
    # TCP timestamps and the QUIC spin bit give the path RTT at the client
    assert t["rtt_ms_p50"] == pytest.approx(30, rel=0.15)
    truth = res.truth
    assert truth.target_sni == "pbs.twimg.com" and not truth.throttled and truth.mechanism == "none"
    assert truth.completed == {"target": True, "control": True}
    assert truth.goodput_bps["target"] == pytest.approx(t["goodput_bps"], rel=0.05)


def test_frames_are_cut_like_the_testbed(tmp_path: Path) -> None:
    for transport in TRANSPORTS:
        res = simulate(Scenario(transport=transport, target_bytes=100_000, control_bytes=100_000, seed=2))
        recs = _records(res.pcap)
        ts = [r[0] for r in recs]
        assert ts == sorted(ts)
        client = res.pcap[24 + 16 + 26 : 24 + 16 + 30]  # source of the first frame (the client's)
        for _, cap, wire, frame in recs:
            if frame[26:30] == client:
                assert cap == wire  # client -> server whole
            else:
                assert cap == min(wire, sim.SNAPLEN_DOWN)


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")
def test_tshark_reads_it_with_valid_client_checksums(tmp_path: Path) -> None:
    sc = Scenario(transport="tcp", loss=0.02, target_bytes=200_000, control_bytes=200_000, seed=3)
    simulate(sc).write_pcap(tmp_path / "t.pcap")
    out = subprocess.run(
        ["tshark", "-r", str(tmp_path / "t.pcap"), "-o", "tcp.check_checksum:TRUE", "-o",
         "ip.check_checksum:TRUE", "-T", "fields", "-e", "ip.checksum.status", "-e",
         "tcp.checksum.status", "-e", "_ws.malformed", "-Y", "ip.src == 10.0.0.0/8"],
        capture_output=True, text=True, check=True).stdout.split("\n")
    rows = [line.split("\t") for line in out if line]
    assert rows and all(r[:2] == ["1", "1"] and r[2] == "" for r in rows)


# ---------------------------------------------------------------------------- throttles


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(("rate", "bucket", "rtt"), [(150e3, 24576, 80.0), (1e6, 30000, 30.0)])
def test_policed_goodput_is_the_rate(tmp_path: Path, transport: str, rate: float, bucket: int,
                                     rtt: float) -> None:
    n = int(bucket + rate / 8 * 12)
    sc = Scenario(transport=transport, rtt_ms=rtt, throttle=Throttle.police(rate, bucket),
                  target_bytes=n, seed=11)
    res, recs = _run(tmp_path, sc)
    t, c = recs[sc.target_sni], recs[sc.control_sni]
    assert res.truth.throttled and res.truth.mechanism == "policing" and res.truth.completed["target"]
    assert res.truth.throttle_drops > 0
    assert t["goodput_bps"] == pytest.approx(rate, rel=0.15)
    assert c["goodput_bps"] > 5 * rate


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_policing_onset(tmp_path: Path, transport: str) -> None:
    sc = Scenario(transport=transport, rtt_ms=40, target_bytes=600_000, seed=12,
                  throttle=Throttle.police(400e3, 20000, onset_bytes=120_000))
    res, _ = _run(tmp_path, sc)
    # the bucket starts full at the onset: the first drop comes after onset + bucket (the
    # client's ACKs count towards the flow's bytes too, not towards the bucket)
    fa = res.truth.first_action_bytes
    assert fa is not None and 120_000 + 0.9 * 20_000 <= fa <= 120_000 + 60_000
    assert res.truth.onset_bytes == 120_000


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_shaping_adds_the_queueing_delay(tmp_path: Path, transport: str) -> None:
    rate, queue = 1e6, 60_000
    qdelay_ms = queue * 8 / rate * 1e3  # 480 ms when the queue is full
    sc = Scenario(transport=transport, rtt_ms=40, throttle=Throttle.shape(rate, 8000, queue),
                  target_bytes=1_000_000, seed=13)
    res, recs = _run(tmp_path, sc)
    t, c = recs[sc.target_sni], recs[sc.control_sni]
    rise = t["rtt_ms_p50"] - c["rtt_ms_p50"]
    assert 0.3 * qdelay_ms <= rise <= 1.1 * qdelay_ms
    assert c["rtt_ms_p50"] == pytest.approx(40, rel=0.2)
    assert t["goodput_bps"] == pytest.approx(rate, rel=0.15)
    assert res.truth.mechanism == "shaping" and res.truth.queue_bytes == queue


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_whole_link_slows_both_alike(tmp_path: Path, transport: str) -> None:
    link = 3e6
    sc = Scenario(transport=transport, rtt_ms=40, bottleneck_bps=link, bottleneck_queue_bytes=65536,
                  seed=14)
    res, recs = _run(tmp_path, sc)
    t, c = recs[sc.target_sni]["goodput_bps"], recs[sc.control_sni]["goodput_bps"]
    for g in (t, c):
        assert 0.5 * link <= g <= 1.05 * link
    assert 0.8 <= t / c <= 1.25
    assert res.truth.whole_link and not res.truth.throttled and res.truth.link_rate_bps == link


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_stall_stops_after_stall_bytes(tmp_path: Path, transport: str) -> None:
    stall = 18_000
    sc = Scenario(transport=transport, rtt_ms=50, throttle=Throttle.stall(stall), idle_abort_s=5,
                  seed=15)
    res, recs = _run(tmp_path, sc)
    t = recs[sc.target_sni]
    # IP bytes in both directions count towards the stall; the server's payload stops just short
    assert 0.6 * stall <= t["goodput_bytes_down"] <= stall
    assert not res.truth.completed["target"] and res.truth.completed["control"]
    assert res.truth.mechanism == "stall" and res.truth.onset_bytes == stall
    if transport == "tcp":
        assert t["end_state"] == "rst"  # the client gave up
    assert recs[sc.control_sni]["goodput_bytes_down"] >= 1_500_000


# ---------------------------------------------------------------------------- path elements vs slow twins


def _naive_policer(arrivals: list[tuple[int, int]], rate_bps: float, bucket: int) -> list[int]:
    """Token bucket in exact rational arithmetic, refilled from the previous arrival."""
    rate = Fraction(rate_bps) / 8 / 10**9
    tokens, last, out = Fraction(bucket), arrivals[0][0], []
    for t, size in arrivals:
        tokens = min(Fraction(bucket), tokens + (t - last) * rate)
        last = t
        if tokens >= size:
            tokens -= size
            out.append(t)
        else:
            out.append(-1)
    return out


def _naive_fifo(arrivals: list[tuple[int, int]], rate_bps: float, limit: int) -> list[int]:
    """A serial link: each packet leaves when the one ahead has left plus its own transmission."""
    departed: list[tuple[int, int]] = []
    out, last = [], 0
    for t, size in arrivals:
        backlog = sum(s for d, s in departed if d > t)
        if backlog + size > limit:
            out.append(-1)
            continue
        last = max(t, last) + int(size * (8e9 / rate_bps))
        departed.append((last, size))
        out.append(last)
    return out


def _arrivals(seed: int, n: int = 400) -> list[tuple[int, int]]:
    g = np.random.default_rng(seed)
    t = np.cumsum(g.exponential(1e5, n)).astype(np.int64) + 10**18  # huge timestamps too
    sizes = g.choice([52, 600, 1500], n)
    return [(int(a), int(b)) for a, b in zip(t, sizes, strict=True)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_policer_matches_its_slow_twin(seed: int) -> None:
    arr = _arrivals(seed)
    box = Policer(20e6, 9000, now_ns=arr[0][0])  # the testbed censor's, which simulate uses
    assert [t if box.admit(s, t) else -1 for t, s in arr] == _naive_policer(arr, 20e6, 9000)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fifo_matches_its_slow_twin(seed: int) -> None:
    arr = _arrivals(seed)
    link = sim._Fifo(30e6, 20000)
    got = [link.depart(t, s) for t, s in arr]
    assert got == _naive_fifo(arr, 30e6, 20000)
    assert -1 in got  # the buffer did overflow


def test_shaper_delays_to_the_rate() -> None:
    arr = [(10**18 + k * 1000, 1500) for k in range(200)]  # 12 Gbit/s offered
    box = Shaper(1e6, 3000, 30000, now_ns=arr[0][0])
    out = [box.schedule(s, t) for t, s in arr]
    ok = [d for d in out if d >= 0]
    assert len(ok) == 22  # the burst of 2 packets plus a 30 kB queue
    gaps = np.diff(ok[2:])
    assert np.allclose(gaps, 1500 * 8 / 1e6 * 1e9, atol=2)


# ---------------------------------------------------------------------------- the grid and inputs


def test_scenario_grid_covers_the_cases() -> None:
    grid = scenario_grid(1000, rng=0)
    assert len(grid) == 1000 and grid == scenario_grid(1000, rng=0)
    assert len({s.seed for s in grid}) == 1000
    mix = sim.grid_mix(grid)
    assert set(mix["kind"]) == set(sim.KINDS) and min(mix["kind"].values()) >= 100
    assert set(mix["transport"]) == {"tcp", "quic"} and min(mix["transport"].values()) >= 300
    assert min(mix["onset"].values()) >= 150
    for s in grid:
        assert 10 <= s.rtt_ms <= 200
        th = s.throttle
        if s.kind == "lossy":
            assert s.loss == 0.01 and s.jitter_ms == 10
        if s.kind == "whole_link":
            assert s.bottleneck_bps is not None and s.target_bytes == s.control_bytes
        if th is None:
            continue
        if th.mechanism == "stall":
            assert th.stall_bytes is not None and 16_000 <= th.stall_bytes <= 20_000
            continue
        assert th.rate_bps is not None and th.bucket_bytes is not None
        assert 100e3 <= th.rate_bps <= 0.26 * sim.clean_goodput_estimate(
            s.rtt_ms, s.capacity_bps, transport=s.transport) + 150e3
        assert th.onset_bytes == 0 or 30_000 <= th.onset_bytes <= 200_000
        # the throttled part of a download lasts at most ~15 s
        assert (s.target_bytes - th.onset_bytes - th.bucket_bytes) * 8 / th.rate_bps <= 15.01


@pytest.mark.parametrize(("change", "message"), [
    ({"transport": "sctp"}, "Scenario.transport must be one of"),
    ({"loss": 0.7}, "Scenario.loss must be in"),
    ({"jitter_ms": 30.0}, "Scenario.jitter_ms must be in"),
    ({"rtt_ms": 0}, "Scenario.rtt_ms must be a positive number"),
    ({"control_sni": "abs.twimg.com"}, "must differ"),
    ({"throttle": Throttle.police(0, 1000)}, "Scenario.throttle.rate_bps must be a positive"),
    ({"throttle": Throttle("tarpit")}, "Throttle.mechanism must be one of"),
    ({"quic_datagram": 9000}, "Scenario.quic_datagram must be in"),
])
def test_bad_scenarios_say_what_to_fix(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        simulate(Scenario(**change))


def test_bad_rng_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="rng must be an int seed"):
        simulate(Scenario(), rng="seven")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n must be a positive int"):
        scenario_grid(0, rng=1)
