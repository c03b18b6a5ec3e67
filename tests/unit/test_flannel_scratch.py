"""flannel's scratch files: one per container, the same bytes as the reference writes, names of one inode."""

from __future__ import annotations

import os

from cni.plugins import flannel


def test_same_bytes_share_an_inode_and_each_name_stays_its_own(tmp_path):
    data = b'{"name": "cbr0", "type": "bridge"}'
    paths = [str(tmp_path / f"c{i}") for i in range(3)]
    for p in paths:
        flannel._save_scratch(p, data)
    assert all(open(p, "rb").read() == data for p in paths)
    assert all(os.stat(p).st_mode & 0o777 == 0o600 for p in paths)
    assert len({os.stat(p).st_ino for p in paths}) == 1
    os.unlink(paths[0])  # DEL of one container removes its name only
    assert open(paths[1], "rb").read() == data
    # A repeated ADD replaces the name; the others keep their bytes.
    flannel._save_scratch(paths[1], b'{"other": 1}')
    assert open(paths[1], "rb").read() == b'{"other": 1}' and open(paths[2], "rb").read() == data


def test_a_file_written_into_is_not_shared_again(tmp_path):
    data = b'{"name": "cbr0"}'
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    flannel._save_scratch(a, data)
    with open(a, "r+b") as f:  # someone rewrites it in place, same size
        f.write(b'{"name": "xxx0"}')
    os.utime(a, ns=(0, 0))
    flannel._save_scratch(b, data)
    assert open(b, "rb").read() == data and os.stat(a).st_ino != os.stat(b).st_ino


def test_no_name_left_means_a_new_file(tmp_path):
    data = b"{}"
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    flannel._save_scratch(a, data)
    os.unlink(a)
    flannel._save_scratch(b, data)
    assert open(b, "rb").read() == data and os.stat(b).st_nlink == 1
