"""The download server (``throttle-check serve``), on loopback, including misbehaving clients."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from keepiton_throttle.serve import (
    CERT_FILE,
    KEY_FILE,
    DownloadServer,
    ServeConfig,
    ServeError,
    ensure_certificate,
)
from keepiton_throttle.testbed.cli import serve_command
from keepiton_throttle.testbed.client import fetch_quic, fetch_tcp


class RunningServer:
    """A DownloadServer on its own event loop in a background thread."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.server: DownloadServer | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("server did not start")
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            try:
                self.server = DownloadServer(self.config)
                await self.server.start()
            except BaseException as exc:
                self._error = exc
                self._ready.set()
                return
            self._ready.set()
            await self._stop.wait()
            await self.server.close()

        asyncio.run(main())

    @property
    def port(self) -> int:
        assert self.server is not None and self.server.tcp_port is not None
        return self.server.tcp_port

    def log(self) -> list[dict[str, Any]]:
        path = self.config.log_path
        assert path is not None
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def wait_log(self, pred: Any, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for rec in self.log():
                if pred(rec):
                    return rec
            time.sleep(0.05)
        raise AssertionError(f"no matching log record in {self.log()}")

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Any]:
    servers: list[RunningServer] = []

    def make(**kw: Any) -> RunningServer:
        base = ServeConfig(
            listen="127.0.0.1",
            port=0,
            data_dir=tmp_path / "data",
            log_path=tmp_path / f"flows{len(servers)}.jsonl",
            max_bytes=5_000_000,
            idle_timeout_s=2.0,
        )
        s = RunningServer(replace(base, **kw))
        servers.append(s)
        return s

    try:
        yield make
    finally:
        for s in servers:
            s.stop()


def test_downloads_over_tls_and_http3(make_server: Any) -> None:
    srv = make_server()
    tcp = fetch_tcp("127.0.0.1", srv.port, "abs.twimg.com", 1_000_000, timeout=10)
    assert tcp["ok"], tcp
    assert tcp["bytes"] == 1_000_000
    quic = fetch_quic("127.0.0.1", srv.port, "pbs.twimg.com", 300_000, timeout=10)
    assert quic["ok"], quic
    rec = srv.wait_log(lambda r: r["proto"] == "tcp" and r["t_close_ns"])
    assert rec["sni"] == "abs.twimg.com"
    assert rec["requests"][0]["status"] == 200 and rec["requests"][0]["bytes"] == 1_000_000
    assert (
        rec["t_accept_ns"]
        <= rec["t_handshake_ns"]
        <= rec["requests"][0]["t_last_byte_ns"]
        <= rec["t_close_ns"]
    )
    qrec = srv.wait_log(lambda r: r["proto"] == "quic" and r["requests"])
    assert qrec["requests"][0]["path"] == "/bytes/300000"


def test_zero_bytes_and_other_paths(make_server: Any) -> None:
    srv = make_server()
    r = fetch_tcp("127.0.0.1", srv.port, "x.test", 0, timeout=10)
    assert r["ok"] and r["bytes"] == 0
    r = fetch_tcp("127.0.0.1", srv.port, "x.test", 0, path="/nope", timeout=10)
    assert r["status"] == 404


def test_request_above_cap_is_413_not_truncated(make_server: Any) -> None:
    srv = make_server(max_bytes=100_000)
    tcp = fetch_tcp("127.0.0.1", srv.port, "a.test", 100_001, timeout=10)
    assert tcp["status"] == 413 and not tcp["ok"]
    quic = fetch_quic("127.0.0.1", srv.port, "a.test", 200_000, timeout=10)
    assert quic["status"] == 413 and not quic["ok"]
    ok = fetch_tcp("127.0.0.1", srv.port, "a.test", 100_000, timeout=10)
    assert ok["ok"]


def test_garbage_instead_of_client_hello(make_server: Any) -> None:
    srv = make_server()
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
        s.sendall(b"GET /bytes/1000 HTTP/1.1\r\nHost: x\r\n\r\n" + os.urandom(3000))
        s.settimeout(5)
        data = b""
        try:
            while chunk := s.recv(4096):
                data += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    assert len(data) < 100  # at most a TLS alert, never a response
    rec = srv.wait_log(lambda r: r["error"] and "tls-handshake-failed" in r["error"])
    assert rec["bytes_sent"] == 0
    assert fetch_tcp("127.0.0.1", srv.port, "a.test", 10_000, timeout=10)["ok"]


def test_silent_client_times_out(make_server: Any) -> None:
    srv = make_server(idle_timeout_s=0.5)
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
        t0 = time.monotonic()
        s.settimeout(5)
        assert s.recv(100) == b""  # closed by the server, not by our timeout
        assert time.monotonic() - t0 < 3


def test_client_that_stops_reading_is_dropped(make_server: Any) -> None:
    srv = make_server(max_bytes=200_000_000, idle_timeout_s=1.0)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.connect(("127.0.0.1", srv.port))
    with ctx.wrap_socket(raw, server_hostname="stall.test") as s:
        s.sendall(b"GET /bytes/200000000 HTTP/1.1\r\nHost: stall.test\r\n\r\n")
        s.recv(1000)  # the headers and a little data; then never read again
        rec = srv.wait_log(lambda r: r["t_close_ns"] is not None, timeout=10)
    assert rec["error"] == "write-stalled"
    # bounded by socket buffers and the high-water mark, nowhere near the 200 MB asked for
    assert rec["bytes_sent"] < 20_000_000
    assert (rec["t_close_ns"] - rec["t_handshake_ns"]) / 1e9 < 5


def test_connections_per_address_are_capped(make_server: Any) -> None:
    srv = make_server(max_conns_per_addr=2)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    held = [
        ctx.wrap_socket(
            socket.create_connection(("127.0.0.1", srv.port), timeout=5), server_hostname="h.test"
        )
        for _ in range(2)
    ]
    try:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as third:
            try:
                assert third.recv(10) == b""
            except ConnectionResetError:
                pass
        srv.wait_log(lambda r: r["error"] == "too-many-connections")
    finally:
        for s in held:
            s.close()
    time.sleep(0.2)
    assert fetch_tcp("127.0.0.1", srv.port, "h.test", 1000, timeout=5)["ok"]


def _quic_initials(count: int) -> list[bytes]:
    from aioquic.h3.connection import H3_ALPN
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection

    out = []
    for i in range(count):
        conf = QuicConfiguration(
            is_client=True, alpn_protocols=list(H3_ALPN), server_name=f"flood{i}.test"
        )
        conn = QuicConnection(configuration=conf)
        conn.connect(("127.0.0.1", 4433), now=0.0)
        out.extend(data for data, _ in conn.datagrams_to_send(now=0.0))
    return out


@pytest.mark.parametrize("retry", [True, False])
def test_quic_initial_flood_is_not_amplified(make_server: Any, retry: bool) -> None:
    srv = make_server(quic_retry=retry)
    initials = _quic_initials(150)
    assert all(len(d) >= 1200 for d in initials)
    spoofed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    spoofed.bind(("127.0.0.66", 0))  # an address that never completes a handshake
    spoofed.setblocking(False)
    sent = received = 0
    result: dict[str, Any] = {}
    legit = threading.Thread(
        target=lambda: result.update(
            fetch_quic("127.0.0.1", srv.port, "ok.test", 200_000, timeout=15)
        )
    )
    try:
        legit.start()
        for d in initials:
            sent += spoofed.sendto(d, ("127.0.0.1", srv.port))
            time.sleep(0.0005)
        deadline = time.monotonic() + 3.0  # also catches PTO retransmissions of unvalidated paths
        while time.monotonic() < deadline:
            try:
                received += len(spoofed.recv(65536))
            except BlockingIOError:
                time.sleep(0.01)
        legit.join(20)
    finally:
        spoofed.close()
    assert result.get("ok"), result
    assert received <= 3 * sent, (received, sent)
    if retry:
        assert received <= sent  # a Retry is smaller than the Initial it answers


def test_certificate_generated_once_and_never_overwritten(tmp_path: Path) -> None:
    d = tmp_path / "d"
    cert, key = ensure_certificate(d)
    assert (cert.name, key.name) == (CERT_FILE, KEY_FILE)
    assert key.stat().st_mode & 0o777 == 0o600
    before = cert.read_bytes()
    assert ensure_certificate(d) == (cert, key) and cert.read_bytes() == before
    key.unlink()
    with pytest.raises(ServeError, match="not overwriting"):
        ensure_certificate(d)
    assert cert.read_bytes() == before


def test_serve_cli_errors_are_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(serve_command, ["--cert", str(tmp_path / "c.pem")])
    assert res.exit_code == 2 and "--key" in res.output
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {"XDG_DATA_HOME": str(tmp_path)}
        res = runner.invoke(
            serve_command, ["--listen", "127.0.0.1", "--port", str(port), "--no-quic"], env=env
        )
    assert res.exit_code == 1
    assert "cannot listen on 127.0.0.1" in res.output and "Traceback" not in res.output
