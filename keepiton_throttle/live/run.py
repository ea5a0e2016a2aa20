"""The live check: plan the downloads, run them under a capture, decide, build the report.

Methods (docs/METHODOLOGY.md, "Live check", says why each exists):

* ``direct``: each target's endpoint (``endpoints`` in the targets file, or ``--url``) against
  control endpoints on *other addresses* (a control that resolves to an address of the target
  is dropped), over TLS/TCP and HTTP/3, certificates verified.
* ``same_server``: one address (a ``throttle-check serve`` instance), the target's SNI against a
  control SNI, so that server, route and content are the same and only the name differs;
  certificates are not verified (``serve`` is self-signed; the report says so).
* ``trigger``: when a (target, method, transport) comes out throttled, the same measurement is
  repeated with the ClientHello split across two TCP segments inside the SNI (QUIC: the SNI
  pushed into a second Initial datagram). If the slowdown disappears, the throttling is
  triggered by DPI on the SNI.

Order: within a method, the first control of each transport runs before any target (so a
censor that "poisons" the address after seeing a target cannot slow it), then targets and
controls alternate; a control that is much slower after a target than the first control is
reported as possible per-address throttling. Every download of a phase is captured into one
pcapng file, analysed with :func:`keepiton_throttle.analysis.analyze_paths` (the measured
SNIs as targets and controls), or, without a capture, judged from the client's own read
timings and TCP_INFO with the same decision code (:func:`keepiton_throttle.verdict.decide_all`).

Failures are answers: a target whose every attempt failed without data is ``blocked`` (the
failure came after the name was revealed — reset, TLS alert, timeout, no reply to QUIC
Initials — while controls of the same kind worked) or ``unreachable`` (DNS failure, refused
or unroutable connection, or the controls failed too), with the observed symptom; never
``throttled``.
"""

from __future__ import annotations

import os
import random
import re
import string
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .. import __version__
from ..errors import InputError, ThrottleError
from .measure import (
    CONNECTION_RESET,
    EOF,
    FAILURES,
    QUIC_CLOSED,
    SSL_FAILED,
    TIMEOUT,
    Budget,
    Download,
    Request,
    Resolution,
    fetch,
    resolve,
)

__all__ = [
    "BLOCKED",
    "DEFAULT_CONTROLS",
    "METHOD_DIRECT",
    "METHOD_SAME_SERVER",
    "NOTES",
    "SCHEMA",
    "UNREACHABLE",
    "NoNetworkError",
    "Probe",
    "RunConfig",
    "TargetSpec",
    "network_context",
    "plan_direct",
    "plan_same_server",
    "redact",
    "run_live",
]

SCHEMA = "keepiton_throttle.run/1"

METHOD_DIRECT = "direct"
METHOD_SAME_SERVER = "same_server"
METHODS = (METHOD_DIRECT, METHOD_SAME_SERVER)

ROLE_TARGET = "target"
ROLE_CONTROL = "control"

BLOCKED = "blocked"
UNREACHABLE = "unreachable"

#: control endpoints for the direct method when a target names none (targets file:
#: ``targets.NAME.controls``, or ``--control-url``): large static objects on CDNs unrelated to
#: the bundled targets
DEFAULT_CONTROLS = (
    "https://cdn.jsdelivr.net/npm/jquery@3.7.1/dist/jquery.min.js",
    "https://upload.wikimedia.org/wikipedia/commons/a/a9/Example.jpg",
)

#: The closed vocabulary of notes a live verdict carries besides the analysis' reasons.
NOTES = {
    "capture_dropped_packets": "the capture lost packets in the kernel (ring full): the verdict rests on an incomplete capture",
    "tcp_info_only": "no packet capture: the verdict rests on client-side read timings and TCP_INFO (see limitations)",
    "tls_verification_off": "certificates were not verified ('serve' is self-signed, or --insecure)",
    "controls_slowed_after_target": "controls measured after a target were much slower than the first control: possible per-address throttling",
    "possible_per_address_throttling": "the target was much slower than the first control, as were the later controls: 'not_throttled' withdrawn",
    "some_target_attempts_failed": "some target downloads failed (see measurements)",
    "some_control_attempts_failed": "some control downloads failed (see measurements)",
    "controls_failed": "every control download failed",
    "control_shares_target_address": "a control endpoint resolved to an address of the target and was not used",
    "no_control_endpoint": "no control endpoint could be measured for this target",
    "trigger_sni_dpi": "with the ClientHello split inside the SNI the slowdown disappears: the throttling is triggered by DPI on the SNI",
    "trigger_not_evaded": "with the ClientHello split inside the SNI the target is still slow: the DPI reassembles, or the trigger is not the SNI",
    "trigger_inconclusive": "the split-ClientHello repetition gave no clear answer",
}

#: failures that can only happen after the server name was on the wire (ClientHello / Initial)
_AFTER_NAME = {CONNECTION_RESET, SSL_FAILED, EOF, TIMEOUT, QUIC_CLOSED}
_AFTER_NAME_OPS = {"tls_handshake", "quic_handshake", "http_request", "read"}

PAUSE_S = 0.15  # between downloads: the previous flow's FIN/RST leaves the path


class NoNetworkError(ThrottleError):
    """There is no network to measure (no route to any target or control)."""


# ---------------------------------------------------------------------- plan


@dataclass(frozen=True)
class TargetSpec:
    """A target to measure: its name, the SNI for the same-server test, its direct endpoints
    and its own control endpoints (empty: the defaults)."""

    name: str
    sni: str
    urls: tuple[str, ...] = ()
    controls: tuple[str, ...] = ()


@dataclass(frozen=True)
class Probe:
    """One planned download. ``request`` is None when its name did not resolve."""

    method: str
    role: str
    target: str  # the target's name (also for controls: whose comparison they serve)
    transport: str
    url: str
    sni: str
    rep: int
    request: Request | None
    resolution: Resolution | None = None
    split: bool = False


@dataclass(frozen=True)
class RunConfig:
    """Everything a live run needs; see ``throttle-check run --help`` for the meaning."""

    targets: tuple[TargetSpec, ...]
    methods: tuple[str, ...] = (METHOD_DIRECT,)
    server: tuple[str, int] | None = None
    control_sni: str | None = None
    control_urls: tuple[str, ...] = ()
    transports: tuple[str, ...] = ("tcp", "quic")
    repeat: int = 3
    budget: Budget = field(default_factory=Budget)
    capture: bool = True
    confirm: bool = True
    keep_ip: bool = False
    pinned: dict[str, list[str]] = field(default_factory=dict)
    seed: int = 0
    slowdown_factor: float = 0.5  # poisoning: later controls below this share of the first
    verify_direct: bool = True  # False only with --insecure

    def __post_init__(self) -> None:
        if self.repeat < 1:
            raise InputError(f"--repeat must be at least 1, got {self.repeat}")
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise InputError(f"unknown method {bad[0]!r} (choose from {', '.join(METHODS)})")
        if METHOD_SAME_SERVER in self.methods and self.server is None:
            raise InputError("the same-server test needs --server HOST[:PORT]")
        if not self.transports or any(t not in ("tcp", "quic") for t in self.transports):
            raise InputError("transports must be tcp and/or quic")
        if not self.targets:
            raise InputError("no target to measure")


def random_control_sni(rng: random.Random) -> str:
    """A random name that matches no target (the same-server test's default control SNI)."""
    return "www." + "".join(rng.choice(string.ascii_lowercase) for _ in range(10)) + ".com"


def _split_url(url: str) -> tuple[str, int, str]:
    parts = urlsplit(url if "://" in url else f"https://{url}")
    if parts.scheme != "https" or not parts.hostname:
        raise InputError(f"not an https URL: {url!r}")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return parts.hostname.lower(), parts.port or 443, path


def plan_same_server(targets: Sequence[TargetSpec], *, server: tuple[str, int], control_sni: str,
                     transports: Sequence[str], repeat: int, object_bytes: int,
                     split: bool = False, host: str | None = None) -> list[Probe]:
    """Controls first (one per transport), then targets and controls alternating:
    ``C, T1..Tk, C, T1..Tk, C, T1..Tk`` with each step over every transport; ``repeat``
    downloads of each target and ``repeat`` controls per transport."""
    addr, port = server
    path = f"/bytes/{int(object_bytes)}"

    def probe(role: str, name: str, sni: str, transport: str, rep: int) -> Probe:
        req = Request(transport, sni, sni, addr, port, path, verify=False,
                      split_hello=split and role == ROLE_TARGET)
        return Probe(METHOD_SAME_SERVER, role, name, transport, f"https://{sni}:{port}{path}", sni, rep,
                     req, split=split and role == ROLE_TARGET)

    out: list[Probe] = []
    for rep in range(repeat):
        out += [probe(ROLE_CONTROL, "", control_sni, t, rep) for t in transports]
        for tg in targets:
            out += [probe(ROLE_TARGET, tg.name, tg.sni, t, rep) for t in transports]
    return out


def plan_direct(targets: Sequence[TargetSpec], *, default_controls: Sequence[str],
                transports: Sequence[str], repeat: int, pinned: dict[str, list[str]] | None = None,
                split: bool = False, verify: bool = True, resolver: Callable[..., Resolution] = resolve,
                ) -> tuple[list[Probe], dict[str, list[str]], dict[str, dict[str, Resolution]]]:
    """Per target: ``C, T`` alternating ``repeat`` times per transport, controls first, with the
    target's first endpoint and its controls taken in turn. Names are resolved once;
    a control that shares an address with its target is left out.

    Returns the probes, the notes per target, and the resolutions per target.
    """
    probes: list[Probe] = []
    notes: dict[str, list[str]] = {}
    resolved: dict[str, dict[str, Resolution]] = {}
    cache: dict[tuple[str, int], Resolution] = {}

    def res(host: str, port: int) -> Resolution:
        if (host, port) not in cache:
            cache[(host, port)] = resolver(host, port, pinned=pinned)
        return cache[(host, port)]

    for tg in targets:
        notes[tg.name] = []
        if not tg.urls:
            continue
        host, port, path = _split_url(tg.urls[0])
        tres = res(host, port)
        resolved[tg.name] = {host: tres}
        controls = []
        for url in (tg.controls or tuple(default_controls)):
            c_host, c_port, c_path = _split_url(url)
            cres = res(c_host, c_port)
            resolved[tg.name][c_host] = cres
            if tres.addresses and set(cres.addresses) & set(tres.addresses):
                notes[tg.name].append("control_shares_target_address")
                continue
            controls.append((url, c_host, c_port, c_path, cres))
        if not controls:
            notes[tg.name].append("no_control_endpoint")

        def probe(role: str, url: str, h: str, p: int, pth: str, r: Resolution, transport: str,
                  rep: int, name: str = tg.name) -> Probe:
            req = None
            if r.addresses:
                req = Request(transport, h, h, r.addresses[0], p, pth, verify=verify,
                              split_hello=split and role == ROLE_TARGET)
            return Probe(METHOD_DIRECT, role, name, transport, url, h, rep, req, r,
                         split=split and role == ROLE_TARGET)

        for rep in range(repeat):
            if controls:
                url, c_host, c_port, c_path, cres = controls[rep % len(controls)]
                probes += [probe(ROLE_CONTROL, url, c_host, c_port, c_path, cres, t, rep) for t in transports]
            probes += [probe(ROLE_TARGET, tg.urls[0], host, port, path, tres, t, rep) for t in transports]
    return probes, notes, resolved


# ---------------------------------------------------------------------- network context


def _default_route_interfaces() -> list[str]:
    out: list[str] = []
    try:
        with open("/proc/net/route", encoding="ascii") as fh:
            next(fh, None)
            for line in fh:
                f = line.split()
                if len(f) > 7 and f[1] == "00000000" and f[7] == "00000000":
                    out.append(f[0])
    except OSError:
        pass
    try:
        with open("/proc/net/ipv6_route", encoding="ascii") as fh:
            for line in fh:
                f = line.split()
                if len(f) >= 10 and f[0] == "0" * 32 and f[1] == "00" and f[9] != "lo":
                    out.append(f[9])
    except OSError:
        pass
    return list(dict.fromkeys(out))


def _is_tunnel(ifname: str) -> str | None:
    if re.match(r"^(tun|tap|wg|ppp|utun|ipsec|vti|zt)", ifname):
        return f"interface name {ifname}"
    try:
        with open(f"/sys/class/net/{ifname}/flags", encoding="ascii") as fh:
            flags = int(fh.read().strip(), 16)
        if flags & 0x10:  # IFF_POINTOPOINT
            return f"{ifname} is a point-to-point interface"
    except (OSError, ValueError):
        pass
    return None


def network_context() -> dict[str, Any]:
    """The default route's interface(s) and whether it looks like a VPN (tun*/wg*/ppp*, or
    IFF_POINTOPOINT): measurements through a tunnel measure the tunnel's path, not the
    local network's."""
    ifaces = _default_route_interfaces()
    why = next((w for w in map(_is_tunnel, ifaces) if w), None)
    return {"default_route_interfaces": ifaces, "network_type": "vpn" if why else None,
            "vpn_evidence": why}


def _is_ip(text: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def _has_route(address: str) -> bool:
    import socket

    fam = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(fam, socket.SOCK_DGRAM) as s:
            s.connect((address, 443))
        return True
    except OSError:
        return False


# ---------------------------------------------------------------------- output files


def unique_path(directory: Path, name: str) -> Path:
    """``directory/name``, or ``name-1``, ``name-2`` ... before the extension if it exists:
    a run never overwrites a file."""
    p = directory / name
    stem, dot, ext = name.partition(".")
    k = 1
    while p.exists():
        p = directory / f"{stem}-{k}{dot}{ext}"
        k += 1
    return p


def default_out_dir(now: datetime) -> Path:
    return Path(f"keepiton-run-{now.strftime('%Y%m%dT%H%M%SZ')}")


def write_new(path: Path, data: bytes) -> None:
    """Create ``path`` exclusively and write ``data`` (an existing file raises FileExistsError)."""
    with open(path, "xb") as fh:
        fh.write(data)


# ---------------------------------------------------------------------- redaction

_REDACTED = "[redacted]"


def redact(obj: Any, addresses: set[str], replacement: str = _REDACTED) -> Any:
    """A copy of the JSON-like ``obj`` with every occurrence of ``addresses`` replaced.

    IPv4 addresses are matched as whole dotted quads (``10.0.0.1`` does not match inside
    ``10.0.0.10``), IPv6 addresses as whole tokens.
    """
    pats = [re.compile(r"(?<![\w.:])" + re.escape(a) + r"(?![\w.:]*\w)" if ":" in a else
                       r"(?<![\d.])" + re.escape(a) + r"(?![\d])")
            for a in sorted(addresses, key=len, reverse=True) if a]

    def walk(x: Any) -> Any:
        if isinstance(x, str):
            for p in pats:
                x = p.sub(replacement, x)
            return x
        if isinstance(x, dict):
            return {walk(k) if isinstance(k, str) else k: walk(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [walk(v) for v in x]
        return x

    return walk(obj) if pats else obj


# ---------------------------------------------------------------------- phases


@dataclass
class Phase:
    """The downloads of one method (or its split-ClientHello repetition) and their capture."""

    name: str
    method: str
    split: bool
    results: list[tuple[Probe, Download]] = field(default_factory=list)
    capture: Any = None  # CaptureStats
    pcap: str | None = None
    notes: dict[str, list[str]] = field(default_factory=dict)


def _resolution_failure(probe: Probe) -> Download:
    r = probe.resolution
    assert r is not None
    d = Download(probe.transport, probe.sni, probe.sni, "", 0, "/", True, probe.split, time.time_ns())
    d._t0_mono = time.monotonic_ns()
    d.fail(r.failure or "dns_lookup_error", "resolve", r.error)
    d.event("resolve_done", failure=d.failure, hostname=probe.sni)
    d.seconds = r.seconds
    d.stopped = "error"
    return d


def run_phase(phase: Phase, probes: Sequence[Probe], cfg: RunConfig, out_dir: Path, *,
              progress: Callable[[str], None], rng: random.Random, step: list[int], total: int) -> Phase:
    """Run ``probes`` in order under a capture of their endpoints (if enabled)."""
    endpoints = {(p.request.address, p.request.port) for p in probes if p.request is not None}
    cap = None
    if cfg.capture and endpoints:
        from .capture import RingCapture, interface_for

        ifaces = sorted({interface_for(a) for a, _ in endpoints})
        path = unique_path(out_dir, f"capture-{phase.name}.pcapng")
        cap = RingCapture(path, ifaces, endpoints)
        cap.start()
        phase.pcap = str(path)
        progress(f"capturing on {', '.join(ifaces)} into {path.name}")
    try:
        for p in probes:
            step[0] += 1
            dl = _resolution_failure(p) if p.request is None else fetch(p.request, cfg.budget, rng=rng)
            phase.results.append((p, dl))
            progress(_progress_line(step[0], total, phase, p, dl))
            time.sleep(PAUSE_S)
    finally:
        if cap is not None:
            phase.capture = cap.stop()
            if phase.capture.dropped:
                progress(f"warning: the capture dropped {phase.capture.dropped} packets")
    return phase


def _fmt_rate(bps: float | None) -> str:
    if bps is None:
        return "-"
    return f"{bps / 1e6:.2f} Mb/s" if bps >= 1e6 else f"{bps / 1e3:.0f} kb/s"


def _progress_line(i: int, n: int, phase: Phase, p: Probe, d: Download) -> str:
    what = f"[{i}/{n}] {phase.name} {p.transport:<4} {p.role:<7} {p.sni}"
    if d.failure and not d.bytes:
        return f"{what}: {d.failure} during {d.operation}"
    tail = f" ({d.failure})" if d.failure else ""
    return f"{what}: {d.bytes / 1000:.0f} kB in {d.seconds or 0:.1f} s, {_fmt_rate(d.goodput_bps)}{tail}"


# ---------------------------------------------------------------------- analysis


def _detection_config(cfg: RunConfig) -> Any:
    from ..analysis import DetectionConfig

    return DetectionConfig(seed=cfg.seed)


def _phase_targets(phase: Phase) -> tuple[dict[str, Any], list[str]]:
    from ..targets import Target

    snis: dict[str, set[str]] = {}
    controls: set[str] = set()
    for p, _ in phase.results:
        if p.role == ROLE_TARGET:
            snis.setdefault(p.target, set()).add(p.sni)
        else:
            controls.add(p.sni)
    return {name: Target(name, tuple(sorted(s))) for name, s in snis.items()}, sorted(controls)


def _evidence_from_downloads(phase: Phase, cfg: Any) -> dict[tuple[str, str], list[Any]]:
    """FlowEvidence built from client-side timings (the ``--no-capture`` path)."""
    import numpy as np

    from .. import analysis as an
    from ..characterize import (
        classify_mechanism,
        detect_stall,
        estimate_rate,
        rtt_level,
        steadiness,
    )

    members: dict[tuple[str, str], list[Any]] = {}
    for k, (p, d) in enumerate(phase.results):
        if p.request is None or (d.failure and not d.reads):
            continue
        ts = np.array([t for t, _ in d.reads], dtype=np.int64)
        good = np.array([n for _, n in d.reads], dtype=np.int64)
        role = an.ROLE_TARGET if p.role == ROLE_TARGET else an.ROLE_CONTROL
        min_bins = cfg.min_target_bins if role == an.ROLE_TARGET else cfg.min_control_bins
        excluded: str | None = None
        if ts.size == 0:
            excluded = an.EXCL_NO_DATA
        elif ts.size < cfg.min_data_packets or int(ts[-1] - ts[0]) < min_bins * cfg.min_bin_ns:
            excluded = an.EXCL_TOO_SHORT
        rtt_ts = np.array([t for t, _ in d.rtt_samples], dtype=np.int64)
        rtt = np.array([r * 1e6 for _, r in d.rtt_samples], dtype=np.int64)
        floors = [float(i["min_rtt_ms"]) for i in d.tcp_info if i.get("min_rtt_ms")]
        floor_ns = int(min(floors) * 1e6) if floors else (int(rtt.min()) if rtt.size else None)
        rate = mech = None
        steady = float("nan")
        # the receiver's view of the server's losses: segments that arrived out of order (above
        # a hole the policer made) per data segment received; QUIC's are encrypted (NaN)
        last = d.tcp_info[-1] if d.tcp_info else {}
        segs = int(last.get("data_segs_in") or 0)
        loss = float(last.get("rcv_ooopack", 0)) / segs if p.transport == "tcp" and segs else float("nan")
        if role == an.ROLE_TARGET and ts.size >= 4:
            rate = estimate_rate(ts, good)
            if rate.rate_bps is not None:
                after = ts >= rate.plateau_start_ns
                steady = steadiness(ts[after], good[after], max(250_000_000, 4 * (floor_ns or 0)))
                # TCP: tcpi_rcv_rtt times the delivery of a window (or a TSval echoed after the
                # sender waited), so it rises with any rate limit; it is not a queue. The
                # mechanism then rests on arrivals and on the receiver's loss proxy.
                tcp = p.transport == "tcp"
                empty = np.zeros(0, dtype=np.int64)
                mech = classify_mechanism(ts, np.zeros(ts.size, dtype=bool), empty if tcp else rtt_ts,
                                          empty if tcp else rtt, (rate.plateau_start_ns, rate.plateau_end_ns),
                                          rtt_floor_ns=floor_ns, transport=p.transport,
                                          min_queue_ms=cfg.min_queue_ms, min_queue_frac=cfg.min_queue_frac,
                                          min_loss=cfg.min_loss, policing_cv=cfg.policing_cv,
                                          shaping_cv=cfg.shaping_cv)
                if tcp and np.isfinite(loss) and loss >= cfg.min_loss:
                    mech = replace(mech, mechanism="policing", loss_fraction=loss,
                                   reasons=(*mech.reasons, "receiver_saw_losses"))
        end_ns = d.t_start_ns + int((d.seconds or 0) * 1e9)
        stall = detect_stall(ts, good, flow_end_ns=end_ns, server_fin=d.stopped == "complete",
                             min_silence_s=cfg.stall_silence_s, max_bytes=cfg.stall_max_bytes,
                             rtt_ns=floor_ns) if ts.size else None
        gp = d.goodput_bps
        ev = an.FlowEvidence(
            file="", flow=k, role=role, target=p.target if role == an.ROLE_TARGET else "",
            transport=p.transport, sni=p.sni, client=f"{d.local_address}:{d.local_port}",
            server=f"{p.request.address}:{p.request.port}", start_ns=d.t_start_ns, goodput_bps=gp,
            goodput_bytes=int(good.sum()), data_ts_ns=ts, data_good=good, excluded=excluded,
            handshake_s=d.handshake_s, rtt_floor_ms=None if floor_ns is None else floor_ns / 1e6,
            rate=rate, mechanism=mech, stall=stall,
            retransmissions=int(last.get("rcv_ooopack", 0)),
            data_packets=segs if p.transport == "tcp" and segs else int(ts.size),
            loss_fraction=loss, steady_cv=steady,
            rtt_level_ms=float("nan") if p.transport == "tcp" else rtt_level(rtt_ts, rtt) / 1e6)
        members.setdefault((role, ev.target), []).append(ev)
    return members


@dataclass
class _Group:
    target: str
    method: str
    transport: str
    sni: str
    probes: list[tuple[Probe, Download]]
    controls: list[tuple[Probe, Download]]
    verdict: Any = None
    series: dict[str, Any] = field(default_factory=dict)


def analyse_phase(phase: Phase, cfg: RunConfig) -> list[_Group]:
    """One group per (target, transport) of the phase, with its verdict from the capture (or
    from client-side timings without one)."""
    from ..verdict import decide_all

    dcfg = _detection_config(cfg)
    tmap, control_snis = _phase_targets(phase)
    groups: dict[tuple[str, str], _Group] = {}
    for p, d in phase.results:
        if p.role != ROLE_TARGET:
            continue
        g = groups.setdefault((p.target, p.transport),
                              _Group(p.target, phase.method, p.transport, p.sni, [], []))
        g.probes.append((p, d))
    for g in groups.values():
        g.controls = [(p, d) for p, d in phase.results if p.role == ROLE_CONTROL and p.transport == g.transport
                      and (phase.method == METHOD_SAME_SERVER or p.target == g.target)]
    if not groups:
        return []
    verdicts: list[Any] = []
    rtts: dict[int, list[float]] = {}
    if phase.pcap is not None:
        from ..analysis import analyze_paths

        report = analyze_paths([phase.pcap], targets=tmap, control_patterns=control_snis or None,
                               config=dcfg, only_targets=list(tmap))
        verdicts = list(report.targets)
        rtts = _flow_rtts(phase.pcap, dcfg)
    else:
        members = _evidence_from_downloads(phase, dcfg)
        verdicts = decide_all(members, tmap, dcfg, report_empty=True)
    for v in verdicts:
        hit = groups.get((v.target, v.transport))
        if hit is not None:
            hit.verdict = v
    for g in groups.values():
        g.series = _series(g, phase, rtts)
    return list(groups.values())


def _flow_rtts(pcap: str, dcfg: Any) -> dict[int, list[float]]:
    """Path-RTT samples (ms) per flow id of a capture (the same flow ids as the analysis')."""
    from ..flows import analyze_file
    from ..series import path_rtts

    table, series = analyze_file(pcap, bin_ns=dcfg.bin_ns)
    paths = path_rtts(table.cols, series)
    return {i: (paths.of(i)[1] / 1e6).tolist() for i in range(table.n)}


def _quantiles(values: list[float], n: int = 101) -> list[float]:
    if not values:
        return []
    v = sorted(values)
    if len(v) <= n:
        return [round(x, 3) for x in v]
    return [round(v[min(len(v) - 1, round(k * (len(v) - 1) / (n - 1)))], 3) for k in range(n)]


def _binned(ts: Sequence[int], good: Sequence[int], bin_ns: int = 100_000_000) -> dict[str, list[float]]:
    if not len(ts):
        return {"t_s": [], "bps": []}
    t0 = int(ts[0])
    bins: dict[int, int] = {}
    for t, n in zip(ts, good, strict=True):
        k = (int(t) - t0) // bin_ns
        bins[k] = bins.get(k, 0) + int(n)
    last = max(bins)
    return {"t_s": [round(k * bin_ns / 1e9, 3) for k in range(last + 1)],
            "bps": [round(bins.get(k, 0) * 8e9 / bin_ns, 1) for k in range(last + 1)]}


def _series(g: _Group, phase: Phase, rtts: dict[int, list[float]]) -> dict[str, Any]:
    """What the plots need, small enough for the JSON: per download, the body bytes delivered to
    the client in 100 ms bins (in-order bytes, what a user gets: the capture's "highest
    sequence" goodput turns a tail-loss probe into a spike followed by empty bins), and RTT
    quantiles per role (path RTT from the capture, else the client's own samples)."""
    out: dict[str, Any] = {"target": [], "control": [], "rtt_ms": {"target": [], "control": []},
                           "rtt_source": "capture" if phase.pcap is not None else "client"}
    v = g.verdict
    for role, pairs in (("target", g.probes), ("control", g.controls)):
        for p, d in pairs:
            if d.reads:
                out[role].append({"sni": d.sni, "rep": p.rep,
                                  **_binned([t for t, _ in d.reads], [n for _, n in d.reads])})
        pool: list[float] = []
        if phase.pcap is not None and v is not None:
            flows = v.flows if role == "target" else [f for f in v.control_flows if f.transport == g.transport]
            for f in flows:
                pool += rtts.get(int(f.flow), [])
        else:
            for _p, d in pairs:
                pool += [r for _, r in d.rtt_samples]
        out["rtt_ms"][role] = _quantiles(pool)
    return out


# ---------------------------------------------------------------------- decisions


def failure_decision(targets: Sequence[Download], controls: Sequence[Download]) -> tuple[str, dict[str, Any]] | None:
    """``blocked``/``unreachable`` and the symptom when *every* target attempt failed without
    delivering a byte; None otherwise (the analysis decides)."""
    if not targets or any(d.bytes > 0 or not d.failure for d in targets):
        return None
    (failure, operation), _ = Counter((d.failure, d.operation) for d in targets).most_common(1)[0]
    errors = [d.error for d in targets if d.failure == failure and d.error]
    symptom = {"failure": failure, "operation": operation,
               "description": FAILURES.get(str(failure), ""),
               "error": errors[0] if errors else None,
               "attempts": len(targets)}
    controls_ok = any(d.bytes > 0 for d in controls)
    after_name = failure in _AFTER_NAME and operation in _AFTER_NAME_OPS
    symptom["controls_ok"] = controls_ok
    return (BLOCKED if after_name and controls_ok else UNREACHABLE), symptom


def _first_control_slowdown(phase: Phase, transport: str, factor: float) -> tuple[bool, float | None, float | None]:
    """(controls after a target slower than ``factor`` x the first control?, first, later median)."""
    first: float | None = None
    later: list[float] = []
    seen_target = False
    for p, d in phase.results:
        if p.transport != transport:
            continue
        if p.role == ROLE_TARGET:
            seen_target = True
        elif d.goodput_bps:
            if not seen_target and first is None:
                first = d.goodput_bps
            elif seen_target:
                later.append(d.goodput_bps)
    if first is None or not later:
        return False, first, None
    later_med = sorted(later)[len(later) // 2]
    return later_med < factor * first, first, later_med


def _entry(g: _Group, phase: Phase, cfg: RunConfig) -> dict[str, Any]:
    from ..characterize import MECH_NONE
    from ..verdict import INCONCLUSIVE, Verdict

    v = g.verdict
    if v is None:
        v = Verdict(g.target, g.transport, INCONCLUSIVE, MECH_NONE, None, None, None, None, None, None,
                    None, {}, None, None, [], [], ["no_target_flows"])
    out = v.to_json()
    out["transport"] = g.transport
    out["analysis_decision"] = v.decision
    notes: list[str] = list(phase.notes.get(g.target, []))
    t_dl = [d for _, d in g.probes]
    c_dl = [d for _, d in g.controls]
    fd = failure_decision(t_dl, c_dl)
    symptom = None
    if fd is not None:
        out["decision"], symptom = fd
        out["mechanism"] = MECH_NONE
        for k in ("rate_bps", "burst_bytes", "onset_bytes", "onset_s"):
            out[k] = None
    if any(d.failure for d in t_dl) and fd is None:
        notes.append("some_target_attempts_failed")
    if c_dl and all(d.failure and not d.bytes for d in c_dl):
        notes.append("controls_failed")
    elif any(d.failure for d in c_dl):
        notes.append("some_control_attempts_failed")
    if phase.method == METHOD_SAME_SERVER:
        notes.append("tls_verification_off")
        slowed, first, later = _first_control_slowdown(phase, g.transport, cfg.slowdown_factor)
        if slowed:
            notes.append("controls_slowed_after_target")
            tgood = out.get("target_goodput_bps")
            if out["decision"] == "not_throttled" and first and tgood is not None and tgood < cfg.slowdown_factor * first:
                out["decision"] = INCONCLUSIVE
                notes.append("possible_per_address_throttling")
        out["poisoning_check"] = {"first_control_bps": first, "later_controls_bps": later,
                                  "suspected": slowed}
    if phase.capture is not None and phase.capture.dropped:
        notes.append("capture_dropped_packets")
    if phase.pcap is None:
        notes.append("tcp_info_only")
    out["method"] = phase.method
    out["sni"] = g.sni
    out["control_snis"] = sorted({p.sni for p, _ in g.controls})
    out["addresses"] = sorted({p.request.address for p, _ in g.probes + g.controls if p.request})
    out["tls_verification"] = phase.method == METHOD_DIRECT and cfg.verify_direct
    if phase.method == METHOD_DIRECT and not cfg.verify_direct:
        notes.append("tls_verification_off")
    out["symptom"] = symptom
    out["notes"] = list(dict.fromkeys(notes))
    out["evidence"] = {
        "source": "capture" if phase.pcap else "tcp_info",
        "capture": os.path.basename(phase.pcap) if phase.pcap else None,
        "capture_dropped": phase.capture.dropped if phase.capture is not None else None,
    }
    out["trigger"] = None
    out["measurements"] = [dict(d.to_json(), role=p.role, rep=p.rep, method=phase.method, url=p.url)
                           for p, d in g.controls + g.probes]
    out["measurements"].sort(key=lambda m: m["start"])
    out["series"] = g.series
    for f in out.get("flows", []) + out.get("control_flows", []):
        if f.get("file"):
            f["file"] = os.path.basename(f["file"])
    return out


def _trigger_summary(base: dict[str, Any], split: dict[str, Any]) -> dict[str, Any]:
    """Compare a throttled result with its split-ClientHello repetition."""
    d = split["decision"]
    if d == "not_throttled":
        conclusion, note = "sni_dpi", "trigger_sni_dpi"
    elif d == "throttled":
        conclusion, note = "not_evaded", "trigger_not_evaded"
    else:
        conclusion, note = "inconclusive", "trigger_inconclusive"
    keep = ("decision", "mechanism", "rate_bps", "ratio", "ratio_ci", "p_value", "target_goodput_bps",
            "control_goodput_bps", "reasons", "notes", "symptom", "evidence", "flows", "control_flows",
            "measurements", "series")
    return {"tested": True, "split": "clienthello_in_two_tcp_segments" if base["transport"] == "tcp"
            else "sni_in_second_quic_initial", "conclusion": conclusion, "note": note,
            "result": {k: split.get(k) for k in keep}}


# ---------------------------------------------------------------------- the run


@dataclass
class LiveResult:
    """The report (JSON-ready, not yet redacted) and the local addresses to redact."""

    report: dict[str, Any]
    local_addresses: set[str]
    out_dir: Path


def _check_network(cfg: RunConfig) -> None:
    """Raise NoNetworkError when nothing could possibly be reached."""
    literal: list[str] = []
    names = False
    hosts: list[str] = []
    if METHOD_SAME_SERVER in cfg.methods and cfg.server is not None:
        hosts.append(cfg.server[0])
    if METHOD_DIRECT in cfg.methods:
        for tg in cfg.targets:
            hosts += [_split_url(url)[0] for url in tg.urls + tg.controls + cfg.control_urls]
    for host in hosts:
        if host.lower() in cfg.pinned:
            literal += cfg.pinned[host.lower()]
        elif _is_ip(host):
            literal.append(host)
        else:
            names = True
    if any(_has_route(a) for a in literal):
        return
    if names and _default_route_interfaces():
        return
    raise NoNetworkError("no network: no default route and no route to any target or control")


def _resolve_server(server: tuple[str, int], pinned: dict[str, list[str]]) -> tuple[str, int]:
    host, port = server
    r = resolve(host, port, pinned=pinned)
    if not r.addresses:
        raise NoNetworkError(f"no network: the server {host} does not resolve ({r.failure})")
    return r.addresses[0], port


def run_live(cfg: RunConfig, out_dir: Path, *, progress: Callable[[str], None] = lambda s: None,
             rng: random.Random | None = None, now: Callable[[], datetime] = lambda: datetime.now(UTC),
             ) -> LiveResult:
    """Run every method of ``cfg``, writing captures into ``out_dir``; the report."""
    rng = rng or random.Random(cfg.seed)
    started = now()
    t0 = time.monotonic()
    out_dir.mkdir(parents=True, exist_ok=True)
    net = network_context()
    warnings: list[str] = []
    if net["network_type"] == "vpn":
        warnings.append(f"the default route goes through a tunnel ({net['vpn_evidence']}): the results "
                        "describe the VPN's path, not the local network's")
        progress("warning: " + warnings[-1])
    _check_network(cfg)
    control_sni = cfg.control_sni or random_control_sni(rng)
    server = _resolve_server(cfg.server, cfg.pinned) if cfg.server is not None else None
    object_bytes = cfg.budget.max_bytes

    def make_plans(split: bool, only: set[tuple[str, str, str]] | None) -> list[tuple[Phase, list[Probe]]]:
        todo: list[tuple[Phase, list[Probe]]] = []
        for method in cfg.methods:
            tg = [t for t in cfg.targets if only is None or any(o[0] == t.name and o[1] == method for o in only)]
            if not tg:
                continue
            trans = [tr for tr in cfg.transports if only is None or any(
                o[2] == tr and o[1] == method for o in only)]
            name = method.replace("_", "-") + ("-split" if split else "")
            ph = Phase(name, method, split)
            if method == METHOD_SAME_SERVER:
                assert server is not None
                probes = plan_same_server(tg, server=server, control_sni=control_sni, transports=trans,
                                          repeat=cfg.repeat, object_bytes=object_bytes, split=split)
            else:
                tg = [t for t in tg if t.urls]
                probes, notes, _ = plan_direct(tg, default_controls=cfg.control_urls or DEFAULT_CONTROLS,
                                               transports=trans, repeat=cfg.repeat, pinned=cfg.pinned,
                                               split=split, verify=cfg.verify_direct)
                ph.notes = notes
                if probes and all(p.request is None for p in probes):
                    raise NoNetworkError("no network: no target or control name could be resolved")
            if only is not None:
                probes = [p for p in probes if p.role == ROLE_CONTROL or (p.target, method, p.transport) in only]
            if probes:
                todo.append((ph, probes))
        return todo

    phases: list[Phase] = []
    entries: list[dict[str, Any]] = []
    step = [0]
    plans = make_plans(False, None)
    total = sum(len(p) for _, p in plans)
    for ph, probes in plans:
        phases.append(run_phase(ph, probes, cfg, out_dir, progress=progress, rng=rng, step=step, total=total))
    progress("analysing")
    for ph in phases:
        entries += [_entry(g, ph, cfg) for g in analyse_phase(ph, cfg)]
    throttled = {(e["target"], e["method"], e["transport"]) for e in entries if e["decision"] == "throttled"}
    if cfg.confirm and throttled:
        progress(f"confirming the trigger of {len(throttled)} throttled result(s) with a split ClientHello")
        plans = make_plans(True, throttled)
        total = step[0] + sum(len(p) for _, p in plans)
        split_phases = [run_phase(ph, probes, cfg, out_dir, progress=progress, rng=rng, step=step, total=total)
                        for ph, probes in plans]
        phases += split_phases
        progress("analysing the split repetitions")
        for ph in split_phases:
            for g in analyse_phase(ph, cfg):
                split_entry = _entry(g, ph, cfg)
                for e in entries:
                    if (e["target"], e["method"], e["transport"]) == (g.target, ph.method, g.transport):
                        e["trigger"] = _trigger_summary(e, split_entry)
                        e["notes"].append(e["trigger"]["note"])
    return build_report(cfg, phases, entries, started=started, runtime_s=time.monotonic() - t0, net=net,
                        warnings=warnings, control_sni=control_sni, out_dir=out_dir)


def build_report(cfg: RunConfig, phases: Sequence[Phase], entries: list[dict[str, Any]], *, started: datetime,
                 runtime_s: float, net: dict[str, Any], warnings: list[str], control_sni: str | None,
                 out_dir: Path) -> LiveResult:
    """The report of a run from its phases and per-target entries (not yet redacted)."""
    for e in entries:
        if e["trigger"] is None:
            e["trigger"] = {"tested": False}
    local: set[str] = set()
    for ph in phases:
        for _p, d in ph.results:
            if d.local_address:
                local.add(d.local_address.split("%")[0])
    captures = [dict(ph.capture.to_json(), method=ph.method, split=ph.split) for ph in phases
                if ph.capture is not None]
    warnings = list(warnings)
    if any(c["dropped"] for c in captures):
        warnings.append("a capture dropped packets in the kernel: the verdicts that rest on it say so")
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "software": {"name": "keepiton_throttle", "version": __version__},
        "started_at": started.isoformat(),
        "runtime_s": round(runtime_s, 3),
        "methods": [m for m in cfg.methods] + (["trigger_confirmation"] if cfg.confirm else []),
        "config": {
            "repeat": cfg.repeat, "transports": list(cfg.transports),
            "duration_s": cfg.budget.duration_s, "min_bytes": cfg.budget.min_bytes,
            "max_bytes": cfg.budget.max_bytes, "timeout_s": cfg.budget.timeout_s,
            "server": None if cfg.server is None else f"{cfg.server[0]}:{cfg.server[1]}",
            "control_sni": control_sni if METHOD_SAME_SERVER in cfg.methods else None,
            "capture": cfg.capture, "seed": cfg.seed,
        },
        "tls_verification": {
            METHOD_DIRECT: "on (system trust store)" if cfg.verify_direct else
                           "off (--insecure): a man in the middle would go unnoticed",
            METHOD_SAME_SERVER: "off: the same-server test talks to 'throttle-check serve', whose "
                                "certificate is self-signed; only timing is measured",
        },
        "network": {**net, "local_addresses": sorted(local)},
        "annotations": {"network_type": "vpn"} if net["network_type"] == "vpn" else {},
        "warnings": warnings,
        "capture": {
            "enabled": cfg.capture,
            "files": captures,
            "note": ("the pcapng files are the raw evidence: they hold the full IP addresses of every "
                     "measured flow, this machine's included (the JSON report redacts them unless --keep-ip)")
            if cfg.capture else None,
            "limitations": None if cfg.capture else [
                "no packet capture: goodput comes from the times at which the client read data "
                "(socket reads for TLS/TCP, HTTP/3 DATA for QUIC), which the receive buffer and "
                "the scheduler smooth and delay",
                "RTT is the kernel's receiver-side estimate (TCP_INFO tcpi_rcv_rtt, which rises under any "
                "rate limit and is therefore not used to detect a queue) or aioquic's latest sample, not "
                "per-packet samples; the handshake RTT is tcpi_min_rtt",
                "the server's retransmissions and losses are invisible to the client (TCP_INFO counts the "
                "client's own; out-of-order arrivals are in rcv_ooopack), so policing is told from shaping "
                "by RTT and arrival burstiness only",
                "TCP_INFO's delivery rate is the client's sending rate, not the download's",
            ],
        },
        "detection": {k: getattr(_detection_config(cfg), k)
                      for k in _detection_config(cfg).__dataclass_fields__},
        "files": {"pcaps": [c["file"] for c in captures], "plots": [], "report": None, "ooni": None},
        "notes_vocabulary": NOTES,
        "targets": entries,
    }
    return LiveResult(report, local, out_dir)


def finish_report(result: LiveResult, *, keep_ip: bool) -> dict[str, Any]:
    """The report as published: local addresses redacted unless ``keep_ip``."""
    rep = result.report
    if keep_ip or not result.local_addresses:
        return rep
    out = redact(rep, result.local_addresses)
    out["network"]["local_addresses_redacted"] = True
    return dict(out)


def with_files(rep: dict[str, Any], **files: Any) -> dict[str, Any]:
    """A copy of the report ``rep`` with ``files`` entries set."""
    out = dict(rep)
    out["files"] = dict(rep.get("files") or {}, **files)
    return out


def replace_config(cfg: RunConfig, **kw: Any) -> RunConfig:
    return replace(cfg, **kw)
