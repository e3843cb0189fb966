"""Annotated dependencies, so route signatures say what they use."""

from typing import Annotated

from fastapi import Depends, HTTPException, Request

from service.batching import Batchers
from service.model import VaeModel
from service.settings import Settings


def _model(request: Request) -> VaeModel:
    model = request.app.state.model
    if model is None:
        raise HTTPException(503, "the model is not loaded yet", headers={"Retry-After": "1"})
    return model


def _batchers(request: Request) -> Batchers:
    batchers = request.app.state.batchers
    if batchers is None:
        raise HTTPException(503, "the model is not loaded yet", headers={"Retry-After": "1"})
    return batchers


def _settings(request: Request) -> Settings:
    return request.app.state.settings


ModelDep = Annotated[VaeModel, Depends(_model)]
BatchersDep = Annotated[Batchers, Depends(_batchers)]
SettingsDep = Annotated[Settings, Depends(_settings)]
