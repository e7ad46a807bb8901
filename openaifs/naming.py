"""The naming rules: how API filenames become unique, safe directory entries.

One pure function, :func:`assign_names`, is used for listing and for lookup alike, so the two can
never disagree. Rules (DESIGN.md §1 "Names"):

- ``/`` becomes ``／`` (U+FF0F); control characters become their Unicode control pictures
  (U+2400 + code, DEL becomes U+2421); ``.`` and ``..`` become ``．`` / ``．．`` (U+FF0E); an empty
  name becomes the file id; lone surrogates (possible in JSON) become U+FFFD.
- Names are unique per directory: the oldest file (``created_at``, then id) keeps the plain name,
  every other gets `` (file-…)`` inserted before its extension.
- A name longer than 255 bytes is cut on a UTF-8 boundary and gets the id suffix, keeping the
  extension when that fits.

This module must stay pure: no I/O, no clock, no state.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

NAME_MAX = 255  # bytes, as the kernel (and every Linux filesystem) allows per path component
# An extension longer than this is treated as part of the stem: keeping a 200-byte "extension"
# would leave no room for the name itself.
_EXT_MAX = 32


class Named(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def filename(self) -> str: ...
    @property
    def created_at(self) -> int: ...


def sanitize(filename: str, file_id: str) -> str:
    """Make one API filename safe as a single path component (no uniqueness, no length rule)."""
    if filename == "":
        return file_id
    if filename == ".":
        return "\uff0e"
    if filename == "..":
        return "\uff0e\uff0e"
    out = []
    for ch in filename:
        code = ord(ch)
        if ch == "/":
            out.append("\uff0f")
        elif code < 0x20:
            out.append(chr(0x2400 + code))
        elif code == 0x7F:
            out.append("\u2421")
        elif 0xD800 <= code <= 0xDFFF:
            out.append("\ufffd")
        else:
            out.append(ch)
    return "".join(out)


def split_ext(name: str) -> tuple[str, str]:
    """``requests.jsonl`` → (``requests``, ``.jsonl``); a leading dot is not an extension."""
    dot = name.rfind(".")
    if dot <= 0 or len(name[dot:].encode()) > _EXT_MAX:
        return name, ""
    return name[:dot], name[dot:]


def _cut(text: str, max_bytes: int) -> str:
    """The longest prefix of ``text`` whose UTF-8 encoding fits in ``max_bytes``."""
    raw = text.encode()
    if len(raw) <= max_bytes:
        return text
    return raw[: max(max_bytes, 0)].decode("utf-8", errors="ignore")


def with_id(name: str, file_id: str) -> str:
    """``requests.jsonl`` → ``requests (file-…).jsonl``, cut to fit in NAME_MAX bytes."""
    stem, ext = split_ext(name)
    suffix = f" ({file_id})"
    room = NAME_MAX - len(suffix.encode()) - len(ext.encode())
    if room < 1:  # an absurdly long id: fall back to the id alone, cut if it must be
        return _cut(file_id, NAME_MAX)
    return _cut(stem, room) + suffix + ext


def assign_names(files: Iterable[Named], reserved: Iterable[str] = ()) -> dict[str, str]:
    """Map each file id to its unique directory entry name.

    ``reserved`` holds names already taken by entries that are not API files (files still being
    written); API files never take them. Oldest files choose first, so a newer file never changes
    an older file's name.
    """
    used = set(reserved)
    names: dict[str, str] = {}
    ordered: Sequence[Named] = sorted(files, key=lambda f: (f.created_at, f.id))
    for f in ordered:
        base = sanitize(f.filename, f.id)
        if len(base.encode()) <= NAME_MAX and base not in used:
            name = base
        else:
            name = with_id(base, f.id)
            n = 2
            while name in used:  # only hostile names (one quoting another file's id) get here
                name = with_id(base, f"{f.id}~{n}")
                n += 1
        used.add(name)
        names[f.id] = name
    return names
