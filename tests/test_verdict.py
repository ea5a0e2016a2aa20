"""End-to-end verdicts on the labelled testbed captures (real kernel TCP and aioquic QUIC
through an emulated censor), the CLI, the report schema and the targets list."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from keepiton_throttle.analysis import DetectionConfig, analyze_paths
from keepiton_throttle.cli import main
from keepiton_throttle.errors import InputError
from keepiton_throttle.report import SCHEMA
from keepiton_throttle.targets import bundled_targets, load_targets

from .conftest import TESTBED

pytestmark = pytest.mark.skipif(not (TESTBED / "labels.json").exists(), reason="testbed corpus missing")


def _labels() -> list[dict]:
    return json.loads((TESTBED / "labels.json").read_text())["runs"] if (TESTBED / "labels.json").exists() else []


RUNS = _labels()
MECH = {"police": "policing", "shape": "shaping"}


@pytest.mark.parametrize("run", RUNS, ids=[r["file"] for r in RUNS])
def test_testbed_verdicts_match_labels(run: dict) -> None:
    label = run["label"]
    report = analyze_paths([TESTBED / run["file"]],
                           targets={"target": [run["sni_target"]]},
                           control_patterns=[run["sni_control"]])
    (v,) = report.targets
    assert v.transport == run["transport"]
    if label["target_throttled"]:
        assert v.decision == "throttled", v.reasons
        assert v.mechanism == MECH[label["mechanism"]]
        assert v.rate_bps == pytest.approx(label["rate_bps"], rel=0.15)
        assert v.ratio is not None and v.ratio_ci is not None and v.ratio_ci[1] < 0.5
        assert v.p_value is not None and v.p_value < 0.01
    else:
        # the traps (loss on all traffic, a slow link for all traffic) are never "throttled"
        assert v.decision == "not_throttled", v.reasons
        assert v.mechanism == "none" and v.rate_bps is None


def test_default_targets_and_controls_find_twitter() -> None:
    """Without hints: the bundled targets list finds abs.twimg.com, every other SNI is a control."""
    report = analyze_paths([TESTBED / "shared-police150-tcp-bbr-r1.pcap"])
    (v,) = report.targets
    assert v.target == "twitter" and v.decision == "throttled"
    assert [f.sni for f in v.control_flows] == ["fonts.gstatic.com"]


def test_same_capture_twice_is_still_one_verdict_per_transport() -> None:
    p = TESTBED / "shared-police150-quic-r1.pcap"
    report = analyze_paths([p, p], targets={"t": ["abs.twimg.com"]})
    (v,) = report.targets
    assert len(v.flows) == 2 and v.decision == "throttled"


def test_asked_target_without_flows_is_inconclusive() -> None:
    report = analyze_paths([TESTBED / "shared-clean-tcp-cubic-r1.pcap"], only_targets=["signal"])
    (v,) = report.targets
    assert v.decision == "inconclusive" and v.reasons == ["no_target_flows"]


def test_no_controls_is_inconclusive() -> None:
    report = analyze_paths([TESTBED / "shared-police150-tcp-bbr-r1.pcap"],
                           control_patterns=["nothing.example"])
    (v,) = report.targets
    assert v.decision == "inconclusive" and "no_control_flows" in v.reasons


def test_results_are_reproducible() -> None:
    p = [TESTBED / "shared-shape2m-tcp-cubic-r1.pcap"]
    a = analyze_paths(p, config=DetectionConfig(seed=7)).targets[0]
    b = analyze_paths(p, config=DetectionConfig(seed=7)).targets[0]
    assert a.ratio_ci == b.ratio_ci and a.p_value == b.p_value


def test_cli_analyze_json_schema() -> None:
    res = CliRunner().invoke(main, ["analyze", "--json", str(TESTBED / "shared-police150-quic-r1.pcap")])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["schema"] == SCHEMA
    (t,) = doc["targets"]
    for key in ("target", "decision", "mechanism", "rate_bps", "onset_bytes", "ratio", "ratio_ci",
                "p_value", "flows", "reasons"):
        assert key in t
    assert t["target"] == "twitter" and t["decision"] == "throttled"


def test_cli_analyze_table_and_exit_codes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    runner = CliRunner()
    res = runner.invoke(main, ["analyze", "--target-sni", "*.twimg.com",
                               str(TESTBED / "shared-police150-tcp-bbr-r1.pcap")])
    assert res.exit_code == 0 and "throttled" in res.stdout and "policing" in res.stdout
    res = runner.invoke(main, ["analyze", "--fail-on-throttled",
                               str(TESTBED / "shared-police150-tcp-bbr-r1.pcap")])
    assert res.exit_code == 3
    res = runner.invoke(main, ["analyze", "--target", "nosuch", str(TESTBED / "shared-clean-quic-r1.pcap")])
    assert res.exit_code == 2 and "unknown target" in res.output and "Traceback" not in res.output
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(b"not a capture at all")
    res = runner.invoke(main, ["analyze", str(bad)])
    assert res.exit_code == 2 and "not a pcap or pcapng" in res.output


def test_bundled_targets_cover_the_issue_list() -> None:
    t = bundled_targets()
    for name in ("youtube", "twitter", "telegram", "instagram", "facebook", "whatsapp", "tiktok",
                 "discord", "signal"):
        assert name in t
    assert t["youtube"].matches("rr2---sn-5hne6nzk.googlevideo.com")
    assert t["twitter"].matches("t.co") and t["twitter"].matches("pbs.twimg.com")
    assert not t["twitter"].matches("twimg.com.evil.example")
    assert not t["twitter"].matches("nott.co")


def test_user_targets_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "t.toml"
    f.write_text('[targets.mysite]\nsni = ["*.example.org"]\n[targets.twitter]\nsni = ["x.com"]\n')
    t = load_targets([f])
    assert t["mysite"].matches("a.example.org") and t["twitter"].sni == ("x.com",)
    f.write_text("[targets.broken]\nsni = []\n")
    with pytest.raises(InputError, match="non-empty list"):
        load_targets([f])
