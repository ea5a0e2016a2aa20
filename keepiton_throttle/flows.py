"""Flows: packets grouped into TCP connections and UDP flows, with roles, SNI and metrics.

``FlowBuilder`` consumes packet-table chunks in capture order and keeps per-flow state in
Numba-managed arrays (see ``_kernels.flow_pass``), so memory grows with the number of flows,
not packets. ``finish()`` returns a :class:`FlowTable` (one row per flow, oriented client ->
server) and a :class:`~keepiton_throttle.series.TimingSeries`.

Rules (docs/METHODOLOGY.md, section 2, says why):

* a flow is a bidirectional 5-tuple; a TCP SYN on a tuple whose connection closed (FIN both
  ways, or RST), or with another initial sequence number, starts a new flow (port reuse);
* the client is the sender of a SYN (or the receiver of a SYN/ACK), for QUIC the sender of
  long-header Initial packets, else the side with the higher port (the lower, well-known port
  is the service), else the sender of the first packet;
* SNI and ALPN come from the client's first payload bytes: the TLS ClientHello reassembled
  from up to ``snip_max`` client segments (any order, retransmissions, several records), or
  the decrypted QUIC Initial packets (``protocols.quic``).
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from . import _kernels as K
from .packets import format_addresses
from .series import VANTAGES, PathRtts, TimingSeries, path_rtts
from .sources.capture import (
    SUPPORTED_LINKTYPES,
    CaptureReader,
    Chunk,
    ReadStats,
    chunks_of,
    linktype_name,
)

#: default goodput bin width, ns (100 ms: fine enough for a 130 kbit/s policer's plateau,
#: coarse enough that a bin of a 1 Mbit/s flow holds ~8 packets)
DEFAULT_BIN_NS = 100_000_000
#: a segment below the highest sequence sent that arrives within this time of the highest is
#: "out of order" rather than a retransmission (Wireshark's rule: 3 ms, or the RTT if smaller)
DEFAULT_OOO_NS = 3_000_000
#: client payload packets kept per flow and direction for ClientHello / Initial parsing
DEFAULT_SNIP_MAX = 8
#: RTT samples kept in full per flow; beyond, every k-th (see ``_kernels._emit_rtt``)
DEFAULT_MAX_RTT_SAMPLES = 10_000
#: RTT samples kept in full per capture; beyond, every k-th (about 40 MB for the budget)
DEFAULT_RTT_BUDGET = 1_000_000
#: outstanding data segments remembered per direction for data -> ACK RTT samples; fewer than
#: a window's worth biases the samples towards small-window phases (64: ~2 KiB per open TCP
#: connection: rings are pooled, see ``_kernels._ring_take``)
DEFAULT_RING = 64

END_OPEN = "open"
END_FIN = "fin"
END_RST = "rst"
END_HANDSHAKE_FAILED = "handshake_failed"

ROLE_SOURCES = {K.ROLE_FIRST: "first_packet", K.ROLE_PORT: "port", K.ROLE_QUIC: "quic_initial",
                K.ROLE_SYNACK: "syn_ack", K.ROLE_SYN: "syn"}


@dataclass(frozen=True)
class HandshakeFacts:
    """What the client's first bytes say (None where absent)."""

    sni: str | None = None
    alpn: tuple[str, ...] = ()
    tls_versions: tuple[int, ...] = ()
    ech: bool = False
    quic_version: int | None = None
    source: str = ""  # "tls", "quic", or "" when no ClientHello was found


@dataclass(frozen=True)
class FlowTable:
    """One row per flow, oriented client -> server ("up") and server -> client ("down").

    Numeric columns are NumPy arrays in :attr:`cols` (read them as attributes); handshake facts
    are in :attr:`hello`. Times are ns since the epoch, durations ns, sizes bytes.
    """

    cols: dict[str, npt.NDArray[Any]] = field(repr=False)
    hello: list[HandshakeFacts] = field(repr=False)
    n: int = 0

    def __getattr__(self, name: str) -> npt.NDArray[Any]:
        try:
            return self.cols[name]
        except KeyError:
            raise AttributeError(name) from None

    def __len__(self) -> int:
        return self.n

    def transport(self, i: int) -> str:
        return self.transports([i])[0]

    def client(self, i: int) -> str:
        return self.endpoints([i], client=True)[0]

    def server(self, i: int) -> str:
        return self.endpoints([i], client=False)[0]

    def goodput_bps(self, i: int) -> float | None:
        """Goodput of the flow's main direction, bit/s (see :meth:`goodputs_bps`)."""
        v = float(self.goodputs_bps([i])[0])
        return None if v != v else v

    def end_state(self, i: int) -> str:
        return self.end_states([i])[0]

    # The vectorised forms: one value per flow of ``rows`` (flow indices), in that order.
    def _rows(self, rows: Sequence[int] | npt.NDArray[np.int64] | None) -> npt.NDArray[np.int64]:
        return np.arange(self.n) if rows is None else np.asarray(rows, dtype=np.int64).reshape(-1)

    def transports(self, rows: Sequence[int] | npt.NDArray[np.int64] | None = None) -> list[str]:
        """``tcp``, ``quic`` (a QUIC Initial was read) or ``udp``."""
        sel = self._rows(rows)
        tcp = (self.cols["proto"][sel] == 6).tolist()
        return ["tcp" if t else ("quic" if self.hello[i].quic_version is not None else "udp")
                for t, i in zip(tcp, sel.tolist(), strict=True)]

    def endpoints(self, rows: Sequence[int] | npt.NDArray[np.int64] | None = None, *,
                  client: bool) -> list[str]:
        """``addr:port`` (IPv6: ``[addr]:port``) of the client or the server."""
        sel = self._rows(rows)
        side = "client" if client else "server"
        c = self.cols
        v6 = (c["ip_version"][sel] == 6).tolist()
        addrs = format_addresses(c[f"{side}_hi"][sel], c[f"{side}_lo"][sel], c["ip_version"][sel])
        ports = c[f"{side}_port"][sel].tolist()
        return [f"[{a}]:{p}" if six else f"{a}:{p}" for a, p, six in zip(addrs, ports, v6, strict=True)]

    def goodputs_bps(self, rows: Sequence[int] | npt.NDArray[np.int64] | None = None) -> npt.NDArray[np.float64]:
        """Goodput of each flow's main direction (the one that carried more unique bytes),
        bit/s; NaN where it is undefined (no unique bytes, or no time between first and last).

        Duration: from the first payload packet of the request side (if it spoke first) to the
        last payload packet of the main direction, as seen at the capture point.
        """
        sel = self._rows(rows)
        c = self.cols
        down = c["goodput_down"][sel] >= c["goodput_up"][sel]
        nbytes = np.where(down, c["goodput_down"][sel], c["goodput_up"][sel])
        end = np.where(down, c["last_data_ts_down"][sel], c["last_data_ts_up"][sel])
        start = np.where(down, c["first_data_ts_down"][sel], c["first_data_ts_up"][sel])
        other = np.where(down, c["first_data_ts_up"][sel], c["first_data_ts_down"][sel])
        start = np.where((other >= 0) & (other < start), other, start)
        ok = (nbytes != 0) & (end > start) & (start >= 0)
        out = np.full(sel.size, np.nan)
        out[ok] = nbytes[ok] * 8e9 / (end[ok] - start[ok])
        return out

    def end_states(self, rows: Sequence[int] | npt.NDArray[np.int64] | None = None) -> list[str]:
        """How each flow ended: ``fin``, ``rst``, ``handshake_failed`` or ``open`` (UDP: always)."""
        sel = self._rows(rows)
        c = self.cols
        tcp = c["proto"][sel] == 6
        rst = (c["rst_up"][sel] != 0) | (c["rst_down"][sel] != 0)
        answered = (c["synack_ts"][sel] >= 0) | (c["data_packets_down"][sel] != 0)
        unanswered_syn = (c["syn_ts"][sel] >= 0) & (c["synack_ts"][sel] < 0)
        fin = (c["fin_up"][sel] != 0) | (c["fin_down"][sel] != 0)
        state = np.select(
            [~tcp, rst & answered, rst, unanswered_syn, fin],
            [0, 2, 3, 3, 1], default=0)
        names = (END_OPEN, END_FIN, END_RST, END_HANDSHAKE_FAILED)
        return [names[k] for k in state.tolist()]

    def matching(self, pattern: str) -> npt.NDArray[np.int64]:
        """Indices of flows whose SNI matches a shell-style pattern (``*.googlevideo.com``)."""
        pat = pattern.lower()
        return np.array([i for i, h in enumerate(self.hello)
                         if h.sni is not None and fnmatch.fnmatchcase(h.sni.lower(), pat)],
                        dtype=np.int64)


@dataclass(frozen=True)
class RowFlows:
    """Per-row results of the flow pass for one chunk.

    ``flow``: flow id (-1: not part of a TCP/UDP flow); ``dir``: 0 if the row went from the
    flow's endpoint A (the first packet's source) to B; ``good``: unique payload bytes it
    delivered; ``cls``: 0 new data / ACK, 1 retransmission, 2 out of order.
    """

    flow: npt.NDArray[np.int64]
    dir: npt.NDArray[np.uint8]
    good: npt.NDArray[np.int64]
    cls: npt.NDArray[np.uint8]


@dataclass
class _Snippets:
    """Payload bytes kept for handshake parsing: per (flow, dir) a list of (stream offset, bytes)."""

    parts: dict[tuple[int, int], list[tuple[int, bytes]]] = field(default_factory=dict)

    def add(self, flow: int, d: int, soff: int, data: bytes) -> None:
        self.parts.setdefault((flow, d), []).append((soff, data))


def _whole_block(v: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """The writable C-contiguous block that a chunk's column block ``v`` (``block[:, :n]``) was
    cut from: the kernel reads its first ``n`` columns in place. ``np.ascontiguousarray(v)``
    copied every chunk (~20 ns a packet); this also keeps one compiled signature (writable,
    C order) whatever made the table.
    """
    if v.flags.c_contiguous and v.flags.writeable:
        return v
    b = v.base
    if (isinstance(b, np.ndarray) and b.ndim == 2 and b.flags.c_contiguous and b.flags.writeable
            and b.dtype == v.dtype and b.shape[0] == v.shape[0]
            and b.ctypes.data == v.ctypes.data):
        return b
    return np.array(v, order="C")


class FlowBuilder:
    """Streaming flow analysis: feed chunks in capture order with :meth:`add`, then :meth:`finish`."""

    def __init__(self, *, bin_ns: int = DEFAULT_BIN_NS, ooo_ns: int = DEFAULT_OOO_NS,
                 snip_max: int = DEFAULT_SNIP_MAX, ring: int = DEFAULT_RING,
                 initial_flows: int = 1024, max_rtt_samples: int = DEFAULT_MAX_RTT_SAMPLES,
                 rtt_budget: int = DEFAULT_RTT_BUDGET) -> None:
        if bin_ns <= 0:
            raise ValueError(f"bin_ns must be positive (ns), got {bin_ns}")
        if ring < 1 or snip_max < 0:
            raise ValueError("ring must be >= 1 and snip_max >= 0")
        self.bin_ns = int(bin_ns)
        self.ooo_ns = int(ooo_ns)
        self.snip_max = int(snip_max)
        self.ring = int(ring)
        cap = max(int(initial_flows), 16)
        self._S = np.zeros((cap, K.N_FIELDS), dtype=np.int64)  # flow-major, as _A
        self._A = np.zeros((cap, K.N_A), dtype=np.uint64)
        self._H = np.zeros(4 * cap, dtype=np.int64)
        # rings of outstanding segments, a pool of rows handed out to TCP flows while they need
        # one (see _kernels._ring_take): ``_pool`` = [handed out, given back, their rows...]
        rings = max(cap // 4, 16)
        self._R = np.zeros((rings, 4 * self.ring), dtype=np.int64)
        self._pool = np.zeros(rings + 2, dtype=np.int64)
        self.n_flows = 0
        # RTT samples, kept compact until finish(): (flow int32, ts, rtt, kind int8, dir int8,
        # rank in flow int32), thinned in the kernel (see _kernels._emit_rtt)
        self._rtt_parts: list[tuple[npt.NDArray[Any], ...]] = []
        if max_rtt_samples < 1 or rtt_budget < 1:
            raise ValueError(f"max_rtt_samples and rtt_budget must be >= 1, got {max_rtt_samples}, "
                             f"{rtt_budget}")
        self.max_rtt_samples = int(max_rtt_samples)
        self.rtt_budget = int(rtt_budget)
        self._rtt_lim = np.array([self.max_rtt_samples, self.rtt_budget, 0], dtype=np.int64)
        # per-chunk scratch, reused (fresh arrays of this size cost a page fault per 4 KiB)
        self._scratch: dict[str, npt.NDArray[Any]] = {}
        self._bin_parts: list[npt.NDArray[np.int64]] = []
        self._snips = _Snippets()
        self.packets = 0
        self._finished = False

    def _grow_rings(self) -> None:
        rings = self._R.shape[0] * 2
        R = np.zeros((rings, self._R.shape[1]), dtype=np.int64)
        R[: self._R.shape[0]] = self._R
        pool = np.zeros(rings + 2, dtype=np.int64)
        used = 2 + int(self._pool[1])
        pool[:used] = self._pool[:used]
        self._R, self._pool = R, pool

    def _grow(self) -> None:
        cap = self._S.shape[0] * 2
        for name in ("_S", "_A"):
            old = getattr(self, name)
            new = np.zeros((cap, old.shape[1]), dtype=old.dtype)
            new[: old.shape[0]] = old
            setattr(self, name, new)
        self._H = np.zeros(4 * cap, dtype=np.int64)
        K.rehash(self._H, self._A, self._S, self.n_flows)

    def add(self, chunk: Chunk) -> RowFlows:
        """Analyse one chunk. Returns what the pass said about each of its rows."""
        if self._finished:
            raise RuntimeError("FlowBuilder.add after finish")
        t = chunk.table
        n = t.n
        b = t.blocks
        out_flow = np.empty(n, dtype=np.int64)
        out_dir = np.empty(n, dtype=np.uint8)
        out_good = np.empty(n, dtype=np.int64)
        out_class = np.empty(n, dtype=np.uint8)
        rtt, bins, snips = self._scratch_for(n)
        row, nr, nb, ns = 0, 0, 0, 0
        i64, u64, u32, u16, u8 = (_whole_block(b[k]) for k in ("i64", "u64", "u32", "u16", "u8"))
        while True:
            row, self.n_flows, nr, nb, ns, stop = K.flow_pass(
                i64, u64, u32, u16, u8, n, row,
                self.bin_ns, self.ooo_ns, self.snip_max,
                self._H, self._A, self._S, self._R, self._pool, self.n_flows, self.ring,
                out_flow, out_dir, out_good, out_class, rtt, bins, snips, nr, nb, ns, self._rtt_lim)
            if stop == K.STOP_DONE:
                break
            if stop == K.STOP_RINGS_FULL:
                self._grow_rings()
            else:
                self._grow()
        self.packets += n
        if nr:
            k = rtt[:, :nr]
            self._rtt_parts.append((k[0].astype(np.int32), k[1].copy(), k[2].copy(),
                                    k[3].astype(np.int8), k[4].astype(np.int8), k[5].astype(np.int32)))
        if nb:
            self._bin_parts.append(bins[:, :nb].copy())
        if ns:
            sel = snips[0, :ns]
            lo = t.payload_off[sel] - chunk.data_offset
            hi = lo + t.payload_caplen[sel]
            data = memoryview(chunk.data.data)
            keep = self._snips.add
            for fl, d, soff, a, z in zip(out_flow[sel].tolist(), out_dir[sel].tolist(),
                                         snips[1, :ns].tolist(), lo.tolist(), hi.tolist(), strict=True):
                keep(fl, d, soff, bytes(data[a:z]))
        return RowFlows(out_flow, out_dir, out_good, out_class)

    def _scratch_for(self, n: int) -> tuple[npt.NDArray[Any], ...]:
        """The kernel's per-chunk outputs that do not leave ``add`` (RTT samples, bins, rows
        to keep payload of), reused, for at least ``n`` rows."""
        sc = self._scratch
        if not sc or sc["snips"].shape[1] < n:
            m = max(n, 1024)
            sc["rtt"] = np.empty((6, 2 * m + 16), dtype=np.int64)
            sc["bins"] = np.empty((7, m + 16), dtype=np.int64)
            sc["snips"] = np.empty((2, m), dtype=np.int64)
        return sc["rtt"], sc["bins"], sc["snips"]

    def _sorted_rtts(self, client: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """All RTT samples as one (5, n) int64 block sorted by (flow, ts), oriented (row 4:
        1 when the client sent the timed data). Each sample goes straight to its place (its
        flow's start + its rank in the flow, from the kernel): capture order within a flow is
        time order unless the capture's clock stepped back, which is checked, and then sorted.
        The compact parts (30 bytes a sample) are concatenated and dropped, then placed in one
        pass (``_kernels.place_rtts``): the peak is under twice the final block."""
        parts, self._rtt_parts = self._rtt_parts, []
        if not parts:
            return np.zeros((5, 0), dtype=np.int64)
        cols = [np.concatenate([p[i] for p in parts]) for i in range(6)]
        del parts
        counts = np.bincount(cols[0], minlength=self.n_flows)
        starts = np.zeros(self.n_flows, dtype=np.int64)
        np.cumsum(counts[:-1], out=starts[1:])
        out = np.empty((5, cols[0].size), dtype=np.int64)
        K.place_rtts(cols[0], cols[5], cols[1], cols[2], cols[3], cols[4], starts,
                     np.ascontiguousarray(client, dtype=np.int64), out)
        del cols
        same = out[0, 1:] == out[0, :-1]
        if np.any(same & (out[1, 1:] < out[1, :-1])):
            out = np.ascontiguousarray(out[:, np.lexsort((out[1], out[0]))])
        return out

    def finish(self) -> tuple[FlowTable, TimingSeries]:
        """Close open intervals and bins; build the flow table and its timing series."""
        self._finished = True
        nf = self.n_flows
        S, A = self._S[:nf].T, self._A[:nf].T  # field-major views for _orient and _handshakes
        tail = np.empty((7, 2 * nf + 1), dtype=np.int64)
        nb = K.flush_bins(self._S, nf, tail)
        bins = np.concatenate(self._bin_parts + [tail[:, :nb]], axis=1) if (self._bin_parts or nb) else np.zeros((7, 0), np.int64)
        client = S[K.F_CLIENT]  # 0: A is the client
        # orient bins and samples client -> server
        if bins.shape[1]:
            bins = bins.copy()
            bins[1] = (bins[1] == client[bins[0]]).astype(np.int64)  # 1: up
        rtts = self._sorted_rtts(client)
        series = TimingSeries.build(self.bin_ns, bins, rtts, nf, rtts_sorted=True)
        cols = _orient(S, A, client)
        hello = _handshakes(self._snips, S, client, nf)
        table = FlowTable(cols=cols, hello=hello, n=nf)
        return table, series


def _orient(S: npt.NDArray[np.int64], A: npt.NDArray[np.uint64],
            client: npt.NDArray[np.int64]) -> dict[str, npt.NDArray[Any]]:
    a_is_client = client == 0
    up = client  # direction index of client -> server
    down = 1 - client
    idx = np.arange(S.shape[1])

    def per_dir(base: int, d: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        return S[base + d, idx]

    cols: dict[str, npt.NDArray[Any]] = {
        "proto": S[K.F_PROTO].astype(np.uint8),
        "ip_version": S[K.F_IPV].astype(np.uint8),
        "encap": S[K.F_ENCAP].astype(np.uint8),
        "client_hi": np.where(a_is_client, A[0], A[2]),
        "client_lo": np.where(a_is_client, A[1], A[3]),
        "server_hi": np.where(a_is_client, A[2], A[0]),
        "server_lo": np.where(a_is_client, A[3], A[1]),
        "client_port": np.where(a_is_client, S[K.F_PORT_A], S[K.F_PORT_B]),
        "server_port": np.where(a_is_client, S[K.F_PORT_B], S[K.F_PORT_A]),
        "role_source": S[K.F_ROLE_SRC].astype(np.uint8),
        "client_dir": client.copy(),  # A/B direction index of client -> server packets
        "first_ts": S[K.F_FIRST_TS].copy(),
        "last_ts": S[K.F_LAST_TS].copy(),
        "syn_ts": S[K.F_SYN_TS].copy(),
        "synack_ts": S[K.F_SYNACK_TS].copy(),
        "hsack_ts": S[K.F_HSACK_TS].copy(),
        "quic_client_initial_ts": S[K.F_QUIC_CI_TS].copy(),
        "quic_server_reply_ts": S[K.F_QUIC_SR_TS].copy(),
        "quic_version": S[K.F_QUIC_VERSION].copy(),
        "prev_flow": S[K.F_PREV].copy(),
    }
    for name, base in (
        ("packets", K.D_PKTS), ("bytes", K.D_WIRE), ("payload", K.D_PAYLOAD),
        ("goodput", K.D_UNIQUE), ("data_packets", K.D_DATA_PKTS),
        ("retransmissions", K.D_RETX), ("out_of_order", K.D_OOO), ("dup_acks", K.D_DUPACK),
        ("sack_loss_events", K.D_SACK_EVENTS), ("zero_window_ns", K.D_ZW_NS),
        ("rwnd_limited_ns", K.D_RWL_NS), ("first_data_ts", K.D_FIRST_DATA_TS),
        ("last_data_ts", K.D_LAST_DATA_TS), ("fin", K.D_FIN), ("rst", K.D_RST),
        ("mss", K.D_MSS), ("wscale", K.D_WS), ("window_scale_unknown", K.D_WINLIM_UNKNOWN),
        ("spin_flips", K.D_SPIN_FLIPS),
    ):
        cols[f"{name}_up"] = per_dir(base, up)
        cols[f"{name}_down"] = per_dir(base, down)
    return cols


def _handshakes(snips: _Snippets, S: npt.NDArray[np.int64], client: npt.NDArray[np.int64],
                nf: int) -> list[HandshakeFacts]:
    from .protocols import quic, tls

    out: list[HandshakeFacts] = [HandshakeFacts()] * nf
    flows = sorted({f for f, _ in snips.parts})
    for f in flows:
        c = int(client[f])
        order = [c, 1 - c] if S[K.F_ROLE_SRC, f] < K.ROLE_QUIC else [c]
        if S[K.F_PROTO, f] == 17:
            if S[K.F_QUIC_CI_TS, f] < 0:
                continue
            parts = snips.parts.get((f, c), [])
            try:
                info = quic.client_initial_info([p for _, p in parts])
            except ValueError:
                info = None
            version = int(S[K.F_QUIC_VERSION, f])
            if info is not None and info.client_hello is not None:
                h = info.client_hello
                out[f] = HandshakeFacts(h.sni, h.alpn, h.versions, h.ech, info.version, "quic")
            else:
                out[f] = HandshakeFacts(quic_version=version)
            continue
        for d in order:
            segs = snips.parts.get((f, d))
            # a ClientHello's record starts 0x16 0x03 (find_client_hello looks for nothing else):
            # without a 0x16 byte the stream is not reassembled (plain HTTP, SSH, zeros, ...)
            if not segs or not any(b"\x16" in p for o, p in segs if o >= 0):
                continue
            stream = tls.reassemble_prefix([(o, p) for o, p in segs if o >= 0])
            try:
                hello = tls.find_client_hello(stream)
            except ValueError:
                hello = None
            if hello is not None:
                out[f] = HandshakeFacts(hello.sni, hello.alpn, hello.versions, hello.ech, None, "tls")
                break
    return out


def analyze_chunks(chunks: Iterable[Chunk], **kw: Any) -> tuple[FlowTable, TimingSeries]:
    """Flow table and timing series of a stream of chunks (keyword options: FlowBuilder's)."""
    b = FlowBuilder(**kw)
    for c in chunks:
        b.add(c)
    return b.finish()


def analyze_file(path: str | os.PathLike[str], *, progress: Callable[[int], None] | None = None,
                 **kw: Any) -> tuple[FlowTable, TimingSeries]:
    """Read ``path`` and analyse its flows in one streaming pass (keyword options: FlowBuilder's).
    :func:`read_flows` also says what reading the file lost."""
    step = None if progress is None else (lambda nbytes, _packets: progress(nbytes))
    got = read_flows(path, progress=step, **kw)
    return got.table, got.series


@dataclass(frozen=True)
class FlowRead:
    """What :func:`read_flows` gives: the flows, and what of the file is not in them."""

    table: FlowTable
    series: TimingSeries
    #: records, rows, damage (a damaged file is analysed up to where it can be read)
    stats: ReadStats
    #: packets of interfaces whose link type the decoder does not know, by link type: in no flow
    undecoded_linktypes: dict[int, int]

    def warnings(self) -> list[str]:
        """One line for each way the flows are not the whole file (empty when they are)."""
        out = []
        if self.stats.damage:
            first = self.stats.damage[0]
            out.append(f"{self.stats.damaged} damaged"
                       + (" (reading stopped early)" if self.stats.stopped_early else "")
                       + f"; first at byte {first.offset:,}: {first.message}")
        return out + undecoded_notes(self.undecoded_linktypes)


def count_undecoded(reader: CaptureReader, chunk: Chunk, acc: dict[int, int]) -> None:
    """Add to ``acc`` (link type -> packets) the rows of ``chunk`` whose interface has a link
    type the decoder does not know (they are in no flow). Costs nothing unless the file has
    such an interface (pcapng can add one mid-file)."""
    if all(i.linktype in SUPPORTED_LINKTYPES for i in reader.info.interfaces):
        return
    for v, n in zip(*np.unique(chunk.table.linktype, return_counts=True), strict=True):
        if int(v) not in SUPPORTED_LINKTYPES:
            acc[int(v)] = acc.get(int(v), 0) + int(n)


def undecoded_notes(counts: dict[int, int]) -> list[str]:
    """One line per link type of :func:`count_undecoded`'s counts."""
    return [f"{n:,} packet(s) of link type {linktype_name(lt)}, which is not decoded, are in no flow"
            for lt, n in sorted(counts.items())]


def read_flows(path: str | os.PathLike[str], *,
               progress: Callable[[int, int], None] | None = None, prefetch: bool | None = None,
               **kw: Any) -> FlowRead:
    """:func:`analyze_file`, with what reading the file lost (:class:`FlowRead`): the flow pass
    of ``flows``, ``analyze`` and the batch workers.

    ``progress``, when given, is called after each chunk with the bytes of the file (on disk)
    read since its last call and the chunk's packets; ``prefetch`` as in
    :func:`~keepiton_throttle.sources.capture.chunks_of`."""
    undecoded: dict[int, int] = {}
    with CaptureReader(path) as reader:
        b = FlowBuilder(**kw)
        sent = 0
        for c in chunks_of(reader, prefetch=prefetch):
            b.add(c)
            if progress is not None:
                done = reader.position
                progress(done - sent, c.table.records)
                sent = done
            count_undecoded(reader, c, undecoded)
        table, series = b.finish()
        return FlowRead(table, series, reader.stats, undecoded)


#: the keys of a flow record (``flows --json``/``--csv``, ``analyze --out``), in output order,
#: with their types (Arrow's names: ``flows.parquet``); every one but ``flow``, the counts and
#: ``ech`` may be None
FLOW_RECORD_TYPES: dict[str, str] = {
    "flow": "int64", "transport": "string", "client": "string", "server": "string",
    "role_source": "string", "sni": "string", "alpn": "list<string>",
    "tls_versions": "list<string>", "ech": "bool_", "quic_version": "string",
    "packets_up": "int64", "packets_down": "int64", "bytes_up": "int64", "bytes_down": "int64",
    "goodput_bytes_down": "int64", "goodput_bytes_up": "int64", "start": "float64",
    "duration_s": "float64", "goodput_bps": "float64", "handshake_rtt_ms": "float64",
    "vantage": "string", "rtt_ms_p50": "float64", "rtt_ms_p95": "float64",
    "rtt_ms_min": "float64", "rtt_samples": "int64", "retransmissions": "int64",
    "retransmissions_down": "int64", "retransmission_rate": "float64", "out_of_order": "int64",
    "dup_acks": "int64", "sack_loss_events": "int64", "zero_window_s": "float64",
    "rwnd_limited_s": "float64", "end_state": "string",
}
FLOW_RECORD_KEYS = tuple(FLOW_RECORD_TYPES)

#: flows per block of :func:`iter_flow_columns`
RECORD_BLOCK = 4096


def _rounded(v: npt.NDArray[Any], digits: int) -> list[float | None]:
    """Values rounded to ``digits`` decimals, None where NaN."""
    return [None if x != x else x for x in np.round(np.asarray(v, dtype=np.float64), digits).tolist()]


def flow_records(table: FlowTable, series: TimingSeries, *,
                 rows: Sequence[int] | npt.NDArray[np.int64] | None = None,
                 paths: PathRtts | None = None) -> list[dict[str, Any]]:
    """Per-flow dicts with the keys of ``throttle-check flows --json`` (:data:`FLOW_RECORD_KEYS`;
    units in the names: bytes, s since the epoch, s, bit/s, ms). Times and RTTs are rounded to
    the ns, goodput to 0.001 bit/s; None where a value does not exist (no samples, no payload).

    ``paths``: the table's :func:`~keepiton_throttle.series.path_rtts`, when the caller has
    them already (they are computed for every flow at once, in a few vectorised passes).
    """
    cols = flow_columns(table, series, rows=rows, paths=paths)
    ordered = [cols[k] for k in FLOW_RECORD_KEYS]
    return [dict(zip(FLOW_RECORD_KEYS, vals, strict=True)) for vals in zip(*ordered, strict=True)]


def flow_columns(table: FlowTable, series: TimingSeries, *,
                 rows: Sequence[int] | npt.NDArray[np.int64] | None = None,
                 paths: PathRtts | None = None) -> dict[str, list[Any]]:
    """:func:`flow_records` as columns: key -> one Python value per asked flow, in
    :data:`FLOW_RECORD_KEYS` order (what ``analyze --out`` stores and writes: a fraction of the
    memory and pickle time of one dict per flow). Every column is computed for all asked flows
    at once."""
    c = table.cols
    if paths is None:
        paths = path_rtts(c, series)
    # the columns are read for the asked rows only, as lists (record k is flow sel[k])
    sel = table._rows(rows)
    summ = paths.summary()
    n_rtt = summ["rtt_samples"][sel]
    # ms rounded to the ns: percentiles interpolate below it, and the capture's clock has no more
    rtt = {k: _rounded(summ[k][sel], 6) for k in ("rtt_ms_p50", "rtt_ms_p95", "rtt_ms_min")}
    s2a, a2a = paths.syn_to_synack_ns[sel], paths.synack_to_ack_ns[sel]
    qsr = c["quic_server_reply_ts"][sel]
    hs_ns = np.where((s2a >= 0) & (a2a >= 0), s2a + a2a,
                     np.where(qsr >= 0, qsr - c["quic_client_initial_ts"][sel], -1))
    hs = _rounded(np.where(hs_ns >= 0, hs_ns / 1e6, np.nan), 6)
    first, last = c["first_ts"][sel], c["last_ts"][sel]
    pk_down = c["data_packets_down"][sel]
    retx_down = c["retransmissions_down"][sel]
    rate = np.divide(retx_down, pk_down, out=np.zeros(sel.size), where=pk_down > 0)
    cols: dict[str, list[Any]] = {
        "flow": sel.tolist(),
        "transport": table.transports(sel),
        "client": table.endpoints(sel, client=True),
        "server": table.endpoints(sel, client=False),
        "role_source": [ROLE_SOURCES[k] for k in c["role_source"][sel].tolist()],
        "packets_up": c["packets_up"][sel].tolist(),
        "packets_down": c["packets_down"][sel].tolist(),
        "bytes_up": c["bytes_up"][sel].tolist(),
        "bytes_down": c["bytes_down"][sel].tolist(),
        "goodput_bytes_down": c["goodput_down"][sel].tolist(),
        "goodput_bytes_up": c["goodput_up"][sel].tolist(),
        "start": np.round(first / 1e9, 9).tolist(),
        "duration_s": np.round((last - first) / 1e9, 9).tolist(),
        "goodput_bps": _rounded(table.goodputs_bps(sel), 3),
        "handshake_rtt_ms": hs,
        "vantage": [VANTAGES[k] for k in paths.vantage[sel].tolist()],
        **rtt,
        "rtt_samples": n_rtt.tolist(),
        "retransmissions_down": retx_down.tolist(),
        "retransmission_rate": rate.tolist(),
        "zero_window_s": np.round(c["zero_window_ns_up"][sel] / 1e9, 9).tolist(),
        "rwnd_limited_s": np.round(c["rwnd_limited_ns_down"][sel] / 1e9, 9).tolist(),
        "end_state": table.end_states(sel),
    }
    for k in ("retransmissions", "out_of_order", "dup_acks", "sack_loss_events"):
        cols[k] = (c[f"{k}_up"][sel] + c[f"{k}_down"][sel]).tolist()
    hello = [table.hello[i] for i in cols["flow"]]
    cols["sni"] = [h.sni for h in hello]
    cols["alpn"] = [list(h.alpn) for h in hello]
    cols["tls_versions"] = [[f"0x{v:04x}" for v in h.tls_versions] for h in hello]
    cols["ech"] = [h.ech for h in hello]
    cols["quic_version"] = [None if h.quic_version is None else f"0x{h.quic_version:08x}"
                            for h in hello]
    return {k: cols[k] for k in FLOW_RECORD_KEYS}


def iter_flow_columns(table: FlowTable, series: TimingSeries, *,
                      rows: Sequence[int] | npt.NDArray[np.int64] | None = None,
                      paths: PathRtts | None = None,
                      block: int = RECORD_BLOCK) -> Iterator[dict[str, list[Any]]]:
    """:func:`flow_columns`, ``block`` flows at a time (what ``flows`` prints from): memory for
    a block of rows, not for every flow of a capture."""
    if paths is None:
        paths = path_rtts(table.cols, series)
    sel = table._rows(rows)
    for k in range(0, sel.size, block):
        yield flow_columns(table, series, rows=sel[k: k + block], paths=paths)
