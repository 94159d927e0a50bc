"""The call ledger: every teacher call in one SQLite file (WAL), a response cache and a hard budget.

One row per distinct request (``key``). Life of a row::

    (none) --reserve--> inflight --complete--> delivered      (charged once, never again)
                           |--fail-----------> failed          (dead letter, with the error)

A reservation is committed *before* the request is sent, so after a crash an ``inflight`` row
still counts against the budget (the provider may have billed it); the next run re-sends it
once under the charge already made.

The charging rule, by what the provider can have billed (column ``billing`` says which applied):
a delivered answer is charged; a request that never reached the server (connection refused, DNS
failure, connect timeout) or that the server rejected before generating (4xx, 429, 5xx other
than the timeouts 408/504) is not; a request whose outcome is unknown (read timeout, connection
lost after it was sent) stays charged as *possibly billed*. The budget counts charged rows only;
a rerun sends uncharged failures again (a new charge) and possibly billed ones once more under
their charge. A delivered reply that cannot be used (whitespace only, an unparseable synthesis)
keeps its charge and usage, and column ``problem`` says why it was not used.

Every operation runs in a ``BEGIN IMMEDIATE`` transaction, so budget checks are atomic across
threads and processes sharing the file. Operations inside ``with ledger.transaction():`` share
one commit (the client reserves a window of 64 requests, or records the replies that arrived
together, in one commit rather than 64).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from urllib.parse import quote
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from domdistill.errors import RunFolderError
from domdistill.redact import redact

LEDGER_NAME = "ledger.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
  key TEXT PRIMARY KEY, teacher TEXT, domain TEXT, stage TEXT, kind TEXT,
  status TEXT NOT NULL, charged INTEGER NOT NULL DEFAULT 0, cached INTEGER NOT NULL DEFAULT 0,
  request TEXT, response TEXT, data TEXT,
  prompt_tokens INTEGER NOT NULL DEFAULT 0, completion_tokens INTEGER NOT NULL DEFAULT 0,
  reserved_tokens INTEGER NOT NULL DEFAULT 0, cost REAL NOT NULL DEFAULT 0,
  latency_s REAL, attempts INTEGER NOT NULL DEFAULT 0, sends INTEGER NOT NULL DEFAULT 0,
  error TEXT, created REAL, updated REAL, billing TEXT, problem TEXT);
CREATE INDEX IF NOT EXISTS calls_status ON calls(status);
CREATE TABLE IF NOT EXISTS spend (
  id INTEGER PRIMARY KEY CHECK (id = 1), calls INTEGER NOT NULL, tokens INTEGER NOT NULL,
  money REAL NOT NULL);
INSERT OR IGNORE INTO spend VALUES (1, 0, 0, 0.0);
CREATE TABLE IF NOT EXISTS limits (name TEXT PRIMARY KEY, value REAL);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT);
"""
_ADDED_COLUMNS = {"billing": "TEXT", "problem": "TEXT"}  # columns newer than the first schema

DELIVERED_BILLING = "billed: delivered"
INFLIGHT_BILLING = "counted as billed: sent, no answer recorded yet"



@dataclass(frozen=True)
class Budget:
    """Hard limits; None means unlimited. ``calls`` counts charged requests."""

    calls: int | None = None
    tokens: int | None = None
    money: float | None = None


@dataclass(frozen=True)
class Tags:
    """What a call was for, for spend reports."""

    domain: str | None = None
    stage: str | None = None
    kind: str | None = None


@dataclass
class CallRecord:
    """A delivered (or failed) call as stored."""

    key: str
    status: str
    response: str | None
    data: dict[str, Any] | None
    prompt_tokens: int
    completion_tokens: int
    attempts: int
    sends: int
    error: str | None
    cached: bool = False
    problem: str | None = None


@dataclass(frozen=True)
class Reservation:
    """Outcome of :meth:`Ledger.reserve`: ``new`` (charged now), ``resend`` (charged earlier,
    not delivered: send again at no new charge), ``cached`` (delivered: do not send), or
    ``exhausted`` (the budget would be exceeded: do not send)."""

    key: str
    outcome: str
    record: CallRecord | None = None
    reason: str | None = None


def _record(row: sqlite3.Row, cached: bool = False) -> CallRecord:
    return CallRecord(key=row["key"], status=row["status"], response=row["response"],
                      data=json.loads(row["data"]) if row["data"] else None,
                      prompt_tokens=row["prompt_tokens"], completion_tokens=row["completion_tokens"],
                      attempts=row["attempts"], sends=row["sends"], error=row["error"],
                      cached=cached or bool(row["cached"]),
                      problem=row["problem"] if "problem" in row.keys() else None)


def migrate(con: sqlite3.Connection) -> None:
    """Create the tables, and add the columns a ledger written by an older version lacks."""
    con.executescript(_SCHEMA)
    have = {r[1] for r in con.execute("PRAGMA table_info(calls)")}
    for name, kind in _ADDED_COLUMNS.items():
        if name not in have:
            con.execute(f"ALTER TABLE calls ADD COLUMN {name} {kind}")
    # an identity, so a run folder can tell its own ledger from a copy of another run's
    con.execute("INSERT OR IGNORE INTO meta VALUES ('ledger_id', ?)", (uuid.uuid4().hex,))


def ledger_identity(path: str | Path) -> dict[str, Any]:
    """``{"id", "charged", "rows"}`` of the ledger file at ``path``, read without changing it.
    Raises RunFolderError saying what is wrong: missing, empty, not SQLite, not a ledger."""
    path = Path(path)
    if not path.is_file():
        raise RunFolderError(f"{path}: the ledger is missing" if not path.exists() else
                             f"{path}: expected the ledger file, found a folder")
    if path.stat().st_size == 0:
        raise RunFolderError(f"{path}: the ledger is empty (0 bytes)")
    try:
        con = connect(path, readonly=True)
        try:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if not {"calls", "spend"} <= tables:
                raise RunFolderError(f"{path}: not a domdistill ledger (an SQLite file without "
                                     "the calls and spend tables)")
            row = con.execute("SELECT value FROM meta WHERE name='ledger_id'").fetchone() \
                if "meta" in tables else None
            charged = con.execute("SELECT count(*) FROM calls WHERE charged=1").fetchone()[0]
            rows = con.execute("SELECT count(*) FROM calls").fetchone()[0]
        finally:
            con.close()
    except sqlite3.DatabaseError as err:
        raise RunFolderError(f"{path}: the ledger cannot be read ({err}): damaged, or not an "
                             "SQLite file") from None
    return {"id": row[0] if row else None, "charged": charged, "rows": rows}


def connect(path: str | Path, readonly: bool = False) -> sqlite3.Connection:
    """A connection in WAL mode with a generous busy timeout (many writers may share the file)."""
    if readonly:
        # with no -wal file every row is in the main file: read it as immutable, so that reading
        # creates no -wal/-shm files beside it (a read-only connection could not remove them)
        quiet = "&immutable=1" if not Path(f"{path}-wal").exists() else ""
        con = sqlite3.connect(f"file:{quote(str(Path(path).absolute()))}?mode=ro{quiet}", uri=True, timeout=60,
                              check_same_thread=False)
    else:
        con = sqlite3.connect(str(path), timeout=60, isolation_level=None, check_same_thread=False)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: commits survive a process kill
    con.row_factory = sqlite3.Row
    return con


class Ledger:
    """The run's call ledger at ``path`` (``RUN_DIR/ledger.sqlite``), optionally reading and
    feeding a ``shared_cache`` ledger file used across runs."""

    def __init__(self, path: str | Path, budget: Budget | None = None,
                 shared_cache: str | Path | None = None, price_per_1k: tuple[float, float] = (0.0, 0.0)):
        self.path = Path(path)
        if self.path.is_dir():
            raise RunFolderError(f"{self.path}: is a folder; expected the ledger file "
                                 f"(e.g. {self.path / LEDGER_NAME})")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.budget = budget or Budget()
        self.price_per_1k = price_per_1k
        self._con = connect(self.path)
        migrate(self._con)
        self._shared: sqlite3.Connection | None = None
        if shared_cache is not None and Path(shared_cache).resolve() != self.path.resolve():
            Path(shared_cache).parent.mkdir(parents=True, exist_ok=True)
            self._shared = connect(shared_cache)
            migrate(self._shared)
        self._lock = threading.RLock()
        self._depth = 0
        with self.transaction():
            self._set_limits()

    @property
    def ledger_id(self) -> str:
        """This ledger's identity (a random id written when the file was created)."""
        with self._lock:
            return self._con.execute("SELECT value FROM meta WHERE name='ledger_id'").fetchone()[0]

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction for the operations inside (re-entrant, thread-safe)."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            self._con.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield
                self._con.execute("COMMIT")
            except BaseException:
                if self._con.in_transaction:
                    self._con.execute("ROLLBACK")
                raise
            finally:
                self._depth = 0

    def close(self) -> None:
        self._con.close()
        if self._shared is not None:
            self._shared.close()

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ operations (in a transaction)
    def _set_limits(self) -> None:
        for name, value in (("calls", self.budget.calls), ("tokens", self.budget.tokens),
                            ("money", self.budget.money)):
            self._con.execute("INSERT INTO limits VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET "
                              "value = excluded.value", (name, value))

    def _lookup(self, keys: list[str]) -> dict[str, CallRecord]:
        found: dict[str, CallRecord] = {}
        for key in keys:
            row = self._con.execute("SELECT * FROM calls WHERE key = ? AND status = 'delivered'",
                                    (key,)).fetchone()
            if row is not None:
                found[key] = _record(row)
            elif self._shared is not None:
                srow = self._shared.execute("SELECT * FROM calls WHERE key = ? AND status = 'delivered'",
                                            (key,)).fetchone()
                if srow is not None:
                    self._import_shared(srow)
                    found[key] = _record(srow, cached=True)
        return found

    def _import_shared(self, row: sqlite3.Row) -> None:
        cols = [c for c in row.keys() if c not in ("charged", "cached", "created", "updated", "billing")]
        now = time.time()
        self._con.execute(
            f"INSERT INTO calls ({', '.join(cols)}, charged, cached, created, updated, billing) "
            f"VALUES ({', '.join('?' * len(cols))}, 0, 1, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET "
            "status='delivered', response=excluded.response, data=excluded.data, cached=1, "
            "problem=excluded.problem, updated=excluded.updated, billing=excluded.billing",
            [row[c] for c in cols] + [now, now, "not charged: served from the shared cache"])

    def _reserve(self, key: str, tags: Tags, request: str, est_tokens: int,
                 teacher: str | None) -> Reservation:
        row = self._con.execute("SELECT * FROM calls WHERE key = ?", (key,)).fetchone()
        now = time.time()
        if row is not None and row["status"] == "delivered":
            return Reservation(key, "cached", _record(row))
        if row is not None and row["charged"]:
            self._con.execute("UPDATE calls SET status='inflight', sends=sends+1, updated=? "
                              "WHERE key=?", (now, key))  # keeps its billing reason
            return Reservation(key, "resend")
        calls, tokens, money = self._con.execute("SELECT calls, tokens, money FROM spend").fetchone()
        est_cost = self._cost(est_tokens, 0)
        b = self.budget
        reason = None
        if b.calls is not None and calls + 1 > b.calls:
            reason = f"call budget exhausted ({calls} of {b.calls} calls charged)"
        elif b.tokens is not None and tokens + est_tokens > b.tokens:
            reason = f"token budget exhausted ({tokens} of {b.tokens} tokens charged)"
        elif b.money is not None and money + est_cost > b.money:
            reason = f"money budget exhausted ({money:.4f} of {b.money:.4f} charged)"
        if reason is not None:
            return Reservation(key, "exhausted", reason=reason)
        self._con.execute("UPDATE spend SET calls=calls+1, tokens=tokens+?, money=money+?",
                          (est_tokens, est_cost))
        self._con.execute(
            "INSERT INTO calls (key, teacher, domain, stage, kind, status, charged, request, "
            "reserved_tokens, cost, sends, created, updated, billing) "
            "VALUES (?, ?, ?, ?, ?, 'inflight', 1, ?, ?, ?, 1, ?, ?, ?) "
            "ON CONFLICT(key) DO UPDATE SET status='inflight', charged=1, error=NULL, "
            "reserved_tokens=excluded.reserved_tokens, cost=excluded.cost, sends=sends+1, "
            "updated=excluded.updated, billing=excluded.billing",
            (key, teacher, tags.domain, tags.stage, tags.kind, request, est_tokens, est_cost, now, now,
             INFLIGHT_BILLING))
        return Reservation(key, "new")

    def _cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        pin, pout = self.price_per_1k
        return prompt_tokens / 1000 * pin + completion_tokens / 1000 * pout

    def _complete(self, key: str, response: str, data: dict | None, prompt_tokens: int,
                  completion_tokens: int, latency_s: float, attempts: int,
                  problem: str | None = None) -> None:
        row = self._con.execute("SELECT reserved_tokens, cost, charged FROM calls WHERE key=?",
                                (key,)).fetchone()
        cost = self._cost(prompt_tokens, completion_tokens)
        if row is not None and row["charged"]:  # replace the estimate by what was used
            self._con.execute("UPDATE spend SET tokens=tokens+?, money=money+?",
                              (prompt_tokens + completion_tokens - row["reserved_tokens"], cost - row["cost"]))
        self._con.execute(
            "UPDATE calls SET status='delivered', response=?, data=?, prompt_tokens=?, "
            "completion_tokens=?, reserved_tokens=?, cost=?, latency_s=?, attempts=attempts+?, error=NULL, "
            "updated=?, billing=?, problem=? WHERE key=?",
            (response, json.dumps(data) if data is not None else None, prompt_tokens,
             completion_tokens, prompt_tokens + completion_tokens, cost, latency_s, attempts,
             time.time(), DELIVERED_BILLING, problem, key))
        if self._shared is not None:
            srow = self._con.execute("SELECT * FROM calls WHERE key=?", (key,)).fetchone()
            cols = list(srow.keys())
            self._shared.execute(f"INSERT OR REPLACE INTO calls ({', '.join(cols)}) VALUES "
                                 f"({', '.join('?' * len(cols))})", [srow[c] for c in cols])

    def _fail(self, key: str, error: str, attempts: int, release: bool, tags: Tags | None,
              request: str | None, billing: str | None) -> None:
        now = time.time()
        row = self._con.execute("SELECT status, charged, reserved_tokens, cost, billing FROM calls "
                                "WHERE key=?", (key,)).fetchone()
        if row is None:  # never sent (the batch stopped first): a dead letter with no charge
            tags = tags or Tags()
            self._con.execute(
                "INSERT INTO calls (key, domain, stage, kind, status, request, error, created, "
                "updated, billing) VALUES (?, ?, ?, ?, 'failed', ?, ?, ?, ?, ?)",
                (key, tags.domain, tags.stage, tags.kind, request, error, now, now,
                 billing or "not billed: not sent"))
            return
        if row["status"] == "delivered":
            return
        if release and row["charged"]:
            self._con.execute("UPDATE spend SET calls=calls-1, tokens=tokens-?, money=money-?",
                              (row["reserved_tokens"], row["cost"]))
            self._con.execute("UPDATE calls SET charged=0, reserved_tokens=0, cost=0 WHERE key=?", (key,))
        elif row["charged"] and not (billing or "").startswith("possibly billed"):
            # still charged by an earlier send that may have been billed: keep that reason
            old = row["billing"] or ""
            billing = old if old.startswith("possibly billed") else \
                "possibly billed: sent in an earlier run that ended before its answer was recorded"
        self._con.execute("UPDATE calls SET status='failed', error=?, attempts=attempts+?, updated=?, "
                          "billing=coalesce(?, billing) WHERE key=?",
                          (error, attempts, now, billing, key))

    def _set_problem(self, key: str, problem: str) -> None:
        self._con.execute("UPDATE calls SET problem=? WHERE key=? AND status='delivered'",
                          (problem, key))

    # ------------------------------------------------------------------ public, thread-safe
    def lookup(self, keys: list[str]) -> dict[str, CallRecord]:
        """``{key: CallRecord}`` for the keys already delivered (here or in the shared cache)."""
        with self.transaction():
            return self._lookup(list(keys))

    def reserve(self, key: str, tags: Tags, request: dict[str, Any] | None = None,
                est_tokens: int = 0, teacher: str | None = None) -> Reservation:
        """Check the budget and charge ``key``; when ``new`` or ``resend`` the row is in flight."""
        blob = json.dumps(request, ensure_ascii=False, default=str) if request is not None else None
        with self.transaction():
            return self._reserve(key, tags, blob, int(est_tokens), teacher)

    def complete(self, key: str, response: str, data: dict | None = None, prompt_tokens: int = 0,
                 completion_tokens: int = 0, latency_s: float = 0.0, attempts: int = 1,
                 problem: str | None = None) -> None:
        """Record the delivered response of an in-flight call (``problem``: why it is unusable)."""
        with self.transaction():
            self._complete(key, response, data, prompt_tokens, completion_tokens, latency_s,
                           attempts, problem)

    def fail(self, key: str, error: str, attempts: int = 0, release: bool = False,
             tags: Tags | None = None, request: dict[str, Any] | None = None,
             billing: str | None = None) -> None:
        """Record a dead letter. ``release`` gives the charge back (the provider cannot have
        billed any attempt); ``billing`` says why it is charged or not."""
        blob = json.dumps(request, ensure_ascii=False, default=str) if request is not None else None
        with self.transaction():
            self._fail(key, redact(error), attempts, release, tags, blob, billing)

    def set_problem(self, key: str, problem: str) -> None:
        """Note why a delivered reply could not be used (it stays delivered and charged)."""
        with self.transaction():
            self._set_problem(key, problem)

    def spent(self) -> dict[str, float]:
        """Charged calls, tokens and money so far (in-flight included)."""
        with self._lock:
            return dict(self._con.execute("SELECT calls, tokens, money FROM spend").fetchone())

    def counts(self) -> dict[str, int]:
        """Rows per status."""
        with self._lock:
            return {r[0]: r[1] for r in self._con.execute(
                "SELECT status, count(*) FROM calls GROUP BY status")}
