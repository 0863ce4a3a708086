"""Images over HTTP: base64 in (a 422 naming the field for anything that is not a readable, reasonably sized
image), base64 PNG out with the infotext kept (A1111 `encode_pil_to_base64`)."""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Iterable

from PIL import Image, PngImagePlugin

from sdwebui.server.errors import FieldError

MAX_DECODED_PIXELS = 8192 * 8192


def decode_base64_image(text: str, loc: tuple) -> Image.Image:
    """A base64 image (optionally a `data:image/...;base64,` URL) -> PIL image, or a FieldError naming `loc`."""
    text = text.strip()
    if text.startswith("data:"):
        text = text.split(",", 1)[1] if "," in text else ""
    if text.startswith(("http://", "https://")):
        raise FieldError(loc, "image URLs are not fetched; send the image as base64")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise FieldError(loc, "not valid base64") from None
    if not data:
        raise FieldError(loc, "empty image")
    try:
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > MAX_DECODED_PIXELS:
            raise FieldError(loc, f"image too large ({image.width}x{image.height})", status=413)
        image.load()
    except FieldError:
        raise
    except Image.DecompressionBombError:
        raise FieldError(loc, "image too large", status=413) from None
    except Exception:  # noqa: BLE001 - PIL raises many types for bad data
        raise FieldError(loc, "not a readable image") from None
    return image


def encode_images(images: Iterable[Image.Image]) -> list[str]:
    """base64 PNGs with the infotext in their `parameters` chunk (A1111 `encode_pil_to_base64`)."""
    out = []
    for image in images:
        info = PngImagePlugin.PngInfo()
        for key, value in image.info.items():
            if isinstance(key, str) and isinstance(value, str):
                info.add_text(key, value)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", pnginfo=info)
        out.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
    return out


__all__ = ["decode_base64_image", "encode_images", "MAX_DECODED_PIXELS"]
