"""A capinfos-like summary of a capture, computed from packet-table chunks in one pass."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .packets import STATUS_NAMES, PacketTable, format_address
from .sources.capture import CaptureReader, linktype_name

_MAX_I64 = np.iinfo(np.int64).max


@dataclass
class CaptureSummary:
    """What ``throttle-check inspect`` reports for one file. Times in ns since the epoch."""

    file: str
    format: str
    compressed: bool
    byte_order: str
    linktypes: list[str]
    interfaces: int
    packets: int = 0
    bytes_captured: int = 0
    bytes_wire: int = 0
    first_ts_ns: int | None = None
    last_ts_ns: int | None = None
    ipv4: int = 0
    ipv6: int = 0
    tcp: int = 0
    udp: int = 0
    tunnelled: int = 0
    tcp_conversations: int = 0
    udp_conversations: int = 0
    status: dict[str, int] = field(default_factory=dict)
    damaged: int = 0
    damage: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: bool = False

    @property
    def duration_s(self) -> float:
        if self.first_ts_ns is None or self.last_ts_ns is None:
            return 0.0
        return (self.last_ts_ns - self.first_ts_ns) / 1e9

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "format": self.format,
            "compressed": self.compressed,
            "byte_order": self.byte_order,
            "linktypes": self.linktypes,
            "interfaces": self.interfaces,
            "packets": self.packets,
            "bytes_captured": self.bytes_captured,
            "bytes_wire": self.bytes_wire,
            "first_ts": None if self.first_ts_ns is None else self.first_ts_ns / 1e9,
            "last_ts": None if self.last_ts_ns is None else self.last_ts_ns / 1e9,
            "duration_s": self.duration_s,
            "ipv4": self.ipv4,
            "ipv6": self.ipv6,
            "tcp": self.tcp,
            "udp": self.udp,
            "tunnelled": self.tunnelled,
            "tcp_conversations": self.tcp_conversations,
            "udp_conversations": self.udp_conversations,
            "packet_status": self.status,
            "damaged": self.damaged,
            "damage": self.damage,
            "stopped_early": self.stopped_early,
        }


def _conversation_keys(t: PacketTable, proto: int) -> np.ndarray:
    """Unordered (address, port) pairs of the TCP/UDP rows as a (k, 6) uint64 array."""
    m = (
        (t.proto == proto)
        & (t.ip_version > 0)
        & (t.ip_frag != 2)
        & ((t.status == 0) | (t.sport > 0) | (t.dport > 0))
    )
    a = (t.src_hi[m], t.src_lo[m], t.sport[m].astype(np.uint64))
    b = (t.dst_hi[m], t.dst_lo[m], t.dport[m].astype(np.uint64))
    # order the two endpoints lexicographically so both directions share a key
    swap = (a[0] > b[0]) | ((a[0] == b[0]) & ((a[1] > b[1]) | ((a[1] == b[1]) & (a[2] > b[2]))))
    cols = [np.where(swap, y, x) for x, y in zip(a, b, strict=True)]
    cols += [np.where(swap, x, y) for x, y in zip(a, b, strict=True)]
    return _unique_rows(cols)


def _unique_rows(cols: list[np.ndarray]) -> np.ndarray:
    """Distinct rows of the uint64 columns ``cols`` as a (k, len(cols)) array, in no set order.

    ``np.unique(axis=0)`` sorts rows as opaque byte strings (~40x slower than sorting integers), so
    each row is hashed to one uint64 first; the first row of each hash is checked against every
    row sharing that hash, and the exact (slow) path is taken only if two rows collide.
    """
    n = cols[0].shape[0]
    if n < 2:
        return np.stack(cols, axis=1)
    h = np.zeros(n, dtype=np.uint64)
    for col in cols:  # multiply-xorshift mixing (splitmix64 constants)
        h ^= col
        h *= np.uint64(0x9E3779B97F4A7C15)
        h ^= h >> np.uint64(31)
    _, first, inverse = np.unique(h, return_index=True, return_inverse=True)
    if all(np.array_equal(col[first][inverse], col) for col in cols):
        return np.stack([col[first] for col in cols], axis=1)
    return np.unique(np.stack(cols, axis=1), axis=0)  # a hash collision: exact but slow


def summarize(path: str | os.PathLike[str]) -> CaptureSummary:
    """Read ``path`` once and summarise it. Raises CaptureFormatError for a non-capture."""
    status = np.zeros(len(STATUS_NAMES), dtype=np.int64)
    convs: dict[int, list[np.ndarray]] = {6: [], 17: []}
    with CaptureReader(path, reuse_buffers=True) as reader:
        info = reader.info
        s = CaptureSummary(
            file=os.fspath(path),
            format=info.format,
            compressed=info.compressed,
            byte_order=info.byte_order,
            linktypes=[],
            interfaces=0,
        )
        first, last = _MAX_I64, -1
        for chunk in reader:
            t = chunk.table
            if t.n == 0:
                continue
            outer = t.encap == 0
            s.bytes_captured += int(t.caplen[outer].sum(dtype=np.int64))
            s.bytes_wire += int(t.wirelen[outer].sum(dtype=np.int64))
            ts = t.ts_ns[outer]
            if ts.size:
                first = min(first, int(ts.min()))
                last = max(last, int(ts.max()))
            ipv = t.ip_version[outer]
            proto = t.proto[outer]
            s.ipv4 += int(np.count_nonzero(ipv == 4))
            s.ipv6 += int(np.count_nonzero(ipv == 6))
            s.tcp += int(np.count_nonzero((proto == 6) & (ipv > 0)))
            s.udp += int(np.count_nonzero((proto == 17) & (ipv > 0)))
            s.tunnelled += int(np.count_nonzero(~outer))
            status += np.bincount(t.status[outer], minlength=len(STATUS_NAMES))[: len(STATUS_NAMES)]
            for p in (6, 17):
                k = _conversation_keys(t, p)
                if k.shape[0]:
                    convs[p].append(k)
        s.packets = reader.stats.records
        s.linktypes = [linktype_name(lt) for lt in info.linktypes]
        s.interfaces = len(info.interfaces)
        s.damaged = reader.stats.damaged
        s.damage = [
            {"offset": d.offset, "kind": d.kind, "message": d.message} for d in reader.stats.damage
        ]
        s.stopped_early = reader.stats.stopped_early
    if last >= 0:
        s.first_ts_ns, s.last_ts_ns = first, last
    for p, parts in convs.items():
        n = _unique_rows(list(np.concatenate(parts).T)).shape[0] if parts else 0
        if p == 6:
            s.tcp_conversations = n
        else:
            s.udp_conversations = n
    s.status = {name: int(c) for name, c in zip(STATUS_NAMES, status, strict=True) if c}
    return s


__all__ = ["CaptureSummary", "format_address", "summarize"]
