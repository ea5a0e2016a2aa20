"""``throttle-check run`` and ``throttle-check report``: thin click commands over :mod:`.run`.

The lead registers ``run_command`` and ``report_command`` on the main group; until then
``python -m keepiton_throttle.live.cli run|report`` runs them. Scapy, aioquic, NumPy and
matplotlib are imported inside the commands, so ``--help`` starts fast.

Exit status: 0 done; 1 could not run (no network, no capture privilege, a capture error);
2 bad usage; 3 a target is throttled (only with ``--fail-on-throttled``).
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

__all__ = ["main", "print_table", "report_command", "run_command", "target_specs"]

EXIT_THROTTLED = 3
FORMATS = ("text", "json", "ooni")


def _fmt_rate(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v / 1e6:.2f} Mb/s" if v >= 1e6 else f"{v / 1e3:.0f} kb/s"


def print_table(report: dict[str, Any], echo: Any = click.echo) -> None:
    """The console verdict table of a run report (also used by ``report`` and ``testbed run``)."""
    for w in report.get("warnings") or []:
        echo(f"warning: {w}")
    targets = report.get("targets") or []
    if not targets:
        echo("No target was measured.")
        return
    echo(f"{'target':<12}{'method':<12}{'proto':<6}{'decision':<15}{'mechanism':<10}{'rate':>10}"
         f"{'ratio':>8}  {'trigger':<12}{'symptom / notes'}")
    for e in targets:
        ratio = "-" if e.get("ratio") is None else f"{e['ratio']:.3f}"
        trig = (e.get("trigger") or {}).get("conclusion", "-") if (e.get("trigger") or {}).get("tested") else "-"
        sym = e.get("symptom")
        extra = (f"{sym['failure']} during {sym['operation']}" if sym else
                 ", ".join(n for n in e.get("notes", []) if n not in ("tls_verification_off",)) or "-")
        echo(f"{e['target'][:11]:<12}{e['method']:<12}{e['transport']:<6}{e['decision']:<15}"
             f"{e.get('mechanism') or '-':<10}{_fmt_rate(e.get('rate_bps')):>10}{ratio:>8}  {trig:<12}{extra}")
    files = report.get("files") or {}
    shown = [f for f in [files.get("report"), *(files.get("pcaps") or []), *(files.get("plots") or []),
                         files.get("ooni")] if f]
    if shown:
        echo("")
        echo(f"files ({files.get('directory') or '.'}): {', '.join(shown)}")


def _concrete_sni(patterns: tuple[str, ...], endpoints: tuple[str, ...]) -> str:
    """A concrete SNI for a target: its first endpoint's host when that matches its patterns,
    else its first pattern with a leading ``*.`` replaced by ``www.``."""
    import fnmatch
    from urllib.parse import urlsplit

    for url in endpoints:
        host = (urlsplit(url).hostname or "").lower()
        if host and any(fnmatch.fnmatchcase(host, p.lower()) for p in patterns):
            return host
    p = patterns[0]
    return "www." + p[2:] if p.startswith("*.") else p.replace("*", "www")


def target_specs(names: tuple[str, ...], snis: tuple[str, ...], urls: tuple[str, ...],
                 files: tuple[str, ...]) -> list[Any]:
    """TargetSpecs from the targets list (``names``; all when nothing is chosen), ad hoc SNIs
    (named after the listed target they match, else after themselves) and ad hoc URLs."""
    from urllib.parse import urlsplit

    from ..errors import InputError
    from ..targets import load_targets
    from .run import TargetSpec

    tmap = load_targets(list(files))
    missing = [n for n in names if n not in tmap]
    if missing:
        raise InputError(f"unknown target(s): {', '.join(missing)} (known: {', '.join(sorted(tmap))})")
    out: list[Any] = []
    chosen = list(names) if (names or snis or urls) else list(tmap)
    for n in chosen:
        t = tmap[n]
        out.append(TargetSpec(n, _concrete_sni(t.sni, t.endpoints), tuple(t.endpoints), tuple(t.controls)))
    for sni in snis:
        if not sni or any(c.isspace() or c in "/*?" for c in sni):
            raise InputError(f"--target-sni: {sni!r} is not a host name")
        hit = next((t for t in tmap.values() if t.matches(sni)), None)
        name = hit.name if hit is not None else sni.lower()
        out.append(TargetSpec(name, sni.lower(), (f"https://{sni.lower()}/",),
                              tuple(hit.controls) if hit is not None else ()))
    for url in urls:
        host = (urlsplit(url).hostname or "").lower()
        if not url.startswith("https://") or not host:
            raise InputError(f"--url: {url!r} is not an https URL")
        hit = next((t for t in tmap.values() if t.matches(host)), None)
        out.append(TargetSpec(hit.name if hit is not None else host, host, (url,),
                              tuple(hit.controls) if hit is not None else ()))
    seen: dict[str, Any] = {}
    for spec in out:  # a name measured twice would pool unrelated flows
        if spec.name in seen and seen[spec.name] != spec:
            raise InputError(f"target {spec.name!r} given twice with different names or URLs")
        seen[spec.name] = spec
    return list(seen.values())


def _parse_server(value: str) -> tuple[str, int]:
    host, port = value, 443
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        if rest.startswith(":"):
            port = int(rest[1:])
    elif value.count(":") == 1:
        host, p = value.split(":")
        port = int(p)
    if not host or not 0 < port < 65536:
        raise ValueError(value)
    return host, port


def _parse_resolve(values: tuple[str, ...]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for v in values:
        host, sep, addr = v.partition(":")
        if not sep or not host or not addr:
            raise click.BadParameter(f"{v!r}: expected HOST:ADDRESS", param_hint="--resolve")
        out.setdefault(host.lower(), []).append(addr.strip("[]"))
    return out


def _write_outputs(report: dict[str, Any], out_dir: Path, *, fmt: str, plots: bool,
                   echo_err: Any) -> dict[str, Any]:
    """Plots, report.json (and the OONI file); returns the report with its file names."""
    from .run import unique_path, with_files, write_new

    names: dict[str, str] = {}
    if plots:
        try:
            from .plots import render_target_plots
        except ImportError as exc:
            echo_err(f"warning: no plots ({exc.name or 'matplotlib'} is not installed)")
        else:
            for target, png in render_target_plots(report).items():
                p = unique_path(out_dir, f"plot-{_safe(target)}.png")
                write_new(p, png)
                names[target] = p.name
    rpath = unique_path(out_dir, "report.json")
    opath = unique_path(out_dir, "measurement.ooni.jsonl") if fmt == "ooni" else None
    report = with_files(report, plots=list(names.values()), plots_by_target=names, report=rpath.name, ooni=opath.name if opath else None,
                        directory=str(out_dir))
    write_new(rpath, (json.dumps(report, indent=1) + "\n").encode())
    if opath is not None:
        from .ooni import to_ooni_lines

        write_new(opath, to_ooni_lines(report).encode())
    return report


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:60] or "target"


@click.command("run")
@click.option("--target", "target_names", multiple=True, metavar="NAME",
              help="A target of the targets list (repeatable). Default: every target of the list.")
@click.option("--target-sni", "target_snis", multiple=True, metavar="SNI",
              help="An ad hoc target by server name (repeatable); named after the listed target it matches.")
@click.option("--url", "urls", multiple=True, metavar="URL",
              help="An ad hoc target by https URL for the direct method (repeatable).")
@click.option("--targets", "targets_files", multiple=True, type=click.Path(dir_okay=False),
              help="A TOML targets file adding to (or overriding) the bundled list (endpoints, controls).")
@click.option("--server", metavar="HOST[:PORT]",
              help="A 'throttle-check serve' instance for the same-server SNI test.")
@click.option("--control-sni", metavar="SNI", help="Control SNI of the same-server test (default: random).")
@click.option("--control-url", "control_urls", multiple=True, metavar="URL",
              help="Control endpoint of the direct method (repeatable; default: the targets file's or built-in ones).")
@click.option("--method", "methods", multiple=True, type=click.Choice(["direct", "same-server"]),
              help="Methods to run (repeatable). Default: direct, plus same-server with --server.")
@click.option("--transport", "transports", multiple=True, type=click.Choice(["tcp", "quic"]),
              help="Transports (repeatable). Default: both.")
@click.option("--repeat", type=click.IntRange(1, 50), default=3, show_default=True,
              help="Downloads of each target and of the controls, interleaved.")
@click.option("--duration", type=click.FloatRange(0.1, 600), default=2.0, show_default=True,
              help="Seconds each download keeps reading after its request (at least 64 KiB are read).")
@click.option("--max-bytes", type=click.IntRange(1), default=10_000_000, show_default=True,
              help="Bytes at most per download.")
@click.option("--timeout", type=click.FloatRange(1, 3600), default=20.0, show_default=True,
              help="Seconds at most per download (connect to last byte).")
@click.option("--no-capture", is_flag=True,
              help="Do not capture packets; judge from TCP_INFO and read timings (no privileges needed).")
@click.option("--no-confirm", is_flag=True, help="Skip the split-ClientHello trigger confirmation.")
@click.option("--keep-ip", is_flag=True, help="Keep this machine's IP address in the JSON report.")
@click.option("--insecure", is_flag=True,
              help="Do not verify the certificates of direct endpoints (said in the report).")
@click.option("--resolve", "resolves", multiple=True, metavar="HOST:ADDRESS",
              help="Use ADDRESS for HOST instead of DNS (repeatable), like curl's --resolve.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Output directory (default ./keepiton-run-<UTC time>/); existing files are never overwritten.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report (same as --format json).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="text", show_default=True,
              help="Console output: a verdict table, the JSON report, or OONI measurements (JSON lines).")
@click.option("--no-plots", is_flag=True, help="Do not draw the PNG plots.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the resampling tests and random choices.")
@click.option("--fail-on-throttled", is_flag=True, help=f"Exit with status {EXIT_THROTTLED} if a target is throttled.")
def run_command(target_names: tuple[str, ...], target_snis: tuple[str, ...], urls: tuple[str, ...],
                targets_files: tuple[str, ...], server: str | None, control_sni: str | None,
                control_urls: tuple[str, ...], methods: tuple[str, ...], transports: tuple[str, ...],
                repeat: int, duration: float, max_bytes: int, timeout: float, no_capture: bool,
                no_confirm: bool, keep_ip: bool, insecure: bool, resolves: tuple[str, ...], out_dir: Path | None,
                as_json: bool, fmt: str, no_plots: bool, seed: int, fail_on_throttled: bool) -> None:
    """Measure, from this machine, whether targets are throttled, and write the evidence.

    \b
    For each target: direct downloads (its endpoint over HTTPS/TCP and HTTP/3, against control
    endpoints on other addresses) and, with --server, the same-server test (the target's SNI
    and a control SNI to one 'throttle-check serve' address; certificates not verified).
    Controls come first and alternate with targets. A throttled result is repeated with the
    ClientHello split inside the SNI to confirm an SNI trigger. Packets of the measured flows
    are captured (AF_PACKET ring, BPF; root or CAP_NET_RAW) into pcapng files and analysed as
    'analyze' does; --no-capture judges from TCP_INFO instead.
    \b
    Writes into --out: report.json (schema keepiton_throttle.run/1; your IP redacted unless
    --keep-ip), capture-*.pcapng (raw, with addresses), plot-<target>.png.
    """
    from ..errors import InputError, PrivilegeError, ThrottleError
    from .measure import Budget
    from .run import (
        METHOD_DIRECT,
        METHOD_SAME_SERVER,
        NoNetworkError,
        RunConfig,
        default_out_dir,
        run_live,
    )

    if as_json:
        fmt = "json"
    try:
        specs = target_specs(target_names, target_snis, urls, targets_files)
        srv = None
        if server:
            try:
                srv = _parse_server(server)
            except ValueError:
                raise click.BadParameter(f"{server!r}: expected HOST[:PORT]", param_hint="--server") from None
        meths = tuple(m.replace("-", "_") for m in methods) or (
            (METHOD_DIRECT, METHOD_SAME_SERVER) if srv else (METHOD_DIRECT,))
        cfg = RunConfig(targets=tuple(specs), methods=meths, server=srv, control_sni=control_sni,
                        control_urls=control_urls, transports=transports or ("tcp", "quic"), repeat=repeat,
                        budget=Budget(duration_s=duration, max_bytes=max_bytes, timeout_s=max(timeout, duration + 1)),
                        capture=not no_capture, confirm=not no_confirm, keep_ip=keep_ip,
                        pinned=_parse_resolve(resolves), seed=seed, verify_direct=not insecure)
    except (InputError, ValueError) as exc:
        raise click.UsageError(str(exc)) from None

    def echo_err(line: str) -> None:
        click.echo(line, err=True)

    if cfg.capture:
        from .capture import open_packet_socket

        try:
            open_packet_socket().close()
        except PrivilegeError as exc:
            raise click.ClickException(str(exc)) from None
    now = datetime.now(UTC)
    out = out_dir or default_out_dir(now)
    try:
        result = run_live(cfg, out, progress=echo_err)
    except NoNetworkError as exc:
        raise click.ClickException(str(exc)) from None
    except (ThrottleError, OSError) as exc:
        raise click.ClickException(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    from .run import finish_report

    report = finish_report(result, keep_ip=keep_ip)
    report = _write_outputs(report, out, fmt=fmt, plots=not no_plots, echo_err=echo_err)
    _emit(report, fmt)
    if fail_on_throttled and any(e["decision"] == "throttled" for e in report["targets"]):
        sys.exit(EXIT_THROTTLED)


def _emit(report: dict[str, Any], fmt: str) -> None:
    if fmt == "json":
        click.echo(json.dumps(report, indent=1))
    elif fmt == "ooni":
        from .ooni import to_ooni_lines

        click.echo(to_ooni_lines(report), nl=False)
    else:
        print_table(report)


@click.command("report")
@click.argument("report_file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report (same as --format json).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="text", show_default=True,
              help="A verdict table, the JSON report, or OONI measurements (JSON lines).")
@click.option("--html", "html_out", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write a single-file HTML report (plots embedded, no external resources).")
def report_command(report_file: Path, as_json: bool, fmt: str, html_out: Path | None) -> None:
    """Re-render a REPORT_FILE written by 'throttle-check run'."""
    if as_json:
        fmt = "json"
    try:
        report = json.loads(report_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"{report_file}: not a readable JSON report ({exc})") from None
    if not isinstance(report, dict) or not str(report.get("schema", "")).startswith("keepiton_throttle.run/"):
        raise click.ClickException(f"{report_file}: not a 'throttle-check run' report (schema "
                                   f"{report.get('schema') if isinstance(report, dict) else None!r})")
    if html_out is not None:
        from .html import render_html, report_pngs

        pngs, how = report_pngs(report, report_file.parent)
        try:
            with open(html_out, "x", encoding="utf-8") as fh:
                fh.write(render_html(report, pngs))
        except FileExistsError:
            raise click.ClickException(f"{html_out} exists: not overwriting it") from None
        except OSError as exc:
            raise click.ClickException(f"{html_out}: {exc.strerror or exc}") from None
        click.echo(f"wrote {html_out} ({len(pngs)} plot(s), {how})", err=True)
    _emit(report, fmt)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """keepiton_throttle live check (until the main 'throttle-check' group registers it)."""


main.add_command(run_command)
main.add_command(report_command)

if __name__ == "__main__":  # pragma: no cover
    main()
