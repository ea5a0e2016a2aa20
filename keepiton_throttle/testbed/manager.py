"""Bring a testbed up, query it, tear it down.

``up`` creates the namespaces (:mod:`.netns`), starts the censor daemon in the censor namespace
and (unless told not to) ``throttle-check serve`` in the server namespace, and records all of
it in ``<state_root>/<name>/state.json``; ``down`` stops the recorded processes and deletes the
namespaces, and also cleans up after an ``up`` that died half-way. Any failure inside ``up``
undoes what was done before re-raising, so a failed ``up`` leaves nothing behind.

State directory (default ``/run/keepiton_throttle/<name>/``, overridable with the
``KEEPITON_TESTBED_STATE`` environment variable): ``state.json``, ``profile.json`` (what the
censor runs), ``censor.stats.json`` (counters and recent flows, rewritten every 0.5 s),
``censor.log``, ``serve.log``, ``serve.jsonl`` (the server's per-flow timing log).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .netns import (
    TestbedError,
    Topology,
    create_topology,
    destroy_topology,
    netns_exec_argv,
    netns_exists,
    require_root,
)
from .profiles import Profile

__all__ = ["DEFAULT_NAME", "down", "profile_target_snis", "run", "state_dir", "status", "up"]

DEFAULT_NAME = "ktb"
DEFAULT_STATE_ROOT = "/run/keepiton_throttle"
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,15}$")
_MARKER = "keepiton_throttle"  # every process we start has this in its command line
READY_TIMEOUT_S = 15.0


def _check_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise TestbedError(f"testbed name must match {_NAME_RE.pattern}, got {name!r}")
    return name


def state_dir(name: str, state_root: str | None = None) -> Path:
    root = state_root or os.environ.get("KEEPITON_TESTBED_STATE") or DEFAULT_STATE_ROOT
    return Path(root) / _check_name(name)


def _write_state(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    pkg_parent = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = pkg_parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


# ---------------------------------------------------------------------- processes


def _proc_state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def pid_alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie counts as dead and is reaped if it is our child)."""
    st = _proc_state(pid)
    if st is None:
        return False
    if st in ("Z", "X"):
        _reap(pid)
        return False
    return True


def _is_ours(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return _MARKER.encode() in fh.read()
    except OSError:
        return False


def _stop_pid(pid: int, timeout_s: float = 5.0) -> bool:
    """SIGTERM, then SIGKILL, a process we started; True once it is gone."""
    if not pid_alive(pid):
        return True
    if not _is_ours(pid):  # the pid was reused by something else: leave it alone
        return True
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                return True
            time.sleep(0.02)
    return not pid_alive(pid)


def _spawn(ns: str, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as fh:
        return subprocess.Popen(
            netns_exec_argv(ns, argv),
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # survives the CLI process, ignores its terminal's ^C
            env=_child_env(),
        )


def _wait_ready(proc: subprocess.Popen[bytes], ready: Path, log: Path, what: str) -> dict[str, Any]:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        info = _read_json(ready)
        if info is not None:
            return dict(info)
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()
            raise TestbedError(f"{what} exited with code {proc.returncode}: {tail[-1] if tail else 'no output'}")
        time.sleep(0.02)
    raise TestbedError(f"{what} did not become ready within {READY_TIMEOUT_S:.0f} s (see {log})")


# ---------------------------------------------------------------------- up / down / status


def up(
    profile: Profile,
    *,
    name: str = DEFAULT_NAME,
    serve: bool = True,
    serve_port: int = 443,
    serve_args: tuple[str, ...] = (),
    direct_link: bool = False,
    state_root: str | None = None,
) -> dict[str, Any]:
    """Create testbed ``name`` running ``profile``; returns the recorded state."""
    require_root()
    sdir = state_dir(name, state_root)
    topo = Topology(name=name, direct_link=direct_link)
    old = _read_json(sdir / "state.json")
    if old is not None or any(netns_exists(ns) for ns in topo.namespaces):
        if old is not None and all(netns_exists(ns) for ns in topo.namespaces) and pid_alive(
            int(old.get("pids", {}).get("censor") or 0)
        ):
            raise TestbedError(f"testbed {name!r} is already up: run 'testbed down --name {name}' first")
        down(name, state_root=state_root)  # stale leftovers of a crashed run
    sdir.mkdir(parents=True, exist_ok=True)
    state: dict[str, Any] = {
        "name": name,
        "profile": profile.name,
        "profile_data": profile.to_dict(),
        "topology": topo.to_json(),
        "pids": {},
        "files": {
            "state_dir": str(sdir),
            "censor_stats": str(sdir / "censor.stats.json"),
            "censor_log": str(sdir / "censor.log"),
        },
        "server": None,
        "created_unix_ns": time.time_ns(),
    }
    state_path = sdir / "state.json"
    _write_state(state_path, state)
    try:
        create_topology(topo)
        (sdir / "profile.json").write_text(json.dumps(profile.to_dict()), encoding="utf-8")
        for f in ("censor.ready", "serve.ready"):
            (sdir / f).unlink(missing_ok=True)
        censor = _spawn(topo.censor_ns, [
            sys.executable, "-m", "keepiton_throttle.testbed.censor",
            "--profile-json", str(sdir / "profile.json"),
            "--client-if", topo.censor_client_if, "--server-if", topo.censor_server_if,
            "--stats", str(sdir / "censor.stats.json"), "--ready", str(sdir / "censor.ready"),
        ], sdir / "censor.log")
        state["pids"]["censor"] = censor.pid
        _write_state(state_path, state)
        _wait_ready(censor, sdir / "censor.ready", sdir / "censor.log", "censor")
        if serve:
            argv = [
                sys.executable, "-m", "keepiton_throttle.testbed.cli", "serve",
                "--listen", topo.server_ip, "--port", str(serve_port),
                "--log", str(sdir / "serve.jsonl"), "--ready-file", str(sdir / "serve.ready"), *serve_args,
            ]
            server = _spawn(topo.server_ns, argv, sdir / "serve.log")
            state["pids"]["serve"] = server.pid
            state["files"].update(serve_log=str(sdir / "serve.log"), serve_flows=str(sdir / "serve.jsonl"))
            _write_state(state_path, state)
            info = _wait_ready(server, sdir / "serve.ready", sdir / "serve.log", "serve")
            state["server"] = {"ip": topo.server_ip, "tcp_port": info.get("tcp_port"),
                               "quic_port": info.get("quic_port")}
        _write_state(state_path, state)
    except BaseException:
        down(name, state_root=state_root)
        raise
    return state


def down(name: str = DEFAULT_NAME, *, state_root: str | None = None) -> dict[str, Any]:
    """Stop the processes and delete the namespaces of testbed ``name``; idempotent.

    Returns what was removed: ``{"was_up": bool, "stopped": {role: pid}, "namespaces": [...]}``.
    """
    require_root()
    sdir = state_dir(name, state_root)
    state = _read_json(sdir / "state.json") or {}
    stopped: dict[str, int] = {}
    left_pids: list[int] = []
    for role, pid in (state.get("pids") or {}).items():
        if pid and _stop_pid(int(pid)):
            stopped[role] = int(pid)
        elif pid:
            left_pids.append(int(pid))
    topo = Topology(name=name)
    existed = [ns for ns in topo.namespaces if netns_exists(ns)]
    left_ns = destroy_topology(topo)
    if sdir.exists():
        shutil.rmtree(sdir, ignore_errors=True)
    if left_pids or left_ns:
        raise TestbedError(f"could not remove everything: pids {left_pids}, namespaces {left_ns}")
    return {"name": name, "was_up": bool(state) or bool(existed), "stopped": stopped, "namespaces": existed}


def status(name: str = DEFAULT_NAME, *, state_root: str | None = None) -> dict[str, Any]:
    """What is up: the recorded state, liveness of namespaces and processes, censor counters."""
    sdir = state_dir(name, state_root)
    state = _read_json(sdir / "state.json")
    topo = Topology(name=name)
    namespaces = {ns: netns_exists(ns) for ns in topo.namespaces}
    if state is None:
        return {"name": name, "up": False, "healthy": False, "namespaces": namespaces}
    procs = {role: {"pid": pid, "alive": bool(pid) and pid_alive(int(pid))} for role, pid in state["pids"].items()}
    healthy = all(namespaces.values()) and all(p["alive"] for p in procs.values()) and "censor" in procs
    out = dict(state)
    out.update(up=True, healthy=healthy, namespaces=namespaces, processes=procs,
               censor=_read_json(sdir / "censor.stats.json"))
    return out


# ---------------------------------------------------------------------- run (the live check)

#: the target measured on profiles without rules (clean, lossy, slow-link): Twitter's media host
DEFAULT_TARGET_SNI = "abs.twimg.com"


def profile_target_snis(profile: Profile) -> list[str]:
    """One concrete SNI per rule of ``profile``: a bundled target's endpoint host that the rule
    matches, else the rule's first pattern with ``*.`` made ``www.``; profiles without rules
    measure :data:`DEFAULT_TARGET_SNI` (so that a clean path shows "not throttled")."""
    from urllib.parse import urlsplit

    from ..targets import bundled_targets
    from .profiles import sni_matches

    hosts = [h for t in bundled_targets().values() for u in t.endpoints if (h := urlsplit(u).hostname)]
    out: list[str] = []
    for rule in profile.rules:
        sni = next((h for h in hosts if sni_matches(h, rule.patterns)), None)
        if sni is None:
            p = rule.patterns[0]
            sni = "www." + p[2:] if p.startswith("*.") else p.replace("*", "www")
        out.append(sni.lower())
    return list(dict.fromkeys(out)) or [DEFAULT_TARGET_SNI]


def run(
    profile: Profile,
    *,
    name: str = DEFAULT_NAME,
    run_args: tuple[str, ...] | list[str] = (),
    target_snis: list[str] | None = None,
    serve_port: int = 443,
    state_root: str | None = None,
    timeout_s: float | None = None,
) -> dict[str, Any]:
    """Bring testbed ``name`` up with ``profile``, run ``throttle-check run`` in the client
    namespace against ``serve`` (same-server method) with the profile's target SNIs and a
    random control SNI, and tear everything down again, also on failure or Ctrl-C.

    ``run_args`` are passed on to ``run`` (e.g. ``--repeat 2``). Returns ``{"returncode",
    "report"}``: the child's exit status and its JSON report (None if it wrote none).
    """
    snis = target_snis or profile_target_snis(profile)
    state = up(profile, name=name, serve=True, serve_port=serve_port, state_root=state_root)
    proc: subprocess.Popen[bytes] | None = None
    try:
        topo = state["topology"]
        argv = [sys.executable, "-m", "keepiton_throttle.live.cli", "run", "--method", "same-server",
                "--server", f"{topo['server_ip']}:{serve_port}"]
        for sni in snis:
            argv += ["--target-sni", sni]
        argv += [*run_args, "--format", "json"]
        proc = subprocess.Popen(netns_exec_argv(topo["namespaces"]["client"], argv), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, env=_child_env())
        try:
            out, _ = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise TestbedError(f"the live check did not finish within {timeout_s:.0f} s") from None
        try:
            report = json.loads(out) if out.strip() else None
        except ValueError:
            report = None
        return {"returncode": proc.returncode, "report": report, "profile": profile.name, "target_snis": snis}
    finally:
        if proc is not None and proc.poll() is None:
            # Ctrl-C or a timeout: let the child stop its capture, then make sure it is gone
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        down(name, state_root=state_root)
