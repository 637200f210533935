"""The runtime serving the real all-MiniLM-L6-v2 over real HTTP."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import torch
from runtime_server import Server, minilm_path, run_server
from transformers import AutoModel, AutoTokenizer

from batchpilot_contract import metrics

TEXTS = [
    "A man is eating food.",
    "The new movie is awesome and everyone should see it this weekend.",
    "Kubernetes schedules pods onto nodes.",
    "hi",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("minilm")
    config = json.dumps({"maxBatchSize": 32, "maxWaitMs": 5, "generation": 1})
    with run_server(tmp, "--model", str(minilm_path()), "--name", "minilm", config=config) as s:
        yield s


def reference_embeddings(texts: list[str]) -> np.ndarray:
    """The same model run directly: mean pooling over the attention mask, L2-normalised."""
    path = str(minilm_path())
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    with torch.inference_mode():
        enc = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        hidden = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1)
        return torch.nn.functional.normalize(pooled, dim=1).numpy()


def test_embeddings_match_the_model_run_directly(server: Server) -> None:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    result = client.embeddings.create(model="minilm", input=TEXTS)
    served = np.array([d.embedding for d in result.data])
    assert served.shape == (len(TEXTS), 384)
    expected = reference_embeddings(TEXTS)
    cosine = (served * expected).sum(1) / (
        np.linalg.norm(served, axis=1) * np.linalg.norm(expected, axis=1)
    )
    assert cosine.min() >= 0.9999
    assert result.usage.prompt_tokens > 0


async def burst(url: str, n: int, texts: list[str] | None = None) -> list[int]:
    """``n`` concurrent one-text requests; the status of each."""
    limits = httpx.Limits(max_connections=n)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def one(i: int) -> int:
            text = (texts or TEXTS)[i % len(texts or TEXTS)]
            response = await client.post("/v1/embeddings", json={"input": f"{text} {i}"})
            return response.status_code

        return list(await asyncio.gather(*(one(i) for i in range(n))))


def test_concurrent_clients_are_batched(server: Server) -> None:
    before = server.metrics()
    assert asyncio.run(burst(server.url, 32)) == [200] * 32
    after = server.metrics()
    items = after[f"{metrics.BATCH_SIZE}_sum"] - before[f"{metrics.BATCH_SIZE}_sum"]
    batches = after[f"{metrics.BATCH_SIZE}_count"] - before[f"{metrics.BATCH_SIZE}_count"]
    assert items == 32
    assert items / batches > 1


def wait_for_config(server: Server, name: str, value: float, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if server.metrics().get(name) == value:
            return True
        time.sleep(0.05)
    return False


def test_a_rewritten_config_file_changes_the_batch_size(server: Server) -> None:
    server.config.write_text(json.dumps({"maxBatchSize": 4, "maxWaitMs": 5, "generation": 2}))
    try:
        assert wait_for_config(server, metrics.CONFIG_MAX_BATCH_SIZE, 4.0, within=2.0)
        assert server.metrics()[metrics.CONFIG_GENERATION] == 2.0
        before = server.metrics()
        assert asyncio.run(burst(server.url, 32)) == [200] * 32
        after = server.metrics()
        le4 = f'{metrics.BATCH_SIZE}_bucket{{le="4.0"}}'
        count = f"{metrics.BATCH_SIZE}_count"
        assert after[count] - before[count] >= 8  # 32 items, at most 4 per batch
        assert after[le4] - before[le4] == after[count] - before[count]

        server.config.write_text('{"maxBatchSize": "not a number"}')
        time.sleep(0.5)  # a few reload intervals: the invalid file is read and ignored
        stats = httpx.get(server.url + "/stats").json()
        assert stats["config"]["maxBatchSize"] == 4
        assert "maxBatchSize" in stats["config_error"]
    finally:
        server.config.write_text(json.dumps({"maxBatchSize": 32, "maxWaitMs": 5, "generation": 3}))
        assert wait_for_config(server, metrics.CONFIG_GENERATION, 3.0, within=5.0)


def test_overload_gets_exactly_one_answer_per_request(server: Server) -> None:
    server.config.write_text(
        json.dumps({"maxBatchSize": 2, "maxQueue": 4, "maxWaitMs": 0, "generation": 4})
    )
    try:
        assert wait_for_config(server, metrics.CONFIG_GENERATION, 4.0, within=5.0)
        before = server.metrics()
        statuses = asyncio.run(burst(server.url, 64))
        after = server.metrics()
        ok, refused = statuses.count(200), statuses.count(429)
        assert ok + refused == 64
        assert ok >= 4
        assert refused >= 1

        def delta(outcome: str) -> float:
            name = f'{metrics.REQUESTS_TOTAL}{{outcome="{outcome}"}}'
            return after[name] - before[name]

        assert (delta("ok"), delta("rejected")) == (ok, refused)
        assert sum(delta(o) for o in metrics.OUTCOMES) == 64
    finally:
        server.config.write_text(json.dumps({"maxBatchSize": 32, "maxWaitMs": 5, "generation": 5}))
        assert wait_for_config(server, metrics.CONFIG_GENERATION, 5.0, within=5.0)


def test_sigterm_finishes_what_was_accepted_then_exits_zero(tmp_path: Path) -> None:
    long_texts = [" ".join(["the quick brown fox jumps over the lazy dog"] * 12)] * 4
    config = json.dumps({"maxBatchSize": 8, "maxWaitMs": 5})
    with run_server(tmp_path, "--model", str(minilm_path()), config=config) as s:

        async def scenario() -> list[int]:
            async with httpx.AsyncClient(base_url=s.url, timeout=120) as client:
                tasks = [
                    asyncio.ensure_future(
                        client.post("/v1/embeddings", json={"input": long_texts * 4})
                    )
                    for _ in range(6)
                ]
                for _ in range(2000):
                    stats = (await client.get("/stats")).json()
                    if stats["queue_depth"] >= 1:
                        break
                    await asyncio.sleep(0.01)
                s.process.terminate()
                return [(await t).status_code for t in tasks]

        assert asyncio.run(scenario()) == [200] * 6
        assert s.process.wait(timeout=120) == 0
