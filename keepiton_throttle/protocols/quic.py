"""QUIC client Initial packets: remove their protection and read the ClientHello inside.

Initial packets are encrypted, but with keys anyone can derive from the client's Destination
Connection ID and a per-version public salt (RFC 9001 sec. 5.2), so an on-path observer -- a
censor, or this tool -- can read the TLS ClientHello and its server_name.

Sans-I/O: functions take UDP payloads (bytes) and return frozen dataclasses, ``None``, or raise
:class:`QUICParseError`. Nothing here reads a socket or the clock.

Versions handled (salts as Wireshark's ``epan/dissectors/packet-quic.c`` lists them):

=========================================  ===============================  ===================
version                                    Initial salt                     packet type bits
=========================================  ===============================  ===================
1 (RFC 9001), drafts 33-34                 RFC 9001 sec. 5.2                RFC 9000 Table 5
reserved 0x?a?a?a?a (RFC 9000 sec. 15)     version 1's, then draft-29's     as version 1
2, 0x6b3343cf (RFC 9369)                   RFC 9369 sec. 3.3.1; "quicv2"    RFC 9369 sec. 3.2
                                           HKDF labels (sec. 3.3.2)
drafts 29-32                               draft-ietf-quic-tls-29           as version 1
drafts 23-28, mvfst 0xfaceb002/0xfaceb00e  draft-ietf-quic-tls-23           as version 1
draft 22, mvfst 0xfaceb001                 draft-ietf-quic-tls-22           as version 1
Google T050/T051 (0x54303530/0x54303531)   Google's own; gQUIC frames       as version 1
=========================================  ===============================  ===================

Reserved versions have no keys of their own. Current Wireshark decrypts them with version 1's
salt, tshark 4.0 with draft-29's, and clients differ the same way (the interop-runner client in
ndpi__quic_interop_V uses draft-29's, the clients in tcpdump__quic_vn and
ndpi__quic-forcing-vn-with-data version 1's), so both are tried; the AEAD tag tells which.

Google Q050 (0x51303530) is gQUIC: its Initial carries a gQUIC CHLO, not a TLS ClientHello, so
it is skipped (no SNI, no error).
"""

from __future__ import annotations

import enum
import functools
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from keepiton_throttle.errors import InputError
from keepiton_throttle.protocols.tls import (
    HANDSHAKE_HEADER_LENGTH,
    MAX_CLIENT_HELLO_BODY_LENGTH,
    ClientHello,
    TLSParseError,
    parse_client_hello_message,
    parse_client_hello_prefix,
    reassemble_prefix,
)

__all__ = [
    "DecryptedInitial",
    "InitialKeys",
    "LongHeader",
    "LongPacketType",
    "QUICParseError",
    "QuicInitialInfo",
    "client_initial_info",
    "crypto_frames",
    "decrypt_initial",
    "derive_initial_keys",
    "initial_salt",
    "initial_salts",
    "is_long_header",
    "parse_long_header",
]

QUIC_VERSION_NEGOTIATION = 0x00000000
QUIC_VERSION_1 = 0x00000001
QUIC_VERSION_2 = 0x6B3343CF
QUIC_VERSION_DRAFT_22 = 0xFF000016
QUIC_VERSION_DRAFT_34 = 0xFF000022
QUIC_VERSION_MVFST_DRAFT_22 = 0xFACEB001
QUIC_VERSION_MVFST_DRAFT_27 = 0xFACEB002
QUIC_VERSION_MVFST_EXPERIMENTAL = 0xFACEB00E
QUIC_VERSION_GOOGLE_Q050 = 0x51303530
QUIC_VERSION_GOOGLE_T050 = 0x54303530
QUIC_VERSION_GOOGLE_T051 = 0x54303531

# RFC 9001 sec. 5.2
INITIAL_SALT_VERSION_1 = bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a")
# RFC 9369 sec. 3.3.1
INITIAL_SALT_VERSION_2 = bytes.fromhex("0dede3def700a6db819381be6e269dcbf9bd2ed9")
# draft-ietf-quic-tls-29 sec. 5.2 (drafts 29-32)
INITIAL_SALT_DRAFT_29 = bytes.fromhex("afbfec289993d24c9e9786f19c6111e04390a899")
# draft-ietf-quic-tls-23 sec. 5.2 (drafts 23-28)
INITIAL_SALT_DRAFT_23 = bytes.fromhex("c3eef712c72ebb5a11a7d2432bb46365bef9f502")
# draft-ietf-quic-tls-22 sec. 5.2
INITIAL_SALT_DRAFT_22 = bytes.fromhex("7fbcdb0e7c66bbe9193a96cd21519ebd7a02644a")
# Google T050/T051: not in any RFC; the values Wireshark's packet-quic.c uses
INITIAL_SALT_GOOGLE_T050 = bytes.fromhex("7ff579e5acd072915580304c43a2367c60488310")
INITIAL_SALT_GOOGLE_T051 = bytes.fromhex("7a4edef4e7ccee5fa4506c19124fc8ccda6e033d")

# RFC 9000 sec. 17.2: header form and fixed bits; type-specific bits of a long header
HEADER_FORM_LONG = 0x80
LONG_PACKET_TYPE_MASK = 0x30
# RFC 9000 sec. 17.2.2: Reserved Bits and Packet Number Length, under header protection
LONG_RESERVED_BITS = 0x0C
PACKET_NUMBER_LENGTH_MASK = 0x03
# RFC 9000 sec. 17.2: "In QUIC version 1, this value MUST NOT exceed 20 bytes."
MAX_CONNECTION_ID_LENGTH = 20
# RFC 9001 sec. 5.4.2: the sample is taken as if the packet number were 4 bytes long
HEADER_PROTECTION_SAMPLE_OFFSET = 4
HEADER_PROTECTION_SAMPLE_LENGTH = 16
# RFC 9001 sec. 5.3: AEAD_AES_128_GCM, the Initial cipher suite
AEAD_TAG_LENGTH = 16
# RFC 9000 sec. 16: variable-length integers are at most 2^62 - 1
MAX_VARINT = (1 << 62) - 1
#: a QUIC packet lies within one UDP datagram (RFC 9000 sec. 12.2): at most 65,535 - 8 bytes
MAX_UDP_PAYLOAD = 65_527

# RFC 9000 sec. 19 frame types allowed in Initial packets (sec. 12.4, Table 3)
FRAME_PADDING = 0x00
FRAME_PING = 0x01
FRAME_ACK = 0x02
FRAME_ACK_ECN = 0x03
FRAME_CRYPTO = 0x06
FRAME_CONNECTION_CLOSE = 0x1C
# Wireshark packet-gquic.c: gQUIC frame types used by Google T050/T051 Initials
GQUIC_FRAME_PING = 0x07
GQUIC_FRAME_CRYPTO = 0x08

# Later client Initials carry the server-chosen DCID but keep the keys of the first one
# (RFC 9001 sec. 5.2); how many earlier DCIDs to try keeps hostile input from costing n^2.
_MAX_EARLIER_DCIDS = 8
# The largest ClientHello the TLS vector bounds allow, header included.
_MAX_CLIENT_HELLO_LENGTH = HANDSHAKE_HEADER_LENGTH + MAX_CLIENT_HELLO_BODY_LENGTH
_NON_ZERO = re.compile(rb"[^\x00]")


class QUICParseError(InputError):
    """A QUIC packet is malformed, truncated, of an unexpected type, or fails decryption."""


class _OutOfBytes(QUICParseError):
    """A field runs past the end of the data (cut short, e.g. by a capture snaplen)."""


class LongPacketType(enum.IntEnum):
    """Long header packet types, valued as their QUIC version 1 wire bits (RFC 9000 Table 5)."""

    INITIAL = 0
    ZERO_RTT = 1
    HANDSHAKE = 2
    RETRY = 3


# RFC 9369 sec. 3.2: version 2 rotates the long header type bits
_V2_PACKET_TYPES = (
    LongPacketType.RETRY,
    LongPacketType.INITIAL,
    LongPacketType.ZERO_RTT,
    LongPacketType.HANDSHAKE,
)
_V1_PACKET_TYPES = (
    LongPacketType.INITIAL,
    LongPacketType.ZERO_RTT,
    LongPacketType.HANDSHAKE,
    LongPacketType.RETRY,
)


@dataclass(frozen=True, slots=True)
class _VersionParams:
    salt: bytes
    label_prefix: bytes  # b"quic " or b"quicv2 " (RFC 9369 sec. 3.3.2)
    packet_types: tuple[LongPacketType, ...]
    other_salts: tuple[bytes, ...] = ()  # also seen in the wild, tried after ``salt``
    gquic_frames: bool = False  # Google T05x: gQUIC frame encoding inside IETF packets


@functools.lru_cache(maxsize=64)
def _version_params(version: int) -> _VersionParams | None:
    v1_types = _V1_PACKET_TYPES
    if version == QUIC_VERSION_2:
        return _VersionParams(INITIAL_SALT_VERSION_2, b"quicv2 ", _V2_PACKET_TYPES)
    if version == QUIC_VERSION_1:
        return _VersionParams(INITIAL_SALT_VERSION_1, b"quic ", v1_types)
    if (version & 0x0F0F0F0F) == 0x0A0A0A0A:
        # RFC 9000 sec. 15: 0x?a?a?a?a is reserved to force version negotiation and has no
        # keys of its own. Clients protect such Initials as version 1 (current Wireshark
        # assumes so) or, from the draft-29 era, with the draft-29 salt (what tshark 4.0 assumes,
        # and what the interop-runner client of ndpi__quic_interop_V does): try both.
        return _VersionParams(
            INITIAL_SALT_VERSION_1, b"quic ", v1_types, other_salts=(INITIAL_SALT_DRAFT_29,)
        )
    if QUIC_VERSION_DRAFT_22 <= version <= QUIC_VERSION_DRAFT_34:
        draft = version & 0xFF
        if draft >= 33:
            salt = INITIAL_SALT_VERSION_1
        elif draft >= 29:
            salt = INITIAL_SALT_DRAFT_29
        elif draft >= 23:
            salt = INITIAL_SALT_DRAFT_23
        else:
            salt = INITIAL_SALT_DRAFT_22
        return _VersionParams(salt, b"quic ", v1_types)
    if version == QUIC_VERSION_MVFST_DRAFT_22:
        return _VersionParams(INITIAL_SALT_DRAFT_22, b"quic ", v1_types)
    if version in (QUIC_VERSION_MVFST_DRAFT_27, QUIC_VERSION_MVFST_EXPERIMENTAL):
        return _VersionParams(INITIAL_SALT_DRAFT_23, b"quic ", v1_types)
    if version == QUIC_VERSION_GOOGLE_T050:
        return _VersionParams(INITIAL_SALT_GOOGLE_T050, b"quic ", v1_types, gquic_frames=True)
    if version == QUIC_VERSION_GOOGLE_T051:
        return _VersionParams(INITIAL_SALT_GOOGLE_T051, b"quic ", v1_types, gquic_frames=True)
    return None


def initial_salt(version: int) -> bytes | None:
    """Return the 20-byte Initial salt of a QUIC version (RFC 9001 sec. 5.2).

    ``None`` for versions whose Initials this module does not decrypt: unknown versions, and
    Google Q050, whose Initial holds a gQUIC CHLO rather than a TLS ClientHello.
    """
    params = _version_params(version)
    return None if params is None else params.salt


def initial_salts(version: int) -> tuple[bytes, ...]:
    """All Initial salts worth trying for a version, most likely first; empty if none.

    Only reserved versions (0x?a?a?a?a) have more than one: see the module docstring.
    """
    params = _version_params(version)
    return () if params is None else (params.salt, *params.other_salts)


@dataclass(frozen=True, slots=True)
class InitialKeys:
    """Initial packet protection keys of one direction (RFC 9001 sec. 5.1, 5.2).

    ``key`` (16 bytes) and ``iv`` (12 bytes) for AEAD_AES_128_GCM, ``hp`` (16 bytes) for
    AES-128-ECB header protection.
    """

    key: bytes
    iv: bytes
    hp: bytes


def _hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    # RFC 5869 sec. 2.2 with SHA-256 (RFC 9001 sec. 5.2)
    return hmac.digest(salt, ikm, "sha256")


def _hkdf_expand_label(secret: bytes, label: bytes, length: int) -> bytes:
    # RFC 8446 sec. 7.1: HkdfLabel = uint16 length || opaque label<7..255> = "tls13 " + Label
    # || opaque context<0..255> (empty here); then HKDF-Expand (RFC 5869 sec. 2.3).
    full_label = b"tls13 " + label
    info = length.to_bytes(2, "big") + bytes([len(full_label)]) + full_label + b"\x00"
    out = b""
    block = b""
    counter = 1
    while len(out) < length:
        block = hmac.digest(secret, block + info + bytes([counter]), "sha256")
        out += block
        counter += 1
    return out[:length]


@functools.lru_cache(maxsize=4096)
def _derive_initial_keys(
    dcid: bytes, version: int, is_client: bool, salt: bytes | None = None
) -> InitialKeys:
    params = _version_params(version)
    if params is None:
        raise QUICParseError(f"QUIC version 0x{version:08x} has no known Initial salt")
    initial_secret = _hkdf_extract(params.salt if salt is None else salt, dcid)
    secret = _hkdf_expand_label(initial_secret, b"client in" if is_client else b"server in", 32)
    prefix = params.label_prefix
    return InitialKeys(
        key=_hkdf_expand_label(secret, prefix + b"key", 16),
        iv=_hkdf_expand_label(secret, prefix + b"iv", 12),
        hp=_hkdf_expand_label(secret, prefix + b"hp", 16),
    )


def derive_initial_keys(
    dcid: bytes, version: int, *, is_client: bool, salt: bytes | None = None
) -> InitialKeys:
    """Derive the Initial keys for packets sent by the client (or the server).

    Parameters
    ----------
    dcid : bytes
        Destination Connection ID of the client's first Initial packet (RFC 9001 sec. 5.2),
        or, after a Retry, the one the client's new Initials carry.
    version : int
        QUIC version; picks the salt and, for version 2, the "quicv2" labels (RFC 9369).
    is_client : bool
        True for the keys protecting client packets ("client in"), False for server packets.
    salt : bytes, optional
        Use this salt instead of the version's first one (see :func:`initial_salts`); the
        labels still follow ``version``.

    Raises
    ------
    QUICParseError
        If the version has no known Initial salt (see :func:`initial_salt`).

    Results are cached per (dcid, version, is_client, salt).
    """
    return _derive_initial_keys(
        bytes(dcid), int(version), bool(is_client), None if salt is None else bytes(salt)
    )


def is_long_header(datagram: bytes) -> bool:
    """Whether the first packet of a datagram has a long header (RFC 8999 sec. 5.1)."""
    return len(datagram) > 0 and bool(datagram[0] & HEADER_FORM_LONG)


def _pull_varint(data: bytes, pos: int, what: str) -> tuple[int, int]:
    # RFC 9000 sec. 16: the two most significant bits give the length, 1, 2, 4 or 8 bytes
    if pos >= len(data):
        raise _OutOfBytes(f"{what} lies past the end of the data ({len(data)} bytes)")
    size = 1 << (data[pos] >> 6)
    if pos + size > len(data):
        raise _OutOfBytes(f"{what} needs {size} bytes, {len(data) - pos} left")
    value = int.from_bytes(data[pos : pos + size], "big") & ((1 << (8 * size - 2)) - 1)
    return value, pos + size


@dataclass(frozen=True, slots=True)
class LongHeader:
    """The cleartext fields of a long header packet (RFC 9000 sec. 17.2).

    ``packet_type`` is None for Version Negotiation (``version`` 0) and for versions whose
    type bits are unknown; ``length`` and ``pn_offset`` are then None too, as they are for
    Retry packets. ``length`` is the Length field in bytes (packet number + payload + tag);
    ``pn_offset`` is where the (protected) packet number starts. ``first_byte`` is as sent,
    still under header protection.
    """

    first_byte: int
    version: int
    dcid: bytes
    scid: bytes
    packet_type: LongPacketType | None
    token: bytes = b""
    length: int | None = None
    pn_offset: int | None = None


def parse_long_header(packet: bytes) -> LongHeader:
    """Parse the long header at the start of ``packet`` (RFC 9000 sec. 17.2, RFC 8999 sec. 5.1).

    Raises
    ------
    QUICParseError
        If the packet has a short header, or is cut inside the header, or a connection ID is
        longer than 20 bytes in a version that forbids it.
    """
    data = bytes(packet)
    if not is_long_header(data):
        raise QUICParseError("not a long header packet (header form bit is 0)")
    if len(data) < 6:
        raise _OutOfBytes(f"long header cut short: {len(data)} bytes")
    first = data[0]
    version = int.from_bytes(data[1:5], "big")
    params = _version_params(version)
    pos = 5
    cids: list[bytes] = []
    for name in ("DCID", "SCID"):
        if pos >= len(data):
            raise _OutOfBytes(f"long header cut short before the {name} length")
        cid_length = data[pos]
        # the 20-byte limit is version 1's (RFC 9000 sec. 17.2); RFC 8999 allows 255
        if params is not None and cid_length > MAX_CONNECTION_ID_LENGTH:
            raise QUICParseError(
                f"{name} length {cid_length} exceeds {MAX_CONNECTION_ID_LENGTH} bytes"
            )
        if pos + 1 + cid_length > len(data):
            raise _OutOfBytes(f"long header cut short inside the {name}")
        cids.append(data[pos + 1 : pos + 1 + cid_length])
        pos += 1 + cid_length
    dcid, scid = cids
    if version == QUIC_VERSION_NEGOTIATION or params is None:
        return LongHeader(first, version, dcid, scid, None)
    packet_type = params.packet_types[(first & LONG_PACKET_TYPE_MASK) >> 4]
    if packet_type == LongPacketType.RETRY:
        return LongHeader(first, version, dcid, scid, packet_type)
    token = b""
    if packet_type == LongPacketType.INITIAL:
        # RFC 9000 sec. 17.2.2: Token Length (i), Token (..)
        token_length, pos = _pull_varint(data, pos, "Token Length")
        if pos + token_length > len(data):
            raise _OutOfBytes(f"Token length {token_length} runs past the end of the packet")
        token = data[pos : pos + token_length]
        pos += token_length
    length, pos = _pull_varint(data, pos, "Length")
    if pos + length > MAX_UDP_PAYLOAD:
        # not a packet of this version at all (random bytes with the high bit set): reject it
        # here rather than derive keys and decrypt
        raise QUICParseError(f"Length {length} runs past the largest UDP datagram")
    return LongHeader(first, version, dcid, scid, packet_type, token, length, pos)


@dataclass(frozen=True, slots=True)
class DecryptedInitial:
    """An Initial packet with packet and header protection removed (RFC 9001 sec. 5).

    Attributes
    ----------
    header : LongHeader
        Cleartext header fields (``header.first_byte`` still protected).
    first_byte : int
        First byte with header protection removed.
    packet_number : int
        Full packet number (RFC 9000 sec. 17.1, Appendix A.3).
    packet_number_length : int
        Bytes of the encoded packet number, 1..4.
    payload : bytes
        Plaintext frames.
    consumed : int
        Bytes of the datagram this packet occupies; the next coalesced packet (RFC 9000
        sec. 12.2) starts there. Equals ``len(packet)`` for a truncated packet.
    tag_verified : bool
        False when the packet was decrypted without checking its AEAD tag.
    truncated : bool
        True when the packet is shorter than its Length field says (capture snaplen); the
        payload then holds only the plaintext of the bytes that were captured.
    """

    header: LongHeader
    first_byte: int
    packet_number: int
    packet_number_length: int
    payload: bytes
    consumed: int
    tag_verified: bool
    truncated: bool


def _decode_packet_number(truncated_pn: int, pn_nbits: int, largest_pn: int) -> int:
    # RFC 9000 Appendix A.3
    expected_pn = largest_pn + 1
    pn_win = 1 << pn_nbits
    pn_hwin = pn_win // 2
    pn_mask = pn_win - 1
    candidate_pn = (expected_pn & ~pn_mask) | truncated_pn
    if candidate_pn <= expected_pn - pn_hwin and candidate_pn < (1 << 62) - pn_win:
        return candidate_pn + pn_win
    if candidate_pn > expected_pn + pn_hwin and candidate_pn >= pn_win:
        return candidate_pn - pn_win
    return candidate_pn


def decrypt_initial(
    packet: bytes,
    keys: InitialKeys,
    *,
    version: int,
    verify_tag: bool = True,
    largest_pn: int = -1,
) -> DecryptedInitial:
    """Remove header and packet protection from the Initial packet at the start of ``packet``.

    Parameters
    ----------
    packet : bytes
        A datagram, or the rest of one, starting with a long header Initial packet; coalesced
        packets after it are left alone (see ``DecryptedInitial.consumed``).
    keys : InitialKeys
        Keys of the sender (see :func:`derive_initial_keys`).
    version : int
        QUIC version the packet must carry; selects the packet type bits (RFC 9369 sec. 3.2).
    verify_tag : bool
        Check the AEAD tag (RFC 9001 sec. 5.3). With False, the payload is decrypted with
        AES-CTR from GCM's first counter block (nonce || 0x00000002, NIST SP 800-38D sec. 7.1)
        without authentication: how a packet cut short by the capture snaplen can be read.
    largest_pn : int
        Largest packet number decrypted so far in this packet number space, -1 if none; used to
        expand the truncated packet number (RFC 9000 Appendix A.3).

    Raises
    ------
    QUICParseError
        If the packet is not an Initial of ``version``, is cut inside its header or header
        protection sample, is cut anywhere while ``verify_tag`` is True, or fails the tag check.
    """
    data = bytes(packet)
    header = parse_long_header(data)
    if header.version != version:
        raise QUICParseError(
            f"packet version 0x{header.version:08x} is not the expected 0x{version:08x}"
        )
    if header.packet_type != LongPacketType.INITIAL:
        name = "unknown" if header.packet_type is None else header.packet_type.name
        raise QUICParseError(f"not an Initial packet (type {name})")
    assert header.length is not None and header.pn_offset is not None
    pn_offset, length = header.pn_offset, header.length
    # RFC 9001 sec. 5.4.2: a packet must hold 4 bytes of packet number room plus the sample
    if length < HEADER_PROTECTION_SAMPLE_OFFSET + HEADER_PROTECTION_SAMPLE_LENGTH:
        raise QUICParseError(f"Length {length} is too short for a header protection sample")
    sample_start = pn_offset + HEADER_PROTECTION_SAMPLE_OFFSET
    sample = data[sample_start : sample_start + HEADER_PROTECTION_SAMPLE_LENGTH]
    if len(sample) < HEADER_PROTECTION_SAMPLE_LENGTH:
        raise _OutOfBytes(
            f"packet cut short ({len(data)} bytes) before the end of the header protection sample"
        )
    # RFC 9001 sec. 5.4.1 and 5.4.3: mask = AES-ECB(hp_key, sample)
    encryptor = Cipher(algorithms.AES(keys.hp), modes.ECB()).encryptor()
    mask = encryptor.update(sample) + encryptor.finalize()
    first_byte = data[0] ^ (mask[0] & 0x0F)  # long header: 4 bits protected
    pn_length = (first_byte & PACKET_NUMBER_LENGTH_MASK) + 1
    protected_pn = data[pn_offset : pn_offset + pn_length]  # in range: the sample lies beyond
    pn_bytes = bytes(b ^ m for b, m in zip(protected_pn, mask[1 : 1 + pn_length], strict=True))
    packet_number = _decode_packet_number(
        int.from_bytes(pn_bytes, "big"), 8 * pn_length, largest_pn
    )
    aad = bytes([first_byte]) + data[1:pn_offset] + pn_bytes
    # RFC 9001 sec. 5.3: nonce = iv XOR packet number, left-padded to the iv length
    nonce = (int.from_bytes(keys.iv, "big") ^ packet_number).to_bytes(len(keys.iv), "big")
    end = pn_offset + length
    truncated = end > len(data)
    payload_start = pn_offset + pn_length
    if verify_tag:
        if truncated:
            raise _OutOfBytes(
                f"Initial packet cut short: Length needs {end} bytes, {len(data)} captured"
            )
        try:
            payload = AESGCM(keys.key).decrypt(nonce, data[payload_start:end], aad)
        except InvalidTag:
            raise QUICParseError("AEAD tag check failed (wrong keys or damaged packet)") from None
    else:
        ciphertext = data[payload_start : min(end - AEAD_TAG_LENGTH, len(data))]
        # GCM encrypts the plaintext with CTR starting at inc32(J0), J0 = nonce || 0x00000001
        decryptor = Cipher(
            algorithms.AES(keys.key), modes.CTR(nonce + b"\x00\x00\x00\x02")
        ).decryptor()
        payload = decryptor.update(ciphertext) + decryptor.finalize()
    return DecryptedInitial(
        header=header,
        first_byte=first_byte,
        packet_number=packet_number,
        packet_number_length=pn_length,
        payload=payload,
        consumed=min(end, len(data)),
        tag_verified=verify_tag,
        truncated=truncated,
    )


def _pull_crypto_frame(data: bytes, pos: int, truncated: bool, out: list[tuple[int, bytes]]) -> int:
    """Read the CRYPTO frame body after its type byte (RFC 9000 sec. 19.6); return the end."""
    offset, pos = _pull_varint(data, pos, "CRYPTO Offset")
    length, pos = _pull_varint(data, pos, "CRYPTO Length")
    if offset + length > MAX_VARINT:
        raise QUICParseError(f"CRYPTO frame ends at {offset + length}, past 2^62-1")
    chunk = data[pos : pos + length]
    if len(chunk) < length:
        if chunk and truncated:
            out.append((offset, chunk))
        raise _OutOfBytes(
            f"CRYPTO frame length {length} runs past the end of the payload "
            f"({len(data) - pos} bytes left)"
        )
    out.append((offset, chunk))
    return pos + length


def _ietf_crypto_frames(data: bytes, truncated: bool, out: list[tuple[int, bytes]]) -> None:
    pos = 0
    while pos < len(data):
        frame_type = data[pos]
        if frame_type == FRAME_PADDING:
            match = _NON_ZERO.search(data, pos)
            pos = len(data) if match is None else match.start()
        elif frame_type == FRAME_PING:
            pos += 1
        elif frame_type in (FRAME_ACK, FRAME_ACK_ECN):
            # RFC 9000 sec. 19.3: Largest Acknowledged, ACK Delay, ACK Range Count,
            # First ACK Range, ranges of (Gap, ACK Range Length), [ECN Counts]
            pos += 1
            for what in ("Largest Acknowledged", "ACK Delay"):
                _, pos = _pull_varint(data, pos, what)
            range_count, pos = _pull_varint(data, pos, "ACK Range Count")
            _, pos = _pull_varint(data, pos, "First ACK Range")
            # each range takes >= 2 bytes, so a huge count ends by running out of data
            for _ in range(range_count):
                _, pos = _pull_varint(data, pos, "Gap")
                _, pos = _pull_varint(data, pos, "ACK Range Length")
            if frame_type == FRAME_ACK_ECN:
                for what in ("ECT0 Count", "ECT1 Count", "ECN-CE Count"):
                    _, pos = _pull_varint(data, pos, what)
        elif frame_type == FRAME_CRYPTO:
            pos = _pull_crypto_frame(data, pos + 1, truncated, out)
        elif frame_type == FRAME_CONNECTION_CLOSE:
            # RFC 9000 sec. 19.19: Error Code, Frame Type, Reason Phrase Length, Reason Phrase
            _, pos = _pull_varint(data, pos + 1, "Error Code")
            _, pos = _pull_varint(data, pos, "Frame Type")
            reason_length, pos = _pull_varint(data, pos, "Reason Phrase Length")
            if pos + reason_length > len(data):
                raise _OutOfBytes(
                    f"Reason Phrase length {reason_length} runs past the end of the payload"
                )
            pos += reason_length
        else:
            raise QUICParseError(f"frame type 0x{frame_type:02x} is not allowed in Initial packets")


def _gquic_crypto_frames(data: bytes, truncated: bool, out: list[tuple[int, bytes]]) -> None:
    # Google T050/T051 put gQUIC frames in IETF-style packets (Wireshark's packet-gquic.c,
    # dissect_gquic_frame_type): PADDING fills the rest of the packet, PING is one byte, and
    # CRYPTO has type 0x08 with an IETF-style body. The other gQUIC frames (ACK, STOP_WAITING,
    # STREAM ...) have encodings we do not walk; the CRYPTO frames come before them.
    pos = 0
    while pos < len(data):
        frame_type = data[pos]
        if frame_type == GQUIC_FRAME_PING:
            pos += 1
        elif frame_type == GQUIC_FRAME_CRYPTO:
            pos = _pull_crypto_frame(data, pos + 1, truncated, out)
        else:
            return


def crypto_frames(
    payload: bytes, *, truncated: bool = False, version: int = QUIC_VERSION_1
) -> list[tuple[int, bytes]]:
    """Return the CRYPTO frames of an Initial packet's plaintext as ``(offset, data)`` pairs.

    Only the frame types RFC 9000 sec. 12.4 (Table 3) allows in Initial packets are accepted:
    PADDING, PING, ACK, CRYPTO (sec. 19.6) and CONNECTION_CLOSE (0x1c). For Google T050/T051
    the gQUIC frame encoding is read instead, up to the first frame other than PING or CRYPTO.

    Parameters
    ----------
    payload : bytes
        Plaintext of one Initial packet (``DecryptedInitial.payload``).
    truncated : bool
        The payload was cut short (snaplen): running out of bytes ends the list quietly, and a
        CRYPTO frame cut in its data contributes the bytes that are there.
    version : int
        QUIC version of the packet; selects the frame encoding.

    Raises
    ------
    QUICParseError
        For a frame type not allowed in Initial packets, or (unless ``truncated``) a frame that
        runs past the end of the payload.
    """
    data = bytes(payload)
    out: list[tuple[int, bytes]] = []
    params = _version_params(version)
    try:
        if params is not None and params.gquic_frames:
            _gquic_crypto_frames(data, truncated, out)
        else:
            _ietf_crypto_frames(data, truncated, out)
    except _OutOfBytes:
        if not truncated:
            raise
    return out


@dataclass(frozen=True, slots=True)
class QuicInitialInfo:
    """What a client's Initial packets reveal about one QUIC connection attempt.

    Attributes
    ----------
    version : int
        QUIC version of the decrypted client Initial(s).
    dcid : bytes
        Destination Connection ID the Initial keys were derived from: the client's first, or
        the new one after a Retry (RFC 9001 sec. 5.2).
    scid : bytes
        The client's Source Connection ID.
    client_hello : ClientHello or None
        The ClientHello from the reassembled CRYPTO stream; None if the stream did not hold a
        complete one. Exception: when Initials were cut short by the capture snaplen
        (``tag_verified`` False), the fields found in the captured prefix, with
        ``client_hello.truncated`` True when the message is incomplete.
    packets_decrypted : int
        Client Initial packets decrypted with these keys.
    tag_verified : bool
        False when an Initial was cut short (snaplen) and decrypted without the AEAD tag check.
    """

    version: int
    dcid: bytes
    scid: bytes
    client_hello: ClientHello | None
    packets_decrypted: int
    tag_verified: bool


@dataclass(slots=True)
class _Attempt:
    """Mutable state of one key set (DCID, version, salt) while scanning one flow."""

    dcid: bytes
    version: int
    scid: bytes
    pieces: list[tuple[int, bytes]] = field(default_factory=list)
    packets: int = 0
    largest_pn: int = -1
    tag_verified: bool = True


_AttemptKey = tuple[bytes, int, bytes]


def _decrypt_client_initial(
    packet: bytes,
    header: LongHeader,
    earlier_dcids: list[bytes],
    attempts: dict[_AttemptKey, _Attempt],
) -> None:
    """Try the packet's own DCID, then earlier ones; record the first key set that works."""
    assert header.pn_offset is not None and header.length is not None
    cut = header.pn_offset + header.length > len(packet)
    candidates = [header.dcid]
    candidates += [d for d in reversed(earlier_dcids) if d != header.dcid]
    for dcid in candidates:
        for salt in initial_salts(header.version):
            key = (dcid, header.version, salt)
            attempt = attempts.get(key)
            try:
                keys = _derive_initial_keys(dcid, header.version, True, salt)
                decrypted = decrypt_initial(
                    packet,
                    keys,
                    version=header.version,
                    verify_tag=not cut,
                    largest_pn=-1 if attempt is None else attempt.largest_pn,
                )
                # Without the tag, wrong keys give random bits: RFC 9000 sec. 17.2 requires
                # the reserved bits to be 0, and the frames must parse; that weeds most out.
                if not decrypted.tag_verified and decrypted.first_byte & LONG_RESERVED_BITS:
                    continue
                pieces = crypto_frames(
                    decrypted.payload, truncated=decrypted.truncated, version=header.version
                )
            except QUICParseError:
                continue
            if attempt is None:
                attempt = attempts[key] = _Attempt(dcid, header.version, header.scid)
            attempt.pieces += pieces
            attempt.packets += 1
            attempt.largest_pn = max(attempt.largest_pn, decrypted.packet_number)
            attempt.tag_verified &= decrypted.tag_verified
            return


def _client_hello(attempt: _Attempt) -> ClientHello | None:
    stream = reassemble_prefix(attempt.pieces, limit=_MAX_CLIENT_HELLO_LENGTH)
    try:
        hello = parse_client_hello_message(stream)
        if hello is None and not attempt.tag_verified:
            hello = parse_client_hello_prefix(stream)
    except TLSParseError:
        return None
    return hello


def client_initial_info(datagrams: Sequence[bytes]) -> QuicInitialInfo | None:
    """Decrypt a client's Initial packets and read its ClientHello (RFC 9001 sec. 5).

    Parameters
    ----------
    datagrams : sequence of bytes
        UDP payloads sent by the client of one flow, in capture order.

    Returns
    -------
    QuicInitialInfo or None
        None if no client Initial could be decrypted.

    Notes
    -----
    Coalesced packets (RFC 9000 sec. 12.2) are walked; 0-RTT and Handshake packets are
    skipped. Each Initial is decrypted with keys from its own DCID (a first Initial, one sent
    after a Retry or after Version Negotiation), else from the DCIDs of earlier client
    Initials (later Initials carry the server's connection ID but keep the first keys,
    RFC 9001 sec. 5.2). CRYPTO frames are reassembled per key set, in any order and with
    overlaps. When Version Negotiation or a Retry made the client start over, the last attempt
    that holds a complete ClientHello is reported. Never raises for malformed datagrams.
    """
    attempts: dict[_AttemptKey, _Attempt] = {}
    earlier_dcids: list[bytes] = []
    for datagram in datagrams:
        data = bytes(datagram)
        if not is_long_header(data):
            if attempts:
                break  # a 1-RTT packet: the Initial exchange is over (RFC 9001 sec. 4.9.1)
            continue
        pos = 0
        while pos < len(data) and data[pos] & HEADER_FORM_LONG:
            packet = data[pos:]
            try:
                header = parse_long_header(packet)
            except QUICParseError:
                break
            if header.length is None or header.pn_offset is None:
                break  # Version Negotiation, Retry, unknown version: no boundary to go on from
            if header.packet_type == LongPacketType.INITIAL:
                _decrypt_client_initial(packet, header, earlier_dcids, attempts)
                if header.dcid not in earlier_dcids:
                    earlier_dcids.append(header.dcid)
                    del earlier_dcids[: -(_MAX_EARLIER_DCIDS + 1)]
            pos += header.pn_offset + header.length
    if not attempts:
        return None
    chosen: tuple[_Attempt, ClientHello | None] | None = None
    for attempt in attempts.values():
        hello = _client_hello(attempt)
        rank = 0 if hello is None else (1 if hello.truncated else 2)
        if chosen is None or rank >= (
            0 if chosen[1] is None else (1 if chosen[1].truncated else 2)
        ):
            chosen = (attempt, hello)
    assert chosen is not None
    attempt, hello = chosen
    return QuicInitialInfo(
        version=attempt.version,
        dcid=attempt.dcid,
        scid=attempt.scid,
        client_hello=hello,
        packets_decrypted=attempt.packets,
        tag_verified=attempt.tag_verified,
    )
