"""Packet capture for the live check: a TPACKET_V3 ring behind a BPF filter, written as pcapng.

The only module of :mod:`keepiton_throttle.live` that imports Scapy, and only for two things it
does well: compiling a libpcap filter expression to classic BPF (``compile_filter``) and
looking up the interface that routes to an address. Packets never pass through Scapy: the
kernel copies the frames that pass the filter into a shared-memory ring (``PACKET_MMAP``,
``TPACKET_V3``: one poll wakes us for a whole block of packets, timestamps come with them),
and a plain loop turns each block into pcapng Enhanced Packet Blocks. No per-packet
dissection happens in Python.

**Snap length by direction.** Client->server packets are kept whole (up to 65,535 bytes): the
SNI lives in the ClientHello, which may span two TCP segments (and a split ClientHello is one of
our own probes), and QUIC Initials must be whole to be decrypted; the client sends little else
(requests and header-only ACKs), so this costs almost nothing. Server->client packets, the bulk
of every download, are cut to 256 bytes: Ethernet (14) + IPv6 (40) + TCP with every option (60)
is 114 bytes, tunnels (VXLAN, GRE) add about 50, and the QUIC short header with its spin bit
follows the UDP header; byte counts come from the IP length fields, not from the captured
bytes, so nothing the analysis needs is lost. The direction is decided inside the BPF program:
the filter of packets *to* a measured endpoint and the filter of packets *from* one are
compiled separately and chained, each accepting with its own snap length.

**Drops.** ``PACKET_STATISTICS`` is read when the capture stops: ``tp_drops`` counts packets
the kernel had to discard because the ring was full. A capture with drops is flagged in the
report (and in an Interface Statistics Block of the pcapng file), never silently used.

**Privileges.** Opening an ``AF_PACKET`` socket needs CAP_NET_RAW; without it the capture
raises :class:`~keepiton_throttle.errors.PrivilegeError` with :data:`PRIVILEGE_HINT`.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

from .. import __version__
from ..errors import CaptureError, PrivilegeError

__all__ = [
    "PRIVILEGE_HINT",
    "SNAPLEN_DOWN",
    "SNAPLEN_UP",
    "CaptureStats",
    "PcapngWriter",
    "RingCapture",
    "chain_by_direction",
    "compile_bpf",
    "convert_block",
    "direction_filters",
    "interface_for",
    "link_of",
    "open_packet_socket",
]

#: client -> server packets are kept whole (see the module docstring)
SNAPLEN_UP = 65535
#: server -> client packets are cut to their headers
SNAPLEN_DOWN = 256

PRIVILEGE_HINT = (
    "packet capture needs CAP_NET_RAW and CAP_NET_ADMIN: run as root (sudo throttle-check run ...), "
    "or grant them once with 'sudo setcap cap_net_raw,cap_net_admin+eip \"$(readlink -f \"$(command -v python3)\")\"' "
    "(every script run by that interpreter then has them), or measure without a capture with --no-capture "
    "(TCP_INFO: less evidence, see the report's limitations)"
)

# linux/if_packet.h, linux/socket.h, linux/filter.h
SOL_PACKET = 263
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
TPACKET_V3 = 2
TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
SO_ATTACH_FILTER = 26
ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
SKF_AD_OFF = -0x1000
SKF_AD_PKTTYPE = 4

# classic BPF opcodes (linux/bpf_common.h)
BPF_LD_W_ABS = 0x20
BPF_JMP_JA = 0x05
BPF_JMP_JEQ_K = 0x15
BPF_RET_K = 0x06
BPF_RET_A = 0x16

# pcapng (draft-ietf-opsawg-pcapng sec. 4): block types and option codes
PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_IDB = 0x00000001
PCAPNG_ISB = 0x00000005
PCAPNG_EPB = 0x00000006
PCAPNG_BOM = 0x1A2B3C4D
OPT_ENDOFOPT = 0
OPT_COMMENT = 1
SHB_USERAPPL = 4
IF_NAME = 2
IF_TSRESOL = 9
ISB_STARTTIME = 2
ISB_ENDTIME = 3
ISB_IFRECV = 4
ISB_IFDROP = 5

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
DLT_EN10MB = 1
DLT_RAW = 12  # what libpcap calls LINKTYPE_RAW when compiling

ARPHRD_ETHER = 1
ARPHRD_LOOPBACK = 772

Insn = tuple[int, int, int, int]  # (code, jt, jf, k) of a classic BPF instruction


# ---------------------------------------------------------------------- pcapng writer

_PAD = (b"", b"\0\0\0", b"\0\0", b"\0")


def _opt(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + value + _PAD[len(value) & 3]


def _block(btype: int, body: bytes) -> bytes:
    n = 12 + len(body)
    return struct.pack("<II", btype, n) + body + struct.pack("<I", n)


class PcapngWriter:
    """A minimal little-endian pcapng writer: one section, interfaces with nanosecond
    timestamps (``if_tsresol`` = 9), Enhanced Packet Blocks, Interface Statistics Blocks.

    ``fh`` is a binary file opened for writing; the Section Header Block is written at once.
    The ring reader writes EPBs itself (:func:`convert_block`) with the same layout as
    :meth:`write_packet`.
    """

    def __init__(self, fh: BinaryIO, *, comment: str | None = None) -> None:
        self.fh = fh
        self.interfaces = 0
        opts = _opt(SHB_USERAPPL, f"keepiton_throttle {__version__}".encode())
        if comment:
            opts += _opt(OPT_COMMENT, comment.encode())
        opts += _opt(OPT_ENDOFOPT, b"")
        # section length -1: not computed (allowed by the spec)
        fh.write(_block(PCAPNG_SHB, struct.pack("<IHHq", PCAPNG_BOM, 1, 0, -1) + opts))

    def add_interface(self, linktype: int, snaplen: int, name: str = "") -> int:
        """Write an Interface Description Block; returns the interface id for packets."""
        opts = b""
        if name:
            opts += _opt(IF_NAME, name.encode())
        opts += _opt(IF_TSRESOL, bytes([9])) + _opt(OPT_ENDOFOPT, b"")
        self.fh.write(_block(PCAPNG_IDB, struct.pack("<HHI", linktype, 0, snaplen) + opts))
        self.interfaces += 1
        return self.interfaces - 1

    def write_packet(self, iface: int, ts_ns: int, data: bytes, wirelen: int | None = None) -> None:
        """One Enhanced Packet Block (timestamp in ns since the epoch)."""
        n = len(data)
        body = struct.pack("<IIIII", iface, ts_ns >> 32, ts_ns & 0xFFFFFFFF, n,
                           n if wirelen is None else wirelen) + data + _PAD[n & 3]
        self.fh.write(_block(PCAPNG_EPB, body))

    def write_stats(self, iface: int, *, ts_ns: int, received: int, dropped: int,
                    start_ns: int | None = None) -> None:
        """An Interface Statistics Block: packets received and dropped by the kernel."""
        opts = b""
        if start_ns is not None:
            opts += _opt(ISB_STARTTIME, struct.pack("<II", start_ns >> 32, start_ns & 0xFFFFFFFF))
        opts += _opt(ISB_ENDTIME, struct.pack("<II", ts_ns >> 32, ts_ns & 0xFFFFFFFF))
        opts += _opt(ISB_IFRECV, struct.pack("<Q", received))
        opts += _opt(ISB_IFDROP, struct.pack("<Q", dropped)) + _opt(OPT_ENDOFOPT, b"")
        self.fh.write(_block(PCAPNG_ISB, struct.pack("<III", iface, ts_ns >> 32, ts_ns & 0xFFFFFFFF) + opts))


# ---------------------------------------------------------------------- the ring's blocks

# struct tpacket_block_desc: version, offset_to_priv, then tpacket_hdr_v1: block_status,
# num_pkts, offset_to_first_pkt, blk_len, ... (linux/if_packet.h)
_BLOCK_STATUS_OFF = 8
_BLOCK_HDR = struct.Struct("<II")  # num_pkts, offset_to_first_pkt (at offset 12)
# struct tpacket3_hdr: tp_next_offset, tp_sec, tp_nsec, tp_snaplen, tp_len, tp_status, tp_mac
_PKT_HDR = struct.Struct("<IIIIIIH")
_EPB_HEAD = struct.Struct("<IIIIIII")
_U32 = struct.Struct("<I")


def convert_block(ring: mmap.mmap | bytes | bytearray, block_off: int, iface: int, out: bytearray) -> int:
    """Append one EPB per packet of the TPACKET_V3 block at ``block_off`` to ``out``.

    Returns the number of packets. Per packet: one header unpack, one EPB header pack and one
    copy of the captured bytes; nothing is parsed.
    """
    num, first = _BLOCK_HDR.unpack_from(ring, block_off + 12)
    off = block_off + first
    unpack = _PKT_HDR.unpack_from
    head = _EPB_HEAD.pack
    tail = _U32.pack
    view = memoryview(ring)
    try:
        for _ in range(num):
            nxt, sec, nsec, snap, wlen, _status, mac = unpack(ring, off)
            ts = sec * 1_000_000_000 + nsec
            pad = -snap & 3
            total = 32 + snap + pad
            out += head(PCAPNG_EPB, total, iface, ts >> 32, ts & 0xFFFFFFFF, snap, wlen)
            start = off + mac
            out += view[start:start + snap]
            if pad:
                out += _PAD[4 - pad]
            out += tail(total)
            off += nxt
    finally:
        view.release()
    return int(num)


# ---------------------------------------------------------------------- BPF


def compile_bpf(expr: str, *, linktype: int) -> list[Insn]:
    """Compile a libpcap filter expression for ``linktype`` (a DLT) with Scapy's libpcap binding."""
    try:
        from scapy.arch.common import compile_filter, free_filter
        from scapy.error import Scapy_Exception
    except ImportError as exc:  # pragma: no cover - scapy is a dependency
        raise CaptureError(f"cannot compile the capture filter: {exc}") from exc
    try:
        prog = compile_filter(expr, linktype=linktype)
    except (ImportError, Scapy_Exception, OSError) as exc:
        raise CaptureError(f"cannot compile the capture filter {expr!r}: {exc} "
                           "(libpcap is needed: install libpcap0.8, or use --no-capture)") from exc
    try:
        return [(int(prog.bf_insns[i].code), int(prog.bf_insns[i].jt), int(prog.bf_insns[i].jf),
                 int(prog.bf_insns[i].k)) for i in range(prog.bf_len)]
    finally:
        free_filter(prog)


def chain_by_direction(up: Sequence[Insn], down: Sequence[Insn], *, snap_up: int, snap_down: int,
                       drop_outgoing: bool = False) -> list[Insn]:
    """One program from two: a packet ``up`` accepts is kept to ``snap_up`` bytes, else one
    ``down`` accepts to ``snap_down``, else it is rejected.

    Every accepting ``ret #k`` (k > 0) of ``up`` becomes a jump to ``ret #snap_up``, every
    rejecting ``ret #0`` a jump to the start of ``down``; likewise for ``down``. Jumps stay
    forward, as classic BPF requires. ``drop_outgoing`` first rejects packets the host sends
    (the loopback interface shows every packet twice: once sent, once received).
    """
    for prog in (up, down):
        if not prog:
            raise ValueError("empty BPF program")
        if any(code == BPF_RET_A for code, _, _, _ in prog):
            raise ValueError("BPF program returns the accumulator: cannot chain it")
    out: list[Insn] = []
    if drop_outgoing:
        out += [(BPF_LD_W_ABS, 0, 0, (SKF_AD_OFF + SKF_AD_PKTTYPE) & 0xFFFFFFFF),
                (BPF_JMP_JEQ_K, 0, 1, PACKET_OUTGOING), (BPF_RET_K, 0, 0, 0)]
    base_up = len(out)
    base_down = base_up + len(up)
    ret_up = base_down + len(down)
    ret_down, ret_zero = ret_up + 1, ret_up + 2
    for base, prog, accept, reject in ((base_up, up, ret_up, base_down), (base_down, down, ret_down, ret_zero)):
        for i, (code, jt, jf, k) in enumerate(prog):
            if code == BPF_RET_K:
                out.append((BPF_JMP_JA, 0, 0, (accept if k else reject) - (base + i + 1)))
            else:
                out.append((code, jt, jf, k))
    out += [(BPF_RET_K, 0, 0, snap_up), (BPF_RET_K, 0, 0, snap_down), (BPF_RET_K, 0, 0, 0)]
    return out


def run_bpf(prog: Sequence[Insn], pkt: bytes, *, pkttype: int = 0) -> int:
    """Interpret ``prog`` on ``pkt`` (the subset libpcap emits for host/port filters).

    A slow, obviously-correct twin of the kernel, for tests: returns the accepted length.
    """
    a = x = 0
    mem = [0] * 16
    pc = 0
    while True:
        code, jt, jf, k = prog[pc]
        pc += 1
        cls = code & 0x07
        if cls == 0x00:  # LD
            size, mode = code & 0x18, code & 0xE0
            if mode == 0x00:  # IMM
                a = k
                continue
            if mode == 0x60:  # MEM
                a = mem[k]
                continue
            off = k if mode == 0x20 else x + k
            if mode == 0x20 and k >= 0x80000000 and (k - (1 << 32)) == SKF_AD_OFF + SKF_AD_PKTTYPE:
                a = pkttype
                continue
            n = {0x00: 4, 0x08: 2, 0x10: 1}[size]
            if off + n > len(pkt):
                return 0
            a = int.from_bytes(pkt[off:off + n], "big")
        elif cls == 0x01:  # LDX
            if code == 0xB1:  # ldxb 4*([k]&0xf)
                if k >= len(pkt):
                    return 0
                x = 4 * (pkt[k] & 0x0F)
            elif code & 0xE0 == 0x00:
                x = k
            else:
                x = mem[k]
        elif cls == 0x02:  # ST
            mem[k] = a
        elif cls == 0x03:  # STX
            mem[k] = x
        elif cls == 0x04:  # ALU
            src = x if code & 0x08 else k
            op = code & 0xF0
            a = {0x00: a + src, 0x10: a - src, 0x20: a * src, 0x40: a | src, 0x50: a & src,
                 0x60: a << src, 0x70: a >> src}[op] & 0xFFFFFFFF if op != 0x80 else (-a) & 0xFFFFFFFF
        elif cls == 0x05:  # JMP
            op = code & 0xF0
            if op == 0x00:
                pc += k
                continue
            src = x if code & 0x08 else k
            cond = {0x10: a == src, 0x20: a > src, 0x30: a >= src, 0x40: bool(a & src)}[op]
            pc += jt if cond else jf
        elif cls == 0x06:  # RET
            return min(k if code == BPF_RET_K else a, len(pkt))
        elif cls == 0x07:  # MISC
            if code == 0x07:
                x = a
            else:
                a = x


def direction_filters(endpoints: Iterable[tuple[str, int]]) -> tuple[str, str]:
    """libpcap expressions for packets *to* and *from* the measured ``(address, port)`` pairs
    (TCP and UDP alike: one expression covers TLS/TCP and QUIC)."""
    eps = sorted({(str(a), int(p)) for a, p in endpoints})
    if not eps:
        raise ValueError("no endpoint to capture")
    up = " or ".join(f"((tcp or udp) and dst host {a} and dst port {p})" for a, p in eps)
    down = " or ".join(f"((tcp or udp) and src host {a} and src port {p})" for a, p in eps)
    return up, down


def attach_filter(sock: socket.socket, prog: Sequence[Insn]) -> None:
    """SO_ATTACH_FILTER with a ``struct sock_fprog`` built from ``prog``."""
    raw = b"".join(struct.pack("=HBBI", *insn) for insn in prog)
    buf = ctypes.create_string_buffer(raw, len(raw))
    fprog = struct.pack("HL", len(prog), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


# ---------------------------------------------------------------------- interfaces


def link_of(ifname: str) -> tuple[int, int, int]:
    """(pcap LINKTYPE, DLT for the filter compiler, socket type) for capturing on ``ifname``.

    Ethernet-like devices (Ethernet, veth, loopback) are read with their link header; every
    other kind (tun, wg, ppp: no Ethernet header) in cooked mode and written as raw IP.
    """
    try:
        with open(f"/sys/class/net/{ifname}/type", encoding="ascii") as fh:
            arphrd = int(fh.read().strip())
    except (OSError, ValueError) as exc:
        raise CaptureError(f"no network interface {ifname!r}") from exc
    if arphrd in (ARPHRD_ETHER, ARPHRD_LOOPBACK):
        return LINKTYPE_ETHERNET, DLT_EN10MB, socket.SOCK_RAW
    return LINKTYPE_RAW, DLT_RAW, socket.SOCK_DGRAM


def interface_for(address: str) -> str:
    """The interface the kernel routes ``address`` through (Scapy's view of the routing table,
    checked against the source address the kernel picks for a UDP socket)."""
    try:
        from scapy.config import conf

        if ":" in address:
            import scapy.route6  # noqa: F401  (populates conf.route6)

            iface = conf.route6.route(address)[0]
        else:
            import scapy.route  # noqa: F401  (populates conf.route)

            iface = conf.route.route(address)[0]
        name = str(getattr(iface, "network_name", iface))
        if name and os.path.exists(f"/sys/class/net/{name}"):
            return name
    except Exception:  # noqa: BLE001 - fall back to the kernel's source-address choice
        pass
    return _interface_by_source(address)


def _interface_by_source(address: str) -> str:
    fam = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        try:
            s.connect((address, 9))
        except OSError as exc:
            raise CaptureError(f"no route to {address}: {exc.strerror or exc}") from exc
        src = s.getsockname()[0]
    for _, name in socket.if_nameindex():
        if src in _addresses_of(name):
            return name
    raise CaptureError(f"cannot find the interface that routes to {address}")


def _addresses_of(ifname: str) -> set[str]:
    import fcntl

    out: set[str] = set()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            res = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", ifname.encode()[:15]))  # SIOCGIFADDR
            out.add(socket.inet_ntoa(res[20:24]))
        except OSError:
            pass
    try:
        with open("/proc/net/if_inet6", encoding="ascii") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) >= 6 and parts[5] == ifname:
                    out.add(socket.inet_ntop(socket.AF_INET6, bytes.fromhex(parts[0])))
    except OSError:
        pass
    return out


def open_packet_socket(sock_type: int = socket.SOCK_RAW) -> socket.socket:
    """An AF_PACKET socket bound to no protocol yet (so it receives nothing before its filter
    is attached); :class:`PrivilegeError` with :data:`PRIVILEGE_HINT` without CAP_NET_RAW."""
    try:
        return socket.socket(socket.AF_PACKET, sock_type, 0)
    except PermissionError as exc:
        raise PrivilegeError(PRIVILEGE_HINT) from exc


# ---------------------------------------------------------------------- the capture


@dataclass
class _Ring:
    ifname: str
    iface_id: int
    sock: socket.socket
    ring: mmap.mmap
    block_size: int
    block_count: int
    cur: int = 0
    packets: int = 0
    kernel_packets: int = 0
    kernel_drops: int = 0
    freeze: int = 0


@dataclass(frozen=True)
class InterfaceStats:
    """What one interface's capture saw: packets written, and the kernel's own counts."""

    interface: str
    linktype: int
    packets: int
    kernel_packets: int  # tp_packets: packets that passed the filter (including dropped)
    dropped: int  # tp_drops: discarded because the ring was full


@dataclass(frozen=True)
class CaptureStats:
    """The capture's outcome: file, filter, snap lengths and per-interface counts."""

    path: str
    filter_up: str
    filter_down: str
    snaplen_up: int
    snaplen_down: int
    start_ns: int
    end_ns: int
    interfaces: tuple[InterfaceStats, ...] = field(default=())

    @property
    def packets(self) -> int:
        return sum(i.packets for i in self.interfaces)

    @property
    def dropped(self) -> int:
        return sum(i.dropped for i in self.interfaces)

    def to_json(self) -> dict[str, object]:
        return {
            "file": os.path.basename(self.path),
            "filter": {"client_to_server": self.filter_up, "server_to_client": self.filter_down},
            "snaplen": {"client_to_server": self.snaplen_up, "server_to_client": self.snaplen_down},
            "packets": self.packets,
            "dropped": self.dropped,
            "interfaces": [{"name": i.interface, "linktype": i.linktype, "packets": i.packets,
                            "kernel_packets": i.kernel_packets, "dropped": i.dropped}
                           for i in self.interfaces],
            "start": self.start_ns / 1e9,
            "end": self.end_ns / 1e9,
        }


class RingCapture:
    """Capture the packets to and from ``endpoints`` on ``interfaces`` into a pcapng file.

    ``start()`` opens one TPACKET_V3 ring per interface (filter attached before the socket is
    bound, so no unfiltered packet gets in) and a reader thread; ``stop()`` waits for the last
    partly filled blocks to be retired, drains them, reads the drop counters and closes
    everything. ``path`` must not exist (the file is created exclusively).
    """

    def __init__(self, path: str | os.PathLike[str], interfaces: Sequence[str],
                 endpoints: Iterable[tuple[str, int]], *, snaplen_up: int = SNAPLEN_UP,
                 snaplen_down: int = SNAPLEN_DOWN, block_size: int = 1 << 20, block_count: int = 32,
                 retire_ms: int = 50) -> None:
        if block_size <= 0 or block_size % mmap.PAGESIZE:
            raise ValueError(f"block_size must be a positive multiple of {mmap.PAGESIZE}, got {block_size}")
        if block_count < 2:
            raise ValueError(f"block_count must be at least 2, got {block_count}")
        if not interfaces:
            raise ValueError("no interface to capture on")
        self.path = os.fspath(path)
        self.interfaces = list(dict.fromkeys(interfaces))
        self.filter_up, self.filter_down = direction_filters(endpoints)
        self.snaplen_up, self.snaplen_down = snaplen_up, snaplen_down
        self.block_size, self.block_count, self.retire_ms = block_size, block_count, retire_ms
        self._rings: list[_Ring] = []
        self._linktypes: list[int] = []
        self._fh: BinaryIO | None = None
        self._writer: PcapngWriter | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._start_ns = 0

    # -- lifecycle

    def __enter__(self) -> RingCapture:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None or self._rings:
            self.stop()

    def start(self) -> None:
        try:
            self._open()
        except BaseException:
            self._close()
            raise
        self._start_ns = time.time_ns()
        self._thread = threading.Thread(target=self._loop, name="keepiton-capture", daemon=True)
        self._thread.start()

    def _open(self) -> None:
        links = [link_of(name) for name in self.interfaces]
        progs = []
        for name, (_lt, dlt, _st) in zip(self.interfaces, links, strict=True):
            up = compile_bpf(self.filter_up, linktype=dlt)
            down = compile_bpf(self.filter_down, linktype=dlt)
            loop = _arphrd(name) == ARPHRD_LOOPBACK
            progs.append(chain_by_direction(up, down, snap_up=self.snaplen_up, snap_down=self.snaplen_down,
                                            drop_outgoing=loop))
        try:
            self._fh = open(self.path, "xb")  # noqa: SIM115 - closed in _close
        except FileExistsError as exc:
            raise CaptureError(f"{self.path} exists: not overwriting it") from exc
        self._writer = PcapngWriter(self._fh, comment="keepiton_throttle live check; "
                                    "client->server packets whole, server->client cut to "
                                    f"{self.snaplen_down} bytes")
        for name, (linktype, _dlt, sock_type), prog in zip(self.interfaces, links, progs, strict=True):
            sock = open_packet_socket(sock_type)
            try:
                attach_filter(sock, prog)
                sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
                req = struct.pack("=7I", self.block_size, self.block_count, 2048,
                                  self.block_size // 2048 * self.block_count, self.retire_ms, 0, 0)
                sock.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
                ring = mmap.mmap(sock.fileno(), self.block_size * self.block_count, mmap.MAP_SHARED,
                                 mmap.PROT_READ | mmap.PROT_WRITE)
                sock.bind((name, ETH_P_ALL))
            except PermissionError as exc:
                sock.close()
                raise PrivilegeError(PRIVILEGE_HINT) from exc
            except OSError as exc:
                sock.close()
                raise CaptureError(f"cannot capture on {name}: {exc.strerror or exc}") from exc
            iface_id = self._writer.add_interface(linktype, max(self.snaplen_up, self.snaplen_down), name)
            self._rings.append(_Ring(name, iface_id, sock, ring, self.block_size, self.block_count))
            self._linktypes.append(linktype)
        # packets queued between bind and now passed the filter: nothing to flush

    def stop(self) -> CaptureStats:
        """Stop, drain and close; the statistics of the whole capture."""
        if self._thread is not None:
            # the last block is handed over when its retire timer fires: give it two periods
            time.sleep(2 * self.retire_ms / 1000)
            self._stop.set()
            self._thread.join()
            self._thread = None
        end_ns = time.time_ns()
        for r in self._rings:
            self._read_stats(r)
        stats = CaptureStats(
            self.path, self.filter_up, self.filter_down, self.snaplen_up, self.snaplen_down,
            self._start_ns, end_ns,
            tuple(InterfaceStats(r.ifname, lt, r.packets, r.kernel_packets, r.kernel_drops)
                  for r, lt in zip(self._rings, self._linktypes, strict=True)))
        if self._writer is not None:
            for r in self._rings:
                self._writer.write_stats(r.iface_id, ts_ns=end_ns, received=r.kernel_packets,
                                         dropped=r.kernel_drops, start_ns=self._start_ns)
        self._close()
        if self._error is not None:
            raise CaptureError(f"capture failed: {self._error}") from self._error
        return stats

    def _close(self) -> None:
        for r in self._rings:
            try:
                r.ring.close()
            except (BufferError, ValueError):
                pass
            r.sock.close()
        self._rings = []
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    # -- reader thread

    @staticmethod
    def _read_stats(r: _Ring) -> None:
        try:
            raw = r.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 12)
        except OSError:
            return
        packets, drops, freeze = struct.unpack("=III", raw)
        # the counters reset on every read; tp_packets already includes the drops
        r.kernel_packets += packets
        r.kernel_drops += drops
        r.freeze += freeze

    def _drain(self, out: bytearray) -> int:
        assert self._fh is not None
        done = 0
        for r in self._rings:
            while True:
                off = r.cur * r.block_size
                (status,) = _U32.unpack_from(r.ring, off + _BLOCK_STATUS_OFF)
                if not status & TP_STATUS_USER:
                    break
                n = convert_block(r.ring, off, r.iface_id, out)
                r.packets += n
                done += n
                # hand the block back to the kernel only after its bytes were copied
                _U32.pack_into(r.ring, off + _BLOCK_STATUS_OFF, TP_STATUS_KERNEL)
                r.cur = (r.cur + 1) % r.block_count
                if len(out) >= 4 << 20:
                    self._fh.write(out)
                    del out[:]
        if out:
            self._fh.write(out)
            del out[:]
        return done

    def _loop(self) -> None:
        poller = select.poll()
        for r in self._rings:
            poller.register(r.sock.fileno(), select.POLLIN | select.POLLERR)
        out = bytearray()
        try:
            while True:
                got = self._drain(out)
                if self._stop.is_set():
                    if not got:
                        break
                    continue
                if not got:
                    poller.poll(self.retire_ms)
        except BaseException as exc:  # reported by stop()
            self._error = exc


def _arphrd(ifname: str) -> int:
    try:
        with open(f"/sys/class/net/{ifname}/type", encoding="ascii") as fh:
            return int(fh.read().strip())
    except (OSError, ValueError):
        return -1
