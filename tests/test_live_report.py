"""Reports of the live check: the OONI export, plots, the HTML file, ``report`` re-rendering and
the command line's laziness and usage errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from keepiton_throttle.live import run as R
from keepiton_throttle.live.cli import main as live_main
from keepiton_throttle.live.cli import report_command, run_command
from keepiton_throttle.live.ooni import to_ooni, to_ooni_lines
from tests.test_live_run import synthetic_report

ROOT = Path(__file__).resolve().parents[1]

#: df-000 base keys (OONI data format 0.2.0)
OONI_BASE_KEYS = {
    "annotations", "data_format_version", "input", "measurement_start_time", "probe_asn", "probe_cc",
    "probe_ip", "report_id", "software_name", "software_version", "test_keys", "test_name", "test_runtime",
    "test_start_time", "test_version",
}


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    rep = synthetic_report(transports=("tcp", "quic"))
    published = R.finish_report(R.LiveResult(rep, {"10.77.0.1"}, Path(".")), keep_ip=False)
    published["annotations"] = {"network_type": "vpn"}
    return published


def test_objects_the_lead_registers() -> None:
    assert isinstance(run_command, click.Command) and run_command.name == "run"
    assert isinstance(report_command, click.Command) and report_command.name == "report"


def test_ooni_measurements_have_the_base_keys(report: dict[str, Any]) -> None:
    (m,) = to_ooni(report)  # one target
    assert OONI_BASE_KEYS <= set(m)
    assert m["data_format_version"] == "0.2.0"
    assert m["probe_asn"] == "AS0" and m["probe_cc"] == "ZZ" and m["probe_ip"] == "127.0.0.1"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", m["measurement_start_time"])
    assert m["test_start_time"] == "2026-05-01 12:00:00"
    assert m["software_name"] == "keepiton_throttle" and m["test_name"] == "keepiton_throttle"
    assert m["input"] == "abs.twimg.com"
    assert all(isinstance(v, str) for v in m["annotations"].values())
    assert m["annotations"]["network_type"] == "vpn"
    tk = m["test_keys"]
    assert {t["transport"] for t in tk["throttling"]} == {"tcp", "quic"}
    assert all(t["decision"] in ("throttled", "not_throttled", "inconclusive") for t in tk["throttling"])
    ev = tk["network_events"]
    assert ev and all({"conn_id", "operation", "t", "failure"} <= set(e) for e in ev)
    assert [e["t"] for e in ev] == sorted(e["t"] for e in ev)
    connects = [e for e in ev if e["operation"] == "connect"]
    assert connects and all(e["address"] == "10.77.0.2:443" and e["proto"] in ("tcp", "udp") for e in connects)
    assert any(e["operation"] == "read" and e["num_bytes"] > 0 for e in ev)
    assert "10.77.0.1" not in json.dumps(m)
    lines = to_ooni_lines(report).splitlines()
    assert len(lines) == 1 and json.loads(lines[0]) == m


def test_ooni_keeps_the_address_only_when_asked() -> None:
    rep = synthetic_report()
    rep["network"]["local_addresses"] = ["10.77.0.1"]
    assert to_ooni(rep)[0]["probe_ip"] == "10.77.0.1"


def test_plots_are_png_per_target(report: dict[str, Any]) -> None:
    pytest.importorskip("matplotlib")
    from keepiton_throttle.live.plots import render_target_plots

    pngs = render_target_plots(report)
    assert set(pngs) == {"twitter"} and pngs["twitter"][:8] == b"\x89PNG\r\n\x1a\n"


def _write(tmp_path: Path, report: dict[str, Any]) -> Path:
    p = tmp_path / "report.json"
    p.write_text(json.dumps(report))
    return p


def test_report_re_renders_the_table_json_and_ooni(report: dict[str, Any], tmp_path: Path) -> None:
    path = _write(tmp_path, report)
    res = CliRunner().invoke(report_command, [str(path)])
    assert res.exit_code == 0, res.output
    rows = [ln.split() for ln in res.output.splitlines()]
    assert rows[0][:4] == ["target", "method", "proto", "decision"]
    assert [r[:4] for r in rows[1:3]] == [["twitter", "same_server", "tcp", "throttled"],
                                          ["twitter", "same_server", "quic", rows[2][3]]]
    res = CliRunner().invoke(report_command, [str(path), "--json"])
    assert res.exit_code == 0 and json.loads(res.output) == report
    res = CliRunner().invoke(report_command, [str(path), "--format", "ooni"])
    assert res.exit_code == 0 and json.loads(res.output.splitlines()[0])["test_keys"]["throttling"]


def test_report_writes_a_self_contained_html_file(report: dict[str, Any], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    path = _write(tmp_path, report)
    out = tmp_path / "r.html"
    res = CliRunner().invoke(report_command, [str(path), "--html", str(out)])
    assert res.exit_code == 0, res.output
    text = out.read_text()
    assert text.startswith("<!DOCTYPE html>") and "data:image/png;base64," in text
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", text, re.I)  # no external resources
    assert "<script" not in text.lower() and "@import" not in text
    assert "twitter" in text and "throttled" in text
    # an existing file is never overwritten
    out.write_text("keep me")
    res = CliRunner().invoke(report_command, [str(path), "--html", str(out)])
    assert res.exit_code == 1 and "not overwriting" in res.output and out.read_text() == "keep me"


def test_html_escapes_report_values(report: dict[str, Any]) -> None:
    from keepiton_throttle.live.html import render_html

    evil = json.loads(json.dumps(report))
    evil["targets"][0]["target"] = "<script>alert(1)</script>"
    assert "<script>alert" not in render_html(evil, {})


@pytest.mark.parametrize("content, message", [
    ("not json", "not a readable JSON report"),
    ('{"schema": "keepiton_throttle.analysis/1"}', "not a 'throttle-check run' report"),
])
def test_report_refuses_other_files(tmp_path: Path, content: str, message: str) -> None:
    p = tmp_path / "x.json"
    p.write_text(content)
    res = CliRunner().invoke(report_command, [str(p)])
    assert res.exit_code == 1 and message in res.output


@pytest.mark.parametrize("args, message", [
    (["--method", "same-server"], "needs --server"),
    (["--target", "nope"], "unknown target"),
    (["--server", "host:notaport"], "expected HOST[:PORT]"),
    (["--resolve", "nohost"], "expected HOST:ADDRESS"),
    (["--url", "http://plain.example/"], "not an https URL"),
])
def test_run_usage_errors_exit_2(args: list[str], message: str, tmp_path: Path) -> None:
    res = CliRunner().invoke(run_command, [*args, "--no-capture", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert not (tmp_path / "o").exists()


def test_help_does_not_import_scapy_aioquic_or_matplotlib() -> None:
    code = (
        "import sys\n"
        "from keepiton_throttle.live.cli import main\n"
        "for cmd in (['run', '--help'], ['report', '--help'], ['--help']):\n"
        "    try:\n"
        "        main(cmd)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = [m for m in ('scapy', 'aioquic', 'matplotlib', 'numpy') if m in sys.modules]\n"
        "print('HEAVY:' + ','.join(heavy))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert "--no-capture" in out.stdout and "--html" in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "HEAVY:"


def test_module_entry_point() -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-m", "keepiton_throttle.live.cli", "--help"], capture_output=True,
                         text=True, env=env, check=True)
    assert "run" in out.stdout and "report" in out.stdout
    assert set(live_main.commands) == {"run", "report"}
