"""The censor: a userspace Ethernet bridge that does DPI on the SNI and throttles matched flows.

Two layers, in the spirit of aioquic's "bring your own I/O":

* :class:`CensorCore` is sans-I/O. It is handed frames with a direction and ``now_ns`` and
  answers "forward now", "dropped" or "queued"; queued frames come back from
  :meth:`CensorCore.pop_due` when their time has come. It never reads the clock, so unit tests
  drive it with synthetic frames and a fake time line.
* :func:`run_bridge` is the I/O loop: two AF_PACKET sockets (one per veth end), ``select`` with
  a microsecond timeout set by the next deadline, ``recv_into`` a preallocated buffer and
  ``send`` of a memoryview for frames that pass untouched (no copy on the fast path).

Per frame, in order (each direction separately; sizes are IP packet lengths in bytes):

1. random loss with probability ``link.loss`` (IP packets only; ARP is never lost);
2. per flow (TCP/UDP 5-tuple): DPI of the client's first bytes (TLS ClientHello SNI over TCP,
   QUIC Initial SNI over UDP), then, for flows matched by a rule and past its onset, a policer
   (token bucket, excess dropped) or a shaper (token bucket feeding a FIFO of ``queue_bytes``,
   excess delayed, overflow dropped);
3. the optional link rate: a token-bucket FIFO of ``limit_bytes`` per direction;
4. one-way delay plus uniform jitter in [-jitter, +jitter]; a frame never leaves before the one
   ahead of it in the same direction (no reordering), as on a real serial link.

DPI shares the parsers of :mod:`keepiton_throttle.protocols` with the analysis pipeline:
``first-segment`` looks only at the first client data segment (TCP) or datagram (UDP), so a
ClientHello split across segments evades it; ``reassemble`` reassembles the client's stream
(TCP offsets from the SYN's ISN) or collects Initial datagrams until the ClientHello is whole.
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import random
import select
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from .profiles import Profile, RuleSpec, profile_from_dict

__all__ = [
    "DOWN",
    "DROP",
    "FORWARD",
    "QUEUED",
    "UP",
    "CensorCore",
    "Policer",
    "Shaper",
    "run_bridge",
]

UP = 0  # client -> server (frames arriving on the censor's client-side interface)
DOWN = 1  # server -> client

FORWARD = 0
DROP = 1
QUEUED = 2

# DPI gives up on a flow (verdict "not matched") after this much client data without a whole
# ClientHello: real DPI boxes keep per-flow state for a few packets only.
DPI_MAX_BYTES = 16384
DPI_MAX_SEGMENTS = 16
DPI_MAX_DATAGRAMS = 8

FLOW_IDLE_NS = 300 * 10**9
MAX_FLOWS = 65536
MAX_LINE_BYTES = 64 << 20  # frames waiting in one direction's delay line (bytes)
RECENT_FLOWS = 256  # flows kept in the stats file

NS = 1_000_000_000

_PENDING = 0
_MATCHED = 1
_CLEAN = 2  # DPI decided: no rule applies
_STATE_NAMES = {_PENDING: "pending", _MATCHED: "matched", _CLEAN: "not-matched"}


class Policer:
    """Token bucket that drops the excess (RFC 2697-style single rate, one colour).

    ``rate_bps`` in bit/s, ``bucket_bytes`` in bytes; the bucket starts full.
    """

    __slots__ = ("rate_Bpns", "bucket", "tokens", "t_last", "dropped", "passed")

    def __init__(self, rate_bps: float, bucket_bytes: int, *, now_ns: int) -> None:
        self.rate_Bpns = rate_bps / 8 / NS
        self.bucket = float(bucket_bytes)
        self.tokens = float(bucket_bytes)
        self.t_last = now_ns
        self.dropped = 0
        self.passed = 0

    def admit(self, size: int, now_ns: int) -> bool:
        """True if a packet of ``size`` bytes conforms (and takes its tokens), else False."""
        tokens = self.tokens + (now_ns - self.t_last) * self.rate_Bpns
        if tokens > self.bucket:
            tokens = self.bucket
        self.t_last = now_ns
        if tokens >= size:
            self.tokens = tokens - size
            self.passed += size
            return True
        self.tokens = tokens
        self.dropped += size
        return False


class Shaper:
    """Token bucket feeding a FIFO: packets wait for tokens; a full FIFO drops.

    ``rate_bps`` in bit/s; ``bucket_bytes`` (burst) and ``queue_bytes`` (FIFO limit) in bytes.
    :meth:`schedule` returns the departure time (ns) of a packet arriving at ``now_ns``, or -1
    if it does not fit. With a standing queue the queueing delay is about
    ``queue_bytes * 8 / rate_bps`` seconds.
    """

    __slots__ = ("rate_Bpns", "bucket", "queue", "t0", "tok0", "backlog", "pending", "dropped", "passed")

    def __init__(self, rate_bps: float, bucket_bytes: int, queue_bytes: int, *, now_ns: int) -> None:
        self.rate_Bpns = rate_bps / 8 / NS
        self.bucket = float(bucket_bytes)
        self.queue = queue_bytes
        self.t0 = now_ns  # time of the last departure; tok0 tokens were left then
        self.tok0 = float(bucket_bytes)
        self.backlog = 0  # bytes scheduled but not yet departed
        self.pending: deque[tuple[int, int]] = deque()
        self.dropped = 0
        self.passed = 0

    def schedule(self, size: int, now_ns: int) -> int:
        pending = self.pending
        while pending and pending[0][0] <= now_ns:
            self.backlog -= pending.popleft()[1]
        if self.backlog + size > self.queue:
            self.dropped += size
            return -1
        start = now_ns if now_ns > self.t0 else self.t0
        tokens = self.tok0 + (start - self.t0) * self.rate_Bpns
        if tokens > self.bucket:
            tokens = self.bucket
        if tokens >= size:
            depart = start
            tokens -= size
        else:
            depart = start + int((size - tokens) / self.rate_Bpns) + 1
            tokens = 0.0
        self.t0 = depart
        self.tok0 = tokens
        pending.append((depart, size))
        self.backlog += size
        self.passed += size
        return depart


class _Flow:
    __slots__ = (
        "proto", "client", "server", "first_ns", "last_ns", "bytes", "packets", "state", "sni",
        "rule", "isn", "segs", "dpi_bytes", "dpi_count", "buckets", "error", "drops",
    )

    def __init__(self, proto: int, client: tuple[str, int], server: tuple[str, int], now_ns: int) -> None:
        self.proto = proto
        self.client = client
        self.server = server
        self.first_ns = now_ns
        self.last_ns = now_ns
        self.bytes = 0
        self.packets = 0
        self.state = _PENDING
        self.sni: str | None = None
        self.rule: RuleSpec | None = None
        self.isn: int | None = None
        self.segs: list[Any] = []
        self.dpi_bytes = 0
        self.dpi_count = 0
        self.buckets: list[Policer | Shaper | None] = [None, None]
        self.error: str | None = None
        self.drops = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "proto": "tcp" if self.proto == 6 else "udp",
            "client": list(self.client),
            "server": list(self.server),
            "sni": self.sni,
            "dpi": _STATE_NAMES[self.state],
            "dpi_error": self.error,
            "rule": None if self.rule is None else list(self.rule.patterns),
            "action": None if self.rule is None else self.rule.action,
            "bytes": self.bytes,
            "packets": self.packets,
            "dropped_bytes": self.drops,
        }


def _addr(raw: bytes) -> str:
    return socket.inet_ntoa(raw)


class CensorCore:
    """The censor's decisions, without I/O or clock (``now_ns`` is passed in, int64 ns).

    Parameters
    ----------
    profile : Profile
        What to do (see :mod:`keepiton_throttle.testbed.profiles`).
    now_ns : int
        Start time; token buckets start full at this time.
    rng : random.Random, optional
        Source of loss and jitter draws; default ``random.Random(profile.seed)``.
    """

    def __init__(self, profile: Profile, *, now_ns: int, rng: random.Random | None = None) -> None:
        self.profile = profile
        link = profile.link
        self._random: Callable[[], float] = (rng or random.Random(profile.seed)).random
        self.loss = link.loss
        self.delay_ns = int(link.delay_ms * 1e6)
        self.jitter_ns = int(link.jitter_ms * 1e6)
        self.link_shapers: list[Shaper] | None = None
        if link.rate_bps is not None:
            self.link_shapers = [
                Shaper(link.rate_bps, link.burst_bytes, link.limit_bytes, now_ns=now_ns) for _ in (UP, DOWN)
            ]
        self.first_segment = profile.dpi_mode == "first-segment"
        self.dpi_enabled = bool(profile.rules)
        self._flows: tuple[dict[bytes, _Flow], dict[bytes, _Flow]] = ({}, {})
        self._recent: deque[_Flow] = deque(maxlen=RECENT_FLOWS)
        self._heap: list[tuple[int, int, int, bytes, int]] = []  # (t, seq, direction, frame, size)
        self._seq = 0
        self._lines: tuple[deque[tuple[int, bytes]], deque[tuple[int, bytes]]] = (deque(), deque())
        self._line_bytes = [0, 0]
        self._last_out = [0, 0]
        self._next_sweep = now_ns + FLOW_IDLE_NS
        self.counters: dict[str, list[int]] = {
            name: [0, 0]
            for name in (
                "frames", "bytes", "forwarded", "dropped_loss", "dropped_police", "dropped_shape",
                "dropped_link", "dropped_queue", "send_errors",
            )
        }
        self.flows_total = 0
        self.flows_matched = 0
        self._tls: Any = None
        self._quic: Any = None

    # ------------------------------------------------------------------ frames in

    def ingress(self, frame: memoryview | bytes, n: int, direction: int, now_ns: int) -> int:
        """Process one frame of ``n`` bytes that arrived from ``direction`` at ``now_ns``.

        Returns FORWARD (send ``frame[:n]`` now, the core kept no copy), DROP, or QUEUED (a copy
        is held and comes back from :meth:`pop_due`).
        """
        c = self.counters
        c["frames"][direction] += 1
        t = now_ns
        if n >= 34 and frame[12] == 8 and frame[13] == 0:  # IPv4
            size = (frame[16] << 8) | frame[17]
            c["bytes"][direction] += size
            if self.loss and self._random() < self.loss:
                c["dropped_loss"][direction] += 1
                return DROP
            proto = frame[23]
            if self.dpi_enabled and (proto == 6 or proto == 17) and not (frame[20] & 0x1F or frame[21]):
                l4 = 14 + (frame[14] & 0x0F) * 4
                if n >= l4 + (20 if proto == 6 else 8):
                    t = self._flow_stage(frame, n, direction, size, proto, l4, now_ns)
                    if t < 0:
                        return DROP
        else:
            size = n - 14
            c["bytes"][direction] += size
        if t > now_ns:
            self._seq += 1
            heapq.heappush(self._heap, (t, self._seq, direction, bytes(frame[:n]), size))
            return QUEUED
        t = self._link_stage(direction, size, now_ns)
        if t < 0:
            return DROP
        line = self._lines[direction]
        if t <= now_ns and not line:
            c["forwarded"][direction] += 1
            return FORWARD
        if self._line_bytes[direction] + n > MAX_LINE_BYTES:
            c["dropped_queue"][direction] += 1
            return DROP
        line.append((t, bytes(frame[:n])))
        self._line_bytes[direction] += n
        return QUEUED

    def _link_stage(self, direction: int, size: int, t_ns: int) -> int:
        """Departure time after link rate, delay and jitter of a frame entering at ``t_ns``."""
        if self.link_shapers is not None:
            t_ns = self.link_shapers[direction].schedule(size, t_ns)
            if t_ns < 0:
                self.counters["dropped_link"][direction] += 1
                return -1
        t_ns += self.delay_ns
        if self.jitter_ns:
            t_ns += int((2.0 * self._random() - 1.0) * self.jitter_ns)
        last = self._last_out[direction]
        if t_ns < last:
            t_ns = last  # no reordering
        self._last_out[direction] = t_ns
        return t_ns

    # ------------------------------------------------------------------ flows and DPI

    def _flow_stage(self, frame: memoryview | bytes, n: int, direction: int, size: int, proto: int,
                    l4: int, now_ns: int) -> int:
        key = bytes(frame[26:34]) + bytes(frame[l4 : l4 + 4])
        flow = self._flows[direction].get(key)
        if flow is None:
            flow = self._new_flow(key, direction, proto, now_ns)
        before = flow.bytes
        flow.bytes = before + size
        flow.packets += 1
        flow.last_ns = now_ns
        if flow.state == _PENDING and direction == UP:
            end = 14 + size if 14 + size <= n else n
            if proto == 6:
                self._dpi_tcp(flow, frame, l4, end)
            else:
                self._dpi_udp(flow, bytes(frame[l4 + 8 : end]))
        rule = flow.rule
        if rule is None or before < rule.onset_bytes:
            return now_ns
        bucket = flow.buckets[direction]
        if bucket is None:
            return now_ns
        if type(bucket) is Policer:
            if bucket.admit(size, now_ns):
                return now_ns
            self.counters["dropped_police"][direction] += 1
        else:
            t = bucket.schedule(size, now_ns)  # type: ignore[union-attr]
            if t >= 0:
                return t
            self.counters["dropped_shape"][direction] += 1
        flow.drops += size
        return -1

    def _new_flow(self, key: bytes, direction: int, proto: int, now_ns: int) -> _Flow:
        if now_ns >= self._next_sweep or len(self._flows[UP]) >= MAX_FLOWS:
            self.expire(now_ns)
        src, dst, ports = key[0:4], key[4:8], key[8:12]
        rkey = dst + src + ports[2:4] + ports[0:2]
        sport = (ports[0] << 8) | ports[1]
        dport = (ports[2] << 8) | ports[3]
        if direction == UP:
            flow = _Flow(proto, (_addr(src), sport), (_addr(dst), dport), now_ns)
            self._flows[UP][key] = flow
            self._flows[DOWN][rkey] = flow
        else:
            flow = _Flow(proto, (_addr(dst), dport), (_addr(src), sport), now_ns)
            self._flows[DOWN][key] = flow
            self._flows[UP][rkey] = flow
        self.flows_total += 1
        self._recent.append(flow)
        return flow

    def _decide(self, flow: _Flow, sni: str | None, now_ns: int | None = None) -> None:
        flow.sni = sni
        flow.segs = []
        rule = self.profile.match(sni)
        if rule is None:
            flow.state = _CLEAN
            return
        flow.state = _MATCHED
        flow.rule = rule
        self.flows_matched += 1
        t = flow.last_ns
        for d, name in ((UP, "up"), (DOWN, "down")):
            if rule.direction not in ("both", name):
                continue
            if rule.action == "police":
                flow.buckets[d] = Policer(rule.rate_bps, rule.bucket_bytes, now_ns=t)
            else:
                flow.buckets[d] = Shaper(rule.rate_bps, rule.bucket_bytes, rule.queue_bytes or 0, now_ns=t)

    def _give_up(self, flow: _Flow, error: str | None) -> None:
        flow.state = _CLEAN
        flow.error = error
        flow.segs = []

    def _dpi_tcp(self, flow: _Flow, frame: memoryview | bytes, l4: int, end: int) -> None:
        seq = int.from_bytes(frame[l4 + 4 : l4 + 8], "big")
        flags = frame[l4 + 13]
        if flags & 0x02:  # SYN: the stream starts at isn + 1
            flow.isn = seq
        start = l4 + ((frame[l4 + 12] >> 4) * 4)
        if end <= start:
            return
        payload = bytes(frame[start:end])
        if self._tls is None:
            from ..protocols import tls

            self._tls = tls
        tls = self._tls
        if self.first_segment:
            try:
                hello = tls.parse_client_hello_records(payload)
            except ValueError as exc:
                self._give_up(flow, str(exc))
                return
            if hello is None:
                self._give_up(flow, "ClientHello not complete in the first segment")
            else:
                self._decide(flow, hello.sni)
            return
        if flow.isn is None:  # flow seen after its SYN: count from this segment
            flow.isn = (seq - 1) & 0xFFFFFFFF
        offset = (seq - flow.isn - 1) & 0xFFFFFFFF
        if offset >= 1 << 31:
            offset -= 1 << 32
        flow.segs.append((offset, payload))
        flow.dpi_bytes += len(payload)
        try:
            hello = tls.parse_client_hello_records(tls.reassemble_prefix(flow.segs, limit=DPI_MAX_BYTES))
        except ValueError as exc:
            self._give_up(flow, str(exc))
            return
        if hello is not None:
            self._decide(flow, hello.sni)
        elif flow.dpi_bytes >= DPI_MAX_BYTES or len(flow.segs) >= DPI_MAX_SEGMENTS:
            self._give_up(flow, "no complete ClientHello within the DPI window")

    def _dpi_udp(self, flow: _Flow, datagram: bytes) -> None:
        if self._quic is None:
            from ..protocols import quic

            self._quic = quic
        quic = self._quic
        flow.dpi_count += 1
        if not quic.is_long_header(datagram):
            if not flow.segs:
                self._give_up(flow, "not a QUIC long-header packet")
            return
        flow.segs.append(datagram)
        try:
            info = quic.client_initial_info(flow.segs)
        except ValueError as exc:
            self._give_up(flow, str(exc))
            return
        hello = None if info is None else info.client_hello
        if hello is not None and not hello.truncated:
            self._decide(flow, hello.sni)
        elif self.first_segment:
            self._give_up(flow, "ClientHello not complete in the first datagram")
        elif len(flow.segs) >= DPI_MAX_DATAGRAMS:
            self._give_up(flow, "no complete ClientHello within the DPI window")

    def expire(self, now_ns: int) -> int:
        """Forget flows idle for more than FLOW_IDLE_NS (or the oldest half if the table is full)."""
        self._next_sweep = now_ns + FLOW_IDLE_NS // 10
        removed = 0
        for table in self._flows:
            items = list(table.items())
            if len(items) >= MAX_FLOWS:
                items.sort(key=lambda kv: kv[1].last_ns)
                cutoff = items[len(items) // 2][1].last_ns
            else:
                cutoff = now_ns - FLOW_IDLE_NS
            for k, f in items:
                if f.last_ns <= cutoff:
                    del table[k]
                    removed += 1
        return removed // 2

    # ------------------------------------------------------------------ frames out

    def next_deadline_ns(self) -> int | None:
        """Earliest time at which :meth:`pop_due` has something to do, or None."""
        t: int | None = self._heap[0][0] if self._heap else None
        for line in self._lines:
            if line and (t is None or line[0][0] < t):
                t = line[0][0]
        return t

    def pop_due(self, now_ns: int) -> list[tuple[int, bytes]]:
        """Frames whose departure time is ``<= now_ns``, as (direction, frame), in order."""
        heap = self._heap
        while heap and heap[0][0] <= now_ns:
            t, _, d, frame, size = heapq.heappop(heap)
            t = self._link_stage(d, size, t)
            if t < 0:
                continue
            if self._line_bytes[d] + len(frame) > MAX_LINE_BYTES:
                self.counters["dropped_queue"][d] += 1
                continue
            self._lines[d].append((t, frame))
            self._line_bytes[d] += len(frame)
        out: list[tuple[int, bytes]] = []
        for d in (UP, DOWN):
            line = self._lines[d]
            while line and line[0][0] <= now_ns:
                frame = line.popleft()[1]
                self._line_bytes[d] -= len(frame)
                out.append((d, frame))
                self.counters["forwarded"][d] += 1
        return out

    # ------------------------------------------------------------------ reporting

    def stats(self) -> dict[str, Any]:
        """Counters (per direction: [up, down]) and the most recent flows, JSON-ready."""
        return {
            "profile": self.profile.name,
            "counters": {k: {"up": v[0], "down": v[1]} for k, v in self.counters.items()},
            "flows_total": self.flows_total,
            "flows_matched": self.flows_matched,
            "queued_frames": len(self._heap) + len(self._lines[0]) + len(self._lines[1]),
            "flows": [f.to_json() for f in self._recent],
        }


# ---------------------------------------------------------------------- I/O

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_IGNORE_OUTGOING = 23
PACKET_QDISC_BYPASS = 20
SO_RCVBUFFORCE = 33
SO_SNDBUFFORCE = 32


def open_packet_socket(ifname: str, *, bufsize: int = 8 << 20) -> socket.socket:
    """A non-blocking AF_PACKET socket on ``ifname`` that sees only frames arriving there."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # proto 0: nothing until bind
    try:
        s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)  # Linux >= 4.20
        s.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
        s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, bufsize)
        s.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, bufsize)
        s.bind((ifname, ETH_P_ALL))  # Python converts the protocol to network order here
        s.setblocking(False)
    except BaseException:
        s.close()
        raise
    return s


def _write_json_atomic(path: str, data: Any) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh)
    os.replace(tmp, path)


def run_bridge(
    core: CensorCore,
    client_if: str,
    server_if: str,
    *,
    stats_path: str | None = None,
    ready_path: str | None = None,
    stats_interval_s: float = 0.5,
    stop: Callable[[], bool] = lambda: False,
) -> None:
    """Forward frames between ``client_if`` and ``server_if`` through ``core`` until ``stop()``."""
    sc = open_packet_socket(client_if)
    ss = open_packet_socket(server_if)
    try:
        if ready_path:
            _write_json_atomic(ready_path, {"pid": os.getpid(), "client_if": client_if, "server_if": server_if})
        _loop(core, sc, ss, stats_path, stats_interval_s, stop)
    finally:
        if stats_path:
            _write_json_atomic(stats_path, core.stats())
        sc.close()
        ss.close()


def _loop(core: CensorCore, sc: socket.socket, ss: socket.socket, stats_path: str | None,
          stats_interval_s: float, stop: Callable[[], bool]) -> None:
    buf = bytearray(65536)
    mv = memoryview(buf)
    socks = [sc, ss]
    outs = (ss, sc)  # UP frames leave on the server side, DOWN frames on the client side
    clock = time.monotonic_ns
    ingress = core.ingress
    send_errors = core.counters["send_errors"]
    next_stats = clock()
    last_seen = -1
    interval_ns = int(stats_interval_s * NS)
    while not stop():
        now = clock()
        deadline = core.next_deadline_ns()
        if deadline is not None and deadline <= now:
            for d, frame in core.pop_due(now):
                try:
                    outs[d].send(frame)
                except OSError:
                    send_errors[d] += 1
            deadline = core.next_deadline_ns()
        if stats_path and now >= next_stats:
            seen = core.counters["frames"][0] + core.counters["frames"][1]
            if seen != last_seen:  # an idle censor writes nothing
                _write_json_atomic(stats_path, core.stats())
                last_seen = seen
            next_stats = now + interval_ns
        timeout = 0.25 if deadline is None else min(0.25, max(0.0, (deadline - now) / NS))
        try:
            readable, _, _ = select.select(socks, [], [], timeout)
        except InterruptedError:
            continue
        for s in readable:
            d = UP if s is sc else DOWN
            out = outs[d]
            for _ in range(256):
                try:
                    n = s.recv_into(buf)
                except BlockingIOError:
                    break
                if ingress(mv, n, d, clock()) == FORWARD:
                    try:
                        out.send(mv[:n])
                    except OSError:
                        send_errors[d] += 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of the censor daemon (run inside the censor namespace by ``testbed up``)."""
    ap = argparse.ArgumentParser(prog="python -m keepiton_throttle.testbed.censor")
    ap.add_argument("--profile-json", required=True, help="Profile.to_dict() as a JSON file")
    ap.add_argument("--client-if", default="cc0")
    ap.add_argument("--server-if", default="cs0")
    ap.add_argument("--stats", help="write counters and flows here (JSON, rewritten periodically)")
    ap.add_argument("--ready", help="write this file once the sockets are bound")
    args = ap.parse_args(argv)
    with open(args.profile_json, encoding="utf-8") as fh:
        data = json.load(fh)
    profile = profile_from_dict(data, name=str(data.get("name", "profile")))
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    core = CensorCore(profile, now_ns=time.monotonic_ns())
    try:
        run_bridge(core, args.client_if, args.server_if, stats_path=args.stats, ready_path=args.ready,
                   stop=lambda: stopping)
    except OSError as exc:
        print(f"censor: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
