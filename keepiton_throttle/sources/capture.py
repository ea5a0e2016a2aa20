"""Reading capture files as a stream of packet-table chunks, in bounded memory.

Formats: classic pcap (microsecond and nanosecond magic, either byte order) and pcapng
(sections in either byte order, several interfaces with their own link type, ``if_tsresol``
and ``if_tsoffset``; enhanced, simple and obsolete packet blocks; other blocks skipped), each
optionally gzip-compressed. The format is found from the magic number, never from the name.

The record loop itself runs in the Numba kernel :func:`keepiton_throttle.decode.decode_records`;
this module only parses file and section headers (rare), moves bytes and accounts for damage.

Damage policy: a readable file is processed up to the damage; what was lost is counted in
:class:`ReadStats` and reported. Only a file we cannot read at all raises
:class:`~keepiton_throttle.errors.CaptureFormatError` (or ``OSError`` for I/O failures).
"""

from __future__ import annotations

import gzip
import io
import os
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np

from ..config import CHUNK_BYTES, MAX_RECORD_BYTES, STANDARD_MAX_SNAPLEN
from ..errors import CaptureFormatError
from ..packets import PacketTable, allocate_blocks

PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_BOM = 0x1A2B3C4D
GZIP_MAGIC = b"\x1f\x8b"

LINKTYPE_NAMES: dict[int, str] = {
    0: "NULL",
    1: "ETHERNET",
    9: "PPP",
    12: "RAW",
    14: "RAW",
    50: "PPP_HDLC",
    101: "RAW",
    108: "LOOP",
    113: "LINUX_SLL",
    228: "IPV4",
    229: "IPV6",
    276: "LINUX_SLL2",
}
#: Link types the decode kernel understands.
SUPPORTED_LINKTYPES = frozenset(LINKTYPE_NAMES)


def linktype_name(linktype: int) -> str:
    return f"{LINKTYPE_NAMES.get(linktype, 'UNKNOWN')}({linktype})"


@dataclass(frozen=True)
class Interface:
    """One capture interface (pcap has exactly one)."""

    linktype: int
    snaplen: int
    #: timestamp resolution: 10^-ts_exp s (ts_binary False) or 2^-ts_exp s (True)
    ts_exp: int = 6
    ts_binary: bool = False
    #: seconds added to every timestamp (pcapng if_tsoffset)
    ts_offset_s: int = 0
    name: str = ""


@dataclass
class DamageEvent:
    """Something in the file we could not read: where (byte offset) and what."""

    offset: int
    kind: str  # "truncated_record", "corrupt_length", "gzip", "bad_block", "caplen_over_snaplen"
    message: str


@dataclass
class ReadStats:
    """What reading a file produced and what it lost."""

    records: int = 0
    rows: int = 0
    bytes_read: int = 0
    damage: list[DamageEvent] = field(default_factory=list)
    #: True when reading stopped before the end of the file because of damage
    stopped_early: bool = False

    @property
    def damaged(self) -> int:
        return len(self.damage)


@dataclass
class CaptureInfo:
    """File-level facts: format, byte order, compression, interfaces."""

    path: str
    format: str = ""  # "pcap" or "pcapng"
    byte_order: str = ""  # "little" or "big" (of the first section for pcapng)
    nanosecond: bool = False
    compressed: bool = False
    version: str = ""
    interfaces: list[Interface] = field(default_factory=list)
    sections: int = 0

    @property
    def linktypes(self) -> list[int]:
        seen: list[int] = []
        for i in self.interfaces:
            if i.linktype not in seen:
                seen.append(i.linktype)
        return seen


@dataclass(frozen=True)
class Chunk:
    """A packet-table chunk and the raw bytes its payload offsets point into.

    ``table.payload_off - data_offset`` indexes ``data`` (valid for rows of this chunk).
    """

    table: PacketTable
    data: np.ndarray
    data_offset: int


def _open_stream(path: str) -> tuple[BinaryIO, bool]:
    """Open ``path``; transparently decompress gzip. Returns (stream, compressed)."""
    raw = open(path, "rb")  # noqa: SIM115 - closed by the reader
    head = raw.read(2)
    raw.seek(0)
    if head == GZIP_MAGIC:
        return gzip.GzipFile(fileobj=raw, mode="rb"), True  # type: ignore[return-value]
    return raw, False


class CaptureReader:
    """Iterate over a capture file as :class:`Chunk` objects.

    >>> reader = CaptureReader("trace.pcapng")          # doctest: +SKIP
    >>> for chunk in reader: ...                          # doctest: +SKIP
    >>> reader.stats.records, reader.stats.damage         # doctest: +SKIP

    Raises :class:`CaptureFormatError` when the file is not a capture we can read (on
    construction, after reading the header); damage further in is counted, not raised.

    With ``reuse_buffers=True`` the reader decodes every chunk into the same read buffer and
    output blocks, so a chunk (its table and its data) is valid only until the next one is
    requested: for one-pass consumers such as :func:`keepiton_throttle.summary.summarize`, which
    then skip the page faults of fresh memory for every chunk.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, chunk_bytes: int = CHUNK_BYTES,
        rows_per_chunk: int | None = None, reuse_buffers: bool = False,
    ) -> None:
        self.path = os.fspath(path)
        if chunk_bytes < 4096:
            raise ValueError(f"chunk_bytes must be at least 4096, got {chunk_bytes}")
        self.chunk_bytes = chunk_bytes
        self.rows_per_chunk = rows_per_chunk or max(chunk_bytes // 64, 1024)
        self.reuse_buffers = reuse_buffers
        self.info = CaptureInfo(path=self.path)
        self.stats = ReadStats()
        try:
            self._stream, self.info.compressed = _open_stream(self.path)
        except IsADirectoryError:
            raise CaptureFormatError(f"{self.path}: is a directory, not a capture file") from None
        self._pending = b""
        self._stream_off = 0  # offset in the decompressed stream of the next byte to read
        self._eof = False
        self._mm: Any = None
        self._map: np.ndarray | None = None
        self._released = 0
        self._no_populate = False
        self._spare: list[dict[str, np.ndarray]] = []
        self._ahead: Any = None  # the prefetch generator of chunks_of(), if any
        self._release_lag = 0  # windows kept mapped behind the current one (2 when decoding ahead)
        self._swapped = False
        self._fmt = 0
        self._snaplen = 0
        self._over_snaplen = 0
        self._over_first = 0
        try:
            self._read_file_header()
        except BaseException:
            self.close()
            raise

    # -- raw reading -------------------------------------------------------------------------
    def _read(self, n: int) -> bytes:
        """Read up to ``n`` bytes, noting gzip damage instead of raising."""
        if self._eof:
            return b""
        try:
            data = self._stream.read(n)
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            self._eof = True
            self._damage("gzip", f"compressed stream damaged: {exc}")
            return b""
        if len(data) < n:
            self._eof = True
        self.stats.bytes_read += len(data)
        return data

    def _readinto(self, view: memoryview) -> int:
        if self._eof:
            return 0
        total = 0
        while total < len(view):
            try:
                if self.info.compressed:
                    # one decompression step per call: GzipFile.readinto loses everything it
                    # decompressed in a call that then meets the damage
                    data = self._stream.read1(len(view) - total)  # type: ignore[attr-defined]
                    n = len(data)
                    view[total : total + n] = data
                else:
                    n = self._stream.readinto(view[total:])  # type: ignore[attr-defined]
            except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
                self._eof = True
                self._damage("gzip", f"compressed stream damaged: {exc}",
                             self.stats.bytes_read + total)
                break
            if not n:
                self._eof = True
                break
            total += n
        self.stats.bytes_read += total
        return total

    def _damage(self, kind: str, message: str, offset: int | None = None) -> None:
        self.stats.damage.append(
            DamageEvent(self._stream_off if offset is None else offset, kind, message)
        )

    @property
    def position(self) -> int:
        """Bytes of the file on disk read so far (compressed bytes for a gzip file), for progress:
        ``stats.bytes_read`` counts decompressed bytes, which can exceed the file's size."""
        if self.info.compressed:
            try:
                return int(self._stream.fileobj.tell())  # type: ignore[attr-defined]
            except (AttributeError, OSError, ValueError):  # closed
                return 0
        return self.stats.bytes_read

    def close(self) -> None:
        ahead = self._ahead
        if ahead is not None:  # stop a prefetch thread before its reader goes
            self._ahead = None
            ahead.close()
        self._map = None
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:
                pass  # a chunk still holds a view of the mapping: it goes when that does
            self._mm = None
        self._stream.close()

    def _output_blocks(self) -> dict[str, np.ndarray]:
        """Output blocks for the next chunk: a set the consumer no longer holds, if any.

        A chunk's table is made of views of its blocks; once the consumer has dropped every
        view (the usual streaming case) only our spare list refers to a block, and writing
        it again cannot change anything the consumer sees. Fresh blocks cost a page fault
        per 4 KiB written (~20 % of the decode); chunks that are kept get fresh ones.
        """
        import sys

        for blocks in self._spare:
            # references: the dict, the loop variable, getrefcount's argument
            if all(sys.getrefcount(b) <= 3 for b in blocks.values()):
                return blocks
        blocks = allocate_blocks(self.rows_per_chunk)
        self._spare = [blocks, *self._spare[:2]]  # three sets: one more when decoding ahead
        return blocks

    def _populate(self, start: int, end: int) -> None:
        """Map the window's pages in one system call (MADV_POPULATE_READ, Linux 5.14+) instead
        of one page fault per 4 KiB as the kernel reads them: ~2,000 faults per 8 MiB window.
        Silently skipped where the kernel does not know the advice."""
        import mmap

        if self._mm is None or not hasattr(self._mm, "madvise") or self._no_populate:
            return
        page = mmap.PAGESIZE
        lo = (start // page) * page
        try:
            self._mm.madvise(getattr(mmap, "MADV_POPULATE_READ", 22), lo, end - lo)
        except (OSError, ValueError):
            self._no_populate = True

    def _release(self, upto: int) -> None:
        """Drop the mapped pages before ``upto`` from this process (MADV_DONTNEED): mapped file
        pages count in the resident set, so a 50 GB capture would otherwise look like 50 GB
        of memory. The mapping is private and never written, so a chunk still looking at those
        bytes reads them again from the file, unchanged."""
        import mmap

        page = mmap.PAGESIZE
        upto = (upto // page) * page
        if self._mm is None or upto <= self._released or not hasattr(self._mm, "madvise"):
            return
        try:
            self._mm.madvise(mmap.MADV_DONTNEED, self._released, upto - self._released)
        except (OSError, ValueError):
            return
        self._released = upto

    def _map_file(self) -> None:
        """Map an uncompressed capture so that chunks are views of the file, not copies.

        Private copy-on-write mapping: writable to NumPy (the kernel then has one type
        specialisation for every source), never written back. Falls back to reading when the
        file cannot be mapped (a pipe, an empty file, an exotic filesystem).
        """
        import mmap

        if self.info.compressed or os.environ.get("KEEPITON_NO_MMAP") == "1":
            return
        try:
            fileno = self._stream.fileno()
            if os.fstat(fileno).st_size == 0:
                return
            self._mm = mmap.mmap(fileno, 0, access=mmap.ACCESS_COPY)
        except (OSError, ValueError, io.UnsupportedOperation):
            self._mm = None
            return
        self._map = np.frombuffer(self._mm, dtype=np.uint8)

    def __enter__(self) -> CaptureReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- headers -----------------------------------------------------------------------------
    def _read_file_header(self) -> None:
        head = self._read(24)
        name = self.path
        if len(head) == 0:
            raise CaptureFormatError(f"{name}: empty file, not a capture")
        if len(head) < 4:
            raise CaptureFormatError(f"{name}: file too short ({len(head)} bytes) to be a capture")
        magic_le = struct.unpack("<I", head[:4])[0]
        magic_be = struct.unpack(">I", head[:4])[0]
        if magic_le == PCAPNG_SHB:
            if len(head) < 16 or head[8:12] not in (b"\x4d\x3c\x2b\x1a", b"\x1a\x2b\x3c\x4d"):
                raise CaptureFormatError(f"{name}: pcapng section header damaged (bad byte-order magic)")
            self.info.format = "pcapng"
            self._fmt = 2
            self._pending = head
            self._stream_off = 0
            return
        if magic_le in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
            self._swapped = False
            magic = magic_le
        elif magic_be in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
            self._swapped = True
            magic = magic_be
        else:
            raise CaptureFormatError(
                f"{name}: not a pcap or pcapng file (magic 0x{magic_be:08x})"
            )
        if len(head) < 24:
            raise CaptureFormatError(f"{name}: pcap file header cut short ({len(head)} of 24 bytes)")
        e = ">" if self._swapped else "<"
        major, minor, _zone, _sigfigs, snaplen, network = struct.unpack(e + "HHiIII", head[4:24])
        self.info.format = "pcap"
        self.info.byte_order = "big" if self._swapped else "little"
        self.info.nanosecond = magic == PCAP_MAGIC_NS
        self.info.version = f"{major}.{minor}"
        self.info.sections = 1
        self._fmt = 1 if self.info.nanosecond else 0
        # Only the lower 16 bits are the link type; the upper 16 carry FCS information or are
        # reserved and "MUST be ignored by pcap file readers" (pcap draft sec 4).
        linktype = network & 0xFFFF
        self._snaplen = snaplen
        self.info.interfaces = [
            Interface(linktype=linktype, snaplen=snaplen, ts_exp=9 if self.info.nanosecond else 6)
        ]
        self._stream_off = 24

    def _parse_pcapng_block(self, block: bytes, offset: int) -> None:
        """Section Header or Interface Description Block, ``block`` complete."""
        btype = struct.unpack("<I", block[:4])[0]
        if btype == PCAPNG_SHB:
            bom = block[8:12]
            if bom == b"\x4d\x3c\x2b\x1a":
                self._swapped = False
            elif bom == b"\x1a\x2b\x3c\x4d":
                self._swapped = True
            else:
                raise _Corrupt(f"section header with bad byte-order magic {bom.hex()}")
            e = ">" if self._swapped else "<"
            major, minor = struct.unpack(e + "HH", block[12:16])
            if major != 1:
                raise _Corrupt(f"unsupported pcapng major version {major}")
            if self.info.sections == 0:
                self.info.byte_order = "big" if self._swapped else "little"
                self.info.version = f"{major}.{minor}"
            self.info.sections += 1
            self._section_ifaces: list[Interface] = []
            return
        e = ">" if self._swapped else "<"
        if len(block) < 20:  # type, length, LinkType, Reserved, SnapLen, length (sec 4.2)
            raise _Corrupt(f"interface description block too short ({len(block)} bytes)")
        linktype, _res, snaplen = struct.unpack(e + "HHI", block[8:16])
        ts_exp, ts_binary, ts_off, name = 6, False, 0, ""
        # options: code(2) length(2) value padded to 4 (pcapng sec 3.5)
        i, end = 16, len(block) - 4
        while i + 4 <= end:
            code, olen = struct.unpack(e + "HH", block[i : i + 4])
            val = block[i + 4 : i + 4 + olen]
            if code == 0:
                break
            if code == 9 and olen >= 1:  # if_tsresol
                ts_binary = bool(val[0] & 0x80)
                ts_exp = val[0] & 0x7F
            elif code == 14 and olen >= 8:  # if_tsoffset
                if len(val) < 8:
                    raise _Corrupt("interface option if_tsoffset runs past the block")
                ts_off = struct.unpack(e + "q", val[:8])[0]
            elif code == 2:  # if_name
                name = val.decode("utf-8", "replace")
            i += 4 + ((olen + 3) & ~3)
        if not ts_binary and ts_exp > 18:
            raise _Corrupt(f"interface with impossible timestamp resolution 10^-{ts_exp}")
        if ts_binary and ts_exp > 62:
            raise _Corrupt(f"interface with impossible timestamp resolution 2^-{ts_exp}")
        iface = Interface(linktype, snaplen, ts_exp, ts_binary, ts_off, name)
        if not hasattr(self, "_section_ifaces"):
            self._section_ifaces = []
        self._section_ifaces.append(iface)
        self.info.interfaces.append(iface)

    def _iface_arrays(self) -> tuple[np.ndarray, ...]:
        if self._fmt == 2:
            ifaces = getattr(self, "_section_ifaces", [])
        else:
            ifaces = self.info.interfaces
        link = np.array([i.linktype for i in ifaces], dtype=np.int64)
        kind = np.array([1 if i.ts_binary else 0 for i in ifaces], dtype=np.int64)
        exp = np.array([i.ts_exp for i in ifaces], dtype=np.int64)
        off = np.array([i.ts_offset_s for i in ifaces], dtype=np.int64)
        snap = np.array([i.snaplen for i in ifaces], dtype=np.int64)
        return link, kind, exp, off, snap

    # -- the chunk loop ----------------------------------------------------------------------
    def __iter__(self) -> Iterator[Chunk]:
        from ..decode import (
            STOP_BLOCK,
            STOP_CORRUPT,
            STOP_NEED_MORE,
            STOP_OUTPUT_FULL,
            STOP_TOO_LARGE,
        )
        from ..decode import decode_records as _kernel

        decode_records: Any = _kernel  # a Numba dispatcher

        self._map_file()
        carry = np.frombuffer(self._pending, dtype=np.uint8)
        carry_off = self._stream_off
        self._pending = b""
        need = 0
        ifs = self._iface_arrays()
        reuse = self.reuse_buffers
        buf = np.empty(0, dtype=np.uint8)
        rows_blocks: dict[str, np.ndarray] = {}
        windows: list[int] = []  # start offsets of the last mapped windows
        while True:
            size = max(self.chunk_bytes, need + 4096, carry.size + 4096)
            if self._map is not None:
                # the chunk is a window on the mapped file: nothing is copied. Pages before the
                # window are dropped, but when decoding ahead (chunks_of) the consumer is still
                # reading the last windows' bytes: dropping them would map them in again, for good
                windows.append(carry_off)
                del windows[: -1 - self._release_lag]
                self._release(windows[0])
                end = min(self._map.size, carry_off + size)
                self._populate(carry_off, end)
                buf = self._map[carry_off:end]
                valid = end - carry_off
                self.stats.bytes_read = end
                self._eof = end >= self._map.size
            else:
                if reuse and buf.size >= size:
                    buf[: carry.size] = carry  # the unread tail moves to the front (overlap-safe)
                else:
                    fresh = np.empty(size, dtype=np.uint8)
                    fresh[: carry.size] = carry
                    buf = fresh
                got = self._readinto(memoryview(buf.data)[carry.size :])
                valid = carry.size + got
            base = carry_off
            pos = 0
            if not (reuse and rows_blocks):
                rows_blocks = self._output_blocks()
            rows = 0
            recs = 0
            stop_file = False
            while True:
                p, r, n, stop, info = decode_records(
                    buf[pos:], valid - pos, base + pos, self._fmt, self._swapped,
                    self._snaplen, *ifs, self.stats.records + recs,
                    *_block_list(rows_blocks), rows,
                )
                pos += p
                rows = r
                recs += n
                if stop == STOP_OUTPUT_FULL:
                    yield self._emit(rows_blocks, rows, recs, buf, base)
                    if not reuse:
                        rows_blocks = self._output_blocks()
                    rows = 0
                    recs = 0
                    continue
                if stop == STOP_BLOCK:
                    if valid - pos < 12:
                        need = 12
                        break
                    e = ">" if self._swapped else "<"
                    btype = struct.unpack(e + "I", bytes(buf[pos : pos + 4]))[0]
                    if btype == PCAPNG_SHB:
                        # a new section may switch byte order: read the BOM first
                        if valid - pos < 12:
                            need = 12
                            break
                        bom = bytes(buf[pos + 8 : pos + 12])
                        e = "<" if bom == b"\x4d\x3c\x2b\x1a" else ">"
                    blen = struct.unpack(e + "I", bytes(buf[pos + 4 : pos + 8]))[0]
                    if blen < 12 or blen % 4 or blen > MAX_RECORD_BYTES:
                        self._damage("corrupt_length", f"block with impossible length {blen}", base + pos)
                        stop_file = True
                        break
                    if valid - pos < blen:
                        need = blen
                        break
                    block = bytes(buf[pos : pos + blen])
                    if struct.unpack(e + "I", block[-4:])[0] != blen:
                        self._damage("corrupt_length", "block trailer length does not match", base + pos)
                        stop_file = True
                        break
                    try:
                        self._parse_pcapng_block(block, base + pos)
                    except _Corrupt as exc:
                        self._damage("bad_block", str(exc), base + pos)
                        stop_file = True
                        break
                    ifs = self._iface_arrays()
                    pos += blen
                    continue
                if stop == STOP_CORRUPT:
                    what = "block" if self._fmt == 2 else "record"
                    self._damage("corrupt_length", f"{what} with impossible length {info}", base + pos)
                    stop_file = True
                    break
                if stop == STOP_TOO_LARGE:
                    if info > MAX_RECORD_BYTES:
                        self._damage("corrupt_length", f"record of {info} bytes", base + pos)
                        stop_file = True
                        break
                    need = info
                    break
                assert stop == STOP_NEED_MORE
                need = info
                break
            self.stats.records += recs
            if rows or recs:
                yield self._emit(rows_blocks, rows, recs, buf, base, count=False)
            if stop_file:
                self.stats.stopped_early = True
                self._report_over_snaplen()
                return
            carry = buf[pos:valid]
            carry_off = base + pos
            if self._eof:
                if carry.size:
                    what = "block" if self._fmt == 2 else "record"
                    self._damage(
                        "truncated_record",
                        f"file ends inside a {what} ({carry.size} of {max(need, carry.size + 1)} bytes)",
                        carry_off,
                    )
                    self.stats.stopped_early = True
                self._report_over_snaplen()
                return

    def _emit(self, blocks: dict[str, np.ndarray], rows: int, recs: int, buf: np.ndarray,
              base: int, *, count: bool = True) -> Chunk:
        if count:
            self.stats.records += recs
        self.stats.rows += rows
        table = PacketTable.from_blocks(blocks, rows, recs)
        if self._fmt != 2 and 0 < self._snaplen < STANDARD_MAX_SNAPLEN and rows:
            over = (table.caplen > self._snaplen) & (table.encap == 0)  # records, not rows
            if over.any():
                if not self._over_snaplen:
                    self._over_first = int(table.frame[np.argmax(over)])
                self._over_snaplen += int(np.count_nonzero(over))
        return Chunk(table, buf, base)

    def _report_over_snaplen(self) -> None:
        """Once, when reading ends: records longer than the snaplen were read anyway."""
        if self._over_snaplen:
            self._damage(
                "caplen_over_snaplen",
                f"{self._over_snaplen} record(s) longer than the file's snaplen "
                f"{self._snaplen} (first: frame {self._over_first}); read anyway",
            )
            self._over_snaplen = 0

    def read_all(self) -> PacketTable:
        """The whole file as one table (for small files and tests; use iteration for big ones)."""
        return PacketTable.concat([c.table for c in self])


class _Corrupt(Exception):
    pass


_END = object()


def prefetched(chunks: Iterable[Chunk], depth: int = 1) -> Iterator[Chunk]:
    """Iterate ``chunks`` (a :class:`CaptureReader`) from a background thread, up to ``depth``
    chunks ahead of the consumer.

    The decode kernel releases the GIL, so while the consumer works on chunk k (the flow
    kernel releases it too) the thread decodes chunk k+1 on another core. Chunks arrive in
    order; an exception raised by the reader is raised here, at the point of the stream where
    it happened; closing this generator early (``break``, an exception in the consumer) stops
    the thread before it returns. The reader's ``stats`` may run up to ``depth + 1`` chunks
    ahead of what the consumer has seen.
    """
    import queue
    import threading

    q: queue.Queue[Any] = queue.Queue(maxsize=max(int(depth), 1))
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for chunk in chunks:
                if not put(chunk):
                    return
            put(_END)
        except BaseException as exc:  # handed to the consumer, raised there
            put(exc)

    thread = threading.Thread(target=produce, name="keepiton-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                q.get(timeout=0.05)
            except queue.Empty:
                pass
        thread.join()


def chunks_of(reader: CaptureReader, *, prefetch: bool | None = None) -> Iterator[Chunk]:
    """The reader's chunks, decoded ahead in a thread when ``prefetch`` (default:
    :func:`~keepiton_throttle.config.use_prefetch`)."""
    from ..config import use_prefetch

    if prefetch is None:
        prefetch = use_prefetch()
    if not prefetch or reader.reuse_buffers:  # reused blocks must not be written ahead
        return iter(reader)
    # the consumer may be up to two windows behind the reader (one chunk queued, one in hand)
    reader._release_lag = 2
    gen = prefetched(reader)
    reader._ahead = gen  # closed by reader.close(), so the thread never outlives its reader
    return gen


def _block_list(blocks: dict[str, np.ndarray]) -> list[np.ndarray]:
    return [blocks["i64"], blocks["u64"], blocks["u32"], blocks["u16"], blocks["u8"]]


def read_capture(path: str | os.PathLike[str]) -> tuple[PacketTable, CaptureInfo, ReadStats]:
    """Read a whole capture into one :class:`PacketTable` (small files, tests)."""
    with CaptureReader(path) as reader:
        table = reader.read_all()
        return table, reader.info, reader.stats


def read_capture_bytes(data: bytes, name: str = "<bytes>") -> tuple[PacketTable, CaptureInfo, ReadStats]:
    """Like :func:`read_capture` for a capture held in memory (tests)."""
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".cap") as tmp:
        tmp.write(data)
        tmp.flush()
        with CaptureReader(tmp.name) as reader:
            reader.info.path = name
            table = reader.read_all()
            return table, reader.info, reader.stats


__all__ = [
    "CaptureInfo",
    "CaptureReader",
    "Chunk",
    "chunks_of",
    "prefetched",
    "DamageEvent",
    "Interface",
    "ReadStats",
    "io",
    "linktype_name",
    "read_capture",
    "read_capture_bytes",
]
