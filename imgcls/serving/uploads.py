"""Reading a request's images: multipart uploads or base64 JSON, within the size and pixel limits.

Every way a request can be wrong ends as BadInput, which the app answers as a 4xx JSON
{"error": ...}: over the upload limit 413, too many pixels 413, a non-image 415, a truncated or
corrupt image 400.
"""

from __future__ import annotations

import base64
import binascii
import io
import json

import numpy as np
from fastapi import Request
from PIL import Image, UnidentifiedImageError

from imgcls.data.images import UnreadableImage, decode_image, probe_image

MAX_FILES = 32
OPTIONS = ("explain", "explain_method")


class BadInput(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


async def read_uploads(request: Request, limit: int, default_k: int | None
                       ) -> tuple[list[tuple[str, bytes]], int | None, dict]:
    """The uploads, top_k, and the options (explain, explain_method) from the query, the form or the JSON body."""
    kind = request.headers.get("content-type", "")
    k = whole_number(request.query_params.get("top_k"), default_k)
    options = {key: request.query_params[key] for key in OPTIONS if key in request.query_params}
    if kind.startswith("multipart/form-data"):
        form = await request.form(max_files=MAX_FILES, max_part_size=limit + 1)
        files = form.getlist("file")
        k = whole_number(form.get("top_k"), k)
        options.update({key: form[key] for key in OPTIONS if isinstance(form.get(key), str)})
        uploads = []
        for item in files:
            if isinstance(item, str):
                raise BadInput(400, "the form field 'file' must hold a file upload")
            data = await item.read(limit + 1)
            uploads.append((item.filename or "upload", within(data, limit, item.filename)))
    elif kind.startswith("application/json"):
        uploads, k, given = _json_images(await request.body(), limit, k)
        options.update(given)
    else:
        raise BadInput(415, "send images as multipart/form-data (field 'file'), JSON {\"images\": [base64, ...]} "
                            "or one image as the raw body (Content-Type image/* or application/octet-stream)")
    if not uploads:
        raise BadInput(400, "no image: send at least one file in the form field 'file'")
    if len(uploads) > MAX_FILES:
        raise BadInput(413, f"too many images in one request ({len(uploads)}); the limit is {MAX_FILES}")
    return uploads, k, options


def _json_images(body: bytes, limit: int, k: int | None) -> tuple[list[tuple[str, bytes]], int | None, dict]:
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadInput(400, "the body is not valid JSON") from None
    images = payload.get("images") if isinstance(payload, dict) else None
    if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
        raise BadInput(400, "JSON body must be {\"images\": [base64 strings], \"top_k\": k}")
    uploads = [(f"images[{i}]", base64_image(text, limit, f"images[{i}]")) for i, text in enumerate(images)]
    options = {key: payload[key] for key in OPTIONS if key in payload}
    return uploads, whole_number(payload.get("top_k"), k), options


def base64_image(text: str, limit: int, name: str) -> bytes:
    """The bytes of a base64 string (or data URL), unless it is not base64 (400) or over the limit (413)."""
    text = text.split(",", 1)[1] if text.startswith("data:") else text   # data URLs are fine too
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadInput(400, f"{name} is not valid base64") from None
    return within(data, limit, name)


def within(data: bytes, limit: int, filename) -> bytes:
    """data, unless it is over the upload limit (413)."""
    if len(data) > limit:
        raise BadInput(413, f"{filename}: larger than the {limit / 2**20:.0f} MB limit")
    return data


def decode_upload(data: bytes, filename: str, prep, max_pixels: int) -> np.ndarray:
    """One uploaded image as the model's input (C, H, W), or BadInput saying what is wrong with it.
    The pixel count is checked from the header first, so a pixel bomb is never decoded."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > max_pixels:
                raise BadInput(413, f"{filename}: {img.width}x{img.height} pixels is over the limit of {max_pixels:,}")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        pass   # decode_image below gives the precise reason
    try:
        return decode_image(data, prep)
    except UnreadableImage as exc:
        reason = str(exc)
        status = 415 if reason == "not an image file" else 413 if reason.startswith("too many pixels") else 400
        raise BadInput(status, f"{filename}: {reason}") from None


def photo_size(data: bytes) -> tuple[int, int]:
    """(width, height) of an uploaded photo as shown upright (after its EXIF rotation)."""
    height, width, _ = probe_image(io.BytesIO(data))
    return width, height


def flag(value, name: str) -> bool:
    """A request's yes/no option; anything but the usual spellings is a 400."""
    if value is None or value == "" or value is False:
        return False
    text = str(value).lower()
    if text not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
        raise BadInput(400, f"{name} must be true or false, not {value!r}")
    return text in ("true", "1", "yes", "on")


def whole_number(value, default: int | None) -> int | None:
    """top_k as given, or default when absent; anything below 1 is a 400."""
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1:
        raise BadInput(400, f"top_k must be a whole number of at least 1, not {value!r}")
    return number
