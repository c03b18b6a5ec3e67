"""cni.registry.load under concurrency: never a half-imported plugin module."""

from __future__ import annotations

import sys
import threading

from cni import registry


def test_load_waits_for_a_module_another_thread_is_importing(tmp_path, monkeypatch):
    # A plugin module whose import blocks until released: while thread A is inside it,
    # the module is in sys.modules without its `add` yet.
    (tmp_path / "nlslowplugin.py").write_text(
        "import builtins\n"
        "builtins._nl_started.set()\n"
        "builtins._nl_release.wait(10)\n"
        "def add(*a):\n    return 'added'\n"
    )
    import builtins

    started, release = threading.Event(), threading.Event()
    monkeypatch.setattr(builtins, "_nl_started", started, raising=False)
    monkeypatch.setattr(builtins, "_nl_release", release, raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(registry.PLUGINS, "slow", "nlslowplugin")
    monkeypatch.delitem(sys.modules, "nlslowplugin", raising=False)
    got: dict[str, object] = {}

    a = threading.Thread(target=lambda: got.setdefault("a", registry.load("slow")))
    a.start()
    assert started.wait(10)
    assert "nlslowplugin" in sys.modules  # half made, as the kubelet's second thread saw it

    def second() -> None:
        mod = registry.load("slow")
        got["b_add"] = getattr(mod, "add", None)

    b = threading.Thread(target=second)
    b.start()
    b.join(0.3)
    assert b.is_alive(), "load() returned while the module was still being imported"
    release.set()
    a.join(10)
    b.join(10)
    assert callable(got["b_add"]) and got["b_add"]() == "added"
    sys.modules.pop("nlslowplugin", None)
