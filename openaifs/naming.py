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
- Ids are opaque strings from the server, so the id in a suffix is made safe the same way, and an id
  longer than ``_ID_MAX`` bytes is cut and tagged with a hash of the whole id (two long ids sharing a
  prefix must still give two names).

The same rules make purpose directory names (:func:`purpose_dir_name`) and the ``.by-id/`` entry
names (:func:`link_name`): a hostile server may send any string as a purpose or an id, and a
name with ``/`` or NUL in a directory listing makes the kernel fail the whole ``readdir`` with EIO.

This module must stay pure: no I/O, no clock, no state.
"""

from __future__ import annotations

import hashlib
import operator
import re
from collections.abc import Callable, Container, Iterable, Sequence
from typing import Protocol

NAME_MAX = 255  # bytes, as the kernel (and every Linux filesystem) allows per path component
# An extension longer than this is treated as part of the stem: keeping a 200-byte "extension"
# would leave no room for the name itself.
_EXT_MAX = 32
# An id longer than this (real ones have ~29 bytes) is cut and tagged with a hash when it goes into a
# name, so the stem and extension always keep room: 255 - 64 - 3 (" ()") - 32 leaves 156 bytes.
_ID_MAX = 64
_HASH_CHARS = 16
_PLAIN_ID = re.compile(r"[A-Za-z0-9_\-]+")
_UNSAFE_CHAR = re.compile("[\x00-\x1f\x7f/\ud800-\udfff]")


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
    if _UNSAFE_CHAR.search(filename) is None:  # nearly every name: one C-speed scan instead of a loop
        return filename
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


def survives_upload(name: str) -> bool:
    """Whether a name given to a new file comes back unchanged once the file is uploaded: the API
    keeps filenames as text, and a listing shows them through :func:`sanitize`. Names with control
    characters would come back as control pictures, so the file would seem to vanish after ``close``
    and reappear under another name."""
    return name not in ("", ".", "..") and sanitize(name, "") == name


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


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_CHARS]


def safe_id(file_id: str, max_bytes: int = _ID_MAX) -> str:
    """An id as (part of) one path component of at most ``max_bytes`` bytes. A safe id that fits is
    itself (every real id); any other is sanitized, cut, and tagged with a hash of the original, so
    ids that sanitizing or cutting would merge stay apart."""
    if _PLAIN_ID.fullmatch(file_id) and len(file_id) <= max_bytes:  # the fast path: every real id
        return file_id
    safe = sanitize(file_id, "\u2205")  # an empty id becomes the empty-set sign (and a tag)
    if safe == file_id and len(safe.encode()) <= max_bytes:
        return safe
    tag = "~" + _digest(file_id)
    return _cut(safe, max_bytes - len(tag)) + tag


def with_id(name: str, file_id: str) -> str:
    """``requests.jsonl`` → ``requests (file-…).jsonl``, cut to fit in NAME_MAX bytes."""
    stem, ext = split_ext(name)
    suffix = f" ({safe_id(file_id)})"
    room = NAME_MAX - len(suffix.encode()) - len(ext.encode())
    return _cut(stem, room) + suffix + ext


def base_name(f: Named) -> str:
    """The name a file asks for: its filename made safe, or its id when the filename is empty."""
    return sanitize(f.filename, "") or safe_id(f.id, NAME_MAX)


# Files choose names in this order: oldest first, then by id. (attrgetter: a C call, as sort keys of
# 100,000 files add up.)
order_key: Callable[[Named], tuple[int, str]] = operator.attrgetter("created_at", "id")


def pick_name(base: str, file_id: str, used: Container[str]) -> str:
    """The name a file asking for ``base`` gets when ``used`` are taken: ``base`` itself if free and
    short enough, else ``base`` with the file's id inserted (:func:`with_id`)."""
    if len(base.encode()) <= NAME_MAX and base not in used:
        return base
    name = with_id(base, file_id)
    n = 2
    while name in used:  # only hostile names (one quoting another file's id) get here
        name = with_id(base, f"{file_id}~{n}")
        n += 1
    return name


def bracketed(name: str) -> list[str]:
    """Every text between a `` (`` and a later ``)`` in ``name``: the id of any name :func:`pick_name`
    made with an id in it is among them (as :func:`safe_id` made it)."""
    out = []
    start = name.find(" (")
    while start >= 0:
        end = name.find(")", start + 2)
        while end >= 0:
            out.append(name[start + 2 : end])
            end = name.find(")", end + 1)
        start = name.find(" (", start + 1)
    return out


def assign_names(
    files: Iterable[Named], reserved: Iterable[str] = (), bases: dict[str, str] | None = None
) -> dict[str, str]:
    """Map each file id to its unique directory entry name.

    ``reserved`` holds names already taken by entries that are not API files (files still being
    written); API files never take them. Oldest files choose first, so a newer file never changes
    an older file's name. ``bases``, when given, is filled with each file's :func:`base_name`.
    """
    used = set(reserved)
    names: dict[str, str] = {}
    ordered: Sequence[Named] = sorted(files, key=order_key)
    for f in ordered:
        base = sanitize(f.filename, "") or safe_id(f.id, NAME_MAX)  # base_name and pick_name, inline: hot
        name = base if base not in used and len(base.encode()) <= NAME_MAX else pick_name(base, f.id, used)
        used.add(name)
        names[f.id] = name
        if bases is not None:
            bases[f.id] = base
    return names


def purpose_dir_name(purpose: str, taken: Iterable[str]) -> str:
    """The directory name of a purpose: the purpose made safe, unique among ``taken`` (the other
    purpose directories and ``.by-id``), at most NAME_MAX bytes. ``batch`` stays ``batch``."""
    used = set(taken)
    base = _cut(sanitize(purpose, "(no purpose)"), NAME_MAX - 8)  # room for a " (n)" below
    name, n = base, 2
    while name in used:
        name = f"{base} ({n})"
        n += 1
    return name


def link_name(file_id: str, taken: Container[str]) -> str:
    """The ``.by-id/`` entry name of an id: the id itself when it is a safe name (every real id), else
    :func:`safe_id` of it, made unique against ``taken``."""
    name = safe_id(file_id, NAME_MAX)
    n = 2
    while name in taken:  # only ids made to collide after sanitizing get here
        name = safe_id(f"{file_id}~{n}", NAME_MAX)
        n += 1
    return name
