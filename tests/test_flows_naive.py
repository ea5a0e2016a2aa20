"""The flow kernel (``_kernels.flow_pass`` + ``flush_bins`` via ``FlowBuilder``) against its slow
twin ``tests/naive.py`` on generated captures (STYLE.md rule 4).

Captures are simulated TCP connections (handshake or not, transfers either way, loss with fast
or RTO retransmission, delayed ACKs, SACK, timestamps, window scaling, zero windows, keep-alives,
FIN/RST endings, port reuse), QUIC-like and plain UDP flows, perturbed at the capture point
(late start, reordered neighbours, duplicates, capture drops), interleaved, written as pcap
bytes, decoded with ``read_capture`` and analysed by both; every column, sample and bin must be
equal, with the whole file as one chunk and in 4 KiB chunks.

Hypothesis draws the structure of each flow; a seeded ``random.Random`` drives the per-packet
details (so that an example stays small). ``derandomize=True`` keeps CI runs identical.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keepiton_throttle import _kernels as K
from keepiton_throttle.flows import (
    DEFAULT_BIN_NS,
    DEFAULT_OOO_NS,
    DEFAULT_RING,
    FlowBuilder,
    RowFlows,
    analyze_chunks,
    flow_records,
)
from keepiton_throttle.series import (
    VANTAGE_CLIENT,
    VANTAGE_MIDDLE,
    VANTAGE_SERVER,
    VANTAGE_UNKNOWN,
    RttSamples,
)
from keepiton_throttle.sources.capture import CaptureReader, Chunk, chunks_of, read_capture

from .conftest import pcap_bytes
from .naive import naive_flows
from .naive_series import detect_vantage, path_rtt

MOD = 2**32
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
MS = 1_000_000
QUIC_V1, QUIC_V2, QUIC_DRAFT29 = 1, 0x6B3343CF, 0xFF00001D

SETTINGS = settings(max_examples=250, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ---- wire format ------------------------------------------------------------------------------
@dataclass
class Pkt:
    """One packet as the simulator sends it (times relative, numbers unwrapped)."""

    t: int
    src: bytes
    dst: bytes
    sport: int
    dport: int
    proto: int = 6
    seq: int = 0
    ack: int = 0
    flags: int = 0
    win: int = 0
    mss: int | None = None
    ws: int | None = None
    sack_perm: bool = False
    sack: tuple[tuple[int, int], ...] = ()
    tsopt: tuple[int, int] | None = None
    plen: int = 0  # TCP payload length (zero bytes)
    udp: bytes = b""  # UDP payload
    keep: int | None = None  # payload bytes captured (None: all)


def _tcp_options(p: Pkt) -> bytes:
    o = b""
    if p.mss is not None:
        o += struct.pack("!BBH", 2, 4, p.mss)
    if p.ws is not None:
        o += struct.pack("!BBBB", 1, 3, 3, p.ws)
    if p.sack_perm:
        o += b"\x01\x01\x04\x02"
    if p.tsopt is not None:
        o += struct.pack("!BBBBII", 1, 1, 8, 10, p.tsopt[0] % MOD, p.tsopt[1] % MOD)
    if p.sack:
        o += struct.pack("!BBBB", 1, 1, 5, 2 + 8 * len(p.sack))
        o += b"".join(struct.pack("!II", le % MOD, re % MOD) for le, re in p.sack)
    assert len(o) <= 40
    return o + b"\0" * (-len(o) % 4)


def frame(p: Pkt) -> tuple[bytes, int]:
    """(captured Ethernet frame, wire length)."""
    if p.proto == 6:
        opts = _tcp_options(p)
        head = struct.pack("!HHIIBBHHH", p.sport, p.dport, p.seq % MOD, p.ack % MOD,
                           (20 + len(opts)) << 2, p.flags, p.win, 0, 0) + opts
        body = b"\0" * p.plen
    else:
        head = struct.pack("!HHHH", p.sport, p.dport, 8 + len(p.udp), 0)
        body = p.udp
    l4 = head + body
    if len(p.src) == 4:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 0, 0x4000, 64, p.proto, 0,
                         p.src, p.dst)
        eth = b"\x02\0\0\0\0\x01\x02\0\0\0\0\x02\x08\x00"
    else:
        ip = struct.pack("!IHBB16s16s", 0x60000000, len(l4), p.proto, 64, p.src, p.dst)
        eth = b"\x02\0\0\0\0\x01\x02\0\0\0\0\x02\x86\xdd"
    whole = eth + ip + l4
    if p.keep is None:
        return whole, len(whole)
    return whole[: len(whole) - len(body) + min(p.keep, len(body))], len(whole)


def capture_bytes(pkts: list[Pkt], base: int) -> bytes:
    recs, wls = [], []
    for p in pkts:
        data, wl = frame(p)
        recs.append((base + p.t, data))
        wls.append(wl)
    return pcap_bytes(recs, nsec=True, wirelens=wls)


# ---- a TCP connection simulator ---------------------------------------------------------------
@dataclass
class End:
    addr: bytes
    port: int
    nxt: int  # next sequence number to send (unwrapped)
    ws: int | None
    tsval: int
    rwnd: int
    rcv_nxt: int = 0
    ts_recent: int = 0
    pending: int = 0  # segments received and not yet acknowledged (delayed ACK)
    ooo: list[tuple[int, int]] | None = None  # blocks received above rcv_nxt
    last_block: tuple[int, int] | None = None


class TcpSim:
    """Plausible (not exact) TCP: enough structure that ACKs match segments, dup ACKs precede
    fast retransmissions, SACK blocks describe real holes and timestamps are echoed."""

    def __init__(self, rng: random.Random, prm: dict[str, Any], t: int) -> None:
        self.rng = rng
        self.p = prm
        self.t = t
        self.out: list[Pkt] = []
        self.c = End(prm["client"], prm["cport"], prm["isn_c"], prm["ws_c"], prm["tsval_c"],
                     prm["rwnd_c"], ooo=[])
        self.s = End(prm["server"], prm["sport"], prm["isn_s"], prm["ws_s"], prm["tsval_s"],
                     prm["rwnd_s"], ooo=[])
        self.scaling = prm["ws_c"] is not None and prm["ws_s"] is not None and prm["handshake"]
        self.sack = prm["sack"]
        self.ts = prm["ts"]

    def gap(self) -> int:
        r = self.rng.random()
        if r < 0.05:
            return 0
        if r < 0.35:
            return self.rng.randint(1, 300_000)
        if r < 0.75:
            return self.rng.randint(300_000, 5 * MS)
        if r < 0.97:
            return self.rng.randint(5 * MS, 60 * MS)
        return self.rng.randint(100 * MS, 1500 * MS)

    def emit(self, x: End, y: End, flags: int, *, seq: int | None = None, plen: int = 0,
             sack: tuple[tuple[int, int], ...] = (), gap: int | None = None, lost: bool = False,
             captured: bool = True, syn_opts: bool = False) -> None:
        self.t += self.gap() if gap is None else gap
        tsopt = None
        if self.ts:
            if x.tsval % MOD == 0:
                x.tsval += 1  # TSval 0 and repeated TSvals are pinned by the explicit tests below
            tsopt = (x.tsval, x.ts_recent if flags & ACK else 0)
            x.tsval += self.rng.randint(1, 40)
        if flags & SYN:
            win = min(x.rwnd, 65535)  # a SYN's window is never scaled (RFC 7323 sec 2.2)
        elif self.scaling:
            win = min(x.rwnd >> x.ws, 65535)  # type: ignore[operator]
        else:
            win = min(x.rwnd, 65535)
        p = Pkt(self.t, x.addr, y.addr, x.port, y.port, 6, x.nxt if seq is None else seq,
                x.rcv_nxt if flags & ACK else 0, flags, win, tsopt=tsopt, plen=plen,
                sack=sack[: 3 if self.ts else 4])
        if syn_opts:
            p = replace(p, mss=self.p["mss"], ws=x.ws, sack_perm=self.sack)
        if self.p["headers_only"] and plen:
            p.keep = self.rng.randint(0, min(plen, 64))
        if captured:
            self.out.append(p)
        if not lost and tsopt is not None:
            y.ts_recent = tsopt[0]

    # -- connection phases ------------------------------------------------------------------
    def handshake(self) -> None:
        c, s = self.c, self.s
        for k in range(1 + (self.rng.random() < 0.15)):  # sometimes a retransmitted SYN
            self.emit(c, s, SYN, syn_opts=True, gap=None if k == 0 else 1000 * MS)
        c.nxt += 1
        s.rcv_nxt = c.nxt
        for k in range(1 + (self.rng.random() < 0.1)):
            self.emit(s, c, SYN | ACK, syn_opts=True, gap=None if k == 0 else 1000 * MS)
        s.nxt += 1
        c.rcv_nxt = s.nxt
        self.emit(c, s, ACK)

    def skip_handshake(self) -> None:
        self.c.rcv_nxt, self.s.rcv_nxt = self.s.nxt, self.c.nxt

    def ack(self, y: End, x: End, sack: tuple[tuple[int, int], ...] = ()) -> None:
        if self.rng.random() < 0.1:  # a window update now and then
            y.rwnd = self.rng.choice(self.p["rwnds"])
        self.emit(y, x, ACK, sack=sack if self.sack else ())
        y.pending = 0

    def deliver(self, y: End, x: End, s: int, e: int) -> None:
        """Receiver ``y`` gets [s, e) from ``x``: RFC 1122 / 5681 ACK policy, RFC 2018 SACK."""
        assert y.ooo is not None
        if e <= y.rcv_nxt:  # a duplicate: ACK at once, with a D-SACK block (RFC 2883)
            self.ack(y, x, ((s, e),))
            return
        if s <= y.rcv_nxt:
            y.rcv_nxt = e
            while y.ooo and y.ooo[0][0] <= y.rcv_nxt:
                y.rcv_nxt = max(y.rcv_nxt, y.ooo.pop(0)[1])
            if y.ooo:
                self.ack(y, x, tuple(y.ooo))
                return
            y.pending += 1
            if y.pending >= self.p["ack_every"]:
                self.ack(y, x)
            return
        blocks = sorted([*y.ooo, (s, e)])
        merged: list[tuple[int, int]] = []
        for b in blocks:
            if merged and b[0] <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], b[1]))
            else:
                merged.append(b)
        y.ooo = merged
        first = next(b for b in merged if b[0] <= s < b[1])  # the newest block first
        self.ack(y, x, (first, *[b for b in merged if b != first]))

    def send(self, x: End, y: End, s: int, e: int, lost_p: float, gap: int | None = None) -> bool:
        lost = self.rng.random() < lost_p
        captured = not lost or self.rng.random() < 0.5  # lost before or after the capture point
        flags = ACK | (PSH if self.rng.random() < 0.3 else 0)
        self.emit(x, y, flags, seq=s, plen=e - s, gap=gap, lost=lost, captured=captured)
        if not lost:
            self.deliver(y, x, s, e)
        return not lost

    def transfer(self, x: End, y: End, sizes: list[int]) -> None:
        i = 0
        while i < len(sizes):
            burst = sizes[i : i + self.rng.randint(1, 10)]
            i += len(burst)
            holes = []
            for size in burst:
                s = x.nxt
                x.nxt += size
                if not self.send(x, y, s, x.nxt, self.p["loss"]):
                    holes.append((s, x.nxt))
            if y.pending:
                self.ack(y, x)  # the delayed-ACK timer
            for s, e in holes:
                self.recover(x, y, s, e)
            if self.p["zero_window"] and self.rng.random() < 0.3:
                self.zero_window(x, y)
        if self.p["keepalive"] and self.rng.random() < 0.5:
            # keep-alive (RFC 9293 sec 3.8.4): one old byte, seq = SND.NXT - 1
            self.emit(x, y, ACK, seq=x.nxt - 1, plen=1, gap=self.rng.randint(500 * MS, 2000 * MS))
            self.deliver(y, x, x.nxt - 1, x.nxt)

    def recover(self, x: End, y: End, s: int, e: int) -> None:
        for attempt in range(3):
            if self.rng.random() < 0.6:  # fast retransmission after duplicate ACKs
                for _ in range(self.rng.randint(0, 3)):
                    self.ack(y, x, tuple(y.ooo or ()))
                gap = self.rng.randint(0, 25 * MS)
            else:  # retransmission timeout
                gap = self.rng.randint(200 * MS, 1200 * MS)
            lost_p = self.p["loss"] / 2 if attempt < 2 else 0.0
            if e - s > 1 and self.rng.random() < 0.2:  # re-segmented
                m = self.rng.randint(s + 1, e - 1)
                ok = self.send(x, y, s, m, lost_p, gap) & self.send(x, y, m, e, lost_p)  # both sent
            else:
                ok = self.send(x, y, s, e, lost_p, gap)
            if ok:
                return
        self.send(x, y, s, e, 0.0)

    def zero_window(self, x: End, y: End) -> None:
        saved, y.rwnd = y.rwnd, 0
        if self.rng.random() < 0.5:
            self.ack(y, x)
        else:
            self.emit(y, x, ACK)
        for _ in range(self.rng.randint(0, 3)):
            # zero-window probe (RFC 9293 sec 3.8.6.1) as Linux sends it: SND.UNA - 1, no data
            self.emit(x, y, ACK, seq=x.nxt - 1, gap=self.rng.randint(50 * MS, 400 * MS))
            self.emit(y, x, ACK)
        y.rwnd = saved or 65535
        self.emit(y, x, ACK)  # window update

    def close(self, how: str) -> None:
        x, y = (self.c, self.s) if self.rng.random() < 0.6 else (self.s, self.c)
        if how == "rst":
            self.emit(x, y, RST | (ACK if self.rng.random() < 0.7 else 0))
        elif how in ("fin", "half"):
            self.emit(x, y, FIN | ACK)
            x.nxt += 1
            y.rcv_nxt = x.nxt
            if how == "half":
                self.emit(y, x, ACK)
                return
            if self.rng.random() < 0.5:
                self.emit(y, x, ACK)
            self.emit(y, x, FIN | ACK)
            y.nxt += 1
            x.rcv_nxt = y.nxt
            self.emit(x, y, ACK)

    def run(self) -> list[Pkt]:
        if self.p["handshake"]:
            self.handshake()
        else:
            self.skip_handshake()
        for up, sizes in self.p["phases"]:
            x, y = (self.c, self.s) if up else (self.s, self.c)
            self.transfer(x, y, sizes)
        self.close(self.p["ending"])
        return self.out


# ---- UDP / QUIC-like flows --------------------------------------------------------------------
def quic_first(rng: random.Random, kind: str, version: int, spin: int = 0) -> bytes:
    """First bytes of a QUIC packet (RFC 9000 sec 17, RFC 9369 sec 3.2); the rest is filler."""
    if kind == "short":
        return bytes([0x40 | (spin << 5) | rng.randint(0, 0x1F)])
    if kind == "vn":  # Version Negotiation: version 0 (RFC 9000 sec 17.2.1)
        return bytes([0x80 | rng.randint(0, 0x7F)]) + b"\0\0\0\0"
    t = {"initial": 0, "0rtt": 1, "handshake": 2, "retry": 3}[kind]
    if version == QUIC_V2:
        t = {0: 1, 1: 2, 2: 3, 3: 0}[t]
    return bytes([0xC0 | (t << 4) | rng.randint(0, 15)]) + version.to_bytes(4, "big")


def udp_flow(rng: random.Random, prm: dict[str, Any], t: int) -> list[Pkt]:
    cli, srv = (prm["client"], prm["cport"]), (prm["server"], prm["sport"])
    out: list[Pkt] = []

    def send(frm: tuple[bytes, int], to: tuple[bytes, int], head: bytes, size: int) -> None:
        nonlocal t
        t += rng.choice([0, rng.randint(1, 2 * MS), rng.randint(2 * MS, 80 * MS)])
        body = (head + b"\0" * size)[:size]  # sizes below 5 cut the header itself
        keep = rng.randint(0, 6) if rng.random() < 0.1 else None
        out.append(Pkt(t, frm[0], to[0], frm[1], to[1], 17, udp=body, keep=keep))

    if prm["quic"]:
        v = prm["version"]
        for _ in range(rng.randint(1, 2)):
            send(cli, srv, quic_first(rng, "initial", v), 1200)
        if rng.random() < 0.15:
            send(srv, cli, quic_first(rng, "vn", v), 40)
            send(cli, srv, quic_first(rng, "initial", v), 1200)
        send(srv, cli, quic_first(rng, "initial", v), rng.randint(100, 1200))
        send(srv, cli, quic_first(rng, "handshake", v), rng.randint(100, 1200))
        send(cli, srv, quic_first(rng, rng.choice(["handshake", "0rtt"]), v), rng.randint(50, 300))
        spin_c = spin_s = 0
        for _ in range(prm["n"]):
            if rng.random() < 0.5:  # client: inverts the spin it last saw (RFC 9000 sec 17.4)
                if rng.random() < 0.3:
                    spin_c = 1 - spin_s
                send(cli, srv, quic_first(rng, "short", v, spin_c), rng.randint(20, 1350))
            else:  # server: echoes the client's spin
                spin_s = spin_c if rng.random() < 0.7 else spin_s
                send(srv, cli, quic_first(rng, "short", v, spin_s), rng.randint(20, 1350))
    else:
        for _ in range(prm["n"]):
            frm, to = (cli, srv) if rng.random() < 0.5 else (srv, cli)
            send(frm, to, bytes([rng.randint(0, 255)]) + rng.randbytes(4), rng.randint(0, 200))
    return out


# ---- capture-point perturbations --------------------------------------------------------------
def perturb(rng: random.Random, pkts: list[Pkt], prm: dict[str, Any]) -> list[Pkt]:
    """Late start, capture drops, swapped neighbours, duplicates; then the original times are
    handed out again in the new order, so capture timestamps never go backwards."""
    times = sorted(p.t for p in pkts)
    pkts = pkts[prm["cut"] :]
    times = times[prm["cut"] :]
    for _ in range(prm["drops"]):
        if pkts:
            k = rng.randrange(len(pkts))
            del pkts[k], times[k]
    for _ in range(prm["swaps"]):
        if len(pkts) > 1:
            k = rng.randrange(len(pkts) - 1)
            pkts[k], pkts[k + 1] = pkts[k + 1], pkts[k]
    for _ in range(prm["dups"]):
        if pkts:
            k = rng.randrange(len(pkts))
            pkts.insert(k + 1, replace(pkts[k]))
            times.insert(k + 1, times[k] + rng.choice([0, rng.randint(1, 100_000)]))
    times.sort()
    return [replace(p, t=t) for p, t in zip(pkts, times, strict=True)]


# ---- strategies -------------------------------------------------------------------------------
ADDRS4 = [bytes([10, 0, 0, k]) for k in (1, 2, 3)]
ADDRS6 = [bytes.fromhex("20010db8" + "00" * 11) + bytes([k]) for k in (1, 2, 3)]
isns = st.one_of(st.integers(0, MOD - 1), st.integers(MOD - 3000, MOD - 1))  # some wrap
tsvals = st.one_of(st.integers(1, MOD - 1), st.integers(MOD - 200, MOD - 1))
sizes = st.lists(st.one_of(st.integers(1, 1460), st.sampled_from([1, 536, 1448, 1460])),
                 max_size=30)


@st.composite
def endpoints(draw: st.DrawFn) -> dict[str, Any]:
    pool = ADDRS6 if draw(st.booleans()) else ADDRS4
    client, server = draw(st.lists(st.sampled_from(pool), min_size=2, max_size=2, unique=True))
    cport = draw(st.one_of(st.integers(1024, 65535), st.sampled_from([40000, 50000])))
    sport = draw(st.one_of(st.sampled_from([80, 443, 8443]), st.integers(1, 65535)))
    return {"client": client, "server": server, "cport": cport, "sport": sport}


@st.composite
def perturbations(draw: st.DrawFn) -> dict[str, Any]:
    return {"cut": draw(st.sampled_from([0, 0, 0, 1, 2, 3, 5, 12])),
            "drops": draw(st.integers(0, 3)), "swaps": draw(st.integers(0, 4)),
            "dups": draw(st.integers(0, 3))}


@st.composite
def tcp_params(draw: st.DrawFn) -> dict[str, Any]:
    window = st.sampled_from([0, 1460, 2920, 8760, 65535, 262144, 1 << 20])
    p = draw(endpoints())
    p.update(
        handshake=draw(st.booleans()) or draw(st.booleans()),
        isn_c=draw(isns), isn_s=draw(isns),
        ws_c=draw(st.none() | st.integers(0, 14)), ws_s=draw(st.none() | st.integers(0, 14)),
        sack=draw(st.booleans()), ts=draw(st.booleans()),
        tsval_c=draw(tsvals), tsval_s=draw(tsvals),
        mss=draw(st.sampled_from([536, 1200, 1460])),
        rwnd_c=draw(window), rwnd_s=draw(window), rwnds=draw(st.lists(window, min_size=1, max_size=3)),
        phases=draw(st.lists(st.tuples(st.booleans(), sizes), max_size=3)),
        loss=draw(st.sampled_from([0.0, 0.0, 0.05, 0.2])),
        ack_every=draw(st.sampled_from([1, 2])),
        zero_window=draw(st.booleans()), keepalive=draw(st.booleans()),
        headers_only=draw(st.booleans()),
        ending=draw(st.sampled_from(["fin", "fin", "rst", "none", "half"])),
        reuse=draw(st.booleans()),
        seed=draw(st.integers(0, 2**32)),
        **draw(perturbations()),
    )
    return p


@st.composite
def udp_params(draw: st.DrawFn) -> dict[str, Any]:
    p = draw(endpoints())
    p.update(quic=draw(st.booleans()) or draw(st.booleans()),
             version=draw(st.sampled_from([QUIC_V1, QUIC_V2, QUIC_DRAFT29])),
             n=draw(st.integers(0, 40)), seed=draw(st.integers(0, 2**32)), **draw(perturbations()))
    return p


def tcp_flow(prm: dict[str, Any], t: int) -> list[Pkt]:
    rng = random.Random(prm["seed"])
    sim = TcpSim(rng, prm, t)
    pkts = sim.run()
    if prm["reuse"] and prm["ending"] in ("fin", "rst"):
        # the same 5-tuple again after the close (TIME-WAIT reuse), new ISNs
        # (a new connection has its own TSval offset, RFC 7323 sec 5.4)
        again = dict(prm, isn_c=(prm["isn_c"] + rng.randint(1, MOD - 1)) % MOD,
                     isn_s=rng.randrange(MOD), tsval_c=rng.randrange(1, MOD),
                     tsval_s=rng.randrange(1, MOD), handshake=True,
                     ending=rng.choice(["fin", "rst", "none"]))
        pkts += TcpSim(rng, again, sim.t + rng.randint(0, 200 * MS)).run()
    return perturb(rng, pkts, prm)


@dataclass
class Scenario:
    pkts: list[Pkt]
    base: int
    bin_ns: int
    ooo_ns: int
    ring: int


bases = st.one_of(st.just(0), st.integers(1, 2 * 10**9),
                  st.integers(1_690_000_000 * 10**9, 1_710_000_000 * 10**9))


@st.composite
def scenarios(draw: st.DrawFn, *, max_tcp: int = 3, max_udp: int = 2) -> Scenario:
    used: set[tuple[Any, ...]] = set()

    def unique(prm: dict[str, Any], proto: int) -> dict[str, Any]:
        # two live connections never share a 5-tuple: move the client port until it is free
        while (key := (proto, *sorted([(prm["client"], prm["cport"]), (prm["server"], prm["sport"])]))) in used:
            prm["cport"] = prm["cport"] % 65535 + 1
        used.add(key)
        return prm

    flows = [tcp_flow(unique(draw(tcp_params()), 6), draw(st.integers(0, 300 * MS)))
             for _ in range(draw(st.integers(0 if max_udp else 1, max_tcp)))]
    for _ in range(draw(st.integers(0, max_udp))):
        prm = unique(draw(udp_params()), 17)
        rng = random.Random(prm["seed"])
        flows.append(perturb(rng, udp_flow(rng, prm, draw(st.integers(0, 300 * MS))), prm))
    # capture order: by time, each flow's own order kept among equal times
    merged = [p for _, _, _, p in sorted((p.t, k, i, p) for k, fl in enumerate(flows)
                                         for i, p in enumerate(fl))]
    if draw(st.integers(0, 9)) == 0:  # every packet at one identical timestamp
        merged = [replace(p, t=0) for p in merged]
    return Scenario(merged, draw(bases), draw(st.sampled_from([MS, 10 * MS, DEFAULT_BIN_NS])),
                    draw(st.sampled_from([DEFAULT_OOO_NS, 0, 50 * MS])),
                    draw(st.sampled_from([DEFAULT_RING, DEFAULT_RING, 1, 2, 5])))


# ---- comparison -------------------------------------------------------------------------------
def kernel_result(table_cols: dict[str, np.ndarray], rtts: np.ndarray,
                  bins: np.ndarray) -> tuple[dict[str, list[int]], list[tuple[int, ...]], list[tuple[int, ...]]]:
    cols = {k: [int(x) for x in v] for k, v in table_cols.items()}
    return (cols, sorted(tuple(int(x) for x in r) for r in rtts.T),
            sorted(tuple(int(x) for x in b) for b in bins.T))


def _rows(out: RowFlows) -> list[tuple[int, ...]]:
    """FlowBuilder.add's per-row output as (flow, dir, good, class) tuples."""
    return [(int(f), int(d), int(g), int(c))
            for f, d, g, c in zip(out.flow, out.dir, out.good, out.cls, strict=True)]


def assert_same(path: Path, *, bin_ns: int = DEFAULT_BIN_NS, ooo_ns: int = DEFAULT_OOO_NS,
                ring: int = DEFAULT_RING) -> Any:
    """Analyse ``path`` with the kernel (one chunk, then 4 KiB chunks) and the twin; equal.

    The kernel starts with room for 16 flows, so that growing its arrays (``rehash``) is
    exercised whenever a capture has more."""
    data = path.read_bytes()
    table, _, stats = read_capture(path)
    assert not stats.damage
    kw = {"bin_ns": bin_ns, "ooo_ns": ooo_ns, "ring": ring}
    naive = naive_flows(table, data, **kw)
    # the whole file as one chunk through FlowBuilder (per-row outputs too), then 4 KiB chunks
    builder = FlowBuilder(**kw, initial_flows=16)
    rows = _rows(builder.add(Chunk(table, np.frombuffer(data, dtype=np.uint8), 0)))
    assert rows == naive.rows
    chunked = analyze_chunks(CaptureReader(path, chunk_bytes=4096), **kw, initial_flows=16)
    for ftable, series in (builder.finish(), chunked):
        cols, rtts, bins = kernel_result(ftable.cols, series.rtts, series.bins)
        assert sorted(cols) == sorted(naive.cols), "FlowTable.cols and the twin's keys differ"
        bad = {k: (cols[k], naive.cols[k]) for k in cols if cols[k] != naive.cols[k]}
        assert not bad, f"kernel != naive (kernel, naive): {bad}"
        assert rtts == naive.rtts
        assert bins == naive.bins
    return naive


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("naive") / "cap.pcap"


def check(scratch: Path, sc: Scenario) -> Any:
    scratch.write_bytes(capture_bytes(sc.pkts, sc.base))
    return assert_same(scratch, bin_ns=sc.bin_ns, ooo_ns=sc.ooo_ns, ring=sc.ring)


# ---- generated captures -----------------------------------------------------------------------
@SETTINGS
@given(sc=scenarios(max_tcp=1, max_udp=0))
def test_one_tcp_connection_matches_naive(scratch: Path, sc: Scenario) -> None:
    check(scratch, sc)


@SETTINGS
@given(sc=scenarios())
def test_interleaved_tcp_udp_quic_flows_match_naive(scratch: Path, sc: Scenario) -> None:
    check(scratch, sc)


@settings(SETTINGS, max_examples=60)
@given(prm=udp_params(), base=bases)
def test_udp_and_quic_flows_match_naive(scratch: Path, prm: dict[str, Any], base: int) -> None:
    rng = random.Random(prm["seed"])
    pkts = perturb(rng, udp_flow(rng, prm, 0), prm)
    check(scratch, Scenario(pkts, base, 10 * MS, DEFAULT_OOO_NS, DEFAULT_RING))


# ---- hand-built captures ----------------------------------------------------------------------
T0 = 1_700_000_000_000_000_000  # ~1.7e18 ns: exact in int64 and in a nanosecond pcap
CLI, SRV = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
US = 1_000


def seg(t: int, up: bool, seq: int, ack: int = 0, flags: int = ACK, *, plen: int = 0,
        win: int = 502, **kw: Any) -> Pkt:
    """A TCP segment of the connection 10.0.0.1:50000 (client) <-> 10.0.0.2:443."""
    src, dst, sp, dp = (CLI, SRV, 50000, 443) if up else (SRV, CLI, 443, 50000)
    return Pkt(t, src, dst, sp, dp, 6, seq, ack, flags, win, plen=plen, **kw)


def analyse(scratch: Path, pkts: list[Pkt], *, base: int = T0, bin_ns: int = 100 * MS) -> Any:
    """Kernel == twin on ``pkts``; returns (flow table, timing series) of the kernel."""
    scratch.write_bytes(capture_bytes(pkts, base))
    assert_same(scratch, bin_ns=bin_ns)
    return analyze_chunks(CaptureReader(scratch), bin_ns=bin_ns)


def samples(series: Any, flow: int = 0) -> list[tuple[int, int, int]]:
    """(rtt_ns, kind, sender_is_client) of a flow's samples, in capture order."""
    r = series.rtt(flow)
    return [(int(v), int(k), int(c)) for v, k, c in zip(r.rtt_ns, r.kind, r.sender_is_client, strict=True)]


def test_worked_example_matches_hand_computed_values(scratch: Path) -> None:
    """One connection seen at the client, every number computed by hand from the rules: the
    twin and the kernel must not only agree with each other but with this."""
    syn_opts = {"mss": 1460, "ws": 7, "sack_perm": True}
    pkts = [
        seg(0, True, 100, flags=SYN, win=64240, **syn_opts),
        seg(30 * MS, False, 5000, 101, SYN | ACK, win=65160, **dict(syn_opts, mss=1400)),
        seg(30 * MS + 100 * US, True, 101, 5001),
        seg(30 * MS + 200 * US, True, 101, 5001, ACK | PSH, plen=100),  # the request
        seg(60 * MS + 200 * US, False, 5001, 201, win=509),  # its ACK: 30 ms
        seg(61 * MS, False, 5001, 201, plen=1400, win=509),  # A [5001, 6401)
        # B [6401, 7801) is lost before the capture point
        seg(61 * MS + 200 * US, False, 7801, 201, plen=1400, win=509),  # C: the gap counts now
        seg(61 * MS + 300 * US, True, 201, 6401),  # ACK of A: 0.3 ms
        seg(61 * MS + 400 * US, True, 201, 6401, sack=((7801, 9201),)),  # dup ACK 1, SACK event
        seg(61 * MS + 500 * US, False, 9201, 201, plen=1400, win=509),  # D
        seg(61 * MS + 600 * US, True, 201, 6401, sack=((7801, 10601),)),  # dup ACK 2
        seg(65 * MS, False, 6401, 201, plen=1400, win=509),  # B again: fast retransmission
        seg(65 * MS + 300 * US, True, 201, 10601),  # acks D exactly: 3.8 ms (B was ambiguous)
        seg(70 * MS, True, 201, 10601, win=0),  # zero window ...
        seg(170 * MS, True, 201, 10601),  # ... for 100 ms
        seg(200 * MS, True, 201, 10601, FIN | ACK),
        seg(230 * MS, False, 10601, 202, FIN | ACK, win=509),  # acks the client's FIN: 30 ms
        seg(230 * MS + 100 * US, True, 202, 10602),  # acks the server's FIN: 0.1 ms
    ]
    table, series = analyse(scratch, pkts)
    c = {k: [int(x) for x in v] for k, v in table.cols.items()}
    assert table.n == 1 and table.client(0) == "10.0.0.1:50000" and c["role_source"] == [K.ROLE_SYN]
    assert (c["syn_ts"], c["synack_ts"], c["hsack_ts"]) == ([T0], [T0 + 30 * MS], [T0 + 30 * MS + 100 * US])
    assert (c["packets_up"], c["packets_down"]) == ([11], [7])
    assert (c["payload_up"], c["payload_down"], c["goodput_up"], c["goodput_down"]) == ([100], [5600], [100], [5600])
    assert (c["retransmissions_up"], c["retransmissions_down"]) == ([0], [1])
    assert (c["out_of_order_up"], c["out_of_order_down"]) == ([0], [0])
    assert (c["dup_acks_up"], c["dup_acks_down"]) == ([2], [0])
    assert (c["sack_loss_events_up"], c["sack_loss_events_down"]) == ([1], [0])
    assert (c["zero_window_ns_up"], c["zero_window_ns_down"]) == ([100 * MS], [0])
    assert (c["rwnd_limited_ns_up"], c["rwnd_limited_ns_down"]) == ([0], [0])
    assert (c["mss_up"], c["mss_down"], c["wscale_up"], c["wscale_down"]) == ([1460], [1400], [7], [7])
    assert (c["fin_up"], c["fin_down"], c["rst_up"], c["rst_down"]) == ([1], [1], [0], [0])
    assert samples(series) == [
        (30 * MS, K.SAMPLE_DATA_ACK, 1), (100 * US, K.SAMPLE_DATA_ACK, 0),
        (30 * MS, K.SAMPLE_DATA_ACK, 1), (300 * US, K.SAMPLE_DATA_ACK, 0),
        (3800 * US, K.SAMPLE_DATA_ACK, 0), (30 * MS, K.SAMPLE_DATA_ACK, 1),
        (100 * US, K.SAMPLE_DATA_ACK, 0)]
    up, down = series.goodput(0, up=True), series.goodput(0, up=False)
    assert [list(map(int, x)) for x in (up.bin_index, up.goodput_bytes, up.packets)] == [[0, 1, 2], [100, 0, 0], [8, 1, 2]]
    assert [list(map(int, x)) for x in (down.bin_index, down.goodput_bytes, down.retransmissions, down.packets)] == [
        [0, 2], [5600, 0], [1, 0], [6, 1]]


def test_timestamp_echo_worked_example(scratch: Path) -> None:
    """TSval -> first echo (RFC 7323 sec 4.1), one TSval timed at a time per side."""
    def ts(t: int, up: bool, seq: int, ack: int, val: int, ecr: int, flags: int = ACK, plen: int = 0) -> Pkt:
        return seg(t, up, seq, ack, flags, plen=plen, tsopt=(val, ecr))
    pkts = [
        ts(0, True, 0, 0, 100, 0, SYN),
        ts(20 * MS, False, 0, 1, 500, 100, SYN | ACK),  # echoes 100: 20 ms (client's)
        ts(20 * MS + 500 * US, True, 1, 1, 101, 500),  # echoes 500: 0.5 ms (server's)
        ts(21 * MS, True, 1, 1, 102, 500, ACK, 10),  # 101 pending: not timed
        ts(41 * MS, False, 1, 11, 520, 101),  # echoes 101: 20.5 ms
        ts(42 * MS, True, 11, 1, 103, 520, ACK, 10),  # echoes 520: 1 ms
        ts(43 * MS, False, 1, 11, 521, 101),  # an older value again: still waiting for 103
        ts(62 * MS, False, 1, 21, 540, 103),  # echoes 103: 20 ms
    ]
    _, series = analyse(scratch, pkts)
    echo = [(v, c) for v, k, c in samples(series) if k == K.SAMPLE_TS_ECHO]
    assert echo == [(20 * MS, 1), (500 * US, 0), (20500 * US, 1), (1 * MS, 0), (20 * MS, 1)]


def test_port_reuse_and_syn_rules(scratch: Path) -> None:
    """RFC 9293 sec 3.10.7.4: a SYN after FIN both ways opens a new flow on the same 5-tuple; a
    retransmitted SYN (same ISN) does not; a SYN with another ISN does, even without a close."""
    first = [seg(0, True, 10, flags=SYN), seg(1 * MS, False, 70, 11, SYN | ACK), seg(2 * MS, True, 11, 71),
             seg(3 * MS, True, 11, 71, FIN | ACK), seg(4 * MS, False, 71, 12, FIN | ACK), seg(5 * MS, True, 12, 72)]
    again = [seg(10 * MS, True, 5000, flags=SYN), seg(1010 * MS, True, 5000, flags=SYN),  # retransmitted
             seg(1011 * MS, False, 900, 5001, SYN | ACK), seg(1012 * MS, True, 5001, 901, plen=10)]
    other_isn = [seg(1100 * MS, True, 777, flags=SYN)]
    table, _ = analyse(scratch, first + again + other_isn)
    assert table.n == 3
    assert [int(x) for x in table.prev_flow] == [-1, 0, 1]
    assert [int(x) for x in table.packets_up] == [4, 3, 1]
    assert [int(x) for x in table.retransmissions_up] == [0, 1, 0]


def test_many_flows_grow_the_tables_and_keep_port_reuse(scratch: Path) -> None:
    """40 flows, 20 of them second connections on a reused 5-tuple, created while the kernel's
    arrays grow from 16 to 64 flows: after each rehash a 5-tuple must lead to its newest flow."""
    def conn(k: int, t: int, isn: int, close: bool) -> list[Pkt]:
        sp = 2000 + k
        up = [replace(seg(t, True, isn, flags=SYN), sport=sp),
              replace(seg(t + 1 * MS, False, 9, isn + 1, SYN | ACK), dport=sp),
              replace(seg(t + 2 * MS, True, isn + 1, 10, plen=100 + k), sport=sp)]
        if close:
            up += [replace(seg(t + 3 * MS, True, isn + 101 + k, 10, FIN | ACK), sport=sp),
                   replace(seg(t + 4 * MS, False, 10, isn + 102 + k, FIN | ACK), dport=sp)]
        return up
    pkts = [p for k in range(20) for p in conn(k, k * 10 * MS, 1000, True)]
    pkts += [p for k in range(20) for p in conn(k, (300 + k) * MS, 5000, False)[:1]]  # SYNs
    pkts += [p for k in range(20) for p in conn(k, (400 + k) * MS, 5000, False)[1:]]  # the rest
    table, _ = analyse(scratch, pkts)
    assert table.n == 40
    assert [int(x) for x in table.prev_flow] == [-1] * 20 + list(range(20))
    assert [int(x) for x in table.payload_up] == [100 + k for k in range(20)] * 2
    assert [int(x) for x in table.packets_down] == [2] * 20 + [1] * 20


def _conn(k: int, t: int, *, close: bool, isn: int = 1000, data: int = 3) -> list[Pkt]:
    """Connection k (client port 2000 + k): handshake, ``data`` segments each ACKed, maybe FINs."""
    sp = 2000 + k
    up = [replace(seg(t, True, isn, flags=SYN), sport=sp),
          replace(seg(t + 1 * MS, False, 9, isn + 1, SYN | ACK), dport=sp),
          replace(seg(t + 2 * MS, True, isn + 1, 10), sport=sp)]
    nxt = isn + 1
    for i in range(data):
        up += [replace(seg(t + (3 + 2 * i) * MS, True, nxt, 10, plen=100), sport=sp),
               replace(seg(t + (4 + 2 * i) * MS, False, 10, nxt + 100), dport=sp)]
        nxt += 100
    if close:
        tc = t + (3 + 2 * data) * MS
        up += [replace(seg(tc, True, nxt, 10, FIN | ACK), sport=sp),
               replace(seg(tc + 1 * MS, False, 10, nxt + 1, FIN | ACK), dport=sp),
               replace(seg(tc + 2 * MS, True, nxt + 1, 11), sport=sp)]
    return up


def _rings_handed_out(path: Path) -> int:
    b = FlowBuilder(initial_flows=16)
    for chunk in chunks_of(CaptureReader(path)):
        b.add(chunk)
    return int(b._pool[0])


def test_ring_pool_grows_while_connections_are_open(scratch: Path) -> None:
    """60 TCP connections open at once, their segments interleaved: the kernel starts with 16
    rings (STOP_RINGS_FULL, then more, twice) and every flow still times its segments."""
    pkts = sorted((p for k in range(60) for p in _conn(k, k * 10 * US, close=False)),
                  key=lambda p: p.t)
    table, series = analyse(scratch, pkts)
    assert table.n == 60 and _rings_handed_out(scratch) == 60
    assert [len(series.rtt(f)) for f in range(60)] == [5] * 60  # SYN, SYN/ACK, 3 data


def test_closed_connections_give_their_rings_back(scratch: Path) -> None:
    """A closed connection with nothing outstanding returns its ring: 200 one-after-another
    connections use one (a FIN retransmitted after the close takes it for its row only); a new
    connection on a reused 5-tuple frees the old one's, outstanding segments and all."""
    pkts = [p for k in range(200) for p in _conn(k, k * 20 * MS, close=True)]
    late = replace(seg(5000 * MS, True, 1301, 11, FIN | ACK), sport=2000)  # FIN again
    pkts += [late, replace(seg(5001 * MS, False, 11, 1302), dport=2000)]
    table, series = analyse(scratch, pkts)
    assert table.n == 200 and _rings_handed_out(scratch) == 1
    assert [len(series.rtt(f)) for f in range(200)] == [7] * 200  # SYN, SYN/ACK, 3 data, 2 FINs
    assert int(table.retransmissions_up[0]) == 1
    # open, then the same 5-tuple opened again with another ISN while data is outstanding
    reuse = _conn(0, 0, close=False)[:-1] + _conn(0, 100 * MS, close=False, isn=9000)
    table, _ = analyse(scratch, reuse)
    assert table.n == 2 and _rings_handed_out(scratch) == 1


def test_empty_capture(scratch: Path) -> None:
    table, series = analyse(scratch, [])
    assert table.n == 0 and series.rtts.shape == (5, 0) and series.bins.shape == (7, 0)


@pytest.mark.parametrize("pkt", [
    seg(0, True, 1, flags=SYN),
    seg(0, False, MOD - 1, 5, ACK | PSH, plen=1000),
    seg(0, True, 0, 0, RST),
    Pkt(0, CLI, SRV, 5353, 5353, 17, udp=bytes([0xC3]) + QUIC_V1.to_bytes(4, "big") + bytes(1195)),
    Pkt(0, CLI, SRV, 40000, 443, 17, udp=b"\x41"),
], ids=["syn", "data-near-2^32", "rst", "quic-initial-equal-ports", "short-udp"])
@pytest.mark.parametrize("base", [0, T0, 4_000_000_000 * 10**9], ids=["zero", "1.7e18", "4e18"])
def test_one_packet(scratch: Path, pkt: Pkt, base: int) -> None:
    table, series = analyse(scratch, [pkt], base=base)
    assert table.n == 1 and int(table.first_ts[0]) == int(table.last_ts[0]) == base
    assert series.rtts.shape[1] == 0 and series.bins.shape[1] == 1


def test_identical_timestamps(scratch: Path) -> None:
    """Every packet at one instant: no RTT sample (a zero RTT is an artefact), one bin per side,
    no zero-window time."""
    pkts = [seg(0, True, 0, flags=SYN, tsopt=(5, 0)), seg(0, False, 0, 1, SYN | ACK, tsopt=(9, 5)),
            seg(0, True, 1, 1, tsopt=(6, 9)), seg(0, True, 1, 1, plen=100, tsopt=(6, 9)),
            seg(0, False, 1, 101, win=0, tsopt=(10, 6)), seg(0, False, 1, 101, tsopt=(10, 6))]
    table, series = analyse(scratch, pkts)
    assert series.rtts.shape[1] == 0
    assert [int(x) for x in series.bins[6]] == [3, 3]
    assert int(table.zero_window_ns_down[0]) == 0


def test_rows_the_flow_stage_ignores(scratch: Path) -> None:
    """Not IP, a TCP header cut by the snaplen, a later IPv4 fragment: no flow, no row output."""
    arp = b"\xff" * 6 + b"\x02" + b"\0" * 5 + b"\x08\x06" + b"\0" * 28
    syn, _ = frame(seg(0, True, 1, flags=SYN))
    frag = bytearray(frame(Pkt(0, CLI, SRV, 1, 2, 17, udp=b"x" * 20))[0])
    frag[20:22] = struct.pack("!H", 0x0010)  # fragment offset 16 * 8 bytes
    scratch.write_bytes(pcap_bytes([(T0, arp), (T0 + 1, syn[:40]), (T0 + 2, bytes(frag))], nsec=True))
    table, _, _ = read_capture(scratch)
    assert table.n == 3
    naive = assert_same(scratch)
    assert naive.rows == [(-1, 0, 0, 0)] * 3 and naive.cols["proto"] == []


# ---- QUIC spin bit ------------------------------------------------------------------------------
def test_quic_spin_samples_equal_the_rtt(scratch: Path) -> None:
    """RFC 9000 sec 17.4: the client inverts the spin it last saw, the server echoes it, so at a
    client-side capture both directions' spin edges are one RTT apart."""
    rtt = 40 * MS
    cli, srv = (CLI, 50000), (SRV, 443)

    def quic(t: int, up: bool, first: bytes, size: int) -> Pkt:
        (a, pa), (b, pb) = (cli, srv) if up else (srv, cli)
        return Pkt(t, a, b, pa, pb, 17, udp=(first + bytes(size))[:size])
    pkts = [quic(0, True, bytes([0xC3]) + QUIC_V1.to_bytes(4, "big"), 1200),
            quic(rtt, False, bytes([0xC1]) + QUIC_V1.to_bytes(4, "big"), 1200)]
    for k in range(400):  # 1 ms apart, from one RTT after the start
        t = rtt + 500 * US + k * MS
        spin_c = (t // rtt) % 2  # flips every RTT
        spin_s = ((t - rtt) // rtt) % 2  # the client's value, one RTT later
        pkts.append(quic(t, True, bytes([0x40 | spin_c << 5 | 3]), 80))
        pkts.append(quic(t + 200 * US, False, bytes([0x40 | spin_s << 5 | 3]), 1200))
    table, series = analyse(scratch, pkts)
    r = series.rtt(0)
    assert set(r.kind.tolist()) == {K.SAMPLE_SPIN}
    assert r.rtt_ns.tolist() == [rtt] * len(r)
    up, down = int(table.spin_flips_up[0]), int(table.spin_flips_down[0])
    assert (up, down) == (9, 9)  # edges at 80..400 ms (client) and 40..360 ms (server echo)
    assert int(r.sender_is_client.sum()) == up - 1 and len(r) == up - 1 + down - 1
    assert int(table.role_source[0]) == K.ROLE_QUIC and int(table.quic_version[0]) == QUIC_V1
    assert int(table.quic_server_reply_ts[0]) - int(table.quic_client_initial_ts[0]) == rtt
    (rec,) = flow_records(table, series)
    assert rec["vantage"] == VANTAGE_UNKNOWN and rec["rtt_ms_p50"] == rec["rtt_ms_min"] == 40.0


# ---- vantage point and path RTT -------------------------------------------------------------
def rtts(*rows: tuple[int, int, int]) -> RttSamples:
    """RttSamples from (rtt_ms, kind, sender_is_client) rows, 1 s apart."""
    a = np.array(rows, dtype=np.int64).reshape(-1, 3)
    return RttSamples(np.arange(len(a), dtype=np.int64) * 10**9, a[:, 0] * MS, a[:, 1], a[:, 2].astype(bool))


DA, TSE, SP, AMB = K.SAMPLE_DATA_ACK, K.SAMPLE_TS_ECHO, K.SAMPLE_SPIN, K.SAMPLE_DATA_ACK_AMBIGUOUS


@pytest.mark.parametrize(("s2a", "a2a", "rows", "expect"), [
    (40 * MS, 1 * MS, (), VANTAGE_CLIENT),  # SYN -> SYN/ACK spans the path
    (1 * MS, 40 * MS, (), VANTAGE_SERVER),
    (20 * MS, 20 * MS, (), VANTAGE_MIDDLE),
    (40 * MS, 10 * MS, (), VANTAGE_MIDDLE),  # exactly 4x is not "negligible"
    (41 * MS, 10 * MS, ((1, DA, 1),), VANTAGE_CLIENT),  # the handshake wins over samples
    (-1, -1, ((40, DA, 1), (42, TSE, 1), (1, DA, 0), (2, DA, 0)), VANTAGE_CLIENT),
    (-1, -1, ((1, DA, 1), (40, DA, 0), (44, TSE, 0)), VANTAGE_SERVER),
    (-1, -1, ((20, DA, 1), (25, DA, 0)), VANTAGE_MIDDLE),
    (-1, -1, ((40, DA, 1), (41, DA, 1)), VANTAGE_UNKNOWN),  # one side only
    (-1, -1, ((40, DA, 1), (1, AMB, 0), (1, SP, 0)), VANTAGE_UNKNOWN),  # Karn and spin: no vote
    (40 * MS, -1, ((40, DA, 1), (1, DA, 0)), VANTAGE_CLIENT),  # half a handshake: samples decide
])
def test_detect_vantage(s2a: int, a2a: int, rows: tuple[tuple[int, int, int], ...], expect: str) -> None:
    assert detect_vantage(s2a, a2a, rtts(*rows)) == expect


def test_path_rtt_per_vantage() -> None:
    s = rtts((30, DA, 1), (32, TSE, 1), (10, DA, 0), (12, DA, 0), (14, TSE, 0), (50, SP, 0),
             (99, AMB, 1), (98, AMB, 0))
    ts = s.ts_ns // 10**9
    got = {v: path_rtt(s, v) for v in (VANTAGE_CLIENT, VANTAGE_SERVER, VANTAGE_MIDDLE, VANTAGE_UNKNOWN)}
    ms = {v: ((t // 10**9).tolist(), (r // MS).tolist()) for v, (t, r) in got.items()}
    assert ms[VANTAGE_CLIENT] == ([0, 1, 5], [30, 32, 50])  # client-timed + spin, no ambiguous
    assert ms[VANTAGE_SERVER] == ([2, 3, 4, 5], [10, 12, 14, 50])
    # middle: each half plus the median of the other half (31 ms and 12 ms); spin unchanged
    assert ms[VANTAGE_MIDDLE] == ([0, 1, 2, 3, 4, 5], [42, 44, 41, 43, 45, 50])
    assert ms[VANTAGE_UNKNOWN] == ([0, 1, 2, 3, 4, 5], [30, 32, 10, 12, 14, 50])
    assert ts.tolist() == list(range(8))


# ---- where the kernel departs from the rules ---------------------------------------------------
# Each test states the rule (on the twin), then compares the kernel. strict=True: when the kernel
# is fixed the test passes, the XPASS fails the run, and the mark must go.
def twin(path: Path) -> Any:
    """The twin's result for a capture file, default options."""
    table, _, _ = read_capture(path)
    return naive_flows(table, path.read_bytes(), bin_ns=DEFAULT_BIN_NS, ooo_ns=DEFAULT_OOO_NS,
                       ring=DEFAULT_RING)


def test_first_tsval_zero_is_timed(scratch: Path) -> None:
    pkts = [seg(0, True, 0, flags=SYN, tsopt=(0, 0)), seg(25 * MS, False, 0, 1, SYN | ACK, tsopt=(77, 0)),
            seg(25 * MS + 100 * US, True, 1, 1, tsopt=(1, 77))]
    scratch.write_bytes(capture_bytes(pkts, T0))
    assert [r[2] for r in twin(scratch).rtts if r[3] == K.SAMPLE_TS_ECHO and r[4]] == [25 * MS]
    assert_same(scratch)


def test_tsval_timed_from_its_first_segment(scratch: Path) -> None:
    def ts(t: int, up: bool, seq: int, ack: int, val: int, ecr: int, plen: int = 0) -> Pkt:
        return seg(t, up, seq, ack, ACK, plen=plen, tsopt=(val, ecr))
    pkts = [ts(0, True, 1, 1, 101, 500, 10),  # 101 timed
            ts(19 * MS + 900 * US, True, 11, 1, 141, 500, 10),  # 141 first sent, 101 pending
            ts(20 * MS, False, 1, 11, 520, 101),  # echo of 101: 20 ms
            ts(20 * MS + 50 * US, True, 21, 1, 141, 520, 10),  # 141 again: not its first segment
            ts(21 * MS, True, 31, 1, 142, 520, 10),  # 142: first segment, timed
            ts(39 * MS + 900 * US, False, 1, 31, 540, 141),  # echo of 141
            ts(41 * MS, False, 1, 41, 541, 142)]  # echo of 142: 20 ms
    scratch.write_bytes(capture_bytes(pkts, T0))
    naive = twin(scratch)
    assert [r[2] for r in naive.rtts if r[3] == K.SAMPLE_TS_ECHO and r[4]] == [20 * MS, 20 * MS]
    assert_same(scratch)


@pytest.mark.parametrize("shift", [15, 200])
def test_window_scale_above_14_is_used_as_14(scratch: Path, shift: int) -> None:
    pkts = [seg(0, True, 0, flags=SYN, ws=shift), seg(20 * MS, False, 0, 1, SYN | ACK, ws=0, mss=1000),
            seg(20 * MS + 100 * US, True, 1, 1, win=1)]  # 1 << 14 = 16384 bytes
    pkts += [seg(21 * MS + k * 100 * US, False, 1 + 1000 * k, 1, plen=1000) for k in range(20)]
    pkts += [seg(45 * MS, True, 1, 20001, win=1)]
    scratch.write_bytes(capture_bytes(pkts, T0))
    naive = twin(scratch)
    # the server filled the client's 16384-byte window from its 16th segment on
    assert naive.cols["rwnd_limited_ns_down"] == [45 * MS - (21 * MS + 1500 * US)]
    assert_same(scratch)


def test_bins_are_unique_when_timestamps_step_back(scratch: Path) -> None:
    def udp(t: int, size: int) -> Pkt:
        return Pkt(t, CLI, SRV, 40000, 53, 17, udp=bytes(size))
    pkts = [udp(0, 100), udp(150 * MS, 200), udp(50 * MS, 300)]  # the last one steps back
    scratch.write_bytes(capture_bytes(pkts, T0))
    naive = twin(scratch)
    assert [(b[2], b[3]) for b in naive.bins] == [(0, 400), (1, 200)]
    _, series = analyze_chunks(CaptureReader(scratch))
    assert series.goodput(0, up=True).dense().tolist() == [400, 200]


def test_out_of_window_segments_do_not_shift_the_sequence_space(scratch: Path) -> None:
    pkts = [seg(0, True, 0, flags=SYN), seg(20 * MS, False, 1000, 1, SYN | ACK), seg(21 * MS, True, 1, 1001),
            seg(22 * MS, False, 1001, 1, plen=1000), seg(23 * MS, True, 1, 2001),
            # injected resets "from the server", far outside its window (ignored by the client):
            # each less than 2^31 from the one before, 2^32 - 20 in all (two random sequence
            # numbers do this one time in four)
            seg(24 * MS, False, 1001 + 2**31 - 10, 0, RST), seg(25 * MS, False, 1001 - 20, 0, RST),
            seg(26 * MS, False, 2001, 1, plen=1000), seg(27 * MS, True, 1, 3001)]
    scratch.write_bytes(capture_bytes(pkts, T0))
    naive = twin(scratch)
    assert naive.cols["goodput_down"] == [2000] and naive.cols["retransmissions_down"] == [0]
    assert_same(scratch)


def test_a_dns_query_is_not_a_quic_initial(scratch: Path) -> None:
    query = bytes.fromhex("8c12010000010000000000000377777706676f6f676c6503636f6d0000010001")
    pkts = [Pkt(0, CLI, SRV, 53000, 53, 17, udp=query),
            Pkt(20 * MS, SRV, CLI, 53, 53000, 17, udp=bytes.fromhex("8c128180") + query[4:])]
    scratch.write_bytes(capture_bytes(pkts, T0))
    table, _ = analyze_chunks(CaptureReader(scratch))
    assert int(table.quic_client_initial_ts[0]) == -1 and table.transport(0) == "udp"
