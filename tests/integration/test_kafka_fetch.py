"""Columnar fetches (detector.kafka_fetch) against aiokafka's own records, on a real broker: the
same (offset, value) sequence and the same final position, through plain, compressed, transactional
(committed and aborted) and null-valued records, from the start or from inside a batch, under both
isolation levels; and consumers without the marker keep getting aiokafka's records."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord

from detector import kafka_fetch
from detector.events import PackedRecords

pytestmark = pytest.mark.asyncio

PARTITIONS = 2


async def _fill(bootstrap: str, topic: str) -> None:
    """Records of every kind the fetch path must handle, on both partitions."""
    plain = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=4096)
    gzipped = AIOKafkaProducer(bootstrap_servers=bootstrap, compression_type="gzip", linger_ms=5)
    transactional = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"{topic}-tx")
    for producer in (plain, gzipped, transactional):
        await producer.start()
    try:
        for partition in range(PARTITIONS):
            sends = [
                plain.send(topic, f"plain {partition} {i} ".encode() * (i % 7), partition=partition)
                for i in range(300)
            ]
            await asyncio.gather(*sends)
            await plain.send_and_wait(topic, None, key=b"tombstone", partition=partition)
            await asyncio.gather(
                *(gzipped.send(topic, f"gz {i}".encode(), partition=partition) for i in range(200))
            )
            async with transactional.transaction():
                for i in range(50):
                    await transactional.send(topic, f"committed {i}".encode(), partition=partition)
            await transactional.begin_transaction()
            for i in range(50):
                await transactional.send(topic, f"aborted {i}".encode(), partition=partition)
            await transactional.abort_transaction()
            await asyncio.gather(
                *(plain.send(topic, f"tail {i}".encode(), partition=partition) for i in range(100))
            )
        async with transactional.transaction():  # partition 0 ends with a control batch
            await transactional.send(topic, b"last", partition=0)
    finally:
        for producer in (plain, gzipped, transactional):
            await producer.stop()


async def _read_all(
    bootstrap: str, topic: str, *, columnar: bool, isolation: str, start: int = 0
) -> tuple[list[tuple[int, int, bytes]], dict[int, int]]:
    """(partition, offset, value) of every record from ``start``, and the final positions."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        isolation_level=isolation,
        max_partition_fetch_bytes=8192,  # many fetches, so they start inside batches too
        value_deserializer=kafka_fetch.COLUMNAR if columnar else None,
    )
    await consumer.start()
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    try:
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, start)
        ends = await consumer.end_offsets(tps)
        got: list[tuple[int, int, bytes]] = []
        async with asyncio.timeout(60):
            while any([await consumer.position(tp) < ends[tp] for tp in tps]):
                batch = await consumer.getmany(timeout_ms=2000, max_records=3)
                for tp, items in batch.items():
                    for item in items:
                        if columnar:
                            assert isinstance(item, PackedRecords)
                            assert len(item) <= kafka_fetch.CHUNK_RECORDS
                            offsets = item.offsets.tolist()
                            got.extend((tp.partition, o, item[i]) for i, o in enumerate(offsets))
                        else:
                            assert isinstance(item, ConsumerRecord)
                            got.append((tp.partition, item.offset, item.value or b""))
        positions = {tp.partition: await consumer.position(tp) for tp in tps}
        return sorted(got), positions
    finally:
        await consumer.stop()


@pytest.mark.parametrize("isolation", ["read_committed", "read_uncommitted"])
async def test_columnar_fetches_read_what_aiokafka_reads(
    kafka_broker, create_topic, topic_name, isolation
):
    assert kafka_fetch.install()
    await create_topic(kafka_broker.bootstrap, topic_name, PARTITIONS)
    await _fill(kafka_broker.bootstrap, topic_name)

    for start in (0, 137, 451):  # 137 and 451 fall inside batches (plain ones, gzipped ones)
        expected, expected_positions = await _read_all(
            kafka_broker.bootstrap, topic_name, columnar=False, isolation=isolation, start=start
        )
        got, positions = await _read_all(
            kafka_broker.bootstrap, topic_name, columnar=True, isolation=isolation, start=start
        )
        assert got == expected
        assert positions == expected_positions
        if start == 0:
            values = {value for _, _, value in expected}

            assert b"" in values and b"gz 7" in values and b"committed 3" in values
            assert (b"aborted 3" in values) == (isolation == "read_uncommitted")
