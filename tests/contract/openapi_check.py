"""Check JSON bodies of the local server against the contract, two ways.

1. **OpenAPI extract** (``shared/contract/openai-files-openapi.yaml``): jsonschema (draft 2020-12)
   over ``components/schemas`` with ``$ref``s resolved, one schema per operation and status.
   Relaxations, each one a documented gap of the extract (FILES_API.md §2, §10.10):

   * optional File fields (``expires_at``, ``status_details``) may be ``null``: the SDK types them
     ``Optional`` and the hosted API sends null;
   * ``OpenAIFile.purpose`` also admits ``evals``, an accepted upload purpose missing from the
     response enum (§2.1 note);
   * ``ListFilesResponse.first_id`` / ``last_id`` may be ``null`` on an empty page (unknown
     upstream, §2.2; the server sends null);
   * error bodies are checked against ``ErrorResponse`` (included in the extract but attached to
     no operation).

2. **FILES_API.md §2 field tables**, read from the markdown itself: the tables of §2.1 (File) and
   §2.4 (Upload) are parsed (field, type, required, enum values from the Notes column); the
   one-line shapes of §2.2, §2.3, §2.5 and §2.6 are encoded here next to the exact doc line they
   come from, and ``doc_lines_unchanged`` fails when the doc no longer says so. Objects may
   carry no field outside their table; ids must have the formats of §5 as this server issues them.
"""

from __future__ import annotations

import copy
import re
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

REPO = Path(__file__).resolve().parents[2]
CONTRACT = REPO.parent / "shared" / "contract"
SPEC_PATH = CONTRACT / "openai-files-openapi.yaml"
DOC_PATH = CONTRACT / "FILES_API.md"

# Ids as this server issues them (FILES_API.md §5 says "treat as opaque"; the format is ours).
FILE_ID = re.compile(r"^file-[A-Za-z0-9]{24}$")
UPLOAD_ID = re.compile(r"^upload_[A-Za-z0-9]{24}$")
PART_ID = re.compile(r"^part_[A-Za-z0-9]{24}$")
REQUEST_ID = re.compile(r"^req_[0-9a-f]{32}$")

# The one-line shapes (doc line -> the fields it requires, with their checks).
DOC_LINE_LIST = (
    '`{"object": "list", "data": [File…], "first_id": string, "last_id": string, '
    '"has_more": bool}` —\nall five required.'
)
DOC_LINE_DELETED = '`{"id": string, "object": "file", "deleted": bool}` — all required.'
DOC_LINE_PART = (
    '`{"id": "part_…", "object": "upload.part", "created_at": int, "upload_id": "upload_…"}` — all required.'
)
DOC_LINE_ERROR = '`{"error": {"message": string, "type": string, "param": string|null, "code": string|null}}`'


class ContractViolation(AssertionError):
    pass


# -- 1. OpenAPI ------------------------------------------------------------------------------------


@cache
def _spec() -> dict[str, Any]:
    return yaml.safe_load(SPEC_PATH.read_text(encoding="utf-8"))


@cache
def _registry() -> Registry:
    doc = {"components": copy.deepcopy(_spec()["components"])}
    schemas = doc["components"]["schemas"]
    file_props = schemas["OpenAIFile"]["properties"]
    for name in ("expires_at", "status_details"):
        file_props[name] = {"anyOf": [file_props[name], {"type": "null"}]}
    file_props["purpose"]["enum"] = [*file_props["purpose"]["enum"], "evals"]
    listing = schemas["ListFilesResponse"]
    for name in ("first_id", "last_id"):
        listing["properties"][name] = {"anyOf": [listing["properties"][name], {"type": "null"}]}
    listing["if"] = {"properties": {"data": {"maxItems": 0}}}
    listing["else"] = {"properties": {"first_id": {"type": "string"}, "last_id": {"type": "string"}}}
    resource = Resource.from_contents(doc, default_specification=DRAFT202012)
    return Registry().with_resource("urn:openai-files", resource)


# (method, path regex) -> the schema of its 200 body, from the extract's paths.
_OPERATIONS: list[tuple[str, re.Pattern[str], str]] = [
    ("get", re.compile(r"/files$"), "/files"),
    ("post", re.compile(r"/files$"), "/files"),
    ("get", re.compile(r"/files/[^/]+$"), "/files/{file_id}"),
    ("delete", re.compile(r"/files/[^/]+$"), "/files/{file_id}"),
    ("post", re.compile(r"/uploads$"), "/uploads"),
    ("post", re.compile(r"/uploads/[^/]+/parts$"), "/uploads/{upload_id}/parts"),
    ("post", re.compile(r"/uploads/[^/]+/complete$"), "/uploads/{upload_id}/complete"),
    ("post", re.compile(r"/uploads/[^/]+/cancel$"), "/uploads/{upload_id}/cancel"),
]


def schema_ref_for(method: str, path: str, status: int) -> str:
    if status >= 400:
        return "#/components/schemas/ErrorResponse"
    for m, pattern, spec_path in _OPERATIONS:
        if m == method.lower() and pattern.search(path):
            op = _spec()["paths"][spec_path][m]
            return op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    raise ContractViolation(f"no JSON operation in the extract for {method} {path}")


def validate_spec(ref: str, body: Any) -> None:
    schema = {"$ref": "urn:openai-files" + ref}
    validator = jsonschema.Draft202012Validator(schema, registry=_registry())
    errors = sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path))
    if errors:
        raise ContractViolation(
            f"{ref}: "
            + "; ".join(f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors)
        )


# -- 2. FILES_API.md tables ------------------------------------------------------------------------


@cache
def _doc() -> str:
    return DOC_PATH.read_text(encoding="utf-8")


def _section(heading_prefix: str) -> str:
    doc = _doc()
    start = doc.index(heading_prefix)
    end = doc.find("\n### ", start + 1)
    return doc[start:end]


@cache
def doc_table(heading_prefix: str) -> dict[str, tuple[str, bool, tuple[str, ...]]]:
    """field -> (type text, required?, backticked values of Notes) from a §2 table."""
    table: dict[str, tuple[str, bool, tuple[str, ...]]] = {}
    for line in _section(heading_prefix).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not cells[0].startswith("`"):
            continue
        name = cells[0].strip("`")
        required = "yes" in cells[2]
        values = tuple(re.findall(r"`([a-z_\-.]+)`", cells[3]))
        table[name] = (cells[1], required, values)
    if not table:
        raise ContractViolation(f"no field table under {heading_prefix!r} in {DOC_PATH}")
    return table


def doc_lines_unchanged() -> None:
    doc = _doc()
    for line in (DOC_LINE_LIST, DOC_LINE_DELETED, DOC_LINE_PART, DOC_LINE_ERROR):
        if line not in doc:
            raise ContractViolation(f"FILES_API.md no longer says: {line}")


def _check_type(where: str, type_text: str, values: tuple[str, ...], value: Any) -> None:
    const = re.search(r'const `"([^"]+)"`', type_text)
    if const:
        ok = value == const.group(1)
    elif type_text.startswith("integer"):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif type_text.startswith("File object"):
        ok = value is None or (isinstance(value, dict) and check_file(value) is None)
    elif "enum" in type_text and "not enum" not in type_text:
        ok = isinstance(value, str) and value in values
    else:
        ok = isinstance(value, str)
    if not ok:
        raise ContractViolation(f"{where}: {value!r} does not match '{type_text}' {values or ''}")


def check_table(heading_prefix: str, obj: dict[str, Any], extra_enum: dict[str, str] | None = None) -> None:
    table = doc_table(heading_prefix)
    unknown = set(obj) - set(table)
    if unknown:
        raise ContractViolation(f"fields outside the table of {heading_prefix!r}: {sorted(unknown)}")
    for name, (type_text, required, values) in table.items():
        if name not in obj:
            if required:
                raise ContractViolation(f"{heading_prefix}: required field {name!r} missing")
            continue
        if obj[name] is None and not required:
            continue  # optional fields are Optional[...] in the SDK
        allowed = values + ((extra_enum[name],) if extra_enum and name in extra_enum else ())
        _check_type(f"{heading_prefix} {name}", type_text, allowed, obj[name])


def check_file(obj: dict[str, Any]) -> None:
    # evals: accepted at upload time, absent from the response enum (FILES_API.md §2.1 note).
    check_table("### 2.1 File object", obj, {"purpose": "evals"})
    _expect(FILE_ID.match(obj["id"]), f"file id format: {obj['id']!r}")


def check_list(obj: dict[str, Any]) -> None:
    _exact_keys(obj, {"object", "data", "first_id", "last_id", "has_more"}, "§2.2 list")
    _expect(obj["object"] == "list" and isinstance(obj["data"], list), "§2.2 object/data")
    _expect(isinstance(obj["has_more"], bool), "§2.2 has_more must be a bool")
    for item in obj["data"]:
        check_file(item)
    if obj["data"]:
        _expect(obj["first_id"] == obj["data"][0]["id"], "§2.2 first_id is the first item's id")
        _expect(obj["last_id"] == obj["data"][-1]["id"], "§2.2 last_id is the last item's id")
    else:
        _expect(obj["first_id"] is None and obj["last_id"] is None, "empty page: first_id/last_id null")


def check_deleted(obj: dict[str, Any]) -> None:
    _exact_keys(obj, {"id", "object", "deleted"}, "§2.3 delete response")
    _expect(
        isinstance(obj["id"], str) and obj["object"] == "file" and isinstance(obj["deleted"], bool),
        "§2.3 field types",
    )


def check_upload(obj: dict[str, Any]) -> None:
    check_table("### 2.4 Upload object", obj)
    _expect(UPLOAD_ID.match(obj["id"]), f"upload id format: {obj['id']!r}")
    _expect(
        (obj.get("file") is not None) == (obj["status"] == "completed"),
        "§2.4 file is set exactly when status=completed",
    )


def check_part(obj: dict[str, Any]) -> None:
    _exact_keys(obj, {"id", "object", "created_at", "upload_id"}, "§2.5 upload part")
    _expect(PART_ID.match(obj["id"]) and UPLOAD_ID.match(obj["upload_id"]), "§2.5 id formats")
    _expect(obj["object"] == "upload.part", "§2.5 object")
    _expect(isinstance(obj["created_at"], int) and not isinstance(obj["created_at"], bool), "§2.5 created_at")


def check_error(obj: dict[str, Any]) -> None:
    _exact_keys(obj, {"error"}, "§2.6 envelope")
    err = obj["error"]
    _exact_keys(err, {"message", "type", "param", "code"}, "§2.6 error")
    _expect(isinstance(err["message"], str) and isinstance(err["type"], str), "§2.6 message/type strings")
    for key in ("param", "code"):
        _expect(err[key] is None or isinstance(err[key], str), f"§2.6 {key} string|null")


def _exact_keys(obj: Any, keys: set[str], what: str) -> None:
    _expect(
        isinstance(obj, dict) and set(obj) == keys,
        f"{what}: keys {sorted(obj) if isinstance(obj, dict) else obj!r} != {sorted(keys)}",
    )


def _expect(cond: object, message: str) -> None:
    if not cond:
        raise ContractViolation(message)


_DIRECT = {
    "#/components/schemas/ListFilesResponse": check_list,
    "#/components/schemas/OpenAIFile": check_file,
    "#/components/schemas/DeleteFileResponse": check_deleted,
    "#/components/schemas/Upload": check_upload,
    "#/components/schemas/UploadPart": check_part,
    "#/components/schemas/ErrorResponse": check_error,
}


def check_response(method: str, path: str, status: int, body: Any) -> str:
    """Validate one JSON body both ways; returns the schema ref used."""
    ref = schema_ref_for(method, path, status)
    validate_spec(ref, body)
    _DIRECT[ref](body)
    return ref
