"""A single-file HTML report of a live run: verdicts, notes, captures, plots as base64 PNGs.

No external resource of any kind (no script, font, stylesheet or image URL), so the file can
be mailed, archived or opened offline; every value from the report is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

__all__ = ["render_html", "report_pngs"]

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:70em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}
th{background:#f3f3f3}.throttled,.blocked{color:#b03a2e;font-weight:bold}.not_throttled{color:#1e8449}
.unreachable,.inconclusive{color:#7d6608}.warn{background:#fdebd0;padding:.5em;border-left:4px solid #e67e22}
img{max-width:100%;border:1px solid #ddd}code{background:#f6f6f6;padding:0 .2em}
"""


def _e(x: Any) -> str:
    return html.escape("-" if x is None else str(x))


def _rate(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v / 1e6:.2f} Mb/s" if v >= 1e6 else f"{v / 1e3:.0f} kb/s"


def report_pngs(report: dict[str, Any], directory: Path) -> tuple[dict[str, bytes], str]:
    """The plots of ``report``: the PNG files it names (next to it), else drawn again from its
    series (needs matplotlib), else none. Returns ``({target: png}, how)``."""
    files = (report.get("files") or {}).get("plots_by_target") or {}
    got: dict[str, bytes] = {}
    for target, name in files.items():
        p = directory / Path(str(name)).name
        if p.is_file():
            got[str(target)] = p.read_bytes()
    names = {str(e.get("target")) for e in report.get("targets") or []}
    if names and names <= set(got):
        return got, "from the run's PNG files"
    try:
        from .plots import render_target_plots
    except ImportError:
        return got, "matplotlib is not installed: plots missing" if not got else "from the run's PNG files"
    return render_target_plots(report), "drawn again from the report's series"


def render_html(report: dict[str, Any], pngs: dict[str, bytes]) -> str:
    """The HTML text of the report."""
    sw = report.get("software") or {}
    out = ["<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
           f"<title>keepiton_throttle live check {_e(report.get('started_at'))}</title>",
           f"<style>{_CSS}</style></head><body>",
           "<h1>Throttling check</h1>",
           f"<p>Started {_e(report.get('started_at'))} UTC, {_e(sw.get('name'))} {_e(sw.get('version'))}, "
           f"schema <code>{_e(report.get('schema'))}</code>; methods: {_e(', '.join(report.get('methods') or []))}.</p>"]
    for w in report.get("warnings") or []:
        out.append(f"<p class=\"warn\">Warning: {_e(w)}</p>")
    out.append("<h2>Verdicts</h2><table><tr><th>target</th><th>method</th><th>transport</th><th>SNI</th>"
               "<th>decision</th><th>mechanism</th><th>rate</th><th>ratio [95% CI]</th><th>p</th>"
               "<th>trigger</th><th>symptom / notes</th></tr>")
    vocab = report.get("notes_vocabulary") or {}
    for t in report.get("targets") or []:
        ci = t.get("ratio_ci")
        ratio = "-" if t.get("ratio") is None else f"{t['ratio']:.3f}" + (
            f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
        trig = t.get("trigger") or {}
        pval = None if t.get("p_value") is None else f"{t['p_value']:.1e}"
        sym = t.get("symptom")
        notes = [f"{sym['failure']} during {sym['operation']}"] if sym else []
        notes += [vocab.get(n, n) for n in t.get("notes") or []]
        out.append(
            f"<tr><td>{_e(t.get('target'))}</td><td>{_e(t.get('method'))}</td><td>{_e(t.get('transport'))}</td>"
            f"<td>{_e(t.get('sni'))}</td><td class=\"{_e(t.get('decision'))}\">{_e(t.get('decision'))}</td>"
            f"<td>{_e(t.get('mechanism'))}</td><td>{_e(_rate(t.get('rate_bps')))}</td><td>{_e(ratio)}</td>"
            f"<td>{_e(pval)}</td>"
            f"<td>{_e(trig.get('conclusion') if trig.get('tested') else '-')}</td>"
            f"<td>{'<br>'.join(_e(n) for n in notes) or '-'}</td></tr>")
    out.append("</table>")
    tls = report.get("tls_verification") or {}
    if tls:
        out.append("<h2>Certificate verification</h2><ul>")
        out += [f"<li>{_e(k)}: {_e(v)}</li>" for k, v in tls.items()]
        out.append("</ul>")
    cap = report.get("capture") or {}
    out.append("<h2>Captures</h2>")
    if cap.get("enabled"):
        out.append("<table><tr><th>file</th><th>method</th><th>packets</th><th>kernel drops</th>"
                   "<th>snap length (up / down)</th></tr>")
        for c in cap.get("files") or []:
            snap = c.get("snaplen") or {}
            out.append(f"<tr><td>{_e(c.get('file'))}</td><td>{_e(c.get('method'))}{' (split)' if c.get('split') else ''}"
                       f"</td><td>{_e(c.get('packets'))}</td><td>{_e(c.get('dropped'))}</td>"
                       f"<td>{_e(snap.get('client_to_server'))} / {_e(snap.get('server_to_client'))}</td></tr>")
        out.append("</table>")
        if cap.get("note"):
            out.append(f"<p>{_e(cap['note'])}</p>")
    else:
        out.append("<p>No packet capture. Limitations:</p><ul>")
        out += [f"<li>{_e(x)}</li>" for x in cap.get("limitations") or []]
        out.append("</ul>")
    if pngs:
        out.append("<h2>Plots</h2>")
        for target, png in pngs.items():
            data = base64.b64encode(png).decode("ascii")
            out.append(f"<h3>{_e(target)}</h3><img alt=\"{_e(target)}: goodput over time and RTT CDF\" "
                       f"src=\"data:image/png;base64,{data}\">")
    out.append("</body></html>")
    return "\n".join(out) + "\n"
