"""fsx-lite: random writes, truncates, reads and flushes on one spooled file, checked against a bytearray.

After every step the spool reads back exactly what the model holds; after every flush the fake
server holds exactly those bytes under the handle's latest upload; at release the content cache is
offered exactly those bytes. The limit is lowered so that EFBIG is exercised too.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from openaifs.client.records import FileRecord
from openaifs.errors import FileTooLargeError
from openaifs.uploads import UploadSpool
from tests.unit.test_uploads_fake import FakeFilesClient

LIMIT = 3000  # small, so writes and truncates cross it often


@dataclass(frozen=True)
class Write:
    offset: int
    data: bytes


@dataclass(frozen=True)
class Truncate:
    size: int


@dataclass(frozen=True)
class Read:
    offset: int
    size: int


@dataclass(frozen=True)
class Flush:
    pass


OPS = st.one_of(
    st.builds(Write, st.integers(0, LIMIT + 100), st.binary(min_size=0, max_size=400)),
    st.builds(Truncate, st.integers(0, LIMIT + 100)),
    st.builds(Read, st.integers(0, LIMIT + 100), st.integers(0, 600)),
    st.just(Flush()),
)


def apply_model(model: bytearray, op: Write | Truncate) -> None:
    if isinstance(op, Write):
        if op.data and op.offset > len(model):
            model.extend(bytes(op.offset - len(model)))
        model[op.offset:op.offset + len(op.data)] = op.data
    elif op.size < len(model):
        del model[op.size:]
    else:
        model.extend(bytes(op.size - len(model)))


async def run_ops(cache: Path, ops: list[Write | Truncate | Read | Flush]) -> None:
    fake = FakeFilesClient()
    spool = UploadSpool(fake, cache, max_file_bytes=LIMIT)
    model = bytearray()
    pf = spool.create("fsx.bin", "user_data")
    uploads: list[FileRecord] = []
    for op in ops:
        if isinstance(op, Flush):
            record = await spool.commit(pf)
            if record is not None:
                uploads.append(record)
            assert not pf.dirty and pf.record is not None
            assert fake.content(pf.record) == bytes(model)
        elif isinstance(op, Read):
            assert spool.read(pf, op.offset, op.size) == bytes(model[op.offset:op.offset + op.size])
        else:
            end = op.offset + len(op.data) if isinstance(op, Write) else op.size
            try:
                if isinstance(op, Write):
                    assert spool.write(pf, op.offset, op.data) == len(op.data)
                else:
                    spool.truncate(pf, op.size)
            except FileTooLargeError:
                assert end > LIMIT
            else:
                assert end <= LIMIT
                apply_model(model, op)
        assert pf.size == len(model) == pf.spool_path.stat().st_size
    await spool.commit(pf)
    assert len({r.id for r in uploads}) == len(uploads)  # each flush with news is a new upload
    adopted: list[bytes] = []
    spool.release(pf, adopt=lambda rec, path: adopted.append(path.read_bytes()))
    assert adopted == [bytes(model)]
    assert spool.close() == []


@settings(max_examples=300, deadline=None)
@given(st.lists(OPS, max_size=40))
def test_spool_matches_a_bytearray_model(ops: list[Write | Truncate | Read | Flush]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        trio.run(run_ops, Path(tmp), ops)
