"""The packet table: one row per decoded packet, struct-of-arrays.

Columns are grouped by dtype into five C-contiguous 2-D blocks (``i64``, ``u64``, ``u32``,
``u16``, ``u8``) so that the decode kernel takes five output arrays instead of thirty; every
named column is a contiguous 1-D view of one row of its block.

Conventions (the same in the Numba kernel, the C reference and every later stage):

* ``ts_ns`` is the capture timestamp in integer nanoseconds since the Unix epoch.
* Addresses are 128-bit, split into two big-endian 64-bit halves (``src_hi``/``src_lo``);
  IPv4 addresses are stored IPv4-mapped (``::ffff:a.b.c.d``), so one comparison serves both.
* ``payload_len`` is the transport payload length *on the wire* (from the IP/UDP length
  fields, not the captured length); ``payload_caplen`` is how many of those bytes were captured,
  starting at byte ``payload_off`` of the decompressed capture stream.
* A tunnelled packet (VXLAN, GRE, IP-in-IP) yields two rows with the same ``frame``: the outer
  one (``encap`` 0) and the inner one (``encap`` 1).
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

# Per-packet status (column ``status``).
STATUS_OK = 0
STATUS_TRUNCATED = 1  #: the capture cut a header we needed (snaplen or a damaged record)
STATUS_MALFORMED = 2  #: a header's fields contradict each other (bad lengths, bad version)
STATUS_UNSUPPORTED = 3  #: link type or network protocol we do not decode (ARP, LLC, ...)
STATUS_NAMES = ("ok", "truncated", "malformed", "unsupported")

# ``ip_frag``: IPv4/IPv6 fragmentation.
FRAG_NONE = 0
FRAG_FIRST = 1  #: offset 0, more fragments follow: the transport header is present
FRAG_LATER = 2  #: non-zero offset: no transport header in this packet

# ``tcp_opts`` bit mask: which TCP options the segment carried (RFC 9293, 7323, 2018).
OPT_MSS = 1
OPT_WSCALE = 2
OPT_SACK_PERM = 4
OPT_SACK = 8
OPT_TS = 16

# TCP flag bits (``tcp_flags``, RFC 9293 sec 3.1 plus ECN bits of RFC 3168).
TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_PSH = 0x08
TCP_ACK = 0x10
TCP_URG = 0x20
TCP_ECE = 0x40
TCP_CWR = 0x80

#: ``tcp_wscale`` value meaning "no window-scale option".
NO_WSCALE = 255

# Column layout: name -> (block, row). The order is part of the kernel ABI (decode.py, native/).
I64_COLUMNS = ("ts_ns", "payload_off", "frame")
U64_COLUMNS = ("src_hi", "src_lo", "dst_hi", "dst_lo", "payload_head")
U32_COLUMNS = (
    "caplen",
    "wirelen",
    "tcp_seq",
    "tcp_ack",
    "tcp_tsval",
    "tcp_tsecr",
    "payload_len",
    "payload_caplen",
    "sack_le",
    "sack_re",
)
U16_COLUMNS = ("iface", "linktype", "sport", "dport", "tcp_flags", "tcp_win", "tcp_mss")
U8_COLUMNS = (
    "ip_version",
    "proto",
    "status",
    "ip_frag",
    "tcp_wscale",
    "tcp_opts",
    "sack_n",
    "encap",
    "ttl",
)
BLOCKS: tuple[tuple[str, type, tuple[str, ...]], ...] = (
    ("i64", np.int64, I64_COLUMNS),
    ("u64", np.uint64, U64_COLUMNS),
    ("u32", np.uint32, U32_COLUMNS),
    ("u16", np.uint16, U16_COLUMNS),
    ("u8", np.uint8, U8_COLUMNS),
)
COLUMNS: dict[str, tuple[str, int]] = {
    name: (block, i) for block, _, names in BLOCKS for i, name in enumerate(names)
}

#: Documentation of each column (units), printed by ``throttle-check inspect --columns``.
COLUMN_DOCS: dict[str, str] = {
    "ts_ns": "capture timestamp, ns since the Unix epoch",
    "payload_off": "offset of the first captured payload byte in the decompressed capture stream (-1: none)",
    "frame": "record number in the file, from 1 (as tshark's frame.number)",
    "src_hi": "source address, high 64 bits (big-endian; IPv4 mapped into ::ffff:0:0/96)",
    "src_lo": "source address, low 64 bits",
    "dst_hi": "destination address, high 64 bits",
    "dst_lo": "destination address, low 64 bits",
    "payload_head": "first 8 captured payload bytes, big-endian, zero-padded on the right (0: none)",
    "caplen": "captured length of the record, bytes",
    "wirelen": "original length of the frame on the wire, bytes",
    "tcp_seq": "TCP sequence number",
    "tcp_ack": "TCP acknowledgment number",
    "tcp_tsval": "TCP timestamp option TSval (valid when tcp_opts & OPT_TS)",
    "tcp_tsecr": "TCP timestamp option TSecr (valid when tcp_opts & OPT_TS)",
    "payload_len": "transport payload length on the wire, bytes",
    "payload_caplen": "transport payload bytes present in the capture",
    "sack_le": "left edge of the first SACK block",
    "sack_re": "right edge of the first SACK block",
    "iface": "interface index (pcapng interface id; 0 for pcap)",
    "linktype": "LINKTYPE_ value of the record's interface",
    "sport": "transport source port",
    "dport": "transport destination port",
    "tcp_flags": "TCP flags (FIN=1 SYN=2 RST=4 PSH=8 ACK=16 URG=32 ECE=64 CWR=128, NS=256)",
    "tcp_win": "TCP window field, unscaled",
    "tcp_mss": "TCP MSS option value (valid when tcp_opts & OPT_MSS)",
    "ip_version": "4, 6, or 0 when the packet is not IP",
    "proto": "IP protocol / IPv6 upper-layer next header (6 TCP, 17 UDP, ...)",
    "status": "0 ok, 1 truncated, 2 malformed, 3 unsupported",
    "ip_frag": "0 not fragmented, 1 first fragment, 2 later fragment",
    "tcp_wscale": "TCP window-scale shift (255: option absent)",
    "tcp_opts": "TCP options present: MSS=1 WS=2 SACK_PERM=4 SACK=8 TS=16",
    "sack_n": "number of SACK blocks",
    "encap": "0 outer packet, 1 packet inside a tunnel (VXLAN, GRE, IP-in-IP)",
    "ttl": "IPv4 TTL or IPv6 hop limit",
}


def allocate_blocks(n: int) -> dict[str, np.ndarray]:
    """Return uninitialised output blocks for ``n`` rows, keyed by block name."""
    return {
        block: np.empty((len(names), n), dtype=dtype) for block, dtype, names in BLOCKS
    }


@dataclass(frozen=True)
class PacketTable:
    """Decoded packets as columns. Build with :meth:`from_blocks`; read columns as attributes.

    Attributes are documented in :data:`COLUMN_DOCS`. ``n`` is the number of rows (a tunnelled
    packet has two rows; ``records`` counts capture records).
    """

    blocks: dict[str, np.ndarray] = field(repr=False)
    n: int
    records: int

    _names: ClassVar[dict[str, tuple[str, int]]] = COLUMNS

    @classmethod
    def from_blocks(cls, blocks: dict[str, np.ndarray], n: int, records: int) -> PacketTable:
        """Wrap kernel output blocks, keeping the first ``n`` rows (views, no copy)."""
        trimmed = {k: v[:, :n] for k, v in blocks.items()}
        for v in trimmed.values():
            v.setflags(write=False)
        return cls(blocks=trimmed, n=n, records=records)

    @classmethod
    def empty(cls) -> PacketTable:
        return cls.from_blocks(allocate_blocks(0), 0, 0)

    @classmethod
    def concat(cls, tables: list[PacketTable]) -> PacketTable:
        """Concatenate tables row-wise (copies)."""
        if not tables:
            return cls.empty()
        blocks = {
            b: np.ascontiguousarray(np.concatenate([t.blocks[b] for t in tables], axis=1))
            for b, _, _ in BLOCKS
        }
        n = sum(t.n for t in tables)
        return cls.from_blocks(blocks, n, sum(t.records for t in tables))

    def __getattr__(self, name: str) -> npt.NDArray[Any]:
        try:
            block, row = COLUMNS[name]
        except KeyError:
            raise AttributeError(name) from None
        col: npt.NDArray[Any] = self.blocks[block][row]
        return col

    def __len__(self) -> int:
        return self.n

    def column(self, name: str) -> npt.NDArray[Any]:
        """Column ``name`` as a read-only 1-D array (see :data:`COLUMN_DOCS`)."""
        return self.__getattr__(name)

    def take(self, index: np.ndarray) -> PacketTable:
        """Rows selected by a boolean mask or an index array (copies)."""
        blocks = {b: np.ascontiguousarray(v[:, index]) for b, v in self.blocks.items()}
        n = blocks["i64"].shape[1]
        records = int(np.unique(blocks["i64"][COLUMNS["frame"][1]]).size) if n else 0
        return PacketTable.from_blocks(blocks, n, records)

    def row(self, i: int) -> dict[str, int]:
        """One row as a dict of Python ints (for tests and debugging)."""
        return {name: int(self.blocks[b][r, i]) for name, (b, r) in COLUMNS.items()}


def format_address(hi: int, lo: int, version: int) -> str:
    """Text form of an address stored as two 64-bit halves (IPv4 if ``version`` is 4)."""
    return _address_text(int(hi), int(lo), int(version) == 4)


def format_addresses(hi: npt.ArrayLike, lo: npt.ArrayLike, version: npt.ArrayLike) -> list[str]:
    """:func:`format_address` for arrays of halves and IP versions (one string per element).

    IPv4 goes through ``socket.inet_ntoa`` (~0.2 us an address; the same text as
    :mod:`ipaddress`), IPv6 through the cached :mod:`ipaddress` form (RFC 5952).
    """
    hi_a = np.asarray(hi, dtype=np.uint64).reshape(-1)
    lo_a = np.asarray(lo, dtype=np.uint64).reshape(-1)
    v4 = np.asarray(version).reshape(-1) == 4
    out = [""] * lo_a.size
    idx4 = np.flatnonzero(v4)
    if idx4.size:
        raw = (lo_a[idx4] & np.uint64(0xFFFFFFFF)).astype(">u4").tobytes()
        ntoa = socket.inet_ntoa
        for k, i in enumerate(idx4.tolist()):
            out[i] = ntoa(raw[4 * k: 4 * k + 4])
    for i in np.flatnonzero(~v4).tolist():
        out[i] = _address_text(int(hi_a[i]), int(lo_a[i]), False)
    return out


@functools.lru_cache(maxsize=1 << 16)
def _address_text(hi: int, lo: int, v4: bool) -> str:
    # cached: a capture's flows share few addresses, and ipaddress takes ~7 us per address
    value = (hi << 64) | lo
    if v4:
        return str(ipaddress.IPv4Address(value & 0xFFFFFFFF))
    return str(ipaddress.IPv6Address(value))


def address_halves(text: str) -> tuple[int, int]:
    """Inverse of :func:`format_address`: IPv4 text is mapped into ``::ffff:0:0/96``."""
    addr = ipaddress.ip_address(text)
    value = int(addr) | (0xFFFF << 32) if addr.version == 4 else int(addr)
    return value >> 64, value & 0xFFFFFFFFFFFFFFFF
