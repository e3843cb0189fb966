"""Posterior samples on the image routes: the `samples` and `seed` query options, and the draw itself (the encode
batcher, then service.latents in numpy)."""

import secrets
from typing import Any

import numpy as np
from fastapi import HTTPException, Request

from service.deps import Serving
from service.latents import posterior_samples

MAX_SEED = 2**62  # seed + image index stays an int64

POSTERIOR_OPTIONS = [
    {"name": "samples", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 0, "default": 0},
     "description": "Also draw this many samples per image from q(z|x) (k x images is capped by "
                    "VAE_MAX_POSTERIOR_SAMPLES)."},
    {"name": "seed", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 0},
     "description": "Seed of the posterior samples: image i of the request draws from (seed, i). Absent: random, "
                    "returned as `seed`."},
]


def with_posterior_options(openapi_extra: dict[str, Any]) -> dict[str, Any]:
    """openapi_extra of an images route, plus the `samples` and `seed` query parameters."""
    return {**openapi_extra, "parameters": [*openapi_extra.get("parameters", []), *POSTERIOR_OPTIONS]}


def _query_int(request: Request, name: str, default: int | None, low: int, high: int) -> int | None:
    """An integer query parameter in [low, high], read by hand like the upload options (see payloads.query_flag)."""
    value = request.query_params.get(name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise HTTPException(422, f"query.{name}: must be an integer, got {value!r}") from None
    if not low <= number <= high:
        raise HTTPException(422, f"query.{name}: must be between {low} and {high}, got {number}")
    return number


def posterior_options(request: Request, serving: Serving) -> tuple[int, int] | None:
    """(samples per image, seed) when the request asks for posterior samples (`samples` > 0), else None."""
    samples = _query_int(request, "samples", 0, 0, serving.settings.max_posterior_samples)
    if not samples:
        return None
    seed = _query_int(request, "seed", None, 0, MAX_SEED)
    return samples, secrets.randbelow(2**31) if seed is None else seed


def check_sample_budget(what: str, k: int, images: int, serving: Serving) -> None:
    limit = serving.settings.max_posterior_samples
    if k * images > limit:
        raise HTTPException(422, f"{what} x images is {k} x {images} = {k * images}, the limit is {limit} "
                                 f"(VAE_MAX_POSTERIOR_SAMPLES): send fewer images or a smaller {what}")


async def sample_posterior(serving: Serving, images: np.ndarray, k: int, seed: int) -> dict[str, np.ndarray]:
    """Encode (through the encode batcher) and draw k samples per image: mean, scale_tril, covariance, samples."""
    check_sample_budget("samples", k, len(images), serving)
    out = await serving.batchers.encode.submit(images, len(images))
    return {**out, "samples": posterior_samples(out["mean"], out["scale_tril"], k, seed)}
