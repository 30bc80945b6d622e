"""kernels.kafkarecords against aiokafka's own parser of record batches (the reference), on random
batches built by aiokafka's batch builder: offsets, values, nulls, keys, headers, fetch positions
inside a batch, partial trailing batches, control batches, legacy formats and corrupted bytes."""

from __future__ import annotations

import numpy as np
import pytest
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.record.util import calc_crc32c
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import kafkarecords as kr

optional_bytes = st.one_of(st.none(), st.binary(max_size=300))
record_strategy = st.tuples(
    optional_bytes,  # key
    optional_bytes,  # value
    st.lists(st.tuples(st.text(max_size=8), optional_bytes), max_size=3),  # headers
)


def build_batch(base_offset: int, records: list, *, offset_step: int = 1, **options) -> bytes:
    """A record batch as the broker stores it (aiokafka's builder writes offset 0 as the base)."""
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=options.get("compression_type", 0),
        is_transactional=options.get("is_transactional", 0),
        producer_id=options.get("producer_id", -1),
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 30,
    )
    for i, (key, value, headers) in enumerate(records):
        builder.append(i * offset_step, 1_700_000_000_000 + i, key, value, headers)
    batch = bytearray(builder.build())
    batch[0:8] = base_offset.to_bytes(8, "big", signed=True)  # not covered by the CRC
    return bytes(batch)


def reference(fetch: bytes, min_offset: int) -> list[tuple[int, bytes]]:
    """(offset, value) of the data batches' records from ``min_offset``, by aiokafka's parser."""
    kept = []
    records = MemoryRecords(fetch)
    while records.has_next():
        batch = records.next_batch()
        if batch.is_control_batch:
            continue
        for record in batch:
            if record.offset >= min_offset:
                kept.append((record.offset, b"" if record.value is None else record.value))
    return kept


def scanned(values: kr.RecordValues) -> list[tuple[int, bytes]]:
    data = values.values.tobytes()
    bounds = values.bounds.tolist()
    return [(o, data[bounds[i] : bounds[i + 1]]) for i, o in enumerate(values.offset.tolist())]


batches_strategy = st.lists(
    st.tuples(st.lists(record_strategy, min_size=1, max_size=12), st.integers(1, 3)),
    max_size=6,
)


@settings(max_examples=150, deadline=None)
@given(batches=batches_strategy, cut=st.integers(0, 200), start=st.integers(0, 60))
def test_values_and_offsets_match_aiokafka(batches, cut, start):
    parts, offset = [], 1_000
    for records, step in batches:
        parts.append(build_batch(offset, records, offset_step=step))
        offset += len(records) * step + 3  # compaction-like gaps between batches too
    whole = b"".join(parts)
    fetch = whole[: max(len(whole) - cut, 0)] if parts else whole  # maybe a partial last batch
    min_offset = 1_000 + start

    found, values = kr.scan_batches(np.frombuffer(fetch, np.uint8), min_offset)

    assert scanned(values) == reference(fetch, min_offset)
    complete = MemoryRecords(fetch)
    headers = []
    while complete.has_next():
        batch = complete.next_batch()
        headers.append((batch.base_offset, batch.next_offset, batch.attributes, batch.crc))
    assert (
        list(
            zip(
                found.base_offset.tolist(),
                found.next_offset.tolist(),
                found.attributes.tolist(),
                found.crc.tolist(),
                strict=True,
            )
        )
        == headers
    )
    assert (found.status == kr.BATCH_OK).all()
    assert (found.control_type == kr.NO_CONTROL).all()
    for b, (start_byte, end_byte) in enumerate(zip(found.start, found.end, strict=True)):
        assert calc_crc32c(fetch[start_byte + kr.CRC_START : end_byte]) == found.crc[b]


def test_null_and_empty_values_read_as_empty_and_keys_are_skipped():
    fetch = build_batch(7, [(b"k", None, []), (None, b"", [("h", b"x")]), (b"key", b"v", [])])
    _, values = kr.scan_batches(np.frombuffer(fetch, np.uint8), 0)
    assert scanned(values) == [(7, b""), (8, b""), (9, b"v")]


def _with_attributes(batch: bytes, set_bits: int) -> bytes:
    patched = bytearray(batch)
    attributes = int.from_bytes(patched[21:23], "big") | set_bits
    patched[21:23] = attributes.to_bytes(2, "big")
    patched[17:21] = calc_crc32c(bytes(patched[21:])).to_bytes(4, "big")
    return bytes(patched)


@pytest.mark.parametrize("marker_type", [0, 1])
def test_control_batches_are_reported_with_their_type_and_read_no_values(marker_type):
    key = (0).to_bytes(2, "big") + marker_type.to_bytes(2, "big")  # version, type
    control = _with_attributes(
        build_batch(
            20, [(key, b"\x00\x00\x00\x00\x00\x00", [])], is_transactional=1, producer_id=9
        ),
        kr.ATTR_CONTROL,
    )
    data = build_batch(21, [(None, b"after", [])])
    found, values = kr.scan_batches(np.frombuffer(control + data, np.uint8), 0)
    assert found.control_type.tolist() == [marker_type, kr.NO_CONTROL]
    assert found.producer_id.tolist() == [9, -1]
    assert scanned(values) == [(21, b"after")]


def test_compressed_batches_are_left_to_the_caller_and_scan_records_reads_their_body():
    records = [(None, f"value {i}".encode(), []) for i in range(5)]
    batch = build_batch(100, records, compression_type=1)
    found, values = kr.scan_batches(np.frombuffer(batch, np.uint8), 102)
    assert found.attributes[0] & kr.ATTR_COMPRESSION_MASK == 1
    assert len(values.offset) == 0
    plain = build_batch(100, records)  # the same records, uncompressed: its body is what gzip holds
    body = np.frombuffer(plain[kr.BATCH_HEADER_BYTES :], np.uint8)
    got = kr.scan_records(np.ascontiguousarray(body), 100, len(records), 102)
    assert got is not None
    assert scanned(got) == reference(batch, 102)


def test_legacy_and_corrupt_batches_are_flagged_not_read():
    legacy = bytearray(build_batch(0, [(None, b"x", [])]))
    legacy[16] = 1  # magic 1
    found, values = kr.scan_batches(np.frombuffer(bytes(legacy), np.uint8), 0)
    assert found.status.tolist() == [kr.BATCH_LEGACY]
    assert len(values.offset) == 0

    corrupt = bytearray(build_batch(0, [(None, b"hello", [])]))
    corrupt[kr.BATCH_HEADER_BYTES] = 0x7F  # first record's length: far past the batch
    found, values = kr.scan_batches(np.frombuffer(bytes(corrupt), np.uint8), 0)
    assert found.status.tolist() == [kr.BATCH_CORRUPT]
    assert kr.scan_records(np.frombuffer(bytes(corrupt[61:]), np.uint8), 0, 1, 0) is None


@settings(max_examples=200, deadline=None)
@given(
    records=st.lists(record_strategy, min_size=1, max_size=8),
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=6),
)
def test_random_corruption_never_reads_out_of_bounds(records, flips):
    fetch = bytearray(build_batch(0, records) + build_batch(len(records), records))
    for position, byte in flips:
        fetch[position % len(fetch)] = byte
    found, values = kr.scan_batches(np.frombuffer(bytes(fetch), np.uint8), 0)
    assert np.all(np.diff(values.bounds) >= 0)
    assert values.bounds[-1] == values.values.size <= len(fetch)
    assert set(found.status.tolist()) <= {kr.BATCH_OK, kr.BATCH_LEGACY, kr.BATCH_CORRUPT}


def test_wrappers_check_their_inputs():
    with pytest.raises(TypeError):
        kr.scan_batches(np.zeros(4, np.int8), 0)
    with pytest.raises(ValueError):
        kr.scan_batches(np.zeros(8, np.uint8)[::2], 0)
    with pytest.raises(ValueError):
        kr.scan_records(np.zeros(8, np.uint8), 0, -1, 0)
