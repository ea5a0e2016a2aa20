"""The live check end to end: real sockets, the AF_PACKET capture and the censor emulator.

Each test brings up its own testbed (unique name, state in tmp_path), runs ``throttle-check
run`` inside the client namespace (``testbed run`` / :func:`manager.run`, or ``ip netns exec``
for the direct method) and tears everything down. Download sizes are chosen so that each test
stays well under a minute: targets read at least 64 KiB (about 3 s at 130 kbit/s), controls
read for the ``--duration`` (at least 1 s). ``WALL_S`` is a time-out, not a speed assertion.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from keepiton_throttle.testbed import manager
from keepiton_throttle.testbed.cli import testbed_group as tb_group
from keepiton_throttle.testbed.netns import Topology, netns_exists
from keepiton_throttle.testbed.profiles import load_profile, profile_from_dict

ROOT = Path(__file__).resolve().parents[1]
WALL_S = 120.0  # a hung run is killed after this; the runs themselves take 20-50 s

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and iproute2")
pytestmark = [pytest.mark.netns, pytest.mark.slow, needs_root]

_counter = itertools.count()


def unique_name() -> str:
    return f"kl{os.getpid() % 100000}x{next(_counter)}"


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEEPITON_TESTBED_STATE", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))


def _run_profile(profile: Any, tmp_path: Path, *args: str) -> dict[str, Any]:
    name = unique_name()
    try:
        res = manager.run(profile, name=name, run_args=["--out", str(tmp_path / "out"), *args],
                          timeout_s=WALL_S)
    finally:
        assert not any(netns_exists(ns) for ns in Topology(name=name).namespaces)
    assert res["returncode"] == 0, res
    assert res["report"] is not None
    return dict(res["report"])


def _by_transport(report: dict[str, Any], target: str = "twitter") -> dict[str, dict[str, Any]]:
    return {e["transport"]: e for e in report["targets"] if e["target"] == target}


def test_twitter_2021_is_throttled_by_policing_at_the_profile_rate(tmp_path: Path) -> None:
    profile = load_profile("twitter-2021")
    rate = profile.rules[0].rate_bps
    report = _run_profile(profile, tmp_path, "--repeat", "2", "--duration", "4", "--max-bytes", "20000000",
                          "--no-confirm")
    got = _by_transport(report)
    assert set(got) == {"tcp", "quic"}
    for transport, e in got.items():
        assert e["decision"] == "throttled", (transport, e["reasons"], e["notes"])
        assert e["mechanism"] == "policing", (transport, e["reasons"])
        assert abs(e["rate_bps"] - rate) <= 0.15 * rate, (transport, e["rate_bps"])
        assert e["method"] == "same_server" and e["sni"] == "abs.twimg.com"
        assert e["evidence"]["source"] == "capture" and e["evidence"]["capture_dropped"] == 0
        assert "tls_verification_off" in e["notes"]
        roles = [m["role"] for m in e["measurements"]]
        assert roles[0] == "control" and roles.count("target") == 2 and roles.count("control") == 2
    out = tmp_path / "out"
    assert (out / "report.json").is_file() and (out / "capture-same-server.pcapng").is_file()
    assert (out / "plot-twitter.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["schema"] == "keepiton_throttle.run/1"
    # the client's address is redacted in the JSON (the pcap keeps it)
    assert "10.77.0.1" not in (out / "report.json").read_text()


def test_without_capture_tcp_info_still_finds_the_policer(tmp_path: Path) -> None:
    report = _run_profile(load_profile("twitter-2021"), tmp_path, "--repeat", "2", "--duration", "3",
                          "--max-bytes", "20000000", "--no-capture", "--no-confirm")
    got = _by_transport(report)
    assert set(got) == {"tcp", "quic"}
    for transport, e in got.items():
        assert e["decision"] == "throttled", (transport, e["reasons"])
        assert e["mechanism"] == "policing", (transport, e["reasons"], e["flows"][0].get("mechanism"))
        assert e["evidence"]["source"] == "tcp_info" and "tcp_info_only" in e["notes"]
    assert got["tcp"]["measurements"][0]["tcp_info"]  # the kernel's samples are in the report
    assert report["capture"]["enabled"] is False and report["capture"]["limitations"]
    assert not list((tmp_path / "out").glob("*.pcapng"))


@pytest.mark.parametrize("profile_name", ["clean", "lossy"])
def test_clean_and_lossy_paths_are_not_throttled(profile_name: str, tmp_path: Path) -> None:
    report = _run_profile(load_profile(profile_name), tmp_path, "--repeat", "2", "--duration", "1.5",
                          "--max-bytes", "20000000")
    got = _by_transport(report)
    assert set(got) == {"tcp", "quic"}
    for transport, e in got.items():
        assert e["trigger"] == {"tested": False}
        why = (transport, e["decision"], e["reasons"], e["ratio"], e["notes"])
        if profile_name == "lossy" and transport == "quic":
            # QUIC's losses are encrypted, so the shared-path-loss rule cannot clear it: with two
            # downloads a side, 2 % loss can leave the targets at half the controls' goodput by
            # chance (seen in CI: 2.0 and 2.3 vs 4.8 and 5.8 Mbit/s), and then the honest answer
            # is "inconclusive" (CI straddling 0.5, or no symptom), never "throttled"
            assert e["decision"] in ("not_throttled", "inconclusive"), why
            if e["decision"] == "inconclusive":
                assert "significant_and_large" not in e["reasons"], why
                assert {"ratio_ci_crosses_threshold", "no_differential_symptom",
                        "not_significant"} & set(e["reasons"]), why
        else:
            assert e["decision"] == "not_throttled", why


def test_slow_link_is_never_throttled(tmp_path: Path) -> None:
    report = _run_profile(load_profile("slow-link"), tmp_path, "--repeat", "2", "--duration", "1.5",
                          "--max-bytes", "20000000")
    got = _by_transport(report)
    assert set(got) == {"tcp", "quic"}
    for transport, e in got.items():
        assert e["decision"] != "throttled", (transport, e["reasons"], e["ratio"])


def test_split_clienthello_confirms_first_segment_dpi(tmp_path: Path) -> None:
    data = load_profile("twitter-2021").to_dict()
    data["dpi_mode"] = "first-segment"
    report = _run_profile(profile_from_dict(data, name="tw-first"), tmp_path, "--repeat", "2",
                          "--duration", "2", "--max-bytes", "20000000")
    got = _by_transport(report)
    assert set(got) == {"tcp", "quic"}
    for transport, e in got.items():
        assert e["decision"] == "throttled", (transport, e["reasons"])
        trig = e["trigger"]
        assert trig["tested"] and trig["conclusion"] == "sni_dpi", (transport, trig["result"]["decision"])
        assert "trigger_sni_dpi" in e["notes"]
        split = [m for m in trig["result"]["measurements"] if m["role"] == "target"]
        assert split and all(m["split_hello"] and m["split_at"] for m in split)
    assert (tmp_path / "out" / "capture-same-server-split.pcapng").is_file()


def test_testbed_run_command_prints_the_verdict_table(tmp_path: Path) -> None:
    name = unique_name()
    res = CliRunner().invoke(tb_group, ["run", "--profile", "clean", "--name", name, "--repeat", "1",
                                             "--duration", "1", "--max-bytes", "20000000", "--transport", "tcp",
                                             "--out", str(tmp_path / "out")])
    assert not any(netns_exists(ns) for ns in Topology(name=name).namespaces)
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].startswith(f"testbed {name}, profile clean: target SNI(s) abs.twimg.com")
    assert any(ln.split()[:4] == ["twitter", "same_server", "tcp", "not_throttled"] for ln in lines)


def _client_run(ns: str, args: list[str]) -> subprocess.CompletedProcess[str]:
    argv = ["ip", "netns", "exec", ns, sys.executable, "-m", "keepiton_throttle.live.cli", "run", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=WALL_S,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))


def test_a_target_whose_server_refuses_is_unreachable(tmp_path: Path) -> None:
    name = unique_name()
    topo = Topology(name=name)
    try:
        manager.up(load_profile("clean"), name=name)
        # a second server address with nothing listening: connections to it are refused
        subprocess.run(["ip", "-n", topo.server_ns, "addr", "add", "10.77.0.3/24", "dev", topo.server_if],
                       check=True)
        res = _client_run(topo.client_ns, [
            "--method", "direct", "--url", "https://refuse.example:444/bytes/100000",
            "--control-url", "https://control.example/bytes/20000000",
            "--resolve", "refuse.example:10.77.0.3", "--resolve", "control.example:10.77.0.2",
            "--insecure", "--repeat", "1", "--duration", "1", "--timeout", "5", "--format", "json",
            "--out", str(tmp_path / "out")])
    finally:
        manager.down(name)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    got = {e["transport"]: e for e in report["targets"]}
    assert set(got) == {"tcp", "quic"}
    for transport, e in got.items():
        assert e["target"] == "refuse.example"
        assert e["decision"] == "unreachable", (transport, e)
        assert e["symptom"]["failure"] == "connection_refused", (transport, e["symptom"])
        assert e["symptom"]["controls_ok"] is True
        assert e["mechanism"] == "none" and e["rate_bps"] is None


def test_no_network_at_all_is_one_line(tmp_path: Path) -> None:
    ns = unique_name()
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        res = _client_run(ns, ["--no-capture", "--target", "twitter", "--out", str(tmp_path / "out")])
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=True)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [
        "Error: no network: no default route and no route to any target or control"]
    assert res.stdout == ""
