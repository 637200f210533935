"""The Open Inference Protocol's binary tensor data extension (KServe, Triton), both ways.

A request may carry tensors as raw bytes after its JSON: the ``Inference-Header-Content-Length``
header gives the JSON part's length, and each such input says how many of the following bytes
are its own with ``"parameters": {"binary_data_size": N}`` instead of ``data``. BYTES elements
are each a 4-byte little-endian length then the bytes; numeric types are raw little-endian.
An answer is binary for each output whose request asks ``"parameters": {"binary_data": true}``,
or for all outputs with the request parameter ``binary_data_output``: then its body is the JSON
(that output with ``binary_data_size`` and no ``data``) followed by the raw bytes, and the same
header gives the JSON's length. This is what ``tritonclient`` sends and expects by default.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np

from batchpilot_runtime.api import ApiError, InferRequest

HEADER = "Inference-Header-Content-Length"
MEDIA_TYPE = "application/octet-stream"

_NUMERIC = {
    "BOOL": "?",
    "UINT8": "u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "INT8": "i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
}


def split_body(body: bytes, header: str | None) -> tuple[bytes, bytes]:
    """The JSON part and the binary part of a request body (all JSON without the header)."""
    if header is None:
        return body, b""
    value = header.strip()
    if not value.isdigit() or int(value) > len(body):
        raise ApiError(
            422,
            f"{HEADER}: {header!r}; expected the JSON part's length, at most the body's "
            f"{len(body)} bytes",
            param=HEADER,
        )
    return body[: int(value)], body[int(value) :]


def attach_inputs(req: InferRequest, binary: bytes, *, raw_bytes: bool = False) -> None:
    """Give each input with ``binary_data_size`` its data, decoded from ``binary`` in order.

    BYTES elements are text (UTF-8), or with ``raw_bytes`` kept as bytes (encoded images).
    """
    offset = 0
    for i, tensor in enumerate(req.inputs):
        size = (tensor.parameters or {}).get("binary_data_size")
        if size is None:
            if tensor.data is None:
                raise ApiError(
                    422,
                    f"inputs.{i}.data: Field required (or parameters.binary_data_size, with "
                    "the raw tensor after the JSON)",
                    param=f"inputs.{i}.data",
                )
            continue
        where = f"inputs[{i}].parameters.binary_data_size"
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ApiError(422, f"{where}: expected a byte count, got {size!r}", param=where)
        if tensor.data is not None:
            raise ApiError(422, f"inputs[{i}]: both data and binary_data_size", param=where)
        chunk = binary[offset : offset + size]
        if len(chunk) < size:
            raise ApiError(
                422,
                f"{where}: {size} bytes, but only {len(chunk)} remain after the JSON",
                param=where,
            )
        offset += size
        tensor.data = decode(tensor.datatype, chunk, f"inputs[{i}]", raw_bytes=raw_bytes)
    if offset != len(binary):
        raise ApiError(
            422,
            f"body: {len(binary) - offset} bytes after the JSON belong to no input's "
            "binary_data_size",
            param="body",
        )


def decode(datatype: str, raw: bytes, where: str, *, raw_bytes: bool = False) -> list[Any]:
    """The elements of one tensor's raw bytes."""
    kind = datatype.upper()
    if kind == "BYTES":
        return _decode_bytes(raw, where, raw_bytes)
    if kind not in _NUMERIC:
        raise ApiError(
            422, f"{where}.datatype: {datatype} has no binary form here", param=f"{where}.datatype"
        )
    dtype = np.dtype(_NUMERIC[kind])
    if len(raw) % dtype.itemsize:
        raise ApiError(
            422,
            f"{where}: {len(raw)} bytes is not a whole number of {kind} elements",
            param=where,
        )
    return list(np.frombuffer(raw, dtype).tolist())


def _decode_bytes(raw: bytes, where: str, keep_bytes: bool = False) -> list[Any]:
    elements: list[Any] = []
    offset = 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise ApiError(422, f"{where}: a BYTES element's length is cut short", param=where)
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise ApiError(
                422,
                f"{where}: BYTES element {len(elements)} is {length} bytes, past the data",
                param=where,
            )
        value = raw[offset : offset + length]
        offset += length
        if keep_bytes:
            elements.append(value)
            continue
        try:
            elements.append(value.decode("utf-8"))
        except UnicodeDecodeError:
            raise ApiError(
                422, f"{where}: BYTES element {len(elements)} is not UTF-8 text", param=where
            ) from None
    return elements


def encode(datatype: str, data: list[Any]) -> bytes:
    """One output tensor's elements as raw bytes."""
    if datatype == "BYTES":
        parts = []
        for value in data:
            text = str(value).encode("utf-8")
            parts.append(struct.pack("<I", len(text)) + text)
        return b"".join(parts)
    return np.asarray(data, dtype=_NUMERIC[datatype]).tobytes()


def select_outputs(req: InferRequest, names: list[str]) -> None:
    """Refuse a requested output this model does not give (before any work is done)."""
    for i, output in enumerate(req.outputs or []):
        if output.name not in names:
            raise ApiError(
                422,
                f"outputs[{i}].name: {output.name!r}; this model gives {', '.join(names)}",
                param=f"outputs.{i}.name",
            )


def render(req: InferRequest, body: dict[str, Any]) -> tuple[bytes, dict[str, str], str]:
    """The answer's bytes, headers and media type: only the outputs asked for, if any were,
    and in binary where asked."""
    default = (req.parameters or {}).get("binary_data_output") is True
    wanted: dict[str, bool] | None = None
    if req.outputs:
        wanted = {
            o.name: bool((o.parameters or {}).get("binary_data", default)) for o in req.outputs
        }
    outputs = []
    raw_parts: list[bytes] = []
    for tensor in body["outputs"]:
        if wanted is not None and tensor["name"] not in wanted:
            continue
        binary = default if wanted is None else wanted[tensor["name"]]
        if binary:
            raw = encode(tensor["datatype"], tensor["data"])
            tensor = {k: v for k, v in tensor.items() if k != "data"}
            tensor["parameters"] = {"binary_data_size": len(raw)}
            raw_parts.append(raw)
        outputs.append(tensor)
    header = json.dumps({**body, "outputs": outputs}, separators=(",", ":")).encode()
    if not raw_parts:
        return header, {}, "application/json"
    return header + b"".join(raw_parts), {HEADER: str(len(header))}, MEDIA_TYPE
