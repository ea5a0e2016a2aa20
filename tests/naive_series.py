"""Slow, obviously-correct twin of ``series.path_rtts`` (STYLE.md rule 4): the vantage point,
path RTT samples and RTT summary of one flow at a time, with plain NumPy calls
(``np.median``, ``np.percentile``). ``tests/test_path_rtts.py`` holds the vectorised version
equal to these, bit for bit.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from keepiton_throttle._kernels import SAMPLE_DATA_ACK, SAMPLE_SPIN, SAMPLE_TS_ECHO
from keepiton_throttle.series import (
    VANTAGE_CLIENT,
    VANTAGE_MIDDLE,
    VANTAGE_SERVER,
    VANTAGE_UNKNOWN,
    RttSamples,
)


def detect_vantage(syn_to_synack_ns: int, synack_to_ack_ns: int, samples: RttSamples) -> str:
    """Where the capture point sits on the path of a flow.

    With a TCP handshake: at the client, SYN -> SYN/ACK spans the whole path and SYN/ACK -> ACK
    is local; at the server the reverse; in the middle both are partial. Without one, the side
    whose own data/TSvals give the larger RTT samples is the capture side (its samples cover
    the path; the other side's measure only the local ACK delay). A factor of 4 separates
    "one half is negligible" from "middle".
    """
    if syn_to_synack_ns >= 0 and synack_to_ack_ns >= 0:
        a, b = syn_to_synack_ns, synack_to_ack_ns
        if a > 4 * b:
            return VANTAGE_CLIENT
        if b > 4 * a:
            return VANTAGE_SERVER
        return VANTAGE_MIDDLE
    ok = (samples.kind == SAMPLE_DATA_ACK) | (samples.kind == SAMPLE_TS_ECHO)
    c = samples.rtt_ns[ok & samples.sender_is_client]
    s = samples.rtt_ns[ok & ~samples.sender_is_client]
    if c.size and s.size:
        mc, ms = float(np.median(c)), float(np.median(s))
        if mc > 4 * ms:
            return VANTAGE_CLIENT
        if ms > 4 * mc:
            return VANTAGE_SERVER
        return VANTAGE_MIDDLE
    return VANTAGE_UNKNOWN


def path_rtt(samples: RttSamples, vantage: str) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(ts_ns, rtt_ns) samples of the whole path's RTT, valid at the detected vantage point.

    Client side: samples timed on client-sent data/TSvals (plus spin-bit periods, which are a
    full RTT anywhere); server side: server-sent; middle: each half-sample plus the median of
    the other half, so that every sample estimates the full path. Unknown vantage: all samples
    (documented as a limit).
    """
    samples = samples.karn()
    spin = samples.kind == SAMPLE_SPIN
    if vantage == VANTAGE_CLIENT:
        m = samples.sender_is_client | spin
    elif vantage == VANTAGE_SERVER:
        m = ~samples.sender_is_client | spin
    elif vantage == VANTAGE_MIDDLE:
        c = samples.sender_is_client & ~spin
        s = ~samples.sender_is_client & ~spin
        out = samples.rtt_ns.copy()
        if c.any() and s.any():
            out[c] += int(np.median(samples.rtt_ns[s]))
            out[s] += int(np.median(samples.rtt_ns[c]))
        return samples.ts_ns, out
    else:
        return samples.ts_ns, samples.rtt_ns
    return samples.ts_ns[m], samples.rtt_ns[m]


def summarize_rtt(values_ns: npt.NDArray[np.int64]) -> dict[str, Any]:
    """p50 / p95 / min in ms of RTT samples (None when there are none)."""
    if values_ns.size == 0:
        return {"rtt_ms_p50": None, "rtt_ms_p95": None, "rtt_ms_min": None, "rtt_samples": 0}
    v = values_ns.astype(np.float64) / 1e6
    return {
        "rtt_ms_p50": float(np.percentile(v, 50)),
        "rtt_ms_p95": float(np.percentile(v, 95)),
        "rtt_ms_min": float(v.min()),
        "rtt_samples": int(v.size),
    }
