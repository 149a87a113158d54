"""Notebook 03's outside world: a payment provider with a real SQLite database, and a card gateway that fails.

:class:`PaymentProvider` is what a ``charge`` activity talks to. Every charge is a row in a SQLite file, so a
double charge is something you can count with SQL, whichever process (the kernel, a killed worker) made it. Like
real providers it honours an **idempotency key**: a second request with a key it has seen returns the first
charge instead of charging again. It can also drop the answer to a request after the charge went through
(:meth:`PaymentProvider.drop_response`), the ambiguous failure every remote call can suffer.

:func:`authorize` is a card gateway whose answer depends on the card token: fine, invalid, declined, briefly
unavailable or rate limited. Its errors are plain Python exceptions, as a client library would raise them.
"""

from __future__ import annotations

import html
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from helpers.history import text_table
from helpers.sqlite_world import SqliteWorld

# The provider's tables. The UNIQUE constraint is what makes the key safe under races: of two requests with one
# key that both pass the "seen it?" check at the same moment, only one INSERT can succeed.
SCHEMA = """\
CREATE TABLE IF NOT EXISTS charges (
    charge_id       TEXT PRIMARY KEY,
    order_id        TEXT NOT NULL,
    amount_cents    INTEGER NOT NULL,
    idempotency_key TEXT UNIQUE,          -- NULL when the request had no key
    created_at      REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS dropped_responses (  -- test hook: charge, then lose the answer
    order_id  TEXT PRIMARY KEY,
    remaining INTEGER NOT NULL
);"""


class IdempotencyKeyReused(ValueError):
    """The same key came with a different request: the client mixes up two charges."""


@dataclass(frozen=True)
class Charge:
    charge_id: str
    order_id: str
    amount_cents: int
    idempotency_key: str | None

    @property
    def amount(self) -> str:
        return f"{self.amount_cents / 100:.2f}"


class PaymentProvider(SqliteWorld):
    """A payment provider whose ledger of charges is the SQLite file ``path`` (shared by every process)."""

    SCHEMA = SCHEMA

    def __repr__(self) -> str:
        return f"PaymentProvider({self.path.name}, {len(self.charges())} charges)"

    # ---- the API a charge activity calls -------------------------------------------------------------------
    def charge(self, order_id: str, amount_cents: int, *, idempotency_key: str | None = None) -> str:
        """Charge the customer; returns the charge id. With a key seen before, returns that charge instead."""
        with self._transaction() as db:
            if idempotency_key is not None:
                seen = db.execute(
                    "SELECT charge_id, order_id, amount_cents FROM charges WHERE idempotency_key = ?",
                    (idempotency_key,),
                ).fetchone()
                if seen is not None:
                    if (seen[1], seen[2]) != (order_id, amount_cents):
                        raise IdempotencyKeyReused(
                            f"idempotency key {idempotency_key!r} was first used to charge {seen[2]} cents for "
                            f"{seen[1]}, now {amount_cents} cents for {order_id}: one key per charge"
                        )
                    return str(seen[0])  # the first answer again: nobody is charged twice
            # Numbered per order (its first charge is /ch1): the ids a notebook prints do not depend on how the
            # charges of other orders interleaved with this one.
            number = db.execute("SELECT COUNT(*) FROM charges WHERE order_id = ?", (order_id,)).fetchone()[0] + 1
            charge_id = f"{order_id}/ch{number}"
            db.execute(
                "INSERT INTO charges VALUES (?, ?, ?, ?, ?)",
                (charge_id, order_id, amount_cents, idempotency_key, time.time()),
            )
            dropped = db.execute(
                "UPDATE dropped_responses SET remaining = remaining - 1 WHERE order_id = ? AND remaining > 0",
                (order_id,),
            ).rowcount
        if dropped:
            raise ConnectionResetError("the connection dropped before the provider's answer arrived")
        return charge_id

    # ---- what tests and notebooks look at ------------------------------------------------------------------
    def drop_response(self, order_id: str, times: int = 1) -> None:
        """The next ``times`` charges for ``order_id`` go through, but their answer is lost on the way back."""
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO dropped_responses VALUES (?, ?)", (order_id, times))

    def charges(self, order_id: str | None = None) -> list[Charge]:
        with self._transaction() as db:
            rows = db.execute(
                "SELECT charge_id, order_id, amount_cents, idempotency_key FROM charges"
                + (" WHERE order_id = ?" if order_id is not None else "")
                + " ORDER BY created_at, charge_id",
                () if order_id is None else (order_id,),
            ).fetchall()
        return [Charge(*row) for row in rows]

    def table(self, orders: Mapping[str, str]) -> ChargesTable:
        """How often each order (``{"label": order_id}``) was charged, and with which keys."""
        return ChargesTable({label: self.charges(order) for label, order in orders.items()})


class ChargesTable:
    def __init__(self, columns: dict[str, list[Charge]]) -> None:
        self.columns = columns

    def rows(self) -> list[tuple[str, str, str, str]]:
        out = []
        for label, charges in self.columns.items():
            keys = Counter(c.idempotency_key for c in charges)
            key_text = ", ".join(f"{k}" + (f" ×{n}" if n > 1 else "") for k, n in keys.items() if k) or "none"
            amounts = " + ".join(c.amount for c in charges) or "-"
            verdict = f"charged {len(charges)}×" + ("  ⚠ double charge!" if len(charges) > 1 else "")
            out.append((label, verdict, amounts, key_text))
        return out

    def __repr__(self) -> str:
        return text_table(("order", "at the provider", "amounts", "idempotency keys"), self.rows())

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{h}</th>" for h in ("order", "at the provider", "amounts", "idempotency keys"))
        body = "".join(
            "<tr>" + "".join(f'<td style="text-align:left">{html.escape(v)}</td>' for v in row) + "</tr>"
            for row in self.rows()
        )
        style = "font-family:monospace;font-size:12px"
        return f'<table style="{style}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


# --------------------------------------------------------------------------- the card gateway


class InvalidCard(ValueError):
    """The request itself is wrong (a validation error): it fails the same way every time."""


class CardDeclined(Exception):
    """The bank said no (a business outcome): asking again gives the same answer."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class GatewayUnavailable(ConnectionError):
    """The gateway is briefly down (a transient error): a later attempt succeeds."""


class RateLimited(Exception):
    """Too many requests: the gateway says when to come back."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


CARDS = {
    "tok_visa": "a good card",
    "tok_invalid": "a card number that fails the checksum (validation error)",
    "tok_declined": "a card with insufficient funds (business rule: declined)",
    "tok_unavailable": "a good card while the gateway answers 503 twice (transient)",
    "tok_ratelimited": "a good card while the gateway answers 429 once, with retry after 1.5 s (rate limit)",
}
UNAVAILABLE_CALLS = 2
RETRY_AFTER_S = 1.5

_calls: dict[str, list[float]] = {}
_calls_lock = threading.Lock()


def calls(card: str) -> int:
    """How many times :func:`authorize` was called with this exact card token (in this process)."""
    return len(_calls.get(card, []))


def call_times(card: str) -> list[float]:
    """When :func:`authorize` was called with this card token (``time.monotonic()``)."""
    return list(_calls.get(card, []))


def authorize(card: str, amount_cents: int) -> str:
    """Authorize a payment. ``card`` is a token from :data:`CARDS`, optionally with ``#anything`` appended to
    count its calls separately (``tok_unavailable#7``)."""
    with _calls_lock:
        _calls.setdefault(card, []).append(time.monotonic())
        n = len(_calls[card])
    kind = card.split("#", 1)[0]
    if kind not in CARDS:
        raise InvalidCard(f"unknown card token {kind!r}")
    if amount_cents <= 0:
        raise InvalidCard(f"amount must be positive, got {amount_cents} cents")
    if kind == "tok_invalid":
        raise InvalidCard("card number 4242 4242 4242 4241 fails the checksum")
    if kind == "tok_declined":
        raise CardDeclined("insufficient funds", code=51)
    if kind == "tok_unavailable" and n <= UNAVAILABLE_CALLS:
        raise GatewayUnavailable("503 Service Unavailable")
    if kind == "tok_ratelimited" and n == 1:
        raise RateLimited(f"429 Too Many Requests, retry after {RETRY_AFTER_S:g} s", retry_after=RETRY_AFTER_S)
    return approval(kind, amount_cents)


def approval(card: str, amount_cents: int) -> str:
    """What :func:`authorize` returns for a card it accepts."""
    return f"auth-{card.split('#', 1)[0].removeprefix('tok_')}-{amount_cents}"
