"""/v1/uploads against the official SDK: create, parts, complete, cancel, expiry, limits."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import pytest

from tests.contract.conftest import ContractLog, error_of
from tests.support.server import LocalServer

MIME = "application/octet-stream"


def _upload(sdk: openai.OpenAI, size: int, purpose: str = "vision", **kw: object) -> openai.types.Upload:
    return sdk.uploads.create(bytes=size, filename="big.bin", mime_type=MIME, purpose=purpose, **kw)  # type: ignore[arg-type]


def test_parts_are_joined_in_the_order_complete_names(sdk: openai.OpenAI, contract_log: ContractLog) -> None:
    up = _upload(sdk, 9)
    assert (up.status, up.object, up.file, up.bytes) == ("pending", "upload", None, 9)
    assert up.expires_at == up.created_at + 3600
    parts = [sdk.uploads.parts.create(up.id, data=d) for d in (b"111", b"222", b"333")]
    assert all(p.upload_id == up.id and p.object == "upload.part" for p in parts)
    order = [parts[2].id, parts[0].id, parts[1].id]
    md5 = hashlib.md5(b"333111222").hexdigest()
    done = sdk.uploads.complete(up.id, part_ids=order, md5=md5)
    assert done.status == "completed" and done.id == up.id and done.file is not None
    f = done.file
    assert (f.filename, f.bytes, f.purpose, f.status, f.expires_at) == (
        "big.bin",
        9,
        "vision",
        "processed",
        None,
    )
    assert sdk.files.retrieve(f.id) == f
    assert sdk.files.content(f.id).read() == b"333111222"
    assert {"#/components/schemas/Upload", "#/components/schemas/UploadPart"} <= contract_log.refs()
    with pytest.raises(openai.BadRequestError, match="completed"):
        sdk.uploads.parts.create(up.id, data=b"late")
    with pytest.raises(openai.BadRequestError, match="completed"):
        sdk.uploads.complete(up.id, part_ids=order)
    with pytest.raises(openai.BadRequestError, match="completed"):
        sdk.uploads.cancel(up.id)


def test_upload_file_chunked(sdk: openai.OpenAI, tmp_path: Path) -> None:
    data = bytes(range(256)) * 400  # 102400 bytes: 7 parts of 16000 (the last one short)
    path = tmp_path / "data.bin"
    path.write_bytes(data)
    done = sdk.uploads.upload_file_chunked(file=path, mime_type=MIME, purpose="assistants", part_size=16000)
    assert done.status == "completed" and done.file is not None
    assert (done.file.filename, done.file.bytes) == ("data.bin", len(data))
    server_copy = sdk.uploads.upload_file_chunked(
        file=data, filename="mem.bin", bytes=len(data), mime_type=MIME, purpose="vision", part_size=50000
    )
    assert server_copy.file is not None
    assert sdk.files.content(server_copy.file.id).read() == data


@pytest.mark.parametrize("purpose", ["assistants", "batch", "fine-tune", "vision", "user_data", "evals"])
def test_every_upload_purpose(sdk: openai.OpenAI, purpose: str) -> None:
    up = _upload(sdk, 3, purpose=purpose)
    p = sdk.uploads.parts.create(up.id, data=b"{}\n")
    assert sdk.uploads.complete(up.id, part_ids=[p.id]).file.purpose == purpose  # type: ignore[union-attr]


def test_complete_checks_parts(sdk: openai.OpenAI) -> None:
    up = _upload(sdk, 6)
    a = sdk.uploads.parts.create(up.id, data=b"abc")
    b = sdk.uploads.parts.create(up.id, data=b"def")
    stranger = sdk.uploads.parts.create(_upload(sdk, 3).id, data=b"xyz")
    cases = [
        ([a.id], "part_ids", "add up to 3 bytes"),
        ([a.id, b.id, "part_nope"], "part_ids", "No such Part object: part_nope"),
        ([a.id, stranger.id], "part_ids", f"No such Part object: {stranger.id}"),
        ([a.id, a.id], "part_ids", "more than once"),
    ]
    for part_ids, param, text in cases:
        with pytest.raises(openai.BadRequestError) as info:
            sdk.uploads.complete(up.id, part_ids=part_ids)
        assert error_of(info.value)["param"] == param and text in error_of(info.value)["message"]
    with pytest.raises(openai.BadRequestError) as info:
        sdk.uploads.complete(up.id, part_ids=[a.id, b.id], md5="0" * 32)
    assert error_of(info.value)["param"] == "md5"
    done = sdk.uploads.complete(up.id, part_ids=[a.id, b.id], md5=hashlib.md5(b"abcdef").hexdigest().upper())
    assert done.status == "completed"  # refusals left the Upload pending and its parts intact


def test_cancel(sdk: openai.OpenAI) -> None:
    up = _upload(sdk, 3)
    p = sdk.uploads.parts.create(up.id, data=b"abc")
    cancelled = sdk.uploads.cancel(up.id)
    assert (cancelled.status, cancelled.file) == ("cancelled", None)
    assert sdk.uploads.cancel(up.id).status == "cancelled"  # idempotent
    with pytest.raises(openai.BadRequestError, match="cancelled"):
        sdk.uploads.parts.create(up.id, data=b"x")
    with pytest.raises(openai.BadRequestError, match="cancelled"):
        sdk.uploads.complete(up.id, part_ids=[p.id])
    assert list(sdk.files.list()) == []


def test_uploads_expire_after_an_hour(sdk: openai.OpenAI, server: LocalServer) -> None:
    up = _upload(sdk, 3)
    p = sdk.uploads.parts.create(up.id, data=b"abc")
    server.admin("POST", "clock", json={"advance": 3600})
    for call in (
        lambda: sdk.uploads.parts.create(up.id, data=b"x"),
        lambda: sdk.uploads.complete(up.id, part_ids=[p.id]),
        lambda: sdk.uploads.cancel(up.id),
    ):
        with pytest.raises(openai.BadRequestError, match="expired"):
            call()


def test_unknown_upload_is_404(sdk: openai.OpenAI) -> None:
    for call in (
        lambda: sdk.uploads.parts.create("upload_nope", data=b"x"),
        lambda: sdk.uploads.complete("upload_nope", part_ids=[]),
        lambda: sdk.uploads.cancel("upload_nope"),
    ):
        with pytest.raises(openai.NotFoundError) as info:
            call()
        assert error_of(info.value) == {
            "message": "No such Upload object: upload_nope",
            "type": "invalid_request_error",
            "param": "id",
            "code": None,
        }


@pytest.mark.parametrize(
    ("body", "status", "param", "code"),
    [
        ({"filename": "a", "purpose": "vision", "bytes": 1}, 400, "mime_type", "missing_required_parameter"),
        ({"filename": "a", "purpose": "vision", "bytes": 1, "mime_type": "x", "color": 1}, 400, None, None),
        ({"filename": "a", "purpose": "nope", "bytes": 1, "mime_type": "x"}, 400, "purpose", None),
        (
            {"filename": "a", "purpose": "vision", "bytes": "1", "mime_type": "x"},
            400,
            "bytes",
            "invalid_type",
        ),
        (
            {"filename": "a", "purpose": "vision", "bytes": -1, "mime_type": "x"},
            400,
            "bytes",
            "invalid_value",
        ),
        (
            {"filename": "a", "purpose": "vision", "bytes": 8_000_000_001, "mime_type": "x"},
            413,
            "bytes",
            "file_too_large",
        ),
        (
            {
                "filename": "a",
                "purpose": "vision",
                "bytes": 1,
                "mime_type": "x",
                "expires_after": {"anchor": "created_at", "seconds": 60},
            },
            400,
            "expires_after.seconds",
            "invalid_value",
        ),
    ],
)
def test_create_validation(
    raw: httpx.Client, body: dict[str, object], status: int, param: str | None, code: str | None
) -> None:
    r = raw.post("/uploads", json=body)
    assert r.status_code == status
    assert (r.json()["error"]["param"], r.json()["error"]["code"]) == (param, code)


def test_malformed_json_bodies(raw: httpx.Client) -> None:
    r = raw.post("/uploads", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "could not parse the JSON body" in r.json()["error"]["message"]
    up = raw.post(
        "/uploads", json={"filename": "a", "purpose": "vision", "bytes": 0, "mime_type": "x"}
    ).json()
    r = raw.post(f"/uploads/{up['id']}/complete", json={"part_ids": "part_x"})
    assert (r.status_code, r.json()["error"]["param"]) == (400, "part_ids")
    r = raw.post(f"/uploads/{up['id']}/complete", json={"part_ids": [], "extra": 1})
    assert r.json()["error"]["message"] == "Additional properties are not allowed ('extra' was unexpected)"
    r = raw.post(f"/uploads/{up['id']}/complete", json={"part_ids": []})
    assert r.status_code == 200 and r.json()["file"]["bytes"] == 0


def test_part_and_upload_limits(
    server_factory: Callable[..., LocalServer], make_sdk: Callable[..., openai.OpenAI]
) -> None:
    srv = server_factory("--max-part-bytes", "100", "--max-upload-bytes", "250")
    sdk = make_sdk(srv)
    with pytest.raises(openai.APIStatusError) as info:
        _upload(sdk, 251)
    assert (info.value.status_code, error_of(info.value)["param"]) == (413, "bytes")
    up = _upload(sdk, 250)
    with pytest.raises(openai.APIStatusError) as info:
        sdk.uploads.parts.create(up.id, data=b"x" * 101)
    assert (info.value.status_code, error_of(info.value)["param"]) == (413, "data")
    ids = [sdk.uploads.parts.create(up.id, data=b"x" * n).id for n in (100, 100, 50)]
    with pytest.raises(openai.APIStatusError, match="413"):
        sdk.uploads.parts.create(up.id, data=b"x")  # 251 bytes received in all
    assert sdk.uploads.complete(up.id, part_ids=ids).file.bytes == 250  # type: ignore[union-attr]
    srv.configure(max_part_bytes=10)
    with pytest.raises(openai.APIStatusError, match="413"):
        sdk.uploads.parts.create(_upload(sdk, 11).id, data=b"x" * 11)


def test_part_needs_its_data_field(raw: httpx.Client) -> None:
    up = raw.post(
        "/uploads", json={"filename": "a", "purpose": "vision", "bytes": 1, "mime_type": "x"}
    ).json()
    r = raw.post(f"/uploads/{up['id']}/parts", files={"chunk": ("c", b"x")})
    assert r.status_code == 400 and "('chunk' was unexpected)" in r.json()["error"]["message"]
    r = raw.post(f"/uploads/{up['id']}/parts", data={"x": "1"}, files={"data": ("c", b"x")})
    assert r.status_code == 400


@pytest.mark.parametrize("purpose", ["batch", "fine-tune"])
def test_jsonl_checked_at_complete(sdk: openai.OpenAI, purpose: str) -> None:
    up = _upload(sdk, 17, purpose=purpose)
    a = sdk.uploads.parts.create(up.id, data=b'{"a": 1}\n{"b"')
    b = sdk.uploads.parts.create(up.id, data=b": 2}")
    done = sdk.uploads.complete(up.id, part_ids=[a.id, b.id])  # a line split across parts is fine
    assert done.file is not None and done.file.bytes == 17
    up = _upload(sdk, 11, purpose=purpose)
    c = sdk.uploads.parts.create(up.id, data=b'{"a": 1}\n[')
    d = sdk.uploads.parts.create(up.id, data=b"]")
    with pytest.raises(openai.BadRequestError, match="line 2 is not a JSON object"):
        sdk.uploads.complete(up.id, part_ids=[c.id, d.id])


def test_upload_expires_after_applies_to_the_file(sdk: openai.OpenAI) -> None:
    up = _upload(sdk, 1, expires_after={"anchor": "created_at", "seconds": 7200})
    p = sdk.uploads.parts.create(up.id, data=b"x")
    f = sdk.uploads.complete(up.id, part_ids=[p.id]).file
    assert f is not None and f.expires_at == f.created_at + 7200
    up = _upload(sdk, 2, purpose="batch")
    p = sdk.uploads.parts.create(up.id, data=b"{}")
    f = sdk.uploads.complete(up.id, part_ids=[p.id]).file
    assert f is not None and f.expires_at == f.created_at + 30 * 24 * 3600


def test_strings_must_be_valid_unicode(raw: httpx.Client) -> None:
    body = b'{"filename": "a\\ud800b", "purpose": "vision", "bytes": 1, "mime_type": "x"}'
    r = raw.post("/uploads", content=body, headers={"content-type": "application/json"})
    assert (r.status_code, r.json()["error"]["param"]) == (400, "filename")
