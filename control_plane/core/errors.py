"""Errors the services raise that are not field validation."""


class Conflict(Exception):
    """The request is valid but clashes with the current state (the API answers 409)."""

    code = "conflict"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code:
            self.code = code
