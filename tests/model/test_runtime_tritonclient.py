"""The official ``tritonclient`` against ``/v2/models/{name}/infer``, in its default request
form: tensors in the binary data extension, both ways."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.http as triton
from runtime_server import Server, run_server

TEXTS = ["Kubernetes schedules pods onto nodes.", "hi", "naïve café"]


@pytest.fixture(scope="module")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("triton-embedding")
    model = ("--model", "emulated://minilm-l6-datacenter-gpu", "--name", "minilm")
    with run_server(tmp, *model) as server:
        yield server


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("triton-classification")
    model = ("--model", "emulated://minilm-l6-datacenter-gpu", "--name", "sentiment")
    with run_server(tmp, *model, "--task", "classification") as server:
        yield server


def client(server: Server) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(server.url.removeprefix("http://"))


def texts_input(binary: bool = True) -> triton.InferInput:
    tensor = triton.InferInput("text", [len(TEXTS)], "BYTES")
    tensor.set_data_from_numpy(np.array(TEXTS, dtype=object), binary_data=binary)
    return tensor


def test_default_request_form_binary_in_and_out(embedder: Server) -> None:
    with client(embedder) as c:
        assert c.is_model_ready("minilm")
        result = c.infer("minilm", [texts_input()])
        vectors = result.as_numpy("embedding")
        # The same answer as over plain JSON.
        plain = c.infer(
            "minilm",
            [texts_input(binary=False)],
            outputs=[triton.InferRequestedOutput("embedding", binary_data=False)],
        ).as_numpy("embedding")
    assert vectors is not None
    assert plain is not None
    assert vectors.dtype == np.float32
    assert vectors.shape == (len(TEXTS), 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(vectors, plain, rtol=1e-6)


def test_classification_outputs_in_binary_with_bytes_labels(classifier: Server) -> None:
    with client(classifier) as c:
        outputs = [triton.InferRequestedOutput(n) for n in ("label", "score", "scores")]
        result = c.infer("sentiment", [texts_input()], outputs=outputs)
    labels = result.as_numpy("label")
    scores = result.as_numpy("scores")
    assert labels is not None
    assert scores is not None
    assert labels.shape == (len(TEXTS),)
    assert {label.decode() for label in labels} <= {"negative", "positive"}
    assert scores.shape == (len(TEXTS), 2)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-5)


def test_a_refused_request_reaches_the_client_as_an_error(embedder: Server) -> None:
    numbers = triton.InferInput("text", [1], "FP32")
    numbers.set_data_from_numpy(np.array([1.0], dtype=np.float32))
    with client(embedder) as c, pytest.raises(triton.InferenceServerException) as error:
        c.infer("minilm", [numbers])
    assert error.value.status() == "422"
