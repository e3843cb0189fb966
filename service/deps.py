"""Annotated dependencies, so route signatures say what they use.

One dependency carries the model, its batchers and the settings: FastAPI solves each dependency per request, and on
this request path that cost is comparable to the model's. It is `async def` on purpose: FastAPI runs plain `def`
dependencies on a worker thread, a thread hop per request for an attribute lookup."""

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from service.batching import Batchers
from service.model import VaeModel
from service.settings import Settings


@dataclass(frozen=True)
class Serving:
    """What the model routes use, put on app.state by the lifespan handler once the model is loaded."""

    model: VaeModel
    batchers: Batchers
    settings: Settings


def not_ready(app) -> HTTPException:
    """The 503 that /readyz and the model routes answer until the model is loaded and warmed up."""
    retry_after = str(app.state.settings.retry_after_s)
    return HTTPException(503, "the model is not loaded yet", headers={"Retry-After": retry_after})


async def _serving(request: Request) -> Serving:
    serving = request.app.state.serving
    if serving is None:
        raise not_ready(request.app)
    return serving


ServingDep = Annotated[Serving, Depends(_serving)]
