"""JSON answers: orjson, numpy arrays serialised directly."""

from typing import Any

import orjson
from starlette.responses import Response


def json_response(content: dict[str, Any], headers: dict[str, str] | None = None, status: int = 200) -> Response:
    return Response(orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY), status, headers, "application/json")
