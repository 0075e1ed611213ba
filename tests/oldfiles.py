"""Run files as older vizgrads wrote them, made from new ones: rows narrowed to 7 columns, the schema stamped."""

from __future__ import annotations

import sqlite3
import struct
import zlib
from pathlib import Path

import numpy as np

from vizgrad.gradtable import OLD_WIDTH, WIDTH


def narrowed(blob: bytes) -> bytes:
    """A step's summary rows as schema 1-4 stored them: without the ``abs`` column, checksummed again."""
    rows = np.frombuffer(blob[4:], dtype="<f8").reshape(-1, WIDTH)[:, :OLD_WIDTH]
    data = np.ascontiguousarray(rows).tobytes()
    return struct.pack("<I", zlib.crc32(data)) + data


def as_schema(path: Path, version: int) -> sqlite3.Connection:
    """Rewrites the run file at ``path`` with 7-column rows and schema ``version`` (2 to 4); returns the open
    connection for the caller to drop what that version lacks, then commit."""
    connection = sqlite3.connect(path)
    for table in ("steps", "grad_calls"):
        key = "idx" if table == "steps" else "rowid"
        for at, blob in connection.execute(f"SELECT {key}, summaries FROM {table}").fetchall():
            connection.execute(f"UPDATE {table} SET summaries = ? WHERE {key} = ?", (narrowed(blob), at))
    connection.execute("UPDATE meta SET value = ? WHERE key = 'vizgrad_schema'", (str(version),))
    return connection
