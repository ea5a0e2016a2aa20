"""Verdicts: throttled / not_throttled / inconclusive, per target and transport, with evidence.

A false "throttled" published by a rights group is worse than no answer, so the rule is
asymmetric (METHODOLOGY.md sec. 5):

* **throttled** needs *both* statistical significance (two-sample KS and Mann-Whitney on the
  per-bin goodput of target vs control flows, Benjamini-Hochberg-adjusted across every target in
  the report, below ``alpha``) *and* a large effect (the bootstrap confidence interval of the
  target/control median-goodput ratio lies entirely below ``max_ratio``); or a stall (the
  target froze after a few KB while controls delivered several times more); or, for flows too
  short to show a plateau, repeated handshakes far slower than the controls';
* **not_throttled** needs the ratio's confidence interval to stay above ``max_ratio``, or a
  ratio of at least ``clean_ratio`` that is not significant;
* everything else is **inconclusive**, with the reasons (closed vocabulary below).

If the controls are as slow as the target (a slow or congested link), the ratio is near 1 and
the answer is never "throttled": that is the whole-path guard.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .analysis import ROLE_CONTROL, ROLE_TARGET, DetectionConfig, FlowEvidence
from .characterize import MECH_NONE, MECH_STALL, MECH_UNKNOWN
from .targets import Target

THROTTLED = "throttled"
NOT_THROTTLED = "not_throttled"
INCONCLUSIVE = "inconclusive"

#: The closed vocabulary of reasons a verdict carries.
REASONS = {
    "no_target_flows": "the capture holds no flow of this target",
    "no_control_flows": "no usable control flow (and no baseline) to compare with",
    "controls_other_transport": "controls use another transport than the target",
    "target_too_short": "target flows too short to judge (too few packets or bins)",
    "target_receiver_limited": "target flows were limited by the client's receive window",
    "target_application_limited": "target flows were idle for lack of data (application-limited)",
    "control_excluded": "some control flows were left out (too short or limited)",
    "not_significant": "the difference is not statistically significant",
    "ratio_ci_crosses_threshold": "the ratio's confidence interval straddles the threshold",
    "area_only": "Wehe's area test passes but the KS test does not",
    "stall": "the target stalled after a few KB while controls kept going",
    "stall_suspected": "the target stalled, but no control shows that the server could do better",
    "slow_handshake": "target handshakes were much slower than the controls'",
    "significant_and_large": "significant difference with the ratio's CI below the threshold",
    "no_differential_symptom": "slower than controls, but without losses, queueing or a rate cap of its own (path noise?)",
    "losses_above_controls": "the target lost far more packets than the controls (policing)",
    "queueing_above_controls": "the target's RTT rose by a queueing delay the controls did not see (shaping)",
    "steady_rate_cap": "the target's goodput is pinned at a steady rate (a token bucket)",
    "rate_cap_after_burst": "the target ran fast, then at a much lower fixed rate (a token bucket)",
    "order_of_magnitude_slower": "the target was over ten times slower than controls on the same path",
    "similar_to_controls": "target goodput is close to the controls'",
    "shared_path_loss": "controls lose packets as much as the target: the path's random loss, not a throttle",
    "capture_damaged": "a capture was damaged; the verdict uses what could be read",
    "baseline_used": "compared with a stored baseline instead of controls in the capture",
}


@dataclass(frozen=True)
class Verdict:
    """The answer for one target over one transport, and why."""

    target: str
    transport: str
    decision: str
    mechanism: str
    rate_bps: float | None
    burst_bytes: int | None
    onset_bytes: int | None
    onset_s: float | None
    ratio: float | None
    ratio_ci: tuple[float, float] | None
    p_value: float | None  # BH-adjusted max(KS p, Mann-Whitney p)
    tests: dict[str, Any]
    target_goodput_bps: float | None
    control_goodput_bps: float | None
    flows: list[FlowEvidence] = field(repr=False)
    control_flows: list[FlowEvidence] = field(repr=False)
    reasons: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "transport": self.transport,
            "decision": self.decision,
            "mechanism": self.mechanism,
            "rate_bps": self.rate_bps,
            "burst_bytes": self.burst_bytes,
            "onset_bytes": self.onset_bytes,
            "onset_s": self.onset_s,
            "ratio": self.ratio,
            "ratio_ci": list(self.ratio_ci) if self.ratio_ci else None,
            "p_value": self.p_value,
            "tests": self.tests,
            "target_goodput_bps": self.target_goodput_bps,
            "control_goodput_bps": self.control_goodput_bps,
            "flows": [f.to_json() for f in self.flows],
            "control_flows": [f.to_json() for f in self.control_flows],
            "reasons": self.reasons,
        }


@dataclass
class _Group:
    target: str
    transport: str
    flows: list[FlowEvidence]
    controls: list[FlowEvidence]
    reasons: list[str]
    comparison: Any = None
    p_raw: float | None = None
    bin_ns: int = 0
    n_bins: tuple[int, int] = (0, 0)


def _median(values: Sequence[float | int | None]) -> float | None:
    v = [float(x) for x in values if x is not None and np.isfinite(float(x))]
    return float(np.median(v)) if v else None


def _goodput(flows: Sequence[FlowEvidence]) -> float | None:
    return _median([f.goodput_bps for f in flows])


def _finite(x: float) -> float | None:
    return float(x) if x is not None and np.isfinite(x) else None


def decide_all(members: Mapping[tuple[str, str], list[FlowEvidence]], targets: Mapping[str, Target],
               cfg: DetectionConfig, *, baseline: Any = None, report_empty: bool = False) -> list[Verdict]:
    """Verdicts for every (target, transport) with flows (and, with ``report_empty``, every
    target in ``targets`` that has none, as inconclusive)."""
    from .stats import benjamini_hochberg, compare_pairs

    controls_all = members.get((ROLE_CONTROL, ""), [])
    groups: list[_Group] = []
    for name in targets:
        tflows = members.get((ROLE_TARGET, name), [])
        if not tflows:
            if report_empty:
                groups.append(_Group(name, "any", [], [], ["no_target_flows"]))
            continue
        for transport in sorted({f.transport for f in tflows}):
            fl = [f for f in tflows if f.transport == transport]
            same = [c for c in controls_all if c.transport == transport]
            reasons: list[str] = []
            ctl = same
            if not [c for c in same if c.excluded is None] and [c for c in controls_all if c.excluded is None]:
                ctl = controls_all
                reasons.append("controls_other_transport")
            groups.append(_Group(name, transport, fl, ctl, reasons))
    # statistics for every group that has usable flows on both sides, in one batch
    batch = [g for g in groups if _usable(g.flows) and
             (_usable(g.controls) or _baseline_samples(baseline, g.transport).size >= cfg.min_control_bins)]
    if batch:
        t_samples, c_samples = [], []
        for g in batch:
            tw = [bin_width(f, cfg, min_bins=cfg.min_target_bins) for f in _usable(g.flows)]
            cw = [bin_width(f, cfg, min_bins=cfg.min_control_bins) for f in _usable(g.controls)]
            g.bin_ns = int(np.median(tw))
            t_samples.append(np.concatenate([bins_bps(f, w) for f, w in zip(_usable(g.flows), tw, strict=True)]))
            c_samples.append(np.concatenate([bins_bps(f, w) for f, w in zip(_usable(g.controls), cw, strict=True)])
                             if _usable(g.controls) else _baseline_samples(baseline, g.transport))
            g.n_bins = (t_samples[-1].size, c_samples[-1].size)
        results = compare_pairs(t_samples, c_samples, n_resamples=cfg.n_resamples,
                                n_permutations=cfg.n_permutations,
                                confidence_level=cfg.confidence_level, rng=cfg.seed)
        for g, r in zip(batch, results, strict=True):
            g.comparison = r
            g.p_raw = max(r.ks_pvalue, r.mwu_pvalue)
    ps = [g.p_raw for g in groups if g.p_raw is not None and np.isfinite(g.p_raw)]
    adjusted: Iterator[float] = iter(benjamini_hochberg(np.array(ps)).tolist() if ps else [])
    verdicts = []
    for g in groups:
        p_adj = float(next(adjusted)) if g.p_raw is not None and np.isfinite(g.p_raw) else None
        verdicts.append(_decide(g, p_adj, cfg, baseline_used=g.comparison is not None and not _usable(g.controls)))
    return verdicts


def _baseline_samples(baseline: Any, transport: str) -> np.ndarray:
    """Per-bin control goodput (bit/s) a baseline holds for ``transport`` (empty if none)."""
    if baseline is None:
        return np.zeros(0, dtype=np.float64)
    got = baseline.control_samples(transport)
    return np.zeros(0, dtype=np.float64) if got is None else np.asarray(got, dtype=np.float64)


def _usable(flows: Sequence[FlowEvidence]) -> list[FlowEvidence]:
    return [f for f in flows if f.excluded is None and f.data_ts_ns.size > 0]


def bins_bps(ev: FlowEvidence, width_ns: int) -> np.ndarray:
    """Goodput (bit/s) of a flow in bins of ``width_ns`` from its first payload packet.

    The first bin (handshake and slow start, or a token bucket's initial burst) and the last,
    partial one are dropped when at least three remain; then leading bins below half the flow's
    90th-percentile bin (the rest of a slow-start ramp) are dropped, at most half of them:
    neither says what rate the path sustains.
    """
    if ev.data_ts_ns.size == 0:
        return np.zeros(0, dtype=np.float64)
    k = (ev.data_ts_ns - ev.data_ts_ns[0]) // width_ns
    b = np.bincount(k, weights=ev.data_good.astype(np.float64)) * 8e9 / width_ns
    if b.size < 3:
        return b
    b = b[1:-1]
    if b.size >= 4:
        low = b < 0.5 * np.percentile(b, 90)
        ramp = int(np.argmin(low)) if not low.all() else 0
        b = b[min(ramp, b.size // 2):]
    return b


def bin_width(ev: FlowEvidence, cfg: DetectionConfig, *, min_bins: int) -> int:
    """The bin width for one flow: the configured width, shrunk (down to ``min_bin_ns``) until
    the flow spans ``min_bins`` bins besides its first and last, and widened (up to 10x the configured width) until it
    averages two full-size packets per bin, so that a slow flow's median bin is not empty.

    Goodput per bin is in bit/s, so flows binned at different widths stay comparable; the width
    changes only the spread of the samples, and a difference of spread alone cannot make a
    verdict "throttled" (that also needs the ratio's CI below ``max_ratio``).
    """
    width = cfg.bin_ns
    if ev.data_ts_ns.size > 1:
        span = int(ev.data_ts_ns[-1] - ev.data_ts_ns[0])
        width = min(width, max(cfg.min_bin_ns, span // (max(min_bins, 1) + 2)))
    if ev.goodput_bps:
        width = max(width, int(2 * 1500 * 8e9 / ev.goodput_bps))
    if ev.rtt_floor_ms:
        # narrower than a round trip, a window-limited sender's bins alternate burst and idle
        width = max(width, int(ev.rtt_floor_ms * 1e6))
    return int(min(max(width, cfg.min_bin_ns), 10 * cfg.bin_ns))


def _loss_excess(targets: Sequence[FlowEvidence], controls: Sequence[FlowEvidence],
                 cfg: DetectionConfig) -> bool:
    """TCP: did the target flows lose (retransmit) significantly more than the controls?

    One-sided Fisher exact test on retransmitted vs other payload packets, pooled per side, at
    ``alpha``, and a loss rate at least ``loss_factor`` times the controls' plus
    ``min_loss_excess``. A shared lossy path gives both sides the same rate.
    """
    from scipy.stats import fisher_exact

    def counts(flows: Sequence[FlowEvidence]) -> tuple[int, int]:
        k = n = 0
        for f in flows:
            if f.transport == "tcp" and f.data_packets and np.isfinite(f.loss_fraction):
                n += f.data_packets
                k += int(round(f.loss_fraction * f.data_packets))
        return k, n

    kt, nt = counts(targets)
    kc, nc = counts(controls)
    if nt == 0 or nc == 0 or kt == 0:
        return False
    lt, lc = kt / nt, kc / nc
    if lt < cfg.loss_factor * lc + cfg.min_loss_excess:
        return False
    p = fisher_exact([[kt, nt - kt], [kc, nc - kc]], alternative="greater").pvalue
    return bool(p < cfg.alpha)


def differential_symptoms(targets: Sequence[FlowEvidence], controls: Sequence[FlowEvidence],
                          cfg: DetectionConfig) -> list[str]:
    """What the target flows show that the controls do not (METHODOLOGY.md sec. 5).

    A ratio alone can come from chance on a noisy path; a throttle also leaves a mark: a
    policer makes the target lose far more packets than the controls (TCP: retransmissions are
    visible), a shaper makes its RTT rise by a standing queue, and both pin the goodput at a
    token rate (steady windows, or a sharp fast-then-slow knee; used for QUIC, whose losses are
    encrypted).
    """
    out: list[str] = []
    if _loss_excess(targets, controls, cfg):
        out.append("losses_above_controls")
    crtt = _median([c.rtt_level_ms for c in controls])
    trtt = _median([t.mechanism.rtt_plateau_ms for t in targets if t.mechanism is not None])
    if trtt is None:
        trtt = _median([t.rtt_level_ms for t in targets])
    if crtt is not None and trtt is not None and trtt - crtt >= max(cfg.min_queue_ms, cfg.min_queue_frac * crtt):
        out.append("queueing_above_controls")
    if all(t.transport != "tcp" for t in targets):
        cv = _median([t.steady_cv for t in targets])
        if cv is not None and cv <= cfg.steady_cv_max:
            out.append("steady_rate_cap")
        knees = [t.rate for t in targets if t.rate is not None and t.rate.knee]
        if knees and _median([k.slope_ratio for k in knees]) >= cfg.knee_ratio:  # type: ignore[operator]
            out.append("rate_cap_after_burst")
    return out


def _characterise(flows: Sequence[FlowEvidence]) -> tuple[str, float | None, int | None, int | None, float | None]:
    mechs = [f.mechanism.mechanism for f in flows if f.mechanism is not None]
    known = [m for m in mechs if m != MECH_UNKNOWN]
    mech = max(set(known), key=known.count) if known else MECH_UNKNOWN
    rates = [f.rate.rate_bps for f in flows if f.rate is not None]
    onsets = [f.rate.onset_bytes for f in flows if f.rate is not None]
    bursts = [f.rate.burst_bytes for f in flows if f.rate is not None]
    onset_s = [f.rate.onset_s for f in flows if f.rate is not None]
    med_onset = _median(onsets)
    med_burst = _median(bursts)
    return (mech, _median(rates), None if med_burst is None else int(med_burst),
            None if med_onset is None else int(med_onset), _median(onset_s))


def _decide(g: _Group, p_adj: float | None, cfg: DetectionConfig, *, baseline_used: bool) -> Verdict:
    reasons = list(g.reasons)
    tgood = _goodput(g.flows)
    cgood = _goodput([c for c in g.controls if c.excluded is None]) if g.controls else None

    def verdict(decision: str, mechanism: str = MECH_NONE, rate: float | None = None,
                burst: int | None = None, onset: int | None = None, onset_s: float | None = None) -> Verdict:
        r = g.comparison
        tests: dict[str, Any] = {}
        ratio = ci = None
        if r is not None:
            tests = {
                "ks": {"statistic": _finite(r.ks_statistic), "pvalue": _finite(r.ks_pvalue)},
                "mann_whitney": {"statistic": _finite(r.mwu_statistic), "pvalue": _finite(r.mwu_pvalue)},
                "wehe_area": {"statistic": _finite(r.area)},
                "permutation": {"pvalue": _finite(r.perm_pvalue)},
                "p_raw": _finite(g.p_raw) if g.p_raw is not None else None,
                "target_bin_ms": g.bin_ns / 1e6,
                "target_bins": g.n_bins[0],
                "control_bins": g.n_bins[1],
            }
            ratio = _finite(r.ratio)
            lo, hi = _finite(r.ratio_ci_low), _finite(r.ratio_ci_high)
            ci = (lo, hi) if lo is not None and hi is not None else None
        if baseline_used:
            reasons.append("baseline_used")
        return Verdict(g.target, g.transport, decision, mechanism, rate, burst, onset, onset_s,
                       ratio, ci, p_adj, tests, tgood, cgood, g.flows, g.controls,
                       list(dict.fromkeys(reasons)))

    if not g.flows:
        return verdict(INCONCLUSIVE)
    # 1. a stall is judged on its own (such flows are short by nature)
    stalled = [f for f in g.flows if f.stall is not None and f.stall.stalled]
    if stalled:
        sbytes = int(np.median([f.stall.bytes_before for f in stalled if f.stall is not None]))
        best_ctl = max((c.goodput_bytes for c in g.controls), default=0)
        if best_ctl >= cfg.stall_control_factor * max(sbytes, 1):
            reasons.append("stall")
            return verdict(THROTTLED, MECH_STALL, None, None, sbytes, None)
        reasons.append("stall_suspected")
    usable_t = _usable(g.flows)
    usable_c = _usable(g.controls)
    if not usable_t:
        for f in g.flows:
            if f.excluded:
                reasons.append(f"target_{f.excluded}" if f.excluded != "no_server_data" else "target_too_short")
        # 2. short but fast: a transfer that finished at the controls' speed was not slowed
        tg = _goodput(g.flows)
        cg = _goodput([c for c in g.controls if c.excluded is None or c.excluded == "too_short"])
        if tg is not None and cg is not None and tg >= cfg.clean_ratio * cg:
            reasons.append("similar_to_controls")
            return verdict(NOT_THROTTLED)
        # 3. handshake evidence for flows too short to show a plateau
        ths = [f.handshake_s for f in g.flows if f.handshake_s is not None]
        chs = [c.handshake_s for c in g.controls if c.handshake_s is not None]
        if len(ths) >= 2 and chs:
            slow = min(ths)
            ref = float(np.median(chs))
            if slow >= cfg.handshake_slow_s and slow >= cfg.handshake_factor * ref:
                reasons.append("slow_handshake")
                return verdict(THROTTLED, MECH_UNKNOWN)
        return verdict(INCONCLUSIVE)
    if g.comparison is None:
        reasons.append("no_control_flows")
        return verdict(INCONCLUSIVE)
    if len(usable_c) < len([c for c in g.controls]):
        reasons.append("control_excluded")
    r = g.comparison
    lo, hi = r.ratio_ci_low, r.ratio_ci_high
    significant = p_adj is not None and p_adj < cfg.alpha
    if significant and np.isfinite(hi) and hi < cfg.max_ratio:
        symptoms = differential_symptoms(usable_t, usable_c, cfg)
        if hi < cfg.extreme_ratio:
            # chance on a shared path (same loss, same queue) does not make one flow ten times
            # slower than another over a whole transfer
            symptoms.append("order_of_magnitude_slower")
        if not symptoms:
            # slower, but nothing a throttle leaves behind: one unlucky flow on a lossy or
            # jittery path looks like this (Mathis: goodput ~ 1/sqrt(loss) varies a lot)
            if _shared_path_loss(usable_t, usable_c, cfg):
                reasons.append("shared_path_loss")
                return verdict(NOT_THROTTLED)
            reasons.append("no_differential_symptom")
            return verdict(INCONCLUSIVE)
        reasons.append("significant_and_large")
        reasons.extend(symptoms)
        mech, rate, burst, onset, onset_s = _characterise(usable_t)
        if "queueing_above_controls" in symptoms and "losses_above_controls" not in symptoms:
            mech = "shaping"
        return verdict(THROTTLED, mech, rate, burst, onset, onset_s)
    if (np.isfinite(lo) and lo >= cfg.max_ratio) or (r.ratio >= cfg.clean_ratio and not significant):
        reasons.append("similar_to_controls")
        return verdict(NOT_THROTTLED)
    if tgood is not None and cgood is not None and tgood >= cfg.clean_ratio * cgood:
        # the bins are too noisy to tell (short transfers, mostly slow start), but the flows
        # as a whole moved at the controls' speed: a throttled flow cannot do that
        reasons.append("similar_to_controls")
        return verdict(NOT_THROTTLED)
    if _shared_path_loss(usable_t, usable_c, cfg) and not differential_symptoms(usable_t, usable_c, cfg):
        # the controls lose packets as much as the target does and the target shows nothing a
        # throttle leaves: the difference is the path's random loss (Mathis et al. 1997)
        reasons.append("shared_path_loss")
        return verdict(NOT_THROTTLED)
    if not significant:
        reasons.append("not_significant")
        if r.area >= 0.5 and r.ks_pvalue >= cfg.alpha:
            reasons.append("area_only")
    else:
        reasons.append("ratio_ci_crosses_threshold")
    return verdict(INCONCLUSIVE)


def _shared_path_loss(targets: Sequence[FlowEvidence], controls: Sequence[FlowEvidence],
                      cfg: DetectionConfig) -> bool:
    """TCP on a lossy path: controls retransmit at least 0.5 % of their segments, and the
    target at most ``loss_factor`` times as much (no excess). Its goodput then varies with
    the luck of its losses, not with a throttle (a policer's drops would be an excess)."""
    if any(f.transport != "tcp" for f in [*targets, *controls]):
        return False
    closs = _median([c.loss_fraction for c in controls])
    tloss = _median([t.loss_fraction for t in targets])
    return (closs is not None and tloss is not None and closs >= 0.005
            and tloss <= cfg.loss_factor * closs + cfg.min_loss_excess)
