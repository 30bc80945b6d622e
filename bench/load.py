"""``bench load``: bulkwatch through a real Kafka broker, beside a ceiling and a baseline.

One run, one broker, one data set (simulator traffic with ground-truth labels, keyed by the event's
subject so an account's events share a partition):

1. **Produce** the whole workload flat out to a partitioned topic; every record's Kafka timestamp is
   the wall-clock time it was handed to the producer.
2. **Drain** that topic, one system at a time, each in its own consumer group and its own OS
   process: the *ceiling* (a bare aiokafka consumer loop that iterates records and commits), the
   *naive* detector (``bench.naive``), and *bulkwatch* (``bulkwatch run --source kafka``) with one
   and with two instances in one group. Throughput is the steady-state rate of the group's committed
   offsets (between 5 % and 95 % of the records, and, with two instances, only while both work).
3. **Sweep** offered load: a fresh topic per system and level, the system running and ready before
   the paced producer starts offering a fraction of bulkwatch's measured maximum. Achieved
   throughput is what the system consumed while the load was offered. Signal latency is the signal
   record's broker append time (the signals topic uses ``LogAppendTime``) minus the produce time of
   the event that triggered it (the event with the signal's account and event time).
4. **Quality**: the signals of the drain runs against the labels of the first simulated round
   (``detector.replay.quality_table``).

CPU (user + system) and peak RSS (``VmHWM``) are read from ``/proc`` through psutil for every
instance, and CPU of the broker, of this harness and of the whole machine is sampled too, so the
report can say which resource ran out.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import msgspec
import numpy as np
import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, for_code
from aiokafka.partitioner import DefaultPartitioner

from detector.events import EventType, decode_batch
from detector.policy import BanSignal, load_policy
from detector.replay import PolicyOutcome, overall_quality, quality_table
from detector.simulator import Label, SimulatorConfig, SimulatorSource, labels

from . import cpulimit

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_ROOT = REPO_ROOT / "bench" / "results"
LOCAL_KAFKA_SCRIPT = REPO_ROOT / "deploy" / "local-kafka.sh"
SYSTEMS = ("ceiling", "naive", "bulkwatch")
STEADY_FROM, STEADY_TO = 0.05, 0.95  # share of a drain's records between which the rate is measured
MAX_BEHIND_S = 1.0  # a system that keeps up is at most this far behind when the offered load ends


@dataclass(frozen=True)
class LoadOptions:
    """What to run; the defaults are the full benchmark (about 10 to 15 minutes on 2 cores)."""

    name: str | None = None
    out_root: Path = RESULTS_ROOT
    bootstrap: str | None = None  # None: start a private local broker with deploy/local-kafka.sh
    accounts: int = 20_000
    minutes: int = 60
    rounds: int = 8
    seed: int = 1
    partitions: int = 4
    batch_size: int = 5000
    sweep: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    sweep_seconds: float = 20.0
    naive_sweep_seconds: float = 12.0
    naive_max_seconds: float = 300.0
    drain_timeout_s: float = 240.0
    grace_s: float = 5.0
    ready_timeout_s: float = 90.0
    sample_interval_s: float = 0.2
    account_capacity: int | None = None
    policy: Path | None = None
    keep_topics: bool = False
    progress: bool = True
    # CPU limit of each instance in the fixed-budget scale-out runs; None: what leaves 0.8 cores
    # of this machine to the broker and the harness with two instances (at most one core each).
    instance_cpus: float | None = None

    def cpus_per_instance(self) -> float:
        """The CPU limit of each instance in the fixed-budget runs (0: no such runs)."""
        if self.instance_cpus is not None:
            return self.instance_cpus
        spare = ((os.cpu_count() or 1) - 0.8) / 2
        return max(0.0, round(min(1.0, spare), 1))

    @classmethod
    def smoke(cls, **changes: Any) -> LoadOptions:
        """A small, fast run of every phase (the test suite runs it)."""
        preset: dict[str, Any] = {
            "accounts": 1500,
            "minutes": 30,
            "rounds": 2,
            "partitions": 2,
            "batch_size": 1000,
            "sweep": (0.5,),
            "sweep_seconds": 1.5,
            "naive_sweep_seconds": 1.5,
            "naive_max_seconds": 60.0,
            "drain_timeout_s": 60.0,
            "grace_s": 2.0,
            "ready_timeout_s": 60.0,
            "sample_interval_s": 0.1,
            "account_capacity": 4096,
        }
        return cls(**{**preset, **changes})


# --------------------------------------------------------------------------------------------------
# The workload


@dataclass
class Workload:
    """Simulator records in produce order, with what the harness needs to measure them."""

    config: SimulatorConfig
    rounds: int
    values: list[bytes]
    keys: list[bytes]
    partitions: np.ndarray  # int32 partition of each record (the default Kafka partitioner)
    n_partitions: int
    ts_ms: np.ndarray  # int64 event time of each record, non-decreasing
    subjects: list[str]  # the account each event is about (the signal's account)
    round_end: list[int]  # index after the last record of each round
    labels: dict[str, Label]  # ground truth of round 0
    first_seen_ms: dict[str, int]  # first event time of each acting account of round 0

    def __len__(self) -> int:
        return len(self.values)

    def end_offsets(self, count: int) -> dict[int, int]:
        """End offset of every partition of a fresh topic after the first ``count`` records."""
        per_partition = np.bincount(self.partitions[:count], minlength=self.n_partitions)
        return {p: int(n) for p, n in enumerate(per_partition.tolist())}


def build_workload(
    config: SimulatorConfig, rounds: int, n_partitions: int, *, batch_size: int = 20_000
) -> Workload:
    """``rounds`` rounds of simulated traffic (fresh accounts each round), keyed by subject."""
    source = SimulatorSource(config, batch_size=batch_size, loop=True)
    values: list[bytes] = []
    ts_parts: list[np.ndarray] = []
    subjects: list[str] = []
    round_end: list[int] = []
    first_seen: dict[str, int] = {}
    for batch in source:
        round_index = source.rounds_started - 1
        if round_index >= rounds:
            source.stop()
            break
        while len(round_end) < round_index:
            round_end.append(len(values))
        decoded = decode_batch(batch)
        if decoded.dead_letters:  # pragma: no cover - the simulator writes valid events only
            raise RuntimeError(f"simulator produced {len(decoded.dead_letters)} invalid records")
        events = decoded.events
        about_peer = (events.type == EventType.REPORT) | (events.type == EventType.BLOCK)
        subjects.extend(
            peer if flag else account
            for account, peer, flag in zip(
                events.accounts, events.peers, about_peer.tolist(), strict=True
            )
        )
        if round_index == 0:
            for account, ts in zip(events.accounts, events.ts_ms.tolist(), strict=True):
                first_seen.setdefault(account, ts)
        values.extend(batch)
        ts_parts.append(events.ts_ms)
    round_end.append(len(values))
    ts_ms = np.concatenate(ts_parts) if ts_parts else np.empty(0, dtype=np.int64)
    if np.any(np.diff(ts_ms) < 0):  # pragma: no cover - a simulator invariant
        raise RuntimeError("simulator records are not in event-time order")
    partitioner = DefaultPartitioner()
    all_partitions = list(range(n_partitions))
    key_of: dict[str, tuple[bytes, int]] = {}
    keys: list[bytes] = []
    partitions = np.empty(len(values), dtype=np.int32)
    for i, subject in enumerate(subjects):
        known = key_of.get(subject)
        if known is None:
            key = subject.encode()
            known = key_of[subject] = (key, partitioner(key, all_partitions, all_partitions))
        keys.append(known[0])
        partitions[i] = known[1]
    truth = {label.account: label for label in labels(config, round_index=0)}
    return Workload(
        config=config,
        rounds=rounds,
        values=values,
        keys=keys,
        partitions=partitions,
        n_partitions=n_partitions,
        ts_ms=ts_ms,
        subjects=subjects,
        round_end=round_end,
        labels=truth,
        first_seen_ms=first_seen,
    )


# --------------------------------------------------------------------------------------------------
# Kafka helpers


@dataclass
class Broker:
    """A broker to run against; ``pid`` is known when it runs on this machine."""

    bootstrap: str
    pid: int | None
    version: str
    started_here: bool
    _script_env: dict[str, str] | None = None
    _scratch: Path | None = None

    def stop(self) -> None:
        if self.started_here and self._script_env is not None:
            subprocess.run(
                [str(LOCAL_KAFKA_SCRIPT), "stop"],
                env=self._script_env,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            if self._scratch is not None:
                shutil.rmtree(self._scratch, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _kafka_version() -> str:
    pom = (REPO_ROOT / "deploy" / "kafka" / "pom.xml").read_text(encoding="utf-8")
    match = re.search(r"<kafka\.version>(.*?)</kafka\.version>", pom)
    return f"Apache Kafka {match.group(1)} (KRaft, 1 node)" if match else "Apache Kafka"


def start_local_broker() -> Broker:
    """A private broker on free loopback ports, started with ``deploy/local-kafka.sh``."""
    scratch = Path(tempfile.mkdtemp(prefix="bulkwatch-bench-kafka-"))
    port, controller = free_port(), free_port()
    env = {
        **os.environ,
        "BULKWATCH_KAFKA_DIR": str(scratch),
        "BULKWATCH_KAFKA_PORT": str(port),
        "BULKWATCH_KAFKA_CONTROLLER_PORT": str(controller),
    }
    started = subprocess.run(
        [str(LOCAL_KAFKA_SCRIPT), "start"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if started.returncode != 0:
        shutil.rmtree(scratch, ignore_errors=True)
        raise RuntimeError(f"{LOCAL_KAFKA_SCRIPT} start failed:\n{started.stderr}")
    values = dict(line.split("=", 1) for line in started.stdout.splitlines() if "=" in line)
    pid_text = (scratch / "kafka.pid").read_text().strip()
    return Broker(
        bootstrap=values["BULKWATCH_KAFKA_BOOTSTRAP"],
        pid=int(pid_text) if pid_text.isdigit() else None,
        version=_kafka_version(),
        started_here=True,
        _script_env=env,
        _scratch=scratch,
    )


def external_broker(bootstrap: str) -> Broker:
    """A broker given by address; its process is found when it listens on this machine."""
    pid = None
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    if host in ("127.0.0.1", "localhost", "::1", "[::1]") and port.isdigit():
        with contextlib.suppress(psutil.Error, OSError):
            for conn in psutil.net_connections(kind="tcp"):
                if (
                    conn.status == psutil.CONN_LISTEN
                    and conn.laddr
                    and conn.laddr.port == int(port)
                ):
                    pid = conn.pid
                    break
    return Broker(bootstrap=bootstrap, pid=pid, version="external broker", started_here=False)


class Kafka:
    """Admin operations of one run: topics (tracked for clean-up) and group offsets."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30_000)
        self.created: list[str] = []

    async def start(self) -> None:
        await self.admin.start()

    async def close(self, *, delete_topics: bool) -> None:
        if delete_topics and self.created:
            with contextlib.suppress(KafkaError, OSError):
                await self.admin.delete_topics(self.created)
        await self.admin.close()

    async def create_topic(
        self, name: str, partitions: int, *, log_append_time: bool = False
    ) -> None:
        configs = {"message.timestamp.type": "LogAppendTime"} if log_append_time else {}
        response = await self.admin.create_topics(
            [NewTopic(name, partitions, 1, topic_configs=configs)]
        )
        for topic, error_code, *_ in response.topic_errors:
            if error_code:
                raise for_code(error_code)(f"creating topic {topic!r}")
        self.created.append(name)
        async with asyncio.timeout(30):
            while True:
                (described,) = await self.admin.describe_topics([name])
                leaders = [p["leader"] for p in described["partitions"]]
                if (
                    described["error_code"] == 0
                    and len(leaders) == partitions
                    and min(leaders) >= 0
                ):
                    return
                await asyncio.sleep(0.05)

    async def committed(self, group: str, topic: str) -> dict[int, int]:
        """Committed offset per partition of ``topic`` for ``group`` (absent: nothing committed)."""
        try:
            offsets = await self.admin.list_consumer_group_offsets(group)
        except KafkaError:
            return {}
        return {
            tp.partition: meta.offset
            for tp, meta in offsets.items()
            if tp.topic == topic and meta.offset >= 0
        }


async def read_topic(bootstrap: str, topic: str) -> list[tuple[bytes, int, int]]:
    """Every record of ``topic`` as (value, timestamp ms, timestamp type: 0 create, 1 append)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    partitions = sorted(p["partition"] for p in described["partitions"])
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in partitions]
        if not tps:
            return []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: list[tuple[bytes, int, int]] = []
        remaining = {tp for tp in tps if ends[tp] > 0}
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=1000)
            for tp, records in batch.items():
                out.extend((r.value or b"", r.timestamp, r.timestamp_type) for r in records)
                if records and records[-1].offset + 1 >= ends[tp]:
                    remaining.discard(tp)
        return out
    finally:
        await consumer.stop()


# --------------------------------------------------------------------------------------------------
# Producing


@dataclass
class ProduceLog:
    """When each chunk of records was handed to the producer (its records carry that timestamp)."""

    chunk_start: np.ndarray  # index of the first record of each chunk
    stamp_ms: np.ndarray  # wall-clock ms of each chunk (the records' Kafka timestamp)
    count: int
    started: float  # time.time() of the first chunk
    finished: float  # time.time() once every record was acknowledged

    @property
    def events_per_s(self) -> float:
        return self.count / max(self.finished - self.started, 1e-9)

    def stamps_of(self, indices: np.ndarray) -> np.ndarray:
        chunk = np.searchsorted(self.chunk_start, indices, side="right") - 1
        return self.stamp_ms[chunk]


class _PartitionSender:
    """Feeds one partition's records to the producer as record batches, in order.

    aiokafka accepts a new batch for a partition only once the previous one has left for the
    broker, so each partition gets its own task; records offered meanwhile go into the next batch.
    """

    def __init__(self, producer: AIOKafkaProducer, topic: str, partition: int) -> None:
        self.producer = producer
        self.topic = topic
        self.partition = partition
        self.pending: list[tuple[bytes, bytes, int]] = []
        self.deliveries: list[asyncio.Future[Any]] = []
        self._wakeup = asyncio.Event()
        self._closing = False
        self.task = asyncio.create_task(self._run())

    def offer(self, key: bytes, value: bytes, stamp_ms: int) -> None:
        self.pending.append((key, value, stamp_ms))

    def wake(self) -> None:
        self._wakeup.set()

    async def close(self) -> None:
        self._closing = True
        self._wakeup.set()
        await self.task
        await asyncio.gather(*self.deliveries)

    async def _run(self) -> None:
        producer = self.producer
        while True:
            if not self.pending:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            records, self.pending = self.pending, []
            batch = producer.create_batch()
            for key, value, stamp_ms in records:
                if batch.append(key=key, value=value, timestamp=stamp_ms) is None:
                    await self._send(batch)
                    batch = producer.create_batch()
                    batch.append(key=key, value=value, timestamp=stamp_ms)
            await self._send(batch)

    async def _send(self, batch: Any) -> None:
        delivery = await self.producer.send_batch(batch, self.topic, partition=self.partition)
        self.deliveries.append(delivery)
        if len(self.deliveries) >= 64:  # surface broker errors early, keep the list short
            done = [d for d in self.deliveries if d.done()]
            for d in done:
                d.result()
            self.deliveries = [d for d in self.deliveries if not d.done()]


async def produce(
    bootstrap: str,
    topic: str,
    workload: Workload,
    count: int,
    *,
    rate_per_s: float | None = None,
    on_chunk: Callable[[int], None] | None = None,
    max_pending: int = 50_000,
) -> ProduceLog:
    """Send the first ``count`` records to their partitions, flat out or at ``rate_per_s``.

    Records are offered in chunks (every 5 ms when paced); each chunk's records carry the
    wall-clock time it was offered as their Kafka timestamp, so the time a record waits in this
    producer counts in the latency measured from it.
    """
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks=1, linger_ms=2, max_batch_size=1 << 20
    )
    await producer.start()
    senders = [_PartitionSender(producer, topic, p) for p in range(workload.n_partitions)]
    chunk_size = 2000 if rate_per_s is None else max(1, int(rate_per_s * 0.005))
    starts: list[int] = []
    stamps: list[int] = []
    values, keys, partitions = workload.values, workload.keys, workload.partitions.tolist()
    began = time.monotonic()
    started = time.time()
    try:
        for first in range(0, count, chunk_size):
            if rate_per_s is not None:
                delay = began + first / rate_per_s - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            while sum(len(s.pending) for s in senders) > max_pending:
                await asyncio.sleep(0.001)  # flat out: let the partition tasks catch up
            stamp = int(time.time() * 1000)
            starts.append(first)
            stamps.append(stamp)
            for i in range(first, min(first + chunk_size, count)):
                senders[partitions[i]].offer(keys[i], values[i], stamp)
            for sender in senders:
                sender.wake()
            if on_chunk is not None:
                on_chunk(min(first + chunk_size, count))
            await asyncio.sleep(0)
        for sender in senders:
            await sender.close()
        finished = time.time()
    finally:
        for sender in senders:
            sender.task.cancel()
        await producer.stop()
    return ProduceLog(
        chunk_start=np.asarray(starts, dtype=np.int64),
        stamp_ms=np.asarray(stamps, dtype=np.int64),
        count=count,
        started=started,
        finished=finished,
    )


# --------------------------------------------------------------------------------------------------
# The systems under test, each an OS process


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def _peak_rss_bytes(pid: int) -> int | None:
    """``VmHWM`` (the kernel's high-water mark of resident memory) of a live process."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class Instance(abc.ABC):
    """One running system process: start, readiness, records consumed, CPU and memory, stop."""

    system: str

    def __init__(self, name: str, command: list[str], log_dir: Path) -> None:
        self.name = name
        self.command = command
        self.cpu_limit: cpulimit.CpuLimit | None = None  # set before start: a CPU limit
        self.log_path = log_dir / f"{name}.log"
        self.process: asyncio.subprocess.Process | None = None
        self.ps: psutil.Process | None = None
        self.started_at = 0.0
        self.peak_rss: int | None = None
        self.final_cpu_s: float | None = None
        self.throttled_s: float | None = None  # held back by the CPU limit
        self._log: TextIO | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "w", encoding="utf-8")  # noqa: SIM115 - closed in stop()
        command = self.command
        if self.cpu_limit is not None:
            self.cpu_limit.start()
            command = self.cpu_limit.wrap(command)
        self._log.write("$ " + " ".join(command) + "\n")
        self._log.flush()
        self.started_at = time.time()
        self.process = await asyncio.create_subprocess_exec(
            *command,
            stdout=self._stdout_target(),
            stderr=self._log,
            env=_child_env(),
            start_new_session=True,
        )
        self.ps = psutil.Process(self.process.pid)
        self._log.write(f"# pid {self.process.pid}\n")
        self._log.flush()
        self._after_start()

    def _stdout_target(self) -> Any:
        return self._log

    def _after_start(self) -> None:
        return None

    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def cpu_s(self) -> float | None:
        if self.ps is None:
            return None
        try:
            times = self.ps.cpu_times()
        except psutil.Error:
            return self.final_cpu_s
        return times.user + times.system

    @abc.abstractmethod
    async def consumed(self) -> int | None:
        """Records this instance's consumer group has consumed so far."""

    @abc.abstractmethod
    async def ready(self) -> bool:
        """True once the instance consumes."""

    async def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not await self.ready():
            if not self.alive():
                raise RuntimeError(f"{self.name} exited before it was ready; see {self.log_path}")
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.name} not ready after {timeout_s:.0f} s; see {self.log_path}"
                )
            await asyncio.sleep(0.1)

    def capture(self) -> None:
        """Peak RSS and CPU time, read while the process still runs."""
        if self.alive():
            self.peak_rss = _peak_rss_bytes(self.pid)
            self.final_cpu_s = self.cpu_s()
            if self.cpu_limit is not None:
                self.throttled_s = self.cpu_limit.throttled_s()

    async def stop(self, timeout_s: float = 45.0) -> int | None:
        if self.process is None:
            return None
        self.capture()
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), timeout=timeout_s)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                await self.process.wait()
        await self._after_stop()
        if self.cpu_limit is not None:
            self.cpu_limit.stop()
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.process.returncode

    async def _after_stop(self) -> None:
        return None


_METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text exposition as {"name{labels}": value} (comments skipped)."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        match = _METRIC_LINE.match(line)
        if match:
            with contextlib.suppress(ValueError):
                values[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return values


class BulkwatchInstance(Instance):
    """``bulkwatch run --source kafka``: records processed and readiness from its HTTP endpoint."""

    system = "bulkwatch"

    def __init__(
        self,
        name: str,
        log_dir: Path,
        *,
        bootstrap: str,
        topic: str,
        group: str,
        signals_topic: str,
        dlq_topic: str,
        batch_size: int,
        account_capacity: int,
        snapshot_dir: Path,
        policy: Path | None,
    ) -> None:
        self.metrics_port = free_port()
        command = [
            sys.executable, "-m", "detector.cli", "run", "--source", "kafka",
            "--bootstrap", bootstrap, "--topic", topic, "--group", group,
            "--signals-topic", signals_topic, "--dlq-topic", dlq_topic,
            "--metrics-port", str(self.metrics_port), "--batch-size", str(batch_size),
            "--account-capacity", str(account_capacity), "--snapshot-dir", str(snapshot_dir),
            "--log-level", "WARNING",
        ]  # fmt: skip
        if policy is not None:
            command += ["--policy", str(policy)]
        super().__init__(name, command, log_dir)
        self.last_metrics: dict[str, float] = {}
        self._scraped_at = float("-inf")

    def _get(self, path: str) -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.metrics_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, ""
        except OSError:
            return 0, ""

    async def scrape(self) -> dict[str, float]:
        status, text = await asyncio.to_thread(self._get, "/metrics")
        if status == 200:
            self.last_metrics = parse_metrics(text)
        return self.last_metrics

    async def consumed(self) -> int | None:
        # At most twice a second: an exposition costs the instance CPU; rates come from offsets.
        if time.monotonic() - self._scraped_at >= 0.5:
            self._scraped_at = time.monotonic()
            await self.scrape()
        value = self.last_metrics.get("bulkwatch_records_total")
        return None if value is None else int(value)

    async def ready(self) -> bool:
        status, _ = await asyncio.to_thread(self._get, "/readyz")
        return status == 200


class WorkerInstance(Instance):
    """``python -m bench worker``: the ceiling or the naive detector; progress as JSON lines."""

    def __init__(
        self,
        system: str,
        name: str,
        log_dir: Path,
        *,
        bootstrap: str,
        topic: str,
        group: str,
        batch_size: int,
        signals_topic: str | None,
        policy: Path | None,
    ) -> None:
        command = [
            sys.executable, "-m", "bench", "worker", system, "--bootstrap", bootstrap,
            "--topic", topic, "--group", group, "--batch-size", str(batch_size),
        ]  # fmt: skip
        if signals_topic is not None:
            command += ["--signals-topic", signals_topic]
        if policy is not None:
            command += ["--policy", str(policy)]
        super().__init__(name, command, log_dir)
        self.system = system
        self.records = 0
        self.is_ready = False
        self.summary: dict[str, Any] = {}
        self._reader: asyncio.Task[None] | None = None

    def _stdout_target(self) -> Any:
        return asyncio.subprocess.PIPE

    def _after_start(self) -> None:
        self._reader = asyncio.create_task(self._read_progress())

    async def _read_progress(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        async for line in self.process.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            self.records = int(message.get("records", self.records))
            if message.get("event") == "ready":
                self.is_ready = True
            elif message.get("event") == "done":
                self.summary = message

    async def consumed(self) -> int | None:
        return self.records

    async def ready(self) -> bool:
        return self.is_ready

    async def _after_stop(self) -> None:
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(self._reader, timeout=5)


# --------------------------------------------------------------------------------------------------
# Sampling and progress


@dataclass
class Sample:
    t: float  # time.time()
    committed: int  # sum of the group's committed offsets
    consumed: list[int | None]  # per instance, records processed so far
    cpu_s: list[float | None]  # per instance
    broker_cpu_s: float | None
    harness_cpu_s: float
    machine_busy_s: float  # all cores together


def _machine_busy_s() -> float:
    times = psutil.cpu_times()
    idle = times.idle + getattr(times, "iowait", 0.0)
    return sum(times) - idle


class Progress:
    """A live status line on a terminal; a line every few seconds otherwise."""

    def __init__(self, enabled: bool, stream: TextIO = sys.stderr) -> None:
        self.enabled = enabled
        self.stream = stream
        self.tty = stream.isatty()
        self._last_line = 0.0
        self._width = 0

    def status(self, text: str) -> None:
        if not self.enabled:
            return
        if self.tty:
            self.stream.write("\r" + text.ljust(self._width))
            self._width = len(text)
            self.stream.flush()
        elif time.monotonic() - self._last_line >= 5.0:
            self._last_line = time.monotonic()
            self.stream.write(text + "\n")
            self.stream.flush()

    def say(self, text: str) -> None:
        if not self.enabled:
            return
        if self.tty and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self._width = 0
        self.stream.write(text + "\n")
        self.stream.flush()


class Sampler:
    """Samples a group's progress and everyone's CPU at a fixed interval while a phase runs."""

    def __init__(
        self,
        kafka: Kafka,
        group: str,
        topic: str,
        instances: Sequence[Instance],
        broker: Broker,
        interval_s: float,
        progress: Progress,
        label: str,
        target: int,
    ) -> None:
        self.kafka = kafka
        self.group = group
        self.topic = topic
        self.instances = list(instances)
        self.interval_s = interval_s
        self.progress = progress
        self.label = label
        self.target = target
        self.samples: list[Sample] = []
        self.committed_by_partition: dict[int, int] = {}
        self._broker = psutil.Process(broker.pid) if broker.pid else None
        self._me = psutil.Process()
        self._task: asyncio.Task[None] | None = None
        self._began = time.monotonic()
        self.extra: Callable[[], str] | None = None

    def start(self) -> None:
        self._began = time.monotonic()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.take()

    async def _run(self) -> None:
        while True:
            began = time.monotonic()
            await self.take()
            self._show()
            await asyncio.sleep(max(0.0, self.interval_s - (time.monotonic() - began)))

    def _broker_cpu(self) -> float | None:
        if self._broker is None:
            return None
        try:
            times = self._broker.cpu_times()
        except psutil.Error:
            return None
        return times.user + times.system + times.children_user + times.children_system

    async def take(self) -> Sample:
        committed = await self.kafka.committed(self.group, self.topic)
        if committed:
            self.committed_by_partition = committed
        consumed = [await inst.consumed() for inst in self.instances]
        me = self._me.cpu_times()
        sample = Sample(
            t=time.time(),
            committed=sum(self.committed_by_partition.values()),
            consumed=consumed,
            cpu_s=[inst.cpu_s() for inst in self.instances],
            broker_cpu_s=self._broker_cpu(),
            harness_cpu_s=me.user + me.system,
            machine_busy_s=_machine_busy_s(),
        )
        self.samples.append(sample)
        return sample

    def _show(self) -> None:
        if len(self.samples) < 2:
            return
        now, before = self.samples[-1], self.samples[max(0, len(self.samples) - 6)]
        rate = (now.committed - before.committed) / max(now.t - before.t, 1e-9)
        extra = f"  {self.extra()}" if self.extra is not None else ""
        self.progress.status(
            f"  {self.label}: {now.committed:>11,} / {self.target:,} records  "
            f"{rate:>9,.0f}/s  {time.monotonic() - self._began:6.1f} s{extra}"
        )


# --------------------------------------------------------------------------------------------------
# Measurements


def _value_at(
    samples: list[Sample], t: float, get: Callable[[Sample], float | None]
) -> float | None:
    """Linear interpolation of a sampled quantity at time ``t``."""
    points = [(s.t, get(s)) for s in samples if get(s) is not None]
    if not points:
        return None
    times = np.array([p[0] for p in points])
    values = np.array([p[1] for p in points], dtype=np.float64)
    return float(np.interp(t, times, values))


def _first_time(samples: list[Sample], predicate: Callable[[Sample], bool]) -> float | None:
    for sample in samples:
        if predicate(sample):
            return sample.t
    return None


def steady_window(samples: list[Sample], total: int) -> tuple[float, float] | None:
    """Where the throughput is measured: from 5 % to 95 % of ``total`` committed records, and with
    several instances only while all of them work (from the last one's first record to the first
    one's last)."""
    if total <= 0 or len(samples) < 2:
        return None
    lo = _first_time(samples, lambda s: s.committed >= STEADY_FROM * total)
    hi = _first_time(samples, lambda s: s.committed >= STEADY_TO * total)
    if lo is None or hi is None:
        return None
    n_instances = len(samples[0].consumed)
    if n_instances > 1:
        for i in range(n_instances):
            first = _first_time(samples, lambda s, i=i: (s.consumed[i] or 0) > 0)
            final = samples[-1].consumed[i] or 0
            done = _first_time(samples, lambda s, i=i, final=final: (s.consumed[i] or 0) >= final)
            if first is not None:
                lo = max(lo, first)
            if done is not None and final > 0:
                hi = min(hi, done)
    if hi - lo < 0.5:
        return None
    return lo, hi


def whole_window(samples: list[Sample], total: int) -> tuple[float, float] | None:
    """The fallback for drains too short for a steady state: first commit to the last record, or,
    when both fall between the same two samples, the sample before them to the last record (a
    lower bound of the rate)."""
    lo = _first_time(samples, lambda s: s.committed > 0)
    hi = _first_time(samples, lambda s: s.committed >= total)
    if lo is None or hi is None:
        return None
    if hi <= lo:
        before = [s.t for s in samples if s.t < lo]
        if not before:
            return None
        lo = before[-1]
    return lo, hi


def _rate(
    samples: list[Sample], window: tuple[float, float], get: Callable[[Sample], float | None]
) -> float | None:
    lo, hi = window
    a, b = _value_at(samples, lo, get), _value_at(samples, hi, get)
    if a is None or b is None:
        return None
    return (b - a) / (hi - lo)


def _percentiles(values: np.ndarray) -> dict[str, float | None]:
    if values.size == 0:
        return {"p50": None, "p95": None, "p99": None, "max": None, "mean": None}
    p50, p95, p99 = np.percentile(values, [50, 95, 99]).tolist()
    return {
        "p50": p50,
        "p95": p95,
        "p99": p99,
        "max": float(values.max()),
        "mean": float(values.mean()),
    }


@dataclass
class RunContext:
    options: LoadOptions
    broker: Broker
    kafka: Kafka
    workload: Workload
    policy_path: Path | None
    prefix: str
    out_dir: Path
    log_dir: Path
    progress: Progress
    account_capacity: int
    scratch: Path
    instances_started: list[Instance] = field(default_factory=list)


def _make_instances(
    ctx: RunContext,
    system: str,
    count: int,
    label: str,
    topic: str,
    group: str,
    signals_topic: str | None,
    dlq_topic: str | None,
    *,
    cpu_limit: float | None = None,
) -> list[Instance]:
    o = ctx.options
    instances: list[Instance] = []
    for i in range(count):
        name = f"{label}-{i + 1}" if count > 1 else label
        if system == "bulkwatch":
            assert signals_topic is not None and dlq_topic is not None
            instances.append(
                BulkwatchInstance(
                    name,
                    ctx.log_dir,
                    bootstrap=ctx.broker.bootstrap,
                    topic=topic,
                    group=group,
                    signals_topic=signals_topic,
                    dlq_topic=dlq_topic,
                    batch_size=o.batch_size,
                    account_capacity=ctx.account_capacity,
                    snapshot_dir=ctx.scratch / f"snapshots-{label}",
                    policy=ctx.policy_path,
                )
            )
        else:
            instances.append(
                WorkerInstance(
                    system,
                    name,
                    ctx.log_dir,
                    bootstrap=ctx.broker.bootstrap,
                    topic=topic,
                    group=group,
                    batch_size=o.batch_size,
                    signals_topic=signals_topic,
                    policy=ctx.policy_path,
                )
            )
        if cpu_limit:
            instances[-1].cpu_limit = cpulimit.CpuLimit(cpu_limit, f"{ctx.prefix}-{name}")
    ctx.instances_started.extend(instances)
    return instances


async def _output_topics(ctx: RunContext, system: str, label: str) -> tuple[str | None, str | None]:
    if system == "ceiling":
        return None, None
    signals_topic = f"{ctx.prefix}-{label}-signals"
    await ctx.kafka.create_topic(signals_topic, 1, log_append_time=True)
    dlq_topic = None
    if system == "bulkwatch":
        dlq_topic = f"{ctx.prefix}-{label}-dlq"
        await ctx.kafka.create_topic(dlq_topic, 1)
    return signals_topic, dlq_topic


def _cpu_summary(
    samples: list[Sample], window: tuple[float, float] | None, n_instances: int
) -> dict[str, Any]:
    if window is None:
        window = (samples[0].t, samples[-1].t) if len(samples) > 1 else None
    if window is None or window[1] - window[0] <= 0:
        return {}
    instances = [_rate(samples, window, lambda s, i=i: s.cpu_s[i]) for i in range(n_instances)]
    broker = _rate(samples, window, lambda s: s.broker_cpu_s)
    harness = _rate(samples, window, lambda s: s.harness_cpu_s)
    machine = _rate(samples, window, lambda s: s.machine_busy_s)
    known = sum(x for x in [*instances, broker, harness] if x is not None)
    return {
        "instance_cores": instances,
        "broker_cores": broker,
        "harness_cores": harness,
        "machine_busy_cores": machine,
        "other_cores": None if machine is None else max(0.0, machine - known),
        "machine_cores": psutil.cpu_count(),
    }


async def drain_phase(
    ctx: RunContext,
    system: str,
    n_instances: int,
    label: str,
    topic: str,
    target_offsets: dict[int, int],
    *,
    timeout_s: float,
    cpu_limit: float | None = None,
) -> dict[str, Any]:
    """Consume the pre-produced ``topic`` up to ``target_offsets`` and measure the steady state
    (``cpu_limit``: each instance may use that many CPUs)."""
    o = ctx.options
    group = f"{ctx.prefix}-{label}"
    signals_topic, dlq_topic = await _output_topics(ctx, system, label)
    instances = _make_instances(
        ctx, system, n_instances, label, topic, group, signals_topic, dlq_topic, cpu_limit=cpu_limit
    )
    total = sum(target_offsets.values())
    sampler = Sampler(
        ctx.kafka,
        group,
        topic,
        instances,
        ctx.broker,
        o.sample_interval_s,
        ctx.progress,
        label,
        total,
    )
    ctx.progress.say(f"- {label}: {system} x{n_instances} draining {total:,} records")
    started = time.time()
    for instance in instances:
        await instance.start()
    ctx.progress.say("  pid " + ", ".join(str(instance.pid) for instance in instances))
    sampler.start()
    complete = False
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            await asyncio.sleep(o.sample_interval_s)
            done = sampler.committed_by_partition
            if all(done.get(p, 0) >= end for p, end in target_offsets.items()):
                complete = True
                break
            dead = [inst.name for inst in instances if not inst.alive()]
            if dead:
                raise RuntimeError(f"{', '.join(dead)} exited during the run; see {ctx.log_dir}")
        await sampler.stop()
        stage_seconds = await _stage_seconds(instances)
    finally:
        for instance in instances:
            instance.capture()
        await asyncio.gather(*(instance.stop() for instance in instances))
    samples = sampler.samples
    committed = samples[-1].committed if samples else 0
    measured_total = total if complete else committed
    window = steady_window(samples, measured_total)
    window_kind = "steady"
    if window is None:
        window, window_kind = whole_window(samples, measured_total), "first commit to last"
    rate = _rate(samples, window, lambda s: s.committed) if window is not None else None
    first = _first_time(samples, lambda s: s.committed > 0)
    finished = _first_time(samples, lambda s: s.committed >= total) if complete else None
    first_consumed = [
        _first_time(samples, lambda s, i=i: (s.consumed[i] or 0) > 0) for i in range(n_instances)
    ]
    cpu = _cpu_summary(samples, window, n_instances)
    busy = [c for c in cpu.get("instance_cores", []) if c is not None]
    result: dict[str, Any] = {
        "system": system,
        "instances": n_instances,
        "cpu_limit": cpu_limit,
        "throttled_s": [instance.throttled_s for instance in instances] if cpu_limit else None,
        "label": label,
        "group": group,
        "signals_topic": signals_topic,
        "records_target": total,
        "records_committed": committed,
        "complete": complete,
        "events_per_s": rate,
        "window_s": None if window is None else window[1] - window[0],
        "window_kind": window_kind if window is not None else None,
        "startup_s": [None if t is None else t - started for t in first_consumed],
        "drain_s": None if (first is None or finished is None) else finished - first,
        "cpu": cpu,
        "events_per_cpu_s": rate / sum(busy) if rate and busy and sum(busy) > 0 else None,
        "cpu_s_total": [inst.final_cpu_s for inst in instances],
        "peak_rss_mb": [
            None if inst.peak_rss is None else inst.peak_rss / 2**20 for inst in instances
        ],
        "stage_seconds": stage_seconds,
        "samples": [[round(s.t - started, 3), s.committed] for s in samples],
    }
    rate_text = f"{rate:,.0f} events/s" if rate is not None else "no steady state measured"
    ctx.progress.say(f"  {label}: {rate_text}" + ("" if complete else " (incomplete)"))
    return result


async def _stage_seconds(instances: Sequence[Instance]) -> dict[str, float] | None:
    """Seconds spent per pipeline stage over the run (bulkwatch's own histograms), all instances."""
    totals: dict[str, float] = {}
    for instance in instances:
        if not isinstance(instance, BulkwatchInstance):
            return None
        metrics = await instance.scrape()
        for key, value in metrics.items():
            match = re.fullmatch(r'bulkwatch_kernel_seconds_sum\{kernel="([^"]+)"\}', key)
            if match:
                totals[match.group(1)] = totals.get(match.group(1), 0.0) + value
            elif key == "bulkwatch_batch_seconds_sum":
                totals["batch"] = totals.get("batch", 0.0) + value
            elif key == "bulkwatch_records_total":
                totals["records"] = totals.get("records", 0.0) + value
    return totals


async def sweep_phase(
    ctx: RunContext,
    system: str,
    rate_per_s: float,
    seconds: float,
    label: str,
    load_share: float | None,
) -> dict[str, Any]:
    """Offer ``rate_per_s`` for ``seconds`` to a fresh topic that ``system`` already consumes."""
    o = ctx.options
    count = max(1, min(int(rate_per_s * seconds), len(ctx.workload)))
    topic = f"{ctx.prefix}-{label}-events"
    await ctx.kafka.create_topic(topic, o.partitions)
    group = f"{ctx.prefix}-{label}"
    signals_topic, dlq_topic = await _output_topics(ctx, system, label)
    (instance,) = _make_instances(ctx, system, 1, label, topic, group, signals_topic, dlq_topic)
    sampler = Sampler(
        ctx.kafka,
        group,
        topic,
        [instance],
        ctx.broker,
        o.sample_interval_s,
        ctx.progress,
        label,
        count,
    )
    ctx.progress.say(f"- {label}: {system} offered {rate_per_s:,.0f} events/s for {seconds:g} s")
    produced = 0

    def on_chunk(n: int) -> None:
        nonlocal produced
        produced = n

    sampler.extra = lambda: f"produced {produced:,}"
    try:
        await instance.start()
        await instance.wait_ready(o.ready_timeout_s)
        sampler.start()
        log = await produce(
            ctx.broker.bootstrap,
            topic,
            ctx.workload,
            count,
            rate_per_s=rate_per_s,
            on_chunk=on_chunk,
        )
        targets = ctx.workload.end_offsets(count)
        drained_at = None
        deadline = time.monotonic() + o.grace_s
        while time.monotonic() < deadline:
            done = sampler.committed_by_partition
            if all(done.get(p, 0) >= end for p, end in targets.items()):
                drained_at = time.time()
                break
            await asyncio.sleep(o.sample_interval_s / 2)
        await sampler.stop()
    finally:
        await instance.stop()
    samples = sampler.samples
    end = drained_at if drained_at is not None else log.finished
    consumed_by_end = _value_at(samples, end, lambda s: s.committed) or 0.0
    if drained_at is not None:
        consumed_by_end = float(count)
    window = (log.started, end)
    # How far behind the system was when the offer ended, in seconds of offered load. Keeping up
    # means less than a second behind then (a batch or two in flight) and drained soon after.
    committed_at_offer_end = _value_at(samples, log.finished, lambda s: s.committed) or 0.0
    behind_s = max(0.0, count - committed_at_offer_end) / rate_per_s
    return {
        "system": system,
        "label": label,
        "load_share": load_share,
        "offered_per_s": rate_per_s,
        "produced_per_s": log.count / max(log.finished - log.started, 1e-9),
        "records": count,
        "behind_at_offer_end_s": behind_s,
        "kept_up": drained_at is not None and behind_s <= MAX_BEHIND_S,
        "achieved_per_s": consumed_by_end / max(end - log.started, 1e-9),
        "samples": [[round(s.t - log.started, 3), s.committed] for s in samples],
        "cpu": _cpu_summary(samples, window, 1),
        "peak_rss_mb": None if instance.peak_rss is None else instance.peak_rss / 2**20,
        "signals_topic": signals_topic,
        "_log": log,
    }


# --------------------------------------------------------------------------------------------------
# Signals: latency and quality


def decode_signals(records: list[tuple[bytes, int, int]]) -> list[tuple[BanSignal, int, int]]:
    decoder = msgspec.json.Decoder(BanSignal)
    return [(decoder.decode(value), ts, ts_type) for value, ts, ts_type in records]


def signal_latencies_s(
    signals: list[tuple[BanSignal, int, int]], workload: Workload, log: ProduceLog
) -> tuple[np.ndarray, int]:
    """Append time of each signal minus the produce time of its triggering event (s), and how many
    signals matched no produced event."""
    ts = workload.ts_ms[: log.count]
    latencies: list[float] = []
    unmatched = 0
    for signal_, append_ms, _ in signals:
        if signal_.shadow:
            continue
        lo = int(np.searchsorted(ts, signal_.ts, side="left"))
        hi = int(np.searchsorted(ts, signal_.ts, side="right"))
        index = next((i for i in range(lo, hi) if workload.subjects[i] == signal_.account), None)
        if index is None:
            unmatched += 1
            continue
        produced_ms = int(log.stamps_of(np.array([index]))[0])
        latencies.append((append_ms - produced_ms) / 1000.0)
    return np.asarray(latencies, dtype=np.float64), unmatched


def quality_of(
    signals: list[tuple[BanSignal, int, int]], workload: Workload, policy_path: Path | None
) -> dict[str, Any]:
    outcome = PolicyOutcome(load_policy(policy_path))
    outcome.record(s for s, _, _ in signals)
    table = quality_table(outcome, workload.labels, workload.first_seen_ms)
    return {"table": table, "overall": overall_quality(table), "signals": outcome.signals}


# --------------------------------------------------------------------------------------------------
# The run


def machine_info() -> dict[str, Any]:
    model = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = {}
    for module in ("numpy", "numba", "aiokafka", "msgspec", "datasketch"):
        with contextlib.suppress(Exception):
            versions[module] = __import__(module).__version__
    java = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=20)
        java = (done.stderr or done.stdout).splitlines()[0]
    return {
        "hostname": socket.gethostname(),
        "cpu_model": model,
        "logical_cores": psutil.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "java": java,
        "packages": versions,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def default_name() -> str:
    today = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    return f"{today}-{socket.gethostname()}-{psutil.cpu_count()}cpu"


async def run_load(options: LoadOptions) -> dict[str, Any]:
    """Run the whole benchmark; write results.json, report.md and the plots; return the results."""
    from bench import report

    name = options.name or default_name()
    out_dir = Path(options.out_root) / name
    out_dir.mkdir(parents=True, exist_ok=True)
    log_dir = out_dir / "logs"
    shutil.rmtree(log_dir, ignore_errors=True)
    progress = Progress(options.progress)
    began = time.time()
    info = machine_info()
    progress.say(f"bench load -> {out_dir}")
    progress.say(
        f"machine: {info['cpu_model']}, {info['logical_cores']} cores, {info['memory_gib']} GiB; "
        f"load average {info['load_average_at_start']}"
    )

    config = SimulatorConfig(accounts=options.accounts, minutes=options.minutes, seed=options.seed)
    t0 = time.perf_counter()
    workload = build_workload(config, options.rounds, options.partitions)
    progress.say(
        f"workload: {len(workload):,} events in {options.rounds} rounds of {options.accounts:,} "
        f"accounts x {options.minutes} min, {options.partitions} partitions "
        f"(built in {time.perf_counter() - t0:.1f} s)"
    )
    if options.bootstrap:
        broker = external_broker(options.bootstrap)
    else:
        progress.say("starting a local broker (deploy/local-kafka.sh)")
        broker = start_local_broker()
    progress.say(f"broker: {broker.bootstrap} ({broker.version}, pid {broker.pid})")
    kafka = Kafka(broker.bootstrap)
    scratch = Path(tempfile.mkdtemp(prefix="bulkwatch-bench-"))
    capacity = options.account_capacity or _account_capacity(workload)
    ctx = RunContext(
        options=options,
        broker=broker,
        kafka=kafka,
        workload=workload,
        policy_path=options.policy,
        prefix=f"bench-{uuid.uuid4().hex[:8]}",
        out_dir=out_dir,
        log_dir=log_dir,
        progress=progress,
        account_capacity=capacity,
        scratch=scratch,
    )
    try:
        await kafka.start()
        results = await _run_phases(ctx)
    finally:
        for instance in ctx.instances_started:
            with contextlib.suppress(Exception):
                await instance.stop(timeout_s=10)
        with contextlib.suppress(Exception):
            await kafka.close(delete_topics=not options.keep_topics)
        broker.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    results["machine"] = info
    results["date_utc"] = dt.datetime.fromtimestamp(began, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    results["duration_s"] = time.time() - began
    results["name"] = name
    results["options"] = {
        k: (list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v)
        for k, v in dataclasses.asdict(options).items()
    }
    results["broker"] = {
        "bootstrap": broker.bootstrap,
        "version": broker.version,
        "started_by_run": broker.started_here,
    }
    results["workload"] = {
        "events": len(workload),
        "rounds": workload.rounds,
        "accounts_per_round": options.accounts,
        "minutes_per_round": options.minutes,
        "partitions": options.partitions,
        "round0_events": workload.round_end[0],
        "round0_accounts": len(workload.labels),
        "mean_record_bytes": float(np.mean([len(v) for v in workload.values[:100_000]])),
        "account_capacity_per_partition": capacity,
    }
    report.write_report(results, out_dir)
    progress.say(f"done in {results['duration_s']:.0f} s: {out_dir / 'report.md'}")
    return results


def _account_capacity(workload: Workload) -> int:
    """Account table slots per partition: the next power of two above twice the subjects of the
    run's busiest partition (the kernel's probe window then never has to evict)."""
    subjects_of = [set() for _ in range(workload.n_partitions)]
    for subject, partition in zip(workload.subjects, workload.partitions.tolist(), strict=True):
        subjects_of[partition].add(subject)
    busiest = max(len(s) for s in subjects_of)
    return int(max(4096, 2 ** np.ceil(np.log2(busiest * 2))))


async def _run_phases(ctx: RunContext) -> dict[str, Any]:
    o, workload, progress = ctx.options, ctx.workload, ctx.progress
    events_topic = f"{ctx.prefix}-events"
    await ctx.kafka.create_topic(events_topic, o.partitions)
    progress.say(f"- produce: {len(workload):,} records flat out to {events_topic}")
    log = await produce(
        ctx.broker.bootstrap,
        events_topic,
        workload,
        len(workload),
        on_chunk=lambda n: progress.status(f"  produced {n:,} / {len(workload):,}"),
    )
    progress.say(f"  produce: {log.events_per_s:,.0f} events/s")
    everything = workload.end_offsets(len(workload))
    round0 = workload.end_offsets(workload.round_end[0])
    drains: dict[str, dict[str, Any]] = {}
    drains["ceiling_x1"] = await drain_phase(
        ctx, "ceiling", 1, "ceiling-x1", events_topic, everything, timeout_s=o.drain_timeout_s
    )
    drains["ceiling_x2"] = await drain_phase(
        ctx, "ceiling", 2, "ceiling-x2", events_topic, everything, timeout_s=o.drain_timeout_s
    )
    drains["bulkwatch_x1"] = await drain_phase(
        ctx, "bulkwatch", 1, "bulkwatch-x1", events_topic, everything, timeout_s=o.drain_timeout_s
    )
    drains["bulkwatch_x2"] = await drain_phase(
        ctx, "bulkwatch", 2, "bulkwatch-x2", events_topic, everything, timeout_s=o.drain_timeout_s
    )
    # Scale-out with a fixed CPU budget per instance, as a Kubernetes CPU limit gives each pod: the
    # limits leave cores to the broker and the harness, which unlimited instances would take.
    cpus = o.cpus_per_instance()
    no_limits = cpulimit.unavailable_reason() if cpus > 0 else "too few cores for two limits"
    if no_limits is None:
        for n in (1, 2):
            drains[f"bulkwatch_x{n}_cpu_limit"] = await drain_phase(
                ctx,
                "bulkwatch",
                n,
                f"bulkwatch-x{n}-cpu-limit",
                events_topic,
                everything,
                timeout_s=o.drain_timeout_s,
                cpu_limit=cpus,
            )
    else:
        progress.say(f"- no runs with a CPU limit per instance: {no_limits}")
    drains["naive_x1"] = await drain_phase(
        ctx, "naive", 1, "naive-x1", events_topic, round0, timeout_s=o.naive_max_seconds
    )

    bulkwatch_max = drains["bulkwatch_x1"]["events_per_s"]
    naive_max = drains["naive_x1"]["events_per_s"]
    if not bulkwatch_max:
        raise RuntimeError("bulkwatch's maximum rate could not be measured; see the logs")
    sweeps: list[dict[str, Any]] = []
    for system in ("bulkwatch", "ceiling", "naive"):
        seconds = o.naive_sweep_seconds if system == "naive" else o.sweep_seconds
        for share in o.sweep:
            label = f"sweep-{system}-{round(share * 100)}pct"
            sweeps.append(
                await sweep_phase(ctx, system, share * bulkwatch_max, seconds, label, share)
            )
    if naive_max:
        sweeps.append(
            await sweep_phase(
                ctx, "naive", 0.5 * naive_max, o.naive_sweep_seconds, "sweep-naive-own50pct", None
            )
        )

    progress.say("- reading signals")
    quality: dict[str, Any] = {}
    for key in ("bulkwatch_x1", "bulkwatch_x2", "naive_x1"):
        topic = drains[key]["signals_topic"]
        signals = decode_signals(await read_topic(ctx.broker.bootstrap, topic))
        quality[key] = quality_of(signals, workload, ctx.policy_path)
    for sweep in sweeps:
        log_ = sweep.pop("_log")
        if sweep["signals_topic"] is None:
            continue
        signals = decode_signals(await read_topic(ctx.broker.bootstrap, sweep["signals_topic"]))
        latencies, unmatched = signal_latencies_s(signals, workload, log_)
        sweep["signals"] = len(signals)
        sweep["unmatched_signals"] = unmatched
        sweep["latency_s"] = _percentiles(latencies)
        sweep["append_time"] = all(ts_type == 1 for _, _, ts_type in signals)
        sweep["latencies_s"] = np.sort(latencies).round(4).tolist()
    return summarise(
        drains,
        sweeps,
        quality,
        producer_events_per_s=log.events_per_s,
        cpus_each=cpus,
        no_cpu_limits=no_limits,
    )


def summarise(
    drains: dict[str, dict[str, Any]],
    sweeps: list[dict[str, Any]],
    quality: dict[str, Any],
    *,
    producer_events_per_s: float,
    cpus_each: float | None = None,
    no_cpu_limits: str | None = None,
) -> dict[str, Any]:
    """The headline figures and targets from the measured phases (``cpus_each``: the CPU limit
    of the limited runs; ``no_cpu_limits``: why there were none)."""
    ceiling = drains["ceiling_x1"]["events_per_s"]
    naive = drains["naive_x1"]["events_per_s"]
    bulkwatch = drains["bulkwatch_x1"]["events_per_s"]
    two = drains["bulkwatch_x2"]["events_per_s"]
    ceiling_two = drains["ceiling_x2"]["events_per_s"]
    one_limited = drains.get("bulkwatch_x1_cpu_limit", {}).get("events_per_s")
    two_limited = drains.get("bulkwatch_x2_cpu_limit", {}).get("events_per_s")
    half = [s for s in sweeps if s["system"] == "bulkwatch" and s["load_share"] == 0.5]
    p99_half = half[0]["latency_s"]["p99"] if half and half[0].get("latency_s") else None

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a and b else None

    targets = {
        "bulkwatch_vs_ceiling": {"want": ">= 0.70", "measured": ratio(bulkwatch, ceiling)},
        "bulkwatch_vs_naive": {"want": ">= 10", "measured": ratio(bulkwatch, naive)},
        "p99_latency_s_at_half_load": {"want": "< 1.0", "measured": p99_half},
        "two_instances_vs_one": {"want": ">= 1.6", "measured": ratio(two, bulkwatch)},
        "two_instances_vs_one_cpu_limit": {
            "want": ">= 1.6",
            "measured": ratio(two_limited, one_limited),
        },
    }
    for name, target in targets.items():
        value = target["measured"]
        if value is None:
            target["met"] = None
        elif name == "p99_latency_s_at_half_load":
            target["met"] = value < 1.0
        else:
            target["met"] = value >= float(target["want"].split()[-1])

    def per_cpu(key: str) -> float | None:
        return drains[key].get("events_per_cpu_s")

    return {
        "ceiling_events_per_s": ceiling,
        "naive_events_per_s": naive,
        "bulkwatch_events_per_s": bulkwatch,
        "two_instance_events_per_s": two,
        "two_instance_ceiling_events_per_s": ceiling_two,
        "cpu_limit_events_per_s": {
            "one_instance": one_limited,
            "two_instances": two_limited,
            "cpus_each": cpus_each,
            "unavailable": no_cpu_limits,
        },
        "p99_latency_s_at_half_load": p99_half,
        "producer_events_per_s": producer_events_per_s,
        "events_per_cpu_s": {key: per_cpu(key) for key in drains},
        "targets": targets,
        "drains": drains,
        "sweep": sweeps,
        "quality": quality,
    }


# --------------------------------------------------------------------------------------------------
# The ceiling and naive workers (``python -m bench worker``), run as their own processes


async def run_worker(
    system: str,
    *,
    bootstrap: str,
    topic: str,
    group: str,
    batch_size: int,
    signals_topic: str | None = None,
    policy: Path | None = None,
    out: TextIO = sys.stdout,
) -> int:
    """Consume ``topic`` in ``group`` until SIGTERM, printing JSON progress lines.

    ``ceiling`` only iterates the records (and commits after each poll, as any consumer that must
    not lose its place does); ``naive`` runs :class:`bench.naive.NaiveDetector` on them and produces
    its signals to ``signals_topic`` before committing.
    """
    if system not in ("ceiling", "naive"):
        raise ValueError(f"unknown worker {system!r}")
    detector = None
    producer = None
    if system == "naive":
        from bench.naive import NaiveDetector

        if signals_topic is None:
            raise ValueError("the naive worker needs --signals-topic")
        detector = NaiveDetector(load_policy(policy))
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
        await producer.start()
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        # the fetch settings of bulkwatch's own consumer (detector.sources.KafkaSource)
        isolation_level="read_committed",
        max_poll_records=batch_size,
        fetch_max_wait_ms=200,
    )
    await consumer.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    def emit(event: str, **fields: Any) -> None:
        out.write(json.dumps({"event": event, "t": time.time(), **fields}) + "\n")
        out.flush()

    records = signals = 0
    value_bytes = 0
    ready = False
    last_emit = 0.0
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=100, max_records=batch_size)
            if not ready and consumer.assignment():
                ready = True
                emit("ready", records=records)
            for records_of_partition in batch.values():
                if detector is not None and producer is not None:
                    for s in detector.process(r.value for r in records_of_partition):
                        await producer.send(
                            signals_topic, json.dumps(s).encode(), key=s["account"].encode()
                        )
                        signals += 1
                else:
                    for record in records_of_partition:
                        value_bytes += len(record.value or b"")
                records += len(records_of_partition)
            if batch:
                if producer is not None:
                    await producer.flush()
                await consumer.commit()
            now = time.time()
            if now - last_emit >= 0.1:
                last_emit = now
                emit("progress", records=records, signals=signals)
    finally:
        emit("done", records=records, signals=signals, value_bytes=value_bytes)
        await consumer.stop()
        if producer is not None:
            await producer.stop()
    return 0
