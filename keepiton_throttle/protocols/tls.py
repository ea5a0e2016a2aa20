"""The TLS ClientHello: who the client says it wants to talk to.

Sans-I/O: every function takes bytes and returns a value, ``None`` ("need more bytes": the input
is a proper prefix of something that may still become a ClientHello) or raises
:class:`TLSParseError` (malformed, or not a ClientHello). Nothing here reads a socket or a clock.

References
----------
- RFC 8446 sec. 4.1.2 (ClientHello), sec. 4.2 (extensions), sec. 5.1 (record layer)
- RFC 6066 sec. 3 (server_name), RFC 7301 sec. 3.1 (ALPN), RFC 8701 (GREASE)
- RFC 9849 (TLS Encrypted Client Hello) sec. 5: the ``encrypted_client_hello`` extension
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from keepiton_throttle.errors import InputError

__all__ = [
    "ClientHello",
    "TLSParseError",
    "find_client_hello",
    "parse_client_hello_message",
    "parse_client_hello_prefix",
    "parse_client_hello_records",
    "reassemble_prefix",
]

# RFC 8446 sec. 5.1: ContentType
CONTENT_TYPE_HANDSHAKE = 22
# RFC 8446 sec. 4: HandshakeType
HANDSHAKE_TYPE_CLIENT_HELLO = 1
# RFC 8446 sec. 4.2: ExtensionType
EXTENSION_SERVER_NAME = 0
EXTENSION_APPLICATION_LAYER_PROTOCOL_NEGOTIATION = 16
EXTENSION_SUPPORTED_VERSIONS = 43
# RFC 9849 sec. 11.1
EXTENSION_ENCRYPTED_CLIENT_HELLO = 0xFE0D
# RFC 6066 sec. 3: NameType
NAME_TYPE_HOST_NAME = 0

# RFC 8446 sec. 5.1: TLSPlaintext header is type(1) legacy_record_version(2) length(2)
RECORD_HEADER_LENGTH = 5
# RFC 8446 sec. 5.1: "The length MUST NOT exceed 2^14 bytes."
MAX_PLAINTEXT_LENGTH = 2**14
# RFC 8446 sec. 4: Handshake header is msg_type(1) length(3)
HANDSHAKE_HEADER_LENGTH = 4
# Largest ClientHello body the vector bounds of RFC 8446 sec. 4.1.2 allow: legacy_version,
# random, legacy_session_id<0..32>, cipher_suites<2..2^16-2>,
# legacy_compression_methods<1..2^8-1>, extensions<8..2^16-1>. A larger length field is garbage,
# not "need more bytes".
MAX_CLIENT_HELLO_BODY_LENGTH = 2 + 32 + (1 + 32) + (2 + 0xFFFE) + (1 + 0xFF) + (2 + 0xFFFF)

_EXTENSION_NAMES = {
    EXTENSION_SERVER_NAME: "server_name",
    EXTENSION_APPLICATION_LAYER_PROTOCOL_NEGOTIATION: "application_layer_protocol_negotiation",
    EXTENSION_SUPPORTED_VERSIONS: "supported_versions",
    EXTENSION_ENCRYPTED_CLIENT_HELLO: "encrypted_client_hello",
}
_PARSED_EXTENSIONS = frozenset(
    (
        EXTENSION_SERVER_NAME,
        EXTENSION_APPLICATION_LAYER_PROTOCOL_NEGOTIATION,
        EXTENSION_SUPPORTED_VERSIONS,
    )
)
_RANDOM_LENGTH = 32
_MAX_SESSION_ID_LENGTH = 32


class TLSParseError(InputError):
    """The bytes are not a well-formed TLS ClientHello (the message says which field is wrong)."""


@dataclass(frozen=True, slots=True)
class ClientHello:
    """The fields of a ClientHello that identify the service and the client's capabilities.

    Attributes
    ----------
    sni : str or None
        ``server_name`` extension, first ``host_name`` entry (RFC 6066 sec. 3); under ECH this
        is the outer (public) name. ``None`` if the extension is absent. Non-ASCII bytes are
        kept as ``\\xNN`` escapes rather than rejected, so the value is always printable.
    alpn : tuple of str
        ALPN protocol names in offered order (RFC 7301 sec. 3.1); empty if absent.
    versions : tuple of int
        ``supported_versions`` values in offered order with GREASE (RFC 8701) removed; when the
        extension is absent, ``(legacy_version,)``.
    legacy_version : int
        ``legacy_version`` field, e.g. 0x0303.
    ech : bool
        Whether the ``encrypted_client_hello`` extension (0xfe0d, RFC 9849) is present.
    cipher_suites : int
        Number of offered cipher suites, GREASE values included.
    length : int
        Length in bytes of the whole handshake message, including its 4-byte header.
    truncated : bool
        True only for :func:`parse_client_hello_prefix` results that stop short of the end of
        the message: fields after the cut are missing (``sni`` None may then mean "not seen").
    """

    sni: str | None
    alpn: tuple[str, ...]
    versions: tuple[int, ...]
    legacy_version: int
    ech: bool
    cipher_suites: int
    length: int
    truncated: bool = False


class _NeedMore(Exception):
    """Internal: the read lies inside the declared message but past the available bytes."""


class _Reader:
    """Bounds-checked cursor over ``data[pos:avail]`` inside a structure that ends at ``end``.

    Reading past ``end`` is malformed input (:class:`TLSParseError`); reading past ``avail``
    (which is <= ``end``) only means the caller has a prefix (:class:`_NeedMore`). A failed read
    leaves the cursor where it was.
    """

    __slots__ = ("data", "pos", "avail", "end", "what")

    def __init__(self, data: bytes, pos: int, end: int, what: str) -> None:
        self.data = data
        self.pos = pos
        self.end = end
        self.avail = min(end, len(data))
        self.what = what

    def _check(self, n: int, field: str) -> None:
        if self.pos + n > self.end:
            raise TLSParseError(
                f"{self.what}: {field} needs {n} bytes but only {self.end - self.pos} remain"
            )
        if self.pos + n > self.avail:
            raise _NeedMore

    def pull_uint(self, n: int, field: str) -> int:
        self._check(n, field)
        value = int.from_bytes(self.data[self.pos : self.pos + n], "big")
        self.pos += n
        return value

    def pull_bytes(self, n: int, field: str) -> bytes:
        self._check(n, field)
        value = self.data[self.pos : self.pos + n]
        self.pos += n
        return value

    def pull_vector_reader(self, length_size: int, field: str) -> _Reader:
        """Read a ``<length_size>``-byte length and return a reader bounded by that vector.

        The sub-reader may itself hold only a prefix of the vector; the cursor moves past the
        whole vector, so the caller must not read further unless the vector was complete.
        """
        start = self.pos
        n = self.pull_uint(length_size, f"{field} length")
        if self.pos + n > self.end:
            self.pos = start
            raise TLSParseError(
                f"{self.what}: {field} length {n} runs past the end of the "
                f"{self.what} ({self.end - self.pos - length_size} bytes left)"
            )
        sub = _Reader(self.data, self.pos, self.pos + n, field)
        sub.avail = min(sub.end, self.avail)
        self.pos += n
        return sub

    def complete(self) -> bool:
        """Whether every byte up to ``end`` is available."""
        return self.avail == self.end

    def remaining(self) -> int:
        return self.end - self.pos


def _is_grease(value: int) -> bool:
    # RFC 8701 sec. 2: 0x0A0A, 0x1A1A, ..., 0xFAFA
    return (value & 0x0F0F) == 0x0A0A and (value >> 8) == (value & 0xFF)


def _text(raw: bytes) -> str:
    return raw.decode("ascii", errors="backslashreplace")


def _parse_server_name(ext: _Reader) -> str | None:
    # RFC 6066 sec. 3: ServerNameList server_name_list<1..2^16-1>;
    # ServerName { NameType name_type; opaque HostName<1..2^16-1>; }
    names = ext.pull_vector_reader(2, "server_name_list")
    if names.end == names.pos:
        raise TLSParseError("server_name: server_name_list is empty")
    host: str | None = None
    while names.remaining() > 0:
        name_type = names.pull_uint(1, "name_type")
        name = names.pull_vector_reader(2, "host_name")
        if name.end == name.pos:
            raise TLSParseError("server_name: empty name")
        if name_type == NAME_TYPE_HOST_NAME and host is None:
            host = _text(name.pull_bytes(name.remaining(), "host_name"))
    if ext.remaining():
        raise TLSParseError(f"server_name: {ext.remaining()} trailing bytes")
    return host


def _parse_alpn(ext: _Reader) -> tuple[str, ...]:
    # RFC 7301 sec. 3.1: ProtocolName protocol_name_list<2..2^16-1>; opaque ProtocolName<1..2^8-1>
    names = ext.pull_vector_reader(2, "protocol_name_list")
    out: list[str] = []
    while names.remaining() > 0:
        name = names.pull_vector_reader(1, "ProtocolName")
        if name.end == name.pos:
            raise TLSParseError("application_layer_protocol_negotiation: empty ProtocolName")
        out.append(_text(name.pull_bytes(name.remaining(), "ProtocolName")))
    if not out:
        raise TLSParseError("application_layer_protocol_negotiation: protocol_name_list is empty")
    if ext.remaining():
        raise TLSParseError(
            f"application_layer_protocol_negotiation: {ext.remaining()} trailing bytes"
        )
    return tuple(out)


def _parse_supported_versions(ext: _Reader) -> tuple[int, ...]:
    # RFC 8446 sec. 4.2.1: ProtocolVersion versions<2..254> in a ClientHello
    versions = ext.pull_vector_reader(1, "versions")
    n = versions.remaining()
    if n < 2 or n % 2:
        raise TLSParseError(
            f"supported_versions: versions length {n} is not a positive even number"
        )
    out = [versions.pull_uint(2, "ProtocolVersion") for _ in range(n // 2)]
    if ext.remaining():
        raise TLSParseError(f"supported_versions: {ext.remaining()} trailing bytes")
    return tuple(v for v in out if not _is_grease(v))


def _parse(data: bytes, *, allow_prefix: bool) -> ClientHello | None:
    if len(data) < HANDSHAKE_HEADER_LENGTH:
        if data and data[0] != HANDSHAKE_TYPE_CLIENT_HELLO:
            raise TLSParseError(f"handshake type {data[0]} is not client_hello (1)")
        return None
    msg_type = data[0]
    if msg_type != HANDSHAKE_TYPE_CLIENT_HELLO:
        raise TLSParseError(f"handshake type {msg_type} is not client_hello (1)")
    body_length = int.from_bytes(data[1:4], "big")
    if body_length > MAX_CLIENT_HELLO_BODY_LENGTH:
        raise TLSParseError(
            f"ClientHello length {body_length} exceeds the maximum {MAX_CLIENT_HELLO_BODY_LENGTH}"
        )
    end = HANDSHAKE_HEADER_LENGTH + body_length
    r = _Reader(data, HANDSHAKE_HEADER_LENGTH, end, "ClientHello")
    truncated = not r.complete()

    # RFC 8446 sec. 4.1.2, fixed part: these fields carry no SNI, so a prefix that stops inside
    # them is just "need more bytes" even for parse_client_hello_prefix.
    try:
        legacy_version = r.pull_uint(2, "legacy_version")
        r.pull_bytes(_RANDOM_LENGTH, "random")
        session_id = r.pull_vector_reader(1, "legacy_session_id")
        if session_id.end - session_id.pos > _MAX_SESSION_ID_LENGTH:
            raise TLSParseError(
                f"ClientHello: legacy_session_id length {session_id.end - session_id.pos} "
                f"exceeds {_MAX_SESSION_ID_LENGTH}"
            )
        if not session_id.complete():
            raise _NeedMore
        suites = r.pull_vector_reader(2, "cipher_suites")
        suites_length = suites.end - suites.pos
        if suites_length < 2 or suites_length % 2:
            raise TLSParseError(
                f"ClientHello: cipher_suites length {suites_length} is not a positive even number"
            )
        if not suites.complete():
            raise _NeedMore
        compression = r.pull_vector_reader(1, "legacy_compression_methods")
        if compression.end == compression.pos:
            raise TLSParseError("ClientHello: legacy_compression_methods is empty")
        if not compression.complete():
            raise _NeedMore
    except _NeedMore:
        return None

    sni: str | None = None
    alpn: tuple[str, ...] = ()
    versions: tuple[int, ...] | None = None
    ech = False
    # RFC 8446 sec. 4.1.2: a TLS 1.2 ClientHello may end after the compression methods.
    if r.remaining() > 0:
        try:
            extensions = r.pull_vector_reader(2, "extensions")
            # Hot loop: index arithmetic instead of a _Reader per extension.
            pos, end_ext, avail = extensions.pos, extensions.end, extensions.avail
            seen: set[int] = set()
            while pos < end_ext:
                if pos + 4 > end_ext:
                    raise TLSParseError(
                        f"extensions: extension header needs 4 bytes but only {end_ext - pos} remain"
                    )
                if pos + 4 > avail:
                    raise _NeedMore
                ext_type = (data[pos] << 8) | data[pos + 1]
                ext_length = (data[pos + 2] << 8) | data[pos + 3]
                body, pos = pos + 4, pos + 4 + ext_length
                name = _EXTENSION_NAMES.get(ext_type, f"extension {ext_type}")
                if pos > end_ext:
                    raise TLSParseError(
                        f"extensions: {name} length {ext_length} runs past the end of the "
                        f"extensions ({end_ext - body} bytes left)"
                    )
                # RFC 8446 sec. 4.2: "There MUST NOT be more than one extension of the same type"
                if ext_type in seen:
                    raise TLSParseError(f"ClientHello: duplicate extension {ext_type}")
                seen.add(ext_type)
                if ext_type == EXTENSION_ENCRYPTED_CLIENT_HELLO:
                    ech = True
                elif ext_type in _PARSED_EXTENSIONS:
                    if pos > avail:
                        raise _NeedMore
                    ext = _Reader(data, body, pos, name)
                    if ext_type == EXTENSION_SERVER_NAME:
                        sni = _parse_server_name(ext)
                    elif ext_type == EXTENSION_APPLICATION_LAYER_PROTOCOL_NEGOTIATION:
                        alpn = _parse_alpn(ext)
                    else:
                        versions = _parse_supported_versions(ext)
                if pos > avail:
                    raise _NeedMore
            if r.remaining():
                raise TLSParseError(f"ClientHello: {r.remaining()} trailing bytes after extensions")
        except _NeedMore:
            if not allow_prefix:
                return None
    if truncated and not allow_prefix:
        return None
    return ClientHello(
        sni=sni,
        alpn=alpn,
        versions=versions if versions is not None else (legacy_version,),
        legacy_version=legacy_version,
        ech=ech,
        cipher_suites=suites_length // 2,
        length=end,
        truncated=truncated,
    )


def parse_client_hello_message(data: bytes) -> ClientHello | None:
    """Parse a ClientHello handshake message (RFC 8446 sec. 4.1.2).

    Parameters
    ----------
    data : bytes
        Handshake-layer bytes starting at the HandshakeType byte (1), without the TLS record
        layer: what QUIC CRYPTO frames carry (RFC 9001 sec. 4). Bytes after the message are
        ignored.

    Returns
    -------
    ClientHello or None
        ``None`` if ``data`` is a proper prefix of a ClientHello (need more bytes).

    Raises
    ------
    TLSParseError
        If the bytes are not a ClientHello or a field overruns its enclosing vector.
    """
    return _parse(bytes(data), allow_prefix=False)


def parse_client_hello_prefix(data: bytes) -> ClientHello | None:
    """Best-effort parse of a ClientHello that may be cut short (e.g. by a capture snaplen).

    Like :func:`parse_client_hello_message`, but when the message is incomplete it returns the
    extensions that lie wholly inside ``data`` with ``truncated=True``. Returns ``None`` while
    the prefix does not yet reach the extensions block; a complete message gives the same
    result as :func:`parse_client_hello_message`.
    """
    return _parse(bytes(data), allow_prefix=True)


def _check_record_header(data: bytes, pos: int) -> int:
    """Validate the TLSPlaintext header at ``pos`` (RFC 8446 sec. 5.1); return its length."""
    content_type = data[pos]
    if content_type != CONTENT_TYPE_HANDSHAKE:
        raise TLSParseError(f"record content type {content_type} is not handshake (22)")
    major, minor = data[pos + 1], data[pos + 2]
    # legacy_record_version is 0x0301 (or 0x0300) for a ClientHello; accept SSL 3.0 .. TLS 1.3
    if major != 3 or minor > 4:
        raise TLSParseError(f"record version 0x{major:02x}{minor:02x} is not 0x0300..0x0304")
    length = int.from_bytes(data[pos + 3 : pos + 5], "big")
    if length == 0:
        # RFC 8446 sec. 5.1: "Implementations MUST NOT send zero-length fragments of Handshake"
        raise TLSParseError("zero-length handshake record")
    if length > MAX_PLAINTEXT_LENGTH:
        raise TLSParseError(f"record length {length} exceeds {MAX_PLAINTEXT_LENGTH}")
    return length


def parse_client_hello_records(data: bytes) -> ClientHello | None:
    """Parse the ClientHello at the start of a client's TLS-over-TCP byte stream.

    Parameters
    ----------
    data : bytes
        The stream from its first byte: handshake records (content type 22) whose fragments
        are concatenated, since a ClientHello may be split over many records (RFC 8446
        sec. 5.1) and over many TCP segments (see :func:`reassemble_prefix`). Records after the
        one that completes the ClientHello are not looked at.

    Returns
    -------
    ClientHello or None
        ``None`` if the stream ends before the ClientHello does.

    Raises
    ------
    TLSParseError
        If a record before the end of the ClientHello is not a handshake record, or the
        handshake bytes are not a well-formed ClientHello.
    """
    data = bytes(data)
    fragments: list[bytes] = []
    have = 0
    need: int | None = None  # total handshake bytes of the ClientHello, once its header is in
    pos = 0
    while pos < len(data) and (need is None or have < need):
        if len(data) - pos < RECORD_HEADER_LENGTH:
            # a partial header still tells "not TLS" early
            if data[pos] != CONTENT_TYPE_HANDSHAKE:
                raise TLSParseError(f"record content type {data[pos]} is not handshake (22)")
            break
        length = _check_record_header(data, pos)
        fragment = data[pos + RECORD_HEADER_LENGTH : pos + RECORD_HEADER_LENGTH + length]
        fragments.append(fragment)
        have += len(fragment)
        pos += RECORD_HEADER_LENGTH + length
        if need is None and have >= HANDSHAKE_HEADER_LENGTH:
            head = b"".join(fragments)[:HANDSHAKE_HEADER_LENGTH]
            if head[0] != HANDSHAKE_TYPE_CLIENT_HELLO:
                raise TLSParseError(f"handshake type {head[0]} is not client_hello (1)")
            need = HANDSHAKE_HEADER_LENGTH + int.from_bytes(head[1:4], "big")
    return parse_client_hello_message(b"".join(fragments))


def _validate_non_negative(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


def find_client_hello(data: bytes, *, max_scan: int = 4096) -> ClientHello | None:
    """Find a ClientHello in a client byte stream that may start with plaintext.

    For TLS that begins after a plaintext dialogue on the same connection: a SOCKS handshake
    (RFC 1928), SMTP STARTTLS (RFC 3207), and the like. Scans for a plausible handshake record
    header (0x16, 0x03 0x00..0x04, then HandshakeType 1 after the 2-byte length) starting in the
    first ``max_scan`` bytes, and parses from the first candidate that yields a complete
    ClientHello.

    Returns
    -------
    ClientHello or None
        ``None`` if no candidate gives a complete, well-formed ClientHello (malformed candidates
        are skipped, never raised).
    """
    _validate_non_negative("max_scan", max_scan)
    data = bytes(data)
    start = 0
    limit = min(len(data), max_scan)
    while start < limit:
        i = data.find(b"\x16\x03", start, limit + 1)
        if i < 0 or i >= limit:
            return None
        start = i + 1
        if i + 2 < len(data) and data[i + 2] > 4:
            continue
        if i + 5 < len(data) and data[i + 5] != HANDSHAKE_TYPE_CLIENT_HELLO:
            continue
        try:
            hello = parse_client_hello_records(data[i:])
        except TLSParseError:
            continue
        if hello is not None:
            return hello
    return None


def reassemble_prefix(segments: Iterable[tuple[int, bytes]], *, limit: int = 65536) -> bytes:
    """Return the contiguous start of a byte stream from pieces given in any order.

    Parameters
    ----------
    segments : iterable of (int, bytes)
        ``(offset, data)`` pieces: offset in bytes from the stream start (for TCP,
        ``seq - isn - 1``; for QUIC CRYPTO frames, the frame's Offset field). Duplicates,
        overlaps and retransmissions are allowed; bytes before offset 0 are dropped.
    limit : int
        At most this many bytes are returned.

    Returns
    -------
    bytes
        The stream bytes from offset 0 up to the first gap (or ``limit``). Where pieces
        overlap, the piece with the lower offset wins, then the one given first, so the result
        does not depend on anything but the input.
    """
    _validate_non_negative("limit", limit)
    pieces: list[tuple[int, bytes]] = []
    for offset, piece in segments:
        if isinstance(offset, bool) or not isinstance(offset, int):
            raise TypeError(f"segment offset must be an int, got {type(offset).__name__}")
        if not isinstance(piece, bytes | bytearray | memoryview):
            raise TypeError(f"segment data must be bytes, got {type(piece).__name__}")
        if offset < 0:
            piece, offset = piece[-offset:], 0
        if piece and offset < limit:
            pieces.append((offset, bytes(piece)))
    pieces.sort(key=lambda p: p[0])  # stable: equal offsets keep their input order
    out = bytearray()
    for offset, piece in pieces:
        if offset > len(out):
            break  # a gap; every later piece starts even further on
        out += piece[len(out) - offset :]
        if len(out) >= limit:
            break
    return bytes(out[:limit])
