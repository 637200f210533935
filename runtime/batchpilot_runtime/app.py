"""The HTTP app: OpenAI-compatible embeddings, classify, rerank, Open Inference Protocol v2,
health, ``/stats`` and ``/metrics``, over one batcher per model worker (the rerank and image
routes are in :mod:`batchpilot_runtime.tasks.routes`).

The app starts answering health checks at once; the model loads and warms up in the
background, and only then does ``/v2/health/ready`` turn 200 and inference open. On SIGTERM
readiness turns false while requests are still served for the drain delay; then the server
stops accepting, finishes what it accepted (bounded by the graceful timeout), and inference
that still reaches the app is refused with 503 (:mod:`batchpilot_contract.lifecycle`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from batchpilot_contract.metrics import Outcome
from batchpilot_contract.pod import LIVE_PATH, METRICS_PATH, READY_PATH
from batchpilot_runtime import api, oip_binary, openapi
from batchpilot_runtime.api import ApiError
from batchpilot_runtime.backends import (
    CLASSIFICATION_KIND,
    ClassificationOutput,
    EmbeddingOutput,
    embedding_kind,
)
from batchpilot_runtime.service import CLIENT_CLOSED, Loader, Runtime
from batchpilot_runtime.settings import Settings
from batchpilot_runtime.tasks import routes as task_routes
from batchpilot_runtime.tasks.rerank import RerankRequest

__all__ = ["CLIENT_CLOSED", "Loader", "Runtime", "create_app"]

log = logging.getLogger(__name__)

PRIORITY_HEADER = "x-batchpilot-priority"
"""Optional request header: ``high``, ``normal``, ``low`` or an integer (higher goes first)."""
PRIORITY_NAMES = {"high": 1, "normal": 0, "low": -1}

_OUTCOME_OF_STATUS = {
    400: Outcome.INVALID,
    404: Outcome.INVALID,
    408: Outcome.CANCELLED,
    413: Outcome.INVALID,
    422: Outcome.INVALID,
    429: Outcome.REJECTED,
    503: Outcome.REJECTED,
    504: Outcome.TIMEOUT,
    CLIENT_CLOSED: Outcome.CANCELLED,
}


async def _read_body(request: Request, limit: int, within: float) -> bytes:
    """The whole body, within ``limit`` bytes and ``within`` seconds from the start of the read.

    The timeout is for the whole body, not between chunks, so that a client trickling a byte
    at a time cannot hold a connection open either. A late body is answered 408 and counted
    ``cancelled``: like a client that leaves mid-upload, it never finished its request.
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"body: {declared} bytes; at most {limit}", param="body")
    body = bytearray()
    try:
        async with asyncio.timeout(within):
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise ApiError(413, f"body: over {limit} bytes", param="body")
    except ClientDisconnect:
        # The client's doing, not the server's: counted as cancelled, like a later leave.
        raise ApiError(CLIENT_CLOSED, "client closed the request", kind="cancelled") from None
    except TimeoutError:
        of = f" of {declared}" if declared.isdigit() else ""
        raise ApiError(
            408,
            f"body: {len(body)}{of} bytes arrived in {within:g} s; the whole body must arrive "
            "within the body timeout",
            param="body",
            kind="timeout",
            # The rest of the body may still come: close rather than parse it as a request.
            headers={"Connection": "close"},
        ) from None
    return bytes(body)


def _priority(request: Request) -> int:
    raw = request.headers.get(PRIORITY_HEADER)
    if raw is None:
        return 0
    value = raw.strip().lower()
    if value in PRIORITY_NAMES:
        return PRIORITY_NAMES[value]
    try:
        return max(-10, min(10, int(value)))
    except ValueError:
        raise ApiError(
            422,
            f"{PRIORITY_HEADER}: {raw!r}; use high, normal, low or an integer",
            param=PRIORITY_HEADER,
        ) from None


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    # orjson: an embedding's hundreds of floats are most of a response, and the standard
    # encoder's per-float cost is paid on the event loop, holding the GIL.
    return Response(
        orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def _error(exc: ApiError) -> Response:
    return _json(exc.body(), exc.status, exc.headers or None)


def create_app(
    settings: Settings,
    loader: Loader,
    *,
    on_fatal: Callable[[BaseException], None] | None = None,
) -> FastAPI:
    """The ASGI app; ``loader`` returns the model workers (it runs in a thread)."""
    runtime = Runtime(settings, loader, on_fatal=on_fatal)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    # The interactive docs load their scripts from a CDN: served only when asked for.
    docs = settings.docs
    app = FastAPI(
        title="batchpilot runtime",
        version="0.1.0",
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
    )
    openapi.install(
        app, [api.EmbeddingRequest, api.ClassifyRequest, RerankRequest, api.InferRequest]
    )
    app.state.runtime = runtime

    @app.exception_handler(ApiError)
    async def on_api_error(_: Request, exc: ApiError) -> Response:
        return _error(exc)

    @app.exception_handler(HTTPException)
    async def on_http_error(_: Request, exc: HTTPException) -> Response:
        # Starlette's headers carry meaning, such as a 405's Allow (RFC 9110).
        return _error(
            ApiError(
                exc.status_code,
                str(exc.detail),
                kind="invalid_request_error",
                headers=dict(exc.headers or {}),
            )
        )

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(_: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {"loc": ("request",), "msg": "invalid"}
        where = ".".join(str(p) for p in first["loc"])
        return _error(ApiError(422, f"{where}: {first['msg']}", param=where))

    async def inference(
        request: Request, handle: Callable[[bytes, int], Awaitable[dict[str, Any] | Response]]
    ) -> Response:
        """Run one inference request: limits, parsing, outcome and latency accounting."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            runtime.check_accepting()
            body = await _read_body(request, settings.max_body_bytes, settings.body_timeout)
            payload = await handle(body, _priority(request))
        except asyncio.CancelledError:
            if not runtime.draining:
                raise
            # uvicorn cancels what still runs at the graceful timeout: answer it, not cut it.
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            runtime.record(Outcome.REJECTED, None)
            return _error(
                ApiError(
                    503,
                    "shutting down: not finished within the graceful timeout",
                    kind="unavailable",
                    headers={"Connection": "close"},
                )
            )
        except ApiError as exc:
            outcome = _OUTCOME_OF_STATUS.get(exc.status, Outcome.ERROR)
            runtime.record(outcome, loop.time() - start if outcome is Outcome.TIMEOUT else None)
            return _error(exc)
        except Exception as exc:
            log.exception("inference failed")
            runtime.record(Outcome.ERROR, None)
            return _error(ApiError(500, f"internal error: {exc}", kind="server_error"))
        response = payload if isinstance(payload, Response) else _json(payload)
        runtime.record(Outcome.OK, loop.time() - start)
        return response

    @app.post(
        "/v1/embeddings",
        openapi_extra=openapi.request_body(api.EmbeddingRequest),
        responses=openapi.errors(*openapi.INFERENCE_ERRORS),
    )
    async def embeddings(request: Request) -> Response:
        async def handle(body: bytes, priority: int) -> dict[str, Any]:
            req = api.parse(api.EmbeddingRequest, body)
            runtime.check_model(req.model)
            if runtime.info.task == "multimodal-embedding":
                return await task_routes.embed_multimodal(runtime, req, request, priority)
            if runtime.info.task != "embedding":
                raise ApiError(400, f"model: {runtime.name!r} is not an embedding model")
            if req.modality != "text":
                raise ApiError(
                    400, f"modality: {runtime.name!r} embeds texts only", param="modality"
                )
            texts = api.texts_of(req.input)
            runtime.check_texts(texts, "input")
            dims = runtime.info.dimensions or 0
            if req.dimensions is not None and req.dimensions > dims:
                raise ApiError(
                    422, f"dimensions: {req.dimensions} is over {dims}", param="dimensions"
                )
            normalize = settings.normalize
            outputs: list[EmbeddingOutput] = await runtime.infer(
                request, embedding_kind(normalize), texts, priority
            )
            return api.embeddings_response(
                outputs,
                model=runtime.name,
                encoding_format=req.encoding_format,
                dimensions=req.dimensions,
                normalized=normalize,
            )

        return await inference(request, handle)

    @app.post(
        "/v1/classify",
        openapi_extra=openapi.request_body(api.ClassifyRequest),
        responses=openapi.errors(*openapi.INFERENCE_ERRORS),
    )
    async def classify(request: Request) -> Response:
        async def handle(body: bytes, priority: int) -> dict[str, Any]:
            if runtime.info.task == "image-classification":
                return await task_routes.classify_images(runtime, request, body, priority)
            req = api.parse(api.ClassifyRequest, body)
            runtime.check_model(req.model)
            if runtime.info.task != "classification":
                raise ApiError(400, f"model: {runtime.name!r} is not a classification model")
            texts = api.texts_of(req.input)
            runtime.check_texts(texts, "input")
            outputs: list[ClassificationOutput] = await runtime.infer(
                request, CLASSIFICATION_KIND, texts, priority
            )
            return api.classify_response(
                outputs, model=runtime.name, labels=runtime.info.labels, top_k=req.top_k
            )

        return await inference(request, handle)

    @app.post(
        "/v2/models/{name}/infer",
        openapi_extra=openapi.request_body(
            api.InferRequest,
            # The binary tensor data extension: the JSON, then raw tensors (oip_binary).
            extra_content={
                oip_binary.MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}
            },
        ),
        responses=openapi.errors(*openapi.INFERENCE_ERRORS),
    )
    async def infer(name: str, request: Request) -> Response:
        async def handle(body: bytes, priority: int) -> Response:
            runtime.check_model(name)
            if runtime.info.task in task_routes.OWN_TASKS:
                return await task_routes.infer(runtime, request, name, body, priority)
            header, binary = oip_binary.split_body(body, request.headers.get(oip_binary.HEADER))
            req = api.parse(api.InferRequest, header)
            oip_binary.attach_inputs(req, binary)
            metadata = api.model_metadata(name, runtime.info)
            oip_binary.select_outputs(req, [o["name"] for o in metadata["outputs"]])
            texts = api.infer_texts(req)
            runtime.check_texts(texts, "inputs[0].data")
            kind: Hashable = CLASSIFICATION_KIND
            if runtime.info.task == "embedding":
                params = req.parameters or {}
                normalize = params.get("normalize", settings.normalize)
                if not isinstance(normalize, bool):
                    raise ApiError(
                        422, "parameters.normalize: expected a boolean", param="parameters"
                    )
                kind = embedding_kind(normalize)
            outputs = await runtime.infer(request, kind, texts, priority)
            answer = api.infer_response(
                outputs, model=runtime.name, info=runtime.info, request_id=req.id
            )
            content, headers, media_type = oip_binary.render(req, answer)
            return Response(content, media_type=media_type, headers=headers)

        return await inference(request, handle)

    task_routes.install(app, runtime, inference)

    @app.get("/v1/models")
    async def list_models() -> Response:
        return _json({"object": "list", "data": [_openai_model(runtime.name)]})

    @app.get("/v1/models/{name}", responses=openapi.errors(404, 422))
    async def get_model(name: str) -> Response:
        runtime.check_model(name)
        return _json(_openai_model(name))

    @app.get("/v2")
    async def server_metadata() -> Response:
        return _json(
            {"name": "batchpilot", "version": "0.1.0", "extensions": ["binary_tensor_data"]}
        )

    @app.get(LIVE_PATH)
    async def live() -> Response:
        return _json({"live": True})

    @app.get(READY_PATH)
    async def ready() -> Response:
        return _json({"ready": runtime.routable}, 200 if runtime.routable else 503)

    @app.get("/v2/models/{name}/ready", responses=openapi.errors(404, 422))
    async def model_ready(name: str) -> Response:
        runtime.check_model(name)
        return _json({"name": name, "ready": runtime.routable}, 200 if runtime.routable else 503)

    @app.get("/v2/models/{name}", responses=openapi.errors(404, 422, 503))
    async def model_metadata(name: str) -> Response:
        runtime.check_model(name)
        if not runtime.models:
            raise ApiError(503, "model is loading", kind="unavailable")
        return _json(task_routes.model_metadata(name, runtime.info))

    @app.get("/stats")
    async def stats() -> Response:
        return _json(runtime.stats())

    @app.get(METRICS_PATH)
    async def metrics() -> Response:
        return Response(runtime.telemetry.render(), media_type=CONTENT_TYPE_LATEST)

    return app


def _openai_model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "batchpilot"}
