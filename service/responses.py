"""Response writing: orjson for arrays (numpy serialised directly), PNG when the client asks for an image."""

from typing import Any, Literal

import numpy as np
import orjson
from fastapi import HTTPException, Request, Response

from service.images import to_png

Output = Literal["mode", "probs"]
Format = Literal["json", "png"]


def json_response(content: dict[str, Any], headers: dict[str, str] | None = None, status: int = 200) -> Response:
    return Response(orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY), status, headers, "application/json")


def png_response(images: np.ndarray, headers: dict[str, str] | None = None) -> Response:
    return Response(to_png(images), media_type="image/png", headers=headers)


def wants_png(request: Request, format: Format | None) -> bool:
    """`format` wins; without it, PNG only when the Accept header names image/png."""
    if format is not None:
        return format == "png"
    return "image/png" in request.headers.get("accept", "")


def check_output(output: Any) -> Output:
    if output not in ("mode", "probs"):
        raise HTTPException(422, f"output must be 'mode' or 'probs', got {output!r}")
    return output


def images_json(images: np.ndarray) -> np.ndarray:
    """(B, 28, 28, 1) -> (B, 28, 28) lists in JSON; reshape keeps the array contiguous, as orjson requires."""
    return images.reshape(images.shape[:3])
