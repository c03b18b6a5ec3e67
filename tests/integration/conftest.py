"""Integration fixtures: labs with unique names that leave nothing behind."""

from __future__ import annotations

import os
import textwrap

import pytest

from tests.helpers import assert_no_leaks, unique

if os.geteuid() != 0:  # pragma: no cover - the suite runs as root (bootstrap.sh test)
    pytest.skip("integration tests need root (sudo ./bootstrap.sh test)", allow_module_level=True)


class LabFactory:
    """Writes topology files into a tmp dir and brings labs up; tears every one down afterwards."""

    def __init__(self, tmp_path, prefix: str) -> None:
        self.tmp_path = tmp_path
        self.prefix = prefix
        self.labs: list[str] = []

    def name(self) -> str:
        n = unique(self.prefix)
        self.labs.append(n)
        return n

    def write(self, text: str, filename: str | None = None) -> str:
        path = self.tmp_path / (filename or f"{unique('f')}.yaml")
        path.write_text(textwrap.dedent(text))
        return str(path)

    def lab_yaml(self, name: str, spec: str = "nodes: 2", pods: str = "") -> str:
        spec_block = textwrap.indent(textwrap.dedent(spec).strip(), "  ")
        return self.write(
            f"apiVersion: netlab/v1alpha1\nkind: Lab\nmetadata: {{name: {name}}}\nspec:\n{spec_block}\n"
            + textwrap.dedent(pods)
        )

    def up(self, *paths: str, timeout: float = 60):
        from netlab import lab

        return lab.up(list(paths), None, timeout)

    def teardown(self) -> None:
        from netlab import lab

        for name in self.labs:
            lab.teardown(name)
        for name in self.labs:
            assert_no_leaks(name)


@pytest.fixture
def labs(tmp_path, request):
    f = LabFactory(tmp_path, "t")
    yield f
    f.teardown()


def pod(name: str, node: str | None = None, labels: str = "{app: web}", extra: str = "") -> str:
    node_line = f"  nodeName: {node}\n" if node else ""
    return (f"---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {labels}}}\nspec:\n{node_line}"
            f"  containers: [{{name: c{extra}}}]\n")
