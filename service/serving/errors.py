"""The serving layer's errors, and load_error, which names the model path and the problem for whatever loading
raised. No TensorFlow import: `python -m service` reports start-up faults before paying for one."""

from pathlib import Path


class ServingError(Exception):
    """A request the serving layer cannot answer. Each protocol maps the subclasses to its own status and error shape
    in one table (service/api/v1/errors.py, http/errors.TENSOR_PROTOCOL_STATUS, the gRPC codes in api/grpc); the
    message is written for the client."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidInput(ServingError):
    """The request's tensors or options are wrong (a shape, a range, a missing input)."""


class LimitExceeded(InvalidInput):
    """A per-request limit (images, k x images, n, steps): the message names the setting."""


class NotFound(ServingError):
    """No such model, version or signature."""


class Unsupported(ServingError):
    """The version is loaded but cannot do this (a schema 1 model has no score signature)."""


class NotReady(ServingError):
    """No version is available yet (loading, warming up, or none could be served): retry later."""


class Overloaded(ServingError):
    """The work cannot be taken now (queue full, shutting down, or it could not finish within the deadline): retry
    later."""


class QueueFullError(Overloaded):
    """The batcher's queue is full (VAE_QUEUE_MAX requests, or its work bound)."""


class ShuttingDownError(Overloaded):
    """The batcher stopped before the request was served."""


class DeadlineExceededError(ServingError):
    """The request waited in the queue longer than its deadline and was not computed."""


class ModelContractError(RuntimeError):
    """The model directory or its metadata does not match what the service needs."""


class ModelLoadError(ModelContractError):
    """TensorFlow could not load the SavedModel; the message (from load_error) names the path and the problem."""


def load_error(path: Path | str, exc: BaseException) -> str:
    """One line naming `path` and what is wrong with it, for an exception raised while loading the model there.
    The folder is looked at first: TensorFlow's own messages for an empty saved_model.pb ("requires a `tags=`
    argument") or a missing variables/ folder do not say so."""
    path = Path(path)
    message = _first_line(exc)
    if isinstance(exc, ModelContractError):  # already says what is wrong (the registry's names every version)
        return message if str(path) in message else f"{path}: {message}"
    if not path.exists():
        return f"{path}: no such folder; set --model-base-path (VAE_MODEL_BASE_PATH) or --model-dir (VAE_MODEL_DIR)"
    if not path.is_dir():
        return f"{path}: not a folder; a SavedModel is a folder holding saved_model.pb"
    graph = path / "saved_model.pb"
    if not graph.is_file():
        return f"{path}: no saved_model.pb, so not a SavedModel folder"
    if graph.stat().st_size == 0:
        return f"{graph}: the file is empty"
    if not (path / "variables").is_dir():
        return f"{path / 'variables'}: missing; the SavedModel's weights are kept there"
    if isinstance(exc, OSError) or type(exc).__module__.startswith(("tensorflow", "google.protobuf")):
        return f"{path}: TensorFlow cannot load this SavedModel: {message}"
    return f"{path}: {type(exc).__name__}: {message}"


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
