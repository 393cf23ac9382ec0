"""Errors a caller can cause, each with its HTTP status and OpenAI error type.

Messages name what is wrong (a parameter, a limit, an id) and never echo content.
"""

from __future__ import annotations


class ApiError(Exception):
    status = 400
    type = "invalid_request_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        retry_after: int | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = dict(headers or {})
        if retry_after is not None:
            self.headers["Retry-After"] = str(retry_after)
        if code is not None:
            self.code = code

    def body(self) -> dict[str, object]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class BadRequest(ApiError):
    status = 400


class Unauthorized(ApiError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class Forbidden(ApiError):
    status = 403
    type = "permission_error"
    code = "model_not_allowed"


class NotFound(ApiError):
    status = 404
    code = "not_found"


class Conflict(ApiError):
    status = 409
    code = "conflict"


class PayloadTooLarge(ApiError):
    status = 413
    code = "payload_too_large"


class Unprocessable(ApiError):
    status = 422
    code = "invalid_parameter"


class TooManyRequests(ApiError):
    status = 429
    type = "rate_limit_error"
    code = "too_many_sessions"


class Unavailable(ApiError):
    status = 503
    type = "server_error"
    code = "not_ready"
