"""The outside world the sagas of notebook 04 change: a shop's stock, payments and shipments, a travel agency's
bookings and a loyalty programme's points, all in one real SQLite database.

Every call of a service is one short transaction that also writes a row to ``effects``: what the world went
through, in order, whichever process made the call (the kernel's worker, or a worker process killed a moment
later). So "is the world consistent?" is a query (:meth:`ShopWorld.order_state`), not a print, and the order in
which compensations *really* ran (last in, first out, or not) is read from the world, not from the code.

Failures are injected into the world itself (:meth:`ShopWorld.inject`), so a worker in another process sees them:

* ``transient``: the service is unavailable for a call (the activity raises; Temporal retries it);
* ``permanent``: the service rejects the call and changes nothing (a non-retryable ``ApplicationError``, as an
  activity reports a "no" that no retry can turn into a "yes");
* ``timeout``: the call takes effect, then its answer is lost (the caller hears nothing until its timeout): the
  *ambiguous* failure, where the caller cannot tell whether the step happened;
* ``slow``: the call takes effect and answers late (in time, unless the worker dies meanwhile).

The services are idempotent where a real one would be (a shipment is booked once per order, a charge is made once
per order) and not where a real one is not: a refund or a points revocation is a new movement of money or points
every time, unless the call carries an **idempotency key** the service has seen before (a ``UNIQUE`` column: the
database, not the caller, makes it safe).
"""

from __future__ import annotations

import asyncio
import html
import os
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from temporalio.exceptions import ApplicationError

from helpers.history import text_table
from helpers.sqlite_world import SqliteWorld

TRANSIENT, PERMANENT, TIMEOUT, SLOW = "transient", "permanent", "timeout", "slow"
KINDS = (TRANSIENT, PERMANENT, TIMEOUT)  # what the failure matrix injects; SLOW only sets up crash demos
# How many calls a fault affects unless told (None: every call), and how long an answer is held back.
DEFAULT_TIMES: dict[str, int | None] = {TRANSIENT: 1, PERMANENT: None, TIMEOUT: None, SLOW: 1}
HANG_S = 3.0  # a lost answer: longer than any step's start_to_close_timeout in the notebook
SLOW_S = 1.0  # a late answer: shorter than the compensations' start_to_close_timeout
LATENCY_S = 0.03  # every call takes a moment, so a timeline shows it

# The undo of each forward step (activity names): the one home of this pairing.
COMPENSATION_OF: dict[str, str] = {
    "reserve_stock": "release_stock",
    "charge": "refund",
    "ship": "cancel_shipment",
    "book_flight": "cancel_flight",
    "book_hotel": "cancel_hotel",
    "book_car": "cancel_car",
}
COMPENSATIONS = frozenset(COMPENSATION_OF.values()) | {"revoke_points"}
ORDER_STEPS = ("reserve_stock", "charge", "ship")
TRIP_KINDS = ("flight", "hotel", "car")

# What a service says when it rejects a call (a permanent failure).
REJECTIONS = {
    "reserve_stock": "out of stock",
    "release_stock": "the warehouse system refuses the release",
    "charge": "card declined",
    "refund": "the card account is closed",
    "ship": "the courier cannot deliver to this address",
    "cancel_shipment": "the parcel has already left the warehouse",
    "book_flight": "the flight is full",
    "book_hotel": "no rooms left",
    "book_car": "no cars left",
    "cancel_flight": "the airline's booking system refuses the cancellation",
    "cancel_hotel": "the hotel refuses to cancel this booking",
    "cancel_car": "the car rental refuses the cancellation",
    "revoke_points": "the loyalty account is locked",
}

SCHEMA = """\
CREATE TABLE IF NOT EXISTS stock (sku TEXT PRIMARY KEY, available INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS reservations (
    order_id TEXT PRIMARY KEY, sku TEXT NOT NULL, qty INTEGER NOT NULL, status TEXT NOT NULL  -- held | released
);
CREATE TABLE IF NOT EXISTS payments (
    id INTEGER PRIMARY KEY, order_id TEXT NOT NULL, kind TEXT NOT NULL,  -- charge | refund
    cents INTEGER NOT NULL, idempotency_key TEXT UNIQUE                  -- NULL: the call had no key
);
CREATE TABLE IF NOT EXISTS shipments (order_id TEXT PRIMARY KEY, address TEXT, status TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS bookings (
    trip_id TEXT NOT NULL, kind TEXT NOT NULL, status TEXT NOT NULL, PRIMARY KEY (trip_id, kind)
);
CREATE TABLE IF NOT EXISTS points (customer TEXT PRIMARY KEY, balance INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS points_moves (
    id INTEGER PRIMARY KEY, customer TEXT NOT NULL, order_id TEXT NOT NULL, delta INTEGER NOT NULL,
    idempotency_key TEXT UNIQUE
);
CREATE TABLE IF NOT EXISTS faults (
    target TEXT NOT NULL, action TEXT NOT NULL, kind TEXT NOT NULL, remaining INTEGER, delay REAL NOT NULL,
    PRIMARY KEY (target, action)
);
CREATE TABLE IF NOT EXISTS effects (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, target TEXT NOT NULL, action TEXT NOT NULL, outcome TEXT NOT NULL,
    pid INTEGER NOT NULL, at REAL NOT NULL
);"""

INITIAL_STOCK = {"mug": 1_000_000, "teapot": 1_000_000}


def _cents(amount: float) -> int:
    return round(amount * 100)


def money(cents: int) -> str:
    return f"{cents / 100:.2f}"


@dataclass(frozen=True)
class Effect:
    """One call of a service, as the world went through it."""

    seq: int
    target: str
    action: str
    outcome: str
    pid: int

    @property
    def compensation(self) -> bool:
        return self.action in COMPENSATIONS

    @property
    def changed(self) -> bool:
        """Did this call change the world? (not a no-op, a failure or a rejection)"""
        return self.outcome.startswith("done")


class Effects:
    """The calls one order (or trip) made, oldest first; shown as a table."""

    def __init__(self, rows: list[Effect], processes: Mapping[int, str] | None = None) -> None:
        self.rows = rows
        self.processes = dict(processes or {})

    def __len__(self) -> int:
        return len(self.rows)

    def actions(self, *, compensations: bool | None = None, changed: bool | None = None) -> list[str]:
        """Action names in the order they happened, filtered (e.g. only compensations that changed something)."""
        return [
            e.action
            for e in self.rows
            if (compensations is None or e.compensation == compensations) and (changed is None or e.changed == changed)
        ]

    def count(self, action: str, *, changed: bool = True) -> int:
        return sum(1 for e in self.rows if e.action == action and e.changed == changed)

    def _cells(self) -> list[list[str]]:
        cells = []
        for i, e in enumerate(self.rows, 1):
            row = [str(i), ("↩ " if e.compensation else "") + e.action, e.outcome]
            if self.processes:
                row.append(self.processes.get(e.pid, "another process"))
            cells.append(row)
        return cells

    def _header(self) -> list[str]:
        return ["#", "call", "what the service did", *(["process"] if self.processes else [])]

    def __repr__(self) -> str:
        if not self.rows:
            return "(no calls yet)"
        return text_table(self._header(), self._cells())

    def _repr_html_(self) -> str:
        style = 'style="text-align:left"'
        head = "".join(f"<th {style}>{html.escape(h)}</th>" for h in self._header())
        body = ""
        for e, cells in zip(self.rows, self._cells(), strict=True):
            color = "#f6efe6" if e.compensation else "#eef6ee"
            tds = "".join(f"<td {style}>{html.escape(c)}</td>" for c in cells)
            body += f'<tr style="background:{color}">{tds}</tr>'
        return (
            f'<table style="font-family:monospace;font-size:12px"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table>"
        )


@dataclass(frozen=True)
class OrderState:
    """What the world holds for one order: stock held, money taken (charges minus refunds), the shipment."""

    held: int
    paid_cents: int
    shipment: str | None  # booked | cancelled | None (never booked)

    @property
    def untouched(self) -> bool:
        """Nothing of the order is left in the world (never done, or undone)."""
        return self.held == 0 and self.paid_cents == 0 and self.shipment != "booked"

    @property
    def complete(self) -> bool:
        return self.held > 0 and self.paid_cents > 0 and self.shipment == "booked"

    def consistent(self, status: str) -> bool:
        """All of the order for a completed run, none of it for any other ending."""
        return self.complete if status == "COMPLETED" else self.untouched

    def leftovers(self) -> list[str]:
        """What a failed order left behind in the world."""
        out = []
        if self.held:
            out.append(f"{self.held} items still held")
        if self.paid_cents > 0:
            out.append(f"{money(self.paid_cents)} still charged")
        if self.paid_cents < 0:
            out.append(f"{money(-self.paid_cents)} refunded too much")
        if self.shipment == "booked":
            out.append("a shipment still booked")
        return out

    def __str__(self) -> str:
        return f"stock held: {self.held} · paid: {money(self.paid_cents)} · shipment: {self.shipment or 'none'}"


@dataclass(frozen=True)
class TripState:
    bookings: dict[str, str | None]  # kind -> booked | cancelled | None

    @property
    def booked(self) -> list[str]:
        return [k for k in TRIP_KINDS if self.bookings.get(k) == "booked"]

    def consistent(self, status: str) -> bool:
        return len(self.booked) == len(TRIP_KINDS) if status == "COMPLETED" else not self.booked

    def __str__(self) -> str:
        return " · ".join(f"{k}: {self.bookings.get(k) or 'none'}" for k in TRIP_KINDS)


@dataclass(frozen=True)
class Fault:
    kind: str
    delay: float


class ShopWorld(SqliteWorld):
    """One SQLite file holding the whole outside world. Safe to use from several processes at once."""

    SCHEMA = SCHEMA

    def __init__(self, path: str | Path) -> None:
        super().__init__(path)
        with self._db() as db:
            db.executemany("INSERT OR IGNORE INTO stock VALUES (?, ?)", INITIAL_STOCK.items())

    def __repr__(self) -> str:
        return f"ShopWorld({self.path.name})"

    # ---- failures ------------------------------------------------------------------------------------------
    def inject(
        self, target: str, action: str, kind: str, *, times: int | str | None = "default", delay: float | None = None
    ) -> None:
        """Make the next calls of ``action`` for ``target`` (an order or trip id) fail the ``kind`` way.

        ``times``: how many calls it affects (``None``: all of them; default: one for transient and slow, all for
        permanent and timeout). ``delay``: how long a timeout or slow call holds back its answer (defaults
        :data:`HANG_S`, :data:`SLOW_S`), or how long a transient or permanent one takes to say no (default 0).
        """
        if kind not in DEFAULT_TIMES:
            raise ValueError(f"kind must be one of {', '.join(DEFAULT_TIMES)}, not {kind!r}")
        remaining = DEFAULT_TIMES[kind] if times == "default" else times
        wait = delay if delay is not None else {TIMEOUT: HANG_S, SLOW: SLOW_S}.get(kind, 0.0)
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO faults VALUES (?, ?, ?, ?, ?)", (target, action, kind, remaining, wait))

    @staticmethod
    def _take_fault(db: sqlite3.Connection, target: str, action: str) -> Fault | None:
        row = db.execute(
            "SELECT kind, remaining, delay FROM faults WHERE target = ? AND action = ?", (target, action)
        ).fetchone()
        if row is None:
            return None
        kind, remaining, delay = row
        if remaining is not None and remaining <= 1:
            db.execute("DELETE FROM faults WHERE target = ? AND action = ?", (target, action))
        elif remaining is not None:
            db.execute("UPDATE faults SET remaining = remaining - 1 WHERE target = ? AND action = ?", (target, action))
        return Fault(kind, delay)

    @staticmethod
    def _record(db: sqlite3.Connection, target: str, action: str, outcome: str) -> None:
        db.execute(
            "INSERT INTO effects (target, action, outcome, pid, at) VALUES (?, ?, ?, ?, ?)",
            (target, action, outcome, os.getpid(), time.time()),
        )

    async def _call(self, target: str, action: str, effect: Callable[[sqlite3.Connection], str]) -> str:
        """One call of a service: maybe a fault, else the effect; and its record, in one transaction (two when a
        failing service takes its time to say no)."""
        await asyncio.sleep(LATENCY_S)
        with self._transaction() as db:
            fault = self._take_fault(db, target, action)
            kind = fault.kind if fault is not None else None
            slow_no = fault is not None and kind in (TRANSIENT, PERMANENT) and fault.delay > 0
            if not slow_no:
                error, outcome = self._apply(db, target, action, kind, effect)
        if fault is not None and slow_no:
            await asyncio.sleep(fault.delay)
            with self._transaction() as db:
                error, outcome = self._apply(db, target, action, kind, effect)
        if error is not None:
            raise error
        if fault is not None and kind in (TIMEOUT, SLOW):
            await asyncio.sleep(fault.delay)  # the effect happened; the answer comes late, or never
        return outcome

    def _apply(
        self, db: sqlite3.Connection, target: str, action: str, kind: str | None, effect: Callable[..., str]
    ) -> tuple[BaseException | None, str]:
        """Fail the ``kind`` way, or make the effect; record what happened. Returns (error to raise, outcome)."""
        if kind == TRANSIENT:
            self._record(db, target, action, "failed: service unavailable")
            return ConnectionError(f"{action}: the service is unavailable, try again"), ""
        if kind == PERMANENT:
            reason = REJECTIONS.get(action, "rejected")
            self._record(db, target, action, f"rejected: {reason}")
            return ApplicationError(reason, type="Rejected", non_retryable=True), ""
        db.execute("SAVEPOINT effect")
        try:
            outcome = effect(db)
        except ApplicationError as err:  # the service itself said no (e.g. a refund larger than the charge)
            db.execute("ROLLBACK TO effect")
            self._record(db, target, action, f"rejected: {err.message}")
            return err, ""
        late = {TIMEOUT: " · then its answer was lost", SLOW: " · answered late"}
        self._record(db, target, action, outcome + late.get(kind or "", ""))
        return None, outcome

    # ---- the shop's services ----------------------------------------------------------------------------------
    async def reserve_stock(self, order_id: str, sku: str, qty: int) -> str:
        def effect(db: sqlite3.Connection) -> str:
            row = db.execute("SELECT status FROM reservations WHERE order_id = ?", (order_id,)).fetchone()
            if row is not None and row[0] == "held":
                return "no-op: already held"
            db.execute("UPDATE stock SET available = available - ? WHERE sku = ?", (qty, sku))
            db.execute("INSERT OR REPLACE INTO reservations VALUES (?, ?, ?, 'held')", (order_id, sku, qty))
            return f"done: {qty} × {sku} held"

        return await self._call(order_id, "reserve_stock", effect)

    async def release_stock(self, order_id: str) -> str:
        def effect(db: sqlite3.Connection) -> str:
            row = db.execute("SELECT sku, qty, status FROM reservations WHERE order_id = ?", (order_id,)).fetchone()
            if row is None:
                return "no-op: nothing held"
            sku, qty, status = row
            if status != "held":
                return "no-op: already released"
            db.execute("UPDATE stock SET available = available + ? WHERE sku = ?", (qty, sku))
            db.execute("UPDATE reservations SET status = 'released' WHERE order_id = ?", (order_id,))
            return f"done: {qty} × {sku} released"

        return await self._call(order_id, "release_stock", effect)

    async def charge(self, order_id: str, amount: float) -> str:
        """Charge the order's card once: the shop sends the order id as the idempotency key (notebook 03)."""

        def effect(db: sqlite3.Connection) -> str:
            key = f"charge-{order_id}"
            if db.execute("SELECT 1 FROM payments WHERE idempotency_key = ?", (key,)).fetchone():
                return "no-op: already charged"
            db.execute("INSERT INTO payments VALUES (NULL, ?, 'charge', ?, ?)", (order_id, _cents(amount), key))
            return f"done: {amount:.2f} charged"

        return await self._call(order_id, "charge", effect)

    async def refund(self, order_id: str, amount: float, *, key: str | None = None) -> str:
        """Refund ``amount`` of the order's charge. Each call is a new refund, unless ``key`` was seen before."""

        def effect(db: sqlite3.Connection) -> str:
            if key is not None and db.execute("SELECT 1 FROM payments WHERE idempotency_key = ?", (key,)).fetchone():
                return "no-op: a refund with this key was already made"
            charged, refunded = self._payments(db, order_id)
            if charged == 0:
                return "no-op: nothing was charged"
            if _cents(amount) > charged - refunded:
                raise ApplicationError(
                    f"{amount:.2f} is more than the {money(charged - refunded)} left to refund",
                    type="Rejected",
                    non_retryable=True,
                )
            db.execute("INSERT INTO payments VALUES (NULL, ?, 'refund', ?, ?)", (order_id, _cents(amount), key))
            return f"done: {amount:.2f} refunded"

        return await self._call(order_id, "refund", effect)

    async def ship(self, order_id: str, address: str) -> str:
        def effect(db: sqlite3.Connection) -> str:
            row = db.execute("SELECT status FROM shipments WHERE order_id = ?", (order_id,)).fetchone()
            if row is not None and row[0] == "booked":
                return "no-op: already booked"
            db.execute("INSERT OR REPLACE INTO shipments VALUES (?, ?, 'booked')", (order_id, address))
            return "done: shipment booked"

        return await self._call(order_id, "ship", effect)

    async def cancel_shipment(self, order_id: str) -> str:
        def effect(db: sqlite3.Connection) -> str:
            row = db.execute("SELECT status FROM shipments WHERE order_id = ?", (order_id,)).fetchone()
            if row is None:
                return "no-op: nothing booked"
            if row[0] != "booked":
                return "no-op: already cancelled"
            db.execute("UPDATE shipments SET status = 'cancelled' WHERE order_id = ?", (order_id,))
            return "done: shipment cancelled"

        return await self._call(order_id, "cancel_shipment", effect)

    # ---- the travel agency's services ---------------------------------------------------------------------------
    async def book(self, trip_id: str, kind: str) -> str:
        """Book the trip's flight, hotel or car (once per trip)."""

        def effect(db: sqlite3.Connection) -> str:
            row = db.execute("SELECT status FROM bookings WHERE trip_id = ? AND kind = ?", (trip_id, kind)).fetchone()
            if row is not None and row[0] == "booked":
                return "no-op: already booked"
            db.execute("INSERT OR REPLACE INTO bookings VALUES (?, ?, 'booked')", (trip_id, kind))
            return f"done: {kind} booked"

        return await self._call(trip_id, f"book_{kind}", effect)

    async def cancel_booking(self, trip_id: str, kind: str) -> str:
        def effect(db: sqlite3.Connection) -> str:
            row = db.execute("SELECT status FROM bookings WHERE trip_id = ? AND kind = ?", (trip_id, kind)).fetchone()
            if row is None:
                return "no-op: nothing booked"
            if row[0] != "booked":
                return "no-op: already cancelled"
            db.execute("UPDATE bookings SET status = 'cancelled' WHERE trip_id = ? AND kind = ?", (trip_id, kind))
            return f"done: {kind} cancelled"

        return await self._call(trip_id, f"cancel_{kind}", effect)

    # ---- the loyalty programme -----------------------------------------------------------------------------------
    def set_points(self, customer: str, balance: int) -> None:
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO points VALUES (?, ?)", (customer, balance))

    async def revoke_points(self, customer: str, points: int, *, order_id: str, key: str | None = None) -> str:
        """Take ``points`` from the customer for ``order_id``: a new deduction every call, unless ``key`` was seen."""

        def effect(db: sqlite3.Connection) -> str:
            if (
                key is not None
                and db.execute("SELECT 1 FROM points_moves WHERE idempotency_key = ?", (key,)).fetchone()
            ):
                return "no-op: a revocation with this key was already made"
            db.execute("INSERT OR IGNORE INTO points VALUES (?, 0)", (customer,))
            db.execute("UPDATE points SET balance = balance - ? WHERE customer = ?", (points, customer))
            db.execute("INSERT INTO points_moves VALUES (NULL, ?, ?, ?, ?)", (customer, order_id, -points, key))
            return f"done: {points} points taken"

        return await self._call(order_id, "revoke_points", effect)

    # ---- looking at the world --------------------------------------------------------------------------------------
    @staticmethod
    def _payments(db: sqlite3.Connection, order_id: str) -> tuple[int, int]:
        rows = dict(
            db.execute("SELECT kind, SUM(cents) FROM payments WHERE order_id = ? GROUP BY kind", (order_id,)).fetchall()
        )
        return rows.get("charge", 0) or 0, rows.get("refund", 0) or 0

    def order_state(self, order_id: str) -> OrderState:
        with self._db() as db:
            row = db.execute("SELECT qty, status FROM reservations WHERE order_id = ?", (order_id,)).fetchone()
            held = row[0] if row is not None and row[1] == "held" else 0
            charged, refunded = self._payments(db, order_id)
            ship = db.execute("SELECT status FROM shipments WHERE order_id = ?", (order_id,)).fetchone()
        return OrderState(held, charged - refunded, ship[0] if ship else None)

    def refunds(self, order_id: str) -> int:
        """How many refunds the order got (each a movement of money)."""
        with self._db() as db:
            return db.execute(
                "SELECT COUNT(*) FROM payments WHERE order_id = ? AND kind = 'refund'", (order_id,)
            ).fetchone()[0]

    def trip_state(self, trip_id: str) -> TripState:
        with self._db() as db:
            rows = dict(db.execute("SELECT kind, status FROM bookings WHERE trip_id = ?", (trip_id,)).fetchall())
        return TripState({k: rows.get(k) for k in TRIP_KINDS})

    def points(self, customer: str) -> int:
        with self._db() as db:
            row = db.execute("SELECT balance FROM points WHERE customer = ?", (customer,)).fetchone()
        return row[0] if row else 0

    def points_moves(self, order_id: str) -> list[tuple[int, str | None]]:
        """``(delta, idempotency key)`` of every points movement made for ``order_id``."""
        with self._db() as db:
            return db.execute(
                "SELECT delta, idempotency_key FROM points_moves WHERE order_id = ? ORDER BY id", (order_id,)
            ).fetchall()

    def available(self, sku: str) -> int:
        with self._db() as db:
            row = db.execute("SELECT available FROM stock WHERE sku = ?", (sku,)).fetchone()
        return row[0] if row else 0

    def effects(self, target: str, processes: Mapping[int, str] | None = None) -> Effects:
        """Every call made for ``target``, oldest first; ``processes`` names pids in a "process" column."""
        with self._db() as db:
            rows = db.execute(
                "SELECT seq, target, action, outcome, pid FROM effects WHERE target = ? ORDER BY seq", (target,)
            ).fetchall()
        return Effects([Effect(*r) for r in rows], processes)


__all__ = [
    "COMPENSATIONS",
    "COMPENSATION_OF",
    "KINDS",
    "ORDER_STEPS",
    "PERMANENT",
    "SLOW",
    "TIMEOUT",
    "TRANSIENT",
    "TRIP_KINDS",
    "Effect",
    "Effects",
    "OrderState",
    "ShopWorld",
    "TripState",
    "money",
]
