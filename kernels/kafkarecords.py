"""Kafka record batches (message format v2) read into columns, in Numba, without a Python object per
record: the values of a fetch gathered into one buffer, with their offsets.

The consumer's fetch answer for a partition is a run of record batches (``DefaultRecordBatch`` in
Kafka and aiokafka), all integers big-endian::

    baseOffset i64 | batchLength i32 | partitionLeaderEpoch i32 | magic i8 | crc u32 |
    attributes i16 | lastOffsetDelta i32 | baseTimestamp i64 | maxTimestamp i64 |
    producerId i64 | producerEpoch i16 | baseSequence i32 | recordsCount i32     (61 bytes)

then ``recordsCount`` records, compressed as one block when ``attributes & 7`` is set::

    length varint | attributes i8 | timestampDelta varint | offsetDelta varint |
    keyLength varint | key | valueLength varint | value | headersCount varint | headers

(varints zigzag-encoded, a length of -1 is null). :func:`scan_batches` walks every batch header of a
fetch and the records of the uncompressed data batches; the caller (``detector.kafka_records``)
decides per batch what Kafka's rules keep (control batches, aborted transactions), checks CRCs and
decompresses compressed batches, whose records :func:`scan_records` then reads. A fetch may end
with a partial batch (the broker cuts at the fetch size): it is left for the next fetch.
"""

from typing import NamedTuple

import numpy as np
from numba import njit

BATCH_HEADER_BYTES = 61
CRC_START = 21  # the CRC covers the batch from its attributes to its end
MIN_RECORD_BYTES = 7  # length, attributes, timestamp, offset, key and value lengths, header count

ATTR_COMPRESSION_MASK = 0x07
ATTR_LOG_APPEND_TIME = 0x08
ATTR_TRANSACTIONAL = 0x10
ATTR_CONTROL = 0x20

# Batch status
BATCH_OK = 0
BATCH_LEGACY = 1  # magic 0 or 1: the caller hands the fetch to the client's own parser
BATCH_CORRUPT = 2  # lengths or varints out of bounds

NO_CONTROL = -1  # control_type of a data batch (else the first control record's type: 0 abort)


class RecordBatches(NamedTuple):
    """One row per complete batch of a fetch, in order."""

    start: np.ndarray  # int64: byte position of the batch in the fetch
    end: np.ndarray  # int64: byte position after it
    base_offset: np.ndarray  # int64
    next_offset: (
        np.ndarray
    )  # int64: offset after the batch's last (baseOffset + lastOffsetDelta + 1)
    attributes: np.ndarray  # int32
    producer_id: np.ndarray  # int64 (-1: not idempotent)
    record_count: np.ndarray  # int32: records in the batch (compressed or not)
    crc: np.ndarray  # uint32: as stored
    status: np.ndarray  # int8: BATCH_OK, BATCH_LEGACY or BATCH_CORRUPT
    control_type: np.ndarray  # int16: NO_CONTROL, or the control record's type (0 abort, 1 commit)
    record_begin: np.ndarray  # int64: the batch's records are rows [begin, end) of RecordValues
    record_end: np.ndarray  # int64


_BATCH_DTYPES = {
    "start": np.int64,
    "end": np.int64,
    "base_offset": np.int64,
    "next_offset": np.int64,
    "attributes": np.int32,
    "producer_id": np.int64,
    "record_count": np.int32,
    "crc": np.uint32,
    "status": np.int8,
    "control_type": np.int16,
    "record_begin": np.int64,
    "record_end": np.int64,
}
assert tuple(_BATCH_DTYPES) == RecordBatches._fields


class RecordValues(NamedTuple):
    """Records kept by a scan: value i is ``values[bounds[i]:bounds[i + 1]]`` (null reads as empty)."""

    offset: np.ndarray  # int64 (n,): the record's Kafka offset
    bounds: np.ndarray  # int64 (n + 1,)
    values: np.ndarray  # uint8: the values, back to back


def scan_batches(fetch: np.ndarray, min_offset: int) -> tuple[RecordBatches, RecordValues]:
    """Batch headers of a fetch, and the values of its uncompressed data batches' records from
    ``min_offset`` on (a fetch may start inside a batch: the records before it were consumed)."""
    _check_bytes(fetch, "fetch")
    max_batches = fetch.size // BATCH_HEADER_BYTES + 1
    batch_columns = tuple(np.empty(max_batches, dtype) for dtype in _BATCH_DTYPES.values())
    offset, bounds, values = _new_values(fetch.size // MIN_RECORD_BYTES + 1, fetch.size)
    n_batches, n_records = _scan_batches(fetch, min_offset, *batch_columns, offset, bounds, values)
    batches = RecordBatches(*(column[:n_batches] for column in batch_columns))
    return batches, _trimmed(offset, bounds, values, n_records)


def scan_records(
    records: np.ndarray, base_offset: int, count: int, min_offset: int
) -> RecordValues | None:
    """Values of ``count`` records laid out back to back (a decompressed batch body) from
    ``min_offset`` on; None when they are malformed."""
    _check_bytes(records, "records")
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    offset, bounds, values = _new_values(
        min(count, records.size // MIN_RECORD_BYTES + 1), records.size
    )
    n_records = _walk_records(
        records, 0, records.size, base_offset, count, min_offset, offset, bounds, values, 0
    )
    if n_records < 0:
        return None
    return _trimmed(offset, bounds, values, n_records)


def _check_bytes(array: np.ndarray, name: str) -> None:
    if not isinstance(array, np.ndarray) or array.dtype != np.uint8 or array.ndim != 1:
        raise TypeError(f"{name} must be a 1-D uint8 array")
    if not array.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")


def _new_values(max_records: int, max_bytes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    bounds = np.empty(max_records + 1, np.int64)
    bounds[0] = 0
    return np.empty(max_records, np.int64), bounds, np.empty(max_bytes, np.uint8)


def _trimmed(offset, bounds, values, n: int) -> RecordValues:
    return RecordValues(offset[:n], bounds[: n + 1], values[: bounds[n]])


@njit(cache=True, nogil=True, inline="always")
def _be(data, pos, width):
    value = 0
    for i in range(width):
        value = (value << 8) | np.int64(data[pos + i])
    return value


@njit(cache=True, nogil=True, inline="always")
def _signed(value, bits):
    return value - (1 << bits) if value >= (1 << (bits - 1)) else value


@njit(cache=True, nogil=True)
def _varint(data, pos, end):
    """(zigzag-decoded value, position after it); position -1 when it runs past ``end``."""
    raw = np.uint64(0)
    shift = 0
    while pos < end and shift < 64:
        byte = data[pos]
        pos += 1
        raw |= np.uint64(byte & 0x7F) << np.uint64(shift)
        if byte < 0x80:
            value = np.int64(raw >> np.uint64(1)) ^ -np.int64(raw & np.uint64(1))
            return value, pos
        shift += 7
    return np.int64(0), -1


@njit(cache=True, nogil=True)
def _record_head(data, pos, end):
    """(end, offset delta, key position, key length) of the record at ``pos``; end -1 when it is
    malformed. A null key has length -1."""
    length, pos = _varint(data, pos, end)
    if pos < 0 or length < MIN_RECORD_BYTES - 1 or pos + length > end:
        return -1, 0, 0, 0
    record_end = pos + length
    _, pos = _varint(data, pos + 1, record_end)  # past the attributes: the timestamp delta
    if pos < 0:
        return -1, 0, 0, 0
    offset_delta, pos = _varint(data, pos, record_end)
    if pos < 0:
        return -1, 0, 0, 0
    key_length, pos = _varint(data, pos, record_end)
    if pos < 0 or key_length < -1 or pos + max(key_length, 0) > record_end:
        return -1, 0, 0, 0
    return record_end, offset_delta, pos, key_length


@njit(cache=True, nogil=True)
def _walk_records(data, pos, end, base_offset, count, min_offset, offset, bounds, values, n):
    """Append the records of ``data[pos:end]`` from ``min_offset`` on to the value columns from row
    ``n``; the new row count, or -1 when a record is malformed."""
    if count < 0:
        return -1
    for _ in range(count):
        record_end, offset_delta, key_pos, key_length = _record_head(data, pos, end)
        if record_end < 0:
            return -1
        value_length, pos = _varint(data, key_pos + max(key_length, 0), record_end)
        if pos < 0 or value_length < -1 or pos + max(value_length, 0) > record_end:
            return -1
        if base_offset + offset_delta >= min_offset:
            offset[n] = base_offset + offset_delta
            start = bounds[n]
            for i in range(max(value_length, 0)):
                values[start + i] = data[pos + i]
            bounds[n + 1] = start + max(value_length, 0)
            n += 1
        pos = record_end
    return n


@njit(cache=True, nogil=True)
def _control_type(data, pos, end):
    """Type of a control batch's first record (its key is version i16, type i16), or -2."""
    record_end, _, key_pos, key_length = _record_head(data, pos, end)
    if record_end < 0 or key_length < 4:
        return -2
    return _signed(_be(data, key_pos + 2, 2), 16)


@njit(cache=True, nogil=True)
def _scan_batches(
    fetch,
    min_offset,
    start,
    end,
    base_offset,
    next_offset,
    attributes,
    producer_id,
    record_count,
    crc,
    status,
    control_type,
    record_begin,
    record_end,
    offset,
    bounds,
    values,
):
    size = fetch.size
    pos = 0
    b = 0
    n = 0
    while pos + 17 <= size:  # offset, length, epoch and magic: enough to tell the format
        batch_end = pos + 12 + _signed(_be(fetch, pos + 8, 4), 32)
        if batch_end > size:
            break  # a partial batch at the end of the fetch: the next fetch starts with it
        start[b] = pos
        end[b] = batch_end
        base_offset[b] = _signed(_be(fetch, pos, 8), 64)
        control_type[b] = NO_CONTROL
        record_begin[b] = n
        record_end[b] = n
        magic = fetch[pos + 16]
        if magic != 2 or batch_end < pos + BATCH_HEADER_BYTES:
            status[b] = BATCH_LEGACY if magic != 2 else BATCH_CORRUPT
            next_offset[b] = base_offset[b] + 1
            attributes[b] = 0
            producer_id[b] = -1
            record_count[b] = 0
            crc[b] = 0
            b += 1
            if batch_end <= pos:
                break
            pos = batch_end
            continue
        status[b] = BATCH_OK
        crc[b] = _be(fetch, pos + 17, 4)
        attributes[b] = _be(fetch, pos + 21, 2)
        next_offset[b] = base_offset[b] + _signed(_be(fetch, pos + 23, 4), 32) + 1
        producer_id[b] = _signed(_be(fetch, pos + 43, 8), 64)
        record_count[b] = _signed(_be(fetch, pos + 57, 4), 32)
        body = pos + BATCH_HEADER_BYTES
        if attributes[b] & ATTR_CONTROL:
            control_type[b] = _control_type(fetch, body, batch_end)
            if control_type[b] == -2:
                status[b] = BATCH_CORRUPT
        elif (attributes[b] & ATTR_COMPRESSION_MASK) == 0:
            walked = _walk_records(
                fetch,
                body,
                batch_end,
                base_offset[b],
                record_count[b],
                min_offset,
                offset,
                bounds,
                values,
                n,
            )
            if walked < 0:
                status[b] = BATCH_CORRUPT
            else:
                n = walked
        record_end[b] = n
        b += 1
        pos = batch_end
    return b, n
