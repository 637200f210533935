"""The runtime serving a small classification model (built from a config) over real HTTP:
``/v1/classify`` and the Open Inference Protocol v2."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import httpx
import pytest
import torch
from runtime_server import Server, minilm_path, run_server
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

LABELS = {0: "negative", 1: "neutral", 2: "positive"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    model_dir = tmp_path_factory.mktemp("classifier") / "sentiment"
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_path()), local_files_only=True)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        id2label=LABELS,
        label2id={v: k for k, v in LABELS.items()},
    )
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    try:
        with run_server(
            model_dir.parent, "--model", f"file://{model_dir}", "--task", "classification"
        ) as s:
            yield s
    finally:
        shutil.rmtree(model_dir, ignore_errors=True)


def test_classify_returns_labels_and_scores(server: Server) -> None:
    response = httpx.post(
        server.url + "/v1/classify", json={"input": ["great film", "awful film"], "top_k": 2}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == "sentiment"
    for row in body["data"]:
        assert row["label"] in LABELS.values()
        assert len(row["labels"]) == 2
        assert row["labels"][0]["score"] >= row["labels"][1]["score"]
        assert row["score"] == row["labels"][0]["score"]


def test_open_inference_protocol_v2(server: Server) -> None:
    assert httpx.get(server.url + "/v2/health/live").json() == {"live": True}
    assert httpx.get(server.url + "/v2/health/ready").json() == {"ready": True}
    meta = httpx.get(server.url + "/v2/models/sentiment").json()
    assert meta["parameters"]["labels"] == list(LABELS.values())
    request = {
        "id": "42",
        "inputs": [{"name": "text", "shape": [3], "datatype": "BYTES", "data": ["a", "b", "c"]}],
    }
    response = httpx.post(server.url + "/v2/models/sentiment/infer", json=request)
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == "42"
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["label"]["shape"] == [3]
    assert outputs["scores"]["shape"] == [3, 3]
    row_sums = [sum(outputs["scores"]["data"][i * 3 : i * 3 + 3]) for i in range(3)]
    assert row_sums == pytest.approx([1.0, 1.0, 1.0], abs=1e-4)
    bad = httpx.post(server.url + "/v2/models/sentiment/infer", json={"inputs": [{"name": "x"}]})
    assert bad.status_code == 422
    assert bad.json()["error"]["message"].startswith("inputs.0.")
