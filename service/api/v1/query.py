"""The query options of the /v1 image routes as pydantic models: each request's options validated in one pass, and
their OpenAPI parameters generated from the same models.

The hot routes (encode, the tensor protocols) take only the request (see http/routing.DirectRoute), so they read
their options with `read_query` instead of declaring them to FastAPI, which would solve them per parameter."""

import secrets
from typing import Annotated, Any, TypeVar

from fastapi import HTTPException, Request
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError, WithJsonSchema

from service.serving.dataplane import MAX_SEED

_BOOL = TypeAdapter(bool)  # FastAPI's reading of a boolean: true/false, 1/0, yes/no, on/off
BOOLEANS = "true/false, 1/0, yes/no, on/off"
Options = TypeVar("Options", bound=BaseModel)


def _boolean(value: Any) -> bool:
    try:
        return _BOOL.validate_python(value)
    except ValidationError:
        raise ValueError(f"must be a boolean ({BOOLEANS}), got {value!r}") from None


def _auto_or_boolean(value: Any) -> bool | None:
    if value is None or (isinstance(value, str) and value.lower() == "auto"):
        return None
    try:
        return _BOOL.validate_python(value)
    except ValidationError:
        raise ValueError(f"must be auto or a boolean ({BOOLEANS}), got {value!r}") from None


AUTO_OR_BOOLEAN_SCHEMA = {"type": "string", "enum": ["auto", "true", "false"], "default": "auto"}
# None: auto
AutoOrBoolean = Annotated[bool | None, BeforeValidator(_auto_or_boolean), WithJsonSchema(AUTO_OR_BOOLEAN_SCHEMA)]
Boolean = Annotated[bool, BeforeValidator(_boolean), WithJsonSchema({"type": "boolean", "default": False})]


class UploadOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, validate_default=True)  # the default "auto" reads as None

    invert: AutoOrBoolean = Field("auto", description=(
        "Invert uploads (dark ink on light paper becomes the white-on-black digit the model knows). auto: when the "
        "paper is light."))
    normalize: AutoOrBoolean = Field("auto", description=(
        "MNIST's own preprocessing: remove the paper's shading, crop to the digit, fit it into 20x20, put its centre "
        "of mass at the centre of 28x28. false: only fit the whole image into 28x28. auto: normalise every upload "
        "except a 28x28 one that already looks like an MNIST digit, which passes through untouched. JSON arrays are "
        "never preprocessed."))
    include_input: Boolean = Field(False, description=(
        "Also answer with `inputs`: each image exactly as the model saw it, 28x28 in [0, 1] after preprocessing "
        "(JSON answers only)."))


class ImageRouteOptions(UploadOptions):
    """What /v1/encode and /v1/reconstruct read: the upload options and theirs, in one validation."""

    verdict: AutoOrBoolean = Field("auto", description=(
        "Also answer with `verdict`, per image: whether the model understood it (a one-decode estimate of its NLL "
        "placed among MNIST test digits' and compared with the 99th percentile). auto: for uploads, where one more "
        "decode per image is small next to decoding and cleaning; not for JSON arrays."))
    samples: int = Field(0, ge=0, description=(
        "Also draw this many samples per image from q(z|x) (k x images is capped by VAE_MAX_POSTERIOR_SAMPLES)."))
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description=(
        "Seed of the posterior samples: image i of the request draws from (seed, i). Absent: random, returned as "
        "`seed`."))

    def posterior(self) -> tuple[int, int] | None:
        """(samples per image, seed) when posterior samples are asked for, the seed drawn if absent; else None."""
        if not self.samples:
            return None
        return self.samples, secrets.randbelow(2**31) if self.seed is None else self.seed


_DEFAULTS: dict[type, BaseModel] = {}


def read_query(model: type[Options], request: Request) -> Options:
    """The request's options of `model`, validated in one pass; 422 naming each bad parameter."""
    if not request.scope["query_string"]:
        if model not in _DEFAULTS:
            _DEFAULTS[model] = model()
        return _DEFAULTS[model]
    try:
        return model.model_validate(dict(request.query_params))
    except ValidationError as err:
        problems = "; ".join(f"query.{'.'.join(map(str, e['loc']))}: {e['msg'].removeprefix('Value error, ')}"
                             for e in err.errors())
        raise HTTPException(422, problems) from None
