"""Damaged and foreign input: counted and reported, or one clear line and exit 2; never a crash."""

from __future__ import annotations

import gzip
import json
import random
import struct

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from keepiton_throttle.cli import main
from keepiton_throttle.errors import CaptureFormatError
from keepiton_throttle.sources.capture import CaptureReader, read_capture

from .conftest import REAL, have_corpus, pcap_bytes, pcapng_epb, pcapng_idb, pcapng_shb

FRAME = bytes(Ether() / IP(src="192.0.2.1", dst="192.0.2.2") / TCP(sport=1, dport=2) / b"data")
GOOD = pcap_bytes([(i * 1000, FRAME) for i in range(5)])


def test_truncated_last_record_is_counted(write_file):  # type: ignore[no-untyped-def]
    t, _, stats = read_capture(write_file(GOOD[:-10]))
    assert stats.records == 4 and t.n == 4
    assert [d.kind for d in stats.damage] == ["truncated_record"] and stats.stopped_early


def test_corrupt_record_length_stops_there(write_file):  # type: ignore[no-untyped-def]
    data = bytearray(GOOD)
    rec = 24 + 2 * (16 + len(FRAME))  # third record header
    data[rec + 8 : rec + 12] = struct.pack("<I", 0x7FFFFFFF)
    t, _, stats = read_capture(write_file(bytes(data)))
    assert stats.records == 2
    assert stats.damage[0].kind == "corrupt_length" and stats.damage[0].offset == rec


def test_corrupt_pcapng_block_length(write_file):  # type: ignore[no-untyped-def]
    blocks = [pcapng_shb(), pcapng_idb(1)] + [pcapng_epb(0, i, FRAME) for i in range(3)]
    bad = bytearray(blocks[3])
    bad[4:8] = struct.pack("<I", 13)  # not a multiple of 4
    data = b"".join(blocks[:3]) + bytes(bad) + blocks[4]
    t, _, stats = read_capture(write_file(data, "x.pcapng"))
    assert stats.records == 1 and stats.damage[0].kind == "corrupt_length"
    trailer = bytearray(blocks[3])
    trailer[-4:] = struct.pack("<I", 999)  # trailing length disagrees
    data = b"".join(blocks[:3]) + bytes(trailer) + blocks[4]
    _, _, stats = read_capture(write_file(data, "y.pcapng"))
    assert stats.records == 1 and stats.damage[0].kind == "corrupt_length"


def test_caplen_over_snaplen_is_read_and_reported(write_file):  # type: ignore[no-untyped-def]
    t, _, stats = read_capture(write_file(pcap_bytes([(0, FRAME)], snaplen=40)))
    assert t.n == 1 and t.status[0] == 0
    assert [d.kind for d in stats.damage] == ["caplen_over_snaplen"]


def test_not_a_capture_and_empty_files(write_file):  # type: ignore[no-untyped-def]
    for data, msg in ((b"", "empty file"), (b"GET / HTTP/1.1\r\n\r\n", "not a pcap or pcapng"),
                      (GOOD[:10], "cut short"), (b"\x0a\x0d\x0d\x0a" + b"\0" * 20, "byte-order")):
        with pytest.raises(CaptureFormatError, match=msg):
            read_capture(write_file(data, "f.bin"))


def test_damaged_gzip_is_read_up_to_the_damage(write_file):  # type: ignore[no-untyped-def]
    z = gzip.compress(GOOD * 1)
    t, info, stats = read_capture(write_file(z[: len(z) // 2], "x.pcap.gz"))
    assert info.compressed and stats.damage and stats.damage[0].kind in ("gzip", "truncated_record")


def test_cli_exit_codes_and_one_line_errors(write_file, tmp_path):  # type: ignore[no-untyped-def]
    runner = CliRunner()
    good = write_file(GOOD, "good.pcap")
    bad = write_file(b"garbage!" * 10, "bad.pcap")
    res = runner.invoke(main, ["inspect", "--json", str(good), str(bad), str(tmp_path / "missing.pcap")])
    assert res.exit_code == 2
    lines = [json.loads(x) for x in res.stdout.splitlines()]
    assert len(lines) == 1 and lines[0]["packets"] == 5 and lines[0]["damaged"] == 0
    for key in ("file", "packets", "tcp_conversations", "udp_conversations", "damaged"):
        assert key in lines[0]
    errs = res.stderr.strip().splitlines()
    assert len(errs) == 2 and all(e.startswith("throttle-check: error: ") for e in errs)
    assert "bad.pcap: not a pcap or pcapng file" in errs[0] and "missing.pcap" in errs[1]
    assert "Traceback" not in res.output
    res = runner.invoke(main, ["inspect", str(write_file(GOOD[:-3], "cut.pcap"))])
    assert res.exit_code == 0 and "file ends inside a record" in res.stdout
    assert runner.invoke(main, ["inspect"]).exit_code == 2  # usage error


# -- fuzzing ---------------------------------------------------------------------------------

def _seeds() -> list[bytes]:
    seeds = [GOOD, b"".join([pcapng_shb(), pcapng_idb(1), pcapng_epb(0, 5, FRAME)])]
    if have_corpus():
        for name in ("zeek__pcapng-multi-interface.pcapng", "ndpi__vxlan.pcap",
                     "zeek__pppoe-over-qinq.pcap", "tcpdump__quic_vn.pcap",
                     "ndpi__bets.pcapng", "scapy__pfcp.pcap", "zeek__tcp-truncated-header.pcap",
                     "illustrated-tls13__capture.pcap"):
            seeds.append((REAL / name).read_bytes()[:6000])
    return seeds


SEEDS = _seeds()


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    rnd = random.Random(draw(st.integers(0, 2**32 - 1)))
    for _ in range(draw(st.integers(1, 12))):
        op = rnd.random()
        i = rnd.randrange(len(data)) if data else 0
        if op < 0.55 and data:
            data[i] = rnd.randrange(256)
        elif op < 0.7 and data:
            data[i : i + 4] = struct.pack("<I", rnd.choice([0, 1, 12, 13, 0xFFFF, 0xFFFFFFFF, rnd.randrange(2**32)]))
        elif op < 0.85:
            del data[i : i + rnd.randrange(1, 64)]
        else:
            data[i:i] = bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 32)))
    return bytes(data)


@settings(max_examples=2500, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=mutated())
def test_fuzz_mutated_captures_never_crash(data: bytes, tmp_path_factory) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path_factory.getbasetemp() / "fuzz.cap"
    path.write_bytes(data)
    try:
        reader = CaptureReader(path, chunk_bytes=4096)
    except CaptureFormatError:
        return
    with reader:
        n = 0
        for chunk in reader:
            t = chunk.table
            n += t.records
            assert t.n >= t.records
            # payload offsets stay inside the data buffer the chunk came with
            has = t.payload_off >= 0
            if has.any():
                lo = t.payload_off[has] - chunk.data_offset
                hi = lo + t.payload_caplen[has]
                assert lo.min() >= 0 and hi.max() <= chunk.data.size
            assert np.all(t.status <= 3)
        assert n == reader.stats.records
