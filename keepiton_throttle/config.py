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
    from numba import njit

    return cast(F, njit(cache=NUMBA_FLAGS["cache"], nogil=NUMBA_FLAGS["nogil"])(fn))
