"""A piece of the outside world kept in a SQLite file: what notebooks' services (a payment provider, a shop, a
mailroom, a billing system) build on, so that what happened is a query, whichever process made it happen.

Every process that imports the service opens the same file. Readers never wait (WAL); writers take turns
(``BEGIN IMMEDIATE``), so a service's check-then-act cannot interleave with another process's; a process killed
in the middle of a write leaves the file as it was before that write.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

BUSY_TIMEOUT_S = 10.0  # how long a writer waits for another process's write to finish


class SqliteWorld:
    """Base of a service whose state lives in the SQLite file ``path``; ``SCHEMA`` is created on first use."""

    SCHEMA = ""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        with self._db() as db:
            db.executescript(self.SCHEMA)

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        """A connection in autocommit mode (each statement on its own), closed afterwards."""
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # a demo world: survive a crashed process, not a power cut
            yield db
        finally:
            db.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One writer at a time: everything in the block commits together, or not at all."""
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def query(self, sql: str, *params: object) -> list[tuple[object, ...]]:
        """A read-only SQL query against the file (what the service's support team would run)."""
        db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S)
        try:
            return db.execute(sql, params).fetchall()
        finally:
            db.close()


__all__ = ["BUSY_TIMEOUT_S", "SqliteWorld"]
