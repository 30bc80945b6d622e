"""The Kafka source and sinks in-process: security protocols against the real broker's TLS
listeners, and the record-level helpers (offset runs, dead-letter records, partition keys)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiokafka.structs import ConsumerRecord

from detector.app import build_app
from detector.config import Settings
from detector.events import DeadLetter, DeadLetterReason
from detector.policy import load_policy
from detector.simulator import SimulatorConfig
from detector.sinks import (
    DLQ_MAX_VALUE_BYTES,
    dead_letter_record,
    partition_key,
    produce_simulation,
)
from detector.sources import PartitionKey, contiguous_units, kafka_client_options

from .test_service import EVENT_PARTITIONS, committed_offsets, end_offsets, read_topic


def _record(partition: int, offset: int, value: bytes | None) -> ConsumerRecord:
    return ConsumerRecord(
        topic="events",
        partition=partition,
        offset=offset,
        timestamp=1_000 + offset,
        timestamp_type=0,
        key=None,
        value=value,
        checksum=None,
        serialized_key_size=0,
        serialized_value_size=0,
        headers=(),
    )


def test_units_split_at_offset_gaps_so_first_offset_plus_index_is_exact():
    key = PartitionKey("events", 2)
    offsets = [5, 6, 7, 9, 10, 14]  # gaps after transaction markers or compaction
    units = contiguous_units(key, [_record(2, o, f"v{o}".encode()) for o in offsets])
    assert [(u.first_offset, u.next_offset, len(u.records)) for u in units] == [
        (5, 8, 3),
        (9, 11, 2),
        (14, 15, 1),
    ]
    for unit in units:
        assert unit.first_offset is not None
        for index, raw in enumerate(unit.records):
            assert raw == f"v{unit.first_offset + index}".encode()
    (whole,) = contiguous_units(key, [_record(2, o, b"x") for o in range(20, 25)])
    assert (whole.first_offset, whole.next_offset, len(whole.records)) == (20, 25, 5)


def test_a_tombstone_becomes_empty_bytes_for_the_decoder():
    (unit,) = contiguous_units(PartitionKey("events", 0), [_record(0, 3, None)])
    assert unit.records == [b""]


def test_dead_letter_record_keeps_the_bytes_and_says_why_and_where():
    dead = DeadLetter(
        4, DeadLetterReason.MISSING_FIELD, "Object missing required field `ts`", b"{}"
    )
    value, headers = dead_letter_record(dead, PartitionKey("events", 3), first_offset=100)
    assert value == b"{}"
    assert dict(headers) == {
        "reason": b"missing_field",
        "detail": b"Object missing required field `ts`",
        "source_topic": b"events",
        "source_partition": b"3",
        "source_offset": b"104",
    }


def test_an_oversized_dead_letter_is_cut_to_fit_and_says_so():
    raw = b"x" * (DLQ_MAX_VALUE_BYTES + 10)
    dead = DeadLetter(0, DeadLetterReason.TOO_LARGE, "record too large", raw)
    value, headers = dead_letter_record(dead, PartitionKey("events", 0), first_offset=None)
    assert value == raw[:DLQ_MAX_VALUE_BYTES]
    assert dict(headers)["truncated_from"] == str(len(raw)).encode()
    assert "source_offset" not in dict(headers)


@pytest.mark.parametrize(
    ("event", "key"),
    [
        ({"type": "message", "ts": 1, "account": "+1", "peer": "+2"}, b"+1"),
        ({"type": "registration", "ts": 1, "account": "+1"}, b"+1"),
        ({"type": "group_add", "ts": 1, "account": "+1", "peer": "g", "members": 3}, b"+1"),
        ({"type": "report", "ts": 1, "account": "+1", "peer": "+2"}, b"+2"),
        ({"type": "block", "ts": 1, "account": "+1", "peer": "+2"}, b"+2"),
    ],
)
def test_events_are_keyed_by_the_account_whose_state_they_update(event, key):
    assert partition_key(json.dumps(event).encode()) == key


def test_security_settings_reach_the_clients(tmp_path):
    settings = Settings(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="svc",
        sasl_password="secret",
        ssl_check_hostname=False,
    )
    options = kafka_client_options(settings)
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == ("svc", "secret")
    assert options["ssl_context"].check_hostname is False
    assert "ssl_context" not in kafka_client_options(Settings())


@pytest.mark.parametrize("protocol", ["SSL", "SASL_SSL"])
async def test_the_service_consumes_and_produces_over_tls(
    kafka_broker, create_topic, topic_name, tmp_path, protocol
):
    """The whole service in-process over the broker's SSL or SASL_SSL (SCRAM-SHA-512) listener."""
    assert kafka_broker.cafile, "the test broker has TLS listeners"
    events, signals, dlq = (f"{topic_name}-{name}" for name in ("events", "signals", "dlq"))
    await create_topic(kafka_broker.bootstrap, events, EVENT_PARTITIONS)
    await create_topic(kafka_broker.bootstrap, signals, 1)
    await create_topic(kafka_broker.bootstrap, dlq, 1)
    security: dict[str, Any] = {"security_protocol": protocol, "ssl_cafile": kafka_broker.cafile}
    bootstrap = kafka_broker.ssl_bootstrap
    if protocol == "SASL_SSL":
        bootstrap = kafka_broker.sasl_bootstrap
        security |= {
            "sasl_mechanism": kafka_broker.scram_mechanism,
            "sasl_username": kafka_broker.scram_user,
            "sasl_password": kafka_broker.scram_password,
        }
    settings = Settings(
        source="kafka",
        bootstrap=bootstrap,
        topics=(events,),
        group=f"{topic_name}-group",
        signals_topic=signals,
        dlq_topic=dlq,
        metrics_port=0,
        snapshot_dir=str(tmp_path / "snapshots"),
        account_capacity=50_000,
        cluster_capacity=20_000,
        **security,
    )
    config = SimulatorConfig(accounts=1000, minutes=10, seed=2)
    sent = await produce_simulation(
        bootstrap, events, config, producer_options=kafka_client_options(settings)
    )

    app = build_app(settings, load_policy(), quiet=True)
    stop = asyncio.Event()
    run = asyncio.create_task(app.run(stop))
    target = await end_offsets(kafka_broker.bootstrap, events, EVENT_PARTITIONS)
    async with asyncio.timeout(60):
        while await committed_offsets(kafka_broker.bootstrap, settings.group, events) != target:
            assert not run.done(), run.exception()
            await asyncio.sleep(0.2)
    stop.set()
    stats = await run

    assert stats.records == sent
    produced = await read_topic(kafka_broker.bootstrap, signals, 1)
    enforced = [s for s in map(json.loads, (r.value for r in produced)) if not s["shadow"]]
    assert enforced, "the simulated abusers give signals"
    assert len(enforced) == sum(stats.signals_by_action.values())
