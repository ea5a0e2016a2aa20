"""The command line: help, version, flows output formats and filters."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

from click.testing import CliRunner

from keepiton_throttle import __version__
from keepiton_throttle.cli import main

from .conftest import REAL, TESTBED, requires_corpus


def test_help_and_version_do_not_import_numba() -> None:
    code = ("import sys; from keepiton_throttle.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('numba', 'numpy', 'scapy', 'aioquic', 'matplotlib') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out
    res = CliRunner().invoke(main, ["--version"])
    assert res.exit_code == 0 and __version__ in res.stdout


@requires_corpus
def test_flows_json_keys_and_sni_filter() -> None:
    res = CliRunner().invoke(main, ["flows", "--json", "--sni", "*.twimg.com",
                                    str(TESTBED / "shared-police150-tcp-bbr-r1.pcap")])
    assert res.exit_code == 0, res.output
    (rec,) = json.loads(res.stdout)
    for key in ("transport", "client", "server", "sni", "bytes_down", "bytes_up", "goodput_bps",
                "rtt_ms_p50", "retransmissions"):
        assert key in rec
    assert rec["sni"] == "abs.twimg.com" and rec["transport"] == "tcp"
    assert rec["client"] == "10.77.0.1:53324" and rec["server"] == "10.77.0.2:443"
    assert 140e3 < rec["goodput_bps"] < 170e3  # VERIFY.md: 153 kbit/s


@requires_corpus
def test_flows_csv_and_table() -> None:
    runner = CliRunner()
    res = runner.invoke(main, ["flows", "--csv", str(REAL / "zeek__tls13-ech.pcap")])
    assert res.exit_code == 0
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert len(rows) == 3 and {r["sni"] for r in rows} == {"", "cloudflare-ech.com"}
    assert any(r["ech"] == "True" for r in rows)
    res = runner.invoke(main, ["flows", str(REAL / "ndpi__quic-v2.pcapng")])
    assert res.exit_code == 0 and "quic" in res.stdout and "1 flow(s)" in res.stdout
    assert runner.invoke(main, ["flows", "--json", "--csv", str(REAL / "ndpi__quic-v2.pcapng")]).exit_code == 2
