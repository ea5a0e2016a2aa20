"""From capture files to per-target evidence: which flows are targets, which are controls.

``analyze_paths`` runs the flow stage over each file (pass 1), picks the flows of each target
(by SNI) and the control flows, re-reads the files once to collect per-packet traces of just
those flows (pass 2; memory stays proportional to the selected flows), and hands the evidence
to ``verdict.decide``. The result is an :class:`AnalysisReport`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from .characterize import (
    MechanismEvidence,
    RateEstimate,
    StallEvidence,
    app_limited_fraction,
    classify_mechanism,
    detect_stall,
    estimate_rate,
    rtt_level,
    steadiness,
)
from .flows import FlowBuilder, FlowRead, FlowTable, flow_records, read_flows, undecoded_notes
from .series import FlowTrace, PathRtts, TimingSeries, path_rtts
from .sources.capture import CaptureReader, chunks_of
from .targets import Target

ROLE_TARGET = "target"
ROLE_CONTROL = "control"

# Reasons a flow is left out of the evidence (closed vocabulary, see METHODOLOGY.md).
EXCL_TOO_SHORT = "too_short"
EXCL_RECEIVER_LIMITED = "receiver_limited"
EXCL_APP_LIMITED = "application_limited"
EXCL_NO_DATA = "no_server_data"


@dataclass(frozen=True)
class DetectionConfig:
    """Every threshold of the detector, with its default. METHODOLOGY.md says why each."""

    bin_ns: int = 100_000_000  # goodput bin, ns (the widest used; see min_bin_ns)
    min_bin_ns: int = 10_000_000  # bins shrink to this so that short transfers still give bins
    alpha: float = 0.01  # significance of KS and Mann-Whitney (after Benjamini-Hochberg)
    max_ratio: float = 0.5  # throttled: the ratio's CI lies entirely below this
    clean_ratio: float = 0.7  # not throttled: the ratio is at least this
    min_target_bins: int = 10  # bins of transfer a target flow needs to be evidence
    min_control_bins: int = 6
    min_data_packets: int = 8
    receiver_limited_frac: float = 0.5  # of the transfer spent limited by the receive window
    app_limited_frac: float = 0.3  # of the transfer spent idle with nothing to send
    app_gap_ns: int = 1_000_000_000  # an idle gap is at least this long (and 10 RTTs)
    stall_silence_s: float = 2.0
    stall_max_bytes: int = 256 * 1024
    stall_control_factor: float = 4.0  # controls delivered this many times more
    handshake_slow_s: float = 1.0  # a target handshake this slow ...
    handshake_factor: float = 5.0  # ... and this many times the controls' is evidence
    min_queue_ms: float = 20.0
    min_queue_frac: float = 0.5
    min_loss: float = 0.005
    policing_cv: float = 1.0
    shaping_cv: float = 0.6
    # differential symptoms (target vs controls) that "throttled" needs besides the ratio
    loss_factor: float = 3.0  # target loss >= factor x control loss ...
    min_loss_excess: float = 0.003  # ... + this, and significant (Fisher, TCP)
    steady_cv_max: float = 0.15  # QUIC: a plateau this steady is a rate cap
    knee_ratio: float = 4.0  # QUIC: or a knee this sharp
    extreme_ratio: float = 0.1  # or a ratio whose whole CI is below this (10x slower)
    max_controls_per_file: int = 64  # the longest-lasting control flows of each capture
    n_resamples: int = 2000
    n_permutations: int = 2000
    confidence_level: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        if self.bin_ns <= 0:
            raise ValueError(f"bin_ns must be positive, got {self.bin_ns}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if not 0 < self.max_ratio <= self.clean_ratio:
            raise ValueError("need 0 < max_ratio <= clean_ratio")
        if not 0 < self.confidence_level < 1:
            raise ValueError(f"confidence_level must be in (0, 1), got {self.confidence_level}")


@dataclass(frozen=True)
class FlowEvidence:
    """One flow as evidence: identity, measurements, and why it was or was not used."""

    file: str
    flow: int
    role: str
    target: str  # the target's name for target flows, "" for controls
    transport: str
    sni: str | None
    client: str
    server: str
    start_ns: int
    goodput_bps: float | None
    goodput_bytes: int
    #: arrival times (ns) and unique bytes of the main direction's payload packets
    data_ts_ns: npt.NDArray[np.int64] = field(repr=False)
    data_good: npt.NDArray[np.int64] = field(repr=False)
    excluded: str | None
    handshake_s: float | None
    rtt_floor_ms: float | None
    rate: RateEstimate | None = None
    mechanism: MechanismEvidence | None = None
    stall: StallEvidence | None = None
    retransmissions: int = 0
    data_packets: int = 0
    #: retransmitted / payload packets of the main direction (NaN for QUIC: encrypted)
    loss_fraction: float = float("nan")
    #: standing path RTT over the transfer (median of window minima), ms
    rtt_level_ms: float = float("nan")
    #: coefficient of variation of delivered bytes per window of max(1 s, 10 RTT) after the knee
    steady_cv: float = float("nan")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "file": self.file, "flow": self.flow, "role": self.role, "target": self.target or None,
            "transport": self.transport,
            "sni": self.sni, "client": self.client, "server": self.server,
            "start": self.start_ns / 1e9, "goodput_bps": self.goodput_bps,
            "goodput_bytes": self.goodput_bytes, "data_packets_main": int(self.data_ts_ns.size),
            "excluded": self.excluded, "handshake_s": self.handshake_s,
            "rtt_floor_ms": self.rtt_floor_ms, "retransmissions": self.retransmissions,
            "data_packets": self.data_packets,
            "loss_fraction": None if np.isnan(self.loss_fraction) else self.loss_fraction,
            "rtt_level_ms": None if np.isnan(self.rtt_level_ms) else self.rtt_level_ms,
            "steady_cv": None if np.isnan(self.steady_cv) else self.steady_cv,
        }
        if self.rate is not None:
            out["rate_bps"] = self.rate.rate_bps
            out["onset_bytes"] = self.rate.onset_bytes
            out["onset_s"] = self.rate.onset_s
            out["burst_bytes"] = self.rate.burst_bytes
        if self.mechanism is not None:
            m = self.mechanism
            out["mechanism"] = m.mechanism
            out["plateau_loss_fraction"] = None if np.isnan(m.loss_fraction) else m.loss_fraction
            out["queueing_delay_ms"] = None if np.isnan(m.queueing_delay_ms) else m.queueing_delay_ms
            out["interarrival_cv"] = None if np.isnan(m.interarrival_cv) else m.interarrival_cv
        if self.stall is not None and self.stall.stalled:
            out["stalled_after_bytes"] = self.stall.bytes_before
            out["stall_silence_s"] = self.stall.silence_s
        return out


@dataclass(frozen=True)
class CaptureFacts:
    """What reading one capture produced (for the report's honesty section)."""

    file: str
    packets: int
    flows: int
    damaged: int
    damage: tuple[str, ...]
    #: packets in no flow because their link type is not decoded, one line per link type
    undecoded: tuple[str, ...] = ()

    @classmethod
    def of(cls, path: str, got: FlowRead) -> CaptureFacts:
        """The facts of a capture's flow pass (:func:`~keepiton_throttle.flows.read_flows`)."""
        s = got.stats
        return cls(path, s.records, got.table.n, s.damaged, tuple(d.message for d in s.damage),
                   tuple(undecoded_notes(got.undecoded_linktypes)))


@dataclass(frozen=True)
class AnalysisReport:
    """Verdicts for every target found (or asked for), with the evidence behind them."""

    targets: list[Any]  # list[verdict.Verdict]
    evidence: list[FlowEvidence]
    captures: list[CaptureFacts]
    config: DetectionConfig


def _collect_traces(path: str, wanted: set[int], client: npt.NDArray[np.int64], bin_ns: int, *,
                    prefetch: bool | None = None) -> dict[int, FlowTrace]:
    """Pass 2: per-packet records of the ``wanted`` flows (same flow ids as pass 1);
    ``prefetch`` as in :func:`~keepiton_throttle.sources.capture.chunks_of`."""
    parts: dict[int, list[tuple[Any, ...]]] = {f: [] for f in wanted}
    want = np.array(sorted(wanted), dtype=np.int64)
    builder = FlowBuilder(bin_ns=bin_ns)
    with CaptureReader(path) as reader:
        for chunk in chunks_of(reader, prefetch=prefetch):
            rows = builder.add(chunk)
            sel = np.flatnonzero(np.isin(rows.flow, want))
            if not sel.size:
                continue
            t = chunk.table
            fl = rows.flow[sel]
            for f in np.unique(fl):
                m = sel[fl == f]
                parts[int(f)].append((t.ts_ns[m], rows.dir[m], t.payload_len[m].astype(np.int64),
                                      rows.good[m], rows.cls[m], t.wirelen[m].astype(np.int64)))
    out = {}
    for f, ps in parts.items():
        if not ps:
            continue
        ts = np.concatenate([p[0] for p in ps])
        d = np.concatenate([p[1] for p in ps])
        out[f] = FlowTrace(
            ts_ns=ts.astype(np.int64),
            up=(d.astype(np.int64) == int(client[f])),
            payload=np.concatenate([p[2] for p in ps]),
            good=np.concatenate([p[3] for p in ps]),
            retx=np.concatenate([p[4] for p in ps]) == 1,
            wire=np.concatenate([p[5] for p in ps]),
        )
    return out


def _handshake_s(table: FlowTable, f: int, trace: FlowTrace | None) -> float | None:
    """TLS: from the ClientHello to the client's next flight after the server's first bytes
    (ClientHello -> server flight -> client Finished/request). QUIC: client Initial to the
    server's first reply."""
    c = table.cols
    if int(c["proto"][f]) == 17:
        ci, sr = int(c["quic_client_initial_ts"][f]), int(c["quic_server_reply_ts"][f])
        return (sr - ci) / 1e9 if ci >= 0 and sr >= ci else None
    if trace is None:
        return None
    up = trace.up & (trace.payload > 0)
    down = ~trace.up & (trace.payload > 0)
    if not up.any() or not down.any():
        return None
    hello = int(trace.ts_ns[up][0])
    first_down = int(trace.ts_ns[down][0])
    later = trace.ts_ns[up & (trace.ts_ns > first_down)]
    if later.size == 0:
        return None
    return (int(later[0]) - hello) / 1e9


def _evidence(path: str, table: FlowTable, series: TimingSeries, paths: PathRtts, f: int, role: str,
              target: str, trace: FlowTrace | None, cfg: DetectionConfig,
              capture_end_ns: int) -> FlowEvidence:
    """``paths``: the table's :func:`~keepiton_throttle.series.path_rtts`."""
    c = table.cols
    rec = flow_records(table, series, rows=[f], paths=paths)[0]
    transport = rec["transport"]
    up_main = int(c["goodput_up"][f]) > int(c["goodput_down"][f])
    s2a, a2a = int(paths.syn_to_synack_ns[f]), int(paths.synack_to_ack_ns[f])
    rtt_ts, rtt = paths.of(f)
    hs_rtt = s2a + a2a if s2a >= 0 and a2a >= 0 else None
    floors = [v for v in (hs_rtt, int(rtt.min()) if rtt.size else None) if v is not None and v > 0]
    rtt_floor = min(floors) if floors else None
    excluded: str | None = None
    rate = mech = stall = None
    data_pk = 0
    loss = float("nan")
    steady = float("nan")
    retx = int(c["retransmissions_up"][f] + c["retransmissions_down"][f])
    hs = _handshake_s(table, f, trace)
    data_ts = np.zeros(0, dtype=np.int64)
    data_good = np.zeros(0, dtype=np.int64)
    if trace is not None:
        main = trace.direction(up=up_main).data()
        data_ts, data_good = main.ts_ns, main.good
        data_pk = int(main.ts_ns.size)
        server_fin = bool(c["fin_down"][f]) if not up_main else bool(c["fin_up"][f])
        stall = detect_stall(main.ts_ns, main.good, flow_end_ns=max(int(c["last_ts"][f]), capture_end_ns)
                             if int(c["proto"][f]) == 6 and not server_fin and not (c["rst_up"][f] or c["rst_down"][f])
                             else int(c["last_ts"][f]),
                             server_fin=server_fin, min_silence_s=cfg.stall_silence_s,
                             max_bytes=cfg.stall_max_bytes, rtt_ns=rtt_floor)
        if main.ts_ns.size == 0:
            excluded = EXCL_NO_DATA
        elif data_pk < cfg.min_data_packets or (int(main.ts_ns[-1] - main.ts_ns[0]) <
                                                 (cfg.min_target_bins if role == ROLE_TARGET else cfg.min_control_bins) * cfg.min_bin_ns):
            excluded = EXCL_TOO_SHORT
        else:
            span = int(main.ts_ns[-1] - main.ts_ns[0])
            rwl = int(c["rwnd_limited_ns_down"][f] if not up_main else c["rwnd_limited_ns_up"][f])
            zw = int(c["zero_window_ns_up"][f] if not up_main else c["zero_window_ns_down"][f])
            if span > 0 and (rwl + zw) / span > cfg.receiver_limited_frac:
                excluded = EXCL_RECEIVER_LIMITED
            else:
                gap = max(cfg.app_gap_ns, 10 * (rtt_floor or 0))
                if app_limited_fraction(main.ts_ns, main.retx, min_gap_ns=gap) > cfg.app_limited_frac:
                    excluded = EXCL_APP_LIMITED
        if transport == "tcp" and data_pk:
            loss = float(main.retx.sum()) / data_pk
        if role == ROLE_TARGET and main.ts_ns.size >= 4:
            # what a policer/shaper meters: every frame that arrived, retransmissions included
            rate = estimate_rate(main.ts_ns, main.wire)
            if rate.rate_bps is not None:
                window = max(250_000_000, 4 * (rtt_floor or 0))
                after = main.ts_ns >= rate.plateau_start_ns
                steady = steadiness(main.ts_ns[after], main.wire[after], window)
            if rate.rate_bps is not None:
                mech = classify_mechanism(
                    main.ts_ns, main.retx, rtt_ts, rtt, (rate.plateau_start_ns, rate.plateau_end_ns),
                    rtt_floor_ns=rtt_floor, transport="tcp" if transport == "tcp" else "quic",
                    min_queue_ms=cfg.min_queue_ms, min_queue_frac=cfg.min_queue_frac,
                    min_loss=cfg.min_loss, policing_cv=cfg.policing_cv, shaping_cv=cfg.shaping_cv)
    else:
        excluded = EXCL_NO_DATA
    return FlowEvidence(
        file=path, flow=f, role=role, target=target, transport=transport, sni=rec["sni"], client=rec["client"],
        server=rec["server"], start_ns=int(c["first_ts"][f]), goodput_bps=rec["goodput_bps"],
        goodput_bytes=int(max(c["goodput_down"][f], c["goodput_up"][f])),
        data_ts_ns=data_ts, data_good=data_good,
        excluded=excluded, handshake_s=hs, rtt_floor_ms=None if rtt_floor is None else rtt_floor / 1e6,
        rate=rate, mechanism=mech, stall=stall, retransmissions=retx, data_packets=data_pk,
        loss_fraction=loss, rtt_level_ms=rtt_level(rtt_ts, rtt) / 1e6, steady_cv=steady)


def _as_targets(targets: Mapping[str, Target] | Mapping[str, Sequence[str]] | None) -> dict[str, Target]:
    if targets is None:
        from .targets import bundled_targets

        return bundled_targets()
    out: dict[str, Target] = {}
    for name, spec in targets.items():
        out[name] = spec if isinstance(spec, Target) else Target(name, tuple(spec))
    return out


@dataclass(frozen=True)
class FileEvidence:
    """Everything one capture contributes: its reading facts and its target/control flows.

    Picklable, so batch workers (processes, Dask) can compute it per file and ship it back.
    """

    capture: CaptureFacts
    flows: list[FlowEvidence]


@dataclass(frozen=True)
class Roles:
    """Which SNIs make target flows and which make controls."""

    targets: dict[str, Target]
    #: every known target (also those not reported): their flows are never controls
    known: tuple[Target, ...]
    controls: Target | None = None

    def classify(self, sni: str | None) -> tuple[str, str] | None:
        if not sni:
            return None
        # an explicit control pattern wins over the targets list: the user chose it
        if self.controls is not None and self.controls.matches(sni):
            return (ROLE_CONTROL, "")
        hit = next((name for name, t in self.targets.items() if t.matches(sni)), None)
        if hit is not None:
            return (ROLE_TARGET, hit)
        if self.controls is None and not any(t.matches(sni) for t in self.known):
            return (ROLE_CONTROL, "")
        return None


def resolve_roles(targets: Mapping[str, Target] | Mapping[str, Sequence[str]] | None = None, *,
                  control_patterns: Sequence[str] | None = None,
                  only_targets: Sequence[str] | None = None) -> Roles:
    """Targets to report (all, or ``only_targets``), and the control rule."""
    tmap = _as_targets(targets)
    known = tuple(tmap.values())
    if only_targets is not None:
        missing = [t for t in only_targets if t not in tmap]
        if missing:
            from .errors import InputError

            raise InputError(f"unknown target(s): {', '.join(missing)} (known: {', '.join(sorted(tmap))})")
        tmap = {k: tmap[k] for k in only_targets}
    ctl = Target("controls", tuple(control_patterns)) if control_patterns else None
    return Roles(tmap, known, ctl)


def file_evidence(path: str | os.PathLike[str], roles: Roles, config: DetectionConfig | None = None) -> FileEvidence:
    """Pass 1 (flows), role assignment and pass 2 (traces) for one capture file."""
    cfg = config or DetectionConfig()
    path = os.fspath(path)
    got = read_flows(path, bin_ns=cfg.bin_ns)
    table, series = got.table, got.series
    facts = CaptureFacts.of(path, got)
    chosen: dict[int, tuple[str, str]] = {}
    for f in range(table.n):
        r = roles.classify(table.hello[f].sni)
        if r is not None:
            chosen[f] = r
    if not chosen:
        return FileEvidence(facts, [])
    controls = [f for f, (role, _) in chosen.items() if role == ROLE_CONTROL]
    if len(controls) > cfg.max_controls_per_file:
        # the longest transfers are the informative controls; keeping per-packet traces of
        # every flow of a big capture would make memory grow with the capture
        c = table.cols
        span = np.maximum(c["last_data_ts_down"] - c["first_data_ts_down"],
                          c["last_data_ts_up"] - c["first_data_ts_up"])
        keep = set(sorted(controls, key=lambda f: -int(span[f]))[: cfg.max_controls_per_file])
        chosen = {f: r for f, r in chosen.items() if r[0] != ROLE_CONTROL or f in keep}
    traces = _collect_traces(path, set(chosen), table.cols["client_dir"], cfg.bin_ns)
    end_ns = int(table.cols["last_ts"].max()) if table.n else 0
    paths = path_rtts(table.cols, series)
    flows = [_evidence(path, table, series, paths, f, role, name, traces.get(f), cfg, end_ns)
             for f, (role, name) in sorted(chosen.items())]
    return FileEvidence(facts, flows)


def combine(files: Sequence[FileEvidence], roles: Roles, config: DetectionConfig | None = None, *,
            baseline: Any = None, report_empty: bool = False) -> AnalysisReport:
    """Pool the evidence of several captures and decide every (target, transport)."""
    from .verdict import decide_all

    cfg = config or DetectionConfig()
    members: dict[tuple[str, str], list[FlowEvidence]] = {}
    evidence: list[FlowEvidence] = []
    for fe in files:
        for ev in fe.flows:
            evidence.append(ev)
            members.setdefault((ev.role, ev.target), []).append(ev)
    verdicts = decide_all(members, roles.targets, cfg, baseline=baseline, report_empty=report_empty)
    return AnalysisReport(verdicts, evidence, [fe.capture for fe in files], cfg)


def analyze_paths(
    paths: Sequence[str | os.PathLike[str]], *,
    targets: Mapping[str, Target] | Mapping[str, Sequence[str]] | None = None,
    control_patterns: Sequence[str] | None = None,
    config: DetectionConfig | None = None,
    baseline: Any = None,
    only_targets: Sequence[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> AnalysisReport:
    """Analyse captures and decide, per target and transport, whether it is throttled.

    ``targets``: name -> Target or SNI patterns (default: the bundled list). Control flows are
    the flows whose SNI matches ``control_patterns`` when given, else every flow with an SNI
    that matches no known target. ``baseline``: an object with ``control_samples(transport)``
    (per-bin goodput, bit/s) from the baseline store, used when the captures hold no usable
    control. ``only_targets``: report these targets even if they have no flow (as
    inconclusive), and no others.
    """
    cfg = config or DetectionConfig()
    roles = resolve_roles(targets, control_patterns=control_patterns, only_targets=only_targets)
    files = []
    for p in paths:
        if progress:
            progress(f"reading {os.fspath(p)}")
        files.append(file_evidence(p, roles, cfg))
    return combine(files, roles, cfg, baseline=baseline, report_empty=only_targets is not None)
