"""cni.fastjson against the json module: same values, same text, same errors."""

import json
import subprocess
import sys

from hypothesis import given, settings
from hypothesis import strategies as st

from cni import fastjson

ROOT = __file__.rsplit("/tests/", 1)[0]

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text())
documents = st.recursive(scalars, lambda c: st.one_of(st.lists(c, max_size=4), st.dictionaries(st.text(), c, max_size=4)),
                         max_leaves=20)


def outcome(f, arg):
    try:
        return "ok", f(arg)
    except Exception as e:  # the type and message must match json's
        return type(e).__name__, str(e)


@settings(max_examples=400)
@given(documents)
def test_round_trip_text_is_jsons(doc):
    assert fastjson.dumps(doc) == json.dumps(doc)
    assert fastjson.loads(json.dumps(doc)) == doc
    assert fastjson.loads(json.dumps(doc).encode()) == doc


@settings(max_examples=400)
@given(st.one_of(st.binary(max_size=40), st.text(max_size=40),
                 documents.map(lambda d: json.dumps(d)[: len(json.dumps(d)) // 2])))
def test_any_input_decodes_or_fails_as_json_does(raw):
    assert repr(outcome(fastjson.loads, raw)) == repr(outcome(json.loads, raw))  # repr: NaN != NaN


def test_edge_cases():
    for raw in [b"  {}  \n", b"[1e400, NaN, -Infinity]", b"\xef\xbb\xbf{}", "\ufeff{}", b'"\\ud800"', b"1 2", b"",
                b"{", b'{"a":"\x01"}', '{"a": 1}'.encode("utf-16"), '{"a": 1}'.encode("utf-32-le")]:
        a, b = outcome(fastjson.loads, raw), outcome(json.loads, raw)
        assert repr(a) == repr(b), raw  # repr: NaN != NaN
    assert outcome(fastjson.dumps, {(1,): 2}) == outcome(json.dumps, {(1,): 2})
    assert outcome(fastjson.dumps, object())[0] == "TypeError"
    assert fastjson.dumps(float("nan")) == "NaN" and fastjson.dumps("é") == '"\\u00e9"'


def test_errors_in_a_bare_interpreter_are_jsons():
    """As an exec'd plugin runs it (-I -S, json not loaded): the C scanner alone fails with a
    SystemError on malformed input there (3.11), so fastjson must hand the input to json."""
    code = ("import sys; sys.path.insert(0, %r)\nfrom cni import fastjson\n"
            "assert 'json' not in sys.modules\n"
            "try:\n    fastjson.loads(b'{not json')\nexcept ValueError as e:\n    print(type(e).__name__, e)\n") % ROOT
    p = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True)
    assert p.stdout.strip() == "JSONDecodeError Expecting property name enclosed in double quotes: line 1 column 2 (char 1)", p.stderr
