"""The live check's orchestration without a network: plans, failure decisions, poisoning,
redaction, target selection, and the TCP_INFO path from synthetic downloads to a report."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from keepiton_throttle.errors import InputError
from keepiton_throttle.live import run as R
from keepiton_throttle.live.measure import Budget, Download, Request, Resolution

SNI_T = "abs.twimg.com"
SNI_C = "www.control-example.com"
T0 = 1_700_000_000_000_000_000


# ---------------------------------------------------------------------- synthetic downloads


def synthetic_download(role: str, transport: str, start_ns: int, rate_bps: float, seconds: float, *,
                       burst: int = 0, rtt_ms: float = 40.0, rng: random.Random,
                       failure: str | None = None, operation: str | None = None) -> Download:
    """A download whose reads arrive as 1448-byte packets at ``rate_bps`` (after ``burst``
    bytes at line rate), with RTT samples around ``rtt_ms``."""
    sni = SNI_T if role == "target" else SNI_C
    d = Download(transport, sni, sni, "10.77.0.2", 443, "/bytes/20000000", False, False, start_ns)
    d.local_address, d.local_port = "10.77.0.1", 40000 + rng.randrange(20000)
    d.handshake_s = 0.081
    if failure:
        d.fail(failure, operation or "connect", f"synthetic {failure}")
        d.event("connect", failure=failure, address="10.77.0.2:443", proto="tcp")
        d.seconds, d.stopped = 0.05, "error"
        return d
    t = start_ns + 100_000_000
    sent = 0
    while sent < burst:
        d.reads.append((t, 1448))
        sent += 1448
        t += 120_000
    end = start_ns + int(seconds * 1e9)
    gap = 1448 * 8 / rate_bps * 1e9
    while t < end:
        t += int(gap * rng.uniform(0.5, 1.5))
        d.reads.append((t, 1448))
    d.bytes = sum(n for _, n in d.reads)
    # memoryless RTT samples, ~20 ms apart, as the client takes them
    ts, d.rtt_samples = start_ns + 100_000_000, []
    while ts < end:
        d.rtt_samples.append((ts, rtt_ms + rng.uniform(0, 3)))
        ts += int(rng.expovariate(1.0) * 20e6)
    if transport == "tcp":
        # a policer's drops show at the receiver as out-of-order arrivals
        ooo = len(d.reads) // 20 if role == "target" and rate_bps < 1e6 else 0
        d.tcp_info = [{"t": 0.1, "min_rtt_ms": rtt_ms, "rcv_rtt_ms": rtt_ms, "total_retrans": 0,
                       "data_segs_in": len(d.reads), "rcv_ooopack": ooo}]
    d.events = [{"operation": "connect", "failure": None, "t": 0.001, "address": "10.77.0.2:443", "proto": "tcp"},
                {"operation": "close", "failure": None, "t": seconds}]
    d.ok, d.stopped, d.seconds, d.status, d.requests = True, "duration", seconds, 200, 1
    return d


def synthetic_phase(*, target_rate: float = 130_000, control_rate: float = 20e6, repeat: int = 3,
                    transports: tuple[str, ...] = ("tcp",), later_control_rate: float | None = None,
                    target_failure: str | None = None, target_operation: str | None = None,
                    seed: int = 1) -> R.Phase:
    """A same-server phase without capture: C, T alternating, controls first."""
    rng = random.Random(seed)
    phase = R.Phase("same-server", R.METHOD_SAME_SERVER, False)
    plan = R.plan_same_server([R.TargetSpec("twitter", SNI_T)], server=("10.77.0.2", 443), control_sni=SNI_C,
                              transports=transports, repeat=repeat, object_bytes=20_000_000)
    t = T0
    for p in plan:
        if p.role == "target":
            d = synthetic_download("target", p.transport, t, target_rate, 3.0, burst=24_000, rng=rng,
                                   failure=target_failure, operation=target_operation)
        else:
            first = not any(q.role == "control" and q.transport == p.transport for q, _ in phase.results)
            rate = control_rate if first or later_control_rate is None else later_control_rate
            d = synthetic_download("control", p.transport, t, rate, 1.5, rng=rng)
        phase.results.append((p, d))
        t += 4_000_000_000
    return phase


def synthetic_report(**kw: Any) -> dict[str, Any]:
    """A whole run report (TCP_INFO path) from :func:`synthetic_phase`, not redacted."""
    cfg = R.RunConfig(targets=(R.TargetSpec("twitter", SNI_T),), methods=(R.METHOD_SAME_SERVER,),
                      server=("10.77.0.2", 443), control_sni=SNI_C, transports=kw.get("transports", ("tcp",)),
                      repeat=3, capture=False, budget=Budget(duration_s=1.5, timeout_s=10))
    phase = synthetic_phase(**kw)
    entries = [R._entry(g, phase, cfg) for g in R.analyse_phase(phase, cfg)]
    res = R.build_report(cfg, [phase], entries, started=datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC),
                         runtime_s=30.0, net={"default_route_interfaces": ["eth0"], "network_type": None,
                                              "vpn_evidence": None},
                         warnings=[], control_sni=SNI_C, out_dir=Path("."))
    return res.report


# ---------------------------------------------------------------------- plans


def test_same_server_plan_measures_a_control_first_and_alternates() -> None:
    tg = [R.TargetSpec("twitter", SNI_T), R.TargetSpec("youtube", "www.googlevideo.com")]
    plan = R.plan_same_server(tg, server=("192.0.2.5", 8443), control_sni=SNI_C, transports=("tcp", "quic"),
                              repeat=3, object_bytes=1000)
    order = [(p.role, p.target, p.transport) for p in plan]
    assert order[:6] == [("control", "", "tcp"), ("control", "", "quic"), ("target", "twitter", "tcp"),
                         ("target", "twitter", "quic"), ("target", "youtube", "tcp"), ("target", "youtube", "quic")]
    assert len(plan) == 3 * 6
    assert sum(p.role == "control" for p in plan) == 6 and sum(p.target == "twitter" for p in plan) == 6
    for p in plan:
        assert p.request is not None and p.request.address == "192.0.2.5" and p.request.port == 8443
        assert p.request.path == "/bytes/1000" and not p.request.verify and not p.split
    split = R.plan_same_server(tg, server=("192.0.2.5", 443), control_sni=SNI_C, transports=("tcp",),
                               repeat=1, object_bytes=1000, split=True)
    assert [p.split for p in split] == [False, True, True]
    assert all(p.request is not None and p.request.split_hello == p.split for p in split)


def test_direct_plan_keeps_controls_on_other_addresses() -> None:
    table = {"t.example": ("192.0.2.1",), "same.example": ("192.0.2.1", "192.0.2.9"),
             "other.example": ("198.51.100.1",)}

    def resolver(host: str, port: int, *, pinned: Any = None) -> Resolution:
        if host in table:
            return Resolution(host, table[host])
        return Resolution(host, (), "dns_nxdomain_error", "synthetic")

    tg = [R.TargetSpec("t", "t.example", ("https://t.example/big",),
                       ("https://same.example/x", "https://other.example/y")),
          R.TargetSpec("gone", "gone.example", ("https://gone.example/",), ("https://other.example/y",))]
    probes, notes, _ = R.plan_direct(tg, default_controls=(), transports=("tcp",), repeat=2, resolver=resolver)
    assert notes["t"] == ["control_shares_target_address"]
    t_probes = [p for p in probes if p.target == "t"]
    assert [(p.role, p.sni) for p in t_probes] == [("control", "other.example"), ("target", "t.example")] * 2
    assert all(p.request is not None and p.request.verify for p in t_probes)
    gone = [p for p in probes if p.target == "gone" and p.role == "target"]
    assert gone and all(p.request is None and p.resolution is not None for p in gone)
    with pytest.raises(InputError, match="not an https URL"):
        R.plan_direct([R.TargetSpec("x", "x", ("http://x/",))], default_controls=(), transports=("tcp",),
                      repeat=1, resolver=resolver)


def test_run_config_validation() -> None:
    tg = (R.TargetSpec("t", "t.example"),)
    with pytest.raises(InputError, match="--server"):
        R.RunConfig(targets=tg, methods=(R.METHOD_SAME_SERVER,))
    with pytest.raises(InputError, match="--repeat"):
        R.RunConfig(targets=tg, repeat=0)
    with pytest.raises(InputError, match="no target"):
        R.RunConfig(targets=())


# ---------------------------------------------------------------------- failures are answers


def _failed(failure: str, operation: str, n: int = 3) -> list[Download]:
    out = []
    for _ in range(n):
        d = Download("tcp", SNI_T, SNI_T, "192.0.2.1", 443, "/", True, False, T0)
        d.fail(failure, operation, "x")
        out.append(d)
    return out


def _ok() -> list[Download]:
    d = Download("tcp", SNI_C, SNI_C, "192.0.2.2", 443, "/", True, False, T0)
    d.bytes, d.ok = 100_000, True
    return [d]


@pytest.mark.parametrize("failure, operation, controls_ok, decision", [
    ("connection_refused", "connect", True, "unreachable"),
    ("dns_nxdomain_error", "resolve", True, "unreachable"),
    ("generic_timeout_error", "connect", True, "unreachable"),
    ("connection_reset", "tls_handshake", True, "blocked"),
    ("ssl_failed_handshake", "tls_handshake", True, "blocked"),
    ("generic_timeout_error", "quic_handshake", True, "blocked"),  # no reply to Initials
    ("generic_timeout_error", "http_request", True, "blocked"),
    ("connection_reset", "tls_handshake", False, "unreachable"),  # the controls fail too
    ("generic_timeout_error", "quic_handshake", False, "unreachable"),  # all of QUIC is gone
])
def test_failure_decision(failure: str, operation: str, controls_ok: bool, decision: str) -> None:
    controls = _ok() if controls_ok else _failed("connection_refused", "connect", 1)
    got = R.failure_decision(_failed(failure, operation), controls)
    assert got is not None
    assert got[0] == decision
    assert got[1]["failure"] == failure and got[1]["operation"] == operation and got[1]["attempts"] == 3
    assert got[1]["controls_ok"] is controls_ok


def test_a_partial_failure_is_left_to_the_analysis() -> None:
    ds = _failed("connection_reset", "read", 2)
    ds[0].bytes = 20_000  # a stall after 20 KB is data for the stall check, not a block
    assert R.failure_decision(ds, _ok()) is None
    assert R.failure_decision([], _ok()) is None


# ---------------------------------------------------------------------- TCP_INFO path, poisoning


def test_tcp_info_path_finds_the_policer() -> None:
    rep = synthetic_report()
    (e,) = rep["targets"]
    assert e["decision"] == "throttled" and e["analysis_decision"] == "throttled"
    assert e["mechanism"] == "policing"
    assert abs(e["rate_bps"] - 130_000) < 0.2 * 130_000
    assert e["evidence"]["source"] == "tcp_info" and "tcp_info_only" in e["notes"]
    assert rep["capture"]["enabled"] is False and rep["capture"]["limitations"]
    assert e["method"] == "same_server" and e["tls_verification"] is False
    assert [m["role"] for m in e["measurements"]] == ["control", "target"] * 3
    assert e["series"]["target"] and e["series"]["control"] and e["series"]["rtt_ms"]["target"]
    assert e["trigger"] == {"tested": False}


def test_same_speed_is_not_throttled() -> None:
    (e,) = synthetic_report(target_rate=20e6)["targets"]
    assert e["decision"] == "not_throttled", e["reasons"]


def test_every_target_attempt_refused_is_unreachable_never_throttled() -> None:
    (e,) = synthetic_report(target_failure="connection_refused", target_operation="connect")["targets"]
    assert e["decision"] == "unreachable" and e["mechanism"] == "none" and e["rate_bps"] is None
    assert e["symptom"]["failure"] == "connection_refused" and e["symptom"]["controls_ok"]


def test_controls_that_slow_down_after_a_target_are_reported() -> None:
    # first control 20 Mbit/s, later ones as slow as the target: the address was "poisoned"
    (e,) = synthetic_report(later_control_rate=130_000)["targets"]
    assert "controls_slowed_after_target" in e["notes"]
    assert e["poisoning_check"]["suspected"] is True
    assert e["decision"] != "not_throttled"
    (clean,) = synthetic_report(target_rate=20e6)["targets"]
    assert "controls_slowed_after_target" not in clean["notes"] and not clean["poisoning_check"]["suspected"]


# ---------------------------------------------------------------------- redaction, context, files


def test_redaction_replaces_whole_addresses_only() -> None:
    doc = {"client": "10.77.0.1:40000", "other": "10.77.0.10:443", "list": ["x 10.77.0.1", ("10.77.0.1",)],
           "v6": "[2001:db8::1]:443", "v6b": "2001:db8::12", "n": 10, "10.77.0.1": "key"}
    out = R.redact(doc, {"10.77.0.1", "2001:db8::1"})
    assert out["client"] == "[redacted]:40000" and out["other"] == "10.77.0.10:443"
    assert out["list"] == ["x [redacted]", ["[redacted]"]]
    assert out["v6"] == "[[redacted]]:443" and out["v6b"] == "2001:db8::12" and out["n"] == 10
    assert out["[redacted]"] == "key"
    assert R.redact(doc, set()) is doc


def test_the_json_report_redacts_the_client_address_unless_kept() -> None:
    rep = synthetic_report()
    res = R.LiveResult(rep, {"10.77.0.1"}, Path("."))
    import json

    red = json.dumps(R.finish_report(res, keep_ip=False))
    assert "10.77.0.1" not in red and "[redacted]" in red and "10.77.0.2" in red
    assert "10.77.0.1" in json.dumps(R.finish_report(res, keep_ip=True))


def test_tunnel_interfaces_are_recognised(monkeypatch: pytest.MonkeyPatch) -> None:
    assert R._is_tunnel("wg0") and R._is_tunnel("tun3") and R._is_tunnel("ppp0")
    monkeypatch.setattr(R, "_default_route_interfaces", lambda: ["wg0"])
    ctx = R.network_context()
    assert ctx["network_type"] == "vpn" and "wg0" in ctx["vpn_evidence"]
    monkeypatch.setattr(R, "_default_route_interfaces", lambda: ["lo"])
    assert R.network_context()["network_type"] is None


def test_unique_path_never_overwrites(tmp_path: Path) -> None:
    assert R.unique_path(tmp_path, "report.json") == tmp_path / "report.json"
    (tmp_path / "report.json").write_text("{}")
    (tmp_path / "report-1.json").write_text("{}")
    assert R.unique_path(tmp_path, "report.json") == tmp_path / "report-2.json"
    with pytest.raises(FileExistsError):
        R.write_new(tmp_path / "report.json", b"x")
    assert (tmp_path / "report.json").read_text() == "{}"


def test_target_specs_from_the_list_and_ad_hoc() -> None:
    from keepiton_throttle.live.cli import target_specs

    (tw,) = target_specs(("twitter",), (), (), ())
    assert tw.name == "twitter" and tw.sni == "abs.twimg.com" and tw.urls
    (adhoc,) = target_specs((), ("rr1---sn-x.googlevideo.com",), (), ())
    assert adhoc.name == "youtube" and adhoc.sni == "rr1---sn-x.googlevideo.com"
    (other,) = target_specs((), ("example.net",), (), ())
    assert other.name == "example.net" and other.urls == ("https://example.net/",)
    (url,) = target_specs((), (), ("https://video.twimg.com/v.mp4",), ())
    assert url.name == "twitter" and url.urls == ("https://video.twimg.com/v.mp4",)
    assert len(target_specs((), (), (), ())) >= 9  # every bundled target
    with pytest.raises(InputError, match="unknown target"):
        target_specs(("nope",), (), (), ())
    with pytest.raises(InputError, match="not a host name"):
        target_specs((), ("*.twimg.com",), (), ())


def test_requests_of_a_plan_are_valid() -> None:
    r = Request("quic", SNI_T, SNI_T, "10.77.0.2", 443, "/bytes/1")
    assert r.verify and not r.split_hello
