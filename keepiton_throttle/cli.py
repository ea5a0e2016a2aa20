"""The ``throttle-check`` command line: a thin layer that maps errors to exit codes once.

Exit codes: 0 success; 1 application error (could not run); 2 usage error or an input file
that cannot be read at all. Heavy modules (NumPy, Numba, Scapy) are imported inside the
commands so that ``--help`` and ``--version`` start fast.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

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


T = TypeVar("T")


def _read_or_report(path: str, read: Callable[[str], T]) -> T | None:
    """``read(path)``, or None after one error line on stderr when the file cannot be read."""
    from .errors import InputError

    try:
        return read(path)
    except InputError as exc:
        _input_error(path, str(exc))
    except OSError as exc:
        _input_error(path, exc.strerror or str(exc))
    return None


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
    from .summary import summarize

    failed = False
    rows = []
    for path in files:
        s = _read_or_report(path, summarize)
        if s is None:
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
@click.option("--json", "as_json", is_flag=True, help="A JSON list of flow objects, one per line.")
@click.option("--csv", "as_csv", is_flag=True, help="CSV with one row per flow.")
@click.option("--bin-ms", type=click.FloatRange(min=1.0), default=100.0, show_default=True,
              help="Goodput bin width in milliseconds.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar (there is none when stderr is not a terminal).")
def flows(files: tuple[str, ...], sni_patterns: tuple[str, ...], as_json: bool, as_csv: bool,
          bin_ms: float, quiet: bool) -> None:
    """One row per TCP/UDP flow of capture FILES.

    \b
    Columns: transport (tcp, quic, udp), client and server endpoints (client = SYN sender,
    QUIC Initial sender, else the higher port), SNI (TLS ClientHello or decrypted QUIC
    Initial), bytes each way (on the wire), duration, goodput of the main direction (unique
    payload bytes, bit/s), path RTT p50/p95 in ms (samples valid at the capture's vantage
    point), retransmission rate of the server->client direction and how the flow ended.

    \b
    Each file's rows are written as soon as it is read. A file that cannot be read is one
    line on stderr; the others are still listed, and the exit status is then 2.
    """
    import contextlib
    import os

    import numpy as np

    from .flows import FLOW_RECORD_KEYS, iter_flow_columns, read_flows

    if as_json and as_csv:
        raise click.UsageError("--json and --csv are exclusive")
    # streamed: each file's records are written as they are made, a block of flows at a time,
    # so that a capture of millions of flows is never held as dicts (or one JSON string)
    keys = ("file", *FLOW_RECORD_KEYS)
    out = click.get_text_stream("stdout")
    writer = None
    if as_csv:
        import csv

        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(keys)
    elif as_json:
        out.write("[")
    else:
        click.echo("  ".join(f"{title:<{w}}" for _, title, w in FLOW_COLUMNS))
    failed = False
    shown = 0
    with contextlib.ExitStack() as stack:  # the bar's exit shows the cursor again
        bar: Any = None
        if not quiet and sys.stderr.isatty():
            sizes = []
            for path in files:
                try:
                    sizes.append(os.stat(path).st_size)
                except OSError:
                    pass  # reported when it is read
            bar = stack.enter_context(click.progressbar(length=max(sum(sizes), 1), label="reading",
                                                        file=sys.stderr))
        step = None if bar is None else (lambda nbytes, _packets: bar.update(nbytes))
        for path in files:
            if bar is not None:
                bar.label = f"reading {os.path.basename(path)}"
            got = _read_or_report(path, lambda p: read_flows(p, bin_ns=int(bin_ms * 1e6), progress=step))
            if bar is not None:  # the rows follow, maybe on the same terminal: clear the bar's line
                sys.stderr.write("\r\033[K")
                sys.stderr.flush()
            if got is None:
                failed = True
                continue
            table, series = got.table, got.series
            for w in got.warnings():  # damage, undecoded link types: the rows are not the whole file
                click.echo(f"throttle-check: warning: {path}: {w}", err=True)
            rows = None
            if sni_patterns:
                rows = np.unique(np.concatenate([table.matching(p) for p in sni_patterns]))
            for cols in iter_flow_columns(table, series, rows=rows):
                n = len(cols["flow"])
                cols = {"file": [path] * n, **cols}
                if writer is not None:
                    for k in ("alpn", "tls_versions"):  # one cell, ';'-separated
                        cols[k] = [";".join(v) for v in cols[k]]
                    writer.writerows(zip(*(cols[k] for k in keys), strict=True))
                elif as_json:
                    for vals in zip(*(cols[k] for k in keys), strict=True):
                        out.write(("\n" if shown == 0 else ",\n")
                                  + json.dumps(dict(zip(keys, vals, strict=True))))
                        shown += 1
                    continue
                else:
                    for vals in zip(*(cols[k] for k, _, _ in FLOW_COLUMNS), strict=True):
                        click.echo("  ".join(f"{_cell(k, v)[:w]:<{w}}"
                                             for (k, _, w), v in zip(FLOW_COLUMNS, vals, strict=True)))
                shown += n
    if as_json:
        out.write("\n]\n" if shown else "]\n")
    elif writer is None:
        click.echo(f"{shown} flow(s)")
    out.flush()
    if failed:
        sys.exit(EXIT_INPUT)


EXIT_THROTTLED = 3


def _fmt_rate(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v / 1e6:.2f} Mb/s" if v >= 1e6 else f"{v / 1e3:.0f} kb/s"


@main.command()
@click.argument("files", nargs=-1, required=True, metavar="FILE|DIR|GLOB...")
@click.option("--target", "target_names", multiple=True, metavar="NAME",
              help="Only this target from the targets list (repeatable); reported even without flows.")
@click.option("--target-sni", "target_snis", multiple=True, metavar="PATTERN",
              help="An ad hoc target given by an SNI pattern, e.g. '*.twimg.com' (repeatable).")
@click.option("--control-sni", "control_snis", multiple=True, metavar="PATTERN",
              help="Use only flows matching this SNI pattern as controls (repeatable). "
                   "Default: every flow with an SNI that matches no known target.")
@click.option("--targets", "targets_files", multiple=True, type=click.Path(dir_okay=False),
              help="A TOML targets file adding to (or overriding) the bundled list.")
@click.option("--json", "as_json", is_flag=True, help="Write the versioned JSON report to stdout.")
@click.option("--bin-ms", type=click.FloatRange(min=1.0), default=100.0, show_default=True,
              help="Goodput bin width, ms.")
@click.option("--alpha", type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True), default=0.01,
              show_default=True, help="Significance level (after Benjamini-Hochberg).")
@click.option("--max-ratio", type=click.FloatRange(0.0, 1.0, min_open=True), default=0.5,
              show_default=True, help="Throttled only if the target/control ratio's CI is below this.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the resampling tests.")
@click.option("--fail-on-throttled", is_flag=True,
              help=f"Exit with status {EXIT_THROTTLED} when any target is throttled.")
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=None,
              help="Files analysed in parallel (worker processes, or Dask workers). [default: all cores]")
@click.option("--engine", type=click.Choice(["local", "dask"]), default="local", show_default=True,
              help="local: a pool of worker processes; dask: dask.distributed (needs the 'cluster' extra).")
@click.option("--scheduler", metavar="tcp://HOST:PORT",
              help="With --engine dask: the scheduler of an existing cluster (default: a local "
                   "cluster of --jobs workers). Workers must see the files at the same paths.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), metavar="DIR",
              help="Write flows and verdicts (per file and combined) as JSON Lines and Parquet, "
                   "and each file's evidence, to DIR (needs the 'parquet' extra).")
@click.option("--resume", is_flag=True,
              help="With --out: skip files (by SHA-256 of their content) an earlier run into DIR finished.")
@click.option("--per-file", is_flag=True, help="Also print each file's own verdicts (table output).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar (there is none when stderr is not a terminal).")
@click.option("--baseline", "baseline_name", metavar="NAME",
              help="Compare with this stored baseline when the captures hold no usable control flow.")
@click.option("--db", type=click.Path(dir_okay=False), metavar="PATH", envvar="KEEPITON_BASELINE_DB",
              help="Baseline store for --baseline (default: $XDG_DATA_HOME/keepiton_throttle/"
                   "baselines.sqlite3).")
def analyze(files: tuple[str, ...], target_names: tuple[str, ...], target_snis: tuple[str, ...],
            control_snis: tuple[str, ...], targets_files: tuple[str, ...], as_json: bool,
            bin_ms: float, alpha: float, max_ratio: float, seed: int, fail_on_throttled: bool,
            jobs: int | None, engine: str, scheduler: str | None, out_dir: str | None, resume: bool,
            per_file: bool, quiet: bool, baseline_name: str | None, db: str | None) -> None:
    """Decide, per target, whether capture FILES show it throttled.

    \b
    Flows whose SNI matches a target (bundled list: youtube, twitter, telegram, instagram,
    facebook, whatsapp, tiktok, discord, signal) are compared with the other flows of the
    captures (controls): per-bin goodput with KS and Mann-Whitney tests and a bootstrap CI of
    the target/control goodput ratio. For throttled targets it estimates the mechanism
    (policing, shaping, stall), the rate, the burst and the onset. Decisions: throttled,
    not_throttled, inconclusive (with reasons). See docs/METHODOLOGY.md.

    \b
    Many files: directories are searched recursively for *.pcap, *.pcapng, *.cap (also .gz)
    and glob patterns are expanded ('captures/**/*.pcapng'); files are analysed in parallel
    and the verdicts pool the evidence of all of them. A file that cannot be read is reported
    and skipped; the others are analysed all the same (exit status 2).
    \b
    Exit status: 0 done; 1 could not run; 2 bad usage or unreadable input;
    3 a target is throttled (only with --fail-on-throttled).
    """
    import contextlib
    import time

    from .analysis import DetectionConfig, resolve_roles
    from .batch import ERROR_INPUT, MissingExtraError, Progress, expand_inputs, run_batch
    from .errors import InputError, ThrottleError
    from .report import analysis_json
    from .targets import adhoc_target, load_targets

    if resume and not out_dir:
        raise click.UsageError("--resume needs --out DIR (the directory of the earlier run)")
    if scheduler and engine != "dask":
        raise click.UsageError("--scheduler needs --engine dask")
    if per_file and as_json:
        raise click.UsageError("--per-file is for the table; with --json, per-file verdicts are in "
                               "--out DIR/verdicts.jsonl")
    try:
        tmap = load_targets(list(targets_files))
        adhoc = [adhoc_target(p) for p in target_snis]
        for t in adhoc:
            tmap[t.name] = t
        only: list[str] | None = None
        if target_names:
            only = list(target_names) + [t.name for t in adhoc]
        elif adhoc:
            only = [t.name for t in adhoc]
        cfg = DetectionConfig(bin_ns=int(bin_ms * 1e6), alpha=alpha, max_ratio=max_ratio,
                              clean_ratio=max(0.7, max_ratio), seed=seed)
    except (InputError, ValueError) as exc:
        raise click.UsageError(str(exc)) from None
    try:
        roles = resolve_roles(tmap, control_patterns=list(control_snis) or None, only_targets=only)
    except InputError as exc:
        _input_error("", str(exc))
        sys.exit(EXIT_INPUT)
    baseline = None
    if baseline_name is not None:
        from .baseline import open_baseline

        try:
            baseline = open_baseline(baseline_name, db=db)
        except InputError as exc:
            _input_error("", str(exc))
            sys.exit(EXIT_INPUT)
    paths, problems = expand_inputs(files)
    for arg, message in problems:
        _input_error(arg, message)

    show_bar = not quiet and sys.stderr.isatty()
    with contextlib.ExitStack() as stack:
        bar: Any = None
        first: list[float] = []  # time, bytes, packets at the first progress (workers started)

        def on_progress(p: Progress) -> None:
            nonlocal bar
            if bar is None:
                if p.bytes_total <= 0:
                    return
                bar = stack.enter_context(click.progressbar(
                    length=p.bytes_total, label="analysing", file=sys.stderr, show_eta=False,
                    item_show_func=lambda s: s))
            now = time.monotonic()
            if not first and p.bytes_done:
                first.extend((now, p.bytes_done, p.packets))
            info = f"{p.files_done}/{p.files_total} files"
            if first and now - first[0] > 0.5:
                dt = now - first[0]
                byte_rate = (p.bytes_done - first[1]) / dt
                info += f", {(p.packets - first[2]) / dt / 1e3:,.0f} kpkt/s"
                if byte_rate > 0 and p.bytes_done < p.bytes_total:
                    eta = int((p.bytes_total - p.bytes_done) / byte_rate)
                    info += f", ETA {eta // 3600:d}:{eta // 60 % 60:02d}:{eta % 60:02d}"
            step = p.bytes_done - bar.pos
            bar.update(step, info)
            if step == 0:  # a file finished without new bytes: show the count all the same
                bar.render_progress()

        try:
            result = run_batch(paths, roles, cfg, jobs=jobs, engine=engine, scheduler=scheduler,
                               out_dir=out_dir, resume=resume, per_file=per_file, baseline=baseline,
                               report_empty=only is not None,
                               progress=on_progress if show_bar else None,
                               generated_at=datetime.now(UTC).isoformat())
        except MissingExtraError as exc:
            raise click.ClickException(str(exc)) from None
        except (ThrottleError, OSError) as exc:
            raise click.ClickException(str(exc)) from None
    report = result.combined
    if as_json:
        click.echo(json.dumps(analysis_json(report, generated_at=datetime.now(UTC).isoformat()),
                              indent=1))
    else:
        _print_verdicts(report)
        if per_file:
            for f in result.files:
                if f.report is not None:
                    click.echo(f"\n== {f.path}" + (" (resumed)" if f.status == "resumed" else ""))
                    _print_verdicts(f.report)
    for f in result.errors:
        _input_error(f.path, f.error or "could not be analysed")
    if not quiet and out_dir and not as_json:
        resumed = sum(f.status == "resumed" for f in result.files)
        click.echo(f"wrote {out_dir}: {len(result.files) - len(result.errors)} file(s) "
                   f"({resumed} resumed), {len(result.errors)} failed", err=True)
    if any(f.error_kind != ERROR_INPUT for f in result.errors):
        sys.exit(EXIT_ERROR)
    if problems or result.errors:
        sys.exit(EXIT_INPUT)
    if fail_on_throttled and any(v.decision == "throttled" for v in report.targets):
        sys.exit(EXIT_THROTTLED)


def _fmt_ratio(r: float) -> str:
    """Three decimals, or two significant digits below 0.01 (a 130 kbit/s target against
    50 Mbit/s controls is 0.0026, not 0.000)."""
    return f"{r:.3f}" if r >= 0.01 or r == 0 else f"{r:.2g}"


def _print_verdicts(report: Any) -> None:
    for c in report.captures:
        note = f", {c.damaged} damaged" if c.damaged else ""
        click.echo(f"{c.file}: {c.packets:,} packets, {c.flows:,} flows{note}")
        for line in c.undecoded:
            click.echo(f"  {line}")
    if not report.targets:
        click.echo("No target flow found (targets are matched by TLS/QUIC SNI; see --target-sni).")
        return
    click.echo("")
    head = f"{'target':<14}{'proto':<6}{'decision':<15}{'mechanism':<10}{'rate':>11}{'onset':>10}{'ratio':>8}  {'95% CI':<17}{'p':>9}"
    click.echo(head)
    for v in report.targets:
        onset = "-" if v.onset_bytes is None else f"{v.onset_bytes / 1000:.0f} kB"
        ratio = "-" if v.ratio is None else _fmt_ratio(v.ratio)
        ci = "-" if not v.ratio_ci else f"[{_fmt_ratio(v.ratio_ci[0])}, {_fmt_ratio(v.ratio_ci[1])}]"
        p = "-" if v.p_value is None else f"{v.p_value:.1e}"
        click.echo(f"{v.target[:13]:<14}{v.transport:<6}{v.decision:<15}{v.mechanism:<10}"
                   f"{_fmt_rate(v.rate_bps):>11}{onset:>10}{ratio:>8}  {ci:<17}{p:>9}")
    click.echo("")
    for v in report.targets:
        click.echo(f"{v.target} ({v.transport}): {len(v.flows)} target flow(s), "
                   f"{len(v.control_flows)} control flow(s); target {_fmt_rate(v.target_goodput_bps)}, "
                   f"controls {_fmt_rate(v.control_goodput_bps)}; reasons: {', '.join(v.reasons) or '-'}")


def _register_optional() -> None:
    from .baseline import baseline_group
    from .bench import bench_command
    from .live.cli import report_command, run_command
    from .testbed.cli import serve_command, testbed_group

    main.add_command(serve_command)
    main.add_command(testbed_group)
    main.add_command(baseline_group)
    main.add_command(bench_command)
    main.add_command(run_command)
    main.add_command(report_command)


_register_optional()

if __name__ == "__main__":  # pragma: no cover
    main()
