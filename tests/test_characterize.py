"""Rate, burst, onset, mechanism and stall on constructed packet traces with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from keepiton_throttle.characterize import (
    MECH_POLICING,
    MECH_SHAPING,
    app_limited_fraction,
    classify_mechanism,
    detect_stall,
    estimate_rate,
)

MSS = 1448


def token_bucket_trace(rate_bps: float, bucket: int, total: int, *, line_bps: float = 50e6,
                       onset: int = 0, t0: int = 1_700_000_000_000_000_000):
    """Arrivals of MSS-sized packets through a token bucket fed at ``rate_bps`` (bucket full at
    start), after ``onset`` bytes sent freely at line rate."""
    ts, good = [], []
    t = 0.0
    tokens = float(bucket)
    sent = 0
    last = 0.0
    while sent < total:
        t += MSS * 8 / line_bps  # the sender offers at line rate
        if sent >= onset:
            tokens = min(bucket, tokens + (t - last) * rate_bps / 8)
            last = t
            if tokens < MSS:
                wait = (MSS - tokens) * 8 / rate_bps
                t += wait
                tokens = MSS
                last = t
            tokens -= MSS
        else:
            last = t
        ts.append(t0 + int(t * 1e9))
        good.append(MSS)
        sent += MSS
    return np.array(ts, dtype=np.int64), np.array(good, dtype=np.int64)


@pytest.mark.parametrize("rate", [130e3, 500e3, 2e6])
@pytest.mark.parametrize("bucket", [8 * 1024, 64 * 1024])
def test_rate_and_burst_of_a_token_bucket(rate: float, bucket: int) -> None:
    total = int(max(rate * 15 / 8, 20 * bucket))
    ts, good = token_bucket_trace(rate, bucket, total)
    est = estimate_rate(ts, good)
    assert est.rate_bps == pytest.approx(rate, rel=0.03)
    assert est.knee
    assert est.burst_bytes == pytest.approx(bucket, rel=0.25, abs=3 * MSS)


@pytest.mark.parametrize("onset", [30_000, 100_000, 200_000])
def test_onset_is_found(onset: int) -> None:
    ts, good = token_bucket_trace(150e3, 4 * MSS, onset + 300_000, onset=onset)
    est = estimate_rate(ts, good)
    assert est.knee
    # the knee comes after the free bytes plus the (small) bucket
    assert est.onset_bytes == pytest.approx(onset + 4 * MSS, rel=0.1)
    assert est.rate_bps == pytest.approx(150e3, rel=0.05)
    assert est.onset_s is not None and est.onset_s < 1.0


def test_constant_rate_has_no_knee() -> None:
    t0 = 10**18
    ts = t0 + np.arange(2000, dtype=np.int64) * 1_000_000  # one packet per ms
    est = estimate_rate(ts, np.full(2000, MSS, dtype=np.int64))
    assert not est.knee and est.onset_bytes == 0
    assert est.rate_bps == pytest.approx(MSS * 8 / 1e-3, rel=0.01)


def test_slow_start_is_not_a_knee() -> None:
    t0 = 10**18
    # exponential growth then steady: convex at the start, so no fast-then-slow knee
    gaps = np.concatenate([np.linspace(50e6, 1e6, 200), np.full(1800, 1e6)]).astype(np.int64)
    ts = t0 + np.cumsum(gaps)
    est = estimate_rate(ts, np.full(ts.size, MSS, dtype=np.int64))
    assert not est.knee


def test_too_few_packets() -> None:
    est = estimate_rate(np.array([1, 2, 3], dtype=np.int64), np.array([1, 1, 1], dtype=np.int64))
    assert est.rate_bps is None


def _mech(rtt_ms: np.ndarray, retx_every: int, *, transport: str = "tcp", floor_ms: float = 40.0):
    n = 1000
    ts = 10**18 + np.arange(n, dtype=np.int64) * 10_000_000
    retx = np.zeros(n, dtype=bool)
    if retx_every:
        retx[::retx_every] = True
    rtt_ts = ts[::10]
    rtt = (rtt_ms[: rtt_ts.size] * 1e6).astype(np.int64)
    return classify_mechanism(ts, retx, rtt_ts, rtt, (int(ts[0]), int(ts[-1])),
                              rtt_floor_ns=int(floor_ms * 1e6), transport=transport)


def test_policing_losses_with_flat_rtt() -> None:
    m = _mech(np.full(100, 42.0), 20)
    assert m.mechanism == MECH_POLICING and m.loss_fraction == pytest.approx(0.05)


def test_shaping_queueing_delay_without_losses() -> None:
    m = _mech(np.full(100, 140.0), 0)
    assert m.mechanism == MECH_SHAPING and m.queueing_delay_ms == pytest.approx(100.0)


def test_quic_flat_rtt_rate_cap_is_policing() -> None:
    m = _mech(np.full(100, 41.0), 0, transport="quic")
    assert m.mechanism == MECH_POLICING and np.isnan(m.loss_fraction)


def test_stall_and_not_stall() -> None:
    ts = 10**18 + np.arange(14, dtype=np.int64) * 5_000_000
    good = np.full(14, MSS, dtype=np.int64)
    end = int(ts[-1]) + 10_000_000_000
    s = detect_stall(ts, good, flow_end_ns=end, server_fin=False)
    assert s.stalled and s.bytes_before == 14 * MSS and s.silence_s == pytest.approx(10.0)
    assert not detect_stall(ts, good, flow_end_ns=end, server_fin=True).stalled
    assert not detect_stall(ts, good, flow_end_ns=int(ts[-1]) + 500_000_000, server_fin=False).stalled


def test_app_limited_fraction() -> None:
    ts = np.array([0, 1, 2, 3_000_000_002, 3_000_000_003], dtype=np.int64)
    retx = np.zeros(5, dtype=bool)
    assert app_limited_fraction(ts, retx, min_gap_ns=1_000_000_000) == pytest.approx(1.0, rel=1e-6)
    retx[3] = True  # the gap ended with a retransmission: a loss recovery, not idleness
    assert app_limited_fraction(ts, retx, min_gap_ns=1_000_000_000) == 0.0
