"""The contract between `training/` (which exports a model) and `service/` (which serves it), written once.

A model version is a folder `<base path>/<version>/` (TF Serving layout) holding a SavedModel and METADATA_FILE.
This module names the files, the metadata schema and its version, the signatures, and the names the serving
protocols give them. Standard library and pydantic only: importing it must not pull in TensorFlow or TFP."""

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

METADATA_FILE = "metadata.json"
SAVED_MODEL_FILE = "saved_model.pb"
VARIABLES_DIR = "variables"

SCHEMA_VERSION = 2  # written by training/ (2: the score signature and the calibration)
READABLE_SCHEMA_VERSIONS = (1, 2)  # read by service/

# Signature names. serving_default is the encoder, as in the export.
ENCODE, DECODE, SAMPLE, RECONSTRUCT, SCORE = "encode", "decode", "sample", "reconstruct", "score"
SERVING_DEFAULT = "serving_default"
DEFAULT_SIGNATURE = ENCODE
REQUIRED_SIGNATURES = (ENCODE, DECODE, SAMPLE, RECONSTRUCT)  # every schema version has these
SIGNATURE_SINCE = {SCORE: 2}  # signatures added later, and the schema version that added them
# What `evaluate --update-metadata` writes into an exported version's metadata, possibly while it is served: a server
# takes these from a rewritten file; any other field changed means another model (a new version number).
EVALUATION_FIELDS = ("metrics", "calibration")


def is_count(text: str, max_digits: int = 18) -> bool:
    """Whether `text` is a non-negative integer in ASCII digits that fits an int64 (str.isdigit alone accepts '²'
    and digit strings too long for int())."""
    return text.isascii() and text.isdigit() and len(text) <= max_digits


def signatures_for(schema_version: int) -> tuple[str, ...]:
    """The signatures a model of this metadata schema version must have."""
    later = tuple(name for name, since in SIGNATURE_SINCE.items() if schema_version >= since)
    return REQUIRED_SIGNATURES + later


def v2_model_names(model_name: str) -> dict[str, str]:
    """Open Inference Protocol (KServe v2) model name -> signature: the model's own name is the default signature,
    every signature is also `<model_name>-<signature>` (e.g. mnist_vae-decode)."""
    names = {model_name: DEFAULT_SIGNATURE}
    names.update({f"{model_name}-{signature}": signature for signature in (*REQUIRED_SIGNATURES, SCORE)})
    return names


def tfserving_signature_names() -> tuple[str, ...]:
    """The `signature_name` values TF Serving's REST API accepts for our models (serving_default is encode)."""
    return (SERVING_DEFAULT, *REQUIRED_SIGNATURES, SCORE)


class Background(BaseModel):
    """An independent-pixel Bernoulli background model and how the likelihood ratio against it is distributed on the
    MNIST test set. The ratio llr = log p(x) - log p_bg(x) = nll_bg - nll (nats) cancels what both models find
    likely in any image (mostly black pixels), so simple images that the VAE alone finds *more* likely than digits
    (blank ones, Nalisnick et al. 2019) get a low ratio; an image is an outlier when its llr is low (Ren et al.
    2019 use a background model the same way). log p_bg(x) = sum_j x_j log p_j + (1 - x_j) log(1 - p_j), grey x as
    given, like the VAE's decoder."""

    model_config = ConfigDict(extra="allow")

    model: str = Field("independent_bernoulli", description="The background model's kind.")
    fitted_on: str = Field(description="What the pixel probabilities were fitted on.")
    smoothing: float = Field(ge=0, description="Laplace smoothing: p_j = (sum_i x_ij + s) / (n + 2 s).")
    probs: list[float] = Field(min_length=1, description="Pixel probabilities p_j in (0, 1), row-major 28 x 28.")
    images: int = Field(gt=0, description="Test images the llr percentiles were computed on (their NLL as in the "
                        "calibration: same k, image i with seed + i).")
    levels: list[float] = Field(description="Percentile levels in [0, 100], increasing.")
    values: list[float] = Field(description="llr in nats at each level, non-decreasing.")


class Calibration(BaseModel):
    """How the per-image NLL is distributed on the MNIST test set, so the service can turn a score into a
    percentile and an outlier decision. `values[i]` is the `levels[i]` percentile of the NLL (nats)."""

    model_config = ConfigDict(extra="allow")

    score: str = Field("nll_iwae", description="Which score the percentiles are of.")
    k: int = Field(gt=0, description="Importance samples per image the NLL was estimated with (the score route's "
                   "default k).")
    seed: int = Field(description="Stateless seed of the estimate: test image i used seed + i.")
    images: int = Field(gt=0, description="Test images the percentiles were computed on.")
    pixels: str = Field("grey as given (pixel/255)", description="How the test images were scored: the uint8 pixels "
                        "divided by 255, grey values scored as given (Bernoulli cross-entropy), not binarized.")
    levels: list[float] = Field(description="Percentile levels in [0, 100], increasing.")
    values: list[float] = Field(description="NLL in nats at each level, non-decreasing.")
    background: Background | None = Field(None, description="The likelihood-ratio remedy's background model and "
                                          "llr percentiles; absent in older exports.")


class ModelMetadata(BaseModel):
    """METADATA_FILE. Unknown keys are kept (a newer exporter may add some)."""

    model_config = ConfigDict(extra="allow")

    schema_version: int
    model_name: str = Field(min_length=1)
    model_version: int = Field(gt=0)
    latent_size: int = Field(gt=0)
    image_shape: list[int]
    signatures: dict[str, Any] = Field(default_factory=dict)
    default_signature: str = DEFAULT_SIGNATURE
    training: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    calibration: Calibration | None = None  # schema 2; null until evaluated
    versions: dict[str, Any] | None = None
    git_commit: str | None = None
    created_at: str | None = None


class MetadataError(ValueError):
    """METADATA_FILE is missing, unreadable, or does not follow the schema."""


def read_metadata(model_dir: str | os.PathLike) -> dict[str, Any]:
    """METADATA_FILE of a version folder as a dict, checked against the schema (MetadataError naming the path)."""
    path = Path(model_dir) / METADATA_FILE
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise MetadataError(f"{path} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MetadataError(f"{path} is not readable JSON: {err}") from None
    if not isinstance(document, dict):
        raise MetadataError(f"{path} must hold a JSON object, not {type(document).__name__}")
    try:
        ModelMetadata.model_validate(document)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'document'}: {e['msg']}" for e in err.errors())
        raise MetadataError(f"{path} does not follow the metadata schema: {problems}") from None
    if document["schema_version"] not in READABLE_SCHEMA_VERSIONS:
        raise MetadataError(f"{path} has schema_version {document['schema_version']}, "
                            f"readable versions are {list(READABLE_SCHEMA_VERSIONS)}")
    return document


def write_metadata(model_dir: str | os.PathLike, metadata: dict[str, Any]) -> None:
    """Write METADATA_FILE atomically (a reader never sees half of it)."""
    ModelMetadata.model_validate(metadata)
    path = Path(model_dir) / METADATA_FILE
    fd, tmp = tempfile.mkstemp(prefix=f".{METADATA_FILE}.", dir=path.parent)
    with os.fdopen(fd, "w") as file:
        file.write(json.dumps(metadata, indent=2) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def is_complete_version(folder: str | os.PathLike) -> bool:
    """A numbered folder holding both SAVED_MODEL_FILE and METADATA_FILE (exports rename complete folders into
    place; anything else is half-written or not a version)."""
    folder = Path(folder)
    return (is_count(folder.name) and int(folder.name) > 0 and (folder / SAVED_MODEL_FILE).is_file()
            and (folder / METADATA_FILE).is_file())


def version_folders(base_path: str | os.PathLike) -> dict[int, Path]:
    """The complete version folders under a model base path, by version number."""
    base_path = Path(base_path)
    if not base_path.is_dir():
        return {}
    return {int(folder.name): folder for folder in base_path.iterdir() if is_complete_version(folder)}
