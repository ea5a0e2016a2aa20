"""Baselines: the SQLite store round trip, its use by the verdict, concurrent writers, and
one-line errors for files that are not our store."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from keepiton_throttle import baseline as B
from keepiton_throttle.analysis import DetectionConfig, analyze_paths, resolve_roles
from keepiton_throttle.batch import run_batch
from keepiton_throttle.cli import main
from keepiton_throttle.verdict import bin_width, bins_bps

from .conftest import TESTBED

DATA = Path(B.__file__).resolve().parent / "data"
TWITTER_TCP = DATA / "sample-twitter-2021-tcp.pcap"
CLEAN_TCP = DATA / "sample-clean-tcp.pcap"
CLEAN_QUIC = DATA / "sample-clean-quic.pcap"
NOW_NS = 1_714_000_000_000_000_000


def _labels() -> dict[str, dict]:
    p = DATA / "sample-labels.json"
    doc = json.loads(p.read_text())
    return {r["file"]: r for r in doc["runs"]}


def _control_sni(path: Path) -> str:
    return _labels()[path.name]["sni_control"]


def _build(name: str, files: list[Path], control: list[str] | None, **kw) -> B.Baseline:  # type: ignore[no-untyped-def]
    roles = resolve_roles(control_patterns=control)
    res = run_batch(files, roles, jobs=1, control_rtt=True, digest=True)
    assert not res.errors
    return B.build_baseline(name, res.files, DetectionConfig(), now_ns=NOW_NS,
                            control_patterns=control, **kw)


def test_sample_labels_name_controls() -> None:
    assert _control_sni(TWITTER_TCP) and _control_sni(CLEAN_QUIC)


def test_round_trip(tmp_path: Path) -> None:
    db = tmp_path / "b.sqlite3"
    b = _build("home", [CLEAN_TCP, CLEAN_QUIC], None, network="lab, veth")
    assert set(b.distributions) == {"tcp", "quic"}
    tcp = b.distributions["tcp"]
    assert set(tcp) == {B.METRIC_GOODPUT, B.METRIC_RTT, B.METRIC_FLOW_GOODPUT}
    g = tcp[B.METRIC_GOODPUT]
    assert g.quantiles.size == B.N_QUANTILES and g.samples.size == min(g.n, B.SAMPLE_CAP)
    assert np.all(np.diff(g.quantiles) >= 0) and g.quantiles[0] == g.samples.min()
    assert tcp[B.METRIC_RTT].n > 0 and tcp[B.METRIC_RTT].quantile(0.5) > 0
    with B.BaselineStore(db) as store:
        store.add(b)
        got = store.get("home")
        assert store.names() == ["home"]
    assert got.to_json() == b.to_json()
    for t, ms in b.distributions.items():
        for m, d in ms.items():
            np.testing.assert_array_equal(got.distributions[t][m].samples, d.samples)
            np.testing.assert_array_equal(got.distributions[t][m].quantiles, d.quantiles)
    assert got.created_at.startswith("2024-04-24T23:06:40")
    assert [c.file for c in got.captures] == [str(CLEAN_TCP), str(CLEAN_QUIC)]
    assert all(c.sha256 and len(c.sha256) == 64 for c in got.captures)
    np.testing.assert_array_equal(got.control_samples("tcp"), g.samples)
    assert got.control_samples("udp") is None

    runner = CliRunner()
    res = runner.invoke(main, ["baseline", "export", "home", "--json", "--db", str(db)])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout) == json.loads(json.dumps(b.to_json()))
    res = runner.invoke(main, ["baseline", "list", "--db", str(db)])
    assert res.exit_code == 0 and "home" in res.stdout and "lab, veth" in res.stdout
    res = runner.invoke(main, ["baseline", "list", "--json", "--db", str(db)])
    (item,) = json.loads(res.stdout)
    assert item["name"] == "home" and "samples" not in item["distributions"]["tcp"]["goodput_bps"]
    res = runner.invoke(main, ["baseline", "show", "home", "--db", str(db)])
    assert res.exit_code == 0 and "goodput_bps" in res.stdout and "rtt_ms" in res.stdout
    res = runner.invoke(main, ["baseline", "rm", "home", "--db", str(db)])
    assert res.exit_code == 0
    res = runner.invoke(main, ["baseline", "show", "home", "--db", str(db)])
    assert res.exit_code == 2 and "no baseline 'home'" in res.output and "Traceback" not in res.output


def test_samples_are_the_verdicts_control_bins() -> None:
    """The stored per-bin goodput is what the verdict would have pooled from the controls."""
    control = [_control_sni(TWITTER_TCP)]
    roles = resolve_roles(control_patterns=control)
    res = run_batch([TWITTER_TCP], roles, jobs=1)
    cfg = DetectionConfig()
    ctl = [e for e in res.files[0].evidence.flows if e.role == "control" and e.excluded is None]  # type: ignore[union-attr]
    expected = np.sort(np.concatenate([bins_bps(e, bin_width(e, cfg, min_bins=cfg.min_control_bins))
                                       for e in ctl]))
    b = B.build_baseline("x", res.files, cfg, now_ns=NOW_NS, control_patterns=control)
    np.testing.assert_array_equal(b.control_samples("tcp"), expected)


def test_distribution_summary_and_cap() -> None:
    rng = np.random.default_rng(5)
    values = rng.lognormal(14, 1, 25_001)
    d = B.Distribution.of(values, 7, cap=1000)
    assert d.n == values.size and d.n_flows == 7 and d.mean == pytest.approx(values.mean())
    assert d.samples.size == 1000 and np.all(np.diff(d.samples) >= 0)
    assert d.samples[0] == values.min() and d.samples[-1] == values.max()
    np.testing.assert_allclose(d.quantiles, np.quantile(values, np.linspace(0, 1, 101)))
    assert d.quantile(0.5) == pytest.approx(np.median(values))
    # evenly spaced order statistics keep the distribution: every percentile within one step
    np.testing.assert_allclose(np.quantile(d.samples, [0.1, 0.5, 0.9]), np.quantile(values, [0.1, 0.5, 0.9]),
                               rtol=0.02)
    small = B.Distribution.of(np.array([3.0, 1.0, 2.0]), 1)
    np.testing.assert_array_equal(small.samples, [1.0, 2.0, 3.0])


def test_capture_without_controls_uses_the_baseline(tmp_path: Path) -> None:
    """Controls of every bundled sample as the baseline; a capture whose own controls are
    ignored is compared with it."""
    b = _build("pooled", sorted(DATA.glob("sample-*.pcap")), None)
    assert b.control_samples("tcp").size >= DetectionConfig().min_control_bins  # type: ignore[union-attr]
    (n,) = analyze_paths([TWITTER_TCP], control_patterns=["none.invalid"]).targets
    (v,) = analyze_paths([TWITTER_TCP], control_patterns=["none.invalid"], baseline=b).targets
    assert "no_control_flows" in n.reasons and n.tests == {}
    assert "baseline_used" in v.reasons and "no_control_flows" not in v.reasons
    assert v.ratio is not None and v.tests["ks"]["pvalue"] is not None

    db = tmp_path / "b.sqlite3"
    with B.BaselineStore(db) as store:
        store.add(b)
    res = CliRunner().invoke(main, ["analyze", "--json", "--control-sni", "none.invalid",
                                    "--baseline", "pooled", "--db", str(db), str(TWITTER_TCP)])
    assert res.exit_code == 0, res.output
    (t,) = json.loads(res.stdout)["targets"]
    assert "baseline_used" in t["reasons"] and t["ratio"] == pytest.approx(v.ratio)
    res = CliRunner().invoke(main, ["analyze", "--baseline", "other", "--db", str(db), str(TWITTER_TCP)])
    assert res.exit_code == 2 and "no baseline 'other'" in res.output and "Traceback" not in res.output


def test_baseline_of_the_captures_own_controls_gives_the_same_statistics() -> None:
    capture = TESTBED / "shared-slowlink-tcp-bbr-r1.pcap"  # long controls: many bins
    if not capture.exists():
        pytest.skip("testbed corpus missing")
    control = ["cdn.jsdelivr.net"]
    b = _build("same", [capture], control)
    assert b.control_samples("tcp").size >= DetectionConfig().min_control_bins  # type: ignore[union-attr]
    target = {"t": ["abs.twimg.com"]}
    (c,) = analyze_paths([capture], targets=target, control_patterns=control).targets
    (v,) = analyze_paths([capture], targets=target, control_patterns=["none.invalid"], baseline=b).targets
    assert "baseline_used" in v.reasons
    # the same control values: the statistics that ignore order agree exactly
    assert v.ratio == pytest.approx(c.ratio, rel=1e-12)
    assert v.tests["ks"] == c.tests["ks"] and v.tests["mann_whitney"] == c.tests["mann_whitney"]


def test_cli_add_replace_and_errors(tmp_path: Path) -> None:
    db = tmp_path / "sub" / "b.sqlite3"
    runner = CliRunner()
    args = ["baseline", "add", "lab", str(CLEAN_TCP), "--network", "lab", "--db", str(db), "-j", "1"]
    res = runner.invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "stored baseline 'lab'" in res.output and db.exists()
    res = runner.invoke(main, args)
    assert res.exit_code == 2 and "exists" in res.output and "Traceback" not in res.output
    res = runner.invoke(main, args + ["--replace"])
    assert res.exit_code == 0
    with B.BaselineStore(db, create=False) as store:
        assert store.names() == ["lab"]
    # no control flow: nothing stored, one line
    res = runner.invoke(main, ["baseline", "add", "empty", str(CLEAN_TCP), "--control-sni", "none.invalid",
                               "--db", str(db), "-j", "1"])
    assert res.exit_code == 2 and "no usable control flow" in res.output
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(b"garbage")
    res = runner.invoke(main, ["baseline", "add", "x", str(bad), "--db", str(db), "-j", "1"])
    assert res.exit_code == 2 and "nothing stored" in res.output and "Traceback" not in res.output
    with B.BaselineStore(db, create=False) as store:
        assert store.names() == ["lab"]


def test_missing_store_reads_as_empty(tmp_path: Path) -> None:
    db = tmp_path / "none.sqlite3"
    res = CliRunner().invoke(main, ["baseline", "list", "--db", str(db)])
    assert res.exit_code == 0 and "no baselines" in res.output
    assert not db.exists()
    res = CliRunner().invoke(main, ["baseline", "rm", "x", "--db", str(db)])
    assert res.exit_code == 2 and "does not exist" in res.output


def test_default_path_follows_xdg(monkeypatch, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert B.default_db_path() == tmp_path / "xdg" / "keepiton_throttle" / "baselines.sqlite3"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert B.default_db_path() == tmp_path / "home" / ".local" / "share" / "keepiton_throttle" / "baselines.sqlite3"


@pytest.mark.parametrize("kind", ["text", "foreign_sqlite", "newer_schema", "empty_meta"])
def test_foreign_database_is_one_clear_error(tmp_path: Path, kind: str) -> None:
    db = tmp_path / "x.db"
    if kind == "text":
        db.write_text("name,value\n" * 200)
    else:
        conn = sqlite3.connect(db)
        if kind == "foreign_sqlite":
            conn.execute("CREATE TABLE songs (title TEXT)")
        else:
            conn.execute("CREATE TABLE keepiton_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            if kind == "newer_schema":
                conn.executemany("INSERT INTO keepiton_meta VALUES (?, ?)",
                                 [("application", B.APPLICATION), ("schema_version", "99")])
        conn.commit()
        conn.close()
    before = db.read_bytes()
    runner = CliRunner()
    for args in (["baseline", "list"], ["baseline", "add", "x", str(CLEAN_TCP), "-j", "1"],
                 ["analyze", "--baseline", "x", str(CLEAN_TCP)]):
        res = runner.invoke(main, args + ["--db", str(db)])
        assert res.exit_code == 2, (args, res.output)
        assert "Traceback" not in res.output
        lines = res.output.strip().splitlines()
        assert len(lines) == 1, res.output
        assert str(db) in lines[0]
        want = {"text": "not a baseline store", "foreign_sqlite": "not a keepiton_throttle baseline store",
                "newer_schema": "newer keepiton_throttle", "empty_meta": "not a keepiton_throttle"}[kind]
        assert want in lines[0]
    assert db.read_bytes() == before  # never modified


def test_damaged_store_is_one_clear_error(tmp_path: Path) -> None:
    db = tmp_path / "b.sqlite3"
    with B.BaselineStore(db) as store:
        for i in range(4):
            d = B.Distribution.of(np.random.default_rng(i).random(5000), 2)
            store.add(B.Baseline(f"b{i}", None, 0, "t", None, {}, (), {"tcp": {B.METRIC_GOODPUT: d}}))
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    data = bytearray(db.read_bytes())
    for off in range(2 * 4096, len(data), 4096):  # scribble over every page but the first two
        data[off : off + 64] = b"\xff" * 64
    db.write_bytes(bytes(data))
    for args in (["list"], ["show", "b1"], ["export", "b2"], ["rm", "b3"]):
        res = CliRunner().invoke(main, ["baseline", *args, "--db", str(db)])
        assert res.exit_code == 2, (args, res.output)
        assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output
        assert "damaged" in res.output


_WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from keepiton_throttle import baseline as B
    import os, time
    db, tag, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rng = np.random.default_rng(ord(tag))
    open(db + ".ready-" + tag, "w").close()
    while not os.path.exists(db + ".go"):  # start together: both create the schema, then write
        time.sleep(0.001)
    for i in range(n):
        d = B.Distribution.of(rng.lognormal(14, 1, 500), 3)
        b = B.Baseline(f"{tag}-{i}", "net", 1_700_000_000_000_000_000 + i, "test", None, {}, (),
                       {"tcp": {B.METRIC_GOODPUT: d}})
        with B.BaselineStore(db) as store:  # a new connection each time: the most contention
            store.add(b)
    print("done")
""")


def test_concurrent_writers_do_not_corrupt(tmp_path: Path) -> None:
    db = tmp_path / "shared.sqlite3"  # does not exist yet: both race to create the schema too
    n = 30
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(db), tag, str(n)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for tag in ("a", "b")]
    deadline = time.monotonic() + 120
    while not all(Path(f"{db}.ready-{t}").exists() for t in "ab"):
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        assert time.monotonic() < deadline
        time.sleep(0.01)
    Path(f"{db}.go").touch()
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
        assert out.strip() == "done"
    with B.BaselineStore(db, create=False) as store:
        names = store.names()
        assert sorted(names) == sorted(f"{t}-{i}" for t in "ab" for i in range(n))
        for name in names:
            assert store.get(name).control_samples("tcp").size == 500  # type: ignore[union-attr]
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA application_id").fetchone()[0] == B.APPLICATION_ID
    assert conn.execute("SELECT COUNT(*) FROM distribution").fetchone()[0] == 2 * n
    conn.close()


def test_names_are_validated(tmp_path: Path) -> None:
    d = B.Distribution.of(np.arange(10.0), 1)
    with B.BaselineStore(tmp_path / "b.db") as store:
        for bad in ("", " x", "a\nb"):
            with pytest.raises(B.BaselineError, match="name"):
                store.add(B.Baseline(bad, None, 0, "t", None, {}, (), {"tcp": {B.METRIC_GOODPUT: d}}))
