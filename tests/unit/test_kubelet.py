"""The kubelet without a kernel: its sandbox journal (what a restarted kubelet must clean up), its fd limit."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

from netlab.kubelet import Journal


def sb(i: int) -> SimpleNamespace:
    return SimpleNamespace(id=f"id{i}", key=f"default/p{i}", netns=f"ns{i}", node="node1")


def test_live_sandboxes_survive_a_new_journal(tmp_path):
    j = Journal(str(tmp_path))
    for i in range(3):
        j.added(sb(i))
    j.removed("id1")
    j.removed("id1")  # twice, and unknown ids: nothing to write
    j.removed("nope")
    j.close()
    again = Journal(str(tmp_path))
    assert sorted(e["id"] for e in again.read()) == ["id0", "id2"]
    assert {e["netns"] for e in again.read()} == {"ns0", "ns2"}
    assert len((tmp_path / Journal.NAME).read_text().splitlines()) == 4
    again.reset()
    assert again.read() == []
    again.close()


def test_a_torn_last_line_is_skipped(tmp_path):
    j = Journal(str(tmp_path))
    j.added(sb(0))
    j.close()
    with open(tmp_path / Journal.NAME, "a") as f:
        f.write('{"op":"add","id":"id9","ke')
    assert [e["id"] for e in Journal(str(tmp_path)).read()] == ["id0"]


def test_removed_entries_are_compacted_away(tmp_path):
    j = Journal(str(tmp_path))
    j.added(sb(0))
    for i in range(1, 1200):
        j.added(sb(i))
        j.removed(f"id{i}")
    lines = (tmp_path / Journal.NAME).read_text().splitlines()
    assert len(lines) < 1000  # rewritten with the live entries once removals passed 1000
    assert [e["id"] for e in j.read()] == ["id0"]
    j.added(sb(5000))  # appends go to the new file
    assert sorted(e["id"] for e in j.read()) == ["id0", "id5000"]
    j.close()


def test_the_open_file_limit_is_raised_to_the_hard_limit():
    code = ("import resource; from netlab import kubelet; "
            "resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1])); "
            "kubelet.raise_nofile(); s, h = resource.getrlimit(resource.RLIMIT_NOFILE); print(s == h or s == 1 << 20)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"
