"""The lab's state dir in memory: netlab's own tmpfs where the run dir is on disk, none where it is not."""

from __future__ import annotations

import ctypes
import os
import tempfile

import pytest

from netlab import names, statedir
from tests.helpers import unique

_libc = ctypes.CDLL(None, use_errno=True)


@pytest.fixture
def run_dir(monkeypatch, tmp_path):
    """names.RUN_DIR on this test's own dir (on disk: /tmp is not a tmpfs here, checked)."""
    d = tmp_path / "run"
    monkeypatch.setattr(names, "RUN_DIR", str(d))
    made: list[str] = []
    yield d, made
    for lab in made:  # whatever a failed assertion left mounted
        while statedir.our_mount(lab):
            _libc.umount2(names.lab_dir(lab).encode(), 2)


def test_on_disk_the_lab_dir_is_a_tmpfs_of_the_labs_own_until_removed(run_dir):
    d, made = run_dir
    os.makedirs(d)
    if statedir.in_memory(str(d)):
        pytest.skip(f"{d} is already in memory on this machine: the disk case cannot be shown here")
    lab = unique("nlsd")
    made.append(lab)
    assert statedir.make(lab) is True
    assert statedir.our_mount(lab) and statedir.in_memory(names.lab_dir(lab))
    assert statedir.make(lab) is False and statedir.our_mount(lab)  # a second up: the same mount, not another
    with open(os.path.join(names.lab_dir(lab), "state"), "w") as f:
        f.write("x")
    held = os.open(os.path.join(names.lab_dir(lab), "state"), os.O_RDONLY)  # as `down` holds the lab's lock
    try:
        assert statedir.remove(lab) is True
    finally:
        os.close(held)
    assert not statedir.our_mount(lab) and not os.path.exists(names.lab_dir(lab))
    assert statedir.remove(lab) is False


def test_where_the_run_dir_is_in_memory_nothing_is_mounted(monkeypatch):
    with tempfile.TemporaryDirectory(dir="/dev/shm") as shm:
        assert statedir.in_memory(shm)
        monkeypatch.setattr(names, "RUN_DIR", shm)
        lab = unique("nlsd")
        assert statedir.make(lab) is False
        assert os.path.isdir(names.lab_dir(lab)) and not statedir.our_mount(lab)
        assert statedir.remove(lab) is True and not os.path.exists(names.lab_dir(lab))


def test_files_already_in_a_lab_dir_on_disk_are_never_hidden_under_a_mount(run_dir):
    d, made = run_dir
    lab = unique("nlsd")
    made.append(lab)
    os.makedirs(names.lab_dir(lab))
    with open(os.path.join(names.lab_dir(lab), "lab.json"), "w") as f:
        f.write("{}")
    assert statedir.make(lab) is False
    assert not statedir.our_mount(lab) and os.path.exists(os.path.join(names.lab_dir(lab), "lab.json"))


def test_a_tmpfs_someone_else_mounted_there_is_not_ours(run_dir):
    d, made = run_dir
    lab = unique("nlsd")
    os.makedirs(names.lab_dir(lab))
    assert _libc.mount(b"other", names.lab_dir(lab).encode(), b"tmpfs", 0, b"size=1m") == 0
    try:
        assert statedir.in_memory(names.lab_dir(lab)) and not statedir.our_mount(lab)
    finally:
        _libc.umount2(names.lab_dir(lab).encode(), 2)


def test_where_mounting_is_refused_the_state_stays_on_disk_with_a_warning(run_dir, monkeypatch, caplog):
    d, made = run_dir
    os.makedirs(d)
    if statedir.in_memory(str(d)):
        pytest.skip(f"{d} is already in memory on this machine: nothing would be mounted")
    lab = unique("nlsd")

    def refused(_lab, path):
        raise PermissionError(1, f"mount tmpfs on {path}: Operation not permitted")

    monkeypatch.setattr(statedir, "_mount_tmpfs", refused)
    assert statedir.make(lab) is False
    assert os.path.isdir(names.lab_dir(lab)) and not statedir.in_memory(names.lab_dir(lab))
    assert "state stays on disk" in caplog.text and "Operation not permitted" in caplog.text
    assert statedir.remove(lab) is True and not os.path.exists(names.lab_dir(lab))


def test_a_run_dir_with_a_space_and_non_ascii_is_still_recognised(monkeypatch, tmp_path):
    """mountinfo writes a space as \\040 and leaves other bytes as they are: both are read back right."""
    d = tmp_path / "run dir é"
    os.makedirs(d)
    if statedir.in_memory(str(d)):
        pytest.skip(f"{d} is already in memory on this machine: nothing would be mounted")
    monkeypatch.setattr(names, "RUN_DIR", str(d))
    lab = unique("nlsd")
    try:
        assert statedir.make(lab) is True and statedir.our_mount(lab)
        assert statedir.remove(lab) is True and not statedir.our_mount(lab)
    finally:
        while statedir.our_mount(lab):
            _libc.umount2(names.lab_dir(lab).encode(), 2)
