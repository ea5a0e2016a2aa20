"""A seeded packet-level simulator of downloads through an SNI-throttling censor.

One :class:`Scenario` is one capture, as in the labelled testbed corpus
(``corpus/testbed/README.md``): a *control* download and a *target* download of ``N`` bytes from
the same server address, one after the other, captured at the client, server->client frames cut
to 128 bytes. :func:`simulate` runs it and returns a :class:`SimResult`: the classic pcap bytes
(Ethernet, nanosecond timestamps) and the :class:`GroundTruth` a detector should recover.

Endpoints
    TCP (RFC 9293): three-way handshake with MSS, SACK-permitted, timestamps (RFC 7323) and
    window scale; the client's first data segment is a real TLS ClientHello made by Python's
    ``ssl`` with the flow's SNI. Sender: slow start with HyStart++ delay exit (RFC 9406),
    congestion avoidance by CUBIC (RFC 9438, "lite") or Reno (RFC 5681), SACK scoreboard
    (RFC 2018/6675) with RACK loss detection (RFC 8985): fast retransmit once 3 segments above
    a hole are SACKed (3 duplicate ACKs), else after RACK's min_rtt/4 reordering timer; tail
    loss probe, RTO with exponential backoff (RFC 6298, 200 ms floor as in Linux). Receiver:
    delayed ACKs every 2 segments or 40 ms, immediate ACKs for out-of-order data, quick ACKs
    for the first 16 segments. Not modelled: SACK-less peers, BBR, pacing of TCP, PRR.

    QUIC (RFC 9000/9002): the client's first datagram is a real QUIC v1 Initial from aioquic
    carrying a ClientHello with the SNI; the server answers with long-header Initial/Handshake
    datagrams of plausible size, then short-header packets of random bytes with a working spin
    bit (RFC 9000 sec 17.4). Packet-number loss detection (packet threshold 3, time threshold
    9/8 RTT), PTO with backoff, NewReno/CUBIC congestion control, pacing at 1.25 cwnd/srtt.
    Not modelled: persistent congestion, flow control, HTTP/3 framing beyond its byte count.

Path (modelled on the testbed's censor, ``testbed/censor.py``), server->client:
    the server's access link (rate ``capacity_bps``, drop-tail buffer of one BDP) -> random
    loss -> the censor's per-flow throttle, target flows only (``policing``: token bucket,
    excess dropped; ``shaping``: token bucket + FIFO, excess delayed, overflow dropped; ``stall``: every
    packet of the flow dropped once it carried ``stall_bytes``), each from ``onset_bytes`` on
    -> the optional whole-link bottleneck (rate + drop-tail queue, all flows) -> one-way delay
    plus uniform jitter, never reordering. Client->server: loss, the stall, delay and jitter.
    Byte accounting is the testbed's: IP packet lengths, onset and stall count both directions.

Everything random comes from one NumPy ``Generator`` (``rng`` keyword, or the scenario's
``seed``), so the same seed gives byte-identical pcaps; ClientHello and QUIC Initial fields
that OpenSSL and aioquic draw from the OS (random, session id, key shares, connection IDs) are
overwritten from it, and the Initial is re-encrypted under the new connection ID.

The simulation is event driven (one ``heapq``); every path element is a FIFO whose departure
times are computed when a packet enters, so a packet costs one heap event per direction.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
import os
import ssl
import struct
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from .testbed.censor import Policer, Shaper

__all__ = [
    "GroundTruth",
    "Scenario",
    "SimResult",
    "SimStats",
    "Throttle",
    "clean_goodput_estimate",
    "grid_mix",
    "quic_client_initial",
    "scenario_grid",
    "simulate",
    "tls_client_hello",
]

NS = 1_000_000_000
MS = 1_000_000
NEVER = 1 << 62

#: TCP maximum segment size with the timestamps option (1460 - 12), as on an Ethernet path
MSS = 1448
#: MSS option value in the SYNs (RFC 9293 sec 3.7.1: excludes options)
MSS_OPTION = 1460
#: Linux's initial window (RFC 6928) and the QUIC one (RFC 9002 sec 7.2), packets
INITIAL_WINDOW = 10
#: RFC 6298 with Linux's 200 ms floor; the initial RTO is 1 s (sec 2.1)
RTO_MIN_NS = 200 * MS
RTO_INITIAL_NS = NS
RTO_MAX_NS = 60 * NS
#: Linux's delayed-ACK timeout and quick-ACK budget at connection start
DELACK_NS = 40 * MS
QUICKACKS = 16
#: QUIC max_ack_delay (RFC 9000 sec 18.2 default) and the loss-detection constants (RFC 9002 sec 6.1)
QUIC_MAX_ACK_DELAY_NS = 25 * MS
QUIC_PACKET_THRESHOLD = 3
QUIC_INITIAL_PTO_NS = 999 * MS  # 3 x kInitialRtt (333 ms), RFC 9002 sec 6.2.2
#: QUIC short header overhead: flags 1 + DCID 8 + packet number 2 + AEAD tag 16 + STREAM frame ~7
QUIC_OVERHEAD = 34
#: server->client frames are cut to this many bytes, as in the testbed corpus
SNAPLEN_DOWN = 128
#: CUBIC constants (RFC 9438 sec 4.1, 4.6)
CUBIC_C = 0.4
CUBIC_BETA = 0.7
#: first timestamp of a simulated capture: 2025-06-15 08:26:40 UTC, in ns
T0_NS = 1_750_000_000 * NS

TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK = 0x01, 0x02, 0x04, 0x08, 0x10

MECHANISMS = ("policing", "shaping", "stall")
TRANSPORTS = ("tcp", "quic")
CONGESTION = ("cubic", "reno")
ORDERS = ("control_first", "target_first")
KINDS = ("clean", "lossy", "whole_link", "policing", "shaping", "stall")

TARGET_SNIS = (
    "abs.twimg.com", "pbs.twimg.com", "video.twimg.com", "t.co", "rr3---sn-5hne6nzk.googlevideo.com",
    "rr1---sn-n8v7znz7.googlevideo.com", "i.ytimg.com", "scontent.cdninstagram.com",
    "static.xx.fbcdn.net", "www.linkedin.com",
)
CONTROL_SNIS = (
    "cdn.jsdelivr.net", "www.bbc.co.uk", "fonts.gstatic.com", "www.wikipedia.org",
    "ajax.googleapis.com", "cdnjs.cloudflare.com", "yastatic.net", "upload.wikimedia.org",
)


# ---------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class Throttle:
    """What the censor does to target flows (server->client; ``stall`` both ways).

    ``mechanism`` is ``"policing"`` (token bucket of ``rate_bps`` and ``bucket_bytes``, excess
    dropped), ``"shaping"`` (token bucket feeding a FIFO of ``queue_bytes``, excess delayed,
    overflow dropped) or ``"stall"`` (every packet dropped once the flow carried
    ``stall_bytes``). Policing and shaping start once the flow carried ``onset_bytes``.
    """

    mechanism: str
    rate_bps: float | None = None
    bucket_bytes: int | None = None
    queue_bytes: int | None = None
    onset_bytes: int = 0
    stall_bytes: int | None = None

    @classmethod
    def police(cls, rate_bps: float, bucket_bytes: int, *, onset_bytes: int = 0) -> Throttle:
        return cls("policing", float(rate_bps), int(bucket_bytes), None, int(onset_bytes))

    @classmethod
    def shape(cls, rate_bps: float, bucket_bytes: int, queue_bytes: int, *,
              onset_bytes: int = 0) -> Throttle:
        return cls("shaping", float(rate_bps), int(bucket_bytes), int(queue_bytes), int(onset_bytes))

    @classmethod
    def stall(cls, stall_bytes: int) -> Throttle:
        return cls("stall", stall_bytes=int(stall_bytes))


@dataclass(frozen=True)
class Scenario:
    """One simulated capture: a control and a target download from one server.

    Rates in bit/s, sizes in bytes, times in ms unless the name says otherwise. ``rtt_ms`` is
    the base round trip (twice the one-way delay), without queueing. ``capacity_bps`` is the
    path's own rate (the server's access link; its buffer defaults to one BDP, at least 64 KiB);
    ``bottleneck_bps`` an extra whole-link limit that slows targets and controls alike.
    """

    transport: str = "tcp"
    target_sni: str = "abs.twimg.com"
    control_sni: str = "cdn.jsdelivr.net"
    rtt_ms: float = 40.0
    jitter_ms: float = 0.0
    loss: float = 0.0
    capacity_bps: float = 100e6
    capacity_queue_bytes: int | None = None
    bottleneck_bps: float | None = None
    bottleneck_queue_bytes: int = 65536
    throttle: Throttle | None = None
    target_bytes: int = 1_500_000
    control_bytes: int = 1_500_000
    congestion: str = "cubic"
    rwnd_bytes: int = 6 << 20
    order: str = "control_first"
    gap_ms: float = 500.0
    quic_datagram: int = 1252
    server_flight_bytes: int = 3500
    idle_abort_s: float = 8.0
    max_download_s: float = 90.0
    kind: str = ""
    seed: int = 0


@dataclass(frozen=True)
class GroundTruth:
    """What the simulated censor and path did: the answer a detector should find.

    ``rate_bps``, ``bucket_bytes`` and ``onset_bytes`` are the throttle's parameters (None
    when not throttled; for a stall ``onset_bytes`` is ``stall_bytes``). ``first_action_bytes``
    is how many bytes the target flow had carried when the throttle first dropped or delayed
    one of its packets (the visible onset: ``onset_bytes`` plus what the full bucket let
    through). Goodputs are measured like ``flows.FlowTable.goodput_bps``: unique server payload
    bytes from the client's first payload packet to the server's last one, at the client.
    """

    kind: str
    transport: str
    target_sni: str
    control_sni: str
    throttled: bool
    mechanism: str
    rate_bps: float | None
    bucket_bytes: int | None
    queue_bytes: int | None
    onset_bytes: int | None
    stall_bytes: int | None
    whole_link: bool
    link_rate_bps: float | None
    loss: float
    jitter_ms: float
    rtt_ms: float
    capacity_bps: float
    bytes_requested: dict[str, int]
    bytes_received: dict[str, int]
    completed: dict[str, bool]
    goodput_bps: dict[str, float | None]
    first_action_bytes: int | None
    throttle_drops: int
    seed: int

    @property
    def ratio(self) -> float | None:
        """Target goodput over control goodput, as simulated (None if either is unknown)."""
        t, c = self.goodput_bps.get("target"), self.goodput_bps.get("control")
        return None if not t or not c else t / c

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ratio"] = self.ratio
        return d


@dataclass(frozen=True)
class SimStats:
    """Cost and counters of one run (events, packets captured, drops per element)."""

    events: int
    packets: int
    sim_seconds: float
    drops: dict[str, int]


@dataclass(frozen=True)
class SimResult:
    """A simulated capture (classic pcap bytes) and its ground truth."""

    pcap: bytes = field(repr=False)
    truth: GroundTruth
    scenario: Scenario
    stats: SimStats

    def write_pcap(self, path: str | os.PathLike[str]) -> None:
        """Write the capture to ``path`` (the only I/O this module does)."""
        with open(path, "wb") as fh:
            fh.write(self.pcap)


# ---------------------------------------------------------------------------- validation


def _rng_iv(rng: int | np.random.Generator | None, default: int | None = None) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None:
        if default is None:
            raise TypeError("rng must be an int seed or a numpy.random.Generator (got None)")
        rng = default
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise TypeError(f"rng must be an int seed or a numpy.random.Generator, got {type(rng).__name__}")


def _scenario_iv(sc: Scenario) -> None:
    def positive(name: str, value: float | int | None, *, allow_none: bool = False) -> None:
        if value is None and allow_none:
            return
        if value is None or not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"Scenario.{name} must be a positive number, got {value!r}")

    if sc.transport not in TRANSPORTS:
        raise ValueError(f"Scenario.transport must be one of {TRANSPORTS}, got {sc.transport!r}")
    if sc.congestion not in CONGESTION:
        raise ValueError(f"Scenario.congestion must be one of {CONGESTION}, got {sc.congestion!r}")
    if sc.order not in ORDERS:
        raise ValueError(f"Scenario.order must be one of {ORDERS}, got {sc.order!r}")
    for name in ("target_sni", "control_sni"):
        v = getattr(sc, name)
        if not isinstance(v, str) or not v or len(v) > 253:
            raise ValueError(f"Scenario.{name} must be a host name, got {v!r}")
    if sc.target_sni == sc.control_sni:
        raise ValueError("Scenario.target_sni and control_sni must differ")
    for name in ("rtt_ms", "capacity_bps", "target_bytes", "control_bytes", "rwnd_bytes",
                 "idle_abort_s", "max_download_s", "bottleneck_queue_bytes", "server_flight_bytes"):
        positive(name, getattr(sc, name))
    positive("bottleneck_bps", sc.bottleneck_bps, allow_none=True)
    positive("capacity_queue_bytes", sc.capacity_queue_bytes, allow_none=True)
    if not 0 <= sc.loss < 0.5:
        raise ValueError(f"Scenario.loss must be in [0, 0.5), got {sc.loss!r}")
    if not 0 <= sc.jitter_ms <= sc.rtt_ms / 2:
        raise ValueError(f"Scenario.jitter_ms must be in [0, rtt_ms / 2], got {sc.jitter_ms!r}")
    if sc.gap_ms < 0:
        raise ValueError(f"Scenario.gap_ms must be >= 0, got {sc.gap_ms!r}")
    if not 1200 <= sc.quic_datagram <= 1472:
        raise ValueError(f"Scenario.quic_datagram must be in [1200, 1472], got {sc.quic_datagram!r}")
    th = sc.throttle
    if th is not None:
        if th.mechanism not in MECHANISMS:
            raise ValueError(f"Throttle.mechanism must be one of {MECHANISMS}, got {th.mechanism!r}")
        if th.mechanism == "stall":
            positive("throttle.stall_bytes", th.stall_bytes)
        else:
            positive("throttle.rate_bps", th.rate_bps)
            positive("throttle.bucket_bytes", th.bucket_bytes)
            if th.mechanism == "shaping":
                positive("throttle.queue_bytes", th.queue_bytes)
            if th.onset_bytes < 0:
                raise ValueError(f"Throttle.onset_bytes must be >= 0, got {th.onset_bytes!r}")


# ---------------------------------------------------------------------------- handshakes


def _pull_varint(data: bytes | bytearray, pos: int) -> tuple[int, int]:
    # RFC 9000 sec 16
    size = 1 << (data[pos] >> 6)
    value = int.from_bytes(data[pos : pos + size], "big") & ((1 << (8 * size - 2)) - 1)
    return value, pos + size


def _patch_client_hello(msg: bytearray, pos: int, rand: Callable[[int], bytes], *,
                        scid: bytes | None = None) -> None:
    """Overwrite the fields OpenSSL/aioquic drew from the OS in the ClientHello at ``msg[pos:]``.

    RFC 8446 sec 4.1.2: random, legacy_session_id, and (sec 4.2.8) each key_share's
    key_exchange; for QUIC (RFC 9000 sec 18.2) the initial_source_connection_id transport
    parameter, which must equal the packet's SCID.
    """
    p = pos + 4 + 2  # HandshakeType, uint24 length, legacy_version
    msg[p : p + 32] = rand(32)
    p += 32
    n = msg[p]
    msg[p + 1 : p + 1 + n] = rand(n)
    p += 1 + n
    p += 2 + int.from_bytes(msg[p : p + 2], "big")  # cipher_suites
    p += 1 + msg[p]  # legacy_compression_methods
    end = p + 2 + int.from_bytes(msg[p : p + 2], "big")
    p += 2
    while p + 4 <= end:
        ext_type = int.from_bytes(msg[p : p + 2], "big")
        ext_len = int.from_bytes(msg[p + 2 : p + 4], "big")
        p += 4
        if ext_type == 51:  # key_share: KeyShareEntry client_shares<0..2^16-1>
            q = p + 2
            while q + 4 <= p + ext_len:
                group = int.from_bytes(msg[q : q + 2], "big")
                klen = int.from_bytes(msg[q + 2 : q + 4], "big")
                if group in (23, 24, 25) and klen > 1:  # secp*r1: keep the uncompressed-point 0x04
                    msg[q + 5 : q + 4 + klen] = rand(klen - 1)
                else:
                    msg[q + 4 : q + 4 + klen] = rand(klen)
                q += 4 + klen
        elif ext_type == 57 and scid is not None:  # quic_transport_parameters
            q = p
            while q < p + ext_len:
                pid, q = _pull_varint(msg, q)
                plen, q = _pull_varint(msg, q)
                if pid == 0x0F and plen == len(scid):  # initial_source_connection_id
                    msg[q : q + plen] = scid
                q += plen
        p += ext_len


@lru_cache(maxsize=1)
def _tls_context() -> ssl.SSLContext:
    return ssl.create_default_context()


def tls_client_hello(sni: str, *, rng: int | np.random.Generator) -> bytes:
    """A real TLS ClientHello record (OpenSSL's, via ``ssl``) for ``sni``, seeded.

    The random, session id and key shares come from ``rng``, so equal seeds give equal bytes.
    """
    g = _rng_iv(rng)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = _tls_context().wrap_bio(incoming, outgoing, server_hostname=sni)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    record = bytearray(outgoing.read())
    _patch_client_hello(record, 5, g.bytes)
    return bytes(record)


def quic_client_initial(sni: str, *, rng: int | np.random.Generator) -> tuple[bytes, bytes, bytes]:
    """The first datagram of a QUIC v1 client (aioquic's), seeded: (datagram, dcid, scid).

    aioquic draws connection IDs and TLS secrets from the OS; we decrypt its Initial, overwrite
    those fields from ``rng`` and re-protect the packet under the new Destination Connection ID
    (RFC 9001 sec 5.2), so the datagram is a valid Initial that decrypts to the ClientHello.
    """
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection
    from aioquic.quic.crypto import CryptoPair

    from .protocols.quic import parse_long_header

    g = _rng_iv(rng)
    conn = QuicConnection(configuration=QuicConfiguration(
        is_client=True, server_name=sni, alpn_protocols=["h3"]))
    conn.connect(("192.0.2.1", 443), now=0.0)
    datagram = conn.datagrams_to_send(now=0.0)[0][0]
    hdr = parse_long_header(datagram)
    assert hdr.pn_offset is not None and hdr.length is not None
    end = hdr.pn_offset + hdr.length
    pair = CryptoPair()
    pair.setup_initial(hdr.dcid, is_client=False, version=hdr.version)
    plain_header, payload, pn = pair.decrypt_packet(datagram[:end], hdr.pn_offset, 0)
    dcid, scid = g.bytes(len(hdr.dcid)), g.bytes(len(hdr.scid))
    frames = bytearray(payload)
    p = 0
    while p < len(frames):  # RFC 9000 sec 19: PADDING, PING, CRYPTO in an Initial
        ftype = frames[p]
        if ftype in (0x00, 0x01):
            p += 1
            continue
        if ftype != 0x06:
            raise RuntimeError(f"unexpected frame type {ftype:#x} in aioquic's Initial")
        offset, p = _pull_varint(frames, p + 1)
        length, p = _pull_varint(frames, p)
        if offset == 0:
            _patch_client_hello(frames, p, g.bytes, scid=scid)
        p += length
    header = bytearray(plain_header)
    dl = len(hdr.dcid)
    header[6 : 6 + dl] = dcid
    header[7 + dl : 7 + dl + len(scid)] = scid
    pair = CryptoPair()
    pair.setup_initial(dcid, is_client=True, version=hdr.version)
    packet = pair.encrypt_packet(bytes(header), bytes(frames), pn)
    return packet + datagram[end:], dcid, scid


# ---------------------------------------------------------------------------- path elements


class _Draws:
    """Uniform [0, 1) numbers drawn from a Generator in blocks (one call per draw is slow)."""

    __slots__ = ("_g", "_buf", "_i")

    def __init__(self, g: np.random.Generator) -> None:
        self._g = g
        self._buf: list[float] = []
        self._i = 0

    def __call__(self) -> float:
        i = self._i
        if i >= len(self._buf):
            self._buf = self._g.random(4096).tolist()
            i = 0
        self._i = i + 1
        return self._buf[i]


class _Fifo:
    """A serial link of ``rate_bps`` with a drop-tail buffer: departure time of each packet.

    Packets must enter in time order (every element upstream is FIFO, so they do).
    """

    __slots__ = ("ns_per_byte", "limit", "last", "pending", "backlog", "drops")

    def __init__(self, rate_bps: float, limit_bytes: int) -> None:
        self.ns_per_byte = 8e9 / rate_bps
        self.limit = limit_bytes
        self.last = 0
        self.pending: deque[tuple[int, int]] = deque()
        self.backlog = 0
        self.drops = 0

    def depart(self, t: int, size: int) -> int:
        pending = self.pending
        while pending and pending[0][0] <= t:
            self.backlog -= pending.popleft()[1]
        if self.backlog + size > self.limit:
            self.drops += 1
            return -1
        start = t if t > self.last else self.last
        d = start + int(size * self.ns_per_byte)
        self.last = d
        pending.append((d, size))
        self.backlog += size
        return d


class _Censor:
    """The censor's state for one flow: bytes carried and, for targets, the throttle."""

    __slots__ = ("bytes", "mech", "onset", "stall", "th", "box", "first_action", "drops")

    def __init__(self, th: Throttle | None) -> None:
        self.bytes = 0
        self.th = th
        self.mech = "" if th is None else th.mechanism
        self.onset = 0 if th is None else th.onset_bytes
        self.stall = (th.stall_bytes or 0) if th is not None and th.mechanism == "stall" else -1
        self.box: Policer | Shaper | None = None
        self.first_action = -1
        self.drops = 0

    def down(self, t: int, size: int) -> int:
        before = self.bytes
        self.bytes = before + size
        mech = self.mech
        if not mech:
            return t
        if mech == "stall":
            if before < self.stall:
                return t
            out = -1
        else:
            if before < self.onset:
                return t
            box = self.box
            if box is None:
                th = self.th
                assert th is not None and th.rate_bps is not None and th.bucket_bytes is not None
                if mech == "policing":
                    box = self.box = Policer(th.rate_bps, th.bucket_bytes, now_ns=t)
                else:
                    box = self.box = Shaper(th.rate_bps, th.bucket_bytes, th.queue_bytes or 0, now_ns=t)
            # the testbed censor's own token buckets
            if isinstance(box, Policer):
                out = t if box.admit(size, t) else -1
            else:
                out = box.schedule(size, t)
        if out != t and self.first_action < 0:
            self.first_action = before
        if out < 0:
            self.drops += 1
        return out

    def up(self, t: int, size: int) -> int:
        before = self.bytes
        self.bytes = before + size
        if self.stall >= 0 and before >= self.stall:
            if self.first_action < 0:
                self.first_action = before
            self.drops += 1
            return -1
        return t


class _Path:
    """Server -> client and client -> server, as FIFO elements (see the module docstring)."""

    __slots__ = ("u", "loss", "owd", "jit", "access", "link", "last_down", "last_up", "lost")

    def __init__(self, sc: Scenario, u: _Draws) -> None:
        self.u = u
        self.loss = sc.loss
        self.owd = int(sc.rtt_ms * MS / 2)
        self.jit = int(sc.jitter_ms * MS)
        bdp = int(sc.capacity_bps * sc.rtt_ms / 8e3)
        self.access = _Fifo(sc.capacity_bps, sc.capacity_queue_bytes or max(65536, bdp))
        self.link = None if sc.bottleneck_bps is None else _Fifo(sc.bottleneck_bps, sc.bottleneck_queue_bytes)
        self.last_down = 0
        self.last_up = 0
        self.lost = 0

    def down(self, t: int, fc: _Censor, size: int) -> int:
        t = self.access.depart(t, size)
        if t < 0:
            return -1
        if self.loss and self.u() < self.loss:
            self.lost += 1
            return -1
        t = fc.down(t, size)
        if t < 0:
            return -1
        link = self.link
        if link is not None:
            t = link.depart(t, size)
            if t < 0:
                return -1
        d = self.owd
        if self.jit:
            d += int((2.0 * self.u() - 1.0) * self.jit)
        t += d if d > 0 else 0
        if t < self.last_down:
            t = self.last_down  # no reordering, as on a serial link
        self.last_down = t
        return t

    def up(self, t: int, fc: _Censor, size: int) -> int:
        if self.loss and self.u() < self.loss:
            self.lost += 1
            return -1
        t = fc.up(t, size)
        if t < 0:
            return -1
        d = self.owd
        if self.jit:
            d += int((2.0 * self.u() - 1.0) * self.jit)
        t += d if d > 0 else 0
        if t < self.last_up:
            t = self.last_up
        self.last_up = t
        return t


# ---------------------------------------------------------------------------- capture


def _checksum(data: bytes) -> bytes:
    """RFC 1071 Internet checksum, as the 2 bytes to store (byte-order independent sum)."""
    if len(data) & 1:
        data += b"\0"
    s = sum(memoryview(data).cast("H"))
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return struct.pack("=H", ~s & 0xFFFF)


_IP = struct.Struct("!BBHHHBBH4s4s")
_TCP = struct.Struct("!HHIIHHHH")
_UDP = struct.Struct("!HHHH")
_REC = struct.Struct("<IIII")
_TS_OPT = struct.Struct("!BBBBII")
_TCP_TS = struct.Struct("!HHIIHHHHBBBBII")  # header + NOP, NOP, timestamps (RFC 7323 appendix A)
_TS_WORDS = 0x0101 + 0x080A


def _fold(s: int) -> int:
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


class _Capture:
    """pcap records of what the client's interface sees: its own frames whole, the server's cut."""

    __slots__ = ("records", "client_ip", "server_ip", "eth_up", "eth_down", "ttl_down", "pool",
                 "ip_base", "addr_sum")

    def __init__(self, g: np.random.Generator, client_ip: bytes, server_ip: bytes) -> None:
        self.records: list[bytes] = []
        self.client_ip = client_ip
        self.server_ip = server_ip
        cmac = b"\x02" + g.bytes(5)
        gmac = b"\x02" + g.bytes(5)
        self.eth_up = gmac + cmac + b"\x08\x00"
        self.eth_down = cmac + gmac + b"\x08\x00"
        self.ttl_down = int(g.integers(44, 60))
        self.pool = g.bytes(1 << 16)
        c, s = struct.unpack("!HH", client_ip), struct.unpack("!HH", server_ip)
        self.addr_sum = sum(c) + sum(s)
        # the constant words of each IPv4 header (RFC 791): version/IHL, DF, TTL/protocol, addresses
        self.ip_base = {(up, proto): 0x4500 + 0x4000 + (((64 if up else self.ttl_down) << 8) | proto)
                        + self.addr_sum for up in (True, False) for proto in (6, 17)}

    def _ip(self, up: bool, proto: int, ip_len: int, ip_id: int) -> bytes:
        # RFC 1071 over the header, from the precomputed constant words
        csum = _fold(self.ip_base[(up, proto)] + ip_len + ip_id)
        if up:
            return _IP.pack(0x45, 0, ip_len, ip_id, 0x4000, 64, proto, csum, self.client_ip, self.server_ip)
        return _IP.pack(0x45, 0, ip_len, ip_id, 0x4000, self.ttl_down, proto, csum, self.server_ip,
                        self.client_ip)

    def _emit(self, t: int, frame: bytes, wire: int) -> None:
        sec, nsec = divmod(t, NS)
        self.records.append(_REC.pack(sec, nsec, len(frame), wire) + frame)

    def tcp(self, t: int, up: bool, cport: int, ip_id: int, flags: int, seq: int, ack: int,
            win: int, tsval: int, tsecr: int, opts: bytes | None, payload: bytes, plen: int) -> None:
        """A TCP segment; ``opts`` None means the usual NOP, NOP, timestamps and nothing else."""
        if opts is None:
            thl = 32
            ip_len = 52 + plen
            if up:
                csum = 0
                if not plen:  # a pure ACK: its checksum from the header's words
                    csum = _fold(self.addr_sum + 6 + thl + cport + 443 + (seq >> 16) + (seq & 0xFFFF)
                                 + (ack >> 16) + (ack & 0xFFFF) + (0x8000 | flags) + win + _TS_WORDS
                                 + (tsval >> 16) + (tsval & 0xFFFF) + (tsecr >> 16) + (tsecr & 0xFFFF))
                hdr = _TCP_TS.pack(cport, 443, seq, ack, 0x8000 | flags, win, csum, 0, 1, 1, 8, 10,
                                   tsval, tsecr)
            else:
                hdr = _TCP_TS.pack(443, cport, seq, ack, 0x8000 | flags, win, 0, 0, 1, 1, 8, 10,
                                   tsval, tsecr)
        else:
            thl = 20 + len(opts)
            ip_len = 20 + thl + plen
            hdr = _TCP.pack(cport, 443, seq, ack, (thl << 10) | flags, win, 0, 0) + opts if up else \
                _TCP.pack(443, cport, seq, ack, (thl << 10) | flags, win, 0, 0) + opts
        if up:
            if opts is not None or plen:
                pseudo = self.client_ip + self.server_ip + struct.pack("!HH", 6, thl + plen)
                hdr = hdr[:16] + _checksum(pseudo + hdr + payload) + hdr[18:]
            frame = self.eth_up + self._ip(True, 6, ip_len, ip_id) + hdr + payload
        else:
            # the server's checksum covers bytes the capture cut: left 0, like an offloaded one
            frame = self.eth_down + self._ip(False, 6, ip_len, ip_id) + hdr
            room = SNAPLEN_DOWN - len(frame)
            if plen and room > 0:
                frame += payload[:room]
        sec, nsec = divmod(t, NS)
        self.records.append(_REC.pack(sec, nsec, len(frame), 14 + ip_len) + frame)

    def udp(self, t: int, up: bool, cport: int, ip_id: int, head: bytes, plen: int) -> None:
        """A UDP datagram of ``plen`` payload bytes starting with ``head`` (then random bytes)."""
        ip_len = 28 + plen
        if up:
            payload = head if len(head) >= plen else head + self._fill(plen - len(head), ip_id)
            payload = payload[:plen]
            hdr = _UDP.pack(cport, 443, 8 + plen, 0)
            pseudo = self.client_ip + self.server_ip + struct.pack("!HH", 17, 8 + plen)
            c = _checksum(pseudo + hdr + payload)
            hdr = hdr[:6] + (c if c != b"\0\0" else b"\xff\xff")
            frame = self.eth_up + self._ip(True, 17, ip_len, ip_id) + hdr + payload
        else:
            frame = self.eth_down + self._ip(False, 17, ip_len, ip_id) + _UDP.pack(443, cport, 8 + plen, 0)
            room = min(SNAPLEN_DOWN - len(frame), plen)
            if room > 0:
                body = head[:room]
                if len(body) < room:
                    body += self._fill(room - len(body), ip_id)
                frame += body
        self._emit(t, frame, 14 + ip_len)

    def _fill(self, n: int, k: int) -> bytes:
        """``n`` random-looking bytes (a slice of the seeded pool chosen by ``k``)."""
        o = (k * 2654435761) % (65536 - n)
        return self.pool[o : o + n]

    def pcap(self) -> bytes:
        # classic pcap with the nanosecond magic (draft-ietf-opsawg-pcap sec 4), LINKTYPE_ETHERNET
        head = struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 262144, 1)
        return head + b"".join(self.records)


# ---------------------------------------------------------------------------- the event loop


class _Sim:
    __slots__ = ("heap", "seq", "u", "g", "path", "cap", "events", "sc", "now", "stop_at")

    def __init__(self, sc: Scenario, g: np.random.Generator, cap: _Capture) -> None:
        self.heap: list[tuple[int, int, Callable[[int, Any], None], Any]] = []
        self.seq = itertools.count()
        self.g = g
        self.u = _Draws(g)
        self.path = _Path(sc, self.u)
        self.cap = cap
        self.events = 0
        self.sc = sc
        self.now = 0
        self.stop_at = NEVER

    def at(self, t: int, fn: Callable[[int, Any], None], arg: Any = None) -> None:
        heapq.heappush(self.heap, (t, next(self.seq), fn, arg))

    def run(self) -> None:
        """Process events in time order until none is left before ``stop_at``."""
        heap = self.heap
        pop = heapq.heappop
        n = 0
        while heap and heap[0][0] <= self.stop_at:
            t, _, fn, arg = pop(heap)
            self.now = t
            fn(t, arg)
            n += 1
        self.events += n


class _Cc:
    """Congestion window in packets: slow start, then CUBIC-lite (RFC 9438) or Reno (RFC 5681)."""

    __slots__ = ("cubic", "cwnd", "ssthresh", "w_max", "k", "epoch", "origin", "w_est")

    def __init__(self, cubic: bool) -> None:
        self.cubic = cubic
        self.cwnd = float(INITIAL_WINDOW)
        self.ssthresh = 1e9
        self.w_max = 0.0
        self.k = 0.0
        self.epoch = -1
        self.origin = 0.0
        self.w_est = 0.0

    def on_ack(self, t: int, segs: float, min_rtt: int) -> None:
        cwnd = self.cwnd
        if cwnd < self.ssthresh:
            self.cwnd = cwnd + segs
            return
        if not self.cubic:
            self.cwnd = cwnd + segs / cwnd
            return
        if self.epoch < 0:  # RFC 9438 sec 4.2: a new congestion-avoidance epoch
            self.epoch = t
            self.w_est = cwnd
            if cwnd < self.w_max:
                self.k = ((self.w_max - cwnd) / CUBIC_C) ** (1.0 / 3.0)
                self.origin = self.w_max
            else:
                self.k = 0.0
                self.origin = cwnd
        tt = (t - self.epoch + min_rtt) / 1e9
        target = self.origin + CUBIC_C * (tt - self.k) ** 3
        if target > 1.5 * cwnd:
            target = 1.5 * cwnd
        if target > cwnd:
            cwnd += (target - cwnd) / cwnd * segs
        # sec 4.3: the Reno-friendly estimate
        self.w_est += 3.0 * (1.0 - CUBIC_BETA) / (1.0 + CUBIC_BETA) * segs / cwnd
        self.cwnd = cwnd if cwnd > self.w_est else self.w_est

    def on_congestion(self) -> None:
        cwnd = self.cwnd
        if self.cubic:
            # sec 4.7 fast convergence
            self.w_max = cwnd * (1.0 + CUBIC_BETA) / 2.0 if cwnd < self.w_max else cwnd
            cwnd *= CUBIC_BETA
        else:
            cwnd *= 0.5
        self.cwnd = self.ssthresh = cwnd if cwnd > 2.0 else 2.0
        self.epoch = -1

    def on_timeout(self) -> None:
        self.on_congestion()
        self.cwnd = 1.0


class _Download:
    """What both transports share: the flow's censor state, results, and the scheduler hook."""

    role: str
    fc: _Censor
    requested: int
    done: bool
    aborted: bool
    dead: bool
    t_first: int
    t_last: int
    rx_bytes: int
    t_finish: int
    hard_stop: int
    abort_at: int
    on_finish: Callable[[int], None]

    def goodput(self) -> float | None:
        if self.rx_bytes <= 0 or self.t_first < 0 or self.t_last <= self.t_first:
            return None
        return self.rx_bytes * 8e9 / (self.t_last - self.t_first)


# ---------------------------------------------------------------------------- TCP

_OUT, _SACKED, _LOST, _ACKED = 0, 1, 2, 3
_CLOSED, _SYN_SENT, _SYN_RCVD, _EST = 0, 1, 2, 3


class _TcpEnd:
    """One TCP endpoint: a SACK/RACK sender and a delayed-ACK receiver (both always present)."""

    __slots__ = (
        "sim", "conn", "client", "peer", "isn", "ts_off", "wscale", "ip_id", "state", "recv",
        # send side
        "app_end", "writes", "snd_nxt", "una", "una_off", "seg_start", "seg_len", "seg_tx",
        "seg_txn", "seg_rx", "st", "pipe", "retxq", "retx_out", "txlog", "txn", "rack_txn",
        "rack_rtt", "sacked_out", "dupacks", "in_rec", "rto_state", "rec_point", "cc", "srtt",
        "rttvar", "rto", "min_rtt", "backoff", "rto_at", "rto_tlp", "tlp_done", "reo_at",
        "hs_round_end", "hs_cur", "hs_cnt", "hs_last", "syn_t", "syn_tries",
        "peer_rwnd",
        # receive side
        "rcv_nxt", "ooo", "last_ooo", "ack_pending", "delack_at", "quick", "ts_recent",
        "fin_rcvd", "fin_sent", "rwnd",
        # timer
        "ev_at", "ev_tok", "_timer_cb",
    )

    def __init__(self, sim: _Sim, conn: _TcpConn, client: bool) -> None:
        g = sim.g
        self.sim = sim
        self.conn = conn
        self.client = client
        self.peer: _TcpEnd = self
        self.isn = int(g.integers(0, 1 << 32))
        self.ts_off = int(g.integers(0, 1 << 32))
        self.wscale = 7 if client else 9
        self.ip_id = int(g.integers(0, 1 << 16))
        self.state = _CLOSED
        self.recv = self.on_segment
        self.app_end = 0
        self.writes: deque[int] = deque()
        self.snd_nxt = 0
        self.una = 0
        self.una_off = 0
        self.seg_start: list[int] = []
        self.seg_len: list[int] = []
        self.seg_tx: list[int] = []
        self.seg_txn: list[int] = []
        self.seg_rx: list[int] = []
        self.st: list[int] = []
        self.pipe = 0
        self.retxq: deque[int] = deque()
        self.retx_out: set[int] = set()
        self.txlog: deque[tuple[int, int]] = deque()
        self.txn = 0
        self.rack_txn = -1
        self.rack_rtt = 0
        self.sacked_out = 0
        self.dupacks = 0
        self.in_rec = False
        self.rto_state = False
        self.rec_point = 0
        self.cc = _Cc(sim.sc.congestion == "cubic")
        self.srtt = -1
        self.rttvar = 0
        self.rto = RTO_INITIAL_NS
        self.min_rtt = NEVER
        self.backoff = 0
        self.rto_at = NEVER
        self.rto_tlp = False
        self.tlp_done = False
        self.reo_at = NEVER
        self.hs_round_end = 0
        self.hs_cur = NEVER
        self.hs_cnt = 0
        self.hs_last = NEVER
        self.syn_t = -1
        self.syn_tries = 0
        self.peer_rwnd = 65535
        self.rcv_nxt = 0
        self.ooo: list[list[int]] = []
        self.last_ooo = -1
        self.ack_pending = 0
        self.delack_at = NEVER
        self.quick = QUICKACKS
        self.ts_recent = 0
        self.fin_rcvd = 0
        self.fin_sent = 0
        self.rwnd = sim.sc.rwnd_bytes if client else 6 << 20
        self.ev_at = NEVER
        self.ev_tok = 0
        self._timer_cb = self._on_timer

    # ---- timers: one pending heap event per endpoint, at the earliest deadline

    def _arm(self) -> None:
        d = self.rto_at
        if self.delack_at < d:
            d = self.delack_at
        if self.reo_at < d:
            d = self.reo_at
        if self.client and self.conn.abort_at < d:
            d = self.conn.abort_at
        if d < self.ev_at:
            self.ev_at = d
            self.ev_tok += 1
            self.sim.at(d, self._timer_cb, self.ev_tok)

    def _on_timer(self, t: int, tok: int) -> None:
        if tok != self.ev_tok or self.conn.dead:
            return
        self.ev_at = NEVER
        conn = self.conn
        if self.client and conn.abort_at <= t:
            conn.abort(t)
            return
        if self.delack_at <= t:
            self.delack_at = NEVER
            if self.ack_pending:
                self.send_ack(t)
        if self.reo_at <= t:
            self.reo_at = NEVER
            self._detect_losses(t)
            self.push(t)
        if self.rto_at <= t:
            self.rto_at = NEVER
            if self.state == _SYN_SENT or self.state == _SYN_RCVD:
                self._resend_syn(t)
            elif self.rto_tlp:
                self._tail_loss_probe(t)
            else:
                self._timeout(t)
        self._arm()

    # ---- packets out

    def _xmit(self, t: int, flags: int, off: int, length: int) -> None:
        ack = self.rcv_nxt + self.fin_rcvd
        tsval = (self.ts_off + t // MS) & 0xFFFFFFFF
        sack = self._sack_blocks() if self.ooo else None
        self.ack_pending = 0
        self.delack_at = NEVER
        self.conn.send(t, self, (flags, off, length, ack, tsval, self.ts_recent, sack))

    def close(self, t: int) -> None:
        """Send our FIN (it is not retransmitted: the download is over by then)."""
        if not self.fin_sent:
            self._xmit(t, TCP_FIN | TCP_ACK, self.snd_nxt, 0)
            self.fin_sent = 1

    def send_ack(self, t: int) -> None:
        self._xmit(t, TCP_ACK, self.snd_nxt + self.fin_sent, 0)

    def _sack_blocks(self) -> tuple[tuple[int, int], ...]:
        # RFC 2018 sec 4: the block holding the most recent arrival first, then the others
        ooo = self.ooo
        first = None
        for b in ooo:
            if b[0] <= self.last_ooo < b[1]:
                first = b
                break
        if first is None:
            first = ooo[-1]
        out = [(first[0], first[1])]
        for b in reversed(ooo):
            if b is not first and len(out) < 3:
                out.append((b[0], b[1]))
        return tuple(out)

    def write(self, t: int, nbytes: int) -> None:
        self.app_end += nbytes
        self.writes.append(self.app_end)
        self.push(t)

    def push(self, t: int) -> None:
        """Send what cwnd, pipe and the peer's window allow (RFC 6675 sec 5: pipe < cwnd)."""
        if self.state != _EST:
            return
        cw = self.cc.cwnd * MSS
        st = self.st
        retxq = self.retxq
        sent = False
        while True:
            if retxq:
                k = retxq[0]
                if st[k] != _LOST:
                    retxq.popleft()
                    continue
                if self.pipe + self.seg_len[k] > cw:
                    break
                retxq.popleft()
                self._send_seg(t, k, True)
                sent = True
                continue
            off = self.snd_nxt
            if off >= self.app_end:
                break
            room = self.una_off + self.peer_rwnd - off
            if room <= 0:
                break
            writes = self.writes
            while writes[0] <= off:
                writes.popleft()
            ln = writes[0] - off
            if ln > MSS:
                ln = MSS
            if ln > room:
                ln = room
            if self.pipe + ln > cw:
                break
            self._new_seg(t, off, ln)
            sent = True
        if sent and self.rto_at == NEVER:
            self._arm_retx_timer(t)
            self._arm()

    def _new_seg(self, t: int, off: int, ln: int) -> None:
        self.seg_start.append(off)
        self.seg_len.append(ln)
        self.seg_tx.append(0)
        self.seg_txn.append(0)
        self.seg_rx.append(0)
        self.st.append(_OUT)
        self.snd_nxt = off + ln
        self._send_seg(t, len(self.st) - 1, False)

    def _send_seg(self, t: int, k: int, retx: bool) -> None:
        self.txn += 1
        self.seg_tx[k] = t
        self.seg_txn[k] = self.txn
        ln = self.seg_len[k]
        self.st[k] = _OUT
        self.pipe += ln
        if retx:
            self.seg_rx[k] = 1
            self.retx_out.add(k)
        self.txlog.append((k, self.txn))
        off = self.seg_start[k]
        end = off + ln
        flags = TCP_ACK | (TCP_PSH if (end == self.app_end or end in self.writes) else 0)
        self._xmit(t, flags, off, ln)

    # ---- handshake (RFC 9293 sec 3.5)

    def connect(self, t: int) -> None:
        self.state = _SYN_SENT
        self.syn_t = t
        self.syn_tries = 1
        self._xmit(t, TCP_SYN, -1, 0)
        self.rto_at = t + RTO_INITIAL_NS
        self._arm()

    def _resend_syn(self, t: int) -> None:
        self.syn_tries += 1
        if self.syn_tries > 6:
            return
        self._xmit(t, TCP_SYN if self.client else TCP_SYN | TCP_ACK, -1, 0)
        self.rto_at = t + (RTO_INITIAL_NS << (self.syn_tries - 1))

    def on_segment(self, t: int, pkt: tuple[Any, ...]) -> None:
        conn = self.conn
        if conn.dead:
            return
        if self.client:
            conn.capture(t, False, pkt)
        flags, off, length, ack, tsval, tsecr, sack = pkt
        if flags & TCP_RST:
            return
        if flags & TCP_SYN:
            self.ts_recent = tsval
            if not (flags & TCP_ACK):  # server: a SYN (first or retransmitted)
                if self.state == _CLOSED:
                    self.state = _SYN_RCVD
                    self.syn_t = t
                    self.syn_tries = 1
                    self.rto_at = t + RTO_INITIAL_NS
                    self._arm()
                if self.state == _SYN_RCVD:
                    self._xmit(t, TCP_SYN | TCP_ACK, -1, 0)
                return
            if self.state == _SYN_SENT:  # client: the SYN/ACK
                if self.syn_tries == 1:
                    self._rtt_sample(t, t - self.syn_t)
                self.state = _EST
                self.rto_at = NEVER
                self.send_ack(t)
                conn.established(t, self)
            elif self.state == _EST:
                self.send_ack(t)  # our ACK was lost
            return
        if self.state == _SYN_RCVD and (flags & TCP_ACK):
            if self.syn_tries == 1:
                self._rtt_sample(t, t - self.syn_t)
            self.state = _EST
            self.rto_at = NEVER
            conn.established(t, self)
        if self.state != _EST:
            return
        if off <= self.rcv_nxt:  # RFC 7323 sec 4.3: TS.Recent from in-window segments
            self.ts_recent = tsval
        if flags & TCP_ACK:
            self.on_ack(t, ack, sack, length == 0 and not (flags & TCP_FIN))
        if length:
            self.on_data(t, off, length)
        if flags & TCP_FIN and not self.fin_rcvd and off + length == self.rcv_nxt:
            self.fin_rcvd = 1
            conn.fin(t, self)
        self._arm()

    # ---- receive side

    def on_data(self, t: int, off: int, length: int) -> None:
        end = off + length
        nxt = self.rcv_nxt
        if end <= nxt:
            self.send_ack(t)  # a duplicate: ACK at once (RFC 9293 sec 3.10.7.4)
            return
        if off <= nxt:
            ooo = self.ooo
            filled = bool(ooo)
            nxt = end
            while ooo and ooo[0][0] <= nxt:
                b = ooo.pop(0)
                if b[1] > nxt:
                    nxt = b[1]
            self.rcv_nxt = nxt
            self.ack_pending += 1
            self.conn.progress(t, self)
            if not self.ack_pending:
                return  # the application's reply carried the ACK
            if filled or self.ack_pending >= 2 or self.quick > 0:
                if self.quick > 0:
                    self.quick -= 1
                self.send_ack(t)
            elif self.delack_at == NEVER:
                self.delack_at = t + DELACK_NS
            return
        # out of order: remember the block, ACK at once (RFC 5681 sec 4.2)
        ooo = self.ooo
        i = 0
        while i < len(ooo) and ooo[i][1] < off:
            i += 1
        if i < len(ooo) and ooo[i][0] <= end:
            b = ooo[i]
            if off < b[0]:
                b[0] = off
            if end > b[1]:
                b[1] = end
            while i + 1 < len(ooo) and ooo[i + 1][0] <= b[1]:
                nb = ooo.pop(i + 1)
                if nb[1] > b[1]:
                    b[1] = nb[1]
        else:
            ooo.insert(i, [off, end])
        self.last_ooo = off
        self.send_ack(t)

    # ---- send side: ACK processing, SACK scoreboard, RACK

    def _rtt_sample(self, t: int, r: int) -> None:
        if r <= 0:
            r = 1
        if self.srtt < 0:
            self.srtt = r
            self.rttvar = r // 2
        else:
            self.rttvar = (3 * self.rttvar + abs(self.srtt - r)) // 4
            self.srtt = (7 * self.srtt + r) // 8
        v = 4 * self.rttvar
        self.rto = self.srtt + (v if v > RTO_MIN_NS else RTO_MIN_NS)
        if r < self.min_rtt:
            self.min_rtt = r
        cc = self.cc
        if cc.cwnd < cc.ssthresh and cc.cwnd >= 16:
            # HyStart++ (RFC 9406 sec 4.2): leave slow start when this round's minimum RTT
            # exceeds the last round's by an eighth (clamped to 4..16 ms)
            self.hs_cnt += 1
            if r < self.hs_cur:
                self.hs_cur = r
            last = self.hs_last
            if self.hs_cnt >= 8 and last < NEVER:
                eta = last // 8
                eta = 4 * MS if eta < 4 * MS else (16 * MS if eta > 16 * MS else eta)
                if self.hs_cur >= last + eta:
                    cc.ssthresh = cc.cwnd

    def on_ack(self, t: int, ack: int, sack: tuple[tuple[int, int], ...] | None, pure: bool) -> None:
        if ack > self.snd_nxt:
            ack = self.snd_nxt  # the FIN's sequence number
        st = self.st
        seg_len = self.seg_len
        nseg = len(st)
        acked = 0
        newest = -1
        newest_tx = 0
        rtt_tx = -1
        progressed = ack > self.una_off
        if progressed:
            i = self.una
            seg_start = self.seg_start
            while i < nseg and seg_start[i] + seg_len[i] <= ack:
                s = st[i]
                if s == _SACKED:
                    self.sacked_out -= 1
                else:
                    if s == _OUT:
                        self.pipe -= seg_len[i]
                    acked += seg_len[i]
                    if self.seg_txn[i] > newest:
                        newest = self.seg_txn[i]
                        newest_tx = self.seg_tx[i]
                    if not self.seg_rx[i] and self.seg_tx[i] > rtt_tx:
                        rtt_tx = self.seg_tx[i]
                    if s == _OUT and i in self.retx_out:
                        self.retx_out.discard(i)
                st[i] = _ACKED
                i += 1
            self.una = i
            self.una_off = ack
            self.dupacks = 0
            self.backoff = 0
            self.tlp_done = False
        elif pure and ack == self.una_off and self.una < nseg:
            self.dupacks += 1
        if sack:
            seg_start = self.seg_start
            for s, e in sack:
                if e <= ack:
                    continue
                lo = bisect.bisect_left(seg_start, s, self.una, nseg)
                hi = bisect.bisect_left(seg_start, e, lo, nseg)
                k = hi - 1
                while k >= lo:
                    x = st[k]
                    if x == _SACKED or x == _ACKED:
                        break
                    if x == _OUT:
                        self.pipe -= seg_len[k]
                        acked += seg_len[k]
                        self.retx_out.discard(k)
                    st[k] = _SACKED
                    self.sacked_out += 1
                    if self.seg_txn[k] > newest:
                        newest = self.seg_txn[k]
                        newest_tx = self.seg_tx[k]
                    if not self.seg_rx[k] and self.seg_tx[k] > rtt_tx:
                        rtt_tx = self.seg_tx[k]
                    k -= 1
                top = k
                k = lo
                while k <= top:
                    x = st[k]
                    if x == _SACKED or x == _ACKED:
                        break
                    if x == _OUT:
                        self.pipe -= seg_len[k]
                        acked += seg_len[k]
                        self.retx_out.discard(k)
                    st[k] = _SACKED
                    self.sacked_out += 1
                    if self.seg_txn[k] > newest:
                        newest = self.seg_txn[k]
                        newest_tx = self.seg_tx[k]
                    k += 1
            if self.retx_out:
                # a retransmission that filled a hole between two SACK blocks sits inside the
                # merged block, where the scans above do not look
                for k in list(self.retx_out):
                    sk = seg_start[k]
                    for s, e in sack:
                        if s <= sk < e:
                            if st[k] == _OUT:
                                self.pipe -= seg_len[k]
                                acked += seg_len[k]
                                st[k] = _SACKED
                                self.sacked_out += 1
                                if self.seg_txn[k] > newest:
                                    newest = self.seg_txn[k]
                                    newest_tx = self.seg_tx[k]
                            self.retx_out.discard(k)
                            break
        if rtt_tx >= 0:
            self._rtt_sample(t, t - rtt_tx)
        if newest > self.rack_txn:
            self.rack_txn = newest
            self.rack_rtt = t - newest_tx
        if self.txlog and self.rack_txn >= 0 and self.txlog[0][1] < self.rack_txn:
            self._detect_losses(t)
        if self.in_rec and self.una_off >= self.rec_point:
            if not self.rto_state:
                self.cc.cwnd = self.cc.ssthresh
            self.in_rec = False
            self.rto_state = False
        if acked and (not self.in_rec or self.rto_state):
            self.cc.on_ack(t, acked / MSS, self.min_rtt if self.min_rtt < NEVER else 0)
        if self.una_off >= self.hs_round_end:
            if self.hs_cnt >= 8:
                self.hs_last = self.hs_cur if self.hs_cur < self.hs_last else self.hs_last
            self.hs_cur = NEVER
            self.hs_cnt = 0
            self.hs_round_end = self.snd_nxt
        if progressed:
            self._arm_retx_timer(t)
        self.push(t)

    def _detect_losses(self, t: int) -> None:
        """RACK (RFC 8985 sec 6.2): lost if sent before a delivered segment, one RTT ago.

        The reordering window is 0 in recovery or with 3 segments SACKed (the DupThresh rule),
        else min_rtt / 4 with a timer, as Linux does before it has seen reordering.
        """
        reo = 0 if (self.in_rec or self.sacked_out >= 3) else self.min_rtt // 4
        if reo >= NEVER // 4:
            reo = 0
        st = self.st
        seg_txn = self.seg_txn
        txlog = self.txlog
        lost = False
        while txlog:
            k, x = txlog[0]
            if st[k] != _OUT or seg_txn[k] != x:
                txlog.popleft()
                continue
            if x >= self.rack_txn:
                break
            due = self.seg_tx[k] + self.rack_rtt + reo
            if due > t:
                if due < self.reo_at:
                    self.reo_at = due
                break
            txlog.popleft()
            st[k] = _LOST
            self.pipe -= self.seg_len[k]
            self.retxq.append(k)
            self.retx_out.discard(k)
            lost = True
        if lost and not self.in_rec:
            # fast recovery (RFC 6675 sec 5): one reduction per window of data
            self.in_rec = True
            self.rto_state = False
            self.rec_point = self.snd_nxt
            self.cc.on_congestion()
            self._arm_retx_timer(t)

    def _arm_retx_timer(self, t: int) -> None:
        if self.una >= len(self.st):
            self.rto_at = NEVER
            return
        rto = self.rto << self.backoff
        if rto > RTO_MAX_NS:
            rto = RTO_MAX_NS
        if not self.in_rec and not self.tlp_done and self.srtt > 0:
            # tail loss probe (RFC 8985 sec 7.2)
            pto = 2 * self.srtt
            if len(self.st) - self.una == 1:
                alt = self.srtt * 3 // 2 + 200 * MS
                if alt > pto:
                    pto = alt
            if pto < 10 * MS:
                pto = 10 * MS
            if pto < rto:
                self.rto_at = t + pto
                self.rto_tlp = True
                return
        self.rto_at = t + rto
        self.rto_tlp = False

    def _tail_loss_probe(self, t: int) -> None:
        self.tlp_done = True
        if self.una >= len(self.st):
            return
        if self.snd_nxt < self.app_end and self.snd_nxt < self.una_off + self.peer_rwnd:
            off = self.snd_nxt
            while self.writes[0] <= off:
                self.writes.popleft()
            ln = min(MSS, self.writes[0] - off)
            self._new_seg(t, off, ln)
        else:
            k = len(self.st) - 1
            while k >= self.una and self.st[k] in (_SACKED, _ACKED):
                k -= 1
            if k >= self.una:
                if self.st[k] == _OUT:
                    self.pipe -= self.seg_len[k]
                self._send_seg(t, k, True)
        self._arm_retx_timer(t)

    def _timeout(self, t: int) -> None:
        """RTO (RFC 6298 sec 5.4-5.7, RFC 5681 sec 3.1): back off, everything outstanding lost."""
        if self.una >= len(self.st):
            return
        if not self.rto_state:
            self.cc.on_timeout()
        else:
            self.cc.cwnd = 1.0
        st = self.st
        self.retxq.clear()
        for k in range(self.una, len(st)):
            if st[k] == _OUT or st[k] == _LOST:
                st[k] = _LOST
                self.retxq.append(k)
        self.pipe = 0
        self.txlog.clear()
        self.retx_out.clear()
        self.in_rec = True
        self.rto_state = True
        self.rec_point = self.snd_nxt
        self.backoff += 1
        self.push(t)
        self._arm_retx_timer(t)


class _TcpConn(_Download):
    """A TLS-over-TCP download: handshake, ClientHello, server flight, request, response, FIN."""

    def __init__(self, sim: _Sim, role: str, sni: str, nbytes: int, cport: int,
                 th: Throttle | None) -> None:
        g = sim.g
        self.sim = sim
        self.role = role
        self.requested = nbytes
        self.cport = cport
        self.fc = _Censor(th)
        self.hello = tls_client_hello(sni, rng=g)
        self.fin_len = 80  # ChangeCipherSpec + Finished records (TLS 1.3 middlebox compat)
        self.req_len = int(g.integers(60, 160))  # the request in one application-data record
        self.client_stream = self.hello + b"\x14\x03\x03\x00\x01\x01\x17\x03\x03" + g.bytes(
            self.fin_len - 9) + b"\x17\x03\x03" + (self.req_len - 5).to_bytes(2, "big") + g.bytes(
            self.req_len - 5)
        self.flight = int(sim.sc.server_flight_bytes * (0.8 + 0.4 * float(g.random())))
        self.response = nbytes + 22 * ((nbytes + 16383) // 16384)  # TLS 1.3 record overhead
        self.c = _TcpEnd(sim, self, True)
        self.s = _TcpEnd(sim, self, False)
        self.c.peer = self.s
        self.s.peer = self.c
        self.c.peer_rwnd = self.s.rwnd
        self.s.peer_rwnd = self.c.rwnd
        self.done = self.aborted = self.dead = False
        self.t_first = self.t_last = self.t_finish = -1
        self.rx_bytes = 0
        self.abort_at = NEVER
        self.on_finish = lambda t: None

    def start(self, t: int, _: Any = None) -> None:
        self.hard_stop = t + int(self.sim.sc.max_download_s * NS)
        self._idle(t)
        self.c.connect(t)

    def _idle(self, t: int) -> None:
        a = t + int(self.sim.sc.idle_abort_s * NS)
        self.abort_at = a if a < self.hard_stop else self.hard_stop

    # ---- wire

    def send(self, t: int, end: _TcpEnd, pkt: tuple[Any, ...]) -> None:
        flags, length, sack = pkt[0], pkt[2], pkt[6]
        size = 52 + length + (0 if sack is None else 4 + 8 * len(sack)) + (8 if flags & TCP_SYN else 0)
        path = self.sim.path
        if end.client:
            self.capture(t, True, pkt)
            arr = path.up(t, self.fc, size)
        else:
            arr = path.down(t, self.fc, size)
        if arr >= 0:
            self.sim.at(arr, end.peer.recv, pkt)

    def capture(self, t: int, up: bool, pkt: tuple[Any, ...]) -> None:
        flags, off, length, ack, tsval, tsecr, sack = pkt
        me, peer = (self.c, self.s) if up else (self.s, self.c)
        me.ip_id = (me.ip_id + 1) & 0xFFFF
        seq = (me.isn + (0 if off < 0 else 1 + off)) & 0xFFFFFFFF
        ackw = (peer.isn + 1 + ack) & 0xFFFFFFFF if flags & TCP_ACK else 0
        opts: bytes | None = None
        if flags & TCP_SYN:
            # MSS, SACK-permitted, timestamps, NOP, window scale (Linux's order)
            opts = (struct.pack("!BBH", 2, 4, MSS_OPTION) + b"\x04\x02"
                    + struct.pack("!BBII", 8, 10, tsval, tsecr) + b"\x01" + bytes((3, 3, me.wscale)))
            win = 64240 if up else 65160
        else:
            if sack:
                opts = _TS_OPT.pack(1, 1, 8, 10, tsval, tsecr)
                blocks = b"".join(struct.pack("!II", (peer.isn + 1 + s) & 0xFFFFFFFF,
                                              (peer.isn + 1 + e) & 0xFFFFFFFF) for s, e in sack)
                opts += bytes((1, 1, 5, 2 + len(blocks))) + blocks
            win = min(me.rwnd >> me.wscale, 0xFFFF)
        if length:
            payload = (self.client_stream[off : off + length] if up
                       else self.sim.cap._fill(min(length, SNAPLEN_DOWN), off))
            if not up and off == 0:
                payload = b"\x16\x03\x03\x00\x7a\x02" + payload[6:]  # the ServerHello record
        else:
            payload = b""
        if up and length > len(payload):
            payload += bytes(length - len(payload))
        self.sim.cap.tcp(t, up, self.cport, me.ip_id, flags, seq, ackw, win, tsval, tsecr, opts, payload,
                         length)

    # ---- application (TLS 1.3 over TCP, HTTP/1.1 or /2 request)

    def established(self, t: int, end: _TcpEnd) -> None:
        if end.client:
            self.t_first = t
            end.write(t, len(self.hello))

    def progress(self, t: int, end: _TcpEnd) -> None:
        n = end.rcv_nxt
        if end.client:
            self._idle(t)
            self.t_last = t
            self.rx_bytes = n
            if end.app_end == len(self.hello) and n >= self.flight:
                end.write(t, self.fin_len)
                end.write(t, self.req_len)
            if n >= self.flight + self.response and not self.done:
                self.done = True
                self.t_finish = t
                end.close(t)
                self.abort_at = NEVER
                self.on_finish(t)
        else:
            if end.app_end == 0 and n >= len(self.hello):
                end.write(t, self.flight)
            if end.app_end == self.flight and n >= len(self.client_stream):
                end.write(t, self.response)

    def fin(self, t: int, end: _TcpEnd) -> None:
        if not end.client:
            end.close(t)
            end.rto_at = NEVER
        else:
            end.send_ack(t)

    def abort(self, t: int) -> None:
        """The client gives up (no progress for ``idle_abort_s``): RST, and the flow is over."""
        c = self.c
        tsval = (c.ts_off + t // MS) & 0xFFFFFFFF
        self.capture(t, True, (TCP_RST | TCP_ACK, c.snd_nxt, 0, c.rcv_nxt, tsval, c.ts_recent, None))
        self.dead = True
        self.aborted = True
        self.t_finish = t
        self.on_finish(t)


# ---------------------------------------------------------------------------- QUIC

_Q_INITIAL, _Q_FINISHED, _Q_ACK, _Q_CLOSE = 0, 1, 2, 3  # client -> server datagram kinds
_Q_FLIGHT, _Q_DATA = 0, 1  # server -> client


class _QuicConn(_Download):
    """A QUIC v1 download: real Initial, server flight, 1-RTT data with spin bit, NewReno/CUBIC."""

    def __init__(self, sim: _Sim, role: str, sni: str, nbytes: int, cport: int,
                 th: Throttle | None) -> None:
        g = sim.g
        sc = sim.sc
        self.sim = sim
        self.role = role
        self.requested = nbytes
        self.cport = cport
        self.fc = _Censor(th)
        self.initial, self.dcid, self.ccid = quic_client_initial(sni, rng=g)
        self.scid = g.bytes(8)
        self.dg = sc.quic_datagram
        total = int(sc.server_flight_bytes * (0.7 + 0.3 * float(g.random())))
        total = min(total, 3 * len(self.initial))  # anti-amplification (RFC 9000 sec 8.1)
        sizes: list[int] = []
        while total > 0:
            n = min(self.dg, total) if sizes else self.dg
            sizes.append(max(n, 200))
            total -= n
        self.flight_sizes = sizes
        self.response = nbytes + int(g.integers(60, 200))  # HTTP/3 HEADERS + DATA frame headers
        self.chunk = self.dg - QUIC_OVERHEAD
        self.n_chunks = -(-self.response // self.chunk)
        # server state
        self.s_hs = 0  # 0 waiting, 1 flight sent, 2 established
        self.s_flight_t = -1
        self.s_tries = 0
        self.s_spin = 0
        self.s_ip = int(g.integers(0, 1 << 16))
        self.pn = 0
        self.p_time: list[int] = []
        self.p_size: list[int] = []
        self.p_chunk: list[int] = []
        self.p_st: list[int] = []
        self.ch_done = bytearray(self.n_chunks)
        self.next_chunk = 0
        self.retxq: deque[int] = deque()
        self.inflight = 0
        self.largest_acked = -1
        self.loss_ptr = 0
        self.loss_at = NEVER
        self.recovery_t = -1
        self.cc = _Cc(sc.congestion == "cubic")
        self.srtt = -1
        self.rttvar = 0
        self.latest_rtt = 0
        self.min_rtt = NEVER
        self.pto_count = 0
        self.pto_at = NEVER
        self.last_eliciting = 0
        self.tokens = 10.0 * self.dg
        self.tok_t = 0
        self.pace_at = NEVER
        self.s_ev_at = NEVER
        self.s_tok = 0
        # client state
        self.c_hs = 0  # 0 Initial sent, 1 Finished sent
        self.c_tries = 0
        self.c_got: set[int] = set()
        self.c_spin = 0
        self.c_pn = 1
        self.c_ip = int(g.integers(0, 1 << 16))
        self.c_ranges: list[list[int]] = []
        self.c_largest = -1
        self.c_pending = 0
        self.c_ack_at = NEVER
        self.c_hs_at = NEVER
        self.c_ev_at = NEVER
        self.c_tok = 0
        self.c_chunks = bytearray(self.n_chunks)
        self.c_nchunks = 0
        self.abort_at = NEVER
        self.done = self.aborted = self.dead = False
        self.t_first = self.t_last = self.t_finish = -1
        self.rx_bytes = 0
        self.on_finish = lambda t: None

    # ---- wire

    def _up(self, t: int, kind: int, size: int, head: bytes, arg: Any) -> None:
        self.c_ip = (self.c_ip + 1) & 0xFFFF
        self.sim.cap.udp(t, True, self.cport, self.c_ip, head, size)
        arr = self.sim.path.up(t, self.fc, 28 + size)
        if arr >= 0:
            self.sim.at(arr, self._s_recv, (kind, arg))

    def _down(self, t: int, kind: int, size: int, head: bytes, arg: Any) -> None:
        arr = self.sim.path.down(t, self.fc, 28 + size)
        if arr >= 0:
            self.sim.at(arr, self._c_recv, (kind, size, head, arg))

    def _long_head(self, ptype: int, dcid: bytes, scid: bytes, length: int, first_low: int) -> bytes:
        # RFC 9000 sec 17.2: form 1, fixed 1, type, (protected) reserved + pn length
        head = bytes((0xC0 | (ptype << 4) | (first_low & 0x0F),)) + b"\x00\x00\x00\x01"
        head += bytes((len(dcid),)) + dcid + bytes((len(scid),)) + scid
        if ptype == 0:
            head += b"\x00"  # token length
        return head + struct.pack("!H", 0x4000 | min(length, 0x3FFF))

    def _short_head(self, spin: int, dcid: bytes, low: int) -> bytes:
        # RFC 9000 sec 17.3.1: form 0, fixed 1, spin, then protected bits
        return bytes((0x40 | (spin << 5) | (low & 0x1F),)) + dcid

    # ---- client

    def start(self, t: int, _: Any = None) -> None:
        self.hard_stop = t + int(self.sim.sc.max_download_s * NS)
        self._idle(t)
        self.t_first = t
        self._c_send_initial(t)

    def _idle(self, t: int) -> None:
        a = t + int(self.sim.sc.idle_abort_s * NS)
        self.abort_at = a if a < self.hard_stop else self.hard_stop

    def _c_send_initial(self, t: int) -> None:
        self.c_tries += 1
        self._up(t, _Q_INITIAL, len(self.initial), self.initial, None)
        self.c_hs_at = t + (QUIC_INITIAL_PTO_NS << (self.c_tries - 1)) if self.c_tries < 6 else NEVER
        self._c_arm()

    def _c_send_finished(self, t: int) -> None:
        # Initial (ACK) + Handshake (ACK, Finished) + 1-RTT (request), padded to 1200 bytes
        low = int(self.sim.u() * 256)
        head = self._long_head(0, self.scid, self.ccid, 1200 - 60, low)
        self._up(t, _Q_FINISHED, max(1200, len(self.initial)), head, None)
        self.c_hs = 1

    def _c_send_ack(self, t: int) -> None:
        ranges = tuple((r[0], r[1]) for r in self.c_ranges[:32])
        size = 1 + 8 + 2 + 16 + 5 + 3 * len(ranges) + (2 if self.c_largest > 16383 else 0)
        low = int(self.sim.u() * 32)
        self._up(t, _Q_ACK, size, self._short_head(self.c_spin, self.scid, low), (ranges, self.c_spin))
        self.c_pn += 1
        self.c_pending = 0
        self.c_ack_at = NEVER

    def _c_arm(self) -> None:
        d = self.c_ack_at
        if self.c_hs_at < d:
            d = self.c_hs_at
        if self.abort_at < d:
            d = self.abort_at
        if d < self.c_ev_at:
            self.c_ev_at = d
            self.c_tok += 1
            self.sim.at(d, self._c_timer, self.c_tok)

    def _c_timer(self, t: int, tok: int) -> None:
        if tok != self.c_tok or self.dead:
            return
        self.c_ev_at = NEVER
        if self.abort_at <= t:
            self.abort(t)
            return
        if self.c_ack_at <= t:
            self._c_send_ack(t)
        if self.c_hs_at <= t:
            self.c_hs_at = NEVER
            if self.c_hs == 0 and not self.c_got:
                self._c_send_initial(t)
        self._c_arm()

    def _c_recv(self, t: int, arg: tuple[Any, ...]) -> None:
        if self.dead:
            return
        kind, size, head, x = arg
        self.s_ip = (self.s_ip + 1) & 0xFFFF
        self.sim.cap.udp(t, False, self.cport, self.s_ip, head, size)
        self.rx_bytes += size
        self.t_last = t
        if kind == _Q_FLIGHT:
            repeat = x in self.c_got
            self.c_got.add(x)
            self.c_hs_at = NEVER
            if len(self.c_got) == len(self.flight_sizes) and (self.c_hs == 0 or (repeat and x == 0)):
                # the flight is complete, or the server repeated it (our Finished was lost)
                self._c_send_finished(t)
            self._c_arm()
            return
        pn, chunk, spin = x
        self._idle(t)
        # RFC 9000 sec 17.4: the client sets the opposite of the last value it received
        self.c_spin = 1 - spin
        gap = pn > self.c_largest + 1
        if self.c_ranges and pn == self.c_ranges[0][1] + 1:
            self.c_ranges[0][1] = pn
        else:
            self.c_ranges.insert(0, [pn, pn])
            if len(self.c_ranges) > 64:
                self.c_ranges.pop()
        if pn > self.c_largest:
            self.c_largest = pn
        if chunk >= 0 and not self.c_chunks[chunk]:
            self.c_chunks[chunk] = 1
            self.c_nchunks += 1
        if self.c_nchunks == self.n_chunks and not self.done:
            self.done = True
            self.t_finish = t
            self._c_send_ack(t)
            self._up(t, _Q_CLOSE, 40, self._short_head(self.c_spin, self.scid, 0), None)
            self.abort_at = NEVER
            self.on_finish(t)
            self.dead = True
            return
        # RFC 9000 sec 13.2: ACK every second ack-eliciting packet, at once on a gap
        self.c_pending += 1
        if gap or self.c_pending >= 2:
            self._c_send_ack(t)
        elif self.c_ack_at == NEVER:
            self.c_ack_at = t + QUIC_MAX_ACK_DELAY_NS
        self._c_arm()

    # ---- server

    def _s_arm(self) -> None:
        d = self.pto_at
        if self.loss_at < d:
            d = self.loss_at
        if self.pace_at < d:
            d = self.pace_at
        if d < self.s_ev_at:
            self.s_ev_at = d
            self.s_tok += 1
            self.sim.at(d, self._s_timer, self.s_tok)

    def _s_timer(self, t: int, tok: int) -> None:
        if tok != self.s_tok or self.dead:
            return
        self.s_ev_at = NEVER
        if self.pace_at <= t:
            self.pace_at = NEVER
            self._s_push(t)
        if self.loss_at <= t:
            self.loss_at = NEVER
            self._s_detect(t)
            self._s_push(t)
        if self.pto_at <= t:
            self.pto_at = NEVER
            if self.s_hs == 1:
                self.s_tries += 1
                if self.s_tries < 7:
                    self._s_send_flight(t)
            elif self.s_hs == 2:
                self._s_pto(t)
        self._s_arm()

    def _s_send_flight(self, t: int) -> None:
        u = self.sim.u
        for i, size in enumerate(self.flight_sizes):
            head = self._long_head(0 if i == 0 else 2, self.ccid, self.scid, size - 30, int(u() * 16))
            self._down(t, _Q_FLIGHT, size, head, i)
        self.s_flight_t = t
        self.pto_at = t + (QUIC_INITIAL_PTO_NS << (self.s_tries - 1))

    def _s_recv(self, t: int, arg: tuple[int, Any]) -> None:
        if self.dead:
            return
        kind, x = arg
        if kind == _Q_INITIAL:
            if self.s_hs == 0:
                self.s_hs = 1
                self.s_tries = 1
                self._s_send_flight(t)
                self._s_arm()
            elif self.s_hs == 1:
                self._s_send_flight(t)  # the client repeated its Initial: our flight was lost
            return
        if kind == _Q_FINISHED:
            if self.s_hs == 1:
                self.s_hs = 2
                self.pto_at = NEVER
                if self.s_tries == 1:
                    self._s_rtt(t - self.s_flight_t)
                self.tok_t = t
                self._s_push(t)
                self._s_arm()
            return
        if kind == _Q_ACK and self.s_hs == 2:
            ranges, spin = x
            self.s_spin = spin  # RFC 9000 sec 17.4: the server reflects the client's spin
            self._s_on_ack(t, ranges)
            self._s_arm()

    def _s_rtt(self, r: int) -> None:
        # RFC 9002 sec 5.3
        if r <= 0:
            r = 1
        self.latest_rtt = r
        if r < self.min_rtt:
            self.min_rtt = r
        if self.srtt < 0:
            self.srtt = r
            self.rttvar = r // 2
        else:
            self.rttvar = (3 * self.rttvar + abs(self.srtt - r)) // 4
            self.srtt = (7 * self.srtt + r) // 8

    def _s_push(self, t: int) -> None:
        if self.s_hs != 2 or self.dead:
            return
        cw = self.cc.cwnd * self.dg
        srtt = self.srtt if self.srtt > 0 else 333 * MS
        rate = 1.25 * cw / srtt  # RFC 9002 sec 7.7: pace at 1.25 cwnd per RTT (bytes/ns)
        burst = 10.0 * self.dg
        tokens = self.tokens + (t - self.tok_t) * rate
        if tokens > burst:
            tokens = burst
        self.tok_t = t
        while self.inflight + self.dg <= cw:
            if tokens < self.dg:
                wait = int((self.dg - tokens) / rate) + 1
                self.pace_at = t + (wait if wait > MS else MS)
                break
            chunk = -1
            while self.retxq:
                c = self.retxq.popleft()
                if not self.ch_done[c]:
                    chunk = c
                    break
            if chunk < 0:
                if self.next_chunk >= self.n_chunks:
                    break
                chunk = self.next_chunk
                self.next_chunk += 1
            size = self._chunk_size(chunk)
            tokens -= size
            self._s_send(t, chunk, size)
        self.tokens = tokens

    def _chunk_size(self, chunk: int) -> int:
        if chunk == self.n_chunks - 1:
            rest = self.response - chunk * self.chunk
            return rest + QUIC_OVERHEAD
        return self.dg

    def _s_send(self, t: int, chunk: int, size: int) -> None:
        pn = self.pn
        self.pn = pn + 1
        self.p_time.append(t)
        self.p_size.append(size)
        self.p_chunk.append(chunk)
        self.p_st.append(_OUT)
        self.inflight += size
        self.last_eliciting = t
        if self.pto_at == NEVER:
            self._s_arm_pto()
        head = self._short_head(self.s_spin, self.ccid, pn)
        self._down(t, _Q_DATA, size, head, (pn, chunk, self.s_spin))

    def _s_arm_pto(self) -> None:
        if self.inflight <= 0:
            self.pto_at = NEVER
            return
        srtt = self.srtt if self.srtt > 0 else 333 * MS
        v = 4 * self.rttvar
        pto = srtt + (v if v > MS else MS) + QUIC_MAX_ACK_DELAY_NS
        self.pto_at = self.last_eliciting + (pto << self.pto_count)

    def _s_on_ack(self, t: int, ranges: tuple[tuple[int, int], ...]) -> None:
        st = self.p_st
        sizes = self.p_size
        acked = 0
        newest = -1
        in_rec_before = self.recovery_t
        grow = 0
        for lo, hi in ranges:
            k = hi
            while k >= lo:
                x = st[k]
                if x == _ACKED:
                    break
                if x == _OUT:
                    self.inflight -= sizes[k]
                    acked += sizes[k]
                    if self.p_time[k] > in_rec_before:
                        grow += sizes[k]
                st[k] = _ACKED
                self.ch_done[self.p_chunk[k]] = 1
                if k > newest:
                    newest = k
                k -= 1
        if newest > self.largest_acked:
            self.largest_acked = newest
            self._s_rtt(t - self.p_time[newest])
        if newest >= 0:
            self.pto_count = 0
            # spin (RFC 9000 sec 17.4): the server reflects the client's last value; the ACK
            # carries it as its short header's spin bit
        self._s_detect(t)
        if grow:
            self.cc.on_ack(t, grow / self.dg, self.min_rtt if self.min_rtt < NEVER else 0)
        self._s_arm_pto()
        self._s_push(t)

    def _s_detect(self, t: int) -> None:
        """RFC 9002 sec 6.1: lost if 3 packets newer were acked, or sent 9/8 RTT before."""
        st = self.p_st
        la = self.largest_acked
        rtt = self.srtt if self.srtt > self.latest_rtt else self.latest_rtt
        delay = rtt * 9 // 8
        if delay < MS:
            delay = MS
        k = self.loss_ptr
        lost_newest = -1
        self.loss_at = NEVER
        while k < la:
            x = st[k]
            if x != _OUT:
                k += 1
                continue
            if la - k >= QUIC_PACKET_THRESHOLD or self.p_time[k] <= t - delay:
                st[k] = _LOST
                self.inflight -= self.p_size[k]
                self.retxq.append(self.p_chunk[k])
                if self.p_time[k] > lost_newest:
                    lost_newest = self.p_time[k]
                k += 1
                continue
            self.loss_at = self.p_time[k] + delay
            break
        self.loss_ptr = k
        if lost_newest > self.recovery_t:
            # RFC 9002 sec 7.3.2: one reduction per round trip
            self.recovery_t = t
            self.cc.on_congestion()

    def _s_pto(self, t: int) -> None:
        """RFC 9002 sec 6.2.4: send two probes, ignoring cwnd, and back off."""
        self.pto_count += 1
        for _ in range(2):
            chunk = -1
            k = self.loss_ptr
            while k < self.pn:
                if self.p_st[k] == _OUT and not self.ch_done[self.p_chunk[k]]:
                    chunk = self.p_chunk[k]
                    break
                k += 1
            if chunk < 0:
                while self.retxq:
                    c = self.retxq.popleft()
                    if not self.ch_done[c]:
                        chunk = c
                        break
            if chunk < 0 and self.next_chunk < self.n_chunks:
                chunk = self.next_chunk
                self.next_chunk += 1
            if chunk < 0:
                break
            self._s_send(t, chunk, self._chunk_size(chunk))
        self.pto_at = NEVER
        self._s_arm_pto()

    def abort(self, t: int) -> None:
        self.c_ip = (self.c_ip + 1) & 0xFFFF
        self.sim.cap.udp(t, True, self.cport, self.c_ip, self._short_head(self.c_spin, self.scid, 0), 40)
        self.dead = True
        self.aborted = True
        self.t_finish = t
        self.on_finish(t)


# ---------------------------------------------------------------------------- scenario runner


def simulate(scenario: Scenario, *, rng: int | np.random.Generator | None = None) -> SimResult:
    """Run one scenario: control and target downloads, captured at the client.

    Parameters
    ----------
    scenario : Scenario
        The path, the throttle and the downloads.
    rng : int or numpy.random.Generator, optional
        Source of all randomness; default ``scenario.seed``. Equal seeds give equal bytes.

    Returns
    -------
    SimResult
        The pcap bytes, the ground truth and run statistics.
    """
    _scenario_iv(scenario)
    g = _rng_iv(rng, scenario.seed)
    sc = scenario
    net = int(g.integers(0, 1 << 16))
    client_ip = bytes((10, net >> 8, net & 0xFF, int(g.integers(2, 250))))
    server_ip = bytes((203, 0, 113, int(g.integers(1, 255)))) if g.random() < 0.5 else bytes(
        (198, 51, 100, int(g.integers(1, 255))))
    cap = _Capture(g, client_ip, server_ip)
    sim = _Sim(sc, g, cap)
    ports = g.choice(np.arange(32768, 61000), size=2, replace=False)
    cls: type[_TcpConn] | type[_QuicConn] = _TcpConn if sc.transport == "tcp" else _QuicConn
    control = cls(sim, "control", sc.control_sni, sc.control_bytes, int(ports[0]), None)
    target = cls(sim, "target", sc.target_sni, sc.target_bytes, int(ports[1]), sc.throttle)
    first, second = (control, target) if sc.order == "control_first" else (target, control)
    t0 = T0_NS + int(g.integers(0, 10**8)) * NS + int(g.integers(0, NS))
    gap = int(sc.gap_ms * MS)
    tail = int(sc.rtt_ms * MS) + 50 * MS

    def first_done(t: int) -> None:
        sim.at(t + gap, second.start)

    def second_done(t: int) -> None:
        sim.stop_at = t + tail  # room for the FIN exchange

    first.on_finish = first_done
    second.on_finish = second_done
    sim.at(t0, first.start)
    sim.stop_at = t0 + 2 * int(sc.max_download_s * NS) + gap
    sim.run()
    for d in (first, second):
        if d.t_finish < 0:
            d.t_finish = sim.now
    pcap = cap.pcap()
    th = sc.throttle
    throttled = th is not None
    truth = GroundTruth(
        kind=sc.kind or _kind_of(sc),
        transport=sc.transport,
        target_sni=sc.target_sni,
        control_sni=sc.control_sni,
        throttled=throttled,
        mechanism=th.mechanism if th is not None else "none",
        rate_bps=th.rate_bps if th is not None else None,
        bucket_bytes=th.bucket_bytes if th is not None else None,
        queue_bytes=th.queue_bytes if th is not None else None,
        onset_bytes=(th.stall_bytes if th.mechanism == "stall" else th.onset_bytes) if th is not None else None,
        stall_bytes=th.stall_bytes if th is not None else None,
        whole_link=sc.bottleneck_bps is not None,
        link_rate_bps=sc.bottleneck_bps,
        loss=sc.loss,
        jitter_ms=sc.jitter_ms,
        rtt_ms=sc.rtt_ms,
        capacity_bps=sc.capacity_bps,
        bytes_requested={"target": sc.target_bytes, "control": sc.control_bytes},
        bytes_received={"target": target.rx_bytes, "control": control.rx_bytes},
        completed={"target": target.done, "control": control.done},
        goodput_bps={"target": target.goodput(), "control": control.goodput()},
        first_action_bytes=target.fc.first_action if target.fc.first_action >= 0 else None,
        throttle_drops=target.fc.drops,
        seed=sc.seed if rng is None else -1,
    )
    path = sim.path
    stats = SimStats(
        events=sim.events,
        packets=len(cap.records),
        sim_seconds=(sim.now - t0) / 1e9,
        drops={"loss": path.lost, "access": path.access.drops,
               "bottleneck": 0 if path.link is None else path.link.drops,
               "throttle": target.fc.drops},
    )
    return SimResult(pcap=pcap, truth=truth, scenario=sc, stats=stats)


def _kind_of(sc: Scenario) -> str:
    if sc.throttle is not None:
        return sc.throttle.mechanism
    if sc.bottleneck_bps is not None:
        return "whole_link"
    return "lossy" if sc.loss > 0 else "clean"


# ---------------------------------------------------------------------------- the grid


def clean_goodput_estimate(rtt_ms: float, capacity_bps: float, nbytes: int = 1_500_000, *,
                           transport: str = "tcp") -> float:
    """Rough goodput (bit/s) of a clean download, as ``flows`` measures it (from the ClientHello).

    Two round trips of handshake and request, then slow start from 10 packets, doubling per
    round trip until the window covers the path's bandwidth-delay product.
    """
    rtt = rtt_ms / 1e3
    pkt = MSS if transport == "tcp" else 1200
    bdp = capacity_bps * rtt / 8
    w = INITIAL_WINDOW * pkt
    left = float(nbytes)
    t = 2 * rtt if transport == "tcp" else 1.5 * rtt
    while left > 0:
        if w >= bdp:
            t += left * 8 / capacity_bps
            break
        left -= w
        t += rtt
        w *= 2
    return nbytes * 8 / t


def scenario_grid(n: int = 1000, *, rng: int | np.random.Generator) -> list[Scenario]:
    """``n`` seeded scenarios covering clean, lossy, whole-link, policing, shaping and stall.

    Mix (stratified, then shuffled): clean 13 %, lossy 13 % (1 % loss, 10 ms jitter),
    whole-link 14 % (1-8 Mbit/s for every flow), policing 24 % and shaping 24 % (rates
    log-uniform from 100 kbit/s to a quarter of the estimated clean goodput; half with an onset
    of 30-200 KB; policer buckets 4-100 KB, shaper queues 100-500 ms of the rate), stall 12 %
    (16-20 KB). RTT 10-200 ms log-uniform, TCP 60 % / QUIC 40 %, path capacity 20-200 Mbit/s.
    Throttled targets download ``onset + bucket + rate x 8-15 s`` (at most 1.5 MB), so a
    130 kbit/s target lasts at most ~20 s; controls (and unthrottled targets) download what the
    path's clean goodput delivers in 1 s + 15 RTTs (1.5-8 MB), so that they leave slow start.
    The bytes are recorded in the scenario.
    """
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    g = _rng_iv(rng)
    weights = (("clean", 13), ("lossy", 13), ("whole_link", 14), ("policing", 24), ("shaping", 24),
               ("stall", 12))
    kinds: list[str] = []
    for name, w in weights:
        kinds += [name] * int(round(n * w / 100))
    while len(kinds) < n:
        kinds.append(weights[len(kinds) % len(weights)][0])
    kinds = [kinds[i] for i in g.permutation(len(kinds))[:n]]
    out = []
    for kind in kinds:
        out.append(_grid_case(kind, g))
    return out


def _loguniform(g: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(g.uniform(math.log(lo), math.log(hi))))


def _grid_case(kind: str, g: np.random.Generator) -> Scenario:
    transport = "tcp" if g.random() < 0.6 else "quic"
    rtt = round(_loguniform(g, 10, 200), 1)
    capacity = round(_loguniform(g, 20e6, 200e6), -5)
    jitter = round(float(g.uniform(0, min(2.0, rtt / 4))), 2)
    loss = 0.0
    bottleneck = None
    bq = 65536
    th: Throttle | None = None
    nbytes = 1_500_000
    if kind == "lossy":
        loss, jitter = 0.01, 10.0
        rtt = max(rtt, 20.0)
    elif kind == "whole_link":
        bottleneck = round(_loguniform(g, 1e6, 8e6), -4)
        bq = int(_loguniform(g, 16384, 131072))
    elif kind in ("policing", "shaping"):
        clean = clean_goodput_estimate(rtt, capacity, transport=transport)
        hi = max(clean / 4, 150e3)
        rate = round(_loguniform(g, 100e3, hi), -3)
        onset = int(g.uniform(30e3, 200e3)) if g.random() < 0.5 else 0
        if kind == "policing":
            bucket = int(_loguniform(g, 4096, 100e3))
            th = Throttle.police(rate, bucket, onset_bytes=onset)
        else:
            bucket = int(g.uniform(3000, 16384))
            queue = max(int(rate / 8 * g.uniform(0.1, 0.5)), 6000)
            th = Throttle.shape(rate, bucket, queue, onset_bytes=onset)
        seconds = float(g.uniform(8, 15))
        nbytes = int(min(1_500_000, onset + bucket + rate / 8 * seconds))
    elif kind == "stall":
        th = Throttle.stall(int(g.uniform(16e3, 20e3)))
    # controls last about 1 s + 15 RTTs at the path's clean goodput, so that they leave slow
    # start (a live check sizes its controls the same way); unthrottled targets match them
    ref = min(capacity, bottleneck or capacity)
    control_bytes = int(min(8e6, max(1.5e6, clean_goodput_estimate(rtt, ref, transport=transport)
                                     / 8 * (1.0 + 15 * rtt / 1e3))))
    if th is None:
        nbytes = control_bytes
    return Scenario(
        transport=transport,
        target_sni=str(g.choice(TARGET_SNIS)),
        control_sni=str(g.choice(CONTROL_SNIS)),
        rtt_ms=rtt,
        jitter_ms=jitter,
        loss=loss,
        capacity_bps=capacity,
        bottleneck_bps=bottleneck,
        bottleneck_queue_bytes=bq,
        throttle=th,
        target_bytes=nbytes,
        control_bytes=control_bytes,
        congestion="cubic" if g.random() < 0.75 else "reno",
        order="control_first" if g.random() < 0.8 else "target_first",
        gap_ms=round(float(g.uniform(200, 1500)), 1),
        quic_datagram=int(g.choice([1200, 1252, 1350])),
        server_flight_bytes=int(g.uniform(2500, 5000)),
        kind=kind,
        seed=int(g.integers(0, 2**63 - 1)),
    )


def grid_mix(scenarios: Sequence[Scenario]) -> dict[str, dict[str, int]]:
    """Counts of the grid's cases by kind, transport, and throttled or not."""
    mix: dict[str, dict[str, int]] = {"kind": {}, "transport": {}, "onset": {}}
    for sc in scenarios:
        k = sc.kind or _kind_of(sc)
        mix["kind"][k] = mix["kind"].get(k, 0) + 1
        mix["transport"][sc.transport] = mix["transport"].get(sc.transport, 0) + 1
        if sc.throttle is not None and sc.throttle.mechanism != "stall":
            o = "with_onset" if sc.throttle.onset_bytes else "from_start"
            mix["onset"][o] = mix["onset"].get(o, 0) + 1
    return mix

