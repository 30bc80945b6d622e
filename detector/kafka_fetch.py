"""Columnar fetches: Kafka's fetch answers read straight into :class:`PackedRecords`, without a
Python object per record.

aiokafka turns every fetched record into a ``ConsumerRecord`` on the event loop's thread, about 3 us
per record with the GIL held: as much as the whole detector pipeline spends on a record, and in the
way of the pipeline's own Python parts. A consumer created with ``value_deserializer=COLUMNAR``
instead gets from ``getmany`` items that are :class:`PackedRecords` of up to
:data:`CHUNK_RECORDS` records each, read from the fetch's bytes by ``kernels.kafkarecords``.

How it plugs in: aiokafka's fetcher builds ``PartitionRecords(tp, MemoryRecords(raw), ...)`` for
every partition of a fetch answer, by module-global names. :func:`install` replaces both names, for
aiokafka 0.14 (the tested range of ``pyproject.toml``): ``MemoryRecords`` by a wrapper that keeps
the raw bytes and delegates the rest, ``PartitionRecords`` by a factory that builds
:class:`ColumnarPartitionRecords` for consumers whose value deserializer is :data:`COLUMNAR`, and
aiokafka's own class for every other consumer. Other consumers see no change.

:class:`ColumnarPartitionRecords` applies aiokafka's rules, batch by batch: CRC check (when the
consumer checks CRCs), control batches skipped, batches of aborted transactions skipped under
``read_committed``, records before the fetch position skipped, compressed batches decompressed with
aiokafka's codecs, and the consumer's position moved past each item handed out.
``tests/integration/test_kafka_fetch.py`` checks it against aiokafka's parser on a real broker. A
fetch the kernel cannot read (the legacy message formats of Kafka < 0.11, a malformed batch) goes
through aiokafka's own parser, and its values are packed the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import aiokafka
import numpy as np
from aiokafka import errors
from aiokafka.codec import gzip_decode, lz4_decode, snappy_decode, zstd_decode
from aiokafka.consumer import fetcher
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.util import calc_crc32c

from detector.events import PackedRecords
from kernels import kafkarecords as kr

log = logging.getLogger(__name__)

CHUNK_RECORDS = 512  # records per item: getmany's max_records counts items, so they stay small
TESTED_AIOKAFKA = ("0.14.",)
ABORT_MARKER = 0
READ_COMMITTED = fetcher.READ_COMMITTED

_DECOMPRESS: dict[int, Callable[[bytes], bytes]] = {
    1: gzip_decode,
    2: snappy_decode,
    3: lz4_decode,
    4: zstd_decode,
}


def _columnar(value: bytes | None) -> bytes | None:
    return value


# The value deserializer that marks a consumer for columnar fetches. An identity, so a consumer
# still works record by record where install() could not patch aiokafka.
COLUMNAR: Callable[[bytes | None], bytes | None] = _columnar


class _RawMemoryRecords:
    """aiokafka's ``MemoryRecords`` that also keeps the fetch answer's bytes."""

    __slots__ = ("_records", "raw")

    def __init__(self, bytes_data: bytes) -> None:
        self.raw = bytes_data
        self._records = _AIOKAFKA_MEMORY_RECORDS(bytes_data)

    def has_next(self) -> bool:
        return self._records.has_next()

    def next_batch(self) -> Any:
        return self._records.next_batch()

    def size_in_bytes(self) -> int:
        return self._records.size_in_bytes()


_AIOKAFKA_MEMORY_RECORDS = fetcher.MemoryRecords
_AIOKAFKA_PARTITION_RECORDS = fetcher.PartitionRecords


class ColumnarPartitionRecords(_AIOKAFKA_PARTITION_RECORDS):
    """One partition's fetch answer, handed out as :class:`PackedRecords` items."""

    def _unpack_records(self) -> Iterator[PackedRecords]:  # type: ignore[override]
        fetch = np.frombuffer(self._records.raw, dtype=np.uint8)  # install() keeps the bytes
        batches, values = kr.scan_batches(fetch, self.next_fetch_offset)
        if np.any(batches.status != kr.BATCH_OK):
            # Legacy formats and malformed batches: aiokafka's parser reads (or rejects) them.
            yield from self._chunks_of_records(super()._unpack_records())
            return
        kept = self._kept_parts(fetch, batches, values)  # non-empty parts
        if kept:
            records = PackedRecords.concat(kept)
            for start in range(0, len(records), CHUNK_RECORDS):
                chunk = records[start : start + CHUNK_RECORDS]
                self.next_fetch_offset = int(chunk.offsets[-1]) + 1
                yield chunk
        if len(batches):
            # Format v2 keeps a batch's last offset even when compaction removed its last records:
            # moving past it avoids fetching the same batch again (as aiokafka does).
            self.next_fetch_offset = max(self.next_fetch_offset, int(batches.next_offset[-1]))

    def _kept_parts(
        self, fetch: np.ndarray, batches: kr.RecordBatches, values: kr.RecordValues
    ) -> list[PackedRecords]:
        """The records Kafka's rules keep, as runs of whole batches in offset order."""
        read_committed = self._isolation_level == READ_COMMITTED
        parts: list[PackedRecords] = []
        run_start = -1  # first batch of the current run of plain batches read by the scan
        columns = zip(
            batches.start.tolist(),
            batches.end.tolist(),
            batches.base_offset.tolist(),
            batches.attributes.tolist(),
            batches.producer_id.tolist(),
            batches.crc.tolist(),
            batches.control_type.tolist(),
            strict=True,
        )
        for b, (start, end, base, attributes, producer, crc, control) in enumerate(columns):
            if self._check_crcs and calc_crc32c(fetch[start + kr.CRC_START : end]) != crc:
                raise errors.CorruptRecordException(f"Invalid CRC - {self._tp}")
            skip = False
            if read_committed:
                self._consume_aborted_up_to(base)
                if control == ABORT_MARKER:
                    # discard, not remove: an abort marker may come for an otherwise empty partition
                    self._aborted_producers.discard(producer)
                skip = bool(attributes & kr.ATTR_TRANSACTIONAL) and (
                    producer in self._aborted_producers
                )
            compressed = attributes & kr.ATTR_COMPRESSION_MASK
            if skip or control != kr.NO_CONTROL or compressed:
                if run_start >= 0:
                    parts.append(_rows(values, batches, run_start, b))
                    run_start = -1
                if not skip and control == kr.NO_CONTROL:
                    parts.append(self._decompressed(fetch, batches, b, compressed))
            elif run_start < 0:
                run_start = b
        if run_start >= 0:
            parts.append(_rows(values, batches, run_start, len(batches.start)))
        return [part for part in parts if len(part)]

    def _decompressed(
        self, fetch: np.ndarray, batches: kr.RecordBatches, b: int, codec: int
    ) -> PackedRecords:
        decompress = _DECOMPRESS.get(codec)
        if decompress is None:
            raise errors.UnsupportedCodecError(f"unknown compression codec {codec}")
        start, end = int(batches.start[b]), int(batches.end[b])
        body = decompress(fetch[start + kr.BATCH_HEADER_BYTES : end].tobytes())
        scanned = kr.scan_records(
            np.frombuffer(body, dtype=np.uint8),
            int(batches.base_offset[b]),
            int(batches.record_count[b]),
            self.next_fetch_offset,
        )
        if scanned is None:
            raise errors.CorruptRecordException(f"malformed compressed batch - {self._tp}")
        return PackedRecords(scanned.values, scanned.bounds, scanned.offset)

    def _chunks_of_records(self, records: Iterator[Any]) -> Iterator[PackedRecords]:
        """aiokafka's records, packed CHUNK_RECORDS at a time (its own position bookkeeping runs
        inside the iterator, so it is already past each chunk when the chunk is handed out)."""
        values: list[bytes] = []
        offsets: list[int] = []
        for record in records:
            values.append(b"" if record.value is None else record.value)
            offsets.append(record.offset)
            if len(values) == CHUNK_RECORDS:
                yield PackedRecords.from_values(values, offsets)
                values, offsets = [], []
        if values:
            yield PackedRecords.from_values(values, offsets)


def _rows(
    values: kr.RecordValues, batches: kr.RecordBatches, first: int, stop: int
) -> PackedRecords:
    """Records of batches ``[first, stop)`` as scanned (their values are contiguous)."""
    begin, end = int(batches.record_begin[first]), int(batches.record_end[stop - 1])
    low, high = int(values.bounds[begin]), int(values.bounds[end])
    return PackedRecords(
        values.values[low:high], values.bounds[begin : end + 1] - low, values.offset[begin:end]
    )


def _partition_records(
    tp: Any,
    records: Any,
    aborted_transactions: Any,
    fetch_offset: int,
    key_deserializer: Any,
    value_deserializer: Any,
    check_crcs: bool,
    isolation_level: int,
) -> Any:
    cls = (
        ColumnarPartitionRecords if value_deserializer is COLUMNAR else _AIOKAFKA_PARTITION_RECORDS
    )
    return cls(
        tp,
        records,
        aborted_transactions,
        fetch_offset,
        key_deserializer,
        value_deserializer,
        check_crcs,
        isolation_level,
    )


def install() -> bool:
    """Route fetches of :data:`COLUMNAR` consumers through :class:`ColumnarPartitionRecords`
    (idempotent). False, with a warning, on an aiokafka this was not built for: consumers then
    get aiokafka's records."""
    if fetcher.PartitionRecords is _partition_records:
        return True
    if not aiokafka.__version__.startswith(TESTED_AIOKAFKA):
        log.warning(
            "aiokafka %s: columnar fetches are built for %s; reading record by record",
            aiokafka.__version__,
            ", ".join(v + "x" for v in TESTED_AIOKAFKA),
        )
        return False
    fetcher.MemoryRecords = _RawMemoryRecords
    fetcher.PartitionRecords = _partition_records
    return True


def warm_up() -> None:
    """Compile (or load from the cache) the record-batch kernels on one small batch."""
    builder = DefaultRecordBatchBuilder(2, 0, 0, -1, -1, -1, 1 << 16)
    builder.append(0, 0, None, b"{}", [])
    batch = np.frombuffer(bytes(builder.build()), dtype=np.uint8)
    kr.scan_batches(batch, 0)
    kr.scan_records(np.ascontiguousarray(batch[kr.BATCH_HEADER_BYTES :]), 0, 1, 0)
