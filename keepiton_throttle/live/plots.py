"""PNG plots of a live run: per target, goodput over time (target vs control downloads) and
the RTT distributions (empirical CDFs), one row per method and transport.

Goodput is what reached the client application (in-order body bytes in 100 ms bins); RTTs
are the capture's path-RTT samples (the client's own estimates without a capture). Drawn
from the report's ``series`` only, so ``throttle-check report`` can draw them again without the captures. matplotlib is
used through its object API with the Agg canvas: no display, no global pyplot state.
"""

from __future__ import annotations

import io
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["render_entry_rows", "render_target_plots"]

TARGET_COLOR = "#c0392b"
CONTROL_COLOR = "#2471a3"


def _kbps(values: list[float]) -> list[float]:
    return [v / 1e3 for v in values]


def _cdf(ax: Any, quantiles: list[float], color: str, label: str) -> None:
    if not quantiles:
        return
    n = len(quantiles)
    ys = [(k + 1) / n for k in range(n)]
    ax.step(quantiles, ys, where="post", color=color, label=label)


def render_entry_rows(entries: list[dict[str, Any]], title: str) -> bytes:
    """One figure, one row per entry (left: goodput over time; right: RTT CDF); PNG bytes."""
    rows = max(1, len(entries))
    fig = Figure(figsize=(11, 3.2 * rows), dpi=90)
    FigureCanvasAgg(fig)
    fig.suptitle(title)
    for r, e in enumerate(entries):
        ax = fig.add_subplot(rows, 2, 2 * r + 1)
        cx = fig.add_subplot(rows, 2, 2 * r + 2)
        series = e.get("series") or {}
        for role, color in (("control", CONTROL_COLOR), ("target", TARGET_COLOR)):
            for k, flow in enumerate(series.get(role) or []):
                ax.plot(flow.get("t_s") or [], _kbps(flow.get("bps") or []), color=color, alpha=0.75,
                        linewidth=1.0, label=f"{role} ({flow.get('sni')})" if k == 0 else None)
        ax.set_yscale("symlog", linthresh=100)
        ax.set_xlabel("time since the first byte (s)")
        ax.set_ylabel("delivered (kbit/s, 100 ms bins)")
        rate = e.get("rate_bps")
        label = f"{e.get('method')} {e.get('transport')}: {e.get('decision')}"
        if e.get("decision") == "throttled" and rate:
            label += f", {e.get('mechanism')} at {rate / 1e3:.0f} kbit/s"
        ax.set_title(label, fontsize=10)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="best")
        rtt = series.get("rtt_ms") or {}
        _cdf(cx, rtt.get("control") or [], CONTROL_COLOR, "control")
        _cdf(cx, rtt.get("target") or [], TARGET_COLOR, "target")
        cx.set_xlabel("path RTT (ms, from the capture)" if series.get("rtt_source") == "capture"
                      else "RTT (ms, the client's own estimates)")
        cx.set_ylabel("CDF")
        cx.set_ylim(0, 1.02)
        cx.set_title("RTT distribution", fontsize=10)
        cx.grid(True, alpha=0.3)
        if cx.get_legend_handles_labels()[0]:
            cx.legend(fontsize=8, loc="lower right")
        else:
            cx.text(0.5, 0.5, "no RTT samples", ha="center", va="center", transform=cx.transAxes)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def render_target_plots(report: dict[str, Any]) -> dict[str, bytes]:
    """``{target name: PNG bytes}`` for every target of a run report."""
    by_target: dict[str, list[dict[str, Any]]] = {}
    for e in report.get("targets") or []:
        by_target.setdefault(str(e.get("target")), []).append(e)
    return {name: render_entry_rows(entries, f"{name}: target vs control")
            for name, entries in by_target.items()}
