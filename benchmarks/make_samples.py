"""Make the small bundled sample captures in ``keepiton_throttle/data/`` (needs root).

    python benchmarks/make_samples.py [--out keepiton_throttle/data] [--only NAME ...]

For each scenario: bring a testbed up with the scenario's profile (censor + ``serve`` in their
namespaces), start tcpdump on the client's veth in the client namespace, download from the
server once with a *control* SNI and once with a *target* SNI (control first; Python client in
the client namespace: ssl + socket over TCP, aioquic over QUIC), stop the capture, tear the
testbed down. The capture is then rewritten as a classic pcap in which server->client frames
are cut to 128 bytes and client->server frames are whole (so the ClientHello and QUIC Initials
stay complete), which keeps each file at a few hundred KB.

``sample-labels.json`` uses the schema of the shared corpus' ``labels.json`` (``topology``,
``runs[]`` with ``policy``, ``flows``, ``client_results``, ``label``), plus ``censor_observed``
(the censor's own flow records, for cross-checking only).
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from keepiton_throttle.testbed import manager  # noqa: E402
from keepiton_throttle.testbed.client import fetch  # noqa: E402
from keepiton_throttle.testbed.netns import run_in_netns  # noqa: E402
from keepiton_throttle.testbed.profiles import load_profile  # noqa: E402

SERVER_TO_CLIENT_SNAP = 128

# (file stem, profile, transport, congestion control, target SNI, target bytes, control SNI, control bytes)
SCENARIOS: list[tuple[str, str, str, str, str, int, str, int]] = [
    # controls (and unthrottled targets) last well over a second, so that they leave slow start
    # and give the per-bin tests enough bins: what the live check does too
    ("sample-clean-tcp", "clean", "tcp", "cubic", "abs.twimg.com", 3_000_000, "cdn.jsdelivr.net", 3_000_000),
    ("sample-clean-quic", "clean", "quic", "-", "video.twimg.com", 2_000_000, "www.example.org", 2_000_000),
    ("sample-twitter-2021-tcp", "twitter-2021", "tcp", "bbr", "abs.twimg.com", 160_000, "cdn.jsdelivr.net", 3_000_000),
    ("sample-twitter-2021-quic", "twitter-2021", "quic", "-", "video.twimg.com", 160_000,
     "www.example.org", 2_000_000),
    ("sample-youtube-2024-tcp", "youtube-2024", "tcp", "cubic", "rr4---sn-4g5e6nzz.googlevideo.com", 400_000,
     "cdn.jsdelivr.net", 3_000_000),
    ("sample-lossy-tcp", "lossy", "tcp", "cubic", "abs.twimg.com", 1_500_000, "cdn.jsdelivr.net", 1_500_000),
    ("sample-slow-link-tcp", "slow-link", "tcp", "bbr", "abs.twimg.com", 1_500_000, "cdn.jsdelivr.net", 1_500_000),
]


def start_capture(ns: str, path: Path, server_ip: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, "tcpdump", "-i", "c0", "-w", str(path), "-U", "-s", "0", "-n", "-Z", "root",
         "ip", "and", "host", server_ip],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    ready, _, _ = select.select([proc.stderr], [], [], 10)
    if not ready or b"listening" not in proc.stderr.readline():
        proc.kill()
        raise RuntimeError("tcpdump did not start")
    return proc


def stop_capture(proc: subprocess.Popen[bytes]) -> int:
    """Stop tcpdump; returns the number of packets the kernel dropped."""
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=10)
    for line in err.decode(errors="replace").splitlines():
        if "dropped by kernel" in line:
            return int(line.split()[0])
    return 0


def rewrite_pcap(src: Path, dst: Path, client_ip: str) -> int:
    """Copy ``src`` to ``dst`` cutting frames not sent by ``client_ip`` to 128 bytes; returns records."""
    data = src.read_bytes()
    magic = data[:4]
    endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    _, vmaj, vmin, tz, sigfigs, _snap, linktype = struct.unpack(endian + "IHHiIII", data[:24])
    if linktype != 1:
        raise RuntimeError(f"unexpected link type {linktype}")
    client = bytes(int(x) for x in client_ip.split("."))
    out = [struct.pack(endian + "IHHiIII", struct.unpack(endian + "I", magic)[0], vmaj, vmin, tz, sigfigs, 65535, 1)]
    pos, n = 24, 0
    while pos + 16 <= len(data):
        sec, frac, incl, orig = struct.unpack(endian + "IIII", data[pos:pos + 16])
        frame = data[pos + 16:pos + 16 + incl]
        pos += 16 + incl
        from_client = len(frame) >= 30 and frame[12:14] == b"\x08\x00" and frame[26:30] == client
        if not from_client:
            frame = frame[:SERVER_TO_CLIENT_SNAP]
        out.append(struct.pack(endian + "IIII", sec, frac, len(frame), orig) + frame)
        n += 1
    dst.write_bytes(b"".join(out))
    return n


def label_for(profile: Any) -> dict[str, Any]:
    rule = profile.rules[0] if profile.rules else None
    link = profile.link
    if rule is not None:
        return {"target_throttled": True, "mechanism": rule.action, "rate_bps": rule.rate_bps, "sni_based": True,
                "onset_bytes": rule.onset_bytes, "link_limited_all_traffic": False, "link_rate_bps": None,
                "why": f"target SNI matched censor patterns; {rule.action} applied"}
    why = "no censorship"
    if link.rate_bps is not None:
        why = f"trap: link rate {link.rate_bps / 1e6:g} Mbit/s for all traffic, not SNI-based"
    elif link.loss:
        why = f"trap: {link.loss:.0%} random loss and {link.jitter_ms:g} ms jitter on all traffic, not SNI-based"
    return {"target_throttled": False, "mechanism": "none", "rate_bps": None, "sni_based": False,
            "onset_bytes": None, "link_limited_all_traffic": link.rate_bps is not None,
            "link_rate_bps": link.rate_bps, "why": why}


def run_scenario(spec: tuple[str, str, str, str, str, int, str, int], out_dir: Path, tmp: Path) -> dict[str, Any]:
    stem, profile_name, transport, cc, sni_t, n_t, sni_c, n_c = spec
    profile = load_profile(profile_name)
    name = f"ks{os.getpid() % 100000}"
    serve_args: tuple[str, ...] = ("--congestion-control", cc) if cc != "-" else ()
    t0 = time.monotonic()
    state = manager.up(profile, name=name, serve=True, serve_args=serve_args)
    try:
        topo = state["topology"]
        cli, client_ip, server_ip = topo["namespaces"]["client"], topo["client_ip"], topo["server_ip"]
        raw = tmp / f"{stem}.raw.pcap"
        cap = start_capture(cli, raw, server_ip)
        results: dict[str, Any] = {}
        try:
            for role, sni, n in (("control", sni_c, n_c), ("target", sni_t, n_t)):
                results[role] = run_in_netns(cli, fetch, transport, server_ip, 443, sni, n, timeout=120)
                time.sleep(0.5)
        finally:
            dropped = stop_capture(cap)
        time.sleep(0.6)  # one more stats dump from the censor
        stats = json.loads(Path(state["files"]["censor_stats"]).read_text())
    finally:
        manager.down(name)
    for role, res in results.items():
        if not res["ok"]:
            raise RuntimeError(f"{stem}: {role} download failed: {res['error']}")
    records = rewrite_pcap(raw, out_dir / f"{stem}.pcap", client_ip)
    proto = "tcp" if transport == "tcp" else "udp"
    observed = {}
    for role in ("target", "control"):
        for f in stats.get("flows", []):
            if f["proto"] == proto and f["client"][1] == results[role]["local_port"]:
                observed[role] = f
    return {
        "file": f"{stem}.pcap",
        "scenario": stem,
        "family": "sample",
        "rep": 1,
        "seed": profile.seed,
        "profile": profile.name,
        "transport": transport,
        "sni_target": sni_t,
        "sni_control": sni_c,
        "censor_patterns": [p for r in profile.rules for p in r.patterns],
        "policy": profile.to_policy_label(),
        "congestion_control": cc if transport == "tcp" else None,
        "bytes_requested": {"target": n_t, "control": n_c},
        "split_hello": False,
        "order": "control_first",
        "flows": {
            role: {"proto": proto, "client_ip": client_ip, "client_port": results[role]["local_port"],
                   "server_ip": server_ip, "server_port": 443, "sni": sni}
            for role, sni in (("target", sni_t), ("control", sni_c))
        },
        "client_results": {role: {k: v for k, v in res.items() if k != "local_port"} for role, res in results.items()},
        "censor_observed": observed,
        "label": label_for(profile),
        "capture": {"records": records, "tcpdump_dropped": dropped,
                    "snaplen": "server->client frames 128 B, client->server frames whole"},
        "elapsed_s": round(time.monotonic() - t0, 2),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "keepiton_throttle" / "data")
    ap.add_argument("--only", nargs="*", help="file stems to (re)make; the labels file keeps the others")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("make_samples needs root (network namespaces)", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    labels_path = args.out / "sample-labels.json"
    old = json.loads(labels_path.read_text()) if labels_path.exists() else {"runs": []}
    runs = {r["scenario"]: r for r in old.get("runs", [])}
    with tempfile.TemporaryDirectory() as tmp:
        for spec in SCENARIOS:
            if args.only and spec[0] not in args.only:
                continue
            print(f"{spec[0]} ...", end=" ", flush=True)
            run = run_scenario(spec, args.out, Path(tmp))
            runs[spec[0]] = run
            c = run["client_results"]
            print(f"target {c['target']['bytes'] * 8 / c['target']['seconds'] / 1e6:.3f} Mbit/s, "
                  f"control {c['control']['bytes'] * 8 / c['control']['seconds'] / 1e6:.3f} Mbit/s, "
                  f"{(args.out / run['file']).stat().st_size // 1024} KiB")
    order = [s[0] for s in SCENARIOS]
    labels = {
        "about": "Small sample captures made by benchmarks/make_samples.py with keepiton_throttle's own testbed "
                 "(userspace censor between network namespaces): one target and one control download each, "
                 "same server and path. 'label' is the ground truth, 'policy' what the censor did. Client-side "
                 "capture; server->client frames cut to 128 bytes.",
        "topology": {"client": "10.77.0.1", "server": "10.77.0.2", "server_port": 443,
                     "capture_point": "client veth c0 (inside the client namespace)"},
        "runs": [runs[k] for k in order if k in runs],
    }
    labels_path.write_text(json.dumps(labels, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
