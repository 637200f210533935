"""The ``multimodal-embedding`` task: texts and images embedded in one shared space (CLIP,
SigLIP), each by its own tower.

- ``POST /v1/embeddings`` follows Infinity's multimodal convention: the OpenAI body plus
  ``modality`` (``"text"``, the default, or ``"image"``); with ``"image"``, ``input`` is one
  image or a list, each base64 or a ``data:image/...;base64,`` URL (URLs to fetch are refused,
  as for image classification). One request is one modality, and the answer is OpenAI's
  (``data[i].embedding``, ``encoding_format``, ``dimensions``). The official ``openai`` client
  sends the field as ``extra_body={"modality": "image"}``.
- ``POST /v2/models/{name}/infer``: one input, named for what it holds: ``text`` (BYTES of
  texts), ``image`` (BYTES of encoded images) or ``pixel_values`` (FP32 ``[n, C, H, W]``
  already preprocessed); the output is ``embedding`` (FP32 ``[n, dims]``), and
  ``parameters.normalize`` switches normalisation per request, as for text embeddings.

A text item and an image item are of different batch kinds
(:func:`~batchpilot_runtime.backends.multimodal_kind`): they never share a batch, so a burst of
images does not hold up texts, nor the other way round.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from batchpilot_runtime import api
from batchpilot_runtime.api import ApiError, InferRequest
from batchpilot_runtime.backends import EmbeddingOutput, Modality, ModelInfo

TEXT_INPUT = "text"
IMAGE_INPUTS = ("image", "pixel_values")


def check_dimensions(req: api.EmbeddingRequest, info: ModelInfo) -> None:
    """Refuse ``dimensions`` over the model's (a shorter vector is cut and renormalised)."""
    dims = info.dimensions or 0
    if req.dimensions is not None and req.dimensions > dims:
        raise ApiError(422, f"dimensions: {req.dimensions} is over {dims}", param="dimensions")


def infer_modality(req: InferRequest) -> Modality:
    """What the one input of an OIP v2 request holds, from its name (or an FP32 datatype)."""
    if len(req.inputs) != 1:
        names = ", ".join(repr(t.name) for t in req.inputs)
        raise ApiError(
            422,
            f"inputs: expected exactly one input ('text', 'image' or 'pixel_values'), got {names}",
            param="inputs",
        )
    tensor = req.inputs[0]
    if tensor.name == TEXT_INPUT:
        return "text"
    if tensor.name in IMAGE_INPUTS or tensor.datatype.upper() == "FP32":
        return "image"
    raise ApiError(
        422,
        f"inputs[0].name: {tensor.name!r}; name the input 'text' (BYTES of texts), 'image' "
        "(BYTES of encoded images) or 'pixel_values' (FP32, preprocessed)",
        param="inputs.0.name",
    )


def normalize_of(req: InferRequest, default: bool) -> bool:
    """``parameters.normalize`` of an OIP v2 request, or the server's default."""
    normalize = (req.parameters or {}).get("normalize", default)
    if not isinstance(normalize, bool):
        raise ApiError(422, "parameters.normalize: expected a boolean", param="parameters")
    return normalize


def infer_response(
    outputs: list[EmbeddingOutput], *, model: str, request_id: str | None
) -> dict[str, Any]:
    """The ``embedding`` output tensor, one row per input element, in order."""
    matrix = np.stack([out.vector for out in outputs])
    body: dict[str, Any] = {
        "model_name": model,
        "outputs": [
            {
                "name": "embedding",
                "datatype": "FP32",
                "shape": list(matrix.shape),
                "data": matrix.ravel().tolist(),
            }
        ],
    }
    if request_id is not None:
        body["id"] = request_id
    return body


def model_metadata(model: str, info: ModelInfo) -> dict[str, Any]:
    """``GET /v2/models/{name}`` of a text and image embedder."""
    shape = list(info.image_shape or ())
    return {
        "name": model,
        "versions": ["1"],
        "platform": "pytorch_transformers",
        "inputs": [
            {"name": TEXT_INPUT, "datatype": "BYTES", "shape": [-1]},
            {"name": "image", "datatype": "BYTES", "shape": [-1]},
            {"name": "pixel_values", "datatype": "FP32", "shape": [-1, *shape]},
        ],
        "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [-1, info.dimensions]}],
        "parameters": {
            "task": info.task,
            "labels": [],
            "dimensions": info.dimensions,
            "image_shape": shape,
        },
    }
