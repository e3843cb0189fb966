"""Pydantic models that document the operational routes in OpenAPI."""

from typing import Any

from pydantic import BaseModel, Field


class ModelInfo(BaseModel):
    name: str
    version: int
    latent_size: int
    image_shape: list[int]
    device: str = Field(examples=["/CPU:0"])
    signatures: dict[str, Any]
    default_signature: str
    training: dict[str, Any] | None
    metrics: dict[str, Any] | None
    calibration: dict[str, Any] | None = Field(None, description="NLL percentiles on the MNIST test set (schema 2), "
                                                "and the likelihood-ratio background model when exported with one.")
    versions: dict[str, Any] | None
    git_commit: str | None
    created_at: str | None
    batching: dict[str, Any]
