"""Shared fixtures: corpus locations and small capture writers."""

from __future__ import annotations

import csv
import os
import shutil
import struct
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("KEEPITON_SHARED", REPO.parent / "shared"))
REAL = SHARED / "corpus" / "real"
TESTBED = SHARED / "corpus" / "testbed"


def manifest() -> dict[str, dict[str, str]]:
    with open(REAL / "MANIFEST.tsv", newline="") as fh:
        return {r["file"]: r for r in csv.DictReader(fh, delimiter="\t")}


def have_corpus() -> bool:
    return (REAL / "MANIFEST.tsv").exists()


requires_corpus = pytest.mark.skipif(not have_corpus(), reason=f"corpus not found at {REAL}")
requires_tshark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")


def pcap_bytes(records: list[tuple[int, bytes]], *, linktype: int = 1, nsec: bool = False,
               big_endian: bool = False, snaplen: int = 262144,
               wirelens: list[int] | None = None) -> bytes:
    """A classic pcap file holding ``records`` = [(ts_ns, frame bytes)]."""
    e = ">" if big_endian else "<"
    magic = 0xA1B23C4D if nsec else 0xA1B2C3D4
    out = [struct.pack(e + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)]
    for k, (ts, data) in enumerate(records):
        sec, frac = divmod(ts, 1_000_000_000)
        if not nsec:
            frac //= 1000
        wl = wirelens[k] if wirelens else len(data)
        out.append(struct.pack(e + "IIII", sec, frac, len(data), wl) + data)
    return b"".join(out)


def _pad4(b: bytes) -> bytes:
    return b + b"\0" * (-len(b) % 4)


def pcapng_shb(*, big_endian: bool = False) -> bytes:
    e = ">" if big_endian else "<"
    body = struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1)
    n = 12 + len(body)
    return struct.pack(e + "II", 0x0A0D0D0A, n) + body + struct.pack(e + "I", n)


def pcapng_idb(linktype: int, *, tsresol: int | None = None, tsoffset: int | None = None,
               snaplen: int = 0, big_endian: bool = False) -> bytes:
    e = ">" if big_endian else "<"
    opts = b""
    if tsresol is not None:
        opts += struct.pack(e + "HH", 9, 1) + _pad4(bytes([tsresol]))
    if tsoffset is not None:
        opts += struct.pack(e + "HHq", 14, 8, tsoffset)
    if opts:
        opts += struct.pack(e + "HH", 0, 0)
    body = struct.pack(e + "HHI", linktype, 0, snaplen) + opts
    n = 12 + len(body)
    return struct.pack(e + "II", 1, n) + body + struct.pack(e + "I", n)


def pcapng_epb(iface: int, ts_units: int, data: bytes, *, wirelen: int | None = None,
               big_endian: bool = False) -> bytes:
    e = ">" if big_endian else "<"
    body = struct.pack(e + "IIIII", iface, ts_units >> 32, ts_units & 0xFFFFFFFF, len(data),
                       len(data) if wirelen is None else wirelen) + _pad4(data)
    n = 12 + len(body)
    return struct.pack(e + "II", 6, n) + body + struct.pack(e + "I", n)


def pcapng_spb(data: bytes, *, wirelen: int | None = None, big_endian: bool = False) -> bytes:
    e = ">" if big_endian else "<"
    body = struct.pack(e + "I", len(data) if wirelen is None else wirelen) + _pad4(data)
    n = 12 + len(body)
    return struct.pack(e + "II", 3, n) + body + struct.pack(e + "I", n)


def pcapng_block(btype: int, body: bytes, *, big_endian: bool = False) -> bytes:
    e = ">" if big_endian else "<"
    body = _pad4(body)
    n = 12 + len(body)
    return struct.pack(e + "II", btype, n) + body + struct.pack(e + "I", n)


@pytest.fixture
def write_file(tmp_path: Path):  # type: ignore[no-untyped-def]
    def _write(data: bytes, name: str = "cap.pcap") -> Path:
        p = tmp_path / name
        p.write_bytes(data)
        return p

    return _write
