"""Response writing: orjson for arrays (numpy serialised directly), PNG when the client asks for an image."""

from typing import Any, Literal

import numpy as np
from fastapi import HTTPException, Request, Response

from service.api.v1.png import to_png
from service.http.responses import json_response  # noqa: F401 (re-exported for the v1 routes)

Output = Literal["mode", "probs"]
Format = Literal["json", "png"]


def wants_png(request: Request, format: Format | None) -> bool:
    """`format` wins; without it, PNG only when the Accept header names image/png."""
    if format is not None:
        return format == "png"
    return "image/png" in request.headers.get("accept", "")


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """Whether an If-None-Match header (a list of tags, weak or strong, or *) names `etag`."""
    if if_none_match is None:
        return False
    tags = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
    return "*" in tags or etag in tags


def check_output(output: Any) -> Output:
    if output not in ("mode", "probs"):
        raise HTTPException(422, f"output must be 'mode' or 'probs', got {output!r}")
    return output


def images_response(request: Request, format: Format | None, images: np.ndarray, fields: dict[str, Any],
                    headers: dict[str, str] | None = None) -> Response:
    """(B, 28, 28, 1) images as a PNG (grid), or as JSON `images` (B, 28, 28) next to `fields`."""
    if wants_png(request, format):
        return Response(to_png(images), media_type="image/png", headers=headers)
    # reshape, not [..., 0]: orjson serialises only contiguous arrays
    return json_response({**fields, "images": images.reshape(images.shape[:3])}, headers)
