"""Timing series of flows: goodput per time bin and RTT samples.

Produced by the flow stage (``flows.py``) in the same streaming pass; consumed by statistics
and verdicts. All times are int64 ns; byte counts are bytes; rates are bit/s.

Goodput counts *unique* transport payload bytes: the advance of the highest sequence number
seen in a direction (retransmissions and duplicates excluded; a gap is counted when the
sequence jumps over it). For QUIC, whose packet numbers and payload are encrypted, goodput is
the UDP payload (retransmissions cannot be told apart at this layer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from ._kernels import SAMPLE_DATA_ACK, SAMPLE_DATA_ACK_AMBIGUOUS, SAMPLE_SPIN, SAMPLE_TS_ECHO

SAMPLE_KINDS = {SAMPLE_DATA_ACK: "data_ack", SAMPLE_TS_ECHO: "ts_echo", SAMPLE_SPIN: "spin",
                SAMPLE_DATA_ACK_AMBIGUOUS: "data_ack_ambiguous"}

#: where the capture was taken, relative to the flow's endpoints
VANTAGE_CLIENT = "client"
VANTAGE_SERVER = "server"
VANTAGE_MIDDLE = "middle"
VANTAGE_UNKNOWN = "unknown"


@dataclass(frozen=True)
class RttSamples:
    """RTT samples of one flow, in capture order.

    ``sender_is_client`` says whose data (or TSval) was timed: at a client-side capture the
    samples of client-sent data are full path RTTs, while those of server-sent data measure only
    the client's own ACK delay (and the reverse at a server-side capture).
    """

    ts_ns: npt.NDArray[np.int64]
    rtt_ns: npt.NDArray[np.int64]
    kind: npt.NDArray[np.int64]
    sender_is_client: npt.NDArray[np.bool_]

    def __len__(self) -> int:
        return int(self.ts_ns.size)

    def karn(self) -> RttSamples:
        """The samples Karn's rule allows (no retransmitted segment)."""
        m = self.kind != SAMPLE_DATA_ACK_AMBIGUOUS
        return RttSamples(self.ts_ns[m], self.rtt_ns[m], self.kind[m], self.sender_is_client[m])


@dataclass(frozen=True)
class GoodputSeries:
    """Per-bin byte counts of one direction of one flow.

    ``bin_index[k]`` is the bin number counted from the flow's first packet; bins with no
    packet are absent from the arrays (use :meth:`dense` for a gap-free series).
    """

    bin_ns: int
    bin_index: npt.NDArray[np.int64]
    goodput_bytes: npt.NDArray[np.int64]
    payload_bytes: npt.NDArray[np.int64]
    retransmissions: npt.NDArray[np.int64]
    packets: npt.NDArray[np.int64]

    def dense(self, first: int | None = None, last: int | None = None) -> npt.NDArray[np.int64]:
        """Goodput bytes for every bin from ``first`` to ``last`` (inclusive), zeros included."""
        if self.bin_index.size == 0:
            return np.zeros(0, dtype=np.int64)
        lo = int(self.bin_index[0]) if first is None else first
        hi = int(self.bin_index[-1]) if last is None else last
        out = np.zeros(max(hi - lo + 1, 0), dtype=np.int64)
        m = (self.bin_index >= lo) & (self.bin_index <= hi)
        out[self.bin_index[m] - lo] = self.goodput_bytes[m]
        return out

    def rate_bps(self) -> npt.NDArray[np.float64]:
        """Goodput of each dense bin in bit/s."""
        return self.dense().astype(np.float64) * 8e9 / self.bin_ns

    def cumulative(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """(bin end time in ns from the flow start, cumulative goodput bytes) over dense bins."""
        d = self.dense()
        if d.size == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        first = int(self.bin_index[0])
        t = (np.arange(d.size, dtype=np.int64) + first + 1) * self.bin_ns
        return t, np.cumsum(d)


@dataclass(frozen=True)
class TimingSeries:
    """Goodput bins and RTT samples for every flow of a :class:`~keepiton_throttle.flows.FlowTable`.

    Stored flat and sorted by flow; ``goodput(f, up=False)`` and ``rtt(f)`` slice out one flow.
    """

    bin_ns: int
    #: bins: rows flow, up (1: client->server), bin, goodput, payload, retransmissions, packets
    bins: npt.NDArray[np.int64]
    #: rtt samples: rows flow, ts_ns, rtt_ns, kind, sender_is_client
    rtts: npt.NDArray[np.int64]
    _bin_starts: npt.NDArray[np.int64]
    _rtt_starts: npt.NDArray[np.int64]

    @classmethod
    def build(cls, bin_ns: int, bins: npt.NDArray[np.int64], rtts: npt.NDArray[np.int64],
              n_flows: int, *, rtts_sorted: bool = False) -> TimingSeries:
        if bins.shape[1]:
            order = np.lexsort((bins[2], bins[1], bins[0]))
            bins = bins[:, order]
            # when capture timestamps step back (a clock step, merged interfaces) the kernel
            # emits a bin twice: add the parts, so that each (flow, dir, bin) appears once
            first = np.ones(bins.shape[1], dtype=bool)
            first[1:] = (bins[:3, 1:] != bins[:3, :-1]).any(axis=0)
            if not first.all():
                starts = np.flatnonzero(first)
                bins = np.vstack([bins[:3, starts], np.add.reduceat(bins[3:], starts, axis=1)])
            bins = np.ascontiguousarray(bins)
        if rtts.shape[1] and not rtts_sorted:
            order = np.lexsort((rtts[1], rtts[0]))
            rtts = np.ascontiguousarray(rtts[:, order])
        flows = np.arange(n_flows + 1)
        return cls(
            bin_ns=bin_ns,
            bins=bins,
            rtts=rtts,
            _bin_starts=np.searchsorted(bins[0], flows).astype(np.int64),
            _rtt_starts=np.searchsorted(rtts[0], flows).astype(np.int64),
        )

    def goodput(self, flow: int, *, up: bool = False) -> GoodputSeries:
        """The goodput series of ``flow`` from server to client (``up=False``) or the reverse."""
        b = self.bins[:, self._bin_starts[flow] : self._bin_starts[flow + 1]]
        m = b[1] == (1 if up else 0)
        return GoodputSeries(self.bin_ns, b[2][m], b[3][m], b[4][m], b[5][m], b[6][m])

    def rtt(self, flow: int) -> RttSamples:
        r = self.rtts[:, self._rtt_starts[flow] : self._rtt_starts[flow + 1]]
        return RttSamples(r[1], r[2], r[3], r[4].astype(bool))


#: vantage codes of :class:`PathRtts` (index into this tuple)
VANTAGES = (VANTAGE_UNKNOWN, VANTAGE_CLIENT, VANTAGE_SERVER, VANTAGE_MIDDLE)
_V_UNKNOWN, _V_CLIENT, _V_SERVER, _V_MIDDLE = range(4)


def handshake_halves(cols: dict[str, npt.NDArray[np.int64]]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Per flow of a flow table's ``cols``: (SYN -> SYN/ACK, SYN/ACK -> third ACK) in ns, -1
    where either end was not seen."""
    syn, synack, hsack = cols["syn_ts"], cols["synack_ts"], cols["hsack_ts"]
    s2a = np.where((synack >= 0) & (syn >= 0), synack - syn, -1)
    a2a = np.where((hsack >= 0) & (synack >= 0), hsack - synack, -1)
    return s2a.astype(np.int64), a2a.astype(np.int64)


def _sorted_within(group: npt.NDArray[np.int64], values: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """``values`` (int64 >= 0) sorted within their ``group`` (>= 0), groups in ascending order:
    one sort of a combined key when it fits in int64 (3-8x faster than a lexsort)."""
    if values.size == 0:
        return values.astype(np.int64)
    span = int(values.max()) + 1
    if int(group.max()) < (np.iinfo(np.int64).max - span) // span:
        key = np.sort(group.astype(np.int64) * span + values)
        return key - np.sort(group).astype(np.int64) * span
    return values[np.lexsort((values, group))]


def _segment_medians(group: npt.NDArray[np.int64], values: npt.NDArray[np.int64],
                     n_groups: int) -> npt.NDArray[np.float64]:
    """``np.median`` of ``values`` in each group 0..n_groups-1 (NaN for an empty group)."""
    out = np.full(n_groups, np.nan)
    if values.size == 0:
        return out
    v = _sorted_within(group, values).astype(np.float64)
    counts = np.bincount(group, minlength=n_groups)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    has = counts > 0
    lo = starts[has] + (counts[has] - 1) // 2
    hi = starts[has] + counts[has] // 2
    out[has] = (v[lo] + v[hi]) / 2
    return out


def segment_percentile(sorted_values: npt.NDArray[np.float64], starts: npt.NDArray[np.int64],
                       counts: npt.NDArray[np.int64], q: float) -> npt.NDArray[np.float64]:
    """``np.percentile(v, q)`` (its default linear method, same arithmetic) of every segment
    ``sorted_values[starts[k] : starts[k] + counts[k]]`` (each sorted); NaN where empty."""
    out = np.full(counts.size, np.nan)
    has = counts > 0
    n = counts[has]
    virtual = (n - 1).astype(np.float64) * (q / 100)
    prev = np.floor(virtual)
    gamma = virtual - prev
    prev_i = np.minimum(prev.astype(np.int64), n - 1)
    next_i = np.minimum(prev_i + 1, n - 1)
    a = sorted_values[starts[has] + prev_i]
    b = sorted_values[starts[has] + next_i]
    diff = b - a
    out[has] = np.where(gamma >= 0.5, b - diff * (1 - gamma), a + diff * gamma)
    return out


@dataclass(frozen=True)
class PathRtts:
    """Whole-path RTT samples of every flow, valid at each flow's detected vantage point.

    Vantage: with a TCP handshake, at the client SYN -> SYN/ACK spans the whole path and
    SYN/ACK -> ACK is local, at the server the reverse, in the middle both are partial;
    without one, the side whose own data/TSvals give the larger median sample is the capture
    side. A factor of 4 separates "one half is negligible" from "middle". Path samples (after
    Karn's rule): at the client, those timed on client-sent data/TSvals plus spin-bit periods
    (a full RTT anywhere); at the server, server-sent ones; in the middle, each half-sample
    plus the median of the other half; unknown, all. ``tests/naive.py`` states these rules
    per flow and ``tests/test_path_rtts.py`` holds this equal to it, bit for bit.
    """

    #: per flow, index into :data:`VANTAGES`
    vantage: npt.NDArray[np.int8]
    #: per flow, SYN -> SYN/ACK and SYN/ACK -> third ACK in ns, -1 when not seen
    syn_to_synack_ns: npt.NDArray[np.int64]
    synack_to_ack_ns: npt.NDArray[np.int64]
    #: samples sorted by flow, in capture order within a flow (ns)
    ts_ns: npt.NDArray[np.int64]
    rtt_ns: npt.NDArray[np.int64]
    #: flow f's samples are [starts[f], starts[f + 1])
    starts: npt.NDArray[np.int64]
    _summary: dict[str, npt.NDArray[Any]] = field(default_factory=dict, repr=False, compare=False)

    def vantage_of(self, flow: int) -> str:
        return VANTAGES[int(self.vantage[flow])]

    def of(self, flow: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """(ts_ns, rtt_ns) of ``flow``, in capture order."""
        a, b = int(self.starts[flow]), int(self.starts[flow + 1])
        return self.ts_ns[a:b], self.rtt_ns[a:b]

    def summary(self) -> dict[str, npt.NDArray[Any]]:
        """Per flow, as arrays: ``rtt_ms_p50``, ``rtt_ms_p95`` (``np.percentile``'s linear
        method), ``rtt_ms_min`` (NaN without samples) and ``rtt_samples``. Computed once."""
        if self._summary:
            return self._summary
        counts = np.diff(self.starts)
        flow = np.repeat(np.arange(counts.size, dtype=np.int64), counts)
        v = _sorted_within(flow, self.rtt_ns).astype(np.float64) / 1e6
        starts = self.starts[:-1]
        mins = np.full(counts.size, np.nan)
        mins[counts > 0] = v[starts[counts > 0]]
        self._summary.update(rtt_ms_p50=segment_percentile(v, starts, counts, 50),
                             rtt_ms_p95=segment_percentile(v, starts, counts, 95),
                             rtt_ms_min=mins, rtt_samples=counts)
        return self._summary


def path_rtts(cols: dict[str, npt.NDArray[np.int64]], series: TimingSeries) -> PathRtts:
    """:class:`PathRtts` of every flow of a flow table (its ``cols``) and its timing series."""
    nf = int(cols["syn_ts"].size)
    r = series.rtts
    flow, rtt, kind, client = r[0], r[2], r[3], r[4].astype(bool)
    # vantage: from the handshake where it was seen, else from the two sides' median samples
    s2a, a2a = handshake_halves(cols)
    vantage = np.full(nf, _V_UNKNOWN, dtype=np.int8)
    ok = (kind == SAMPLE_DATA_ACK) | (kind == SAMPLE_TS_ECHO)
    med = _segment_medians(flow[ok] * 2 + client[ok], rtt[ok], 2 * nf).reshape(nf, 2)
    ms, mc = med[:, 0], med[:, 1]  # median of server-sent, client-sent samples
    both = ~np.isnan(mc) & ~np.isnan(ms)
    vantage[both] = np.where(mc[both] > 4 * ms[both], _V_CLIENT,
                             np.where(ms[both] > 4 * mc[both], _V_SERVER, _V_MIDDLE))
    hs = (s2a >= 0) & (a2a >= 0)
    vantage[hs] = np.where(s2a[hs] > 4 * a2a[hs], _V_CLIENT,
                           np.where(a2a[hs] > 4 * s2a[hs], _V_SERVER, _V_MIDDLE))
    # path samples (Karn's rule first)
    k = kind != SAMPLE_DATA_ACK_AMBIGUOUS
    flow, ts, rtt, kind, client = flow[k], r[1][k], rtt[k], kind[k], client[k]
    v = vantage[flow]
    spin = kind == SAMPLE_SPIN
    keep = ((v == _V_UNKNOWN) | (v == _V_MIDDLE) | ((v == _V_CLIENT) & (client | spin))
            | ((v == _V_SERVER) & (~client | spin)))
    # middle: each half-sample plus the median of the other half (the same samples as `ok`
    # above once Karn's rule has removed the ambiguous ones), where the flow has both halves
    mid = (v == _V_MIDDLE) & ~spin & both[flow]
    if mid.any():
        other = np.where(client[mid], ms[flow[mid]], mc[flow[mid]])
        rtt = rtt.copy()
        rtt[mid] += other.astype(np.int64)
    flow, ts, rtt = flow[keep], ts[keep], rtt[keep]
    starts = np.searchsorted(flow, np.arange(nf + 1)).astype(np.int64)
    return PathRtts(vantage=vantage, syn_to_synack_ns=s2a, synack_to_ack_ns=a2a,
                    ts_ns=np.ascontiguousarray(ts), rtt_ns=np.ascontiguousarray(rtt), starts=starts)


@dataclass(frozen=True)
class FlowTrace:
    """Per-packet record of one flow (both directions), for characterisation.

    ``up``: True for client -> server packets; ``payload``: transport payload bytes on the wire;
    ``good``: unique payload bytes the packet delivered; ``retx``: a retransmission; ``wire``:
    the frame's length on the wire (what a policer or shaper meters, retransmissions included).
    """

    ts_ns: npt.NDArray[np.int64]
    up: npt.NDArray[np.bool_]
    payload: npt.NDArray[np.int64]
    good: npt.NDArray[np.int64]
    retx: npt.NDArray[np.bool_]
    wire: npt.NDArray[np.int64]

    def _select(self, m: npt.NDArray[np.bool_]) -> FlowTrace:
        return FlowTrace(self.ts_ns[m], self.up[m], self.payload[m], self.good[m], self.retx[m],
                         self.wire[m])

    def direction(self, *, up: bool) -> FlowTrace:
        return self._select(self.up == up)

    def data(self) -> FlowTrace:
        """Only packets that carried payload."""
        return self._select(self.payload > 0)
