"""The envelope in which a gateway hands its sidecar several infer calls in one request.

A gateway in front of a sidecar sends calls that meet (`aios.batching`) as one
``POST /aios/v1/batch``; the sidecar answers every call as if it had come alone (its own
record, checks and metrics) and returns the answers in order, in one reply. One request
and one reply cross the hop instead of one per call.

Request: ``{"calls": [{"path": "/v2/models/<m>/versions/<v>/infer", "headers": [[name,
value], ...], "request": <KServe v2 JSON infer request>}, ...]}``, the path and headers
being those the call would have carried alone (calls to different model versions share
an envelope; the sidecar groups them). Reply: ``{"replies": [{"status": 200, "body":
<JSON>}, ...]}``, or ``"base64"`` for a body that is not JSON.

The calls' JSON bodies are placed in the envelope as they are, not parsed again: the
gateway validated them as JSON already. A gRPC infer call travels as the JSON request it
stands for (`aios.grpcjson`), marked by ``x-aios-protocol: grpc`` among its headers.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from aios.errors import InvalidInput

BATCH_PATH = "/aios/v1/batch"
MAX_CALLS = 1024
JSON_TYPE = "application/json"

Call = tuple[str, list[tuple[str, str]], bytes]  # path, headers, JSON body
Answer = tuple[int, Mapping[str, str], bytes]  # status, headers, body


def encode_calls(calls: Sequence[Call]) -> bytes:
    """The envelope of ``calls``; every body must be one JSON document."""
    parts = [b'{"calls":[']
    for i, (path, headers, body) in enumerate(calls):
        if i:
            parts.append(b",")
        parts += [b'{"path":', orjson.dumps(path), b',"headers":', orjson.dumps(headers),
                  b',"request":', body, b"}"]
    parts.append(b"]}")
    return b"".join(parts)


def decode_calls(envelope: bytes) -> list[tuple[str, list[tuple[str, str]], Any]]:
    """The calls (path, headers, parsed request) of an envelope; InvalidInput naming what
    is wrong with it."""
    try:
        doc = orjson.loads(envelope)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"batch envelope is not valid JSON: {exc}") from exc
    calls = doc.get("calls") if isinstance(doc, dict) else None
    if not isinstance(calls, list) or not 0 < len(calls) <= MAX_CALLS:
        raise InvalidInput(f"batch envelope needs 1 to {MAX_CALLS} 'calls'")
    out = []
    for i, call in enumerate(calls):
        if not isinstance(call, dict) or not isinstance(call.get("path"), str):
            raise InvalidInput(f"calls[{i}]: 'path' must be a string")
        pairs = _header_pairs(call.get("headers"))
        if pairs is None:
            raise InvalidInput(f"calls[{i}]: 'headers' must be a list of [name, value]")
        out.append((call["path"], pairs, call.get("request")))
    return out


def _header_pairs(headers: Any) -> list[tuple[str, str]] | None:
    """``[[name, value], ...]`` as (lower-case name, value) pairs; None if malformed.
    A plain loop: this runs for every call of every envelope."""
    if type(headers) is not list:
        return None
    pairs = []
    for pair in headers:
        if type(pair) is not list or len(pair) != 2:
            return None
        name, value = pair
        if type(name) is not str or type(value) is not str:
            return None
        pairs.append((name.lower(), value))
    return pairs


def encode_answers(answers: Sequence[Answer]) -> bytes:
    """The reply to an envelope: every call's status and body, in order."""
    parts = [b'{"replies":[']
    for i, (status, headers, body) in enumerate(answers):
        if i:
            parts.append(b",")
        if headers.get("content-type", "").startswith(JSON_TYPE) and \
                "content-encoding" not in headers and body:
            parts += [b'{"status":', str(status).encode()]
            if len(headers) > 1:  # e.g. a review's marks: they travel with the answer
                parts += [b',"headers":', orjson.dumps(dict(headers))]
            parts += [b',"body":', body, b"}"]
        else:
            parts.append(orjson.dumps({"status": status, "headers": dict(headers),
                                       "base64": base64.b64encode(body).decode()}))
    parts.append(b"]}")
    return b"".join(parts)


def decode_answers(reply: bytes, count: int) -> list[Answer]:
    """Every call's status, headers and body from an envelope's reply; ValueError if it
    is not one answer per call."""
    replies = orjson.loads(reply)["replies"]
    if len(replies) != count:
        raise ValueError(f"{len(replies)} answers for {count} calls")
    out: list[Answer] = []
    for answer in replies:
        if "base64" in answer:
            out.append((int(answer["status"]), dict(answer["headers"]),
                        base64.b64decode(answer["base64"])))
        else:
            out.append((int(answer["status"]),
                        {"content-type": JSON_TYPE, **answer.get("headers", {})},
                        orjson.dumps(answer["body"])))
    return out
