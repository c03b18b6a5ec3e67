"""YAML documents that remember where each value came from.

Validation errors must name file, line and field. PyYAML's composer keeps
marks on every node; this loader builds plain Python data (what validators
want) and a side table from field path to line, so `Document.where(path)`
answers "lab.yaml:14" for ("spec", "podNetwork", "SubnetLen").

The nodes come from libyaml's C parser when PyYAML has it (the PyPI wheel
bundles it; Debian's python3-yaml links it): ~16x faster than the pure-Python
scanner, which took ~0.3 s of a 1000-pod topology's 0.4 s `validate`, on
`up`'s critical path. Its nodes carry the same start marks. Its error
wording differs from the pure-Python parser's, so a text the C parser
refuses is parsed again by the pure-Python loader, whose message (and
line) is what users have always seen; without libyaml, that loader is the
only one. The one difference found in what the two accept: libyaml takes a
tab as a separator (`a:\tb`, `[1,\t2]`, a trailing tab), which PyYAML's
scanner refuses; a text with a tab in it goes to the pure-Python loader, so
what was an error stays one. (kubectl's decoder, sigs.k8s.io/yaml, likewise keeps one code
path for the error text.)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml

from netlab.errors import SpecError

Path = tuple[str | int, ...]


def path_text(path: Iterable[str | int]) -> str:
    """("spec", "ports", 0, "port") -> "spec.ports[0].port"."""
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


@dataclass
class Document:
    """One YAML document: its data, and the line of every field in it."""

    data: Any
    filename: str
    lines: dict[Path, int] = field(default_factory=dict)
    index: int = 0  # position of the document in its file

    @property
    def kind(self) -> str | None:
        return self.data.get("kind") if isinstance(self.data, dict) else None

    @property
    def api_version(self) -> str | None:
        return self.data.get("apiVersion") if isinstance(self.data, dict) else None

    @property
    def name(self) -> str | None:
        meta = self.data.get("metadata") if isinstance(self.data, dict) else None
        return meta.get("name") if isinstance(meta, dict) else None

    def where(self, path: Path = ()) -> str:
        """file:line of the deepest known prefix of `path`."""
        p = tuple(path)
        while p and p not in self.lines:
            p = p[:-1]
        line = self.lines.get(p)
        return f"{self.filename}:{line}" if line else self.filename

    def error(self, path: Path, message: str, hint: str = "") -> SpecError:
        return SpecError(self.where(path), path_text(path), message, hint)


class _Loader(yaml.SafeLoader):
    """Pure-Python SafeLoader: the fallback, and the source of every syntax error's text."""


# libyaml's parser with the same safe constructors; None when PyYAML was built without it.
_CLoader: type | None = getattr(yaml, "CSafeLoader", None) if yaml.__with_libyaml__ else None


_STR_TAG = "tag:yaml.org,2002:str"


def _build(node: yaml.Node, path: Path, lines: dict[Path, int], filename: str, loader: Any) -> Any:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.ScalarNode):
        # A string is its node's value (SafeConstructor.construct_yaml_str); other tags go through the constructor.
        return node.value if node.tag == _STR_TAG else loader.construct_object(node, deep=True)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        loader.flatten_mapping(node)
        for knode, vnode in node.value:
            key = knode.value if knode.tag == _STR_TAG and isinstance(knode, yaml.ScalarNode) \
                else loader.construct_object(knode, deep=True)
            if not isinstance(key, (str, int, float, bool)) or key is None:
                raise SpecError(f"{filename}:{knode.start_mark.line + 1}", path_text(path), f"unsupported key {key!r}")
            if key in out:
                raise SpecError(
                    f"{filename}:{knode.start_mark.line + 1}",
                    path_text(path + (str(key),)),
                    "duplicate key",
                    "remove one of the two",
                )
            sub = path + (str(key),)
            out[key] = _build(vnode, sub, lines, filename, loader)
            lines[sub] = knode.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(v, path + (i,), lines, filename, loader) for i, v in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def _load(loader: Any, filename: str) -> list[Document]:
    """Every non-empty document the loader composes; YAML errors propagate."""
    docs: list[Document] = []
    try:
        i = 0
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            lines: dict[Path, int] = {}
            data = _build(node, (), lines, filename, loader)
            if data is not None:
                docs.append(Document(data, filename, lines, i))
            i += 1
    finally:
        loader.dispose()
    return docs


def load_text(text: str, filename: str) -> list[Document]:
    """Every non-empty document of a YAML text."""
    try:
        if _CLoader is not None and "\t" not in text:
            try:
                return _load(_CLoader(text), filename)
            except yaml.YAMLError:
                pass  # parsed again below, for the pure-Python parser's message
        return _load(_Loader(text), filename)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = f":{mark.line + 1}" if mark else ""
        raise SpecError(f"{filename}{line}", "", f"not valid YAML: {e.problem or e}", "fix the syntax") from None


def load_files(paths: Iterable[str]) -> list[Document]:
    docs: list[Document] = []
    for p in paths:
        try:
            with open(p, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise SpecError(p, "", f"cannot read file: {e.strerror}", "check the path") from None
        docs.extend(load_text(text, p))
    return docs


def walk(data: Any, path: Path = ()) -> Iterator[tuple[Path, Any]]:
    yield path, data
    if isinstance(data, dict):
        for k, v in data.items():
            yield from walk(v, path + (str(k),))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from walk(v, path + (i,))
