"""Private Numba kernels of the flow stage. No validation, no raise: see ``flows.py``.

One streaming kernel, :func:`flow_pass`, walks packet-table rows in capture order and keeps
per-flow state in preallocated int64 arrays, so that a capture of any length is analysed in
memory proportional to the number of flows (not packets). It assigns each row a flow and a
direction, and emits RTT samples and per-bin goodput as it goes.

State layout: ``S[flow, field]`` (int64) with the field indices below; per-direction fields come
in pairs (``X + d`` for direction ``d``; direction 0 is endpoint A -> B, where A is the source of
the flow's first packet). ``R[A[flow, A_RING] - 1, ...]`` is a ring of outstanding data segments per
direction for data->ACK RTT matching, handed out from a pool when a TCP flow first sends a
segment that occupies sequence space and given back when the flow has closed with nothing
outstanding, or another connection took over its 5-tuple (UDP, SYN-only and finished flows
hold none: a capture's rings are about its open TCP connections, 2 KiB each, not all its
flows); ``A[flow, :]`` the endpoints (A hi, A lo, B hi, B lo). Flow-major:
a packet's updates fall in a few adjacent cache lines of its flow's row (field-major, every field
of a flow sat in a page of its own, and the kernel was 2.4x slower).

Sequence numbers are unwrapped into int64 offsets from the first one
seen (RFC 9293 sec 3.4 modular arithmetic), so 2^32 wrap-around is handled.
"""

from __future__ import annotations

import numpy as np

from .config import flat_kernel, inline_kernel

# -- flow-level fields ----------------------------------------------------------------------
F_PROTO = 0
F_IPV = 1
F_PORT_A = 2
F_PORT_B = 3
F_FIRST_TS = 4
F_LAST_TS = 5
F_CLIENT = 6  # 0: A is the client, 1: B is the client
F_ROLE_SRC = 7  # ROLE_* below
F_CLOSED = 8  # TCP: FIN from both sides or RST seen
F_SYN_TS = 9
F_SYNACK_TS = 10
F_HSACK_TS = 11
F_QUIC_VERSION = 12
F_QUIC_CI_TS = 13  # first client Initial
F_QUIC_SR_TS = 14  # first server long-header packet after it
F_PREV = 15  # earlier flow with the same 5-tuple (port reuse), -1
F_ENCAP = 16
F_SYN_SEQ = 17  # seq of the SYN that opened the flow (port-reuse detection)
F_RTT_SEEN = 18  # RTT samples the flow produced (thinning, see _emit_rtt)
F_RTT_KEPT = 19  # of them kept: the next kept sample's rank in its flow
F_NFIELDS_FLOW = 20

# -- per-direction fields (add d in {0, 1}) -------------------------------------------------
_D = F_NFIELDS_FLOW
D_PKTS = _D + 0
D_WIRE = _D + 2
D_PAYLOAD = _D + 4
D_UNIQUE = _D + 6
D_HAS_BASE = _D + 8
D_BASE = _D + 10
D_MAX_END = _D + 12
D_MAX_TS = _D + 14
D_RETX = _D + 16
D_OOO = _D + 18
D_ACK_REL = _D + 20  # last ACK sent by d, as offset into the other direction (-1 none)
D_ACK_RAW = _D + 22
D_DUPACK = _D + 24
D_WIN_RAW = _D + 26
D_WS = _D + 28  # window-scale option in d's SYN, -1 none
D_WIN_BYTES = _D + 30  # last advertised receive window, bytes (scaled when known), -1
D_ZW_NS = _D + 32
D_ZW_SINCE = _D + 34
D_RWL_NS = _D + 36  # time d's sending was limited by the other side's receive window
D_RWL_SINCE = _D + 38
D_SACK_EVENTS = _D + 40
D_SACK_ACTIVE = _D + 42
D_FIN = _D + 44
D_RST = _D + 46
D_TS_VAL = _D + 48  # pending TSval sent by d awaiting its echo
D_TS_TS = _D + 50  # time it was first sent, -1 none
D_SPIN_LAST = _D + 52
D_SPIN_TS = _D + 54
D_SPIN_FLIPS = _D + 56
D_SNIPS = _D + 58
D_BIN = _D + 60
D_BIN_GOOD = _D + 62
D_BIN_PAY = _D + 64
D_BIN_RETX = _D + 66
D_BIN_PKTS = _D + 68
D_MIN_RTT = _D + 70
D_RING_HEAD = _D + 72
D_RING_N = _D + 74
D_MSS = _D + 76
D_SYN_SEEN = _D + 78
D_DATA_PKTS = _D + 80
D_FIRST_DATA_TS = _D + 82
D_LAST_DATA_TS = _D + 84
D_WINLIM_UNKNOWN = _D + 86  # receive window seen without a known scale
D_DUPACK_RUN = _D + 88  # consecutive duplicate ACKs sent by d (reset when the ACK advances)
D_ACK_TS = _D + 90  # time of d's last ACK
D_TS_PREV = _D + 92  # TSval of d's previous segment, -1 none: a TSval is timed from its first one
N_FIELDS = _D + 94

#: ``A[flow, A_RING]``: the flow's row of R (its rings) + 1, 0 none (see _ring_take). In A, whose
#: row the hash probe has just read, so that finding the ring costs no cache miss of its own
#: (as a field of S it cost ~8 % of this kernel's time: a miss before the ring's own)
A_RING = 4
N_A = 5

ROLE_FIRST = 0  # the source of the first packet is taken for the client
ROLE_PORT = 1  # the lower (well-known) port is the server
ROLE_QUIC = 2  # sender of QUIC long-header Initial packets
ROLE_SYNACK = 3
ROLE_SYN = 4

SAMPLE_DATA_ACK = 1  # data segment -> the ACK that covers exactly its end
SAMPLE_TS_ECHO = 2  # TSval -> its first echo in TSecr (RFC 7323 sec 4)
SAMPLE_SPIN = 3  # QUIC spin-bit edge to edge (RFC 9000 sec 17.4)
SAMPLE_DATA_ACK_AMBIGUOUS = 4  # as DATA_ACK, but the segment was sent more than once: Karn's
# rule (RFC 6298 sec 3) excludes these from every estimate; kept only for cross-checks with
# tools that do not apply it (tshark's tcp.analysis.ack_rtt)

_AMBIG = np.int64(1) << 62

STOP_DONE = 0
STOP_FLOWS_FULL = 1
STOP_RINGS_FULL = 2

CLASS_NEW = 0
CLASS_RETX = 1
CLASS_OOO = 2

# chunk-output columns: rtt samples (int64 block, 5 rows) and bins (int64 block, 7 rows)
RTT_COLS = ("flow", "ts_ns", "rtt_ns", "kind", "dir")
BIN_COLS = ("flow", "dir", "bin", "goodput_bytes", "payload_bytes", "retransmissions", "packets")

_TCP_FIN = 1
_TCP_SYN = 2
_TCP_RST = 4
_TCP_ACK = 16
_OPT_MSS = 1
_OPT_WS = 2
_OPT_SACK = 8
_OPT_TS = 16
_QUIC_V2 = 0x6B3343CF
_HALF = np.int64(1) << 31
_MOD = np.int64(1) << 32


@inline_kernel
def _hash(shi, slo, dhi, dlo, sp, dp, proto):
    """Direction-independent hash of a 5-tuple (xor of the two endpoint mixes)."""
    a = (shi * np.uint64(0x9E3779B97F4A7C15)) ^ (slo * np.uint64(0xC2B2AE3D27D4EB4F)) ^ (np.uint64(sp) * np.uint64(0x165667B19E3779F9))
    b = (dhi * np.uint64(0x9E3779B97F4A7C15)) ^ (dlo * np.uint64(0xC2B2AE3D27D4EB4F)) ^ (np.uint64(dp) * np.uint64(0x165667B19E3779F9))
    h = (a ^ b) + np.uint64(proto) * np.uint64(0x27D4EB2F165667C5)
    h ^= h >> np.uint64(29)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(32)
    return h


@inline_kernel
def _lookup(H, A, S, shi, slo, dhi, dlo, sp, dp, proto):
    """Return (slot, flow, dir): flow -1 when absent (slot is then the free slot)."""
    slot = _hash(shi, slo, dhi, dlo, sp, dp, proto) & np.uint64(H.shape[0] - 1)
    return _probe(H, A, S, slot, np.int64(H[slot]), shi, slo, dhi, dlo, sp, dp, proto)


@inline_kernel
def _probe(H, A, S, slot, h, shi, slo, dhi, dlo, sp, dp, proto):
    """:func:`_lookup` from the 5-tuple's hash ``slot``, whose entry ``h`` was read already."""
    mask = np.uint64(H.shape[0] - 1)
    while True:
        f = h - 1
        if f < 0:
            return np.int64(slot), np.int64(-1), 0
        if S[f, F_PROTO] == proto:
            if (A[f, 0] == shi and A[f, 1] == slo and A[f, 2] == dhi and A[f, 3] == dlo
                    and S[f, F_PORT_A] == sp and S[f, F_PORT_B] == dp):
                return np.int64(slot), f, 0
            if (A[f, 0] == dhi and A[f, 1] == dlo and A[f, 2] == shi and A[f, 3] == slo
                    and S[f, F_PORT_A] == dp and S[f, F_PORT_B] == sp):
                return np.int64(slot), f, 1
        slot = (slot + np.uint64(1)) & mask
        h = np.int64(H[slot])


@flat_kernel
def rehash(H, A, S, n_flows):
    """Rebuild the hash table ``H`` (all zero on entry) from flows 0..n_flows-1.

    Later flows with the same 5-tuple overwrite earlier ones (the table points at the newest).
    """
    for f in range(n_flows):
        slot, g, _ = _lookup(H, A, S, A[f, 0], A[f, 1], A[f, 2], A[f, 3], S[f, F_PORT_A], S[f, F_PORT_B], S[f, F_PROTO])
        H[slot] = f + 1


@inline_kernel
def _new_flow(S, A, f, shi, slo, dhi, dlo, sp, dp, proto, ipv, encap, ts):
    for k in range(S.shape[1]):
        S[f, k] = 0
    A[f, 0] = shi
    A[f, 1] = slo
    A[f, 2] = dhi
    A[f, 3] = dlo
    S[f, F_PROTO] = proto
    S[f, F_IPV] = ipv
    S[f, F_PORT_A] = sp
    S[f, F_PORT_B] = dp
    S[f, F_FIRST_TS] = ts
    S[f, F_LAST_TS] = ts
    S[f, F_ENCAP] = encap
    S[f, F_PREV] = -1
    A[f, A_RING] = 0
    for k in (F_SYN_TS, F_SYNACK_TS, F_HSACK_TS, F_QUIC_CI_TS, F_QUIC_SR_TS, F_SYN_SEQ):
        S[f, k] = -1
    for d in range(2):
        for k in (D_ACK_REL, D_ACK_RAW, D_WS, D_WIN_BYTES, D_ZW_SINCE, D_RWL_SINCE, D_TS_TS,
                  D_TS_PREV, D_SPIN_LAST, D_BIN, D_MIN_RTT, D_FIRST_DATA_TS, D_LAST_DATA_TS):
            S[f, k + d] = -1
    # client/server by port (RFC 6335 ranges: the lower, well-known port is the service);
    # TCP SYNs and QUIC Initials override this later with stronger evidence
    if sp < dp:
        S[f, F_CLIENT] = 1
        S[f, F_ROLE_SRC] = ROLE_PORT
    elif dp < sp:
        S[f, F_CLIENT] = 0
        S[f, F_ROLE_SRC] = ROLE_PORT
    else:
        S[f, F_CLIENT] = 0
        S[f, F_ROLE_SRC] = ROLE_FIRST


@inline_kernel
def _set_role(S, f, client_dir, src):
    if src > S[f, F_ROLE_SRC]:
        S[f, F_CLIENT] = client_dir
        S[f, F_ROLE_SRC] = src


@inline_kernel
def _unwrap(S, f, d, raw):
    """Sequence number ``raw`` (u32) of direction d -> int64 offset from the first one seen.

    The offset nearest to d's highest sequence sent: a valid segment is within a window
    (< 2^30, RFC 7323 sec 2.3) of it, so an out-of-window one (a blind reset, RFC 5961) does
    not move the reference of the segments after it.
    """
    top = S[f, D_MAX_END + d]
    delta = ((raw - (S[f, D_BASE + d] + top) + _HALF) % _MOD) - _HALF
    return top + delta


@inline_kernel
def _emit_bin(S, f, d, bins, nb):
    """Append the current bin of (f, d) to ``bins`` at column ``nb``; return ``nb + 1``."""
    bins[0, nb] = f
    bins[1, nb] = d
    bins[2, nb] = S[f, D_BIN + d]
    bins[3, nb] = S[f, D_BIN_GOOD + d]
    bins[4, nb] = S[f, D_BIN_PAY + d]
    bins[5, nb] = S[f, D_BIN_RETX + d]
    bins[6, nb] = S[f, D_BIN_PKTS + d]
    return nb + 1


@inline_kernel
def _bin_add(S, f, d, ts, bin_ns, good, pay, retx, bins, nb):
    """Accumulate into the current bin of (f, d); emit the previous bin when it changes."""
    # most packets fall in the current bin: test that with a multiply, and divide (~40 cycles)
    # only when they do not
    cur = S[f, D_BIN + d]
    off = ts - S[f, F_FIRST_TS] - cur * bin_ns
    b = cur if (cur >= 0 and off >= 0 and off < bin_ns) else (ts - S[f, F_FIRST_TS]) // bin_ns
    if b != cur:
        if S[f, D_BIN_PKTS + d] > 0:
            nb = _emit_bin(S, f, d, bins, nb)
        S[f, D_BIN + d] = b
        S[f, D_BIN_GOOD + d] = 0
        S[f, D_BIN_PAY + d] = 0
        S[f, D_BIN_RETX + d] = 0
        S[f, D_BIN_PKTS + d] = 0
    S[f, D_BIN_GOOD + d] += good
    S[f, D_BIN_PAY + d] += pay
    S[f, D_BIN_RETX + d] += retx
    S[f, D_BIN_PKTS + d] += 1
    return nb


@inline_kernel
def _ring_take(A, f, pool, n_rows):
    """Hand flow ``f`` (which holds none) a row of R for its rings. ``pool[0]``: rows handed
    out so far; ``pool[1]``: rows given back, whose indices are ``pool[2:2 + pool[1]]``.
    The pool is never empty on entry to :func:`flow_pass`, and a pass stops after the row that
    took the last one (STOP_RINGS_FULL): a row takes at most one. Returns True when none is left.
    """
    nfree = pool[1]
    if nfree > 0:
        nfree -= 1
        A[f, A_RING] = np.uint64(pool[2 + nfree] + 1)
        pool[1] = nfree
    else:
        A[f, A_RING] = np.uint64(pool[0] + 1)
        pool[0] += 1
    return nfree == 0 and pool[0] >= n_rows


@inline_kernel
def _ring_free(A, S, f, pool):
    """Give flow ``f``'s rings back to the pool (it will time no more segments). Empty rings:
    a later segment of the flow gets a fresh row, which is the same as keeping this one."""
    g = np.int64(A[f, A_RING]) - 1
    if g >= 0:
        pool[2 + pool[1]] = g
        pool[1] += 1
        A[f, A_RING] = 0
        for d in range(2):
            S[f, D_RING_HEAD + d] = 0
            S[f, D_RING_N + d] = 0


@inline_kernel
def _ring_retransmit(R, A, S, f, d, ring, rel, end, ts):
    """Mark outstanding segments overlapping a retransmitted range [rel, end) as ambiguous.

    When no outstanding segment ends where the retransmission ends (it was re-segmented), the
    retransmission itself is inserted, ambiguous, so that the ACK that covers it still yields an
    (ambiguous) sample, as tshark's ack_rtt does. The flow holds a ring (``A_RING``).
    """
    g = np.int64(A[f, A_RING]) - 1
    base_i = d * 2 * ring
    h = S[f, D_RING_HEAD + d]
    cnt = S[f, D_RING_N + d]
    exact = False
    pos = cnt  # insertion index (entries are sorted by end)
    for k in range(cnt):
        j = (h + k) % ring
        e = R[g, base_i + 2 * j]
        if e > rel and e <= end:
            R[g, base_i + 2 * j + 1] = R[g, base_i + 2 * j + 1] | _AMBIG
        if e == end:
            exact = True
        if e > end and pos == cnt:
            pos = k
    o = 1 - d
    if exact or end <= S[f, D_ACK_REL + o]:
        return
    if cnt == ring:  # full: forget the oldest
        if pos == 0:
            return
        h = (h + 1) % ring
        cnt -= 1
        pos -= 1
        S[f, D_RING_HEAD + d] = h
    k = cnt
    while k > pos:  # shift the later entries up by one
        j = (h + k) % ring
        jp = (h + k - 1) % ring
        R[g, base_i + 2 * j] = R[g, base_i + 2 * jp]
        R[g, base_i + 2 * j + 1] = R[g, base_i + 2 * jp + 1]
        k -= 1
    j = (h + pos) % ring
    R[g, base_i + 2 * j] = end
    R[g, base_i + 2 * j + 1] = ts | _AMBIG
    S[f, D_RING_N + d] = cnt + 1


@inline_kernel
def _ooo_threshold(S, f, default_ns):
    """Out-of-order window: the handshake RTT (SYN -> third ACK) when seen, else the default.

    Wireshark's rule (packet-tcp.c, "OUT-OF-ORDER"), kept so that counts agree with tshark.
    """
    if S[f, F_SYN_TS] >= 0 and S[f, F_HSACK_TS] >= 0:
        return S[f, F_HSACK_TS] - S[f, F_SYN_TS]
    return default_ns


@inline_kernel
def _emit_rtt(rtt, nr, f, ts, value, kind, d, S, lim):
    """Record an RTT sample of flow ``f`` (its minimum always; the sample itself if thinning
    keeps it). ``lim`` = [per-flow count kept in full, per-capture budget, samples counted
    against the budget so far]: a flow's first lim[0] samples are kept, then its i-th when
    i % (i // lim[0] + 1) == 0, so a long flow's samples grow with the log of its length; of
    those, the capture's first lim[1], then the g-th when g % (g // lim[1] + 1) == 0. Row 5 of
    ``rtt`` is the sample's rank among its flow's kept samples (to order them without a sort).
    """
    if value <= 0:
        return nr  # a zero or negative RTT is a timestamp artefact, not a measurement
    m = S[f, D_MIN_RTT + d]
    if (kind == SAMPLE_DATA_ACK or kind == SAMPLE_TS_ECHO) and (m < 0 or value < m):
        S[f, D_MIN_RTT + d] = value
    i = S[f, F_RTT_SEEN]
    S[f, F_RTT_SEEN] = i + 1
    cap = lim[0]
    if i >= cap and i % (i // cap + 1) != 0:
        return nr
    g = lim[2]
    lim[2] = g + 1
    budget = lim[1]
    if g >= budget and g % (g // budget + 1) != 0:
        return nr
    rtt[0, nr] = f
    rtt[1, nr] = ts
    rtt[2, nr] = value
    rtt[3, nr] = kind
    rtt[4, nr] = d
    rtt[5, nr] = S[f, F_RTT_KEPT]
    S[f, F_RTT_KEPT] += 1
    return nr + 1


@flat_kernel
def flow_pass(i64, u64, u32, u16, u8, n, row0, bin_ns, ooo_ns, snip_max,
              H, A, S, R, pool, n_flows, ring,
              out_flow, out_dir, out_good, out_class, rtt, bins, snips, nr0, nb0, ns0, rtt_lim):
    """Analyse rows ``row0..n-1`` of a packet-table chunk (blocks as in packets.py, at least
    ``n`` columns wide: the reader's whole output blocks, read in place).

    Writes per row: ``out_flow`` (-1: not a TCP/UDP flow packet), ``out_dir`` (0 A->B),
    ``out_good`` (unique payload bytes the row delivered), ``out_class`` (CLASS_*:
    retransmission / out-of-order). Appends RTT samples to ``rtt`` (6 rows, see ``_emit_rtt``;
    thinned by ``rtt_lim``) from column ``nr0``, finished bins to ``bins`` from ``nb0``, and
    the rows whose payload to keep for handshake parsing to ``snips`` from ``ns0`` (row 0: the
    row; row 1: TCP, the payload's byte offset in its direction's stream, else -1).

    Returns (next row, n_flows, nr, nb, ns, stop): STOP_FLOWS_FULL asks the caller to grow the
    flow arrays (and hash table) and call again from the returned row (nothing of it was done
    yet); STOP_RINGS_FULL, after a row took the pool's last ring, to grow it (``R`` and
    ``pool``, see :func:`_ring_take`) and go on from the returned row.
    """
    cap = S.shape[0]
    nr = nr0
    nb = nb0
    ns = ns0
    # the next row's hash-table entry is read one row ahead, so that its cache miss overlaps
    # this row's work (waiting for it was ~1/10 of this kernel's time)
    mask = np.uint64(H.shape[0] - 1)
    nslot = np.uint64(0)
    nh = np.int64(0)
    ahead = False
    rings_full = False
    for r in range(row0, n):
        ri = np.uint64(r)  # unsigned: Numba skips its negative-index wrap (see decode.py)
        slot0, h0, have = nslot, nh, ahead
        ahead = r + 1 < n
        if ahead:
            r1 = ri + np.uint64(1)
            nslot = _hash(u64[0, r1], u64[1, r1], u64[2, r1], u64[3, r1], np.int64(u16[2, r1]),
                          np.int64(u16[3, r1]), np.int64(u8[1, r1])) & mask
            nh = np.int64(H[nslot])
        out_flow[ri] = -1
        out_dir[ri] = 0
        out_good[ri] = 0
        out_class[ri] = CLASS_NEW
        proto = np.int64(u8[1, ri])
        if u8[2, ri] != 0 or (proto != 6 and proto != 17) or u8[3, ri] == 2 or u8[0, ri] == 0:
            continue
        ts = i64[0, ri]
        shi = u64[0, ri]
        slo = u64[1, ri]
        dhi = u64[2, ri]
        dlo = u64[3, ri]
        sp = np.int64(u16[2, ri])
        dp = np.int64(u16[3, ri])
        flags = np.int64(u16[4, ri])
        if have:
            slot, f, d = _probe(H, A, S, slot0, h0, shi, slo, dhi, dlo, sp, dp, proto)
        else:
            slot, f, d = _lookup(H, A, S, shi, slo, dhi, dlo, sp, dp, proto)
        syn = proto == 6 and (flags & _TCP_SYN) != 0
        pure_syn = syn and (flags & _TCP_ACK) == 0
        prev = -1
        if f >= 0 and pure_syn:
            # a new connection on a reused 5-tuple (RFC 9293 sec 3.10.7.4 TIME-WAIT reuse):
            # after the old one closed, or a SYN with another ISN than the flow's own SYN
            seq = np.int64(u32[2, ri])
            if S[f, F_CLOSED] == 1 or (S[f, F_SYN_SEQ] >= 0 and S[f, F_SYN_SEQ] != seq):
                prev = f
                f = -1
        if f < 0:
            if n_flows >= cap:
                return r, n_flows, nr, nb, ns, STOP_FLOWS_FULL
            f = n_flows
            n_flows += 1
            _new_flow(S, A, f, shi, slo, dhi, dlo, sp, dp, proto, np.int64(u8[0, ri]), np.int64(u8[7, ri]), ts)
            S[f, F_PREV] = prev
            if prev >= 0:
                _ring_free(A, S, prev, pool)  # the hash table now leads to f: prev gets no more packets
            H[slot] = f + 1
            if ahead:
                nh = np.int64(H[nslot])  # the next row may hash to this very slot
            d = 0
        o = 1 - d
        out_flow[ri] = f
        out_dir[ri] = d
        plen = np.int64(u32[6, ri])
        S[f, F_LAST_TS] = ts
        S[f, D_PKTS + d] += 1
        S[f, D_WIRE + d] += np.int64(u32[1, ri])
        S[f, D_PAYLOAD + d] += plen
        if plen > 0:
            S[f, D_DATA_PKTS + d] += 1
            if S[f, D_FIRST_DATA_TS + d] < 0:
                S[f, D_FIRST_DATA_TS + d] = ts
            S[f, D_LAST_DATA_TS + d] = ts
        pcap = np.int64(u32[7, ri])
        if proto == 17:
            good = plen
            S[f, D_UNIQUE + d] += plen
            out_good[ri] = plen
            # QUIC (RFC 9000 sec 17): long header = first bit set; Initial type bits 00 (v1,
            # drafts) or 01 (v2, RFC 9369 sec 3.2); version 0 is Version Negotiation
            if pcap >= 5:
                # the payload's first bytes, as the decoder read them while the record was in
                # cache (reading them from the chunk here missed it: ~1/4 of this kernel's time)
                head = u64[4, ri]
                b0 = np.int64(head >> np.uint64(56))
                if b0 & 0x80:
                    ver = np.int64((head >> np.uint64(24)) & np.uint64(0xFFFFFFFF))
                    ptype = (b0 >> 4) & 3
                    initial = ver != 0 and ((ver != _QUIC_V2 and ptype == 0) or (ver == _QUIC_V2 and ptype == 1))
                    # a client's Initial has the fixed bit (RFC 9000 sec 17.2) and fills a datagram of
                    # at least 1200 bytes (sec 14.1): a first "Initial" without both is not QUIC (one
                    # DNS query in 8 starts with such a byte)
                    if initial and S[f, F_QUIC_CI_TS] < 0 and ((b0 & 0x40) == 0 or plen < 1200):
                        initial = False
                    if initial and (S[f, F_QUIC_CI_TS] < 0 or S[f, F_CLIENT] == d):
                        if S[f, F_QUIC_CI_TS] < 0:
                            S[f, F_QUIC_CI_TS] = ts
                            S[f, F_QUIC_VERSION] = ver
                        _set_role(S, f, d, ROLE_QUIC)
                    elif ver != 0 and S[f, F_QUIC_CI_TS] >= 0 and S[f, F_CLIENT] == o and S[f, F_QUIC_SR_TS] < 0:
                        S[f, F_QUIC_SR_TS] = ts
                    # only the client's Initials are decrypted: once the role is known from
                    # them (it never changes after), the server's are not kept
                    if S[f, D_SNIPS + d] < snip_max and (S[f, F_ROLE_SRC] != ROLE_QUIC or S[f, F_CLIENT] == d):
                        S[f, D_SNIPS + d] += 1
                        snips[0, ns] = r
                        snips[1, ns] = -1
                        ns += 1
                elif b0 & 0x40:
                    # short header: spin bit (RFC 9000 sec 17.4); one RTT between edges
                    spin = (b0 >> 5) & 1
                    last = S[f, D_SPIN_LAST + d]
                    if last >= 0 and spin != last:
                        if S[f, D_SPIN_FLIPS + d] >= 1:
                            nr = _emit_rtt(rtt, nr, f, ts, ts - S[f, D_SPIN_TS + d], SAMPLE_SPIN, d, S, rtt_lim)
                        S[f, D_SPIN_TS + d] = ts
                        S[f, D_SPIN_FLIPS + d] += 1
                    S[f, D_SPIN_LAST + d] = spin
            nb = _bin_add(S, f, d, ts, bin_ns, good, plen, 0, bins, nb)
            continue
        # ---- TCP ----------------------------------------------------------------------------
        seq = np.int64(u32[2, ri])
        ack = np.int64(u32[3, ri])
        win = np.int64(u16[5, ri])
        opts = np.int64(u8[5, ri])
        fin = (flags & _TCP_FIN) != 0
        rst = (flags & _TCP_RST) != 0
        if syn:
            if pure_syn:
                _set_role(S, f, d, ROLE_SYN)
                if S[f, F_SYN_TS] < 0:
                    S[f, F_SYN_TS] = ts
                    S[f, F_SYN_SEQ] = seq
            else:
                _set_role(S, f, o, ROLE_SYNACK)
                if S[f, F_SYNACK_TS] < 0:
                    S[f, F_SYNACK_TS] = ts
            S[f, D_SYN_SEEN + d] = 1
            S[f, D_WS + d] = np.int64(u8[4, ri]) if (opts & _OPT_WS) else -1
            if opts & _OPT_MSS:
                S[f, D_MSS + d] = np.int64(u16[6, ri])
            if S[f, D_HAS_BASE + d] == 0 or (S[f, D_MAX_END + d] <= 1 and S[f, D_BASE + d] != seq):
                S[f, D_HAS_BASE + d] = 1
                S[f, D_BASE + d] = seq
                S[f, D_MAX_END + d] = 0
                S[f, D_MAX_TS + d] = ts
        elif (flags & _TCP_ACK) and S[f, F_SYNACK_TS] >= 0 and S[f, F_HSACK_TS] < 0 and S[f, F_CLIENT] == d:
            S[f, F_HSACK_TS] = ts  # third packet of the handshake
        if S[f, D_HAS_BASE + d] == 0:
            S[f, D_HAS_BASE + d] = 1
            S[f, D_BASE + d] = seq
            S[f, D_MAX_END + d] = 0
            S[f, D_MAX_TS + d] = ts
        rel = _unwrap(S, f, d, seq)
        seglen = plen + (1 if syn else 0) + (1 if fin else 0)
        end = rel + seglen
        good = 0
        retx = 0
        if plen > 0:
            # the ClientHello is looked for in the client's stream; the server's is kept only
            # while a later SYN could still make it the client's (ROLE_SYN is final)
            if S[f, D_SNIPS + d] < snip_max and pcap > 0 and (S[f, F_ROLE_SRC] != ROLE_SYN or S[f, F_CLIENT] == d):
                S[f, D_SNIPS + d] += 1
                snips[0, ns] = r
                snips[1, ns] = rel - (1 if S[f, D_SYN_SEEN + d] == 1 else 0) + (1 if syn else 0)
                ns += 1
        if seglen > 0:
            mx = S[f, D_MAX_END + d]
            if rel < mx:
                if plen <= 1 and end == mx and not syn and not fin:
                    pass  # keep-alive probe: one old byte, not a retransmission
                elif (S[f, D_DUPACK_RUN + o] >= 2 and S[f, D_ACK_RAW + o] == seq
                        and ts - S[f, D_ACK_TS + o] < 20_000_000):
                    # fast retransmission (RFC 5681 sec 3.2) answering the duplicate ACKs
                    S[f, D_RETX + d] += 1
                    retx = 1
                    out_class[ri] = CLASS_RETX
                elif ts - S[f, D_MAX_TS + d] < _ooo_threshold(S, f, ooo_ns) and end != mx:
                    # arrived soon after the highest segment and is not a copy of it: reordering
                    S[f, D_OOO + d] += 1
                    out_class[ri] = CLASS_OOO
                else:
                    S[f, D_RETX + d] += 1
                    retx = 1
                    out_class[ri] = CLASS_RETX
                # Karn (RFC 6298 sec 3): a segment sent more than once gives only ambiguous samples
                if A[f, A_RING] == 0:
                    rings_full = _ring_take(A, f, pool, R.shape[0])
                _ring_retransmit(R, A, S, f, d, ring, rel, end, ts)
                if end > mx:
                    good = end - mx
                    S[f, D_MAX_END + d] = end
                    S[f, D_MAX_TS + d] = ts
            else:
                good = end - mx
                S[f, D_MAX_END + d] = end
                S[f, D_MAX_TS + d] = ts
                if seglen > 0:  # SYN and FIN are acknowledged like data (RFC 9293 sec 3.4)
                    if A[f, A_RING] == 0:
                        rings_full = _ring_take(A, f, pool, R.shape[0])
                    g = np.int64(A[f, A_RING]) - 1
                    base_i = d * 2 * ring
                    h = S[f, D_RING_HEAD + d]
                    cnt = S[f, D_RING_N + d]
                    if cnt == ring:  # full: forget the oldest outstanding segment
                        h = (h + 1) % ring
                        cnt -= 1
                        S[f, D_RING_HEAD + d] = h
                    j = (h + cnt) % ring
                    R[g, base_i + 2 * j] = end
                    R[g, base_i + 2 * j + 1] = ts
                    S[f, D_RING_N + d] = cnt + 1
            if good > 0:
                if syn:
                    good -= 1
                if fin:
                    good -= 1
                if good < 0:
                    good = 0
            S[f, D_UNIQUE + d] += good
            out_good[ri] = good
        # ---- ACK side: what d says about the other direction's data ------------------------
        if (flags & _TCP_ACK) and S[f, D_HAS_BASE + o] == 1:
            ack_rel = _unwrap(S, f, o, ack)
            base_o = o * 2 * ring
            h = S[f, D_RING_HEAD + o]
            cnt = S[f, D_RING_N + o]
            g = np.int64(A[f, A_RING]) - 1  # a ring is held whenever cnt > 0
            while cnt > 0:
                e = R[g, base_o + 2 * h]
                if e > ack_rel:
                    break
                if e == ack_rel:
                    sent = R[g, base_o + 2 * h + 1]
                    if sent & _AMBIG:
                        nr = _emit_rtt(rtt, nr, f, ts, ts - (sent ^ _AMBIG), SAMPLE_DATA_ACK_AMBIGUOUS, o, S, rtt_lim)
                    else:
                        nr = _emit_rtt(rtt, nr, f, ts, ts - sent, SAMPLE_DATA_ACK, o, S, rtt_lim)
                h = (h + 1) % ring
                cnt -= 1
            S[f, D_RING_HEAD + o] = h
            S[f, D_RING_N + o] = cnt
            # duplicate ACK (RFC 5681 sec 2): no data, no SYN/FIN/RST, same ACK and window,
            # while the other side has data outstanding
            if (plen == 0 and not syn and not fin and not rst and ack == S[f, D_ACK_RAW + d]
                    and win == S[f, D_WIN_RAW + d] and S[f, D_MAX_END + o] > ack_rel):
                S[f, D_DUPACK + d] += 1
                S[f, D_DUPACK_RUN + d] += 1
            elif ack != S[f, D_ACK_RAW + d]:
                S[f, D_DUPACK_RUN + d] = 0
            S[f, D_ACK_TS + d] = ts
            # SACK (RFC 2018): a block above the cumulative ACK reports a hole (a loss)
            if opts & _OPT_SACK:
                sle = np.int64(u32[8, ri])
                sle_rel = _unwrap(S, f, o, sle)
                if sle_rel > ack_rel:
                    if S[f, D_SACK_ACTIVE + d] == 0:
                        S[f, D_SACK_EVENTS + d] += 1
                    S[f, D_SACK_ACTIVE + d] = 1
                else:
                    S[f, D_SACK_ACTIVE + d] = 0
            else:
                S[f, D_SACK_ACTIVE + d] = 0
            S[f, D_ACK_REL + d] = ack_rel
            S[f, D_ACK_RAW + d] = ack
            # receive window (RFC 7323 sec 2: scaled only when both SYNs carried the option;
            # never applied to the SYN segments themselves)
            if not syn:
                if S[f, D_WS + d] >= 0 and S[f, D_WS + o] >= 0:
                    # a shift above 14 is used as 14 (RFC 7323 sec 2.3)
                    S[f, D_WIN_BYTES + d] = win << min(S[f, D_WS + d], 14)
                elif S[f, D_SYN_SEEN + d] == 1 and S[f, D_SYN_SEEN + o] == 1:
                    S[f, D_WIN_BYTES + d] = win
                else:
                    S[f, D_WIN_BYTES + d] = win
                    S[f, D_WINLIM_UNKNOWN + d] = 1
                if win == 0 and not rst:
                    if S[f, D_ZW_SINCE + d] < 0:
                        S[f, D_ZW_SINCE + d] = ts
                elif S[f, D_ZW_SINCE + d] >= 0:
                    S[f, D_ZW_NS + d] += ts - S[f, D_ZW_SINCE + d]
                    S[f, D_ZW_SINCE + d] = -1
        S[f, D_WIN_RAW + d] = win
        # ---- was d's sending limited by the other side's receive window? -------------------
        if plen > 0 and S[f, D_WIN_BYTES + o] >= 0 and S[f, D_ACK_REL + o] >= 0:
            mss = S[f, D_MSS + d] if S[f, D_MSS + d] > 0 else 1460
            inflight = S[f, D_MAX_END + d] - S[f, D_ACK_REL + o]
            limited = inflight + mss > S[f, D_WIN_BYTES + o]
            if limited and S[f, D_RWL_SINCE + d] < 0:
                S[f, D_RWL_SINCE + d] = ts
            elif not limited and S[f, D_RWL_SINCE + d] >= 0:
                S[f, D_RWL_NS + d] += ts - S[f, D_RWL_SINCE + d]
                S[f, D_RWL_SINCE + d] = -1
        # ---- timestamps option: TSval -> first echo (RFC 7323 sec 4.1) ---------------------
        if opts & _OPT_TS:
            tsval = np.int64(u32[4, ri])
            tsecr = np.int64(u32[5, ri])
            if S[f, D_TS_TS + o] >= 0 and (flags & _TCP_ACK):
                diff = ((tsecr - S[f, D_TS_VAL + o] + _HALF) % _MOD) - _HALF
                if diff == 0:
                    nr = _emit_rtt(rtt, nr, f, ts, ts - S[f, D_TS_TS + o], SAMPLE_TS_ECHO, o, S, rtt_lim)
                    S[f, D_TS_TS + o] = -1
                elif diff > 0:
                    S[f, D_TS_TS + o] = -1  # a later value was echoed first: no clean sample
            # TSvals never decrease (RFC 7323 sec 5.4): a value differing from the previous
            # segment's is sent for the first time, the only time to start timing it
            if S[f, D_TS_TS + d] < 0 and tsval != S[f, D_TS_PREV + d]:
                S[f, D_TS_VAL + d] = tsval
                S[f, D_TS_TS + d] = ts
            S[f, D_TS_PREV + d] = tsval
        if fin:
            S[f, D_FIN + d] = 1
        if rst:
            S[f, D_RST + d] = 1
        if rst or (S[f, D_FIN] == 1 and S[f, D_FIN + 1] == 1):
            S[f, F_CLOSED] = 1
        if S[f, F_CLOSED] == 1 and S[f, D_RING_N] == 0 and S[f, D_RING_N + 1] == 0:
            _ring_free(A, S, f, pool)  # nothing left to time: the row serves the next connection
        nb = _bin_add(S, f, d, ts, bin_ns, good, plen, retx, bins, nb)
        if rings_full:
            return r + 1, n_flows, nr, nb, ns, STOP_RINGS_FULL
    return n, n_flows, nr, nb, ns, STOP_DONE


@flat_kernel
def flush_bins(S, n_flows, bins):
    """Emit every flow's open bin and close open zero-window / window-limited intervals.

    Returns the number of bins written (at most 2 per flow).
    """
    nb = 0
    for f in range(n_flows):
        last = S[f, F_LAST_TS]
        for d in range(2):
            if S[f, D_BIN_PKTS + d] > 0:
                nb = _emit_bin(S, f, d, bins, nb)
                S[f, D_BIN_PKTS + d] = 0
            if S[f, D_ZW_SINCE + d] >= 0:
                S[f, D_ZW_NS + d] += last - S[f, D_ZW_SINCE + d]
                S[f, D_ZW_SINCE + d] = -1
            if S[f, D_RWL_SINCE + d] >= 0:
                S[f, D_RWL_NS + d] += last - S[f, D_RWL_SINCE + d]
                S[f, D_RWL_SINCE + d] = -1
    return nb


@flat_kernel
def place_rtts(flow, rank, ts, rtt, kind, sender, starts, client, out):
    """Put RTT samples (compact columns, in capture order) at their places in ``out`` (5 rows:
    flow, ts, rtt, kind, 1 when the client sent the timed data): flow ``f``'s samples start at
    ``starts[f]`` and each goes to that plus its rank in its flow (see ``_emit_rtt``).
    One pass instead of a gather per field: the order is (flow, capture order)."""
    for i in range(flow.shape[0]):
        f = np.int64(flow[i])
        p = np.uint64(starts[f] + np.int64(rank[i]))
        out[0, p] = f
        out[1, p] = ts[i]
        out[2, p] = rtt[i]
        out[3, p] = np.int64(kind[i])
        out[4, p] = 1 if np.int64(sender[i]) == client[f] else 0
