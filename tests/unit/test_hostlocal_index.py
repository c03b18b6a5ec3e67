"""host-local's in-process index stays exact when other processes change the data dir."""

from __future__ import annotations

import os

import pytest

from cni import skel
from cni.errors import CNIError
from cni.plugins import hostlocal


def conf(tmp_path, **ipam):
    return {"cniVersion": "1.1.0", "name": "net1", "type": "host-local",
            "ipam": {"dataDir": str(tmp_path), "ranges": [[{"subnet": "10.9.0.0/24", **ipam}]]}}


def add(c, cid):
    return hostlocal.add(c, skel.Args("ADD", container_id=cid, ifname="eth0"))["ips"][0]["address"].split("/")[0]


def delete(c, cid):
    hostlocal.delete(c, skel.Args("DEL", container_id=cid, ifname="eth0"))


def test_files_another_process_writes_are_seen(tmp_path):
    c = conf(tmp_path)
    d = tmp_path / "net1"
    assert add(c, "c1") == "10.9.0.2"
    # Another plugin (the reference, say) reserves the next address and moves the round-robin mark back.
    (d / "10.9.0.3").write_bytes(b"other\r\neth0")
    (d / "last_reserved_ip.0").write_text("10.9.0.1")
    assert add(c, "c2") == "10.9.0.4"  # .2 and .3 are taken, whatever the index knew
    delete(c, "other")  # found through the directory listing, not through this process's own adds
    assert not (d / "10.9.0.3").exists()
    assert (d / "10.9.0.2").read_bytes() == b"c1\r\neth0"


def test_a_file_rewritten_in_place_is_never_released_for_its_old_owner(tmp_path):
    c = conf(tmp_path)
    d = tmp_path / "net1"
    assert add(c, "c1") == "10.9.0.2"
    ino = os.stat(d / "10.9.0.2").st_ino
    with open(d / "10.9.0.2", "r+b") as f:  # same inode, another owner: the index cannot tell by listing
        f.write(b"c9\r\neth0")
        f.truncate()
    assert os.stat(d / "10.9.0.2").st_ino == ino
    delete(c, "c1")
    assert (d / "10.9.0.2").read_bytes() == b"c9\r\neth0"
    delete(c, "c9")
    assert not (d / "10.9.0.2").exists()


def test_a_file_replaced_under_the_same_name_is_read_again(tmp_path):
    c = conf(tmp_path)
    d = tmp_path / "net1"
    assert add(c, "c1") == "10.9.0.2"
    (d / "10.9.0.2").unlink()
    (d / "10.9.0.2").write_bytes(b"c2\r\neth0")
    delete(c, "c1")
    assert (d / "10.9.0.2").exists()
    delete(c, "c2")
    assert not (d / "10.9.0.2").exists()


def test_a_duplicate_add_is_refused_also_after_a_restart_of_the_index(tmp_path):
    c = conf(tmp_path)
    add(c, "c1")
    hostlocal._INDEX.clear()  # a new process: the index is built from the files
    with pytest.raises(CNIError, match="duplicate allocation"):
        add(c, "c1")


def test_a_data_dir_made_again_starts_a_fresh_index(tmp_path):
    c = conf(tmp_path)
    d = tmp_path / "net1"
    add(c, "c1")
    for p in d.iterdir():
        p.unlink()
    d.rmdir()
    assert add(c, "c2") == "10.9.0.2"
    assert sorted(p.name for p in d.iterdir()) == ["10.9.0.2", "last_reserved_ip.0", "lock"]


def test_last_reserved_is_rewritten_exactly_when_it_gets_shorter(tmp_path):
    c = conf(tmp_path, rangeStart="10.9.0.98", rangeEnd="10.9.0.100")
    d = tmp_path / "net1"
    assert [add(c, f"c{i}") for i in range(3)] == ["10.9.0.98", "10.9.0.99", "10.9.0.100"]
    assert (d / "last_reserved_ip.0").read_bytes() == b"10.9.0.100"
    delete(c, "c0")
    assert add(c, "c3") == "10.9.0.98"  # wrapped around
    assert (d / "last_reserved_ip.0").read_bytes() == b"10.9.0.98"


def test_gc_reads_every_file_again(tmp_path):
    c = conf(tmp_path)
    d = tmp_path / "net1"
    add(c, "c1")
    add(c, "c2")
    with open(d / "10.9.0.3", "r+b") as f:  # c2's file now belongs to c3 (same inode)
        f.write(b"c3\r\neth0")
        f.truncate()
    gc = dict(c, **{"cni.dev/valid-attachments": [{"containerID": "c3", "ifname": "eth0"}]})
    hostlocal.gc(gc, skel.Args("GC"))
    assert sorted(p.name for p in d.iterdir()) == ["10.9.0.3", "last_reserved_ip.0", "lock"]
