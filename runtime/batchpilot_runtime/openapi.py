"""What ``/openapi.json`` says about the routes: request bodies and error answers.

The inference routes read their bodies as raw bytes and parse them with pydantic themselves
(:func:`batchpilot_runtime.api.parse`), so FastAPI cannot see their schemas. These helpers
describe them for ``openapi_extra`` and ``responses=``, without changing how bodies are read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from batchpilot_runtime.api import ErrorResponse

_REF = "#/components/schemas/{model}"

ERROR_DESCRIPTIONS = {
    400: "The model does not do what this route asks (an embedding route on a classifier).",
    404: "No such model here.",
    408: "The body did not arrive within the body timeout.",
    413: "Too large: the body, the number of texts or a text.",
    422: "The body is not valid JSON for this route, or a field is wrong; the message names it.",
    429: "The queue is full; retry after Retry-After seconds.",
    500: "The model failed.",
    503: "The model is loading, or the server is shutting down.",
    504: "The request timed out in the queue.",
}
INFERENCE_ERRORS = (400, 404, 408, 413, 422, 429, 500, 503, 504)


def request_body(
    model: type[BaseModel], *, extra_content: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``openapi_extra`` for a route whose JSON body is ``model`` (:func:`install` puts the
    schema in ``components``)."""
    content: dict[str, Any] = {
        "application/json": {"schema": {"$ref": _REF.format(model=model.__name__)}}
    }
    content.update(extra_content or {})
    return {"requestBody": {"required": True, "content": content}}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for the error answers a route gives, all of the same body."""
    return {
        status: {"model": ErrorResponse, "description": ERROR_DESCRIPTIONS[status]}
        for status in statuses
    }


def install(app: FastAPI, models: Sequence[type[BaseModel]]) -> None:
    """Generate ``app``'s schema with the request body ``models`` in its components."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title,
                version=app.version,
                openapi_version=app.openapi_version,
                routes=app.routes,
            )
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            for model in models:
                schema = model.model_json_schema(ref_template=_REF)
                schemas.update(schema.pop("$defs", {}))
                schemas[model.__name__] = schema
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
