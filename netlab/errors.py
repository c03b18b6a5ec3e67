"""Errors a user can act on: what is wrong, where, and how to fix it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


def closest(word: str, options: Iterable[str]) -> str | None:
    """The option nearest to a misspelt `word`, for a SpecError's "did you mean" hint (None: nothing near)."""
    import difflib

    m = difflib.get_close_matches(word, sorted(options), n=1, cutoff=0.6)
    return m[0] if m else None


class NetlabError(Exception):
    """An expected failure with a message fit for the user (no traceback)."""

    exit_code = 1


@dataclass
class SpecError(NetlabError):
    """Bad input, found before anything was created (exit code 2).

    Rendered as ``file:line: field: message (hint)``, the way compilers and
    kubectl's validation point at a field.
    """

    where: str  # "lab.yaml:12" or "lab.yaml" when no line is known
    field: str  # dotted path with [i] indexes: "spec.ports[0].port"
    message: str
    hint: str = ""

    exit_code = 2

    def __str__(self) -> str:
        text = f"{self.where}: {self.field}: {self.message}" if self.field else f"{self.where}: {self.message}"
        return f"{text} ({self.hint})" if self.hint else text


class SpecErrors(NetlabError):
    """Several SpecErrors found in one pass, reported together."""

    exit_code = 2

    def __init__(self, errors: list[SpecError]) -> None:
        super().__init__("\n".join(str(e) for e in errors))
        self.errors = errors


class NeedsRoot(NetlabError):
    exit_code = 1


class LabBusy(NetlabError):
    """Another `up`/`down` of the same lab holds its lock."""

    exit_code = 1
