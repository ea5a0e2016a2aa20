"""The ``throttle-check`` command line: a thin layer that maps errors to exit codes once.

Exit codes: 0 success; 1 application error (could not run); 2 usage error or an input file
that cannot be read at all. Heavy modules (NumPy, Numba, Scapy) are imported inside the
commands so that ``--help`` and ``--version`` start fast.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Any

import click

from . import __version__

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_INPUT = 2


def _fmt_ts(ns: int | None) -> str:
    if ns is None:
        return "-"
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return str(n)


def _input_error(path: str, message: str) -> None:
    click.echo(f"throttle-check: error: {message}" if path in message else
               f"throttle-check: error: {path}: {message}", err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="throttle-check")
def main() -> None:
    """Find out, from packet timing, whether a network throttles a service.

    \b
    Commands read captures (pcap, pcapng, gzip-compressed either way) and print tables, or
    JSON with --json. Exit status: 0 ok, 1 could not run, 2 bad usage or unreadable input.
    """


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file (JSON Lines).")
def inspect(files: tuple[str, ...], as_json: bool) -> None:
    """Summarise capture FILES, like capinfos.

    For each file: format, link types, packets, bytes, first/last timestamp, duration,
    IPv4/IPv6/TCP/UDP packet counts, TCP and UDP conversations (inner flows of VXLAN/GRE
    tunnels included, as tshark counts them), and damaged or skipped records. A damaged file
    is read up to the damage, which is reported; a file that is not a capture at all is
    reported on stderr and makes the exit status 2.
    """
    from .errors import InputError
    from .summary import summarize

    failed = False
    rows = []
    for path in files:
        try:
            s = summarize(path)
        except InputError as exc:
            _input_error(path, str(exc))
            failed = True
            continue
        except OSError as exc:
            _input_error(path, exc.strerror or str(exc))
            failed = True
            continue
        if as_json:
            click.echo(json.dumps(s.to_json()))
        else:
            rows.append(s)
    if not as_json:
        for s in rows:
            _print_summary(s)
    if failed:
        sys.exit(EXIT_INPUT)


def _print_summary(s: Any) -> None:
    fmt = s.format + (" (gzip)" if s.compressed else "")
    lines = [
        ("File", s.file),
        ("Format", f"{fmt}, {s.byte_order}-endian"),
        ("Link types", ", ".join(s.linktypes) or "-"),
        ("Interfaces", str(s.interfaces)),
        ("Packets", f"{s.packets:,}"),
        ("Bytes (wire)", f"{s.bytes_wire:,} ({_fmt_bytes(s.bytes_wire)})"),
        ("Bytes (captured)", f"{s.bytes_captured:,}"),
        ("First packet", _fmt_ts(s.first_ts_ns) + " UTC"),
        ("Last packet", _fmt_ts(s.last_ts_ns) + " UTC"),
        ("Duration", f"{s.duration_s:.6f} s"),
        ("IPv4 / IPv6", f"{s.ipv4:,} / {s.ipv6:,}"),
        ("TCP / UDP", f"{s.tcp:,} / {s.udp:,}"),
        ("Tunnelled", f"{s.tunnelled:,}"),
        ("TCP conversations", f"{s.tcp_conversations:,}"),
        ("UDP conversations", f"{s.udp_conversations:,}"),
        ("Packet status", ", ".join(f"{k} {v:,}" for k, v in s.status.items()) or "-"),
        ("Damaged", f"{s.damaged}" + (" (reading stopped early)" if s.stopped_early else "")),
    ]
    width = max(len(k) for k, _ in lines)
    for k, v in lines:
        click.echo(f"{k:<{width}}  {v}")
    for d in s.damage:
        click.echo(f"{'':<{width}}  at byte {d['offset']:,}: {d['message']}")
    click.echo("")


FLOW_COLUMNS = [
    ("transport", "proto", 5), ("client", "client", 22), ("server", "server", 22),
    ("sni", "SNI", 28), ("bytes_down", "bytes down", 11), ("bytes_up", "bytes up", 9),
    ("duration_s", "dur s", 7), ("goodput_bps", "goodput", 11), ("rtt_ms_p50", "rtt p50", 8),
    ("rtt_ms_p95", "rtt p95", 8), ("retransmission_rate", "retx", 6), ("end_state", "end", 8),
]


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key == "goodput_bps":
        v = float(value)
        return f"{v / 1e6:.2f} Mb/s" if v >= 1e6 else f"{v / 1e3:.1f} kb/s"
    if key in ("rtt_ms_p50", "rtt_ms_p95"):
        return f"{value:.1f}"
    if key == "duration_s":
        return f"{value:.2f}"
    if key == "retransmission_rate":
        return f"{100 * value:.1f}%"
    return str(value)


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--sni", "sni_patterns", multiple=True, metavar="PATTERN",
              help="Only flows whose SNI matches this shell-style pattern (e.g. '*.googlevideo.com'); repeatable.")
@click.option("--json", "as_json", is_flag=True, help="A JSON list of flow objects.")
@click.option("--csv", "as_csv", is_flag=True, help="CSV with one row per flow.")
@click.option("--bin-ms", type=click.FloatRange(min=1.0), default=100.0, show_default=True,
              help="Goodput bin width in milliseconds.")
def flows(files: tuple[str, ...], sni_patterns: tuple[str, ...], as_json: bool, as_csv: bool,
          bin_ms: float) -> None:
    """One row per TCP/UDP flow of capture FILES.

    \b
    Columns: transport (tcp, quic, udp), client and server endpoints (client = SYN sender,
    QUIC Initial sender, else the higher port), SNI (TLS ClientHello or decrypted QUIC
    Initial), bytes each way (on the wire), duration, goodput of the main direction (unique
    payload bytes, bit/s), path RTT p50/p95 in ms (samples valid at the capture's vantage
    point), retransmission rate of the server->client direction and how the flow ended.
    """
    import fnmatch

    from .errors import InputError
    from .flows import analyze_file, flow_records

    if as_json and as_csv:
        raise click.UsageError("--json and --csv are exclusive")
    failed = False
    records: list[dict[str, Any]] = []
    for path in files:
        try:
            table, series = analyze_file(path, bin_ns=int(bin_ms * 1e6))
        except InputError as exc:
            _input_error(path, str(exc))
            failed = True
            continue
        except OSError as exc:
            _input_error(path, exc.strerror or str(exc))
            failed = True
            continue
        for rec in flow_records(table, series):
            if sni_patterns and not (rec["sni"] and any(
                    fnmatch.fnmatchcase(rec["sni"].lower(), p.lower()) for p in sni_patterns)):
                continue
            records.append({"file": path, **rec})
    if as_json:
        click.echo(json.dumps(records, indent=1))
    elif as_csv:
        import csv

        keys = list(records[0]) if records else ["file"]
        w = csv.DictWriter(sys.stdout, fieldnames=keys, lineterminator="\n")
        w.writeheader()
        for rec in records:
            w.writerow({k: (";".join(map(str, v)) if isinstance(v, list) else v) for k, v in rec.items()})
    else:
        header = "  ".join(f"{title:<{w}}" for _, title, w in FLOW_COLUMNS)
        click.echo(header)
        for rec in records:
            click.echo("  ".join(f"{_cell(k, rec[k])[:w]:<{w}}" for k, _, w in FLOW_COLUMNS))
        click.echo(f"{len(records)} flow(s)")
    if failed:
        sys.exit(EXIT_INPUT)


if __name__ == "__main__":  # pragma: no cover
    main()
