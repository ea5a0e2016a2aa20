"""``throttle-check bench``: its generated capture is right and ``--quick --json`` has every
documented key. No timing assertions: only that the numbers exist and are positive."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from keepiton_throttle import bench
from keepiton_throttle.cli import main
from keepiton_throttle.flows import analyze_file
from keepiton_throttle.packets import STATUS_OK
from keepiton_throttle.sources.capture import read_capture


def test_generated_capture_decodes_cleanly(tmp_path: Path) -> None:
    p = tmp_path / "g.pcap"
    size = bench.generate_capture(p, packets=70_000, seed=3)  # crosses a generation chunk
    assert size == p.stat().st_size == 24 + 82 * 70_000
    table, info, stats = read_capture(p)
    assert stats.records == table.n == 70_000 and not stats.damage
    assert (table.status == STATUS_OK).all() and (table.proto == 6).all()
    assert (np.diff(table.ts_ns) >= 0).all()
    ft, series = analyze_file(p)
    c = ft.cols
    assert 60 <= ft.n <= 110  # a flow every 1000 packets, 32 at once
    # every flow is a clean bulk download: handshake seen, data down, no retransmission
    assert (c["role_source"] == c["role_source"][0]).all()
    assert int(c["retransmissions_down"].sum()) == 0 and int(c["goodput_down"].sum()) > 0
    assert series.rtts.shape[1] > 0
    q = tmp_path / "h.pcap"
    bench.generate_capture(q, packets=70_000, seed=3)
    assert q.read_bytes() == p.read_bytes()


def test_cpu_model_is_named() -> None:
    assert bench.cpu_model().strip()


def test_help_documents_every_json_key() -> None:
    res = CliRunner().invoke(main, ["bench", "--help"])
    assert res.exit_code == 0
    documented = set(re.findall(r"^\s+([a-z_0-9]+)\s{2,}", res.output.split("Keys of --json:")[1], re.M))
    assert documented == set(bench.BENCH_KEYS)


@pytest.mark.slow
def test_quick_json_has_the_documented_keys() -> None:
    res = CliRunner().invoke(main, ["bench", "--quick", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert set(doc) == set(bench.BENCH_KEYS)
    assert doc["schema"] == bench.SCHEMA and doc["quick"] is True
    assert doc["numba_compile_scope"] == "decode"
    for key in ("numba_compile_cold_s", "numba_cached_s", "decode_pps_1core", "decode_pps_all_cores",
                "flows_pps_1core", "flows_pps_all_cores", "peak_rss_mb", "stats_pairs_per_s_1core",
                "stats_pairs_per_s_all_cores", "capture_bytes"):
        assert isinstance(doc[key], (int, float)) and doc[key] > 0, key
    assert doc["capture_packets"] == bench.QUICK_PACKETS
    assert doc["cpu_usable"] >= 1 and doc["cpu_cores"] >= doc["cpu_usable"]
    if doc["native_available"]:
        assert doc["native_decode_pps_1core"] > 0 and doc["native_decode_pps_all_cores"] > 0
    else:
        assert doc["native_decode_pps_1core"] is None
