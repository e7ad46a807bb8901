"""An in-memory stand-in for ``FilesClient.upload``/``delete``, and the tests that pin its behaviour.

The fake answers what the local server answers on the points the spool relies on (a File record
with the sent bytes, filename and purpose; 400 for purposes the API takes no uploads for and for
broken JSONL in ``batch``; 404 on deleting an unknown id). ``tests/contract/test_uploads_real.py``
runs the same cases against a real ``openaifs serve`` to keep the two in step. It can be told to
fail with typed errors and to hold an upload until a test lets it go.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from openaifs.client import EarlierAttempt
from openaifs.client.records import FileRecord
from openaifs.client.transport import Failure
from openaifs.config import SERVER_ONLY_PURPOSES
from openaifs.errors import BadRequestError, NotFoundError, OpenAIFSError

UPLOAD_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
JSONL_PURPOSES = ("batch", "fine-tune")  # the server checks these are JSON Lines of objects


class FakeFilesClient:
    """Files in a dict. ``fail`` (one error per upload, in order) and ``gate`` steer uploads."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[FileRecord, bytes]] = {}
        self.uploads = 0  # upload calls, failed ones included
        self.deletes: list[str] = []
        self.fail: list[BaseException] = []
        self.gate: trio.Event | None = None  # when set, an upload waits for it after reading
        self.started = trio.Event()  # set when an upload has read its file
        self.earlier: list[EarlierAttempt | None] = []  # what each upload call was told
        self.streams: list[bytes] = []  # what each streamed upload received
        self.stream_fail: Failure | None = None  # the next streamed upload's answer, after its body
        self._next = 0

    async def upload(
        self,
        path: Path,
        filename: str,
        purpose: str,
        *,
        expires_after: int | None = None,
        progress: Callable[[int], None] | None = None,
        earlier: EarlierAttempt | None = None,
    ) -> FileRecord:
        self.uploads += 1
        self.earlier.append(earlier)
        data = await trio.Path(path).read_bytes()
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise self.fail.pop(0)
        _validate(data, filename, purpose)
        record = self._store(filename, purpose, data)
        if progress is not None:
            progress(len(data))
        return record

    async def upload_streaming(self, filename: str, purpose: str, file: AsyncIterator[bytes],
                               **_: Any) -> FileRecord | Failure:
        """Reads the body to its end (the spool's flush ends it), then answers like the server."""
        data = bytearray()
        self.streams.append(b"")
        async for piece in file:
            data += piece
            self.streams[-1] = bytes(data)
        if self.stream_fail is not None:
            failure, self.stream_fail = self.stream_fail, None
            return failure
        try:
            _validate(bytes(data), filename, purpose)
        except BadRequestError as exc:
            return Failure("files.create", "upload", status=400, message=exc.message)
        return self._store(filename, purpose, bytes(data))

    def _store(self, filename: str, purpose: str, data: bytes) -> FileRecord:
        self._next += 1
        record = FileRecord(
            id=f"file-fake{self._next:04d}", filename=filename, purpose=purpose, bytes=len(data),
            created_at=1_700_000_000 + self._next, status="processed",
        )
        self.files[record.id] = (record, data)
        return record

    async def delete(self, file_id: str) -> None:
        self.deletes.append(file_id)
        if self.files.pop(file_id, None) is None:
            raise NotFoundError(404, f"No such File object: {file_id}", param="id", operation="delete")

    def content(self, record: FileRecord) -> bytes:
        return self.files[record.id][1]


def _validate(data: bytes, filename: str, purpose: str) -> None:
    if purpose not in UPLOAD_PURPOSES:
        raise BadRequestError(400, f"'{purpose}' is not one of {list(UPLOAD_PURPOSES)} - 'purpose'",
                              param="purpose", operation="upload")
    if purpose in JSONL_PURPOSES:
        for n, line in enumerate(data.split(b"\n"), 1):
            if line.strip() and not _is_object(line):
                raise BadRequestError(400, f"Invalid file format: line {n} is not a JSON object",
                                      operation="upload")


def _is_object(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


# -- the fake's own behaviour (the contract test checks the same cases against the real server) ---


async def test_upload_returns_a_record_of_what_was_sent(tmp_path: Path) -> None:
    fake = FakeFilesClient()
    path = tmp_path / "x"
    path.write_bytes(b'{"a": 1}\n')
    record = await fake.upload(path, "in.jsonl", "batch")
    assert (record.filename, record.purpose, record.bytes) == ("in.jsonl", "batch", 9)
    assert fake.content(record) == b'{"a": 1}\n'


@pytest.mark.parametrize("purpose", sorted(SERVER_ONLY_PURPOSES))
async def test_server_only_purposes_are_a_400(tmp_path: Path, purpose: str) -> None:
    (tmp_path / "x").write_bytes(b"x")
    with pytest.raises(BadRequestError):
        await FakeFilesClient().upload(tmp_path / "x", "x", purpose)


@pytest.mark.parametrize("purpose", JSONL_PURPOSES)
@pytest.mark.parametrize("body", [b'{"a": 1}\nnot json\n', b"[1, 2]\n", b'{"a": 1}\n"text"'])
async def test_bad_jsonl_is_a_400(tmp_path: Path, purpose: str, body: bytes) -> None:
    (tmp_path / "x").write_bytes(body)
    with pytest.raises(BadRequestError):
        await FakeFilesClient().upload(tmp_path / "x", "x.jsonl", purpose)


async def test_jsonl_with_blank_lines_and_no_final_newline_is_fine(tmp_path: Path) -> None:
    body = b'{"a": 1}\n\n  \n{"b": 2}'
    (tmp_path / "x").write_bytes(body)
    assert (await FakeFilesClient().upload(tmp_path / "x", "x.jsonl", "batch")).bytes == len(body)


async def test_delete_of_an_unknown_id_is_a_404() -> None:
    with pytest.raises(NotFoundError):
        await FakeFilesClient().delete("file-nope")


async def test_told_failures_come_in_order(tmp_path: Path) -> None:
    (tmp_path / "x").write_bytes(b"x")
    fake = FakeFilesClient()
    fake.fail = [OpenAIFSError("first")]
    with pytest.raises(OpenAIFSError, match="first"):
        await fake.upload(tmp_path / "x", "x", "vision")
    assert (await fake.upload(tmp_path / "x", "x", "vision")).bytes == 1
    assert fake.uploads == 2
