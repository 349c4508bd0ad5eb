"""The daemon's HTTP listener: shared error handling here; the routes live beside it."""

from daemon.http.errors import (
    REQUEST_ID_HEADER,
    ApiError,
    BadRequest,
    HttpError,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    Unauthorized,
    bind_log_context,
    error_middleware,
    error_response,
    read_limited_body,
    request_id,
    require_bearer,
)

__all__ = [
    "REQUEST_ID_HEADER",
    "ApiError",
    "BadRequest",
    "HttpError",
    "NotFound",
    "PayloadTooLarge",
    "ServiceUnavailable",
    "Unauthorized",
    "bind_log_context",
    "error_middleware",
    "error_response",
    "read_limited_body",
    "request_id",
    "require_bearer",
]
