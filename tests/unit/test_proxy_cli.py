"""netlab-proxy's command line: flags that pick a mode's behaviour (no kernel touched)."""

from __future__ import annotations

import pytest

from proxy.cli import parser


def test_ipvs_scheduler_flag_as_kube_proxys():
    base = ["--spec", "/nonexistent", "--mode", "ipvs", "--netns", "nltest-never-created"]
    assert parser().parse_args(base).ipvs_scheduler == ""  # blank: the default, rr
    for name in ("rr", "wrr", "lc", "wlc", "dh", "sh", "sed", "nq"):
        assert parser().parse_args(base + ["--ipvs-scheduler", name]).ipvs_scheduler == name


def test_ipvs_scheduler_flag_rejects_unknown_names(capsys):
    with pytest.raises(SystemExit) as e:
        parser().parse_args(["--spec", "/x", "--ipvs-scheduler", "fastest"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "argument --ipvs-scheduler: unknown IPVS scheduler 'fastest': use one of rr, wrr, lc, wlc" in err


def test_ipvs_backend_gets_the_scheduler():
    from proxy.ipvs import make_backend

    args = parser().parse_args(["--spec", "/x", "--mode", "ipvs", "--netns", "nltest-never-created",
                                "--ipvs-scheduler", "wlc"])
    assert make_backend(args).scheduler == "wlc"  # the backend touches the kernel only on its first sync
    args = parser().parse_args(["--spec", "/x", "--mode", "ipvs", "--netns", "nltest-never-created"])
    assert make_backend(args).scheduler == "rr"
