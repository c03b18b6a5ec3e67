"""`netlab up` and `validate` take their topology files as arguments or with -f (no root, nothing created)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from netlab import cli

REPO = Path(__file__).resolve().parents[2]
DEMO = str(REPO / "topologies" / "demo.yaml")


def run(*args: str):
    return CliRunner().invoke(cli.cli, list(args))


@pytest.mark.parametrize("args", [[DEMO], ["-f", DEMO]], ids=["argument", "option"])
def test_validate_reads_a_file_given_either_way(args):
    r = run("validate", *args)
    assert r.exit_code == 0, r.output
    assert r.output.strip() == "lab demo: 2 nodes, 3 pods, 1 other objects: valid"


def test_files_given_both_ways_are_read_together(tmp_path):
    """The Lab in one file, a pod in another: both kinds of argument reach the loader."""
    pod = tmp_path / "pod.yaml"
    pod.write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: extra}\nspec:\n  nodeName: node2\n"
                   "  containers: [{name: c}]\n")
    r = run("validate", "-f", DEMO, str(pod))
    assert r.exit_code == 0, r.output
    assert "4 pods" in r.output


@pytest.mark.parametrize("command", ["validate", "up"])
def test_no_file_is_a_usage_error_that_names_the_fix(command, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)  # `up` asks for root before it reads its arguments
    r = run(command)
    assert r.exit_code == 2
    assert f"no topology file: give one, as in `netlab {command} lab.yaml` (or -f lab.yaml)" in r.output


def test_up_with_a_bad_file_as_argument_fails_before_anything_is_made(tmp_path, monkeypatch):
    """The file reaches the spec check, which refuses it: exit 2, nothing created (no root needed to see it)."""
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    made = []  # the lab's lock (its state dir) is the first thing `up` makes
    monkeypatch.setattr("netlab.lab.lab_lock", lambda *a, **k: made.append(a))
    bad = tmp_path / "lab.yaml"
    bad.write_text("apiVersion: netlab/v1alpha1\nkind: Lab\nmetadata: {name: nlcli}\nspec:\n  nodez: []\n")
    r = run("up", str(bad))
    assert r.exit_code == 2, r.output
    assert f"{bad}:5: spec.nodez: unknown field 'nodez'" in r.output
    assert made == []
