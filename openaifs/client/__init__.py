"""The HTTP client layer of openaifs: ``FilesClient`` over ``/files`` and ``/uploads``.

``files.py`` holds the client, ``transport.py`` the seam from httpx to typed errors and the retry
budget, ``retry.py`` the pure retry policy, ``multipart.py`` request bodies streamed from disk,
``records.py`` the typed values handed out. Imports flow one way: this package imports only
``openaifs.config`` and ``openaifs.errors`` from the rest of openaifs.
"""

from openaifs.client.files import EarlierAttempt, FilesClient
from openaifs.client.records import ClientStats, FileRecord
from openaifs.client.retry import retry_decision

__all__ = ["ClientStats", "EarlierAttempt", "FileRecord", "FilesClient", "retry_decision"]
