"""The command line: help, version, flows output formats and filters."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from typing import Any

from click.testing import CliRunner

from keepiton_throttle import __version__
from keepiton_throttle.cli import main
from keepiton_throttle.flows import FLOW_RECORD_KEYS

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


@requires_corpus
def test_flows_output_is_streamed_and_survives_a_bad_file(tmp_path: Any) -> None:
    """Several files, one unreadable in the middle: JSON stays one valid list (one flow object
    a line), CSV one header, both with every record key; the bad file is one line on stderr and
    exit status 2. An empty selection still gives valid, complete output."""
    good = [str(REAL / "zeek__tls13-ech.pcap"), str(REAL / "ndpi__quic-v2.pcapng")]
    bad = tmp_path / "broken.pcap"
    bad.write_bytes(b"\xd4\xc3\xb2\xa1" + b"\x00" * 7)  # a pcap header cut short
    files = [good[0], str(bad), good[1]]
    keys = ["file", *FLOW_RECORD_KEYS]
    res = CliRunner().invoke(main, ["flows", "--json", *files])
    assert res.exit_code == 2 and res.stderr.count("\n") == 1 and "broken.pcap" in res.stderr
    recs = json.loads(res.stdout)
    assert [r["file"] for r in recs] == [good[0]] * 3 + [good[1]]
    assert all(list(r) == keys for r in recs)
    assert res.stdout.count("\n") == len(recs) + 2  # "[", one line per flow, "]"
    res = CliRunner().invoke(main, ["flows", "--csv", *files])
    rows = list(csv.reader(io.StringIO(res.stdout)))
    assert res.exit_code == 2 and rows[0] == keys and len(rows) == 5
    for fmt in ("--json", "--csv"):
        res = CliRunner().invoke(main, ["flows", fmt, "--sni", "*.nowhere.example", *good])
        assert res.exit_code == 0
        if fmt == "--json":
            assert json.loads(res.stdout) == []
        else:
            assert list(csv.reader(io.StringIO(res.stdout))) == [keys]


@requires_corpus
def test_flows_sni_patterns_select_the_flows_they_match() -> None:
    """Each --sni pattern adds the flows it matches (case-insensitive), in flow order."""
    path = str(REAL / "zeek__tls13-ech.pcap")
    res = CliRunner().invoke(main, ["flows", "--json", path])
    every = json.loads(res.stdout)
    named = [r for r in every if r["sni"]]
    assert named and len(named) < len(every)
    for pats in (["CLOUDFLARE-*"], ["*ech.com", "cloudflare*"]):
        res = CliRunner().invoke(main, ["flows", "--json", *[a for p in pats for a in ("--sni", p)], path])
        assert json.loads(res.stdout) == named


@requires_corpus
def test_flows_says_when_a_capture_is_damaged(tmp_path: Any) -> None:
    """A capture cut inside a record is analysed up to the cut, and a warning names the file,
    the damage and its offset (the rows are not the whole capture)."""
    src = REAL / "zeek__tls13-ech.pcap"
    data = src.read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[: len(data) * 2 // 3])
    whole = json.loads(CliRunner().invoke(main, ["flows", "--json", str(src)]).stdout)
    res = CliRunner().invoke(main, ["flows", "--json", str(cut)])
    assert res.exit_code == 0
    assert res.stderr.startswith(f"throttle-check: warning: {cut}: 1 damaged (reading stopped early)")
    assert "first at byte" in res.stderr and res.stderr.count("\n") == 1
    rows = json.loads(res.stdout)
    assert 0 < sum(r["packets_up"] + r["packets_down"] for r in rows) < sum(
        r["packets_up"] + r["packets_down"] for r in whole)
    clean = CliRunner().invoke(main, ["flows", "--json", str(src)])
    assert clean.stderr == ""


def test_flows_counts_packets_of_a_link_type_it_does_not_decode(tmp_path: Any) -> None:
    """Packets on an interface of an unknown link type are in no flow: said, with their count."""
    import struct

    path = tmp_path / "user0.pcap"
    frame = b"\x45" + bytes(59)
    path.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 147) + b"".join(
        struct.pack("<IIII", 1_700_000_000 + i, 0, len(frame), len(frame)) + frame for i in range(7)))
    res = CliRunner().invoke(main, ["flows", "--csv", str(path)])
    assert res.exit_code == 0 and len(list(csv.reader(io.StringIO(res.stdout)))) == 1
    assert res.stderr == (f"throttle-check: warning: {path}: 7 packet(s) of link type UNKNOWN(147), "
                          "which is not decoded, are in no flow\n")
