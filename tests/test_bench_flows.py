"""Smoke test of ``benchmarks/bench_flows.py``: its flow-stage helper, on a small generated
capture, finds the flows the generator made. No timing assertions: only that the figures exist.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
N = 2_000
#: (capture, what gen_capture.py says it wrote, the per-packet fields it meant)
Generated = tuple[Path, dict[str, Any], dict[str, np.ndarray]]


@pytest.fixture(scope="module")
def bench_flows() -> Iterator[ModuleType]:
    sys.path.insert(0, str(BENCH))
    try:
        import bench_flows

        yield bench_flows
    finally:
        sys.path.remove(str(BENCH))


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Generated:
    d = tmp_path_factory.mktemp("genflows")
    out = subprocess.run(
        [sys.executable, str(BENCH / "gen_capture.py"), "-o", str(d / "g.pcap"), "-n", str(N),
         "--seed", "5", "--intent", str(d / "g.npz"), "--json"],
        capture_output=True, text=True, check=True, timeout=120)
    with np.load(d / "g.npz") as z:
        intent = {k: z[k] for k in z.files}
    return d / "g.pcap", json.loads(out.stdout), intent


def _tuples(*cols: np.ndarray) -> set[tuple[Any, ...]]:
    """Direction-free 5-tuples of the columns src hi, src lo, src port, dst hi, dst lo, dst port,
    proto (each endpoint as (hi, lo, port), the smaller one first)."""
    out: set[tuple[Any, ...]] = set()
    for row in zip(*cols, strict=True):
        a, b = tuple(int(x) for x in row[0:3]), tuple(int(x) for x in row[3:6])
        out.add((int(row[6]), *sorted((a, b))))
    return out


def test_flow_stage_finds_the_generators_flows(bench_flows: ModuleType, generated: Generated) -> None:
    path, desc, intent = generated
    res, table, series = bench_flows.flow_stage(path)
    assert res["records"] == res["packets"] == desc["packets"] == N
    assert res["flows"] == table.n == desc["flows"] > 10
    assert res["tcp_flows"] > 0 and res["udp_flows"] > 0
    assert res["tcp_flows"] + res["udp_flows"] == res["flows"]
    # every packet lands in a flow, and the flows carry every byte the generator wrote
    assert res["flow_packets"] == N
    assert res["bytes"] == int(intent["wirelen"].sum())
    # the same 5-tuples as the generator meant
    c = table.cols
    ours = _tuples(c["client_hi"], c["client_lo"], c["client_port"], c["server_hi"],
                   c["server_lo"], c["server_port"], c["proto"])
    meant = _tuples(intent["src_hi"], intent["src_lo"], intent["sport"], intent["dst_hi"],
                    intent["dst_lo"], intent["dport"], intent["proto"])
    assert ours == meant
    # TCP flows that started in the capture are oriented by their SYN; the server port is 80/443
    assert set(np.unique(c["server_port"]).tolist()) <= {80, 443}
    assert res["rtt_samples"] == series.rtts.shape[1] > 0 and res["bins"] > 0
    # the figures the table is made of exist and are non-negative
    for key in ("seconds", "cpu_s", "add_s", "add_cpu_s", "finish_s", "finish_cpu_s",
                "records_s", "records_cpu_s"):
        assert res[key] >= 0, key
    assert res["flows_with_rtt"] > 0


def test_dpkt_script_agrees_on_flows_and_bytes(bench_flows: ModuleType, generated: Generated) -> None:
    pytest.importorskip("dpkt")
    path, desc, intent = generated
    ours, _, _ = bench_flows.flow_stage(path, records=False)
    res = bench_flows._worker_dpkt_flows(str(path))
    assert res["records"] == res["flow_packets"] == N and res["errors"] == 0
    assert res["flows"] == ours["flows"] == desc["flows"]
    assert res["tcp_flows"] == ours["tcp_flows"]
    assert res["bytes"] == ours["bytes"]
    assert res["rtt_samples"] > 0


def test_worker_prints_one_json_line(generated: Generated) -> None:
    path, desc, _ = generated
    out = subprocess.run([sys.executable, str(BENCH / "bench_flows.py"), "--worker", "ours-flows",
                          str(path)], capture_output=True, text=True, check=True, timeout=600)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["steady"]["flows"] == res["first"]["flows"] == desc["flows"]
    assert res["steady"]["records"] == N
