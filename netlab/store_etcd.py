"""EtcdStore: netlab.store.Store on a real etcd v3 server (a lab spanning machines).

It speaks etcd's v3 JSON API (the gRPC gateway: POST /v3/kv/range,
/v3/kv/put, /v3/kv/txn, /v3/kv/deleterange, /v3/lease/grant) over
http.client, so it needs no dependency beyond the standard library and
works with Debian's etcd-server (3.4). Keys and values travel base64 as the
gateway wants; values are JSON, as in the embedded store.

URL: ``etcd://HOST:PORT`` (or http://). ``?netns=NAME`` opens the client's
connections inside network namespace NAME: the test beds run etcd on the
loopback of a namespace, and agents in other namespaces reach it through
a socket created there (a socket stays in the namespace it was made in).

Semantics, as etcd's and the Store interface's:

- create = a txn comparing create_revision == 0 (the lease claim flanneld's
  etcd subnet manager makes); update = a txn comparing mod_revision;
- a TTL is an etcd lease granted for the write (rounded up to whole
  seconds); etcd deletes the key when it runs out. KeyValue.expires_at is
  None: etcd keeps the TTL on the lease, not the key;
- events_since compares the prefix as it was at `revision` (a range read at
  that revision) with the prefix now. That yields every key that changed,
  with its newest value, and every key deleted, with the value the watcher
  last saw; changes in between are coalesced, as a watch that fell behind
  and relisted would see them. A compacted `revision` raises Compacted.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import math
import os
import shutil
import subprocess
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

from netlab import netns
from netlab.store import Compacted, Event, KeyValue, Store


class EtcdError(Exception):
    """etcd answered with an error (or could not be reached)."""


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _unb64(text: str) -> str:
    return base64.b64decode(text).decode()


def _range_end(prefix: str) -> str:
    """etcd's range_end for a prefix: the prefix with its last byte incremented."""
    raw = bytearray(prefix.encode())
    while raw:
        if raw[-1] < 0xFF:
            raw[-1] += 1
            return base64.b64encode(bytes(raw)).decode()
        raw.pop()
    return _b64("\0")  # every key


class EtcdStore(Store):
    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        parsed = urllib.parse.urlsplit(url)
        if not parsed.hostname:
            raise ValueError(f"not an etcd URL: {url!r} (want etcd://host:port)")
        self.host = parsed.hostname
        self.port = parsed.port or 2379
        self.netns = urllib.parse.parse_qs(parsed.query).get("netns", [None])[0]
        self.timeout = timeout
        self._local = threading.local()
        # The prefix snapshots events_since diffs against: prefix -> (revision, {key: KeyValue}).
        self._snapshots: dict[str, tuple[int, dict[str, KeyValue]]] = {}
        self._lock = threading.Lock()

    # -- transport ----------------------------------------------------------------

    def _conn(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            with netns.entered(self.netns) if self.netns else contextlib.nullcontext():
                conn.connect()
            self._local.conn = conn
        return conn

    def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        data = json.dumps(body).encode()
        for attempt in (0, 1):
            try:
                conn = self._conn()
                conn.request("POST", path, body=data, headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                payload = resp.read()
                break
            except (OSError, http.client.HTTPException) as e:
                self.close()
                if attempt:
                    raise EtcdError(f"etcd at {self.host}:{self.port} unreachable: {e}") from None
        out = json.loads(payload or b"{}")
        if resp.status != 200 or "error" in out:
            message = out.get("error") or out.get("message") or payload.decode(errors="replace")
            if "compacted" in str(message):
                raise Compacted(str(message))
            raise EtcdError(f"etcd {path}: {message}")
        return out

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # -- helpers --------------------------------------------------------------------

    @staticmethod
    def _kv(raw: dict[str, Any]) -> KeyValue:
        return KeyValue(
            key=_unb64(raw["key"]),
            value=json.loads(_unb64(raw.get("value", ""))) if raw.get("value") else None,
            mod_revision=int(raw.get("mod_revision", 0)),
            create_revision=int(raw.get("create_revision", 0)),
        )

    @staticmethod
    def _rev(out: dict[str, Any]) -> int:
        return int(out["header"]["revision"])

    def _grant(self, ttl: float | None) -> str | None:
        if not ttl:
            return None
        return self._call("/v3/lease/grant", {"TTL": max(1, math.ceil(ttl))})["ID"]

    def _revoke(self, lease: str | None) -> None:
        if lease:
            with contextlib.suppress(EtcdError):
                self._call("/v3/lease/revoke", {"ID": lease})

    def _put_op(self, key: str, value: Any, lease: str | None) -> dict[str, Any]:
        op: dict[str, Any] = {"key": _b64(key), "value": _b64(json.dumps(value, separators=(",", ":")))}
        if lease:
            op["lease"] = lease
        return op

    def _range(self, prefix: str, revision: int | None = None) -> tuple[list[KeyValue], int]:
        body: dict[str, Any] = {"key": _b64(prefix), "range_end": _range_end(prefix)}
        if revision:
            body["revision"] = revision
        out = self._call("/v3/kv/range", body)
        return [self._kv(kv) for kv in out.get("kvs", [])], self._rev(out)

    # -- the interface ----------------------------------------------------------------

    def get(self, key: str) -> KeyValue | None:
        out = self._call("/v3/kv/range", {"key": _b64(key)})
        kvs = out.get("kvs", [])
        return self._kv(kvs[0]) if kvs else None

    def list(self, prefix: str) -> tuple[list[KeyValue], int]:
        return self._range(prefix)

    def put(self, key: str, value: Any, *, ttl: float | None = None) -> int:
        return self._rev(self._call("/v3/kv/put", self._put_op(key, value, self._grant(ttl))))

    def _txn(self, compare: dict[str, Any], key: str, value: Any, ttl: float | None) -> int | None:
        lease = self._grant(ttl)
        out = self._call("/v3/kv/txn", {"compare": [compare], "success": [{"request_put": self._put_op(key, value, lease)}]})
        if not out.get("succeeded"):
            self._revoke(lease)
            return None
        return self._rev(out)

    def create(self, key: str, value: Any, *, ttl: float | None = None) -> int | None:
        # create_revision == 0: the key does not exist (etcd's idiom for create-if-absent).
        return self._txn({"key": _b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"},
                         key, value, ttl)

    def update(self, key: str, value: Any, *, expect_revision: int, ttl: float | None = None) -> int | None:
        return self._txn({"key": _b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(expect_revision)},
                         key, value, ttl)

    def delete(self, key: str) -> bool:
        return int(self._call("/v3/kv/deleterange", {"key": _b64(key)}).get("deleted", 0)) > 0

    def delete_prefix(self, prefix: str) -> int:
        out = self._call("/v3/kv/deleterange", {"key": _b64(prefix), "range_end": _range_end(prefix)})
        return int(out.get("deleted", 0))

    def revision(self) -> int:
        return self._rev(self._call("/v3/kv/range", {"key": _b64("\0"), "limit": 1}))

    def events_since(self, prefix: str, revision: int) -> tuple[list[Event], int]:
        now = self.revision()
        if now <= revision:
            return [], now
        with self._lock:
            snap = self._snapshots.get(prefix)
        if snap is not None and snap[0] == revision:
            before = snap[1]
        elif revision > 0:
            before = {kv.key: kv for kv in self._range(prefix, revision)[0]}
        else:
            before = {}
        items, now = self._range(prefix)
        after = {kv.key: kv for kv in items}
        with self._lock:
            self._snapshots[prefix] = (now, after)
        events = [Event("PUT", kv.key, kv.value, kv.mod_revision) for kv in items if kv.mod_revision > revision]
        events += [Event("DELETE", k, kv.value, now) for k, kv in before.items() if k not in after]
        events.sort(key=lambda e: (e.revision, e.key))
        return events, now


@dataclass
class EtcdServer:
    """A single-member etcd on 127.0.0.1 inside a namespace: for tests, benchmarks and labs.

    Ended by its PID; its data dir is removed on stop.
    """

    proc: subprocess.Popen
    netns_name: str
    data_dir: str
    port: int

    @property
    def url(self) -> str:
        return f"etcd://127.0.0.1:{self.port}?netns={self.netns_name}"

    @classmethod
    def start(cls, netns_name: str, data_dir: str, port: int = 2379, env: dict[str, str] | None = None,
              binary: str = "etcd", timeout: float = 20.0) -> "EtcdServer":
        path = shutil.which(binary)
        if path is None:
            raise EtcdError("etcd is not installed (Debian: apt-get install etcd-server)")
        os.makedirs(data_dir, exist_ok=True)
        client, peer = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port + 1}"
        argv = [
            path, "--name", "netlab", "--data-dir", os.path.join(data_dir, "data"),
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"netlab={peer}", "--initial-cluster-state", "new",
            "--log-level", "warn", "--logger", "zap",
        ]
        with netns.iproute(netns_name) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        with open(os.path.join(data_dir, "etcd.log"), "ab") as log:
            proc = netns.popen_in(netns_name, argv, env=dict(os.environ, **(env or {})),
                                  stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        server = cls(proc, netns_name, data_dir, port)
        store = EtcdStore(server.url, timeout=1.0)
        deadline = time.monotonic() + timeout
        try:
            while True:
                if proc.poll() is not None:
                    raise EtcdError(f"etcd exited {proc.returncode}: {server.log()[-2000:]}")
                try:
                    store.revision()
                    return server
                except EtcdError:
                    if time.monotonic() > deadline:
                        server.stop()
                        raise EtcdError(f"etcd did not answer within {timeout}s: {server.log()[-2000:]}") from None
                    time.sleep(0.05)
        finally:
            store.close()

    def log(self) -> str:
        try:
            with open(os.path.join(self.data_dir, "etcd.log"), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.data_dir, ignore_errors=True)
