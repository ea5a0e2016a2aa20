"""Click commands of issue 5: ``serve`` and the ``testbed`` group (``testbed run`` of issue 6).

The lead registers them on the main group with ``main.add_command(serve_command)`` and
``main.add_command(testbed_group)``. Heavy imports (aioquic, cryptography) happen inside the
commands so that ``throttle-check --help`` stays fast. Errors leave as one line: exit 1 for
an application error (:class:`click.ClickException`, including a missing privilege), exit 2
for a usage error.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from ..errors import ThrottleError

__all__ = ["serve_command", "testbed_group"]


def _fail(exc: BaseException) -> click.ClickException:
    return click.ClickException(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


@click.command("serve")
@click.option("--listen", default="0.0.0.0", show_default=True, help="Address to listen on (TCP and UDP).")
@click.option("--port", type=click.IntRange(0, 65535), default=443, show_default=True,
              help="Port number for both TLS/TCP and QUIC/UDP.")
@click.option("--cert", type=click.Path(dir_okay=False, path_type=Path), help="PEM certificate (with --key).")
@click.option("--key", type=click.Path(dir_okay=False, path_type=Path), help="PEM private key (with --cert).")
@click.option("--max-bytes", type=click.IntRange(1), default=100_000_000, show_default=True,
              help="Bytes one connection may download in total; larger requests get 413.")
@click.option("--max-conns-per-addr", type=click.IntRange(1), default=16, show_default=True,
              help="Concurrent connections per client address.")
@click.option("--max-conns", type=click.IntRange(1), default=512, show_default=True,
              help="Concurrent connections in total.")
@click.option("--idle-timeout", type=click.FloatRange(0.1), default=30.0, show_default=True,
              help="Seconds without progress (handshake, request, a write) before a peer is dropped.")
@click.option("--max-duration", type=click.FloatRange(1.0), default=600.0, show_default=True,
              help="Seconds a connection may last.")
@click.option("--log", "log_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Append one JSON line per connection (server-side timing, ns).")
@click.option("--tcp/--no-tcp", default=True, show_default=True, help="Serve HTTP/1.1 over TLS/TCP.")
@click.option("--quic/--no-quic", default=True, show_default=True, help="Serve HTTP/3 over QUIC/UDP.")
@click.option("--quic-retry/--no-quic-retry", default=True, show_default=True,
              help="Validate client addresses with a QUIC Retry before any handshake.")
@click.option("--congestion-control", metavar="NAME", help="TCP congestion control (e.g. bbr, cubic).")
@click.option("--ready-file", type=click.Path(dir_okay=False), hidden=True)
def serve_command(listen: str, port: int, cert: Path | None, key: Path | None, max_bytes: int,
                  max_conns_per_addr: int, max_conns: int, idle_timeout: float, max_duration: float,
                  log_path: Path | None, tcp: bool, quic: bool, quic_retry: bool,
                  congestion_control: str | None, ready_file: str | None) -> None:
    """Serve GET /bytes/N over TLS/TCP (HTTP/1.1) and QUIC (HTTP/3), for any SNI.

    Requests above --max-bytes are answered 413 (not truncated). Without --cert/--key a
    self-signed certificate is generated once in the user's data directory.
    """
    import asyncio

    from ..errors import InputError
    from ..serve import DownloadServer, ServeConfig, run_server

    if (cert is None) != (key is None):
        raise click.UsageError("give both --cert and --key, or neither")
    try:
        config = ServeConfig(
            listen=listen, port=port, cert=cert, key=key, max_bytes=max_bytes,
            max_conns_per_addr=max_conns_per_addr, max_conns=max_conns, idle_timeout_s=idle_timeout,
            max_duration_s=max_duration, log_path=log_path, tcp=tcp, quic=quic, quic_retry=quic_retry,
            congestion_control=congestion_control,
        )
    except InputError as exc:
        raise click.UsageError(str(exc)) from exc

    def on_ready(server: DownloadServer) -> None:
        click.echo(f"serving on {listen} tcp:{server.tcp_port} quic:{server.quic_port} (cert {server.cert})",
                   err=True)
        if ready_file:
            tmp = f"{ready_file}.tmp"
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump({"pid": os.getpid(), "tcp_port": server.tcp_port, "quic_port": server.quic_port}, fh)
            os.replace(tmp, ready_file)

    try:
        asyncio.run(run_server(config, on_ready=on_ready))
    except KeyboardInterrupt:
        pass
    except (ThrottleError, OSError) as exc:
        raise _fail(exc) from exc


@click.group("testbed")
def testbed_group() -> None:
    """Emulate a censor between two network namespaces (needs root)."""


_name_option = click.option("--name", default="ktb", show_default=True,
                            help="Testbed name; namespaces are NAME-cli, NAME-cen, NAME-srv.")


@testbed_group.command("up")
@click.option("--profile", "profile_ref", required=True, metavar="NAME|PATH.toml",
              help="A bundled profile (clean, lossy, twitter-2021, youtube-2024, slow-link) or a TOML file.")
@_name_option
@click.option("--serve/--no-serve", default=True, show_default=True,
              help="Start 'serve' on the server address (port --port).")
@click.option("--port", type=click.IntRange(1, 65535), default=443, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the state as JSON.")
def testbed_up(profile_ref: str, name: str, serve: bool, port: int, as_json: bool) -> None:
    """Create client/censor/server namespaces and start the censor daemon."""
    from . import manager
    from .profiles import ProfileError, load_profile

    try:
        profile = load_profile(profile_ref)
    except ProfileError as exc:
        raise click.BadParameter(str(exc), param_hint="--profile") from exc
    try:
        state = manager.up(profile, name=name, serve=serve, serve_port=port)
    except ThrottleError as exc:
        raise _fail(exc) from exc
    if as_json:
        click.echo(json.dumps(state, indent=1))
        return
    topo = state["topology"]
    ns = topo["namespaces"]
    click.echo(f"testbed {name} up with profile {profile.name}: {profile.description.splitlines()[0] if profile.description else ''}")
    click.echo(f"  client {topo['client_ip']} in {ns['client']}, server {topo['server_ip']} in {ns['server']}, "
               f"censor pid {state['pids']['censor']} in {ns['censor']}")
    if state.get("server"):
        click.echo(f"  serve pid {state['pids']['serve']} on {topo['server_ip']}:{port} (TCP and UDP)")
        click.echo(f"  try: ip netns exec {ns['client']} curl -sk --resolve abs.twimg.com:{port}:{topo['server_ip']} "
                   f"https://abs.twimg.com:{port}/bytes/100000 -o /dev/null -w '%{{speed_download}}\\n'")
    click.echo(f"  state: {state['files']['state_dir']}")


@testbed_group.command("down")
@_name_option
def testbed_down(name: str) -> None:
    """Stop the censor and server and delete the namespaces."""
    from . import manager

    try:
        res = manager.down(name)
    except ThrottleError as exc:
        raise _fail(exc) from exc
    if res["was_up"]:
        click.echo(f"testbed {name} down (stopped {', '.join(res['stopped']) or 'nothing'}; "
                   f"removed {len(res['namespaces'])} namespaces)")
    else:
        click.echo(f"testbed {name} was not up: nothing to do")


def _status_text(st: dict[str, Any]) -> str:
    if not st["up"]:
        return f"testbed {st['name']} is not up"
    lines = [f"testbed {st['name']}: {'healthy' if st['healthy'] else 'DEGRADED'}, profile {st['profile']}"]
    for role, p in st["processes"].items():
        lines.append(f"  {role}: pid {p['pid']} {'running' if p['alive'] else 'NOT RUNNING'}")
    for ns, ok in st["namespaces"].items():
        if not ok:
            lines.append(f"  namespace {ns} MISSING")
    c = st.get("censor")
    if c:
        cnt = c["counters"]
        lines.append(f"  frames up/down {cnt['frames']['up']}/{cnt['frames']['down']}, "
                     f"forwarded {cnt['forwarded']['up']}/{cnt['forwarded']['down']}")
        drops = {k: v["up"] + v["down"] for k, v in cnt.items() if k.startswith("dropped") and v["up"] + v["down"]}
        if drops:
            lines.append("  drops: " + ", ".join(f"{k[8:]} {v}" for k, v in drops.items()))
        lines.append(f"  flows {c['flows_total']}, matched {c['flows_matched']}")
        for f in c["flows"][-10:]:
            lines.append(f"    {f['proto']} {f['client'][0]}:{f['client'][1]} -> {f['server'][0]}:{f['server'][1]} "
                         f"sni={f['sni']} {f['dpi']}{' ' + f['action'] if f['action'] else ''} {f['bytes']} B")
    return "\n".join(lines)


@testbed_group.command("status")
@_name_option
@click.option("--json", "as_json", is_flag=True, help="Print the full status as JSON.")
def testbed_status(name: str, as_json: bool) -> None:
    """Show whether the testbed is up, its processes and the censor's counters and flows.

    Exit code 0 if the testbed is up and healthy, 1 otherwise.
    """
    from . import manager

    try:
        st = manager.status(name)
    except ThrottleError as exc:
        raise _fail(exc) from exc
    click.echo(json.dumps(st, indent=1) if as_json else _status_text(st))
    if not st["healthy"]:
        raise SystemExit(1)


@testbed_group.command("run")
@click.option("--profile", "profile_ref", required=True, metavar="NAME|PATH.toml",
              help="A bundled profile (clean, lossy, twitter-2021, youtube-2024, slow-link) or a TOML file.")
@_name_option
@click.option("--json", "as_json", is_flag=True, help="Print the run's JSON report.")
@click.option("--target-sni", "target_snis", multiple=True, metavar="SNI",
              help="Target SNI (repeatable). Default: one per rule of the profile (abs.twimg.com without rules).")
@click.option("--control-sni", metavar="SNI", help="Control SNI (default: random).")
@click.option("--transport", "transports", multiple=True, type=click.Choice(["tcp", "quic"]),
              help="Transports (repeatable). Default: both.")
@click.option("--repeat", type=click.IntRange(1, 50), help="Downloads of the target and of the control.")
@click.option("--duration", type=click.FloatRange(0.1, 600), help="Seconds each download reads.")
@click.option("--max-bytes", type=click.IntRange(1), help="Bytes at most per download.")
@click.option("--timeout", type=click.FloatRange(1, 3600), help="Seconds at most per download.")
@click.option("--no-capture", is_flag=True, help="Judge from TCP_INFO instead of a capture.")
@click.option("--no-confirm", is_flag=True, help="Skip the split-ClientHello confirmation.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Output directory of the run.")
def testbed_run(profile_ref: str, name: str, as_json: bool, target_snis: tuple[str, ...], control_sni: str | None,
                transports: tuple[str, ...], repeat: int | None, duration: float | None, max_bytes: int | None,
                timeout: float | None, no_capture: bool, no_confirm: bool, out_dir: str | None) -> None:
    """Bring the testbed up, run the live check against it, print the verdicts, tear it down.

    The live check ('throttle-check run --method same-server') runs in the client namespace
    against 'serve' in the server namespace, with the profile's target SNIs and a control SNI.
    Everything is removed afterwards, also after an error or Ctrl-C. Exit status: that of the
    run (0 done, 1 could not run).
    """
    from . import manager
    from .profiles import ProfileError, load_profile

    try:
        profile = load_profile(profile_ref)
    except ProfileError as exc:
        raise click.BadParameter(str(exc), param_hint="--profile") from exc
    args: list[str] = []
    for opt, val in (("--control-sni", control_sni), ("--repeat", repeat), ("--duration", duration),
                     ("--max-bytes", max_bytes), ("--timeout", timeout), ("--out", out_dir)):
        if val is not None:
            args += [opt, str(val)]
    for t in transports:
        args += ["--transport", t]
    if no_capture:
        args.append("--no-capture")
    if no_confirm:
        args.append("--no-confirm")
    try:
        res = manager.run(profile, name=name, run_args=args, target_snis=list(target_snis) or None)
    except ThrottleError as exc:
        raise _fail(exc) from exc
    report = res["report"]
    if report is None:
        raise SystemExit(res["returncode"] or 1)
    if as_json:
        click.echo(json.dumps(report, indent=1))
    else:
        from ..live.cli import print_table

        click.echo(f"testbed {name}, profile {profile.name}: target SNI(s) {', '.join(res['target_snis'])}")
        print_table(report)
    if res["returncode"]:
        raise SystemExit(res["returncode"])


@click.group()
def _standalone() -> None:
    """keepiton_throttle issue-5 commands (until the main CLI registers them)."""


_standalone.add_command(serve_command)
_standalone.add_command(testbed_group)

if __name__ == "__main__":
    _standalone()
