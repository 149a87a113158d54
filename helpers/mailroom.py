"""The outside world of notebook 06: what the workflows sent out, and the requests an outside agency works on.

One real SQLite file, written by whichever process does the work (the kernel's worker, an agency running as a
script of its own). Two tables:

* ``messages``: everything a workflow *sent* to the outside: an e-mail to a person (an approval request, a
  reminder, an escalation, an outcome) or an instruction to a bank (pay 30 to an account). ``at`` is the time the
  workflow's activity was scheduled, read from Temporal, so in the time-skipping test server a reminder sent "after
  a day" reads a day later, although it took milliseconds.
* ``requests``: work waiting at an outside agency, and how to answer it once done: the id of the workflow to
  signal (a webhook-style callback), or the **task token** of the activity to complete (asynchronous activity
  completion). The agency marks each one answered.

Every call is one short transaction (``BEGIN IMMEDIATE``, a busy timeout), safe from several processes at once.
"""

from __future__ import annotations

import html
import time
from collections.abc import Sequence
from dataclasses import dataclass

from helpers.history import text_table
from helpers.sqlite_world import SqliteWorld

SCHEMA = """\
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, ref TEXT NOT NULL, recipient TEXT NOT NULL, subject TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS requests (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, ref TEXT NOT NULL, body TEXT NOT NULL,
    reply_to TEXT NOT NULL,           -- a workflow id (answer with a signal) or '' (answer with the task token)
    token BLOB,                       -- the activity's task token, for asynchronous completion
    answer TEXT, answered_at REAL
);"""


@dataclass(frozen=True)
class Message:
    ref: str
    recipient: str
    subject: str
    at: float


@dataclass(frozen=True)
class Request:
    seq: int
    kind: str
    ref: str
    body: str
    reply_to: str
    token: bytes | None
    answer: str | None

    @property
    def how(self) -> str:
        """How the agency answers it."""
        return "signal to the workflow" if self.reply_to else "completes the activity (task token)"


class Messages:
    """Messages of one ref (a claim, an account), oldest first; ``day`` turns times into days since the first."""

    def __init__(self, rows: Sequence[Message], day: float | None = None) -> None:
        self.rows = list(rows)
        self.day = day

    def __len__(self) -> int:
        return len(self.rows)

    def subjects(self, recipient: str | None = None) -> list[str]:
        return [m.subject for m in self.rows if recipient is None or m.recipient == recipient]

    def _cells(self) -> list[list[str]]:
        t0 = self.rows[0].at if self.rows else 0.0
        cells = []
        for m in self.rows:
            row = [m.recipient, m.subject]
            if self.day:
                row.append(f"day {(m.at - t0) / self.day:.1f}")
            cells.append(row)
        return cells

    def _header(self) -> list[str]:
        return ["to", "subject", *(["sent"] if self.day else [])]

    def __repr__(self) -> str:
        return text_table(self._header(), self._cells()) if self.rows else "(nothing sent)"

    def _repr_html_(self) -> str:
        style = 'style="text-align:left"'
        head = "".join(f"<th {style}>{html.escape(h)}</th>" for h in self._header())
        body = "".join(
            "<tr>" + "".join(f"<td {style}>{html.escape(c)}</td>" for c in row) + "</tr>" for row in self._cells()
        )
        return (
            f'<table style="font-family:monospace;font-size:12px"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table>"
        )


class Mailroom(SqliteWorld):
    """The SQLite file of messages and agency requests (see the module docstring)."""

    SCHEMA = SCHEMA

    def __repr__(self) -> str:
        return f"Mailroom({self.path.name})"

    # ---- messages ----------------------------------------------------------------------------------------
    def send(self, ref: str, recipient: str, subject: str, *, at: float | None = None) -> None:
        """Record a message a workflow sent (``at``: the workflow's time for it, default now)."""
        with self._transaction() as db:
            db.execute(
                "INSERT INTO messages (ref, recipient, subject, at) VALUES (?, ?, ?, ?)",
                (ref, recipient, subject, time.time() if at is None else at),
            )

    def messages(self, ref: str, *, day: float | None = None) -> Messages:
        """What was sent for ``ref``, oldest first (``day``: seconds per day, to show when, in days)."""
        with self._transaction() as db:
            rows = db.execute(
                "SELECT ref, recipient, subject, at FROM messages WHERE ref = ? ORDER BY at, seq", (ref,)
            ).fetchall()
        return Messages([Message(*r) for r in rows], day)

    # ---- an outside agency's requests --------------------------------------------------------------------
    def submit(self, kind: str, ref: str, body: str, *, reply_to: str = "", token: bytes | None = None) -> int:
        """A request for the agency; it answers ``reply_to`` (a workflow id) or completes ``token``."""
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO requests (kind, ref, body, reply_to, token) VALUES (?, ?, ?, ?, ?)",
                (kind, ref, body, reply_to, token),
            )
            return int(cursor.lastrowid or 0)

    def waiting(self) -> list[Request]:
        """Requests the agency has not answered yet, oldest first."""
        return self._requests("WHERE answer IS NULL")

    def requests(self, ref: str) -> list[Request]:
        return self._requests("WHERE ref = ?", (ref,))

    def answered(self, seq: int, answer: str) -> None:
        with self._transaction() as db:
            db.execute("UPDATE requests SET answer = ?, answered_at = ? WHERE seq = ?", (answer, time.time(), seq))

    def _requests(self, where: str, args: tuple[str, ...] = ()) -> list[Request]:
        with self._transaction() as db:
            rows = db.execute(
                f"SELECT seq, kind, ref, body, reply_to, token, answer FROM requests {where} ORDER BY seq", args
            ).fetchall()
        return [Request(*r) for r in rows]

    def requests_table(self, ref: str) -> str:
        rows = [[r.kind, r.body, r.how, r.answer or "(waiting)"] for r in self.requests(ref)]
        return text_table(["request", "what", "answered by", "answer"], rows) if rows else "(no requests)"


__all__ = ["Mailroom", "Message", "Messages", "Request"]
