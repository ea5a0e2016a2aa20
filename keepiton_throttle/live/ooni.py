"""A live run in the OONI data format: one measurement per target, as JSON lines.

Base keys follow OONI's df-000 (data format 0.2.0): ``measurement_start_time`` and
``test_start_time`` as ``YYYY-MM-DD HH:MM:SS`` UTC, ``probe_asn`` "AS0", ``probe_cc`` "ZZ"
and ``probe_ip`` "127.0.0.1" (we do not geolocate, and redact the address unless the run
kept it), ``software_name``/``software_version``, ``test_name``/``test_version``,
``test_runtime``, ``annotations`` (string values). ``test_keys`` hold our verdicts
(``throttling``) and the downloads' network events in df-008 form (``network_events``:
``operation`` connect / tls_handshake_start / read / write / close ..., ``t`` in seconds since
``measurement_start_time``, ``conn_id`` per download, ``failure`` an OONI failure string or
null). Pure functions of the report dict.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

__all__ = ["DATA_FORMAT_VERSION", "TEST_NAME", "to_ooni", "to_ooni_lines"]

DATA_FORMAT_VERSION = "0.2.0"
TEST_NAME = "keepiton_throttle"
TEST_VERSION = "0.1.0"


def _ooni_time(ts: float | str | None) -> str | None:
    if ts is None:
        return None
    if isinstance(ts, str):
        dt = datetime.fromisoformat(ts)
    else:
        dt = datetime.fromtimestamp(ts, tz=UTC)
    return dt.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _events(measurements: list[dict[str, Any]], t0: float, first_conn: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for k, m in enumerate(measurements):
        conn = first_conn + k
        base = m["start"] - t0
        tags = [m.get("method"), m.get("role"), f"rep{m.get('rep')}"]
        proto = "udp" if m["transport"] == "quic" else "tcp"
        for ev in m.get("network_events") or []:
            e = {"conn_id": conn, "failure": ev.get("failure"), "operation": ev["operation"],
                 "t": round(base + ev["t"], 6), "tags": tags}
            if ev["operation"] == "connect":
                e["address"] = ev.get("address")
                e["proto"] = ev.get("proto", proto)
            if "num_bytes" in ev:
                e["num_bytes"] = ev["num_bytes"]
            out.append(e)
        for t, n in m.get("timeline") or []:
            out.append({"conn_id": conn, "failure": None, "operation": "read", "num_bytes": int(n),
                        "t": round(base + t, 6), "tags": tags})
    out.sort(key=lambda e: e["t"])
    return out


def to_ooni(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The OONI measurements of a run report (one per target)."""
    by_target: dict[str, list[dict[str, Any]]] = {}
    for e in report.get("targets") or []:
        by_target.setdefault(str(e["target"]), []).append(e)
    annotations = {str(k): str(v) for k, v in (report.get("annotations") or {}).items()}
    annotations["keepiton_schema"] = str(report.get("schema"))
    local = (report.get("network") or {}).get("local_addresses") or []
    probe_ip = "127.0.0.1"
    if local and not (report.get("network") or {}).get("local_addresses_redacted"):
        probe_ip = str(local[0])
    software = report.get("software") or {}
    out = []
    conn = 1
    for name, entries in by_target.items():
        meas = [m for e in entries for m in e.get("measurements") or []]
        starts = [m["start"] for m in meas] or [0.0]
        t0 = min(starts)
        runtime = max((m["start"] + (m.get("seconds") or 0) for m in meas), default=t0) - t0
        first = entries[0]
        failures = [e["symptom"]["failure"] for e in entries if e.get("symptom")]
        tk = {
            "throttling": [
                {k: e.get(k) for k in ("method", "transport", "sni", "control_snis", "decision", "mechanism",
                                       "rate_bps", "burst_bytes", "onset_bytes", "ratio", "ratio_ci", "p_value",
                                       "target_goodput_bps", "control_goodput_bps", "reasons", "notes",
                                       "symptom", "tls_verification")}
                | {"trigger": (e.get("trigger") or {}).get("conclusion")}
                for e in entries
            ],
            "network_events": _events(meas, t0, conn),
            "failure": failures[0] if failures and len(failures) == len(entries) else None,
            "throttled": any(e["decision"] == "throttled" for e in entries),
            "blocked": any(e["decision"] == "blocked" for e in entries),
        }
        conn += len(meas)
        out.append({
            "annotations": annotations,
            "data_format_version": DATA_FORMAT_VERSION,
            "extensions": {"netevents": 0, "keepiton_throttle": 1},
            "input": first.get("sni") or name,
            "measurement_start_time": _ooni_time(t0),
            "options": [],
            "probe_asn": "AS0",
            "probe_cc": "ZZ",
            "probe_ip": probe_ip,
            "probe_network_name": "",
            "report_id": "",
            "resolver_asn": "AS0",
            "resolver_ip": "127.0.0.1",
            "resolver_network_name": "",
            "software_name": software.get("name", "keepiton_throttle"),
            "software_version": software.get("version", ""),
            "test_helpers": {"same_server": (report.get("config") or {}).get("server")}
            if (report.get("config") or {}).get("server") else {},
            "test_keys": tk,
            "test_name": TEST_NAME,
            "test_runtime": round(runtime, 3),
            "test_start_time": _ooni_time(report.get("started_at")),
            "test_version": TEST_VERSION,
        })
    return out


def to_ooni_lines(report: dict[str, Any]) -> str:
    """JSON lines (one measurement per line, newline-terminated)."""
    return "".join(json.dumps(m, separators=(",", ":")) + "\n" for m in to_ooni(report))
