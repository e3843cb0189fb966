"""What the model routes use: the model, its batchers and the settings, once the service is ready.

Routes call `ready_serving(request)` instead of declaring a FastAPI dependency: FastAPI solves each dependency with a
second pass over the request's parameters, about 10 us per request, and this request path counts microseconds."""

from dataclasses import dataclass

from fastapi import HTTPException, Request

from service.batching import Batchers
from service.model import VaeModel
from service.settings import Settings


@dataclass(frozen=True)
class Serving:
    """What the model routes use, put on app.state by the lifespan handler once the model is warmed up."""

    model: VaeModel
    batchers: Batchers
    settings: Settings


def not_ready(app) -> HTTPException:
    """The 503 that /readyz and the model routes answer until the model is loaded and warmed up (or after its
    warm-up failed, naming the error)."""
    retry_after = str(app.state.settings.retry_after_s)
    detail = app.state.failure or "the model is not loaded yet"
    return HTTPException(503, detail, headers={"Retry-After": retry_after})


def ready_serving(request: Request) -> Serving:
    """The app's Serving, or a 503 with Retry-After while the model is loading or warming up."""
    serving = request.app.state.serving
    if serving is None:
        raise not_ready(request.app)
    return serving
