"""Optional access control: with API keys configured (VAE_API_KEYS and/or VAE_API_KEYS_FILE), every path except the
probes and the API docs needs `Authorization: Bearer <key>`. An ASGI middleware, so every protocol's routes (ours,
KServe v2, TF Serving) are covered without each declaring it."""

import hmac
from pathlib import Path

from fastapi import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from service.http.errors import failed_response
from service.settings import Settings

# Probes (ours and KServe v2's) and the API docs stay open, so that orchestrators and readers need no key; the app adds
# the playground's files (the page asks for a key when the API answers 401).
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready",
                        "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})


class ApiKeyError(ValueError):
    """The key file cannot be read or holds no key."""


def load_api_keys(settings: Settings) -> list[bytes]:
    """The configured keys: VAE_API_KEYS (comma-separated) plus VAE_API_KEYS_FILE (one a line, # comments)."""
    keys = [] if settings.api_keys is None else settings.api_keys.get_secret_value().split(",")
    if settings.api_keys_file is not None:
        path = Path(settings.api_keys_file)
        try:
            lines = path.read_text().splitlines()
        except OSError as err:
            raise ApiKeyError(f"{path}: cannot read the API key file (VAE_API_KEYS_FILE): {err.strerror}") from None
        file_keys = [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if not file_keys:
            raise ApiKeyError(f"{path}: the API key file (VAE_API_KEYS_FILE) holds no key")
        keys += file_keys
    return [key.strip().encode() for key in keys if key.strip()]


class ApiKeyAuth:
    def __init__(self, app: ASGIApp, keys: list[bytes], open_paths: frozenset[str] = OPEN_PATHS) -> None:
        self.app = app
        self.keys = keys
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths or self._authorized(scope):
            await self.app(scope, receive, send)
            return
        presented = any(name == b"authorization" for name, _ in scope["headers"])
        problem = "the API key is not valid" if presented else "this path needs an API key"
        challenge = 'Bearer realm="mnist-vae"' + (', error="invalid_token"' if presented else "")
        failed = HTTPException(401, f"{problem}: send Authorization: Bearer <key>", {"WWW-Authenticate": challenge})
        await failed_response(scope["path"], failed)(scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization":
                return bearer_key_valid(value, self.keys)
        return False


def bearer_key_valid(authorization: bytes, keys: list[bytes]) -> bool:
    """Whether an Authorization value (an HTTP header or gRPC's `authorization` metadata) is `Bearer <key>` with one
    of `keys`."""
    scheme, _, token = authorization.partition(b" ")
    if scheme.lower() != b"bearer":
        return False
    token = token.strip()
    # Compare with every key, each in constant time, so the time taken says nothing about any of them.
    return sum(hmac.compare_digest(token, key) for key in keys) > 0
