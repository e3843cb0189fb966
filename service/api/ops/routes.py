"""Operational routes: model metadata, version status (TF Serving's format), liveness, readiness, Prometheus metrics."""

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

import contract
from service.api.ops import schemas
from service.http.errors import Problem
from service.http.responses import json_response
from service.http.routing import DirectRoute
from service.http.versions import VERSION_PARAMETERS, ready_serving
from service.serving.errors import NotReady
from service.serving.registry import UnknownModelError, status_document

router = APIRouter(route_class=DirectRoute)
METADATA_KEYS = ("signatures", "default_signature", "metrics", "calibration", "versions", "git_commit", "created_at")
# Training settings that are paths on the machine that trained the model: no use to a client, and not to publish.
LOCAL_PATH_KEYS = ("data_dir", "checkpoint", "run_dir", "checkpoint_dir", "log_dir", "output_dir")


def _public_training(training: dict | None) -> dict | None:
    if not isinstance(training, dict):
        return training
    return {key: value for key, value in training.items()
            if key not in LOCAL_PATH_KEYS and not key.endswith(("_dir", "_path", "_file"))}


@router.get("/v1/model", tags=["model"], response_model=schemas.ModelInfo, responses={503: {"model": Problem}},
            openapi_extra={"parameters": VERSION_PARAMETERS})
async def model_info(request: Request) -> Response:
    """Metadata of the served model, the device TensorFlow runs on, and the batching settings."""
    serving = ready_serving(request)
    model, settings = serving.model, serving.settings
    meta = model.metadata
    return json_response({
        "name": model.name, "version": model.version, "latent_size": model.latent_size,
        "image_shape": meta["image_shape"], "device": model.device,
        **{key: meta.get(key) for key in METADATA_KEYS},
        "training": _public_training(meta.get("training")),
        "batching": {"max_size": settings.batch_max_size, "max_delay_ms": settings.batch_max_delay_ms,
                     "trim": settings.batch_trim, "queue_max": settings.queue_max},
    })


@router.get("/v1/models/{name}", tags=["versions"])
async def model_status(request: Request, name: str) -> Response:
    """Every version of the model and its state (LOADING, AVAILABLE, UNLOADING, END), with the error of a refused
    one: TF Serving's model status API."""
    return status_response(request, name)


@router.get("/v1/models/{name}/versions/{version}", tags=["versions"])
async def model_version_status(request: Request, name: str, version: str) -> Response:
    """One version's state and error, in TF Serving's format."""
    if not contract.is_count(version) or int(version) < 1:
        return json_response({"error": f"version must be a positive integer, got {version!r}"}, status=400)
    return status_response(request, name, int(version))


def status_response(request: Request, name: str, version: int | None = None) -> Response:
    try:
        return json_response(status_document(request.app.state.dataplane.registry, name, version))
    except UnknownModelError as err:
        return json_response({"error": str(err)}, status=404)


@router.get("/healthz", tags=["ops"], responses={503: {"model": Problem}})
async def healthz(request: Request) -> Response:
    """Liveness: the process answers, and it has not failed to serve any version at start (503 naming why)."""
    failure = request.app.state.dataplane.registry.failure
    if failure:
        return json_response({"detail": failure}, status=503)
    return json_response({"status": "ok"})


@router.get("/readyz", tags=["ops"], responses={503: {"model": Problem}})
async def readyz(request: Request) -> Response:
    """Readiness: 200 while at least one model version is available (loaded, checked, every signature warmed up)."""
    registry = request.app.state.dataplane.registry
    if not registry.ready:
        raise NotReady(registry.failure or registry.not_ready_reason())
    return json_response({"status": "ready"})


@router.get("/metrics", tags=["ops"], response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus metrics: requests, latency, model inference time, batch sizes, queue wait and depth."""
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
