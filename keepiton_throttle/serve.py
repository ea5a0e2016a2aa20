"""``throttle-check serve``: a download server for throttling measurements, TLS/TCP and QUIC.

Both listen on the same port number (TCP and UDP). Requests:

* HTTP/1.1 over TLS: ``GET /bytes/N HTTP/1.1`` -> ``200`` with ``Content-Length: N`` and N bytes
  (pseudo-random, so nothing on the path can compress them). Keep-alive is supported.
* HTTP/3 over QUIC (aioquic's :class:`~aioquic.h3.connection.H3Connection`): the same path.
* ``GET /`` answers a one-line help text; other paths 404; ``HEAD`` is answered without body.

**Over the cap:** a request for more bytes than the connection has left under ``max_bytes``
(a per-connection budget, all requests on the connection counted) is answered **413 Content
Too Large**, never silently truncated: a measurement client must not mistake a capped body for
a slow one. Over TCP the connection is then closed.

The server is meant for a public host, so it defends itself:

* any SNI is accepted (the certificate is self-signed; clients do not verify it), and
  per-flow timing can be logged as JSON lines (``log_path``), wall clock in ns;
* at most ``max_conns_per_addr`` concurrent connections per client address and ``max_conns``
  in total; over TCP the excess is closed before the TLS handshake, over QUIC it is closed with
  CONNECTION_REFUSED after address validation;
* QUIC never reflects traffic to an address that did not prove it can receive: by default the
  first Initial of each connection is answered with a Retry (RFC 9000 sec. 8.1.2) that is
  smaller than the Initial; without Retry, aioquic enforces the 3x anti-amplification limit
  (RFC 9000 sec. 8.1);
* idle peers time out: the TLS handshake, reading a request and every write that makes no
  progress (a client that stops reading) are bounded by ``idle_timeout_s``; the send buffer is
  bounded (TCP: asyncio high-water mark; QUIC: at most SEND_HIGH_WATER unacknowledged bytes
  per stream are handed to aioquic), so a stalled reader costs no memory;
* a connection lives at most ``max_duration_s``.

Flow log (``log_path``), one JSON object per connection, written when it ends: ``proto``
("tcp"/"quic"), ``peer``, ``peer_port``, ``sni``, ``t_accept_ns`` (first packet/accept),
``t_handshake_ns``, ``t_close_ns``, ``bytes_sent`` (payload bytes), ``error`` (None or a short
reason such as "tls-handshake-failed: SSLError", "write-stalled", "too-many-connections") and
``requests``: ``path``, ``status``, ``bytes``, ``t_request_ns``, ``t_first_byte_ns``,
``t_last_byte_ns`` (last byte handed to the kernel / to aioquic). Times are Unix ns.

Certificates: ``--cert/--key``, else a self-signed EC P-256 pair generated on first run in the
user's data directory (``$XDG_DATA_HOME/keepiton_throttle`` or ``~/.local/share/...``); an
existing file is never overwritten.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import re
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from .errors import InputError, ThrottleError

__all__ = [
    "SEND_HIGH_WATER",
    "ServeConfig",
    "DownloadServer",
    "default_data_dir",
    "ensure_certificate",
    "run_server",
]

CHUNK = 64 * 1024
SEND_HIGH_WATER = 256 * 1024  # bytes handed to the transport but not yet sent/acked
MAX_HEADER_BYTES = 8192
QUIC_MAX_DATAGRAM = 1350  # fits a 1500-byte MTU with IPv6 + UDP headers
CERT_FILE = "serve-cert.pem"
KEY_FILE = "serve-key.pem"

_REQUEST_LINE = re.compile(rb"^(GET|HEAD) (\S+) HTTP/1\.([01])$")
_BYTES_PATH = re.compile(r"^/bytes/(\d{1,20})(?:\?.*)?$")


class ServeError(ThrottleError):
    """The server could not start (port in use, bad certificate, ...)."""


@dataclass(frozen=True)
class ServeConfig:
    """Settings of :class:`DownloadServer` (bytes, seconds)."""

    listen: str = "0.0.0.0"
    port: int = 443
    cert: Path | None = None
    key: Path | None = None
    max_bytes: int = 100_000_000
    max_conns_per_addr: int = 16
    max_conns: int = 512
    idle_timeout_s: float = 30.0
    max_duration_s: float = 600.0
    log_path: Path | None = None
    tcp: bool = True
    quic: bool = True
    quic_retry: bool = True
    congestion_control: str | None = None
    data_dir: Path | None = None

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_conns_per_addr", "max_conns"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise InputError(f"{name} must be an integer >= 1, got {v!r}")
        if not 0 <= self.port <= 65535:
            raise InputError(f"port must be in [0, 65535], got {self.port}")
        if self.idle_timeout_s <= 0 or self.max_duration_s <= 0:
            raise InputError("idle_timeout_s and max_duration_s must be > 0")
        if (self.cert is None) != (self.key is None):
            raise InputError("give both --cert and --key, or neither")
        if not (self.tcp or self.quic):
            raise InputError("nothing to serve: both TCP and QUIC are disabled")


# ---------------------------------------------------------------------- certificate


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/keepiton_throttle``, default ``~/.local/share/keepiton_throttle``."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "keepiton_throttle"


def ensure_certificate(data_dir: Path | None = None) -> tuple[Path, Path]:
    """Return (cert, key) paths in ``data_dir``, generating a self-signed pair if none exists.

    Files are created exclusively (never overwritten); if only one of the two exists the user
    has to sort it out, so :class:`ServeError` is raised instead of replacing it.
    """
    d = data_dir or default_data_dir()
    cert, key = d / CERT_FILE, d / KEY_FILE
    if cert.exists() and key.exists():
        return cert, key
    if cert.exists() or key.exists():
        have, missing = (cert, key) if cert.exists() else (key, cert)
        raise ServeError(f"found {have} but not {missing}: remove it or pass --cert/--key (not overwriting)")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "keepiton_throttle test server")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(private, hashes.SHA256())
    )
    d.mkdir(parents=True, exist_ok=True)
    key_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    try:
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key_pem)
        fd = os.open(cert, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "wb") as fh:
            fh.write(certificate.public_bytes(serialization.Encoding.PEM))
    except FileExistsError:
        # another server generated them at the same moment: use theirs if complete
        if cert.exists() and key.exists():
            return cert, key
        raise ServeError(f"certificate files in {d} appeared while generating them; retry") from None
    return cert, key


# ---------------------------------------------------------------------- shared bits


class _FlowLog:
    """JSON-lines sink for one record per connection (flow)."""

    def __init__(self, path: Path | None) -> None:
        self._fh: TextIO | None = None
        if path is not None:
            self._fh = open(path, "a", encoding="utf-8", buffering=1)

    def write(self, record: dict[str, Any]) -> None:
        if self._fh is not None:
            self._fh.write(json.dumps(record, separators=(",", ":")) + "\n")

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class _Limits:
    """Concurrent connections per client address and in total."""

    def __init__(self, per_addr: int, total: int) -> None:
        self.per_addr = per_addr
        self.total = total
        self.by_addr: dict[str, int] = {}
        self.count = 0

    def acquire(self, addr: str) -> bool:
        if self.count >= self.total or self.by_addr.get(addr, 0) >= self.per_addr:
            return False
        self.by_addr[addr] = self.by_addr.get(addr, 0) + 1
        self.count += 1
        return True

    def release(self, addr: str) -> None:
        left = self.by_addr.get(addr, 0) - 1
        if left <= 0:
            self.by_addr.pop(addr, None)
        else:
            self.by_addr[addr] = left
        self.count -= 1


def _route(method: str, path: str, budget: int) -> tuple[int, bytes, int]:
    """(status, small body or b"", number of payload bytes to stream) for a request."""
    m = _BYTES_PATH.match(path)
    if m:
        n = int(m.group(1))
        if n > budget:
            return 413, f"requested {n} bytes, this connection may still get {budget}\n".encode(), 0
        return 200, b"", n
    if path == "/" or path.startswith("/?"):
        return 200, b"keepiton_throttle download server: GET /bytes/N\n", 0
    return 404, b"not found: use /bytes/N\n", 0


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 413: "Content Too Large"}


def _now_ns() -> int:
    return time.time_ns()


# ---------------------------------------------------------------------- server


class DownloadServer:
    """TLS/TCP and QUIC download server; ``await start()``, then ``await close()``."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.limits = _Limits(config.max_conns_per_addr, config.max_conns)
        self.payload = os.urandom(CHUNK)
        self._log = _FlowLog(config.log_path)
        self._listen_sock: socket.socket | None = None
        self._quic_server: Any = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.tcp_port: int | None = None
        self.quic_port: int | None = None
        if config.cert is not None and config.key is not None:
            self.cert, self.key = config.cert, config.key
        else:
            self.cert, self.key = ensure_certificate(config.data_dir)
        self._ssl = self._make_ssl_context()

    def _make_ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(str(self.cert), str(self.key))
        except (OSError, ssl.SSLError) as exc:
            raise ServeError(f"cannot load certificate {self.cert} / key {self.key}: {exc}") from exc
        ctx.set_alpn_protocols(["http/1.1"])

        def on_sni(sslobj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
            sslobj.keepiton_sni = name  # type: ignore[attr-defined]

        ctx.sni_callback = on_sni
        return ctx

    async def start(self) -> None:
        cfg = self.config
        try:
            if cfg.tcp:
                family = socket.AF_INET6 if ":" in cfg.listen else socket.AF_INET
                lsock = socket.socket(family, socket.SOCK_STREAM)
                lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    lsock.bind((cfg.listen, cfg.port))
                    lsock.listen(128)
                    lsock.setblocking(False)
                except OSError:
                    lsock.close()
                    raise
                self._listen_sock = lsock
                self.tcp_port = lsock.getsockname()[1]
                self._spawn(self._accept_loop(lsock))
            if cfg.quic:
                port = cfg.port if cfg.port or self.tcp_port is None else self.tcp_port
                await self._start_quic(port)
        except OSError as exc:
            await self.close()
            hint = " (ports below 1024 need root; use --port)" if exc.errno == 13 else ""
            raise ServeError(f"cannot listen on {cfg.listen}:{cfg.port}: {exc.strerror}{hint}") from exc

    async def close(self) -> None:
        if self._listen_sock is not None:
            self._listen_sock.close()
            self._listen_sock = None
        if self._quic_server is not None:
            self._quic_server.close()
            self._quic_server = None
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._log.close()

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ------------------------------------------------------------------ TLS over TCP

    async def _accept_loop(self, lsock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, peer = await loop.sock_accept(lsock)
            except OSError:  # EMFILE and friends: back off instead of spinning
                await asyncio.sleep(0.1)
                continue
            self._spawn(self._handle_tcp(conn, peer))

    async def _handle_tcp(self, conn: socket.socket, peer: Any) -> None:
        cfg = self.config
        addr = str(peer[0])
        rec: dict[str, Any] = {
            "proto": "tcp", "peer": addr, "peer_port": peer[1], "sni": None, "t_accept_ns": _now_ns(),
            "t_handshake_ns": None, "t_close_ns": None, "bytes_sent": 0, "requests": [], "error": None,
        }
        if not self.limits.acquire(addr):
            # refused before the TLS handshake: no work and no bytes for an abusive address
            rec["error"] = "too-many-connections"
            conn.close()
            rec["t_close_ns"] = _now_ns()
            self._log.write(rec)
            return
        writer: asyncio.StreamWriter | None = None
        try:
            if cfg.congestion_control:
                with contextlib.suppress(OSError):
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, cfg.congestion_control.encode())
            loop = asyncio.get_running_loop()
            reader = asyncio.StreamReader(limit=MAX_HEADER_BYTES)
            protocol = asyncio.StreamReaderProtocol(reader)
            try:
                transport, _ = await asyncio.wait_for(
                    loop.connect_accepted_socket(lambda: protocol, conn, ssl=self._ssl,
                                                 ssl_handshake_timeout=cfg.idle_timeout_s),
                    cfg.idle_timeout_s + 1,
                )
            except (ssl.SSLError, ConnectionError, TimeoutError, OSError) as exc:
                rec["error"] = f"tls-handshake-failed: {type(exc).__name__}"
                return
            writer = asyncio.StreamWriter(transport, protocol, reader, loop)
            rec["t_handshake_ns"] = _now_ns()
            sslobj = transport.get_extra_info("ssl_object")
            rec["sni"] = getattr(sslobj, "keepiton_sni", None)
            transport.set_write_buffer_limits(high=SEND_HIGH_WATER)
            await asyncio.wait_for(self._serve_tcp(reader, writer, rec), cfg.max_duration_s)
            # graceful end: what is buffered is flushed, then close_notify and FIN
            await asyncio.wait_for(self._flush(writer, rec), cfg.max_duration_s)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), cfg.idle_timeout_s)
        except TimeoutError:
            rec["error"] = rec["error"] or "timeout"
        except (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            rec["error"] = rec["error"] or type(exc).__name__
        except OSError as exc:
            rec["error"] = rec["error"] or f"OSError: {exc.strerror}"
        finally:
            self.limits.release(addr)
            if writer is not None:
                writer.transport.abort()
            conn.close()
            rec["t_close_ns"] = _now_ns()
            self._log.write(rec)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         rec: dict[str, Any]) -> None:
        cfg = self.config
        idle = cfg.idle_timeout_s
        budget = cfg.max_bytes
        while True:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), idle)
            except asyncio.IncompleteReadError as exc:
                if exc.partial:
                    rec["error"] = "truncated-request"
                return
            except asyncio.LimitOverrunError:
                await self._tcp_respond(writer, 400, b"request header too large\n", 0, head=False, close=True)
                rec["error"] = "header-too-large"
                return
            except TimeoutError:
                rec["error"] = "idle-timeout" if rec["requests"] else "request-timeout"
                return
            lines = head.split(b"\r\n")
            m = _REQUEST_LINE.match(lines[0])
            req: dict[str, Any] = {"t_request_ns": _now_ns(), "path": None, "status": 400, "bytes": 0,
                                   "t_first_byte_ns": None, "t_last_byte_ns": None}
            rec["requests"].append(req)
            if m is None:
                await self._tcp_respond(writer, 400, b"bad request: GET /bytes/N HTTP/1.1\n", 0, head=False, close=True)
                rec["error"] = "bad-request"
                return
            method, path = m.group(1).decode(), m.group(2).decode("latin-1")
            conn_close = m.group(3) == b"0" or any(
                ln.lower().replace(b" ", b"") == b"connection:close" for ln in lines[1:]
            )
            status, body, n = _route(method, path, budget)
            req.update(path=path, status=status)
            close = conn_close or status >= 400
            t_first = await self._tcp_respond(writer, status, body, n, head=method == "HEAD", close=close,
                                              req=req, rec=rec)
            req["t_first_byte_ns"] = t_first
            budget -= req["bytes"]
            if close:
                return

    async def _tcp_respond(self, writer: asyncio.StreamWriter, status: int, body: bytes, n: int, *,
                           head: bool, close: bool, req: dict[str, Any] | None = None,
                           rec: dict[str, Any] | None = None) -> int:
        length = n if status == 200 and n else len(body)
        ctype = "application/octet-stream" if n else "text/plain"
        hdr = (
            f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {ctype}\r\nContent-Length: {length}\r\n"
            f"Cache-Control: no-store\r\nConnection: {'close' if close else 'keep-alive'}\r\n\r\n"
        ).encode()
        writer.write(hdr + (b"" if head else body))
        t_first = _now_ns()
        if not head and n:
            payload = self.payload
            left = n
            idle = self.config.idle_timeout_s
            while left:
                k = CHUNK if left > CHUNK else left
                writer.write(payload[:k])
                left -= k
                if req is not None:
                    req["bytes"] += k
                if rec is not None:
                    rec["bytes_sent"] += k
                try:
                    await asyncio.wait_for(writer.drain(), idle)
                except TimeoutError:
                    if rec is not None:
                        rec["error"] = "write-stalled"
                    raise
        await self._flush(writer, rec)
        if req is not None:
            req["t_last_byte_ns"] = _now_ns()
        return t_first

    async def _flush(self, writer: asyncio.StreamWriter, rec: dict[str, Any] | None) -> None:
        """Wait until the transport's buffer is empty; TimeoutError if it stops shrinking."""
        transport = writer.transport
        idle_ns = int(self.config.idle_timeout_s * 1e9)
        last = -1
        t_last = time.monotonic_ns()
        # the TLS transport counts only its own buffer; the TCP transport under it has another
        raw = getattr(getattr(transport, "_ssl_protocol", None), "_transport", None)
        while (size := transport.get_write_buffer_size() + (raw.get_write_buffer_size() if raw else 0)) > 0:
            now = time.monotonic_ns()
            if size != last:
                last, t_last = size, now
            elif now - t_last > idle_ns:
                if rec is not None:
                    rec["error"] = "write-stalled"
                raise TimeoutError
            await asyncio.sleep(0.02)

    # ------------------------------------------------------------------ QUIC

    async def _start_quic(self, port: int) -> None:
        from aioquic.asyncio.server import QuicServer
        from aioquic.h3.connection import H3_ALPN
        from aioquic.quic.configuration import QuicConfiguration

        cfg = self.config
        qconf = QuicConfiguration(
            is_client=False,
            alpn_protocols=list(H3_ALPN),
            idle_timeout=cfg.idle_timeout_s,
            max_datagram_size=QUIC_MAX_DATAGRAM,
        )
        qconf.load_cert_chain(str(self.cert), str(self.key))
        protocol_class = _make_h3_protocol_class()
        server = self

        def create_protocol(quic: Any, stream_handler: Any = None) -> Any:
            return protocol_class(quic, stream_handler=stream_handler, server=server)

        loop = asyncio.get_running_loop()
        _, proto = await loop.create_datagram_endpoint(
            lambda: QuicServer(configuration=qconf, create_protocol=create_protocol, retry=cfg.quic_retry),
            local_addr=(cfg.listen, port),
        )
        self._quic_server = proto
        transport: Any = proto._transport
        self.quic_port = transport.get_extra_info("sockname")[1]


def _quic_sni(datagram: bytes) -> str | None:
    """The SNI of a client's first Initial, via the shared parser (None if unavailable)."""
    try:
        from .protocols import quic
    except ImportError:
        return None
    try:
        info = quic.client_initial_info([datagram])
    except ValueError:
        return None
    hello = getattr(info, "client_hello", None)
    return getattr(hello, "sni", None)


def _make_h3_protocol_class() -> type:
    """Build the QuicConnectionProtocol subclass lazily (keeps aioquic out of CLI start-up)."""
    from aioquic.asyncio import QuicConnectionProtocol
    from aioquic.h3.connection import H3_ALPN, H3Connection
    from aioquic.h3.events import HeadersReceived
    from aioquic.quic.events import ConnectionTerminated, HandshakeCompleted, ProtocolNegotiated
    from aioquic.quic.packet import QuicErrorCode

    class H3DownloadProtocol(QuicConnectionProtocol):
        def __init__(self, *args: Any, server: DownloadServer, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._server = server
            self._h3: Any = None
            self._addr: str | None = None
            self._admitted = False
            self._budget = server.config.max_bytes
            self._rec: dict[str, Any] = {
                "proto": "quic", "peer": None, "peer_port": None, "sni": None, "t_accept_ns": _now_ns(),
                "t_handshake_ns": None, "t_close_ns": None, "bytes_sent": 0, "requests": [], "error": None,
            }
            self._logged = False
            self._deadline = server._spawn(self._lifetime())

        async def _lifetime(self) -> None:
            try:
                await asyncio.sleep(self._server.config.max_duration_s)
            except asyncio.CancelledError:
                return
            self._rec["error"] = self._rec["error"] or "max-duration"
            self.close(error_code=QuicErrorCode.NO_ERROR, reason_phrase="max duration")

        def datagram_received(self, data: bytes | str, addr: Any) -> None:
            if self._addr is None:
                self._addr = str(addr[0])
                self._rec.update(peer=self._addr, peer_port=addr[1], sni=_quic_sni(data if isinstance(data, bytes) else b""))
                self._admitted = self._server.limits.acquire(self._addr)
                if not self._admitted:
                    self._rec["error"] = "too-many-connections"
                    super().datagram_received(data, addr)
                    self.close(error_code=QuicErrorCode.CONNECTION_REFUSED, reason_phrase="too many connections")
                    return
            super().datagram_received(data, addr)

        def quic_event_received(self, event: Any) -> None:
            if isinstance(event, ProtocolNegotiated) and event.alpn_protocol in H3_ALPN:
                self._h3 = H3Connection(self._quic)
            elif isinstance(event, HandshakeCompleted):
                self._rec["t_handshake_ns"] = _now_ns()
            elif isinstance(event, ConnectionTerminated):
                self._finish(None if event.error_code == 0 else f"closed: {event.reason_phrase or event.error_code}")
            if self._h3 is not None and self._admitted:
                for h3_event in self._h3.handle_event(event):
                    if isinstance(h3_event, HeadersReceived):
                        self._on_request(h3_event)

        def _finish(self, error: str | None) -> None:
            if self._logged:
                return
            self._logged = True
            self._deadline.cancel()
            if self._admitted and self._addr is not None:
                self._server.limits.release(self._addr)
            self._rec["error"] = self._rec["error"] or error
            self._rec["t_close_ns"] = _now_ns()
            self._server._log.write(self._rec)

        def connection_lost(self, exc: Exception | None) -> None:
            self._finish("connection-lost")

        def _on_request(self, event: Any) -> None:
            headers = {k: v for k, v in event.headers}
            method = headers.get(b":method", b"").decode("latin-1")
            path = headers.get(b":path", b"").decode("latin-1")
            req: dict[str, Any] = {"t_request_ns": _now_ns(), "path": path, "status": 400, "bytes": 0,
                                   "t_first_byte_ns": None, "t_last_byte_ns": None}
            self._rec["requests"].append(req)
            sid = event.stream_id
            if method not in ("GET", "HEAD"):
                status, body, n = 400, b"only GET /bytes/N\n", 0
            else:
                status, body, n = _route(method, path, self._budget)
            if method == "HEAD":
                body, length, n = b"", (n or len(body)), 0
            else:
                length = n or len(body)
            self._budget -= n
            req["status"] = status
            self._h3.send_headers(sid, [
                (b":status", str(status).encode()),
                (b"content-type", b"application/octet-stream" if n else b"text/plain"),
                (b"content-length", str(length).encode()),
                (b"cache-control", b"no-store"),
            ], end_stream=not (body or n))
            req["t_first_byte_ns"] = _now_ns()
            if body:
                self._h3.send_data(sid, body, end_stream=True)
            self.transmit()
            if n:
                self._server._spawn(self._send_body(sid, n, req))
            else:
                req["t_last_byte_ns"] = _now_ns()

        def _unacked(self, sid: int) -> int:
            stream = self._quic._streams.get(sid)
            if stream is None:
                return 0
            sender = stream.sender
            return int(sender._buffer_stop - sender._buffer_start)

        async def _send_body(self, sid: int, n: int, req: dict[str, Any]) -> None:
            payload = self._server.payload
            idle_ns = int(self._server.config.idle_timeout_s * 1e9)
            sent = 0
            last_progress = time.monotonic_ns()
            last_unacked = -1
            try:
                while sent < n and not self._logged:
                    unacked = self._unacked(sid)
                    if unacked < SEND_HIGH_WATER:
                        k = min(CHUNK, n - sent)
                        self._h3.send_data(sid, payload[:k], end_stream=sent + k == n)
                        sent += k
                        req["bytes"] += k
                        self._rec["bytes_sent"] += k
                        self.transmit()
                        last_progress = time.monotonic_ns()
                        continue
                    if unacked != last_unacked:
                        last_unacked = unacked
                        last_progress = time.monotonic_ns()
                    elif time.monotonic_ns() - last_progress > idle_ns:
                        self._rec["error"] = "write-stalled"
                        self.close(error_code=QuicErrorCode.NO_ERROR, reason_phrase="write stalled")
                        return
                    await asyncio.sleep(0.005)
                req["t_last_byte_ns"] = _now_ns()
            except Exception as exc:  # stream reset by the peer, connection gone
                self._rec["error"] = self._rec["error"] or f"send-failed: {type(exc).__name__}"

    return H3DownloadProtocol


async def run_server(config: ServeConfig, *, on_ready: Callable[[DownloadServer], None] | None = None) -> None:
    """Start a :class:`DownloadServer` and serve until cancelled."""
    server = DownloadServer(config)
    await server.start()
    try:
        if on_ready is not None:
            on_ready(server)
        await asyncio.Event().wait()
    finally:
        await server.close()

