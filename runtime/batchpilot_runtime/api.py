"""Request bodies of the HTTP API and the JSON they are answered with.

OpenAI-compatible embeddings, a classify endpoint, and the Open Inference Protocol v2 (KServe,
Triton). Bodies are parsed with pydantic straight from bytes; every error names its field.
"""

from __future__ import annotations

import base64
from typing import Any, Literal, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from batchpilot_runtime.backends import ClassificationOutput, EmbeddingOutput, ModelInfo


class ApiError(Exception):
    """An error answer: status, a message naming the problem, and optional headers."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        kind: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.kind = kind
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.status,
            }
        }


class ErrorDetail(BaseModel):
    """What went wrong; ``param`` names the field or header at fault, when one is."""

    message: str
    type: str
    param: str | None
    code: int


class ErrorResponse(BaseModel):
    """The body of every error answer (OpenAI's shape); described in ``/openapi.json``."""

    error: ErrorDetail


class _Body(BaseModel):
    # Strict: JSON true is not a dimension, nor "1" a top_k.
    model_config = ConfigDict(extra="ignore", strict=True)


BodyT = TypeVar("BodyT", bound=BaseModel)


class EmbeddingRequest(_Body):
    input: str | list[str]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None
    modality: Literal["text", "image"] = "text"
    """What ``input`` holds (Infinity's extension): texts, or images as base64 or data URLs
    (``multimodal-embedding`` models only)."""


class ClassifyRequest(_Body):
    input: str | list[str]
    model: str | None = None
    top_k: int | None = Field(default=None, ge=1)


class InferInput(_Body):
    name: str
    shape: list[int]
    datatype: str
    # Absent when the tensor comes as raw bytes after the JSON (parameters.binary_data_size).
    data: list[Any] | None = None
    parameters: dict[str, Any] | None = None


class RequestedOutput(_Body):
    name: str
    parameters: dict[str, Any] | None = None


class InferRequest(_Body):
    id: str | None = None
    inputs: list[InferInput] = Field(min_length=1)
    outputs: list[RequestedOutput] | None = None
    parameters: dict[str, Any] | None = None


def parse(cls: type[BodyT], body: bytes) -> BodyT:
    """Validate a JSON body; a failure is a 422 whose message names each bad field."""
    try:
        return cls.model_validate_json(body)
    except ValidationError as exc:
        problems: dict[str, list[str]] = {}
        for err in exc.errors(include_url=False):
            # Drop the union-member tags pydantic adds ("input.str", "input.list[str]").
            parts = [str(p) for p in err["loc"] if not _is_type_tag(p)]
            problems.setdefault(".".join(parts) or "body", []).append(err["msg"])
        # A union alternative that got deeper ("input.1") explains more than the others.
        for loc in [loc for loc in problems if any(o.startswith(loc + ".") for o in problems)]:
            del problems[loc]
        message = "; ".join(f"{loc}: {' or '.join(msgs)}" for loc, msgs in problems.items())
        raise ApiError(422, message, param=next(iter(problems))) from None


def _is_type_tag(part: object) -> bool:
    return isinstance(part, str) and (part in {"str", "int", "float", "bool"} or "[" in part)


def texts_of(value: str | list[str], field: str = "input") -> list[str]:
    texts = [value] if isinstance(value, str) else value
    if not texts:
        raise ApiError(422, f"{field}: must hold at least one text", param=field)
    return texts


def infer_texts(req: InferRequest) -> list[str]:
    """The texts of an OIP v2 request: one BYTES input, flat or any shape."""
    if len(req.inputs) != 1:
        raise ApiError(422, "inputs: expected exactly one input (the texts)", param="inputs")
    return tensor_texts(req.inputs[0], 0)


def tensor_texts(tensor: InferInput, i: int) -> list[str]:
    """The texts of OIP v2 input ``i``: a BYTES tensor of strings, flat or any shape."""
    if tensor.datatype.upper() != "BYTES":
        raise ApiError(
            422,
            f"inputs[{i}].datatype: expected BYTES, got {tensor.datatype}",
            param=f"inputs.{i}.datatype",
        )
    flat = flatten(tensor.data or [])
    if not all(isinstance(t, str) for t in flat):
        raise ApiError(
            422, f"inputs[{i}].data: every element must be a string", param=f"inputs.{i}.data"
        )
    check_shape(tensor, i, len(flat))
    return texts_of(flat, f"inputs[{i}].data")


def check_shape(tensor: InferInput, i: int, elements: int) -> None:
    """Refuse a shape with a negative dimension or one that does not hold ``elements``."""
    if any(dim < 0 for dim in tensor.shape):
        raise ApiError(
            422,
            f"inputs[{i}].shape: {tensor.shape} has a negative dimension",
            param=f"inputs.{i}.shape",
        )
    if _element_count(tensor.shape, elements) != elements:
        raise ApiError(
            422,
            f"inputs[{i}].shape: {tensor.shape} does not match the {elements} elements of data",
            param=f"inputs.{i}.shape",
        )


def _element_count(shape: list[int], cap: int) -> int:
    """The product of ``shape`` (0 for ``[]``), or ``cap + 1`` for any product over ``cap``.

    Exact integers, never numpy's int64 product, which wraps around and can match any length;
    the cap keeps a long shape of huge dimensions cheap.
    """
    count = 1 if shape else 0
    for dim in shape:
        count = min(count * dim, cap + 1)
    return count


def flatten(data: list[Any]) -> list[Any]:
    """The elements of a tensor's ``data``, flat or nested row-major, in order."""
    out: list[Any] = []
    for value in data:
        if isinstance(value, list):
            out.extend(flatten(value))
        else:
            out.append(value)
    return out


# -- responses ---------------------------------------------------------------------------------


def _list_response(data: list[dict[str, Any]], model: str, tokens: int) -> dict[str, Any]:
    """The OpenAI-style envelope of a list of results, with the prompt's token count."""
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def embeddings_response(
    outputs: list[EmbeddingOutput],
    *,
    model: str,
    encoding_format: str,
    dimensions: int | None,
    normalized: bool,
) -> dict[str, Any]:
    data = []
    for i, out in enumerate(outputs):
        vector = out.vector
        if dimensions is not None and dimensions < vector.shape[0]:
            vector = vector[:dimensions]
            if normalized:
                vector = vector / max(float(np.linalg.norm(vector)), 1e-12)
        embedding: Any
        if encoding_format == "base64":
            embedding = base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
        else:
            embedding = vector.tolist()
        data.append({"object": "embedding", "index": i, "embedding": embedding})
    return _list_response(data, model, sum(out.tokens for out in outputs))


def classify_response(
    outputs: list[ClassificationOutput], *, model: str, labels: tuple[str, ...], top_k: int | None
) -> dict[str, Any]:
    data = []
    for i, out in enumerate(outputs):
        order = np.argsort(-out.scores, kind="stable")[: top_k or len(labels)]
        ranked = [{"label": labels[j], "score": float(out.scores[j])} for j in order]
        data.append(
            {"index": i, "label": ranked[0]["label"], "score": ranked[0]["score"], "labels": ranked}
        )
    return _list_response(data, model, sum(out.tokens for out in outputs))


def infer_response(
    outputs: list[Any], *, model: str, info: ModelInfo, request_id: str | None
) -> dict[str, Any]:
    n = len(outputs)
    tensors: list[dict[str, Any]]
    if info.task == "embedding":
        matrix = np.stack([out.vector for out in outputs])
        tensors = [
            {
                "name": "embedding",
                "datatype": "FP32",
                "shape": list(matrix.shape),
                "data": matrix.ravel().tolist(),
            }
        ]
    else:
        scores = np.stack([out.scores for out in outputs])
        best = scores.argmax(axis=1)
        tensors = [
            {
                "name": "label",
                "datatype": "BYTES",
                "shape": [n],
                "data": [info.labels[j] for j in best],
            },
            {
                "name": "score",
                "datatype": "FP32",
                "shape": [n],
                "data": scores[np.arange(n), best].tolist(),
            },
            {
                "name": "scores",
                "datatype": "FP32",
                "shape": list(scores.shape),
                "data": scores.ravel().tolist(),
            },
        ]
    body: dict[str, Any] = {"model_name": model, "outputs": tensors}
    if request_id is not None:
        body["id"] = request_id
    return body


def model_metadata(model: str, info: ModelInfo) -> dict[str, Any]:
    """``GET /v2/models/{name}``."""
    if info.task == "embedding":
        outputs = [{"name": "embedding", "datatype": "FP32", "shape": [-1, info.dimensions]}]
    else:
        n = len(info.labels)
        outputs = [
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
            {"name": "score", "datatype": "FP32", "shape": [-1]},
            {"name": "scores", "datatype": "FP32", "shape": [-1, n]},
        ]
    return {
        "name": model,
        "versions": ["1"],
        "platform": "pytorch_transformers",
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
        "outputs": outputs,
        "parameters": {"task": info.task, "labels": list(info.labels)},
    }
