"""The proxy's store source: list, then every change under both prefixes, none skipped (no root)."""

from __future__ import annotations

from netlab import store as st
from proxy.sources import StoreSource

SVC = st.SERVICES + "default/web"
SLICE = st.ENDPOINTSLICES + "default/web-abc"


def service(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
            "spec": {"ports": [{"port": 80}]}}


class WritesBetweenReads(st.SqliteStore):
    """A store where someone writes between the source's two reads: after the Services are read,
    before the EndpointSlices are (the store's revision read then already counts that write)."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.between: list = []  # callables, one run after each read of the Services

    def events_since(self, prefix: str, revision: int):
        out = super().events_since(prefix, revision)
        if prefix == st.SERVICES and self.between:
            self.between.pop(0)()
        return out


def test_a_service_deleted_between_the_two_reads_is_not_skipped(tmp_path):
    store = WritesBetweenReads(str(tmp_path / "store.db"))
    store.put(SVC, service("web"))
    src = StoreSource(store)
    assert src.refresh() and SVC in src.documents()

    store.between.append(lambda: store.delete(SVC))
    store.put(SLICE, {"kind": "EndpointSlice"})
    src.refresh()  # sees the slice; the deletion landed after the Services were read
    assert SVC in src.documents() and SLICE in src.documents()
    assert src.refresh() is True  # the next turn brings the deletion
    assert SVC not in src.documents() and SLICE in src.documents()
    store.close()


def test_nothing_new_is_no_change_and_a_change_under_either_prefix_is_one(tmp_path):
    store = st.SqliteStore(str(tmp_path / "store.db"))
    src = StoreSource(store)
    assert src.refresh() is True  # the first list
    assert src.refresh() is False
    store.put(SLICE, {"kind": "EndpointSlice"})
    assert src.refresh() is True and src.refresh() is False
    store.put(SVC, service("web"))
    assert src.refresh() is True and set(src.documents()) == {SVC, SLICE}
    store.close()
