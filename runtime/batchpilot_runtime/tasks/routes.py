"""Routes and handlers of the ``rerank``, ``image-classification`` and
``multimodal-embedding`` tasks.

:func:`install` adds ``POST /v1/rerank``; the app hands ``/v1/classify`` of an image model to
:func:`classify_images`, ``/v1/embeddings`` of a text and image embedder to
:func:`embed_multimodal`, and ``/v2/models/{name}/infer`` of these tasks to :func:`infer`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from batchpilot_runtime import api, images, oip_binary, openapi
from batchpilot_runtime.api import ApiError
from batchpilot_runtime.backends import (
    IMAGE_KIND,
    RERANK_KIND,
    ModelInfo,
    Task,
    multimodal_kind,
)
from batchpilot_runtime.service import Runtime
from batchpilot_runtime.tasks import multimodal, rerank

Handler = Callable[[bytes, int], Awaitable[dict[str, Any] | Response]]
Inference = Callable[[Request, Handler], Awaitable[Response]]

OWN_TASKS: tuple[Task, ...] = ("rerank", "image-classification", "multimodal-embedding")
"""Tasks whose OIP v2 requests and metadata are handled here."""


def install(app: FastAPI, runtime: Runtime, inference: Inference) -> None:
    """Add the routes of these tasks to ``app``."""

    @app.post(
        "/v1/rerank",
        openapi_extra=openapi.request_body(rerank.RerankRequest),
        responses=openapi.errors(*openapi.INFERENCE_ERRORS),
    )
    async def rerank_route(request: Request) -> Response:
        async def handle(body: bytes, priority: int) -> dict[str, Any]:
            req = api.parse(rerank.RerankRequest, body)
            runtime.check_model(req.model)
            if runtime.info.task != "rerank":
                raise ApiError(400, f"model: {runtime.name!r} is not a reranking model")
            runtime.check_texts([req.query], "query")
            runtime.check_texts(req.documents, "documents")
            pairs = rerank.pairs_of(req.query, req.documents)
            outputs = await runtime.infer(
                request, RERANK_KIND, pairs, priority, lengths=_pair_lengths(pairs)
            )
            return rerank.rerank_response(
                outputs,
                documents=req.documents,
                model=runtime.name,
                top_n=req.top_n,
                return_documents=req.return_documents,
            )

        return await inference(request, handle)


def image_limits(runtime: Runtime) -> images.ImageLimits:
    s = runtime.settings
    return images.ImageLimits(max_bytes=s.max_image_bytes, max_pixels=s.max_image_pixels)


def most_images(runtime: Runtime) -> int:
    """The most images one request may hold (as for texts)."""
    return min(runtime.settings.max_inputs, runtime.config().max_queue)


async def classify_images(
    runtime: Runtime, request: Request, body: bytes, priority: int
) -> dict[str, Any]:
    """``POST /v1/classify`` of an image classifier: JSON or multipart."""
    from batchpilot_runtime.tasks import image_classification as ic  # Pillow: image models only

    limits = image_limits(runtime)
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media == "multipart/form-data":
        req, items = await ic.from_multipart(body, request.headers, limits, most_images(runtime))
    else:
        req, items = await ic.from_json(body, limits, most_images(runtime))
    runtime.check_model(req.model)
    outputs = await runtime.infer(request, IMAGE_KIND, items, priority, lengths=[1] * len(items))
    return api.classify_response(
        outputs, model=runtime.name, labels=runtime.info.labels, top_k=req.top_k
    )


async def embed_multimodal(
    runtime: Runtime, req: api.EmbeddingRequest, request: Request, priority: int
) -> dict[str, Any]:
    """``POST /v1/embeddings`` of a text and image embedder: texts or images, by ``modality``."""
    from batchpilot_runtime.tasks import image_classification as ic  # Pillow: image models only

    multimodal.check_dimensions(req, runtime.info)
    normalize = runtime.settings.normalize
    items: list[Any]
    if req.modality == "image":
        items = await ic.decode_input(req.input, image_limits(runtime), most_images(runtime))
        lengths = [1] * len(items)
    else:
        items = api.texts_of(req.input)
        runtime.check_texts(items, "input")
        lengths = [len(t) for t in items]
    kind = multimodal_kind(req.modality, normalize)
    outputs = await runtime.infer(request, kind, items, priority, lengths=lengths)
    return api.embeddings_response(
        outputs,
        model=runtime.name,
        encoding_format=req.encoding_format,
        dimensions=req.dimensions,
        normalized=normalize,
    )


async def infer(
    runtime: Runtime, request: Request, name: str, body: bytes, priority: int
) -> Response:
    """``POST /v2/models/{name}/infer`` of a reranker, an image classifier or embedder."""
    info = runtime.info
    is_image = info.task in ("image-classification", "multimodal-embedding")
    header, binary = oip_binary.split_body(body, request.headers.get(oip_binary.HEADER))
    req = api.parse(api.InferRequest, header)
    oip_binary.attach_inputs(req, binary, raw_bytes=is_image and _holds_images(req))
    oip_binary.select_outputs(req, [o["name"] for o in model_metadata(name, info)["outputs"]])
    answer: dict[str, Any]
    if info.task == "multimodal-embedding":
        answer = await _infer_multimodal(runtime, request, req, priority)
    elif is_image:
        from batchpilot_runtime.tasks import image_classification as ic

        items = await ic.from_infer(req, info, image_limits(runtime), most_images(runtime))
        outputs = await runtime.infer(
            request, IMAGE_KIND, items, priority, lengths=[1] * len(items)
        )
        answer = api.infer_response(outputs, model=runtime.name, info=info, request_id=req.id)
    else:
        pairs = rerank.infer_pairs(req)
        runtime.check_texts([q for q, _ in pairs], "inputs.query")
        runtime.check_texts([d for _, d in pairs], "inputs.document")
        outputs = await runtime.infer(
            request, RERANK_KIND, pairs, priority, lengths=_pair_lengths(pairs)
        )
        answer = rerank.infer_response(outputs, model=runtime.name, request_id=req.id)
    content, headers, media_type = oip_binary.render(req, answer)
    return Response(content, media_type=media_type, headers=headers)


async def _infer_multimodal(
    runtime: Runtime, request: Request, req: api.InferRequest, priority: int
) -> dict[str, Any]:
    from batchpilot_runtime.tasks import image_classification as ic

    modality = multimodal.infer_modality(req)
    normalize = multimodal.normalize_of(req, runtime.settings.normalize)
    items: list[Any]
    if modality == "image":
        items = await ic.from_infer(req, runtime.info, image_limits(runtime), most_images(runtime))
        lengths = [1] * len(items)
    else:
        items = api.tensor_texts(req.inputs[0], 0)
        runtime.check_texts(items, "inputs[0].data")
        lengths = [len(t) for t in items]
    kind = multimodal_kind(modality, normalize)
    outputs = await runtime.infer(request, kind, items, priority, lengths=lengths)
    return multimodal.infer_response(outputs, model=runtime.name, request_id=req.id)


def _holds_images(req: api.InferRequest) -> bool:
    # Raw binary tensors of an image input stay bytes; those of a text input become strings.
    return all(t.name != "text" for t in req.inputs)


def model_metadata(name: str, info: ModelInfo) -> dict[str, Any]:
    """``GET /v2/models/{name}`` for any task."""
    if info.task == "rerank":
        return rerank.model_metadata(name, info)
    if info.task == "multimodal-embedding":
        return multimodal.model_metadata(name, info)
    if info.task == "image-classification":
        from batchpilot_runtime.tasks import image_classification as ic

        return ic.model_metadata(name, info)
    return api.model_metadata(name, info)


def _pair_lengths(pairs: list[rerank.Pair]) -> list[int]:
    # Pairs of similar length batch together: less padding.
    return [len(q) + len(d) for q, d in pairs]
