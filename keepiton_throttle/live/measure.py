"""Download clients of the live check: HTTP/1.1 over TLS/TCP and HTTP/3 over QUIC (aioquic).

Every download is a :class:`Download` record, whatever happened: a DNS failure, a refused or
reset connection, a TLS alert, a timeout or a QUIC handshake that never got an answer are
failures *in the data* (OONI's failure strings, with the operation they interrupted), never
exceptions. Only a bad argument raises.

**How long a download lasts** (:class:`Budget`): the client keeps reading for ``duration_s``
after its request and until it has at least ``min_bytes`` (64 KiB: the stall check — Russia's
2025 DPI froze connections after 16-20 KB), then stops; it also stops at ``max_bytes`` and gives
up at ``timeout_s``. An object smaller than that is requested again on the same connection.
Fixing the *time* rather than the size makes target and control transfers comparable (each
spends the same share of its life in slow start) while keeping a throttled target short.

**Client-side evidence.** Each download records the arrival time and size of every piece of
response body (TLS reads; HTTP/3 DATA), the kernel's ``TCP_INFO`` or aioquic's RTT estimates at
memoryless (exponentially distributed) intervals, so that samples do not phase-lock with a
shaper (as OONI's throttling code does), and OONI-style network events. Without a capture
this is what the verdict rests on (see :mod:`.run`).

**Split probes.** ``split_hello`` sends the TLS ClientHello in two TCP segments cut inside the
SNI (TCP_NODELAY and a short pause between the two ``send`` calls), and for QUIC ends the first
Initial packet inside the SNI and pads it, so that the rest of the ClientHello travels in a
second Initial datagram. A DPI box that reads only the first segment or datagram no longer sees
the SNI.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import random
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import __version__

__all__ = [
    "FAILURES",
    "Budget",
    "Download",
    "Request",
    "ResponseParser",
    "Resolution",
    "classify_error",
    "fetch",
    "fetch_quic",
    "fetch_tcp",
    "parse_tcp_info",
    "resolve",
    "split_offset",
]

MIN_BYTES = 64 * 1024
USER_AGENT = f"keepiton_throttle/{__version__} (+live check)"

# Failure strings (OONI df-007, kept to the ones this client can observe) and where they happen.
DNS_NXDOMAIN = "dns_nxdomain_error"
DNS_TEMPORARY = "dns_temporary_failure"
DNS_LOOKUP = "dns_lookup_error"
CONNECTION_REFUSED = "connection_refused"
CONNECTION_RESET = "connection_reset"
HOST_UNREACHABLE = "host_unreachable"
NETWORK_UNREACHABLE = "network_unreachable"
TIMEOUT = "generic_timeout_error"
EOF = "eof_error"
SSL_FAILED = "ssl_failed_handshake"
SSL_INVALID_CERT = "ssl_invalid_certificate"
SSL_INVALID_HOSTNAME = "ssl_invalid_hostname"
SSL_UNKNOWN_AUTHORITY = "ssl_unknown_authority"
QUIC_CLOSED = "quic_connection_closed"
HTTP_BAD_RESPONSE = "http_invalid_response"
UNKNOWN = "unknown_failure"

FAILURES = {
    DNS_NXDOMAIN: "the name does not exist (NXDOMAIN) or has no address",
    DNS_TEMPORARY: "the resolver did not answer in time or failed temporarily",
    DNS_LOOKUP: "the name could not be resolved",
    CONNECTION_REFUSED: "the server (or something on the path) refused the connection",
    CONNECTION_RESET: "the connection was reset",
    HOST_UNREACHABLE: "no route to the host",
    NETWORK_UNREACHABLE: "the network is unreachable",
    TIMEOUT: "no answer before the timeout",
    EOF: "the connection was closed before the exchange completed",
    SSL_FAILED: "the TLS handshake failed (an alert or a protocol error)",
    SSL_INVALID_CERT: "the certificate is invalid",
    SSL_INVALID_HOSTNAME: "the certificate is not valid for this name",
    SSL_UNKNOWN_AUTHORITY: "the certificate is signed by an unknown authority",
    QUIC_CLOSED: "the QUIC connection was closed by the peer or the path",
    HTTP_BAD_RESPONSE: "the server's answer is not valid HTTP",
    UNKNOWN: "another error (see the error text)",
}

#: operations a failure can interrupt (OONI's names)
OPERATIONS = ("resolve", "connect", "tls_handshake", "quic_handshake", "http_request", "read")

#: a server that keeps answering with tiny objects is asked at most this often per download
MAX_REQUESTS = 1000


@dataclass(frozen=True)
class Budget:
    """When a download stops (see the module docstring); times in seconds, sizes in bytes."""

    duration_s: float = 2.0
    min_bytes: int = MIN_BYTES
    max_bytes: int = 10_000_000
    timeout_s: float = 20.0
    #: mean of the exponentially distributed interval between TCP_INFO / RTT samples
    sample_mean_s: float = 0.02

    def __post_init__(self) -> None:
        if self.duration_s < 0:
            raise ValueError(f"duration_s must be >= 0, got {self.duration_s}")
        if self.max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {self.max_bytes}")
        if self.min_bytes < 0:
            raise ValueError(f"min_bytes must be >= 0, got {self.min_bytes}")
        if self.timeout_s <= self.duration_s:
            raise ValueError(f"timeout_s ({self.timeout_s}) must exceed duration_s ({self.duration_s})")
        if self.sample_mean_s <= 0:
            raise ValueError(f"sample_mean_s must be positive, got {self.sample_mean_s}")

    def done(self, nbytes: int, elapsed_s: float) -> str | None:
        """Why to stop now (``"max_bytes"`` or ``"duration"``), or None to keep reading."""
        if nbytes >= self.max_bytes:
            return "max_bytes"
        if elapsed_s >= self.duration_s and nbytes >= min(self.min_bytes, self.max_bytes):
            return "duration"
        return None


@dataclass(frozen=True)
class Request:
    """One download: what to send where. ``host`` goes into Host / :authority, ``sni`` into
    the ClientHello (the same in direct mode; the target or control SNI in the same-server
    test, where ``verify`` is False because ``serve`` has a self-signed certificate)."""

    transport: str
    host: str
    sni: str
    address: str
    port: int
    path: str
    verify: bool = True
    split_hello: bool = False

    def __post_init__(self) -> None:
        if self.transport not in ("tcp", "quic"):
            raise ValueError(f"transport must be 'tcp' or 'quic', got {self.transport!r}")
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be in 1..65535, got {self.port}")
        if not self.path.startswith("/"):
            raise ValueError(f"path must start with '/', got {self.path!r}")


@dataclass
class Download:
    """What one download did (times: wall-clock ns for absolute, seconds for durations)."""

    transport: str
    sni: str
    host: str
    address: str
    port: int
    path: str
    verify: bool
    split_hello: bool
    t_start_ns: int
    ok: bool = False
    failure: str | None = None
    operation: str | None = None
    error: str | None = None
    status: int | None = None
    bytes: int = 0
    expected_bytes: int | None = None
    requests: int = 0
    handshake_s: float | None = None
    seconds: float | None = None
    stopped: str | None = None
    local_address: str | None = None
    local_port: int | None = None
    split_at: int | None = None
    #: (wall ns, body bytes) of every piece of response body, in arrival order
    reads: list[tuple[int, int]] = field(default_factory=list, repr=False)
    #: (wall ns, RTT ms): TCP_INFO receiver RTT, or aioquic's latest RTT sample
    rtt_samples: list[tuple[int, float]] = field(default_factory=list, repr=False)
    tcp_info: list[dict[str, Any]] = field(default_factory=list, repr=False)
    #: OONI df-008 network events, ``t`` in seconds since ``t_start_ns``
    events: list[dict[str, Any]] = field(default_factory=list, repr=False)

    _t0_mono: int = field(default=0, repr=False)

    @classmethod
    def begin(cls, req: Request) -> Download:
        d = cls(req.transport, req.sni, req.host, req.address, req.port, req.path, req.verify,
                req.split_hello, time.time_ns())
        d._t0_mono = time.monotonic_ns()
        return d

    def wall_ns(self, mono_ns: int | None = None) -> int:
        """Wall-clock ns of a monotonic instant (now by default)."""
        return self.t_start_ns + ((time.monotonic_ns() if mono_ns is None else mono_ns) - self._t0_mono)

    def elapsed_s(self) -> float:
        return (time.monotonic_ns() - self._t0_mono) / 1e9

    def event(self, operation: str, *, failure: str | None = None, **kw: Any) -> None:
        self.events.append({"operation": operation, "failure": failure, "t": round(self.elapsed_s(), 6), **kw})

    def fail(self, failure: str, operation: str, error: str | None = None) -> None:
        if self.failure is None:  # the first failure is the symptom
            self.failure, self.operation, self.error = failure, operation, error
        self.ok = False

    @property
    def goodput_bps(self) -> float | None:
        """Body bits per second from the first to the last body byte (None if < 2 reads)."""
        if len(self.reads) < 2:
            return None
        span = (self.reads[-1][0] - self.reads[0][0]) / 1e9
        if span <= 0:
            return None
        return 8 * (self.bytes - self.reads[0][1]) / span

    def timeline(self, bin_s: float = 0.01) -> list[list[float]]:
        """Body bytes per ``bin_s`` bin as ``[[t_s since start, bytes], ...]`` (empty bins left out)."""
        bins: dict[int, int] = {}
        w = int(bin_s * 1e9)
        for ts, n in self.reads:
            k = (ts - self.t_start_ns) // w
            bins[k] = bins.get(k, 0) + n
        return [[round(k * bin_s, 6), n] for k, n in sorted(bins.items())]

    def to_json(self) -> dict[str, Any]:
        gp = self.goodput_bps
        return {
            "transport": self.transport, "sni": self.sni, "host": self.host,
            "address": self.address, "port": self.port, "path": self.path,
            "tls_verification": self.verify, "split_hello": self.split_hello, "split_at": self.split_at,
            "start": self.t_start_ns / 1e9, "ok": self.ok, "failure": self.failure,
            "operation": self.operation, "error": self.error, "status": self.status,
            "bytes": self.bytes, "expected_bytes": self.expected_bytes, "requests": self.requests,
            "handshake_s": self.handshake_s, "seconds": self.seconds, "stopped": self.stopped,
            "goodput_bps": None if gp is None else round(gp, 1),
            "local_address": self.local_address, "local_port": self.local_port,
            "timeline": self.timeline(),
            "rtt_ms": [[round((t - self.t_start_ns) / 1e9, 6), round(r, 3)] for t, r in self.rtt_samples],
            "tcp_info": self.tcp_info,
            "network_events": self.events,
        }


# ---------------------------------------------------------------------- errors


def classify_error(exc: BaseException) -> str:
    """The OONI failure string for an exception raised by a socket, ssl or getaddrinfo."""
    if isinstance(exc, socket.gaierror):
        if exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", -5)):
            return DNS_NXDOMAIN
        if exc.errno == socket.EAI_AGAIN:
            return DNS_TEMPORARY
        return DNS_LOOKUP
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = getattr(exc, "verify_code", None)
        if code == 62 or "hostname" in str(exc).lower():  # X509_V_ERR_HOSTNAME_MISMATCH
            return SSL_INVALID_HOSTNAME
        if code in (2, 18, 19, 20, 21):  # unknown issuer, self-signed (leaf or in the chain)
            return SSL_UNKNOWN_AUTHORITY
        return SSL_INVALID_CERT
    if isinstance(exc, ssl.SSLZeroReturnError | ssl.SSLEOFError):
        return EOF
    if isinstance(exc, ssl.SSLError):
        return SSL_FAILED
    if isinstance(exc, TimeoutError | socket.timeout):
        return TIMEOUT
    if isinstance(exc, ConnectionRefusedError):
        return CONNECTION_REFUSED
    if isinstance(exc, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
        return CONNECTION_RESET
    if isinstance(exc, OSError):
        if exc.errno == errno.EHOSTUNREACH:
            return HOST_UNREACHABLE
        if exc.errno == errno.ENETUNREACH:
            return NETWORK_UNREACHABLE
        if exc.errno == errno.ETIMEDOUT:
            return TIMEOUT
        if exc.errno == errno.ECONNREFUSED:
            return CONNECTION_REFUSED
        if exc.errno in (errno.ECONNRESET, errno.EPIPE):
            return CONNECTION_RESET
    return UNKNOWN


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# ---------------------------------------------------------------------- DNS


@dataclass(frozen=True)
class Resolution:
    """The addresses of a name, or the failure (OONI string) that prevented them."""

    host: str
    addresses: tuple[str, ...]
    failure: str | None = None
    error: str | None = None
    seconds: float = 0.0
    pinned: bool = False


def resolve(host: str, port: int, *, pinned: dict[str, list[str]] | None = None,
            timeout_s: float = 10.0) -> Resolution:
    """Resolve ``host`` with the system resolver (``pinned`` addresses first, like curl's
    ``--resolve``); an IP literal resolves to itself. Never raises for a lookup failure."""
    if pinned and host.lower() in pinned:
        return Resolution(host, tuple(pinned[host.lower()]), pinned=True)
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
        return Resolution(host, (host,))
    except OSError:
        pass
    box: dict[str, Any] = {}
    t0 = time.monotonic()

    def lookup() -> None:
        try:
            box["infos"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except BaseException as exc:  # handed back below
            box["error"] = exc

    # getaddrinfo cannot be interrupted: a daemon thread lets us give up on a hung resolver
    th = threading.Thread(target=lookup, name="keepiton-resolve", daemon=True)
    th.start()
    th.join(timeout_s)
    secs = time.monotonic() - t0
    if th.is_alive():
        return Resolution(host, (), TIMEOUT, f"no answer within {timeout_s:.0f} s", secs)
    if "error" in box:
        return Resolution(host, (), classify_error(box["error"]), _short(box["error"]), secs)
    addrs = tuple(dict.fromkeys(str(i[4][0]) for i in box["infos"]))
    if not addrs:
        return Resolution(host, (), DNS_NXDOMAIN, "no address", secs)
    return Resolution(host, addrs, seconds=secs)


# ---------------------------------------------------------------------- TCP_INFO

_TCP_INFO_LEN = 232


def parse_tcp_info(raw: bytes) -> dict[str, Any]:
    """The fields of Linux ``struct tcp_info`` (include/uapi/linux/tcp.h) the report uses.

    Fields the running kernel does not provide (a shorter struct) are left out. On a download
    client, ``rtt_ms``/``min_rtt_ms`` time the client's own few segments (handshake, request),
    ``rcv_rtt_ms`` is the receiver's estimate over the download, ``delivery_rate_bps`` and
    ``total_retrans`` describe what the *client* sent; the server's losses show only as
    out-of-order arrivals (``rcv_ooopack``, against ``data_segs_in`` data segments received).
    """
    out: dict[str, Any] = {}
    if len(raw) >= 8:
        out["state"] = raw[0]
        out["retransmits"] = raw[2]
    if len(raw) >= 104:
        (rto, _ato, snd_mss, rcv_mss, _unacked, _sacked, lost, retrans, _fackets, _lds, _las, last_data_recv,
         _lar, _pmtu, _rssth, rtt, rttvar, _ssth, _cwnd, _advmss, _reord, rcv_rtt, _rcv_space,
         total_retrans) = struct.unpack_from("=24I", raw, 8)
        out.update(rto_ms=rto / 1e3, snd_mss=snd_mss, rcv_mss=rcv_mss, lost=lost, retrans=retrans,
                   last_data_recv_ms=last_data_recv, rtt_ms=rtt / 1e3, rttvar_ms=rttvar / 1e3,
                   rcv_rtt_ms=rcv_rtt / 1e3, total_retrans=total_retrans)
    if len(raw) >= 136:
        (out["bytes_received"],) = struct.unpack_from("=Q", raw, 128)
    if len(raw) >= 152:
        (min_rtt,) = struct.unpack_from("=I", raw, 148)
        out["min_rtt_ms"] = min_rtt / 1e3
    if len(raw) >= 156:
        (out["data_segs_in"],) = struct.unpack_from("=I", raw, 152)
    if len(raw) >= 168:
        (out["delivery_rate_bps"],) = struct.unpack_from("=Q", raw, 160)
        out["delivery_rate_bps"] *= 8
    if len(raw) >= 228:
        (out["rcv_ooopack"],) = struct.unpack_from("=I", raw, 224)
    return out


def _tcp_info(sock: socket.socket) -> dict[str, Any] | None:
    try:
        return parse_tcp_info(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN))
    except OSError:
        return None


# ---------------------------------------------------------------------- HTTP/1.1


class ResponseParser:
    """Incremental HTTP/1.1 response reader that counts body bytes (RFC 9112).

    ``feed(data)`` returns the body bytes found in ``data``; ``done`` turns True at the end of
    the message (Content-Length reached, last chunk, or never for a close-delimited body).
    A malformed head raises ``ValueError``.
    """

    def __init__(self, *, max_head: int = 65536) -> None:
        self.status: int | None = None
        self.length: int | None = None
        self.chunked = False
        self.close = False
        self.body = 0
        self.done = False
        self._head = bytearray()
        self._max_head = max_head
        self._in_body = False
        self._chunk_left = 0
        self._line = bytearray()
        self._chunk_state = "size"  # size, data, data_crlf, trailer

    def feed(self, data: bytes) -> int:
        if self.done:
            return 0
        if not self._in_body:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                if len(self._head) > self._max_head:
                    raise ValueError("response head too long")
                return 0
            head, rest = bytes(self._head[:end]), bytes(self._head[end + 4:])
            self._parse_head(head)
            self._in_body = True
            self._head = bytearray()
            data = rest
            if self.length == 0 and not self.chunked:
                self.done = True
                return 0
        if self.chunked:
            return self._feed_chunked(data)
        n = len(data)
        if self.length is not None:
            n = min(n, self.length - self.body)
        self.body += n
        if self.length is not None and self.body >= self.length:
            self.done = True
        return n

    def _parse_head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise ValueError(f"not an HTTP/1.x status line: {lines[0][:40]!r}")
        self.status = int(parts[1])
        for ln in lines[1:]:
            k, _, v = ln.partition(b":")
            key, val = k.strip().lower(), v.strip().lower()
            if key == b"content-length" and val.isdigit():
                self.length = int(val)
            elif key == b"transfer-encoding" and b"chunked" in val:
                self.chunked = True
            elif key == b"connection" and b"close" in val:
                self.close = True
        if self.chunked:
            self.length = None
        if 100 <= self.status < 200 or self.status in (204, 304):
            self.length = 0

    def _feed_chunked(self, data: bytes) -> int:
        got = 0
        i = 0
        n = len(data)
        while i < n and not self.done:
            if self._chunk_state == "data":
                take = min(self._chunk_left, n - i)
                got += take
                i += take
                self._chunk_left -= take
                if self._chunk_left == 0:
                    self._chunk_state = "data_crlf"
                    self._line = bytearray()
                continue
            j = data.find(b"\n", i)
            if j < 0:
                self._line += data[i:]
                if len(self._line) > 4096:
                    raise ValueError("chunk line too long")
                break
            self._line += data[i:j]
            i = j + 1
            line = bytes(self._line).strip()
            self._line = bytearray()
            if self._chunk_state == "size":
                try:
                    size = int(line.split(b";")[0], 16)
                except ValueError:
                    raise ValueError(f"bad chunk size {line[:20]!r}") from None
                if size == 0:
                    self._chunk_state = "trailer"
                else:
                    self._chunk_left = size
                    self._chunk_state = "data"
            elif self._chunk_state == "data_crlf":
                self._chunk_state = "size"
            elif self._chunk_state == "trailer" and not line:
                self.done = True
        self.body += got
        return got


def _request_bytes(host: str, port: int, path: str) -> bytes:
    authority = host if port == 443 else f"{host}:{port}"
    return (f"GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: {USER_AGENT}\r\n"
            "Accept: */*\r\nAccept-Encoding: identity\r\nConnection: keep-alive\r\n\r\n").encode()


# ---------------------------------------------------------------------- TLS over TCP


def _tls_context(verify: bool, alpn: str = "http/1.1") -> ssl.SSLContext:
    if verify:
        ctx = ssl.create_default_context()
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols([alpn])
    return ctx


def split_offset(hello: bytes, sni: str) -> int:
    """An offset in the middle of the SNI's bytes inside ``hello`` (a cut that hides the name
    from a reader of either part alone)."""
    i = hello.find(sni.encode("ascii", "replace"))
    if i < 0:
        raise ValueError(f"SNI {sni!r} not found in the ClientHello")
    return i + max(1, len(sni) // 2)


class _Sampler:
    """Memoryless sampling instants: exponential gaps of mean ``mean_s``."""

    def __init__(self, mean_s: float, rng: random.Random) -> None:
        self.mean_ns = mean_s * 1e9
        self.rng = rng
        self.next_ns = time.monotonic_ns()

    def due(self) -> bool:
        now = time.monotonic_ns()
        if now < self.next_ns:
            return False
        self.next_ns = now + int(self.rng.expovariate(1.0) * self.mean_ns)
        return True


def _sample_tcp(d: Download, sock: socket.socket) -> None:
    info = _tcp_info(sock)
    if info is None:
        return
    now = d.wall_ns()
    info["t"] = round((now - d.t_start_ns) / 1e9, 6)
    d.tcp_info.append(info)
    rtt = info.get("rcv_rtt_ms") or 0.0
    if rtt > 0:
        d.rtt_samples.append((now, float(rtt)))


def fetch_tcp(req: Request, budget: Budget, *, rng: random.Random | None = None) -> Download:
    """GET ``req.path`` over TLS/TCP until the budget says stop; a :class:`Download`."""
    if req.transport != "tcp":
        raise ValueError("fetch_tcp needs a tcp request")
    rng = rng or random.Random()
    d = Download.begin(req)
    deadline = time.monotonic() + budget.timeout_s

    def remaining() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("timeout")
        return left

    fam = socket.AF_INET6 if ":" in req.address else socket.AF_INET
    sock = socket.socket(fam, socket.SOCK_STREAM)
    op = "connect"
    completed = 0
    try:
        sock.settimeout(remaining())
        try:
            sock.connect((req.address, req.port))
        except OSError as exc:
            fail = classify_error(exc)
            d.event("connect", failure=fail, address=f"{req.address}:{req.port}", proto="tcp")
            d.fail(fail, "connect", _short(exc))
            return d
        d.event("connect", address=f"{req.address}:{req.port}", proto="tcp")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        local = sock.getsockname()
        d.local_address, d.local_port = str(local[0]), int(local[1])
        op = "tls_handshake"
        d.event("tls_handshake_start")
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = _tls_context(req.verify).wrap_bio(incoming, outgoing, server_hostname=req.sni)
        try:
            obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        hello = outgoing.read()
        if req.split_hello:
            cut = split_offset(hello, req.sni)
            d.split_at = cut
            sock.sendall(hello[:cut])
            time.sleep(0.02)  # let the first part leave as a segment of its own
            sock.sendall(hello[cut:])
            d.event("write", num_bytes=cut)
            d.event("write", num_bytes=len(hello) - cut)
        else:
            sock.sendall(hello)
            d.event("write", num_bytes=len(hello))

        wire: dict[str, bool] = {"on": False}

        def pump() -> bool:
            out = outgoing.read()
            if out:
                sock.sendall(out)
            sock.settimeout(remaining())
            data = sock.recv(262144)
            if not data:
                return False
            if wire["on"]:
                # the timeline is kept at socket-read granularity: a TLS record of 16 KB takes a
                # second to arrive at 130 kbit/s, far too coarse for a goodput series
                d.reads.append((d.wall_ns(), len(data)))
            incoming.write(data)
            return True

        while True:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                if not pump():
                    raise ssl.SSLEOFError("the server closed the connection during the TLS handshake") from None
        out = outgoing.read()
        if out:
            sock.sendall(out)
        d.handshake_s = round(d.elapsed_s(), 6)
        d.event("tls_handshake_done")
        sampler = _Sampler(budget.sample_mean_s, rng)
        _sample_tcp(d, sock)
        op = "http_request"
        wire["on"] = True
        t_req = time.monotonic()
        stop: str | None = None
        completed = 0
        while stop is None:
            parser = ResponseParser()
            obj.write(_request_bytes(req.host, req.port, req.path))
            sock.sendall(outgoing.read())
            d.requests += 1
            d.event("http_transaction_start")
            while not parser.done and stop is None:
                try:
                    chunk = obj.read(262144)
                except ssl.SSLWantReadError:
                    if not pump():
                        raise _Eof() from None
                    if sampler.due():
                        _sample_tcp(d, sock)
                    continue
                except ssl.SSLZeroReturnError:
                    raise _Eof() from None
                if not chunk:
                    raise _Eof()
                n = parser.feed(chunk)
                if parser.status is not None and d.status is None:
                    d.status = parser.status
                    d.expected_bytes = parser.length
                    op = "read"
                d.bytes += n
                stop = budget.done(d.bytes, time.monotonic() - t_req)
            d.event("http_transaction_done", status=parser.status)
            if parser.done:
                completed += 1
            if stop is None and not _ask_again(parser.status, parser.body, d.requests, parser.close,
                                               time.monotonic() - t_req, budget):
                stop = "complete"
        d.stopped = stop
        d.ok = True
    except _Eof:
        if d.bytes and d.status is not None and (d.expected_bytes is None or completed):
            # a close-delimited body, or a server that closed instead of keeping the connection
            # alive for the next request: what was asked for did arrive
            d.stopped, d.ok = "complete", True
        else:
            d.fail(EOF, op, "the server closed the connection")
            d.stopped = "error"
    except (OSError, ssl.SSLError) as exc:  # before ValueError: SSLCertVerificationError is both
        fail = classify_error(exc)
        d.stopped = "timeout" if fail == TIMEOUT and d.bytes else "error"
        d.fail(fail, op, _short(exc))
        if op == "tls_handshake":
            d.event("tls_handshake_done", failure=fail)
    except ValueError as exc:
        d.fail(HTTP_BAD_RESPONSE if op in ("http_request", "read") else UNKNOWN, op, _short(exc))
        d.stopped = "error"
    finally:
        if d.local_port is not None:
            _sample_tcp(d, sock)
        sock.close()
        d.event("close")
        d.seconds = round(d.elapsed_s(), 6)
    return d


class _Eof(Exception):
    """The peer closed the connection (TLS close_notify or TCP FIN)."""


def _ask_again(status: int | None, body: int, requests: int, closing: bool, elapsed_s: float,
               budget: Budget) -> bool:
    """After a complete response that did not end the download: request the object again?
    Not after an error status, a closing server, an empty body past the duration (nothing
    more will come), or too many requests."""
    if closing or status is None or status >= 400 or requests >= MAX_REQUESTS:
        return False
    return not (body == 0 and elapsed_s >= budget.duration_s)


class _QuicClosed(Exception):
    """The QUIC connection was closed (CONNECTION_CLOSE received, or the handshake aborted)."""

    def __init__(self, error_code: int, reason: str) -> None:
        super().__init__(f"closed with error {error_code:#x} {reason}".strip())
        self.error_code = error_code


def _quic_failure(exc: BaseException) -> str:
    if isinstance(exc, _QuicClosed):
        # RFC 9001 sec. 4.8: 0x100 + a TLS alert is a CRYPTO_ERROR, i.e. a failed TLS handshake
        if exc.error_code == 0x100 + 42:  # bad_certificate (RFC 8446 sec. 6)
            return SSL_INVALID_HOSTNAME if "hostname" in str(exc) else SSL_INVALID_CERT
        return SSL_FAILED if 0x100 <= exc.error_code < 0x200 else QUIC_CLOSED
    return classify_error(exc)


# ---------------------------------------------------------------------- HTTP/3 over QUIC


def _split_connection_class(base: type) -> type:
    """A QuicConnection whose first Initial packet ends inside the SNI (see the module docstring).

    The first CRYPTO frame of the Initial space (offset 0, also when it is sent again after a
    loss or a Retry) is limited to the bytes before the cut and the rest of its packet is
    padded, so that the next Initial packet starts a new datagram.
    """
    from aioquic import tls
    from aioquic.quic.packet import QuicFrameType

    class SplitInitialConnection(base):
        split_sni: str = ""
        split_at: int | None = None

        def _write_crypto_frame(self, builder: Any, space: Any, stream: Any) -> bool:
            sender = stream.sender
            if (not self.split_sni or space is not self._spaces.get(tls.Epoch.INITIAL)
                    or sender.next_offset != 0):
                return bool(super()._write_crypto_frame(builder=builder, space=space, stream=stream))
            data = bytes(getattr(sender, "_buffer", b""))
            try:
                cut = split_offset(data, self.split_sni)
            except ValueError:
                return bool(super()._write_crypto_frame(builder=builder, space=space, stream=stream))
            original = sender.get_frame
            sender.get_frame = lambda max_size, max_offset=None: original(min(max_size, cut), max_offset)
            try:
                wrote = bool(super()._write_crypto_frame(builder=builder, space=space, stream=stream))
            finally:
                del sender.get_frame
            if wrote:
                self.split_at = cut
                room = builder.remaining_flight_space
                if room > 1:
                    buf = builder.start_frame(QuicFrameType.PADDING, capacity=room)
                    buf.push_bytes(bytes(room - 1))
            return wrote

    return SplitInitialConnection


async def _fetch_quic(req: Request, budget: Budget, d: Download, rng: random.Random) -> None:
    from aioquic.asyncio import QuicConnectionProtocol
    from aioquic.h3.connection import H3_ALPN, H3Connection
    from aioquic.h3.events import DataReceived, HeadersReceived
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection
    from aioquic.quic.events import ConnectionTerminated, HandshakeCompleted

    loop = asyncio.get_running_loop()
    deadline = loop.time() + budget.timeout_s
    failed: asyncio.Future[BaseException] = loop.create_future()
    wake = asyncio.Event()
    sampler = _Sampler(budget.sample_mean_s, rng)
    st: dict[str, Any] = {"stream": None, "ended": False, "datagrams_in": 0, "t_req": None, "stop": None}

    def sample(proto: Any) -> None:
        rec = getattr(proto._quic, "_loss", None)
        rtt = getattr(rec, "_rtt_latest", 0.0) if rec is not None else 0.0
        if rtt and rtt > 0:
            d.rtt_samples.append((d.wall_ns(), float(rtt) * 1e3))

    class Client(QuicConnectionProtocol):
        def __init__(self, *a: Any, **kw: Any) -> None:
            super().__init__(*a, **kw)
            self.h3 = H3Connection(self._quic)

        def datagram_received(self, data: bytes | str, addr: Any) -> None:
            st["datagrams_in"] += 1
            super().datagram_received(data, addr)

        def error_received(self, exc: Exception) -> None:
            # ICMP errors on the connected socket (port unreachable, no route)
            if not failed.done():
                failed.set_result(exc)

        def quic_event_received(self, event: Any) -> None:
            if isinstance(event, HandshakeCompleted):
                d.handshake_s = round(d.elapsed_s(), 6)
            if isinstance(event, ConnectionTerminated) and not failed.done():
                failed.set_result(_QuicClosed(int(event.error_code), event.reason_phrase or ""))
            for ev in self.h3.handle_event(event):
                if getattr(ev, "stream_id", None) != st["stream"]:
                    continue
                if isinstance(ev, HeadersReceived):
                    hdrs = dict(ev.headers)
                    d.status = int(hdrs.get(b":status", b"0") or 0)
                    cl = hdrs.get(b"content-length")
                    if cl is not None and cl.isdigit() and d.expected_bytes is None:
                        d.expected_bytes = int(cl)
                elif isinstance(ev, DataReceived) and ev.data:
                    d.bytes += len(ev.data)
                    d.reads.append((d.wall_ns(), len(ev.data)))
                    if sampler.due():
                        sample(self)
                    if st["t_req"] is not None and st["stop"] is None:
                        st["stop"] = budget.done(d.bytes, loop.time() - st["t_req"])
                        if st["stop"]:
                            wake.set()
                if getattr(ev, "stream_ended", False):
                    st["ended"] = True
                    wake.set()

    conf = QuicConfiguration(is_client=True, alpn_protocols=list(H3_ALPN), server_name=req.sni,
                             verify_mode=ssl.CERT_REQUIRED if req.verify else ssl.CERT_NONE,
                             max_datagram_size=1350, idle_timeout=budget.timeout_s)
    conn_cls: type = _split_connection_class(QuicConnection) if req.split_hello else QuicConnection
    fam = socket.AF_INET6 if ":" in req.address else socket.AF_INET
    sock = socket.socket(fam, socket.SOCK_DGRAM)
    op = "connect"
    transport: Any = None
    proto: Any = None
    try:
        try:
            # a connected socket: ICMP errors (port unreachable) come back as error_received
            sock.connect((req.address, req.port))
        except OSError as exc:
            d.fail(classify_error(exc), "connect", _short(exc))
            d.event("connect", failure=d.failure, address=f"{req.address}:{req.port}", proto="udp")
            return
        local = sock.getsockname()
        d.local_address, d.local_port = str(local[0]), int(local[1])
        sock.setblocking(False)
        quic = conn_cls(configuration=conf)
        if req.split_hello:
            quic.split_sni = req.sni
        transport, proto = await loop.create_datagram_endpoint(lambda: Client(quic), sock=sock)
        d.event("connect", address=f"{req.address}:{req.port}", proto="udp")
        op = "quic_handshake"
        d.event("quic_handshake_start")
        proto.connect((req.address, req.port))
        conn_task: asyncio.Future[Any] = asyncio.ensure_future(proto.wait_connected())
        done, _ = await asyncio.wait({conn_task, failed}, timeout=max(0.0, deadline - loop.time()),
                                     return_when=asyncio.FIRST_COMPLETED)
        if conn_task not in done:
            conn_task.cancel()
            if failed.done():
                why = failed.result()
                d.fail(_quic_failure(why), op, _short(why))
            elif st["datagrams_in"] == 0:
                d.fail(TIMEOUT, op, "no reply to the QUIC Initial packets")
            else:
                d.fail(TIMEOUT, op, "the QUIC handshake did not complete")
            d.event("quic_handshake_done", failure=d.failure)
            return
        conn_exc = conn_task.exception()
        if conn_exc is not None:
            # aioquic aborts the waiter with a bare ConnectionError; the reason came as an event
            why = failed.result() if failed.done() else conn_exc
            d.fail(_quic_failure(why), op, _short(why))
            d.event("quic_handshake_done", failure=d.failure)
            return
        if d.handshake_s is None:
            d.handshake_s = round(d.elapsed_s(), 6)
        d.event("quic_handshake_done")
        if req.split_hello:
            d.split_at = getattr(quic, "split_at", None)
        sample(proto)
        op = "http_request"
        st["t_req"] = loop.time()
        while True:
            sid = proto._quic.get_next_available_stream_id()
            st["stream"], st["ended"] = sid, False
            wake.clear()
            authority = req.host if req.port == 443 else f"{req.host}:{req.port}"
            proto.h3.send_headers(sid, [
                (b":method", b"GET"), (b":scheme", b"https"), (b":authority", authority.encode()),
                (b":path", req.path.encode()), (b"user-agent", USER_AGENT.encode()),
            ], end_stream=True)
            proto.transmit()
            d.requests += 1
            d.event("http_transaction_start")
            while not st["ended"] and st["stop"] is None:
                left = deadline - loop.time()
                if left <= 0:
                    raise TimeoutError("timeout")
                wake_task: asyncio.Future[Any] = asyncio.ensure_future(wake.wait())
                done, _ = await asyncio.wait({wake_task, failed}, timeout=left,
                                             return_when=asyncio.FIRST_COMPLETED)
                if wake_task not in done:
                    wake_task.cancel()
                if failed.done():
                    raise failed.result()
                wake.clear()
            d.event("http_transaction_done", status=d.status)
            if d.status is not None and d.status >= 200 and d.bytes:
                op = "read"
            if st["stop"] is not None:
                d.stopped = st["stop"]
                break
            if not _ask_again(d.status, d.bytes - st.get("bytes_before", 0), d.requests, False,
                              loop.time() - st["t_req"], budget):
                d.stopped = "complete"
                break
            st["bytes_before"] = d.bytes
        d.ok = True
    except TimeoutError as exc:
        d.fail(TIMEOUT, op, _short(exc) if str(exc) else "timeout")
        d.stopped = "timeout" if d.bytes else "error"
    except (OSError, _QuicClosed) as exc:
        d.fail(_quic_failure(exc), op, _short(exc))
        d.stopped = "timeout" if d.bytes and d.failure == TIMEOUT else "error"
    finally:
        if proto is not None:
            try:
                proto.close()
            except Exception:  # noqa: BLE001 - closing a dead connection
                pass
        if transport is not None:
            transport.close()
        else:
            sock.close()
        d.event("close")


def fetch_quic(req: Request, budget: Budget, *, rng: random.Random | None = None) -> Download:
    """GET ``req.path`` over HTTP/3 until the budget says stop; a :class:`Download`."""
    if req.transport != "quic":
        raise ValueError("fetch_quic needs a quic request")
    rng = rng or random.Random()
    # aioquic logs connection errors at ERROR level; they are in the result already
    logging.getLogger("quic").addHandler(logging.NullHandler())
    logging.getLogger("quic").propagate = False
    d = Download.begin(req)
    try:
        asyncio.run(asyncio.wait_for(_fetch_quic(req, budget, d, rng), budget.timeout_s + 5))
    except TimeoutError:
        d.fail(TIMEOUT, d.operation or "read", "timeout")
        d.stopped = d.stopped or ("timeout" if d.bytes else "error")
    d.seconds = round(d.elapsed_s(), 6)
    return d


def fetch(req: Request, budget: Budget, *, rng: random.Random | None = None) -> Download:
    """:func:`fetch_tcp` or :func:`fetch_quic` by ``req.transport``."""
    return (fetch_tcp if req.transport == "tcp" else fetch_quic)(req, budget, rng=rng)


ProgressFn = Callable[[str], None]
