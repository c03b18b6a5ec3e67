"""The cluster state store: netlab's "API server" and etcd in one interface.

Every component reads and writes cluster state only through a Store, as
Kubernetes components only reach etcd through the API server. The model is
etcd v3's: a flat key space of JSON values, one global revision that every
write increments, per-key mod revisions, TTL leases, and watches that
replay every event after a given revision.

Key layout follows the real systems, so a user who learns it here reads the
same keys on a real cluster:

- Kubernetes objects as the API server stores them in etcd:
  ``/registry/pods/<ns>/<name>``, ``/registry/services/specs/<ns>/<name>``,
  ``/registry/endpointslices/<ns>/<name>``, ``/registry/minions/<node>``;
- flannel's own schema: ``/coreos.com/network/config`` and
  ``/coreos.com/network/subnets/10.244.1.0-24``.

Backends: `SqliteStore` (embedded, the default: one file in the lab's state
dir, safe across processes) and an etcd client for labs spanning machines
(`netlab.store_etcd`). `open_store(url)` picks one from a URL.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

# Key prefixes, as the real systems name them.
PODS = "/registry/pods/"
SERVICES = "/registry/services/specs/"
ENDPOINTSLICES = "/registry/endpointslices/"
NODES = "/registry/minions/"
LABS = "/registry/netlab.io/labs/"
FLANNEL_PREFIX = "/coreos.com/network/"
FLANNEL_CONFIG = FLANNEL_PREFIX + "config"
FLANNEL_SUBNETS = FLANNEL_PREFIX + "subnets/"


def object_key(kind: str, namespace: str | None, name: str) -> str:
    """The store key of a Kubernetes object, as the API server lays them out."""
    prefix = {
        "Pod": PODS,
        "Service": SERVICES,
        "EndpointSlice": ENDPOINTSLICES,
        "Node": NODES,
        "Lab": LABS,
    }[kind]
    return f"{prefix}{namespace}/{name}" if namespace else f"{prefix}{name}"


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: Any
    mod_revision: int
    create_revision: int
    expires_at: float | None = None


@dataclass(frozen=True)
class Event:
    type: Literal["PUT", "DELETE"]
    key: str
    value: Any  # the new value for PUT, the last value for DELETE
    revision: int


class Compacted(Exception):
    """The requested revision is older than the oldest event kept.

    As with etcd's ErrCompacted, a watcher must relist and watch again from
    the list's revision.
    """


class Store(ABC):
    """The operations netlab needs, with etcd v3 semantics."""

    @abstractmethod
    def get(self, key: str) -> KeyValue | None: ...

    @abstractmethod
    def list(self, prefix: str) -> tuple[list[KeyValue], int]:
        """All live keys under `prefix`, sorted, and the store revision read at."""

    @abstractmethod
    def put(self, key: str, value: Any, *, ttl: float | None = None) -> int:
        """Write unconditionally; return the new revision."""

    @abstractmethod
    def create(self, key: str, value: Any, *, ttl: float | None = None) -> int | None:
        """Write only if the key is absent (a lease claim); None if it exists."""

    @abstractmethod
    def update(self, key: str, value: Any, *, expect_revision: int, ttl: float | None = None) -> int | None:
        """Compare-and-swap on the key's mod revision; None on conflict."""

    @abstractmethod
    def delete(self, key: str) -> bool:
        """Delete a key; a missing key is success (returns False)."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> int: ...

    @abstractmethod
    def revision(self) -> int: ...

    @abstractmethod
    def events_since(self, prefix: str, revision: int) -> tuple[list[Event], int]:
        """Every event under `prefix` after `revision`, and the revision read at.

        Raises Compacted when events after `revision` are no longer kept.
        """

    def close(self) -> None:  # pragma: no cover - trivial
        pass

    def modify_many(self, changes: dict[str, Callable[[Any], Any]]) -> dict[str, int]:
        """Read-modify-write of several keys: for each key, write `fn(current value)`.

        A key that is absent is left absent (never created), and `fn`
        returning None leaves the key as it is. Each write is a
        compare-and-swap on the value `fn` saw, retried on a conflict.
        Returns the new revision of every key written. A backend may do
        all of it in one transaction (SqliteStore does); this default does
        one get and one update per key.
        """
        out: dict[str, int] = {}
        for key, fn in changes.items():
            for _ in range(5):
                kv = self.get(key)
                if kv is None:
                    break
                new = fn(kv.value)
                if new is None:
                    break
                rev = self.update(key, new, expect_revision=kv.mod_revision)
                if rev is not None:
                    out[key] = rev
                    break
        return out

    def put_many(self, items: dict[str, Any]) -> dict[str, int]:
        """Write every key unconditionally (no TTL); return each key's new revision.

        A backend may do it in one transaction (SqliteStore does: storing a
        thousand Pods is one WAL commit, not a thousand); this default puts
        one key at a time, as etcd's transactions are limited in size.
        """
        return {key: self.put(key, value) for key, value in items.items()}

    def watch(
        self,
        prefix: str,
        since: int,
        stop: threading.Event,
        poll_interval: float = 0.05,
    ) -> Iterator[Event]:
        """Yield events under `prefix` after revision `since` until `stop` is set."""
        rev = since
        while not stop.is_set():
            events, rev_now = self.events_since(prefix, rev)
            for ev in events:
                yield ev
            rev = max(rev, rev_now)
            if not events:
                stop.wait(poll_interval)

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _prefix_end(prefix: str) -> str:
    """The smallest string greater than every string starting with `prefix` (etcd's range_end)."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1) if prefix else "\U0010ffff"


class SqliteStore(Store):
    """The embedded store: one SQLite file in WAL mode, shared by every lab process.

    Events are kept in a log table so that watchers in other processes can
    replay them by revision, like etcd's MVCC history; the log is compacted
    to the newest `keep_events` entries.
    """

    def __init__(self, path: str, *, keep_events: int = 100_000) -> None:
        self.path = path
        self.keep_events = keep_events
        self._local = threading.local()
        self._lock = threading.Lock()
        db = self._db()
        if self._ready(db):
            return  # every process after the first opens it without taking the write lock
        with db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL,"
                " mod_rev INTEGER NOT NULL, create_rev INTEGER NOT NULL, expires_at REAL)"
            )
            db.execute(
                "CREATE TABLE IF NOT EXISTS events (rev INTEGER PRIMARY KEY, type TEXT NOT NULL,"
                " key TEXT NOT NULL, value TEXT)"
            )
            # Every write and every watcher's poll asks "has a lease expired?": without this
            # index that is a scan of every value in the store (0.4 ms at 1000 pods, per poll).
            db.execute("CREATE INDEX IF NOT EXISTS kv_expires ON kv (expires_at) WHERE expires_at IS NOT NULL")
            db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL)")
            db.execute("INSERT OR IGNORE INTO meta VALUES ('revision', 0), ('compacted', 0)")

    @staticmethod
    def _ready(db: sqlite3.Connection) -> bool:
        """The file already has its schema, both meta rows and WAL mode (read-only checks)."""
        try:
            if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                return False
            names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE name IN ('kv', 'events', 'meta', 'kv_expires')")}
            if len(names) != 4:
                return False
            return db.execute("SELECT count(*) FROM meta WHERE name IN ('revision', 'compacted')").fetchone()[0] == 2
        except sqlite3.Error:
            return False

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA busy_timeout=30000")
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        return db

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    # -- transactions -------------------------------------------------------

    def _write(self, fn) -> Any:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            self._expire(db)
            result = fn(db)
            db.execute("COMMIT")
            return result
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _next_rev(self, db: sqlite3.Connection) -> int:
        db.execute("UPDATE meta SET value = value + 1 WHERE name = 'revision'")
        return db.execute("SELECT value FROM meta WHERE name = 'revision'").fetchone()[0]

    def _log(self, db: sqlite3.Connection, rev: int, type_: str, key: str, value: str | None) -> None:
        db.execute("INSERT INTO events VALUES (?, ?, ?, ?)", (rev, type_, key, value))
        if rev % 1000 == 0:
            cutoff = rev - self.keep_events
            if cutoff > 0:
                db.execute("DELETE FROM events WHERE rev <= ?", (cutoff,))
                db.execute("UPDATE meta SET value = ? WHERE name = 'compacted'", (cutoff,))

    def _expire(self, db: sqlite3.Connection) -> None:
        """Delete keys whose TTL ran out, with DELETE events (as etcd's lease revocation)."""
        now = time.time()
        rows = db.execute(
            "SELECT key, value FROM kv WHERE expires_at IS NOT NULL AND expires_at <= ?", (now,)
        ).fetchall()
        for key, value in rows:
            rev = self._next_rev(db)
            db.execute("DELETE FROM kv WHERE key = ?", (key,))
            self._log(db, rev, "DELETE", key, value)

    def _put(self, db: sqlite3.Connection, key: str, value: Any, ttl: float | None, create_rev: int | None) -> int:
        rev = self._next_rev(db)
        text = json.dumps(value, sort_keys=True, separators=(",", ":"))
        expires = time.time() + ttl if ttl else None
        db.execute(
            "INSERT INTO kv VALUES (?, ?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET"
            " value = excluded.value, mod_rev = excluded.mod_rev, expires_at = excluded.expires_at",
            (key, text, rev, create_rev or rev, expires),
        )
        self._log(db, rev, "PUT", key, text)
        return rev

    # -- the interface ---------------------------------------------------------

    @staticmethod
    def _kv(row: tuple) -> KeyValue:
        key, value, mod_rev, create_rev, expires_at = row
        return KeyValue(key, json.loads(value), mod_rev, create_rev, expires_at)

    def get(self, key: str) -> KeyValue | None:
        row = self._db().execute(
            "SELECT key, value, mod_rev, create_rev, expires_at FROM kv WHERE key = ?"
            " AND (expires_at IS NULL OR expires_at > ?)",
            (key, time.time()),
        ).fetchone()
        return self._kv(row) if row else None

    def list(self, prefix: str) -> tuple[list[KeyValue], int]:
        db = self._db()
        db.execute("BEGIN")
        try:
            rows = db.execute(
                "SELECT key, value, mod_rev, create_rev, expires_at FROM kv WHERE key >= ? AND key < ?"
                " AND (expires_at IS NULL OR expires_at > ?) ORDER BY key",
                (prefix, _prefix_end(prefix), time.time()),
            ).fetchall()
            rev = db.execute("SELECT value FROM meta WHERE name = 'revision'").fetchone()[0]
        finally:
            db.execute("COMMIT")
        return [self._kv(r) for r in rows], rev

    def put(self, key: str, value: Any, *, ttl: float | None = None) -> int:
        def fn(db):
            row = db.execute("SELECT create_rev FROM kv WHERE key = ?", (key,)).fetchone()
            return self._put(db, key, value, ttl, row[0] if row else None)

        return self._write(fn)

    def create(self, key: str, value: Any, *, ttl: float | None = None) -> int | None:
        def fn(db):
            if db.execute("SELECT 1 FROM kv WHERE key = ?", (key,)).fetchone():
                return None
            return self._put(db, key, value, ttl, None)

        return self._write(fn)

    def update(self, key: str, value: Any, *, expect_revision: int, ttl: float | None = None) -> int | None:
        def fn(db):
            row = db.execute("SELECT mod_rev, create_rev FROM kv WHERE key = ?", (key,)).fetchone()
            if row is None or row[0] != expect_revision:
                return None
            return self._put(db, key, value, ttl, row[1])

        return self._write(fn)

    def modify_many(self, changes: dict[str, Callable[[Any], Any]]) -> dict[str, int]:
        """All of Store.modify_many in one write transaction (one WAL commit, not one per key)."""

        def fn(db):
            out = {}
            now = time.time()
            for key, change in changes.items():
                row = db.execute(
                    "SELECT value, create_rev FROM kv WHERE key = ? AND (expires_at IS NULL OR expires_at > ?)",
                    (key, now),
                ).fetchone()
                if row is None:
                    continue
                new = change(json.loads(row[0]))
                if new is None:
                    continue
                out[key] = self._put(db, key, new, None, row[1])  # as update(): a write without ttl has none
            return out

        return self._write(fn) if changes else {}

    def put_many(self, items: dict[str, Any]) -> dict[str, int]:
        """All of Store.put_many in one write transaction."""

        def fn(db):
            out = {}
            for key, value in items.items():
                row = db.execute("SELECT create_rev FROM kv WHERE key = ?", (key,)).fetchone()
                out[key] = self._put(db, key, value, None, row[0] if row else None)
            return out

        return self._write(fn) if items else {}

    def delete(self, key: str) -> bool:
        def fn(db):
            row = db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
            if row is None:
                return False
            rev = self._next_rev(db)
            db.execute("DELETE FROM kv WHERE key = ?", (key,))
            self._log(db, rev, "DELETE", key, row[0])
            return True

        return self._write(fn)

    def delete_prefix(self, prefix: str) -> int:
        def fn(db):
            rows = db.execute(
                "SELECT key, value FROM kv WHERE key >= ? AND key < ? ORDER BY key", (prefix, _prefix_end(prefix))
            ).fetchall()
            for key, value in rows:
                rev = self._next_rev(db)
                db.execute("DELETE FROM kv WHERE key = ?", (key,))
                self._log(db, rev, "DELETE", key, value)
            return len(rows)

        return self._write(fn)

    def revision(self) -> int:
        return self._db().execute("SELECT value FROM meta WHERE name = 'revision'").fetchone()[0]

    def events_since(self, prefix: str, revision: int) -> tuple[list[Event], int]:
        db = self._db()
        # Expired leases become DELETE events even when nobody writes.
        if db.execute(
            "SELECT 1 FROM kv WHERE expires_at IS NOT NULL AND expires_at <= ? LIMIT 1", (time.time(),)
        ).fetchone():
            self._write(lambda _db: None)
        db.execute("BEGIN")
        try:
            compacted = db.execute("SELECT value FROM meta WHERE name = 'compacted'").fetchone()[0]
            if revision < compacted:
                raise Compacted(f"revision {revision} is compacted (oldest kept: {compacted + 1})")
            rows = db.execute(
                "SELECT rev, type, key, value FROM events WHERE rev > ? AND key >= ? AND key < ? ORDER BY rev",
                (revision, prefix, _prefix_end(prefix)),
            ).fetchall()
            rev = db.execute("SELECT value FROM meta WHERE name = 'revision'").fetchone()[0]
        finally:
            db.execute("COMMIT")
        events = [Event(t, k, json.loads(v) if v is not None else None, r) for r, t, k, v in rows]
        return events, rev


def open_store(url: str) -> Store:
    """A Store from a URL: ``sqlite:///path/store.db`` (or a plain path) or ``etcd://host:port``."""
    if url.startswith("etcd://") or url.startswith("http://") or url.startswith("https://"):
        from netlab.store_etcd import EtcdStore  # written with the overlay (issue 4)

        return EtcdStore(url)
    if url.startswith("sqlite://"):
        url = url[len("sqlite://"):]
    os.makedirs(os.path.dirname(os.path.abspath(url)), exist_ok=True)
    return SqliteStore(url)
