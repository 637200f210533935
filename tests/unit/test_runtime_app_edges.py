"""The HTTP app at its edges: a client that leaves or stalls mid-upload, methods a route does
not take, and request fields that must hold the JSON type they name."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fakeruntime import FakeModel, serve, settings, until_ready

from batchpilot_runtime.app import Runtime

Served = tuple[httpx.AsyncClient, Runtime, FakeModel]


@pytest.fixture
async def embedder(tmp_path: Path) -> AsyncIterator[Served]:
    model = FakeModel()
    async with serve(settings(tmp_path), lambda: [model]) as (client, runtime):
        await until_ready(runtime)
        yield client, runtime, model


def _scope(method: str, path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("runtime", 80),
    }


@pytest.mark.parametrize("path", ["/v1/embeddings", "/v2/models/fake/infer"], ids=["openai", "oip"])
async def test_a_client_that_leaves_mid_upload_is_cancelled_not_an_error(
    embedder: Served, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    client, runtime, model = embedder
    app = client._transport.app  # type: ignore[attr-defined]
    body = json.dumps({"input": ["one", "two"]}).encode()
    # Half the declared body arrives, then the connection drops.
    messages = [
        {"type": "http.disconnect"},
        {"type": "http.request", "body": body[:10], "more_body": True},
    ]

    async def receive() -> dict[str, Any]:
        return messages.pop()

    async def send(message: dict[str, Any]) -> None:
        return None

    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    with caplog.at_level(logging.INFO):
        await app(_scope("POST", path, headers), receive, send)
    assert runtime.requests["cancelled"] == 1
    assert runtime.requests["error"] == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert model.batches == []


@pytest.mark.parametrize("path", ["/v1/embeddings", "/v2/models/fake/infer"], ids=["openai", "oip"])
async def test_a_stalled_upload_is_answered_408_and_its_connection_closed(
    tmp_path: Path, path: str
) -> None:
    model = FakeModel()
    async with serve(settings(tmp_path, body_timeout=0.2), lambda: [model]) as (client, runtime):
        await until_ready(runtime)
        app = client._transport.app  # type: ignore[attr-defined]
        body = json.dumps({"input": ["one", "two"]}).encode()
        sent = False
        stalled = asyncio.Event()  # never set: the rest of the body never comes

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body[:10], "more_body": True}
            await stalled.wait()
            raise AssertionError("unreachable")

        answer: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            answer.append(message)

        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        # The bound is only this test's own timeout; the app answers long before.
        await asyncio.wait_for(app(_scope("POST", path, headers), receive, send), 30)
        start = answer[0]
        assert start["status"] == 408
        assert (b"connection", b"close") in start["headers"]
        error = json.loads(answer[1]["body"])["error"]
        assert error["param"] == "body"
        assert f"10 of {len(body)} bytes" in error["message"]
        assert runtime.requests["cancelled"] == 1
        assert model.batches == []


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [("GET", "/v1/embeddings", "POST"), ("POST", "/v2/health/live", "GET")],
)
async def test_a_method_not_allowed_names_the_allowed_ones(
    embedder: Served, method: str, path: str, allowed: str
) -> None:
    client, _, _ = embedder
    response = await client.request(method, path)
    assert response.status_code == 405
    assert allowed in [m.strip() for m in response.headers["allow"].split(",")]
    assert response.json()["error"]["code"] == 405


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/embeddings", {"input": "x", "dimensions": True}, "dimensions"),
        ("/v1/embeddings", {"input": "x", "dimensions": "2"}, "dimensions"),
        ("/v1/embeddings", {"input": "x", "model": 7}, "model"),
        ("/v1/classify", {"input": "x", "top_k": True}, "top_k"),
        ("/v1/classify", {"input": "x", "top_k": "1"}, "top_k"),
        (
            "/v2/models/fake/infer",
            {"inputs": [{"name": "t", "shape": [True], "datatype": "BYTES", "data": ["a"]}]},
            "inputs.0.shape.0",
        ),
        (
            "/v2/models/fake/infer",
            {"inputs": [{"name": "t", "shape": ["1"], "datatype": "BYTES", "data": ["a"]}]},
            "inputs.0.shape.0",
        ),
        (
            "/v2/models/fake/infer",
            {"id": 5, "inputs": [{"name": "t", "shape": [1], "datatype": "BYTES", "data": ["a"]}]},
            "id",
        ),
    ],
)
async def test_a_request_field_takes_only_the_json_type_it_names(
    embedder: Served, path: str, body: dict[str, Any], field: str
) -> None:
    client, runtime, _ = embedder
    response = await client.post(path, json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["message"].startswith(f"{field}:")
    assert runtime.requests["ok"] == 0
