"""JSON for the plugin executables, through the stdlib's C accelerator `_json` alone.

An exec'd plugin pays every import on every pod: ``import json`` costs
about as much as the plugin's own work (it pulls `re` and `enum`), while
the C scanner and encoder it wraps load in a fraction of a millisecond.
These two functions drive them the way `json.loads` / `json.dumps` do
with their defaults, so the text accepted and produced is the same; any
input the fast path does not accept is handed to `json.loads` itself, so
a decode error is exactly json's (a ValueError: the CNI "decode" error 6
upstream). The reference plugins use Go's encoding/json.
"""

import _json

_WS = " \t\n\r"  # json.decoder.WHITESPACE
_CONSTANTS = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}


class _Context:
    """What `_json.make_scanner` reads off a json.JSONDecoder (its defaults)."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = staticmethod(_CONSTANTS.__getitem__)


_scan = _json.make_scanner(_Context())


def _detect_encoding(b: bytes) -> str:
    """json.detect_encoding: the RFC's encodings, told apart by BOM or NUL bytes."""
    if b.startswith((b"\x00\x00\xfe\xff", b"\xff\xfe\x00\x00")):
        return "utf-32"
    if b.startswith((b"\xfe\xff", b"\xff\xfe")):
        return "utf-16"
    if b.startswith(b"\xef\xbb\xbf"):
        return "utf-8-sig"
    if len(b) >= 4:
        if not b[0]:
            return "utf-16-be" if b[1] else "utf-32-be"
        if not b[1]:
            return "utf-16-le" if b[2] or b[3] else "utf-32-le"
    elif len(b) == 2:
        if not b[0]:
            return "utf-16-be"
        if not b[1]:
            return "utf-16-le"
    return "utf-8"


def _slow(s: str | bytes | bytearray) -> object:
    """json.loads itself: for whatever the fast path refuses, so errors read as json's."""
    import json

    return json.loads(s)


def loads(s: str | bytes | bytearray) -> object:
    """json.loads(s) with the default decoder."""
    text: str
    if isinstance(s, str):
        if s.startswith("\ufeff"):
            return _slow(s)
        text = s
    elif isinstance(s, (bytes, bytearray)):
        text = s.decode(_detect_encoding(s), "surrogatepass")
    else:
        return _slow(s)  # json's TypeError
    idx = len(text) - len(text.lstrip(_WS))
    try:
        obj, end = _scan(text, idx)
    except Exception:
        # StopIteration ("Expecting value"), or a malformed document: the C
        # scanner builds its JSONDecodeError from json.decoder only if that
        # module is loaded already, and otherwise fails with a SystemError
        # (3.11). json.loads raises the real error.
        return _slow(s)
    if end != len(text) and text[end:].strip(_WS):
        return _slow(s)  # "Extra data"
    return obj


def _default(o: object) -> object:
    raise TypeError(f"Object of type {o.__class__.__name__} is not JSON serializable")


def dumps(obj: object) -> str:
    """json.dumps(obj) with the default encoder (ensure_ascii, ", " and ": ")."""
    if isinstance(obj, str):
        return _json.encode_basestring_ascii(obj)
    enc = _json.make_encoder({}, _default, _json.encode_basestring_ascii, None, ": ", ", ", False, False, True)
    return "".join(enc(obj, 0))
