"""keepiton_throttle: find out, from packet timing, whether a network throttles a service.

The pipeline runs one way::

    capture / pcap file -> PacketTable -> FlowTable -> TimingSeries -> Comparison -> Verdict -> Report

Importing this package is cheap: Numba and NumPy-heavy modules are imported by the stages that
need them, so that ``throttle-check --help`` starts fast.
"""

__version__ = "0.1.0"
