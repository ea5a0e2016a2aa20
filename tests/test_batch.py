"""Batch analysis: the same evidence and verdicts as file by file, whatever the engine, the
number of workers, a damaged file in the set, or a resumed run. No timing assertions."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from keepiton_throttle import batch
from keepiton_throttle.analysis import (
    DetectionConfig,
    FileEvidence,
    combine,
    file_evidence,
    resolve_roles,
)
from keepiton_throttle.cli import main
from keepiton_throttle.flows import FLOW_RECORD_KEYS, analyze_file, flow_records
from keepiton_throttle.report import analysis_json

from .conftest import TESTBED

DATA = Path(batch.__file__).resolve().parent / "data"
SAMPLES = sorted(DATA.glob("sample-*.pcap"))
TWITTER_TCP = DATA / "sample-twitter-2021-tcp.pcap"


def same_evidence(a: FileEvidence, b: FileEvidence) -> None:
    assert a.capture == b.capture
    assert len(a.flows) == len(b.flows)
    for x, y in zip(a.flows, b.flows, strict=True):
        assert x.to_json() == y.to_json()
        np.testing.assert_array_equal(x.data_ts_ns, y.data_ts_ns)
        np.testing.assert_array_equal(x.data_good, y.data_good)


def report_doc(report: Any) -> dict[str, Any]:
    return analysis_json(report, generated_at=None)


@pytest.fixture(scope="module")
def roles():  # type: ignore[no-untyped-def]
    return resolve_roles()


@pytest.fixture(scope="module")
def reference(roles) -> dict[str, FileEvidence]:  # type: ignore[no-untyped-def]
    """``file_evidence`` of every bundled sample, the public per-file API."""
    return {str(p): file_evidence(p, roles) for p in SAMPLES}


def test_samples_exist() -> None:
    assert len(SAMPLES) >= 6


def test_worker_evidence_equals_file_evidence(roles, reference) -> None:  # type: ignore[no-untyped-def]
    for i, p in enumerate(SAMPLES):
        t = batch._Task(i, str(p), p.stat().st_size, roles, DetectionConfig(), flows=True, rtt=True,
                        digest=True)
        out = batch._file_work(t)
        assert out.error is None and out.evidence is not None
        same_evidence(out.evidence, reference[str(p)])
        table, series = analyze_file(p)
        assert out.flow_cols is not None
        cols = [out.flow_cols[k] for k in FLOW_RECORD_KEYS]
        assert [dict(zip(FLOW_RECORD_KEYS, v, strict=True)) for v in zip(*cols, strict=True)] == \
            flow_records(table, series)
        assert out.sha256 == batch.sha256_file(p)
        assert set(out.control_rtt_ms or {}) == {e.flow for e in out.evidence.flows if e.role == "control"}


@pytest.mark.parametrize("jobs,start", [(1, None), (2, "fork"), (2, "forkserver")])
def test_batch_equals_per_file(jobs: int, start: str | None, roles, reference, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    if start is not None:
        real = batch._mp_context
        monkeypatch.setattr(batch, "_mp_context", lambda: real(start))
    seen: list[batch.Progress] = []
    res = batch.run_batch(SAMPLES, roles, jobs=jobs, per_file=True, progress=seen.append)
    assert [f.path for f in res.files] == [str(p) for p in SAMPLES]
    assert not res.errors
    for f in res.files:
        ref = reference[f.path]
        assert f.evidence is not None and f.report is not None
        same_evidence(f.evidence, ref)
        assert report_doc(f.report) == report_doc(combine([ref], roles))
    combined = combine([reference[str(p)] for p in SAMPLES], roles)
    assert report_doc(res.combined) == report_doc(combined)
    # progress: cumulative, ends with every byte and file
    last = seen[-1]
    assert last.bytes_done == last.bytes_total == sum(p.stat().st_size for p in SAMPLES)
    assert last.files_done == last.files_total == len(SAMPLES)
    assert last.packets == sum(reference[str(p)].capture.packets for p in SAMPLES)
    assert all(a.bytes_done <= b.bytes_done for a, b in zip(seen, seen[1:], strict=False))
    assert res.peak_rss_kb is not None and res.peak_rss_kb > 0


@pytest.fixture(scope="module")
def dask_cluster():  # type: ignore[no-untyped-def]
    distributed = pytest.importorskip("distributed")
    import logging

    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       host="127.0.0.1", dashboard_address=None,
                                       silence_logs=logging.ERROR)
    try:
        yield cluster
    finally:
        cluster.close()


def test_dask_engine_equals_local(dask_cluster, roles, reference, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    files = SAMPLES[:4]
    local = batch.run_batch(files, roles, jobs=1, per_file=True)
    seen: list[batch.Progress] = []
    remote = batch.run_batch(files, roles, engine="dask", scheduler=dask_cluster.scheduler_address,
                             per_file=True, progress=seen.append)
    assert report_doc(remote.combined) == report_doc(local.combined)
    for a, b in zip(remote.files, local.files, strict=True):
        assert a.path == b.path and a.status == b.status == "ok"
        assert a.evidence is not None and b.evidence is not None
        same_evidence(a.evidence, b.evidence)
        assert report_doc(a.report) == report_doc(b.report)
    assert seen[-1].files_done == len(files) and seen[-1].bytes_done == seen[-1].bytes_total
    # relative paths: the workers run in another directory; results keep the names as given
    monkeypatch.chdir(DATA)
    rel = [TWITTER_TCP.name]
    remote = batch.run_batch(rel, roles, engine="dask", scheduler=dask_cluster.scheduler_address)
    local = batch.run_batch(rel, roles, jobs=1)
    assert not remote.errors and remote.files[0].path == TWITTER_TCP.name
    assert report_doc(remote.combined) == report_doc(local.combined)


def _corrupt_set(tmp_path: Path) -> tuple[Path, Path, Path]:
    d = tmp_path / "caps"
    d.mkdir()
    for p in SAMPLES[:3]:
        shutil.copy(p, d / p.name)
    bad = d / "bad.pcap"
    bad.write_bytes(b"this is not a capture file at all\n" * 10)
    data = TWITTER_TCP.read_bytes()
    cut = d / "truncated.pcap"
    cut.write_bytes(data[: len(data) // 2 + 7])  # ends inside a record
    return d, bad, cut


def test_corrupt_file_is_reported_and_the_batch_completes(tmp_path: Path, roles) -> None:  # type: ignore[no-untyped-def]
    d, bad, cut = _corrupt_set(tmp_path)
    paths, problems = batch.expand_inputs([str(d)])
    assert not problems and len(paths) == 5
    res = batch.run_batch(paths, roles, jobs=2)
    (err,) = res.errors
    assert err.path == str(bad) and err.error_kind == batch.ERROR_INPUT
    assert "not a pcap or pcapng" in (err.error or "")
    ok = {f.path: f for f in res.files if f.ok}
    assert len(ok) == 4
    truncated = ok[str(cut)].evidence
    assert truncated is not None and truncated.capture.damaged >= 1
    good = [f.evidence for f in res.files if f.evidence is not None]
    assert report_doc(res.combined) == report_doc(combine(good, roles))

    out = CliRunner().invoke(main, ["analyze", "-q", "--jobs", "1", str(d)])
    assert out.exit_code == 2, out.output
    assert "Traceback" not in out.output
    assert f"{bad}" in out.stderr and "not a pcap or pcapng" in out.stderr
    assert out.stderr.count("error:") == 1
    assert "truncated.pcap" in out.stdout and "damaged" in out.stdout


def test_resume_skips_exactly_the_finished_files(tmp_path: Path, roles, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    d = tmp_path / "in"
    d.mkdir()
    for p in SAMPLES[:3]:
        shutil.copy(p, d / p.name)
    out = tmp_path / "out"
    first = batch.run_batch(sorted(d.iterdir()), roles, jobs=1, out_dir=out)
    assert [f.status for f in first.files] == ["ok"] * 3
    assert len(list((out / "evidence").glob("*.pkl"))) == 3

    # a new file, a changed file, a failed one; then resume
    shutil.copy(SAMPLES[3], d / SAMPLES[3].name)
    changed = d / SAMPLES[0].name
    changed.write_bytes(SAMPLES[5].read_bytes())
    (d / "zz-bad.pcap").write_bytes(b"garbage")
    analysed: list[str] = []
    real = batch._file_work

    def spy(task, report=None):  # type: ignore[no-untyped-def]
        analysed.append(Path(task.path).name)
        return real(task, report)

    monkeypatch.setattr(batch, "_file_work", spy)
    paths = sorted(str(p) for p in d.iterdir())
    second = batch.run_batch(paths, roles, jobs=1, out_dir=out, resume=True)
    status = {Path(f.path).name: f.status for f in second.files}
    assert status == {SAMPLES[0].name: "ok",  # changed content: analysed again
                      SAMPLES[1].name: "resumed", SAMPLES[2].name: "resumed",
                      SAMPLES[3].name: "ok", "zz-bad.pcap": "error"}
    assert sorted(analysed) == sorted([SAMPLES[0].name, SAMPLES[3].name, "zz-bad.pcap"])

    # the resumed run's combined verdict equals a fresh run over the same files
    monkeypatch.setattr(batch, "_file_work", real)
    fresh = batch.run_batch(paths, roles, jobs=1)
    assert report_doc(second.combined) == report_doc(fresh.combined)
    # resumed evidence is named by the current path
    for f in second.files:
        if f.evidence is not None:
            assert f.evidence.capture.file == f.path
            assert all(e.file == f.path for e in f.evidence.flows)

    # everything finished: a third resume analyses only the bad file again
    analysed.clear()
    monkeypatch.setattr(batch, "_file_work", spy)
    third = batch.run_batch(paths, roles, jobs=1, out_dir=out, resume=True)
    assert analysed == ["zz-bad.pcap"]
    assert report_doc(third.combined) == report_doc(fresh.combined)

    # other settings: nothing is reused
    analysed.clear()
    batch.run_batch(paths, resolve_roles(control_patterns=["nothing.example"]), jobs=1,
                    out_dir=out, resume=True)
    assert len(analysed) == len(paths)


def test_out_dir_outputs(tmp_path: Path, roles) -> None:  # type: ignore[no-untyped-def]
    pq = pytest.importorskip("pyarrow.parquet")
    files = [TWITTER_TCP, DATA / "sample-clean-quic.pcap"]
    out = tmp_path / "out"
    res = batch.run_batch(files, roles, jobs=1, out_dir=out, generated_at="2024-01-01T00:00:00+00:00")
    expected_flows = []
    for p in files:
        table, series = analyze_file(p)
        expected_flows += [{"file": str(p), **r} for r in flow_records(table, series)]
    rows = [json.loads(line) for line in (out / "flows.jsonl").read_text().splitlines()]
    assert rows == json.loads(json.dumps(expected_flows))
    ft = pq.read_table(out / "flows.parquet")
    assert ft.num_rows == len(rows) and ft.column_names == ["file", *FLOW_RECORD_KEYS]
    assert ft.to_pylist() == rows  # every value, in the declared types
    assert str(ft.schema.field("quic_version").type) == "string"  # declared, not inferred

    verdicts = [json.loads(line) for line in (out / "verdicts.jsonl").read_text().splitlines()]
    scopes = [(v["scope"], v["file"], v["target"], v["transport"]) for v in verdicts]
    n_file = sum(len(f.report.targets) for f in res.files if f.report is not None)
    assert [s for s in scopes if s[0] == "file"] == [
        ("file", f.path, v.target, v.transport) for f in res.files if f.report for v in f.report.targets]
    assert len(scopes) == n_file + len(res.combined.targets)
    assert {v["decision"] for v in verdicts if v["scope"] == "combined"} == {
        v.decision for v in res.combined.targets}
    vt = pq.read_table(out / "verdicts.parquet")
    assert vt.column_names == [n for n, _ in batch.VERDICT_COLUMNS]
    assert vt.num_rows == len(verdicts)
    assert vt.column("decision").to_pylist() == [v["decision"] for v in verdicts]

    report = json.loads((out / "report.json").read_text())
    assert report == json.loads(json.dumps(analysis_json(res.combined,
                                                         generated_at="2024-01-01T00:00:00+00:00")))
    listed = [json.loads(line) for line in (out / "files.jsonl").read_text().splitlines()]
    assert [r["file"] for r in listed] == [str(p) for p in files]
    assert all(r["status"] == "ok" and len(r["sha256"]) == 64 for r in listed)


def test_cli_batch_out_per_file_and_resume(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    d = tmp_path / "in"
    d.mkdir()
    for p in SAMPLES[:2]:
        shutil.copy(p, d / p.name)
    out = tmp_path / "out"
    runner = CliRunner()
    res = runner.invoke(main, ["analyze", "--per-file", "--out", str(out), "--jobs", "1", str(d / "*.pcap")])
    assert res.exit_code == 0, res.output
    assert res.stdout.count("== ") == 2
    res = runner.invoke(main, ["analyze", "--json", "--resume", "--out", str(out), str(d)])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert len(doc["captures"]) == 2
    files = [json.loads(line) for line in (out / "files.jsonl").read_text().splitlines()]
    assert [f["status"] for f in files] == ["resumed", "resumed"]
    res = runner.invoke(main, ["analyze", "--resume", str(d)])
    assert res.exit_code == 2 and "--resume needs --out" in res.output


def test_missing_pyarrow_is_one_clear_error(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow -> ImportError
    res = CliRunner().invoke(main, ["analyze", "--out", str(tmp_path / "o"), str(TWITTER_TCP)])
    assert res.exit_code == 1
    assert "keepiton_throttle[parquet]" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "o").exists()


def test_missing_dask_is_one_clear_error(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setitem(sys.modules, "distributed", None)
    res = CliRunner().invoke(main, ["analyze", "--engine", "dask", str(TWITTER_TCP)])
    assert res.exit_code == 1
    assert "keepiton_throttle[cluster]" in res.output and "Traceback" not in res.output


def test_expand_inputs(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "sub").mkdir()
    for name in ("a/x.pcap", "a/sub/y.pcapng.gz", "a/sub/z.cap", "a/notes.txt", "a/.hidden.pcap", "w.pcap"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "empty").mkdir()
    args = [str(tmp_path / "a"), str(tmp_path / "*.pcap"), str(tmp_path / "a" / "x.pcap"),
            str(tmp_path / "missing.pcap"), str(tmp_path / "nomatch*.pcap"), str(tmp_path / "empty"),
            str(tmp_path / "a" / "notes.txt")]
    paths, problems = batch.expand_inputs(args)
    rel = [str(Path(p).relative_to(tmp_path)) for p in paths]
    assert rel == ["a/x.pcap", "a/sub/y.pcapng.gz", "a/sub/z.cap", "w.pcap", "a/notes.txt"]
    assert [Path(a).name for a, _ in problems] == ["missing.pcap", "nomatch*.pcap", "empty"]
    assert "No such file" in problems[0][1]


def test_run_batch_validates_arguments(roles) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="engine"):
        batch.run_batch([], roles, engine="spark")
    with pytest.raises(ValueError, match="resume needs out_dir"):
        batch.run_batch([], roles, resume=True)
    with pytest.raises(ValueError, match="jobs"):
        batch.run_batch([], roles, jobs=0)
    empty = batch.run_batch([], roles)
    assert empty.files == [] and empty.combined.targets == []


def test_testbed_batch_matches_labels_pooled(roles) -> None:  # type: ignore[no-untyped-def]
    """The testbed corpus as one batch: per-file verdicts are the single-file verdicts."""
    files = sorted(TESTBED.glob("*.pcap"))
    if not files:
        pytest.skip("testbed corpus missing")
    res = batch.run_batch(files, roles, jobs=1, per_file=True)
    for f in res.files:
        ref = combine([file_evidence(f.path, roles)], roles)
        assert report_doc(f.report) == report_doc(ref)


def test_undecoded_link_types_are_reported_with_the_capture(tmp_path: Path, roles) -> None:  # type: ignore[no-untyped-def]
    """A capture on a link type the decoder does not know: its packets are counted, and the
    report says why they are in no flow (per-file evidence, batch worker and JSON alike)."""
    import struct

    path = tmp_path / "user0.pcap"
    frame = b"\x45" + bytes(59)
    path.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 147) + b"".join(
        struct.pack("<IIII", 1_700_000_000 + i, 0, len(frame), len(frame)) + frame for i in range(5)))
    note = "5 packet(s) of link type UNKNOWN(147), which is not decoded, are in no flow"
    fe = file_evidence(path, roles)
    assert fe.capture.undecoded == (note,) and fe.capture.flows == 0
    out = batch._file_work(batch._Task(0, str(path), path.stat().st_size, roles, DetectionConfig(),
                                       flows=False, rtt=False, digest=False))
    assert out.evidence is not None and out.evidence.capture.undecoded == (note,)
    res = batch.run_batch([path], roles, jobs=1)
    assert analysis_json(res.combined)["captures"][0]["undecoded"] == [note]
    # a capture of known link types says nothing
    assert file_evidence(TWITTER_TCP, roles).capture.undecoded == ()
