"""Download clients for the testbed: HTTP/1.1 over TLS/TCP and HTTP/3 over QUIC.

These are the clients of the sample-data script and the tests, run inside the client namespace.
The TLS client drives :class:`ssl.SSLObject` over a :class:`ssl.MemoryBIO` so that it controls
how the ClientHello is cut into TCP segments: ``split_hello_at`` sends the hello in two
``send()`` calls with TCP_NODELAY (the known DPI evasion of splitting inside the SNI).

Results are plain dicts in the shape of the ``client_results`` records of the shared corpus'
labels (``ok``, ``bytes``, ``seconds``, ``handshake_s``, ``t_start``, ``t_end``, ``error``), plus
``local_port`` and ``status``. A failed download is a result with ``ok`` False, not an exception.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from typing import Any

__all__ = ["client_hello_bytes", "fetch", "fetch_quic", "fetch_tcp", "split_offset"]


def _result(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "ok": False, "bytes": 0, "seconds": None, "handshake_s": None, "split_hello_at": None,
        "t_start": None, "t_end": None, "error": None, "local_port": None, "status": None,
    }
    base.update(kw)
    return base


def _client_context(alpn: str = "http/1.1") -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the testbed server's certificate is self-signed
    ctx.set_alpn_protocols([alpn])
    return ctx


def client_hello_bytes(sni: str) -> bytes:
    """The TLS records of a fresh ClientHello for ``sni`` (as Python's ssl would send it)."""
    obj = _client_context().wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO(), server_hostname=sni)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return out.read()


def split_offset(hello: bytes, sni: str) -> int:
    """An offset in the middle of the SNI's bytes inside ``hello`` (for a split ClientHello)."""
    i = hello.find(sni.encode("ascii"))
    if i < 0:
        raise ValueError(f"SNI {sni!r} not found in the ClientHello")
    return i + max(1, len(sni) // 2)


def fetch_tcp(host: str, port: int, sni: str, nbytes: int, *, split_hello: bool = False,
              timeout: float = 60.0, path: str | None = None) -> dict[str, Any]:
    """GET /bytes/``nbytes`` over TLS with SNI ``sni``; the result dict described above."""
    t_start = time.time()
    t0 = time.monotonic()
    res = _result(t_start=t_start)
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        res["error"] = f"connect: {exc}"
        return res
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        res["local_port"] = sock.getsockname()[1]
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = _client_context().wrap_bio(incoming, outgoing, server_hostname=sni)
        try:
            obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        hello = outgoing.read()
        if split_hello:
            cut = split_offset(hello, sni)
            res["split_hello_at"] = cut
            sock.sendall(hello[:cut])
            time.sleep(0.02)  # let the first part leave as its own segment
            sock.sendall(hello[cut:])
        else:
            sock.sendall(hello)

        def pump() -> bool:
            out = outgoing.read()
            if out:
                sock.sendall(out)
            data = sock.recv(65536)
            if not data:
                return False
            incoming.write(data)
            return True

        while True:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                if not pump():
                    raise ConnectionError("connection closed during the TLS handshake") from None
        out = outgoing.read()
        if out:
            sock.sendall(out)
        res["handshake_s"] = round(time.monotonic() - t0, 4)
        req_path = path or f"/bytes/{nbytes}"
        obj.write(f"GET {req_path} HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n".encode())
        sock.sendall(outgoing.read())
        head = b""
        body = 0
        length: int | None = None
        while True:
            try:
                chunk = obj.read(65536)
            except ssl.SSLWantReadError:
                if not pump():
                    break
                continue
            except ssl.SSLZeroReturnError:
                break
            if not chunk:
                break
            if length is None:
                head += chunk
                if b"\r\n\r\n" in head:
                    hdr, rest = head.split(b"\r\n\r\n", 1)
                    lines = hdr.split(b"\r\n")
                    res["status"] = int(lines[0].split()[1])
                    length = 0
                    for ln in lines[1:]:
                        k, _, v = ln.partition(b":")
                        if k.strip().lower() == b"content-length":
                            length = int(v.strip())
                    body = len(rest)
            else:
                body += len(chunk)
            if length is not None and body >= length:
                break
        res["bytes"] = body
        res["ok"] = res["status"] == 200 and length is not None and body == length
        if not res["ok"] and res["error"] is None:
            res["error"] = f"status {res['status']}, {body} of {length} bytes"
    except (OSError, ssl.SSLError, ValueError, IndexError) as exc:
        res["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        sock.close()
        res["t_end"] = time.time()
        res["seconds"] = round(time.monotonic() - t0, 4)
    return res


async def _fetch_quic(host: str, port: int, sni: str, nbytes: int, timeout: float, path: str | None,
                      res: dict[str, Any]) -> None:
    from aioquic.asyncio import QuicConnectionProtocol
    from aioquic.h3.connection import H3_ALPN, H3Connection
    from aioquic.h3.events import DataReceived, HeadersReceived
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection
    from aioquic.quic.events import ConnectionTerminated

    done = asyncio.get_running_loop().create_future()
    state: dict[str, Any] = {"bytes": 0, "status": None}

    class Client(QuicConnectionProtocol):
        def __init__(self, *a: Any, **kw: Any) -> None:
            super().__init__(*a, **kw)
            self.h3 = H3Connection(self._quic)

        def quic_event_received(self, event: Any) -> None:
            if isinstance(event, ConnectionTerminated) and not done.done():
                done.set_exception(ConnectionError(f"connection closed: {event.reason_phrase or event.error_code}"))
            for ev in self.h3.handle_event(event):
                if isinstance(ev, HeadersReceived):
                    state["status"] = int(dict(ev.headers).get(b":status", b"0"))
                elif isinstance(ev, DataReceived):
                    state["bytes"] += len(ev.data)
                if getattr(ev, "stream_ended", False) and not done.done():
                    done.set_result(None)

    conf = QuicConfiguration(is_client=True, alpn_protocols=list(H3_ALPN), server_name=sni,
                             verify_mode=ssl.CERT_NONE, max_datagram_size=1350, idle_timeout=timeout)
    loop = asyncio.get_running_loop()
    addr = (await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM, family=socket.AF_INET))[0][4]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", 0))
    t0 = time.monotonic()
    # not aioquic's connect(): its exit waits out the closing period (3 PTO), which a measurement
    # client has no use for; CONNECTION_CLOSE is still sent
    transport, protocol = await loop.create_datagram_endpoint(lambda: Client(QuicConnection(configuration=conf)),
                                                              sock=sock)
    proto: Any = protocol
    try:
        proto.connect(addr)
        await asyncio.wait_for(proto.wait_connected(), timeout)
        res["handshake_s"] = round(time.monotonic() - t0, 4)
        res["local_port"] = sock.getsockname()[1]
        sid = proto._quic.get_next_available_stream_id()
        proto.h3.send_headers(sid, [
            (b":method", b"GET"), (b":scheme", b"https"), (b":authority", sni.encode()),
            (b":path", (path or f"/bytes/{nbytes}").encode()),
        ], end_stream=True)
        proto.transmit()
        await asyncio.wait_for(done, timeout)
        res["t_end"] = time.time()
        res["seconds"] = round(time.monotonic() - t0, 4)
        res["status"] = state["status"]
        res["bytes"] = state["bytes"]
        res["ok"] = state["status"] == 200 and state["bytes"] == nbytes
    finally:
        proto.close()
        transport.close()


def fetch_quic(host: str, port: int, sni: str, nbytes: int, *, timeout: float = 60.0,
               path: str | None = None) -> dict[str, Any]:
    """GET /bytes/``nbytes`` over HTTP/3 with SNI ``sni``; the result dict described above."""
    res = _result(t_start=time.time())
    t0 = time.monotonic()
    try:
        asyncio.run(asyncio.wait_for(_fetch_quic(host, port, sni, nbytes, timeout, path, res), timeout + 5))
    except (OSError, ConnectionError, TimeoutError, ValueError) as exc:
        res["error"] = f"{type(exc).__name__}: {exc}"
    if res["t_end"] is None:
        res["t_end"] = time.time()
        res["seconds"] = round(time.monotonic() - t0, 4)
    if not res["ok"] and res["error"] is None:
        res["error"] = f"status {res['status']}, {res['bytes']} of {nbytes} bytes"
    return res


def fetch(transport: str, host: str, port: int, sni: str, nbytes: int, **kw: Any) -> dict[str, Any]:
    """Dispatch to :func:`fetch_tcp` (``transport="tcp"``) or :func:`fetch_quic` (``"quic"``)."""
    if transport == "tcp":
        return fetch_tcp(host, port, sni, nbytes, **kw)
    if transport == "quic":
        kw.pop("split_hello", None)
        return fetch_quic(host, port, sni, nbytes, **kw)
    raise ValueError(f"transport must be 'tcp' or 'quic', got {transport!r}")
