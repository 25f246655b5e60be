"""Typed errors, and the one place that turns them into the client's error shape.

On the OpenAI surface: `{"error": {"message", "type", "param", "code"}}`; on the
Ollama surface: `{"error": "message"}` — each with the status of the error.
"""

from __future__ import annotations

from typing import Any

from bridge.core.exchange import Response, encode_json


class BridgeError(Exception):
    status = 500
    type = "api_error"
    code: str | None = None

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None,
                 param: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        self.param = param
        self.headers = headers or {}


class InternalError(BridgeError):
    """A defect of the bridge itself, contained to one request."""

    status = 500
    code = "internal_error"


class BadRequest(BridgeError):
    status = 400
    type = "invalid_request_error"


class Unauthorized(BridgeError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class Forbidden(BridgeError):
    status = 403
    type = "permission_error"


class NotFound(BridgeError):
    status = 404
    type = "not_found_error"


class MethodNotAllowed(BridgeError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class RequestTimeout(BridgeError):
    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class Conflict(BridgeError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"


class PayloadTooLarge(BridgeError):
    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"


class RateLimited(BridgeError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class ServiceUnavailable(BridgeError):
    status = 503
    type = "api_error"
    code = "service_unavailable"


class UpstreamUnavailable(BridgeError):
    status = 502
    type = "api_error"
    code = "upstream_unavailable"


class UpstreamTimeout(BridgeError):
    status = 504
    type = "api_error"
    code = "upstream_timeout"


def error_payload(surface: str, err: BridgeError) -> dict:
    if surface == "ollama":
        return {"error": err.message}
    return {"error": {"message": err.message, "type": err.type, "param": err.param,
                      "code": err.code}}


def error_response(surface: str, err: BridgeError) -> Response:
    headers = {"content-type": "application/json"}
    headers.update({name.lower(): value for name, value in err.headers.items()})
    return Response(status=err.status, headers=headers,
                    body=encode_json(error_payload(surface, err)) + b"\n",
                    detail={"param": err.param, "code": err.code})


def error_text(data: Any) -> str:
    """The message of an error body in either surface's shape (`{"error": "…"}`,
    `{"error": {"message": "…"}}`); "" for anything else."""
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        error = error.get("message")
    return error if isinstance(error, str) else ""
