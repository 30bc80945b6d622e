"""Where results go: ban signals and dead letters, to the console, to files, or to Kafka.

Every sink has ``start``/``stop`` (safe to call twice), ``send`` (may buffer) and ``flush`` (returns
once everything sent so far is durably written: the caller commits input offsets only after it).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import logging
import socket
import sys
import time
from collections import Counter
from pathlib import Path
from typing import IO, Any, Protocol, TextIO

import msgspec
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import (
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    ProducerFenced,
    TopicAuthorizationFailedError,
)

from detector.config import Settings
from detector.events import DeadLetter
from detector.policy import BanSignal, encode_signal
from detector.simulator import SimulatorConfig, SimulatorSource
from detector.sources import Backoff, DeliveryFailed, PartitionKey, kafka_client_options

log = logging.getLogger(__name__)


class SignalSink(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def send(self, signals: list[BanSignal]) -> None: ...

    async def flush(self) -> None: ...


class DeadLetterSink(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def send(
        self, dead: list[DeadLetter], origin: PartitionKey, first_offset: int | None
    ) -> None: ...

    async def flush(self) -> None: ...


def format_signal(signal: BanSignal) -> str:
    """One readable line for a signal (no evidence text: consoles end up in logs)."""
    shadow = " [shadow]" if signal.shadow else ""
    return (
        f"{signal.action.upper():8}{shadow} score={signal.score:<5g} "
        f"reasons={','.join(signal.reasons)} signal={signal.signal_id}"
    )


class ConsoleSignalSink:
    """Prints each signal as a readable line (the account is shown only when ``show_accounts``)."""

    def __init__(self, stream: TextIO | None = None, *, show_accounts: bool = False) -> None:
        self._stream = stream or sys.stdout
        self._show_accounts = show_accounts
        self.by_reason: Counter[str] = Counter()

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        self._stream.flush()

    async def send(self, signals: list[BanSignal]) -> None:
        for signal in signals:
            self.by_reason.update(signal.reasons)
            who = f"{signal.account} " if self._show_accounts else ""
            self._stream.write(f"{who}{format_signal(signal)}\n")

    async def flush(self) -> None:
        self._stream.flush()


class JsonlWriter:
    """Appends JSON lines to a file (gzip when it ends in .gz); sync, used by replay and file sinks."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._handle: IO[bytes] | None = None
        self.count = 0

    def open(self) -> None:
        if self._handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            opener = gzip.open if self.path.suffix == ".gz" else open
            self._handle = opener(self.path, "wb")

    def write(self, line: bytes) -> None:
        self.open()
        assert self._handle is not None
        self._handle.write(line)
        self._handle.write(b"\n")
        self.count += 1

    def flush(self) -> None:
        if self._handle is not None:
            self._handle.flush()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


class JsonlSignalSink:
    """Ban signals as JSON lines in a file."""

    def __init__(self, path: str | Path) -> None:
        self._writer = JsonlWriter(path)

    async def start(self) -> None:
        self._writer.open()

    async def stop(self) -> None:
        self._writer.close()

    async def send(self, signals: list[BanSignal]) -> None:
        for signal in signals:
            self._writer.write(encode_signal(signal))

    async def flush(self) -> None:
        self._writer.flush()


def dead_letter_json(dead: DeadLetter, origin: PartitionKey, first_offset: int | None) -> bytes:
    """A dead letter as one JSON object: where it came from, why, and the original bytes (base64)."""
    offset = None if first_offset is None else first_offset + dead.record
    return msgspec.json.encode(
        {
            "reason": dead.reason.value,
            "detail": dead.detail,
            "topic": origin.topic,
            "partition": origin.partition,
            "offset": offset,
            "record": dead.record,
            "raw_base64": base64.b64encode(dead.raw).decode("ascii"),
        }
    )


class JsonlDeadLetterSink:
    """Dead letters as JSON lines in a file (used by replay and the embedded default)."""

    def __init__(self, path: str | Path) -> None:
        self._writer = JsonlWriter(path)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        self._writer.close()

    async def send(
        self, dead: list[DeadLetter], origin: PartitionKey, first_offset: int | None
    ) -> None:
        for letter in dead:
            self._writer.write(dead_letter_json(letter, origin, first_offset))

    async def flush(self) -> None:
        self._writer.flush()


# ------------------------------------------------------------------------------------------------
# Kafka

# Larger originals are cut (header `truncated_from`), so a dead letter fits a broker's 1 MB default.
DLQ_MAX_VALUE_BYTES = 512 * 1024
_DETAIL_MAX_CHARS = 1000


class OutputHealth(Protocol):
    """Where the Kafka sinks report that an output topic cannot be written (readiness)."""

    def set_output_blocked(self, reason: str | None) -> None: ...


# A missing output topic is reported at most this often while the batch waits for it.
_MISSING_TOPIC_REPORT_S = 30.0


class KafkaSinks:
    """One idempotent producer (``acks=all``) behind the signal and dead-letter sinks.

    Signals go to ``signals_topic`` keyed by account, as the JSON of the signal contract. Dead
    letters go to ``dlq_topic`` with the original bytes as value and why and where in headers.
    ``flush`` returns once every record sent so far is acknowledged by all in-sync replicas and
    raises if one failed. With ``exactly_once`` the producer is transactional: a transaction opens
    at the first send of a batch and :meth:`commit_transaction` (called by the source's commit)
    adds the input offsets to it and commits it.

    The producer connects on first use and retries an unavailable broker (idempotence makes
    aiokafka retry a batch until it is written), so a broker outage stalls delivery, never loses it.

    Output topics must exist (brokers normally run with ``auto.create.topics.enable=false``). A
    missing one is waited for, like an outage: the batch and every commit after it wait, an ERROR
    names the topic every 30 s, ``health`` is told (``/readyz`` 503), and delivery goes on once the
    topic is created. The first start of the sinks checks both topics, so a misnamed topic shows up
    at deploy time rather than at the first signal or dead letter. Records a topic refuses for
    good (larger than its ``max.message.bytes``, not authorized) fail the batch with an error naming
    the topic: nothing after it is committed and the service stops (see docs/reliability.md).
    """

    def __init__(self, settings: Settings, *, health: OutputHealth | None = None) -> None:
        self.settings = settings
        self.health = health
        self.transactional_id = transactional_id(settings) if settings.exactly_once else None
        self.signals = KafkaSignalSink(self)
        self.dead_letters = KafkaDeadLetterSink(self)
        self._producer: AIOKafkaProducer | None = None
        self._connecting = asyncio.Lock()
        self._users = 0
        self._pending: list[tuple[str, asyncio.Future[Any]]] = []
        self._known_topics: set[str] = set()  # output topics seen in the broker's metadata
        self._topic_lock = asyncio.Lock()
        self._topic_check: asyncio.Task[None] | None = None
        self._in_transaction = False
        self._deadline: float | None = None  # monotonic; set when the service shuts down
        self._failure: BaseException | None = None

    @property
    def failure(self) -> BaseException | None:
        """The first delivery or transaction error, if any (the source stops consuming on it)."""
        return self._failure

    async def _use(self) -> None:
        self._users += 1
        if self._topic_check is None:
            self._topic_check = asyncio.create_task(self._check_topics(), name="kafka-topic-check")

    async def _release(self) -> None:
        self._users -= 1
        if self._users > 0:
            return
        if self._topic_check is not None and not self._topic_check.done():
            self._topic_check.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._topic_check
        if self._producer is None:
            return
        producer, self._producer = self._producer, None
        try:
            if self._in_transaction:
                # Whatever it holds was never committed with offsets: consumers must not see it.
                await self._bounded(producer.abort_transaction())
        except (KafkaError, TimeoutError) as exc:
            log.warning("could not abort the open transaction (the broker will): %s", exc)
        finally:
            self._in_transaction = False
            try:
                await asyncio.wait_for(producer.stop(), timeout=self._remaining_s(default=10.0))
            except (KafkaError, TimeoutError) as exc:
                log.warning("producer did not close cleanly: %s", exc)

    def begin_shutdown(self, timeout_s: float) -> None:
        """From now on every wait on the broker fails after ``timeout_s`` in total: a broker that
        is down must not hold the exit."""
        if self._deadline is None:
            self._deadline = time.monotonic() + timeout_s

    def _remaining_s(self, default: float | None = None) -> float | None:
        if self._deadline is None:
            return default
        return max(self._deadline - time.monotonic(), 0.0)

    async def _bounded(self, awaitable: Any) -> Any:
        return await asyncio.wait_for(awaitable, timeout=self._remaining_s())

    async def _ready_producer(self) -> AIOKafkaProducer:
        if self._producer is not None:
            return self._producer
        async with self._connecting:
            backoff = Backoff()
            while self._producer is None:
                producer = AIOKafkaProducer(
                    acks="all",
                    enable_idempotence=True,
                    transactional_id=self.transactional_id,
                    linger_ms=5,
                    max_batch_size=256 * 1024,
                    max_request_size=1024 * 1024,
                    **kafka_client_options(self.settings),
                )
                try:
                    await self._bounded(producer.start())
                except KafkaError as exc:
                    with contextlib.suppress(Exception):
                        await producer.stop()
                    delay = backoff.next_delay_s()
                    log.warning(
                        "Kafka unavailable for the producer (%s); retry in %.1f s", exc, delay
                    )
                    await asyncio.sleep(delay)
                    continue
                self._producer = producer
        return self._producer

    async def _check_topics(self) -> None:
        """At start: connect and make sure both output topics exist (waiting, loudly, if not)."""
        try:
            producer = await self._ready_producer()
            for topic in (self.settings.signals_topic, self.settings.dlq_topic):
                await self._wait_for_topic(producer, topic)
        except (KafkaError, TimeoutError) as exc:
            log.error("could not check the output topics: %r", exc)

    async def _wait_for_topic(self, producer: AIOKafkaProducer, topic: str) -> None:
        """Return once the broker's metadata lists ``topic``; raise if writing it is forbidden."""
        if topic in self._known_topics:
            return
        async with self._topic_lock:
            client = producer.client
            client.add_topic(topic)
            backoff = Backoff(max_s=5.0)
            waiting_since: float | None = None
            next_report = 0.0
            while topic not in self._known_topics:
                await self._bounded(client.force_metadata_update())
                if client.cluster.partitions_for_topic(topic):
                    self._known_topics.add(topic)
                    break
                if topic in client.cluster.unauthorized_topics:
                    raise TopicAuthorizationFailedError(f"not authorized to write to {topic!r}")
                now = time.monotonic()
                if waiting_since is None:
                    waiting_since = now
                    if self.health is not None:
                        self.health.set_output_blocked(f"output topic {topic!r} does not exist")
                if now >= next_report:
                    log.error(
                        "output topic %r does not exist (brokers do not create it): signals, dead "
                        "letters and offset commits wait until it is created (%.0f s so far)",
                        topic,
                        now - waiting_since,
                    )
                    next_report = now + _MISSING_TOPIC_REPORT_S
                await asyncio.sleep(backoff.next_delay_s())
            if waiting_since is not None:
                log.warning(
                    "output topic %r exists now, after %.1f s: delivery resumes",
                    topic,
                    time.monotonic() - waiting_since,
                )
                if self.health is not None:
                    self.health.set_output_blocked(None)

    async def send(
        self, topic: str, value: bytes, key: bytes | None, headers: list[tuple[str, bytes]] | None
    ) -> None:
        """Queue one record; :meth:`flush` waits for it."""
        producer = await self._ready_producer()
        try:
            await self._wait_for_topic(producer, topic)
            if self.transactional_id is not None and not self._in_transaction:
                await self._bounded(producer.begin_transaction())
                self._in_transaction = True
            while True:
                try:
                    future = await self._bounded(
                        producer.send(topic, value, key=key, headers=headers)
                    )
                    break
                except KafkaTimeoutError as exc:  # buffer full or no metadata: the broker is away
                    log.warning("waiting for Kafka to accept records for %s: %s", topic, exc)
        except BaseException as exc:
            self._fail(exc)
            raise
        self._pending.append((topic, future))

    async def flush(self) -> None:
        """Returns once every record sent so far is acknowledged; raises if one was not
        (:class:`DeliveryFailed` naming the topic when the broker refused a record)."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        try:
            await self._bounded(asyncio.shield(asyncio.gather(*(f for _, f in pending))))
        except KafkaError as exc:
            topic = next(
                (t for t, f in pending if f.done() and not f.cancelled() and f.exception() is exc),
                "?",
            )
            failed = DeliveryFailed(f"Kafka refused a record for topic {topic!r}: {exc!r}")
            if isinstance(exc, MessageSizeTooLargeError):
                failed = DeliveryFailed(
                    f"a record for topic {topic!r} is larger than the topic accepts "
                    f"(max.message.bytes, or the broker's message.max.bytes): {exc!r}"
                )
            self._fail(failed)
            raise failed from exc
        except BaseException as exc:
            self._fail(exc)
            raise

    async def commit_transaction(self, offsets: dict[TopicPartition, int], group_id: str) -> None:
        """Exactly-once: add ``offsets`` to the open transaction (opening one if the batch sent
        nothing) and commit it, atomically with every signal and dead letter it holds."""
        producer = await self._ready_producer()
        try:
            await self.flush()
            if not self._in_transaction:
                await self._bounded(producer.begin_transaction())
                self._in_transaction = True
            await self._bounded(producer.send_offsets_to_transaction(offsets, group_id))
            await self._bounded(producer.commit_transaction())
            self._in_transaction = False
        except ProducerFenced as exc:
            self._fail(exc)
            raise DeliveryFailed(
                f"another producer uses the transactional id {self.transactional_id!r}: each "
                "instance needs its own client_id (see docs/kafka.md)"
            ) from exc
        except BaseException as exc:
            self._fail(exc)
            raise

    def _fail(self, exc: BaseException) -> None:
        if self._failure is None and not isinstance(exc, asyncio.CancelledError):
            self._failure = exc
            log.error("Kafka delivery failed: %r", exc)


class KafkaSignalSink:
    """Ban signals to ``signals_topic``, keyed by account (all of an account's signals in order)."""

    def __init__(self, sinks: KafkaSinks) -> None:
        self._sinks = sinks
        self.topic = sinks.settings.signals_topic

    async def start(self) -> None:
        await self._sinks._use()

    async def stop(self) -> None:
        await self._sinks._release()

    async def send(self, signals: list[BanSignal]) -> None:
        for signal in signals:
            await self._sinks.send(
                self.topic, encode_signal(signal), signal.account.encode("utf-8"), None
            )

    async def flush(self) -> None:
        await self._sinks.flush()


class KafkaDeadLetterSink:
    """Dead letters to ``dlq_topic``: the original bytes, and why and where in headers."""

    def __init__(self, sinks: KafkaSinks) -> None:
        self._sinks = sinks
        self.topic = sinks.settings.dlq_topic

    async def start(self) -> None:
        await self._sinks._use()

    async def stop(self) -> None:
        await self._sinks._release()

    async def send(
        self, dead: list[DeadLetter], origin: PartitionKey, first_offset: int | None
    ) -> None:
        for letter in dead:
            value, headers = dead_letter_record(letter, origin, first_offset)
            await self._sinks.send(self.topic, value, None, headers)

    async def flush(self) -> None:
        await self._sinks.flush()


def dead_letter_record(
    dead: DeadLetter, origin: PartitionKey, first_offset: int | None
) -> tuple[bytes, list[tuple[str, bytes]]]:
    """Value and headers of a dead letter on the DLQ topic."""
    headers = [
        ("reason", dead.reason.value.encode()),
        ("detail", dead.detail[:_DETAIL_MAX_CHARS].encode("utf-8", "replace")),
        ("source_topic", origin.topic.encode("utf-8")),
        ("source_partition", str(origin.partition).encode()),
    ]
    if first_offset is not None:
        headers.append(("source_offset", str(first_offset + dead.record).encode()))
    value = dead.raw
    if len(value) > DLQ_MAX_VALUE_BYTES:
        headers.append(("truncated_from", str(len(value)).encode()))
        value = value[:DLQ_MAX_VALUE_BYTES]
    return value, headers


def transactional_id(settings: Settings) -> str:
    """Stable per instance across restarts, so a restarted instance fences its previous self:
    group, client_id and host name (a StatefulSet pod name, a compose container's host name)."""
    return f"bulkwatch-{settings.group}-{settings.client_id}-{socket.gethostname()}"


class _Keyed(msgspec.Struct):
    type: str
    account: str
    peer: str | None = None


_decode_keyed = msgspec.json.Decoder(_Keyed).decode


def partition_key(raw: bytes) -> bytes:
    """The Kafka key of an event: the account whose state it updates, which is the sender, except
    for ``report`` and ``block`` where it is the reported or blocked peer. Keying by this subject
    puts all of an account's evidence (its messages and the reports against it) in one partition."""
    event = _decode_keyed(raw)
    subject = event.peer if event.type in ("report", "block") and event.peer else event.account
    return subject.encode("utf-8")


async def produce_simulation(
    bootstrap: str,
    topic: str,
    config: SimulatorConfig,
    *,
    rate_per_s: float | None = None,
    loop: bool = False,
    duration_s: float | None = None,
    producer_options: dict[str, Any] | None = None,
) -> int:
    """Send simulator traffic to ``topic`` keyed by :func:`partition_key`, event times starting
    now; returns the number of events sent. Paced to ``rate_per_s`` or flat out; ``loop`` repeats
    with fresh accounts until ``duration_s`` (or forever)."""
    source = SimulatorSource(
        config, batch_size=2000, rate_per_s=rate_per_s, rebase_to_now=True, loop=loop
    )
    options: dict[str, Any] = {"linger_ms": 20, "max_batch_size": 512 * 1024}
    options |= producer_options or {}
    options |= {"bootstrap_servers": bootstrap, "acks": "all", "enable_idempotence": True}
    producer = AIOKafkaProducer(**options)
    await producer.start()
    deadline = None if duration_s is None else time.monotonic() + duration_s
    sent = 0
    try:
        async for batch in source.batches():
            futures = [await producer.send(topic, raw, key=partition_key(raw)) for raw in batch]
            await asyncio.gather(*futures)
            sent += len(batch)
            if deadline is not None and time.monotonic() >= deadline:
                source.stop()
        await producer.flush()
    finally:
        await producer.stop()
    return sent
