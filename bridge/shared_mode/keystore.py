"""The client key store of shared mode: keys the bridge issues, kept as hashes in SQLite.

One SQLite file, `keys.sqlite3` in the state directory, holds each key's name, SHA-256
hash (never the key), creation time, optional expiry, optional request rate, optional
allowed models and optional token budget (per UTC day, week or month, enforced by
`bridge.budgets`); revoked keys stay as rows (so revoking the last key never turns the
bridge open again). Every worker opens its own connection after fork and keeps the keys
in memory; a `generation` counter bumped by every change is read on each request (one
indexed row, microseconds), so a revocation is seen by all workers on their next request;
with `--redis-url`, by all instances within a second (`bridge.shared_mode.redis_stamps`).
Per-key rates are counted in the same file: one fixed-window counter row per key and
window, incremented atomically by whichever worker serves the request, so the limit
holds across workers and processes; that write runs off the event loop
(`bridge.core.offloop`), so another process's write lock never freezes a worker.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import os
import re
import secrets
import sqlite3
import time
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    from bridge.shared_mode.redis_stamps import RevocationStamps

from bridge.core.exchange import Budget
from bridge.core.offloop import SerialThread
from bridge.core.redis_link import RedisDown
from bridge.core.settings import BUDGET_PERIODS, MAX_BUDGET_TOKENS

log = logging.getLogger("bridge.keystore")

KEY_PREFIX = "sk-bridge-"
KEY_COMMAND = "deepseek-ollama-bridge keys"
FILE_NAME = "keys.sqlite3"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
BUSY_TIMEOUT = 2.0
HINT_CHARS = 4  # random characters of a key kept in clear to tell keys apart in `keys list`

_SCHEMA = """
CREATE TABLE IF NOT EXISTS client_keys (
    name TEXT PRIMARY KEY,
    key_hash TEXT NOT NULL UNIQUE,
    hint TEXT NOT NULL,
    created REAL NOT NULL,
    expires REAL,
    rate_limit INTEGER,
    rate_period INTEGER,
    models TEXT,
    revoked REAL,
    budget_tokens INTEGER,
    budget_period TEXT
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (name, value) VALUES ('generation', 0);
CREATE TABLE IF NOT EXISTS key_usage (
    name TEXT NOT NULL,
    window INTEGER NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (name, window)
) WITHOUT ROWID;
"""


# columns added after the first release: added to an older store when it is opened
_ADDED_COLUMNS = (("budget_tokens", "INTEGER"), ("budget_period", "TEXT"))


class KeyStoreError(Exception):
    """A key store operation failed; the message is one line for the user."""


def hash_key(raw: str) -> str:
    """SHA-256 of a key: enough for high-entropy random keys (no salt or KDF needed)."""
    return hashlib.sha256(raw.encode("utf-8", "surrogateescape")).hexdigest()


def normalize_model(model: str) -> str:
    """Ollama's reading of a model name: no tag means `:latest`."""
    model = model.strip()
    return model if ":" in model.rsplit("/", 1)[-1] else f"{model}:latest"


_PERIODS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60}


def parse_budget(tokens: str | None, period: str | None) -> Budget | None:
    """`--budget-tokens N` (0: none) and `--budget-period day|week|month` → the budget."""
    if tokens is None or not tokens.strip().isdigit() or int(tokens) > MAX_BUDGET_TOKENS:
        raise KeyStoreError(f"bad budget {tokens!r}: give a whole number of tokens from 0 "
                            f"(no budget) to {MAX_BUDGET_TOKENS}")
    period = period or "month"
    if period not in BUDGET_PERIODS:
        raise KeyStoreError(f"bad budget period {period!r}: give one of "
                            f"{', '.join(BUDGET_PERIODS)}")
    return Budget(int(tokens), period) if int(tokens) else None


def parse_rate(text: str) -> tuple[int, int]:
    """`N`, `N/min` (requests per minute) or `N/s` → (limit, period in seconds)."""
    count, _, unit = text.strip().lower().partition("/")
    period = _PERIODS.get(unit.strip() or "min")
    if not count.strip().isdigit() or period is None or not 1 <= int(count) <= 1_000_000:
        raise KeyStoreError(f"bad rate {text!r}: give N/min or N/s, N from 1 to 1000000")
    return int(count), period


_DURATION = re.compile(r"^(\d+)\s*([smhdw])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_expiry(text: str, now: float | None = None) -> float:
    """A duration from now (`90s`, `30m`, `12h`, `30d`, `2w`) or an ISO date/time (local
    time unless it carries an offset) → the expiry as a Unix time, which must be ahead."""
    now = time.time() if now is None else now
    match = _DURATION.match(text.strip().lower())
    if match:
        when = now + int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    else:
        try:
            when = datetime.fromisoformat(text.strip()).timestamp()
        except ValueError:
            raise KeyStoreError(f"bad expiry {text!r}: give a duration (90s, 30m, 12h, 30d, "
                                "2w) or an ISO date/time (2030-12-31, 2030-12-31T18:00)"
                                ) from None
    if when <= now:
        raise KeyStoreError(f"bad expiry {text!r}: it is in the past")
    return when


@dataclass(frozen=True)
class ClientKey:
    """One issued key as stored (the hash, never the key)."""

    name: str
    key_hash: str
    hint: str
    created: float
    expires: float | None = None
    rate_limit: int | None = None
    rate_period: int | None = None
    models: tuple[str, ...] | None = None
    revoked: float | None = None
    budget: Budget | None = None

    def status(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        if self.revoked is not None:
            return "revoked"
        if self.expires is not None and self.expires <= now:
            return "expired"
        return "active"

    def allows(self, model: str) -> bool:
        if self.models is None:
            return True
        wanted = normalize_model(model)
        return any(normalize_model(allowed) == wanted for allowed in self.models)

    @property
    def rate_text(self) -> str:
        if not self.rate_limit:
            return ""
        return f"{self.rate_limit}/{'s' if self.rate_period == 1 else 'min'}"

    @property
    def budget_text(self) -> str:
        return str(self.budget) if self.budget else ""

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "ClientKey":
        models = json.loads(row["models"]) if row["models"] is not None else None
        budget = Budget(row["budget_tokens"], row["budget_period"]) \
            if row["budget_tokens"] else None
        return cls(name=row["name"], key_hash=row["key_hash"], hint=row["hint"],
                   created=row["created"], expires=row["expires"],
                   rate_limit=row["rate_limit"], rate_period=row["rate_period"],
                   models=tuple(models) if models is not None else None,
                   revoked=row["revoked"], budget=budget)


class KeyStore:
    """The key store in `state_dir`: managed by the `keys` command, read by the workers."""

    def __init__(self, state_dir: str | os.PathLike, stamps: RevocationStamps | None = None):
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / FILE_NAME
        self.stamps = stamps  # with --redis-url: revocations shared by every instance
        self._db: sqlite3.Connection | None = None
        self._generation: int | None = None
        self._keys: tuple[ClientKey, ...] = ()
        self._by_hash: dict[str, ClientKey] = {}
        self._usage_swept = 0.0
        # The rate counter writes on a connection of its own, in a native thread: a write
        # lock held by another process (the `keys` command, another worker) then holds
        # the request that waits, never the worker's event loop.
        self._usage_db: sqlite3.Connection | None = None
        self._usage_thread = SerialThread()

    # --- opening -----------------------------------------------------------------------

    def open(self, create: bool = True) -> "KeyStore":
        """Open (and with `create`, make) the store; per process, after fork."""
        if self._db is not None:
            return self
        if not create and not self.path.exists():
            raise KeyStoreError(f"no key store at {self.path}")
        try:
            self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            fresh = not self.path.exists()
            db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None)
            if fresh:
                os.chmod(self.path, 0o600)  # hashes only, but nobody else needs to read them
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            present = {column[1] for column in db.execute("PRAGMA table_info(client_keys)")}
            for column, kind in _ADDED_COLUMNS:
                if column not in present:
                    try:
                        db.execute(f"ALTER TABLE client_keys ADD COLUMN {column} {kind}")
                    except sqlite3.OperationalError as exc:  # another worker added it
                        if "duplicate column" not in str(exc):
                            raise
        except (OSError, sqlite3.Error) as exc:
            raise KeyStoreError(f"cannot open the key store {self.path}: {exc}") from None
        self._db = db
        return self

    def close(self) -> None:
        if self._usage_db is not None:
            self._usage_thread.run(self._usage_db.close)
            self._usage_db = None
        if self._db is not None:
            self._db.close()
            self._db = None
            self._generation = None

    def __enter__(self) -> "KeyStore":
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            self.open()
        assert self._db is not None
        return self._db

    # --- managing (the `keys` command) -------------------------------------------------

    def create(self, name: str, *, expires: float | None = None, rate: tuple[int, int] | None
               = None, models: Iterable[str] | None = None, budget: Budget | None = None
               ) -> tuple[str, ClientKey]:
        """Issue a key; returns (the key, shown this once, its stored record)."""
        if not NAME_PATTERN.match(name):
            raise KeyStoreError(f"bad key name {name!r}: 1-64 letters, digits, '.', '_' or "
                                "'-', starting with a letter or digit")
        model_list = None
        if models is not None:
            model_list = [model.strip() for model in models if model.strip()]
            if not model_list:
                raise KeyStoreError("--models: give at least one model name")
        raw = KEY_PREFIX + secrets.token_urlsafe(32)
        record = ClientKey(name=name, key_hash=hash_key(raw),
                           hint=raw[:len(KEY_PREFIX) + HINT_CHARS] + "…", created=time.time(),
                           expires=expires, rate_limit=rate[0] if rate else None,
                           rate_period=rate[1] if rate else None,
                           models=tuple(model_list) if model_list is not None else None,
                           budget=budget)
        try:
            with self._write() as db:
                db.execute(
                    "INSERT INTO client_keys (name, key_hash, hint, created, expires, "
                    "rate_limit, rate_period, models, budget_tokens, budget_period) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (record.name, record.key_hash, record.hint, record.created, record.expires,
                     record.rate_limit, record.rate_period,
                     json.dumps(model_list) if model_list is not None else None,
                     budget.tokens if budget else None, budget.period if budget else None))
        except sqlite3.IntegrityError:
            raise KeyStoreError(f"a key named {name!r} already exists (names stay taken "
                                "after revocation)") from None
        return raw, record

    def set_budget(self, name: str, budget: Budget | None) -> ClientKey:
        """Give a key a budget (None: take it away); every worker applies it on its next
        request, as any change of the store."""
        with self._write() as db:
            changed = db.execute(
                "UPDATE client_keys SET budget_tokens = ?, budget_period = ? WHERE name = ?",
                (budget.tokens if budget else None, budget.period if budget else None, name))
            if not changed.rowcount:
                raise KeyStoreError(f"no key named {name!r}")
        key = self.get(name)
        if self.stamps is not None:
            try:
                self.stamps.publish_budget(key.key_hash, budget)
            except RedisDown as exc:
                raise KeyStoreError(f"the budget of {name!r} is changed in {self.path}, but "
                                    f"not shared with other instances: {exc}") from None
        return key

    def revoke(self, name: str) -> ClientKey:
        with self._write() as db:
            row = db.execute("SELECT * FROM client_keys WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise KeyStoreError(f"no key named {name!r}")
            if row["revoked"] is None:
                db.execute("UPDATE client_keys SET revoked = ? WHERE name = ?",
                           (time.time(), name))
        if self.stamps is not None:
            self.stamps.publish([row["key_hash"]])
        return self.get(name)

    def get(self, name: str) -> ClientKey:
        row = self.db.execute("SELECT * FROM client_keys WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise KeyStoreError(f"no key named {name!r}")
        return ClientKey.from_row(row)

    def all(self) -> list[ClientKey]:
        rows = self.db.execute("SELECT * FROM client_keys ORDER BY created, name").fetchall()
        return [ClientKey.from_row(row) for row in rows]

    def _write(self) -> "_Transaction":
        return _Transaction(self.db)

    # --- serving (the auth stage, in each worker) --------------------------------------

    def keys(self) -> tuple[ClientKey, ...]:
        """Every key (revoked and expired ones too), re-read whenever the store changed."""
        try:
            generation = self.db.execute(
                "SELECT value FROM meta WHERE name = 'generation'").fetchone()[0]
            if generation != self._generation:
                self._keys = tuple(self.all())
                self._by_hash = {key.key_hash: key for key in self._keys}
                self._generation = generation
                if self.stamps is not None:  # a revocation made without Redis: share it
                    self.stamps.publish(key.key_hash for key in self._keys if key.revoked)
                log.debug("key store read: %d key(s), generation %d", len(self._keys),
                          generation)
        except sqlite3.Error as exc:
            if self._generation is None:
                raise KeyStoreError(f"cannot read the key store {self.path}: {exc}") from None
            log.warning("cannot re-read the key store %s (%s); using the keys read before",
                        self.path, exc)
        return self._keys

    def find(self, raw: str) -> ClientKey | None:
        """The record of a presented key, or None. The index is keyed by SHA-256 digests,
        so its timing can tell at most something about a digest, which says nothing about
        a 256-bit random key; the final comparison is constant-time all the same."""
        digest = hash_key(raw)
        self.keys()
        record = self._by_hash.get(digest)
        if record is None or not hmac.compare_digest(record.key_hash, digest):
            return None
        if self.stamps is None:
            return record
        if record.revoked is None and self.stamps.revoked(digest):
            return replace(record, revoked=time.time())  # revoked on another instance
        budget = self.stamps.budget(digest, record.budget)  # changed through another
        return record if budget == record.budget else replace(record, budget=budget)

    def take(self, key: ClientKey, now: float | None = None) -> float | None:
        """Count one request against the key's rate; None when allowed, else the seconds
        until its window ends. Fixed windows (per second or minute) counted in SQLite, so
        every worker shares the count; refused requests are not counted."""
        if not key.rate_limit or not key.rate_period:
            return None
        now = time.time() if now is None else now
        window = int(now // key.rate_period) * key.rate_period  # its start, Unix seconds
        try:
            counted = self._usage_thread.run(self._count, key, window, now)
        except sqlite3.Error as exc:  # a stuck store must not stop serving: count it as allowed
            log.warning("cannot count key %r's rate in %s: %s", key.name, self.path, exc)
            return None
        if counted:
            return None
        return window + key.rate_period - now

    def _count(self, key: ClientKey, window: int, now: float) -> bool:
        """In the usage thread: count one request in `window`; whether it was allowed."""
        if self._usage_db is None:
            self._usage_db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT,
                                             isolation_level=None, check_same_thread=False)
        db = self._usage_db
        row = db.execute(
            "INSERT INTO key_usage (name, window, count) VALUES (?, ?, 1) "
            "ON CONFLICT (name, window) DO UPDATE SET count = count + 1 WHERE count < ? "
            "RETURNING count", (key.name, window, key.rate_limit)).fetchone()
        if now - self._usage_swept > 60:
            self._usage_swept = now
            db.execute("DELETE FROM key_usage WHERE window < ?", (now - 120,))
        return row is not None


class _Transaction:
    """An immediate write transaction that also bumps the generation counter."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.db.execute("UPDATE meta SET value = value + 1 WHERE name = 'generation'")
            self.db.execute("COMMIT")
        else:
            self.db.execute("ROLLBACK")


def open_access_warning(state_dir: str | os.PathLike, host: str) -> str | None:
    """At start, in the master: create the store (so a bad `--state-dir` fails now, not on
    the first request), and the loud warning when shared mode would serve anyone: no
    client keys exist and the bridge listens beyond loopback."""
    with KeyStore(state_dir) as store:
        if store.all():
            return None
    if is_loopback(host):
        return None
    return (f"SHARED MODE IS OPEN TO ANYONE: no client keys exist in {store.path} and the "
            f"bridge listens on {host}, so anyone who can reach it uses the upstream key. "
            f"Create a client key: {KEY_COMMAND} create NAME")


def metrics_exposure_warning(host: str, metrics_key: bool) -> str | None:
    """At start, in the master: the warning when `/metrics`, which names the client keys
    (those there are, and those made while the bridge runs), can be read from beyond
    loopback without a key."""
    if metrics_key or is_loopback(host):
        return None
    return (f"/metrics names the client keys of shared mode and shows their traffic to "
            f"anyone who can reach {host}: give --metrics-key KEY (BRIDGE_METRICS_KEY), or "
            "listen on loopback behind a proxy that does not route /metrics")


def is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
