"""Where raw records come from: the embedded simulator, recorded JSONL files, and Kafka.

A source yields :class:`Polled` units: the raw records of one partition, and the offset to commit once
everything they produced is safely written. Sources own their I/O; the pipeline only sees bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import math
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.helpers import create_ssl_context
from aiokafka.structs import ConsumerRecord

from detector import kafka_fetch
from detector.config import Settings
from detector.events import PackedRecords
from detector.simulator import SimulatorConfig, SimulatorSource

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PartitionKey:
    topic: str
    partition: int

    def __str__(self) -> str:
        return f"{self.topic}-{self.partition}"


@dataclass(slots=True)
class Polled:
    """Raw records of one partition, in order, with the offset that follows the last of them."""

    partition: PartitionKey
    records: Sequence[bytes]
    next_offset: int | None = None
    first_offset: int | None = None


class Source(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def polls(self) -> AsyncIterator[list[Polled]]: ...

    async def commit(self, offsets: dict[PartitionKey, int]) -> None: ...


SIMULATOR_PARTITION = PartitionKey("simulator", 0)


class SimulatedSource:
    """The embedded default: simulator traffic, paced or as fast as possible, one partition."""

    def __init__(
        self, config: SimulatorConfig, *, batch_size: int, rate_per_s: float | None
    ) -> None:
        self._simulator = SimulatorSource(
            config, batch_size=batch_size, rate_per_s=rate_per_s, rebase_to_now=True, loop=True
        )
        self._started = False

    async def start(self) -> None:
        self._started = True

    async def stop(self) -> None:
        if self._started:
            self._simulator.stop()
            self._started = False

    async def polls(self) -> AsyncIterator[list[Polled]]:
        async for records in self._simulator.batches():
            yield [Polled(SIMULATOR_PARTITION, records)]

    async def commit(self, offsets: dict[PartitionKey, int]) -> None:
        return None


def read_jsonl(path: str | Path, *, batch_size: int = 10_000) -> Iterator[list[bytes]]:
    """Raw lines of a JSONL file (``.gz`` is decompressed), in batches; blank lines are skipped."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    batch: list[bytes] = []
    with opener(path, "rb") as handle:
        for line in handle:
            line = line.rstrip(b"\r\n")
            if not line.strip():
                continue
            batch.append(line)
            if len(batch) >= batch_size:
                yield batch
                batch = []
    if batch:
        yield batch


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep up to ``seconds``; True when ``stop`` was set meanwhile."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        return False
    return True


# ------------------------------------------------------------------------------------------------
# Kafka


class RebalanceHooks(Protocol):
    """What a partitioned source calls around assignment changes (implemented by the app)."""

    async def partitions_revoked(self, keys: list[PartitionKey]) -> None: ...

    async def partitions_assigned(
        self,
        keys: list[PartitionKey],
        committed: Mapping[PartitionKey, int | None],
        read: RangeReader,
    ) -> dict[PartitionKey, int]: ...


class RangeReader(Protocol):
    """Raw records of offsets ``[start, end)`` of one partition, in batches, in offset order."""

    def __call__(
        self, key: PartitionKey, start: int, end: int
    ) -> AsyncIterator[Sequence[bytes]]: ...


class TransactionalCommitter(Protocol):
    """The transactional producer that signals go through (exactly-once mode)."""

    async def commit_transaction(self, offsets: dict[Any, int], group_id: str) -> None: ...

    def begin_shutdown(self, timeout_s: float) -> None: ...

    @property
    def failure(self) -> BaseException | None: ...


class HealthFlag(Protocol):
    def set_ready(self, ready: bool) -> None: ...


class LagGauge(Protocol):
    """Consumer lag in records, one series per owned ``(topic, partition)`` (implemented by
    :class:`detector.metrics.Metrics`)."""

    def set_lag(self, lag_by_partition: Mapping[tuple[str, int], int]) -> None: ...

    def forget_partitions(self, partitions: Iterable[tuple[str, int]]) -> None: ...


class DeliveryFailed(RuntimeError):
    """Signals, dead letters or offsets of a batch could not be written; the source stops here."""


# What a running service can end with because of its environment (brokers, topics, permissions,
# disks, ports) rather than a bug: `bulkwatch run` reports these in one line, without a traceback.
OPERATIONAL_ERRORS: tuple[type[Exception], ...] = (DeliveryFailed, KafkaError, OSError)


STALE_FETCH_S = 10.0  # no fetch answer for this long while idle: the broker is unreachable
_BACKOFF_MAX_S = 10.0


def kafka_client_options(settings: Settings) -> dict[str, Any]:
    """Connection and security keyword arguments shared by every aiokafka client of a service."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap,
        "client_id": settings.client_id,
        **settings.kafka_security(),
    }
    if settings.security_protocol in ("SSL", "SASL_SSL"):
        context = create_ssl_context(
            cafile=settings.ssl_cafile,
            certfile=settings.ssl_certfile,
            keyfile=settings.ssl_keyfile,
        )
        context.check_hostname = settings.ssl_check_hostname
        options["ssl_context"] = context
    return options


class Backoff:
    """Exponential delays for retrying an unavailable broker: 0.25 s doubling up to 10 s."""

    def __init__(self, first_s: float = 0.25, max_s: float = _BACKOFF_MAX_S) -> None:
        self._first_s = first_s
        self._max_s = max_s
        self._next_s = first_s
        self.attempts = 0

    def next_delay_s(self) -> float:
        delay = self._next_s
        self._next_s = min(self._next_s * 2, self._max_s)
        self.attempts += 1
        return delay


def _tp(key: PartitionKey) -> TopicPartition:
    return TopicPartition(key.topic, key.partition)


def _key(tp: TopicPartition) -> PartitionKey:
    return PartitionKey(tp.topic, tp.partition)


def contiguous_units(key: PartitionKey, records: PackedRecords) -> list[Polled]:
    """One :class:`Polled` per run of consecutive offsets, so ``first_offset + index`` is exact.

    Offsets have gaps after transaction markers, aborted records and compaction.
    """
    return [
        Polled(
            key,
            run,
            next_offset=int(run.offsets[-1]) + 1,
            first_offset=int(run.offsets[0]),
        )
        for run in records.runs()
    ]


def packed(items: Sequence[PackedRecords | ConsumerRecord]) -> PackedRecords:
    """``getmany``'s items of one partition as one :class:`PackedRecords`: columnar chunks, or
    aiokafka's records where columnar fetches are not installed (a null value reads as empty)."""
    if all(isinstance(item, PackedRecords) for item in items):
        return PackedRecords.concat(items)  # type: ignore[arg-type]
    return PackedRecords.from_values(
        [b"" if r.value is None else r.value for r in items],  # type: ignore[union-attr]
        [r.offset for r in items],  # type: ignore[union-attr]
    )


class _Listener(ConsumerRebalanceListener):
    def __init__(self, source: KafkaSource) -> None:
        self._source = source

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._source._on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._source._on_assigned(assigned)


class KafkaSource:
    """A consumer-group member: batches from ``getmany``, explicit commits, state-aware rebalances.

    * Offsets are committed only by :meth:`commit`, which the app calls after the batch's signals
      and dead letters are flushed (``enable_auto_commit=False``). In exactly-once mode the commit
      is ``send_offsets_to_transaction`` + ``commit_transaction`` on the shared producer, and at
      most one batch is in flight, so a transaction holds exactly the outputs of the offsets it
      commits.
    * On revoke, every batch handed out for the revoked partitions is first delivered and committed,
      then the app snapshots and drops their state.
    * On assign, the new partitions stay paused until the app has restored them (from the run loop,
      not the rebalance callback, so heartbeats flow) and said where each resumes.
    * A broker outage is waited out: connects retry with backoff, fetches and commits retry inside
      aiokafka, and readiness drops while no fetch answers arrive.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        metrics: LagGauge,
        transactions: TransactionalCommitter | None = None,
        health: HealthFlag | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.health = health
        self.exactly_once = bool(settings.exactly_once)
        if self.exactly_once and transactions is None:
            raise ValueError("exactly-once needs the transactional producer (transactions=...)")
        self._transactions = transactions
        self._hooks: RebalanceHooks | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._listener = _Listener(self)
        self._rebalance_lock = asyncio.Lock()
        self._pending: set[TopicPartition] = set()  # assigned, waiting for the app to restore them
        self._owned: set[TopicPartition] = set()  # restored and being consumed
        self._handed_out: dict[PartitionKey, int] = {}  # next offset of the last unit yielded
        self._settled: dict[PartitionKey, int] = {}  # highest offset whose commit was attempted
        self._settled_changed = asyncio.Condition()
        self._commit_failure: BaseException | None = None
        self._last_alive = float("-inf")  # monotonic time of the last sign of a live broker
        self._last_lag_update = float("-inf")
        self._stopping = False
        self._watchdog: asyncio.Task[None] | None = None
        # Values straight into columns, without a Python object per record (detector.kafka_fetch)
        self._value_reader = kafka_fetch.COLUMNAR if kafka_fetch.install() else None
        self._carried: dict[TopicPartition, PackedRecords] = {}  # fetched past the last batch

    def set_listener(self, hooks: RebalanceHooks) -> None:
        self._hooks = hooks

    # ------------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Nothing blocks here: connecting happens in :meth:`polls`, so a down broker is retried
        there while SIGTERM still works."""
        if self._watchdog is None:
            self._watchdog = asyncio.create_task(self._watch_readiness(), name="kafka-readiness")

    async def stop(self) -> None:
        self._stopping = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
            self._watchdog = None
        if self.health is not None:
            self.health.set_ready(False)
        async with self._settled_changed:
            self._settled_changed.notify_all()
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            if self.settings.group_instance_id is not None:
                log.info(
                    "static member %s: keeping the group's assignment for the session timeout",
                    self.settings.group_instance_id,
                )
            try:
                # A dynamic member leaves the group: the partitions move now, not after the session
                # timeout. A static member does not: a restart in time gets them back.
                await asyncio.wait_for(consumer.stop(), timeout=self.settings.shutdown_timeout_s)
            except (TimeoutError, KafkaError) as exc:
                log.warning("consumer did not close cleanly: %s", exc)
        self.metrics.forget_partitions(self._owned)  # stopped: this process consumes nothing now

    # ------------------------------------------------------------------------------ consuming

    async def polls(self) -> AsyncIterator[list[Polled]]:
        try:
            consumer = await self._connect()
            while True:
                self._raise_if_failed()
                if self._pending:
                    await self._restore_pending(consumer)
                batch = await self._fetch(consumer)
                units = self._units(batch)
                await self._observe(consumer, fetched=bool(batch))
                if self.exactly_once and units:
                    await self._wait_settled(self._handed_out)  # one transaction in flight
                    self._raise_if_failed()
                if units:
                    for unit in units:
                        assert unit.next_offset is not None
                        self._handed_out[unit.partition] = unit.next_offset
                    yield units
                elif self._healthy():
                    yield []  # idle but live: lets the app mark itself ready and snapshot
        finally:
            self._begin_shutdown()

    async def _connect(self) -> AIOKafkaConsumer:
        backoff = Backoff()
        while True:
            consumer = AIOKafkaConsumer(
                group_id=self.settings.group,
                value_deserializer=self._value_reader,
                # Static membership: a restart within the session timeout gets its partitions back
                # with no rebalance, but a stop does not leave the group (see docs/kafka.md).
                group_instance_id=self.settings.group_instance_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                # Right for at-least-once too: records of aborted upstream transactions are skipped.
                isolation_level="read_committed",
                max_poll_records=self.settings.batch_size,
                fetch_max_wait_ms=min(500, self.settings.batch_max_wait_ms),
                session_timeout_ms=10_000,
                heartbeat_interval_ms=3_000,
                # Time the group waits for members to rejoin: covers the revoke work (deliver,
                # commit, snapshot).
                rebalance_timeout_ms=60_000,
                **kafka_client_options(self.settings),
            )
            consumer.subscribe(topics=list(self.settings.topics), listener=self._listener)
            self._consumer = consumer  # the group may assign partitions before start() returns
            try:
                await consumer.start()
            except KafkaError as exc:
                self._consumer = None
                with contextlib.suppress(Exception):
                    await consumer.stop()
                delay = backoff.next_delay_s()
                log.warning(
                    "Kafka unavailable (%s); retry %d in %.1f s", exc, backoff.attempts, delay
                )
                await asyncio.sleep(delay)
                continue
            log.info(
                "consumer started: group %s, topics %s",
                self.settings.group,
                ",".join(self.settings.topics),
            )
            return consumer

    async def _fetch(self, consumer: AIOKafkaConsumer) -> dict[TopicPartition, PackedRecords]:
        """Up to ``batch_size`` records, waiting at most ``batch_max_wait_ms`` to fill the batch."""
        deadline = time.monotonic() + self.settings.batch_max_wait_ms / 1000
        merged = {tp: [records] for tp, records in self._carried.items()}
        total = sum(len(records) for records in self._carried.values())
        self._carried = {}
        # getmany's max_records counts its items: columnar chunks, or records
        per_item = kafka_fetch.CHUNK_RECORDS if self._value_reader is not None else 1
        while total < self.settings.batch_size:
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0:
                break
            wanted = math.ceil((self.settings.batch_size - total) / per_item)
            got = await consumer.getmany(timeout_ms=remaining_ms, max_records=wanted)
            if not got:
                break
            for tp, items in got.items():
                records = packed(items)
                merged.setdefault(tp, []).append(records)
                total += len(records)
        return self._cut({tp: PackedRecords.concat(parts) for tp, parts in merged.items()})

    def _cut(
        self, batch: dict[TopicPartition, PackedRecords]
    ) -> dict[TopicPartition, PackedRecords]:
        """The batch without what exceeds ``batch_size`` (columnar items hold up to a chunk of
        records each): that is carried over to the next batch. Nothing of it is committed, so a
        carry that a revoke or restore drops is read again by the partition's next reader."""
        excess = sum(map(len, batch.values())) - self.settings.batch_size
        for tp in reversed(list(batch)):
            if excess <= 0:
                break
            records = batch[tp]
            keep = max(len(records) - excess, 0)
            self._carried[tp] = records[keep:]
            batch[tp] = records[:keep]
            excess -= len(records) - keep
        return batch

    def _units(self, batch: dict[TopicPartition, PackedRecords]) -> list[Polled]:
        units: list[Polled] = []
        for tp, records in batch.items():
            # Records of partitions not restored yet are dropped; the restore seeks them again.
            if len(records) and tp in self._owned:
                units.extend(contiguous_units(_key(tp), records))
        return units

    async def _observe(self, consumer: AIOKafkaConsumer, *, fetched: bool) -> None:
        """Readiness and lag: per batch, and about once a second while idle."""
        now = time.monotonic()
        owned = [tp for tp in consumer.assignment() if tp in self._owned]
        if fetched:
            self._last_alive = now
        elif owned:
            # The newest fetch answer, even an empty one, is the last sign of a live broker.
            newest_ms = max((consumer.last_poll_timestamp(tp) or 0 for tp in owned), default=0)
            answered = now - (time.time() * 1000 - newest_ms) / 1000
            self._last_alive = max(self._last_alive, answered)
        if not fetched and now - self._last_lag_update < 1.0:
            return
        self._last_lag_update = now
        highwaters: dict[TopicPartition, int] = {}
        for tp in owned:  # no await in this loop: the assignment cannot change under it
            highwater = consumer.highwater(tp)
            if highwater is not None:
                highwaters[tp] = highwater
        lag: dict[TopicPartition, int] = {}  # a TopicPartition is a (topic, partition) tuple
        for tp, highwater in highwaters.items():
            try:
                position = await asyncio.wait_for(consumer.position(tp), timeout=0.05)
            except (TimeoutError, KafkaError):  # reset pending, or revoked meanwhile
                continue
            # Records carried over to the next batch are past the position but not handed out yet.
            lag[tp] = max(highwater - position, 0) + len(self._carried.get(tp, ()))
        # A partition revoked during the awaits above has had its series removed: setting it again
        # would export a stale series for good. No await between this filter and set_lag.
        owned_lag = {tp: n for tp, n in lag.items() if tp in self._owned}
        if owned_lag:
            self.metrics.set_lag(owned_lag)

    def _healthy(self) -> bool:
        return self._unready_reason() is None

    def _unready_reason(self) -> str | None:
        if self._consumer is None:
            return "not connected"
        if self._pending:
            return "restoring partitions"
        if not self._owned:
            return "no partitions assigned"
        if time.monotonic() - self._last_alive >= STALE_FETCH_S:
            return f"no fetch answer for {STALE_FETCH_S:.0f} s"
        return None

    async def _watch_readiness(self) -> None:
        """Readiness follows the consumer even while the run loop waits on a stuck producer."""
        previous: str | None = "starting"
        while True:
            await asyncio.sleep(1.0)
            if self._stopping:
                continue
            reason = self._unready_reason()
            if reason != previous:
                if reason is None:
                    log.info("ready")
                else:
                    log.info("not ready: %s", reason)
                previous = reason
            if self.health is not None:
                self.health.set_ready(reason is None)

    # -------------------------------------------------------------------------------- commits

    async def commit(self, offsets: dict[PartitionKey, int]) -> None:
        """Commit offsets whose outputs are flushed (exactly-once: with the open transaction)."""
        tps = {_tp(key): offset for key, offset in offsets.items()}
        try:
            if self.exactly_once:
                assert self._transactions is not None
                await self._transactions.commit_transaction(tps, self.settings.group)
            else:
                await self._commit_group_offsets(tps)
        except Exception as exc:
            self._commit_failure = exc
            raise
        finally:
            for key, offset in offsets.items():
                self._settled[key] = max(self._settled.get(key, -1), offset)
            async with self._settled_changed:
                self._settled_changed.notify_all()

    async def _commit_group_offsets(self, offsets: dict[TopicPartition, int]) -> None:
        consumer = self._consumer
        if consumer is None:
            raise DeliveryFailed("cannot commit: the consumer is closed")
        assigned = consumer.assignment()
        kept = {tp: offset for tp, offset in offsets.items() if tp in assigned}
        if len(kept) < len(offsets):
            log.warning(
                "not committing %d partition(s) no longer assigned; their next owner re-reads them",
                len(offsets) - len(kept),
            )
        if not kept:
            return
        try:
            await self._bounded(consumer.commit(kept))
        except (CommitFailedError, IllegalStateError) as exc:
            # The group moved on: the outputs are flushed, the new owner re-reads these records and
            # re-sends their signals with the same signal_id (at-least-once).
            log.warning("offset commit rejected after a rebalance: %s", exc)

    async def _bounded(self, awaitable: Any) -> Any:
        """Await, with the shutdown deadline once stopping (a down broker must not block exit)."""
        if not self._stopping:
            return await awaitable
        return await asyncio.wait_for(awaitable, timeout=self.settings.shutdown_timeout_s)

    async def _wait_settled(self, targets: Mapping[PartitionKey, int]) -> None:
        """Until every handed-out offset of ``targets`` has been through :meth:`commit`."""
        wanted = dict(targets)

        def settled() -> bool:
            return self._stopping or all(self._settled.get(k, -1) >= o for k, o in wanted.items())

        async with self._settled_changed:
            await self._settled_changed.wait_for(settled)

    def _raise_if_failed(self) -> None:
        failure = self._commit_failure
        if failure is None and self._transactions is not None:
            failure = self._transactions.failure
        if failure is not None:
            message = f"a batch could not be delivered or committed: {failure!r}"
            raise DeliveryFailed(message) from failure

    def _begin_shutdown(self) -> None:
        self._stopping = True
        if self.health is not None:
            self.health.set_ready(False)
        consumer = self._consumer
        if consumer is not None:
            with contextlib.suppress(Exception):
                consumer.pause(*consumer.assignment())  # stop fetching
        if self._transactions is not None:
            self._transactions.begin_shutdown(self.settings.shutdown_timeout_s)

    # ----------------------------------------------------------------------------- rebalances

    def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        # Paused until restored; the run loop does the restore so heartbeats keep flowing.
        new = set(assigned) - self._owned
        if self._consumer is not None and new:
            self._consumer.pause(*new)
        self._pending |= new
        log.info("assigned %d partition(s): %s", len(assigned), _names(assigned))

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        async with self._rebalance_lock:
            keys = [_key(tp) for tp in revoked if tp in self._owned]
            self._pending -= set(revoked)
            started = time.monotonic()
            try:
                if keys:
                    # Everything handed out for these partitions is delivered and committed first.
                    await self._wait_settled(
                        {k: self._handed_out[k] for k in keys if k in self._handed_out}
                    )
                    if self._hooks is not None:
                        await self._hooks.partitions_revoked(keys)
            finally:
                for key in keys:
                    self._handed_out.pop(key, None)
                    self._settled.pop(key, None)
                for tp in revoked:
                    self._carried.pop(tp, None)
                self._owned -= set(revoked)
                # Lag is exported for owned partitions only: series stay bounded by the assignment.
                self.metrics.forget_partitions((k.topic, k.partition) for k in keys)
            if keys:
                log.info(
                    "revoked %d partition(s) in %.2f s: %s",
                    len(keys),
                    time.monotonic() - started,
                    _names(revoked),
                )

    async def _restore_pending(self, consumer: AIOKafkaConsumer) -> None:
        async with self._rebalance_lock:
            pending = sorted(tp for tp in self._pending if tp in consumer.assignment())
            if not pending:
                self._pending.clear()
                return
            started = time.monotonic()
            keys = [_key(tp) for tp in pending]
            committed = {key: await consumer.committed(_tp(key)) for key in keys}
            resume: dict[PartitionKey, int] = {}
            if self._hooks is not None:
                resume = await self._hooks.partitions_assigned(keys, committed, self.read_range)
            for key in keys:
                self._carried.pop(_tp(key), None)  # the seek below is where it resumes
                offset = resume.get(key, committed[key])
                if offset is not None:
                    consumer.seek(_tp(key), offset)
                # else: no commit and no snapshot, auto_offset_reset (earliest) applies
            self._owned |= set(pending)
            self._pending -= set(pending)
            consumer.resume(*pending)
            log.info(
                "restored %d partition(s) in %.2f s: %s",
                len(pending),
                time.monotonic() - started,
                ", ".join(f"{k}@{resume.get(k, committed[k])}" for k in keys),
            )

    async def read_range(
        self, key: PartitionKey, start: int, end: int
    ) -> AsyncIterator[Sequence[bytes]]:
        """Raw records of offsets ``[start, end)`` of one partition, with a group-less consumer
        (the group's own consumer must not fetch while a rebalance is in progress)."""
        backoff = Backoff()
        while True:
            options = kafka_client_options(self.settings)
            options["client_id"] = f"{self.settings.client_id}-replay"
            reader = AIOKafkaConsumer(
                group_id=None,
                value_deserializer=self._value_reader,
                enable_auto_commit=False,
                isolation_level="read_committed",
                max_poll_records=self.settings.batch_size,
                **options,
            )
            try:
                await reader.start()
                break
            except KafkaError as exc:
                with contextlib.suppress(Exception):
                    await reader.stop()
                delay = backoff.next_delay_s()
                log.warning("Kafka unavailable for replay (%s); retry in %.1f s", exc, delay)
                await asyncio.sleep(delay)
        tp = _tp(key)
        try:
            reader.assign([tp])
            log_start = (await reader.beginning_offsets([tp]))[tp]
            if start < log_start:
                log.warning(
                    "%s: records %d..%d are gone (retention); the rebuilt windows miss them",
                    key,
                    start,
                    log_start - 1,
                )
                start = log_start
            reader.seek(tp, start)
            position = start
            while position < end:
                items = (await reader.getmany(tp, timeout_ms=1000)).get(tp)
                if items:
                    records = packed(items)
                    records = records[: int(np.searchsorted(records.offsets, end))]
                    if len(records):
                        yield records
                position = await reader.position(tp)
        finally:
            await reader.stop()


def _names(tps: Iterable[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}-{tp.partition}" for tp in sorted(tps)) or "none"
