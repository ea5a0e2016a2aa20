"""Characterisation of one throttled-looking flow: rate, burst, onset, mechanism, stall.

Inputs are the per-packet traces of the flow (``series.FlowTrace``) and its RTT samples;
outputs are small frozen dataclasses. Pure functions: no I/O, no clock.

Methods (docs/METHODOLOGY.md sec. 4 says why and what they cannot tell apart):

* **Rate and burst** (ShaperProbe, Kanuparthy & Dovrolis, IMC 2011; token-bucket model): the
  cumulative-goodput curve of a token-bucket-limited transfer is a fast segment (the bucket, or a
  censor's free allowance) followed by a straight plateau whose slope is the token rate. We fit
  two lines with one breakpoint by least squares; the slope after the knee is the rate, the
  bytes above the rate line at the knee are the burst.
* **Onset**: the breakpoint itself (bytes and seconds after the first payload byte).
* **Mechanism** (Flach et al., "An Internet-Wide Analysis of Traffic Policing", SIGCOMM 2016):
  a policer drops the excess, so losses come in bursts while the RTT stays near its floor; a
  shaper queues the excess, so the RTT rises by a queueing delay while losses stay rare and
  arrivals are evenly paced. A stall freezes the transfer after a fixed number of bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

MECH_POLICING = "policing"
MECH_SHAPING = "shaping"
MECH_STALL = "stall"
MECH_UNKNOWN = "unknown"
MECH_NONE = "none"


@dataclass(frozen=True)
class RateEstimate:
    """Token-bucket fit of a cumulative-goodput curve.

    ``rate_bps``: slope after the knee (bit/s); ``burst_bytes``: bytes delivered above the rate
    line by the knee; ``onset_bytes``/``onset_s``: bytes and seconds from the first payload byte
    to the knee (0 when the transfer was limited from the start). ``knee`` is False when one
    straight line fits as well as two (then ``rate_bps`` is the average rate).
    """

    rate_bps: float | None
    burst_bytes: int | None
    onset_bytes: int | None
    onset_s: float | None
    knee: bool
    plateau_start_ns: int
    plateau_end_ns: int
    slope_ratio: float
    points: int


def _segment_sse(x: npt.NDArray[np.float64], y: npt.NDArray[np.float64]) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """SSE of least-squares lines over every prefix [0, k) and suffix [k, n), k = 0..n."""

    def prefix(xx: npt.NDArray[np.float64], yy: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        n = np.arange(1, xx.size + 1, dtype=np.float64)
        sx, sy = np.cumsum(xx), np.cumsum(yy)
        sxx, sxy, syy = np.cumsum(xx * xx), np.cumsum(xx * yy), np.cumsum(yy * yy)
        vx = sxx - sx * sx / n
        cxy = sxy - sx * sy / n
        vy = syy - sy * sy / n
        with np.errstate(divide="ignore", invalid="ignore"):
            sse = np.where(vx > 0, vy - cxy * cxy / np.where(vx > 0, vx, 1.0), vy)
        return np.concatenate([[0.0], np.maximum(sse, 0.0)])

    pre = prefix(x, y)
    suf = prefix(x[::-1], y[::-1])[::-1]
    return pre, suf


def _slope(x: npt.NDArray[np.float64], y: npt.NDArray[np.float64]) -> float:
    if x.size < 2 or np.ptp(x) == 0:
        return 0.0
    return float(np.polyfit(x, y, 1)[0])


def estimate_rate(ts_ns: npt.NDArray[np.int64], good_bytes: npt.NDArray[np.int64], *,
                  max_points: int = 4000, min_slope_ratio: float = 2.0,
                  min_plateau_frac: float = 0.2) -> RateEstimate:
    """Fit the token-bucket model to a flow's delivered bytes.

    ``ts_ns``: arrival times of the flow's server->client packets (capture order);
    ``good_bytes``: the unique payload bytes each delivered. The points of the fit are the
    packets themselves (at most ``max_points``, evenly thinned), so a fast initial burst of a
    few dozen packets locates the knee precisely even in a transfer lasting minutes. A knee
    counts when the slope before it is at least ``min_slope_ratio`` times the slope after, the
    two lines halve the squared error of one line, and the plateau spans at least
    ``min_plateau_frac`` of the transfer time.
    """
    m = good_bytes > 0
    ts = ts_ns[m]
    gb = good_bytes[m]
    if ts.size < 4:
        return RateEstimate(None, None, None, None, False, 0, 0, float("nan"), int(ts.size))
    t0 = int(ts[0])
    cum = np.cumsum(gb).astype(np.float64)
    t = (ts - t0).astype(np.float64)
    total_t = float(t[-1])
    if total_t <= 0:
        return RateEstimate(None, None, None, None, False, t0, int(ts[-1]), float("nan"), int(ts.size))
    step = max(1, ts.size // max_points)
    xs, ys = t[::step], cum[::step]
    if xs[-1] != t[-1]:
        xs, ys = np.append(xs, t[-1]), np.append(ys, cum[-1])
    n = xs.size
    pre, suf = _segment_sse(xs, ys)
    last_k = int(np.searchsorted(xs, (1.0 - min_plateau_frac) * total_t, side="right"))
    ks = np.arange(3, min(last_k, n - 3) + 1)
    avg = RateEstimate(float(cum[-1] * 8e9 / total_t), 0, 0, 0.0, False, t0, int(ts[-1]), 1.0, int(ts.size))
    if ks.size == 0:
        return avg
    total = pre[ks] + suf[ks]
    k = int(ks[np.argmin(total)])
    s1 = _slope(xs[:k], ys[:k])
    s2 = _slope(xs[k:], ys[k:])
    ratio = s1 / s2 if s2 > 0 else float("inf")
    improved = pre[n] > 0 and total.min() < 0.5 * pre[n]
    if not (ratio >= min_slope_ratio and improved and s2 > 0):
        return RateEstimate(avg.rate_bps, 0, 0, 0.0, False, t0, int(ts[-1]), float(ratio), int(ts.size))
    knee_t = float(xs[k])
    j = int(np.searchsorted(t, knee_t, side="left"))
    span = total_t - float(t[j])
    # the plateau rate from its end points: bytes after the knee over the time after it (bytes/ns)
    rate_bpns = (cum[-1] - cum[j]) / span if span > 0 else s2
    onset_bytes = int(cum[j - 1]) if j > 0 else 0
    burst = max(0.0, onset_bytes - rate_bpns * knee_t)
    return RateEstimate(float(rate_bpns * 8e9), int(burst), onset_bytes, knee_t / 1e9, True,
                        t0 + int(t[j]), int(ts[-1]), float(ratio), int(ts.size))


def rtt_level(rtt_ts_ns: npt.NDArray[np.int64], rtt_ns: npt.NDArray[np.int64], span: tuple[int, int] | None = None,
              *, group: int = 8) -> float:
    """The standing RTT over ``span`` (ns): the median of the minimum of each run of up to
    ``group`` consecutive samples (fewer when there are few samples, so that at least six runs
    remain), in ns (NaN with fewer than 3 samples).

    A queue that persists (a shaper's) raises every sample, so it raises the minima; delays that
    come and go — jitter, an echo waiting for the sender's next packet at low rates, delayed
    ACKs — raise some samples only, and the minima ignore them.
    """
    m = np.ones(rtt_ns.size, dtype=bool) if span is None else (rtt_ts_ns >= span[0]) & (rtt_ts_ns <= span[1])
    v = rtt_ns[m].astype(np.float64)
    if v.size < 3:
        return float("nan")
    g = max(1, min(group, v.size // 6))
    k = v.size // g
    return float(np.median(v[: k * g].reshape(k, g).min(axis=1)))


def steadiness(ts_ns: npt.NDArray[np.int64], nbytes: npt.NDArray[np.int64], window_ns: int) -> float:
    """Coefficient of variation of the bytes delivered per ``window_ns`` window (first and last
    windows dropped; NaN with fewer than 6 windows). A token bucket's plateau is steady (a
    policer passes exactly its rate every window); a loss-limited TCP/QUIC flow saws up and down.
    """
    if ts_ns.size < 2 or window_ns <= 0:
        return float("nan")
    k = (ts_ns - ts_ns[0]) // window_ns
    b = np.bincount(k, weights=nbytes.astype(np.float64))[1:-1]
    if b.size < 6 or b.mean() <= 0:
        return float("nan")
    return float(b.std() / b.mean())


@dataclass(frozen=True)
class MechanismEvidence:
    """What the plateau looks like. NaN where the capture cannot tell (e.g. QUIC losses)."""

    mechanism: str
    loss_fraction: float  # retransmitted / data packets in the plateau (TCP)
    rtt_floor_ms: float  # lowest path RTT seen (handshake or samples)
    rtt_plateau_ms: float  # standing RTT in the plateau (median of window minima)
    queueing_delay_ms: float  # rtt_plateau - rtt_floor
    interarrival_cv: float  # coefficient of variation of packet gaps in the plateau
    reasons: tuple[str, ...]


def classify_mechanism(
    data_ts_ns: npt.NDArray[np.int64], data_retx: npt.NDArray[np.bool_], rtt_ts_ns: npt.NDArray[np.int64],
    rtt_ns: npt.NDArray[np.int64], plateau: tuple[int, int], *, rtt_floor_ns: int | None,
    transport: str, min_queue_ms: float = 20.0, min_queue_frac: float = 0.5,
    min_loss: float = 0.005, policing_cv: float = 1.0, shaping_cv: float = 0.6,
) -> MechanismEvidence:
    """Policing or shaping, from the plateau [start, end] (ns) of a rate-limited flow.

    ``data_ts_ns``/``data_retx``: server->client payload packets and whether each was a
    retransmission; ``rtt_*``: path-RTT samples (vantage-corrected, Karn-clean). A queue counts
    when the plateau's standing RTT (:func:`rtt_level`) exceeds the floor by ``min_queue_ms``
    and by ``min_queue_frac`` of the floor. A queue means shaping even with losses (a shaper's
    queue overflows under bursts; a policer never delays); a capped rate on a flat RTT means
    policing.
    """
    lo, hi = plateau
    in_p = (data_ts_ns >= lo) & (data_ts_ns <= hi)
    n = int(in_p.sum())
    reasons: list[str] = []
    loss = float(data_retx[in_p].sum()) / n if (n and transport == "tcp") else float("nan")
    gaps = np.diff(data_ts_ns[in_p]).astype(np.float64)
    cv = float(gaps.std() / gaps.mean()) if gaps.size >= 8 and gaps.mean() > 0 else float("nan")
    floor = float(rtt_floor_ns) if rtt_floor_ns and rtt_floor_ns > 0 else (
        float(rtt_ns.min()) if rtt_ns.size else float("nan"))
    # a shaper's queue takes a while to fill: judge the standing RTT after the first quarter
    plat = rtt_level(rtt_ts_ns, rtt_ns, (lo + (hi - lo) // 4, hi))
    queue = plat - floor if np.isfinite(plat) and np.isfinite(floor) else float("nan")
    queueing = np.isfinite(queue) and queue / 1e6 >= min_queue_ms and queue >= min_queue_frac * floor
    lossy = np.isfinite(loss) and loss >= min_loss
    if queueing:
        mech = MECH_SHAPING
        reasons.append("rtt_rises_by_queueing_delay")
    elif np.isfinite(queue):
        # a rate cap without a queue: the excess was dropped, not delayed (Flach et al.)
        mech = MECH_POLICING
        reasons.append("losses_with_flat_rtt" if lossy else "rate_cap_with_flat_rtt")
    elif lossy or (np.isfinite(cv) and cv >= policing_cv):
        # no RTT in the plateau (e.g. QUIC without spin bit): losses or arrivals alone
        mech = MECH_POLICING
        reasons.append("bursty_arrivals_no_rtt" if not lossy else "losses_no_rtt")
    elif np.isfinite(cv) and cv <= shaping_cv:
        mech = MECH_SHAPING
        reasons.append("paced_arrivals_no_rtt")
    else:
        mech = MECH_UNKNOWN
        reasons.append("no_rtt_samples")
    return MechanismEvidence(mech, loss, floor / 1e6, plat / 1e6, queue / 1e6, cv, tuple(reasons))


@dataclass(frozen=True)
class StallEvidence:
    """A transfer that froze: payload stopped after ``bytes_before`` and never resumed."""

    stalled: bool
    bytes_before: int
    silence_s: float


def detect_stall(data_ts_ns: npt.NDArray[np.int64], good_bytes: npt.NDArray[np.int64], *,
                 flow_end_ns: int, server_fin: bool, min_silence_s: float = 2.0,
                 max_bytes: int = 256 * 1024, rtt_ns: int | None = None) -> StallEvidence:
    """Did the server->client data stop mid-transfer and the flow linger without it?

    A stall (Russian DPI 2025: ~16-20 KB then nothing) looks like: little payload delivered,
    then silence of at least ``min_silence_s`` (and 20 RTTs) until the flow ended (client
    reset/close or capture end) with no FIN from the server. A server that finished its response
    sends a FIN or keeps the connection idle after a *complete* response; the second case is
    why a stall also needs the controls to have delivered much more (checked by the caller).
    """
    m = good_bytes > 0
    nbytes = int(good_bytes[m].sum())
    if not m.any():
        return StallEvidence(False, 0, 0.0)
    last = int(data_ts_ns[m][-1])
    silence = (flow_end_ns - last) / 1e9
    need = max(min_silence_s, 20 * (rtt_ns or 0) / 1e9)
    stalled = (not server_fin) and nbytes <= max_bytes and silence >= need
    return StallEvidence(stalled, nbytes, float(silence))


def app_limited_fraction(data_ts_ns: npt.NDArray[np.int64], data_retx: npt.NDArray[np.bool_], *,
                         min_gap_ns: int) -> float:
    """Fraction of the transfer spent in idle gaps ended by *new* data (the sender had nothing
    to send), as opposed to gaps ended by a retransmission (a loss recovery, e.g. under a
    policer)."""
    if data_ts_ns.size < 3:
        return 0.0
    gaps = np.diff(data_ts_ns)
    idle = (gaps >= min_gap_ns) & ~data_retx[1:]
    span = int(data_ts_ns[-1] - data_ts_ns[0])
    return float(gaps[idle].sum() / span) if span > 0 else 0.0
