"""The optional C99 twin of the capture decoder (``native/``), loaded with ctypes.

``native/kt_decode.c`` reads a whole capture held in memory with exactly the semantics of the
Numba path (:func:`keepiton_throttle.sources.capture.read_capture`): the tests use it as a
differential oracle and the benchmarks as the speed limit. Nothing imports this module at import
time, so the package works where the library was not built (``make -C native``).

The library is found through the environment variable ``KEEPITON_NATIVE_LIB``, else as
``native/libkt_decode.so`` beside the package directory when running from a checkout.
"""

from __future__ import annotations

import ctypes
import gzip
import mmap
import os
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .errors import CaptureFormatError
from .packets import BLOCKS, PacketTable, allocate_blocks

#: Environment variable naming the shared library to load.
ENV_VAR = "KEEPITON_NATIVE_LIB"
#: ``KT_ABI_VERSION`` of native/kt_decode.h this facade speaks.
ABI_VERSION = 2

_FIRST_CHUNK_ROWS = 1 << 14
_MAX_CHUNK_ROWS = 1 << 20
_GZIP_MAGIC = b"\x1f\x8b"


class NativeUnavailable(RuntimeError):
    """The native library is not built, cannot be loaded, or does not match this facade."""


def library_path() -> str | None:
    """Path of the library to load: ``$KEEPITON_NATIVE_LIB``, else the checkout's build."""
    env = os.environ.get(ENV_VAR)
    if env:
        return env
    built = Path(__file__).resolve().parent.parent / "native" / "libkt_decode.so"
    return str(built) if built.is_file() else None


_loaded: dict[str, ctypes.CDLL] = {}


def _load() -> ctypes.CDLL:
    path = library_path()
    if path is None:
        raise NativeUnavailable(
            f"native decoder not built: run `make -C native` in a checkout or set {ENV_VAR}"
        )
    lib = _loaded.get(path)
    if lib is not None:
        return lib
    try:
        lib = ctypes.CDLL(path)
    except OSError as exc:
        raise NativeUnavailable(f"cannot load native decoder {path}: {exc}") from None
    try:
        lib.kt_abi_version.restype = ctypes.c_int
        lib.kt_columns.restype = ctypes.c_int
        lib.kt_columns.argtypes = [ctypes.c_int]
        lib.kt_reader_size.restype = ctypes.c_size_t
        lib.kt_open.restype = ctypes.c_int
        lib.kt_open.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
        lib.kt_decode.restype = ctypes.c_int64
        lib.kt_decode.argtypes = [ctypes.c_void_p] * 6 + [ctypes.c_int64]
        lib.kt_records.restype = ctypes.c_int64
        lib.kt_records.argtypes = [ctypes.c_void_p]
        lib.kt_message.restype = ctypes.c_char_p
        lib.kt_message.argtypes = [ctypes.c_void_p]
        lib.kt_damage_count.restype = ctypes.c_int
        lib.kt_damage_count.argtypes = [ctypes.c_void_p]
        for fn, restype in (("kt_damage_kind", ctypes.c_char_p),
                            ("kt_damage_offset", ctypes.c_int64),
                            ("kt_damage_message", ctypes.c_char_p)):
            getattr(lib, fn).restype = restype
            getattr(lib, fn).argtypes = [ctypes.c_void_p, ctypes.c_int]
    except AttributeError as exc:
        raise NativeUnavailable(f"{path} is not the kt_decode library: {exc}") from None
    version = lib.kt_abi_version()
    if version != ABI_VERSION:
        raise NativeUnavailable(
            f"{path} speaks ABI {version}, this facade {ABI_VERSION}: rebuild with `make -C native`"
        )
    columns = [lib.kt_columns(i) for i in range(len(BLOCKS))]
    if columns != [len(names) for _, _, names in BLOCKS]:
        raise NativeUnavailable(f"{path} has column counts {columns}, packets.py another layout")
    _loaded[path] = lib
    return lib


def available() -> bool:
    """True when the native library can be loaded (see :func:`library_path`)."""
    try:
        _load()
    except NativeUnavailable:
        return False
    return True


def _gunzip(raw: BinaryIO) -> tuple[bytes, str | None]:
    """Decompress a gzip stream; on damage keep what decompressed and say what went wrong.

    ``read1`` returns one decompression step at a time, so a damaged stream loses nothing that
    came before the damage. The message words it as :class:`CaptureReader` does.
    """
    pieces: list[bytes] = []
    error = None
    with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
        try:
            while piece := stream.read1(1 << 20):
                pieces.append(piece)
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            error = f"compressed stream damaged: {exc}"
    return b"".join(pieces), error


def _decode(lib: ctypes.CDLL, address: int, size: int, name: str, chunk_rows: int | None,
            damage: list[str]) -> PacketTable:
    """Decode ``size`` bytes at ``address`` (kept alive by the caller) into one table."""
    reader = (ctypes.c_uint64 * ((lib.kt_reader_size() + 7) // 8))()  # 8-byte aligned
    if lib.kt_open(reader, address, size) < 0:
        raise CaptureFormatError(f"{name}: {lib.kt_message(reader).decode()}")
    tables: list[PacketTable] = []
    cap = chunk_rows or _FIRST_CHUNK_ROWS
    done = 0
    while True:
        blocks = allocate_blocks(cap)
        ptrs = [blocks[b].ctypes.data for b, _, _ in BLOCKS]
        rows = lib.kt_decode(reader, *ptrs, cap)
        if rows < 0:
            raise RuntimeError(f"kt_decode failed with code {rows}")
        if rows == 0:
            break
        records = lib.kt_records(reader)
        tables.append(PacketTable.from_blocks(blocks, rows, records - done))
        done = records
        if chunk_rows is None:
            cap = min(cap * 2, _MAX_CHUNK_ROWS)
    for i in range(lib.kt_damage_count(reader)):
        kind = lib.kt_damage_kind(reader, i).decode()
        offset = lib.kt_damage_offset(reader, i)
        damage.append(f"{kind} at byte {offset}: {lib.kt_damage_message(reader, i).decode()}")
    return PacketTable.concat(tables)


def read_capture_native(
    path: str | os.PathLike[str], *, chunk_rows: int | None = None
) -> tuple[PacketTable, int, list[str]]:
    """Read a whole capture with the C decoder.

    Returns ``(table, records, damage)``: the same table as ``read_capture(path)[0]``, the
    number of capture records, and one message per damage event (``"<kind> at byte <offset>:
    <message>"``, offsets in the decompressed stream). ``chunk_rows`` fixes the rows decoded per
    call (tests); by default chunks grow from 16 Ki to 1 Mi rows.

    Raises :class:`NativeUnavailable` when the library is not built,
    :class:`~keepiton_throttle.errors.CaptureFormatError` when the file is not a capture.
    """
    if chunk_rows is not None and chunk_rows < 2:
        raise ValueError(f"chunk_rows must be at least 2 (a tunnelled packet takes two), got {chunk_rows}")
    lib = _load()
    name = os.fspath(path)
    damage: list[str] = []
    with open(name, "rb") as f:
        if f.read(2) == _GZIP_MAGIC:
            f.seek(0)
            raw, error = _gunzip(f)
            if error is not None:
                damage.append(f"gzip at byte {len(raw)}: {error}")
            data = np.frombuffer(raw, dtype=np.uint8)
            table = _decode(lib, data.ctypes.data, data.size, name, chunk_rows, damage)
            return table, table.records, damage
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            table = _decode(lib, 0, 0, name, chunk_rows, damage)
            return table, table.records, damage
        with mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ) as mapped:
            view = np.frombuffer(mapped, dtype=np.uint8)
            address = view.ctypes.data
            try:
                table = _decode(lib, address, size, name, chunk_rows, damage)
            finally:
                del view  # release the export so that the map can close
    return table, table.records, damage


__all__ = ["ENV_VAR", "NativeUnavailable", "available", "library_path", "read_capture_native"]
