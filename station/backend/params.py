"""Request parameters as clients really send them: a urlencoded or multipart form, a JSON object
(the mini-program's wx.request default) or the query string, whichever the client used."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from multidict import MultiDict

from station.backend.errors import InvalidInput

MAX_SESSION_ID = 2**63 - 1
MAX_DIGITS = len(str(MAX_SESSION_ID))


class Params:
    """The merged parameters of one request; the body wins over the query string."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self._values = dict(values)

    def __contains__(self, name: str) -> bool:
        return name in self._values

    def raw(self, name: str) -> Any:
        return self._values.get(name)

    def text(self, name: str, *, required: bool = False, default: str | None = None) -> str | None:
        value = self._values.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            if required:
                raise InvalidInput(f"{name} is required", field=name)
            return default
        if isinstance(value, bool) or isinstance(value, (dict, list)):
            raise InvalidInput(f"{name} must be text", field=name)
        return str(value).strip()

    def integer(self, name: str, *, required: bool = False) -> int | None:
        """A positive integer sent as a JSON number or as text ("1011")."""
        value = self._values.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            if required:
                raise InvalidInput(f"{name} is required", field=name)
            return None
        number: int | None = None
        if isinstance(value, bool):
            number = None
        elif isinstance(value, int):
            number = value
        elif isinstance(value, float) and value.is_integer():
            number = int(value)
        elif (
            isinstance(value, str)
            and value.strip().isascii()
            and value.strip().isdigit()
            and len(value.strip()) <= MAX_DIGITS  # int() refuses over 4,300 digits
        ):
            number = int(value.strip())  # isdigit alone lets "²" through, which int() refuses
        if number is None or not 0 < number <= MAX_SESSION_ID:
            raise InvalidInput(
                f"{name} must be a positive integer", field=name, received=str(value)[:100]
            )
        return number

    def text_list(self, name: str) -> list[str] | None:
        """A list sent as a JSON array, or as text separated by commas."""
        value = self._values.get(name)
        if value is None or value == "":
            return None
        if isinstance(value, str):
            items = [part.strip() for part in value.split(",")]
        elif isinstance(value, list) and all(isinstance(v, (str, int)) for v in value):
            items = [str(v).strip() for v in value]
        else:
            raise InvalidInput(f"{name} must be a list of codes", field=name)
        return [item for item in items if item] or None


async def read_params(request: web.Request) -> Params:
    """Parse the request body by its content type, merged over the query string."""
    values: dict[str, Any] = dict(_single(request.query))
    if not request.body_exists:
        return Params(values)

    content_type = request.content_type
    if content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        try:
            form = await request.post()
        except UnicodeDecodeError:
            raise InvalidInput("the form is not valid UTF-8") from None
        except LookupError as exc:  # a charset parameter naming no known codec
            raise InvalidInput(f"the form's charset is unknown: {exc}") from None
        except (ValueError, HttpProcessingError, web.RequestPayloadError) as exc:
            # A broken multipart body, or one that does not decode as its Content-Encoding says
            raise InvalidInput(f"the form could not be read: {_reason(exc)}") from None
        for name, value in _single(form).items():
            if isinstance(value, web.FileField):
                raise InvalidInput(f"{name} must be a form field, not a file upload", field=name)
            values[name] = value
        return Params(values)

    try:
        body = await request.read()
    except (HttpProcessingError, web.RequestPayloadError) as exc:
        # e.g. a Content-Encoding the body does not match: aiohttp wraps the decoder's error
        raise InvalidInput(f"the request body could not be read: {_reason(exc)}") from None
    if not body.strip():
        return Params(values)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput("the request body is not valid UTF-8") from None
    if content_type == "application/json" or text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:
            # Beyond JSONDecodeError: integers over Python's digit limit raise a bare
            # ValueError, and deeply nested arrays exhaust the recursion limit.
            raise InvalidInput(f"the request body is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise InvalidInput("the JSON body must be an object of named fields")
        try:
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            # JSON may spell a lone surrogate (\ud800), which no database text can hold.
            raise InvalidInput("the JSON body holds text that is not valid Unicode") from None
        values.update(data)
        return Params(values)
    raise InvalidInput(
        f"unsupported content type {content_type}: send a form or a JSON object",
        content_type=content_type,
    )


def _reason(exc: Exception) -> str:
    cause = exc.__cause__ if isinstance(exc, web.RequestPayloadError) else exc
    if isinstance(cause, HttpProcessingError):
        return cause.message or type(cause).__name__
    return str(exc)


def _single(multi: MultiDict[Any] | Mapping[str, Any]) -> dict[str, Any]:
    """The last value of each name, as the original server's QueryDict lookups gave it."""
    return {name: value for name, value in multi.items()}
