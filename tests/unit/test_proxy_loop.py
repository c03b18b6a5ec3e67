"""proxy.loop with a fake backend: rate limit, partial vs full syncs, failures, bad input (no root)."""

from __future__ import annotations

import copy
import random

import pytest

from netlab.spec.source import Document, load_text
from netlab import store as st
from proxy.backend import SyncError, SyncResult
from proxy.loop import ProxyLoop
from proxy.model import NodeContext, build_state
from tests.packet_flows import OBJECTS


class FakeSource:
    def __init__(self) -> None:
        self.docs: dict[str, Document] = {}
        for d in load_text(OBJECTS, "flows.yaml"):
            prefix = st.SERVICES if d.kind == "Service" else st.ENDPOINTSLICES
            self.docs[f"{prefix}default/{d.name}"] = d
        self.changed = True

    def refresh(self) -> bool:
        c, self.changed = self.changed, False
        return c

    def documents(self):
        return dict(self.docs)

    def errors(self):
        return {}

    def edit(self, key: str, fn) -> None:
        data = copy.deepcopy(self.docs[key].data)
        fn(data)
        self.docs[key] = Document(data, key)
        self.changed = True


class FakeBackend:
    name = "fake"

    def __init__(self) -> None:
        self.calls: list = []
        self.fail = False

    def sync(self, state, changed):
        self.calls.append(changed)
        if self.fail:
            raise SyncError("iptables-restore: line 3 failed")
        return SyncResult(full=changed is None, rules=len(state.services))

    def cleanup(self) -> None:
        pass


def make(min_sync=0.0):
    src, be = FakeSource(), FakeBackend()
    loop = ProxyLoop(src, be, NodeContext(node_name="node-a"), min_sync_period=min_sync, sync_period=3600)
    return src, be, loop


def test_first_sync_is_full_then_partial_for_the_changed_service_only():
    src, be, loop = make()
    loop.step()
    assert be.calls == [None]
    src.edit(st.ENDPOINTSLICES + "default/web-flows", lambda d: d["endpoints"].pop())
    loop.step()
    assert [{str(n) for n in c} for c in be.calls[1:]] == [{"default/web"}]
    loop.step()  # nothing changed: no sync
    assert len(be.calls) == 2


def test_min_sync_period_holds_back_a_second_sync():
    src, be, loop = make(min_sync=3600)
    loop.step()
    src.edit(st.ENDPOINTSLICES + "default/web-flows", lambda d: d["endpoints"].pop())
    loop.step()
    assert be.calls == [None] and loop.pending


def test_a_failed_sync_is_followed_by_a_full_one():
    src, be, loop = make()
    loop.step()
    be.fail = True
    src.edit(st.ENDPOINTSLICES + "default/web-flows", lambda d: d["endpoints"].pop())
    loop.step()
    assert "line 3 failed" in loop.status()["lastError"]
    assert loop.metrics.partial_restore_failures == 1
    be.fail = False
    loop.step()
    assert be.calls[-1] is None and loop.status()["lastError"] == ""


def test_invalid_object_keeps_its_last_good_version():
    src, be, loop = make()
    loop.step()
    good = loop.applied
    src.edit(st.SERVICES + "default/web", lambda d: d["spec"]["ports"][0].update(port=70000))
    loop.step()
    assert list(loop.status()["invalidObjects"]) == [st.SERVICES + "default/web"]
    assert loop.metrics.invalid_objects == 1
    assert loop.applied == good  # the rules did not change
    assert len(be.calls) == 1
    src.edit(st.SERVICES + "default/web", lambda d: d["spec"]["ports"][0].update(port=81))
    loop.step()
    assert loop.status()["invalidObjects"] == {} and len(be.calls) == 2


class RecordingBackend(FakeBackend):
    def __init__(self) -> None:
        super().__init__()
        self.states: list = []

    def sync(self, state, changed):
        self.states.append(state)
        return super().sync(state, changed)


def _expected_state(src: FakeSource, loop: ProxyLoop):
    """What build_state makes of every object's last good version: what the loop must sync to."""
    keys = [k for k in src.docs if k in loop._good]
    services = [loop._good[k] for k in keys if k.startswith(st.SERVICES)]
    slices = [loop._good[k] for k in keys if not k.startswith(st.SERVICES)]
    return build_state(services, slices, loop.node())


def _random_edit(rng: random.Random, src: FakeSource, removed: dict) -> None:
    keys = sorted(src.docs)
    key = rng.choice(keys + sorted(removed))
    if key in removed:
        src.docs[key] = removed.pop(key)
        src.changed = True
        return
    op = rng.randrange(6)
    if op == 0:
        removed[key] = src.docs.pop(key)
        src.changed = True
    elif key.startswith(st.SERVICES):
        if op == 1:  # invalid: the last good version stays
            src.edit(key, lambda d: d["spec"]["ports"][0].update(port=70000))
        elif op == 2:
            src.edit(key, lambda d: d["spec"].update(sessionAffinity="ClientIP"))
        else:
            src.edit(key, lambda d: d["spec"]["ports"][0].update(port=rng.randrange(1, 65535)))
    else:
        def change(d):
            eps = d.get("endpoints") or []
            if op == 1 and eps:
                eps.pop(rng.randrange(len(eps)))
            elif op == 2:
                eps.append({"addresses": [f"10.244.9.{rng.randrange(1, 255)}"], "nodeName": "node-a"})
            elif op == 3:  # the slice now feeds another service
                d["metadata"]["labels"]["kubernetes.io/service-name"] = rng.choice(["web", "web-udp", "nope"])
            elif eps:
                eps[0]["conditions"] = {"ready": rng.random() < 0.5}
            d["endpoints"] = eps
        src.edit(key, change)


@pytest.mark.parametrize("seed", range(6))
def test_incremental_state_is_build_state_and_changes_are_changed_from(seed):
    """The loop keeps proxier values object by object; they must be what a rebuild gives."""
    rng = random.Random(seed)
    src, be = FakeSource(), RecordingBackend()
    loop = ProxyLoop(src, be, NodeContext(node_name="node-a"), min_sync_period=0.0, sync_period=3600)
    loop.step()
    applied = loop.applied
    assert applied == _expected_state(src, loop)
    removed: dict = {}
    for _ in range(40):
        _random_edit(rng, src, removed)
        n = len(be.calls)
        loop.step()
        expected = _expected_state(src, loop)
        if len(be.calls) > n:
            assert be.states[-1] == expected
            assert be.calls[-1] == expected.changed_from(applied)
            applied = expected
        else:  # no sync: nothing that reaches the rules changed (a port with no endpoints == none listed)
            assert not expected.changed_from(applied)
        assert loop.applied is be.states[-1]
