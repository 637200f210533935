"""The runtime serving a tiny cross-encoder (random weights, MiniLM's tokenizer) over real
HTTP: ``/v1/rerank``, the Open Inference Protocol v2 with ``tritonclient``, pairs of
and pairs of concurrent requests batched together (a multi-output model refused as a
reranker is in the unit layer: tests/unit/test_runtime_backend_tasks.py)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from runtime_server import Server, run_server
from tiny_models import reranker

QUERY = "how do pods get scheduled?"
DOCS = [
    "The scheduler assigns pods to nodes.",
    "Paris is the capital of France.",
    "Kubelets run the containers of a pod.",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("rerank")
    model = reranker(tmp / "ranker")
    # A batch waits for company, so that the concurrent requests below share batches.
    config = '{"maxBatchSize": 32, "maxWaitMs": 50}'
    with run_server(tmp, "--model", f"file://{model}", "--task", "rerank", config=config) as s:
        yield s


def test_rerank_returns_sorted_results(server: Server) -> None:
    body = {"query": QUERY, "documents": DOCS, "return_documents": True}
    response = httpx.post(server.url + "/v1/rerank", json=body, timeout=30)
    assert response.status_code == 200
    answer = response.json()
    assert answer["model"] == "ranker"
    results = answer["results"]
    assert sorted(r["index"] for r in results) == [0, 1, 2]
    scores = [r["relevance_score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    assert all(r["document"]["text"] == DOCS[r["index"]] for r in results)
    assert answer["usage"]["total_tokens"] > 3 * 4
    top = httpx.post(server.url + "/v1/rerank", json={**body, "top_n": 1}, timeout=30).json()
    assert top["results"] == results[:1]


def test_tritonclient_scores_each_pair_in_input_order(server: Server) -> None:
    rest = httpx.post(server.url + "/v1/rerank", json={"query": QUERY, "documents": DOCS})
    by_index = {r["index"]: r["relevance_score"] for r in rest.json()["results"]}
    query = triton.InferInput("query", [1], "BYTES")
    query.set_data_from_numpy(np.array([QUERY], dtype=object))
    documents = triton.InferInput("document", [len(DOCS)], "BYTES")
    documents.set_data_from_numpy(np.array(DOCS, dtype=object))
    with triton.InferenceServerClient(server.url.removeprefix("http://")) as client:
        scores = client.infer("ranker", [query, documents]).as_numpy("score")
    assert scores is not None
    np.testing.assert_allclose(scores, [by_index[i] for i in range(3)], rtol=1e-5)


def test_pairs_of_concurrent_requests_share_batches(server: Server) -> None:
    before = server.metrics()
    bodies = [{"query": f"query {i}", "documents": DOCS[:2]} for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(lambda b: httpx.post(server.url + "/v1/rerank", json=b, timeout=30), bodies)
        )
    assert all(a.status_code == 200 for a in answers)
    after = server.metrics()
    items = after["batchpilot_batch_size_sum"] - before["batchpilot_batch_size_sum"]
    batches = after["batchpilot_batch_size_count"] - before["batchpilot_batch_size_count"]
    assert items == 16
    assert batches < 8  # more than one request's pairs in some batch


def test_bad_requests_name_the_field(server: Server) -> None:
    missing = httpx.post(server.url + "/v1/rerank", json={"query": "q"})
    assert missing.status_code == 422
    assert missing.json()["error"]["param"] == "documents"
    text = httpx.post(server.url + "/v1/embeddings", json={"input": "x"})
    assert text.status_code == 400
    assert "not an embedding model" in text.json()["error"]["message"]
