"""`python -m service`: serve the model with uvicorn (uvloop + httptools). Flags override VAE_* variables.

A start-up fault (bad setting, port in use, bad model folder) ends the process with a non-zero exit and one line
naming what is wrong; its traceback only at --log-level debug."""

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence

from contract.tf_logs import quiet_tensorflow_logs

quiet_tensorflow_logs()  # before TensorFlow's import (by service.app)
# Keras 2 (tf_keras) for TensorFlow's eager Keras import, which is skipped where tf_keras is not installed (the api
# image). The default, Keras 3, would take about a third of TensorFlow's import time (Keras 3 and scikit-learn) for
# nothing: the service loads SavedModels with tf.saved_model.load and uses no Keras. TF_USE_LEGACY_KERAS=0 in the
# environment restores TensorFlow's default.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from pydantic import ValidationError  # noqa: E402

from service.http.logs import RequestIdFilter  # noqa: E402
from service.http.server import bind_socket  # noqa: E402
from service.serving.errors import load_error  # noqa: E402
from service.settings import Settings  # noqa: E402

log = logging.getLogger("service")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"


def parse_settings(argv: Sequence[str] | None = None) -> Settings:
    default = {name: field.default for name, field in Settings.model_fields.items()}
    flagged = {"host", "port", "model_base_path", "model_dir", "model_name", "model_version_policy", "model_versions",
               "model_config_file", "log_level"}
    others = ", ".join(f"VAE_{name.upper()}" for name in Settings.model_fields if name not in flagged)
    parser = argparse.ArgumentParser(
        prog="python -m service", description=__doc__,
        epilog=f"Settings without a flag are environment variables only: {others}. Each one's default and meaning: "
        "docs/configuration.md (or service/settings.py).")
    parser.add_argument("--host", help=f"interface to bind (VAE_HOST; default: {default['host']})")
    parser.add_argument("--port", type=int, help=f"port to listen on (VAE_PORT; default: {default['port']})")
    parser.add_argument("--model-base-path", help="folder of numbered model versions, followed while serving; a "
                        "relative path is taken from the working directory, the default is the bundled models folder "
                        f"beside the installed package (VAE_MODEL_BASE_PATH; default: {default['model_base_path']})")
    parser.add_argument("--model-dir", help="one version folder, served alone (VAE_MODEL_DIR; default: none)")
    parser.add_argument("--model-name", help="name to serve the model under (VAE_MODEL_NAME; default: its metadata's)")
    parser.add_argument("--model-version-policy", choices=["latest", "specific", "all"],
                        help="versions to serve (VAE_MODEL_VERSION_POLICY; default: "
                        f"{default['model_version_policy']})")
    parser.add_argument("--model-versions", help="versions for the specific policy, e.g. 1,2 (VAE_MODEL_VERSIONS)")
    parser.add_argument("--model-config-file", help="JSON policy file re-read at every poll (VAE_MODEL_CONFIG_FILE)")
    parser.add_argument("--log-level", help=f"log level (VAE_LOG_LEVEL; default: {default['log_level']})")
    args = parser.parse_args(argv)
    return Settings(**{key: value for key, value in vars(args).items() if value is not None})


def configure_logging(level: str) -> None:
    """One format for our lines and uvicorn's (uvicorn runs with log_config=None, so its loggers propagate here),
    with the request ID of the request a line is about."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(RequestIdFilter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    # Our own line says why the start failed; uvicorn's would be a second, vaguer one.
    logging.getLogger("uvicorn.error").addFilter(
        lambda record: record.getMessage() != "Application startup failed. Exiting.")


def fail(message: str, exc: BaseException | None = None, code: int = 1) -> None:
    log.error("%s", message)
    if exc is not None:
        log.debug("the start-up fault in full:", exc_info=exc)
    sys.exit(code)


def main() -> None:
    try:
        settings = parse_settings()
    except ValidationError as err:
        logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
        problems = "; ".join(f"VAE_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in err.errors())
        fail(f"invalid setting: {problems}", code=2)
    configure_logging(settings.log_level)
    try:
        sock = bind_socket(settings.host, settings.port)
    except OSError as err:
        fail(f"cannot listen on {settings.host}:{settings.port}: {err.strerror or err}", err)
    import uvicorn  # after the port check: importing TensorFlow takes seconds

    from service.app import create_app
    from service.http.server import serve_metrics, uvicorn_config
    from service.process import ProcessTuning

    try:
        # A failed warm-up ends the process (uvicorn shuts down on SIGTERM and exits with it), so a restart policy
        # (docker-compose's `restart: unless-stopped`) starts it again.
        tuning = ProcessTuning(settings.gil_switch_interval_ms)
        tuning.install()
        app = create_app(settings, on_failure=lambda: os.kill(os.getpid(), signal.SIGTERM), tuning=tuning)
    except Exception as err:  # e.g. an unreadable API key file
        sock.close()
        fail(str(err), err)
    if settings.metrics_port:
        try:
            serve_metrics(settings, app.state.metrics)
        except OSError as err:
            fail(f"cannot serve metrics on {settings.host}:{settings.metrics_port}: {err.strerror or err}", err)
    failures: list[BaseException] = []
    try:
        config = uvicorn_config(_startup_failures_to(failures, app), settings, log_config=None)
    except RuntimeError as err:  # uvicorn or httptools not the release the server edge was written for
        fail(str(err), err)
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    finally:  # uvicorn ends a failed start with sys.exit(3)
        sock.close()  # closed already after a clean shutdown; after a failed start it was never served
        if failures:
            from service.api.grpc.server import GrpcStartError  # a gRPC server's fault names its port, file or package

            fault = failures[0]
            fail(str(fault) if isinstance(fault, GrpcStartError)
                 else load_error(settings.model_dir or settings.model_base_path, fault), fault)


def _startup_failures_to(failures: list[BaseException], app):
    """`app`, with an exception raised while it starts (loading the model) added to `failures` instead of going to
    uvicorn, which would log its traceback (Starlette's lifespan sends it as the failure message)."""

    async def wrapped(scope, receive, send):
        if scope["type"] != "lifespan":
            await app(scope, receive, send)
            return

        async def send_quietly(message):
            if message["type"] == "lifespan.startup.failed":
                message = {"type": message["type"], "message": ""}
            await send(message)

        try:
            await app(scope, receive, send_quietly)
        except Exception as err:
            failures.append(err)

    return wrapped


if __name__ == "__main__":
    main()
