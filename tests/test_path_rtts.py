"""``series.path_rtts`` (every flow at once) against the per-flow rules it vectorises:
``detect_vantage``, ``path_rtt`` and ``summarize_rtt`` in ``tests/naive_series.py``."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keepiton_throttle._kernels import (
    SAMPLE_DATA_ACK,
    SAMPLE_DATA_ACK_AMBIGUOUS,
    SAMPLE_SPIN,
    SAMPLE_TS_ECHO,
)
from keepiton_throttle.flows import analyze_file, flow_records
from keepiton_throttle.series import TimingSeries, handshake_halves, path_rtts, segment_percentile

from .conftest import REAL, TESTBED, have_corpus, manifest
from .naive_series import detect_vantage, path_rtt, summarize_rtt


def assert_matches_per_flow(cols: dict[str, Any], series: TimingSeries) -> int:
    """Every flow's vantage, path samples and summary equal the per-flow functions' exactly.
    Returns how many flows had path samples."""
    paths = path_rtts(cols, series)
    summary = paths.summary()
    n = int(cols["syn_ts"].size)
    with_samples = 0
    for f in range(n):
        s2a = int(cols["synack_ts"][f] - cols["syn_ts"][f]) if cols["synack_ts"][f] >= 0 and cols["syn_ts"][f] >= 0 else -1
        a2a = int(cols["hsack_ts"][f] - cols["synack_ts"][f]) if cols["hsack_ts"][f] >= 0 and cols["synack_ts"][f] >= 0 else -1
        samples = series.rtt(f)
        vantage = detect_vantage(s2a, a2a, samples)
        assert paths.vantage_of(f) == vantage, f
        ts, rtt = path_rtt(samples, vantage)
        got_ts, got_rtt = paths.of(f)
        assert np.array_equal(got_ts, ts) and np.array_equal(got_rtt, rtt), f
        want = summarize_rtt(rtt)
        assert int(summary["rtt_samples"][f]) == want["rtt_samples"]
        for k in ("rtt_ms_p50", "rtt_ms_p95", "rtt_ms_min"):
            if want[k] is None:
                assert np.isnan(summary[k][f])
            else:
                assert float(summary[k][f]) == want[k], (f, k)  # same arithmetic, same bits
        with_samples += rtt.size > 0
    return with_samples


# ---- synthetic series: every rule's branch --------------------------------------------------
KINDS = [SAMPLE_DATA_ACK, SAMPLE_TS_ECHO, SAMPLE_SPIN, SAMPLE_DATA_ACK_AMBIGUOUS]


@st.composite
def flow_sets(draw: st.DrawFn) -> tuple[dict[str, Any], TimingSeries]:
    n = draw(st.integers(1, 6))
    cols: dict[str, Any] = {k: np.full(n, -1, dtype=np.int64) for k in ("syn_ts", "synack_ts", "hsack_ts")}
    parts = []
    for f in range(n):
        if draw(st.booleans()):  # a handshake, complete or not
            t0 = draw(st.integers(0, 10**9))
            cols["syn_ts"][f] = t0
            cols["synack_ts"][f] = t0 + draw(st.sampled_from([-1, 0, 1, 10, 1000, 50_000]))
            cols["hsack_ts"][f] = cols["synack_ts"][f] + draw(st.sampled_from([-5, 0, 1, 10, 1000, 50_000]))
            if cols["synack_ts"][f] < 0 or draw(st.booleans()):
                cols["hsack_ts"][f] = -1
        m = draw(st.integers(0, 40))
        # RTTs from a few levels: ties, and sides 3.5x, 4x and more apart (the rule's factor is 4)
        scale = draw(st.sampled_from([1, 7, 1_000_000]))
        for k in range(m):
            parts.append((f, 10**9 + k * 1000, scale * draw(st.sampled_from([1, 2, 3, 4, 7, 50, 51, 400])),
                          draw(st.sampled_from(KINDS)), int(draw(st.booleans()))))
    rtts = np.array(parts, dtype=np.int64).T.reshape(5, -1)
    return cols, TimingSeries.build(100_000_000, np.zeros((7, 0), np.int64), rtts, n)


@settings(max_examples=300, deadline=None)
@given(flow_sets())
def test_synthetic_flows_match_the_per_flow_rules(case: tuple[dict[str, Any], TimingSeries]) -> None:
    cols, series = case
    assert_matches_per_flow(cols, series)


def test_handshake_halves() -> None:
    cols = {"syn_ts": np.array([10, -1, 10, 10]), "synack_ts": np.array([30, 30, -1, 30]),
            "hsack_ts": np.array([31, 31, 40, -1])}
    s2a, a2a = handshake_halves(cols)
    assert s2a.tolist() == [20, -1, -1, 20]
    assert a2a.tolist() == [1, 1, -1, -1]


def test_segment_percentile_equals_numpy() -> None:
    rng = np.random.default_rng(3)
    for n in list(range(1, 30)) + [99, 100, 101, 1000]:
        v = np.sort(rng.integers(1, 10**9, n).astype(np.float64) / 1e6)
        for q in (0, 5, 50, 95, 99, 100):
            got = segment_percentile(v, np.array([0]), np.array([n]), q)[0]
            assert got == float(np.percentile(v, q)), (n, q)
    # several segments, one of them empty
    v = np.array([1.0, 2.0, 3.0, 10.0, 20.0])
    got = segment_percentile(v, np.array([0, 3, 5]), np.array([3, 2, 0]), 50)
    assert got[0] == 2.0 and got[1] == 15.0 and np.isnan(got[2])


# ---- real captures ------------------------------------------------------------------------------
def _captures() -> list[Any]:
    real = [REAL / f for f in sorted(manifest())] if have_corpus() else []
    return real + sorted(TESTBED.glob("*.pcap"))


@pytest.mark.skipif(not _captures(), reason="no corpus")
def test_corpus_flows_match_the_per_flow_rules() -> None:
    flows = with_samples = 0
    for path in _captures():
        table, series = analyze_file(path)
        with_samples += assert_matches_per_flow(table.cols, series)
        flows += table.n
    assert flows > 100 and with_samples > 20  # the corpus exercises the rules


def test_flow_records_use_the_path_rtts(tmp_path: Any) -> None:
    """``flow_records`` gives each flow its vantage and RTT summary, None without samples."""
    path = sorted(TESTBED.glob("shared-clean-tcp-*.pcap"))
    if not path:
        pytest.skip("testbed corpus not found")
    table, series = analyze_file(path[0])
    recs = flow_records(table, series)
    paths = path_rtts(table.cols, series)
    for f, rec in enumerate(recs):
        _, rtt = paths.of(f)
        assert rec["vantage"] == paths.vantage_of(f)
        assert rec["rtt_samples"] == rtt.size
        if rtt.size:
            # reported to the ns (6 decimals of ms)
            assert rec["rtt_ms_p50"] == round(float(np.percentile(rtt / 1e6, 50)), 6)
            assert rec["rtt_ms_p95"] == round(float(np.percentile(rtt / 1e6, 95)), 6)
            assert rec["rtt_ms_min"] == round(float(rtt.min() / 1e6), 6)
        else:
            assert rec["rtt_ms_p50"] is None and rec["rtt_ms_p95"] is None
    assert any(r["rtt_samples"] for r in recs)
    # a subset of rows gives the same records as the whole table's
    assert flow_records(table, series, rows=[len(recs) - 1]) == recs[-1:]


def test_sorted_within_both_ways() -> None:
    """One sort of a combined key, or a lexsort when the key would overflow: same order."""
    from keepiton_throttle.series import _sorted_within

    rng = np.random.default_rng(5)
    group = rng.integers(0, 50, 2000)
    for top in (10, 10**9, 2**62):  # the last one cannot be combined with a group in int64
        values = rng.integers(0, top, 2000)
        want = np.concatenate([np.sort(values[group == g]) for g in range(50)])
        assert np.array_equal(_sorted_within(group, values), want), top
