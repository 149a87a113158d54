"""Notebook 03's long task: backing up a large file, chunk by chunk, to a storage service that records every call.

Each call takes :data:`CHUNK_SECONDS` and is written to a SQLite file (``executions``) with the activity attempt
that made it, so after a crash you can count how many chunks were done twice, whichever process did them.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from dataclasses import dataclass

from helpers.sqlite_world import SqliteWorld

CHUNK_SECONDS = 0.1

SCHEMA = """\
CREATE TABLE IF NOT EXISTS executions (
    file    TEXT NOT NULL,
    op      TEXT NOT NULL,
    chunk   INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    at      REAL NOT NULL
);"""


@dataclass(frozen=True)
class Execution:
    """One call of the storage service: ``op`` on ``chunk`` of ``file``, by activity ``attempt``, at ``at``."""

    file: str
    op: str
    chunk: int
    attempt: int
    at: float


def chunk_checksum(file: str, chunk: int) -> int:
    """The checksum of one chunk (what :meth:`BackupStore.checksum_chunk` returns)."""
    return zlib.crc32(f"{file}:{chunk}".encode()) % 10_000


def file_checksum(file: str, chunks: int) -> int:
    """The right answer: the sum of every chunk's checksum."""
    return sum(chunk_checksum(file, c) for c in range(chunks))


def _attempt() -> int:
    from temporalio import activity

    return activity.info().attempt if activity.in_activity() else 0


class BackupStore(SqliteWorld):
    """The storage service; its call log is the SQLite file ``path``."""

    SCHEMA = SCHEMA

    def __repr__(self) -> str:
        return f"BackupStore({self.path.name})"

    def _record(self, file: str, op: str, chunk: int) -> None:
        with self._transaction() as db:
            db.execute("INSERT INTO executions VALUES (?, ?, ?, ?, ?)", (file, op, chunk, _attempt(), time.time()))

    async def upload_chunk(self, file: str, chunk: int) -> None:
        """Upload one chunk of ``file`` (takes 0.1 s)."""
        await asyncio.sleep(CHUNK_SECONDS)
        self._record(file, "upload", chunk)

    async def checksum_chunk(self, file: str, chunk: int) -> int:
        """Read one chunk of ``file`` back and return its checksum (takes 0.1 s)."""
        await asyncio.sleep(CHUNK_SECONDS)
        self._record(file, "checksum", chunk)
        return chunk_checksum(file, chunk)

    def executions(self, file: str, op: str | None = None) -> list[Execution]:
        with self._db() as db:
            rows = db.execute(
                "SELECT file, op, chunk, attempt, at FROM executions WHERE file = ?"
                + (" AND op = ?" if op else "")
                + " ORDER BY at",
                (file, op) if op else (file,),
            ).fetchall()
        return [Execution(*row) for row in rows]

    def chunks_done(self, file: str) -> int:
        """How many chunk calls for ``file`` finished so far (repeats included)."""
        with self._db() as db:
            return int(db.execute("SELECT COUNT(*) FROM executions WHERE file = ?", (file,)).fetchone()[0])
