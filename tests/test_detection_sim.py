"""The detector on a small fixed set of seeded simulated captures (the accuracy benchmark,
benchmarks/bench_accuracy.py, runs a thousand of them and prints the full table)."""

from __future__ import annotations

import pytest

from keepiton_throttle.analysis import analyze_paths
from keepiton_throttle.simulate import Scenario, Throttle, simulate

CASES = {
    # name: (scenario, expected decision, expected mechanism)
    "police-tcp-130k": (Scenario(transport="tcp", rtt_ms=60, throttle=Throttle.police(130e3, 16384),
                                 target_bytes=250_000, control_bytes=3_000_000), "throttled", "policing"),
    "police-quic-500k-onset": (Scenario(transport="quic", rtt_ms=30,
                                        throttle=Throttle.police(500e3, 8192, onset_bytes=100_000),
                                        target_bytes=700_000, control_bytes=3_000_000),
                               "throttled", "policing"),
    "shape-tcp-1m": (Scenario(transport="tcp", rtt_ms=40, throttle=Throttle.shape(1e6, 4096, 50_000),
                              target_bytes=1_200_000, control_bytes=3_000_000), "throttled", "shaping"),
    "stall-tcp": (Scenario(transport="tcp", rtt_ms=50, throttle=Throttle.stall(18_000),
                           control_bytes=2_000_000), "throttled", "stall"),
    "clean-quic": (Scenario(transport="quic", rtt_ms=40, target_bytes=3_000_000, control_bytes=3_000_000),
                   "not_throttled", "none"),
    "lossy-tcp": (Scenario(transport="tcp", rtt_ms=40, loss=0.01, jitter_ms=10,
                           target_bytes=3_000_000, control_bytes=3_000_000), None, "none"),
    "whole-link-tcp": (Scenario(transport="tcp", rtt_ms=50, bottleneck_bps=2e6,
                                target_bytes=1_000_000, control_bytes=1_000_000), None, "none"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_fixed_simulated_cases(name: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    scenario, decision, mechanism = CASES[name]
    sim = simulate(scenario, rng=7)
    path = tmp_path / f"{name}.pcap"
    sim.write_pcap(path)
    report = analyze_paths([path], targets={"target": [scenario.target_sni]},
                           control_patterns=[scenario.control_sni])
    (v,) = report.targets
    if decision is None:
        # the traps: never "throttled" (not_throttled or an honest inconclusive)
        assert v.decision != "throttled", v.reasons
        return
    assert v.decision == decision, v.reasons
    assert v.mechanism == mechanism
    truth = sim.truth
    if mechanism in ("policing", "shaping"):
        assert v.rate_bps == pytest.approx(truth.rate_bps, rel=0.15)
    if name.endswith("onset"):
        assert v.onset_bytes == pytest.approx(truth.onset_bytes, rel=0.35)
    if mechanism == "stall":
        assert v.onset_bytes == pytest.approx(truth.onset_bytes, rel=0.2)
