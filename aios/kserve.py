"""The parts of the KServe v2 / Open Inference Protocol that a proxy needs, and no more.

A proxy forwards bytes; it must not decode tensors it only passes on. What it needs is
the model name and version: from the URL on REST, and from the first fields of the
protobuf message on gRPC, which `peek_model` reads without parsing the tensors.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from aios.errors import InvalidInput

# Field numbers shared by ModelInferRequest, ModelMetadataRequest, ModelReadyRequest,
# ModelConfigRequest and ModelStatisticsRequest: 1 = name, 2 = version.
_NAME_FIELD = 1
_VERSION_FIELD = 2
_PARAMETERS_FIELD = 4  # ModelInferRequest.parameters (map entries: 1 = key)
_INPUTS_FIELD = 5  # ModelInferRequest.inputs
_SHAPE_FIELD = 3  # InferInputTensor.shape (packed int64)
_WIRE_VARINT, _WIRE_I64, _WIRE_LEN, _WIRE_I32 = 0, 1, 2, 5

# Bytes per element of each KServe v2 datatype; BYTES is variable-length.
DATATYPE_SIZES: dict[str, int] = {
    "BOOL": 1, "UINT8": 1, "UINT16": 2, "UINT32": 4, "UINT64": 8,
    "INT8": 1, "INT16": 2, "INT32": 4, "INT64": 8,
    "FP16": 2, "BF16": 2, "FP32": 4, "FP64": 8, "BYTES": 0,
}
MAX_DIMS = 16
MAX_ELEMENTS = 1 << 40
# Triton's scheduling parameters: a priority level and a queue timeout in microseconds,
# allowed within the caller's policy (the gateway clamps them, `gateway.scheduling`).
SCHEDULING_PARAMETERS = ("priority", "timeout")


def check_parameters(names: Iterable[str]) -> None:
    """InvalidInput if a client sets a reserved parameter (Triton's own ``triton_*``, and
    ``aios.*``, which one of our hops gives the next on a stream)."""
    for name in names:
        if name.startswith(("triton_", "aios.")):
            raise InvalidInput(f"parameter '{name}' is reserved and cannot be set by clients")


def check_scheduling(name: str, value: Any) -> int:
    """A scheduling parameter's value: a non-negative integer, else InvalidInput."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        what = "a priority level (1 is the most urgent, 0 the model's default)" \
            if name == "priority" else "a queue timeout in microseconds"
        raise InvalidInput(f"parameter '{name}' must be a non-negative integer, {what}; "
                           f"got {value!r}")
    return value


def error_text(body: bytes) -> str:
    """The message of a KServe error body (the body itself if it is not one)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body.decode("utf-8", "replace")
    return str(doc["error"]) if isinstance(doc, dict) and "error" in doc else \
        body.decode("utf-8", "replace")


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise InvalidInput("malformed protobuf: truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise InvalidInput("malformed protobuf: varint too long")


def _fields(message: bytes) -> Iterator[tuple[int, int, int, int]]:
    """Yield (field, wire type, start, end) of each top-level field, checking the framing.

    For length-delimited fields start:end is the payload; for varints it is the encoding.
    """
    pos, end = 0, len(message)
    while pos < end:
        key, pos = _varint(message, pos)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise InvalidInput("malformed protobuf: field number 0")
        start = pos
        if wire == _WIRE_LEN:
            length, start = _varint(message, pos)
            pos = start + length
            if pos > end:
                raise InvalidInput("malformed protobuf: field longer than the message")
        elif wire == _WIRE_VARINT:
            _, pos = _varint(message, pos)
        elif wire == _WIRE_I64:
            pos += 8
        elif wire == _WIRE_I32:
            pos += 4
        else:
            raise InvalidInput(f"malformed protobuf: unsupported wire type {wire}")
        if pos > end:
            raise InvalidInput("malformed protobuf: truncated field")
        yield field, wire, start, pos


def peek_model(message: bytes) -> tuple[str, str]:
    """Return (name, version) from a serialized KServe model request, skipping the rest.

    Walks the top-level fields only; length-delimited fields (tensors, raw contents) are
    skipped by their length, never decoded. Raises InvalidInput for malformed framing.
    """
    found = {_NAME_FIELD: "", _VERSION_FIELD: ""}
    for field, wire, start, end in _fields(message):
        if field in found and wire == _WIRE_LEN:
            try:
                found[field] = message[start:end].decode()
            except UnicodeDecodeError as exc:
                raise InvalidInput("malformed protobuf: model name is not UTF-8") from exc
    return found[_NAME_FIELD], found[_VERSION_FIELD]


def peek_parameters(message: bytes) -> list[str]:
    """The names of a ModelInferRequest's request-level parameters."""
    names = []
    for field, wire, start, end in _fields(message):
        if field == _PARAMETERS_FIELD and wire == _WIRE_LEN:
            entry = message[start:end]
            for sub, sub_wire, s_start, s_end in _fields(entry):
                if sub == 1 and sub_wire == _WIRE_LEN:
                    names.append(entry[s_start:s_end].decode("utf-8", "replace"))
    return names


def peek_batch(message: bytes) -> int:
    """The batch size of a ModelInferRequest: the first dim of its first input (else 1)."""
    for field, wire, start, end in _fields(message):
        if field == _INPUTS_FIELD and wire == _WIRE_LEN:
            tensor = message[start:end]
            for sub, sub_wire, s_start, s_end in _fields(tensor):
                if sub == _SHAPE_FIELD:
                    if sub_wire == _WIRE_LEN and s_end > s_start:
                        return max(_varint(tensor, s_start)[0], 1)
                    if sub_wire == _WIRE_VARINT:
                        return max(_varint(tensor, s_start)[0], 1)
            return 1
    return 1


def with_model(message: bytes, name: str | None = None, version: str | None = None) -> bytes:
    """Return ``message`` with its model name (field 1) and/or version (field 2) replaced.

    Protobuf keeps the last value of a scalar field, so appending the fields overrides
    earlier ones without re-encoding the tensors.
    """
    out = [message]
    for field, value in ((_NAME_FIELD, name), (_VERSION_FIELD, version)):
        if value is not None:
            data = value.encode()
            out += [bytes((field << 3 | _WIRE_LEN,)), _encode_varint(len(data)), data]
    return b"".join(out)


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def json_header_length(header_value: str | None, body_length: int) -> int:
    """Length of the JSON part of a REST infer body (binary tensor extension aware)."""
    if header_value is None:
        return body_length
    if not (header_value.isascii() and header_value.isdigit()):
        raise InvalidInput("Inference-Header-Content-Length must be a non-negative integer")
    length = int(header_value)
    if length > body_length:
        raise InvalidInput(f"Inference-Header-Content-Length {length} exceeds the body "
                           f"of {body_length} bytes")
    return length


_NUMBER = frozenset({int, float})
_INTEGER = frozenset({int})
# The JSON types a datatype's `data` may hold (bool is not a number here: Triton refuses
# it for numeric inputs, as it refuses numbers for BOOL).
JSON_TYPES: dict[str, frozenset[type]] = {
    "BOOL": frozenset({bool}), "BYTES": frozenset({str}),
    **{t: _NUMBER for t in ("FP16", "BF16", "FP32", "FP64")},
    **{t: _INTEGER for t in ("UINT8", "UINT16", "UINT32", "UINT64",
                             "INT8", "INT16", "INT32", "INT64")},
}
INTEGER_RANGES: dict[str, tuple[int, int]] = {
    **{f"UINT{b}": (0, (1 << b) - 1) for b in (8, 16, 32, 64)},
    **{f"INT{b}": (-(1 << (b - 1)), (1 << (b - 1)) - 1) for b in (8, 16, 32, 64)},
}
_JSON_NAMES = {bool: "booleans", str: "strings", int: "integers", float: "numbers"}


def _describe_types(allowed: frozenset[type]) -> str:
    return "numbers" if allowed == _NUMBER else _JSON_NAMES[next(iter(allowed))]


def _check_values(values: list[Any], types: set[type], datatype: str, where: str,
                  shape: list[int]) -> int:
    """InvalidInput naming the first value of a flat list (holding ``types``) that
    ``datatype`` cannot hold; else how many there are. Checked by the types and extremes
    the list holds, without a call per value."""
    allowed = JSON_TYPES[datatype]
    if not types <= allowed:
        bad = next(v for v in values if type(v) not in allowed)
        if isinstance(bad, list):
            raise InvalidInput(f"{where}: nested 'data' does not have the shape {shape}")
        shown = repr(bad) if len(repr(bad)) <= 40 else repr(bad)[:37] + "..."
        raise InvalidInput(f"{where}: {datatype} 'data' must hold "
                           f"{_describe_types(allowed)}, got {shown}")
    bounds = INTEGER_RANGES.get(datatype)
    if bounds is not None and values and (min(values) < bounds[0] or max(values) > bounds[1]):
        bad = next(v for v in values if not bounds[0] <= v <= bounds[1])
        raise InvalidInput(f"{where}: {bad} is out of range for {datatype} "
                           f"[{bounds[0]}, {bounds[1]}]")
    return len(values)


def _count(data: Any, datatype: str, where: str, shape: list[int], depth: int = 0) -> int:
    """How many values ``data`` holds, each checked against ``datatype``. `data` is flat
    (the usual shape), or nested exactly as ``shape`` says (what Triton accepts), so the
    recursion is as deep as the shape's dimensions at most."""
    values = data if isinstance(data, list) else [data]
    types = set(map(type, values))
    if depth == 0 and list not in types:
        return _check_values(values, types, datatype, where, shape)
    if depth >= len(shape) or len(values) != shape[depth]:
        raise InvalidInput(f"{where}: nested 'data' does not have the shape {shape}")
    if depth == len(shape) - 1:
        return _check_values(values, types, datatype, where, shape)
    if not all(isinstance(item, list) for item in values):
        raise InvalidInput(f"{where}: nested 'data' does not have the shape {shape}")
    return sum(_count(item, datatype, where, shape, depth + 1) for item in values)


def _element_count(shape: Any, where: str) -> int:
    if not isinstance(shape, list) or len(shape) > MAX_DIMS:
        raise InvalidInput(f"{where}: 'shape' must be a list of at most {MAX_DIMS} dimensions")
    for dim in shape:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 0:
            raise InvalidInput(f"{where}: 'shape' must hold non-negative integers, got {dim!r}")
    count = math.prod(shape)
    if count > MAX_ELEMENTS:
        raise InvalidInput(f"{where}: 'shape' {shape} is too large")
    return count


@dataclass(frozen=True, slots=True)
class InferHeader:
    """The validated JSON header of a REST infer request, parsed once for every later use."""

    doc: dict[str, Any]
    length: int  # bytes of JSON before any binary tensor data
    batch: int  # the first dim of the first input (1 for a scalar)


def validate_infer_request(body: bytes, header_length: int) -> InferHeader:
    """Check a REST infer body is a well-formed KServe v2 request; return its parsed header.

    Parses only the JSON header; binary tensor data is checked by its declared sizes,
    never decoded. Raises InvalidInput naming what is wrong.
    """
    try:
        doc = orjson.loads(body[:header_length])
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"request body is not valid JSON: {exc}") from exc
    return check_infer_doc(doc, header_length, len(body) - header_length)


def check_infer_doc(doc: Any, header_length: int, binary_length: int = 0) -> InferHeader:
    """Check a parsed REST infer request (with ``binary_length`` bytes of tensor data
    after its ``header_length`` bytes of JSON); return its header. InvalidInput names
    what is wrong."""
    if not isinstance(doc, dict):
        raise InvalidInput("request body must be a JSON object")
    parameters = doc.get("parameters", {})
    if not isinstance(parameters, dict):
        raise InvalidInput("'parameters' must be an object")
    check_parameters(parameters)
    for asked in SCHEDULING_PARAMETERS:
        if asked in parameters:
            check_scheduling(asked, parameters[asked])
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput("'inputs' must be a non-empty list")
    binary_total = 0
    batch = 1
    for i, tensor in enumerate(inputs):
        where = f"inputs[{i}]"
        if not isinstance(tensor, dict):
            raise InvalidInput(f"{where} must be an object")
        name = tensor.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidInput(f"{where}: 'name' must be a non-empty string")
        where = f"input '{name}'"
        datatype = tensor.get("datatype")
        if datatype not in DATATYPE_SIZES:
            raise InvalidInput(f"{where}: unknown datatype {datatype!r}")
        count = _element_count(tensor.get("shape"), where)
        if i == 0:
            batch = max(tensor["shape"][0], 1) if tensor["shape"] else 1
        params = tensor.get("parameters", {})
        if not isinstance(params, dict):
            raise InvalidInput(f"{where}: 'parameters' must be an object")
        size = params.get("binary_data_size")
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise InvalidInput(f"{where}: 'binary_data_size' must be a non-negative integer")
            itemsize = DATATYPE_SIZES[datatype]
            if itemsize and size != count * itemsize:
                raise InvalidInput(f"{where}: binary_data_size {size} does not match shape "
                                   f"{tensor['shape']} of {datatype} ({count * itemsize} bytes)")
            binary_total += size
        elif "data" not in tensor:
            raise InvalidInput(f"{where}: has neither 'data' nor 'binary_data_size'")
        elif _count(tensor["data"], datatype, where, tensor["shape"]) != count:
            # Triton's own words (it answers them with a 500; a client's mistake is 400).
            raise InvalidInput("Unable to parse 'data': Shape does not match true shape of "
                               "'data' field")
    if binary_total != binary_length:
        raise InvalidInput(f"binary tensor data is {binary_length} bytes, "
                           f"the inputs declare {binary_total}")
    outputs = doc.get("outputs", [])
    if not isinstance(outputs, list) or not all(
            isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs):
        raise InvalidInput("'outputs' must be a list of objects with a 'name'")
    return InferHeader(doc, header_length, batch)


def with_json_parameters(body: bytes, header: InferHeader,
                         values: dict[str, int]) -> tuple[bytes, int]:
    """A REST infer body with request parameters set to ``values`` (its binary tensor data
    kept as it is), and its new JSON header length."""
    doc = {**header.doc, "parameters": {**header.doc.get("parameters", {}), **values}}
    head = orjson.dumps(doc)
    return head + body[header.length:], len(head)


def grpc_scheduling(parameters: Any) -> dict[str, int]:
    """The scheduling parameters (``SCHEDULING_PARAMETERS``) set in a ModelInferRequest's
    ``parameters`` map; InvalidInput for one that is not a non-negative integer."""
    out = {}
    for name in SCHEDULING_PARAMETERS:
        if name in parameters:
            parameter = parameters[name]
            kind = parameter.WhichOneof("parameter_choice")
            out[name] = check_scheduling(name, getattr(parameter, kind) if kind else None)
    return out


def with_grpc_parameters(message: bytes, values: dict[str, int]) -> bytes:
    """A ModelInferRequest with request parameters set to ``values`` (each kept in the
    integer kind the client used)."""
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest.FromString(message)
    set_grpc_parameters(request, values)
    return bytes(request.SerializeToString())


def set_grpc_parameters(request: Any, values: dict[str, int]) -> None:
    """Set a parsed ModelInferRequest's parameters to ``values`` (each kept in the integer
    kind the client used)."""
    for name, value in values.items():
        parameter = request.parameters[name]
        kind = parameter.WhichOneof("parameter_choice") or "int64_param"
        setattr(parameter, kind if kind in ("int64_param", "uint64_param") else "int64_param",
                value)
