"""Where the proxy's Services and EndpointSlices come from: the lab's store, or a directory.

kube-proxy watches the API server through informers; netlab's proxy
watches the store (`--store URL`, the lab) or polls a directory of YAML
files (`--spec DIR`, standalone). Either way the loop sees raw objects as
Documents, keyed, and validates them itself, so a bad object written
around `netlab apply` still cannot break the node's rules.
"""

from __future__ import annotations

import glob
import os
import threading
from typing import Protocol

from netlab import store as st
from netlab.errors import SpecError
from netlab.spec.source import Document, load_files


class Source(Protocol):
    def refresh(self) -> bool:
        """Catch up with changes; True if anything changed since the last call."""
        ...

    def documents(self) -> dict[str, Document]:
        """Every Service/EndpointSlice object, by key."""
        ...

    def errors(self) -> dict[str, str]:
        """Inputs that could not even be read (a YAML syntax error), by file or key."""
        ...


class StoreSource:
    """Services and EndpointSlices from the store, list then watch (an informer's list+watch)."""

    PREFIXES = (st.SERVICES, st.ENDPOINTSLICES)

    def __init__(self, store: st.Store) -> None:
        self.store = store
        self._docs: dict[str, Document] = {}
        # Each prefix's own revision, as an informer per resource keeps its resourceVersion: the
        # prefixes are read one after the other, and the store's revision read with one prefix's
        # events may already count a write to the other made in between, which a shared revision
        # would then skip for good (a deleted Service left in the rules).
        self._revs: dict[str, int] = {}
        self._listed = False

    def _relist(self) -> None:
        self._docs = {}
        for prefix in self.PREFIXES:
            kvs, self._revs[prefix] = self.store.list(prefix)
            for kv in kvs:
                self._docs[kv.key] = Document(kv.value, kv.key)
        self._listed = True

    def refresh(self) -> bool:
        if not self._listed:
            self._relist()
            return True
        changed = False
        try:
            for prefix in self.PREFIXES:
                events, self._revs[prefix] = self.store.events_since(prefix, self._revs[prefix])
                for ev in events:
                    changed = True
                    if ev.type == "PUT":
                        self._docs[ev.key] = Document(ev.value, ev.key)
                    else:
                        self._docs.pop(ev.key, None)
        except st.Compacted:
            self._relist()
            return True
        return changed

    def documents(self) -> dict[str, Document]:
        return dict(self._docs)

    def errors(self) -> dict[str, str]:
        return {}


class DirSource:
    """Every *.yaml/*.yml/*.json file in a directory, re-read when one changes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._stamp: dict[str, tuple[float, int]] = {}
        self._by_file: dict[str, list[Document]] = {}
        self._errors: dict[str, str] = {}
        self._lock = threading.Lock()

    def _files(self) -> list[str]:
        return sorted(
            f for pat in ("*.yaml", "*.yml", "*.json") for f in glob.glob(os.path.join(self.path, pat))
        )

    def refresh(self) -> bool:
        changed = False
        files = self._files()
        for gone in set(self._stamp) - set(files):
            self._stamp.pop(gone)
            self._by_file.pop(gone, None)
            self._errors.pop(gone, None)
            changed = True
        for f in files:
            try:
                s = os.stat(f)
            except FileNotFoundError:
                continue
            stamp = (s.st_mtime, s.st_size)
            if self._stamp.get(f) == stamp:
                continue
            self._stamp[f] = stamp
            changed = True
            try:
                self._by_file[f] = [d for d in load_files([f]) if d.kind in ("Service", "EndpointSlice")]
                self._errors.pop(f, None)
            except SpecError as e:
                # Keep the file's last good objects, as a bad apply would leave them.
                self._errors[f] = str(e)
        return changed

    def documents(self) -> dict[str, Document]:
        out: dict[str, Document] = {}
        for f, docs in sorted(self._by_file.items()):
            for d in docs:
                meta = d.data.get("metadata") or {}
                ns = meta.get("namespace", "default") if isinstance(meta, dict) else "default"
                prefix = st.SERVICES if d.kind == "Service" else st.ENDPOINTSLICES
                out[f"{prefix}{ns}/{d.name}"] = d
        return out

    def errors(self) -> dict[str, str]:
        return dict(self._errors)
