"""The Kafka source and sinks in-process: security protocols against the real broker's TLS
listeners, and the record-level helpers (offset runs, dead-letter records, partition keys)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from detector.app import build_app
from detector.config import Settings
from detector.events import DeadLetter, DeadLetterReason, PackedRecords
from detector.metrics import Metrics
from detector.policy import load_policy
from detector.simulator import SimulatorConfig
from detector.sinks import (
    DLQ_MAX_VALUE_BYTES,
    dead_letter_record,
    partition_key,
    produce_simulation,
)
from detector.sources import KafkaSource, PartitionKey, contiguous_units, kafka_client_options

from .service_helpers import EVENT_PARTITIONS, committed_offsets, end_offsets, read_topic


def _packed(offsets: list[int], value: Any = None) -> PackedRecords:
    return PackedRecords.from_values(
        [value if value is not None else f"v{o}".encode() for o in offsets], offsets
    )


def test_units_split_at_offset_gaps_so_first_offset_plus_index_is_exact():
    key = PartitionKey("events", 2)
    offsets = [5, 6, 7, 9, 10, 14]  # gaps after transaction markers or compaction
    units = contiguous_units(key, _packed(offsets))
    assert [(u.first_offset, u.next_offset, len(u.records)) for u in units] == [
        (5, 8, 3),
        (9, 11, 2),
        (14, 15, 1),
    ]
    for unit in units:
        assert unit.first_offset is not None
        for index, raw in enumerate(unit.records):
            assert raw == f"v{unit.first_offset + index}".encode()
    (whole,) = contiguous_units(key, _packed(list(range(20, 25)), b"x"))
    assert (whole.first_offset, whole.next_offset, len(whole.records)) == (20, 25, 5)
    assert contiguous_units(key, _packed([])) == []


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


async def _committed_or_none(bootstrap: str, group: str, topic: str) -> dict[int, int] | None:
    """The group's committed offsets; None while its coordinator is not available yet (on a fresh
    broker the first group request creates __consumer_offsets and is answered with a retriable
    error)."""
    try:
        return await committed_offsets(bootstrap, group, topic)
    except KafkaError as exc:
        if not exc.retriable:
            raise
        return None


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
        while await _committed_or_none(kafka_broker.bootstrap, settings.group, events) != target:
            assert not run.done(), run.exception()
            await asyncio.sleep(0.2)
    stop.set()
    stats = await run

    assert stats.records == sent
    produced = await read_topic(kafka_broker.bootstrap, signals, 1)
    enforced = [s for s in map(json.loads, (r.value for r in produced)) if not s["shadow"]]
    assert enforced, "the simulated abusers give signals"
    assert len(enforced) == sum(stats.signals_by_action.values())


class _GroupMember:
    """A KafkaSource with its own metrics, driven as the app drives it: every unit it hands out is
    committed right away. Checks, at each batch, that the lag it exports for every partition equals
    the records produced there minus those handed out (it starts from offset 0)."""

    def __init__(self, settings: Settings, produced: dict[tuple[str, int], int]) -> None:
        self.metrics = Metrics()
        self.source = KafkaSource(settings, metrics=self.metrics)
        self.produced = produced
        self.handed_out: collections.Counter[tuple[str, int]] = collections.Counter()
        self.check_exact = True
        self.batches = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._consume())

    async def _consume(self) -> None:
        await self.source.start()
        async for units in self.source.polls():
            if not units:
                continue
            for unit in units:
                key = unit.partition
                self.handed_out[(key.topic, key.partition)] += len(unit.records)
            if self.check_exact:
                for pair, lag in self.lag().items():
                    assert lag == self.produced[pair] - self.handed_out[pair], pair
            self.batches += 1
            await self.source.commit({u.partition: u.next_offset for u in units if u.next_offset})

    def lag(self) -> dict[tuple[str, int], float]:
        """The exported bulkwatch_consumer_lag series, by (topic, partition)."""
        return {
            (sample.labels["topic"], int(sample.labels["partition"])): sample.value
            for family in self.metrics.registry.collect()
            if family.name == "bulkwatch_consumer_lag"
            for sample in family.samples
        }

    def assert_running(self) -> None:
        assert self._task is not None
        if self._task.done():
            raise AssertionError("the member stopped") from self._task.exception()

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self.source.stop()


async def test_lag_is_exported_per_topic_and_partition_for_owned_partitions_only(
    kafka_broker, create_topic, topic_name
):
    """Two input topics with the same partition numbers: one series each, exact while consuming,
    0 once caught up; after a second member joins, each member exports exactly the partitions it
    owns (the revoked ones' series are gone), and none after leaving the group."""
    bootstrap = kafka_broker.bootstrap
    topics = (f"{topic_name}-a", f"{topic_name}-b")
    for topic in topics:
        await create_topic(bootstrap, topic, 2)
    produced = {(topics[0], 0): 60, (topics[0], 1): 25, (topics[1], 0): 40, (topics[1], 1): 0}
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for (topic, partition), count in produced.items():
            for i in range(count):
                await producer.send(topic, f"{topic}-{partition}-{i}".encode(), partition=partition)
        await producer.flush()
    finally:
        await producer.stop()
    every = set(produced)
    settings = Settings(
        source="kafka",
        bootstrap=bootstrap,
        topics=topics,
        group=f"{topic_name}-group",
        batch_size=7,
        batch_max_wait_ms=50,
    )

    first = _GroupMember(settings, produced)
    first.start()
    try:
        async with asyncio.timeout(60):
            while first.lag() != dict.fromkeys(every, 0):
                first.assert_running()
                await asyncio.sleep(0.1)
        assert first.handed_out == {pair: n for pair, n in produced.items() if n}
        assert first.batches >= sum(produced.values()) // settings.batch_size

        second = _GroupMember(settings, produced)
        second.check_exact = False  # it resumes from the first's commits, not from offset 0
        first.check_exact = False
        second.start()
        try:
            async with asyncio.timeout(60):
                while not (first.lag() and second.lag() and first.lag().keys() != every):
                    first.assert_running()
                    second.assert_running()
                    await asyncio.sleep(0.1)
                # The second member exports what it restored; the first what it kept.
                while set(first.lag()) | set(second.lag()) != every:
                    await asyncio.sleep(0.1)
            assert not set(first.lag()) & set(second.lag())
            assert set(first.lag().values()) == set(second.lag().values()) == {0}
        finally:
            await second.stop()
        assert second.lag() == {}
    finally:
        await first.stop()
    assert first.lag() == {}


class _AssignmentLog:
    """Rebalance hooks that record what a source was assigned and revoked (nothing to restore)."""

    def __init__(self) -> None:
        self.assigned: list[set[int]] = []
        self.revoked: list[set[int]] = []

    async def partitions_revoked(self, keys: list[PartitionKey]) -> None:
        self.revoked.append({k.partition for k in keys})

    async def partitions_assigned(self, keys, committed, read) -> dict[PartitionKey, int]:
        self.assigned.append({k.partition for k in keys})
        return {}


async def _consume(source: KafkaSource) -> None:
    await source.start()
    async for units in source.polls():
        if units:
            await source.commit({u.partition: u.next_offset for u in units if u.next_offset})


async def test_a_static_member_restarted_within_the_session_timeout_gets_its_partitions_back(
    kafka_broker, create_topic, topic_name
):
    """group_instance_id (KIP-345): the first member (the group's leader) stops and a new process
    with the same instance id starts a moment later. It is given the very partitions it had, and
    the other member keeps its own throughout: no revoke anywhere, so no state moves."""
    bootstrap = kafka_broker.bootstrap
    topic = f"{topic_name}-events"
    await create_topic(bootstrap, topic, EVENT_PARTITIONS)

    def member(instance_id: str) -> tuple[KafkaSource, _AssignmentLog, asyncio.Task[None]]:
        settings = Settings(
            source="kafka",
            bootstrap=bootstrap,
            topics=(topic,),
            group=f"{topic_name}-group",
            client_id=f"bulkwatch-{instance_id}",
            group_instance_id=instance_id,
        )
        source, hooks = KafkaSource(settings, metrics=Metrics()), _AssignmentLog()
        source.set_listener(hooks)
        return source, hooks, asyncio.create_task(_consume(source))

    async def stop(source: KafkaSource, task: asyncio.Task[None]) -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await source.stop()

    first, first_log, first_task = member("bulkwatch-a")
    async with asyncio.timeout(30):
        while not first_log.assigned:
            await asyncio.sleep(0.05)
    second, second_log, second_task = member("bulkwatch-b")
    try:
        async with asyncio.timeout(30):
            while not second_log.assigned or len(first_log.assigned) < 2:
                await asyncio.sleep(0.05)
        kept_by_first = first_log.assigned[-1]  # eager protocol: revoke all, assign the new share
        assert kept_by_first and second_log.assigned == [
            set(range(EVENT_PARTITIONS)) - kept_by_first
        ]
        assert second_log.revoked == []

        await stop(first, first_task)  # a static member does not leave the group
        restarted, restarted_log, restarted_task = member("bulkwatch-a")
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            async with asyncio.timeout(30):
                while not restarted_log.assigned:
                    await asyncio.sleep(0.05)
            waited_s = loop.time() - started
            await asyncio.sleep(4)  # a rebalance would reach the second member within a heartbeat
            assert restarted_log.assigned == [kept_by_first]
            assert second_log.revoked == [] and len(second_log.assigned) == 1
            assert restarted_log.revoked == []
            print(f"the restarted static member had its partitions back in {waited_s:.2f} s")
        finally:
            await stop(restarted, restarted_task)
    finally:
        await stop(second, second_task)
