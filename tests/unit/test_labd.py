"""The lab daemon waits out a store outage (etcd restarting) instead of ending its kubelet and controllers."""

import threading

from netlab.labd import PatientWatch, _supervise
from netlab.store_etcd import EtcdError


class Flaky:
    def __init__(self):
        self.down = True

    def events_since(self, prefix, revision):
        if self.down:
            raise EtcdError("etcd at 192.168.56.1:2379 unreachable: [Errno 111] Connection refused")
        return ["event"], revision + 1

    def list(self, prefix):
        return [], 7


def test_a_watch_sees_no_events_while_the_store_is_away():
    store = Flaky()
    watch = PatientWatch(store)
    assert watch.events_since("/registry/pods/", 5) == ([], 5)
    store.down = False
    assert watch.events_since("/registry/pods/", 5) == (["event"], 6)
    assert watch.list("/x") == ([], 7)  # everything else is the store's


def test_supervised_loops_start_again_until_stopped():
    stop = threading.Event()
    runs = []

    def loop():
        runs.append(1)
        if len(runs) == 2:
            stop.set()
        raise EtcdError("unreachable")

    _supervise(loop, (), stop, "controllers")
    assert len(runs) == 2
