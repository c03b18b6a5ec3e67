"""EtcdStore: netlab.store.Store on a real etcd v3 server (a lab spanning machines).

It speaks etcd's v3 JSON API (the gRPC gateway: POST /v3/kv/range,
/v3/kv/put, /v3/kv/txn, /v3/kv/deleterange, /v3/lease/grant) over
http.client, so it needs no dependency beyond the standard library and
works with Debian's etcd-server (3.4). Keys and values travel base64 as the
gateway wants; values are JSON, as in the embedded store.

URL: ``etcd://HOST:PORT`` (or http://), or several members
``etcd://H1:P1,H2:P2`` tried in turn. ``?netns=NAME`` opens the client's
connections inside network namespace NAME (or a path such as
/proc/1/ns/net): the test beds run etcd on the loopback of a namespace, and
agents in other namespaces reach it through a socket created there (a
socket stays in the namespace it was made in).

Semantics, as etcd's and the Store interface's:

- create = a txn comparing create_revision == 0 (the lease claim flanneld's
  etcd subnet manager makes); update = a txn comparing mod_revision;
- a TTL is an etcd lease granted for the write (rounded up to whole
  seconds); etcd deletes the key when it runs out. KeyValue.expires_at is
  None: etcd keeps the TTL on the lease, not the key;
- events_since answers from etcd's own watch (POST /v3/watch: one stream
  per client over the whole key space, opened by the first call, kept on a
  thread): every event, in order, with a deleted key's last value
  (prev_kv), and no request to etcd while nothing changes, so twenty
  agents polling every 50-100 ms cost etcd nothing when idle. The answer
  reaches at least every revision the client has itself seen (its own
  writes, its lists); another client's write shows within the stream's
  delivery (milliseconds). A caller behind what the stream holds (before it
  started, or beyond the events it keeps) is answered by range reads
  instead: the prefix at `revision` against the prefix now, changes in
  between coalesced as a watch that fell behind and relisted would see
  them. A compacted `revision` raises Compacted.
"""

from __future__ import annotations

import base64
import bisect
import contextlib
import http.client
import json
import math
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

from netlab import netns
from netlab.errors import NetlabError
from netlab.store import Compacted, Event, KeyValue, Store


class EtcdError(NetlabError):
    """etcd answered with an error (or could not be reached): a message for the user, no traceback."""


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


def parse_url(url: str) -> tuple[list[tuple[str, int]], str | None]:
    """``etcd://HOST:PORT[,HOST:PORT...][?netns=NAME]`` as (endpoints, netns).

    Several endpoints are the members of one cluster, tried in turn, as
    etcdctl's --endpoints. NAME is a namespace under /run/netns or a path
    such as /proc/1/ns/net (the host's).
    """
    parsed = urllib.parse.urlsplit(url)
    endpoints = []
    for item in parsed.netloc.split(","):
        host, colon, port = item.rpartition(":")
        if not colon:
            host, port = item, "2379"
        if not host or not port.isdigit():
            raise ValueError(f"not an etcd URL: {url!r} (want etcd://host:port)")
        endpoints.append((host, int(port)))
    return endpoints, urllib.parse.parse_qs(parsed.query).get("netns", [None])[0]


class EtcdStore(Store):
    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        self.endpoints, self.netns = parse_url(url)
        self._current = 0  # the endpoint connections go to; the next one after a failure
        self.timeout = timeout
        self._local = threading.local()
        # The prefix snapshots events_since diffs against: prefix -> (revision, {key: KeyValue}).
        self._snapshots: dict[str, tuple[int, dict[str, KeyValue]]] = {}
        self._lock = threading.Lock()
        self._watch: _Watch | None = None  # etcd's watch, started by the first events_since
        # The newest revision any answer to this client carried: events_since never answers older
        # (a client sees its own writes, and nothing older than what it has read).
        self.observed = 0
        # The gRPC gateway's prefix: /v3 from etcd 3.4 on; etcd 3.3 (Ubuntu 22.04's
        # etcd-server) serves the same API as /v3beta only. Found on the first 404.
        self.api = "/v3"

    @property
    def host(self) -> str:
        return self.endpoints[self._current][0]

    @property
    def port(self) -> int:
        return self.endpoints[self._current][1]

    @property
    def where(self) -> str:
        return ",".join(f"{h}:{p}" for h, p in self.endpoints)

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
        """POST {api}/{path} (e.g. "kv/range"), with the body as the gateway's JSON."""
        data = json.dumps(body).encode()
        # A kept-alive connection may have been closed by the server: one retry on the same
        # endpoint, then each other endpoint of the cluster in turn.
        attempts = len(self.endpoints) + 1
        for attempt in range(attempts):
            try:
                conn = self._conn()
                conn.request("POST", f"{self.api}/{path}", body=data, headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                payload = resp.read()
                if resp.status == 404 and self.api == "/v3":
                    self.api = "/v3beta"  # etcd 3.3: ask again on its prefix
                    conn.request("POST", f"{self.api}/{path}", body=data, headers={"Content-Type": "application/json"})
                    resp = conn.getresponse()
                    payload = resp.read()
                break
            except (OSError, http.client.HTTPException) as e:
                self._drop_conn()
                if attempt == attempts - 1:
                    raise EtcdError(f"etcd at {self.where} unreachable: {e}") from None
                if attempt:
                    self._current = (self._current + 1) % len(self.endpoints)
        out = json.loads(payload or b"{}")
        if resp.status != 200 or "error" in out:
            message = out.get("error") or out.get("message") or payload.decode(errors="replace")
            if "compacted" in str(message):
                raise Compacted(str(message))
            raise EtcdError(f"etcd {self.api}/{path}: {message}")
        rev = int(out.get("header", {}).get("revision", 0))
        if rev > self.observed:  # a plain int store: a lost race only makes a later wait shorter
            self.observed = rev
        return out

    def _drop_conn(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def close(self) -> None:
        self._drop_conn()
        with self._lock:
            watch, self._watch = self._watch, None
        if watch is not None:
            watch.stop()

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
        return self._call("lease/grant", {"TTL": max(1, math.ceil(ttl))})["ID"]

    def _revoke(self, lease: str | None) -> None:
        if lease:
            with contextlib.suppress(EtcdError):
                self._call("lease/revoke", {"ID": lease})

    def _put_op(self, key: str, value: Any, lease: str | None) -> dict[str, Any]:
        op: dict[str, Any] = {"key": _b64(key), "value": _b64(json.dumps(value, separators=(",", ":")))}
        if lease:
            op["lease"] = lease
        return op

    def _range(self, prefix: str, revision: int | None = None) -> tuple[list[KeyValue], int]:
        body: dict[str, Any] = {"key": _b64(prefix), "range_end": _range_end(prefix)}
        if revision:
            body["revision"] = revision
        out = self._call("kv/range", body)
        return [self._kv(kv) for kv in out.get("kvs", [])], self._rev(out)

    # -- the interface ----------------------------------------------------------------

    def get(self, key: str) -> KeyValue | None:
        out = self._call("kv/range", {"key": _b64(key)})
        kvs = out.get("kvs", [])
        return self._kv(kvs[0]) if kvs else None

    def list(self, prefix: str) -> tuple[list[KeyValue], int]:
        items, rev = self._range(prefix)
        with self._lock:
            if prefix in self._snapshots:  # a watched prefix: the next events_since(prefix, rev) diffs against this
                self._snapshots[prefix] = (rev, {kv.key: kv for kv in items})
        return items, rev

    def put(self, key: str, value: Any, *, ttl: float | None = None) -> int:
        return self._rev(self._call("kv/put", self._put_op(key, value, self._grant(ttl))))

    def _txn(self, compare: dict[str, Any], key: str, value: Any, ttl: float | None) -> int | None:
        lease = self._grant(ttl)
        out = self._call("kv/txn", {"compare": [compare], "success": [{"request_put": self._put_op(key, value, lease)}]})
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
        return int(self._call("kv/deleterange", {"key": _b64(key)}).get("deleted", 0)) > 0

    def delete_prefix(self, prefix: str) -> int:
        out = self._call("kv/deleterange", {"key": _b64(prefix), "range_end": _range_end(prefix)})
        return int(out.get("deleted", 0))

    def revision(self) -> int:
        return self._rev(self._call("kv/range", {"key": _b64("\0"), "limit": 1}))

    def events_since(self, prefix: str, revision: int) -> tuple[list[Event], int]:
        """From etcd's watch (no round trip) when it holds `revision`; else a diff of range reads."""
        with self._lock:
            if self._watch is None:
                # From etcd's revision now: a caller behind it is answered by range reads this once.
                self._watch = _Watch(self, self.revision())
            watch = self._watch
        found = watch.since(prefix, revision)
        return found if found is not None else self._poll_events_since(prefix, revision)

    def _poll_events_since(self, prefix: str, revision: int) -> tuple[list[Event], int]:
        # One range read of the prefix (its header carries the store's revision) per call; the state at
        # `revision` comes from the snapshot of the last call or list, else from etcd's history.
        items, now = self._range(prefix)
        after = {kv.key: kv for kv in items}
        with self._lock:
            snap = self._snapshots.get(prefix)
            self._snapshots[prefix] = (now, after)
        if now <= revision:
            return [], now
        if snap is not None and snap[0] == revision:
            before = snap[1]
        elif revision > 0:
            before = {kv.key: kv for kv in self._range(prefix, revision)[0]}
        else:
            before = {}
        events = [Event("PUT", kv.key, kv.value, kv.mod_revision) for kv in items if kv.mod_revision > revision]
        events += [Event("DELETE", k, kv.value, now) for k, kv in before.items() if k not in after]
        events.sort(key=lambda e: (e.revision, e.key))
        return events, now


# How many events a client's watch keeps for events_since; a caller further behind reads etcd itself.
WATCH_KEEP = 20_000
# How long events_since waits for the watch to deliver a revision the caller has already seen
# (from a list or a write of its own) before it reads etcd itself.
WATCH_CATCH_UP = 0.5


class _Watch:
    """etcd's watch (POST /v3/watch, a stream) over the whole key space, on a thread of its own.

    Every write is a revision of etcd and the stream delivers them in order,
    so once an event of revision R has arrived, every event up to R has:
    `seen` is that R, and the events after `floor` are all kept. Polling
    callers (Store.events_since every 50-100 ms, in every agent) then cost
    etcd nothing while nothing changes, as flanneld's and the API server's
    watches do. A broken stream is opened again from seen + 1 (another
    member, if there are several); a compacted one starts over from etcd's
    current revision, and callers behind it read etcd itself.
    """

    def __init__(self, store: EtcdStore, start: int) -> None:
        self.store = store
        self.floor = self.seen = start
        self.revs: list[int] = []
        self.events: list[Event] = []
        self.cond = threading.Condition()
        self.stopped = False
        self.conn: http.client.HTTPConnection | None = None
        self.thread = threading.Thread(target=self._run, name="etcd-watch", daemon=True)
        self.thread.start()

    def since(self, prefix: str, revision: int) -> tuple[list[Event], int] | None:
        """The events under `prefix` after `revision` and the revision they go up to; None if not held here.

        Up to at least every revision the client has seen in an answer (its own
        writes, its lists): the watch is waited for that long, else None.
        """
        want = max(revision, self.store.observed)
        with self.cond:
            if want > self.seen:
                self.cond.wait_for(lambda: self.seen >= want or self.stopped, WATCH_CATCH_UP)
            if not self.floor <= revision <= self.seen or want > self.seen:
                return None
            i = bisect.bisect_right(self.revs, revision)
            return [e for e in self.events[i:] if e.key.startswith(prefix)], self.seen

    def _run(self) -> None:
        while not self.stopped:
            try:
                self._stream()
            except Compacted:
                try:
                    now = self.store.revision()
                except EtcdError:
                    time.sleep(0.2)
                    continue
                with self.cond:
                    self.revs, self.events = [], []
                    self.floor = self.seen = now
                    self.cond.notify_all()
            except (OSError, ValueError, http.client.HTTPException, EtcdError):
                if self.stopped:
                    return
                if len(self.store.endpoints) > 1:
                    self.store._current = (self.store._current + 1) % len(self.store.endpoints)
                time.sleep(0.2)

    def _stream(self) -> None:
        store = self.store
        conn = http.client.HTTPConnection(store.host, store.port, timeout=None)
        with netns.entered(store.netns) if store.netns else contextlib.nullcontext():
            conn.connect()
        self.conn = conn
        try:
            if self.stopped:
                return
            with self.cond:
                start = self.seen + 1
            body = {"create_request": {"key": _b64("\0"), "range_end": _b64("\0"), "start_revision": str(start),
                                       "prev_kv": True}}
            conn.request("POST", f"{store.api}/watch", body=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            if resp.status != 200:
                raise EtcdError(f"etcd watch: HTTP {resp.status}")
            while not self.stopped:
                line = resp.readline()
                if not line:
                    raise EtcdError("etcd watch: the stream ended")
                out = json.loads(line)
                if "error" in out:
                    raise EtcdError(f"etcd watch: {out['error'].get('message', out['error'])}")
                result = out.get("result", {})
                if result.get("compact_revision") and int(result["compact_revision"]) > 0:
                    raise Compacted(f"etcd watch: revision {start} compacted at {result['compact_revision']}")
                if result.get("canceled"):
                    raise EtcdError(f"etcd watch canceled: {result.get('cancel_reason', '')}")
                if result.get("events"):
                    self._add(result["events"])
        finally:
            self.conn = None
            conn.close()

    def _add(self, raw: list[dict[str, Any]]) -> None:
        events = []
        for ev in raw:
            kv = ev["kv"]
            rev = int(kv.get("mod_revision", 0))
            if ev.get("type") == "DELETE":
                prev = ev.get("prev_kv") or {}
                value = json.loads(_unb64(prev["value"])) if prev.get("value") else None
                events.append(Event("DELETE", _unb64(kv["key"]), value, rev))
            else:
                events.append(Event("PUT", _unb64(kv["key"]), json.loads(_unb64(kv["value"])) if kv.get("value") else None,
                                    rev))
        with self.cond:
            for e in events:
                if e.revision > self.seen:  # a stream opened again starts after `seen`: never twice
                    self.revs.append(e.revision)
                    self.events.append(e)
            self.seen = max([self.seen] + [e.revision for e in events])
            if len(self.events) > WATCH_KEEP * 5 // 4:
                # Forget the oldest, whole revisions at a time: `floor` is the newest one forgotten.
                floor = self.revs[len(self.events) - WATCH_KEEP]
                i = bisect.bisect_right(self.revs, floor)
                self.revs, self.events, self.floor = self.revs[i:], self.events[i:], floor
            self.cond.notify_all()

    def stop(self) -> None:
        self.stopped = True
        conn = self.conn
        if conn is not None and conn.sock is not None:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)
        with self.cond:
            self.cond.notify_all()
        if self.thread is not threading.current_thread():
            self.thread.join(2)


def etcd_argv(binary: str, data_dir: str, client_ips: tuple[str, ...] | list[str], port: int = 2379,
              name: str = "netlab") -> list[str]:
    """A single-member etcd: clients on `client_ips`:`port`, its peer URL on loopback (port + 1)."""
    clients = ",".join(f"http://{ip}:{port}" for ip in client_ips)
    peer = f"http://127.0.0.1:{port + 1}"
    return [
        binary, "--name", name, "--data-dir", os.path.join(data_dir, "data"),
        "--listen-client-urls", clients, "--advertise-client-urls", clients,
        "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
        "--initial-cluster", f"{name}={peer}", "--initial-cluster-state", "new",
        "--log-level", "warn", "--logger", "zap",
    ]


def etcd_binary(binary: str = "etcd") -> str:
    path = shutil.which(binary)
    if path is None:
        raise EtcdError("etcd is not installed (Debian: apt-get install etcd-server)")
    return path


def wait_ready(url: str, timeout: float, exited, log) -> None:
    """Poll etcd at `url` until it answers; `exited()` is its exit code or None, `log()` its log's text."""
    store = EtcdStore(url, timeout=1.0)
    deadline = time.monotonic() + timeout
    try:
        while True:
            code = exited()
            if code is not None:
                raise EtcdError(f"etcd exited {code}: {log()[-2000:]}")
            try:
                store.revision()
                return
            except EtcdError:
                if time.monotonic() > deadline:
                    raise EtcdError(f"etcd did not answer within {timeout}s: {log()[-2000:]}") from None
                time.sleep(0.02)
    finally:
        store.close()


def lo_up(netns_name: str) -> None:
    with netns.iproute(netns_name) as ipr:
        idx = ipr.link_lookup(ifname="lo")[0]
        if not ipr.get_links(idx)[0]["flags"] & 1:
            ipr.link("set", index=idx, state="up")


@dataclass
class EtcdServer:
    """A single-member etcd on 127.0.0.1 inside a namespace: for tests and benchmarks.

    Ended by its PID; its data dir is removed on stop. (A lab's own etcd is
    a lab daemon instead: netlab.lab starts it with etcd_argv and wait_ready.)
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
        path = etcd_binary(binary)
        os.makedirs(data_dir, exist_ok=True)
        argv = etcd_argv(path, data_dir, ["127.0.0.1"], port)
        lo_up(netns_name)
        with open(os.path.join(data_dir, "etcd.log"), "ab") as log:
            proc = netns.popen_in(netns_name, argv, env=dict(os.environ, **(env or {})),
                                  stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        server = cls(proc, netns_name, data_dir, port)
        try:
            wait_ready(server.url, timeout, proc.poll, server.log)
        except EtcdError:
            server.stop()
            raise
        return server

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
