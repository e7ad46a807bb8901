"""The local OpenAI-compatible Files API server behind ``openaifs serve``.

A verified fake of ``/v1/files*`` and ``/v1/uploads*`` (``shared/contract/FILES_API.md``): the
official ``openai`` SDK works against it unchanged, it stores files durably (SQLite metadata plus
one blob per file), and it can emulate the hosted API's quirks and faults on demand so the
client's resilience is tested against real HTTP.

Modules, each owning one concern:

* ``cli``        flags, socket binding, uvicorn, the readiness line, signals.
* ``app``        the ASGI entry point: routing, request ids, auth, faults, error envelopes.
* ``files_api``  handlers for ``/v1/files*``.
* ``uploads_api`` handlers for ``/v1/uploads*``.
* ``admin``      the loopback-only ``/_admin/*`` routes (docs/INTERNALS.md).
* ``content``    streaming file bodies with Range support.
* ``multipart``  incremental multipart/form-data parsing straight into blob files.
* ``validation`` request parameter checks and the streaming JSONL checker.
* ``storage``    SQLite (WAL) metadata; ``blobs`` the atomic blob files.
* ``settings``   runtime limits/quirks and the adjustable clock; ``faults`` fault injection and
  per-route counters; ``apierror`` the hosted API's error bodies.

This package imports nothing from the filesystem side of openaifs (only ``openaifs.__version__``
and ``openaifs.config`` for the server key).
"""
