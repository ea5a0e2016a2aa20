/* kt_decode.c: see kt_decode.h. A line-by-line twin of keepiton_throttle/decode.py (frame
 * decode) and of the record loop of keepiton_throttle/sources/capture.py (file header, pcapng
 * SHB/IDB parsing, damage accounting); the comments name the Python function each part mirrors.
 *
 * References: pcap (draft-ietf-opsawg-pcap), pcapng (draft-ietf-opsawg-pcapng), LINKTYPE values
 * (tcpdump.org/linktypes.html), IPv4 (RFC 791), IPv6 (RFC 8200), TCP (RFC 9293, options RFC 7323
 * and RFC 2018), UDP (RFC 768), VXLAN (RFC 7348), GRE (RFC 2784, 2890, 2637), PPPoE (RFC 2516).
 *
 * Bounds: every byte read goes through the rd* helpers below, whose callers have checked the
 * range against the end of the record (or of the captured IP payload) first. Building with
 * -DKT_CHECKED (make asan) makes each helper verify that once more and abort if not.
 *
 * Arithmetic: Numba computes in int64 and wraps on overflow, and truncates when it stores into
 * a narrower column; wrapping products are computed here in uint64 (defined in C) and stores go
 * through unsigned casts (modulo 2^k, also defined).
 */
#include "kt_decode.h"

#include <stdio.h>
#include <string.h>

#ifdef KT_CHECKED
#include <stdlib.h>
#define KT_IN(i, w, lim)                                                                      \
    do {                                                                                     \
        if ((i) < 0 || (i) + (w) > (lim)) {                                                  \
            fprintf(stderr, "kt_decode: read of %d bytes at %lld past %lld\n", (int)(w),     \
                    (long long)(i), (long long)(lim));                                       \
            abort();                                                                         \
        }                                                                                    \
    } while (0)
#else
#define KT_IN(i, w, lim) ((void)0)
#endif

/* ---- reading fields ------------------------------------------------------------------------ */

static inline int64_t rd8(const uint8_t *b, int64_t i, int64_t lim) {
    KT_IN(i, 1, lim);
    (void)lim;
    return b[i];
}

static inline int64_t be16(const uint8_t *b, int64_t i, int64_t lim) {
    KT_IN(i, 2, lim);
    (void)lim;
    return ((int64_t)b[i] << 8) | b[i + 1];
}

static inline int64_t be32(const uint8_t *b, int64_t i, int64_t lim) {
    KT_IN(i, 4, lim);
    (void)lim;
    return ((int64_t)b[i] << 24) | ((int64_t)b[i + 1] << 16) | ((int64_t)b[i + 2] << 8) | b[i + 3];
}

static inline int64_t le32(const uint8_t *b, int64_t i, int64_t lim) {
    KT_IN(i, 4, lim);
    (void)lim;
    return ((int64_t)b[i + 3] << 24) | ((int64_t)b[i + 2] << 16) | ((int64_t)b[i + 1] << 8) | b[i];
}

static inline uint64_t be64(const uint8_t *b, int64_t i, int64_t lim) {
    return ((uint64_t)be32(b, i, lim) << 32) | (uint64_t)be32(b, i + 4, lim);
}

/* decode.py _head8: the first 8 bytes of b[off:end] big-endian, zero-padded on the right. */
static inline uint64_t head8(const uint8_t *b, int64_t off, int64_t end) {
    uint64_t v = 0;
    int k;
    if (off + 8 <= end)
        return be64(b, off, end);
    for (k = 0; k < 8; k++) {
        v <<= 8;
        if (off + k < end)
            v |= (uint64_t)rd8(b, off + k, end);
    }
    return v;
}

/* 16/32/64-bit fields in the file's byte order (swapped: big-endian file). */
static inline int64_t rd16(const uint8_t *b, int64_t i, int64_t lim, int swapped) {
    if (swapped)
        return be16(b, i, lim);
    KT_IN(i, 2, lim);
    return ((int64_t)b[i + 1] << 8) | b[i];
}

static inline int64_t rd32(const uint8_t *b, int64_t i, int64_t lim, int swapped) {
    return swapped ? be32(b, i, lim) : le32(b, i, lim);
}

static inline int64_t rd64s(const uint8_t *b, int64_t i, int64_t lim, int swapped) {
    uint64_t hi, lo;
    if (swapped) {
        hi = (uint64_t)be32(b, i, lim);
        lo = (uint64_t)be32(b, i + 4, lim);
    } else {
        lo = (uint64_t)le32(b, i, lim);
        hi = (uint64_t)le32(b, i + 4, lim);
    }
    return (int64_t)((hi << 32) | lo);
}

/* Wrapping int64 arithmetic, as Numba does it. */
static inline int64_t wmul(int64_t a, int64_t b) { return (int64_t)((uint64_t)a * (uint64_t)b); }
static inline int64_t wadd(int64_t a, int64_t b) { return (int64_t)((uint64_t)a + (uint64_t)b); }

/* ---- output rows --------------------------------------------------------------------------- */

typedef struct kt_out {
    int64_t *i64;
    uint64_t *u64;
    uint32_t *u32;
    uint16_t *u16;
    uint8_t *u8;
    int64_t stride; /* row capacity: column c starts at c * stride */
} kt_out;

#define I64(c, r) (o->i64[(int64_t)(c) * o->stride + (r)])
#define U64(c, r) (o->u64[(int64_t)(c) * o->stride + (r)])
#define U32(c, r) (o->u32[(int64_t)(c) * o->stride + (r)])
#define U16(c, r) (o->u16[(int64_t)(c) * o->stride + (r)])
#define U8(c, r) (o->u8[(int64_t)(c) * o->stride + (r)])
#define SET32(c, r, v) (U32(c, r) = (uint32_t)(uint64_t)(v))
#define SET16(c, r, v) (U16(c, r) = (uint16_t)(uint64_t)(v))
#define SET8(c, r, v) (U8(c, r) = (uint8_t)(uint64_t)(v))

/* decode.py _clear_row */
static void clear_row(const kt_out *o, int64_t r) {
    int c;
    for (c = 0; c < KT_N_I64; c++) I64(c, r) = 0;
    for (c = 0; c < KT_N_U64; c++) U64(c, r) = 0;
    for (c = 0; c < KT_N_U32; c++) U32(c, r) = 0;
    for (c = 0; c < KT_N_U16; c++) U16(c, r) = 0;
    for (c = 0; c < KT_N_U8; c++) U8(c, r) = 0;
    I64(KT_I_POFF, r) = -1;
    U8(KT_B_WS, r) = 255;
}

/* ---- link layer ---------------------------------------------------------------------------- */

enum { NET_NONE = 0, NET_IP_ANY = 1, NET_IPV4 = 4, NET_IPV6 = 6 };

enum {
    ETH_IPV4 = 0x0800, ETH_IPV6 = 0x86DD, ETH_VLAN = 0x8100, ETH_QINQ = 0x88A8,
    ETH_QINQ_OLD = 0x9100, ETH_PPPOE_SESS = 0x8864, ETH_TEB = 0x6558, ETH_PPP = 0x880B,
    PPP_IPV4 = 0x0021, PPP_IPV6 = 0x0057, VXLAN_PORT = 4789, MAX_VLAN_DEPTH = 16,
    MAX_EXT_HEADERS = 16
};

typedef struct link_res {
    int net;       /* NET_* */
    int64_t off;   /* network header offset (when net != NET_NONE) */
    int st;        /* status (when net == NET_NONE) */
    int64_t limit; /* bytes the link layer allows the network packet (PPPoE), -1: no limit */
} link_res;

static inline link_res lres(int net, int64_t off, int st) {
    link_res x;
    x.net = net;
    x.off = off;
    x.st = st;
    x.limit = -1;
    return x;
}

/* decode.py _ethertype_walk_at: VLAN tags (802.1Q/802.1ad), then IPv4/IPv6/PPPoE session. */
static link_res ethertype_walk_at(const uint8_t *b, int64_t et, int64_t off, int64_t end) {
    int depth = 0;
    while (et == ETH_VLAN || et == ETH_QINQ || et == ETH_QINQ_OLD) {
        if (depth >= MAX_VLAN_DEPTH)
            return lres(NET_NONE, off, KT_MALFORMED);
        if (off + 4 > end)
            return lres(NET_NONE, off, KT_TRUNCATED);
        et = be16(b, off + 2, end);
        off += 4;
        depth++;
    }
    if (et == ETH_IPV4)
        return lres(NET_IPV4, off, KT_OK);
    if (et == ETH_IPV6)
        return lres(NET_IPV6, off, KT_OK);
    if (et == ETH_PPPOE_SESS) {
        /* RFC 2516 sec 4: ver/type(1) code(1) session(2) length(2), then the PPP protocol(2).
         * LENGTH counts the PPP protocol field and bounds the IP packet (as Wireshark does). */
        int64_t plen, proto;
        link_res x;
        if (off + 8 > end)
            return lres(NET_NONE, off, KT_TRUNCATED);
        plen = be16(b, off + 4, end) - 2;
        proto = be16(b, off + 6, end);
        off += 8;
        if (plen < 0)
            return lres(NET_NONE, off, KT_MALFORMED);
        if (proto == PPP_IPV4 || proto == PPP_IPV6) {
            x = lres(proto == PPP_IPV4 ? NET_IPV4 : NET_IPV6, off, KT_OK);
            x.limit = plen;
            return x;
        }
    }
    return lres(NET_NONE, off, KT_UNSUPPORTED);
}

/* decode.py _ethertype_walk: the ethertype sits in the two bytes before off. */
static link_res ethertype_walk(const uint8_t *b, int64_t off, int64_t end) {
    return ethertype_walk_at(b, be16(b, off - 2, end), off, end);
}

/* decode.py _ppp_walk: PPP (RFC 1661), optionally in HDLC-like framing (RFC 1662). */
static link_res ppp_walk(const uint8_t *b, int64_t off, int64_t end) {
    int64_t proto;
    if (off + 2 <= end && rd8(b, off, end) == 0xFF && rd8(b, off + 1, end) == 0x03)
        off += 2;
    if (off + 1 > end)
        return lres(NET_NONE, off, KT_TRUNCATED);
    if (rd8(b, off, end) & 1) { /* protocol-field compression */
        proto = rd8(b, off, end);
        off += 1;
    } else {
        if (off + 2 > end)
            return lres(NET_NONE, off, KT_TRUNCATED);
        proto = be16(b, off, end);
        off += 2;
    }
    if (proto == PPP_IPV4)
        return lres(NET_IPV4, off, KT_OK);
    if (proto == PPP_IPV6)
        return lres(NET_IPV6, off, KT_OK);
    return lres(NET_NONE, off, KT_UNSUPPORTED);
}

/* decode.py _link_walk */
static link_res link_walk(const uint8_t *b, int64_t off, int64_t end, int64_t linktype) {
    if (linktype == 1) { /* Ethernet */
        if (off + 14 > end)
            return lres(NET_NONE, off, KT_TRUNCATED);
        if (be16(b, off + 12, end) <= 1500) /* IEEE 802.3 length field: LLC */
            return lres(NET_NONE, off, KT_UNSUPPORTED);
        return ethertype_walk(b, off + 14, end);
    }
    if (linktype == 101 || linktype == 12 || linktype == 14) /* raw IP */
        return lres(NET_IP_ANY, off, KT_OK);
    if (linktype == 228)
        return lres(NET_IPV4, off, KT_OK);
    if (linktype == 229)
        return lres(NET_IPV6, off, KT_OK);
    if (linktype == 113) { /* Linux cooked v1: 16 bytes, protocol at 14 */
        if (off + 16 > end)
            return lres(NET_NONE, off, KT_TRUNCATED);
        return ethertype_walk(b, off + 16, end);
    }
    if (linktype == 276) { /* Linux cooked v2: 20 bytes, protocol at 0 */
        if (off + 20 > end)
            return lres(NET_NONE, off, KT_TRUNCATED);
        return ethertype_walk_at(b, be16(b, off, end), off + 20, end);
    }
    if (linktype == 0 || linktype == 108) { /* BSD loopback (host order) / OpenBSD loop */
        int64_t fam;
        if (off + 4 > end)
            return lres(NET_NONE, off, KT_TRUNCATED);
        fam = linktype == 0 ? le32(b, off, end) : be32(b, off, end);
        if (linktype == 0 && fam > 0xFFFF)
            fam = be32(b, off, end); /* written on a big-endian host */
        if (fam == 2)
            return lres(NET_IPV4, off + 4, KT_OK);
        if (fam == 10 || fam == 24 || fam == 28 || fam == 30 || fam == 23)
            return lres(NET_IPV6, off + 4, KT_OK);
        return lres(NET_NONE, off, KT_UNSUPPORTED);
    }
    if (linktype == 9 || linktype == 50) /* PPP, PPP in HDLC-like framing */
        return ppp_walk(b, off, end);
    return lres(NET_NONE, off, KT_UNSUPPORTED);
}

/* ---- transport ----------------------------------------------------------------------------- */

/* decode.py _tcp_options: options in b[off:end] (RFC 9293 sec 3.2). Returns a status. */
static int tcp_options(const uint8_t *b, int64_t off, int64_t end, const kt_out *o, int64_t r) {
    int64_t opts = 0;
    while (off < end) {
        int64_t kind = rd8(b, off, end), olen;
        if (kind == 0)
            break;
        if (kind == 1) {
            off += 1;
            continue;
        }
        if (off + 2 > end) {
            SET8(KT_B_OPTS, r, opts);
            return KT_TRUNCATED;
        }
        olen = rd8(b, off + 1, end);
        if (olen < 2) {
            SET8(KT_B_OPTS, r, opts);
            return KT_MALFORMED;
        }
        if (off + olen > end) {
            SET8(KT_B_OPTS, r, opts);
            return KT_TRUNCATED;
        }
        if (kind == 2 && olen == 4) {
            SET16(KT_H_MSS, r, be16(b, off + 2, end));
            opts |= 1;
        } else if (kind == 3 && olen == 3) {
            SET8(KT_B_WS, r, rd8(b, off + 2, end));
            opts |= 2;
        } else if (kind == 4 && olen == 2) {
            opts |= 4;
        } else if (kind == 5 && olen >= 10 && (olen - 2) % 8 == 0) {
            SET8(KT_B_SACKN, r, (olen - 2) / 8);
            SET32(KT_W_SLE, r, be32(b, off + 2, end));
            SET32(KT_W_SRE, r, be32(b, off + 6, end));
            opts |= 8;
        } else if (kind == 8 && olen == 10) {
            SET32(KT_W_TSV, r, be32(b, off + 2, end));
            SET32(KT_W_TSE, r, be32(b, off + 6, end));
            opts |= 16;
        }
        off += olen;
    }
    SET8(KT_B_OPTS, r, opts);
    return KT_OK;
}

/* Tunnel kinds handed from decode_ip to decode_frame. */
enum { TUN_NONE = 0, TUN_ETH = 1, TUN_IPV4 = 4, TUN_IPV6 = 6, TUN_PPP = 9 };

typedef struct ip_res {
    int st;
    int tk;          /* TUN_* */
    int64_t toff;    /* inner header offset */
    int64_t tend;    /* captured end of the inner packet */
    int64_t twire;   /* end of the inner packet on the wire */
} ip_res;

static inline ip_res ires(int st) {
    ip_res x;
    x.st = st;
    x.tk = TUN_NONE;
    x.toff = x.tend = x.twire = 0;
    return x;
}

static inline ip_res itun(int tk, int64_t toff, int64_t tend, int64_t twire) {
    ip_res x;
    x.st = KT_OK;
    x.tk = tk;
    x.toff = toff;
    x.tend = tend;
    x.twire = twire;
    return x;
}

/* decode.py _decode_ip: IP + transport at b[off:end] into row r; wire_end is where the frame
 * ends on the wire (may exceed end when the capture was cut). */
static ip_res decode_ip(const uint8_t *b, int64_t off, int64_t end, int64_t wire_end, int net,
                        const kt_out *o, int64_t r) {
    int64_t proto, l4, l4_wire_end, frag = 0, cap_end;
    if (net == NET_IP_ANY) {
        int64_t v;
        if (off + 1 > end)
            return ires(KT_TRUNCATED);
        v = rd8(b, off, end) >> 4;
        if (v == 4)
            net = NET_IPV4;
        else if (v == 6)
            net = NET_IPV6;
        else
            return ires(KT_UNSUPPORTED);
    }
    if (net == NET_IPV4) { /* RFC 791 sec 3.1 */
        int64_t ihl, total, fragword;
        U8(KT_B_IPV, r) = 4;
        if (off + 20 > end)
            return ires(KT_TRUNCATED);
        if ((rd8(b, off, end) >> 4) != 4)
            return ires(KT_MALFORMED);
        ihl = (rd8(b, off, end) & 0x0F) * 4;
        total = be16(b, off + 2, end);
        SET8(KT_B_TTL, r, rd8(b, off + 8, end));
        proto = rd8(b, off + 9, end);
        SET8(KT_B_PROTO, r, proto);
        U64(KT_Q_SHI, r) = 0;
        U64(KT_Q_SLO, r) = UINT64_C(0xFFFF00000000) | (uint64_t)be32(b, off + 12, end);
        U64(KT_Q_DHI, r) = 0;
        U64(KT_Q_DLO, r) = UINT64_C(0xFFFF00000000) | (uint64_t)be32(b, off + 16, end);
        if (ihl < 20)
            return ires(KT_MALFORMED);
        if (total == 0) /* TSO / BIG TCP: the frame length rules */
            total = wire_end - off;
        if (total < ihl)
            return ires(KT_MALFORMED);
        fragword = be16(b, off + 6, end);
        if ((fragword & 0x1FFF) != 0)
            frag = 2;
        else if (fragword & 0x2000)
            frag = 1;
        SET8(KT_B_FRAG, r, frag);
        l4 = off + ihl;
        l4_wire_end = off + total;
        if (l4_wire_end > wire_end)
            l4_wire_end = wire_end; /* "total length exceeds packet length": the frame rules */
        if (l4 > end)
            return ires(KT_TRUNCATED);
    } else { /* RFC 8200 sec 3 */
        int64_t plen, nh;
        int k;
        U8(KT_B_IPV, r) = 6;
        if (off + 40 > end)
            return ires(KT_TRUNCATED);
        if ((rd8(b, off, end) >> 4) != 6)
            return ires(KT_MALFORMED);
        plen = be16(b, off + 4, end);
        SET8(KT_B_TTL, r, rd8(b, off + 7, end));
        U64(KT_Q_SHI, r) = be64(b, off + 8, end);
        U64(KT_Q_SLO, r) = be64(b, off + 16, end);
        U64(KT_Q_DHI, r) = be64(b, off + 24, end);
        U64(KT_Q_DLO, r) = be64(b, off + 32, end);
        if (plen == 0) /* jumbogram / BIG TCP: the frame length rules */
            plen = wire_end - off - 40;
        l4_wire_end = off + 40 + plen;
        if (l4_wire_end > wire_end)
            l4_wire_end = wire_end;
        nh = rd8(b, off + 6, end);
        l4 = off + 40;
        /* RFC 8200 sec 4: walk the extension-header chain. */
        for (k = 0; k < MAX_EXT_HEADERS; k++) {
            if (nh == 0 || nh == 43 || nh == 60 || nh == 135 || nh == 139 || nh == 140) {
                int64_t nxt;
                if (l4 + 8 > end) {
                    SET8(KT_B_PROTO, r, nh);
                    return ires(KT_TRUNCATED);
                }
                nxt = rd8(b, l4, end);
                l4 += (rd8(b, l4 + 1, end) + 1) * 8;
                nh = nxt;
            } else if (nh == 44) { /* fragment header (sec 4.5) */
                int64_t nxt, fo;
                if (l4 + 8 > end) {
                    SET8(KT_B_PROTO, r, nh);
                    return ires(KT_TRUNCATED);
                }
                nxt = rd8(b, l4, end);
                fo = be16(b, l4 + 2, end);
                if ((fo >> 3) != 0)
                    frag = 2;
                else if (fo & 1)
                    frag = 1;
                l4 += 8;
                nh = nxt;
            } else if (nh == 51) { /* AH (RFC 4302): length in 4-byte units minus 2 */
                int64_t nxt;
                if (l4 + 8 > end) {
                    SET8(KT_B_PROTO, r, nh);
                    return ires(KT_TRUNCATED);
                }
                nxt = rd8(b, l4, end);
                l4 += (rd8(b, l4 + 1, end) + 2) * 4;
                nh = nxt;
            } else {
                break;
            }
        }
        proto = nh;
        SET8(KT_B_PROTO, r, proto);
        SET8(KT_B_FRAG, r, frag);
        if (l4 > l4_wire_end)
            return ires(KT_MALFORMED);
        if (l4 > end)
            return ires(KT_TRUNCATED);
    }
    if (frag == 2) { /* a later fragment carries no transport header */
        int64_t plen4 = l4_wire_end - l4;
        SET32(KT_W_PLEN, r, plen4 > 0 ? plen4 : 0);
        return ires(KT_OK);
    }
    /* captured end of the IP payload (Ethernet padding beyond the IP length is not payload) */
    cap_end = end < l4_wire_end ? end : l4_wire_end;
    if (proto == 6) { /* TCP, RFC 9293 sec 3.1 */
        int64_t doff, hend;
        int st;
        if (l4 + 4 <= cap_end) {
            SET16(KT_H_SPORT, r, be16(b, l4, cap_end));
            SET16(KT_H_DPORT, r, be16(b, l4 + 2, cap_end));
        }
        if (l4 + 20 > cap_end)
            return ires(cap_end < l4_wire_end ? KT_TRUNCATED : KT_MALFORMED);
        SET32(KT_W_SEQ, r, be32(b, l4 + 4, cap_end));
        SET32(KT_W_ACK, r, be32(b, l4 + 8, cap_end));
        doff = (rd8(b, l4 + 12, cap_end) >> 4) * 4;
        SET16(KT_H_FLAGS, r, ((rd8(b, l4 + 12, cap_end) & 1) << 8) | rd8(b, l4 + 13, cap_end));
        SET16(KT_H_WIN, r, be16(b, l4 + 14, cap_end));
        if (doff < 20 || l4 + doff > l4_wire_end)
            return ires(KT_MALFORMED);
        hend = l4 + doff;
        if (hend > cap_end) {
            tcp_options(b, l4 + 20, cap_end, o, r);
            st = KT_TRUNCATED;
        } else {
            st = tcp_options(b, l4 + 20, hend, o, r);
        }
        SET32(KT_W_PLEN, r, l4_wire_end - hend);
        if (hend < cap_end) {
            I64(KT_I_POFF, r) = hend;
            SET32(KT_W_PCAP, r, cap_end - hend);
            U64(KT_Q_HEAD, r) = head8(b, hend, cap_end);
        }
        return ires(st);
    }
    if (proto == 17 || proto == 136) { /* UDP, UDP-Lite (same header layout) */
        int64_t ulen, pend, pcap_end;
        if (l4 + 4 <= cap_end) {
            SET16(KT_H_SPORT, r, be16(b, l4, cap_end));
            SET16(KT_H_DPORT, r, be16(b, l4 + 2, cap_end));
        }
        if (l4 + 8 > cap_end)
            return ires(cap_end < l4_wire_end ? KT_TRUNCATED : KT_MALFORMED);
        ulen = be16(b, l4 + 4, cap_end);
        pend = l4_wire_end;
        if (proto == 17 && ulen >= 8 && l4 + ulen < pend)
            pend = l4 + ulen; /* UDP length is authoritative for the datagram */
        SET32(KT_W_PLEN, r, pend - (l4 + 8));
        pcap_end = cap_end < pend ? cap_end : pend;
        if (l4 + 8 < pcap_end) {
            I64(KT_I_POFF, r) = l4 + 8;
            SET32(KT_W_PCAP, r, pcap_end - (l4 + 8));
            U64(KT_Q_HEAD, r) = head8(b, l4 + 8, pcap_end);
        }
        /* VXLAN (RFC 7348): 8-byte header with the I flag, then an Ethernet frame. */
        if (frag == 0 && be16(b, l4 + 2, cap_end) == VXLAN_PORT && l4 + 16 <= pcap_end) {
            if (rd8(b, l4 + 8, pcap_end) & 0x08)
                return itun(TUN_ETH, l4 + 16, pcap_end, pend);
        }
        return ires(KT_OK);
    }
    if (proto == 47) { /* GRE */
        int64_t f0, f1, ver, ptype, g;
        SET32(KT_W_PLEN, r, l4_wire_end - l4);
        if (frag != 0 || l4 + 4 > cap_end)
            return ires(KT_OK);
        f0 = rd8(b, l4, cap_end);
        f1 = rd8(b, l4 + 1, cap_end);
        ver = f1 & 0x07;
        ptype = be16(b, l4 + 2, cap_end);
        g = l4 + 4;
        if (ver == 0) { /* RFC 2784/2890: optional checksum+reserved, key, sequence */
            if (f0 & 0x80)
                g += 4;
            if (f0 & 0x20)
                g += 4;
            if (f0 & 0x10)
                g += 4;
        } else if (ver == 1) { /* enhanced GRE (RFC 2637): key always, optional seq and ack */
            g += 4;
            if (f0 & 0x10)
                g += 4;
            if (f1 & 0x80)
                g += 4;
        } else {
            return ires(KT_OK);
        }
        if (g >= cap_end)
            return ires(KT_OK);
        if (ptype == ETH_IPV4)
            return itun(TUN_IPV4, g, cap_end, l4_wire_end);
        if (ptype == ETH_IPV6)
            return itun(TUN_IPV6, g, cap_end, l4_wire_end);
        if (ptype == ETH_TEB)
            return itun(TUN_ETH, g, cap_end, l4_wire_end);
        if (ptype == ETH_PPP)
            return itun(TUN_PPP, g, cap_end, l4_wire_end);
        return ires(KT_OK);
    }
    if (proto == 4 || proto == 41) { /* IP-in-IP, IPv6-in-IP */
        SET32(KT_W_PLEN, r, l4_wire_end - l4);
        if (frag == 0 && l4 < cap_end)
            return itun(proto == 4 ? TUN_IPV4 : TUN_IPV6, l4, cap_end, l4_wire_end);
        return ires(KT_OK);
    }
    {
        int64_t pl = l4_wire_end - l4;
        SET32(KT_W_PLEN, r, pl > 0 ? pl : 0);
        if (l4 < cap_end) {
            I64(KT_I_POFF, r) = l4;
            SET32(KT_W_PCAP, r, cap_end - l4);
            U64(KT_Q_HEAD, r) = head8(b, l4, cap_end);
        }
    }
    return ires(KT_OK);
}

/* decode.py _decode_frame: one frame into row r (and r + 1 for a tunnel). Returns rows written. */
static int64_t decode_frame(const uint8_t *b, int64_t off, int64_t end, int64_t wirelen,
                            int64_t linktype, int64_t iface, int64_t ts, int64_t frame,
                            const kt_out *o, int64_t r) {
    int64_t wire_end, r2, caplen = end - off;
    link_res lk, lk2;
    ip_res ip;
    clear_row(o, r);
    I64(KT_I_TS, r) = ts;
    I64(KT_I_FRAME, r) = frame;
    SET32(KT_W_CAP, r, caplen);
    SET32(KT_W_WIRE, r, wirelen);
    SET16(KT_H_IFACE, r, iface);
    SET16(KT_H_LINK, r, linktype);
    wire_end = off + wirelen;
    if (wire_end < end)
        wire_end = end;
    lk = link_walk(b, off, end, linktype);
    if (lk.limit >= 0) {
        if (lk.off + lk.limit < end)
            end = lk.off + lk.limit;
        if (lk.off + lk.limit < wire_end)
            wire_end = lk.off + lk.limit;
    }
    if (lk.net == NET_NONE) {
        SET8(KT_B_STATUS, r, lk.st);
        return 1;
    }
    ip = decode_ip(b, lk.off, end, wire_end, lk.net, o, r);
    SET8(KT_B_STATUS, r, ip.st);
    if (ip.tk == TUN_NONE)
        return 1;
    /* One level of tunnel: decode the inner packet into the next row. */
    r2 = r + 1;
    clear_row(o, r2);
    I64(KT_I_TS, r2) = ts;
    I64(KT_I_FRAME, r2) = frame;
    SET32(KT_W_CAP, r2, caplen); /* the record's, even where PPPoE cut end short */
    SET32(KT_W_WIRE, r2, wirelen);
    SET16(KT_H_IFACE, r2, iface);
    SET16(KT_H_LINK, r2, linktype);
    U8(KT_B_ENCAP, r2) = 1;
    if (ip.tk == TUN_ETH) {
        if (ip.toff + 14 > ip.tend) {
            U8(KT_B_STATUS, r2) = KT_TRUNCATED;
            return 2;
        }
        lk2 = ethertype_walk(b, ip.toff + 14, ip.tend);
    } else if (ip.tk == TUN_PPP) {
        lk2 = ppp_walk(b, ip.toff, ip.tend);
    } else {
        lk2 = lres(ip.tk, ip.toff, KT_OK);
    }
    if (lk2.limit >= 0) {
        if (lk2.off + lk2.limit < ip.tend)
            ip.tend = lk2.off + lk2.limit;
        if (lk2.off + lk2.limit < ip.twire)
            ip.twire = lk2.off + lk2.limit;
    }
    if (lk2.net == NET_NONE) /* the tunnel carries something we do not decode: no inner row */
        return 1;
    ip = decode_ip(b, lk2.off, ip.tend, ip.twire, lk2.net, o, r2);
    SET8(KT_B_STATUS, r2, ip.st);
    return 2;
}

/* ---- timestamps ---------------------------------------------------------------------------- */

/* decode.py _ts_to_ns: a pcapng timestamp in units of 10^-exp or 2^-exp s -> ns. */
static int64_t ts_to_ns(int64_t ts, int binary, int64_t exp) {
    if (!binary) {
        int64_t m = 1;
        int64_t k;
        if (exp == 9)
            return ts;
        if (exp < 9) {
            for (k = 0; k < 9 - exp; k++) m *= 10;
            return wmul(ts, m);
        }
        for (k = 0; k < exp - 9; k++) m *= 10;
        { /* floor division, as Python's // */
            int64_t q = ts / m;
            if (ts % m != 0 && ts < 0)
                q -= 1;
            return q;
        }
    }
    if (exp <= 33) {
        uint64_t mask = (UINT64_C(1) << exp) - 1;
        /* arithmetic shift, spelled out (>> of a negative value is implementation-defined) */
        int64_t sec = ts >= 0 ? ts >> exp : -1 - ((-1 - ts) >> exp);
        int64_t frac = (int64_t)((uint64_t)ts & mask);
        return wadd(wmul(sec, 1000000000), (frac * 1000000000) >> exp);
    }
    return (int64_t)((double)ts / (double)(UINT64_C(1) << exp) * 1e9);
}

/* ---- the reader ---------------------------------------------------------------------------- */

enum { FMT_PCAP_US = 0, FMT_PCAP_NS = 1, FMT_PCAPNG = 2 };

#define PCAP_MAGIC_US 0xA1B2C3D4
#define PCAP_MAGIC_NS 0xA1B23C4D
#define BT_SHB 0x0A0D0D0A
#define BT_IDB 0x00000001
#define BT_PB 0x00000002 /* obsolete Packet Block */
#define BT_SPB 0x00000003
#define BT_EPB 0x00000006

static const uint8_t BOM_LE[4] = {0x4D, 0x3C, 0x2B, 0x1A};
static const uint8_t BOM_BE[4] = {0x1A, 0x2B, 0x3C, 0x4D};

int kt_abi_version(void) { return KT_ABI_VERSION; }

size_t kt_reader_size(void) { return sizeof(kt_reader); }

int kt_columns(int block) {
    static const int n[5] = {KT_N_I64, KT_N_U64, KT_N_U32, KT_N_U16, KT_N_U8};
    return block >= 0 && block < 5 ? n[block] : -1;
}

static int fail(kt_reader *r, int code, const char *msg) {
    snprintf(r->message, sizeof r->message, "%s", msg);
    r->finished = 1;
    return code;
}

/* capture.py CaptureReader._read_file_header (the messages follow "<path>: "). */
int kt_open(kt_reader *r, const uint8_t *buf, int64_t n) {
    int64_t h, magic_le, magic_be;
    if (r == NULL)
        return KT_E_ARG;
    memset(r, 0, offsetof(kt_reader, ifaces));
    r->finished = 1;
    if ((buf == NULL && n != 0) || n < 0)
        return fail(r, KT_E_ARG, "bad arguments to kt_open");
    r->buf = buf;
    r->n = n;
    h = n < 24 ? n : 24; /* the Python reader sniffs the first 24 bytes */
    if (h == 0)
        return fail(r, KT_E_EMPTY, "empty file, not a capture");
    if (h < 4) {
        snprintf(r->message, sizeof r->message, "file too short (%d bytes) to be a capture", (int)h);
        return KT_E_SHORT;
    }
    magic_le = le32(buf, 0, n);
    magic_be = be32(buf, 0, n);
    if (magic_le == BT_SHB) {
        if (h < 16 || (memcmp(buf + 8, BOM_LE, 4) != 0 && memcmp(buf + 8, BOM_BE, 4) != 0))
            return fail(r, KT_E_PCAPNG_BOM, "pcapng section header damaged (bad byte-order magic)");
        r->fmt = FMT_PCAPNG;
        r->pos = 0;
        r->finished = 0;
        return 0;
    }
    if (magic_le == PCAP_MAGIC_US || magic_le == PCAP_MAGIC_NS) {
        r->swapped = 0;
    } else if (magic_be == PCAP_MAGIC_US || magic_be == PCAP_MAGIC_NS) {
        r->swapped = 1;
    } else {
        snprintf(r->message, sizeof r->message, "not a pcap or pcapng file (magic 0x%08x)",
                 (unsigned)magic_be);
        return KT_E_MAGIC;
    }
    if (h < 24) {
        snprintf(r->message, sizeof r->message, "pcap file header cut short (%d of 24 bytes)",
                 (int)h);
        return KT_E_PCAP_HEADER;
    }
    r->fmt = rd32(buf, 0, n, r->swapped) == PCAP_MAGIC_NS ? FMT_PCAP_NS : FMT_PCAP_US;
    r->sections = 1;
    r->n_ifaces = 1;
    memset(&r->ifaces[0], 0, sizeof r->ifaces[0]);
    r->ifaces[0].snaplen = rd32(buf, 16, n, r->swapped);
    /* only the lower 16 bits are the link type; the upper 16 say whether and how long an FCS
     * ends each frame, or are reserved and "MUST be ignored by pcap file readers" (pcap draft
     * sec 4, LinkType and additional information) */
    r->ifaces[0].linktype = rd32(buf, 20, n, r->swapped) & 0xFFFF;
    r->ifaces[0].ts_exp = r->fmt == FMT_PCAP_NS ? 9 : 6;
    r->pos = 24;
    r->finished = 0;
    return 0;
}

/* Append a damage event; its message is left for the caller to write. */
static char *add_damage(kt_reader *r, const char *kind, int64_t offset) {
    kt_damage *d = &r->damage[r->n_damage < KT_MAX_DAMAGE ? r->n_damage++ : KT_MAX_DAMAGE - 1];
    d->kind = kind;
    d->offset = offset;
    d->message[0] = 0;
    return d->message;
}

/* Reading stops at the record or block at r->pos: record what was lost and why. */
static char *stop(kt_reader *r, const char *kind) {
    r->finished = 1;
    r->stopped = 1;
    return add_damage(r, kind, r->pos);
}

static void corrupt(kt_reader *r, int64_t value) {
    snprintf(stop(r, "corrupt_length"), KT_MSG_LEN, "%s with impossible length %lld",
             r->fmt == FMT_PCAPNG ? "block" : "record", (long long)value);
}

static void truncated(kt_reader *r, int64_t need) {
    int64_t have = r->n - r->pos;
    snprintf(stop(r, "truncated_record"), KT_MSG_LEN, "file ends inside a %s (%lld of %lld bytes)",
             r->fmt == FMT_PCAPNG ? "block" : "record", (long long)have,
             (long long)(need > have + 1 ? need : have + 1));
}

static void bad_block(kt_reader *r, const char *msg) {
    snprintf(stop(r, "bad_block"), KT_MSG_LEN, "%s", msg);
}

/* Once reading has finished: pcap records longer than the file's snaplen (read anyway) are one
 * event, at the first of them. */
static void report_over_snaplen(kt_reader *r) {
    if (r->over_snaplen == 0)
        return;
    snprintf(add_damage(r, "caplen_over_snaplen", r->over_first_offset), KT_MSG_LEN,
             "%lld record(s) longer than the file's snaplen %lld (first: frame %lld); read anyway",
             (long long)r->over_snaplen, (long long)r->ifaces[0].snaplen,
             (long long)r->over_first_frame);
    r->over_snaplen = 0;
}

/* capture.py _parse_pcapng_block for a Section Header Block, framing already checked. */
static void parse_shb(kt_reader *r, const uint8_t *blk, int64_t blen) {
    int64_t major;
    if (memcmp(blk + 8, BOM_LE, 4) == 0) {
        r->swapped = 0;
    } else if (memcmp(blk + 8, BOM_BE, 4) == 0) {
        r->swapped = 1;
    } else {
        char msg[64];
        snprintf(msg, sizeof msg, "section header with bad byte-order magic %02x%02x%02x%02x",
                 blk[8], blk[9], blk[10], blk[11]);
        bad_block(r, msg);
        return;
    }
    major = rd16(blk, 12, blen, r->swapped);
    if (major != 1) {
        char msg[64];
        snprintf(msg, sizeof msg, "unsupported pcapng major version %d", (int)major);
        bad_block(r, msg);
        return;
    }
    r->sections++;
    r->n_ifaces = 0;
}

/* capture.py _parse_pcapng_block for an Interface Description Block, framing already checked. */
static void parse_idb(kt_reader *r, const uint8_t *blk, int64_t blen) {
    kt_iface f;
    int64_t i = 16, end = blen - 4;
    int sw = r->swapped;
    char msg[80];
    if (blen < 20) { /* type, length, LinkType, Reserved, SnapLen, length (pcapng sec 4.2) */
        snprintf(msg, sizeof msg, "interface description block too short (%lld bytes)",
                 (long long)blen);
        bad_block(r, msg);
        return;
    }
    memset(&f, 0, sizeof f);
    f.linktype = rd16(blk, 8, blen, sw);
    f.snaplen = rd32(blk, 12, blen, sw);
    f.ts_exp = 6;
    /* options: code(2) length(2) value padded to 4 (pcapng sec 3.5) */
    while (i + 4 <= end) {
        int64_t code = rd16(blk, i, blen, sw), olen = rd16(blk, i + 2, blen, sw);
        if (code == 0)
            break;
        if (code == 9 && olen >= 1) { /* if_tsresol */
            int64_t v = rd8(blk, i + 4, blen);
            f.ts_binary = (v & 0x80) != 0;
            f.ts_exp = (int32_t)(v & 0x7F);
        } else if (code == 14 && olen >= 8) { /* if_tsoffset, signed seconds */
            if (i + 12 > blen) {
                bad_block(r, "interface option if_tsoffset runs past the block");
                return;
            }
            f.ts_offset = rd64s(blk, i + 4, blen, sw);
        }
        i += 4 + ((olen + 3) & ~(int64_t)3);
    }
    if (!f.ts_binary && f.ts_exp > 18) {
        snprintf(msg, sizeof msg, "interface with impossible timestamp resolution 10^-%d",
                 (int)f.ts_exp);
        bad_block(r, msg);
        return;
    }
    if (f.ts_binary && f.ts_exp > 62) {
        snprintf(msg, sizeof msg, "interface with impossible timestamp resolution 2^-%d",
                 (int)f.ts_exp);
        bad_block(r, msg);
        return;
    }
    if (r->n_ifaces >= KT_MAX_IFACES) {
        snprintf(msg, sizeof msg, "more than %d interfaces in one section", KT_MAX_IFACES);
        bad_block(r, msg);
        return;
    }
    r->ifaces[r->n_ifaces++] = f;
}

/* A packet record for an interface that was never described: counted, not decoded. */
static void orphan_row(const kt_out *o, int64_t row, int64_t frame, int64_t incl, int64_t orig,
                       int64_t ifid) {
    clear_row(o, row);
    I64(KT_I_FRAME, row) = frame;
    SET32(KT_W_CAP, row, incl);
    SET32(KT_W_WIRE, row, orig);
    SET16(KT_H_IFACE, row, ifid < 65535 ? ifid : 65535);
    U8(KT_B_STATUS, row) = KT_MALFORMED;
}

/* One pcap record at r->pos (decode.py decode_records, pcap branch). Returns rows, -1 at stop. */
static int64_t pcap_record(kt_reader *r, const kt_out *o, int64_t row) {
    const uint8_t *b = r->buf;
    int64_t pos = r->pos, n = r->n, sec, frac, incl, orig, need, ts;
    int64_t max_rec = r->ifaces[0].snaplen < 262144 ? 262144 : r->ifaces[0].snaplen;
    int sw = r->swapped;
    if (pos + 16 > n) {
        if (pos < n)
            truncated(r, 16);
        else
            r->finished = 1;
        return -1;
    }
    sec = rd32(b, pos, n, sw);
    frac = rd32(b, pos + 4, n, sw);
    incl = rd32(b, pos + 8, n, sw);
    orig = rd32(b, pos + 12, n, sw);
    if (incl > max_rec) {
        corrupt(r, incl);
        return -1;
    }
    need = 16 + incl;
    if (need > KT_MAX_RECORD_BYTES) { /* capture.py: STOP_TOO_LARGE beyond MAX_RECORD_BYTES */
        snprintf(stop(r, "corrupt_length"), KT_MSG_LEN, "record of %lld bytes", (long long)need);
        return -1;
    }
    if (pos + need > n) {
        truncated(r, need);
        return -1;
    }
    ts = sec * 1000000000 + (r->fmt == FMT_PCAP_US ? frac * 1000 : frac);
    r->records++;
    r->pos = pos + need;
    /* capture.py: caplen above a snaplen below Wireshark's ceiling is read, but reported */
    if (r->ifaces[0].snaplen > 0 && r->ifaces[0].snaplen < 262144 && incl > r->ifaces[0].snaplen) {
        if (r->over_snaplen++ == 0) {
            r->over_first_frame = r->records;
            r->over_first_offset = pos;
        }
    }
    return decode_frame(b, pos + 16, pos + 16 + incl, orig, r->ifaces[0].linktype, 0, ts,
                        r->records, o, row);
}

/* One pcapng block at r->pos (decode.py decode_records, pcapng branch, and capture.py's
 * STOP_BLOCK handling). Returns rows written (0 for a block without a packet), -1 at stop. */
static int64_t pcapng_block(kt_reader *r, const kt_out *o, int64_t row) {
    const uint8_t *b = r->buf;
    int64_t pos = r->pos, n = r->n, avail = n - pos, btype, blen, rows = 0;
    int sw = r->swapped;
    if (avail < 12) {
        if (avail > 0)
            truncated(r, 12);
        else
            r->finished = 1;
        return -1;
    }
    btype = rd32(b, pos, n, sw);
    if (btype == BT_SHB) {
        /* a new section may switch byte order: its byte-order magic says how to read it */
        int bsw = memcmp(b + pos + 8, BOM_LE, 4) == 0 ? 0 : 1;
        blen = rd32(b, pos + 4, n, bsw);
        if (blen < 12 || blen % 4 != 0 || blen > KT_MAX_RECORD_BYTES) {
            corrupt(r, blen);
            return -1;
        }
        if (avail < blen) {
            truncated(r, blen);
            return -1;
        }
        if (rd32(b, pos + blen - 4, n, bsw) != blen) {
            snprintf(stop(r, "corrupt_length"), KT_MSG_LEN, "block trailer length does not match");
            return -1;
        }
        parse_shb(r, b + pos, blen);
        if (r->finished)
            return -1;
        r->pos = pos + blen;
        return 0;
    }
    blen = rd32(b, pos + 4, n, sw);
    if (blen < 12 || (blen & 3) != 0 || blen > KT_MAX_RECORD_BYTES) {
        corrupt(r, blen);
        return -1;
    }
    if (avail < blen) {
        truncated(r, blen);
        return -1;
    }
    if (rd32(b, pos + blen - 4, n, sw) != blen) {
        corrupt(r, blen);
        return -1;
    }
    if (btype == BT_IDB) {
        parse_idb(r, b + pos, blen);
        if (r->finished)
            return -1;
    } else if (btype == BT_EPB || btype == BT_PB) { /* pcapng sec 4.3, appendix A */
        int64_t lim = pos + blen, ifid, tsh, tsl, incl, orig;
        if (blen < 32) {
            corrupt(r, blen);
            return -1;
        }
        ifid = btype == BT_EPB ? rd32(b, pos + 8, lim, sw) : rd16(b, pos + 8, lim, sw);
        tsh = rd32(b, pos + 12, lim, sw);
        tsl = rd32(b, pos + 16, lim, sw);
        incl = rd32(b, pos + 20, lim, sw);
        orig = rd32(b, pos + 24, lim, sw);
        if (28 + incl + 4 > blen) {
            corrupt(r, incl);
            return -1;
        }
        r->records++;
        if (ifid >= r->n_ifaces) {
            orphan_row(o, row, r->records, incl, orig, ifid);
            rows = 1;
        } else {
            const kt_iface *f = &r->ifaces[ifid];
            int64_t raw = (int64_t)(((uint64_t)tsh << 32) | (uint64_t)tsl);
            int64_t ts = wadd(ts_to_ns(raw, f->ts_binary, f->ts_exp),
                              wmul(f->ts_offset, 1000000000));
            rows = decode_frame(b, pos + 28, pos + 28 + incl, orig, f->linktype, ifid, ts,
                                r->records, o, row);
        }
    } else if (btype == BT_SPB) { /* pcapng sec 4.4 */
        int64_t orig, incl;
        if (blen < 16) {
            corrupt(r, blen);
            return -1;
        }
        orig = rd32(b, pos + 8, pos + blen, sw);
        incl = blen - 16;
        if (orig < incl)
            incl = orig;
        if (r->n_ifaces > 0 && r->ifaces[0].snaplen > 0 && r->ifaces[0].snaplen < incl)
            incl = r->ifaces[0].snaplen;
        r->records++;
        if (r->n_ifaces == 0) {
            orphan_row(o, row, r->records, 0, 0, 0);
            rows = 1;
        } else { /* a Simple Packet Block has no timestamp: ts stays 0 */
            rows = decode_frame(b, pos + 12, pos + 12 + incl, orig, r->ifaces[0].linktype, 0, 0,
                                r->records, o, row);
        }
    }
    /* any other block (NRB, ISB, DSB, custom, ...) is skipped */
    r->pos = pos + blen;
    return rows;
}

int64_t kt_decode(kt_reader *r, int64_t *i64, uint64_t *u64, uint32_t *u32, uint16_t *u16,
                  uint8_t *u8, int64_t cap_rows) {
    kt_out out;
    int64_t rows = 0;
    if (r == NULL || i64 == NULL || u64 == NULL || u32 == NULL || u16 == NULL || u8 == NULL ||
        cap_rows < 2)
        return KT_E_ARG;
    out.i64 = i64;
    out.u64 = u64;
    out.u32 = u32;
    out.u16 = u16;
    out.u8 = u8;
    out.stride = cap_rows;
    /* a record yields at most two rows (outer and inner packet of a tunnel) */
    while (!r->finished && rows + 2 <= cap_rows) {
        int64_t k = r->fmt == FMT_PCAPNG ? pcapng_block(r, &out, rows) : pcap_record(r, &out, rows);
        if (k > 0)
            rows += k;
    }
    if (r->finished)
        report_over_snaplen(r);
    return rows;
}

int64_t kt_records(const kt_reader *r) { return r->records; }

const char *kt_message(const kt_reader *r) { return r->message; }

int kt_damage_count(const kt_reader *r) { return r->n_damage; }

const char *kt_damage_kind(const kt_reader *r, int i) {
    return i >= 0 && i < r->n_damage ? r->damage[i].kind : "";
}

int64_t kt_damage_offset(const kt_reader *r, int i) {
    return i >= 0 && i < r->n_damage ? r->damage[i].offset : -1;
}

const char *kt_damage_message(const kt_reader *r, int i) {
    return i >= 0 && i < r->n_damage ? r->damage[i].message : "";
}
