"""Batch analysis: many captures at once, in worker processes or on a Dask cluster.

Each file is one unit of work: the flow pass, role assignment and traces of
:func:`keepiton_throttle.analysis.file_evidence`, giving a picklable
:class:`~keepiton_throttle.analysis.FileEvidence`. Units run in parallel (a pool of ``jobs``
worker processes, or Dask workers) and come back to the calling process, which decides per file
(:func:`~keepiton_throttle.analysis.combine` over that file alone) and over every file together
(``combine`` over all of them, in input order). Results do not depend on the engine, the number
of workers or the order in which files finish.

A file that cannot be read (not a capture, no permission) is a :class:`FileResult` with an
``error``, never an exception: the other files are analysed all the same. A file damaged past its
header is read up to the damage, as everywhere else.

With ``out_dir``, every finished file's evidence is stored as ``evidence/<sha256>.pkl`` (the
SHA-256 of the file's content), so that ``resume=True`` skips files finished by an earlier run
(with the same settings) and still rebuilds the combined verdict without reading them again;
at the end the directory gets JSON Lines and Parquet of the flows and of the verdicts (per file
and combined), ``files.jsonl`` and the combined ``report.json``. The pickles are a cache for this
tool, not an exchange format: load them only from directories you wrote.

Memory: the reader streams 8 MiB chunks and the flow pass keeps per-flow state, so a worker's
memory is set by the file it is working on, not by the batch; only the evidence of target and
control flows (a few arrays per flow) travels back.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import pickle
import struct
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import (
    FIRST_COMPLETED,
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    wait,
)
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import __version__
from .config import usable_cores
from .errors import InputError, ThrottleError

if TYPE_CHECKING:
    from .analysis import AnalysisReport, DetectionConfig, FileEvidence, Roles

__all__ = [
    "BatchResult",
    "CAPTURE_SUFFIXES",
    "ENGINES",
    "FileResult",
    "MissingExtraError",
    "Progress",
    "default_jobs",
    "expand_inputs",
    "run_batch",
]

#: File name endings searched for in directories (each also with ``.gz``).
CAPTURE_SUFFIXES = (".pcap", ".pcapng", ".cap")
ENGINES = ("local", "dask")

STATUS_OK = "ok"
STATUS_RESUMED = "resumed"
STATUS_ERROR = "error"
#: an input file we could not read: the batch exit status is 2
ERROR_INPUT = "input"
#: anything else (a bug, a worker killed for memory): the batch exit status is 1
ERROR_INTERNAL = "internal"

EVIDENCE_DIR = "evidence"
#: the format of ``evidence/<sha256>.pkl``; a different value is not read (recomputed instead)
EVIDENCE_FORMAT = "keepiton_throttle.batch-evidence/2"  # 2: flow rows stored as columns
#: Without an explicit ``jobs``, inputs smaller than this in total are analysed in the calling
#: process: starting a worker (interpreter, NumPy, loading the Numba cache) costs about a second.
INLINE_BELOW_BYTES = 64 << 20


class MissingExtraError(ThrottleError):
    """An optional dependency is not installed; the message names the extra to install."""

    def __init__(self, what: str, extra: str, package: str) -> None:
        super().__init__(f"{what} needs {package}, which is not installed: "
                         f"pip install 'keepiton_throttle[{extra}]'")
        self.extra = extra


def _require_pyarrow() -> Any:
    try:
        import pyarrow as pa
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise MissingExtraError("--out (Parquet output)", "parquet", "pyarrow") from None
    return pa


def _require_distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise MissingExtraError("--engine dask", "cluster", "dask[distributed]") from None
    return distributed


def default_jobs() -> int:
    """Worker processes by default: every core this process may run on."""
    return usable_cores()


# -- inputs ---------------------------------------------------------------------------------------
def _is_capture_name(name: str) -> bool:
    n = name.lower()
    if n.endswith(".gz"):
        n = n[:-3]
    return n.endswith(CAPTURE_SUFFIXES)


def _walk(directory: str) -> list[str]:
    found = []
    for root, dirs, names in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(root, n) for n in sorted(names)
                  if not n.startswith(".") and _is_capture_name(n)]
    return found


def expand_inputs(args: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Capture paths named by files, directories and glob patterns, and the arguments that name none.

    A file is taken as given (whatever its name); a directory is searched recursively for
    ``*.pcap``, ``*.pcapng`` and ``*.cap`` files (also ``.gz``; hidden entries skipped); an
    argument that is not an existing path but contains ``*``, ``?`` or ``[`` is a glob pattern
    (``**`` spans directories). Matches are sorted; a path named twice is analysed once, at its
    first place. Returns ``(paths, problems)`` with problems as ``(argument, message)``.
    """
    paths: list[str] = []
    seen: set[str] = set()
    problems: list[tuple[str, str]] = []

    def add(p: str) -> None:
        key = os.path.normpath(p)
        if key not in seen:
            seen.add(key)
            paths.append(p)

    for arg in args:
        if os.path.isfile(arg):
            add(arg)
        elif os.path.isdir(arg):
            found = _walk(arg)
            if not found:
                problems.append((arg, "directory holds no capture file (*.pcap, *.pcapng, *.cap, "
                                      "optionally .gz)"))
            for p in found:
                add(p)
        elif any(c in arg for c in "*?["):
            matches = sorted(glob.glob(arg, recursive=True))
            found = []
            for m in matches:
                found += [m] if os.path.isfile(m) else _walk(m) if os.path.isdir(m) else []
            if not found:
                problems.append((arg, "no capture file matches this pattern"))
            for p in found:
                add(p)
        elif os.path.lexists(arg):
            problems.append((arg, "not a regular file"))
        else:
            problems.append((arg, os.strerror(2)))  # No such file or directory
    return paths, problems


# -- the unit of work -----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Task:
    index: int
    path: str
    size: int
    roles: Roles
    config: DetectionConfig
    flows: bool  # also return the flow_columns rows (for --out)
    rtt: bool  # also return control flows' path RTT samples (for baselines)
    digest: bool  # also return the SHA-256 of the content
    #: decode ahead in a thread (None: when this machine has 2+ cores); off in pool and Dask
    #: workers (the pool keeps every core busy) and with an explicit --jobs 1 (one core)
    prefetch: bool | None = None


@dataclass(frozen=True)
class _Outcome:
    """What a worker sends back for one file."""

    index: int
    path: str
    sha256: str | None = None
    evidence: FileEvidence | None = None
    #: ``flows.flow_columns`` of every flow (key -> a value per flow): columns pickle and load
    #: several times faster than one dict per flow
    flow_cols: dict[str, list[Any]] | None = None
    control_rtt_ms: dict[int, np.ndarray] | None = None
    error: str | None = None
    error_kind: str | None = None
    peak_rss_kb: int | None = None
    cpu_s: float | None = None


def _peak_rss_kb() -> int | None:
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return None
    rss = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return rss // 1024 if sys.platform == "darwin" else rss


def sha256_file(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's content, in hex (read in 8 MiB blocks)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _control_rtt_ms(paths: Any, flows: Sequence[int]) -> dict[int, np.ndarray]:
    """Path RTT samples (ms) of ``flows``, valid at the capture's vantage point (as in analysis);
    ``paths``: the file's ``series.path_rtts``."""
    out = {}
    for f in flows:
        _, rtt = paths.of(f)
        out[int(f)] = rtt[rtt > 0].astype(np.float64) / 1e6
    return out


def _file_work(task: _Task, report: Callable[[int, int], None] | None = None) -> _Outcome:
    """One file: pass 1 (flows), roles, pass 2 (traces) -> FileEvidence, as ``file_evidence``.

    The body is ``analysis.file_evidence`` with progress reported per chunk of the flow pass
    (``flows.read_flows``, as there) and with the flow table's rows (``flow_columns``) kept
    without a third read; ``tests/test_batch.py`` checks that both give the same evidence.
    """
    from .analysis import CaptureFacts, FileEvidence, _collect_traces, _evidence
    from .flows import flow_columns, read_flows
    from .series import path_rtts

    cfg, path = task.config, task.path
    cpu0 = time.process_time()
    try:
        digest = sha256_file(path) if task.digest else None
        got = read_flows(path, bin_ns=cfg.bin_ns, prefetch=task.prefetch, progress=report)
        table, series = got.table, got.series
        facts = CaptureFacts.of(path, got)
        paths = path_rtts(table.cols, series)
        chosen: dict[int, tuple[str, str]] = {}
        for f in range(table.n):
            r = task.roles.classify(table.hello[f].sni)
            if r is not None:
                chosen[f] = r
        if chosen:
            traces = _collect_traces(path, set(chosen), table.cols["client_dir"], cfg.bin_ns,
                                     prefetch=task.prefetch)
            end_ns = int(table.cols["last_ts"].max()) if table.n else 0
            flows = [_evidence(path, table, series, paths, f, role, name, traces.get(f), cfg, end_ns)
                     for f, (role, name) in sorted(chosen.items())]
        else:
            flows = []
        evidence = FileEvidence(facts, flows)
        rows = flow_columns(table, series, paths=paths) if task.flows else None
        rtt = (_control_rtt_ms(paths, [e.flow for e in flows if e.role == "control"])
               if task.rtt else None)
    except InputError as exc:
        return _Outcome(task.index, path, error=str(exc), error_kind=ERROR_INPUT,
                        peak_rss_kb=_peak_rss_kb())
    except OSError as exc:
        return _Outcome(task.index, path, error=exc.strerror or str(exc), error_kind=ERROR_INPUT,
                        peak_rss_kb=_peak_rss_kb())
    except Exception as exc:  # a bug must not stop the batch: report it with the file
        tb = traceback.extract_tb(exc.__traceback__)[-1]
        return _Outcome(task.index, path, error_kind=ERROR_INTERNAL, peak_rss_kb=_peak_rss_kb(),
                        error=f"internal error: {type(exc).__name__}: {exc} "
                              f"({os.path.basename(tb.filename)}:{tb.lineno})")
    return _Outcome(task.index, path, digest, evidence, rows, rtt, peak_rss_kb=_peak_rss_kb(),
                    cpu_s=time.process_time() - cpu0)


# -- engines --------------------------------------------------------------------------------------
_progress_pipe: Any = None
_MSG = struct.Struct("<qqq")  # task index, bytes, packets: 24 bytes, one atomic pipe write


def _init_worker(pipe: Any) -> None:
    global _progress_pipe
    _progress_pipe = pipe


def _send_progress(index: int) -> Callable[[int, int], None] | None:
    pipe = _progress_pipe
    if pipe is None:
        return None

    def send(nbytes: int, packets: int) -> None:
        pipe.send_bytes(_MSG.pack(index, nbytes, packets))

    return send


def _run_task(task: _Task) -> _Outcome:
    """Entry point in a worker process (and on Dask workers)."""
    return _file_work(task, _send_progress(task.index))


OnOutcome = Callable[[_Outcome], None]
OnChunk = Callable[[int, int, int], None]  # task index, bytes, packets


def _run_inline(tasks: Sequence[_Task], on_outcome: OnOutcome, on_chunk: OnChunk | None) -> None:
    for t in tasks:
        report = None if on_chunk is None else (lambda b, p, i=t.index: on_chunk(i, b, p))
        on_outcome(_file_work(t, report))


def _mp_context(method: str | None = None) -> Any:
    """How worker processes start.

    ``fork`` when this process runs a single thread (the command line): the workers inherit
    the imported analysis modules and start at once. A process with other threads (a Dask
    client, a caller's threads) must not fork, as a thread may hold a lock the child would
    inherit locked: then ``forkserver``, which forks the workers from a fresh single-threaded
    server that imported the modules once; ``spawn`` where neither exists.
    """
    import multiprocessing
    import threading

    methods = multiprocessing.get_all_start_methods()
    if method is None:
        method = ("fork" if "fork" in methods and threading.active_count() == 1 else
                  "forkserver" if "forkserver" in methods else "spawn")
    ctx = multiprocessing.get_context(method)
    if method != "forkserver":
        return ctx
    ctx.set_forkserver_preload(["keepiton_throttle.batch", "keepiton_throttle.analysis"])
    return ctx


def _run_pool(tasks: Sequence[_Task], jobs: int, on_outcome: OnOutcome, on_chunk: OnChunk | None) -> None:
    """A pool of ``jobs`` processes, at most ``jobs + 1`` files in flight.

    Keeping few files in flight means that when a worker dies (killed for memory, a crash),
    the files it may have been reading are known: each is retried alone in a fresh process,
    and the one that kills its worker again is reported as an error.
    """
    pending = deque(tasks)
    ctx = _mp_context()
    suspects: list[_Task] = []
    while pending or suspects:
        for t in suspects:
            _run_pool_round(ctx, deque([t]), 1, on_outcome, on_chunk, alone=True)
        suspects = _run_pool_round(ctx, pending, jobs, on_outcome, on_chunk, alone=False)


def _run_pool_round(ctx: Any, pending: deque[_Task], jobs: int, on_outcome: OnOutcome,
                    on_chunk: OnChunk | None, *, alone: bool) -> list[_Task]:
    """Run tasks from ``pending`` until it is empty or the pool breaks; return the suspects."""
    reader = writer = None
    if on_chunk is not None:
        reader, writer = ctx.Pipe(duplex=False)

    def drain() -> None:
        while reader is not None and reader.poll():
            try:
                i, b, p = _MSG.unpack(reader.recv_bytes())
            except (EOFError, OSError, struct.error):
                return
            on_chunk(i, b, p)  # type: ignore[misc]

    inflight: dict[Future[_Outcome], _Task] = {}
    suspects: list[_Task] = []
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_init_worker,
                               initargs=(writer,))
    try:
        while pending or inflight:
            # one file queued beyond the workers, so that a worker that finishes starts the next
            # at once; a dead worker then leaves at most jobs + 1 suspects
            while pending and len(inflight) < jobs + (0 if alone else 1):
                t = pending.popleft()
                inflight[pool.submit(_run_task, t)] = t
            done, _ = wait(inflight, timeout=0.1, return_when=FIRST_COMPLETED)
            drain()
            broken = False
            for fut in done:
                t = inflight.pop(fut)
                try:
                    on_outcome(fut.result())
                except BrokenProcessPool:
                    broken = True
                    if alone:
                        on_outcome(_Outcome(t.index, t.path, error_kind=ERROR_INTERNAL,
                                            error="the worker process died while reading this file "
                                                  "(out of memory?)"))
                    else:
                        suspects.append(t)
            if broken:
                suspects += inflight.values()
                break
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        drain()
        for end in (reader, writer):
            if end is not None:
                end.close()
    return suspects


def _run_dask(tasks: Sequence[_Task], jobs: int, scheduler: str | None, on_outcome: OnOutcome) -> None:
    distributed = _require_distributed()
    import logging

    cluster = None
    if scheduler:
        try:
            client = distributed.Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as exc:
            raise ThrottleError(f"cannot reach the Dask scheduler {scheduler}: {exc}") from None
    else:
        cluster = distributed.LocalCluster(n_workers=jobs, threads_per_worker=1, processes=True,
                                           host="127.0.0.1", dashboard_address=None,
                                           silence_logs=logging.ERROR)
        client = distributed.Client(cluster)
    try:
        futures = client.map(_run_task, list(tasks), pure=False)
        by_key = {f.key: t for f, t in zip(futures, tasks, strict=True)}
        for fut in distributed.as_completed(futures):
            t = by_key[fut.key]
            try:
                outcome = fut.result()
            except Exception as exc:  # a worker died on it (KilledWorker) or the task failed
                outcome = _Outcome(t.index, t.path, error_kind=ERROR_INTERNAL,
                                   error=f"Dask task failed: {type(exc).__name__}: {exc}")
            fut.release()
            on_outcome(outcome)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


# -- results --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Progress:
    """Where a batch stands (cumulative), for a progress bar.

    ``bytes_total`` counts the files to analyse in this run (not those resumed); ``packets`` the
    capture records read so far by this run.
    """

    bytes_done: int
    bytes_total: int
    packets: int
    files_done: int
    files_total: int


@dataclass(frozen=True)
class FileResult:
    """One input file of a batch: its evidence and verdicts, or why it could not be read."""

    path: str
    status: str  # "ok", "resumed" (from an earlier run's --out), or "error"
    size: int
    sha256: str | None = None
    evidence: FileEvidence | None = None
    #: verdicts of this file alone (``combine`` over its evidence), when asked for
    report: AnalysisReport | None = None
    error: str | None = None
    error_kind: str | None = None
    #: peak resident memory of the process that analysed the file (over its life), KiB
    peak_rss_kb: int | None = None
    #: CPU seconds the analysis of the file took (None when resumed or failed)
    cpu_s: float | None = None
    #: path RTT samples (ms) of the control flows, by flow id (only for baselines)
    control_rtt_ms: dict[int, np.ndarray] | None = None

    @property
    def ok(self) -> bool:
        return self.status != STATUS_ERROR

    def to_json(self) -> dict[str, Any]:
        c = self.evidence.capture if self.evidence is not None else None
        return {
            "file": self.path, "status": self.status, "bytes": self.size, "sha256": self.sha256,
            "packets": c.packets if c else None, "flows": c.flows if c else None,
            "damaged": c.damaged if c else None, "damage": list(c.damage) if c else None,
            "evidence_flows": len(self.evidence.flows) if self.evidence is not None else None,
            "error": self.error, "peak_rss_kb": self.peak_rss_kb, "cpu_s": self.cpu_s,
        }


@dataclass(frozen=True)
class BatchResult:
    """Every input file's result (in input order) and the verdicts over all of them."""

    files: list[FileResult]
    combined: AnalysisReport

    @property
    def errors(self) -> list[FileResult]:
        return [f for f in self.files if not f.ok]

    @property
    def peak_rss_kb(self) -> int | None:
        """The largest peak resident memory of a process that analysed a file, KiB."""
        v = [f.peak_rss_kb for f in self.files if f.peak_rss_kb is not None]
        return max(v) if v else None


def _fingerprint(roles: Roles, cfg: DetectionConfig) -> str:
    """What the stored evidence depends on besides the file: settings and software version."""
    doc = {
        "version": __version__,
        "config": dataclasses.asdict(cfg),
        "targets": {n: list(t.sni) for n, t in roles.targets.items()},
        "known": sorted(sorted(t.sni) for t in roles.known),
        "controls": None if roles.controls is None else list(roles.controls.sni),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _with_path(fe: FileEvidence, path: str) -> FileEvidence:
    """The evidence of a resumed file, named by the path it has in this run."""
    return dataclasses.replace(fe, capture=dataclasses.replace(fe.capture, file=path),
                               flows=[dataclasses.replace(f, file=path) for f in fe.flows])


class _EvidenceStore:
    """``DIR/evidence/<sha256>.pkl``: one finished file's evidence and flow rows."""

    def __init__(self, root: Path, fingerprint: str) -> None:
        self.dir = root / EVIDENCE_DIR
        self.fingerprint = fingerprint

    def path(self, sha: str) -> Path:
        return self.dir / f"{sha}.pkl"

    def save(self, sha: str, outcome: _Outcome) -> None:
        record = {"format": EVIDENCE_FORMAT, "fingerprint": self.fingerprint, "sha256": sha,
                  "evidence": outcome.evidence, "flow_columns": outcome.flow_cols or {},
                  "control_rtt_ms": outcome.control_rtt_ms}
        _atomic_write(self.path(sha), pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL))

    def load(self, sha: str) -> dict[str, Any] | None:
        """The stored record, or None when absent, unreadable or made with other settings."""
        try:
            with open(self.path(sha), "rb") as fh:
                record = pickle.load(fh)
        except FileNotFoundError:
            return None
        except Exception:  # a damaged cache entry is recomputed, not fatal
            return None
        if (not isinstance(record, dict) or record.get("format") != EVIDENCE_FORMAT
                or record.get("fingerprint") != self.fingerprint or record.get("sha256") != sha):
            return None
        return record


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def run_batch(
    paths: Sequence[str | os.PathLike[str]],
    roles: Roles,
    config: DetectionConfig | None = None,
    *,
    jobs: int | None = None,
    engine: str = "local",
    scheduler: str | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    per_file: bool = False,
    control_rtt: bool = False,
    digest: bool = False,
    baseline: Any = None,
    report_empty: bool = False,
    progress: Callable[[Progress], None] | None = None,
    generated_at: str | None = None,
) -> BatchResult:
    """Analyse capture files in parallel and decide per file and over all of them.

    ``paths``: capture files (see :func:`expand_inputs` for directories and globs). ``roles``
    and ``config``: as for :func:`~keepiton_throttle.analysis.file_evidence`. ``jobs``: worker
    processes (default: all cores, or none below :data:`INLINE_BELOW_BYTES` of input; with one
    job, or one file, the work runs in this process).
    ``engine``: ``"local"`` (a process pool) or ``"dask"`` (a ``LocalCluster`` of ``jobs``
    single-threaded worker processes, or the existing cluster whose scheduler address is
    ``scheduler``; the files must be readable at the same paths on the workers).

    ``out_dir``: store each finished file's evidence there and, at the end, write the outputs
    (module docstring); ``resume``: skip files whose content an earlier run into ``out_dir``
    finished with the same settings. ``per_file``: also decide each file alone
    (:attr:`FileResult.report`; always done with ``out_dir``). ``control_rtt``: keep the
    control flows' RTT samples (for baselines); ``digest``: hash every file even without
    ``out_dir``. ``baseline`` and ``report_empty``: passed to ``combine``. ``progress`` is
    called with a :class:`Progress` as work advances (per 8 MiB chunk on the local engine, per
    file on Dask). ``generated_at`` goes into ``report.json``.
    """
    from .analysis import DetectionConfig, combine

    cfg = config or DetectionConfig()
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if jobs is not None and jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    if resume and out_dir is None:
        raise ValueError("resume needs out_dir (the directory of the earlier run)")
    if scheduler is not None and engine != "dask":
        raise ValueError("a scheduler address needs engine='dask'")
    if out_dir is not None:
        _require_pyarrow()
    if engine == "dask":
        _require_distributed()
    n_jobs = jobs or default_jobs()
    names = [os.fspath(p) for p in paths]
    results: list[FileResult | None] = [None] * len(names)
    sizes = []
    for i, p in enumerate(names):
        try:
            sizes.append(os.stat(p).st_size)
        except OSError as exc:
            sizes.append(0)
            results[i] = FileResult(p, STATUS_ERROR, 0, error=exc.strerror or str(exc),
                                    error_kind=ERROR_INPUT)

    store = None
    if out_dir is not None:
        root = Path(out_dir)
        (root / EVIDENCE_DIR).mkdir(parents=True, exist_ok=True)
        store = _EvidenceStore(root, _fingerprint(roles, cfg))
    known_sha: dict[int, str] = {}
    if resume and store is not None:
        todo = [i for i, r in enumerate(results) if r is None]
        with ThreadPoolExecutor(max_workers=n_jobs) as hashers:  # hashlib releases the GIL
            hashes = list(hashers.map(_try_sha256, [names[i] for i in todo]))
        for i, (sha, err) in zip(todo, hashes, strict=True):
            if sha is None:
                results[i] = FileResult(names[i], STATUS_ERROR, sizes[i], error=err,
                                        error_kind=ERROR_INPUT)
                continue
            known_sha[i] = sha
            record = store.load(sha)
            if record is not None:
                results[i] = FileResult(names[i], STATUS_RESUMED, sizes[i], sha,
                                        _with_path(record["evidence"], names[i]),
                                        control_rtt_ms=record.get("control_rtt_ms"))

    want_flows = store is not None
    # Dask workers run elsewhere, in another directory: give them absolute paths (the results
    # are named by the paths as given, below)
    where = os.path.abspath if engine == "dask" else str
    tasks = [_Task(i, where(names[i]), sizes[i], roles, cfg, flows=want_flows, rtt=control_rtt,
                   digest=(store is not None or digest) and i not in known_sha)
             for i, r in enumerate(results) if r is None]
    # largest first: the batch ends soonest when the long files do not come last
    tasks.sort(key=lambda t: (-t.size, t.index))

    total = sum(t.size for t in tasks)
    state = {"bytes": 0, "packets": 0, "files": 0}
    sent_bytes: dict[int, int] = {}

    def tell() -> None:
        if progress is not None:
            progress(Progress(state["bytes"], total, state["packets"], state["files"], len(tasks)))

    def on_chunk(index: int, nbytes: int, packets: int) -> None:
        sent_bytes[index] = sent_bytes.get(index, 0) + nbytes
        state["bytes"] += nbytes
        state["packets"] += packets
        tell()

    size_of = {t.index: t.size for t in tasks}

    def on_outcome(o: _Outcome) -> None:
        sha = o.sha256 or known_sha.get(o.index)
        name = names[o.index]
        if o.error is not None or o.evidence is None:
            error = o.error if o.path == name or o.error is None else o.error.replace(o.path, name)
            results[o.index] = FileResult(name, STATUS_ERROR, size_of[o.index], sha, error=error,
                                          error_kind=o.error_kind or ERROR_INTERNAL,
                                          peak_rss_kb=o.peak_rss_kb)
        else:
            evidence = o.evidence if o.path == name else _with_path(o.evidence, name)
            if store is not None and sha is not None:
                store.save(sha, dataclasses.replace(o, evidence=evidence))
            results[o.index] = FileResult(name, STATUS_OK, size_of[o.index], sha, evidence,
                                          peak_rss_kb=o.peak_rss_kb, cpu_s=o.cpu_s,
                                          control_rtt_ms=o.control_rtt_ms)
        # the rest of the file's bytes (pass 2, or all of them when chunks are not reported)
        rest = size_of[o.index] - sent_bytes.get(o.index, 0)
        state["bytes"] += rest
        sent_bytes[o.index] = size_of[o.index]
        if o.evidence is not None and engine == "dask":
            state["packets"] += o.evidence.capture.packets
        state["files"] += 1
        tell()

    tell()
    chunk_cb = on_chunk if progress is not None else None
    # without an explicit --jobs, inputs this small are not worth starting worker processes
    small = jobs is None and total < INLINE_BELOW_BYTES
    if engine == "dask":
        if tasks:
            _run_dask([replace(t, prefetch=False) for t in tasks], n_jobs, scheduler, on_outcome)
    elif min(n_jobs, len(tasks)) <= 1 or small:
        if jobs is not None and jobs <= 1:  # one core asked for: no decode-ahead thread
            tasks = [replace(t, prefetch=False) for t in tasks]
        _run_inline(tasks, on_outcome, chunk_cb)
    else:
        _run_pool([replace(t, prefetch=False) for t in tasks], n_jobs, on_outcome, chunk_cb)

    done = [r for r in results if r is not None]
    if len(done) != len(names):  # pragma: no cover - every task reports exactly once
        raise RuntimeError("batch lost track of a file")
    good = [r.evidence for r in done if r.evidence is not None]
    combined = combine(good, roles, cfg, baseline=baseline, report_empty=report_empty)
    if per_file or store is not None:
        done = [dataclasses.replace(r, report=combine([r.evidence], roles, cfg, baseline=baseline,
                                                      report_empty=report_empty))
                if r.evidence is not None else r for r in done]
    result = BatchResult(done, combined)
    if store is not None:
        _write_outputs(result, store, generated_at=generated_at)
    return result


def _try_sha256(path: str) -> tuple[str | None, str | None]:
    try:
        return sha256_file(path), None
    except OSError as exc:
        return None, exc.strerror or str(exc)


# -- outputs --------------------------------------------------------------------------------------
#: Columns of ``verdicts.parquet`` (``verdicts.jsonl`` holds each verdict's full JSON instead).
VERDICT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("scope", "string"), ("file", "string"), ("target", "string"), ("transport", "string"),
    ("decision", "string"), ("mechanism", "string"), ("rate_bps", "float64"),
    ("burst_bytes", "int64"), ("onset_bytes", "int64"), ("onset_s", "float64"),
    ("ratio", "float64"), ("ratio_ci_low", "float64"), ("ratio_ci_high", "float64"),
    ("p_value", "float64"), ("target_goodput_bps", "float64"), ("control_goodput_bps", "float64"),
    ("target_flows", "int64"), ("control_flows", "int64"), ("reasons", "list<string>"),
    ("tests", "string"),
)


def _verdict_rows(result: BatchResult) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(JSON Lines row, Parquet row) for every verdict: per file, then combined."""
    scoped: list[tuple[str, str | None, AnalysisReport]] = [
        ("file", f.path, f.report) for f in result.files if f.report is not None]
    scoped.append(("combined", None, result.combined))
    for scope, file, report in scoped:
        for v in report.targets:
            full = {"scope": scope, "file": file, **v.to_json()}
            ci = v.ratio_ci or (None, None)
            flat = {
                "scope": scope, "file": file, "target": v.target, "transport": v.transport,
                "decision": v.decision, "mechanism": v.mechanism, "rate_bps": v.rate_bps,
                "burst_bytes": v.burst_bytes, "onset_bytes": v.onset_bytes, "onset_s": v.onset_s,
                "ratio": v.ratio, "ratio_ci_low": ci[0], "ratio_ci_high": ci[1],
                "p_value": v.p_value, "target_goodput_bps": v.target_goodput_bps,
                "control_goodput_bps": v.control_goodput_bps, "target_flows": len(v.flows),
                "control_flows": len(v.control_flows), "reasons": list(v.reasons),
                "tests": json.dumps(v.tests, sort_keys=True),
            }
            yield full, flat


def _arrow_type(pa: Any, name: str) -> Any:
    if name == "list<string>":
        return pa.list_(pa.string())
    return getattr(pa, name)()


def _write_outputs(result: BatchResult, store: _EvidenceStore, *, generated_at: str | None = None) -> None:
    """Write ``files.jsonl``, ``flows.{jsonl,parquet}``, ``verdicts.{jsonl,parquet}`` and
    ``report.json`` next to the evidence directory (each replaced atomically)."""
    pa = _require_pyarrow()
    import pyarrow.parquet as pq

    from .flows import FLOW_RECORD_TYPES
    from .report import analysis_json

    root = store.dir.parent
    _atomic_write(root / "files.jsonl",
                  "".join(json.dumps(f.to_json()) + "\n" for f in result.files).encode())

    # flows: the rows live in the evidence store as columns, read one file at a time (memory
    # stays per file), in one schema whatever a file holds (flows.FLOW_RECORD_TYPES)
    schema = pa.schema([("file", pa.string())] + [(k, _arrow_type(pa, t))
                                                  for k, t in FLOW_RECORD_TYPES.items()])
    keys = ("file", *FLOW_RECORD_TYPES)
    tmp_jsonl = root / ".flows.jsonl.tmp"
    tmp_parquet = root / ".flows.parquet.tmp"
    with open(tmp_jsonl, "w") as jl, pq.ParquetWriter(tmp_parquet, schema) as pw:
        for fr in result.files:
            if fr.evidence is None or fr.sha256 is None:
                continue
            record = store.load(fr.sha256)
            cols = record["flow_columns"] if record is not None else {}
            n = len(cols.get("flow", ()))
            if not n:
                continue
            cols = {"file": [fr.path] * n, **cols}
            jl.writelines(json.dumps(dict(zip(keys, vals, strict=True))) + "\n"
                          for vals in zip(*(cols[k] for k in keys), strict=True))
            pw.write_table(pa.Table.from_pydict(cols, schema=schema))
            del cols, record
    os.replace(tmp_jsonl, root / "flows.jsonl")
    os.replace(tmp_parquet, root / "flows.parquet")

    vschema = pa.schema([(n, _arrow_type(pa, t)) for n, t in VERDICT_COLUMNS])
    full, flat = [], []
    for j, f in _verdict_rows(result):
        full.append(j)
        flat.append(f)
    _atomic_write(root / "verdicts.jsonl", "".join(json.dumps(r) + "\n" for r in full).encode())
    tmp = root / ".verdicts.parquet.tmp"
    pq.write_table(pa.Table.from_pylist(flat, schema=vschema), tmp)
    os.replace(tmp, root / "verdicts.parquet")
    doc = analysis_json(result.combined, generated_at=generated_at)
    _atomic_write(root / "report.json", (json.dumps(doc, indent=1) + "\n").encode())
