"""``/openapi.json`` describes the real request bodies and error answers, and the interactive
docs (which load scripts from a CDN) are off unless asked for."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fakeruntime import FakeModel, serve, settings, until_ready

from batchpilot_runtime.api import ErrorResponse


@pytest.fixture
async def schema(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    async with serve(settings(tmp_path), lambda: [FakeModel()]) as (client, _):
        response = await client.get("/openapi.json")
        assert response.status_code == 200
        yield response.json()


def resolve(document: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """``node``, or what its ``$ref`` points to (which must exist)."""
    while "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/"), ref
        target: Any = document
        for part in ref[2:].split("/"):
            target = target[part]
        node = target
    return node


def every_ref(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if "$ref" in node else []
        return found + [r for v in node.values() for r in every_ref(v)]
    if isinstance(node, list):
        return [r for v in node for r in every_ref(v)]
    return []


@pytest.mark.parametrize(
    ("path", "required", "fields"),
    [
        ("/v1/embeddings", ["input"], {"input", "model", "encoding_format", "dimensions"}),
        ("/v1/classify", ["input"], {"input", "model", "top_k"}),
        ("/v2/models/{name}/infer", ["inputs"], {"id", "inputs", "parameters"}),
    ],
)
def test_each_inference_route_describes_its_json_body(
    schema: dict[str, Any], path: str, required: list[str], fields: set[str]
) -> None:
    body = schema["paths"][path]["post"]["requestBody"]
    assert body["required"] is True
    described = resolve(schema, body["content"]["application/json"]["schema"])
    assert described["type"] == "object"
    assert described["required"] == required
    assert fields <= set(described["properties"])


def test_the_oip_tensor_schema_is_complete(schema: dict[str, Any]) -> None:
    infer = resolve(schema, {"$ref": "#/components/schemas/InferRequest"})
    tensor = resolve(schema, infer["properties"]["inputs"]["items"])
    assert set(tensor["required"]) == {"name", "shape", "datatype"}  # or binary data
    assert "data" in tensor["properties"]


def test_error_answers_are_described_with_the_error_body(schema: dict[str, Any]) -> None:
    responses = schema["paths"]["/v1/embeddings"]["post"]["responses"]
    assert {"408", "413", "422", "429", "503", "504"} <= set(responses)
    error = resolve(schema, responses["429"]["content"]["application/json"]["schema"])
    assert error == resolve(schema, {"$ref": "#/components/schemas/ErrorResponse"})
    detail = resolve(schema, error["properties"]["error"])
    assert set(detail["required"]) == {"message", "type", "param", "code"}
    # Not FastAPI's own validation error: this app answers 422 with the error body too.
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    assert "404" in schema["paths"]["/v2/models/{name}"]["get"]["responses"]


def test_every_reference_in_the_schema_resolves(schema: dict[str, Any]) -> None:
    refs = every_ref(schema)
    assert refs
    for ref in refs:
        resolve(schema, {"$ref": ref})


async def test_error_bodies_match_the_described_schema(tmp_path: Path) -> None:
    async with serve(settings(tmp_path), lambda: [FakeModel()]) as (client, runtime):
        await until_ready(runtime)
        response = await client.post("/v1/embeddings", content=b"{")
    assert response.status_code == 422
    ErrorResponse.model_validate(response.json())


async def test_interactive_docs_are_off_by_default_and_on_when_asked(tmp_path: Path) -> None:
    async def statuses(**overrides: Any) -> list[int]:
        async with serve(settings(tmp_path, **overrides), lambda: [FakeModel()]) as (client, _):
            paths = ("/docs", "/redoc", "/openapi.json")
            return [(await client.get(p)).status_code for p in paths]

    assert await statuses() == [404, 404, 200]
    assert await statuses(docs=True) == [200, 200, 200]


async def test_bodies_are_still_parsed_from_raw_bytes(tmp_path: Path) -> None:
    # The schema is description only: a body FastAPI would coerce ("2" for an int) is refused.
    async with serve(settings(tmp_path), lambda: [FakeModel()]) as (client, runtime):
        await client.get("/openapi.json")
        await until_ready(runtime)
        response = await client.post("/v1/embeddings", json={"input": "x", "dimensions": "2"})
        assert response.status_code == 422
        assert response.json()["error"]["param"] == "dimensions"
        assert (await client.post("/v1/embeddings", json={"input": "x"})).status_code == 200
