"""Helpers to run `bulkwatch run --source kafka` as a subprocess against a real broker, feed it
simulator traffic, and check what it wrote to Kafka, committed and reported over HTTP.

Shared by test_service.py (the service's normal life) and test_faults.py (injected faults). The
`services` fixture that makes :class:`Service` objects is in tests/conftest.py.

Exact expectations come from the pipeline itself: the same records, partition by partition in
offset order, through `Pipeline` with fresh state (`reference_signals`). Account state lives with
its partition, so that reference is exact for the account rules. Content clusters span partitions
and depend on how fetches interleave them, so tests that compare signal ids exactly run a policy
with the two content rules off (`account_policy`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import psutil
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client.parser import text_string_to_metric_families

from detector.content import ContentClusters
from detector.pipeline import Pipeline
from detector.policy import BanSignal, Policy, default_policy_path, load_policy
from detector.simulator import SimulatorConfig, event_counts
from detector.sinks import produce_simulation
from detector.state import PartitionState

REPO = Path(__file__).resolve().parents[2]
EVENT_PARTITIONS = 4
ACCOUNT_CAPACITY = 50_000
CLUSTER_CAPACITY = 20_000
LATENESS_S = 30  # the Settings defaults the service runs with
ACCOUNT_TTL_S = 2 * 86_400
START_TIMEOUT_S = 120.0  # a cold Numba cache compiles every kernel on the first start
CATCH_UP_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0

# Enough campaign senders that the share of them caught is a stable figure.
CAMPAIGN_HEAVY = SimulatorConfig(accounts=2000, minutes=20, seed=3, distributed_campaign_share=0.05)

# Records that break the event contract, one per dead-letter reason the decoder gives.
BAD_RECORDS: tuple[tuple[bytes, str], ...] = (
    (b'{"type":"message","ts":1767225600000,"account":"+100"', "invalid_json"),
    (b"\xff\xfe not json", "invalid_json"),
    (b"", "invalid_json"),
    (b'{"type":"message","account":"+101","peer":"+102"}', "missing_field"),
    (b'{"type":"teleport","ts":1767225600000,"account":"+103","peer":"+104"}', "unknown_type"),
    (b'{"type":"message","ts":12,"account":"+105","peer":"+106"}', "bad_timestamp"),
    (b'{"type":"message","ts":"soon","account":"+107","peer":"+108"}', "wrong_type"),
)


# ------------------------------------------------------------------------------------- topics


@dataclass(frozen=True)
class Topics:
    events: str
    signals: str
    dlq: str


async def make_topics(create_topic: Any, bootstrap: str, base: str) -> Topics:
    topics = Topics(f"{base}-events", f"{base}-signals", f"{base}-dlq")
    await create_topic(bootstrap, topics.events, EVENT_PARTITIONS)
    await create_topic(bootstrap, topics.signals, 2)
    await create_topic(bootstrap, topics.dlq, 1)
    return topics


async def read_topic(
    bootstrap: str, topic: str, partitions: int, *, read_committed: bool = False
) -> list[Any]:
    """Every record of ``topic`` from the beginning to the current end, partition order kept."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        isolation_level="read_committed" if read_committed else "read_uncommitted",
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        records: list[Any] = []
        async with asyncio.timeout(60):
            while any([await consumer.position(tp) < end[tp] for tp in tps]):
                for batch in (await consumer.getmany(timeout_ms=500)).values():
                    records.extend(batch)
        return records
    finally:
        await consumer.stop()


async def end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        return {tp.partition: offset for tp, offset in (await consumer.end_offsets(tps)).items()}
    finally:
        await consumer.stop()


async def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic}


async def wait_caught_up(
    bootstrap: str, group: str, topic: str, *, timeout_s: float = CATCH_UP_TIMEOUT_S, services=()
) -> dict[int, int]:
    """Until the group has committed the end of every partition; returns those offsets."""
    target = await end_offsets(bootstrap, topic, EVENT_PARTITIONS)
    deadline = time.monotonic() + timeout_s
    while True:
        committed = await committed_offsets(bootstrap, group, topic)
        if all(committed.get(p, -1) >= end for p, end in target.items()):
            return committed
        for service in services:
            assert service.alive(), f"{service.name} exited:\n{service.log_tail()}"
        if time.monotonic() > deadline:
            logs = "\n".join(s.log_tail() for s in services)
            pytest.fail(f"group {group} committed {committed}, end is {target}\n{logs}")
        await asyncio.sleep(0.3)


async def wait_committed_at_least(
    bootstrap: str, group: str, topic: str, records: int, *, services=()
) -> dict[int, int]:
    """Until the group has committed at least ``records`` records in total."""
    deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
    while True:
        committed = await committed_offsets(bootstrap, group, topic)
        if sum(committed.values()) >= records:
            return committed
        for service in services:
            assert service.alive(), f"{service.name} exited:\n{service.log_tail()}"
        assert time.monotonic() < deadline, f"only {committed} committed"
        await asyncio.sleep(0.1)


@dataclass
class MidStream:
    """A service consuming simulator traffic that is still being produced."""

    topics: Topics
    service: Service
    policy: Path  # the account policy the service runs (signals exact per partition)
    total: int  # records the traffic task produces in all
    traffic: asyncio.Task[int]  # returns the records it produced


async def start_mid_stream(
    create_topic: Any,
    services: Any,
    bootstrap: str,
    topic_name: str,
    tmp_path: Path,
    *,
    name: str,
    seed: int,
    produce_s: float = 8.0,
    committed_share: float = 1 / 3,
    extra_args: tuple[str, ...] = (),
) -> MidStream:
    """Fresh topics and a service (account policy, batches of 500) that has committed
    ``committed_share`` of 3,000 accounts' traffic, produced over about ``produce_s`` seconds."""
    topics = await make_topics(create_topic, bootstrap, topic_name)
    config = SimulatorConfig(accounts=3000, minutes=20, seed=seed)
    total = sum(event_counts(config).values())
    policy = account_policy(tmp_path)
    service = services(
        name,
        bootstrap,
        topics,
        f"{topic_name}-group",
        extra_args=("--policy", str(policy), "--batch-size", "500", *extra_args),
    )
    service.start()
    await service.wait_ready()
    traffic = asyncio.create_task(
        produce_simulation(bootstrap, topics.events, config, rate_per_s=total / produce_s)
    )
    await wait_committed_at_least(
        bootstrap, service.group, topics.events, int(total * committed_share), services=[service]
    )
    return MidStream(topics, service, policy, total, traffic)


async def expected_signal_ids(bootstrap: str, topics: Topics, policy: Path) -> set[str]:
    """``signal_id``s of :func:`reference_signals` over everything in the events topic."""
    events = await read_topic(bootstrap, topics.events, EVENT_PARTITIONS)
    return {s.signal_id for s in reference_signals(events, load_policy(policy))}


async def assert_every_signal_and_duplicates_only_past(
    bootstrap: str,
    topics: Topics,
    events: list[Any],
    policy: Path,
    committed_before: dict[int, int],
) -> None:
    """Every signal of :func:`reference_signals` is in the signals topic (nothing lost), and one
    written twice comes from a record past the offsets committed before the fault (at-least-once
    re-reads only the uncommitted tail)."""
    reference = reference_signals(events, load_policy(policy))
    got = collections.Counter(
        s["signal_id"] for s in parse_signals(await read_topic(bootstrap, topics.signals, 2))
    )
    assert set(got) == {s.signal_id for s in reference}  # nothing lost
    triggers = trigger_offsets(events)
    for signal_id in (i for i, n in got.items() if n > 1):
        (trigger,) = {(s.account, s.ts) for s in reference if s.signal_id == signal_id}
        assert any(o >= committed_before.get(p, 0) for p, o in triggers[trigger])


async def produce_bad_records(bootstrap: str, topic: str) -> list[tuple[int, int, bytes, str]]:
    """The contract-breaking records, keyed so they spread over partitions: (partition, offset,
    value, reason) each."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        sent = []
        for i, (value, reason) in enumerate(BAD_RECORDS):
            metadata = await producer.send_and_wait(topic, value, key=f"bad-{i}".encode())
            sent.append((metadata.partition, metadata.offset, value, reason))
        return sent
    finally:
        await producer.stop()


# ---------------------------------------------------------------------------------- reference


def account_policy(tmp_path: Path) -> Path:
    """The default policy with the two content rules off: signals then depend on per-partition
    state only, so they are exactly reproducible from the records of each partition."""
    text = default_policy_path().read_text(encoding="utf-8")
    for code in ("BULK_DUPLICATE", "COORDINATED_CAMPAIGN"):
        enforced = f'[rules.{code}]\nmode = "enforce"'
        assert enforced in text, f"default policy layout changed: no {enforced!r}"
        text = text.replace(enforced, f'[rules.{code}]\nmode = "off"')
    path = tmp_path / "account-policy.toml"
    path.write_text(text, encoding="utf-8")
    return path


def reference_signals(records: Iterable[Any], policy: Policy) -> list[BanSignal]:
    """Signals of the records through the pipeline, each partition alone, in offset order."""
    by_partition: dict[int, list[Any]] = collections.defaultdict(list)
    for record in records:
        by_partition[record.partition].append(record)
    signals: list[BanSignal] = []
    for partition in sorted(by_partition):
        values = [r.value or b"" for r in sorted(by_partition[partition], key=lambda r: r.offset)]
        state = PartitionState.new(
            capacity=ACCOUNT_CAPACITY, lateness_s=LATENESS_S, ttl_s=ACCOUNT_TTL_S
        )
        pipeline = Pipeline(policy, None)
        for start in range(0, len(values), 1000):
            signals.extend(pipeline.process(values[start : start + 1000], state).signals)
    return signals


def stream_signals(records: Iterable[Any], policy: Policy) -> list[BanSignal]:
    """Signals of all records as one stream in event-time order, with content clusters."""
    values = [
        r.value or b"" for r in sorted(records, key=lambda r: (r.timestamp, r.partition, r.offset))
    ]
    state = PartitionState.new(
        capacity=ACCOUNT_CAPACITY, lateness_s=LATENESS_S, ttl_s=ACCOUNT_TTL_S
    )
    pipeline = Pipeline(policy, ContentClusters(capacity=CLUSTER_CAPACITY))
    signals: list[BanSignal] = []
    for start in range(0, len(values), 1000):
        signals.extend(pipeline.process(values[start : start + 1000], state).signals)
    return signals


class _Subject(msgspec.Struct):
    type: str = ""
    ts: int = 0
    account: str = ""
    peer: str | None = None


def trigger_offsets(records: Iterable[Any]) -> dict[tuple[str, int], list[tuple[int, int]]]:
    """(signal subject, event ts) -> (partition, offset) of the events that can trigger it."""
    decode = msgspec.json.Decoder(_Subject).decode
    index: dict[tuple[str, int], list[tuple[int, int]]] = collections.defaultdict(list)
    for record in records:
        try:
            event = decode(record.value or b"")
        except msgspec.MsgspecError:
            continue
        subject = event.peer if event.type in ("report", "block") else event.account
        if subject:
            index[(subject, event.ts)].append((record.partition, record.offset))
    return index


def parse_signals(records: Iterable[Any]) -> list[dict[str, Any]]:
    return [json.loads(record.value) for record in records]


def detected_accounts(signals: Iterable[dict[str, Any]]) -> set[str]:
    return {s["account"] for s in signals if not s["shadow"]}


# ---------------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Service:
    """One `bulkwatch run --source kafka` process."""

    name: str
    workdir: Path
    bootstrap: str
    topics: Topics
    group: str
    snapshot_dir: Path
    extra_args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    metrics_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None
        self.starts += 1
        args = [
            sys.executable, "-m", "detector.cli", "run",
            "--source", "kafka",
            "--bootstrap", self.bootstrap,
            "--topic", self.topics.events,
            "--group", self.group,
            "--signals-topic", self.topics.signals,
            "--dlq-topic", self.topics.dlq,
            "--metrics-port", str(self.metrics_port),
            "--snapshot-dir", str(self.snapshot_dir),
            "--account-capacity", str(ACCOUNT_CAPACITY),
            "--cluster-capacity", str(CLUSTER_CAPACITY),
            "--quiet",
            *self.extra_args,
        ]  # fmt: skip
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("BULKWATCH_")},
            "PYTHONPATH": str(REPO),
            "BULKWATCH_SNAPSHOT_INTERVAL_S": "1",
            **self.env,
        }
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        log.write(f"---- start {self.starts}\n".encode())
        log.flush()
        self.process = subprocess.Popen(
            args, cwd=self.workdir, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_text().splitlines()[-lines:]
        return f"---- {self.name} log (tail) ----\n" + "\n".join(text)

    def http(self, path: str) -> tuple[int, bytes]:
        url = f"http://127.0.0.1:{self.metrics_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    async def get(self, path: str) -> tuple[int, bytes]:
        return await asyncio.to_thread(self.http, path)

    async def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        status, body = await self.get("/metrics")
        assert status == 200
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(body.decode())
            for sample in family.samples
        }

    async def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> float:
        """Until /readyz answers 200; returns the seconds it took."""
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            assert self.alive(), f"{self.name} exited:\n{self.log_tail()}"
            with contextlib.suppress(OSError):
                if (await self.get("/readyz"))[0] == 200:
                    return time.monotonic() - started
            await asyncio.sleep(0.2)
        pytest.fail(f"{self.name} not ready after {timeout_s} s\n{self.log_tail()}")

    def send(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    async def wait_exit(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                pytest.fail(f"{self.name} still running {timeout_s} s later\n{self.log_tail()}")
            await asyncio.sleep(0.05)
        return self.process.returncode

    def kill(self) -> None:
        if self.alive():
            assert self.process is not None
            self.process.kill()
            self.process.wait()


def resume_offsets(log_text: str, topic: str, start: int) -> dict[int, int]:
    """Where the service's ``start``-th run resumed each partition, from its log."""
    run = log_text.split("---- start ")[start]
    offsets: dict[int, int] = {}
    for line in run.splitlines():
        if "restored" in line and "partition(s)" in line:
            for item in line.split(": ", 2)[-1].split(", "):
                name, _, offset = item.partition("@")
                if name.startswith(f"{topic}-") and offset != "None":
                    offsets[int(name.rsplit("-", 1)[1])] = int(offset)
    return offsets


def log_partitions(log_text: str, word: str, topic: str) -> list[set[int]]:
    """Partitions of ``topic`` in each "<word> N partition(s): ..." line of a service log."""
    found = []
    for line in log_text.splitlines():
        if f" {word} " in line and "partition(s)" in line:
            names = line.split(": ", 2)[-1].split(", ")
            found.append(
                {int(n.partition("@")[0].rsplit("-", 1)[1]) for n in names if n.startswith(topic)}
            )
    return found


def snapshot_restores(log_text: str, topic: str) -> dict[int, int]:
    """Partition -> next offset of the snapshots the log says were restored (last one wins)."""
    restored: dict[int, int] = {}
    for line in log_text.splitlines():
        if f"restored {topic}-" in line and "from snapshot (next offset " in line:
            name = line.split("restored ", 1)[1].split(" ", 1)[0]
            offset = line.rsplit("next offset ", 1)[1].rstrip(")")
            restored[int(name.rsplit("-", 1)[1])] = int(offset)
    return restored


def metric(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def broker_process(bootstrap: str) -> psutil.Process:
    """The local process listening on the bootstrap port (the broker of deploy/local-kafka.sh)."""
    port = int(bootstrap.rsplit(":", 1)[1])
    for connection in psutil.net_connections(kind="tcp"):
        if connection.status == psutil.CONN_LISTEN and connection.laddr.port == port:
            return psutil.Process(connection.pid)
    pytest.fail(f"no local process listens on {bootstrap}: this test stops the broker")
