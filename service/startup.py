"""Start-up faults as one line each: the listening socket (bound before the model loads) and load_error, which
names the model path and the problem for whatever loading it raised. No TensorFlow import: `python -m service`
checks its port before paying for one."""

import socket
from pathlib import Path


class ModelContractError(RuntimeError):
    """The model directory or its metadata does not match what the service needs."""


class ModelLoadError(ModelContractError):
    """TensorFlow could not load the SavedModel; the message (from load_error) names the path and the problem."""


def bind_socket(host: str, port: int) -> socket.socket:
    """The server's listening socket, bound now so that a port in use fails the start before the model loads."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: restart over TIME_WAIT sockets
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


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
