"""The YAML loader keeps a line for every field, for file:line errors."""

import pytest

from netlab.errors import SpecError
from netlab.spec.source import load_text, path_text


def test_lines_of_nested_fields():
    docs = load_text("a: 1\n---\nkind: Lab\nspec:\n  ports:\n  - port: 80\n    x: [1, 2]\n", "f.yaml")
    assert len(docs) == 2
    lab = docs[1]
    assert lab.kind == "Lab"
    assert lab.where(("spec", "ports", 0, "port")) == "f.yaml:6"
    assert lab.where(("spec", "ports", 0, "x", 1)) == "f.yaml:7"
    # An absent field points at its nearest present parent.
    assert lab.where(("spec", "nope")) == "f.yaml:4"


def test_empty_documents_are_skipped():
    assert [d.data for d in load_text("---\n---\na: 1\n---\n", "f.yaml")] == [{"a": 1}]


def test_duplicate_key_is_an_error_with_its_line():
    with pytest.raises(SpecError) as e:
        load_text("a: 1\nb:\n  c: 1\n  c: 2\n", "g.yaml")
    assert str(e.value) == "g.yaml:4: b.c: duplicate key (remove one of the two)"


def test_syntax_error_names_the_line():
    with pytest.raises(SpecError) as e:
        load_text("a: [1\nb: 2\n", "g.yaml")
    assert str(e.value).startswith("g.yaml:") and "not valid YAML" in str(e.value)


def test_path_text():
    assert path_text(("spec", "ports", 0, "port")) == "spec.ports[0].port"
    assert path_text(()) == ""
