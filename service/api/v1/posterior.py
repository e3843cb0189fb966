"""Posterior samples on the image routes: the `samples` and `seed` query options (the draw: dataplane.posterior)."""

import secrets
from typing import Any

from fastapi import HTTPException, Request

from service.serving.dataplane import MAX_SEED
from service.serving.registry import Serving

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
