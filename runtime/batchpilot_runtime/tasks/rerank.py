"""The ``rerank`` task: a cross-encoder scores (query, document) pairs.

``POST /v1/rerank`` takes the body that Cohere, Jina, vLLM and Infinity share (``query``,
``documents``, ``top_n``, ``return_documents``) and answers as vLLM and Jina do: ``results``
sorted by ``relevance_score``, highest first, each with the document's ``index`` in the
request, plus ``model`` and ``usage``. The score is the sigmoid of the model's single output
(as sentence-transformers' ``CrossEncoder`` and vLLM give it), in [0, 1].

The Open Inference Protocol v2 form takes two BYTES inputs, ``query`` (one element, or one per
document) and ``document``, and gives ``score`` and ``logit`` per document, in input order.
"""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from batchpilot_runtime.api import ApiError, InferRequest, tensor_texts
from batchpilot_runtime.backends import ModelInfo, RerankOutput

Pair = tuple[str, str]


class RerankRequest(BaseModel):
    """``POST /v1/rerank``: rank ``documents`` by relevance to ``query``."""

    model_config = ConfigDict(extra="ignore", strict=True)

    query: str = Field(min_length=1)
    documents: list[str] = Field(min_length=1)
    model: str | None = None
    top_n: int | None = Field(default=None, ge=1)
    """How many results to return, best first (default: all)."""
    return_documents: bool = False
    """Whether each result carries its document's text."""


def pairs_of(query: str, documents: list[str]) -> list[Pair]:
    """One batch item per document: the pair the cross-encoder reads."""
    return [(query, document) for document in documents]


def rerank_response(
    outputs: list[RerankOutput],
    *,
    documents: list[str],
    model: str,
    top_n: int | None,
    return_documents: bool,
) -> dict[str, Any]:
    """The ranked results; ties keep the request's order."""
    # Ranked by logit: the sigmoid saturates, and two scores of 1.0 can differ in logit.
    order = sorted(range(len(outputs)), key=lambda i: -outputs[i].logit)
    results = []
    for i in order[: top_n or len(order)]:
        result: dict[str, Any] = {"index": i, "relevance_score": outputs[i].score}
        if return_documents:
            result["document"] = {"text": documents[i]}
        results.append(result)
    tokens = sum(out.tokens for out in outputs)
    return {
        "id": f"rerank-{uuid.uuid4().hex}",
        "object": "rerank",
        "model": model,
        "results": results,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


# -- Open Inference Protocol v2 -----------------------------------------------------------------

INPUT_NAMES = ("query", "document")


def infer_pairs(req: InferRequest) -> list[Pair]:
    """The pairs of an OIP v2 request: BYTES inputs ``query`` and ``document``."""
    by_name = {tensor.name: i for i, tensor in enumerate(req.inputs)}
    missing = [name for name in INPUT_NAMES if name not in by_name]
    if missing or len(req.inputs) != len(INPUT_NAMES):
        names = ", ".join(repr(t.name) for t in req.inputs)
        raise ApiError(
            422,
            f"inputs: expected two BYTES inputs named 'query' and 'document', got {names}",
            param="inputs",
        )
    q, d = by_name["query"], by_name["document"]
    queries = tensor_texts(req.inputs[q], q)
    documents = tensor_texts(req.inputs[d], d)
    if len(queries) == 1:
        queries = queries * len(documents)
    elif len(queries) != len(documents):
        raise ApiError(
            422,
            f"inputs[{q}].data: {len(queries)} queries for {len(documents)} documents; send "
            "one query, or one per document",
            param=f"inputs.{q}.data",
        )
    for i, query in enumerate(queries):
        if not query:
            raise ApiError(422, f"inputs[{q}].data[{i}]: empty query", param=f"inputs.{q}.data")
    return list(zip(queries, documents, strict=True))


def infer_response(
    outputs: list[RerankOutput], *, model: str, request_id: str | None
) -> dict[str, Any]:
    """Scores in input order (a tensor protocol does not sort)."""
    n = len(outputs)
    body: dict[str, Any] = {
        "model_name": model,
        "outputs": [
            {
                "name": "score",
                "datatype": "FP32",
                "shape": [n],
                "data": [o.score for o in outputs],
            },
            {
                "name": "logit",
                "datatype": "FP32",
                "shape": [n],
                "data": [o.logit for o in outputs],
            },
        ],
    }
    if request_id is not None:
        body["id"] = request_id
    return body


def model_metadata(model: str, info: ModelInfo) -> dict[str, Any]:
    """``GET /v2/models/{name}`` of a reranker."""
    return {
        "name": model,
        "versions": ["1"],
        "platform": "pytorch_transformers",
        "inputs": [
            {"name": "query", "datatype": "BYTES", "shape": [-1]},
            {"name": "document", "datatype": "BYTES", "shape": [-1]},
        ],
        "outputs": [
            {"name": "score", "datatype": "FP32", "shape": [-1]},
            {"name": "logit", "datatype": "FP32", "shape": [-1]},
        ],
        "parameters": {"task": info.task, "labels": []},
    }
