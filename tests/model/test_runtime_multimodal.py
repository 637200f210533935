"""The runtime serving a tiny CLIP (random weights, MiniLM's tokenizer, CLIP's image processor)
over real HTTP: texts and images on ``/v1/embeddings`` with the official ``openai`` client
(Infinity's ``modality`` in ``extra_body``), the Open Inference Protocol v2 with
``tritonclient``, concurrent text and image requests each batched with their own kind only,
and bad images refused with a 4xx naming them."""

from __future__ import annotations

import base64
import io
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import tritonclient.http as triton
from PIL import Image
from runtime_server import Server, free_port, run_server
from tiny_models import CLIP_DIMS, IMAGE_SIZE, clip
from transformers import CLIPImageProcessor

from batchpilot_contract.lifecycle import EXIT_MODEL_REFUSED


def png(color: tuple[int, int, int], size: tuple[int, int] = (48, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


RED, BLUE = png((220, 30, 30)), png((30, 30, 220), (20, 64))


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("multimodal")
    model = clip(tmp / "clip")
    # A batch waits for company, so that the concurrent requests below share batches.
    config = '{"maxBatchSize": 32, "maxWaitMs": 50}'
    args = ("--model", f"file://{model}", "--task", "multimodal-embedding")
    with run_server(tmp, *args, config=config, env={"BATCHPILOT_THREADS": "1"}) as s:
        s.model_dir = model  # type: ignore[attr-defined]
        yield s


def test_the_openai_client_embeds_texts_and_images_in_one_space(server: Server) -> None:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    texts = client.embeddings.create(model="clip", input=["a red square", "a blue bar"])
    images = client.embeddings.create(
        model="clip", input=[data_url(RED), data_url(BLUE)], extra_body={"modality": "image"}
    )
    vectors = [np.asarray(d.embedding) for d in texts.data + images.data]
    assert all(v.shape == (CLIP_DIMS,) for v in vectors)
    assert all(np.linalg.norm(v) == pytest.approx(1.0, abs=1e-4) for v in vectors)
    assert not np.allclose(vectors[2], vectors[3])
    assert texts.usage.prompt_tokens > 4
    # One space: a text and an image compare by cosine, as CLIP's logits do.
    assert -1.0 <= float(vectors[0] @ vectors[2]) <= 1.0


def test_tritonclient_sends_texts_images_and_pixel_tensors(server: Server) -> None:
    meta = httpx.get(server.url + "/v2/models/clip").json()
    assert meta["parameters"]["image_shape"] == [3, IMAGE_SIZE, IMAGE_SIZE]
    processor = CLIPImageProcessor.from_pretrained(str(server.model_dir))  # type: ignore[attr-defined]
    red = Image.open(io.BytesIO(RED)).convert("RGB")
    pixels = np.asarray(processor(images=[red], return_tensors="np")["pixel_values"], np.float32)
    text = triton.InferInput("text", [2], "BYTES")
    text.set_data_from_numpy(np.array(["a red square", "a blue bar"], dtype=object))
    encoded = triton.InferInput("image", [1], "BYTES")
    encoded.set_data_from_numpy(np.array([RED], dtype=object))
    tensor = triton.InferInput("pixel_values", list(pixels.shape), "FP32")
    tensor.set_data_from_numpy(pixels)
    with triton.InferenceServerClient(server.url.removeprefix("http://")) as client:
        from_text = client.infer("clip", [text]).as_numpy("embedding")
        from_bytes = client.infer("clip", [encoded]).as_numpy("embedding")
        from_tensor = client.infer("clip", [tensor]).as_numpy("embedding")
    assert from_text is not None
    assert from_bytes is not None
    assert from_tensor is not None
    assert from_text.shape == (2, CLIP_DIMS)
    np.testing.assert_allclose(from_bytes, from_tensor, atol=1e-5)
    rest = httpx.post(
        server.url + "/v1/embeddings", json={"modality": "image", "input": data_url(RED)}
    )
    np.testing.assert_allclose(from_bytes[0], rest.json()["data"][0]["embedding"], atol=1e-5)


def test_concurrent_texts_and_images_batch_with_their_own_kind(server: Server) -> None:
    before = httpx.get(server.url + "/stats").json()
    bodies = [{"input": [f"text {i}"]} for i in range(6)]
    bodies += [{"modality": "image", "input": [data_url(RED)]} for _ in range(6)]
    with ThreadPoolExecutor(12) as pool:
        answers = list(
            pool.map(
                lambda b: httpx.post(server.url + "/v1/embeddings", json=b, timeout=30), bodies
            )
        )
    assert all(a.status_code == 200 for a in answers)
    after = httpx.get(server.url + "/stats").json()
    assert after["items"] - before["items"] == 12
    assert after["batches"] - before["batches"] < 12  # requests of one kind shared batches
    # The backend refuses a batch that mixes texts and images, which the batcher would split:
    # no split means no batch ever held both.
    assert after["batch_splits"] == before["batch_splits"]
    assert after["items_failed"] == before["items_failed"]


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        (
            {"modality": "image", "input": [data_url(RED), data_url(b"not an image")]},
            422,
            "input[1]",
        ),
        ({"modality": "image", "input": [data_url(RED[:80])]}, 422, "input[0]"),
        ({"modality": "video", "input": ["x"]}, 422, "modality"),
        ({"input": ["x"], "dimensions": CLIP_DIMS + 1}, 422, "dimensions"),
    ],
    ids=["not an image", "truncated", "unknown modality", "dimensions over"],
)
def test_bad_inputs_are_refused_and_the_server_serves_on(
    server: Server, body: dict[str, object], status: int, field: str
) -> None:
    response = httpx.post(server.url + "/v1/embeddings", json=body, timeout=30)
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == field
    good = httpx.post(server.url + "/v1/embeddings", json={"input": "still here"}, timeout=30)
    assert good.status_code == 200


REFUSED_LOAD = """
import sys
from batchpilot_runtime.__main__ import serve
from batchpilot_runtime.backends import ModelRefused
from batchpilot_runtime.settings import parse_settings

def load():
    raise ModelRefused("task multimodal-embedding: the model at m (bert) has no image tower")

sys.exit(serve(parse_settings(sys.argv[1:]), load))
"""


def test_a_refused_model_ends_the_process_with_its_own_status(tmp_path: Path) -> None:
    # The runtime's own serve() with a loader that refuses the model, as the torch one does.
    args = ["--model", "/models/m", "--config", str(tmp_path / "batching.json")]
    args += ["--host", "127.0.0.1", "--port", str(free_port())]
    done = subprocess.run(
        [sys.executable, "-c", REFUSED_LOAD, *args], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == EXIT_MODEL_REFUSED, done.stderr
    assert "(bert) has no image tower" in done.stderr
