"""The runtime serving a tiny ViT image classifier (random weights, its image processor) over
real HTTP: JSON with base64 and data URLs, multipart upload, the Open Inference Protocol v2
with ``tritonclient`` (encoded images and preprocessed tensors), batching across requests,
and bad images refused with a 4xx naming them."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from PIL import Image
from runtime_server import Server, run_server
from tiny_models import IMAGE_LABELS, IMAGE_SIZE, image_classifier
from transformers import ViTImageProcessor


def png(color: tuple[int, int, int], size: tuple[int, int] = (48, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


RED, BLUE = png((220, 30, 30)), png((30, 30, 220), (20, 64))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("images")
    model = image_classifier(tmp / "vit")
    config = '{"maxBatchSize": 32, "maxWaitMs": 50}'
    args = ("--model", f"file://{model}", "--task", "image-classification")
    env = {"BATCHPILOT_MAX_BODY_BYTES": "200000", "BATCHPILOT_MAX_IMAGE_PIXELS": "1000000"}
    with run_server(tmp, *args, config=config, env=env) as s:
        s.model_dir = model  # type: ignore[attr-defined]
        yield s


def test_json_and_upload_give_the_same_ranked_labels(server: Server) -> None:
    body = {"input": [b64(RED), f"data:image/png;base64,{b64(BLUE)}"], "top_k": 3}
    response = httpx.post(server.url + "/v1/classify", json=body, timeout=30)
    assert response.status_code == 200
    rows = response.json()["data"]
    assert [r["index"] for r in rows] == [0, 1]
    for row in rows:
        assert len(row["labels"]) == 3
        assert row["label"] in IMAGE_LABELS.values()
        scores = [label["score"] for label in row["labels"]]
        assert scores == sorted(scores, reverse=True)
    files = [("file", ("red.png", RED, "image/png")), ("file", ("blue.png", BLUE, "image/png"))]
    upload = httpx.post(server.url + "/v1/classify", files=files, data={"top_k": "3"}, timeout=30)
    assert upload.status_code == 200
    for got, want in zip(upload.json()["data"], rows, strict=True):
        assert got["label"] == want["label"]
        assert got["score"] == pytest.approx(want["score"], abs=1e-5)


def test_tritonclient_sends_encoded_images_and_tensors(server: Server) -> None:
    meta = httpx.get(server.url + "/v2/models/vit").json()
    assert meta["parameters"]["image_shape"] == [3, IMAGE_SIZE, IMAGE_SIZE]
    processor = ViTImageProcessor.from_pretrained(str(server.model_dir))  # type: ignore[attr-defined]
    red = Image.open(io.BytesIO(RED)).convert("RGB")
    pixels = np.asarray(processor(images=[red], return_tensors="np")["pixel_values"], np.float32)
    encoded = triton.InferInput("image", [1], "BYTES")
    encoded.set_data_from_numpy(np.array([RED], dtype=object))
    tensor = triton.InferInput("pixel_values", list(pixels.shape), "FP32")
    tensor.set_data_from_numpy(pixels)
    with triton.InferenceServerClient(server.url.removeprefix("http://")) as client:
        from_bytes = client.infer("vit", [encoded]).as_numpy("scores")
        from_tensor = client.infer("vit", [tensor]).as_numpy("scores")
    assert from_bytes is not None
    assert from_tensor is not None
    assert from_bytes.shape == (1, len(IMAGE_LABELS))
    np.testing.assert_allclose(from_bytes, from_tensor, atol=1e-5)


def test_images_of_concurrent_requests_share_batches(server: Server) -> None:
    before = server.metrics()
    with ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(
                lambda _: httpx.post(
                    server.url + "/v1/classify", json={"input": [b64(RED)]}, timeout=30
                ),
                range(8),
            )
        )
    assert all(a.status_code == 200 for a in answers)
    after = server.metrics()
    items = after["batchpilot_batch_size_sum"] - before["batchpilot_batch_size_sum"]
    batches = after["batchpilot_batch_size_count"] - before["batchpilot_batch_size_count"]
    assert items == 8
    assert batches < 8


@pytest.mark.parametrize(
    ("request_kwargs", "status", "field"),
    [
        ({"json": {"input": [b64(RED), b64(b"not an image")]}}, 422, "input[1]"),
        ({"json": {"input": [b64(png((1, 2, 3), (1200, 1000)))]}}, 413, "input[0]"),
        ({"json": {"input": [b64(bytes(300_000))]}}, 413, "body"),
        ({"files": [("file", ("x.jpg", RED[:80], "image/jpeg"))]}, 422, "file[0]"),
    ],
    ids=["not an image", "too many pixels", "body too large", "truncated upload"],
)
def test_bad_images_are_refused_and_the_server_serves_on(
    server: Server, request_kwargs: dict[str, object], status: int, field: str
) -> None:
    response = httpx.post(server.url + "/v1/classify", timeout=30, **request_kwargs)  # type: ignore[arg-type]
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == field
    good = httpx.post(server.url + "/v1/classify", json={"input": b64(RED)}, timeout=30)
    assert good.status_code == 200
