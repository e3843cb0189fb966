"""The request ID of the request being handled, for log lines (set by RequestGuard; no heavy imports, so that
`python -m service` can configure logging before TensorFlow loads)."""

import contextvars
import logging

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


class RequestIdFilter(logging.Filter):
    """Adds `request_id` to every log record ("-" outside a request); put it on the handlers."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True
