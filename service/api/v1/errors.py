"""The serving layer's errors as our /v1 routes answer them ({"detail": message}). A limit is a 422, as every other
check of a /v1 request's content."""

from service.serving.errors import (
    DeadlineExceededError,
    InvalidInput,
    NotFound,
    NotReady,
    Overloaded,
    ServingError,
    Unsupported,
)

STATUS = {InvalidInput: 422, NotFound: 404, Unsupported: 409, NotReady: 503, Overloaded: 503,
          DeadlineExceededError: 504, ServingError: 500}
