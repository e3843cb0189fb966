"""What only a density model serves: likelihood scores with an outlier decision, and interpolation (posterior samples
on the image routes: ImageRouteOptions in service.api.v1.query)."""

import secrets
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, HTTPException, Query, Request, Response

from contract.likelihood import log_ratio, ratio_outlier, ratio_percentiles
from service.api.v1 import schemas
from service.api.v1.payloads import json_array, read_images, read_json
from service.api.v1.png import rows_png
from service.api.v1.preprocess import SIDE
from service.api.v1.responses import Format, Output, json_response, wants_png
from service.http.routing import DirectRoute
from service.http.versions import ready_serving
from service.serving import dataplane
from service.serving.dataplane import MAX_SEED
from service.serving.registry import Serving

router = APIRouter(prefix="/v1", tags=["density"], route_class=DirectRoute)

DEFAULT_K = 32  # when the model's metadata has no calibration
DEFAULT_THRESHOLD = 99.0
Test = Literal["upper", "two-sided", "ratio"]


def percentiles(nll: np.ndarray, calibration: dict[str, Any]) -> np.ndarray:
    """Where each NLL falls among the test set's (piecewise linear between the stored percentiles, 0 below the
    smallest, 100 above the largest)."""
    return np.interp(nll, calibration["values"], calibration["levels"])


def is_outlier(percentile: np.ndarray, threshold: float, test: Test) -> np.ndarray:
    """upper: less likely than `threshold` percent of test digits. two-sided (a typicality test): outside the central
    `threshold` percent, so images more likely than nearly every test digit (blank ones) are flagged too."""
    if test == "upper":
        return percentile > threshold
    tail = (100 - threshold) / 2
    return (percentile > 100 - tail) | (percentile < tail)


@router.post("/score", responses=schemas.ERRORS | {409: {"model": schemas.Problem}},
             openapi_extra=schemas.images_request_body())
async def score(request: Request,
                k: Annotated[int | None, Query(ge=1, description="Importance samples per image; absent: the k the "
                                               "model was calibrated with.")] = None,
                seed: Annotated[int | None, Query(ge=0, le=MAX_SEED, description="Image i of the request uses noise "
                                                  "seed + i; absent: random, returned.")] = None,
                threshold: Annotated[float, Query(gt=0, lt=100, description="Percentile of the test set's NLL "
                                                  "beyond which an image is an outlier.")] = DEFAULT_THRESHOLD,
                test: Annotated[Test, Query(description="'upper': outlier when less likely than `threshold`% of "
                                            "test digits; 'two-sided' (typicality): also when more likely than "
                                            "nearly all of them; 'ratio': when the likelihood ratio against the "
                                            "background model (`llr`) is below all but (100 - threshold)% of test "
                                            "digits' (catches blank images).")] = "upper") -> Response:
    """Per image: the negative ELBO (analytic KL, k-sample distortion), KL, distortion, and the importance-weighted
    estimate of -log p(x) (`nll`), in nats; its percentile among MNIST test digits and an outlier decision. With a
    background model in the calibration, also `llr` (log p(x) - log p_bg(x)) and its percentile. Pixels are scored as
    given (grey values: Bernoulli cross-entropy), after the same upload preprocessing as encode."""
    serving = ready_serving(request)
    dataplane.require_score(serving)
    calibration = serving.model.metadata.get("calibration")
    background = calibration and calibration.get("background")
    if test == "ratio" and not background:
        meta = serving.model.metadata
        raise HTTPException(409, f"model {meta['model_name']} version {meta['model_version']} has no background model "
                                 f"in its calibration (calibration.background): test=ratio needs one; re-run "
                                 f"`python -m training evaluate --calibrate --update-metadata` on it")
    k = k or (calibration["k"] if calibration else DEFAULT_K)
    seed = secrets.randbelow(2**31) if seed is None else seed
    batch = await read_images(request, serving.settings)
    images = batch.images
    seeds = np.arange(seed, seed + len(images), dtype=np.int64)
    out = await dataplane.score(serving, images, k, seeds)
    scores = [{"seed": int(s), **{name: float(out[name][i]) for name in ("elbo", "kl", "distortion", "nll")}}
              for i, s in enumerate(seeds)]
    if calibration:
        percentile = percentiles(out["nll"], calibration)
        for row, p in zip(scores, percentile, strict=True):
            row["percentile"] = float(p)
        if background:
            llr = log_ratio(out["nll"], images, background)
            llr_percentile = ratio_percentiles(llr, background)
            for row, value, p in zip(scores, llr, llr_percentile, strict=True):
                row.update(llr=float(value), llr_percentile=float(p))
        outlier = (ratio_outlier(llr_percentile, threshold) if test == "ratio"
                   else is_outlier(percentile, threshold, test))
        for row, o in zip(scores, outlier, strict=True):
            row["outlier"] = bool(o)
    return json_response({**serving.model.identity, "k": k, "seed": seed, "threshold": threshold, "test": test,
                          "calibration": calibration and {key: calibration[key] for key in ("score", "k", "images")},
                          "background": background and {key: background[key] for key in ("model", "images")},
                          "scores": scores, **batch.response_fields()})


async def _end_points(request: Request, serving: Serving) -> np.ndarray:
    """The two latent vectors to interpolate between: JSON `latents`, or the posterior means of two images (JSON
    `images` or multipart files, preprocessed like encode's)."""
    d = serving.model.latent_size
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        images = (await read_images(request, serving.settings)).images
    else:
        document = await read_json(request, serving.settings)
        if "latents" in document:
            latents = json_array(document, "latents", (d,), 2)
            if len(latents) != 2:
                raise HTTPException(422, f"'latents' must hold exactly 2 vectors, got {len(latents)}")
            return latents
        images = json_array(document, "images", (SIDE, SIDE), 2).reshape(-1, SIDE, SIDE, 1)
    if len(images) != 2:
        raise HTTPException(422, f"interpolation needs exactly 2 images, got {len(images)}")
    return await dataplane.latents_of(serving, images)


@router.post("/interpolate", responses={200: {"content": schemas.PNG}, **schemas.ERRORS},
             openapi_extra=schemas.images_request_body())
async def interpolate(request: Request,
                      steps: Annotated[int, Query(ge=2, description="Points on the path, both ends included.")] = 8,
                      path: Annotated[Literal["linear", "spherical"], Query(description="Straight line, or the great "
                                      "circle between the two directions (slerp).")] = "linear",
                      output: Annotated[Output, Query(description="'mode' or 'probs'.")] = "mode",
                      format: Annotated[Format | None, Query(description="'png' (a strip) or 'json'; absent: PNG if "
                                                             "Accept names image/png.")] = None) -> Response:
    """Decode `steps` points on a path between two latent vectors (JSON `latents`) or two images' posterior means
    (JSON `images` or two uploaded files). t = 0 and t = 1 decode exactly the end points."""
    serving = ready_serving(request)
    dataplane.check_count("steps", steps, serving.settings.max_samples, "VAE_MAX_SAMPLES")
    start, end = await _end_points(request, serving)
    latents, out = await dataplane.interpolate(serving, start, end, steps, path)
    if wants_png(request, format):
        return Response(rows_png(out[output][None]), media_type="image/png")
    return json_response({**serving.model.identity, "path": path, "steps": steps, "output": output,
                          "t": np.linspace(0.0, 1.0, steps), "latents": latents,
                          "images": out[output].reshape(steps, SIDE, SIDE)})
