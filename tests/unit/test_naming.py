"""The naming rules of DESIGN.md §1 "Names", as one pure function."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from openaifs.naming import NAME_MAX, assign_names, sanitize, split_ext, with_id


@dataclass(frozen=True)
class F:
    id: str
    filename: str
    created_at: int


def test_slash_control_and_dots_are_encoded() -> None:
    assert sanitize("a/b", "file-1") == "a\uff0fb"
    assert sanitize("line\nbreak\x00\x7f", "file-1") == "line\u240abreak\u2400\u2421"
    assert sanitize(".", "file-1") == "\uff0e"
    assert sanitize("..", "file-1") == "\uff0e\uff0e"
    assert sanitize("...", "file-1") == "..."
    assert sanitize("", "file-1") == "file-1"
    assert sanitize("bad\ud800", "file-1") == "bad\ufffd"


def test_extension_split() -> None:
    assert split_ext("requests.jsonl") == ("requests", ".jsonl")
    assert split_ext(".hidden") == (".hidden", "")
    assert split_ext("noext") == ("noext", "")
    assert split_ext("a.tar.gz") == ("a.tar", ".gz")


def test_oldest_keeps_plain_name_newer_get_id_before_extension() -> None:
    files = [F("file-B", "requests.jsonl", 200), F("file-A", "requests.jsonl", 100), F("file-C", "x", 50)]
    names = assign_names(files)
    assert names == {
        "file-A": "requests.jsonl",
        "file-B": "requests (file-B).jsonl",
        "file-C": "x",
    }


def test_same_time_ties_broken_by_id() -> None:
    names = assign_names([F("file-2", "a.txt", 5), F("file-1", "a.txt", 5)])
    assert names["file-1"] == "a.txt"
    assert names["file-2"] == "a (file-2).txt"


def test_newer_file_never_renames_an_older_one() -> None:
    old = [F("file-A", "data.csv", 1)]
    before = assign_names(old)
    after = assign_names([*old, F("file-B", "data.csv", 2)])
    assert after["file-A"] == before["file-A"] == "data.csv"


def test_reserved_names_push_api_files_to_suffixed_names() -> None:
    names = assign_names([F("file-A", "draft.txt", 1)], reserved={"draft.txt"})
    assert names["file-A"] == "draft (file-A).txt"


def test_long_names_are_cut_on_utf8_boundary_with_id_and_extension() -> None:
    long = "é" * 300 + ".jsonl"
    name = assign_names([F("file-LONG", long, 1)])["file-LONG"]
    assert len(name.encode()) <= NAME_MAX
    assert name.endswith(" (file-LONG).jsonl")
    assert name.startswith("é")
    name.encode().decode("utf-8")  # valid UTF-8: no split character


def test_with_id_falls_back_to_id_for_absurd_ids() -> None:
    assert len(with_id("x.txt", "file-" + "z" * 400).encode()) <= NAME_MAX


def test_a_name_quoting_another_files_id_still_gets_unique_names() -> None:
    files = [F("file-A", "a.txt", 1), F("file-B", "a.txt", 2), F("file-C", "a (file-B).txt", 0)]
    names = assign_names(files)
    assert len(set(names.values())) == 3


names_st = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)) | st.sampled_from(["/", ".", "\n", "\x00"]),
    max_size=300,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(names_st, st.integers(0, 5)), max_size=40))
def test_any_listing_gives_unique_safe_names(entries: list[tuple[str, int]]) -> None:
    files = [F(f"file-{i:04d}", name, created) for i, (name, created) in enumerate(entries)]
    names = assign_names(files)
    assert set(names) == {f.id for f in files}
    assert len(set(names.values())) == len(files)
    for name in names.values():
        raw = name.encode()
        assert 0 < len(raw) <= NAME_MAX
        assert "/" not in name and "\x00" not in name
        assert name not in (".", "..")
    # the same input always gives the same names (listing and lookup agree)
    assert assign_names(list(reversed(files))) == names
