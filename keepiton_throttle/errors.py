"""Exception hierarchy.

Exceptions mean "could not run". A measurement that went badly (too few samples, a reset, a
timeout) is data, not an exception (see the verdict stage).
"""

from __future__ import annotations


class ThrottleError(Exception):
    """Base class of every error keepiton_throttle raises on purpose."""


class InputError(ThrottleError, ValueError):
    """The user's input (a file, a parameter) cannot be used."""


class CaptureFormatError(InputError):
    """The file is not a capture we can read (unknown magic, corrupt header)."""


class TruncatedError(InputError):
    """The data ends before a structure it announces (a parser needs more bytes)."""


class CaptureError(ThrottleError, OSError):
    """A live capture could not be started or read (privileges, interface)."""


class PrivilegeError(CaptureError):
    """The operation needs root or CAP_NET_RAW/CAP_NET_ADMIN."""
