"""The rerank and image-classification routes over the emulated backend (no torch): API
shapes, batching across requests, and a table of bad requests, each a 4xx naming its field."""

from __future__ import annotations

import asyncio
import base64
import io
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fakeruntime import serve, settings, until_ready
from PIL import Image

from batchpilot_runtime.app import Runtime
from batchpilot_runtime.backends.emulated import IMAGE_SHAPE, EmulatedModel, Profile

LABELS = ["cat", "dog", "bird"]


def emulated(task: str, base_ms: float = 1.0) -> EmulatedModel:
    document = {
        "accelerator": "a test device",
        "provenance": "made up for a test",
        "measured": False,
        "base_ms": base_ms,
        "per_item_ms": 0.1,
        "load_seconds": 0.0,
        "labels": LABELS,
    }
    return EmulatedModel(Profile.from_json("test", document), task, seed=0)  # type: ignore[arg-type]


Served = tuple[httpx.AsyncClient, Runtime]


def names(message: str, field: str) -> bool:
    """Whether ``message`` starts with ``field``, as ``inputs.0.data`` or ``inputs[0].data``."""
    return message.startswith((field, re.sub(r"\.(\d+)", r"[\1]", field)))


@pytest.fixture
async def reranker(tmp_path: Path) -> AsyncIterator[Served]:
    cfg = settings(tmp_path, task="rerank", max_inputs=8)
    async with serve(cfg, lambda: [emulated("rerank", base_ms=20.0)]) as (client, runtime):
        await until_ready(runtime)
        yield client, runtime


@pytest.fixture
async def classifier(tmp_path: Path) -> AsyncIterator[Served]:
    cfg = settings(
        tmp_path,
        task="image-classification",
        max_inputs=8,
        max_image_bytes=32 * 1024,
        max_image_pixels=10_000,
    )
    async with serve(cfg, lambda: [emulated("image-classification", 20.0)]) as (client, runtime):
        await until_ready(runtime)
        yield client, runtime


def png(size: tuple[int, int] = (20, 10), color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


DOCS = ["a cat sat", "paris is a city", "dogs bark", "cats purr"]


async def test_rerank_sorts_documents_by_score(reranker: Served) -> None:
    client, _ = reranker
    body = {"query": "cats", "documents": DOCS}
    every = (await client.post("/v1/rerank", json=body)).json()
    scores = [r["relevance_score"] for r in every["results"]]
    assert scores == sorted(scores, reverse=True)
    assert sorted(r["index"] for r in every["results"]) == [0, 1, 2, 3]
    assert all(0.0 < s < 1.0 for s in scores)
    assert "document" not in every["results"][0]
    assert every["model"] == "fake"
    assert every["usage"]["total_tokens"] > 0
    top = await client.post("/v1/rerank", json={**body, "top_n": 2, "return_documents": True})
    results = top.json()["results"]
    assert results == [{**r, "document": {"text": DOCS[r["index"]]}} for r in every["results"][:2]]


async def test_rerank_over_oip_scores_in_input_order(reranker: Served) -> None:
    client, _ = reranker
    rest = (await client.post("/v1/rerank", json={"query": "cats", "documents": DOCS})).json()
    by_index = {r["index"]: r["relevance_score"] for r in rest["results"]}
    request = {
        "id": "7",
        "inputs": [
            {"name": "query", "shape": [1], "datatype": "BYTES", "data": ["cats"]},
            {"name": "document", "shape": [4], "datatype": "BYTES", "data": DOCS},
        ],
    }
    response = await client.post("/v2/models/fake/infer", json=request)
    assert response.status_code == 200
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    assert outputs["score"]["data"] == pytest.approx([by_index[i] for i in range(4)])
    meta = (await client.get("/v2/models/fake")).json()
    assert [i["name"] for i in meta["inputs"]] == ["query", "document"]


async def test_pairs_of_concurrent_requests_share_batches(reranker: Served) -> None:
    client, runtime = reranker
    requests = [
        client.post("/v1/rerank", json={"query": f"q{i}", "documents": ["x", "y"]})
        for i in range(6)
    ]
    answers = await asyncio.gather(*requests)
    assert all(a.status_code == 200 for a in answers)
    stats = runtime.stats()
    assert stats["items"] == 12
    assert stats["batches"] < 6  # some batch held pairs of more than one request


async def test_image_classify_takes_json_and_multipart(classifier: Served) -> None:
    client, _ = classifier
    image = png()
    as_json = await client.post(
        "/v1/classify",
        json={"input": [b64(image), f"data:image/png;base64,{b64(image)}"], "top_k": 2},
    )
    assert as_json.status_code == 200
    rows = as_json.json()["data"]
    assert len(rows) == 2
    assert rows[0]["labels"] == rows[1]["labels"]  # the same pixels, the same scores
    assert len(rows[0]["labels"]) == 2
    assert rows[0]["label"] in LABELS
    upload = await client.post(
        "/v1/classify",
        files=[("file", ("a.png", image, "image/png")), ("file", ("b.png", image, "image/png"))],
        data={"top_k": "1"},
    )
    assert upload.status_code == 200
    assert [r["labels"] for r in upload.json()["data"]] == [r["labels"][:1] for r in rows]


async def test_image_classify_over_oip_bytes_and_tensor(classifier: Served) -> None:
    client, _ = classifier
    meta = (await client.get("/v2/models/fake")).json()
    assert meta["parameters"]["image_shape"] == list(IMAGE_SHAPE)
    encoded = {"name": "image", "shape": [1], "datatype": "BYTES", "data": [b64(png())]}
    response = await client.post("/v2/models/fake/infer", json={"inputs": [encoded]})
    assert response.status_code == 200
    assert response.json()["outputs"][0]["data"][0] in LABELS
    count = 3 * 224 * 224
    tensor = {"name": "pixel_values", "shape": [1, *IMAGE_SHAPE], "datatype": "FP32"}
    response = await client.post(
        "/v2/models/fake/infer", json={"inputs": [{**tensor, "data": [0.5] * count}]}
    )
    assert response.status_code == 200
    assert response.json()["outputs"][2]["shape"] == [1, len(LABELS)]


RERANK_CASES: list[tuple[str, str, dict[str, Any], int, str]] = [
    ("no query", "/v1/rerank", {"documents": ["a"]}, 422, "query"),
    ("empty query", "/v1/rerank", {"query": "", "documents": ["a"]}, 422, "query"),
    ("no documents", "/v1/rerank", {"query": "q"}, 422, "documents"),
    ("empty documents", "/v1/rerank", {"query": "q", "documents": []}, 422, "documents"),
    ("document objects", "/v1/rerank", {"query": "q", "documents": [{"x": 1}]}, 422, "documents.0"),
    ("top_n zero", "/v1/rerank", {"query": "q", "documents": ["a"], "top_n": 0}, 422, "top_n"),
    ("top_n string", "/v1/rerank", {"query": "q", "documents": ["a"], "top_n": "1"}, 422, "top_n"),
    (
        "return_documents string",
        "/v1/rerank",
        {"query": "q", "documents": ["a"], "return_documents": "yes"},
        422,
        "return_documents",
    ),
    ("too many documents", "/v1/rerank", {"query": "q", "documents": ["a"] * 9}, 413, "documents"),
    (
        "wrong model",
        "/v1/rerank",
        {"model": "other", "query": "q", "documents": ["a"]},
        404,
        "model",
    ),
    (
        "one input",
        "/v2/models/fake/infer",
        {"inputs": [{"name": "query", "shape": [1], "datatype": "BYTES", "data": ["q"]}]},
        422,
        "inputs",
    ),
    (
        "queries and documents differ in count",
        "/v2/models/fake/infer",
        {
            "inputs": [
                {"name": "query", "shape": [2], "datatype": "BYTES", "data": ["q", "r"]},
                {"name": "document", "shape": [3], "datatype": "BYTES", "data": ["a", "b", "c"]},
            ]
        },
        422,
        "inputs.0.data",
    ),
    (
        "document not BYTES",
        "/v2/models/fake/infer",
        {
            "inputs": [
                {"name": "query", "shape": [1], "datatype": "BYTES", "data": ["q"]},
                {"name": "document", "shape": [1], "datatype": "FP32", "data": [1.0]},
            ]
        },
        422,
        "inputs.1.datatype",
    ),
]


@pytest.mark.parametrize(
    ("path", "body", "status", "field"),
    [c[1:] for c in RERANK_CASES],
    ids=[c[0] for c in RERANK_CASES],
)
async def test_a_bad_rerank_request_is_refused_naming_the_field(
    reranker: Served, path: str, body: dict[str, Any], status: int, field: str
) -> None:
    client, runtime = reranker
    response = await client.post(path, json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == field
    assert names(error["message"], field)
    assert runtime.stats()["items"] == 0  # refused before anything was queued


def _tensor(datatype: str, shape: list[int], data: list[Any]) -> dict[str, Any]:
    return {"inputs": [{"name": "image", "shape": shape, "datatype": datatype, "data": data}]}


IMAGE_CASES: list[tuple[str, dict[str, Any], int, str]] = [
    ("not base64", {"input": ["%%%"]}, 422, "input[0]"),
    ("not an image", {"input": [b64(b"plain text")]}, 422, "input[0]"),
    ("second of two bad", {"input": [b64(png()), b64(b"GIF89a")]}, 422, "input[1]"),
    ("single not an image", {"input": b64(b"plain text")}, 422, "input"),
    ("truncated", {"input": [b64(png((90, 90))[:60])]}, 422, "input[0]"),
    ("too many pixels", {"input": [b64(png((200, 200)))]}, 413, "input[0]"),
    ("too many bytes", {"input": ["A" * 64 * 1024]}, 413, "input[0]"),
    ("an URL", {"input": ["https://example.com/cat.png"]}, 422, "input[0]"),
    ("no images", {"input": []}, 422, "input"),
    ("top_k zero", {"input": [b64(png())], "top_k": 0}, 422, "top_k"),
    ("too many images", {"input": ["x"] * 9}, 413, "input"),
    ("oip too many images", _tensor("BYTES", [9], ["x"] * 9), 413, "inputs[0].data"),
    ("oip wrong dtype", _tensor("INT64", [1, *IMAGE_SHAPE], [0]), 422, "inputs[0].datatype"),
    ("oip wrong shape", _tensor("FP32", [1, 3, 2, 2], [0.0] * 12), 422, "inputs[0].shape"),
    ("oip count", _tensor("FP32", [2, *IMAGE_SHAPE], [0.0] * 10), 422, "inputs[0].data"),
    ("oip bytes not an image", _tensor("BYTES", [1], [b64(b"nope")]), 422, "inputs[0].data[0]"),
    ("oip bytes number", _tensor("BYTES", [1], [3]), 422, "inputs[0].data[0]"),
]


@pytest.mark.parametrize(
    ("body", "status", "field"), [c[1:] for c in IMAGE_CASES], ids=[c[0] for c in IMAGE_CASES]
)
async def test_a_bad_image_request_is_refused_naming_the_input(
    classifier: Served, body: dict[str, Any], status: int, field: str
) -> None:
    client, runtime = classifier
    path = "/v2/models/fake/infer" if "inputs" in body else "/v1/classify"
    response = await client.post(path, json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == field
    assert names(error["message"], field)
    assert runtime.stats()["items"] == 0


MULTIPART_CASES: list[tuple[str, list[Any], dict[str, str], int, str]] = [
    ("no file part", [], {"top_k": "1"}, 422, "file"),
    ("not an image", [("file", ("x.png", b"nope", "image/png"))], {}, 422, "file[0]"),
    (
        "second file bad",
        [("file", ("a.png", png(), "image/png")), ("file", ("b.gif", b"GIF8", "image/gif"))],
        {},
        422,
        "file[1]",
    ),
    ("bad top_k", [("file", ("a.png", png(), "image/png"))], {"top_k": "two"}, 422, "top_k"),
]


@pytest.mark.parametrize(
    ("files", "data", "status", "field"),
    [c[1:] for c in MULTIPART_CASES],
    ids=[c[0] for c in MULTIPART_CASES],
)
async def test_a_bad_upload_is_refused_naming_the_part(
    classifier: Served, files: list[Any], data: dict[str, str], status: int, field: str
) -> None:
    client, _ = classifier
    if not files:  # httpx sends a urlencoded body without files: force multipart
        response = await client.post(
            "/v1/classify",
            content=b'--b\r\nContent-Disposition: form-data; name="top_k"\r\n\r\n1\r\n--b--\r\n',
            headers={"content-type": "multipart/form-data; boundary=b"},
        )
    else:
        response = await client.post("/v1/classify", files=files, data=data)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == field
    assert names(error["message"], field)


async def test_an_image_route_on_a_reranker_is_refused(reranker: Served) -> None:
    client, _ = reranker
    response = await client.post("/v1/classify", json={"input": ["a"]})
    assert response.status_code == 400
    assert "not a classification model" in response.json()["error"]["message"]
