"""Request bodies -> numpy arrays, with a clear 4xx for every way a body can be wrong.

Big arrays are parsed with orjson and checked with numpy, not pydantic, to keep the request path lean."""

from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from fastapi import HTTPException, Request
from starlette.datastructures import UploadFile

from service.api.v1.decode_pool import pool_for
from service.api.v1.decoding import DecodeLimits, ImageError
from service.api.v1.preprocess import SIDE, untouched
from service.api.v1.query import UploadOptions, read_query
from service.http.bodies import off_loop_if_large, parse_json, read_body
from service.serving.errors import LimitExceeded
from service.settings import Settings


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").partition(";")[0].strip().lower()


def require_json(request: Request) -> None:
    """415 unless the body is declared as application/json (our /v1 routes; the standard protocols' routes follow
    their clients' habits instead)."""
    if media_type(request) != "application/json":
        declared = request.headers.get("content-type")
        raise HTTPException(415, f"send the body as application/json (Content-Type was {declared!r})")


def parse_object(body: bytes) -> dict[str, Any]:
    document = parse_json(body)
    if not isinstance(document, dict):
        raise HTTPException(422, f"the JSON body must be an object, got {type(document).__name__}")
    return document


def json_array(document: dict[str, Any], key: str, item_shape: tuple[int, ...], max_items: int, *,
               strict: bool = True, text: bytes | None = None) -> np.ndarray:
    """document[key] as float32 (N, *item_shape), checked for presence, shape and count (the data plane checks the
    values). strict: the values must be JSON numbers (numpy alone would read "0.5" and true as numbers). text: the
    JSON the document was parsed from, if at hand: without a `true` or `false` in it, the search for booleans is
    skipped (~25 us)."""
    if key not in document:
        raise HTTPException(422, f"the JSON body has no {key!r} field")
    value = document[key]
    if not isinstance(value, list) or not value:
        raise HTTPException(422, f"{key!r} must be a non-empty list")
    if len(value) > max_items:
        raise HTTPException(422, f"{key!r} has {len(value)} items, the limit is {max_items}")
    try:
        # Strict: numpy infers the type, so strings show as a string dtype and nulls as objects.
        array = np.asarray(value) if strict else np.asarray(value, dtype=np.float32)
    except (ValueError, TypeError, OverflowError):  # OverflowError: an integer too large for a float
        raise HTTPException(422, f"{key!r} must be a list of arrays of numbers shaped {list(item_shape)}") from None
    if strict:
        kind = {"U": "strings", "b": "booleans"}.get(array.dtype.kind, "values that are not numbers")
        maybe_booleans = text is None or b"true" in text or b"false" in text
        if array.dtype.kind in "iuf" and maybe_booleans and _has_booleans(value):
            kind = "booleans"
        elif array.dtype.kind in "iuf":
            kind = None
        if kind is not None:
            raise HTTPException(422, f"{key!r} holds {kind}; its values must be JSON numbers")
        with np.errstate(over="ignore"):  # a float64 beyond float32's range becomes inf: the data plane refuses it
            array = array.astype(np.float32, copy=False)
    if array.shape[1:] != item_shape:
        raise HTTPException(422, f"{key!r} items must have shape {list(item_shape)}, got {list(array.shape[1:])}")
    return array


def _has_booleans(value: list) -> bool:
    """Whether a nested list of numbers holds a JSON true or false (numpy promotes them to 1.0 and 0.0)."""
    dumped = orjson.dumps(value)
    return b"true" in dumped or b"false" in dumped


MAX_FIELD_BYTES = 64 * 1024  # a form field that is not a file (uploads are bounded by the body's size only)


@dataclass(frozen=True)
class ImageBatch:
    """The images a route feeds the model, (N, 28, 28, 1) float32 in [0, 1], and per image what preprocessing did
    (preprocess.untouched() for JSON arrays, which are model inputs as they are)."""

    images: np.ndarray
    preprocessing: list[dict[str, Any]]
    include_input: bool = False  # the query parameter include_input: answer with the images too
    uploaded: bool = False  # multipart uploads, not JSON arrays

    def response_fields(self) -> dict[str, Any]:
        """The fields every image route's JSON answer carries: `preprocessing`, and `inputs` (N, 28, 28) (exactly
        what the model saw) when the request asked for them."""
        if self.include_input:
            return {"preprocessing": self.preprocessing, "inputs": self.images.reshape(self.images.shape[:3])}
        return {"preprocessing": self.preprocessing}

    def png_headers(self) -> dict[str, str]:
        """For a PNG answer, which has no room for fields: X-Preprocessing, the `preprocessing` list as compact JSON
        (about 38 bytes per image)."""
        return {"X-Preprocessing": orjson.dumps(self.preprocessing).decode()}


async def read_images(request: Request, settings: Settings, *, png: bool = False,
                      options: UploadOptions | None = None) -> ImageBatch:
    """Images from multipart file uploads (PNG, JPEG, GIF, BMP, TIFF, WebP by default) or JSON
    {"images": [28x28 arrays in [0, 1]]}.

    Uploads follow the query parameters invert and normalize (each auto, true or false; absent: auto, see
    service.api.v1.preprocess.preprocess). include_input=true asks for the model inputs in the answer, which a PNG
    answer (`png`) has no room for: refused with 422 before any work is done."""
    options = options or read_query(UploadOptions, request)  # a route that read its own options passes them
    invert, normalize, include_input = options.invert, options.normalize, options.include_input
    if include_input and png:
        raise HTTPException(422, "include_input=true needs a JSON answer (format=json): a PNG has no room for inputs")
    kind = media_type(request)
    if kind not in ("multipart/form-data", "application/json"):
        declared = request.headers.get("content-type")
        raise HTTPException(415, f"send images as multipart/form-data uploads or application/json arrays "
                                 f"(Content-Type was {declared!r})")
    if kind == "multipart/form-data":
        uploads = await _uploads(request, settings.max_images)
        limits = DecodeLimits(settings.image_formats, settings.max_image_pixels, settings.max_image_aspect)
        images, preprocessing = await _decode_uploads(request, uploads, limits, invert, normalize)
    else:
        body = await read_body(request, settings.max_body_bytes)
        images = await off_loop_if_large(len(body), _json_images, body, settings.max_images)
        preprocessing = [untouched() for _ in range(len(images))]
    return ImageBatch(images.reshape(len(images), SIDE, SIDE, 1), preprocessing, include_input,
                      kind == "multipart/form-data")


async def read_json(request: Request, settings: Settings) -> dict[str, Any]:
    """The body of a /v1 JSON route: application/json, within the size limit, a JSON object."""
    require_json(request)
    body = await read_body(request, settings.max_body_bytes)
    return await off_loop_if_large(len(body), parse_object, body)


def _json_images(body: bytes, max_images: int) -> np.ndarray:
    return json_array(parse_object(body), "images", (SIDE, SIDE), max_images, text=body)


async def _uploads(request: Request, max_images: int) -> list[tuple[str, bytes]]:
    """The uploaded files, through Starlette's form parser (the body's size is bounded by RequestGuard). More files
    than VAE_MAX_IMAGES is the data plane's 422; the parser's own bound, four times that, only stops a body of
    thousands of tiny parts early (400)."""
    form = await request.form(max_files=4 * max_images, max_part_size=MAX_FIELD_BYTES)
    files = [value for _, value in form.multi_items() if isinstance(value, UploadFile)]
    if not files:
        raise HTTPException(400, "the multipart body has no files; send images as file fields (-F files=@digit.png)")
    if len(files) > max_images:
        raise LimitExceeded(f"the multipart body has {len(files)} files, the limit is {max_images} (VAE_MAX_IMAGES)")
    return [(upload.filename or f"#{i}", await upload.read()) for i, upload in enumerate(files)]


async def _decode_uploads(request: Request, uploads: list[tuple[str, bytes]], limits: DecodeLimits,
                          invert: bool | None, normalize: bool | None) -> tuple[np.ndarray, list[dict[str, bool]]]:
    """The uploads decoded in the app's decode workers (service.api.v1.decode_pool: processes capped in memory and CPU
    time, shared fairly between requests; the client leaving stops its decode)."""
    try:
        return await pool_for(request.app.state, request.app.state.settings).decode(uploads, limits, invert, normalize)
    except ImageError as err:
        raise HTTPException(err.status, str(err)) from None
