"""Stored baselines: control-flow distributions of a network, to compare with later captures.

A capture with no usable control flow (every flow is a target, or the controls were too short)
cannot be judged on its own. A *baseline* keeps, per transport, what the control flows of
earlier captures on a network looked like: their per-bin goodput (bit/s, binned exactly as the
verdict bins control flows), their path RTT samples (ms) and their per-flow goodput, each as
101 quantiles plus a capped set of raw values (:data:`SAMPLE_CAP`, evenly spaced order
statistics when there are more), with the network label, the creation time and the captures it
came from. ``analyze --baseline NAME`` then compares target flows with the stored per-bin
goodput (:meth:`Baseline.control_samples`) when a capture has no controls of its own.

The store is one SQLite file (stdlib ``sqlite3``), by default
``$XDG_DATA_HOME/keepiton_throttle/baselines.sqlite3`` (``~/.local/share/...`` without
``XDG_DATA_HOME``). It is versioned (``keepiton_meta`` table, ``PRAGMA application_id``), runs
in WAL mode with a busy timeout, and writes each baseline in one ``BEGIN IMMEDIATE``
transaction, so several processes may add baselines at once. A file that is not SQLite, or an
SQLite database without our schema, is refused with one line, never modified.

Library functions take the time as ``now_ns``; only the command line reads the clock.
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from . import __version__
from .errors import InputError

if TYPE_CHECKING:
    import numpy as np

    from .analysis import DetectionConfig
    from .batch import FileResult

__all__ = [
    "Baseline",
    "BaselineError",
    "BaselineStore",
    "CaptureRef",
    "Distribution",
    "SAMPLE_CAP",
    "baseline_group",
    "build_baseline",
    "default_db_path",
    "open_baseline",
]

T = TypeVar("T")

#: ``keepiton_meta.application`` of our stores.
APPLICATION = "keepiton_throttle.baselines"
#: Schema version this code reads and writes. Older stores are migrated on open; newer ones
#: are refused (the software that wrote them knows more than we do).
SCHEMA_VERSION = 1
#: ``PRAGMA application_id`` of our stores ("KTBL"), so that file(1) can tell them apart.
APPLICATION_ID = 0x4B54424C
#: Raw values kept per (transport, metric). The verdict's tests run on these; 10,000 is the
#: largest sample for which the KS test's p-value is computed exactly.
SAMPLE_CAP = 10_000
N_QUANTILES = 101
#: Seconds a writer waits for another writer's transaction before giving up.
BUSY_TIMEOUT_S = 30.0

METRIC_GOODPUT = "goodput_bps"  # per-bin goodput of control flows, bit/s (what the tests use)
METRIC_RTT = "rtt_ms"  # path RTT samples of control flows, ms
METRIC_FLOW_GOODPUT = "flow_goodput_bps"  # one goodput per control flow, bit/s
METRICS = (METRIC_GOODPUT, METRIC_RTT, METRIC_FLOW_GOODPUT)
EXPORT_SCHEMA = "keepiton_throttle.baseline/1"

_SCHEMA = (
    "CREATE TABLE keepiton_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE baseline (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        network TEXT,
        created_ns INTEGER NOT NULL,
        software_version TEXT NOT NULL,
        control_patterns TEXT,          -- JSON list, or NULL for the default control rule
        config TEXT NOT NULL            -- JSON: the binning settings the samples were made with
    )""",
    """CREATE TABLE capture (
        baseline_id INTEGER NOT NULL REFERENCES baseline(id),
        file TEXT NOT NULL,
        sha256 TEXT,
        packets INTEGER NOT NULL,
        flows INTEGER NOT NULL,
        control_flows INTEGER NOT NULL,
        damaged INTEGER NOT NULL
    )""",
    "CREATE INDEX capture_baseline ON capture(baseline_id)",
    """CREATE TABLE distribution (
        baseline_id INTEGER NOT NULL REFERENCES baseline(id),
        transport TEXT NOT NULL,
        metric TEXT NOT NULL,
        n INTEGER NOT NULL,             -- values summarised (before the cap)
        n_flows INTEGER NOT NULL,
        mean REAL NOT NULL,
        quantiles BLOB NOT NULL,        -- N_QUANTILES float64, little-endian
        samples BLOB NOT NULL,          -- at most SAMPLE_CAP float64, little-endian
        PRIMARY KEY (baseline_id, transport, metric)
    )""",
)


class BaselineError(InputError):
    """A baseline or the store cannot be used (not found, exists, not our database)."""


def default_db_path() -> Path:
    """``$XDG_DATA_HOME/keepiton_throttle/baselines.sqlite3``, else under ``~/.local/share``."""
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(data) / "keepiton_throttle" / "baselines.sqlite3"


# -- values ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Distribution:
    """One metric of one transport: ``n`` values from ``n_flows`` flows, as quantiles and samples."""

    n: int
    n_flows: int
    mean: float
    quantiles: np.ndarray = field(repr=False)  # N_QUANTILES values, probabilities 0, 0.01, ..., 1
    samples: np.ndarray = field(repr=False)  # at most SAMPLE_CAP raw values

    @classmethod
    def of(cls, values: np.ndarray, n_flows: int, *, cap: int = SAMPLE_CAP) -> Distribution:
        import numpy as np

        v = np.sort(np.asarray(values, dtype=np.float64))
        q = np.quantile(v, np.linspace(0.0, 1.0, N_QUANTILES))
        # evenly spaced order statistics: the same distribution, deterministic, no rng
        kept = v if v.size <= cap else v[np.round(np.linspace(0, v.size - 1, cap)).astype(np.int64)]
        return cls(int(v.size), int(n_flows), float(v.mean()), q, kept)

    def quantile(self, p: float) -> float:
        """The quantile ``p`` in [0, 1], interpolated between the stored percentiles."""
        import numpy as np

        return float(np.interp(p, np.linspace(0.0, 1.0, N_QUANTILES), self.quantiles))

    def to_json(self, *, samples: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {"n": self.n, "n_flows": self.n_flows, "mean": self.mean,
                               "quantiles": self.quantiles.tolist()}
        if samples:
            out["samples"] = self.samples.tolist()
        return out


@dataclass(frozen=True)
class CaptureRef:
    """A capture a baseline was built from."""

    file: str
    sha256: str | None
    packets: int
    flows: int
    control_flows: int
    damaged: int


@dataclass(frozen=True)
class Baseline:
    """A stored reference: control-flow distributions per transport (``"tcp"``, ``"quic"``, ...).

    Implements the baseline protocol of :func:`keepiton_throttle.verdict.decide_all`:
    :meth:`control_samples` gives the per-bin control goodput (bit/s) of a transport.
    """

    name: str
    network: str | None
    created_ns: int
    software_version: str
    control_patterns: tuple[str, ...] | None
    config: dict[str, Any]
    captures: tuple[CaptureRef, ...]
    #: transport -> metric -> distribution
    distributions: dict[str, dict[str, Distribution]]

    def control_samples(self, transport: str) -> np.ndarray | None:
        """Per-bin goodput (bit/s) of the control flows of ``transport``; None if it has none."""
        d = self.distributions.get(transport, {}).get(METRIC_GOODPUT)
        return None if d is None or d.samples.size == 0 else d.samples.copy()

    @property
    def created_at(self) -> str:
        return datetime.fromtimestamp(self.created_ns / 1e9, tz=UTC).isoformat()

    def to_json(self, *, samples: bool = True) -> dict[str, Any]:
        return {
            "schema": EXPORT_SCHEMA,
            "name": self.name,
            "network": self.network,
            "created_at": self.created_at,
            "created_ns": self.created_ns,
            "software": {"name": "keepiton_throttle", "version": self.software_version},
            "control_patterns": None if self.control_patterns is None else list(self.control_patterns),
            "config": self.config,
            "captures": [vars(c) for c in self.captures],
            "distributions": {t: {m: d.to_json(samples=samples) for m, d in ms.items()}
                              for t, ms in self.distributions.items()},
        }


def build_baseline(name: str, files: Sequence[FileResult], config: DetectionConfig, *,
                   now_ns: int, network: str | None = None,
                   control_patterns: Sequence[str] | None = None,
                   sample_cap: int = SAMPLE_CAP) -> Baseline:
    """A baseline from analysed captures (``batch.run_batch(..., control_rtt=True)`` results).

    Uses the control flows that the verdict would use (not excluded, with data), binned as the
    verdict bins controls (:func:`keepiton_throttle.verdict.bin_width`). Raises
    :class:`BaselineError` when there is none.
    """
    import numpy as np

    from .verdict import bin_width, bins_bps

    _name_iv(name)
    if sample_cap < 2:
        raise ValueError(f"sample_cap must be at least 2, got {sample_cap}")
    goodput: dict[str, list[np.ndarray]] = {}
    rtt: dict[str, list[np.ndarray]] = {}
    flow_gp: dict[str, list[float]] = {}
    captures = []
    for fr in files:
        if fr.evidence is None:
            continue
        used = 0
        for ev in fr.evidence.flows:
            if ev.role != "control" or ev.excluded is not None or ev.data_ts_ns.size == 0:
                continue
            used += 1
            w = bin_width(ev, config, min_bins=config.min_control_bins)
            goodput.setdefault(ev.transport, []).append(bins_bps(ev, w))
            if ev.goodput_bps is not None:
                flow_gp.setdefault(ev.transport, []).append(float(ev.goodput_bps))
            if fr.control_rtt_ms is not None and ev.flow in fr.control_rtt_ms:
                rtt.setdefault(ev.transport, []).append(fr.control_rtt_ms[ev.flow])
        c = fr.evidence.capture
        captures.append(CaptureRef(fr.path, fr.sha256, c.packets, c.flows, used, c.damaged))
    dists: dict[str, dict[str, Distribution]] = {}
    for transport, parts in sorted(goodput.items()):
        values = np.concatenate(parts)
        if values.size == 0:
            continue
        n_flows = len(parts)
        dists[transport] = {METRIC_GOODPUT: Distribution.of(values, n_flows, cap=sample_cap)}
        r = np.concatenate(rtt.get(transport, [np.zeros(0)]))
        if r.size:
            dists[transport][METRIC_RTT] = Distribution.of(r, len(rtt[transport]), cap=sample_cap)
        g = np.array(flow_gp.get(transport, []), dtype=np.float64)
        if g.size:
            dists[transport][METRIC_FLOW_GOODPUT] = Distribution.of(g, g.size, cap=sample_cap)
    if not dists:
        raise BaselineError(
            "no usable control flow in the captures (controls: "
            + ("flows matching " + ", ".join(control_patterns) if control_patterns
               else "flows with an SNI that matches no known target")
            + "; they must not be too short or limited); nothing to store")
    cfg = {"bin_ns": config.bin_ns, "min_bin_ns": config.min_bin_ns,
           "min_control_bins": config.min_control_bins}
    return Baseline(name, network, int(now_ns), __version__,
                    None if not control_patterns else tuple(control_patterns), cfg,
                    tuple(captures), dists)


def _name_iv(name: str) -> None:
    if not name or name != name.strip() or any(not c.isprintable() for c in name):
        raise BaselineError(f"baseline name must be non-empty printable text without leading or "
                            f"trailing spaces, got {name!r}")


# -- the store ------------------------------------------------------------------------------------
def _blob(a: np.ndarray) -> bytes:
    import numpy as np

    return np.ascontiguousarray(a, dtype="<f8").tobytes()


def _unblob(b: bytes) -> np.ndarray:
    import numpy as np

    return np.frombuffer(b, dtype="<f8").astype(np.float64)


def _guarded(method: Callable[..., T]) -> Callable[..., T]:
    """SQLite errors past the open (a damaged page, a full disk) as one :class:`BaselineError`."""

    @functools.wraps(method)
    def wrapper(self: BaselineStore, *args: Any, **kwargs: Any) -> T:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.DatabaseError as exc:
            raise BaselineError(f"{self.path}: damaged or unusable baseline store ({exc})") from None

    return wrapper


class BaselineStore:
    """The SQLite file of baselines. Use as a context manager, or call :meth:`close`.

    ``create=False`` (reading) never creates the file: a missing store reads as empty.
    Raises :class:`BaselineError` with one line when ``path`` is not one of our stores.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, create: bool = True) -> None:
        self.path = Path(path) if path is not None else default_db_path()
        self._conn: sqlite3.Connection | None = None
        if not self.path.exists():
            if not create:
                return
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise BaselineError(f"{self.path}: cannot create the store's directory: "
                                    f"{exc.strerror or exc}") from None
        elif self.path.is_dir():
            raise BaselineError(f"{self.path}: is a directory, not a baseline store")
        mode = "rwc" if create else "rw"
        try:
            conn = sqlite3.connect(f"file:{_uri_path(self.path)}?mode={mode}", uri=True,
                                   timeout=BUSY_TIMEOUT_S, isolation_level=None)
        except sqlite3.Error as exc:
            raise BaselineError(f"{self.path}: cannot open: {exc}") from None
        self._conn = conn
        try:
            self._check_or_init(create)
        except sqlite3.DatabaseError as exc:
            self.close()
            raise BaselineError(f"{self.path}: damaged or unusable baseline store ({exc})") from None
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> BaselineStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # schema ------------------------------------------------------------------------------------
    def _tables(self) -> set[str]:
        assert self._conn is not None
        try:
            rows = self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        except sqlite3.DatabaseError as exc:  # "file is not a database", damaged header
            raise BaselineError(f"{self.path}: not a baseline store ({exc})") from None
        return {r[0] for r in rows}

    def _check_or_init(self, create: bool) -> None:
        tables = self._tables()
        if not tables:
            if not create:
                return  # an empty database reads as an empty store
            self._init()
            tables = self._tables()
        if "keepiton_meta" not in tables:
            raise BaselineError(f"{self.path}: an SQLite database, but not a keepiton_throttle "
                                f"baseline store (no keepiton_meta table); choose another --db")
        assert self._conn is not None
        try:
            meta = dict(self._conn.execute("SELECT key, value FROM keepiton_meta").fetchall())
        except sqlite3.DatabaseError as exc:
            raise BaselineError(f"{self.path}: damaged baseline store ({exc})") from None
        if meta.get("application") != APPLICATION:
            raise BaselineError(f"{self.path}: not a keepiton_throttle baseline store "
                                f"(application {meta.get('application')!r})")
        try:
            version = int(meta.get("schema_version", ""))
        except ValueError:
            raise BaselineError(f"{self.path}: damaged baseline store (schema_version "
                                f"{meta.get('schema_version')!r})") from None
        if version > SCHEMA_VERSION:
            raise BaselineError(f"{self.path}: baseline store of schema version {version}, written by "
                                f"a newer keepiton_throttle; this one reads version {SCHEMA_VERSION}")
        if version < 1:
            raise BaselineError(f"{self.path}: damaged baseline store (schema version {version})")
        self._wal()

    def _wal(self) -> None:
        assert self._conn is not None
        for _ in range(50):  # switching to WAL needs a moment with no other writer
            try:
                self._conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError:
                time.sleep(0.05)

    def _init(self) -> None:
        conn = self._conn
        assert conn is not None
        self._wal()
        with self._write() as c:
            # another process may have created the schema while we waited for the lock
            exists = c.execute("SELECT 1 FROM sqlite_master WHERE name = 'keepiton_meta'").fetchone()
            if exists is None:
                for stmt in _SCHEMA:
                    c.execute(stmt)
                c.executemany("INSERT INTO keepiton_meta (key, value) VALUES (?, ?)",
                              [("application", APPLICATION), ("schema_version", str(SCHEMA_VERSION))])
                c.execute(f"PRAGMA application_id = {APPLICATION_ID}")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken before reading so that writers queue instead of failing."""
        conn = self._conn
        assert conn is not None
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise BaselineError(f"{self.path}: busy or read-only ({exc})") from None
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # operations --------------------------------------------------------------------------------
    @_guarded
    def add(self, baseline: Baseline, *, replace: bool = False) -> None:
        """Store ``baseline``; an existing name is an error unless ``replace``."""
        if self._conn is None:
            raise BaselineError(f"{self.path}: store opened read-only and does not exist")
        _name_iv(baseline.name)
        with self._write() as c:
            old = c.execute("SELECT id FROM baseline WHERE name = ?", (baseline.name,)).fetchone()
            if old is not None:
                if not replace:
                    raise BaselineError(f"baseline {baseline.name!r} exists in {self.path} "
                                        f"(remove it first, or use --replace)")
                _delete(c, int(old[0]))
            cur = c.execute(
                "INSERT INTO baseline (name, network, created_ns, software_version, control_patterns, "
                "config) VALUES (?, ?, ?, ?, ?, ?)",
                (baseline.name, baseline.network, baseline.created_ns, baseline.software_version,
                 None if baseline.control_patterns is None else json.dumps(list(baseline.control_patterns)),
                 json.dumps(baseline.config, sort_keys=True)))
            bid = cur.lastrowid
            c.executemany(
                "INSERT INTO capture (baseline_id, file, sha256, packets, flows, control_flows, damaged) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(bid, r.file, r.sha256, r.packets, r.flows, r.control_flows, r.damaged)
                 for r in baseline.captures])
            c.executemany(
                "INSERT INTO distribution (baseline_id, transport, metric, n, n_flows, mean, quantiles, "
                "samples) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(bid, t, m, d.n, d.n_flows, d.mean, _blob(d.quantiles), _blob(d.samples))
                 for t, ms in baseline.distributions.items() for m, d in ms.items()])

    @_guarded
    def remove(self, name: str) -> None:
        if self._conn is None:
            raise BaselineError(f"no baseline {name!r} (the store {self.path} does not exist)")
        with self._write() as c:
            row = c.execute("SELECT id FROM baseline WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise BaselineError(f"no baseline {name!r} in {self.path}")
            _delete(c, int(row[0]))

    def names(self) -> list[str]:
        return [b.name for b in self.baselines()]

    @_guarded
    def baselines(self) -> list[Baseline]:
        """Every baseline, by name (distributions without raw samples)."""
        if self._conn is None or "baseline" not in self._tables():
            return []
        rows = self._conn.execute("SELECT id FROM baseline ORDER BY name").fetchall()
        return [self._load(int(r[0]), samples=False) for r in rows]

    @_guarded
    def get(self, name: str) -> Baseline:
        if self._conn is None:
            raise BaselineError(f"no baseline {name!r} (the store {self.path} does not exist)")
        row = (self._conn.execute("SELECT id FROM baseline WHERE name = ?", (name,)).fetchone()
               if "baseline" in self._tables() else None)
        if row is None:
            known = self.names()
            raise BaselineError(f"no baseline {name!r} in {self.path}"
                                + (f" (known: {', '.join(known)})" if known else " (it is empty)"))
        return self._load(int(row[0]), samples=True)

    def _load(self, bid: int, *, samples: bool) -> Baseline:
        import numpy as np

        c = self._conn
        assert c is not None
        name, network, created, version, patterns, config = c.execute(
            "SELECT name, network, created_ns, software_version, control_patterns, config "
            "FROM baseline WHERE id = ?", (bid,)).fetchone()
        caps = tuple(CaptureRef(*r) for r in c.execute(
            "SELECT file, sha256, packets, flows, control_flows, damaged FROM capture "
            "WHERE baseline_id = ? ORDER BY rowid", (bid,)))
        dists: dict[str, dict[str, Distribution]] = {}
        for t, m, n, nf, mean, q, s in c.execute(
                "SELECT transport, metric, n, n_flows, mean, quantiles, "
                + ("samples" if samples else "NULL")
                + " FROM distribution WHERE baseline_id = ? ORDER BY transport, metric", (bid,)):
            dists.setdefault(t, {})[m] = Distribution(
                int(n), int(nf), float(mean), _unblob(q),
                _unblob(s) if s is not None else np.zeros(0, dtype=np.float64))
        return Baseline(name, network, int(created), version,
                        None if patterns is None else tuple(json.loads(patterns)),
                        json.loads(config), caps, dists)


def _delete(c: sqlite3.Connection, bid: int) -> None:
    for table in ("distribution", "capture"):
        c.execute(f"DELETE FROM {table} WHERE baseline_id = ?", (bid,))
    c.execute("DELETE FROM baseline WHERE id = ?", (bid,))


def _uri_path(p: Path) -> str:
    from urllib.parse import quote

    return quote(str(p.resolve()), safe="/")


def open_baseline(name: str, *, db: str | os.PathLike[str] | None = None) -> Baseline:
    """The baseline ``name`` from the store ``db`` (default: :func:`default_db_path`)."""
    with BaselineStore(db, create=False) as store:
        return store.get(name)


# -- command line ---------------------------------------------------------------------------------
_db_option = click.option(
    "--db", type=click.Path(dir_okay=False), metavar="PATH", envvar="KEEPITON_BASELINE_DB",
    help="The baseline store (default: $XDG_DATA_HOME/keepiton_throttle/baselines.sqlite3, "
         "or ~/.local/share/...; environment: KEEPITON_BASELINE_DB).")


def _fail(exc: BaseException) -> click.ClickException:
    """Errors of the store leave as one line; a missing baseline or bad file is exit status 2."""
    e = click.ClickException(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    e.exit_code = 2 if isinstance(exc, InputError) else 1
    return e


def _fmt_rate(v: float) -> str:
    return f"{v / 1e6:.2f} Mb/s" if v >= 1e6 else f"{v / 1e3:.0f} kb/s"


@click.group("baseline")
def baseline_group() -> None:
    """Stored baselines: control-flow goodput and RTT of a network, to compare with later.

    \b
    A capture with no usable control flow can be compared with a baseline instead:
      throttle-check baseline add home-isp clean-*.pcap --network "ISP X, Moscow"
      throttle-check analyze --baseline home-isp --control-sni none.invalid target.pcap
    """


@baseline_group.command("add")
@click.argument("name")
@click.argument("files", nargs=-1, required=True, metavar="FILE|DIR|GLOB...")
@click.option("--network", metavar="LABEL", help="What network the captures were made on.")
@click.option("--control-sni", "control_snis", multiple=True, metavar="PATTERN",
              help="Control flows are those matching this SNI pattern (repeatable). Default: "
                   "every flow with an SNI that matches no known target.")
@click.option("--replace", is_flag=True, help="Replace a baseline of the same name.")
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=None,
              help="Files analysed in parallel. [default: all cores]")
@_db_option
def add_command(name: str, files: tuple[str, ...], network: str | None,
                control_snis: tuple[str, ...], replace: bool, jobs: int | None, db: str | None) -> None:
    """Store the control flows of capture FILES as baseline NAME.

    Per transport: per-bin goodput (binned as the verdict bins controls), path RTT samples and
    per-flow goodput, each as 101 quantiles and up to 10,000 raw values.
    """
    from .analysis import DetectionConfig, resolve_roles
    from .batch import expand_inputs, run_batch

    paths, problems = expand_inputs(files)
    for arg, message in problems:
        click.echo(f"throttle-check: error: {arg}: {message}", err=True)
    cfg = DetectionConfig()
    try:
        _name_iv(name)
        BaselineStore(db, create=False).close()  # a bad --db fails before the analysis
        roles = resolve_roles(control_patterns=list(control_snis) or None)
        result = run_batch(paths, roles, cfg, jobs=jobs, control_rtt=True, digest=True)
        for f in result.errors:
            click.echo(f"throttle-check: error: {f.path}: {f.error}", err=True)
        if problems or result.errors:
            raise BaselineError("not every capture could be read; nothing stored")
        b = build_baseline(name, result.files, cfg, now_ns=time.time_ns(), network=network,
                           control_patterns=list(control_snis) or None)
        with BaselineStore(db) as store:
            store.add(b, replace=replace)
            where = store.path
    except (InputError, ValueError) as exc:
        raise _fail(exc) from None
    summary = ", ".join(f"{t}: {ms[METRIC_GOODPUT].n_flows} control flow(s), "
                        f"{ms[METRIC_GOODPUT].n} bins" for t, ms in b.distributions.items())
    click.echo(f"stored baseline {name!r} in {where} ({summary})")
    for t, ms in b.distributions.items():
        if ms[METRIC_GOODPUT].n < cfg.min_control_bins:
            click.echo(f"throttle-check: warning: {t}: {ms[METRIC_GOODPUT].n} goodput bins, fewer than "
                       f"the {cfg.min_control_bins} a comparison needs; add longer captures", err=True)


@baseline_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="A JSON list (distributions without raw samples).")
@_db_option
def list_command(as_json: bool, db: str | None) -> None:
    """List the stored baselines."""
    try:
        with BaselineStore(db, create=False) as store:
            items = store.baselines()
    except InputError as exc:
        raise _fail(exc) from None
    if as_json:
        click.echo(json.dumps([b.to_json(samples=False) for b in items], indent=1))
        return
    if not items:
        click.echo("no baselines")
        return
    click.echo(f"{'name':<20}{'network':<24}{'created (UTC)':<22}{'captures':>9}  transports")
    for b in items:
        click.echo(f"{b.name[:19]:<20}{(b.network or '-')[:23]:<24}{b.created_at[:19]:<22}"
                   f"{len(b.captures):>9}  {', '.join(b.distributions)}")


@baseline_group.command("show")
@click.argument("name")
@_db_option
def show_command(name: str, db: str | None) -> None:
    """Show baseline NAME: where it comes from and its distributions."""
    try:
        b = open_baseline(name, db=db)
    except InputError as exc:
        raise _fail(exc) from None
    click.echo(f"name        {b.name}")
    click.echo(f"network     {b.network or '-'}")
    click.echo(f"created     {b.created_at}")
    click.echo(f"software    keepiton_throttle {b.software_version}")
    click.echo(f"controls    {', '.join(b.control_patterns) if b.control_patterns else 'default rule'}")
    for c in b.captures:
        click.echo(f"capture     {c.file}: {c.packets:,} packets, {c.control_flows} control flow(s)"
                   + (f", {c.damaged} damaged" if c.damaged else ""))
    click.echo("")
    click.echo(f"{'transport':<10}{'metric':<18}{'flows':>6}{'n':>8}{'p5':>12}{'p50':>12}{'p95':>12}")
    for t, ms in b.distributions.items():
        for m, d in ms.items():
            fmt = (lambda v: f"{v:.1f}") if m == METRIC_RTT else _fmt_rate
            click.echo(f"{t:<10}{m:<18}{d.n_flows:>6}{d.n:>8}{fmt(d.quantile(0.05)):>12}"
                       f"{fmt(d.quantile(0.5)):>12}{fmt(d.quantile(0.95)):>12}")


@baseline_group.command("export")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, default=True,
              help="JSON with quantiles and raw samples (the only format; the default).")
@_db_option
def export_command(name: str, as_json: bool, db: str | None) -> None:
    """Write baseline NAME as JSON to stdout (schema keepiton_throttle.baseline/1)."""
    try:
        b = open_baseline(name, db=db)
    except InputError as exc:
        raise _fail(exc) from None
    click.echo(json.dumps(b.to_json(samples=True)))


@baseline_group.command("rm")
@click.argument("name")
@_db_option
def rm_command(name: str, db: str | None) -> None:
    """Remove baseline NAME."""
    try:
        with BaselineStore(db, create=False) as store:
            store.remove(name)
    except InputError as exc:
        raise _fail(exc) from None
    click.echo(f"removed baseline {name!r}", err=True)
