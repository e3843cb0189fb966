"""Operational routes: model metadata, liveness, readiness, Prometheus metrics."""

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service import schemas
from service.deps import not_ready, ready_serving
from service.responses import json_response

router = APIRouter()
METADATA_KEYS = ("signatures", "default_signature", "metrics", "versions", "git_commit", "created_at")
# Training settings that are paths on the machine that trained the model: no use to a client, and not to publish.
LOCAL_PATH_KEYS = ("data_dir", "checkpoint", "run_dir", "checkpoint_dir", "log_dir", "output_dir")


def _public_training(training: dict | None) -> dict | None:
    if not isinstance(training, dict):
        return training
    return {key: value for key, value in training.items()
            if key not in LOCAL_PATH_KEYS and not key.endswith(("_dir", "_path", "_file"))}


@router.get("/v1/model", tags=["model"], response_model=schemas.ModelInfo, responses={503: {"model": schemas.Problem}})
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
                     "queue_max": settings.queue_max},
    })


@router.get("/healthz", tags=["ops"], responses={503: {"model": schemas.Problem}})
async def healthz(request: Request) -> Response:
    """Liveness: the process answers, and the model's warm-up has not failed (503 naming the error if it has)."""
    if request.app.state.failure:
        return json_response({"detail": request.app.state.failure}, status=503)
    return json_response({"status": "ok"})


@router.get("/readyz", tags=["ops"], responses={503: {"model": schemas.Problem}})
async def readyz(request: Request) -> Response:
    """Readiness: 200 once the model is loaded and every signature has been called once."""
    if not request.app.state.ready:
        raise not_ready(request.app)
    return json_response({"status": "ready"})


@router.get("/metrics", tags=["ops"], response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus metrics: requests, latency, model inference time, batch sizes, queue wait and depth."""
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
