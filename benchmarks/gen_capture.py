#!/usr/bin/env python3
"""Write a synthetic, seeded capture of bulk TCP, IPv6 and QUIC-like UDP traffic, fast.

The traffic, as seen on a client's Ethernet port:

* TCP bulk downloads (IPv4 and IPv6, server port 443 or 80): handshake (SYN with MSS, SACK-permitted,
  timestamps and window scale; SYN-ACK; ACK), then two full-sized data segments per delayed ACK,
  every segment with the timestamps option (RFC 7323), 3 % of the ACKs with 1-3 SACK blocks
  (RFC 2018);
* QUIC-like UDP 443 flows: long-header Initial/Handshake datagrams first, then short-header data
  and ACK datagrams (RFC 9000 sec 17: the first byte's form, fixed, spin and packet-number bits).

Flows start one after another, about ``FLOW_STRIDE`` packets apart, and ``FLOW_WINDOW`` of them run
at once; inter-arrival times are exponential (Poisson arrivals, mean 12 us, ~1 Gbit/s of full-sized
frames). Records are assembled with NumPy for ``CHUNK_PACKETS`` packets at a time, never per packet,
so memory stays bounded whatever the output size. The randomness of chunk ``c`` comes only from
``(seed, c)``: a capture of N packets is a byte-exact prefix of a longer one with the same seed and
snaplen, which the benchmark uses for its scaled runs of slow peers.

By default the capture is headers-only (snaplen 128: every header of every packet is complete,
payloads are cut, wire lengths stay full). ``--size 2GiB`` streams the same pattern until the file
reaches a byte size; combine it with ``--snaplen 1514`` for full frames.

Usage::

    python benchmarks/gen_capture.py                       # 1,000,000 packets, pcap, snaplen 128
    python benchmarks/gen_capture.py -n 2000 --pcapng --gzip --seed 7 -o /tmp/x.pcapng.gz
    python benchmarks/gen_capture.py --size 2GiB --snaplen 1514

``--intent FILE.npz`` also writes, per packet, the field values the generator meant (named as the
packet-table columns), for tests.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

OUT_DIR = Path(__file__).resolve().parent / "_out"

#: Packets per generation chunk. Part of the pattern's definition: changing it changes the bytes.
CHUNK_PACKETS = 32_768
#: A new flow starts every FLOW_STRIDE packets on average ...
FLOW_STRIDE = 1000
#: ... and each packet belongs to one of the FLOW_WINDOW most recent flows.
FLOW_WINDOW = 48
#: First timestamp: 2024-04-24 23:06:40 UTC, in ns.
T0_NS = 1_714_000_000 * 1_000_000_000
MEAN_GAP_NS = 12_000

LINKTYPE_ETHERNET = 1
PCAP_MAGIC_US = 0xA1B2C3D4

# Flow kinds.
TCP4, TCP6, UDP4, UDP6 = 0, 1, 2, 3
KIND_P = (0.68, 0.17, 0.11, 0.04)

SACK_P = 0.03
CLIENT_MAC = bytes.fromhex("020000c0ffee")
ROUTER_MAC = bytes.fromhex("02000000abcd")
QUIC_LONG_PREFIX = 23  # first byte, version, DCID len, DCID(8), SCID len, SCID(8)
QUIC_SHORT_PREFIX = 9  # first byte, DCID(8)
HDR_WIDTH = 128  # widest header we write: 14 + 40 + 60 = 114

U32 = 0xFFFFFFFF


# -- per-flow properties --------------------------------------------------------------------------
class _Flows:
    """Properties of flow ``f`` drawn from ``(seed, 1, f // 4096)``: the same whatever the chunking."""

    BLOCK = 4096

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.props: dict[str, np.ndarray] = {}
        self.size = 0

    def _block(self, b: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, 1, b])
        n = self.BLOCK
        kind = rng.choice(4, size=n, p=KIND_P).astype(np.uint8)
        v4_client = (np.uint64(10) << np.uint64(24)) | rng.integers(1, 1 << 24, n, dtype=np.uint64)
        nets = np.array([0xCB007100, 0xC6336400, 0xC0000200], dtype=np.uint64)  # RFC 5737 nets
        v4_server = nets[rng.integers(0, 3, n)] | rng.integers(1, 255, n, dtype=np.uint64)
        v6_client_lo = rng.integers(1, 1 << 63, n, dtype=np.uint64)
        v6_server_lo = rng.integers(1, 1 << 20, n, dtype=np.uint64)
        is6 = (kind == TCP6) | (kind == UDP6)
        mapped = np.uint64(0xFFFF00000000)
        return {
            "kind": kind,
            # addresses as packet-table halves: IPv4 mapped into ::ffff:0:0/96
            "c_hi": np.where(is6, np.uint64(0x20010DB8000C0000), np.uint64(0)),
            "c_lo": np.where(is6, v6_client_lo, mapped | v4_client),
            "s_hi": np.where(is6, np.uint64(0x20010DB800050000), np.uint64(0)),
            "s_lo": np.where(is6, v6_server_lo, mapped | v4_server),
            "cport": rng.integers(32768, 61000, n, dtype=np.int64),
            "sport": np.where(rng.random(n) < 0.2, 80, 443).astype(np.int64),
            "cisn": rng.integers(0, 1 << 32, n, dtype=np.int64),
            "sisn": rng.integers(0, 1 << 32, n, dtype=np.int64),
            "cts": rng.integers(0, 1 << 32, n, dtype=np.int64),
            "sts": rng.integers(0, 1 << 32, n, dtype=np.int64),
            "rtt_ms": rng.integers(5, 120, n, dtype=np.int64),
            "cwin": rng.integers(200, 3000, n, dtype=np.int64),
            "sttl": rng.integers(40, 60, n, dtype=np.int64),
            "ipid": rng.integers(0, 1 << 16, n, dtype=np.int64),
            "label": rng.integers(0, 1 << 20, n, dtype=np.int64),
            "cid_c": rng.integers(0, 1 << 63, n, dtype=np.uint64),
            "cid_s": rng.integers(0, 1 << 63, n, dtype=np.uint64),
        }

    def get(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        need = int(ids.max()) + 1 if ids.size else 0
        while self.size < need:
            blk = self._block(self.size // self.BLOCK)
            self.props = (
                {k: np.concatenate([self.props[k], v]) for k, v in blk.items()} if self.props else blk
            )
            self.size += self.BLOCK
        return {k: v[ids] for k, v in self.props.items()}


# -- packet fields ---------------------------------------------------------------------------------
class _State:
    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.flows = _Flows(seed)
        self.count = np.zeros(0, dtype=np.int64)  # packets emitted so far per flow
        self.t_ns = T0_NS


def _fields(st: _State, chunk: int) -> dict[str, np.ndarray]:
    """Per-packet field values of chunk ``chunk`` (CHUNK_PACKETS packets), named as table columns."""
    n = CHUNK_PACKETS
    rng = np.random.default_rng([st.seed, 0, chunk])
    i = chunk * n + np.arange(n, dtype=np.int64)
    flow = i // FLOW_STRIDE + rng.integers(0, FLOW_WINDOW, n)
    gaps = rng.exponential(MEAN_GAP_NS, n).astype(np.int64) + 1
    sack_draw = rng.random(n)
    sack_n = rng.integers(1, 4, n)

    ts = st.t_ns + np.cumsum(gaps)
    st.t_ns = int(ts[-1])
    ts = ts // 1000 * 1000  # microsecond pcap

    # j: index of the packet within its flow (a cumulative count carried across chunks)
    if flow.max() >= st.count.size:
        st.count = np.concatenate([st.count, np.zeros(int(flow.max()) + 1 - st.count.size, np.int64)])
    order = np.argsort(flow, kind="stable")
    fs = flow[order]
    uniq, first, counts = np.unique(fs, return_index=True, return_counts=True)
    j = np.empty(n, dtype=np.int64)
    j[order] = np.arange(n) - np.repeat(first, counts) + st.count[fs]
    st.count[uniq] += counts

    p = st.flows.get(flow)
    kind = p["kind"]
    v6 = (kind == TCP6) | (kind == UDP6)
    tcp = kind <= TCP6
    t_ms = (ts - T0_NS) // 1_000_000
    half_rtt = p["rtt_ms"] // 2
    m = j - 3  # index after the handshake (TCP) / the long-header datagrams (QUIC)

    # --- TCP (RFC 9293) ---
    seg = np.where(v6, 1428, 1448).astype(np.int64)  # MSS minus the 12-byte timestamps option
    phase = np.where(m >= 0, m % 3, -1)
    c2s_tcp = (j == 0) | (j == 2) | (phase == 2)
    data = phase >= 0
    data &= phase < 2
    d = (m // 3) * 2 + phase
    acked = (m // 3) * 2 + 2
    seq = np.select(
        [j == 0, j == 1, j == 2, data],
        [p["cisn"], p["sisn"], p["cisn"] + 1, p["sisn"] + 1 + d * seg],
        p["cisn"] + 1,
    ) & U32
    ack = np.select(
        [j == 0, j == 1, j == 2, data],
        [np.zeros(n, np.int64), p["cisn"] + 1, p["sisn"] + 1, p["cisn"] + 1],
        p["sisn"] + 1 + acked * seg,
    ) & U32
    flags = np.select([j == 0, j == 1, data & (d % 8 == 7)], [0x02, 0x12, 0x18], 0x10)
    is_ack = (phase == 2) & tcp
    sack = is_ack & (sack_draw < SACK_P)
    n_sack = np.where(sack, sack_n, 0)
    sack_le = np.where(sack, ack + seg, 0) & U32
    sack_re = np.where(sack, ack + 2 * seg, 0) & U32
    syn = tcp & (j <= 1)
    tsval = np.where(c2s_tcp, p["cts"], p["sts"]) + t_ms
    tsecr = np.where(c2s_tcp, p["sts"], p["cts"]) + t_ms - half_rtt
    tsecr = np.where(j == 0, 0, tsecr) & U32
    tsval &= U32
    win = np.select([j == 0, j == 1, c2s_tcp], [64240, 65160, p["cwin"]], 501)
    optlen = np.where(syn, 20, np.where(sack, 16 + 8 * n_sack, 12))
    tcp_opts = np.where(syn, 1 | 2 | 4 | 16, np.where(sack, 16 | 8, 16))
    mss = np.where(syn, np.where(v6, 1440, 1460), 0)
    wscale = np.where(j == 0, 7, np.where(j == 1, 9, 255))
    tcp_plen = np.where(data, seg, 0)

    # --- QUIC-like UDP (RFC 9000 sec 17.2, 17.3) ---
    qphase = np.where(m >= 0, m % 4, -1)
    c2s_udp = (j == 0) | (qphase == 3)
    long_hdr = (j <= 2) & ~tcp
    first = np.select(
        [j == 0, j == 1, j == 2],
        [0xC3, 0xC1, 0xE1],
        np.where((m // 64) % 2 == 1, 0x61, 0x41),  # the spin bit flips every 64 packets
    )
    udp_plen = np.select(
        [j <= 1, j == 2, qphase == 3], [1200, 1000, 35], np.where(v6, 1232, 1252)
    )

    c2s = np.where(tcp, c2s_tcp, c2s_udp)
    f: dict[str, Any] = {
        "ts_ns": ts,
        "ip_version": np.where(v6, 6, 4),
        "proto": np.where(tcp, 6, 17),
        "src_hi": np.where(c2s, p["c_hi"], p["s_hi"]),
        "src_lo": np.where(c2s, p["c_lo"], p["s_lo"]),
        "dst_hi": np.where(c2s, p["s_hi"], p["c_hi"]),
        "dst_lo": np.where(c2s, p["s_lo"], p["c_lo"]),
        "sport": np.where(c2s, p["cport"], p["sport"]),
        "dport": np.where(c2s, p["sport"], p["cport"]),
        "ttl": np.where(c2s, 64, p["sttl"]),
        "tcp_flags": np.where(tcp, flags, 0),
        "tcp_seq": np.where(tcp, seq, 0),
        "tcp_ack": np.where(tcp, ack, 0),
        "tcp_win": np.where(tcp, win, 0),
        "tcp_tsval": np.where(tcp, tsval, 0),
        "tcp_tsecr": np.where(tcp, tsecr, 0),
        "tcp_opts": np.where(tcp, tcp_opts, 0),
        "tcp_mss": np.where(tcp, mss, 0),
        "tcp_wscale": np.where(tcp, wscale, 255),
        "sack_n": n_sack,
        "sack_le": sack_le,
        "sack_re": sack_re,
        "payload_len": np.where(tcp, tcp_plen, udp_plen),
        "quic_first": np.where(tcp, 256, first),  # first UDP payload byte (256: not UDP)
        # private: needed to lay out the bytes
        "_flow": flow,
        "_j": j,
        "_optlen": np.where(tcp, optlen, 0),
        "_long": long_hdr,
        "_c2s": c2s,
        "_ipid": (p["ipid"] + j) & 0xFFFF,
        "_label": p["label"],
        "_cid": np.where(c2s, p["cid_s"], p["cid_c"]),
        "_scid": np.where(c2s, p["cid_c"], p["cid_s"]),
        "_tcp": tcp,
        "_v6": v6,
    }
    l3 = np.where(v6, 40, 20)
    l4 = np.where(tcp, 20 + f["_optlen"], 8)
    f["wirelen"] = 14 + l3 + l4 + f["payload_len"]
    f["_hlen"] = 14 + l3 + l4 + np.where(tcp, 0, np.where(long_hdr, QUIC_LONG_PREFIX, QUIC_SHORT_PREFIX))
    return f


# -- byte layout -----------------------------------------------------------------------------------
def _be(v: Any, nbytes: int, rows: int) -> np.ndarray:
    """Big-endian bytes of ``v`` (an array or a scalar broadcast to ``rows``), shape (rows, nbytes)."""
    a = np.broadcast_to(np.asarray(v).astype(np.uint64), (rows,)).astype(">u8")
    return a.view(np.uint8).reshape(rows, 8)[:, 8 - nbytes :]


def _ipv4_checksum(h: np.ndarray) -> np.ndarray:
    """RFC 791 header checksum of each row of ``h`` (rows, 20), checksum field zero."""
    s = h.reshape(len(h), -1, 2).astype(np.uint32)
    total = (s[:, :, 0] << 8 | s[:, :, 1]).sum(axis=1)
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _tcp_options(f: dict[str, np.ndarray], rows: np.ndarray, optlen: int) -> np.ndarray:
    m = len(rows)
    tsval, tsecr = f["tcp_tsval"][rows], f["tcp_tsecr"][rows]
    ts = [_be(8, 1, m), _be(10, 1, m), _be(tsval, 4, m), _be(tsecr, 4, m)]
    if optlen == 20:  # MSS, SACK-permitted, timestamps, NOP, window scale (Linux's SYN order)
        parts = [_be(0x0204, 2, m), _be(f["tcp_mss"][rows], 2, m), _be(0x0402, 2, m), *ts,
                 _be(0x010303, 3, m), _be(f["tcp_wscale"][rows], 1, m)]
    else:
        parts = [_be(0x0101, 2, m), *ts]
        nblk = (optlen - 16) // 8
        if nblk > 0:
            ack = f["tcp_ack"][rows].astype(np.int64)
            seg = np.where(f["_v6"][rows], 1428, 1448)
            parts += [_be(0x0101, 2, m), _be(5, 1, m), _be(2 + 8 * nblk, 1, m)]
            for b in range(nblk):
                le = (ack + (1 + 2 * b) * seg) & U32
                parts += [_be(le, 4, m), _be((le + seg) & U32, 4, m)]
    return np.concatenate(parts, axis=1)


def _headers(f: dict[str, np.ndarray]) -> np.ndarray:
    """Header bytes of every packet, shape (n, HDR_WIDTH); row i is valid up to f['_hlen'][i]."""
    n = len(f["ts_ns"])
    h = np.zeros((n, HDR_WIDTH), dtype=np.uint8)
    c2s = f["_c2s"][:, None]
    h[:, 0:6] = np.where(c2s, np.frombuffer(ROUTER_MAC, np.uint8), np.frombuffer(CLIENT_MAC, np.uint8))
    h[:, 6:12] = np.where(c2s, np.frombuffer(CLIENT_MAC, np.uint8), np.frombuffer(ROUTER_MAC, np.uint8))
    v6 = f["_v6"]
    tcp = f["_tcp"]
    l4len = np.where(tcp, 20 + f["_optlen"], 8) + f["payload_len"]
    h[:, 12:14] = _be(np.where(v6, 0x86DD, 0x0800), 2, n)

    r = np.flatnonzero(~v6)
    m = len(r)
    ip = np.concatenate([
        _be(0x4500, 2, m), _be(20 + l4len[r], 2, m), _be(f["_ipid"][r], 2, m), _be(0x4000, 2, m),
        _be(f["ttl"][r], 1, m), _be(f["proto"][r], 1, m), _be(0, 2, m),
        _be(f["src_lo"][r] & U32, 4, m), _be(f["dst_lo"][r] & U32, 4, m),
    ], axis=1)
    ip[:, 10:12] = _be(_ipv4_checksum(ip), 2, m)
    h[r, 14:34] = ip
    r = np.flatnonzero(v6)
    m = len(r)
    h[r, 14:54] = np.concatenate([
        _be((6 << 28) | f["_label"][r], 4, m), _be(l4len[r], 2, m), _be(f["proto"][r], 1, m),
        _be(f["ttl"][r], 1, m), _be(f["src_hi"][r], 8, m), _be(f["src_lo"][r], 8, m),
        _be(f["dst_hi"][r], 8, m), _be(f["dst_lo"][r], 8, m),
    ], axis=1)

    # TCP: one group per (IP version, options length), so every offset is a constant.
    for is6 in (False, True):
        l4 = 54 if is6 else 34
        for optlen in (12, 20, 24, 32, 40):
            r = np.flatnonzero(tcp & (v6 == is6) & (f["_optlen"] == optlen))
            m = len(r)
            if not m:
                continue
            h[r, l4 : l4 + 20 + optlen] = np.concatenate([
                _be(f["sport"][r], 2, m), _be(f["dport"][r], 2, m), _be(f["tcp_seq"][r], 4, m),
                _be(f["tcp_ack"][r], 4, m), _be((20 + optlen) // 4 << 4, 1, m),
                _be(f["tcp_flags"][r], 1, m), _be(f["tcp_win"][r], 2, m), _be(0, 4, m),
                _tcp_options(f, r, optlen),
            ], axis=1)
        for long_hdr in (False, True):
            r = np.flatnonzero(~tcp & (v6 == is6) & (f["_long"] == long_hdr))
            m = len(r)
            if not m:
                continue
            parts = [
                _be(f["sport"][r], 2, m), _be(f["dport"][r], 2, m), _be(8 + f["payload_len"][r], 2, m),
                _be(0xFFFF if is6 else 0, 2, m), _be(f["quic_first"][r], 1, m),
            ]
            if long_hdr:
                parts += [_be(1, 4, m), _be(8, 1, m), _be(f["_cid"][r], 8, m), _be(8, 1, m),
                          _be(f["_scid"][r], 8, m)]
            else:
                parts += [_be(f["_cid"][r], 8, m)]
            blk = np.concatenate(parts, axis=1)
            h[r, l4 : l4 + blk.shape[1]] = blk
    return h


def _filler(width: int, seed: int) -> np.ndarray:
    """Payload bytes (the same random row under every packet; headers are written over it)."""
    return np.random.default_rng([seed, 2]).integers(0, 256, width, dtype=np.uint8)


def _pad4(x: np.ndarray) -> np.ndarray:
    return (x + 3) & ~3


def _records(f: dict[str, np.ndarray], snaplen: int, pcapng: bool, filler: np.ndarray) -> np.ndarray:
    """The chunk's records (pcap records or pcapng EPBs) as one flat uint8 array."""
    n = len(f["ts_ns"])
    wire = f["wirelen"].astype(np.int64)
    cap = np.minimum(wire, snaplen)
    head = 28 if pcapng else 16
    width = head + ((snaplen + 3) & ~3) + (4 if pcapng else 0)
    rec = np.empty((n, width), dtype=np.uint8)
    rec[:] = filler[:width]
    hw = min(HDR_WIDTH, snaplen)
    hmask = np.arange(hw) < np.minimum(f["_hlen"], cap)[:, None]
    rec[:, head : head + hw][hmask] = _headers(f)[:, :hw][hmask]
    us = f["ts_ns"] // 1000
    if pcapng:
        blen = 32 + _pad4(cap)
        words = [np.full(n, 6), blen, np.zeros(n, np.int64), us >> 32, us & 0xFFFFFFFF, cap, wire]
    else:
        blen = 16 + cap
        words = [us // 1_000_000, us % 1_000_000, cap, wire]
    rec[:, :head] = np.stack(words, axis=1).astype("<u4").view(np.uint8)
    col = np.arange(width)
    if pcapng:
        pad = (col >= head + cap[:, None]) & (col < head + _pad4(cap)[:, None])
        rec[pad] = 0
        rows = np.arange(n)
        trailer = head + _pad4(cap)
        le = blen.astype("<u4").view(np.uint8).reshape(n, 4)
        for k in range(4):
            rec[rows, trailer + k] = le[:, k]
    return rec[col < blen[:, None]]


def _pcap_header(snaplen: int) -> bytes:
    return np.array([PCAP_MAGIC_US, 0x00040002, 0, 0, snaplen, LINKTYPE_ETHERNET], "<u4").tobytes()


def _pcapng_header(snaplen: int) -> bytes:
    def opt(code: int, value: bytes) -> bytes:
        pad = b"\0" * (-len(value) % 4)
        return np.array([code, len(value)], "<u2").tobytes() + value + pad

    def block(btype: int, body: bytes) -> bytes:
        blen = 12 + len(body)
        return np.array([btype, blen], "<u4").tobytes() + body + np.array([blen], "<u4").tobytes()

    shb = (np.array([0x1A2B3C4D], "<u4").tobytes() + np.array([1, 0], "<u2").tobytes()
           + np.array([-1], "<i8").tobytes() + opt(4, b"keepiton_throttle gen_capture") + opt(0, b""))
    idb = (np.array([LINKTYPE_ETHERNET, 0], "<u2").tobytes() + np.array([snaplen], "<u4").tobytes()
           + opt(2, b"eth0") + opt(9, b"\x06") + opt(0, b""))
    return block(0x0A0D0D0A, shb) + block(1, idb)


# -- driver ----------------------------------------------------------------------------------------
def parse_size(text: str) -> int:
    """'2GB' -> 2e9 bytes, '2GiB' -> 2**31 bytes (also k/M/T, kB/MB/TB, KiB/MiB/TiB, plain bytes)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKMGT]?)(i?)B?\s*", text)
    if not m:
        raise ValueError(f"size must look like 2GB, 2GiB or 500MB, got {text!r}")
    mult = {"": 0, "k": 1, "K": 1, "M": 2, "G": 3, "T": 4}[m.group(2)]
    base = 1024 if m.group(3) else 1000
    return int(float(m.group(1)) * base**mult)


def default_path(*, packets: int | None, size: int | None, snaplen: int, seed: int,
                 pcapng: bool, gz: bool) -> Path:
    what = f"{packets}p" if size is None else f"{size}B"
    ext = (".pcapng" if pcapng else ".pcap") + (".gz" if gz else "")
    return OUT_DIR / f"gen-{what}-s{snaplen}-seed{seed}{ext}"


def generate(path: str | os.PathLike[str], *, packets: int | None = 1_000_000,
             size: int | None = None, snaplen: int = 128, pcapng: bool = False, gz: bool = False,
             seed: int = 0, intent: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Write the capture; return what was written (packets, bytes, counts by kind).

    With ``size``, packets are written until the (uncompressed) capture reaches ``size`` bytes and
    ``packets`` is ignored. ``intent`` (only with ``packets``) writes the intended per-packet
    fields to an ``.npz`` file.
    """
    if snaplen < 64 or snaplen > 262_144:
        raise ValueError(f"snaplen must be in [64, 262144], got {snaplen}")
    if size is None and (packets is None or packets < 0):
        raise ValueError(f"packets must be >= 0, got {packets}")
    if intent is not None and size is not None:
        raise ValueError("intent is only available with a packet count, not with size")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    st = _State(seed)
    filler = _filler(((snaplen + 3) & ~3) + 32, seed)
    header = _pcapng_header(snaplen) if pcapng else _pcap_header(snaplen)
    written = len(header)
    total = 0
    counts = {"tcp": 0, "udp": 0, "ipv6": 0, "sack": 0}
    kept: list[dict[str, np.ndarray]] = []
    flows: set[int] = set()
    tmp = path.with_name(path.name + ".part")
    raw: BinaryIO = open(tmp, "wb")  # noqa: SIM115 - closed below
    out: BinaryIO = gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1) if gz else raw  # type: ignore[assignment]
    try:
        out.write(header)
        chunk = 0
        while True:
            left = None if size is not None else packets - total  # type: ignore[operator]
            if left is not None and left <= 0:
                break
            if size is not None and written >= size:
                break
            f = _fields(st, chunk)
            chunk += 1
            k = CHUNK_PACKETS if left is None else min(left, CHUNK_PACKETS)
            if k < CHUNK_PACKETS:
                f = {key: v[:k] for key, v in f.items()}
            recs = _records(f, snaplen, pcapng, filler)
            if size is not None:
                cap = np.minimum(f["wirelen"], snaplen)
                lens = (32 + _pad4(cap)) if pcapng else (16 + cap)
                ends = np.cumsum(lens)
                if written + int(ends[-1]) > size:
                    k = int(np.searchsorted(ends, size - written)) + 1
                    f = {key: v[:k] for key, v in f.items()}
                    recs = recs[: int(ends[k - 1])]
            out.write(recs.data)
            written += recs.size
            total += len(f["ts_ns"])
            counts["tcp"] += int(np.count_nonzero(f["_tcp"]))
            counts["udp"] += int(np.count_nonzero(~f["_tcp"]))
            counts["ipv6"] += int(np.count_nonzero(f["_v6"]))
            counts["sack"] += int(np.count_nonzero(f["sack_n"]))
            flows.update(np.unique(f["_flow"]).tolist())
            if intent is not None:
                kept.append({k2: v for k2, v in f.items() if not k2.startswith("_")})
    finally:
        if out is not raw:
            out.close()
        raw.close()
    os.replace(tmp, path)
    if intent is not None:
        cols = {k: np.concatenate([c[k] for c in kept]) for k in kept[0]} if kept else {}
        cols["caplen"] = np.minimum(cols["wirelen"], snaplen) if kept else np.zeros(0)
        np.savez(intent, **cols)
    return {
        "path": str(path),
        "packets": total,
        "bytes": written,
        "file_bytes": path.stat().st_size,
        "snaplen": snaplen,
        "format": "pcapng" if pcapng else "pcap",
        "gzip": gz,
        "seed": seed,
        "flows": len(flows),
        **counts,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", "--packets", type=int, default=1_000_000, help="packets (default 1,000,000)")
    ap.add_argument("--size", help="write until the capture has this many bytes (2GB, 2GiB, ...)")
    ap.add_argument("--snaplen", type=int, default=128, help="bytes kept per frame (default 128)")
    ap.add_argument("--pcapng", action="store_true", help="write pcapng instead of classic pcap")
    ap.add_argument("--gzip", action="store_true", help="gzip the output (level 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-o", "--output", help=f"output file (default under {OUT_DIR})")
    ap.add_argument("--intent", help="also write the intended per-packet fields to this .npz")
    ap.add_argument("--json", action="store_true", help="print what was written as JSON")
    a = ap.parse_args(argv)
    try:
        size = None if a.size is None else parse_size(a.size)
    except ValueError as exc:
        ap.error(str(exc))
    path = a.output or default_path(packets=a.packets, size=size, snaplen=a.snaplen, seed=a.seed,
                                    pcapng=a.pcapng, gz=a.gzip)
    t = time.perf_counter()
    try:
        res = generate(path, packets=a.packets, size=size, snaplen=a.snaplen, pcapng=a.pcapng,
                       gz=a.gzip, seed=a.seed, intent=a.intent)
    except ValueError as exc:
        ap.error(str(exc))
    res["seconds"] = round(time.perf_counter() - t, 3)
    if a.json:
        print(json.dumps(res))
    else:
        print(f"wrote {res['path']}: {res['packets']:,} packets, {res['bytes']:,} bytes "
              f"({res['flows']:,} flows, {res['udp']:,} UDP, {res['ipv6']:,} IPv6) "
              f"in {res['seconds']:.2f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
