"""FileRecord / FilePage parsing and ClientStats: tolerant of presence, strict about types."""

from __future__ import annotations

from typing import Any

import pytest

from openaifs.client import ClientStats, FileRecord
from openaifs.client.records import FilePage, completed_file_from_json
from openaifs.errors import TransportError

FULL = {
    "id": "file-abc",
    "object": "file",
    "bytes": 12,
    "created_at": 1700000000,
    "expires_at": 1700003600,
    "filename": "a.jsonl",
    "purpose": "batch",
    "status": "processed",
    "status_details": None,
}


def test_full_object() -> None:
    r = FileRecord.from_json(FULL)
    assert r == FileRecord("file-abc", "a.jsonl", "batch", 12, 1700000000, 1700003600, "processed", None)


def test_missing_optional_and_extra_fields() -> None:
    obj = {k: FULL[k] for k in ("id", "bytes", "created_at", "filename", "purpose")}
    obj["brand_new_field"] = {"x": 1}
    r = FileRecord.from_json(obj)
    assert r.expires_at is None and r.status is None and r.status_details is None


@pytest.mark.parametrize("field", ["id", "bytes", "created_at", "filename", "purpose"])
def test_missing_required_field(field: str) -> None:
    obj = dict(FULL)
    del obj[field]
    with pytest.raises(TransportError, match=rf"malformed file object.*'{field}' is missing"):
        FileRecord.from_json(obj)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("id", 5),
        ("bytes", "12"),
        ("bytes", True),
        ("bytes", 12.5),
        ("bytes", -1),
        ("created_at", None),
        ("created_at", "yesterday"),
        ("filename", ["a"]),
        ("purpose", None),
        ("expires_at", "soon"),
        ("status", 3),
        ("status_details", {"why": "?"}),
    ],
)
def test_wrong_types_are_malformed_not_crashes(field: str, value: Any) -> None:
    obj = dict(FULL)
    obj[field] = value
    with pytest.raises(TransportError, match="malformed file object"):
        FileRecord.from_json(obj)


@pytest.mark.parametrize("obj", [None, [], "file", 3])
def test_not_an_object(obj: Any) -> None:
    with pytest.raises(TransportError, match="malformed"):
        FileRecord.from_json(obj)


def test_page() -> None:
    page = FilePage.from_json({"object": "list", "data": [FULL], "has_more": True, "first_id": "x"})
    assert [r.id for r in page.records] == ["file-abc"] and page.has_more is True
    assert FilePage.from_json({"data": []}).has_more is None
    with pytest.raises(TransportError, match="malformed file list"):
        FilePage.from_json({"data": {}})
    with pytest.raises(TransportError, match="malformed file list"):
        FilePage.from_json({"data": [], "has_more": "no"})
    with pytest.raises(TransportError, match="malformed file object"):
        FilePage.from_json({"data": [{"id": 1}]})


def test_completed_upload() -> None:
    assert completed_file_from_json({"status": "completed", "file": FULL}).id == "file-abc"
    with pytest.raises(TransportError, match="no file"):
        completed_file_from_json({"status": "completed", "file": None})
    with pytest.raises(TransportError, match="'cancelled'"):
        completed_file_from_json({"status": "cancelled", "file": FULL})


def test_stats_summary() -> None:
    s = ClientStats()
    assert "0 requests" in s.summary()
    s.requests["files.list"] += 2
    s.requests["files.content"] += 1
    s.retries["files.content"] += 1
    s.bytes_down = 3 * 1048576
    assert s.summary() == "3 requests (files.content 1, files.list 2); 1 retries; 3.0 MiB down, 0.0 MiB up"
