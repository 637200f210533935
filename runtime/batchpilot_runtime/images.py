"""Image inputs: decoding and checking what clients send, before anything is queued.

Every function here is pure (bytes in, a decoded image or an :class:`ApiError` out) and
torch-free, so the emulated backend and the unit layer use it too. Errors are 4xx answers that
name the input at fault (``input[2]``, ``file[0]``, ``inputs[0].data[1]``): a bad image fails
its request before it is admitted, and never reaches a batch.

What is refused: bytes that are no image of an allowed format, a truncated image, more pixels
than ``max_pixels`` (read from the header, before the pixels are decoded: a decompression bomb
costs nothing), more encoded bytes than ``max_bytes``, an animation, and a preprocessed tensor
of the wrong shape, datatype or with values that are not finite.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, UnidentifiedImageError

from batchpilot_runtime.api import ApiError

FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
"""The encodings accepted; anything else is refused as not an image."""

DEFAULT_MAX_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_PIXELS = 4096 * 4096

# Decoding is CPU work in C that releases the GIL: a few threads of their own, so a burst of
# uploads neither blocks the event loop nor takes every core from the model.
_DECODE_POOL = ThreadPoolExecutor(
    max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="image-decode"
)


@dataclass(frozen=True, slots=True)
class ImageLimits:
    """What one image may be: encoded size in bytes and decoded size in pixels."""

    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS


def _invalid(where: str, message: str, status: int = 422) -> ApiError:
    # The param is the input alone, without the file name a multipart part may add.
    return ApiError(status, f"{where}: {message}", param=where.split(" (", 1)[0])


def from_base64(text: str, where: str, limits: ImageLimits) -> bytes:
    """The bytes of a base64 string or of a ``data:image/...;base64,`` URL."""
    payload = text.strip()
    if payload.startswith("data:"):
        head, sep, payload = payload.partition(",")
        if not sep or not head.endswith(";base64"):
            raise _invalid(where, "a data URL must be data:image/<type>;base64,<data>")
        if not head.startswith("data:image/"):
            raise _invalid(where, f"{head.removeprefix('data:')!r} is not an image media type")
    elif payload.startswith(("http://", "https://", "file:")):
        # Fetching URLs would let a request make the server reach out (SSRF): not done.
        raise _invalid(where, "image URLs are not fetched; send the image as base64 or a data URL")
    # Checked before decoding, so an oversized image costs no allocation of its size.
    if len(payload) * 3 // 4 > limits.max_bytes + 2:
        raise _invalid(where, f"over {limits.max_bytes} bytes once decoded", 413)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise _invalid(where, "not valid base64") from None


def decode(data: bytes, where: str, limits: ImageLimits) -> Image.Image:
    """A fully decoded RGB image, or an :class:`ApiError` naming ``where``."""
    if len(data) > limits.max_bytes:
        raise _invalid(where, f"{len(data)} bytes; at most {limits.max_bytes} per image", 413)
    if not data:
        raise _invalid(where, "empty; expected an encoded image")
    try:
        with warnings.catch_warnings():
            # Our own pixel limit applies (below); Pillow's bomb warning must not escape.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError:
        raise _invalid(
            where, f"not an image in a supported format ({', '.join(FORMATS)})"
        ) from None
    except Image.DecompressionBombError:
        raise _invalid(where, "too many pixels", 413) from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise _invalid(where, f"truncated, or not a readable image ({exc})") from None
    width, height = image.size
    if width < 1 or height < 1:
        raise _invalid(where, f"{width}x{height} pixels; an image needs at least one")
    if width * height > limits.max_pixels:
        raise _invalid(
            where, f"{width}x{height} pixels; at most {limits.max_pixels} per image", 413
        )
    if getattr(image, "is_animated", False) or getattr(image, "n_frames", 1) > 1:
        raise _invalid(where, f"an animated {image.format}; send a single frame")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image.load()
            return image.convert("RGB")
    except Image.DecompressionBombError:
        raise _invalid(where, "too many pixels", 413) from None
    except (OSError, ValueError, SyntaxError) as exc:
        # "image file is truncated", a broken stream, a bad header past the first bytes.
        raise _invalid(where, f"truncated or corrupt {image.format} ({exc})") from None


async def decode_all(items: Sequence[tuple[bytes, str]], limits: ImageLimits) -> list[Image.Image]:
    """Decode ``(bytes, where)`` items off the event loop; the first bad one's error wins."""
    loop = asyncio.get_running_loop()
    jobs = [
        loop.run_in_executor(_DECODE_POOL, decode, data, where, limits) for data, where in items
    ]
    results = await asyncio.gather(*jobs, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return [r for r in results if isinstance(r, Image.Image)]


def check_tensor(
    datatype: str,
    shape: Sequence[int],
    data: Sequence[Any],
    expected: tuple[int, int, int],
    where: str,
) -> list[npt.NDArray[np.float32]]:
    """The images of a preprocessed ``FP32`` tensor of shape ``[n, C, H, W]``, one per row.

    ``expected`` is the model's ``(C, H, W)``; any other shape, datatype or a value that is not
    a finite number is refused, naming the tensor.
    """
    if datatype.upper() != "FP32":
        raise _invalid(
            f"{where}.datatype", f"expected FP32 (or BYTES of encoded images), got {datatype}"
        )
    want = [-1, *expected]
    if len(shape) != 4 or shape[0] < 1 or list(shape[1:]) != list(expected):
        raise _invalid(f"{where}.shape", f"{list(shape)}; this model takes {want} (n, C, H, W)")
    count = shape[0] * expected[0] * expected[1] * expected[2]
    if len(data) != count:
        raise _invalid(f"{where}.data", f"{len(data)} elements; shape {list(shape)} holds {count}")
    raw = np.asarray(data)
    if raw.dtype.kind not in "fiu":  # strings, booleans or objects are not pixel values
        raise _invalid(f"{where}.data", "every element must be a number")
    array = raw.astype(np.float32).reshape(shape)
    if not np.isfinite(array).all():
        raise _invalid(f"{where}.data", "holds NaN or infinite values")
    return list(array)
