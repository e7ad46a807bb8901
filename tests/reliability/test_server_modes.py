"""The server modes this suite relies on, checked on their own (no mount): ``crafted`` answers,
byte for byte with a lying Content-Length, and ``POST /_admin/files/bulk``.
"""

from __future__ import annotations

import json

import httpx
import pytest

from tests.support.server import LocalServer


def test_crafted_answers_are_sent_as_given(server: LocalServer) -> None:
    server.set_faults(crafted={"files.list": {"status": 202, "body": "hello", "content_type": "text/plain"}})
    r = httpx.get(f"{server.base_url}/files")
    assert (r.status_code, r.text, r.headers["content-type"]) == (202, "hello", "text/plain")
    assert server.stats()["requests"]["files.list"] == 1
    spec = json.dumps({"crafted": {"*": {"json": {"data": [1, "\ud800"]}}}})  # ASCII: \ud800 stays an escape
    httpx.put(f"{server.root_url}/_admin/faults", content=spec).raise_for_status()
    assert httpx.get(f"{server.base_url}/files/file-x").text == '{"data": [1, "\\ud800"]}'


def test_a_crafted_content_length_lies(server: LocalServer) -> None:
    server.set_faults(crafted={"files.list": {"body": "0123456789", "content_length": 100}})
    with pytest.raises(httpx.RemoteProtocolError):  # the body ends before the promised length
        httpx.get(f"{server.base_url}/files")
    server.set_faults(crafted={"files.list": {"body": "0123456789", "content_length": 4}})
    assert httpx.get(f"{server.base_url}/files").content == b"0123"  # the rest is never read
    server.set_faults(crafted={"files.list": {"body": "x", "rate": 0.0}})
    assert httpx.get(f"{server.base_url}/files").json()["data"] == []  # rate 0: the real answer


@pytest.mark.parametrize("bad", [
    {"crafted": []},
    {"crafted": {"files.nope": {}}},
    {"crafted": {"files.list": {"body": "a", "json": 1}}},
    {"crafted": {"files.list": {"status": 99}}},
    {"crafted": {"files.list": {"content_length": -1}}},
    {"crafted": {"files.list": {"content_type": "a\r\nx: y"}}},
    {"crafted": {"files.list": {"what": 1}}},
])
def test_bad_crafted_specs_are_refused(server: LocalServer, bad: dict) -> None:
    r = httpx.put(f"{server.root_url}/_admin/faults", json=bad)
    assert r.status_code == 400, r.text


def test_bulk_files(server: LocalServer) -> None:
    ids = server.add_files_bulk([
        {"purpose": "batch", "filename": "a.jsonl", "content": "{}\n"},
        {"purpose": "weird/purpose", "filename": "", "size": 5, "created_at": 1_700_000_000, "status": "error"},
    ])
    assert len(ids) == 2
    listed = {f["id"]: f for f in httpx.get(f"{server.base_url}/files").json()["data"]}
    assert listed[ids[0]]["bytes"] == 3 and listed[ids[1]]["purpose"] == "weird/purpose"
    assert listed[ids[1]]["created_at"] == 1_700_000_000 and listed[ids[1]]["status"] == "error"
    assert httpx.get(f"{server.base_url}/files/{ids[0]}/content").content == b"{}\n"
    assert httpx.get(f"{server.base_url}/files/{ids[1]}/content").content == b"xxxxx"
    for bad in ({"files": [{"purpose": "batch"}]}, {"files": [{"purpose": "b", "filename": "f"}]}, [1]):
        assert httpx.post(f"{server.root_url}/_admin/files/bulk", json=bad).status_code == 400
