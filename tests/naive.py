"""Slow, obviously-correct twins of the Numba kernels (STYLE.md rule 4).

:func:`naive_flows` recomputes what ``_kernels.flow_pass`` + ``_kernels.flush_bins`` + the
orientation in ``FlowBuilder.finish`` produce, written from the rules in those docstrings (and
the RFCs and Wireshark behaviour they cite), one packet at a time, with dicts, plain lists and
Python ints (so no int64 overflow, no sentinels, no wrap-around tricks).

Where the kernel deliberately approximates, the twin implements the *same* approximation plainly
and says so (look for "approximation:"), so that a difference always means a bug in one of them.

Where the kernel departs from the rule itself, the twin keeps the rule and a strict ``xfail`` test
in ``test_flows_naive.py`` shows the case (the generated captures avoid these inputs): a TSval of
0 and a TSval timed from a later segment than its first, a window-scale shift above 14, bins of
captures whose timestamps step back, and sequence numbers unwrapped against the previous segment
rather than the highest one (here: ``Side.unwrap``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from keepiton_throttle.packets import PacketTable

# sample kinds (keepiton_throttle._kernels.SAMPLE_*): the numbers are part of the output format
DATA_ACK = 1
TS_ECHO = 2
SPIN = 3
DATA_ACK_AMBIGUOUS = 4

# per-row class (keepiton_throttle._kernels.CLASS_*)
CLASS_NEW = 0  # new data, an ACK, a keep-alive, or not a TCP flow packet
CLASS_RETX = 1
CLASS_OOO = 2

# role evidence, weakest first (keepiton_throttle._kernels.ROLE_*)
ROLE_FIRST = 0  # the sender of the flow's first packet
ROLE_PORT = 1  # the side with the higher port (the lower, well-known port is the service)
ROLE_QUIC = 2  # the sender of QUIC Initial packets
ROLE_SYNACK = 3  # the receiver of a SYN/ACK
ROLE_SYN = 4  # the sender of a SYN

FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10
OPT_MSS, OPT_WS, OPT_SACK, OPT_TS = 1, 2, 8, 16
QUIC_V2 = 0x6B3343CF  # RFC 9369 sec 3.1

#: FlowTable.cols: per flow, and per side ("<name>_up" client -> server, "<name>_down")
FLOW_COLUMNS = ("proto", "ip_version", "encap", "client_hi", "client_lo", "server_hi",
                "server_lo", "client_port", "server_port", "role_source", "client_dir",
                "first_ts", "last_ts", "syn_ts", "synack_ts", "hsack_ts",
                "quic_client_initial_ts", "quic_server_reply_ts", "quic_version", "prev_flow")
SIDE_COLUMNS = ("packets", "bytes", "payload", "goodput", "data_packets", "retransmissions",
                "out_of_order", "dup_acks", "sack_loss_events", "zero_window_ns",
                "rwnd_limited_ns", "first_data_ts", "last_data_ts", "fin", "rst", "mss", "wscale",
                "window_scale_unknown", "spin_flips")

SEQ_SPACE = 2**32
FAST_RETX_WINDOW_NS = 20_000_000  # Wireshark: the retransmission follows the dup ACKs within 20 ms


def nearest(raw: int, ref_raw: int, ref: int) -> int:
    """The integer congruent to ``raw`` mod 2^32 that is nearest to ``ref`` (whose raw value is
    ``ref_raw``); a tie (exactly 2^31 away) goes below. RFC 9293 sec 3.4: sequence numbers are
    compared modulo 2^32, over less than half the space."""
    delta = (raw - ref_raw) % SEQ_SPACE
    if delta >= SEQ_SPACE // 2:
        delta -= SEQ_SPACE
    return ref + delta


@dataclass
class Segment:
    """A data segment (or SYN/FIN) waiting for the ACK of its end."""

    end: int  # unwrapped sequence number just after it
    sent: int  # capture time of its first transmission
    ambiguous: bool = False  # sent more than once (Karn, RFC 6298 sec 3)


@dataclass
class Side:
    """One direction of a flow: what its sender sent, and what it acknowledged of the other."""

    # -- counters reported in FlowTable.cols ------------------------------------------------
    packets: int = 0
    wire_bytes: int = 0
    payload: int = 0
    goodput: int = 0
    data_packets: int = 0
    retransmissions: int = 0
    out_of_order: int = 0
    dup_acks: int = 0
    sack_loss_events: int = 0
    zero_window_ns: int = 0
    rwnd_limited_ns: int = 0
    first_data_ts: int = -1
    last_data_ts: int = -1
    fin: int = 0
    rst: int = 0
    mss: int = 0
    wscale: int = -1  # window-scale shift in this side's latest SYN, -1 none
    window_scale_unknown: int = 0
    spin_flips: int = 0
    # -- own sequence space (offsets from the first sequence number seen) -------------------
    origin: int | None = None  # raw sequence number that is offset 0 (None: nothing seen yet)
    high: int = 0  # highest sequence end sent
    high_ts: int = 0  # when ``high`` was reached
    syn_seen: bool = False
    outstanding: list[Segment] = field(default_factory=list)  # sorted by end
    # -- what this side said about the other's data ----------------------------------------
    ack_raw: int | None = None  # last acknowledgment number, raw
    ack: int | None = None  # the same, unwrapped into the other side's sequence space
    ack_ts: int = 0
    win_raw: int | None = None  # window field of this side's previous segment
    dupack_run: int = 0
    window: int | None = None  # last advertised receive window, bytes
    zero_since: int | None = None
    limited_since: int | None = None
    in_sack_episode: bool = False
    # -- TCP timestamps option: one TSval at a time is timed until its echo -----------------
    prev_tsval: int | None = None  # TSval of this side's previous segment
    timed_tsval: int = 0
    timed_since: int | None = None  # None: no TSval awaiting its echo
    # -- QUIC spin bit -----------------------------------------------------------------------
    spin: int | None = None
    spin_edge_ts: int = 0
    # -- goodput bins: bin number -> [goodput, payload, retransmissions, packets] ------------
    bins: dict[int, list[int]] = field(default_factory=dict)

    def unwrap(self, raw: int) -> int:
        """Offset in this side's sequence space of the sequence number ``raw``: the one nearest
        to the highest sequence sent. A valid segment lies within a window (< 2^30, RFC 7323
        sec 2.3) of it, so one out of all windows (a blind reset, RFC 5961) does not move the
        reference for the segments after it."""
        assert self.origin is not None
        return nearest(raw, (self.origin + self.high) % SEQ_SPACE, self.high)


@dataclass
class Flow:
    proto: int
    ip_version: int
    encap: int
    a: tuple[int, int, int]  # (hi, lo, port) of the sender of the flow's first packet
    b: tuple[int, int, int]
    first_ts: int
    last_ts: int
    prev: int = -1
    client: int = 0  # direction whose sender is the client (0: A -> B)
    role: int = ROLE_FIRST
    closed: bool = False
    syn_ts: int = -1
    synack_ts: int = -1
    hsack_ts: int = -1
    syn_seq: int | None = None
    quic_version: int = 0
    quic_ci_ts: int = -1
    quic_sr_ts: int = -1
    sides: tuple[Side, Side] = field(default_factory=lambda: (Side(), Side()))

    def claim_role(self, client_dir: int, strength: int) -> None:
        """Stronger evidence replaces weaker; the first of equal strength stays."""
        if strength > self.role:
            self.client = client_dir
            self.role = strength


@dataclass
class NaiveResult:
    cols: dict[str, list[int]]  # the keys of FlowTable.cols that the flow stage computes
    rtts: list[tuple[int, int, int, int, int]]  # (flow, ts, rtt, kind, sender_is_client), sorted
    bins: list[tuple[int, int, int, int, int, int, int]]  # (flow, up, bin, good, pay, retx, pkts)
    rows: list[tuple[int, int, int, int]]  # per packet row: (flow or -1, dir A->B 0, good, class)


class NaiveFlows:
    """Feed packet rows in capture order with :meth:`packet`, then call :meth:`result`."""

    def __init__(self, *, bin_ns: int, ooo_ns: int, ring: int) -> None:
        self.bin_ns = bin_ns
        self.ooo_ns = ooo_ns
        self.ring = ring
        self.flows: list[Flow] = []
        self.newest: dict[tuple[Any, ...], int] = {}  # 5-tuple (either order) -> newest flow
        self.samples: list[tuple[int, int, int, int, int]] = []  # (flow, ts, rtt, kind, dir)
        self.rows: list[tuple[int, int, int, int]] = []

    # -- flows ------------------------------------------------------------------------------
    def _flow_of(self, p: dict[str, int]) -> tuple[int, int]:
        """(flow, direction) of a packet, opening a new flow when needed."""
        src = (p["src_hi"], p["src_lo"], p["sport"])
        dst = (p["dst_hi"], p["dst_lo"], p["dport"])
        key = (p["proto"], *sorted([src, dst]))
        f = self.newest.get(key)
        pure_syn = p["proto"] == 6 and p["tcp_flags"] & (SYN | ACK) == SYN
        if f is not None and pure_syn:
            # port reuse (RFC 9293 sec 3.10.7.4): a SYN after the connection closed, or one with
            # another initial sequence number than the SYN that opened it, is a new connection
            old = self.flows[f]
            if old.closed or (old.syn_seq is not None and old.syn_seq != p["tcp_seq"]):
                f = self._open(p, src, dst, prev=f)
                self.newest[key] = f
                return f, 0
        if f is None:
            f = self._open(p, src, dst, prev=-1)
            self.newest[key] = f
            return f, 0
        return f, (0 if src == self.flows[f].a else 1)

    def _open(self, p: dict[str, int], src: tuple[int, int, int], dst: tuple[int, int, int],
              *, prev: int) -> int:
        fl = Flow(proto=p["proto"], ip_version=p["ip_version"], encap=p["encap"], a=src, b=dst,
                  first_ts=p["ts_ns"], last_ts=p["ts_ns"], prev=prev)
        # until stronger evidence: the lower (well-known) port is the service (RFC 6335)
        if src[2] != dst[2]:
            fl.claim_role(1 if src[2] < dst[2] else 0, ROLE_PORT)
        self.flows.append(fl)
        return len(self.flows) - 1

    def _sample(self, f: int, ts: int, value: int, kind: int, d: int) -> None:
        if value > 0:  # zero or negative: a timestamp artefact, not a measurement
            self.samples.append((f, ts, value, kind, d))

    # -- one packet ---------------------------------------------------------------------------
    def packet(self, p: dict[str, int], first_bytes: bytes) -> tuple[int, int, int, int]:
        """One packet-table row (``PacketTable.row``) and its first captured payload bytes.

        Returns (flow or -1, direction 0: A -> B, unique bytes delivered, CLASS_*)."""
        if (p["status"] != 0 or p["proto"] not in (6, 17) or p["ip_frag"] == 2
                or p["ip_version"] == 0):
            return -1, 0, 0, CLASS_NEW  # damaged, not TCP/UDP, or a later IP fragment
        f, d = self._flow_of(p)
        fl = self.flows[f]
        me = fl.sides[d]
        ts = p["ts_ns"]
        plen = p["payload_len"]
        fl.last_ts = ts
        me.packets += 1
        me.wire_bytes += p["wirelen"]
        me.payload += plen
        if plen > 0:
            me.data_packets += 1
            if me.first_data_ts < 0:
                me.first_data_ts = ts
            me.last_data_ts = ts
        if p["proto"] == 17:
            good = self._udp(fl, f, d, ts, plen, p, first_bytes)
            cls = CLASS_NEW
        else:
            good, cls = self._tcp(fl, f, d, ts, plen, p)
        self._bin(fl, me, ts, good, plen, int(cls == CLASS_RETX))
        return f, d, good, cls

    def _bin(self, fl: Flow, me: Side, ts: int, good: int, pay: int, retx: int) -> None:
        b = (ts - fl.first_ts) // self.bin_ns  # bins counted from the flow's first packet
        acc = me.bins.setdefault(b, [0, 0, 0, 0])
        acc[0] += good
        acc[1] += pay
        acc[2] += retx
        acc[3] += 1

    # -- UDP and QUIC ---------------------------------------------------------------------------
    def _udp(self, fl: Flow, f: int, d: int, ts: int, plen: int, p: dict[str, int],
             head: bytes) -> int:
        me = fl.sides[d]
        # QUIC payload and retransmissions are encrypted: every UDP payload byte counts
        me.goodput += plen
        if len(head) < 5:
            return plen
        first = head[0]
        if first & 0x80:  # long header (RFC 9000 sec 17.2)
            version = int.from_bytes(head[1:5], "big")
            ptype = (first >> 4) & 3
            # Initial: type 0 in v1 and drafts, type 1 in v2 (RFC 9369 sec 3.2); version 0 is
            # Version Negotiation (RFC 9000 sec 17.2.1)
            initial = version != 0 and ptype == (1 if version == QUIC_V2 else 0)
            if initial and fl.quic_ci_ts < 0 and (not first & 0x40 or plen < 1200):
                initial = False
            if initial and (fl.quic_ci_ts < 0 or fl.client == d):
                if fl.quic_ci_ts < 0:
                    fl.quic_ci_ts = ts
                    fl.quic_version = version
                fl.claim_role(d, ROLE_QUIC)
            elif (version != 0 and fl.quic_ci_ts >= 0 and fl.client != d
                    and fl.quic_sr_ts < 0):
                fl.quic_sr_ts = ts  # the server's first long-header answer
        elif first & 0x40:  # short header: the spin bit (RFC 9000 sec 17.4)
            spin = (first >> 5) & 1
            if me.spin is not None and spin != me.spin:
                # edge to edge of one side's spin value is one RTT; the first edge only starts
                if me.spin_flips >= 1:
                    self._sample(f, ts, ts - me.spin_edge_ts, SPIN, d)
                me.spin_edge_ts = ts
                me.spin_flips += 1
            me.spin = spin
        return plen

    # -- TCP ----------------------------------------------------------------------------------
    def _tcp(self, fl: Flow, f: int, d: int, ts: int, plen: int,
             p: dict[str, int]) -> tuple[int, int]:
        """Returns (unique payload bytes delivered, CLASS_*)."""
        me, other = fl.sides[d], fl.sides[1 - d]
        flags = p["tcp_flags"]
        seq, ack, win, opts = p["tcp_seq"], p["tcp_ack"], p["tcp_win"], p["tcp_opts"]
        syn, fin, rst, has_ack = (bool(flags & x) for x in (SYN, FIN, RST, ACK))

        # ---- handshake: roles, times, options ----------------------------------------------
        if syn:
            if not has_ack:
                fl.claim_role(d, ROLE_SYN)
                if fl.syn_ts < 0:
                    fl.syn_ts = ts
                    fl.syn_seq = seq
            else:
                fl.claim_role(1 - d, ROLE_SYNACK)
                if fl.synack_ts < 0:
                    fl.synack_ts = ts
            me.syn_seen = True
            me.wscale = p["tcp_wscale"] if opts & OPT_WS else -1
            if opts & OPT_MSS:
                me.mss = p["tcp_mss"]
            # a SYN's sequence number is the origin of this side's sequence space; a SYN with
            # another one moves the origin only while the side has sent at most a SYN's worth
            # from the old one (pure ACKs seen before a late SYN/ACK, a SYN/ACK with a new ISN)
            if me.origin is None or (me.high <= 1 and me.origin != seq):
                self._origin(me, seq, ts)
        elif has_ack and fl.synack_ts >= 0 and fl.hsack_ts < 0 and fl.client == d:
            fl.hsack_ts = ts  # the third packet of the handshake
        if me.origin is None:  # capture started late: the first sequence number seen is 0
            self._origin(me, seq, ts)

        # ---- sequence side: what this segment adds to the stream ---------------------------
        rel = me.unwrap(seq)
        seglen = plen + syn + fin  # SYN and FIN occupy one sequence number (RFC 9293 sec 3.4)
        end = rel + seglen
        good = 0
        cls = CLASS_NEW
        if seglen > 0:
            if rel >= me.high:
                # new data. approximation: a jump over a gap (data lost before the capture
                # point, or not yet seen) counts the gap as delivered now (high-water mark)
                advance = end - me.high
                self._remember(me, Segment(end, ts))
            else:
                if plen == 1 and end == me.high and not syn and not fin:
                    pass  # keep-alive probe: the last byte again (Wireshark), not a retransmission
                elif (other.dupack_run >= 2 and other.ack_raw == seq
                        and ts - other.ack_ts < FAST_RETX_WINDOW_NS):
                    cls = CLASS_RETX  # fast retransmission answering >= 2 dup ACKs (RFC 5681 sec 3.2)
                elif ts - me.high_ts < self._ooo_window(fl) and end != me.high:
                    cls = CLASS_OOO  # soon after the highest segment, and not a copy of it
                    me.out_of_order += 1
                else:
                    cls = CLASS_RETX
                if cls == CLASS_RETX:
                    me.retransmissions += 1
                self._sent_again(me, other, rel, end, ts)
                advance = max(end - me.high, 0)
            if advance > 0:
                me.high = end
                me.high_ts = ts
                # the SYN's and FIN's sequence numbers carry no payload
                good = max(advance - syn - fin, 0)
            me.goodput += good

        # ---- ACK side: what this segment says about the other direction --------------------
        if has_ack and other.origin is not None:
            ack_rel = other.unwrap(ack)
            acked = [s for s in other.outstanding if s.end <= ack_rel]
            other.outstanding = [s for s in other.outstanding if s.end > ack_rel]
            for s in acked:
                # approximation: only the ACK that covers exactly a segment's end times it (a
                # cumulative ACK of several segments times the last one)
                if s.end == ack_rel:
                    kind = DATA_ACK_AMBIGUOUS if s.ambiguous else DATA_ACK
                    self._sample(f, ts, ts - s.sent, kind, 1 - d)
            # duplicate ACK (RFC 5681 sec 2): no data, no SYN/FIN (nor RST), the same ACK number
            # and window as this side's previous ones, while the other side has data outstanding
            if (plen == 0 and not (syn or fin or rst) and ack == me.ack_raw
                    and win == me.win_raw and other.high > ack_rel):
                me.dup_acks += 1
                me.dupack_run += 1
            elif ack != me.ack_raw:
                me.dupack_run = 0
            me.ack_ts = ts
            # SACK (RFC 2018): a first block above the cumulative ACK reports a hole; one loss
            # event per run of such ACKs
            if opts & OPT_SACK and other.unwrap(p["sack_le"]) > ack_rel:
                if not me.in_sack_episode:
                    me.sack_loss_events += 1
                me.in_sack_episode = True
            else:
                me.in_sack_episode = False
            me.ack, me.ack_raw = ack_rel, ack
            if not syn:  # the window of a SYN is never scaled (RFC 7323 sec 2.2): not used
                self._window(me, other, win, ts, rst)
        me.win_raw = win

        # ---- was this side's sending limited by the other's receive window? ----------------
        if plen > 0 and other.window is not None and other.ack is not None and other.ack >= 0:
            inflight = me.high - other.ack
            limited = inflight + (me.mss or 1460) > other.window
            if limited and me.limited_since is None:
                me.limited_since = ts
            elif not limited and me.limited_since is not None:
                me.rwnd_limited_ns += ts - me.limited_since
                me.limited_since = None

        # ---- timestamps option: TSval -> its first echo in TSecr (RFC 7323 sec 4.1) --------
        # approximation: one TSval per side is timed at a time; the next is taken once it is
        # echoed (or a later one is)
        if opts & OPT_TS:
            tsval, tsecr = p["tcp_tsval"], p["tcp_tsecr"]
            if other.timed_since is not None and has_ack:  # TSecr is valid only with ACK
                echoed = nearest(tsecr, other.timed_tsval, 0)  # TSvals compare modulo 2^32
                if echoed == 0:
                    self._sample(f, ts, ts - other.timed_since, TS_ECHO, 1 - d)
                    other.timed_since = None
                elif echoed > 0:
                    other.timed_since = None  # a later TSval was echoed first: no clean sample
            # time a TSval from the first segment that carries it (TSvals never decrease,
            # RFC 7323 sec 5.4, so a value is new when it differs from the previous segment's)
            if me.timed_since is None and tsval != me.prev_tsval:
                me.timed_tsval, me.timed_since = tsval, ts
            me.prev_tsval = tsval

        if fin:
            me.fin = 1
        if rst:
            me.rst = 1
        if rst or (fl.sides[0].fin and fl.sides[1].fin):
            fl.closed = True
        return good, cls

    @staticmethod
    def _origin(me: Side, seq: int, ts: int) -> None:
        me.origin = seq
        me.high = 0
        me.high_ts = ts

    def _ooo_window(self, fl: Flow) -> int:
        """Wireshark's out-of-order window: the handshake RTT (SYN -> third ACK) when seen."""
        if fl.syn_ts >= 0 and fl.hsack_ts >= 0:
            return fl.hsack_ts - fl.syn_ts
        return self.ooo_ns

    def _remember(self, me: Side, seg: Segment) -> None:
        """Add an outstanding segment. approximation: only the ``ring`` highest-ending ones are
        kept (the kernel's ring of 64), so the oldest are forgotten and give no sample."""
        me.outstanding.append(seg)
        me.outstanding.sort(key=lambda s: s.end)
        del me.outstanding[: max(len(me.outstanding) - self.ring, 0)]

    def _sent_again(self, me: Side, other: Side, rel: int, end: int, ts: int) -> None:
        """Karn (RFC 6298 sec 3): segments whose end lies in a resent range [rel, end) were sent
        more than once, so an ACK of them is ambiguous. Applied to every segment below the
        highest (keep-alives and reordered ones too: at the capture point they cannot be told
        from a second transmission for sure).

        approximation (the kernel's, as tshark's ack_rtt): when no outstanding segment ends
        where the resent range ends (it was re-segmented), the range itself is remembered,
        ambiguous, unless the other side already acknowledged its end. Before the other side's
        first ACK, -1 stands for its acknowledgment point (the kernel's "none"; only ranges
        wholly before the first byte seen can be affected, and they give ambiguous samples).
        """
        for s in me.outstanding:
            if rel < s.end <= end:
                s.ambiguous = True
        acked = other.ack if other.ack is not None else -1
        if all(s.end != end for s in me.outstanding) and end > acked:
            self._remember(me, Segment(end, ts, ambiguous=True))

    @staticmethod
    def _window(me: Side, other: Side, win: int, ts: int, rst: bool) -> None:
        # RFC 7323 sec 2.2: scaled only when both SYNs carried the option, by the shift that
        # the window's sender announced; a shift above 14 is used as 14 (sec 2.3)
        if me.wscale >= 0 and other.wscale >= 0:
            me.window = win << min(me.wscale, 14)
        else:
            me.window = win
            if not (me.syn_seen and other.syn_seen):
                me.window_scale_unknown = 1  # no handshake seen: the scale is unknown
        if win == 0 and not rst:
            if me.zero_since is None:
                me.zero_since = ts
        elif me.zero_since is not None:
            me.zero_window_ns += ts - me.zero_since
            me.zero_since = None

    # -- the end ------------------------------------------------------------------------------
    def result(self) -> NaiveResult:
        """Close open intervals at each flow's last packet and orient everything client ->
        server ("up") / server -> client ("down")."""
        cols: dict[str, list[int]] = {k: [] for k in FLOW_COLUMNS}
        cols.update({f"{k}_{x}": [] for k in SIDE_COLUMNS for x in ("up", "down")})
        bins = []
        for f, fl in enumerate(self.flows):
            for side in fl.sides:
                if side.zero_since is not None:
                    side.zero_window_ns += fl.last_ts - side.zero_since
                    side.zero_since = None
                if side.limited_since is not None:
                    side.rwnd_limited_ns += fl.last_ts - side.limited_since
                    side.limited_since = None
            up, down = fl.sides[fl.client], fl.sides[1 - fl.client]
            client, server = (fl.a, fl.b) if fl.client == 0 else (fl.b, fl.a)
            flow_values = {
                "proto": fl.proto, "ip_version": fl.ip_version, "encap": fl.encap,
                "client_hi": client[0], "client_lo": client[1], "client_port": client[2],
                "server_hi": server[0], "server_lo": server[1], "server_port": server[2],
                "role_source": fl.role, "client_dir": fl.client,
                "first_ts": fl.first_ts, "last_ts": fl.last_ts,
                "syn_ts": fl.syn_ts, "synack_ts": fl.synack_ts, "hsack_ts": fl.hsack_ts,
                "quic_client_initial_ts": fl.quic_ci_ts, "quic_server_reply_ts": fl.quic_sr_ts,
                "quic_version": fl.quic_version, "prev_flow": fl.prev,
            }
            for name in FLOW_COLUMNS:
                cols[name].append(flow_values[name])
            for name in SIDE_COLUMNS:
                attr = "wire_bytes" if name == "bytes" else name
                cols[f"{name}_up"].append(getattr(up, attr))
                cols[f"{name}_down"].append(getattr(down, attr))
            for is_up, side in ((1, up), (0, down)):
                for b, (good, pay, retx, pkts) in side.bins.items():
                    bins.append((f, is_up, b, good, pay, retx, pkts))
        rtts = [(f, ts, v, kind, int(d == self.flows[f].client))
                for f, ts, v, kind, d in self.samples]
        return NaiveResult(cols=cols, rtts=sorted(rtts), bins=sorted(bins), rows=self.rows)


def naive_flows(table: PacketTable, capture: bytes, *, bin_ns: int, ooo_ns: int,
                ring: int) -> NaiveResult:
    """Flow columns, RTT samples and goodput bins of a whole packet table.

    ``capture`` is the (uncompressed) capture file the table was read from: ``payload_off``
    indexes it, and QUIC's first payload bytes are read from it.
    """
    nf = NaiveFlows(bin_ns=bin_ns, ooo_ns=ooo_ns, ring=ring)
    for i in range(table.n):
        p = table.row(i)
        off, cap = p["payload_off"], p["payload_caplen"]
        head = capture[off : off + min(cap, 5)] if off >= 0 and cap > 0 else b""
        nf.rows.append(nf.packet(p, head))
    return nf.result()
