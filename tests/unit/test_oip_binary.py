"""The Open Inference Protocol's binary tensor data extension, on the wire format by hand."""

from __future__ import annotations

import json
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fakeruntime import FakeModel, serve, settings, until_ready

from batchpilot_runtime import oip_binary

HEADER = "Inference-Header-Content-Length"


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(settings(tmp_path), lambda: [FakeModel()]) as (client, runtime):
        await until_ready(runtime)
        yield client


def strings(*texts: str) -> bytes:
    return b"".join(struct.pack("<I", len(t.encode())) + t.encode() for t in texts)


def binary_request(
    raw: bytes, *, size: int | None = None, **request: Any
) -> tuple[bytes, dict[str, str]]:
    tensor = {"name": "text", "shape": [2], "datatype": "BYTES"}
    tensor["parameters"] = {"binary_data_size": len(raw) if size is None else size}
    header = json.dumps({"inputs": [tensor], **request}).encode()
    return header + raw, {HEADER: str(len(header))}


def split(response: httpx.Response) -> tuple[dict[str, Any], bytes]:
    length = int(response.headers[HEADER])
    return json.loads(response.content[:length]), response.content[length:]


async def test_binary_inputs_are_decoded_and_json_answers_by_default(
    client: httpx.AsyncClient,
) -> None:
    body, headers = binary_request(strings("one two", "three"))
    response = await client.post("/v2/models/fake/infer", content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert HEADER not in response.headers
    (embedding,) = response.json()["outputs"]
    assert embedding["data"] == [7, 2, 0, 0, 5, 1, 0, 0]


@pytest.mark.parametrize(
    "request_fields",
    [
        {"parameters": {"binary_data_output": True}},
        {"outputs": [{"name": "embedding", "parameters": {"binary_data": True}}]},
    ],
    ids=["all-outputs", "one-output"],
)
async def test_binary_outputs_follow_the_json_header(
    client: httpx.AsyncClient, request_fields: dict[str, Any]
) -> None:
    body, headers = binary_request(strings("one two", "three"), **request_fields)
    response = await client.post("/v2/models/fake/infer", content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    header, raw = split(response)
    (embedding,) = header["outputs"]
    assert "data" not in embedding
    assert embedding["parameters"] == {"binary_data_size": len(raw)} == {"binary_data_size": 32}
    assert embedding["shape"] == [2, 4]
    assert np.frombuffer(raw, "<f4").tolist() == [7, 2, 0, 0, 5, 1, 0, 0]


async def test_an_output_may_opt_out_of_binary(client: httpx.AsyncClient) -> None:
    body, headers = binary_request(
        strings("a", "b"),
        parameters={"binary_data_output": True},
        outputs=[{"name": "embedding", "parameters": {"binary_data": False}}],
    )
    response = await client.post("/v2/models/fake/infer", content=body, headers=headers)
    assert response.status_code == 200
    assert HEADER not in response.headers
    assert response.json()["outputs"][0]["data"] == [1, 1, 0, 0, 1, 1, 0, 0]


def test_bytes_and_scores_encode_as_the_protocol_says() -> None:
    assert oip_binary.encode("BYTES", ["ab", "é"]) == b"\x02\x00\x00\x00ab\x02\x00\x00\x00\xc3\xa9"
    assert oip_binary.encode("FP32", [1.0, 0.5]) == struct.pack("<2f", 1.0, 0.5)
    assert oip_binary.decode("FP32", struct.pack("<2f", 1.0, 0.5), "x") == [1.0, 0.5]
    assert oip_binary.decode("BYTES", strings("ab", ""), "x") == ["ab", ""]


@pytest.mark.parametrize(
    ("raw", "size", "header", "field", "says"),
    [
        (strings("a", "b"), 99, None, "inputs[0].parameters.binary_data_size", "only 10 remain"),
        (strings("a", "b") + b"xx", 10, None, "body", "2 bytes after the JSON"),
        (b"\x05\x00\x00\x00ab", None, None, "inputs[0]", "past the data"),
        (b"\x02\x00", None, None, "inputs[0]", "cut short"),
        (b"\x01\x00\x00\x00\xff\x01\x00\x00\x00b", None, None, "inputs[0]", "not UTF-8"),
        (strings("a", "b"), None, "many", HEADER, "the JSON part's length"),
        (strings("a", "b"), None, "100000", HEADER, "the JSON part's length"),
    ],
)
async def test_malformed_binary_requests_are_422_naming_the_problem(
    client: httpx.AsyncClient,
    raw: bytes,
    size: int | None,
    header: str | None,
    field: str,
    says: str,
) -> None:
    body, headers = binary_request(raw, size=size)
    if header is not None:
        headers[HEADER] = header
    response = await client.post("/v2/models/fake/infer", content=body, headers=headers)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["message"].startswith(f"{field}:")
    assert says in error["message"]


async def test_an_unknown_requested_output_is_refused_before_any_work(
    tmp_path: Path,
) -> None:
    model = FakeModel()
    async with serve(settings(tmp_path), lambda: [model]) as (client, runtime):
        await until_ready(runtime)
        body, headers = binary_request(strings("a", "b"), outputs=[{"name": "logits"}])
        response = await client.post("/v2/models/fake/infer", content=body, headers=headers)
        assert response.status_code == 422
        assert response.json()["error"]["param"] == "outputs.0.name"
        assert model.batches == []
        assert runtime.requests["invalid"] == 1


async def test_the_server_metadata_names_the_extension(client: httpx.AsyncClient) -> None:
    assert "binary_tensor_data" in (await client.get("/v2")).json()["extensions"]
