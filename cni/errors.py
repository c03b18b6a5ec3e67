"""CNI error objects, as the spec defines them (SPEC.md "Error").

A plugin that fails prints ``{"cniVersion", "code", "msg", "details"}`` on
stdout and exits 1; the codes are the spec's well-known ones, so a runtime
can tell "try again" from "your config is broken".
"""

# Well-known error codes (CNI SPEC.md, "Error").
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENV = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN = 11
NOT_AVAILABLE = 50
LIMITED_CONNECTIVITY = 51
# Plugin-specific codes start above 99; 999 is what libcni's skel uses for
# a plain Go error that carries no code ("internal error").
INTERNAL = 999


class CNIError(Exception):
    """An error to hand back to the runtime as the spec's JSON object.

    A plain exception class, not a dataclass: this module is imported by
    every exec of a plugin (see cni.record for the cost).
    """

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(code, msg, details)
        self.code = code
        self.msg = msg
        self.details = details

    def __repr__(self) -> str:
        return f"CNIError(code={self.code!r}, msg={self.msg!r}, details={self.details!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CNIError):
            return NotImplemented
        return (self.code, self.msg, self.details) == (other.code, other.msg, other.details)

    __hash__ = Exception.__hash__

    def __str__(self) -> str:
        return f"{self.msg}: {self.details}" if self.details else self.msg

    def to_json(self, cni_version: str) -> dict:
        out: dict = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out
