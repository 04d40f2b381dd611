"""`aios.envelope`: the gateway's envelope of calls and the sidecar's answers. Pure."""

from __future__ import annotations

import gzip
import json

import orjson
import pytest

from aios.envelope import MAX_CALLS, decode_answers, decode_calls, encode_answers, encode_calls
from aios.errors import InvalidInput

PATH = "/v2/models/m/versions/2/infer"


def test_calls_keep_their_headers_and_requests_in_order() -> None:
    one = b'{"id": "a", "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.5]}]}'
    two = b'{"inputs":[{"name":"x","datatype":"FP32","shape":[2],"data":[2,3]}]}'
    other = "/v2/models/m/versions/1/infer"
    envelope = encode_calls([(PATH, [("x-aios-tenant", "t1"), ("X-Request-Id", "r1")], one),
                             (other, [("x-aios-tenant", "t2")], two)])
    calls = decode_calls(envelope)
    assert calls == [(PATH, [("x-aios-tenant", "t1"), ("x-request-id", "r1")], json.loads(one)),
                     (other, [("x-aios-tenant", "t2")], json.loads(two))]


@pytest.mark.parametrize("envelope, message", [
    (b"{", "batch envelope is not valid JSON"),
    (b"[]", f"batch envelope needs 1 to {MAX_CALLS} 'calls'"),
    (b'{"path": "/p"}', f"batch envelope needs 1 to {MAX_CALLS} 'calls'"),
    (b'{"calls": []}', f"batch envelope needs 1 to {MAX_CALLS} 'calls'"),
    (orjson.dumps({"calls": [{"path": "/p", "headers": [], "request": {}}] * (MAX_CALLS + 1)}),
     f"batch envelope needs 1 to {MAX_CALLS} 'calls'"),
    (b'{"calls": [3]}', "calls[0]: 'path' must be a string"),
    (b'{"calls": [{"headers": [], "request": {}}]}', "calls[0]: 'path' must be a string"),
    (b'{"calls": [{"path": 1, "headers": [], "request": {}}]}',
     "calls[0]: 'path' must be a string"),
    (b'{"calls": [{"path": "/p", "headers": [["a"]]}]}',
     "calls[0]: 'headers' must be a list of [name, value]"),
    (b'{"calls": [{"path": "/p", "headers": [], "request": {}}, '
     b'{"path": "/p", "headers": [["a", 1]]}]}',
     "calls[1]: 'headers' must be a list of [name, value]"),
    (b'{"calls": [{"path": "/p", "headers": {"a": "b"}}]}',
     "calls[0]: 'headers' must be a list of [name, value]"),
    (b'{"calls": [{"path": "/p"}]}', "calls[0]: 'headers' must be a list of [name, value]"),
    (b'{"calls": [{"path": "/p", "headers": ["ab"]}]}',
     "calls[0]: 'headers' must be a list of [name, value]"),
    (b'{"calls": [{"path": "/p", "headers": [["a", "b", "c"]]}]}',
     "calls[0]: 'headers' must be a list of [name, value]"),
    (b'{"calls": [{"path": "/p", "headers": [[null, "b"]]}]}',
     "calls[0]: 'headers' must be a list of [name, value]"),
], ids=["not json", "not an object", "no calls", "empty calls", "too many calls",
        "call not an object", "no path", "path not a string", "header pair short",
        "header value not text", "headers an object", "no headers", "pair not a list",
        "pair too long", "header name not text"])
def test_a_bad_envelope_is_refused_naming_what_is_wrong(envelope: bytes, message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        decode_calls(envelope)
    assert caught.value.message.startswith(message)


def test_answers_come_back_in_order_json_as_is_and_other_bodies_intact() -> None:
    packed = gzip.compress(b'{"outputs": []}')
    answers = [
        (200, {"content-type": "application/json"}, b'{"model_name": "m", "outputs": []}'),
        (400, {"content-type": "application/json"}, b'{"error": "bad"}'),
        (200, {"content-type": "application/json", "content-encoding": "gzip"}, packed),
        (503, {"content-type": "text/plain"}, b"busy"),
    ]
    back = decode_answers(encode_answers(answers), 4)
    assert [(s, json.loads(b)) for s, _, b in back[:2]] == [
        (200, {"model_name": "m", "outputs": []}), (400, {"error": "bad"})]
    assert back[2] == (200, {"content-type": "application/json", "content-encoding": "gzip"},
                       packed)
    assert back[3] == (503, {"content-type": "text/plain"}, b"busy")


def test_answers_that_do_not_match_the_calls_are_refused() -> None:
    reply = encode_answers([(200, {"content-type": "application/json"}, b"{}")])
    with pytest.raises(ValueError, match="1 answers for 2 calls"):
        decode_answers(reply, 2)
