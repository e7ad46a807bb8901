"""/v1/files against the official SDK: shapes, pagination, expiry, quirks, limits, auth."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import pytest
import trio
import trio.lowlevel

from tests.conftest import TEST_KEY
from tests.contract.conftest import ContractLog, error_of, multipart
from tests.support.server import LocalServer

JSONL = b'{"custom_id": "a", "body": {}}\n\n{"custom_id": "b"}\n'
PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
DOWNLOADABLE = {"batch", "fine-tune", "vision", "evals"}


def _content_for(purpose: str) -> bytes:
    return JSONL if purpose in ("batch", "fine-tune") else b"\x00binary\xffcontent of " + purpose.encode()


def test_every_purpose_roundtrips(sdk: openai.OpenAI, contract_log: ContractLog) -> None:
    made = {}
    for purpose in PURPOSES:
        f = sdk.files.create(file=(f"{purpose}.dat", _content_for(purpose)), purpose=purpose)
        assert (f.object, f.purpose, f.status, f.filename) == ("file", purpose, "processed", f"{purpose}.dat")
        assert f.bytes == len(_content_for(purpose))
        assert f.status_details is None
        made[purpose] = f
    listed = {f.id: f for f in sdk.files.list()}
    assert set(listed) == {f.id for f in made.values()}
    for purpose, f in made.items():
        assert sdk.files.retrieve(f.id) == f == listed[f.id]
        if purpose in DOWNLOADABLE:
            assert sdk.files.content(f.id).read() == _content_for(purpose)
        deleted = sdk.files.delete(f.id)
        assert (deleted.id, deleted.object, deleted.deleted) == (f.id, "file", True)
    assert list(sdk.files.list()) == []
    assert {
        "#/components/schemas/OpenAIFile",
        "#/components/schemas/ListFilesResponse",
        "#/components/schemas/DeleteFileResponse",
    } <= contract_log.refs()


def test_unknown_file_is_404_on_every_file_route(sdk: openai.OpenAI) -> None:
    missing = "file-doesnotexist000000000000"
    for call in (sdk.files.retrieve, sdk.files.delete, sdk.files.content):
        with pytest.raises(openai.NotFoundError) as info:
            call(missing)
        assert info.value.status_code == 404
        assert error_of(info.value) == {
            "message": f"No such File object: {missing}",
            "type": "invalid_request_error",
            "param": "id",
            "code": None,
        }


def test_deleted_file_is_gone(sdk: openai.OpenAI) -> None:
    f = sdk.files.create(file=("x.txt", b"x"), purpose="vision")
    sdk.files.delete(f.id)
    with pytest.raises(openai.NotFoundError):
        sdk.files.retrieve(f.id)
    with pytest.raises(openai.NotFoundError):
        sdk.files.delete(f.id)


def test_bad_purpose(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        sdk.files.create(file=("x.txt", b"x"), purpose="batch_output")  # type: ignore[arg-type]
    assert error_of(info.value) == {
        "message": "'batch_output' is not one of ['fine-tune', 'assistants', 'batch', 'user_data', 'vision', "
        "'evals'] - 'purpose'",
        "type": "invalid_request_error",
        "param": "purpose",
        "code": None,
    }


def test_unexpected_and_missing_multipart_fields(raw: httpx.Client) -> None:
    body, ctype = multipart([("purpose", None, b"vision"), ("color", None, b"blue"), ("file", "a", b"x")])
    r = raw.post("/files", content=body, headers={"content-type": ctype})
    assert r.status_code == 400
    assert r.json()["error"] == {
        "message": "Additional properties are not allowed ('color' was unexpected)",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }
    body, ctype = multipart([("purpose", None, b"vision")])
    r = raw.post("/files", content=body, headers={"content-type": ctype})
    assert (r.status_code, r.json()["error"]["param"]) == (400, "file")
    body, ctype = multipart([("file", "a.txt", b"x")])
    r = raw.post("/files", content=body, headers={"content-type": ctype})
    assert (r.status_code, r.json()["error"]["param"]) == (400, "purpose")
    r = raw.post("/files", json={"purpose": "vision"})
    assert r.status_code == 400
    r = raw.post(
        "/files", content=b"--x\r\nbroken", headers={"content-type": "multipart/form-data; boundary=x"}
    )
    assert r.status_code == 400


def test_filename_comes_from_the_part(raw: httpx.Client, sdk: openai.OpenAI) -> None:
    for name in ("日本語 report.pdf", "back\\slash.txt", "semi;colon.txt", "q'uote"):
        assert sdk.files.create(file=(name, b"x"), purpose="vision").filename == name
    # Raw quoted-string escapes are undone; an empty filename stays empty.
    for wire, name in (('a\\"b.txt', 'a"b.txt'), ("", "")):
        body, ctype = multipart([("purpose", None, b"vision"), ("file", wire, b"x")])
        r = raw.post("/files", content=body, headers={"content-type": ctype})
        assert r.status_code == 200, r.text
        assert sdk.files.retrieve(r.json()["id"]).filename == name


def test_downloads_refused_for_assistants_and_user_data(sdk: openai.OpenAI, server: LocalServer) -> None:
    for purpose in ("assistants", "user_data"):
        f = sdk.files.create(file=("a.txt", b"secret"), purpose=purpose)
        with pytest.raises(openai.BadRequestError) as info:
            sdk.files.content(f.id)
        assert error_of(info.value) == {
            "message": f"Not allowed to download files of purpose: {purpose}",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
        assert sdk.files.retrieve(f.id).id == f.id  # metadata stays readable
    server.configure(refuse_downloads=["vision"])
    assert sdk.files.content(f.id).read() == b"secret"
    v = sdk.files.create(file=("v.png", b"png"), purpose="vision")
    with pytest.raises(openai.BadRequestError):
        sdk.files.content(v.id)


def test_allow_all_downloads_flag(
    server_factory: Callable[..., LocalServer], make_sdk: Callable[..., openai.OpenAI]
) -> None:
    sdk = make_sdk(server_factory("--allow-all-downloads"))
    f = sdk.files.create(file=("a.txt", b"mine"), purpose="user_data")
    assert sdk.files.content(f.id).read() == b"mine"


@pytest.mark.parametrize("purpose", ["batch", "fine-tune"])
def test_jsonl_purposes_reject_bad_lines(sdk: openai.OpenAI, purpose: str) -> None:
    bad = b'{"ok": 1}\n\n[1, 2]\n{"never": "reached"}\n'
    with pytest.raises(openai.BadRequestError) as info:
        sdk.files.create(file=("bad.jsonl", bad), purpose=purpose)  # type: ignore[arg-type]
    assert error_of(info.value)["message"].startswith("Invalid file format: line 3 is not a JSON object")
    for content in (b'{"a": 1}', b'{"a": 1}\r\n{"b": 2}\r\n', b"", b"\n\n"):
        assert sdk.files.create(file=("ok.jsonl", content), purpose=purpose).bytes == len(content)  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError, match="line 1 "):
        sdk.files.create(file=("x.jsonl", b"\xff\xfe{}"), purpose=purpose)  # type: ignore[arg-type]
    assert sdk.files.create(file=("x.bin", b"not json"), purpose="vision").bytes == 8


def test_jsonl_checked_when_file_precedes_purpose(raw: httpx.Client) -> None:
    body, ctype = multipart([("file", "a.jsonl", b'{"a": 1}\nnope\n'), ("purpose", None, b"batch")])
    r = raw.post("/files", content=body, headers={"content-type": ctype})
    assert r.status_code == 400 and "line 2" in r.json()["error"]["message"]
    body, ctype = multipart([("file", "a.txt", b"nope"), ("purpose", None, b"vision")])
    assert raw.post("/files", content=body, headers={"content-type": ctype}).status_code == 200


def test_jsonl_validation_can_be_switched_off(
    server_factory: Callable[..., LocalServer], make_sdk: Callable[..., openai.OpenAI]
) -> None:
    sdk = make_sdk(server_factory("--no-validate-jsonl"))
    assert sdk.files.create(file=("x.jsonl", b"plain text"), purpose="batch").bytes == 10
    srv = server_factory()
    sdk = make_sdk(srv)
    srv.configure(validate_jsonl=False)
    assert sdk.files.create(file=("x.jsonl", b"plain text"), purpose="fine-tune").bytes == 10


def test_expiry(sdk: openai.OpenAI, server: LocalServer) -> None:
    b = sdk.files.create(file=("b.jsonl", JSONL), purpose="batch")
    assert b.expires_at == b.created_at + 30 * 24 * 3600
    v = sdk.files.create(file=("v.png", b"v"), purpose="vision")
    assert v.expires_at is None
    e = sdk.files.create(
        file=("e.txt", b"e"), purpose="evals", expires_after={"anchor": "created_at", "seconds": 3600}
    )
    assert e.expires_at == e.created_at + 3600
    server.admin("POST", "clock", json={"advance": 3601})
    for call in (sdk.files.retrieve, sdk.files.content, sdk.files.delete):
        with pytest.raises(openai.NotFoundError):
            call(e.id)
    assert {f.id for f in sdk.files.list()} == {b.id, v.id}
    server.admin("POST", "clock", json={"advance": 30 * 24 * 3600})
    assert [f.id for f in sdk.files.list()] == [v.id]


@pytest.mark.parametrize(
    ("anchor", "seconds", "param"),
    [
        ("last_active_at", "3600", "expires_after[anchor]"),
        ("created_at", "3599", "expires_after[seconds]"),
        ("created_at", "2592001", "expires_after[seconds]"),
        ("created_at", "soon", "expires_after[seconds]"),
        (None, "3600", "expires_after[anchor]"),
    ],
)
def test_bad_expires_after(raw: httpx.Client, anchor: str | None, seconds: str, param: str) -> None:
    fields: list[tuple[str, str | None, bytes]] = [("purpose", None, b"vision")]
    if anchor is not None:
        fields.append(("expires_after[anchor]", None, anchor.encode()))
    fields += [("expires_after[seconds]", None, seconds.encode()), ("file", "x", b"x")]
    body, ctype = multipart(fields)
    r = raw.post("/files", content=body, headers={"content-type": ctype})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == param


def test_expires_after_bounds_accepted(sdk: openai.OpenAI) -> None:
    for seconds in (3600, 2592000):
        f = sdk.files.create(
            file=("x", b"x"), purpose="vision", expires_after={"anchor": "created_at", "seconds": seconds}
        )
        assert f.expires_at == f.created_at + seconds


def _seed(
    server: LocalServer, n: int, purpose: str = "vision", created_at: int | None = 1_700_000_000
) -> list[str]:
    return [server.add_file(purpose, f"f{i}.txt", b"%d" % i, created_at=created_at)["id"] for i in range(n)]


def test_list_order_cursor_and_ties(raw: httpx.Client, server: LocalServer) -> None:
    ids = _seed(server, 7)  # one second for all: order falls back to the stable tie-breaker
    newest_first = raw.get("/files").json()
    assert [f["id"] for f in newest_first["data"]] == ids[::-1]
    assert newest_first["has_more"] is False
    page = raw.get("/files", params={"limit": 3}).json()
    assert [f["id"] for f in page["data"]] == ids[6:3:-1] and page["has_more"] is True
    page = raw.get("/files", params={"limit": 3, "after": page["last_id"]}).json()
    assert [f["id"] for f in page["data"]] == ids[3:0:-1] and page["has_more"] is True
    page = raw.get("/files", params={"limit": 3, "after": page["last_id"]}).json()
    assert [f["id"] for f in page["data"]] == ids[:1] and page["has_more"] is False
    asc = raw.get("/files", params={"order": "asc", "limit": 4, "after": ids[1]}).json()
    assert [f["id"] for f in asc["data"]] == ids[2:6] and asc["has_more"] is True
    end = raw.get("/files", params={"order": "asc", "after": ids[-1]}).json()
    assert end == {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}


def test_list_orders_by_created_at_then_insertion(raw: httpx.Client, server: LocalServer) -> None:
    late = server.add_file("vision", "late", b"", created_at=2000)["id"]
    early = server.add_file("vision", "early", b"", created_at=1000)["id"]
    tie = server.add_file("vision", "tie", b"", created_at=2000)["id"]
    assert [f["id"] for f in raw.get("/files").json()["data"]] == [tie, late, early]
    assert [f["id"] for f in raw.get("/files?order=asc").json()["data"]] == [early, late, tie]


def test_cursor_survives_deletion_of_its_file(raw: httpx.Client, server: LocalServer) -> None:
    ids = _seed(server, 4)
    page = raw.get("/files", params={"limit": 2}).json()
    assert raw.delete(f"/files/{page['last_id']}").status_code == 200
    rest = raw.get("/files", params={"limit": 2, "after": page["last_id"]}).json()
    assert [f["id"] for f in rest["data"]] == ids[1::-1]


def test_purpose_filter(raw: httpx.Client, server: LocalServer) -> None:
    a = _seed(server, 2, purpose="batch_output")
    _seed(server, 3, purpose="vision")
    got = raw.get("/files", params={"purpose": "batch_output"}).json()
    assert sorted(f["id"] for f in got["data"]) == sorted(a)
    assert raw.get("/files", params={"purpose": "no-such-purpose"}).json()["data"] == []


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 10001}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"order": "sideways"}, "order"),
        ({"after": "file-neverissued"}, "after"),
        ({"before": "x"}, "before"),
    ],
)
def test_list_rejects_bad_params(raw: httpx.Client, params: dict[str, object], param: str) -> None:
    r = raw.get("/files", params=params)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == param


def test_list_limit_bounds_accepted(raw: httpx.Client) -> None:
    for limit in (1, 10000):
        assert raw.get("/files", params={"limit": limit}).status_code == 200


def test_sdk_auto_paginates_over_short_pages(
    server_factory: Callable[..., LocalServer], make_sdk: Callable[..., openai.OpenAI]
) -> None:
    srv = server_factory("--max-page-size", "4")
    ids = _seed(srv, 10)
    sdk = make_sdk(srv)
    srv.reset_stats()
    assert [f.id for f in sdk.files.list()] == ids[::-1]
    assert srv.requests("files.list") == 3
    srv.configure(max_page_size=3)
    first = sdk.files.list(limit=100)
    assert len(first.data) == 3 and first.has_more
    assert [f.id for f in sdk.files.list(order="asc")] == ids


def test_file_size_limit(
    server_factory: Callable[..., LocalServer], make_sdk: Callable[..., openai.OpenAI]
) -> None:
    srv = server_factory("--max-file-bytes", "1000")
    sdk = make_sdk(srv)
    assert sdk.files.create(file=("ok", b"x" * 1000), purpose="vision").bytes == 1000
    with pytest.raises(openai.APIStatusError) as info:
        sdk.files.create(file=("big", b"x" * 1001), purpose="vision")
    assert info.value.status_code == 413
    assert error_of(info.value)["type"] == "invalid_request_error"
    assert error_of(info.value)["param"] == "file"
    srv.configure(max_file_bytes=10)
    with pytest.raises(openai.APIStatusError, match="413"):
        sdk.files.create(file=("mid", b"x" * 11), purpose="vision")
    assert [f.filename for f in sdk.files.list()] == ["ok"]


def test_oversized_content_length_refused_before_reading(
    server_factory: Callable[..., LocalServer], contract_log: ContractLog
) -> None:
    srv = server_factory("--max-file-bytes", "1000")
    chunk = b"y" * (1 << 20)
    head = b'--b\r\nContent-Disposition: form-data; name="file"; filename="f"\r\n\r\n'
    tail = b"\r\n--b--\r\n"

    def body():  # 8 MiB: more than the limit plus multipart slack
        yield head
        for _ in range(8):
            yield chunk
        yield tail

    length = len(head) + 8 * len(chunk) + len(tail)
    r = httpx.post(
        f"{srv.base_url}/files",
        content=body(),
        timeout=30,
        headers={"content-type": "multipart/form-data; boundary=b", "content-length": str(length)},
    )
    assert r.status_code == 413
    contract_log.check("POST", "/v1/files", r.status_code, r.headers, r.text)


def test_request_ids_are_unique(raw: httpx.Client) -> None:
    ids = {raw.get("/files").headers["x-request-id"] for _ in range(5)}
    ids.add(raw.get("/files/file-nope").headers["x-request-id"])
    assert len(ids) == 6


def test_unknown_route_is_a_json_404(raw: httpx.Client) -> None:
    r = raw.get("/models")
    assert r.status_code == 404
    assert r.json()["error"]["message"] == "Invalid URL (GET /v1/models)"
    assert raw.put("/files").status_code == 404


def _key_env(key: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "OPENAIFS_SERVER_API_KEY"}
    if key is not None:
        env["OPENAIFS_SERVER_API_KEY"] = key
    return env


def test_api_key_checked_when_configured(
    server_factory: Callable[..., LocalServer], make_sdk: Callable[..., openai.OpenAI]
) -> None:
    srv = server_factory(env=_key_env(TEST_KEY))
    r = httpx.get(f"{srv.base_url}/files")
    assert r.status_code == 401
    assert r.json()["error"]["message"].startswith("You didn't provide an API key.")
    assert r.json()["error"]["code"] is None
    wrong = "sk-wrong-key-abcdefghijklmnopWXYZ"
    with pytest.raises(openai.AuthenticationError) as info:
        make_sdk(srv, api_key=wrong).files.list()
    err = error_of(info.value)
    assert err["code"] == "invalid_api_key" and err["param"] is None
    assert err["message"].startswith("Incorrect API key provided: sk-…WXYZ.")
    assert wrong not in err["message"] and TEST_KEY not in err["message"]
    assert make_sdk(srv).files.list().data == []
    assert srv.requests("files.list") == 3  # refused requests are counted too
    srv.add_file("vision", "admin-needs-no-key", b"")  # admin routes need no key


def test_api_key_file(
    server_factory: Callable[..., LocalServer], make_sdk: Callable[..., openai.OpenAI], tmp_path: Path
) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("sk-from-file-0000111122223333\n")
    srv = server_factory("--api-key-file", str(key_file), env=_key_env(None))
    with pytest.raises(openai.AuthenticationError):
        make_sdk(srv).files.list()
    assert make_sdk(srv, api_key="sk-from-file-0000111122223333").files.list().data == []


def test_no_key_configured_accepts_anything(server: LocalServer) -> None:
    assert httpx.get(f"{server.base_url}/files").status_code == 200
    assert httpx.get(f"{server.base_url}/files", headers={"authorization": "Basic eDp5"}).status_code == 200


async def test_async_sdk_drives_every_endpoint(
    server: LocalServer, make_async_sdk: Callable[..., openai.AsyncOpenAI]
) -> None:
    async with make_async_sdk(server) as client:
        f = await client.files.create(file=("a.jsonl", JSONL), purpose="batch")
        assert (await client.files.retrieve(f.id)).id == f.id
        assert [x.id async for x in client.files.list()] == [f.id]
        assert (await client.files.content(f.id)).read() == JSONL
        upload = await client.uploads.create(
            bytes=6, filename="u.bin", mime_type="application/octet-stream", purpose="vision"
        )
        p1 = await client.uploads.parts.create(upload.id, data=b"abc")
        p2 = await client.uploads.parts.create(upload.id, data=b"def")
        done = await client.uploads.complete(upload.id, part_ids=[p2.id, p1.id])
        assert done.file is not None and (await client.files.content(done.file.id)).read() == b"defabc"
        other = await client.uploads.create(bytes=1, filename="c", mime_type="text/plain", purpose="vision")
        assert (await client.uploads.cancel(other.id)).status == "cancelled"
        assert (await client.files.delete(f.id)).deleted
        with pytest.raises(openai.NotFoundError):
            await client.files.retrieve(f.id)
        with pytest.raises(openai.BadRequestError):
            await client.files.content((await client.files.create(file=("u", b"u"), purpose="user_data")).id)
        await trio.lowlevel.checkpoint()
