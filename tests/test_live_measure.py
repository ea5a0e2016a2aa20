"""The live check's download clients: HTTP/1.1 reading, TCP_INFO, failures as data, the split
probes, and real failures against closed loopback ports."""

from __future__ import annotations

import errno
import random
import socket
import ssl
import struct
from typing import Any

import pytest

from keepiton_throttle.live import measure as m
from keepiton_throttle.live.measure import (
    Budget,
    Request,
    ResponseParser,
    classify_error,
    parse_tcp_info,
)

# ---------------------------------------------------------------------- HTTP/1.1


def _feed_all(parser: ResponseParser, data: bytes, cuts: list[int]) -> int:
    got = 0
    last = 0
    for c in [*cuts, len(data)]:
        got += parser.feed(data[last:c])
        last = c
    return got


def test_content_length_body_is_counted_across_any_split() -> None:
    msg = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nServer: x\r\n\r\n0123456789"
    for cut in range(len(msg) + 1):
        p = ResponseParser()
        assert _feed_all(p, msg, [cut]) == 10
        assert p.done and p.status == 200 and p.length == 10 and not p.close


def test_chunked_body_is_counted_without_framing_across_any_split() -> None:
    msg = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
           b"5\r\nhello\r\n1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nTrailer: t\r\n\r\n")
    for cut in range(len(msg) + 1):
        for cut2 in (cut, min(len(msg), cut + 7)):
            p = ResponseParser()
            assert _feed_all(p, msg, [cut, cut2]) == 31, (cut, cut2)
            assert p.done and p.chunked and p.close and p.body == 31


def test_close_delimited_and_empty_bodies() -> None:
    p = ResponseParser()
    assert p.feed(b"HTTP/1.0 200 OK\r\n\r\nabc") == 3 and not p.done
    assert p.feed(b"def") == 3 and p.body == 6
    p = ResponseParser()
    assert p.feed(b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n") == 0 and p.done
    p = ResponseParser()
    assert p.feed(b"HTTP/1.1 301 Moved\r\nContent-Length: 0\r\n\r\n") == 0 and p.done and p.status == 301


@pytest.mark.parametrize("head, message", [
    (b"SSH-2.0-OpenSSH\r\n\r\n", "not an HTTP/1.x status line"),
    (b"HTTP/1.1 abc OK\r\n\r\n", "not an HTTP/1.x status line"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad chunk size"),
])
def test_malformed_responses_raise(head: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ResponseParser().feed(head)


def test_a_head_that_never_ends_is_refused() -> None:
    p = ResponseParser(max_head=100)
    with pytest.raises(ValueError, match="too long"):
        p.feed(b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 30)


# ---------------------------------------------------------------------- TCP_INFO, failures


def test_parse_tcp_info_reads_the_linux_layout() -> None:
    raw = bytearray(232)
    raw[0], raw[2] = 1, 3  # state ESTABLISHED, retransmits
    words = list(range(24))
    words[0] = 204_000  # rto us
    words[15] = 41_500  # rtt us (offset 68)
    words[21] = 43_250  # rcv_rtt us (offset 92)
    words[23] = 17  # total_retrans (offset 100)
    struct.pack_into("=24I", raw, 8, *words)
    struct.pack_into("=Q", raw, 128, 123_456_789)  # bytes_received
    struct.pack_into("=I", raw, 148, 40_100)  # min_rtt us
    struct.pack_into("=Q", raw, 160, 1_000_000)  # delivery rate, bytes/s
    struct.pack_into("=I", raw, 224, 9)  # rcv_ooopack
    info = parse_tcp_info(bytes(raw))
    assert info["state"] == 1 and info["retransmits"] == 3
    assert info["rto_ms"] == 204.0 and info["rtt_ms"] == 41.5 and info["rcv_rtt_ms"] == 43.25
    assert info["total_retrans"] == 17 and info["bytes_received"] == 123_456_789
    assert info["min_rtt_ms"] == 40.1 and info["delivery_rate_bps"] == 8_000_000 and info["rcv_ooopack"] == 9
    old = parse_tcp_info(bytes(raw[:104]))  # an old kernel's shorter struct
    assert "rtt_ms" in old and "bytes_received" not in old and "min_rtt_ms" not in old


@pytest.mark.parametrize("exc, failure", [
    (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), "dns_nxdomain_error"),
    (socket.gaierror(socket.EAI_AGAIN, "Temporary failure"), "dns_temporary_failure"),
    (socket.gaierror(socket.EAI_FAIL, "Non-recoverable"), "dns_lookup_error"),
    (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), "connection_refused"),
    (ConnectionResetError(errno.ECONNRESET, "reset"), "connection_reset"),
    (BrokenPipeError(errno.EPIPE, "pipe"), "connection_reset"),
    (TimeoutError("timed out"), "generic_timeout_error"),
    (OSError(errno.ENETUNREACH, "unreachable"), "network_unreachable"),
    (OSError(errno.EHOSTUNREACH, "no route"), "host_unreachable"),
    (ssl.SSLError(1, "[SSL: TLSV1_ALERT_HANDSHAKE_FAILURE]"), "ssl_failed_handshake"),
    (ssl.SSLEOFError(8, "EOF occurred"), "eof_error"),
    (ValueError("x"), "unknown_failure"),
])
def test_classify_error_uses_ooni_failure_strings(exc: BaseException, failure: str) -> None:
    assert classify_error(exc) == failure
    assert failure in m.FAILURES


def test_certificate_failures_are_told_apart() -> None:
    def cert_error(code: int, text: str) -> ssl.SSLCertVerificationError:
        e = ssl.SSLCertVerificationError(1, text)
        e.verify_code = code
        return e

    assert classify_error(cert_error(62, "Hostname mismatch")) == "ssl_invalid_hostname"
    assert classify_error(cert_error(18, "self-signed certificate")) == "ssl_unknown_authority"
    assert classify_error(cert_error(10, "certificate has expired")) == "ssl_invalid_certificate"


def test_budget_stops_on_time_and_bytes() -> None:
    b = Budget(duration_s=2.0, min_bytes=65536, max_bytes=1_000_000, timeout_s=10)
    assert b.done(10, 0.5) is None
    assert b.done(10, 5.0) is None  # the stall check: at least 64 KiB
    assert b.done(65536, 2.0) == "duration"
    assert b.done(1_000_000, 0.1) == "max_bytes"
    assert Budget(max_bytes=1000, timeout_s=10).done(1000, 0.0) == "max_bytes"
    with pytest.raises(ValueError, match="timeout_s"):
        Budget(duration_s=5, timeout_s=5)
    with pytest.raises(ValueError, match="max_bytes"):
        Budget(max_bytes=0)


def test_request_validation() -> None:
    with pytest.raises(ValueError, match="transport"):
        Request("sctp", "a", "a", "127.0.0.1", 443, "/")
    with pytest.raises(ValueError, match="path"):
        Request("tcp", "a", "a", "127.0.0.1", 443, "bytes")


def test_resolve_pinned_and_literal_addresses_without_dns() -> None:
    r = m.resolve("Example.ORG", 443, pinned={"example.org": ["192.0.2.7"]})
    assert r.addresses == ("192.0.2.7",) and r.pinned and r.failure is None
    assert m.resolve("192.0.2.9", 443).addresses == ("192.0.2.9",)
    assert m.resolve("2001:db8::1", 443).addresses == ("2001:db8::1",)


# ---------------------------------------------------------------------- split probes


def test_split_offset_cuts_inside_the_sni() -> None:
    hello = b"\x16\x03\x01...\x00\x00\x0dabs.twimg.com\x00..."
    cut = m.split_offset(hello, "abs.twimg.com")
    assert hello[:cut].endswith(b"abs.tw") and hello[cut:].startswith(b"img.com")
    with pytest.raises(ValueError, match="not found"):
        m.split_offset(hello, "example.org")


@pytest.mark.parametrize("split", [False, True])
def test_split_quic_initial_hides_the_sni_from_the_first_datagram(split: bool) -> None:
    from aioquic.h3.connection import H3_ALPN
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection

    from keepiton_throttle.protocols.quic import client_initial_info

    cls = m._split_connection_class(QuicConnection) if split else QuicConnection
    conn = cls(configuration=QuicConfiguration(is_client=True, alpn_protocols=list(H3_ALPN),
                                               server_name="abs.twimg.com", max_datagram_size=1350))
    if split:
        conn.split_sni = "abs.twimg.com"
    conn.connect(("192.0.2.1", 443), now=0.0)
    datagrams = [d for d, _ in conn.datagrams_to_send(now=0.0)]
    assert all(len(d) >= 1200 for d in datagrams)  # RFC 9000 sec. 14.1: padded Initial datagrams
    whole = client_initial_info(datagrams)
    assert whole is not None and whole.client_hello is not None and whole.client_hello.sni == "abs.twimg.com"
    first = client_initial_info(datagrams[:1])
    if split:
        assert len(datagrams) == 2 and conn.split_at is not None
        assert first is None or first.client_hello is None or first.client_hello.truncated
    else:
        assert len(datagrams) == 1 and first is not None and first.client_hello is not None


# ---------------------------------------------------------------------- real failures on loopback


def _closed_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_refused_tcp_connection_is_a_result() -> None:
    port = _closed_port(socket.SOCK_STREAM)
    d = m.fetch(Request("tcp", "refused.example", "refused.example", "127.0.0.1", port, "/"),
                Budget(duration_s=0.5, timeout_s=3))
    assert not d.ok and d.failure == "connection_refused" and d.operation == "connect"
    assert d.bytes == 0 and d.events[0]["operation"] == "connect" and d.events[0]["failure"] == "connection_refused"
    assert d.to_json()["failure"] == "connection_refused"


def test_quic_to_a_closed_port_is_refused_not_a_timeout() -> None:
    port = _closed_port(socket.SOCK_DGRAM)
    d = m.fetch(Request("quic", "refused.example", "refused.example", "127.0.0.1", port, "/"),
                Budget(duration_s=0.5, timeout_s=3))
    assert not d.ok and d.failure == "connection_refused" and d.operation == "quic_handshake"
    assert (d.seconds or 0) < 3  # answered by ICMP, not by the time-out


def test_quic_without_any_reply_is_a_handshake_timeout() -> None:
    """What a censor that drops QUIC looks like: the Initials go out, nothing comes back."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.bind(("127.0.0.1", 0))  # receives and never answers
        port = sink.getsockname()[1]
        d = m.fetch(Request("quic", "abs.twimg.com", "abs.twimg.com", "127.0.0.1", port, "/"),
                    Budget(duration_s=0.2, timeout_s=1.5))
        got = sink.recvfrom(2048)[0]
    assert not d.ok and d.failure == "generic_timeout_error" and d.operation == "quic_handshake"
    assert d.error == "no reply to the QUIC Initial packets" and d.bytes == 0
    assert len(got) >= 1200 and got[0] & 0xC0 == 0xC0  # a padded long-header Initial did leave


def test_a_server_that_resets_after_the_clienthello() -> None:
    """A listener that closes right after reading the ClientHello (what a DPI reset looks like
    from the client)."""
    import threading

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    port = srv.getsockname()[1]

    def serve() -> None:
        c, _ = srv.accept()
        c.recv(4096)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST on close
        c.close()

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    d = m.fetch(Request("tcp", "abs.twimg.com", "abs.twimg.com", "127.0.0.1", port, "/", verify=False),
                Budget(duration_s=0.5, timeout_s=3))
    th.join()
    srv.close()
    assert not d.ok and d.operation == "tls_handshake"
    assert d.failure in ("connection_reset", "eof_error")


def _tls_server(tmp_path: Any, answer: bytes, *, requests: int = 1) -> tuple[socket.socket, Any]:
    """A one-connection TLS server on loopback that answers ``requests`` requests with
    ``answer`` and then closes (without announcing it)."""
    import threading

    from keepiton_throttle.serve import ensure_certificate

    cert, key = ensure_certificate(tmp_path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()

    def serve() -> None:
        raw, _ = srv.accept()
        with ctx.wrap_socket(raw, server_side=True) as c:
            for _ in range(requests):
                head = b""
                while b"\r\n\r\n" not in head:
                    head += c.recv(4096)
                c.sendall(answer)
        srv.close()

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    return srv, th


@pytest.mark.parametrize("split", [False, True])
def test_a_server_that_closes_instead_of_keeping_alive_delivered_its_object(tmp_path: Any, split: bool) -> None:
    body = b"b" * 5000
    srv, th = _tls_server(tmp_path, b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + body)
    port = srv.getsockname()[1]
    d = m.fetch(Request("tcp", "abs.twimg.com", "abs.twimg.com", "127.0.0.1", port, "/x", verify=False,
                        split_hello=split), Budget(duration_s=5, timeout_s=10), rng=random.Random(3))
    th.join()
    assert d.ok and d.failure is None and d.stopped == "complete", (d.failure, d.error)
    assert d.status == 200 and d.bytes == 5000 and d.expected_bytes == 5000 and d.requests == 2
    assert d.handshake_s is not None and d.reads and sum(n for _, n in d.reads) >= 5000
    assert (d.split_at is not None) == split
    ops = [e["operation"] for e in d.events]
    assert ops[:3] == ["connect", "tls_handshake_start", "write"] and "tls_handshake_done" in ops
    assert ops.count("write") == (2 if split else 1) and ops[-1] == "close"
    assert d.tcp_info and "rtt_ms" in d.tcp_info[0]


def test_an_object_is_requested_again_until_the_stall_check_has_its_bytes(tmp_path: Any) -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 30000\r\n\r\n" + b"c" * 30000
    srv, th = _tls_server(tmp_path, answer, requests=3)
    port = srv.getsockname()[1]
    d = m.fetch(Request("tcp", "x.example", "x.example", "127.0.0.1", port, "/", verify=False),
                Budget(duration_s=0.0, min_bytes=65536, timeout_s=10))
    th.join()
    assert d.ok and d.stopped == "duration" and d.requests == 3 and 65536 <= d.bytes <= 90000
