"""The multimodal-embedding routes over the emulated backend (no torch): texts and images on
``/v1/embeddings`` (Infinity's ``modality``) and OIP v2, one shared space, text and image items
never in one batch, and a table of bad requests, each a 4xx naming its input."""

from __future__ import annotations

import asyncio
import base64
import io
import re
from collections.abc import AsyncIterator, Hashable, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fakeruntime import serve, settings, until_ready
from PIL import Image

from batchpilot_contract.lifecycle import EXIT_MODEL_REFUSED
from batchpilot_runtime.__main__ import load_failure_status
from batchpilot_runtime.app import Runtime
from batchpilot_runtime.backends import ModelRefused
from batchpilot_runtime.backends.emulated import IMAGE_SHAPE, EmulatedModel, Profile
from batchpilot_runtime.batcher import Batch

DIMS = 12


class RecordingModel(EmulatedModel):
    """The emulated embedder, keeping each batch's kind and the types of its payloads."""

    def __init__(self, task: str, base_ms: float) -> None:
        document = {
            "accelerator": "a test device",
            "provenance": "made up for a test",
            "measured": False,
            "base_ms": base_ms,
            "per_item_ms": 0.1,
            "load_seconds": 0.0,
            "dimensions": DIMS,
        }
        super().__init__(Profile.from_json("test", document), task, seed=0)  # type: ignore[arg-type]
        self.batches: list[tuple[Hashable, set[str]]] = []

    async def run(self, batch: Batch) -> Sequence[object]:
        self.batches.append((batch.kind, {type(p).__name__ for p in batch.payloads}))
        return await super().run(batch)


Served = tuple[httpx.AsyncClient, Runtime, RecordingModel]


@pytest.fixture
async def embedder(tmp_path: Path) -> AsyncIterator[Served]:
    cfg = settings(
        tmp_path,
        task="multimodal-embedding",
        normalize=True,
        max_inputs=8,
        max_input_chars=100,
        max_image_bytes=32 * 1024,
        max_image_pixels=10_000,
    )
    model = RecordingModel("multimodal-embedding", base_ms=20.0)
    async with serve(cfg, lambda: [model]) as (client, runtime):
        await until_ready(runtime)
        yield client, runtime, model


def png(size: tuple[int, int] = (20, 10), color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def names(message: str, field: str) -> bool:
    """Whether ``message`` starts with ``field``, as ``inputs.0.data`` or ``inputs[0].data``."""
    return message.startswith((field, re.sub(r"\.(\d+)", r"[\1]", field)))


def vectors(answer: httpx.Response) -> list[np.ndarray]:
    assert answer.status_code == 200, answer.text
    return [np.asarray(row["embedding"]) for row in answer.json()["data"]]


async def test_texts_and_images_embed_in_one_space(embedder: Served) -> None:
    client, _, _ = embedder
    texts = vectors(await client.post("/v1/embeddings", json={"input": ["a red square", "x"]}))
    red, blue = png(), png(color=(20, 20, 220))
    body = {
        "modality": "image",
        "input": [b64(red), f"data:image/png;base64,{b64(red)}", b64(blue)],
    }
    images = vectors(await client.post("/v1/embeddings", json=body))
    assert all(v.shape == (DIMS,) for v in texts + images)
    assert all(np.linalg.norm(v) == pytest.approx(1.0, abs=1e-5) for v in texts + images)
    np.testing.assert_allclose(images[0], images[1])  # base64 and a data URL: the same image
    assert not np.allclose(images[0], images[2])
    one = await client.post("/v1/embeddings", json={"modality": "image", "input": b64(red)})
    np.testing.assert_allclose(vectors(one)[0], images[0])
    short = await client.post(
        "/v1/embeddings",
        json={**body, "dimensions": 4, "encoding_format": "base64", "model": "fake"},
    )
    row = short.json()["data"][0]["embedding"]
    cut = np.frombuffer(base64.b64decode(row), "<f4")
    assert cut.shape == (4,)
    assert np.linalg.norm(cut) == pytest.approx(1.0, abs=1e-5)


async def test_oip_takes_texts_encoded_images_and_pixel_tensors(embedder: Served) -> None:
    client, _, _ = embedder
    meta = (await client.get("/v2/models/fake")).json()
    assert [i["name"] for i in meta["inputs"]] == ["text", "image", "pixel_values"]
    assert meta["outputs"] == [{"name": "embedding", "datatype": "FP32", "shape": [-1, DIMS]}]
    assert meta["parameters"]["image_shape"] == list(IMAGE_SHAPE)
    rest = vectors(await client.post("/v1/embeddings", json={"input": ["hello", "world"]}))
    text = {"name": "text", "shape": [2], "datatype": "BYTES", "data": ["hello", "world"]}
    answer = await client.post("/v2/models/fake/infer", json={"id": "3", "inputs": [text]})
    assert answer.status_code == 200, answer.text
    out = answer.json()["outputs"][0]
    assert answer.json()["id"] == "3"
    assert out["shape"] == [2, DIMS]
    np.testing.assert_allclose(np.reshape(out["data"], (2, DIMS)), np.stack(rest), rtol=1e-5)
    image = {"name": "image", "shape": [1], "datatype": "BYTES", "data": [b64(png())]}
    answer = await client.post("/v2/models/fake/infer", json={"inputs": [image]})
    assert answer.json()["outputs"][0]["shape"] == [1, DIMS]
    count = int(np.prod(IMAGE_SHAPE))
    tensor = {"name": "pixel_values", "shape": [1, *IMAGE_SHAPE], "datatype": "FP32"}
    raw = {"inputs": [{**tensor, "data": [0.25] * count}], "parameters": {"normalize": False}}
    answer = await client.post("/v2/models/fake/infer", json=raw)
    assert answer.status_code == 200, answer.text
    assert np.linalg.norm(answer.json()["outputs"][0]["data"]) > 1.5  # not normalised


async def test_text_and_image_items_never_share_a_batch(embedder: Served) -> None:
    client, runtime, model = embedder
    model.batches.clear()
    image = b64(png())
    requests = [
        client.post("/v1/embeddings", json={"input": [f"text {i}", "more"]}) for i in range(6)
    ] + [
        client.post("/v1/embeddings", json={"modality": "image", "input": [image]})
        for _ in range(6)
    ]
    answers = await asyncio.gather(*requests)
    assert all(a.status_code == 200 for a in answers)
    kinds = {kind for kind, _ in model.batches}
    assert kinds == {("multimodal", "text", True), ("multimodal", "image", True)}
    for kind, types in model.batches:
        assert types == ({"str"} if "text" in kind else {"Image"}), (kind, types)  # type: ignore[operator]
    stats = runtime.stats()
    assert stats["items"] == 18
    assert stats["batches"] < 12  # concurrent requests of one kind did share batches
    assert stats["batch_splits"] == 0


async def test_other_task_routes_are_refused(embedder: Served) -> None:
    client, _, _ = embedder
    classify = await client.post("/v1/classify", json={"input": ["a"]})
    assert classify.status_code == 400
    rerank = await client.post("/v1/rerank", json={"query": "q", "documents": ["a"]})
    assert rerank.status_code == 400


async def test_a_text_embedder_refuses_images(tmp_path: Path) -> None:
    cfg = settings(tmp_path, task="embedding")
    async with serve(cfg, lambda: [RecordingModel("embedding", 1.0)]) as (client, runtime):
        await until_ready(runtime)
        answer = await client.post("/v1/embeddings", json={"modality": "image", "input": ["x"]})
        assert answer.status_code == 400
        assert answer.json()["error"]["param"] == "modality"
        assert (await client.post("/v1/embeddings", json={"input": "x"})).status_code == 200


def _oip(*inputs: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"inputs": list(inputs), **extra}


def _t(name: str, datatype: str, shape: list[int], data: list[Any]) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape, "data": data}


IMG = {"modality": "image"}
CASES: list[tuple[str, dict[str, Any], int, str]] = [
    ("unknown modality", {"modality": "audio", "input": ["x"]}, 422, "modality"),
    ("modality not a string", {"modality": 1, "input": ["x"]}, 422, "modality"),
    ("no input", {"modality": "image"}, 422, "input"),
    ("image not base64", {**IMG, "input": ["%%%"]}, 422, "input[0]"),
    ("not an image", {**IMG, "input": [b64(b"plain text")]}, 422, "input[0]"),
    ("second of two bad", {**IMG, "input": [b64(png()), b64(b"GIF89a")]}, 422, "input[1]"),
    ("single not an image", {**IMG, "input": b64(b"plain text")}, 422, "input"),
    ("truncated image", {**IMG, "input": [b64(png((90, 90))[:60])]}, 422, "input[0]"),
    ("too many pixels", {**IMG, "input": [b64(png((200, 200)))]}, 413, "input[0]"),
    ("too many bytes", {**IMG, "input": ["A" * 64 * 1024]}, 413, "input[0]"),
    ("an image URL", {**IMG, "input": ["https://example.com/cat.png"]}, 422, "input[0]"),
    ("not an image data URL", {**IMG, "input": ["data:text/plain;base64,eA=="]}, 422, "input[0]"),
    ("no images", {**IMG, "input": []}, 422, "input"),
    ("too many images", {**IMG, "input": ["x"] * 9}, 413, "input"),
    ("image as a number", {**IMG, "input": [3]}, 422, "input.0"),
    ("no texts", {"input": []}, 422, "input"),
    ("too many texts", {"input": ["x"] * 9}, 413, "input"),
    ("text too long", {"input": ["x" * 101]}, 413, "input"),
    ("dimensions over", {"input": ["x"], "dimensions": DIMS + 1}, 422, "dimensions"),
    ("dimensions zero", {**IMG, "input": [b64(png())], "dimensions": 0}, 422, "dimensions"),
    ("bad encoding", {"input": ["x"], "encoding_format": "int8"}, 422, "encoding_format"),
    ("wrong model", {**IMG, "input": [b64(png())], "model": "other"}, 404, "model"),
    (
        "oip two inputs",
        _oip(_t("text", "BYTES", [1], ["a"]), _t("image", "BYTES", [0], [])),
        422,
        "inputs",
    ),
    ("oip unknown input", _oip(_t("words", "BYTES", [1], ["a"])), 422, "inputs.0.name"),
    ("oip text not BYTES", _oip(_t("text", "INT64", [1], [1])), 422, "inputs.0.datatype"),
    ("oip text shape", _oip(_t("text", "BYTES", [2], ["a"])), 422, "inputs.0.shape"),
    (
        "oip image not an image",
        _oip(_t("image", "BYTES", [1], [b64(b"no")])),
        422,
        "inputs[0].data[0]",
    ),
    ("oip image a number", _oip(_t("image", "BYTES", [1], [5])), 422, "inputs[0].data[0]"),
    ("oip too many images", _oip(_t("image", "BYTES", [9], ["x"] * 9)), 413, "inputs[0].data"),
    (
        "oip pixels wrong dtype",
        _oip(_t("pixel_values", "INT64", [1, *IMAGE_SHAPE], [0])),
        422,
        "inputs[0].datatype",
    ),
    (
        "oip pixels wrong shape",
        _oip(_t("pixel_values", "FP32", [1, 3, 2, 2], [0.0] * 12)),
        422,
        "inputs[0].shape",
    ),
    (
        "oip pixels count",
        _oip(_t("pixel_values", "FP32", [2, *IMAGE_SHAPE], [0.0] * 5)),
        422,
        "inputs[0].data",
    ),
    (
        "oip normalize not bool",
        _oip(_t("text", "BYTES", [1], ["a"]), parameters={"normalize": "yes"}),
        422,
        "parameters",
    ),
]


@pytest.mark.parametrize(
    ("body", "status", "field"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
async def test_a_bad_request_is_refused_naming_the_input(
    embedder: Served, body: dict[str, Any], status: int, field: str
) -> None:
    client, runtime, _ = embedder
    path = "/v2/models/fake/infer" if "inputs" in body else "/v1/embeddings"
    response = await client.post(path, json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == field
    assert names(error["message"], field), error["message"]
    assert runtime.stats()["items"] == 0  # refused before anything was queued


def test_a_refused_model_exits_with_its_own_status_and_says_why(tmp_path: Path) -> None:
    message = tmp_path / "termination-log"
    refused = ModelRefused("task multimodal-embedding: the model at m (bert) has no image tower")
    assert load_failure_status([refused], message) == EXIT_MODEL_REFUSED
    assert not message.exists()  # outside a pod: nothing written
    message.touch()  # the kubelet makes the file
    assert load_failure_status([RuntimeError("disk"), refused], message) == EXIT_MODEL_REFUSED
    assert "(bert) has no image tower" in message.read_text()
    assert load_failure_status([RuntimeError("out of memory")], message) == 1
