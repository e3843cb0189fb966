"""Model routes: encode, decode, reconstruct, samples."""

import hashlib
import secrets
from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import APIRouter, Query, Request, Response

from service.api.v1 import schemas
from service.api.v1.payloads import ImageBatch, json_array, read_images, read_json
from service.api.v1.png import rows_png
from service.api.v1.query import ImageRouteOptions, read_query
from service.api.v1.responses import (
    Format,
    Output,
    check_output,
    etag_matches,
    images_response,
    json_response,
    wants_png,
)
from service.api.v1.verdict import verdict_batch
from service.http.routing import DirectRoute
from service.http.versions import VERSION_PARAMETERS, cache_control, ready_serving
from service.serving import dataplane
from service.serving.registry import Serving

router = APIRouter(prefix="/v1", tags=["model"], route_class=DirectRoute)

OutputQuery = Annotated[Output, Query(description="'mode' (0/1 pixels) or 'probs' (pixel probabilities).")]
FormatQuery = Annotated[Format | None, Query(description="'png' or 'json'; absent: PNG if Accept names image/png.")]
IMAGE_RESPONSES = {200: {"content": schemas.PNG}, **schemas.ERRORS}
IMAGES_TO_IMAGES_RESPONSES = {200: {"content": schemas.PNG, "headers": schemas.PREPROCESSING_HEADER}, **schemas.ERRORS}


@router.post("/encode", response_model=schemas.Encoded, responses=schemas.ERRORS,
             openapi_extra=schemas.images_request_body(ImageRouteOptions))
async def encode(request: Request) -> Response:
    """Encode images into their posterior mean, covariance and scale_tril; with `samples=k`, also k draws per image
    from q(z|x) (`samples`, shaped (B, k, d)) and the `seed` they came from."""
    serving = ready_serving(request)
    options = read_query(ImageRouteOptions, request)
    posterior = checked_posterior(serving, options)
    batch = await read_images(request, serving.settings, options=options)
    images = batch.images
    if posterior:
        out = await dataplane.posterior(serving, images, *posterior)
        extra = {"samples": out["samples"], "seed": posterior[1]}
    else:
        out, extra = await dataplane.encode(serving, images), {}
    if wants_verdict(options, batch):
        _, extra["verdict"] = await _verdict(serving, images, out)
    return json_response({**serving.model.identity, "mean": out["mean"], "covariance": out["covariance"],
                          "scale_tril": out["scale_tril"], **extra, **batch.response_fields()})


@router.post("/decode", response_model=schemas.Decoded, responses=IMAGE_RESPONSES,
             openapi_extra=schemas.latents_request_body())
async def decode(request: Request, output: OutputQuery = "mode", format: FormatQuery = None) -> Response:
    """Decode latent vectors into digits, as a PNG (grid) or JSON arrays."""
    serving = ready_serving(request)
    document = await read_json(request, serving.settings)
    output = check_output(document.get("output") or output)
    latents = json_array(document, "latents", (serving.model.latent_size,), serving.settings.max_images)
    out = await dataplane.decode(serving, latents)
    return images_response(request, format, out[output], {**serving.model.identity, "output": output})


@router.post("/reconstruct", response_model=schemas.Reconstructed, responses=IMAGES_TO_IMAGES_RESPONSES,
             openapi_extra=schemas.images_request_body(ImageRouteOptions))
async def reconstruct(request: Request, output: OutputQuery = "mode", format: FormatQuery = None) -> Response:
    """Encode images and decode their posterior means: PNG (grid) or JSON with the means. With `samples=k`, decode k
    draws per image from q(z|x) instead: a PNG with a row per image, or JSON `images` (B, k, 28, 28), `samples`."""
    serving = ready_serving(request)
    options = read_query(ImageRouteOptions, request)
    posterior = checked_posterior(serving, options)
    png = wants_png(request, format)
    batch = await read_images(request, serving.settings, png=png, options=options)
    verdict_wanted = wants_verdict(options, batch)
    if posterior:
        return await _reconstruct_samples(request, serving, batch, *posterior, output, format, verdict_wanted)
    headers = batch.png_headers() if png else None
    if verdict_wanted:  # the verdict needs the decoder's logits at the mean: encode, then decode
        encoded = await dataplane.encode(serving, batch.images)
        out, verdict = await _verdict(serving, batch.images, encoded)
        out["mean"] = encoded["mean"]
        if png:
            headers["X-Verdict"] = orjson.dumps(verdict).decode()
    else:
        out, verdict = await dataplane.reconstruct(serving, batch.images), None
    fields = {**serving.model.identity, "output": output, "mean": out["mean"], **batch.response_fields()}
    if verdict is not None:
        fields["verdict"] = verdict
    return images_response(request, format, out[output], fields, headers)


def checked_posterior(serving: Serving, options: ImageRouteOptions) -> tuple[int, int] | None:
    """The posterior samples asked for, checked against the limit before any upload is decoded."""
    posterior = options.posterior()
    if posterior:
        dataplane.check_budget(serving, "samples", posterior[0], 1)
    return posterior


def wants_verdict(options: ImageRouteOptions, batch: ImageBatch) -> bool:
    """verdict=auto: for uploads, not for JSON arrays."""
    return batch.uploaded if options.verdict is None else options.verdict


async def _verdict(serving: Serving, images: np.ndarray, encoded: dict[str, np.ndarray]
                   ) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
    """The decoder's outputs at the posterior means, and per image whether the model understood it (verdict.py)."""
    decoded = await dataplane.decode(serving, encoded["mean"])
    return decoded, verdict_batch(images, encoded["mean"], encoded["scale_tril"], logits=decoded["logits"],
                                  calibration=serving.model.metadata.get("calibration"))


@router.get("/samples", response_model=schemas.Samples, responses={**IMAGE_RESPONSES, 304: {"description": "ETag"}},
            openapi_extra={"parameters": VERSION_PARAMETERS})
async def samples(request: Request,
                  n: Annotated[int, Query(description="How many digits.", examples=[16])] = 16,
                  seed: Annotated[int | None, Query(ge=0, lt=2**63, description="Same seed, same bytes; absent: "
                                                    "random, returned in X-Seed.", examples=[7])] = None,
                  output: OutputQuery = "mode", format: FormatQuery = None) -> Response:
    """Digits generated from the prior, as a PNG grid or JSON with their latents."""
    serving = ready_serving(request)
    dataplane.check_count("n", n, serving.settings.max_samples, "VAE_MAX_SAMPLES")
    seeded = seed is not None
    seed = seed if seeded else secrets.randbelow(2**31)
    # The ETag names everything the bytes depend on, so a cached seed is answered without calling the model.
    key = f"{serving.model.fingerprint}/{n}/{seed}/{output}/{'png' if wants_png(request, format) else 'json'}"
    headers = {"X-Seed": str(seed), "ETag": f'"{hashlib.sha256(key.encode()).hexdigest()[:32]}"', "Vary": "Accept",
               "Cache-Control": cache_control(request, 86400) if seeded else "no-store"}
    if seeded and etag_matches(request.headers.get("if-none-match"), headers["ETag"]):
        return Response(status_code=304, headers=headers)
    out = await dataplane.sample(serving, n, seed)
    fields = {**serving.model.identity, "output": output, "seed": seed, "latents": out["latents"]}
    return images_response(request, format, out[output], fields, headers)


async def _reconstruct_samples(request: Request, serving: Serving, batch: ImageBatch, k: int, seed: int,
                               output: Output, format: Format | None, verdict_wanted: bool) -> Response:
    """Posterior samples of each image, decoded through the decode batcher."""
    images = batch.images
    out, decoded = await dataplane.reconstruct_samples(serving, images, k, seed)
    decoded = decoded[output].reshape(len(images), k, 28, 28)
    verdict = (await _verdict(serving, images, out))[1] if verdict_wanted else None
    if wants_png(request, format):
        headers = batch.png_headers()
        if verdict is not None:
            headers["X-Verdict"] = orjson.dumps(verdict).decode()
        return Response(rows_png(decoded), media_type="image/png", headers=headers)
    fields = {"verdict": verdict} if verdict is not None else {}
    return json_response({**serving.model.identity, "output": output, "mean": out["mean"], "seed": seed,
                          "samples": out["samples"], "images": decoded, **batch.response_fields(), **fields})
