"""Request bodies for every protocol: read within a size limit, inflated (gzip, deflate), and parsed as JSON by one
parser (orjson), off the event loop when large."""

import asyncio
import zlib
from collections.abc import Callable
from typing import Any, TypeVar

import orjson
from fastapi import HTTPException, Request

import contract

# Bodies larger than this are parsed in a thread: an 8 MB JSON body takes the event loop ~100 ms otherwise.
INLINE_BYTES = 64 * 1024
T = TypeVar("T")


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing with 413 as soon as it is known to exceed `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared and contract.is_count(declared) and int(declared) > limit:
        raise HTTPException(413, f"request body is {declared} bytes, the limit is {limit}")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise HTTPException(413, f"request body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def inflate(body: bytes, encoding: str | None, limit: int) -> bytes:
    """A gzip or deflate (zlib) request body, as tritonclient sends with request_compression_algorithm; at most
    `limit` bytes once inflated (413 above)."""
    if not encoding or encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise HTTPException(415, f"Content-Encoding {encoding!r} is not supported (gzip, deflate)")
    inflater = zlib.decompressobj(31 if encoding == "gzip" else 15)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as err:
        raise HTTPException(400, f"the {encoding} request body does not inflate: {err}") from None
    if len(data) > limit:
        raise HTTPException(413, f"the request body inflates to over the limit of {limit} bytes")
    return data


def parse_json(body: bytes) -> Any:
    """The body as JSON, read by orjson alone: what it refuses (not UTF-8, NaN or Infinity, integers beyond 64 bits,
    nesting deeper than 1024) is a 400 naming the problem. A second, laxer parser would accept documents the answer
    could not echo."""
    if not body:
        raise HTTPException(400, "request body is empty")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as err:
        raise HTTPException(400, f"malformed JSON: {err}") from None


async def off_loop_if_large(size: int, fn: Callable[..., T], *args: Any) -> T:
    """fn(*args), in a thread when the body is larger than INLINE_BYTES (parsing and converting it would hold the
    event loop), else right here (a thread hop costs more than a small body's parse)."""
    if size > INLINE_BYTES:
        return await asyncio.to_thread(fn, *args)
    return fn(*args)
