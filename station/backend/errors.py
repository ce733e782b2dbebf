"""Domain errors raised by the core. Each carries the HTTP status the API answers with, so the
HTTP face and the desktop window report the same failure in the same words."""

from __future__ import annotations

from typing import Any


class StationError(Exception):
    status = 500

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields

    def to_json(self) -> dict[str, Any]:
        return {"error": self.message, **self.fields}


class InvalidInput(StationError):
    status = 400


class NotFound(StationError):
    status = 404


class WrongState(StationError):
    status = 409


class DeviceFailed(StationError):
    """The device refused the connection or answered with an error."""

    status = 502


class DeviceTimeout(StationError):
    """The device accepted the connection but did not answer in time."""

    status = 504
