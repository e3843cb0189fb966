"""`python -m service`: serve the model with uvicorn (uvloop + httptools). Flags override VAE_* variables."""

import argparse
import logging
import os
import signal
from collections.abc import Sequence

import uvicorn

from service.main import create_app
from service.settings import Settings


def parse_settings(argv: Sequence[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    parser.add_argument("--host", help="interface to bind (VAE_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (VAE_PORT, default 8000)")
    parser.add_argument("--model-base-path", help="folder of numbered model versions, followed while serving "
                        "(VAE_MODEL_BASE_PATH, default: the bundled models/mnist_vae)")
    parser.add_argument("--model-dir", help="one version folder, served alone (VAE_MODEL_DIR)")
    parser.add_argument("--model-name", help="name to serve the model under (VAE_MODEL_NAME, default: its metadata's)")
    parser.add_argument("--model-version-policy", choices=["latest", "specific", "all"],
                        help="versions to serve (VAE_MODEL_VERSION_POLICY, default latest)")
    parser.add_argument("--model-versions", help="versions for the specific policy, e.g. 1,2 (VAE_MODEL_VERSIONS)")
    parser.add_argument("--model-config-file", help="JSON policy file re-read at every poll (VAE_MODEL_CONFIG_FILE)")
    parser.add_argument("--log-level", help="log level (VAE_LOG_LEVEL, default info)")
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
