"""Notebook 07's outside world: Acme's customers, a card gateway, a mailer and the accounts, in one SQLite file.

Every process that opens the same file sees the same world: the notebook's kernel, a worker, a pytest run started
from a cell. Each customer's card behaves in a known way (:meth:`BillingWorld.add_customer`): the bank declines
its first ``declines`` charges (or every one, :data:`ALWAYS`), and the gateway answers ``503`` to its first
``unavailable`` calls (a transient error: Temporal retries the activity). The mailer can be made to drop the
connection for an invoice's next mails of a kind (:meth:`BillingWorld.mailer_down`).

Every call is a row in ``calls``, every successful charge a row in ``charges`` (the ledger: "was this customer
charged twice?" is a query), every mail a row in ``mails``. A test points its activities at a world of its own
(a file in ``tmp_path``), so nothing it does reaches the real one.
"""

from __future__ import annotations

import asyncio
import html
import os
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass

from helpers.history import text_table
from helpers.sqlite_world import SqliteWorld

ALWAYS = -1  # ``declines=ALWAYS``: the bank declines every charge
LATENCY_S = 0.01  # every call takes a moment (and is a point where a cancelled activity can stop)

SCHEMA = """\
CREATE TABLE IF NOT EXISTS customers (
    customer    TEXT PRIMARY KEY,
    declines    INTEGER NOT NULL,   -- charges the bank still declines (-1: all of them)
    unavailable INTEGER NOT NULL,   -- calls the gateway still answers with 503
    locale      TEXT NOT NULL,
    suspended   INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS charges (
    charge_id  TEXT PRIMARY KEY,
    invoice_id TEXT NOT NULL,
    customer   TEXT NOT NULL,
    cents      INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS mails (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    invoice_id TEXT NOT NULL,
    customer   TEXT NOT NULL,
    kind       TEXT NOT NULL,       -- reminder | receipt | statement
    text       TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS mailer_outages (
    invoice_id TEXT NOT NULL, kind TEXT NOT NULL, remaining INTEGER NOT NULL, PRIMARY KEY (invoice_id, kind)
);
CREATE TABLE IF NOT EXISTS calls (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    invoice_id TEXT NOT NULL,
    service    TEXT NOT NULL,       -- gateway | mailer | accounts
    outcome    TEXT NOT NULL,
    pid        INTEGER NOT NULL,
    at         REAL NOT NULL
);"""


@dataclass(frozen=True)
class Mail:
    invoice_id: str
    customer: str
    kind: str
    text: str


@dataclass(frozen=True)
class Call:
    """One call a service received, and what it did."""

    invoice_id: str
    service: str
    outcome: str

    @property
    def failed(self) -> bool:
        return self.outcome.startswith("failed")


class BillingWorld(SqliteWorld):
    """One SQLite file holding the whole outside world. Safe to use from several processes at once."""

    SCHEMA = SCHEMA

    def __repr__(self) -> str:
        return f"BillingWorld({self.path.name})"

    @staticmethod
    def _record(db: sqlite3.Connection, invoice_id: str, service: str, outcome: str) -> None:
        db.execute(
            "INSERT INTO calls (invoice_id, service, outcome, pid, at) VALUES (?, ?, ?, ?, ?)",
            (invoice_id, service, outcome, os.getpid(), time.time()),
        )

    # ---- setting the world up ----------------------------------------------------------------------------
    def add_customer(self, customer: str, *, declines: int = 0, unavailable: int = 0, locale: str = "en") -> None:
        """A customer whose bank declines the first ``declines`` charges (:data:`ALWAYS`: all of them) and whose
        gateway answers 503 to the first ``unavailable`` calls. Adding a customer again starts them afresh."""
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO customers VALUES (?, ?, ?, ?, 0)", (customer, declines, unavailable, locale)
            )

    def mailer_down(self, invoice_id: str, kind: str, times: int = 1) -> None:
        """The mailer drops the connection for the next ``times`` mails of ``kind`` about ``invoice_id``."""
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO mailer_outages VALUES (?, ?, ?)", (invoice_id, kind, times))

    # ---- the services ------------------------------------------------------------------------------------
    async def charge(self, invoice_id: str, customer: str, amount_cents: int) -> str | None:
        """The card gateway: the charge id, or ``None`` when the bank declines the card. A 503 raises
        ``ConnectionError`` (transient: retry)."""
        await asyncio.sleep(LATENCY_S)
        with self._transaction() as db:
            row = db.execute("SELECT declines, unavailable FROM customers WHERE customer = ?", (customer,)).fetchone()
            declines, unavailable = row if row is not None else (0, 0)
            if unavailable > 0:
                db.execute("UPDATE customers SET unavailable = unavailable - 1 WHERE customer = ?", (customer,))
                self._record(db, invoice_id, "gateway", "failed: 503 Service Unavailable")
                charge_id = ""
            elif declines != 0:
                if declines > 0:
                    db.execute("UPDATE customers SET declines = declines - 1 WHERE customer = ?", (customer,))
                self._record(db, invoice_id, "gateway", "declined")
                return None
            else:
                number = db.execute("SELECT COUNT(*) FROM charges WHERE invoice_id = ?", (invoice_id,)).fetchone()[0]
                charge_id = f"{invoice_id}-charge-{number + 1}"  # the invoice's first charge is -charge-1
                db.execute("INSERT INTO charges VALUES (?, ?, ?, ?)", (charge_id, invoice_id, customer, amount_cents))
                self._record(db, invoice_id, "gateway", f"charged {amount_cents / 100:.2f}")
        if not charge_id:
            raise ConnectionError("card gateway: 503 Service Unavailable")
        return charge_id

    async def send_mail(self, invoice_id: str, customer: str, kind: str, text: str) -> None:
        """The mailer. During an outage (:meth:`mailer_down`) it raises ``ConnectionError``."""
        await asyncio.sleep(LATENCY_S)
        with self._transaction() as db:
            key = (invoice_id, kind)
            down = db.execute("SELECT remaining FROM mailer_outages WHERE invoice_id = ? AND kind = ?", key).fetchone()
            if down is not None and down[0] > 0:
                db.execute("UPDATE mailer_outages SET remaining = remaining - 1 WHERE invoice_id = ? AND kind = ?", key)
                self._record(db, invoice_id, "mailer", f"failed: {kind} not sent, connection reset")
            else:
                db.execute(
                    "INSERT INTO mails (invoice_id, customer, kind, text) VALUES (?, ?, ?, ?)",
                    (invoice_id, customer, kind, text),
                )
                self._record(db, invoice_id, "mailer", f"sent {kind}")
                return
        raise ConnectionError("mailer: connection reset")

    async def suspend(self, customer: str, invoice_id: str) -> None:
        """The accounts service: suspend the customer's account."""
        await asyncio.sleep(LATENCY_S)
        with self._transaction() as db:
            db.execute("UPDATE customers SET suspended = 1 WHERE customer = ?", (customer,))
            self._record(db, invoice_id, "accounts", "account suspended")

    # ---- reading the world -------------------------------------------------------------------------------
    def _rows(self, sql: str, *params: object) -> list[tuple[object, ...]]:
        with self._db() as db:
            return db.execute(sql, params).fetchall()

    def charges(self, invoice_id: str) -> list[str]:
        """The ids of the charges made for ``invoice_id`` (more than one: charged twice)."""
        return [str(r[0]) for r in self._rows("SELECT charge_id FROM charges WHERE invoice_id = ?", invoice_id)]

    def mails(self, invoice_id: str | None = None, *, kind: str | None = None) -> list[Mail]:
        """The mails sent, oldest first (about one invoice and/or of one kind)."""
        rows = self._rows(
            "SELECT invoice_id, customer, kind, text FROM mails WHERE (?1 IS NULL OR invoice_id = ?1) "
            "AND (?2 IS NULL OR kind = ?2) ORDER BY id",
            invoice_id,
            kind,
        )
        return [Mail(*map(str, r)) for r in rows]

    def calls(self, invoice_id: str | None = None, *, service: str | None = None) -> list[Call]:
        """Every call the services received, oldest first (about one invoice and/or to one service)."""
        rows = self._rows(
            "SELECT invoice_id, service, outcome FROM calls WHERE (?1 IS NULL OR invoice_id = ?1) "
            "AND (?2 IS NULL OR service = ?2) ORDER BY seq",
            invoice_id,
            service,
        )
        return [Call(*map(str, r)) for r in rows]

    def suspended(self, customer: str) -> bool:
        rows = self._rows("SELECT suspended FROM customers WHERE customer = ?", customer)
        return bool(rows and rows[0][0])

    def invoices(self, invoice_ids: Sequence[str]) -> InvoicesTable:
        """What the world went through for each invoice, as a table."""
        return InvoicesTable([(i, self.calls(i)) for i in invoice_ids])


def _summary(calls: Sequence[Call], service: str) -> str:
    """The calls one service received, repeats folded: ``declined ×2, charged 42.00``."""
    groups: list[list[object]] = []  # [outcome, how many in a row]
    for call in calls:
        if call.service != service:
            continue
        if groups and groups[-1][0] == call.outcome:
            groups[-1][1] += 1  # type: ignore[operator]
        else:
            groups.append([call.outcome, 1])
    return ", ".join(str(o) if n == 1 else f"{o} ×{n}" for o, n in groups) or "-"


class InvoicesTable:
    """Per invoice: what the card gateway, the mailer and the accounts service did."""

    HEADER = ("invoice", "card gateway", "mailer", "accounts")

    def __init__(self, rows: list[tuple[str, list[Call]]]) -> None:
        self.rows = rows

    def cells(self) -> list[tuple[str, str, str, str]]:
        return [(i, *(_summary(calls, s) for s in ("gateway", "mailer", "accounts"))) for i, calls in self.rows]

    def __repr__(self) -> str:
        return text_table(self.HEADER, self.cells())

    def _repr_html_(self) -> str:
        style = 'style="text-align:left;padding:1px 10px 1px 0"'
        head = "".join(f"<th {style}>{html.escape(h)}</th>" for h in self.HEADER)
        body = "".join(
            "<tr>" + "".join(f"<td {style}>{html.escape(c)}</td>" for c in row) + "</tr>" for row in self.cells()
        )
        return f'<table style="font-family:monospace;font-size:12px"><thead><tr>{head}</tr></thead>{body}</table>'
