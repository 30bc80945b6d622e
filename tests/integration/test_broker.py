"""Round trips through the real broker of deploy/local-kafka.sh (or BULKWATCH_TEST_BOOTSTRAP).

These prove the broker is a working Kafka for what bulkwatch needs: keyed partitioning, consumer
groups with committed offsets, idempotent and transactional producers with read_committed
isolation, and the SSL and SASL_SSL (SCRAM-SHA-512) listeners.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaConnectionError
from aiokafka.helpers import create_ssl_context

ROUND_TRIP_TIMEOUT_S = 30.0


async def _read_to_end(topic: str, partitions: int, **consumer_options: Any) -> list[bytes]:
    """Values of every record a group-less consumer sees from the start to the end offsets."""
    consumer = AIOKafkaConsumer(enable_auto_commit=False, **consumer_options)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end_offsets = await consumer.end_offsets(tps)
        values: list[bytes] = []
        async with asyncio.timeout(ROUND_TRIP_TIMEOUT_S):
            while any([await consumer.position(tp) < end_offsets[tp] for tp in tps]):
                batches = await consumer.getmany(*tps, timeout_ms=200)
                values.extend(r.value for records in batches.values() for r in records)
        return values
    finally:
        await consumer.stop()


async def _produce(topic: str, values: list[bytes], **producer_options: Any) -> None:
    producer = AIOKafkaProducer(acks="all", **producer_options)
    await producer.start()
    try:
        for value in values:
            await producer.send(topic, value)
        await producer.flush()
    finally:
        await producer.stop()


async def test_keyed_records_round_trip_through_a_consumer_group(
    kafka_broker, create_topic, topic_name
):
    await create_topic(kafka_broker.bootstrap, topic_name, 4)
    keys = [f"account-{i}".encode() for i in range(16)]
    sent = [(key, f"{key.decode()}:{seq}".encode()) for seq in range(20) for key in keys]

    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_broker.bootstrap, acks="all", enable_idempotence=True
    )
    await producer.start()
    try:
        futures = [await producer.send(topic_name, value, key=key) for key, value in sent]
        partition_by_key = {}
        for (key, _), metadata in zip(sent, await asyncio.gather(*futures), strict=True):
            assert partition_by_key.setdefault(key, metadata.partition) == metadata.partition
    finally:
        await producer.stop()
    assert len(set(partition_by_key.values())) > 1, "16 keys should spread over 4 partitions"

    consumer = AIOKafkaConsumer(
        topic_name,
        bootstrap_servers=kafka_broker.bootstrap,
        group_id=f"{topic_name}-group",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        received = []
        async with asyncio.timeout(ROUND_TRIP_TIMEOUT_S):
            while len(received) < len(sent):
                batches = await consumer.getmany(timeout_ms=500)
                received.extend(r for records in batches.values() for r in records)
        await consumer.commit()
        tps = sorted(consumer.assignment())
        end_offsets = await consumer.end_offsets(tps)
        committed = {tp: await consumer.committed(tp) for tp in tps}
    finally:
        await consumer.stop()

    assert len(tps) == 4
    assert committed == end_offsets
    assert sorted((r.key, r.value) for r in received) == sorted(sent)
    values_by_key = defaultdict(list)
    for record in received:
        assert record.partition == partition_by_key[record.key]
        values_by_key[record.key].append(record.value)
    sent_by_key = defaultdict(list)
    for key, value in sent:
        sent_by_key[key].append(value)
    assert values_by_key == sent_by_key, "per-key order must be kept"


async def test_read_committed_sees_committed_transactions_and_not_the_aborted_one(
    kafka_broker, create_topic, topic_name
):
    await create_topic(kafka_broker.bootstrap, topic_name, 2)
    first = [f"committed-first-{i}".encode() for i in range(10)]
    aborted = [f"aborted-{i}".encode() for i in range(10)]
    second = [f"committed-second-{i}".encode() for i in range(10)]

    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_broker.bootstrap, transactional_id=f"{topic_name}-txn"
    )
    await producer.start()
    try:
        async with producer.transaction():
            for i, value in enumerate(first):
                await producer.send(topic_name, value, partition=i % 2)
        await producer.begin_transaction()
        for i, value in enumerate(aborted):
            await producer.send(topic_name, value, partition=i % 2)
        await producer.flush()  # the aborted records really reach the log
        await producer.abort_transaction()
        async with producer.transaction():
            for i, value in enumerate(second):
                await producer.send(topic_name, value, partition=i % 2)
    finally:
        await producer.stop()

    read_committed = await _read_to_end(
        topic_name, 2, bootstrap_servers=kafka_broker.bootstrap, isolation_level="read_committed"
    )
    read_uncommitted = await _read_to_end(
        topic_name, 2, bootstrap_servers=kafka_broker.bootstrap, isolation_level="read_uncommitted"
    )
    assert sorted(read_committed) == sorted(first + second)
    assert sorted(read_uncommitted) == sorted(first + aborted + second)


async def test_ssl_listener_round_trip(kafka_broker, create_topic, topic_name):
    assert kafka_broker.ssl_bootstrap and kafka_broker.cafile, (
        "external broker: set BULKWATCH_TEST_SSL_BOOTSTRAP and BULKWATCH_TEST_CAFILE"
    )
    await create_topic(kafka_broker.bootstrap, topic_name, 1)
    tls = {
        "bootstrap_servers": kafka_broker.ssl_bootstrap,
        "security_protocol": "SSL",
        "ssl_context": create_ssl_context(cafile=kafka_broker.cafile),
    }
    values = [f"over-tls-{i}".encode() for i in range(10)]
    await _produce(topic_name, values, **tls)
    assert await _read_to_end(topic_name, 1, **tls) == values


async def test_ssl_listener_refuses_a_client_that_does_not_trust_its_ca(kafka_broker, caplog):
    assert kafka_broker.ssl_bootstrap, "external broker: set BULKWATCH_TEST_SSL_BOOTSTRAP"
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_broker.ssl_bootstrap,
        security_protocol="SSL",
        ssl_context=create_ssl_context(),  # system CAs only
    )
    with caplog.at_level(logging.ERROR, logger="aiokafka"), pytest.raises(KafkaConnectionError):
        await producer.start()
    await producer.stop()
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text


async def test_sasl_ssl_scram_listener_round_trip(kafka_broker, create_topic, topic_name):
    assert kafka_broker.sasl_bootstrap and kafka_broker.scram_user, (
        "external broker: set BULKWATCH_TEST_SASL_BOOTSTRAP, BULKWATCH_TEST_SCRAM_USER/PASSWORD"
    )
    await create_topic(kafka_broker.bootstrap, topic_name, 1)
    sasl = {
        "bootstrap_servers": kafka_broker.sasl_bootstrap,
        "security_protocol": "SASL_SSL",
        "ssl_context": create_ssl_context(cafile=kafka_broker.cafile),
        "sasl_mechanism": kafka_broker.scram_mechanism,
        "sasl_plain_username": kafka_broker.scram_user,
        "sasl_plain_password": kafka_broker.scram_password,
    }
    values = [f"over-sasl-{i}".encode() for i in range(10)]
    await _produce(topic_name, values, **sasl)
    assert await _read_to_end(topic_name, 1, **sasl) == values


async def test_sasl_ssl_listener_refuses_a_wrong_password(kafka_broker, caplog):
    assert kafka_broker.sasl_bootstrap, "external broker: set BULKWATCH_TEST_SASL_BOOTSTRAP"
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_broker.sasl_bootstrap,
        security_protocol="SASL_SSL",
        ssl_context=create_ssl_context(cafile=kafka_broker.cafile),
        sasl_mechanism=kafka_broker.scram_mechanism,
        sasl_plain_username=kafka_broker.scram_user,
        sasl_plain_password=f"not-{kafka_broker.scram_password}",
    )
    with caplog.at_level(logging.ERROR, logger="aiokafka"), pytest.raises(KafkaConnectionError):
        await producer.start()
    await producer.stop()
    assert "SaslAuthenticationFailed" in caplog.text
