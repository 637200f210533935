"""The HTTP app over fake models: API shapes, errors, overload, readiness, stats and metrics."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from fakeruntime import LABELS, FakeModel, serve, settings, until, until_ready, write_config

from batchpilot_contract import metrics
from batchpilot_runtime.app import Runtime, create_app
from batchpilot_runtime.backends import ServedModel


@pytest.fixture
async def embedder(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime, FakeModel]]:
    model = FakeModel()
    async with serve(settings(tmp_path), lambda: [model]) as (client, runtime):
        await until_ready(runtime)
        yield client, runtime, model


@pytest.fixture
async def classifier(
    tmp_path: Path,
) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime, FakeModel]]:
    model = FakeModel("classification")
    async with serve(settings(tmp_path), lambda: [model]) as (client, runtime):
        await until_ready(runtime)
        yield client, runtime, model


async def test_the_openai_client_works_unchanged(embedder: Any) -> None:
    client, _, _ = embedder
    oai = openai.AsyncOpenAI(base_url="http://runtime/v1", api_key="unused", http_client=client)
    result = await oai.embeddings.create(model="fake", input=["one two", "three"])
    assert [d.embedding for d in result.data] == [[7.0, 2.0, 0.0, 0.0], [5.0, 1.0, 0.0, 0.0]]
    assert result.usage.prompt_tokens == 12
    models = await oai.models.list()
    assert [m.id for m in models.data] == ["fake"]


async def test_embeddings_float_base64_and_dimensions(embedder: Any) -> None:
    client, _, _ = embedder
    plain = await client.post("/v1/embeddings", json={"input": "abc", "model": "fake"})
    assert plain.status_code == 200
    assert plain.json()["data"][0]["embedding"] == [3.0, 1.0, 0.0, 0.0]
    packed = await client.post("/v1/embeddings", json={"input": "abc", "encoding_format": "base64"})
    raw = base64.b64decode(packed.json()["data"][0]["embedding"])
    assert np.frombuffer(raw, "<f4").tolist() == [3.0, 1.0, 0.0, 0.0]
    short = await client.post("/v1/embeddings", json={"input": "abc", "dimensions": 2})
    assert short.json()["data"][0]["embedding"] == [3.0, 1.0]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"input": 3}, "input"),
        ({}, "input"),
        ({"input": []}, "input"),
        ({"input": ["ok", 4]}, "input.1"),
        ({"input": "x", "encoding_format": "hex"}, "encoding_format"),
        ({"input": "x", "dimensions": 0}, "dimensions"),
        ({"input": "x", "dimensions": 99}, "dimensions"),
    ],
)
async def test_malformed_bodies_are_422_naming_the_field(
    embedder: Any, body: dict[str, Any], field: str
) -> None:
    client, runtime, _ = embedder
    response = await client.post("/v1/embeddings", json=body)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["message"].startswith(f"{field}:")
    assert runtime.requests["invalid"] == 1


async def test_broken_json_is_422(embedder: Any) -> None:
    client, _, _ = embedder
    response = await client.post("/v1/embeddings", content=b"{not json")
    assert response.status_code == 422
    assert "JSON" in response.json()["error"]["message"]


async def test_over_the_limits_is_413(tmp_path: Path) -> None:
    model = FakeModel()
    cfg = settings(tmp_path, max_body_bytes=200, max_inputs=3, max_input_chars=10)
    async with serve(cfg, lambda: [model]) as (client, runtime):
        await until_ready(runtime)
        cases = {
            "body": {"input": ["x" * 5] * 40},
            "input:": {"input": ["a", "b", "c", "d"]},
            "input[1]": {"input": ["short", "far too long for the limit"]},
        }
        for field, body in cases.items():
            response = await client.post("/v1/embeddings", json=body)
            assert response.status_code == 413, field
            assert response.json()["error"]["message"].startswith(field)


async def test_a_wrong_model_name_is_404(embedder: Any) -> None:
    client, _, _ = embedder
    response = await client.post("/v1/embeddings", json={"input": "x", "model": "other"})
    assert response.status_code == 404
    assert "other" in response.json()["error"]["message"]
    assert (await client.get("/v2/models/other")).status_code == 404


async def test_a_bad_priority_header_is_422(embedder: Any) -> None:
    client, _, _ = embedder
    response = await client.post(
        "/v1/embeddings", json={"input": "x"}, headers={"x-batchpilot-priority": "urgent!"}
    )
    assert response.status_code == 422
    assert "x-batchpilot-priority" in response.json()["error"]["message"]


async def test_a_full_queue_is_429_with_retry_after(tmp_path: Path) -> None:
    model = FakeModel()
    write_config(tmp_path / "batching.json", maxQueue=2, maxBatchSize=1)
    async with serve(settings(tmp_path, pipeline_depth=1), lambda: [model]) as (client, runtime):
        await until_ready(runtime)
        model.gate.clear()
        model.entered.clear()
        running = asyncio.ensure_future(client.post("/v1/embeddings", json={"input": "a"}))
        await model.entered.wait()  # "a" is on the model; the queue is empty
        queued = asyncio.ensure_future(client.post("/v1/embeddings", json={"input": ["b", "c"]}))
        await until(lambda: runtime.queue_depth() == 2)
        refused = await client.post("/v1/embeddings", json={"input": "d"})
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) >= 1
        model.gate.set()
        assert (await running).status_code == 200
        assert (await queued).status_code == 200
        assert runtime.requests == {**dict.fromkeys(metrics.OUTCOMES, 0), "ok": 2, "rejected": 1}


async def test_an_item_past_its_deadline_is_504(tmp_path: Path) -> None:
    model = FakeModel()
    write_config(tmp_path / "batching.json", requestTimeoutMs=20, maxBatchSize=1)
    async with serve(settings(tmp_path, pipeline_depth=1), lambda: [model]) as (client, runtime):
        await until_ready(runtime)
        model.gate.clear()
        model.entered.clear()
        running = asyncio.ensure_future(client.post("/v1/embeddings", json={"input": "a"}))
        await model.entered.wait()
        late = await client.post("/v1/embeddings", json={"input": "b"})
        assert late.status_code == 504
        model.gate.set()
        assert (await running).status_code == 200
        assert runtime.requests["timeout"] == 1
        assert model.batches[-1] == ["a"]


async def test_not_ready_until_loaded_then_ready(tmp_path: Path) -> None:
    release = threading.Event()
    model = FakeModel()

    def slow_loader() -> list[ServedModel]:
        release.wait(timeout=30)
        return [model]

    async with serve(settings(tmp_path), slow_loader) as (client, runtime):
        assert (await client.get("/v2/health/live")).status_code == 200
        assert (await client.get("/v2/health/ready")).status_code == 503
        refused = await client.post("/v1/embeddings", json={"input": "x"})
        assert refused.status_code == 503
        release.set()
        await until_ready(runtime)
        assert (await client.get("/v2/health/ready")).json() == {"ready": True}
        assert (await client.get("/v2/models/fake/ready")).status_code == 200
        runtime.draining = True  # SIGTERM: endpoints drop the pod, but it still serves
        assert (await client.get("/v2/health/ready")).status_code == 503
        assert (await client.get("/v2/models/fake/ready")).status_code == 503
        assert (await client.post("/v1/embeddings", json={"input": "x"})).status_code == 200
        runtime.stopping = True  # the app is shutting down
        assert (await client.post("/v1/embeddings", json={"input": "x"})).status_code == 503


async def test_the_load_runs_in_a_daemon_thread_that_shutdown_does_not_wait_for(
    tmp_path: Path,
) -> None:
    release = threading.Event()
    daemon: list[bool] = []

    def stuck_loader() -> list[ServedModel]:
        daemon.append(threading.current_thread().daemon)
        release.wait(timeout=60)  # set below; the bound only ends this thread if the test fails
        return [FakeModel()]

    try:
        async with serve(settings(tmp_path), stuck_loader) as (client, runtime):
            await until(lambda: bool(daemon))
            assert (await client.get("/v2/health/ready")).status_code == 503
        # Shut down mid-load: the load is abandoned, and nothing at exit joins its thread.
        assert daemon == [True]
        assert runtime.load_running()
    finally:
        release.set()


async def test_a_failed_load_is_reported_to_the_caller(tmp_path: Path) -> None:
    failures: list[BaseException] = []

    def broken_loader() -> list[ServedModel]:
        raise OSError("weights are missing")

    app = create_app(settings(tmp_path), broken_loader, on_fatal=failures.append)
    async with app.router.lifespan_context(app):
        runtime: Runtime = app.state.runtime
        await until(lambda: bool(failures))
        assert runtime.load_error == "OSError: weights are missing"
        assert not runtime.ready


async def test_classify_and_the_open_inference_protocol(classifier: Any) -> None:
    client, _, _ = classifier
    response = await client.post("/v1/classify", json={"input": ["good day", "bad day"]})
    assert response.status_code == 200
    body = response.json()
    # the fake model counts a text's characters as its tokens: 8 + 7
    assert (body["object"], body["model"]) == ("list", "fake")
    assert body["usage"] == {"prompt_tokens": 15, "total_tokens": 15}
    data = body["data"]
    assert [d["label"] for d in data] == ["positive", "negative"]
    assert data[0]["labels"][0] == {"label": "positive", "score": pytest.approx(0.9)}
    top1 = await client.post("/v1/classify", json={"input": "good", "top_k": 1})
    assert len(top1.json()["data"][0]["labels"]) == 1

    meta = (await client.get("/v2/models/fake")).json()
    assert meta["inputs"][0]["datatype"] == "BYTES"
    assert meta["parameters"]["labels"] == list(LABELS)
    infer = await client.post(
        "/v2/models/fake/infer",
        json={
            "id": "r1",
            "inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["good", "x"]}],
        },
    )
    assert infer.status_code == 200
    body = infer.json()
    assert body["id"] == "r1"
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["label"]["data"] == ["positive", "negative"]
    assert outputs["scores"]["shape"] == [2, 2]
    wrong = await client.post("/v1/embeddings", json={"input": "x"})
    assert wrong.status_code == 400


@pytest.mark.parametrize(
    ("tensor", "field"),
    [
        ({"name": "t", "shape": [1], "datatype": "FP32", "data": [1.0]}, "inputs[0].datatype"),
        ({"name": "t", "shape": [3], "datatype": "BYTES", "data": ["a"]}, "inputs[0].shape"),
        ({"name": "t", "shape": [1], "datatype": "BYTES", "data": [7]}, "inputs[0].data"),
        ({"name": "t", "shape": [1], "datatype": "BYTES"}, "inputs.0.data"),
        # A negative or overflowing product must not pass for the data's length.
        (
            {"name": "t", "shape": [-1, -2], "datatype": "BYTES", "data": ["a", "b"]},
            "inputs[0].shape",
        ),
        (
            {
                "name": "t",
                "shape": [3, 6148914691236517206],
                "datatype": "BYTES",
                "data": ["a", "b"],
            },
            "inputs[0].shape",
        ),
    ],
)
async def test_bad_inference_protocol_requests_are_422(
    classifier: Any, tensor: dict[str, Any], field: str
) -> None:
    client, _, _ = classifier
    response = await client.post("/v2/models/fake/infer", json={"inputs": [tensor]})
    assert response.status_code == 422
    assert response.json()["error"]["message"].startswith(field)


async def test_oip_embeddings_are_a_matrix(embedder: Any) -> None:
    client, _, _ = embedder
    response = await client.post(
        "/v2/models/fake/infer",
        json={
            "inputs": [{"name": "t", "shape": [1, 2], "datatype": "BYTES", "data": [["a", "bb"]]}]
        },
    )
    output = response.json()["outputs"][0]
    assert output["shape"] == [2, 4]
    assert output["data"] == [1.0, 1.0, 0.0, 0.0, 2.0, 1.0, 0.0, 0.0]


async def test_a_client_that_leaves_has_its_items_dropped(embedder: Any) -> None:
    client, runtime, model = embedder
    app = client._transport.app  # type: ignore[attr-defined]
    model.gate.clear()
    model.entered.clear()
    running = asyncio.ensure_future(client.post("/v1/embeddings", json={"input": "first"}))
    await model.entered.wait()

    gone = asyncio.Event()
    body = json.dumps({"input": "abandoned"}).encode()
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await gone.wait()
        return {"type": "http.disconnect"}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/embeddings",
        "raw_path": b"/v1/embeddings",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1),
        "server": ("runtime", 80),
    }
    call = asyncio.ensure_future(app(scope, receive, send))
    await until(lambda: runtime.queue_depth() == 1)
    gone.set()
    await call
    assert runtime.queue_depth() == 0
    model.gate.set()
    assert (await running).status_code == 200
    assert all("abandoned" not in batch for batch in model.batches)
    assert runtime.requests["cancelled"] == 1


async def test_stats_and_metrics_follow_the_config_file(embedder: Any, tmp_path: Path) -> None:
    client, runtime, _ = embedder
    for text in ("a", "b", "c"):
        assert (await client.post("/v1/embeddings", json={"input": text})).status_code == 200
    stats = (await client.get("/stats")).json()
    assert stats["items"] == 3
    assert stats["requests"]["ok"] == 3
    assert stats["config"]["maxBatchSize"] == 32

    write_config(tmp_path / "batching.json", maxBatchSize=7, maxWaitMs=12.5, generation=4)
    assert runtime.watcher.check()
    text = (await client.get("/metrics")).text
    assert f"{metrics.CONFIG_MAX_BATCH_SIZE} 7.0" in text
    assert f"{metrics.CONFIG_MAX_WAIT_SECONDS} 0.0125" in text
    assert f"{metrics.CONFIG_GENERATION} 4.0" in text
    assert f'{metrics.REQUESTS_TOTAL}{{outcome="ok"}} 3.0' in text
    assert f"{metrics.BATCH_SIZE}_count 3.0" in text
    assert f"{metrics.QUEUE_WAIT_SECONDS}_count 3.0" in text
    assert f"{metrics.REQUEST_DURATION_SECONDS}_count 3.0" in text
    assert f"{metrics.QUEUE_DEPTH} 0.0" in text
    for bound in metrics.LATENCY_BUCKETS:
        assert f'{metrics.BATCH_DURATION_SECONDS}_bucket{{le="{bound}"}}' in text
    assert runtime.batchers[0].batch_limit == 7

    (tmp_path / "batching.json").write_text('{"maxBatchSize": -1}')
    assert not runtime.watcher.check()
    stats = (await client.get("/stats")).json()
    assert stats["config"]["maxBatchSize"] == 7
    assert "maxBatchSize" in stats["config_error"]
