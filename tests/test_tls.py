"""Tests for keepiton_throttle.protocols.tls: hand-built ClientHellos, records, reassembly,
robustness, and the SNIs of the real-capture corpus (/work/shared/corpus/real)."""

from __future__ import annotations

import gzip
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keepiton_throttle.errors import InputError
from keepiton_throttle.protocols.tls import (
    MAX_CLIENT_HELLO_BODY_LENGTH,
    ClientHello,
    TLSParseError,
    find_client_hello,
    parse_client_hello_message,
    parse_client_hello_prefix,
    parse_client_hello_records,
    reassemble_prefix,
)

from .conftest import REAL, have_corpus, manifest, requires_corpus

# --- builders (RFC 8446 sec. 4.1.2, RFC 6066 sec. 3, RFC 7301 sec. 3.1) -----------------------


def vec(length_size: int, data: bytes) -> bytes:
    """A TLS vector: big-endian length of ``length_size`` bytes, then the data."""
    return len(data).to_bytes(length_size, "big") + data


def ext(ext_type: int, data: bytes) -> bytes:
    return ext_type.to_bytes(2, "big") + vec(2, data)


def sni_ext(*names: bytes, name_type: int = 0) -> bytes:
    return ext(0, vec(2, b"".join(bytes([name_type]) + vec(2, n) for n in names)))


def alpn_ext(*protocols: bytes) -> bytes:
    return ext(16, vec(2, b"".join(vec(1, p) for p in protocols)))


def versions_ext(*versions: int) -> bytes:
    return ext(43, vec(1, b"".join(v.to_bytes(2, "big") for v in versions)))


ECH_EXT = ext(
    0xFE0D, bytes.fromhex("0000010001") + vec(1, b"\x42") + vec(2, bytes(32)) + vec(2, bytes(64))
)
GREASE_EXT = ext(0x4A4A, b"")
KEY_SHARE_EXT = ext(51, vec(2, (0x001D).to_bytes(2, "big") + vec(2, bytes(range(32)))))


def client_hello(
    *extensions: bytes,
    legacy_version: int = 0x0303,
    session_id: bytes = bytes(32),
    suites: tuple[int, ...] = (0x1301, 0x1302, 0x1303),
    compression: bytes = b"\x00",
    with_extensions: bool = True,
) -> bytes:
    """A ClientHello handshake message (4-byte header included)."""
    body = legacy_version.to_bytes(2, "big") + bytes(range(32))
    body += vec(1, session_id)
    body += vec(2, b"".join(s.to_bytes(2, "big") for s in suites))
    body += vec(1, compression)
    if with_extensions:
        body += vec(2, b"".join(extensions))
    return b"\x01" + len(body).to_bytes(3, "big") + body


def records(message: bytes, *sizes: int, version: int = 0x0301) -> bytes:
    """Split handshake bytes into handshake records of the given fragment sizes (the rest last)."""
    out, pos = b"", 0
    for size in (*sizes, len(message)):
        fragment = message[pos : pos + size]
        if fragment:
            out += b"\x16" + version.to_bytes(2, "big") + vec(2, fragment)
        pos += len(fragment)
    return out


CHROME_LIKE = client_hello(
    GREASE_EXT,
    sni_ext(b"www.example.org"),
    ext(23, b""),
    ext(65281, b"\x00"),
    alpn_ext(b"h2", b"http/1.1"),
    versions_ext(0x3A3A, 0x0304, 0x0303),
    KEY_SHARE_EXT,
    ext(0x1A1A, b"\x00"),
    suites=(0x2A2A, 0x1301, 0x1302, 0x1303, 0xC02B),
)


# --- ClientHello message -----------------------------------------------------------------------


def test_fields_of_a_chrome_like_hello() -> None:
    hello = parse_client_hello_message(CHROME_LIKE)
    assert hello == ClientHello(
        sni="www.example.org",
        alpn=("h2", "http/1.1"),
        versions=(0x0304, 0x0303),  # GREASE 0x3a3a removed (RFC 8701)
        legacy_version=0x0303,
        ech=False,
        cipher_suites=5,  # GREASE suites are counted: it is what the client offered
        length=len(CHROME_LIKE),
        truncated=False,
    )


def test_trailing_bytes_after_the_message_are_ignored() -> None:
    assert parse_client_hello_message(CHROME_LIKE + b"\x02\x00\x00\x00") == (
        parse_client_hello_message(CHROME_LIKE)
    )


def test_ech_outer_sni() -> None:
    hello = parse_client_hello_message(
        client_hello(sni_ext(b"cloudflare-ech.com"), versions_ext(0x0304), ECH_EXT)
    )
    assert hello is not None
    assert hello.ech and hello.sni == "cloudflare-ech.com"


def test_tls12_hello_without_extensions() -> None:
    # RFC 5246 sec. 7.4.1.2: the extensions block may be absent altogether
    message = client_hello(with_extensions=False, legacy_version=0x0301, session_id=b"")
    hello = parse_client_hello_message(message)
    assert hello == ClientHello(None, (), (0x0301,), 0x0301, False, 3, len(message))


def test_first_host_name_wins_and_other_name_types_are_skipped() -> None:
    names = vec(
        2, b"\x07" + vec(2, b"other") + b"\x00" + vec(2, b"a.example") + b"\x00" + vec(2, b"b")
    )
    hello = parse_client_hello_message(client_hello(ext(0, names)))
    assert hello is not None and hello.sni == "a.example"


def test_non_ascii_sni_is_escaped_not_rejected() -> None:
    hello = parse_client_hello_message(client_hello(sni_ext("bücher.example".encode())))
    assert hello is not None and hello.sni == "b\\xc3\\xbccher.example"


def test_supported_versions_all_grease_gives_empty_tuple() -> None:
    hello = parse_client_hello_message(client_hello(versions_ext(0x0A0A, 0xFAFA)))
    assert hello is not None and hello.versions == ()


def test_every_proper_prefix_needs_more_bytes() -> None:
    for n in range(len(CHROME_LIKE)):
        assert parse_client_hello_message(CHROME_LIKE[:n]) is None, n


def test_prefix_parse_returns_what_the_prefix_holds() -> None:
    sni_end = CHROME_LIKE.index(b"www.example.org") + len("www.example.org")
    partial = parse_client_hello_prefix(CHROME_LIKE[:sni_end])
    assert partial is not None
    assert partial.truncated and partial.sni == "www.example.org" and partial.alpn == ()
    assert partial.length == len(CHROME_LIKE)
    # a cut inside server_name: the extension is not half-read
    cut = parse_client_hello_prefix(CHROME_LIKE[: sni_end - 1])
    assert cut is not None and cut.truncated and cut.sni is None
    # before the extensions block nothing useful is known yet
    assert parse_client_hello_prefix(CHROME_LIKE[:60]) is None
    assert parse_client_hello_prefix(CHROME_LIKE) == parse_client_hello_message(CHROME_LIKE)


def _body_with(extensions: bytes) -> bytes:
    return client_hello(with_extensions=False) + extensions


def _fix_length(message: bytes) -> bytes:
    return message[:1] + (len(message) - 4).to_bytes(3, "big") + message[4:]


MALFORMED = [
    (b"\x02\x00\x00\x26" + bytes(38), "handshake type 2 is not client_hello (1)"),
    (b"\x16\x03\x01", "handshake type 22 is not client_hello (1)"),
    (
        b"\x01\xff\xff\xff",
        f"ClientHello length 16777215 exceeds the maximum {MAX_CLIENT_HELLO_BODY_LENGTH}",
    ),
    (client_hello(session_id=bytes(33)), "ClientHello: legacy_session_id length 33 exceeds 32"),
    (
        _fix_length(client_hello(with_extensions=False)[:-10] + b"\x00\x03\x13\x01\x13\x01\x00"),
        "ClientHello: cipher_suites length 3 is not a positive even number",
    ),
    (client_hello(compression=b""), "ClientHello: legacy_compression_methods is empty"),
    (
        _fix_length(_body_with(b"\x00\x10" + ext(0, b"abc"))),
        "ClientHello: extensions length 16 runs past the end of the ClientHello (7 bytes left)",
    ),
    (
        _fix_length(_body_with(vec(2, b"\x00\x00\x00\x09abc"))),
        "extensions: server_name length 9 runs past the end of the extensions (3 bytes left)",
    ),
    (
        _fix_length(_body_with(vec(2, b"\x00\x00\x00"))),
        "extensions: extension header needs 4 bytes but only 3 remain",
    ),
    (
        client_hello(ext(23, b""), ext(23, b"")),
        "ClientHello: duplicate extension 23",
    ),
    (
        _fix_length(client_hello(ext(23, b"")) + b"\x00"),
        "ClientHello: 1 trailing bytes after extensions",
    ),
    (client_hello(ext(0, vec(2, b""))), "server_name: server_name_list is empty"),
    (client_hello(ext(0, vec(2, b"\x00\x00\x00"))), "server_name: empty name"),
    (
        client_hello(ext(0, vec(2, b"\x00\x00\x09ab"))),
        "server_name_list: host_name length 9 runs past the end of the server_name_list "
        "(2 bytes left)",
    ),
    (client_hello(ext(0, vec(2, b"\x00\x00\x01a") + b"x")), "server_name: 1 trailing bytes"),
    (
        client_hello(ext(16, vec(2, b""))),
        "application_layer_protocol_negotiation: protocol_name_list is empty",
    ),
    (
        client_hello(ext(16, vec(2, b"\x00"))),
        "application_layer_protocol_negotiation: empty ProtocolName",
    ),
    (
        client_hello(ext(43, vec(1, b"\x03"))),
        "supported_versions: versions length 1 is not a positive even number",
    ),
]


@pytest.mark.parametrize(("data", "message"), MALFORMED)
def test_malformed_hello_error_messages(data: bytes, message: str) -> None:
    with pytest.raises(TLSParseError) as info:
        parse_client_hello_message(data)
    assert str(info.value) == message
    assert isinstance(info.value, InputError) and isinstance(info.value, ValueError)


def test_malformed_is_reported_even_from_a_prefix() -> None:
    # the session id length byte already says 33 > 32: no need to wait for more bytes
    message = client_hello(session_id=bytes(33))
    with pytest.raises(TLSParseError, match="legacy_session_id length 33"):
        parse_client_hello_message(message[:40])


# --- record layer (RFC 8446 sec. 5.1) ------------------------------------------------------------


def test_hello_split_over_records() -> None:
    expected = parse_client_hello_message(CHROME_LIKE)
    for sizes in [(), (1,), (3, 5), (1, 1, 1, 1, 1), (100, 50), tuple([7] * 40)]:
        stream = records(CHROME_LIKE, *sizes)
        assert parse_client_hello_records(stream) == expected, sizes


def test_records_every_prefix_needs_more_bytes() -> None:
    stream = records(CHROME_LIKE, 2, 90, 10)
    for n in range(len(stream)):
        assert parse_client_hello_records(stream[:n]) is None, n


def test_records_after_the_hello_are_not_parsed() -> None:
    ccs_and_appdata = b"\x14\x03\x03\x00\x01\x01" + b"\x17\x03\x03\x00\x02zz"
    stream = records(CHROME_LIKE, 100) + ccs_and_appdata
    assert parse_client_hello_records(stream) == parse_client_hello_message(CHROME_LIKE)


@pytest.mark.parametrize(
    ("stream", "message"),
    [
        (b"GET / HTTP/1.1\r\n", "record content type 71 is not handshake (22)"),
        (b"\x17", "record content type 23 is not handshake (22)"),
        (b"\x80\x2e\x01\x03\x01", "record content type 128 is not handshake (22)"),
        (b"\x16\x03\x05\x00\x04\x01\x00\x00\x00", "record version 0x0305 is not 0x0300..0x0304"),
        (b"\x16\x03\x01\x00\x00", "zero-length handshake record"),
        (b"\x16\x03\x01\x40\x01", "record length 16385 exceeds 16384"),
        (records(b"\x02\x00\x00\x00"), "handshake type 2 is not client_hello (1)"),
        (
            records(CHROME_LIKE, 10)[:15] + b"\x17\x03\x03\x00\x01\x00",
            "record content type 23 is not handshake (22)",
        ),
    ],
)
def test_record_errors(stream: bytes, message: str) -> None:
    with pytest.raises(TLSParseError) as info:
        parse_client_hello_records(stream)
    assert str(info.value) == message


def test_find_client_hello_after_socks5_and_smtp_prefixes() -> None:
    expected = parse_client_hello_message(CHROME_LIKE)
    stream = records(CHROME_LIKE, 200)
    # RFC 1928: greeting, method selection reply is server-side; CONNECT request
    socks = b"\x05\x01\x00" + b"\x05\x01\x00\x03\x0fwww.example.org\x01\xbb"
    smtp = b"EHLO client.example\r\nSTARTTLS\r\n"
    for prefix in (b"", socks, smtp, b"\x16\x03\x01junk\x16\x03\x09" + smtp):
        assert find_client_hello(prefix + stream) == expected, prefix
    with pytest.raises(TLSParseError):
        parse_client_hello_records(smtp + stream)


def test_find_client_hello_limits() -> None:
    stream = records(CHROME_LIKE)
    assert find_client_hello(b"x" * 100 + stream, max_scan=100) is None
    assert find_client_hello(b"x" * 100 + stream, max_scan=101) is not None
    assert find_client_hello(b"x" * 100 + stream[:-1]) is None  # incomplete: need more bytes
    assert find_client_hello(b"") is None
    assert find_client_hello(b"\x16\x03") is None
    with pytest.raises(ValueError, match="max_scan must be >= 0, got -1"):
        find_client_hello(stream, max_scan=-1)


# --- stream reassembly ---------------------------------------------------------------------------


def test_reassemble_out_of_order_with_duplicates_and_overlaps() -> None:
    data = bytes(range(256)) * 4
    segments = [(0, data[:100]), (300, data[300:700]), (100, data[100:350]), (650, data[650:])]
    segments += [(0, data[:100]), (120, data[120:130]), (280, data[280:400])]  # retransmissions
    assert reassemble_prefix(reversed(segments)) == data
    assert reassemble_prefix(segments, limit=10) == data[:10]
    assert reassemble_prefix(segments[:2]) == data[:100]  # gap at 100


def test_reassemble_conflicts_are_resolved_deterministically() -> None:
    # the piece with the lower offset wins; at equal offsets, the one given first
    assert reassemble_prefix([(2, b"XXXX"), (0, b"abcd")]) == b"abcdXX"
    assert reassemble_prefix([(0, b"abcd"), (0, b"ABCDEF")]) == b"abcdEF"
    assert reassemble_prefix([(0, b"ABCDEF"), (0, b"abcd")]) == b"ABCDEF"


def test_reassemble_edge_cases() -> None:
    assert reassemble_prefix([]) == b""
    assert reassemble_prefix([(5, b"abc")]) == b""
    assert reassemble_prefix([(-2, b"xyabc"), (3, b"d")]) == b"abcd"  # before the stream start
    bytes_like: list[tuple[int, Any]] = [(0, b""), (0, bytearray(b"ab")), (2, memoryview(b"c"))]
    assert reassemble_prefix(bytes_like) == b"abc"
    assert reassemble_prefix([(0, b"abc")], limit=0) == b""
    with pytest.raises(ValueError, match="limit must be >= 0, got -1"):
        reassemble_prefix([], limit=-1)
    with pytest.raises(TypeError):
        reassemble_prefix([(0.5, b"a")])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        reassemble_prefix([(0, 3)])  # type: ignore[list-item]


def test_hello_over_records_over_reordered_segments() -> None:
    stream = records(CHROME_LIKE, 60, 7, 100)
    cuts = [0, 5, 9, 50, 120, 121, 200, len(stream)]
    segments = [(a, stream[a:b]) for a, b in zip(cuts, cuts[1:], strict=False)]
    # out of order, one retransmitted, one repacketised across three others
    segments = segments[1::2][::-1] + segments[::2][::-1] + [segments[2], (40, stream[40:130])]
    isn = 1_000_000
    tcp = [((isn + 1 + off) - isn - 1, seg) for off, seg in segments]
    assert parse_client_hello_records(reassemble_prefix(tcp)) == parse_client_hello_message(
        CHROME_LIKE
    )
    lost_first = [(off, seg) for off, seg in tcp if off != 0]
    assert parse_client_hello_records(reassemble_prefix(lost_first)) is None


# --- robustness ----------------------------------------------------------------------------------

FUZZ = settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)


def _only_value_none_or_parse_error(fn: Any, data: bytes) -> None:
    try:
        result = fn(data)
    except TLSParseError:
        return
    assert result is None or isinstance(result, ClientHello)


@st.composite
def mutated_hellos(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from([CHROME_LIKE, records(CHROME_LIKE, 30, 5)])))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        i = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[i] ^= draw(st.integers(1, 255))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[i : i + draw(st.integers(1, 8))]
        else:
            del data[i:]
    return bytes(data)


@settings(FUZZ, max_examples=1000)
@given(st.one_of(st.binary(max_size=600), mutated_hellos()))
def test_fuzz_parsers_give_value_none_or_tls_parse_error(data: bytes) -> None:
    for fn in (parse_client_hello_message, parse_client_hello_prefix, parse_client_hello_records):
        _only_value_none_or_parse_error(fn, data)
    assert find_client_hello(data) is None or isinstance(find_client_hello(data), ClientHello)


@FUZZ
@given(
    st.lists(st.tuples(st.integers(-50, 3000), st.binary(max_size=300)), max_size=12),
    st.integers(0, 4000),
)
def test_fuzz_reassemble_prefix(segments: list[tuple[int, bytes]], limit: int) -> None:
    out = reassemble_prefix(segments, limit=limit)
    assert len(out) <= limit
    # every byte of the result comes from some piece covering it
    for i, byte in enumerate(out):
        assert any(off <= i < off + len(p) and p[i - off] == byte for off, p in segments)


@FUZZ
@given(st.lists(st.integers(1, 120), max_size=8))
def test_fuzz_any_record_split_parses_the_same(sizes: list[int]) -> None:
    assert parse_client_hello_records(records(CHROME_LIKE, *sizes)) == parse_client_hello_message(
        CHROME_LIKE
    )


# --- real captures -------------------------------------------------------------------------------

CORPUS = REAL


def _manifest() -> list[dict[str, str]]:
    return list(manifest().values()) if have_corpus() else []


def _frames(path: Path) -> Iterator[Any]:
    from scapy.all import PcapReader  # registers every link type scapy knows (PPP, SLL2 ...)

    opener: Any = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        try:
            yield from PcapReader(fh)
        except EOFError:
            return  # files cut in the middle of a record (see MANIFEST notes)


def _transport(frame: Any) -> tuple[str, str, Any] | None:
    """(src, dst, TCP/UDP layer) of the innermost IP packet, through tunnels and BSD loopback."""
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Loopback
    from scapy.packet import NoPayload, Raw

    if isinstance(frame, Loopback) and isinstance(frame.payload, Raw):
        # NULL link type with macOS/BSD AF_INET6 (24, 28, 30), which scapy leaves undecoded
        raw = bytes(frame.payload)
        frame = IP(raw) if raw and raw[0] >> 4 == 4 else IPv6(raw)
    found = None
    layer = frame
    while not isinstance(layer, NoPayload):
        if type(layer) in (IP, IPv6) and type(layer.payload) in (TCP, UDP):
            found = (layer.src, layer.dst, layer.payload)
        layer = layer.payload
    return found


def _l4_payload(l4: Any) -> bytes:
    from scapy.packet import Padding

    data = bytes(l4.payload)
    pad = l4.getlayer(Padding)  # Ethernet trailer bytes are not TCP data
    return data if pad is None else data[: len(data) - len(bytes(pad))]


def tcp_client_streams(path: Path) -> list[bytes]:
    """Start of each TCP connection's client byte stream (client = SYN sender)."""
    from scapy.layers.inet import TCP

    directions: dict[tuple[Any, ...], list[tuple[int, int, bytes]]] = defaultdict(list)
    for frame in _frames(path):
        found = _transport(frame)
        if found is None or not isinstance(found[2], TCP):
            continue
        src, dst, tcp = found
        key = (src, tcp.sport, dst, tcp.dport)
        directions[key].append((tcp.seq, int(tcp.flags), _l4_payload(tcp)))
    streams = []
    for key, segments in directions.items():
        syns = [seq for seq, flags, _ in segments if flags & 0x12 == 0x02]
        reverse = directions.get((key[2], key[3], key[0], key[1]), [])
        if not syns and any(flags & 0x12 == 0x02 for _, flags, _ in reverse):
            continue  # the server side of a connection whose SYN we saw
        isn = syns[0] if syns else min(seq for seq, _, _ in segments) - 1
        pieces = [((seq - isn - 1) % 2**32, data) for seq, _, data in segments if data]
        streams.append(reassemble_prefix(pieces))
    return streams


def client_hellos(path: Path) -> tuple[list[ClientHello], int]:
    """ClientHellos of a capture's TCP client streams, and how many needed find_client_hello."""
    hellos, found_after_prefix = [], 0
    for stream in tcp_client_streams(path):
        try:
            hello = parse_client_hello_records(stream)
        except TLSParseError:
            hello = find_client_hello(stream)
            found_after_prefix += hello is not None
        if hello is not None:
            hellos.append(hello)
    return hellos, found_after_prefix


@requires_corpus
@pytest.mark.parametrize("row", _manifest(), ids=lambda row: row["file"])
def test_corpus_tls_snis_match_manifest(row: dict[str, str]) -> None:
    expected = set(filter(None, row["tls_sni_values"].split(",")))
    hellos, found_after_prefix = client_hellos(CORPUS / row["file"])
    assert {h.sni for h in hellos if h.sni is not None} == expected
    # a plaintext dialogue precedes TLS on the same connection only in these two
    needs_find = row["file"] in {"zeek__socks-with-ssl.pcap", "ndpi__smtp-starttls.pcap"}
    assert (found_after_prefix > 0) == needs_find


@requires_corpus
def test_corpus_details() -> None:
    hellos, _ = client_hellos(CORPUS / "zeek__tls13-ech.pcap")
    assert any(h.ech and h.sni == "cloudflare-ech.com" for h in hellos)
    (draft23,), _ = client_hellos(CORPUS / "zeek__tls13draft23-chrome67.0.3368.0-canary.pcap")
    assert 0x7F17 in draft23.versions  # TLS 1.3 draft-23
    (kyber,), _ = client_hellos(CORPUS / "zeek__chrome-1250-tls-x25519-kyber.pcap")
    # MANIFEST's "1756-byte ClientHello" is the record: 5-byte header + 1751-byte message
    assert kyber.length == 1751 and kyber.sni == "lh3.google.com"
    (fragmented,), _ = client_hellos(CORPUS / "zeek__tls-fragmented-handshake.pcap.gz")
    assert fragmented.sni == "104.236.167.107"
