"""Network namespaces and veth pairs of the testbed.

Topology (one IPv4 /24 bridged *through* the censor, which has no address of its own)::

    ns <name>-cli               ns <name>-cen                 ns <name>-srv
    c0 10.77.0.1/24  <--veth-->  cc0 [censor]  cs0  <--veth-->  s0 10.77.0.2/24

The censor forwards Ethernet frames between ``cc0`` and ``cs0`` in userspace (AF_PACKET), so ARP
and IP both cross it and the client and the server see each other as on-link neighbours. A bridge
(not a router) keeps the TTL and MAC addresses untouched, so a capture at the client looks like a
capture behind a transparent middlebox, which is how a TSPU-style box sits on the path.

Optionally (benchmarks) a second, *direct* veth pair joins client and server on 10.77.1.0/24
(``d0`` 10.77.1.1 <-> ``d1`` 10.77.1.2) so the censor can be compared with a plain link in one run.

Offloads (TSO, GSO, GRO, scatter-gather, TX checksum) are switched off on every veth end: the
censor must see wire-sized frames (<= MTU) with complete checksums, as a real link would carry.
This is done with the ``SIOCETHTOOL`` ioctl so that the ``ethtool`` binary is not needed.

Only this module and :mod:`keepiton_throttle.testbed.cli` run ``ip``; every name this module
creates is derived from the testbed *name*, so several testbeds (tests run in parallel) coexist.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import os
import socket
import struct
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

from ..errors import PrivilegeError, ThrottleError

__all__ = [
    "TestbedError",
    "Topology",
    "create_topology",
    "destroy_topology",
    "in_netns",
    "netns_exec_argv",
    "netns_exists",
    "require_root",
    "run_in_netns",
    "set_offloads",
]

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
SIOCETHTOOL = 0x8946
# include/uapi/linux/ethtool.h: legacy per-feature setters, each takes struct ethtool_value
ETHTOOL_STXCSUM = 0x00000017
ETHTOOL_SSG = 0x00000019
ETHTOOL_STSO = 0x0000001F
ETHTOOL_SGSO = 0x00000024
ETHTOOL_SGRO = 0x0000002C
ETHTOOL_GTSO = 0x0000001E
ETHTOOL_GGSO = 0x00000023


class TestbedError(ThrottleError):
    """The testbed could not be created, queried or removed (one-line message)."""

    __test__ = False  # not a pytest test class despite the name


def require_root(what: str = "the testbed") -> None:
    """Raise :class:`PrivilegeError` unless running as root (namespaces need CAP_SYS_ADMIN)."""
    if os.geteuid() != 0:
        raise PrivilegeError(f"{what} needs root (network namespaces, raw sockets): run it with sudo")


@dataclass(frozen=True)
class Topology:
    """Names and addresses of one testbed; everything is derived from ``name``."""

    name: str
    client_ip: str = "10.77.0.1"
    server_ip: str = "10.77.0.2"
    prefix_len: int = 24
    mtu: int = 1500
    direct_link: bool = False
    direct_client_ip: str = "10.77.1.1"
    direct_server_ip: str = "10.77.1.2"

    client_if = "c0"
    censor_client_if = "cc0"
    censor_server_if = "cs0"
    server_if = "s0"
    direct_client_if = "d0"
    direct_server_if = "d1"

    @property
    def client_ns(self) -> str:
        return f"{self.name}-cli"

    @property
    def censor_ns(self) -> str:
        return f"{self.name}-cen"

    @property
    def server_ns(self) -> str:
        return f"{self.name}-srv"

    @property
    def namespaces(self) -> tuple[str, str, str]:
        return (self.client_ns, self.censor_ns, self.server_ns)

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "namespaces": {"client": self.client_ns, "censor": self.censor_ns, "server": self.server_ns},
            "interfaces": {
                "client": self.client_if,
                "censor_client_side": self.censor_client_if,
                "censor_server_side": self.censor_server_if,
                "server": self.server_if,
            },
            "client_ip": self.client_ip,
            "server_ip": self.server_ip,
            "prefix_len": self.prefix_len,
            "mtu": self.mtu,
            "direct_link": self.direct_link,
        }


def _run(argv: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    except FileNotFoundError as exc:
        raise TestbedError(f"{argv[0]} not found: install iproute2") from exc
    if check and proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip().splitlines()
        raise TestbedError(f"{' '.join(argv)} failed: {msg[-1] if msg else proc.returncode}")
    return proc


def netns_exec_argv(ns: str, argv: Sequence[str]) -> list[str]:
    """The argv that runs ``argv`` inside namespace ``ns``."""
    return ["ip", "netns", "exec", ns, *argv]


def netns_exists(ns: str) -> bool:
    return os.path.exists(f"/run/netns/{ns}")


_libc: ctypes.CDLL | None = None


def _setns(fd: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def in_netns(ns: str) -> Iterator[None]:
    """Move the *calling thread* into namespace ``ns`` for the block, then back.

    Network namespaces are per thread on Linux, and a socket stays in the namespace it was created
    in, so sockets opened inside the block keep working in ``ns`` after it.
    """
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    except FileNotFoundError as exc:
        os.close(own)
        raise TestbedError(f"network namespace {ns!r} does not exist") from exc
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(target)
        os.close(own)


def run_in_netns(ns: str, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
    """Run ``fn(*args, **kwargs)`` in a fresh thread inside namespace ``ns`` and return its result.

    A fresh thread keeps the caller's namespace untouched even if ``fn`` leaves the block
    abnormally; exceptions are re-raised in the caller.
    """
    box: dict[str, object] = {}

    def target() -> None:
        try:
            with in_netns(ns):
                box["result"] = fn(*args, **kwargs)
        except BaseException as exc:  # re-raised in the caller
            box["error"] = exc

    t = threading.Thread(target=target, name=f"netns-{ns}", daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["result"]  # type: ignore[return-value]


def _ethtool(sock: socket.socket, ifname: str, cmd: int, value: int | None = None) -> int:
    data = ctypes.create_string_buffer(struct.pack("=II", cmd, value or 0), 8)
    ifr = struct.pack("16sP", ifname.encode(), ctypes.addressof(data)).ljust(40, b"\0")
    fcntl.ioctl(sock.fileno(), SIOCETHTOOL, ifr)
    return int(struct.unpack("=II", data.raw)[1])


def set_offloads(ns: str, ifnames: Sequence[str], *, enabled: bool = False) -> None:
    """Switch segmentation/checksum offloads of ``ifnames`` in ``ns`` on or off.

    Off means the kernel hands the censor frames of at most MTU bytes with final checksums.
    """
    def apply() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for ifname in ifnames:
                for cmd in (ETHTOOL_STSO, ETHTOOL_SGSO, ETHTOOL_SGRO, ETHTOOL_STXCSUM):
                    _ethtool(s, ifname, cmd, int(enabled))
                if not enabled and (_ethtool(s, ifname, ETHTOOL_GTSO) or _ethtool(s, ifname, ETHTOOL_GGSO)):
                    raise TestbedError(f"could not switch off TSO/GSO on {ifname} in {ns}")

    run_in_netns(ns, apply)


def _veth(ns_a: str, if_a: str, ns_b: str, if_b: str) -> None:
    _run(["ip", "link", "add", if_a, "netns", ns_a, "type", "veth", "peer", "name", if_b, "netns", ns_b])


def create_topology(topo: Topology) -> None:
    """Create the namespaces, veth pairs and addresses of ``topo``.

    On failure everything created so far is removed again and :class:`TestbedError` is raised.
    """
    require_root()
    for ns in topo.namespaces:
        if netns_exists(ns):
            raise TestbedError(f"network namespace {ns!r} already exists: run 'testbed down' first")
    try:
        for ns in topo.namespaces:
            _run(["ip", "netns", "add", ns])
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        cli, cen, srv = topo.namespaces
        _veth(cli, topo.client_if, cen, topo.censor_client_if)
        _veth(cen, topo.censor_server_if, srv, topo.server_if)
        links = [
            (cli, topo.client_if),
            (cen, topo.censor_client_if),
            (cen, topo.censor_server_if),
            (srv, topo.server_if),
        ]
        if topo.direct_link:
            _veth(cli, topo.direct_client_if, srv, topo.direct_server_if)
            links += [(cli, topo.direct_client_if), (srv, topo.direct_server_if)]
        for ns, ifname in links:
            # no IPv6 link-local address: no DAD / router solicitations in the captures
            _run(["ip", "-n", ns, "link", "set", "dev", ifname, "addrgenmode", "none"])
            _run(["ip", "-n", ns, "link", "set", "dev", ifname, "mtu", str(topo.mtu)])
        _run(["ip", "-n", cen, "link", "set", "dev", topo.censor_client_if, "promisc", "on"])
        _run(["ip", "-n", cen, "link", "set", "dev", topo.censor_server_if, "promisc", "on"])
        plen = str(topo.prefix_len)
        _run(["ip", "-n", cli, "addr", "add", f"{topo.client_ip}/{plen}", "dev", topo.client_if])
        _run(["ip", "-n", srv, "addr", "add", f"{topo.server_ip}/{plen}", "dev", topo.server_if])
        if topo.direct_link:
            _run(["ip", "-n", cli, "addr", "add", f"{topo.direct_client_ip}/24", "dev", topo.direct_client_if])
            _run(["ip", "-n", srv, "addr", "add", f"{topo.direct_server_ip}/24", "dev", topo.direct_server_if])
        by_ns: dict[str, list[str]] = {}
        for ns, ifname in links:
            by_ns.setdefault(ns, []).append(ifname)
        for ns, ifnames in by_ns.items():
            set_offloads(ns, ifnames, enabled=False)
        for ns, ifname in links:
            _run(["ip", "-n", ns, "link", "set", "dev", ifname, "up"])
    except BaseException:
        destroy_topology(topo)
        raise


def destroy_topology(topo: Topology) -> list[str]:
    """Delete the namespaces of ``topo`` (their veth ends go with them); idempotent.

    Returns the names that could not be deleted (empty on success).
    """
    left: list[str] = []
    for ns in topo.namespaces:
        if netns_exists(ns):
            proc = _run(["ip", "netns", "del", ns], check=False)
            if proc.returncode != 0 and netns_exists(ns):
                left.append(ns)
    return left
