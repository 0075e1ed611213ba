"""Run files: recorded runs in a versioned SQLite database, written one step per transaction and read back lazily."""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import math
import os
import sqlite3
import struct
import threading
import warnings
import zlib
from pathlib import Path
from typing import Any, Iterator, Mapping, MutableSequence, Sequence, overload

import numpy as np

from vizgrad._version import __version__
from vizgrad.errors import RecordingError, RunFileError, UsageError, VizgradError
from vizgrad.gradtable import (OLD_WIDTH, WIDTH, GradIndex, GradTable, ValuesEncoder, decode_index, decode_rows,
                               decode_values, encode_index, encode_rows, stored_norm_ranges, unpack_blob, value_key,
                               widened)
from vizgrad.graph import Graph
from vizgrad.loop import TrainingLoop, decode_marks, encode_marks
from vizgrad.run import Run, Step

__all__ = [
    "SCHEMA_VERSION",
    "APPLICATION_ID",
    "RUN_SUFFIX",
    "save",
    "load",
    "open_for_recording",
    "is_run_file",
    "is_sqlite_file",
    "RunStore",
    "StoredRun",
    "StoredStep",
    "StepSequence",
]

#: Version of the tables below; a file with a higher one was written by a newer vizgrad.
#: Versions 1 (summaries with their keys in every step) and 2 (no optimizer
#: marks: each step is its own iteration), 3 (no step checks: findings from the rows alone) and 4 (rows of 7
#: columns, no mean of |g|: read as NaN, or computed from kept values) are still read.
SCHEMA_VERSION = 5
#: ``PRAGMA application_id`` of every run file ("VGRD"), which tells them from other SQLite files.
APPLICATION_ID = 0x56475244
#: Suffix suggested for run files (any name works: files are recognised by content).
RUN_SUFFIX = ".vizgrad"

_SQLITE_MAGIC = b"SQLite format 3\x00"
_HOW_TO_GET_ONE = "pass a file written by `vizgrad render SCRIPT --save RUN` or vizgrad.record(save=RUN)"
# Files up to this size get a full integrity check on load; bigger ones are
# checked page by page as steps are read (a full check would read gigabytes).
_FULL_CHECK_LIMIT = 64 << 20
_RECENT_STEPS = 8  # steps kept in memory by a stored run: the newest and the latest read
_CACHED_GRAPHS = 64
_READ_BATCH = 32

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE graphs (
    id INTEGER PRIMARY KEY,
    hash TEXT NOT NULL,            -- Graph.structural_hash
    digest TEXT NOT NULL UNIQUE,   -- sha1 of the JSON below: one row per distinct graph
    graph TEXT NOT NULL            -- JSON of Graph.to_dict()
);
CREATE TABLE indexes (
    id INTEGER PRIMARY KEY,
    digest TEXT NOT NULL UNIQUE,   -- sha1 of the JSON below: one row per distinct key index
    keys TEXT NOT NULL             -- JSON [[key, row], ...] of a GradIndex, shared by the steps laid out alike
);
CREATE TABLE steps (
    idx INTEGER PRIMARY KEY,       -- Step.index, 0-based
    graph INTEGER NOT NULL REFERENCES graphs(id),
    grad_index INTEGER NOT NULL REFERENCES indexes(id),
    loss TEXT,                     -- JSON number (NaN and Infinity included), NULL for no loss
    params TEXT NOT NULL,          -- JSON list of the parameter names of the step
    norm_lo REAL,                  -- smallest and largest finite non-zero node/edge gradient norm,
    norm_hi REAL,                  -- so colour scales span a run without reading its rows
    rms_lo REAL,                   -- the same of norm / sqrt(elements) (schema 3)
    rms_hi REAL,
    summaries BLOB NOT NULL,       -- crc32 + float64 rows [norm, mean, min, max, nan, inf, numel, abs]
    kept BLOB NOT NULL,            -- packed kept values: header of dtypes and shapes + raw bytes
    data TEXT NOT NULL,            -- JSON of the values logged with run.log()
    stepped TEXT NOT NULL,         -- optimizers (by ordinal) that stepped since the previous step: "0,1", ""
    clip TEXT,                     -- JSON of a gradient clip after the step (Step.clip), NULL for none
    checks TEXT                    -- JSON of what the live step told of its health (Step.checks, schema 4)
);
CREATE TABLE grad_calls (          -- torch.autograd.grad calls recorded before a step's backward() (schema 3)
    step INTEGER NOT NULL,         -- the step they belong to
    k INTEGER NOT NULL,            -- their order
    graph INTEGER NOT NULL REFERENCES graphs(id),
    grad_index INTEGER NOT NULL REFERENCES indexes(id),
    loss TEXT,
    summaries BLOB NOT NULL,
    kept BLOB NOT NULL,
    PRIMARY KEY (step, k)
);
"""
#: The columns a step is read from, by schema version (version 1 kept its keys inside ``summaries``).
_STEP_COLUMNS = {1: "idx, graph, NULL, loss, summaries, kept, data",
                 2: "idx, graph, grad_index, loss, summaries, kept, data",
                 3: "idx, graph, grad_index, loss, summaries, kept, data, clip",
                 4: "idx, graph, grad_index, loss, summaries, kept, data, clip, checks"}
_STEP_COLUMNS[5] = _STEP_COLUMNS[4]
_CHECKED_COLUMNS = {1: "idx, graph, loss, params, summaries, kept, data",
                    2: "idx, graph, grad_index, loss, params, norm_lo, norm_hi, summaries, kept, data",
                    3: "idx, graph, grad_index, loss, params, norm_lo, norm_hi, rms_lo, rms_hi, summaries, kept, data, "
                       "stepped, clip",
                    4: "idx, graph, grad_index, loss, params, norm_lo, norm_hi, rms_lo, rms_hi, summaries, kept, data, "
                       "stepped, clip, checks"}
_CHECKED_COLUMNS[5] = _CHECKED_COLUMNS[4]


# -- validation --------------------------------------------------------------------------------------------


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _damaged(path: Path, detail: object) -> RunFileError:
    detail = " ".join(str(detail).split())  # one line, whatever SQLite or a decoder said
    return RunFileError(f"{path} is damaged ({detail}); it was truncated or overwritten: record the run again")


def _check_header(path: Path) -> None:
    """Checks what can be checked without SQLite: the file exists, is not empty and is a whole SQLite file."""
    if not path.exists():
        raise RunFileError(f"no run file at {path}: check the path, or {_HOW_TO_GET_ONE}")
    if path.is_dir():
        raise RunFileError(f"{path} is a folder, not a run file: {_HOW_TO_GET_ONE}")
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            header = handle.read(100)
    except OSError as error:
        raise RunFileError(f"cannot read {path}: {error.strerror or error}; check its permissions") from None
    if size == 0:
        raise RunFileError(f"{path} is empty, not a vizgrad run file: {_HOW_TO_GET_ONE}")
    if not header.startswith(_SQLITE_MAGIC):
        raise RunFileError(f"{path} is not a vizgrad run file (not a SQLite database): {_HOW_TO_GET_ONE}")
    if len(header) < 100:
        raise _damaged(path, "its header is cut short")
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    page_count = int.from_bytes(header[28:32], "big")
    change_counter, valid_for = header[24:28], header[92:96]
    # The page count in the header is trustworthy only when written by the
    # same change as the counter (SQLite >= 3.7.0 always does so).
    if change_counter == valid_for and page_count and size < page_count * page_size:
        raise _damaged(path, f"{size} bytes where its header promises {page_count * page_size}")


def _read_meta(connection: sqlite3.Connection, path: Path) -> dict[str, str]:
    """Validates the schema of an open database and returns its ``meta`` table."""
    (application_id,) = connection.execute("PRAGMA application_id").fetchone()
    if application_id != APPLICATION_ID:
        raise RunFileError(f"{path} is a SQLite database but not a vizgrad run file: {_HOW_TO_GET_ONE}")
    try:
        meta = dict(connection.execute("SELECT key, value FROM meta"))
    except (sqlite3.DatabaseError, ValueError) as error:  # a missing table, or text that is not UTF-8
        raise _damaged(path, error) from None
    try:
        version = int(meta["vizgrad_schema"])
    except (KeyError, ValueError):
        raise _damaged(path, "its schema version is missing") from None
    if version > SCHEMA_VERSION:
        writer = meta.get("vizgrad_version", "unknown")
        raise RunFileError(f"{path} was written by a newer vizgrad ({writer}, run file schema {version}) than this one "
                           f"({__version__}, schema {SCHEMA_VERSION}): upgrade with `pip install -U vizgrad`")
    if version < 1:
        raise _damaged(path, f"unknown schema version {version}")
    try:
        connection.execute(f"SELECT {_CHECKED_COLUMNS[version]} FROM steps LIMIT 0")
        connection.execute("SELECT id, hash, digest, graph FROM graphs LIMIT 0")
        if version >= 2:
            connection.execute("SELECT id, digest, keys FROM indexes LIMIT 0")
        if version >= 3:
            connection.execute("SELECT step, k, graph, grad_index, loss, summaries, kept FROM grad_calls LIMIT 0")
    except sqlite3.OperationalError as error:
        raise _damaged(path, error) from None
    return meta


def is_sqlite_file(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` starts like a SQLite database (a run file, or someone else's)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(len(_SQLITE_MAGIC)) == _SQLITE_MAGIC
    except OSError:
        return False


def is_run_file(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a SQLite database stamped as a vizgrad run file (a cheap check; see :func:`load`)."""
    try:
        with open(path, "rb") as handle:
            header = handle.read(100)
    except OSError:
        return False
    return header.startswith(_SQLITE_MAGIC) and header[68:72] == APPLICATION_ID.to_bytes(4, "big")


# -- schema 1 ------------------------------------------------------------------------------------------------


def _decode_rows_v1(blob: bytes) -> tuple[GradIndex, np.ndarray]:
    """Schema 1 kept each step's keys with its rows: ``(index, rows)``."""
    header, raw, (offset,) = unpack_blob(blob)
    rows = np.frombuffer(raw, dtype="<f8", count=header["n"] * OLD_WIDTH, offset=offset).reshape(-1, OLD_WIDTH)
    return GradIndex({value_key(key): int(at) for key, at in header["k"]}), widened(rows)



def _json_default(value: Any) -> Any:
    if isinstance(value, (np.ndarray, np.generic)) or type(value).__module__.startswith("torch"):
        if hasattr(value, "tolist"):  # a tensor or an array: its numbers
            return value.tolist()
    raise UsageError(f"cannot save a logged value of type {type(value).__name__} in a run file; "
                     "log numbers, strings, lists or dicts (run.log(key, value))")


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=_json_default)


def _encode_loss(loss: float | None) -> str | None:
    if loss is None:
        return None
    loss = float(loss)
    return repr(loss) if math.isfinite(loss) else json.dumps(loss)  # repr is JSON for finite floats


def _decode_loss(text: str | None) -> float | None:
    return None if text is None else float(json.loads(text))


def _encode_panels(panels: Sequence[Any]) -> list[dict[str, Any]]:
    encoded = []
    for panel in panels:
        to_dict = getattr(panel, "to_dict", None)
        if to_dict is None:
            warnings.warn(f"panel {type(panel).__name__} has no to_dict(), so the run file leaves it out",
                          RuntimeWarning, stacklevel=5)
            continue
        encoded.append(to_dict())
    return encoded


def _decode_panels(encoded: Sequence[Mapping[str, Any]]) -> list[Any]:
    from vizgrad.panels import panel_from_dict

    panels = []
    for item in encoded:
        try:
            panels.append(panel_from_dict(item))
        except (VizgradError, TypeError, ValueError) as error:  # a panel kind this vizgrad does not know
            warnings.warn(f"cannot restore a panel of the run file ({error}); it is left out", RuntimeWarning,
                          stacklevel=3)
    return panels


# -- steps read from a file ---------------------------------------------------------------------------------


class StoredStep(Step):
    """A step read from a run file; its table is decoded on first use (a damaged one raises :class:`RunFileError`)."""

    def __init__(self, index: int, loss: float | None, graph: Graph, data: dict[str, Any], store: RunStore,
                 grad_index: int | None, summaries: bytes, values: bytes,
                 calls: tuple[Step, ...] | None = None) -> None:
        marks = store.loop.stepped
        self._calls = calls
        self._store = store
        super().__init__(index, loss, graph, data=data, loop=store.loop,
                         stepped=marks[index] if index < len(marks) else ())
        self._source: tuple[RunStore, int | None, bytes, bytes] | None = (store, grad_index, summaries, values)

    @property  # type: ignore[override]
    def grad_calls(self) -> tuple[Step, ...]:
        """The ``torch.autograd.grad`` calls before this step's ``backward()``, read from the file on first use."""
        if self._calls is None:
            self._calls = self._store.read_calls(self.index)
        return self._calls

    @grad_calls.setter
    def grad_calls(self, calls: tuple[Step, ...]) -> None:
        if calls:  # the base class starts every step with none; a stored step reads its own
            self._calls = tuple(calls)

    @property
    def table(self) -> GradTable:
        """The step's gradients, decoded from the file on first access."""
        if self._table is None and self._source is not None:
            store, grad_index, summaries, values = self._source
            self._table = store.decode_table(self.index, grad_index, summaries, values)
            self._source = None
        return super().table


class _Interned:
    """A table of a run file whose rows the steps share (graphs, key indexes): each distinct one stored once.

    Rows are found by the SHA-1 of their text. Objects recently written or
    read are remembered both ways (the object held, so its ``id()`` stays
    its own), a bounded number of them.
    """

    def __init__(self, table: str, column: str, encode: Any, decode: Any, extra: Any = None) -> None:
        self.table, self.column, self.encode, self.decode, self.extra = table, column, encode, decode, extra
        self._ids: collections.OrderedDict[int, tuple[Any, int]] = collections.OrderedDict()  # id(obj) -> row
        self._objects: collections.OrderedDict[int, Any] = collections.OrderedDict()  # row -> obj

    def id_of(self, connection: sqlite3.Connection, obj: Any) -> int:
        """The row id of ``obj``, inserting it the first time its text is seen (inside the caller's transaction)."""
        known = self._ids.get(id(obj))
        if known is not None and known[0] is obj:
            self._ids.move_to_end(id(obj))
            return known[1]
        text = self.encode(obj)
        digest = hashlib.sha1(text.encode()).hexdigest()
        found = connection.execute(f"SELECT id FROM {self.table} WHERE digest = ?", (digest,)).fetchone()
        if found is None:
            columns = {"digest": digest, self.column: text, **(self.extra(obj) if self.extra else {})}
            cursor = connection.execute(f"INSERT INTO {self.table} ({', '.join(columns)}) "
                                        f"VALUES ({', '.join('?' * len(columns))})", tuple(columns.values()))
            row_id = int(cursor.lastrowid)  # type: ignore[arg-type]
        else:
            row_id = found[0]
        _remember(self._ids, id(obj), (obj, row_id))
        _remember(self._objects, row_id, obj)
        return row_id

    def get(self, connection: sqlite3.Connection, row_id: int, path: Path) -> Any:
        """The object of row ``row_id``, decoded once; a missing row is damage."""
        obj = self._objects.get(row_id)
        if obj is not None:
            self._objects.move_to_end(row_id)
            return obj
        row = connection.execute(f"SELECT {self.column} FROM {self.table} WHERE id = ?", (row_id,)).fetchone()
        if row is None:
            raise _damaged(path, f"{self.table} row {row_id} is missing")
        obj = self.decode(row[0])
        _remember(self._objects, row_id, obj)
        return obj


def _remember(cache: collections.OrderedDict[Any, Any], key: Any, value: Any) -> None:
    cache[key] = value
    cache.move_to_end(key)
    if len(cache) > _CACHED_GRAPHS:
        cache.popitem(last=False)


class RunStore:
    """One run file: writes steps one transaction each and reads them back.

    Use :func:`open_for_recording`, :func:`load` or :func:`save` rather than
    this class. A store opened for writing accepts :meth:`append` until
    :meth:`close`; reading works before and after.
    """

    def __init__(self, connection: sqlite3.Connection, path: Path, writable: bool,
                 version: int = SCHEMA_VERSION) -> None:
        self.path = path
        self.writable = writable
        self.version = version  # of the tables: new files are written in the current one
        self._connection = connection
        self._lock = threading.RLock()
        self._count = connection.execute("SELECT count(*) FROM steps").fetchone()[0]
        self._graphs = _Interned("graphs", "graph", lambda graph: graph.to_json(separators=(",", ":")),
                                 Graph.from_json, lambda graph: {"hash": graph.structural_hash})
        self._indexes = _Interned("indexes", "keys", encode_index, decode_index)
        self._values = ValuesEncoder()
        self._params: tuple[GradIndex, str] | None = None
        self._written_meta: dict[str, str] = {}
        marks = self._read_stepped()
        self.loop = TrainingLoop([m for m, _ in marks], rates=[r for _, r in marks])

    def _read_stepped(self) -> list[tuple[tuple[int, ...], tuple[tuple[float | None, ...], ...]]]:
        """Each step's optimizer marks, in order (files before schema 3 have none: one iteration per step)."""
        if self.version < 3:
            return [((), ())] * self._count
        try:
            rows = self._connection.execute("SELECT stepped FROM steps ORDER BY idx").fetchall()
            return [decode_marks(text) for (text,) in rows]
        except (sqlite3.DatabaseError, ValueError, AttributeError) as error:
            raise _damaged(self.path, f"its optimizer marks do not decode: {error}") from None

    # -- opening ---------------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: Path, *, journal: str = "WAL") -> RunStore:
        """A new, empty run file at ``path`` (which must not exist)."""
        connection = _connect(path, create=True)
        try:
            connection.execute(f"PRAGMA journal_mode={journal}")
            # A killed process loses no committed step with NORMAL in WAL mode; only a
            # power cut could lose the last few, and the file stays consistent.
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute(f"PRAGMA application_id={APPLICATION_ID}")
            connection.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            connection.executescript(f"BEGIN;{_SCHEMA}COMMIT;")
        except sqlite3.Error as error:
            connection.close()
            raise RunFileError(f"cannot write run file {path}: {error}; choose a writable path") from None
        store = cls(connection, path, writable=True)
        store._write_meta({"vizgrad_schema": str(SCHEMA_VERSION), "vizgrad_version": __version__, "complete": "0"})
        return store

    @classmethod
    def open(cls, path: Path) -> tuple[RunStore, dict[str, str]]:
        """Opens an existing run file for reading after validating it; returns it with its ``meta`` table."""
        _check_header(path)
        try:
            connection = _connect(path, create=False)
        except sqlite3.Error as error:
            raise RunFileError(f"cannot open run file {path}: {error}; check its permissions") from None
        try:
            meta = _read_meta(connection, path)
            if path.stat().st_size <= _FULL_CHECK_LIMIT:
                problems = [row[0] for row in connection.execute("PRAGMA quick_check(1)")]
                if problems != ["ok"]:
                    raise _damaged(path, problems[0])
            store = cls(connection, path, writable=False, version=int(meta["vizgrad_schema"]))
        except sqlite3.DatabaseError as error:
            connection.close()
            raise _damaged(path, error) from None
        except BaseException:
            connection.close()
            raise
        return store, meta

    # -- writing -------------------------------------------------------------------------------------------
    def append(self, step: Step, *, meta: Mapping[str, Any] | None = None, panels: Sequence[Any] | None = None) -> None:
        """Writes ``step`` (and ``meta``/``panels`` when they changed) in one transaction.

        Raises:
            RecordingError: The file is closed for writing.
            RunFileError: Writing failed (a full disk, a removed folder).
            UsageError: The step is out of order, or its logged data is not JSON.
        """
        if not self.writable:
            raise RecordingError(f"run file {self.path} is closed for writing; record a new run to add steps")
        if step.index != self._count:
            raise UsageError(f"steps must be appended in order: got step {step.index}, expected {self._count}")
        table = step.table
        summaries, values = encode_rows(table), self._values.encode(table)
        loss, data = _encode_loss(step.loss), _dumps(step.data) if step.data else "{}"
        params = self._params_text(table.index)
        (norm_lo, norm_hi), (rms_lo, rms_hi) = stored_norm_ranges(table, ("norm", "rms"))
        rates = step._loop.rates_of(step.index) if step._loop is not None else ()
        stepped = encode_marks(step.stepped, rates)
        with self._lock, self._error_context("write"), _transaction(self._connection):
            self._connection.execute(
                "INSERT INTO steps (idx, graph, grad_index, loss, params, norm_lo, norm_hi, rms_lo, rms_hi, summaries, "
                "kept, data, stepped, clip, checks) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (step.index, self._graphs.id_of(self._connection, step.graph),
                 self._indexes.id_of(self._connection, table.index), loss, params, norm_lo, norm_hi, rms_lo, rms_hi,
                 summaries, values, data, stepped, None if step.clip is None else _dumps(step.clip),
                 None if not step.checks else _dumps(step.checks)))
            for k, call in enumerate(step.grad_calls):
                call_table = call.table
                self._connection.execute(
                    "INSERT INTO grad_calls (step, k, graph, grad_index, loss, summaries, kept) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (step.index, k, self._graphs.id_of(self._connection, call.graph),
                     self._indexes.id_of(self._connection, call_table.index), _encode_loss(call.loss),
                     encode_rows(call_table), self._values.encode(call_table)))
            self._write_run_meta(meta, panels)
        self._count += 1
        if self.loop is not step._loop:  # a run saved to a file: the file's loop learns the marks
            self.loop.add_step(step.stepped, rates)

    def update_data(self, step: Step) -> None:
        """Rewrites the logged data of a step already written (after ``run.log``)."""
        self._rewrite(step, "data", _dumps(step.data), "; log values while recording")

    def update_clip(self, step: Step) -> None:
        """Rewrites the clipping record of a step already written."""
        self._rewrite(step, "clip", None if step.clip is None else _dumps(step.clip))

    def update_checks(self, step: Step) -> None:
        """Rewrites the checks of a step already written (a GradScaler's verdict comes after its backward())."""
        self._rewrite(step, "checks", None if not step.checks else _dumps(step.checks))

    def _rewrite(self, step: Step, column: str, value: str | None, hint: str = "") -> None:
        """Sets one column (of a fixed few) of a step already written, in a transaction of its own."""
        if not self.writable:
            raise RecordingError(f"run file {self.path} is closed for writing{hint}")
        with self._lock, self._error_context("write"), _transaction(self._connection):
            self._connection.execute(f"UPDATE steps SET {column} = ? WHERE idx = ?", (value, step.index))

    def write_run_meta(self, meta: Mapping[str, Any] | None, panels: Sequence[Any] | None) -> None:
        """Writes the run's ``meta`` and panels when they changed since last written."""
        with self._lock, self._error_context("write"), _transaction(self._connection):
            self._write_run_meta(meta, panels)

    def close(self, *, meta: Mapping[str, Any] | None = None, panels: Sequence[Any] | None = None) -> None:
        """Finishes writing: stores ``meta`` and panels, marks the run complete, folds the WAL into the file.

        The store stays readable, so the run can still be rendered.
        """
        if not self.writable:
            return
        with self._lock, self._error_context("finish"):
            with _transaction(self._connection):
                self._write_run_meta(meta, panels)
                self._write_meta({"complete": "1"})
            self.writable = False
            # One self-contained file: no -wal/-shm beside it once the run is finished.
            with contextlib.suppress(sqlite3.OperationalError):  # another reader has it open: stay in WAL
                self._connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                self._connection.execute("PRAGMA journal_mode=DELETE")

    def disconnect(self) -> None:
        """Closes the database connection; reading afterwards fails."""
        with self._lock:
            self.writable = False
            self._connection.close()

    def _write_run_meta(self, meta: Mapping[str, Any] | None, panels: Sequence[Any] | None) -> None:
        rows = {}
        if meta is not None:
            rows["run_meta"] = _dumps(dict(meta))
        if panels is not None:
            rows["panels"] = _dumps(_encode_panels(panels)) if panels else "[]"
        self._write_meta(rows)

    def _write_meta(self, rows: Mapping[str, str]) -> None:
        changed = {k: v for k, v in rows.items() if self._written_meta.get(k) != v}
        if changed:
            with _transaction(self._connection):
                self._connection.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                                             changed.items())
            self._written_meta.update(changed)

    def _params_text(self, index: GradIndex) -> str:
        """The JSON list of a step's parameter names, made once per key index."""
        if self._params is None or self._params[0] is not index:
            self._params = (index, _dumps(index.params))
        return self._params[1]

    # -- reading -------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._count

    def read(self, index: int) -> StoredStep:
        """Step ``index`` (0 <= index < len), read from the file."""
        with self._lock, self._error_context("read"):
            row = self._connection.execute(f"SELECT {_STEP_COLUMNS[self.version]} FROM steps WHERE idx = ?",
                                           (index,)).fetchone()
            if row is None:
                raise _damaged(self.path, f"step {index} of {self._count} is missing")
            return self._step_from_row(row)

    def read_range(self, start: int, stop: int) -> list[StoredStep]:
        """Steps ``start`` to ``stop - 1`` in order."""
        with self._lock, self._error_context("read"):
            rows = self._connection.execute(f"SELECT {_STEP_COLUMNS[self.version]} FROM steps "
                                            "WHERE idx >= ? AND idx < ? ORDER BY idx", (start, stop)).fetchall()
            if len(rows) != max(stop - start, 0):
                raise _damaged(self.path, f"steps {start} to {stop - 1} are incomplete")
            return [self._step_from_row(row) for row in rows]

    def losses(self) -> list[float | None]:
        """Every step's loss, in one query."""
        with self._lock, self._error_context("read"):
            return [_decode_loss(text) for (text,) in self._connection.execute("SELECT loss FROM steps ORDER BY idx")]

    def loss_names(self) -> list[str | None]:
        """Every step's loss name, in one query (read from its graph)."""
        with self._lock, self._error_context("read"):
            graph_ids = [graph_id for (graph_id,) in self._connection.execute("SELECT graph FROM steps ORDER BY idx")]
            names = {graph_id: self._graph(graph_id).loss_name for graph_id in set(graph_ids)}
        return [names[graph_id] for graph_id in graph_ids]

    def param_names(self) -> list[str]:
        """Names of every parameter seen, in first-seen order, in one query."""
        names: dict[str, None] = {}
        with self._lock, self._error_context("read"):
            rows = self._connection.execute("SELECT params FROM steps GROUP BY params ORDER BY min(idx)").fetchall()
            for (text,) in rows:
                for name in json.loads(text):
                    names.setdefault(str(name), None)
        return list(names)

    def graphs(self) -> dict[str, Graph]:
        """Distinct graphs keyed by structural hash, in first-seen order."""
        found: dict[str, Graph] = {}
        with self._lock, self._error_context("read"):
            ids = [graph_id for (graph_id,) in self._connection.execute(
                "SELECT graph FROM steps GROUP BY graph ORDER BY min(idx)")]
            for graph_id in ids:
                graph = self._graph(graph_id)
                found.setdefault(graph.structural_hash, graph)
        return found

    def meta(self) -> dict[str, str]:
        """The raw ``meta`` table."""
        with self._lock, self._error_context("read"):
            return dict(self._connection.execute("SELECT key, value FROM meta"))

    def norm_range(self, measure: str = "norm") -> tuple[float, float] | None | Any:
        """The smallest and largest finite non-zero gradient norm (or RMS) of the run, from one query.

        ``NotImplemented`` where a step did not store its range (schema 1, an
        RMS before schema 3, or rows left to compute from kept values): the
        caller reads the steps.
        """
        if self.version < (3 if measure == "rms" else 2):
            return NotImplemented
        low_column, high_column = ("rms_lo", "rms_hi") if measure == "rms" else ("norm_lo", "norm_hi")
        with self._lock, self._error_context("read"):
            low, high, unknown = self._connection.execute(
                f"SELECT min({low_column}), max({high_column}), count(*) - count({low_column}) FROM steps").fetchone()
        if unknown:
            return NotImplemented
        return None if low is None or high is None else (float(low), float(high))

    def decode_table(self, step: int, grad_index: int | None, summaries: bytes, values: bytes) -> GradTable:
        """The table of step ``step`` from its stored blobs; :class:`RunFileError` when they are damaged."""
        with self._lock, self._error_context("read", f"step {step}"):
            if grad_index is None:  # schema 1: the keys came with the rows
                index, rows = _decode_rows_v1(summaries)
            else:
                width = WIDTH if self.version >= 5 else OLD_WIDTH  # abs came with schema 5
                index, rows = self._index(grad_index), decode_rows(summaries, width)
            if index and not 0 <= min(index.values()) <= max(index.values()) < len(rows):
                raise ValueError("its key index points outside its rows")
            buffers, kept, pending = decode_values(values, len(rows))
            return GradTable(index, rows.copy() if pending else rows, buffers, kept, pending)

    def _step_from_row(self, row: tuple) -> StoredStep:
        index, graph_id, grad_index, loss, summaries, values, data, *rest = row
        step = StoredStep(index, _decode_loss(loss), self._graph(graph_id), json.loads(data), self, grad_index,
                          summaries, values)
        if rest and rest[0] is not None:
            step.clip = json.loads(rest[0])
        if len(rest) > 1 and rest[1] is not None:
            step.checks = json.loads(rest[1])
        return step

    def read_calls(self, index: int) -> tuple[StoredStep, ...]:
        """The ``torch.autograd.grad`` calls recorded before step ``index``'s ``backward()``."""
        if self.version < 3:
            return ()
        with self._lock, self._error_context("read", f"step {index}"):
            rows = self._connection.execute("SELECT graph, grad_index, loss, summaries, kept FROM grad_calls "
                                            "WHERE step = ? ORDER BY k", (index,)).fetchall()
            return tuple(StoredStep(index, _decode_loss(loss), self._graph(graph_id), {}, self, grad_index,
                                    summaries, values, calls=())
                         for graph_id, grad_index, loss, summaries, values in rows)

    def _graph(self, graph_id: int) -> Graph:
        return self._graphs.get(self._connection, graph_id, self.path)

    def _index(self, index_id: int) -> GradIndex:
        return self._indexes.get(self._connection, index_id, self.path)

    @contextlib.contextmanager
    def _error_context(self, action: str, what: str = "") -> Iterator[None]:
        """Turns SQLite failures, and data that does not decode, into :class:`RunFileError` naming the file."""
        try:
            yield
        except sqlite3.DatabaseError as error:
            if action == "read" or "malformed" in str(error):
                raise _damaged(self.path, error) from None
            raise RunFileError(f"cannot {action} run file {self.path}: {error}; check the disk and the path") from None
        except (ValueError, KeyError, TypeError, IndexError, OverflowError, RuntimeError, zlib.error,
                struct.error) as error:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            if action != "read":
                raise
            where = f"{what} " if what else "a step "
            raise _damaged(self.path, f"{where}does not decode: {_one_line(error)}") from None


@contextlib.contextmanager
def _transaction(connection: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN ... COMMIT``, or ``ROLLBACK`` on any error (also KeyboardInterrupt); nests as a no-op."""
    if connection.in_transaction:
        yield
        return
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


def _connect(path: Path, *, create: bool) -> sqlite3.Connection:
    # mode=rw never creates a file, so a missing run file is reported, not made.
    uri = f"{path.absolute().as_uri()}?mode={'rwc' if create else 'rw'}"
    # isolation_level=None: transactions are explicit (_transaction), one per step.
    return sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)


# -- the sequence behind run.steps --------------------------------------------------------------------------


class StepSequence(MutableSequence[Step]):
    """``run.steps`` of a stored run: appends go to the file; only a few recent steps stay in memory.

    Indexing and iteration read older steps back from the file, so a run of
    any length costs the memory of a handful of steps.
    """

    def __init__(self, store: RunStore, on_append: Any = None, cache_size: int = _RECENT_STEPS) -> None:
        self._store = store
        self._on_append = on_append
        self._cache_size = cache_size
        self._recent: collections.OrderedDict[int, Step] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._store)

    @overload
    def __getitem__(self, index: int) -> Step: ...

    @overload
    def __getitem__(self, index: slice) -> list[Step]: ...

    def __getitem__(self, index: int | slice) -> Step | list[Step]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        count = len(self)
        position = index + count if index < 0 else index
        if not 0 <= position < count:
            raise IndexError(f"step {index} out of range: the run has {count} steps")
        step = self._recent.get(position)
        if step is None:
            step = self._store.read(position)
            self._remember(step)
        else:
            self._recent.move_to_end(position)
        return step

    def __iter__(self) -> Iterator[Step]:
        position = 0
        while position < len(self):
            stop = min(position + _READ_BATCH, len(self))
            batch = [self._recent.get(i) for i in range(position, stop)]
            missing = [i for i, step in enumerate(batch, position) if step is None]
            if missing:
                read = {s.index: s for s in self._store.read_range(missing[0], missing[-1] + 1)}
                batch = [read[i] if step is None else step for i, step in enumerate(batch, position)]
            yield from batch  # type: ignore[misc]
            position = stop

    def append(self, step: Step) -> None:
        """Writes ``step`` to the run file in one transaction and keeps it among the recent steps."""
        if self._on_append is not None:
            self._on_append(step)
        else:
            self._store.append(step)
        self._remember(step)

    def insert(self, index: int, step: Step) -> None:
        """Only appending is possible: a run file is written in step order."""
        if index != len(self):
            raise UsageError("the steps of a stored run can only be appended, not inserted")
        self.append(step)

    def __setitem__(self, index: Any, value: Any) -> None:
        raise UsageError("the steps of a stored run cannot be replaced; record a new run instead")

    def __delitem__(self, index: Any) -> None:
        raise UsageError("the steps of a stored run cannot be deleted; record a new run instead")

    def _remember(self, step: Step) -> None:
        self._recent[step.index] = step
        self._recent.move_to_end(step.index)
        while len(self._recent) > self._cache_size:
            self._recent.popitem(last=False)

    def __repr__(self) -> str:
        return f"<vizgrad steps: {len(self)} in {self._store.path}>"


class StoredRun(Run):
    """A :class:`Run` backed by a run file: steps stream to and from disk.

    Logged values (``run.log``) and changes to ``meta`` and ``panels`` reach
    the file with the next step, and at the latest when recording stops.
    """

    def __init__(self, store: RunStore, meta: Mapping[str, Any] | None = None, panels: Sequence[Any] = ()) -> None:
        super().__init__(StepSequence(store, on_append=self._append), meta, panels)
        self.store = store
        self.loop = store.loop  # the recorder's marks and the file's are one list
        if not store.loop.optimizers:
            store.loop.optimizers = [str(name) for name in self.meta.get("optimizers", [])]
        pending = self.meta.get("optimizer_pending")
        if isinstance(pending, str) and store.version >= 3 and not store.loop.pending and not store.writable:
            store.loop.pending, store.loop.pending_rates = map(list, decode_marks(pending))
        if not store.loop.groups:
            groups = self.meta.get("optimizer_groups", {})
            store.loop.groups = {int(k): [[str(n) for n in names] for names in v] for k, v in groups.items()} \
                if isinstance(groups, dict) else {}
        #: False for a file whose recording was killed (or still runs); it holds every completed step.
        self.complete = True

    @property
    def path(self) -> Path:
        """The run file."""
        return self.store.path

    def _append(self, step: Step) -> None:
        self.store.append(step, meta=self.meta, panels=self.panels)

    def _on_step_data(self, step: Step) -> None:
        if self.store.writable:
            self.store.update_data(step)

    def _on_step_checks(self, step: Step) -> None:
        if self.store.writable and step.index < len(self.store):
            self.store.update_checks(step)

    def _on_step_clip(self, step: Step) -> None:
        if self.store.writable and step.index < len(self.store):
            self.store.update_clip(step)

    def losses(self) -> list[float | None]:
        return self.store.losses()

    def loss_names(self) -> list[str | None]:
        return self.store.loss_names()

    def param_names(self) -> list[str]:
        return self.store.param_names()

    def graphs(self) -> dict[str, Graph]:
        return self.store.graphs()

    def norm_range(self, measure: str = "norm") -> tuple[float, float] | None:
        stored = self.store.norm_range(measure)
        return super().norm_range(measure) if stored is NotImplemented else stored

    def close(self) -> None:
        """Finishes writing (when recording) and closes the file; the run cannot be read afterwards."""
        try:
            self.store.close(meta=self.meta, panels=self.panels)
        finally:
            self.store.disconnect()

    def __enter__(self) -> StoredRun:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


class _RecordingStore:
    """The ``store`` handed to the recorder: its ``close()`` saves the run's meta and panels too."""

    def __init__(self, run: StoredRun) -> None:
        self.run = run

    def close(self) -> None:
        self.run.store.close(meta=self.run.meta, panels=self.run.panels)


# -- public functions ----------------------------------------------------------------------------------------


def _prepare_target(path: Path) -> None:
    """Refuses to replace a file that is not a run file; removes a run file's leftover WAL and lock files."""
    if path.is_dir():
        raise RunFileError(f"{path} is a folder; give a file name for the run file, e.g. run{RUN_SUFFIX}")
    if path.exists() and path.stat().st_size > 0 and not is_run_file(path):
        raise RunFileError(f"{path} exists and is not a vizgrad run file; choose another name or delete it first")
    parent = path.absolute().parent
    if not parent.is_dir():
        raise RunFileError(f"cannot write run file {path}: folder {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise RunFileError(f"cannot write run file {path}: folder {parent} is not writable; choose another path")


def _remove_sidecars(path: Path) -> None:
    # A stale -wal of an older file would be replayed into the new one.
    for suffix in ("-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{path}{suffix}")


def open_for_recording(path: str | os.PathLike[str]) -> tuple[StoredRun, Any]:
    """Creates the run file ``path`` (replacing an older run file there) for a recording.

    Returns:
        ``(run, store)``: a :class:`StoredRun` whose ``steps.append`` writes each
        step in one transaction, and the store whose ``close()`` finishes the
        file (the run stays readable).
    """
    target = Path(path)
    _prepare_target(target)
    with contextlib.suppress(FileNotFoundError):
        target.unlink()
    _remove_sidecars(target)
    run = StoredRun(RunStore.create(target))
    return run, _RecordingStore(run)


def save(run: Run, path: str | os.PathLike[str]) -> None:
    """Writes ``run`` to the run file ``path``.

    The file is written under a temporary name and then moved into place, so
    ``path`` always holds either the old file or the whole new one.
    """
    target = Path(path)
    if isinstance(run, StoredRun) and target.exists() and os.path.samefile(target, run.path):
        _save_onto_own_file(run)
        return
    _prepare_target(target)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    _remove_sidecars(temporary)
    try:
        store = RunStore.create(temporary, journal="DELETE")
        try:
            with store._lock, store._error_context("write"), _transaction(store._connection):
                for step in run.steps:  # one transaction: the rename makes the file appear whole
                    store.append(step)
            store.close(meta=run.meta, panels=run.panels)
        finally:
            store.disconnect()
        _remove_sidecars(target)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise


def _save_onto_own_file(run: StoredRun) -> None:
    """Saving a stored run onto its own file: its steps are there; only meta and panels can have changed."""
    if run.store.writable:
        run.store.write_run_meta(run.meta, run.panels)
        return
    connection = _connect(run.path, create=False)  # a second connection: the run's own one only reads
    try:
        writer = RunStore(connection, run.path, writable=True, version=run.store.version)
        writer.write_run_meta(run.meta, run.panels)
    except sqlite3.Error as error:
        raise RunFileError(f"cannot write run file {run.path}: {error}; check the path") from None
    finally:
        connection.close()


def load(path: str | os.PathLike[str]) -> StoredRun:
    """Opens a run file; steps are read from disk as they are used.

    Raises:
        RunFileError: The file is missing, empty, not a SQLite database, a
            SQLite database of another program, from a newer vizgrad, or damaged.
    """
    store, meta = RunStore.open(Path(path))
    try:
        run_meta = json.loads(meta.get("run_meta", "{}"))
        panels = _decode_panels(json.loads(meta.get("panels", "[]")))
    except (ValueError, TypeError) as error:
        store.disconnect()
        raise _damaged(Path(path), f"its run data does not decode: {error}") from None
    run = StoredRun(store, run_meta, panels)
    run.complete = meta.get("complete") == "1"  # False: the recording was killed or is still going
    return run
