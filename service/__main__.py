"""`python -m service`: serve the model with uvicorn (uvloop + httptools). Flags override VAE_* variables."""

import argparse
import logging

import uvicorn

from service.main import create_app
from service.settings import Settings


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    parser.add_argument("--host", help="interface to bind (VAE_HOST)")
    parser.add_argument("--port", type=int, help="port to listen on (VAE_PORT)")
    parser.add_argument("--model-dir", help="SavedModel directory (VAE_MODEL_DIR); default: the bundled model")
    parser.add_argument("--log-level", help="log level (VAE_LOG_LEVEL)")
    args = parser.parse_args()
    settings = Settings(**{key: value for key, value in vars(args).items() if value is not None})
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, loop="uvloop", http="httptools",
                log_level=settings.log_level, access_log=settings.access_log)


if __name__ == "__main__":
    main()
