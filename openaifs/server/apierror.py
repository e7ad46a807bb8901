"""The hosted API's error bodies: one exception type and a factory per documented failure.

Every failure a handler can report is an ``ApiError``; ``app`` turns it into
``{"error": {"message", "type", "param", "code"}}`` with its HTTP status. Messages, types, codes
and params follow FILES_API.md §7 where it records them (tagged OBS/C-DL/C-EXP there). Where the
contract says **unknown**, the choice made here is stated next to the factory. Nothing here may
ever echo a full API key.
"""

from __future__ import annotations

import json
from typing import Any

INVALID_REQUEST = "invalid_request_error"

# The purposes POST /files accepts, in the order the hosted API lists them in its error message
# (FILES_API.md §7, OBS).
UPLOAD_PURPOSES_MESSAGE_ORDER: tuple[str, ...] = (
    "fine-tune", "assistants", "batch", "user_data", "vision", "evals",
)


class ApiError(Exception):
    """A failure answered with the hosted API's error envelope."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = INVALID_REQUEST,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def body_bytes(self) -> bytes:
        return json.dumps(self.body(), ensure_ascii=False).encode()


# -- authentication (FILES_API.md §7, OBS) -----------------------------------------------------------

def missing_key() -> ApiError:
    return ApiError(
        401,
        "You didn't provide an API key. You need to provide your API key in an Authorization header "
        "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field (with blank "
        "username) if you're accessing the API from your browser and are prompted for a username and "
        "password. You can obtain an API key from https://platform.openai.com/account/api-keys.",
    )


def mask_key(key: str) -> str:
    """``sk-…last4`` like the hosted API; short keys show no characters at all."""
    prefix = "sk-" if key.startswith("sk-") else ""
    tail = key[-4:] if len(key) >= 12 else ""
    return f"{prefix}…{tail}"


def wrong_key(provided: str) -> ApiError:
    return ApiError(
        401,
        f"Incorrect API key provided: {mask_key(provided)}. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
        code="invalid_api_key",
    )


# -- lookups -----------------------------------------------------------------------------------------

def no_such_file(file_id: str) -> ApiError:
    return ApiError(404, f"No such File object: {file_id}", param="id")


def no_such_upload(upload_id: str) -> ApiError:
    # Unknown upstream; shaped like the file case (same param name "id").
    return ApiError(404, f"No such Upload object: {upload_id}", param="id")


def invalid_url(method: str, path: str) -> ApiError:
    # The hosted API answers unknown routes with this 404 body.
    return ApiError(404, f"Invalid URL ({method} {path})")


def method_not_allowed(method: str, path: str) -> ApiError:
    return ApiError(405, f"Method not allowed ({method} {path})")


# -- request validation -------------------------------------------------------------------------------

def bad_purpose(value: str) -> ApiError:
    allowed = ", ".join(f"'{p}'" for p in UPLOAD_PURPOSES_MESSAGE_ORDER)
    return ApiError(400, f"'{value}' is not one of [{allowed}] - 'purpose'", param="purpose")


def unexpected_field(name: str) -> ApiError:
    # FILES_API.md §7 (C-EXP): param and code are null.
    return ApiError(400, f"Additional properties are not allowed ('{name}' was unexpected)")


def missing_param(name: str) -> ApiError:
    return ApiError(400, f"Missing required parameter: '{name}'.", param=name,
                    code="missing_required_parameter")


def invalid_type(name: str, expected: str, got: object) -> ApiError:
    return ApiError(
        400,
        f"Invalid type for '{name}': expected {expected}, but got {_json_type(got)} instead.",
        param=name,
        code="invalid_type",
    )


def invalid_value(name: str, message: str) -> ApiError:
    return ApiError(400, f"Invalid '{name}': {message}", param=name, code="invalid_value")


def invalid_json_body() -> ApiError:
    return ApiError(
        400,
        "We could not parse the JSON body of your request. (HINT: This likely means you aren't using "
        "your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not "
        "valid JSON.)",
    )


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def download_refused(purpose: str) -> ApiError:
    # FILES_API.md §6 (C-DL): 400, param and code null.
    return ApiError(400, f"Not allowed to download files of purpose: {purpose}")


def too_large(what: str, size: int | None, limit: int, param: str | None) -> ApiError:
    """Size limit exceeded. The hosted status is unknown (FILES_API.md §7); we answer 413 so a client
    can tell "too big" from "malformed" without parsing messages (openaifs maps 413 to EFBIG)."""
    got = f" ({size} bytes)" if size is not None else ""
    return ApiError(413, f"{what}{got} exceeds the maximum of {limit} bytes.", param=param,
                    code="file_too_large")


# -- injected faults -----------------------------------------------------------------------------------

def rate_limited(retry_after: float | None) -> ApiError:
    headers: dict[str, str] = {}
    if retry_after is not None:
        headers["retry-after"] = _seconds_text(retry_after)
        headers["retry-after-ms"] = _seconds_text(retry_after * 1000)
    return ApiError(
        429,
        "Rate limit reached for requests. Please try again later.",
        type="requests",
        code="rate_limit_exceeded",
        headers=headers,
    )


def server_error(status: int) -> ApiError:
    return ApiError(
        status,
        "The server had an error while processing your request. Sorry about that!",
        type="server_error",
    )


def _seconds_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"
