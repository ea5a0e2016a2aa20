"""Tests for keepiton_throttle.protocols.quic: RFC 9001 / RFC 9369 Appendix A vectors, synthetic
Initials of every supported version, robustness, and the QUIC SNIs of the real-capture corpus."""

from __future__ import annotations

import gzip
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keepiton_throttle.errors import InputError
from keepiton_throttle.protocols.quic import (
    INITIAL_SALT_DRAFT_22,
    INITIAL_SALT_DRAFT_23,
    INITIAL_SALT_DRAFT_29,
    INITIAL_SALT_GOOGLE_T051,
    INITIAL_SALT_VERSION_1,
    INITIAL_SALT_VERSION_2,
    DecryptedInitial,
    InitialKeys,
    LongPacketType,
    QuicInitialInfo,
    QUICParseError,
    client_initial_info,
    crypto_frames,
    decrypt_initial,
    derive_initial_keys,
    initial_salt,
    initial_salts,
    is_long_header,
    parse_long_header,
)
from keepiton_throttle.protocols.tls import parse_client_hello_message, reassemble_prefix

from .conftest import REAL, have_corpus, manifest, requires_corpus

V1 = 0x00000001
V2 = 0x6B3343CF
DRAFT_29 = 0xFF00001D
T051 = 0x54303531
Q050 = 0x51303530

# --- RFC 9001 Appendix A ---------------------------------------------------------------------
# https://www.rfc-editor.org/rfc/rfc9001#appendix-A
RFC_DCID = bytes.fromhex("8394c8f03e515708")

# https://www.rfc-editor.org/rfc/rfc9001#appendix-A.2
V1_CLIENT_CRYPTO_FRAME = bytes.fromhex(
    """
    060040f1010000ed0303ebf8fa56f129 39b9584a3896472ec40bb863cfd3e868
    04fe3a47f06a2b69484c000004130113 02010000c000000010000e00000b6578
    616d706c652e636f6dff01000100000a 00080006001d00170018001000070005
    04616c706e0005000501000000000033 00260024001d00209370b2c9caa47fba
    baf4559fedba753de171fa71f50f1ce1 5d43e994ec74d748002b000302030400
    0d0010000e0403050306030203080408 050806002d00020101001c0002400100
    3900320408ffffffffffffffff050480 00ffff07048000ffff08011001048000
    75300901100f088394c8f03e51570806 048000ffff
    """
)
V1_CLIENT_PAYLOAD = V1_CLIENT_CRYPTO_FRAME + bytes(1162 - len(V1_CLIENT_CRYPTO_FRAME))
V1_CLIENT_HEADER = bytes.fromhex("c300000001088394c8f03e5157080000449e00000002")
V1_CLIENT_PACKET = bytes.fromhex(
    """
    c000000001088394c8f03e5157080000 449e7b9aec34d1b1c98dd7689fb8ec11
    d242b123dc9bd8bab936b47d92ec356c 0bab7df5976d27cd449f63300099f399
    1c260ec4c60d17b31f8429157bb35a12 82a643a8d2262cad67500cadb8e7378c
    8eb7539ec4d4905fed1bee1fc8aafba1 7c750e2c7ace01e6005f80fcb7df6212
    30c83711b39343fa028cea7f7fb5ff89 eac2308249a02252155e2347b63d58c5
    457afd84d05dfffdb20392844ae81215 4682e9cf012f9021a6f0be17ddd0c208
    4dce25ff9b06cde535d0f920a2db1bf3 62c23e596d11a4f5a6cf3948838a3aec
    4e15daf8500a6ef69ec4e3feb6b1d98e 610ac8b7ec3faf6ad760b7bad1db4ba3
    485e8a94dc250ae3fdb41ed15fb6a8e5 eba0fc3dd60bc8e30c5c4287e53805db
    059ae0648db2f64264ed5e39be2e20d8 2df566da8dd5998ccabdae053060ae6c
    7b4378e846d29f37ed7b4ea9ec5d82e7 961b7f25a9323851f681d582363aa5f8
    9937f5a67258bf63ad6f1a0b1d96dbd4 faddfcefc5266ba6611722395c906556
    be52afe3f565636ad1b17d508b73d874 3eeb524be22b3dcbc2c7468d54119c74
    68449a13d8e3b95811a198f3491de3e7 fe942b330407abf82a4ed7c1b311663a
    c69890f4157015853d91e923037c227a 33cdd5ec281ca3f79c44546b9d90ca00
    f064c99e3dd97911d39fe9c5d0b23a22 9a234cb36186c4819e8b9c5927726632
    291d6a418211cc2962e20fe47feb3edf 330f2c603a9d48c0fcb5699dbfe58964
    25c5bac4aee82e57a85aaf4e2513e4f0 5796b07ba2ee47d80506f8d2c25e50fd
    14de71e6c418559302f939b0e1abd576 f279c4b2e0feb85c1f28ff18f58891ff
    ef132eef2fa09346aee33c28eb130ff2 8f5b766953334113211996d20011a198
    e3fc433f9f2541010ae17c1bf202580f 6047472fb36857fe843b19f5984009dd
    c324044e847a4f4a0ab34f719595de37 252d6235365e9b84392b061085349d73
    203a4a13e96f5432ec0fd4a1ee65accd d5e3904df54c1da510b0ff20dcc0c77f
    cb2c0e0eb605cb0504db87632cf3d8b4 dae6e705769d1de354270123cb11450e
    fc60ac47683d7b8d0f811365565fd98c 4c8eb936bcab8d069fc33bd801b03ade
    a2e1fbc5aa463d08ca19896d2bf59a07 1b851e6c239052172f296bfb5e724047
    90a2181014f3b94a4e97d117b4381303 68cc39dbb2d198065ae3986547926cd2
    162f40a29f0c3c8745c0f50fba3852e5 66d44575c29d39a03f0cda721984b6f4
    40591f355e12d439ff150aab7613499d bd49adabc8676eef023b15b65bfc5ca0
    6948109f23f350db82123535eb8a7433 bdabcb909271a6ecbcb58b936a88cd4e
    8f2e6ff5800175f113253d8fa9ca8885 c2f552e657dc603f252e1a8e308f76f0
    be79e2fb8f5d5fbbe2e30ecadd220723 c8c0aea8078cdfcb3868263ff8f09400
    54da48781893a7e49ad5aff4af300cd8 04a6b6279ab3ff3afb64491c85194aab
    760d58a606654f9f4400e8b38591356f bf6425aca26dc85244259ff2b19c41b9
    f96f3ca9ec1dde434da7d2d392b905dd f3d1f9af93d1af5950bd493f5aa731b4
    056df31bd267b6b90a079831aaf579be 0a39013137aac6d404f518cfd4684064
    7e78bfe706ca4cf5e9c5453e9f7cfd2b 8b4c8d169a44e55c88d4a9a7f9474241
    e221af44860018ab0856972e194cd934
    """
)

# https://www.rfc-editor.org/rfc/rfc9001#appendix-A.3
SERVER_PAYLOAD = bytes.fromhex(
    """
    02000000000600405a020000560303ee fce7f7b37ba1d1632e96677825ddf739
    88cfc79825df566dc5430b9a045a1200 130100002e00330024001d00209d3c94
    0d89690b84d08a60993c144eca684d10 81287c834d5311bcf32bb9da1a002b00
    020304
    """
)
V1_SERVER_PACKET = bytes.fromhex(
    """
    cf000000010008f067a5502a4262b500 4075c0d95a482cd0991cd25b0aac406a
    5816b6394100f37a1c69797554780bb3 8cc5a99f5ede4cf73c3ec2493a1839b3
    dbcba3f6ea46c5b7684df3548e7ddeb9 c3bf9c73cc3f3bded74b562bfb19fb84
    022f8ef4cdd93795d77d06edbb7aaf2f 58891850abbdca3d20398c276456cbc4
    2158407dd074ee
    """
)

# --- RFC 9369 Appendix A ---------------------------------------------------------------------
# https://www.rfc-editor.org/rfc/rfc9369#appendix-A.2 (same CRYPTO frame and padding as v1)
V2_CLIENT_HEADER = bytes.fromhex("d36b3343cf088394c8f03e5157080000449e00000002")
V2_CLIENT_PACKET = bytes.fromhex(
    """
    d76b3343cf088394c8f03e5157080000 449ea0c95e82ffe67b6abcdb4298b485
    dd04de806071bf03dceebfa162e75d6c 96058bdbfb127cdfcbf903388e99ad04
    9f9a3dd4425ae4d0992cfff18ecf0fdb 5a842d09747052f17ac2053d21f57c5d
    250f2c4f0e0202b70785b7946e992e58 a59ac52dea6774d4f03b55545243cf1a
    12834e3f249a78d395e0d18f4d766004 f1a2674802a747eaa901c3f10cda5500
    cb9122faa9f1df66c392079a1b40f0de 1c6054196a11cbea40afb6ef5253cd68
    18f6625efce3b6def6ba7e4b37a40f77 32e093daa7d52190935b8da58976ff33
    12ae50b187c1433c0f028edcc4c2838b 6a9bfc226ca4b4530e7a4ccee1bfa2a3
    d396ae5a3fb512384b2fdd851f784a65 e03f2c4fbe11a53c7777c023462239dd
    6f7521a3f6c7d5dd3ec9b3f233773d4b 46d23cc375eb198c63301c21801f6520
    bcfb7966fc49b393f0061d974a2706df 8c4a9449f11d7f3d2dcbb90c6b877045
    636e7c0c0fe4eb0f697545460c806910 d2c355f1d253bc9d2452aaa549e27a1f
    ac7cf4ed77f322e8fa894b6a83810a34 b361901751a6f5eb65a0326e07de7c12
    16ccce2d0193f958bb3850a833f7ae43 2b65bc5a53975c155aa4bcb4f7b2c4e5
    4df16efaf6ddea94e2c50b4cd1dfe060 17e0e9d02900cffe1935e0491d77ffb4
    fdf85290fdd893d577b1131a610ef6a5 c32b2ee0293617a37cbb08b847741c3b
    8017c25ca9052ca1079d8b78aebd4787 6d330a30f6a8c6d61dd1ab5589329de7
    14d19d61370f8149748c72f132f0fc99 f34d766c6938597040d8f9e2bb522ff9
    9c63a344d6a2ae8aa8e51b7b90a4a806 105fcbca31506c446151adfeceb51b91
    abfe43960977c87471cf9ad4074d30e1 0d6a7f03c63bd5d4317f68ff325ba3bd
    80bf4dc8b52a0ba031758022eb025cdd 770b44d6d6cf0670f4e990b22347a7db
    848265e3e5eb72dfe8299ad7481a4083 22cac55786e52f633b2fb6b614eaed18
    d703dd84045a274ae8bfa73379661388 d6991fe39b0d93debb41700b41f90a15
    c4d526250235ddcd6776fc77bc97e7a4 17ebcb31600d01e57f32162a8560cacc
    7e27a096d37a1a86952ec71bd89a3e9a 30a2a26162984d7740f81193e8238e61
    f6b5b984d4d3dfa033c1bb7e4f0037fe bf406d91c0dccf32acf423cfa1e70710
    10d3f270121b493ce85054ef58bada42 310138fe081adb04e2bd901f2f13458b
    3d6758158197107c14ebb193230cd115 7380aa79cae1374a7c1e5bbcb80ee23e
    06ebfde206bfb0fcbc0edc4ebec30966 1bdd908d532eb0c6adc38b7ca7331dce
    8dfce39ab71e7c32d318d136b6100671 a1ae6a6600e3899f31f0eed19e3417d1
    34b90c9058f8632c798d4490da498730 7cba922d61c39805d072b589bd52fdf1
    e86215c2d54e6670e07383a27bbffb5a ddf47d66aa85a0c6f9f32e59d85a44dd
    5d3b22dc2be80919b490437ae4f36a0a e55edf1d0b5cb4e9a3ecabee93dfc6e3
    8d209d0fa6536d27a5d6fbb17641cde2 7525d61093f1b28072d111b2b4ae5f89
    d5974ee12e5cf7d5da4d6a31123041f3 3e61407e76cffcdcfd7e19ba58cf4b53
    6f4c4938ae79324dc402894b44faf8af bab35282ab659d13c93f70412e85cb19
    9a37ddec600545473cfb5a05e08d0b20 9973b2172b4d21fb69745a262ccde96b
    a18b2faa745b6fe189cf772a9f84cbfc
    """
)
# https://www.rfc-editor.org/rfc/rfc9369#appendix-A.3
V2_SERVER_PACKET = bytes.fromhex(
    """
    dc6b3343cf0008f067a5502a4262b500 4075d92faaf16f05d8a4398c47089698
    baeea26b91eb761d9b89237bbf872630 17915358230035f7fd3945d88965cf17
    f9af6e16886c61bfc703106fbaf3cb4c fa52382dd16a393e42757507698075b2
    c984c707f0a0812d8cd5a6881eaf21ce da98f4bd23f6fe1a3e2c43edd9ce7ca8
    4bed8521e2e140
    """
)

# The 241-byte ClientHello inside the RFC 9001 A.2 CRYPTO frame (SNI example.com, ALPN "alpn")
RFC_CLIENT_HELLO = V1_CLIENT_CRYPTO_FRAME[4:]


# --- keys ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "is_client", "key", "iv", "hp"),
    [
        # https://www.rfc-editor.org/rfc/rfc9001#appendix-A.1
        (
            V1,
            True,
            "1f369613dd76d5467730efcbe3b1a22d",
            "fa044b2f42a3fd3b46fb255c",
            "9f50449e04a0e810283a1e9933adedd2",
        ),
        (
            V1,
            False,
            "cf3a5331653c364c88f0f379b6067e37",
            "0ac1493ca1905853b0bba03e",
            "c206b8d9b9f0f37644430b490eeaa314",
        ),
        # https://www.rfc-editor.org/rfc/rfc9369#appendix-A.1
        (
            V2,
            True,
            "8b1a0bc121284290a29e0971b5cd045d",
            "91f73e2351d8fa91660e909f",
            "45b95e15235d6f45a6b19cbcb0294ba9",
        ),
        (
            V2,
            False,
            "82db637861d55e1d011f19ea71d5d2a7",
            "dd13c276499c0249d3310652",
            "edf6d05c83121201b436e16877593c3a",
        ),
    ],
)
def test_initial_keys_rfc_vectors(
    version: int, is_client: bool, key: str, iv: str, hp: str
) -> None:
    keys = derive_initial_keys(RFC_DCID, version, is_client=is_client)
    assert keys == InitialKeys(bytes.fromhex(key), bytes.fromhex(iv), bytes.fromhex(hp))


def test_keys_are_cached() -> None:
    a = derive_initial_keys(b"\x01\x02\x03\x04\x05\x06\x07\x08", V1, is_client=True)
    assert derive_initial_keys(b"\x01\x02\x03\x04\x05\x06\x07\x08", V1, is_client=True) is a


@pytest.mark.parametrize(
    ("version", "salt"),
    [
        (V1, INITIAL_SALT_VERSION_1),
        (V2, INITIAL_SALT_VERSION_2),
        (0xFF000016, INITIAL_SALT_DRAFT_22),
        (0xFF000017, INITIAL_SALT_DRAFT_23),
        (0xFF00001C, INITIAL_SALT_DRAFT_23),
        (0xFF00001D, INITIAL_SALT_DRAFT_29),
        (0xFF000020, INITIAL_SALT_DRAFT_29),
        (0xFF000021, INITIAL_SALT_VERSION_1),
        (0xFF000022, INITIAL_SALT_VERSION_1),
        (0xFACEB001, INITIAL_SALT_DRAFT_22),
        (0xFACEB002, INITIAL_SALT_DRAFT_23),
        (0xFACEB00E, INITIAL_SALT_DRAFT_23),
        (T051, INITIAL_SALT_GOOGLE_T051),
        (0x0A0A0A0A, INITIAL_SALT_VERSION_1),
        (0x1A2A3A4A, INITIAL_SALT_VERSION_1),
        (0xFAFAFAFA, INITIAL_SALT_VERSION_1),
        (Q050, None),  # gQUIC: no TLS inside
        (0xFF000015, None),  # draft-21: older header format
        (0xFF000023, None),
        (0x709A50C4, None),  # QUIC v2 draft codepoint (RFC 9369 sec. 9)
        (0x00000000, None),  # Version Negotiation
        (0x12345678, None),
    ],
)
def test_initial_salt(version: int, salt: bytes | None) -> None:
    assert initial_salt(version) == salt


def test_reserved_versions_also_try_the_draft_29_salt() -> None:
    assert initial_salts(0x0A0A0A0A) == (INITIAL_SALT_VERSION_1, INITIAL_SALT_DRAFT_29)
    assert initial_salts(V1) == (INITIAL_SALT_VERSION_1,)
    assert initial_salts(Q050) == ()


def test_derive_keys_for_unknown_version_raises() -> None:
    with pytest.raises(QUICParseError, match="QUIC version 0x51303530 has no known Initial salt"):
        derive_initial_keys(RFC_DCID, Q050, is_client=True)


# --- RFC packets -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("packet", "version", "header"),
    [(V1_CLIENT_PACKET, V1, V1_CLIENT_HEADER), (V2_CLIENT_PACKET, V2, V2_CLIENT_HEADER)],
    ids=["rfc9001-A.2", "rfc9369-A.2"],
)
def test_decrypt_rfc_client_initial(packet: bytes, version: int, header: bytes) -> None:
    keys = derive_initial_keys(RFC_DCID, version, is_client=True)
    decrypted = decrypt_initial(packet, keys, version=version)
    assert decrypted.first_byte == header[0]
    assert decrypted.packet_number == 2 and decrypted.packet_number_length == 4
    assert decrypted.payload == V1_CLIENT_PAYLOAD
    assert decrypted.consumed == len(packet) == 1200
    assert decrypted.tag_verified and not decrypted.truncated
    assert decrypted.header.dcid == RFC_DCID and decrypted.header.scid == b""
    assert decrypted.header.packet_type == LongPacketType.INITIAL
    assert crypto_frames(decrypted.payload) == [(0, RFC_CLIENT_HELLO)]
    hello = parse_client_hello_message(RFC_CLIENT_HELLO)
    assert hello is not None
    assert (hello.sni, hello.alpn, hello.versions) == ("example.com", ("alpn",), (0x0304,))


@pytest.mark.parametrize(
    ("packet", "version"),
    [(V1_SERVER_PACKET, V1), (V2_SERVER_PACKET, V2)],
    ids=["rfc9001-A.3", "rfc9369-A.3"],
)
def test_decrypt_rfc_server_initial(packet: bytes, version: int) -> None:
    keys = derive_initial_keys(RFC_DCID, version, is_client=False)
    decrypted = decrypt_initial(packet, keys, version=version)
    assert decrypted.packet_number == 1 and decrypted.packet_number_length == 2
    assert decrypted.payload == SERVER_PAYLOAD
    assert decrypted.header.scid == bytes.fromhex("f067a5502a4262b5")
    # ACK then a CRYPTO frame holding the ServerHello
    (frame,) = crypto_frames(decrypted.payload)
    assert frame[0] == 0 and frame[1][0] == 2


@pytest.mark.parametrize("version", [V1, V2])
def test_client_initial_info_rfc_packet(version: int) -> None:
    packet = V1_CLIENT_PACKET if version == V1 else V2_CLIENT_PACKET
    info = client_initial_info([packet])
    assert info == QuicInitialInfo(
        version=version,
        dcid=RFC_DCID,
        scid=b"",
        client_hello=parse_client_hello_message(RFC_CLIENT_HELLO),
        packets_decrypted=1,
        tag_verified=True,
    )


def test_version_2_type_bits_differ() -> None:
    # RFC 9369 sec. 3.2: 0b01 is Initial in v2; in v1 those bits mean 0-RTT
    assert parse_long_header(V2_CLIENT_PACKET).packet_type == LongPacketType.INITIAL
    as_v1 = bytearray(V2_CLIENT_PACKET)
    as_v1[1:5] = V1.to_bytes(4, "big")
    assert parse_long_header(bytes(as_v1)).packet_type == LongPacketType.ZERO_RTT
    keys = derive_initial_keys(RFC_DCID, V1, is_client=True)
    with pytest.raises(QUICParseError, match=r"^not an Initial packet \(type ZERO_RTT\)$"):
        decrypt_initial(bytes(as_v1), keys, version=V1)


# --- truncation (capture snaplen) --------------------------------------------------------------


def test_truncated_packet_is_decrypted_without_the_tag() -> None:
    keys = derive_initial_keys(RFC_DCID, V1, is_client=True)
    for cut in (42, 150, 300, 1183, 1199):
        packet = V1_CLIENT_PACKET[:cut]
        with pytest.raises(QUICParseError, match=f"Length needs 1200 bytes, {cut} captured"):
            decrypt_initial(packet, keys, version=V1)
        decrypted = decrypt_initial(packet, keys, version=V1, verify_tag=False)
        assert decrypted.truncated and not decrypted.tag_verified
        assert decrypted.consumed == cut
        expected = V1_CLIENT_PAYLOAD[: min(cut, 1200 - 16) - 22]
        assert decrypted.payload == expected
    # a whole packet without the tag check gives the same plaintext
    unchecked = decrypt_initial(V1_CLIENT_PACKET, keys, version=V1, verify_tag=False)
    assert unchecked.payload == V1_CLIENT_PAYLOAD and not unchecked.truncated


def test_truncated_packet_reveals_the_sni() -> None:
    # the payload starts after the 18-byte header and the 4-byte packet number
    name_at = 22 + V1_CLIENT_CRYPTO_FRAME.index(b"example.com")
    info = client_initial_info([V1_CLIENT_PACKET[: name_at + len("example.com")]])
    assert info is not None and not info.tag_verified
    assert info.client_hello is not None
    assert info.client_hello.sni == "example.com" and info.client_hello.truncated
    # cut inside the SNI: decrypted, but no name yet
    info = client_initial_info([V1_CLIENT_PACKET[: name_at + 3]])
    assert info is not None and info.client_hello is not None and info.client_hello.sni is None
    # a complete CRYPTO stream in a truncated packet is a complete ClientHello
    info = client_initial_info([V1_CLIENT_PACKET[:600]])
    assert info is not None and info.client_hello == parse_client_hello_message(RFC_CLIENT_HELLO)


def test_cut_inside_header_or_sample_gives_no_result() -> None:
    keys = derive_initial_keys(RFC_DCID, V1, is_client=True)
    # the header protection sample ends at byte 38 (RFC 9001 sec. 5.4.2)
    for cut in (0, 1, 5, 10, 17, 21, 30, 37):
        assert client_initial_info([V1_CLIENT_PACKET[:cut]]) is None, cut
        with pytest.raises(QUICParseError):
            decrypt_initial(V1_CLIENT_PACKET[:cut], keys, version=V1)


def test_damaged_packet_fails_the_tag_check() -> None:
    damaged = bytearray(V1_CLIENT_PACKET)
    damaged[500] ^= 1
    keys = derive_initial_keys(RFC_DCID, V1, is_client=True)
    with pytest.raises(
        QUICParseError, match=r"^AEAD tag check failed \(wrong keys or damaged packet\)$"
    ):
        decrypt_initial(bytes(damaged), keys, version=V1)
    assert client_initial_info([bytes(damaged)]) is None


# --- synthetic Initials ---------------------------------------------------------------------


def varint(value: int) -> bytes:
    """RFC 9000 sec. 16 encoding, shortest form."""
    for size, prefix in ((1, 0x00), (2, 0x40), (4, 0x80), (8, 0xC0)):
        if value < 1 << (8 * size - 2):
            encoded = bytearray(value.to_bytes(size, "big"))
            encoded[0] |= prefix
            return bytes(encoded)
    raise ValueError(value)


def crypto(offset: int, data: bytes) -> bytes:
    return b"\x06" + varint(offset) + varint(len(data)) + data


def protect_initial(
    payload: bytes,
    *,
    version: int = V1,
    dcid: bytes = RFC_DCID,
    scid: bytes = b"",
    key_dcid: bytes | None = None,
    salt: bytes | None = None,
    pn: int = 0,
    pn_length: int = 4,
    token: bytes = b"",
    pad_to: int = 0,
) -> bytes:
    """Protect a client Initial (RFC 9001 sec. 5.3, 5.4): the test's encryption twin."""
    keys = derive_initial_keys(key_dcid or dcid, version, is_client=True, salt=salt)
    type_bits = 0b01 if version == V2 else 0b00
    first = 0xC0 | type_bits << 4 | (pn_length - 1)
    head = version.to_bytes(4, "big") + bytes([len(dcid)]) + dcid + bytes([len(scid)]) + scid
    head += varint(len(token)) + token
    overhead = 1 + len(head) + 2 + pn_length + 16
    payload += bytes(max(0, pad_to - overhead - len(payload), 20 - pn_length - len(payload)))
    length = pn_length + len(payload) + 16
    header = bytes([first]) + head + varint(length).rjust(2, b"\x40")
    pn_offset = len(header)
    header += (pn & ((1 << (8 * pn_length)) - 1)).to_bytes(pn_length, "big")
    nonce = (int.from_bytes(keys.iv, "big") ^ pn).to_bytes(12, "big")
    sealed = AESGCM(keys.key).encrypt(nonce, payload, header)
    sample = sealed[4 - pn_length : 20 - pn_length]
    encryptor = Cipher(algorithms.AES(keys.hp), modes.ECB()).encryptor()
    mask = encryptor.update(sample) + encryptor.finalize()
    protected = bytearray(header)
    protected[0] ^= mask[0] & 0x0F
    for i in range(pn_length):
        protected[pn_offset + i] ^= mask[1 + i]
    return bytes(protected) + sealed


def test_protect_twin_reproduces_the_rfc_packets() -> None:
    for version, expected in ((V1, V1_CLIENT_PACKET), (V2, V2_CLIENT_PACKET)):
        assert protect_initial(V1_CLIENT_PAYLOAD, version=version, pn=2) == expected


CHUNKS = [RFC_CLIENT_HELLO[a:b] for a, b in ((0, 50), (50, 120), (120, 200), (200, 241))]
OFFSETS = [0, 50, 120, 200]


def test_crypto_frames_out_of_order_over_several_initials() -> None:
    # Chrome-style: CRYPTO frames shuffled, PING and PADDING between them, split over Initials,
    # with a retransmitted and an overlapping piece.
    p1 = b"\x01" + crypto(120, CHUNKS[2]) + b"\x00\x00\x01" + crypto(0, CHUNKS[0])
    p2 = crypto(200, CHUNKS[3]) + crypto(100, RFC_CLIENT_HELLO[100:130]) + crypto(0, CHUNKS[0])
    p3 = crypto(50, CHUNKS[1])
    datagrams = [
        protect_initial(p1, pn=0, pad_to=1200),
        protect_initial(p2, pn=1, pad_to=1200),
        protect_initial(p3, pn=2, pad_to=1200),
    ]
    info = client_initial_info(datagrams)
    assert info is not None and info.packets_decrypted == 3 and info.tag_verified
    assert info.client_hello == parse_client_hello_message(RFC_CLIENT_HELLO)
    # without the third packet the stream has a gap at 50
    partial = client_initial_info(datagrams[:2])
    assert partial is not None and partial.client_hello is None and partial.packets_decrypted == 2


def test_later_initials_keep_the_first_keys() -> None:
    # RFC 9001 sec. 5.2: after the server's Initial the client's DCID changes, its keys do not
    server_cid = bytes.fromhex("f067a5502a4262b5")
    first = protect_initial(crypto(0, CHUNKS[0]), pn=0, scid=b"\xcc" * 4, pad_to=1200)
    later = protect_initial(
        b"\x02\x00\x00\x00\x00" + crypto(50, RFC_CLIENT_HELLO[50:]),  # ACK + the rest
        dcid=server_cid,
        key_dcid=RFC_DCID,
        scid=b"\xcc" * 4,
        pn=1,
        pad_to=1200,
    )
    info = client_initial_info([first, later])
    assert info is not None
    assert (info.dcid, info.scid, info.packets_decrypted) == (RFC_DCID, b"\xcc" * 4, 2)
    assert info.client_hello == parse_client_hello_message(RFC_CLIENT_HELLO)


def test_retry_and_version_negotiation_restart_with_new_keys() -> None:
    old = protect_initial(crypto(0, RFC_CLIENT_HELLO), dcid=b"\x01" * 8, pad_to=1200)
    other_hello = RFC_CLIENT_HELLO.replace(b"example.com", b"example.net")
    after_retry = protect_initial(crypto(0, other_hello), dcid=b"\x02" * 16, pad_to=1200)
    info = client_initial_info([old, after_retry])
    assert info is not None and info.dcid == b"\x02" * 16
    assert info.client_hello is not None and info.client_hello.sni == "example.net"
    # Version Negotiation: a greased version first, then version 1 with the same DCID
    greased = protect_initial(crypto(0, RFC_CLIENT_HELLO), version=0x1A2A3A4A, pad_to=1200)
    v1 = protect_initial(crypto(0, other_hello), pad_to=1200)
    info = client_initial_info([greased, v1])
    assert info is not None and info.version == V1 and info.client_hello is not None
    assert info.client_hello.sni == "example.net"
    only_greased = client_initial_info([greased])
    assert only_greased is not None and only_greased.version == 0x1A2A3A4A


@pytest.mark.parametrize(
    "version", [0xFF000017, 0xFF00001C, DRAFT_29, 0xFF000022, 0xFACEB001, 0xFACEB002, V2]
)
def test_other_versions(version: int) -> None:
    info = client_initial_info([protect_initial(crypto(0, RFC_CLIENT_HELLO), version=version)])
    assert info is not None and info.version == version
    assert info.client_hello is not None and info.client_hello.sni == "example.com"


def test_reserved_version_with_draft_29_keys() -> None:
    # what the interop-runner client of ndpi__quic_interop_V.pcapng does
    packet = protect_initial(
        crypto(0, RFC_CLIENT_HELLO), version=0x0A0A0A0A, salt=INITIAL_SALT_DRAFT_29
    )
    info = client_initial_info([packet])
    assert info is not None and info.version == 0x0A0A0A0A
    assert info.client_hello is not None and info.client_hello.sni == "example.com"


def test_google_t051_uses_gquic_frames() -> None:
    # Wireshark packet-gquic.c: CRYPTO is frame type 0x08 in T050/T051, PADDING runs to the end
    frames = b"\x07" + b"\x08" + varint(0) + varint(len(RFC_CLIENT_HELLO)) + RFC_CLIENT_HELLO
    packet = protect_initial(frames + b"\x00" + b"\x41" * 40, version=T051)
    info = client_initial_info([packet])
    assert info is not None and info.version == T051
    assert info.client_hello is not None and info.client_hello.sni == "example.com"
    assert crypto_frames(b"\x40\x01\x08\x00\x01x", version=T051) == []  # stops at an ACK


def test_gquic_q050_is_skipped_quietly() -> None:
    # a Q050 long header: IETF invariants, but not IETF QUIC inside (RFC 8999 sec. 5.1)
    q050 = bytes([0xC3]) + Q050.to_bytes(4, "big") + b"\x08" + bytes(8) + b"\x00" + bytes(1180)
    assert parse_long_header(q050).packet_type is None
    assert client_initial_info([q050, q050]) is None


def test_coalesced_packets() -> None:
    initial = protect_initial(crypto(0, RFC_CLIENT_HELLO))
    # RFC 9000 sec. 12.2: an Initial, then (e.g.) a 0-RTT packet in the same datagram
    zero_rtt = bytes([0xD0]) + V1.to_bytes(4, "big") + b"\x08" + RFC_DCID + b"\x00\x40\x20"
    zero_rtt += bytes(32)
    keys = derive_initial_keys(RFC_DCID, V1, is_client=True)
    assert decrypt_initial(initial + zero_rtt, keys, version=V1).consumed == len(initial)
    info = client_initial_info([zero_rtt + initial])
    assert info is not None and info.packets_decrypted == 1  # the 0-RTT packet is skipped
    # a second Initial coalesced after the first one
    second = protect_initial(b"\x01", pn=1)
    info = client_initial_info([initial + second])
    assert info is not None and info.packets_decrypted == 2


def test_short_header_packets_end_the_scan() -> None:
    initial = protect_initial(crypto(0, RFC_CLIENT_HELLO))
    late = protect_initial(crypto(0, b"\x01\x00\x00\x01x"), dcid=b"\x09" * 8)
    info = client_initial_info([b"\x40" + bytes(30), initial, b"\x41" + bytes(40), late])
    assert info is not None and info.dcid == RFC_DCID and info.packets_decrypted == 1


def test_parse_long_header_fields_and_errors() -> None:
    header = parse_long_header(protect_initial(b"\x01", token=b"tok", scid=b"\x05" * 5))
    assert (header.version, header.token, header.scid) == (V1, b"tok", b"\x05" * 5)
    vn = b"\x80" + bytes(4) + b"\x08" + RFC_DCID + b"\x00" + V1.to_bytes(4, "big")
    assert parse_long_header(vn).packet_type is None and parse_long_header(vn).version == 0
    retry = bytes([0xF0]) + V1.to_bytes(4, "big") + b"\x00\x08" + RFC_DCID + b"token" + bytes(16)
    assert parse_long_header(retry).packet_type == LongPacketType.RETRY
    assert parse_long_header(retry).length is None
    cases = [
        (b"\x40abc", "not a long header packet (header form bit is 0)"),
        (b"\xc0\x00\x00\x00\x01", "long header cut short: 5 bytes"),
        (b"\xc0\x00\x00\x00\x01\x15" + bytes(40), "DCID length 21 exceeds 20 bytes"),
        (b"\xc0\x00\x00\x00\x01\x08abc", "long header cut short inside the DCID"),
        (b"\xc0\x00\x00\x00\x01\x00\x00\x05ab", "Token length 5 runs past the end of the packet"),
        (b"\xc0\x00\x00\x00\x01\x00\x00\x00\x44", "Length needs 2 bytes, 1 left"),
        # a Length no UDP datagram can hold (random bytes with the high bit set)
        (b"\xc0\x00\x00\x00\x01\x00\x00\x00\xc0\x00\x00\x01\x00\x00\x00\x00" + bytes(30),
         "Length 4294967296 runs past the largest UDP datagram"),
        (b"\xc0\x00\x00\x00\x01\x00\x00\x00\x80\x00\xff\xf8" + bytes(30),
         "Length 65528 runs past the largest UDP datagram"),
    ]
    for data, message in cases:
        with pytest.raises(QUICParseError) as info:
            parse_long_header(data)
        assert str(info.value) == message
        assert isinstance(info.value, InputError) and isinstance(info.value, ValueError)


def test_crypto_frames_errors() -> None:
    assert crypto_frames(b"\x00" * 10 + b"\x01\x02\x05\x00\x00\x00" + crypto(3, b"abc")) == [
        (3, b"abc")
    ]
    assert crypto_frames(b"\x03\x01\x00\x01\x00\x02\x03\x00\x00\x00") == []  # ACK_ECN, 1 range
    assert crypto_frames(b"\x1c\x0a\x00\x02hi") == []  # CONNECTION_CLOSE
    with pytest.raises(
        QUICParseError, match=r"^frame type 0x08 is not allowed in Initial packets$"
    ):
        crypto_frames(b"\x08\x00")
    with pytest.raises(
        QUICParseError,
        match=r"^CRYPTO frame length 10 runs past the end of the payload \(3 bytes left\)$",
    ):
        crypto_frames(crypto(0, b"0123456789")[:-7])
    assert crypto_frames(crypto(7, b"0123456789")[:-7], truncated=True) == [(7, b"012")]
    with pytest.raises(QUICParseError, match="past 2"):
        crypto_frames(b"\x06" + varint((1 << 62) - 1) + b"\x05abcde")


# --- robustness ------------------------------------------------------------------------------

FUZZ = settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
_SEEDS = [V1_CLIENT_PACKET, V2_CLIENT_PACKET, V1_SERVER_PACKET, protect_initial(b"\x01")]


@st.composite
def mutated_packets(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(_SEEDS)))
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["flip", "header", "truncate", "insert"]))
        if op == "flip":
            data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
        elif op == "header":  # aim at the varints and lengths of the header
            data[draw(st.integers(0, min(25, len(data) - 1)))] = draw(st.integers(0, 255))
        elif op == "truncate":
            del data[draw(st.integers(0, len(data))) :]
        else:
            i = draw(st.integers(0, len(data)))
            data[i:i] = draw(st.binary(min_size=1, max_size=4))
        if not data:
            break
    return bytes(data)


packets = st.one_of(
    st.binary(max_size=80), st.binary(min_size=1200, max_size=1300), mutated_packets()
)


def _value_none_or_quic_error(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except QUICParseError:
        return None


@settings(FUZZ, max_examples=1000)
@given(packets, st.booleans())
def test_fuzz_packet_functions(data: bytes, verify_tag: bool) -> None:
    assert isinstance(is_long_header(data), bool)
    _value_none_or_quic_error(parse_long_header, data)
    keys = derive_initial_keys(RFC_DCID, V1, is_client=True)
    for version in (V1, V2):
        result = _value_none_or_quic_error(
            decrypt_initial, data, keys, version=version, verify_tag=verify_tag
        )
        assert result is None or isinstance(result, DecryptedInitial)
    for truncated in (False, True):
        frames = _value_none_or_quic_error(crypto_frames, data, truncated=truncated)
        assert frames is None or all(isinstance(f, tuple) for f in frames)
        _value_none_or_quic_error(crypto_frames, data, truncated=truncated, version=T051)


@settings(FUZZ, max_examples=1000)
@given(st.lists(packets, max_size=4))
def test_fuzz_client_initial_info_never_raises(datagrams: list[bytes]) -> None:
    info = client_initial_info(datagrams)
    assert info is None or isinstance(info, QuicInitialInfo)


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    data = bytearray(b"\x01" + crypto(0, RFC_CLIENT_HELLO) + b"\x02\x00\x00\x00\x00")
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(data) - 1))
        data[i] = draw(st.integers(0, 255))
    return bytes(data[: draw(st.integers(0, len(data)))])


@FUZZ
@given(st.one_of(st.binary(max_size=300), mutated_frames()), st.booleans())
def test_fuzz_decrypted_garbage(plaintext: bytes, truncate: bool) -> None:
    # valid protection around hostile frames: the frame and TLS parsers get the bad bytes
    packet = protect_initial(plaintext, pad_to=0)
    if truncate:
        packet = packet[: len(packet) - 20]
    info = client_initial_info([packet])
    assert info is None or isinstance(info, QuicInitialInfo)


# --- real captures ---------------------------------------------------------------------------

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


def _udp(frame: Any) -> tuple[tuple[str, int], tuple[str, int], bytes] | None:
    """Innermost UDP datagram of a frame, through tunnels and BSD loopback (AF_INET6 = 30)."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Loopback
    from scapy.packet import NoPayload, Padding, Raw

    if isinstance(frame, Loopback) and isinstance(frame.payload, Raw):
        raw = bytes(frame.payload)
        frame = IP(raw) if raw and raw[0] >> 4 == 4 else IPv6(raw)
    found = None
    layer = frame
    while not isinstance(layer, NoPayload):
        if type(layer) in (IP, IPv6) and type(layer.payload) is UDP:
            udp = layer.payload
            data = bytes(udp.payload)
            pad = udp.getlayer(Padding)  # Ethernet trailer bytes are not UDP data
            data = data if pad is None else data[: len(data) - len(bytes(pad))]
            found = ((layer.src, udp.sport), (layer.dst, udp.dport), data)
        layer = layer.payload
    return found


def quic_flows(path: Path) -> list[QuicInitialInfo]:
    """client_initial_info of every UDP flow (client = sender of the first long-header Initial)."""
    flows: dict[frozenset[tuple[str, int]], list[tuple[tuple[str, int], bytes]]] = defaultdict(list)
    for frame in _frames(path):
        found = _udp(frame)
        if found is not None:
            src, dst, data = found
            flows[frozenset((src, dst))].append((src, data))
    infos = []
    for datagrams in flows.values():
        client = None
        for sender, data in datagrams:
            try:
                if parse_long_header(data).packet_type == LongPacketType.INITIAL:
                    client = sender
                    break
            except QUICParseError:
                continue
        if client is not None:
            info = client_initial_info([d for s, d in datagrams if s == client])
            if info is not None:
                infos.append(info)
    return infos


def _snis(infos: list[QuicInitialInfo]) -> set[str]:
    return {i.client_hello.sni for i in infos if i.client_hello and i.client_hello.sni}


# Documented tshark 4.0.17 misses (README.md / MANIFEST notes): we find the SNI it did not.
TSHARK_MISSES = {
    "tcpdump__quic_vn.pcap": {"localhost"},
    "tcpdump__quic_handshake_truncated.pcap": {"localhost"},
}


@requires_corpus
@pytest.mark.parametrize("row", _manifest(), ids=lambda row: row["file"])
def test_corpus_quic_snis_match_manifest(row: dict[str, str]) -> None:
    expected = set(filter(None, row["quic_sni_values"].split(",")))
    if row["udp_flows"] == "0":
        assert expected == set()
        return
    expected |= TSHARK_MISSES.get(row["file"], set())
    assert _snis(quic_flows(CORPUS / row["file"])) == expected


@requires_corpus
def test_corpus_tshark_misses() -> None:
    # frame 3 of quic_vn is a v1 Initial after Version Negotiation from 0x1a2a3a4a
    (vn,) = quic_flows(CORPUS / "tcpdump__quic_vn.pcap")
    assert vn.version == V1 and vn.tag_verified and vn.client_hello is not None
    assert vn.client_hello.sni == "localhost" and not vn.client_hello.truncated
    # snaplen 256: both client Initials cut, decrypted without the tag; the SNI is in the prefix
    (cut,) = quic_flows(CORPUS / "tcpdump__quic_handshake_truncated.pcap")
    assert not cut.tag_verified and cut.client_hello is not None
    assert cut.client_hello.sni == "localhost" and cut.client_hello.truncated


@requires_corpus
def test_corpus_versions() -> None:
    def by_version(name: str) -> dict[int, set[str]]:
        out: dict[int, set[str]] = defaultdict(set)
        for info in quic_flows(CORPUS / name):
            out[info.version] |= _snis([info])
        return dict(out)

    assert by_version("ndpi__quic_0RTT.pcap") == {V1: {"ssl.gstatic.com"}, 0xFF00001C: {"abcd"}}
    assert by_version("ndpi__quic-29.pcap") == {DRAFT_29: {"localhost"}}
    assert by_version("ndpi__quic-mvfst-27.pcapng") == {0xFACEB002: {"graph.facebook.com"}}
    assert by_version("ndpi__quic_t51.pcap") == {T051: {"www.google.com"}}
    assert by_version("zeek__quicv2-echo-443.pcap") == {V2: {"localhost"}}
    assert set(by_version("ndpi__quic_interop_V.pcapng")) == {0x0A0A0A0A}
    assert by_version("ndpi__quic_q50.pcap") == {}
    # Version Negotiation forced with 0xbabababa, then a Retry: the post-Retry attempt counts;
    # its ClientHello has no server_name, so no SNI is right
    (forced,) = quic_flows(CORPUS / "ndpi__quic-forcing-vn-with-data.pcapng")
    assert forced.version == V1 and len(forced.dcid) == 20
    assert forced.client_hello is not None and forced.client_hello.sni is None
    # Retry: the second attempt's DCID
    (retry,) = quic_flows(CORPUS / "tcpdump__quic_retry.pcap")
    assert retry.dcid == bytes.fromhex("e1051eaa7adfb230")


def test_reassemble_prefix_is_what_the_crypto_stream_uses() -> None:
    # CRYPTO offsets feed tls.reassemble_prefix unchanged
    pieces = [(50, RFC_CLIENT_HELLO[50:]), (0, RFC_CLIENT_HELLO[:60])]
    assert reassemble_prefix(pieces) == RFC_CLIENT_HELLO
