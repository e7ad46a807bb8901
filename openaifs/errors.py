"""Typed errors of openaifs, and the one table that maps each of them to an errno.

    OpenAIFSError
     ├── APIError                  the server answered with an error status
     │    ├── BadRequestError      400 (DownloadForbiddenError: "Not allowed to download files of purpose")
     │    ├── AuthenticationError  401
     │    ├── PermissionDeniedError 403
     │    ├── NotFoundError        404
     │    ├── ConflictError        409
     │    ├── RequestTooLargeError 413
     │    ├── RateLimitError       429 (QuotaExceededError: insufficient_quota, never retried)
     │    └── ServerError          5xx
     ├── TransportError            no usable answer: connection refused/dropped, timeout, bad body
     │    └── IntegrityError       bytes received do not match what the server promised
     ├── LocalFileError            a local file (to upload) could not be opened or read
     └── UploadError               an upload failed; carries where its bytes were preserved

Every ``str()`` reads as one sentence a person can act on. No error ever holds the API key: the
client never passes headers into an error, and messages echoed from the server are scrubbed of
anything that looks like a key (the hosted API quotes part of a wrong key in its 401 message).
"""

from __future__ import annotations

import errno
import re

_KEY_LIKE = re.compile(r"\b(sk-[A-Za-z0-9_\-*]{4,}|[A-Za-z0-9_\-]{32,})")


def scrub(text: str) -> str:
    """Remove anything that looks like an API key from a server-provided message."""
    return _KEY_LIKE.sub("[redacted]", text)


class OpenAIFSError(Exception):
    """Base of all openaifs errors."""


class APIError(OpenAIFSError):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        code: str | None = None,
        param: str | None = None,
        request_id: str | None = None,
        file_id: str | None = None,
        operation: str | None = None,
    ) -> None:
        self.status = status
        self.message = scrub(message)
        self.type = type
        self.code = code
        self.param = param
        self.request_id = request_id
        self.file_id = file_id
        self.operation = operation
        super().__init__(str(self))

    def __str__(self) -> str:
        what = f"{self.operation} " if self.operation else ""
        target = f" of {self.file_id}" if self.file_id else ""
        details = ", ".join(
            f"{k}={v}" for k, v in (("code", self.code), ("request id", self.request_id)) if v
        )
        tail = f" ({details})" if details else ""
        return f"{what}request{target} failed with HTTP {self.status}: {self.message}{tail}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status}, message={self.message!r}, code={self.code!r})"


class BadRequestError(APIError):
    pass


class DownloadForbiddenError(BadRequestError):
    """The server refuses downloads of this purpose (a hosted-API rule, remembered per purpose)."""


class AuthenticationError(APIError):
    pass


class PermissionDeniedError(APIError):
    pass


class NotFoundError(APIError):
    pass


class ConflictError(APIError):
    pass


class RequestTooLargeError(APIError):
    pass


class RateLimitError(APIError):
    pass


class QuotaExceededError(RateLimitError):
    """429 with code insufficient_quota: the account is out of credit; retrying cannot help."""


class ServerError(APIError):
    pass


_STATUS_CLASSES: dict[int, type[APIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: RequestTooLargeError,
    429: RateLimitError,
}

_DOWNLOAD_REFUSED = "Not allowed to download files of purpose"


def api_error(status: int, message: str, **fields: str | None) -> APIError:
    """Build the right APIError subclass for a status and error body."""
    code = fields.get("code")
    cls: type[APIError]
    if status == 400 and _DOWNLOAD_REFUSED in message:
        cls = DownloadForbiddenError
    elif status == 429 and (code == "insufficient_quota" or fields.get("type") == "insufficient_quota"):
        cls = QuotaExceededError
    elif status >= 500:
        cls = ServerError
    else:
        cls = _STATUS_CLASSES.get(status, APIError)
    return cls(status, message, **fields)


class TransportError(OpenAIFSError):
    """No usable answer from the server after the client's retries."""

    def __init__(self, message: str, *, operation: str | None = None, file_id: str | None = None) -> None:
        self.message = scrub(message)
        self.operation = operation
        self.file_id = file_id
        super().__init__(str(self))

    def __str__(self) -> str:
        what = f"{self.operation} " if self.operation else ""
        target = f" of {self.file_id}" if self.file_id else ""
        return f"{what}request{target} failed: {self.message}"


class IntegrityError(TransportError):
    """The bytes received do not match the size the server promised (short or long body)."""


class LocalFileError(OpenAIFSError):
    """A local file the client was asked to upload could not be opened or read to its end."""


class UploadError(OpenAIFSError):
    """An upload failed; ``cause`` says why and ``preserved_at`` where its bytes were kept."""

    def __init__(self, filename: str, purpose: str, cause: BaseException, preserved_at: str | None = None):
        self.filename = filename
        self.purpose = purpose
        self.cause = cause
        self.preserved_at = preserved_at
        super().__init__(str(self))

    def __str__(self) -> str:
        kept = f"; its bytes are kept at {self.preserved_at}" if self.preserved_at else ""
        return f"upload of {self.filename!r} to {self.purpose} failed: {self.cause}{kept}"


class FileTooLargeError(OpenAIFSError):
    """The file is larger than the API accepts (8 GB per upload)."""


class ReadOnlyError(OpenAIFSError):
    """A write to an immutable (uploaded) file, or any write on a --read-only mount."""


class ServerOnlyPurposeError(ReadOnlyError):
    """A new file in a purpose the server fills itself (``batch_output`` …): the API takes no uploads."""

    def __init__(self, purpose: str) -> None:
        self.purpose = purpose
        super().__init__(
            f"files of purpose {purpose} are created by the server; nothing can be uploaded into {purpose}/"
        )


def errno_for(exc: BaseException) -> int:
    """The one table from openaifs errors to the errno a FUSE caller sees."""
    if isinstance(exc, UploadError):
        return errno_for(exc.cause)
    if isinstance(exc, OSError) and exc.errno:  # local disk trouble (ENOSPC...) keeps its own errno
        return exc.errno
    if isinstance(exc, DownloadForbiddenError):
        return errno.EACCES
    if isinstance(exc, NotFoundError):
        return errno.ENOENT
    if isinstance(exc, (AuthenticationError, PermissionDeniedError)):
        return errno.EACCES
    if isinstance(exc, RequestTooLargeError | FileTooLargeError):
        return errno.EFBIG
    if isinstance(exc, QuotaExceededError):
        return errno.EDQUOT
    if isinstance(exc, BadRequestError):
        return errno.EINVAL  # the server rejected the request or the content
    if isinstance(exc, ReadOnlyError):
        return errno.EACCES
    return errno.EIO
