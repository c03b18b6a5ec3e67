"""Light record classes for the plugin path, in place of dataclasses.

``import dataclasses`` pulls `inspect` (and with it `ast`, `dis`,
`tokenize`, `re`, `enum`): more than ten milliseconds on every exec of a
plugin, several times the plugin's own work. A record here is a class
with ``__slots__`` and an explicit ``__init__``; this base adds what the
dataclasses gave the plugin code: a readable repr, field-wise equality,
`replace` (dataclasses.replace) and `asdict` (shallow). `Frozen` refuses
attribute assignment, as ``frozen=True`` did.
"""


class Record:
    """Fields are the ``__slots__`` of the class and its bases, in order."""

    __slots__ = ()

    @classmethod
    def fields(cls) -> tuple[str, ...]:
        out: list[str] = []
        for klass in reversed(cls.__mro__):
            out += [s for s in klass.__dict__.get("__slots__", ()) if s not in out]
        return tuple(out)

    def asdict(self) -> dict:
        return {f: getattr(self, f) for f in self.fields()}

    def replace(self, **changes):  # -> the same type
        kw = self.asdict()
        unknown = set(changes) - set(kw)
        if unknown:
            raise TypeError(f"{type(self).__name__} has no field(s) {sorted(unknown)}")
        kw.update(changes)
        return type(self)(**kw)

    def __repr__(self) -> str:
        body = ", ".join(f"{f}={getattr(self, f)!r}" for f in self.fields())
        return f"{type(self).__name__}({body})"

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in self.fields())

    __hash__ = None  # type: ignore[assignment]  # mutable, as a plain @dataclass


class Frozen(Record):
    """A record whose fields are set once, in ``__init__`` (through `_set`)."""

    __slots__ = ()

    def _set(self, **values) -> None:
        for k, v in values.items():
            object.__setattr__(self, k, v)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen: cannot assign {name}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen: cannot delete {name}")

    def __hash__(self) -> int:
        return hash(tuple(getattr(self, f) for f in self.fields()))
