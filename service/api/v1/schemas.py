"""Pydantic models that document the API in OpenAPI. Routes parse big arrays with orjson and numpy instead
(see payloads.py), so these never validate a request on the hot path."""

from typing import Any, Literal

from pydantic import BaseModel, Field

from service.api.v1.query import UploadOptions
from service.http.errors import Problem
from service.http.openapi import query_parameters
from service.http.versions import VERSION_PARAMETERS

BLANK_DIGIT = [[0.0] * 28 for _ in range(28)]
LATENT_EXAMPLE = [0.1, -0.4, 1.2, 0.0, -0.8, 0.3, 0.5, -1.1, 0.9, 0.2, -0.3, 0.7, -0.6, 0.4, 1.0, -0.2]


class ImagesBody(BaseModel):
    images: list[list[list[float]]] = Field(description="28x28 grayscale arrays in [0, 1], white digit on black.",
                                            examples=[[BLANK_DIGIT]])


class LatentsBody(BaseModel):
    latents: list[list[float]] = Field(description="Latent vectors of the model's latent size.",
                                       examples=[[LATENT_EXAMPLE]])
    output: str | None = Field(None, description="'mode' (0/1 pixels, default) or 'probs' (pixel probabilities); "
                                                 "overrides the query parameter.", examples=["mode"])


class Threshold(BaseModel):
    method: Literal["otsu", "noise", "levels"] = Field(description="How the ink was told from the paper.")
    value: float = Field(description="The threshold, in [0, 1] of the cleaned image.")


class Preprocessing(BaseModel):
    inverted: bool = Field(description="The upload was inverted (a light background: dark ink on light paper).")
    normalized: bool = Field(description="The upload was MNIST-normalised (cropped, fitted into 20x20, centred).")
    background_removed: bool = Field(description="The paper's shading was estimated and removed before the crop.")
    threshold: Threshold | None = Field(description="The ink threshold, when the upload was normalised.")
    crop_box: list[int] | None = Field(description="[top, left, bottom, right] of the digit (bottom and right "
                                       "exclusive), in the decoded image's pixels; null when not cropped.")


class Verdict(BaseModel):
    understood: bool | None = Field(description="Whether the model understood the image: its NLL estimate at or "
                                    "below `threshold` percent of MNIST test digits'. null: the version has no "
                                    "calibration.")
    percentile: float | None = Field(description="Where the NLL estimate falls among MNIST test digits' NLLs.")
    nll_estimate: float = Field(description="KL + reconstruction cross-entropy at the posterior mean, in nats.")
    threshold: float = Field(examples=[99.0])


class ImageInputs(BaseModel):
    """What every route that reads images answers with, next to its own fields."""

    preprocessing: list[Preprocessing] = Field(
        description="(B) what was done to each image; both false for JSON arrays, which are used as given.",
        examples=[[{"inverted": True, "normalized": True, "background_removed": True,
                    "threshold": {"method": "otsu", "value": 0.18}, "crop_box": [20, 30, 221, 141]}]])
    inputs: list[list[list[float]]] | None = Field(
        None, description="(B, 28, 28) the model's inputs after preprocessing: only with include_input=true.")
    verdict: list[Verdict] | None = Field(
        None, description="(B) whether the model understood each image: with verdict=true, or auto for uploads.")


class Encoded(ImageInputs):
    model: str = Field(examples=["mnist_vae"])
    version: int = Field(examples=[1])
    mean: list[list[float]] = Field(description="(B, d) posterior means.", examples=[[LATENT_EXAMPLE]])
    covariance: list[list[list[float]]] = Field(description="(B, d, d) posterior covariances.")
    scale_tril: list[list[list[float]]] = Field(description="(B, d, d) lower Cholesky factors of the covariances.")


class Decoded(BaseModel):
    model: str = Field(examples=["mnist_vae"])
    version: int = Field(examples=[1])
    output: str = Field(examples=["mode"])
    images: list[list[list[float]]] = Field(description="(B, 28, 28) decoder modes or probabilities.")


class Reconstructed(Decoded, ImageInputs):
    mean: list[list[float]] = Field(description="(B, d) posterior means the images were decoded from.")


class Samples(Decoded):
    seed: int = Field(examples=[7])
    latents: list[list[float]] = Field(description="(n, d) draws from the prior.")


MULTIPART_IMAGES = {
    "schema": {
        "type": "object",
        "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"},
                                 "description": "Images in any format Pillow reads (PNG, JPEG, BMP, GIF, WebP...)."}},
        "required": ["files"],
    },
}
PNG = {"image/png": {"schema": {"type": "string", "format": "binary"},
                     "description": "One 28x28 image, or a grid of ceil(sqrt(B)) columns for several."}}
ERRORS = {status: {"model": Problem} for status in (400, 413, 422, 503)}
PREPROCESSING_HEADER = {
    "X-Preprocessing": {"description": "With a PNG answer: the JSON answer's `preprocessing` list as compact JSON, "
                                       'e.g. [{"inverted":true,"normalized":true,"background_removed":true,...}].',
                        "schema": {"type": "string"}},
    "X-Verdict": {"description": "With a PNG answer and a verdict: the JSON answer's `verdict` list as compact JSON.",
                  "schema": {"type": "string"}}}


def images_request_body(options: type[UploadOptions] = UploadOptions) -> dict[str, Any]:
    """openapi_extra for routes that read images and their query `options` (the upload options and any more)
    themselves: JSON arrays or multipart uploads."""
    parameters = [*query_parameters(options), *VERSION_PARAMETERS]
    return {"parameters": parameters, "requestBody": {"required": True, "content": {
        "application/json": {"schema": ImagesBody.model_json_schema()},
        "multipart/form-data": MULTIPART_IMAGES,
    }}}


def latents_request_body() -> dict[str, Any]:
    content = {"application/json": {"schema": LatentsBody.model_json_schema()}}
    return {"parameters": VERSION_PARAMETERS, "requestBody": {"required": True, "content": content}}
