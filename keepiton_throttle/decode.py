"""The decode kernel: capture records -> packet-table rows, in one Numba pass over raw bytes.

One kernel, :func:`decode_records`, walks the records of a buffer (classic pcap records or
pcapng blocks), decodes each frame from its link layer down to TCP/UDP and writes one row per
packet (two for a tunnelled packet) into preallocated column blocks (see ``packets.py``).
It never raises and never reads outside ``buf[:n_valid]``: every offset is bounds-checked, and
whatever it cannot handle itself it hands back to Python with a stop code:

* ``STOP_NEED_MORE``: the next record is incomplete; read more bytes and call again from ``pos``;
* ``STOP_OUTPUT_FULL``: the output blocks are full; flush them and call again;
* ``STOP_BLOCK``: a pcapng Section Header or Interface Description Block starts at ``pos``
  (rare; parsed in Python, which updates the interface arrays);
* ``STOP_CORRUPT``: the record framing at ``pos`` is damaged (impossible length);
* ``STOP_TOO_LARGE``: the record at ``pos`` needs ``info`` bytes, more than the buffer holds.

The C99 twin in ``native/`` implements exactly the same contract; tests compare them.

References: pcap (draft-ietf-opsawg-pcap), pcapng (draft-ietf-opsawg-pcapng), LINKTYPE values
(tcpdump.org/linktypes.html), IPv4 (RFC 791), IPv6 (RFC 8200), TCP (RFC 9293) and its options
(RFC 7323 timestamps/window scale, RFC 2018 SACK), UDP (RFC 768), VXLAN (RFC 7348),
GRE (RFC 2784, 2890; enhanced GRE of PPTP, RFC 2637), PPPoE (RFC 2516).
"""

from __future__ import annotations

import numpy as np

from .config import flat_kernel, inline_kernel
from .packets import BLOCKS

# Stop codes.
STOP_NEED_MORE = 0
STOP_OUTPUT_FULL = 1
STOP_BLOCK = 2
STOP_CORRUPT = 3
STOP_TOO_LARGE = 4

# Record formats.
FMT_PCAP_US = 0
FMT_PCAP_NS = 1
FMT_PCAPNG = 2

# pcapng block types (draft-ietf-opsawg-pcapng sec 4).
BT_SHB = 0x0A0D0D0A
BT_IDB = 0x00000001
BT_PB = 0x00000002  # obsolete Packet Block
BT_SPB = 0x00000003
BT_EPB = 0x00000006

# Timestamp resolution kinds (if_tsresol): decimal 10^-exp or binary 2^-exp seconds.
TSRES_DEC = 0
TSRES_BIN = 1

# Column rows (must match packets.py BLOCKS order).
_I_TS, _I_POFF, _I_FRAME = 0, 1, 2
_Q_SHI, _Q_SLO, _Q_DHI, _Q_DLO, _Q_HEAD = 0, 1, 2, 3, 4
(_W_CAP, _W_WIRE, _W_SEQ, _W_ACK, _W_TSV, _W_TSE, _W_PLEN, _W_PCAP, _W_SLE, _W_SRE) = range(10)
(_H_IFACE, _H_LINK, _H_SPORT, _H_DPORT, _H_FLAGS, _H_WIN, _H_MSS) = range(7)
(_B_IPV, _B_PROTO, _B_STATUS, _B_FRAG, _B_WS, _B_OPTS, _B_SACKN, _B_ENCAP, _B_TTL) = range(9)
_N_I64, _N_U64, _N_U32, _N_U16, _N_U8 = (len(names) for _, _, names in BLOCKS)

_OK = 0
_TRUNC = 1
_MALF = 2
_UNSUP = 3

_ETH_IPV4 = 0x0800
_ETH_IPV6 = 0x86DD
_ETH_VLAN = 0x8100
_ETH_QINQ = 0x88A8
_ETH_QINQ_OLD = 0x9100
_ETH_PPPOE_SESS = 0x8864
_ETH_TEB = 0x6558  # transparent Ethernet bridging (GRE carrying Ethernet)
_ETH_PPP = 0x880B  # PPP over enhanced GRE (PPTP)

_PPP_IPV4 = 0x0021
_PPP_IPV6 = 0x0057

_VXLAN_PORT = 4789
_MAX_VLAN_DEPTH = 16
_MAX_EXT_HEADERS = 16

# "network layer" kinds returned by the link-layer step.
_NET_NONE = 0
_NET_IPV4 = 4
_NET_IPV6 = 6
_NET_IP_ANY = 1  # raw IP: look at the version nibble


@flat_kernel
def _be16(b, i):
    return (np.int64(b[i]) << 8) | np.int64(b[i + 1])


@flat_kernel
def _be32(b, i):
    return (
        (np.int64(b[i]) << 24)
        | (np.int64(b[i + 1]) << 16)
        | (np.int64(b[i + 2]) << 8)
        | np.int64(b[i + 3])
    )


@flat_kernel
def _le32(b, i):
    return (
        (np.int64(b[i + 3]) << 24)
        | (np.int64(b[i + 2]) << 16)
        | (np.int64(b[i + 1]) << 8)
        | np.int64(b[i])
    )


@flat_kernel
def _rd32(b, i, swapped):
    """32-bit field in the file's byte order (``swapped``: big-endian file)."""
    if swapped:
        return _be32(b, i)
    return _le32(b, i)


@flat_kernel
def _rd16(b, i, swapped):
    if swapped:
        return _be16(b, i)
    return (np.int64(b[i + 1]) << 8) | np.int64(b[i])


@flat_kernel
def _be64(b, i):
    hi = np.uint64(_be32(b, i))
    lo = np.uint64(_be32(b, i + 4))
    return (hi << np.uint64(32)) | lo


@inline_kernel
def _head8(b, off, end):
    """The first 8 bytes of ``b[off:end]`` as a big-endian integer, zero-padded on the right
    (column ``payload_head``)."""
    if off + 8 <= end:
        return _be64(b, off)
    v = np.uint64(0)
    for k in range(8):
        v = v << np.uint64(8)
        if off + k < end:
            v = v | np.uint64(b[off + k])
    return v


@flat_kernel
def _ts_to_ns(ts, kind, exp):
    """pcapng timestamp in units of 10^-exp or 2^-exp s -> ns (integer arithmetic)."""
    if kind == TSRES_DEC:
        if exp == 9:
            return ts
        if exp < 9:
            m = np.int64(1)
            for _ in range(9 - exp):
                m *= 10
            return ts * m
        d = np.int64(1)
        for _ in range(exp - 9):
            d *= 10
        return ts // d
    # binary fraction: split to avoid overflow for exp <= 33
    if exp <= 33:
        sec = ts >> exp
        frac = ts & ((np.int64(1) << exp) - 1)
        return sec * np.int64(1_000_000_000) + ((frac * np.int64(1_000_000_000)) >> exp)
    return np.int64(np.float64(ts) / (2.0**exp) * 1e9)


@inline_kernel
def _clear_row(i64, u64, u32, u16, u8, r):
    # constant trip counts, so that LLVM unrolls these into plain stores
    for k in range(_N_I64):
        i64[k, r] = 0
    for k in range(_N_U64):
        u64[k, r] = 0
    for k in range(_N_U32):
        u32[k, r] = 0
    for k in range(_N_U16):
        u16[k, r] = 0
    for k in range(_N_U8):
        u8[k, r] = 0
    i64[_I_POFF, r] = -1
    u8[_B_WS, r] = 255


@flat_kernel
def _ethertype_walk(b, off, end):
    """Follow the ethertype at ``b[off-2:off]`` (Ethernet, SLL) through VLAN tags and PPPoE."""
    return _ethertype_walk_at(b, _be16(b, off - 2), off, end)


@flat_kernel
def _ppp_walk(b, off, end):
    """PPP (RFC 1661), optionally in HDLC-like framing (RFC 1662: FF 03 first)."""
    if off + 2 <= end and b[off] == 0xFF and b[off + 1] == 0x03:
        off += 2
    if off + 1 > end:
        return _NET_NONE, off, _TRUNC, -1
    if b[off] & 1:  # protocol-field compression: one-byte protocol
        proto = np.int64(b[off])
        off += 1
    else:
        if off + 2 > end:
            return _NET_NONE, off, _TRUNC, -1
        proto = _be16(b, off)
        off += 2
    if proto == _PPP_IPV4:
        return _NET_IPV4, off, _OK, -1
    if proto == _PPP_IPV6:
        return _NET_IPV6, off, _OK, -1
    return _NET_NONE, off, _UNSUP, -1


@inline_kernel
def _link_walk(b, off, end, linktype):
    """Strip the link layer. Returns ``(net_kind, network header offset, status)``."""
    if linktype == 1:  # Ethernet
        if off + 14 > end:
            return _NET_NONE, off, _TRUNC, -1
        et = _be16(b, off + 12)
        if et <= 1500:  # IEEE 802.3 length field: LLC, not decoded
            return _NET_NONE, off, _UNSUP, -1
        return _ethertype_walk(b, off + 14, end)
    if linktype == 101 or linktype == 12 or linktype == 14:  # raw IP
        return _NET_IP_ANY, off, _OK, -1
    if linktype == 228:
        return _NET_IPV4, off, _OK, -1
    if linktype == 229:
        return _NET_IPV6, off, _OK, -1
    if linktype == 113:  # Linux cooked v1: 16 bytes, protocol at 14
        if off + 16 > end:
            return _NET_NONE, off, _TRUNC, -1
        return _ethertype_walk(b, off + 16, end)
    if linktype == 276:  # Linux cooked v2: 20 bytes, protocol at 0
        if off + 20 > end:
            return _NET_NONE, off, _TRUNC, -1
        return _ethertype_walk_at(b, _be16(b, off), off + 20, end)
    if linktype == 0 or linktype == 108:  # BSD loopback (host order) / OpenBSD loop (network)
        if off + 4 > end:
            return _NET_NONE, off, _TRUNC, -1
        fam = _le32(b, off) if linktype == 0 else _be32(b, off)
        if linktype == 0 and fam > 0xFFFF:
            fam = _be32(b, off)  # written on a big-endian host
        if fam == 2:
            return _NET_IPV4, off + 4, _OK, -1
        if fam == 10 or fam == 24 or fam == 28 or fam == 30 or fam == 23:
            return _NET_IPV6, off + 4, _OK, -1
        return _NET_NONE, off, _UNSUP, -1
    if linktype == 9 or linktype == 50:  # PPP, PPP in HDLC-like framing
        return _ppp_walk(b, off, end)
    return _NET_NONE, off, _UNSUP, -1


@flat_kernel
def _ethertype_walk_at(b, et, off, end):
    """Follow ethertype ``et`` whose payload starts at ``off`` through VLAN tags and PPPoE."""
    depth = 0
    while et == _ETH_VLAN or et == _ETH_QINQ or et == _ETH_QINQ_OLD:
        if depth >= _MAX_VLAN_DEPTH:
            return _NET_NONE, off, _MALF, -1
        if off + 4 > end:
            return _NET_NONE, off, _TRUNC, -1
        et = _be16(b, off + 2)
        off += 4
        depth += 1
    if et == _ETH_IPV4:
        return _NET_IPV4, off, _OK, -1
    if et == _ETH_IPV6:
        return _NET_IPV6, off, _OK, -1
    if et == _ETH_PPPOE_SESS:
        # RFC 2516 sec 4: ver/type(1) code(1) session(2) length(2), then the PPP protocol(2).
        # LENGTH counts the PPP protocol field and bounds the IP packet (as Wireshark does).
        if off + 8 > end:
            return _NET_NONE, off, _TRUNC, -1
        plen = _be16(b, off + 4) - 2
        proto = _be16(b, off + 6)
        off += 8
        if plen < 0:
            return _NET_NONE, off, _MALF, -1
        if proto == _PPP_IPV4:
            return _NET_IPV4, off, _OK, plen
        if proto == _PPP_IPV6:
            return _NET_IPV6, off, _OK, plen
    return _NET_NONE, off, _UNSUP, -1


@inline_kernel
def _tcp_options(b, off, end, u32, u16, u8, r):
    """Parse TCP options in ``b[off:end]`` (RFC 9293 sec 3.2). Returns a status."""
    opts = 0
    while off < end:
        kind = b[off]
        if kind == 0:  # end of option list
            break
        if kind == 1:  # no-operation
            off += 1
            continue
        if off + 2 > end:
            u8[_B_OPTS, r] = opts
            return _TRUNC
        olen = np.int64(b[off + 1])
        if olen < 2:
            u8[_B_OPTS, r] = opts
            return _MALF
        if off + olen > end:
            u8[_B_OPTS, r] = opts
            return _TRUNC
        if kind == 2 and olen == 4:
            u16[_H_MSS, r] = _be16(b, off + 2)
            opts |= 1
        elif kind == 3 and olen == 3:
            u8[_B_WS, r] = b[off + 2]
            opts |= 2
        elif kind == 4 and olen == 2:
            opts |= 4
        elif kind == 5 and olen >= 10 and (olen - 2) % 8 == 0:
            u8[_B_SACKN, r] = (olen - 2) // 8
            u32[_W_SLE, r] = _be32(b, off + 2)
            u32[_W_SRE, r] = _be32(b, off + 6)
            opts |= 8
        elif kind == 8 and olen == 10:
            u32[_W_TSV, r] = _be32(b, off + 2)
            u32[_W_TSE, r] = _be32(b, off + 6)
            opts |= 16
        off += olen
    u8[_B_OPTS, r] = opts
    return _OK


@inline_kernel
def _decode_ip(b, off, end, wire_end, net, base_off, i64, u64, u32, u16, u8, r):
    """Decode IP + transport at ``b[off:end]`` into row ``r``.

    ``wire_end`` is where the frame ends on the wire (may exceed ``end`` when the capture was
    cut). Returns ``(status, tunnel_kind, tunnel_off, tunnel_end, tunnel_wire_end)``;
    tunnel_kind is 0 (none), 1 (Ethernet inside), 4/6 (IP inside), 9 (PPP inside).
    """
    if net == _NET_IP_ANY:
        if off + 1 > end:
            return _TRUNC, 0, 0, 0, 0
        v = b[off] >> 4
        if v == 4:
            net = _NET_IPV4
        elif v == 6:
            net = _NET_IPV6
        else:
            return _UNSUP, 0, 0, 0, 0
    proto = 0
    l4 = 0
    l4_wire_end = 0  # end of the IP payload on the wire (frame offsets)
    frag = 0
    if net == _NET_IPV4:
        u8[_B_IPV, r] = 4
        if off + 20 > end:
            return _TRUNC, 0, 0, 0, 0
        if (b[off] >> 4) != 4:
            return _MALF, 0, 0, 0, 0
        ihl = np.int64(b[off] & 0x0F) * 4
        total = _be16(b, off + 2)
        u8[_B_TTL, r] = b[off + 8]
        proto = np.int64(b[off + 9])
        u8[_B_PROTO, r] = proto
        u64[_Q_SHI, r] = 0
        u64[_Q_SLO, r] = np.uint64(0xFFFF00000000) | np.uint64(_be32(b, off + 12))
        u64[_Q_DHI, r] = 0
        u64[_Q_DLO, r] = np.uint64(0xFFFF00000000) | np.uint64(_be32(b, off + 16))
        if ihl < 20:
            return _MALF, 0, 0, 0, 0
        if total == 0:
            # TSO / BIG TCP (RFC 2675 style): the length field is 0, the frame length rules
            total = wire_end - off
        if total < ihl:
            return _MALF, 0, 0, 0, 0
        fragword = _be16(b, off + 6)
        foff = fragword & 0x1FFF
        if foff != 0:
            frag = 2
        elif fragword & 0x2000:
            frag = 1
        u8[_B_FRAG, r] = frag
        l4 = off + ihl
        l4_wire_end = off + total
        if l4_wire_end > wire_end:
            l4_wire_end = wire_end  # "total length exceeds packet length": the frame rules
        if l4 > end:
            return _TRUNC, 0, 0, 0, 0
    else:
        u8[_B_IPV, r] = 6
        if off + 40 > end:
            return _TRUNC, 0, 0, 0, 0
        if (b[off] >> 4) != 6:
            return _MALF, 0, 0, 0, 0
        plen = _be16(b, off + 4)
        u8[_B_TTL, r] = b[off + 7]
        u64[_Q_SHI, r] = _be64(b, off + 8)
        u64[_Q_SLO, r] = _be64(b, off + 16)
        u64[_Q_DHI, r] = _be64(b, off + 24)
        u64[_Q_DLO, r] = _be64(b, off + 32)
        if plen == 0:  # jumbogram / BIG TCP: the frame length rules
            plen = wire_end - off - 40
        l4_wire_end = off + 40 + plen
        if l4_wire_end > wire_end:
            l4_wire_end = wire_end
        nh = np.int64(b[off + 6])
        l4 = off + 40
        # RFC 8200 sec 4: walk the extension-header chain.
        for _ in range(_MAX_EXT_HEADERS):
            if nh == 0 or nh == 43 or nh == 60 or nh == 135 or nh == 139 or nh == 140:
                if l4 + 8 > end:
                    u8[_B_PROTO, r] = nh
                    return _TRUNC, 0, 0, 0, 0
                nxt = np.int64(b[l4])
                l4 += (np.int64(b[l4 + 1]) + 1) * 8
                nh = nxt
            elif nh == 44:  # fragment header
                if l4 + 8 > end:
                    u8[_B_PROTO, r] = nh
                    return _TRUNC, 0, 0, 0, 0
                nxt = np.int64(b[l4])
                fo = _be16(b, l4 + 2)
                if (fo >> 3) != 0:
                    frag = 2
                elif fo & 1:
                    frag = 1
                l4 += 8
                nh = nxt
            elif nh == 51:  # authentication header: length in 4-byte units minus 2
                if l4 + 8 > end:
                    u8[_B_PROTO, r] = nh
                    return _TRUNC, 0, 0, 0, 0
                nxt = np.int64(b[l4])
                l4 += (np.int64(b[l4 + 1]) + 2) * 4
                nh = nxt
            else:
                break
        proto = nh
        u8[_B_PROTO, r] = proto
        u8[_B_FRAG, r] = frag
        if l4 > l4_wire_end:
            return _MALF, 0, 0, 0, 0
        if l4 > end:
            return _TRUNC, 0, 0, 0, 0
    if frag == 2:
        # a later fragment carries no transport header
        plen4 = l4_wire_end - l4
        u32[_W_PLEN, r] = plen4 if plen4 > 0 else 0
        return _OK, 0, 0, 0, 0
    # captured end of the IP payload (Ethernet padding beyond the IP length is not payload)
    cap_end = end if end < l4_wire_end else l4_wire_end
    if proto == 6:
        if l4 + 4 <= cap_end:
            u16[_H_SPORT, r] = _be16(b, l4)
            u16[_H_DPORT, r] = _be16(b, l4 + 2)
        if l4 + 20 > cap_end:
            return (_TRUNC if cap_end < l4_wire_end else _MALF), 0, 0, 0, 0
        u32[_W_SEQ, r] = _be32(b, l4 + 4)
        u32[_W_ACK, r] = _be32(b, l4 + 8)
        doff = np.int64(b[l4 + 12] >> 4) * 4
        u16[_H_FLAGS, r] = ((np.int64(b[l4 + 12]) & 1) << 8) | np.int64(b[l4 + 13])
        u16[_H_WIN, r] = _be16(b, l4 + 14)
        if doff < 20 or l4 + doff > l4_wire_end:
            return _MALF, 0, 0, 0, 0
        hend = l4 + doff
        st = _tcp_options(b, l4 + 20, hend if hend <= cap_end else cap_end, u32, u16, u8, r)
        if hend > cap_end:
            st = _TRUNC
        u32[_W_PLEN, r] = l4_wire_end - hend
        if hend < cap_end:
            i64[_I_POFF, r] = base_off + hend
            u32[_W_PCAP, r] = cap_end - hend
            u64[_Q_HEAD, r] = _head8(b, hend, cap_end)
        return st, 0, 0, 0, 0
    if proto == 17 or proto == 136:  # UDP, UDP-Lite (same header layout)
        if l4 + 4 <= cap_end:
            u16[_H_SPORT, r] = _be16(b, l4)
            u16[_H_DPORT, r] = _be16(b, l4 + 2)
        if l4 + 8 > cap_end:
            return (_TRUNC if cap_end < l4_wire_end else _MALF), 0, 0, 0, 0
        ulen = _be16(b, l4 + 4)
        pend = l4_wire_end
        if proto == 17 and ulen >= 8 and l4 + ulen < pend:
            pend = l4 + ulen  # UDP length is authoritative for the datagram
        u32[_W_PLEN, r] = pend - (l4 + 8)
        pcap_end = cap_end if cap_end < pend else pend
        if l4 + 8 < pcap_end:
            i64[_I_POFF, r] = base_off + l4 + 8
            u32[_W_PCAP, r] = pcap_end - (l4 + 8)
            u64[_Q_HEAD, r] = _head8(b, l4 + 8, pcap_end)
        # VXLAN (RFC 7348): 8-byte header with the I flag, then an Ethernet frame.
        if frag == 0 and _be16(b, l4 + 2) == _VXLAN_PORT and l4 + 16 <= pcap_end:
            if b[l4 + 8] & 0x08:
                return _OK, 1, l4 + 16, pcap_end, pend
        return _OK, 0, 0, 0, 0
    if proto == 47:  # GRE
        u32[_W_PLEN, r] = l4_wire_end - l4
        if frag != 0 or l4 + 4 > cap_end:
            return _OK, 0, 0, 0, 0
        f0 = np.int64(b[l4])
        f1 = np.int64(b[l4 + 1])
        ver = f1 & 0x07
        ptype = _be16(b, l4 + 2)
        g = l4 + 4
        if ver == 0:  # RFC 2784/2890: optional checksum+reserved, key, sequence
            if f0 & 0x80:
                g += 4
            if f0 & 0x20:
                g += 4
            if f0 & 0x10:
                g += 4
        elif ver == 1:  # enhanced GRE (RFC 2637): key always, optional seq and ack
            g += 4
            if f0 & 0x10:
                g += 4
            if f1 & 0x80:
                g += 4
        else:
            return _OK, 0, 0, 0, 0
        if g >= cap_end:
            return _OK, 0, 0, 0, 0
        if ptype == _ETH_IPV4:
            return _OK, 4, g, cap_end, l4_wire_end
        if ptype == _ETH_IPV6:
            return _OK, 6, g, cap_end, l4_wire_end
        if ptype == _ETH_TEB:
            return _OK, 1, g, cap_end, l4_wire_end
        if ptype == _ETH_PPP:
            return _OK, 9, g, cap_end, l4_wire_end
        return _OK, 0, 0, 0, 0
    if proto == 4 or proto == 41:  # IP-in-IP, IPv6-in-IP
        u32[_W_PLEN, r] = l4_wire_end - l4
        if frag == 0 and l4 < cap_end:
            return _OK, (4 if proto == 4 else 6), l4, cap_end, l4_wire_end
        return _OK, 0, 0, 0, 0
    pl = l4_wire_end - l4
    u32[_W_PLEN, r] = pl if pl > 0 else 0
    if l4 < cap_end:
        i64[_I_POFF, r] = base_off + l4
        u32[_W_PCAP, r] = cap_end - l4
        u64[_Q_HEAD, r] = _head8(b, l4, cap_end)
    return _OK, 0, 0, 0, 0


@inline_kernel
def _decode_frame(b, off, end, wirelen, linktype, iface, ts, frame, base_off, i64, u64, u32, u16, u8, r):
    """Decode one frame into row ``r`` (and ``r + 1`` for a tunnel). Returns rows written."""
    _clear_row(i64, u64, u32, u16, u8, r)
    caplen = end - off
    i64[_I_TS, r] = ts
    i64[_I_FRAME, r] = frame
    u32[_W_CAP, r] = caplen
    u32[_W_WIRE, r] = wirelen
    u16[_H_IFACE, r] = iface
    u16[_H_LINK, r] = linktype
    wire_end = off + wirelen
    if wire_end < end:
        wire_end = end
    net, noff, st, limit = _link_walk(b, off, end, linktype)
    row = r
    # Level 0 is the frame's packet; level 1 the packet inside its tunnel, if any (one level).
    for level in range(2):
        if limit >= 0:
            if noff + limit < end:
                end = noff + limit
            if noff + limit < wire_end:
                wire_end = noff + limit
        if net == _NET_NONE:
            if level == 0:
                u8[_B_STATUS, row] = st
            # (level 1: the tunnel carries something we do not decode, e.g. PPP control: no row)
            return 1
        st, tk, toff, tend, twire = _decode_ip(b, noff, end, wire_end, net, base_off, i64, u64, u32, u16, u8, row)
        u8[_B_STATUS, row] = st
        if tk == 0 or level == 1:
            return level + 1
        row = r + np.uint64(1)
        _clear_row(i64, u64, u32, u16, u8, row)
        i64[_I_TS, row] = ts
        i64[_I_FRAME, row] = frame
        u32[_W_CAP, row] = caplen  # the record's, even where PPPoE's LENGTH cut `end` short
        u32[_W_WIRE, row] = wirelen
        u16[_H_IFACE, row] = iface
        u16[_H_LINK, row] = linktype
        u8[_B_ENCAP, row] = 1
        if tk == 1:
            if toff + 14 > tend:
                u8[_B_STATUS, row] = _TRUNC
                return 2
            net, noff, st, limit = _ethertype_walk(b, toff + 14, tend)
        elif tk == 9:
            net, noff, st, limit = _ppp_walk(b, toff, tend)
        else:
            net, noff, st, limit = tk, toff, _OK, -1
        end = tend
        wire_end = twire
    return 2


@flat_kernel
def decode_records(buf, n_valid, base_off, fmt, swapped, snaplen, if_link, if_ts_kind, if_ts_exp, if_ts_off, if_snap, frame0, i64, u64, u32, u16, u8, row0):
    """Decode the records in ``buf[:n_valid]``.

    Parameters
    ----------
    buf : uint8 array; ``n_valid`` bytes of it are valid.
    base_off : absolute offset of ``buf[0]`` in the decompressed capture stream (bytes).
    fmt : FMT_PCAP_US, FMT_PCAP_NS or FMT_PCAPNG.
    swapped : the file's fields are big-endian.
    snaplen : pcap snaplen (bytes); caplen above max(snaplen, 262144) is corrupt framing.
    if_link, if_ts_kind, if_ts_exp, if_ts_off, if_snap : per pcapng interface: link type,
        timestamp resolution kind and exponent, timestamp offset (s), snaplen. For pcap, one
        entry.
    frame0 : number of records read before this call (frame numbers continue from it).
    i64, u64, u32, u16, u8 : output blocks (see packets.py); their width is the row capacity.
    row0 : first output row to write.

    Returns
    -------
    (pos, rows, records, stop, info): bytes consumed, index after the last row written,
    records decoded, stop code
    and its detail (needed bytes for STOP_TOO_LARGE; the bad length for STOP_CORRUPT).
    """
    cap_rows = i64.shape[1]
    pos = 0
    rows = row0
    recs = 0
    max_rec = 262144 if snaplen < 262144 else snaplen
    while True:
        if rows + 2 > cap_rows:
            return pos, rows, recs, STOP_OUTPUT_FULL, 0
        if fmt != FMT_PCAPNG:
            if pos + 16 > n_valid:
                return pos, rows, recs, STOP_NEED_MORE, 16
            sec = _rd32(buf, pos, swapped)
            frac = _rd32(buf, pos + 4, swapped)
            incl = _rd32(buf, pos + 8, swapped)
            orig = _rd32(buf, pos + 12, swapped)
            if incl > max_rec:
                return pos, rows, recs, STOP_CORRUPT, incl
            need = 16 + incl
            if pos + need > n_valid:
                if need > buf.shape[0]:
                    return pos, rows, recs, STOP_TOO_LARGE, need
                return pos, rows, recs, STOP_NEED_MORE, need
            ts = np.int64(sec) * np.int64(1_000_000_000)
            if fmt == FMT_PCAP_US:
                ts += np.int64(frac) * np.int64(1000)
            else:
                ts += np.int64(frac)
            recs += 1
            # (one _decode_frame call site below: its body is inlined once; it gets the row as
            # uint64: Numba wraps negative signed indices, a compare and a select for each of
            # the ~70 column stores of a row, while an unsigned index is used as is: 1.2x)
            fstart, ifid, step, packet = pos + 16, 0, need, 1
        else:
            # pcapng: block type, total length, body, total length (sec 3.1)
            fstart, ifid, step, packet, ts, incl, orig = _pcapng_framing(buf, n_valid, pos, swapped, if_ts_kind, if_ts_exp, if_ts_off, if_snap)
            if packet < 0:  # stop here: step is the stop code, incl its detail
                return pos, rows, recs, step, incl
            if packet > 0:
                recs += 1
        if packet == 1:
            rows += _decode_frame(buf, fstart, fstart + incl, orig, if_link[ifid], ifid, ts, frame0 + recs, base_off, i64, u64, u32, u16, u8, np.uint64(rows))
        elif packet == 2:
            # packet for an interface that was never described: count, cannot decode
            _orphan_row(i64, u64, u32, u16, u8, rows, frame0 + recs, incl, orig, ifid)
            rows += 1
        pos += step


@inline_kernel
def _pcapng_framing(buf, n_valid, pos, swapped, if_ts_kind, if_ts_exp, if_ts_off, if_snap):
    """Frame the pcapng block at ``pos`` (draft-ietf-opsawg-pcapng sec 3.1, 4.3, 4.4, 4.6).

    Returns ``(frame start, interface, block length, packet, ts, incl, orig)``; ``packet`` is 1
    for a packet to decode, 2 for a packet of an undescribed interface, 0 for a block to skip,
    -1 to stop (then the block-length slot holds the stop code and ``incl`` its detail).
    """
    z = np.int64(0)
    if pos + 12 > n_valid:
        return z, z, np.int64(STOP_NEED_MORE), np.int64(-1), z, np.int64(12), z
    btype = _rd32(buf, pos, swapped)
    if btype == BT_SHB:
        return z, z, np.int64(STOP_BLOCK), np.int64(-1), z, btype, z
    blen = _rd32(buf, pos + 4, swapped)
    if blen < 12 or (blen & 3) != 0:
        return z, z, np.int64(STOP_CORRUPT), np.int64(-1), z, blen, z
    if blen > 16 * 1024 * 1024:
        return z, z, np.int64(STOP_CORRUPT), np.int64(-1), z, blen, z
    if pos + blen > n_valid:
        if blen > buf.shape[0]:
            return z, z, np.int64(STOP_TOO_LARGE), np.int64(-1), z, blen, z
        return z, z, np.int64(STOP_NEED_MORE), np.int64(-1), z, blen, z
    if _rd32(buf, pos + blen - 4, swapped) != blen:
        return z, z, np.int64(STOP_CORRUPT), np.int64(-1), z, blen, z
    if btype == BT_IDB:
        return z, z, np.int64(STOP_BLOCK), np.int64(-1), z, btype, z
    n_if = if_ts_kind.shape[0]
    if btype == BT_EPB or btype == BT_PB:
        if blen < 32:
            return z, z, np.int64(STOP_CORRUPT), np.int64(-1), z, blen, z
        if btype == BT_EPB:
            ifid = _rd32(buf, pos + 8, swapped)
        else:
            ifid = _rd16(buf, pos + 8, swapped)
        tsh = _rd32(buf, pos + 12, swapped)
        tsl = _rd32(buf, pos + 16, swapped)
        incl = _rd32(buf, pos + 20, swapped)
        orig = _rd32(buf, pos + 24, swapped)
        if 28 + incl + 4 > blen:
            return z, z, np.int64(STOP_CORRUPT), np.int64(-1), z, incl, z
        if ifid >= n_if:
            return z, (ifid if ifid < 65535 else np.int64(65535)), blen, np.int64(2), z, incl, orig
        raw = (np.int64(tsh) << 32) | np.int64(tsl)
        ts = _ts_to_ns(raw, if_ts_kind[ifid], if_ts_exp[ifid])
        ts += np.int64(if_ts_off[ifid]) * np.int64(1_000_000_000)
        return pos + 28, ifid, blen, np.int64(1), ts, incl, orig
    if btype == BT_SPB:
        if blen < 16:
            return z, z, np.int64(STOP_CORRUPT), np.int64(-1), z, blen, z
        orig = _rd32(buf, pos + 8, swapped)
        incl = blen - 16
        if orig < incl:
            incl = orig
        if n_if > 0 and if_snap[0] > 0 and if_snap[0] < incl:
            incl = if_snap[0]
        if n_if == 0:
            return z, z, blen, np.int64(2), z, z, z
        # a Simple Packet Block has no timestamp (sec 4.4): ts stays 0
        return pos + 12, z, blen, np.int64(1), z, incl, orig
    # any other block (NRB, ISB, DSB, custom, ...) is skipped
    return z, z, blen, z, z, z, z


@flat_kernel
def _orphan_row(i64, u64, u32, u16, u8, r, frame, incl, orig, iface):
    """A packet we count but cannot decode (no interface described for it): status malformed."""
    _clear_row(i64, u64, u32, u16, u8, r)
    i64[_I_FRAME, r] = frame
    u32[_W_CAP, r] = incl
    u32[_W_WIRE, r] = orig
    u16[_H_IFACE, r] = iface
    u8[_B_STATUS, r] = _MALF
