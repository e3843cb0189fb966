"""`python -m service`: serve the model with uvicorn (uvloop + httptools). Flags override VAE_* variables."""

import argparse
import logging
import os
import signal
from collections.abc import Sequence

from contract.tf_logs import quiet_tensorflow_logs

quiet_tensorflow_logs()  # before TensorFlow's import (by service.main)

import uvicorn  # noqa: E402

from service.main import create_app  # noqa: E402
from service.settings import Settings  # noqa: E402


def parse_settings(argv: Sequence[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    default = {name: field.default for name, field in Settings.model_fields.items()}
    parser.add_argument("--host", help=f"interface to bind (VAE_HOST; default: {default['host']})")
    parser.add_argument("--port", type=int, help=f"port to listen on (VAE_PORT; default: {default['port']})")
    parser.add_argument("--model-dir", help=f"SavedModel directory (VAE_MODEL_DIR; default: {default['model_dir']})")
    parser.add_argument("--log-level", help=f"log level (VAE_LOG_LEVEL; default: {default['log_level']})")
    args = parser.parse_args(argv)
    return Settings(**{key: value for key, value in vars(args).items() if value is not None})


def main() -> None:
    settings = parse_settings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # A failed warm-up ends the process (uvicorn shuts down on SIGTERM and exits with it), so a restart policy
    # (docker-compose's `restart: unless-stopped`) starts it again.
    app = create_app(settings, on_failure=lambda: os.kill(os.getpid(), signal.SIGTERM))
    uvicorn.run(app, host=settings.host, port=settings.port, loop="uvloop", http="httptools",
                log_level=settings.log_level, access_log=settings.access_log)


if __name__ == "__main__":
    main()
