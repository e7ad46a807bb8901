"""Pure pieces of the server: JSONL checking, Range parsing, multipart headers, params, faults."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openaifs.server import apierror, validation
from openaifs.server.apierror import ApiError
from openaifs.server.content import Unsatisfiable, parse_range
from openaifs.server.faults import FaultConfigError, Faults, FaultSet
from openaifs.server.multipart import content_disposition
from openaifs.server.settings import Settings, SettingsError
from openaifs.server.validation import JsonlChecker
from tests.contract import openapi_check


def _check(data: bytes, chunk: int) -> int | None:
    checker = JsonlChecker()
    for i in range(0, len(data), chunk):
        checker.feed(data[i : i + chunk])
    return checker.finish()


@pytest.mark.parametrize(
    ("data", "bad"),
    [
        (b"", None),
        (b"\n\n", None),
        (b'{"a": 1}', None),
        (b'{"a": 1}\n', None),
        (b' {"a": 1} \r\n\n{}\n', None),
        (b"[]\n", 1),
        (b'{"a": 1}\n"s"\n', 2),
        (b'{}\n{}\n{"unterminated": \n{}', 3),
        (b"{}\n\xff\n", 2),
        (b'{"a": 1}{"b": 2}\n', 1),
        (b"{}\nnull", 2),
    ],
)
@pytest.mark.parametrize("chunk", [1, 3, 1 << 20])
def test_jsonl_checker(data: bytes, bad: int | None, chunk: int) -> None:
    assert _check(data, chunk) == bad


@given(
    st.lists(
        st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=8), max_size=4), max_size=8
    ),
    st.integers(min_value=1, max_value=64),
)
def test_jsonl_checker_accepts_any_objects_in_any_chunking(objs: list[dict[str, object]], chunk: int) -> None:
    import json

    data = b"".join(json.dumps(o).encode() + b"\n" for o in objs)
    assert _check(data, chunk) is None


def test_jsonl_checker_bounds_memory_on_huge_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(validation, "MAX_PARSED_LINE", 100)
    good = b'{"blob": "' + b"x" * 1000 + b'"}\n{}\n'
    assert _check(good, 7) is None
    assert _check(b"[" + b"1," * 500 + b"1]\n", 7) == 1
    assert _check(b"{}\n{" + b"x" * 1000 + b"]\n", 7) == 2


@pytest.mark.parametrize(
    ("header", "size", "span"),
    [
        (None, 10, None),
        ("", 10, None),
        ("bytes=0-0", 10, (0, 1)),
        ("bytes=2-", 10, (2, 10)),
        ("bytes=-3", 10, (7, 10)),
        ("bytes=-30", 10, (0, 10)),
        ("bytes=5-100", 10, (5, 10)),
        ("BYTES = 1 - 2", 10, (1, 3)),
        ("bytes=3-1", 10, None),
        ("bytes=0-1,3-4", 10, None),
        ("lines=1-2", 10, None),
    ],
)
def test_parse_range(header: str | None, size: int, span: tuple[int, int] | None) -> None:
    assert parse_range(header, size) == span


@pytest.mark.parametrize(
    ("header", "size"), [("bytes=10-", 10), ("bytes=-0", 10), ("bytes=-5", 0), ("bytes=0-", 0)]
)
def test_parse_range_unsatisfiable(header: str, size: int) -> None:
    with pytest.raises(Unsatisfiable):
        parse_range(header, size)


@pytest.mark.parametrize(
    ("value", "name", "filename"),
    [
        (b'form-data; name="file"; filename="a.txt"', "file", "a.txt"),
        (b'form-data; name="purpose"', "purpose", None),
        (b"form-data; name=file; filename=plain.txt", "file", "plain.txt"),
        (b'form-data; name="file"; filename="a\\"b\\\\c;d.txt"', "file", 'a"b\\c;d.txt'),
        ('form-data; name="file"; filename="日本.txt"'.encode(), "file", "日本.txt"),
        (b'form-data; name="file"; filename="x"; filename*=UTF-8\'\'%C3%A9t%C3%A9.txt', "file", "été.txt"),
        (b'form-data; name="file"; filename=""', "file", ""),
        (b'form-data; name="file"; filename="C:\\\\dir\\\\x.txt"', "file", "C:\\dir\\x.txt"),
    ],
)
def test_content_disposition(value: bytes, name: str, filename: str | None) -> None:
    assert content_disposition(value) == (name, filename)


@pytest.mark.parametrize(
    ("key", "shown"),
    [
        ("sk-proj-abcdefghijklmnopqrstuvwxyz1234", "sk-…1234"),
        ("short", "…"),
        ("abcdefghijklmnop", "…mnop"),
    ],
)
def test_wrong_key_message_never_echoes_the_key(key: str, shown: str) -> None:
    err = apierror.wrong_key(key)
    assert f"Incorrect API key provided: {shown}." in err.message
    assert key not in err.message and (err.status, err.code) == (401, "invalid_api_key")


def test_list_params() -> None:
    assert validation.list_params({}) == (None, 10000, True, None)
    assert validation.list_params({"purpose": "batch", "limit": "5", "order": "asc", "after": "file-x"}) == (
        "batch",
        5,
        False,
        "file-x",
    )
    with pytest.raises(ApiError) as info:
        validation.list_params({"limit": "10001"})
    assert (info.value.param, info.value.code) == ("limit", "integer_above_max_value")


def test_expiry_params() -> None:
    assert validation.expiry_from_form({}) is None
    assert (
        validation.expiry_from_form({"expires_after[anchor]": "created_at", "expires_after[seconds]": "3600"})
        == 3600
    )
    assert validation.expiry_from_json({"anchor": "created_at", "seconds": 2592000}) == 2592000
    for bad in (
        {"anchor": "created_at", "seconds": True},
        {"anchor": "created_at", "seconds": "3600"},
        {"anchor": "now", "seconds": 3600},
        {"seconds": 3600},
        {"anchor": "created_at", "seconds": 1, "x": 1},
    ):
        with pytest.raises(ApiError):
            validation.expiry_from_json(bad)


def test_fault_decisions_follow_the_seed() -> None:
    faults = Faults(default_range=True)
    assert faults.decide("files.list").delay == 0
    faults.replace({"drop_rate": {"*": 0.5}, "error_rate": {"files.content": 1.0}, "seed": 5})
    first = [faults.decide(r) for r in ("files.list", "files.content") * 20]
    faults.replace({"drop_rate": {"*": 0.5}, "error_rate": {"files.content": 1.0}, "seed": 5})
    assert [faults.decide(r) for r in ("files.list", "files.content") * 20] == first
    assert all(d.server_error for d in first[1::2]) and not any(d.server_error for d in first[::2])
    assert 5 < sum(d.drop_at is not None for d in first) < 35


def test_fault_set_defaults_and_range() -> None:
    assert FaultSet.from_json({}, default_range=False).range is False
    assert FaultSet.from_json({"range": True}, default_range=False).range is True
    assert FaultSet.from_json({"retry_after": None}, default_range=True).retry_after is None
    with pytest.raises(FaultConfigError, match="unknown fault"):
        FaultSet.from_json({"drop": 1}, default_range=True)


def test_settings_updates_are_all_or_nothing() -> None:
    settings = Settings()
    with pytest.raises(SettingsError):
        settings.update({"max_page_size": 5, "max_file_bytes": -1})
    assert settings.max_page_size == 10000
    settings.update({"max_page_size": 5, "refuse_downloads": []})
    assert (settings.max_page_size, settings.refuse_downloads) == (5, [])
    assert not Settings(validate_jsonl=False).must_be_jsonl("batch")
    assert Settings().must_be_jsonl("fine-tune") and not Settings().must_be_jsonl("vision")


GOOD_FILE = {
    "id": "file-" + "A" * 24,
    "object": "file",
    "bytes": 3,
    "created_at": 1,
    "expires_at": None,
    "filename": "a",
    "purpose": "evals",
    "status": "processed",
    "status_details": None,
}


def test_contract_checker_accepts_what_the_server_sends() -> None:
    openapi_check.doc_lines_unchanged()
    assert set(openapi_check.doc_table("### 2.1 File object")) == set(GOOD_FILE)
    assert openapi_check.check_response("GET", "/v1/files/x", 200, GOOD_FILE).endswith("OpenAIFile")
    listing = {
        "object": "list",
        "data": [GOOD_FILE],
        "first_id": GOOD_FILE["id"],
        "last_id": GOOD_FILE["id"],
        "has_more": False,
    }
    openapi_check.check_response("GET", "/v1/files", 200, listing)
    openapi_check.check_response(
        "GET", "/v1/files", 200, {**listing, "data": [], "first_id": None, "last_id": None}
    )
    upload = {
        "id": "upload_" + "b" * 24,
        "object": "upload",
        "bytes": 3,
        "created_at": 1,
        "expires_at": 3601,
        "filename": "a",
        "purpose": "vision",
        "status": "completed",
        "file": GOOD_FILE,
    }
    openapi_check.check_response("POST", "/v1/uploads/u/complete", 200, upload)
    openapi_check.check_response(
        "POST", "/v1/uploads/u/cancel", 200, {**upload, "status": "cancelled", "file": None}
    )


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/files/x", {k: v for k, v in GOOD_FILE.items() if k != "status"}),
        ("/v1/files/x", {**GOOD_FILE, "extra": 1}),
        ("/v1/files/x", {**GOOD_FILE, "purpose": "nonsense"}),
        ("/v1/files/x", {**GOOD_FILE, "bytes": "3"}),
        ("/v1/files/x", {**GOOD_FILE, "id": "file_abc"}),
        (
            "/v1/files",
            {"object": "list", "data": [GOOD_FILE], "first_id": None, "last_id": None, "has_more": False},
        ),
        ("/v1/files", {"object": "list", "data": [], "first_id": None, "last_id": None}),
        (
            "/v1/uploads",
            {
                "id": "upload_" + "b" * 24,
                "object": "upload",
                "bytes": 3,
                "created_at": 1,
                "expires_at": 3601,
                "filename": "a",
                "purpose": "vision",
                "status": "done",
                "file": None,
            },
        ),
    ],
)
def test_contract_checker_catches_violations(path: str, body: dict[str, object]) -> None:
    with pytest.raises(AssertionError):
        openapi_check.check_response("GET" if path.startswith("/v1/files") else "POST", path, 200, body)


def test_contract_checker_error_envelope() -> None:
    openapi_check.check_response("GET", "/v1/files/x", 404, apierror.no_such_file("file-x").body())
    with pytest.raises(AssertionError):
        openapi_check.check_response("GET", "/v1/files/x", 404, {"error": {"message": "m", "type": "t"}})
