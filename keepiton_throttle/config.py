"""Named defaults in one place: chunk sizes, limits, Numba flags.

Every number a user might want to change lives here with the reason it has the value it has.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar, cast

F = TypeVar("F", bound=Callable[..., Any])

#: Numba flags shared by every kernel. ``cache=True`` keeps the compiled machine code on disk so
#: that a second run on a small board does not pay the compile again; ``nogil`` lets worker
#: threads decode chunks in parallel.
NUMBA_FLAGS: dict[str, bool] = {"cache": True, "nogil": True}

#: Bytes read from a capture per chunk. 8 MiB keeps the decode loop busy for milliseconds per
#: call (so the Python overhead per chunk is negligible) while bounding memory per reader.
CHUNK_BYTES: int = int(os.environ.get("KEEPITON_CHUNK_BYTES", 8 << 20))

#: Decode the next chunk in a background thread while the flow stage works on the current one
#: (both kernels release the GIL): on two cores a single file's analysis runs ~1.4x faster.
#: ``None``: on when this process may run on more than one core and ``KEEPITON_PREFETCH`` is
#: not ``0``. Batch pool and Dask workers, and ``--jobs 1``, turn it off per task.
PREFETCH: bool | None = None


def usable_cores() -> int:
    """CPUs this process may run on (its affinity mask, else the machine's count)."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(os.cpu_count() or 1, 1)


def use_prefetch() -> bool:
    """Whether readers should decode ahead in a thread (see :data:`PREFETCH`)."""
    if PREFETCH is not None:
        return PREFETCH
    if os.environ.get("KEEPITON_PREFETCH", "1") == "0":
        return False
    return usable_cores() > 1


#: Largest record we accept, in bytes. Wireshark's limit for most link types is 262,144 bytes;
#: BIG TCP / GSO captures reach ~200 KiB, pcapng blocks carry options on top. Anything above this
#: is a corrupt length field, not a packet.
MAX_RECORD_BYTES: int = 16 << 20

#: pcap's classic snaplen ceiling used by Wireshark (WTAP_MAX_PACKET_SIZE_STANDARD), in bytes.
STANDARD_MAX_SNAPLEN: int = 262_144


def kernel(fn: F) -> F:
    """Compile ``fn`` with the project's Numba flags (``@njit(cache=True, nogil=True)``).

    Kernels are private, take contiguous typed arrays, write into preallocated outputs and never
    raise; their public wrappers validate. Numba is imported here, on first use, so that the
    command line starts without it.
    """
    return _njit(fn)


def flat_kernel(fn: F) -> F:
    """Like :func:`kernel`, for kernels that allocate nothing (the decoder's).

    Compiled without Numba's reference-counting runtime (its private ``_nrt=False`` switch):
    otherwise every call between kernels increments and decrements each array argument's
    reference count with atomic instructions, on entry and on every exit: about 50 per packet
    in decode.py, a 1.4x slow-down. Numba refuses to compile an allocation in such a kernel.
    """
    return _njit(fn, _nrt=False)


def inline_kernel(fn: F) -> F:
    """Like :func:`flat_kernel`, and always inlined into its callers by LLVM (``forceinline``).

    For the per-packet helpers: a call between Numba functions passes every array as 7-9 machine
    words on the stack and returns tuples through memory, which costs more than most helpers'
    work (1.5x faster decode). Each call site is a copy for LLVM to optimise: keep them few, or
    the cold compile grows (one call site each in decode.py: ~8 s instead of ~15 s).
    """
    return _njit(fn, _nrt=False, forceinline=True)


def _import_numba() -> None:
    """Import Numba without the ~0.3-0.7 s it spends importing scipy.linalg at start-up.

    ``numba.np.arraymath`` probes for BLAS at import (``_HAVE_BLAS``) by importing
    ``scipy.linalg.cython_blas``, which drags in scipy.linalg and numpy.f2py; our kernels use
    no BLAS, and that import is most of what a warm ``throttle-check inspect`` waits for. The
    probe is made to fail only while Numba imports; scipy.linalg imports normally afterwards.
    Set KEEPITON_NUMBA_BLAS=1 to let Numba probe as usual.
    """
    import sys

    if "numba.np.arraymath" in sys.modules or "scipy.linalg" in sys.modules or os.environ.get(
            "KEEPITON_NUMBA_BLAS") == "1":
        return
    key = "scipy.linalg.cython_blas"
    sys.modules[key] = None  # type: ignore[assignment]
    try:
        import numba.np.arraymath  # noqa: F401
    finally:
        if key in sys.modules and sys.modules[key] is None:
            del sys.modules[key]


def _njit(fn: F, **extra: Any) -> F:
    _import_numba()
    from numba import njit

    options: dict[str, Any] = {"cache": NUMBA_FLAGS["cache"], "nogil": NUMBA_FLAGS["nogil"], **extra}
    return cast(F, njit(**options)(fn))
