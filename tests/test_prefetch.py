"""Decoding ahead in a thread (``sources.capture.prefetched`` / ``chunks_of``): the same chunks
in the same order, errors raised where they happened, and no thread left behind."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from keepiton_throttle import config
from keepiton_throttle.analysis import file_evidence, resolve_roles
from keepiton_throttle.flows import analyze_file
from keepiton_throttle.sources.capture import CaptureReader, chunks_of, prefetched

SAMPLES = Path(__file__).resolve().parents[1] / "keepiton_throttle" / "data"


def _prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "keepiton-prefetch"]


def _tables(path: Path, prefetch: bool, **kw: int) -> list[dict[str, np.ndarray]]:
    with CaptureReader(path, **kw) as reader:
        return [{k: v.copy() for k, v in c.table.blocks.items()}
                for c in chunks_of(reader, prefetch=prefetch)]


@pytest.mark.parametrize("name", ["sample-twitter-2021-tcp.pcap", "sample-clean-quic.pcap"])
def test_the_same_chunks_in_the_same_order(name: str, tmp_path: Path) -> None:
    path = SAMPLES / name
    gz = tmp_path / (name + ".gz")
    gz.write_bytes(gzip.compress(path.read_bytes()))
    for p in (path, gz):
        seq = _tables(p, False, chunk_bytes=4096, rows_per_chunk=1024)
        ahead = _tables(p, True, chunk_bytes=4096, rows_per_chunk=1024)
        assert len(seq) == len(ahead) > 3
        for a, b in zip(seq, ahead, strict=True):
            for k in a:
                assert np.array_equal(a[k], b[k]), k
    assert not _prefetch_threads()


def test_flows_and_evidence_do_not_depend_on_it(monkeypatch: pytest.MonkeyPatch) -> None:
    path = SAMPLES / "sample-twitter-2021-tcp.pcap"
    got = []
    for flag in (False, True):
        monkeypatch.setattr(config, "PREFETCH", flag)
        table, series = analyze_file(path)
        roles = resolve_roles()
        ev = file_evidence(path, roles)
        got.append((table.cols, series.rtts, series.bins,
                    [(e.flow, e.role, e.goodput_bytes) for e in ev.flows]))
    (c0, r0, b0, e0), (c1, r1, b1, e1) = got
    assert all(np.array_equal(c0[k], c1[k]) for k in c0)
    assert np.array_equal(r0, r1) and np.array_equal(b0, b1) and e0 == e1 and e0


def test_an_error_is_raised_where_it_happened() -> None:
    def source() -> Iterator[int]:
        yield 1
        yield 2
        raise OSError("disk went away")

    seen = []
    with pytest.raises(OSError, match="disk went away"):
        for x in prefetched(source()):  # type: ignore[arg-type]
            seen.append(x)
    assert seen == [1, 2]
    assert not _prefetch_threads()


def test_stopping_early_stops_the_thread() -> None:
    path = SAMPLES / "sample-twitter-2021-tcp.pcap"
    with CaptureReader(path, chunk_bytes=4096, rows_per_chunk=1024) as reader:
        for _ in chunks_of(reader, prefetch=True):
            break
    assert not _prefetch_threads()
    # closing the reader while its chunks are still being read also stops it
    reader = CaptureReader(path, chunk_bytes=4096, rows_per_chunk=1024)
    it = chunks_of(reader, prefetch=True)
    next(it)
    assert _prefetch_threads()
    reader.close()
    assert not _prefetch_threads()


def test_the_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "PREFETCH", None)
    monkeypatch.setenv("KEEPITON_PREFETCH", "0")
    assert config.use_prefetch() is False
    monkeypatch.setenv("KEEPITON_PREFETCH", "1")
    monkeypatch.setattr(config.os, "sched_getaffinity", lambda _pid: {0}, raising=False)
    assert config.use_prefetch() is False  # one core: nothing to overlap with
    monkeypatch.setattr(config.os, "sched_getaffinity", lambda _pid: {0, 1}, raising=False)
    assert config.use_prefetch() is True
    monkeypatch.setattr(config, "PREFETCH", False)
    assert config.use_prefetch() is False
    # reused output blocks would be overwritten ahead of the consumer: never prefetched
    with CaptureReader(SAMPLES / "sample-clean-tcp.pcap", reuse_buffers=True) as reader:
        chunks = list(chunks_of(reader, prefetch=True))
        assert chunks and reader._ahead is None and not _prefetch_threads()


def test_batch_decodes_ahead_only_when_cores_are_free(monkeypatch: pytest.MonkeyPatch) -> None:
    """--jobs 1 means one core, and pool workers already fill every core: neither decodes
    ahead; a batch left to its defaults on a small input (run in this process) may."""
    from keepiton_throttle import batch

    seen: list[bool | None] = []
    real = batch._file_work

    def spy(task, report):  # type: ignore[no-untyped-def]
        seen.append(task.prefetch)
        return real(task, report)

    monkeypatch.setattr(batch, "_file_work", spy)
    files = [str(SAMPLES / "sample-twitter-2021-tcp.pcap")]
    batch.run_batch(files, resolve_roles(), jobs=1)
    batch.run_batch(files, resolve_roles())
    assert seen == [False, None]
