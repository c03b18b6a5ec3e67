"""The YAML loader keeps a line for every field, for file:line errors."""

import pytest

from netlab.errors import SpecError
from netlab.spec import source
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


MIXED = (
    "apiVersion: v1\nkind: Pod\nmetadata: {name: p1, labels: {app: web}}\nspec:\n"
    "  nodeName: node1\n  containers:\n  - name: c\n    command: [sleep, '1']\n"
    "    env:\n      - {name: A, value: \"x\"}\n---\n---\n"
    "a: &x {b: 1}\nc: *x\nd: |\n  text\n  more\ne: 0o17\nf: ~\ng: 2026-01-01\nh: [1, {i: 1.5}]\n"
)


@pytest.mark.skipif(source._CLoader is None, reason="PyYAML without libyaml: only the pure-Python loader exists")
def test_libyaml_and_pure_python_loaders_agree_on_data_and_lines(monkeypatch):
    fast = [(d.data, d.lines, d.index) for d in load_text(MIXED, "m.yaml")]
    monkeypatch.setattr(source, "_CLoader", None)
    assert [(d.data, d.lines, d.index) for d in load_text(MIXED, "m.yaml")] == fast


@pytest.mark.parametrize("without_libyaml", [False, True])
@pytest.mark.parametrize("text, message", [
    # The pure-Python parser's wording, whichever parser read the text first.
    ("a: [1\nb: 2\n", "g.yaml:2: not valid YAML: expected ',' or ']', but got ':' (fix the syntax)"),
    ("k: v\n---\na: b: c\n", "g.yaml:3: not valid YAML: mapping values are not allowed here (fix the syntax)"),
    # libyaml takes a tab as a separator; PyYAML (and netlab before libyaml) refuses it.
    ("a: 1 \t\n", "g.yaml:1: not valid YAML: found character '\\t' that cannot start any token (fix the syntax)"),
    ("a: [1,\t2]\n", "g.yaml:1: not valid YAML: found character '\\t' that cannot start any token (fix the syntax)"),
])
def test_syntax_errors_keep_the_pure_python_wording(monkeypatch, without_libyaml, text, message):
    if without_libyaml:
        monkeypatch.setattr(source, "_CLoader", None)
    with pytest.raises(SpecError) as e:
        load_text(text, "g.yaml")
    assert str(e.value) == message


def test_duplicate_key_before_a_later_syntax_error_is_reported_first():
    with pytest.raises(SpecError) as e:
        load_text("a: 1\na: 2\n---\nb: [\n", "g.yaml")
    assert str(e.value) == "g.yaml:2: a: duplicate key (remove one of the two)"
