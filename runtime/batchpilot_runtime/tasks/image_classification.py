"""The ``image-classification`` task: what a request's images are, in each of its three forms.

- ``POST /v1/classify`` with JSON: ``input`` is one image or a list, each base64 or a
  ``data:image/...;base64,`` URL (URLs to fetch are refused: the server reaches out nowhere);
  ``top_k`` and ``model`` as for text. The answer is the text classifier's.
- ``POST /v1/classify`` with ``multipart/form-data``: one or more ``file`` parts, and optional
  ``top_k`` and ``model`` fields.
- ``POST /v2/models/{name}/infer``: one input, BYTES of encoded images (base64 strings in
  JSON, raw bytes in the binary extension), or FP32 ``[n, C, H, W]`` already preprocessed to
  the model's shape (``GET /v2/models/{name}`` gives it).

Encoded images are decoded and checked off the event loop before the request is queued
(:mod:`batchpilot_runtime.images`), so a bad one fails its request with a 4xx naming it and
never reaches a batch. Resizing and normalising run in the backend, as part of the batch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from batchpilot_runtime import api, images
from batchpilot_runtime.api import ApiError, InferRequest
from batchpilot_runtime.backends import ModelInfo

ImageItem = Image.Image | npt.NDArray[np.float32]
"""A batch item: a decoded image (the backend preprocesses it) or a preprocessed array."""

FILE_FIELD = "file"
MAX_PARTS = 4096
"""Most parts in one multipart body (starlette's own default is 1000 files)."""


def check_count(count: int, limit: int, field: str) -> None:
    """Refuse more images than one request may hold, before any is decoded."""
    if count > limit:
        raise ApiError(413, f"{field}: {count} images; at most {limit} per request", param=field)


async def from_json(
    body: bytes, limits: images.ImageLimits, most: int
) -> tuple[api.ClassifyRequest, list[ImageItem]]:
    """The request and the decoded images (at most ``most``) of a JSON ``/v1/classify`` body."""
    req = api.parse(api.ClassifyRequest, body)
    return req, await decode_input(req.input, limits, most)


async def decode_input(
    value: str | list[str], limits: images.ImageLimits, most: int
) -> list[ImageItem]:
    """The decoded images of a JSON ``input`` (one base64 string or data URL, or a list)."""
    single = isinstance(value, str)
    values = api.texts_of(value)
    check_count(len(values), most, "input")
    encoded = [
        (
            images.from_base64(v, "input" if single else f"input[{i}]", limits),
            "input" if single else f"input[{i}]",
        )
        for i, v in enumerate(values)
    ]
    return list(await images.decode_all(encoded, limits))


async def from_multipart(
    body: bytes, headers: Headers, limits: images.ImageLimits, most: int
) -> tuple[api.ClassifyRequest, list[ImageItem]]:
    """The request and the decoded images (at most ``most``) of a multipart upload."""

    async def stream() -> Any:
        yield body

    parser = MultiPartParser(
        headers, stream(), max_files=MAX_PARTS, max_fields=16, max_part_size=limits.max_bytes
    )
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise ApiError(
            422, f"body: not a valid multipart/form-data body ({exc.message})", param="body"
        ) from None
    try:
        uploads = form.getlist(FILE_FIELD)
        check_count(len(uploads), most, FILE_FIELD)
        fields: dict[str, Any] = {}
        for name in ("model", "top_k"):
            value = form.get(name)
            if isinstance(value, UploadFile):
                raise ApiError(422, f"{name}: expected a form field, got a file", param=name)
            if value is not None:
                fields[name] = value
        if "top_k" in fields:
            top_k = str(fields["top_k"]).strip()
            if not top_k.isdigit() or int(top_k) < 1:
                raise ApiError(422, f"top_k: {top_k!r}; expected an integer >= 1", param="top_k")
            fields["top_k"] = int(top_k)
        encoded: list[tuple[bytes, str]] = []
        for i, upload in enumerate(uploads):
            where = f"{FILE_FIELD}[{i}]"
            if not isinstance(upload, UploadFile):
                raise ApiError(
                    422, f"{where}: expected a file part, got a plain field", param=where
                )
            if upload.filename:
                where += f" ({upload.filename!r})"
            encoded.append((await upload.read(), where))
        if not encoded:
            raise ApiError(
                422,
                f"{FILE_FIELD}: expected at least one file part named {FILE_FIELD!r}",
                param=FILE_FIELD,
            )
        req = api.ClassifyRequest(input=[w for _, w in encoded], **fields)
    finally:
        await form.close()
    return req, list(await images.decode_all(encoded, limits))


async def from_infer(
    req: InferRequest, info: ModelInfo, limits: images.ImageLimits, most: int
) -> list[ImageItem]:
    """The images (at most ``most``) of an OIP v2 request: one BYTES or FP32 input."""
    if len(req.inputs) != 1:
        raise ApiError(422, "inputs: expected exactly one input (the images)", param="inputs")
    tensor = req.inputs[0]
    flat = api.flatten(tensor.data or [])
    if tensor.datatype.upper() != "BYTES":
        if tensor.shape:
            check_count(tensor.shape[0], most, "inputs[0].shape")
        assert info.image_shape is not None
        return list(
            images.check_tensor(tensor.datatype, tensor.shape, flat, info.image_shape, "inputs[0]")
        )
    api.check_shape(tensor, 0, len(flat))
    check_count(len(flat), most, "inputs[0].data")
    if not flat:
        raise ApiError(422, "inputs[0].data: must hold at least one image", param="inputs.0.data")
    encoded = []
    for i, value in enumerate(flat):
        where = f"inputs[0].data[{i}]"
        if isinstance(value, str):
            encoded.append((images.from_base64(value, where, limits), where))
        elif isinstance(value, bytes):
            encoded.append((value, where))
        else:
            raise ApiError(422, f"{where}: expected an encoded image (base64 in JSON)", param=where)
    return list(await images.decode_all(encoded, limits))


def model_metadata(model: str, info: ModelInfo) -> dict[str, Any]:
    """``GET /v2/models/{name}`` of an image classifier: its outputs are a text classifier's."""
    metadata = api.model_metadata(model, info)
    shape = [-1, *(info.image_shape or ())]
    metadata["inputs"] = [
        {"name": "image", "datatype": "BYTES", "shape": [-1]},
        {"name": "pixel_values", "datatype": "FP32", "shape": shape},
    ]
    metadata["parameters"]["image_shape"] = list(info.image_shape or ())
    return metadata
