"""Image inputs checked before they are queued: every bad image is a 4xx naming its input."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from batchpilot_runtime.api import ApiError
from batchpilot_runtime.images import ImageLimits, check_tensor, decode, decode_all, from_base64

LIMITS = ImageLimits(max_bytes=64 * 1024, max_pixels=256 * 256)


def encoded(fmt: str = "PNG", size: tuple[int, int] = (24, 16), mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, 90).save(buf, fmt)
    return buf.getvalue()


def noisy_png() -> bytes:
    """A PNG whose pixel data does not compress away, so cutting it cuts pixels."""
    pixels = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def animated_gif() -> bytes:
    buf = io.BytesIO()
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` pixels: a bomb's header, with no pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "GIF"])
def test_a_supported_image_decodes_to_rgb(fmt: str) -> None:
    image = decode(encoded(fmt), "input[0]", LIMITS)
    assert image.mode == "RGB"
    assert image.size == (24, 16)


def test_base64_and_data_urls_give_the_same_bytes() -> None:
    raw = encoded()
    assert from_base64(b64(raw), "input", LIMITS) == raw
    assert from_base64(f"data:image/png;base64,{b64(raw)}", "input", LIMITS) == raw


BAD_IMAGES = [
    ("not an image", b"hello, world", 422, "not an image"),
    ("empty", b"", 422, "empty"),
    ("truncated header", encoded("JPEG", (64, 64))[:200], 422, "truncated"),
    ("truncated pixels", noisy_png()[:-400], 422, "truncated"),
    ("animated", animated_gif(), 422, "animated"),
    ("too many pixels", encoded("PNG", (300, 300)), 413, "pixels"),
    ("bomb header", png_header_only(100_000, 100_000), 413, "pixels"),
    ("too many bytes", b"\x89PNG" + bytes(LIMITS.max_bytes), 413, "bytes"),
    ("unsupported format", encoded("TGA"), 422, "not an image"),
]


@pytest.mark.parametrize(
    ("data", "status", "says"), [c[1:] for c in BAD_IMAGES], ids=[c[0] for c in BAD_IMAGES]
)
def test_a_bad_image_is_refused_naming_its_input(data: bytes, status: int, says: str) -> None:
    with pytest.raises(ApiError) as caught:
        decode(data, "input[3]", LIMITS)
    assert caught.value.status == status
    assert caught.value.param == "input[3]"
    assert caught.value.message.startswith("input[3]: ")
    assert says in caught.value.message


BAD_BASE64 = [
    ("not base64", "!!!not base64!!!", 422, "base64"),
    ("url", "https://example.com/cat.png", 422, "not fetched"),
    ("data url not base64", "data:image/png,abc", 422, "data URL"),
    ("data url not an image", f"data:text/plain;base64,{b64(b'hi')}", 422, "not an image"),
    ("too large", "A" * (LIMITS.max_bytes * 2), 413, "bytes"),
]


@pytest.mark.parametrize(
    ("text", "status", "says"), [c[1:] for c in BAD_BASE64], ids=[c[0] for c in BAD_BASE64]
)
def test_bad_base64_is_refused_naming_its_input(text: str, status: int, says: str) -> None:
    with pytest.raises(ApiError) as caught:
        from_base64(text, "input[1]", LIMITS)
    assert caught.value.status == status
    assert caught.value.param == "input[1]"
    assert says in caught.value.message


def test_a_file_name_is_in_the_message_but_not_the_param() -> None:
    with pytest.raises(ApiError) as caught:
        decode(b"nope", "file[0] ('cat.png')", LIMITS)
    assert caught.value.param == "file[0]"
    assert "'cat.png'" in caught.value.message


async def test_decoding_runs_off_the_loop_and_the_first_bad_image_wins() -> None:
    good = (encoded(), "input[0]")
    decoded = await decode_all([good, good], LIMITS)
    assert [im.size for im in decoded] == [(24, 16), (24, 16)]
    with pytest.raises(ApiError, match=r"^input\[1\]: "):
        await decode_all([good, (b"bad", "input[1]"), (b"worse", "input[2]")], LIMITS)


SHAPE = (3, 4, 4)


def test_a_preprocessed_tensor_gives_one_array_per_image() -> None:
    data = list(np.arange(2 * 48, dtype=np.float32) / 10)
    arrays = check_tensor("FP32", [2, *SHAPE], data, SHAPE, "inputs[0]")
    assert [a.shape for a in arrays] == [SHAPE, SHAPE]
    assert arrays[1].dtype == np.float32
    assert float(arrays[1][0, 0, 0]) == pytest.approx(4.8)


BAD_TENSORS = [
    ("wrong dtype", "INT32", [1, *SHAPE], [0] * 48, "inputs[0].datatype"),
    ("wrong shape", "FP32", [1, 3, 8, 8], [0.0] * 192, "inputs[0].shape"),
    ("no batch dimension", "FP32", list(SHAPE), [0.0] * 48, "inputs[0].shape"),
    ("count mismatch", "FP32", [2, *SHAPE], [0.0] * 48, "inputs[0].data"),
    ("strings", "FP32", [1, *SHAPE], ["0.5"] * 48, "inputs[0].data"),
    ("not finite", "FP32", [1, *SHAPE], [float("nan")] + [0.0] * 47, "inputs[0].data"),
]


@pytest.mark.parametrize(
    ("datatype", "shape", "data", "field"),
    [c[1:] for c in BAD_TENSORS],
    ids=[c[0] for c in BAD_TENSORS],
)
def test_a_bad_tensor_is_refused_naming_the_field(
    datatype: str, shape: list[int], data: list[object], field: str
) -> None:
    with pytest.raises(ApiError) as caught:
        check_tensor(datatype, shape, data, SHAPE, "inputs[0]")
    assert caught.value.status == 422
    assert caught.value.param == field
    assert caught.value.message.startswith(field + ": ")
