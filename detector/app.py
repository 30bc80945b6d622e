"""The service: wires a source, the pipeline and sinks; owns start-up, the run loop, commits, state
snapshots, policy reloads and shutdown.

Order of durability for every batch: process -> send signals and dead letters -> flush both sinks ->
commit the input offsets. A crash anywhere loses nothing (records are re-read and their signals
re-sent with the same ``signal_id``). Decoding, kernels and policy run in one worker thread (the Numba
kernels release the GIL), so the event loop keeps heartbeats and fetches flowing.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from detector import kafka_fetch
from detector.config import Settings
from detector.content import ContentClusters
from detector.events import decode_batch
from detector.metrics import HealthServer, Metrics
from detector.network import NetworkActivity
from detector.pipeline import BatchResult, Pipeline
from detector.policy import Policy, PolicyError, load_policy
from detector.sinks import DeadLetterSink, SignalSink
from detector.sources import PartitionKey, Polled, RangeReader, Source
from detector.state import PartitionState, restore_or_new, snapshot_path
from kernels import accounts as account_kernels

# State-size gauges scan whole tables: refresh them about once a second, not once per batch.
STATE_GAUGE_INTERVAL_S = 1.0

log = logging.getLogger(__name__)


@dataclass
class RunStats:
    """Running totals, for the progress line and the exit summary."""

    started: float = field(default_factory=time.monotonic)
    records: int = 0
    events: int = 0
    dead_letters: int = 0
    signals_by_reason: collections.Counter[str] = field(default_factory=collections.Counter)
    signals_by_action: collections.Counter[str] = field(default_factory=collections.Counter)

    def add(self, result: BatchResult) -> None:
        self.records += result.records
        self.events += len(result.events)
        self.dead_letters += len(result.dead_letters)
        for ban_signal in result.signals:
            if not ban_signal.shadow:
                self.signals_by_action[ban_signal.action] += 1
            self.signals_by_reason.update(
                f"{code}{' (shadow)' if ban_signal.shadow else ''}" for code in ban_signal.reasons
            )

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        actions = " ".join(f"{a}={n}" for a, n in sorted(self.signals_by_action.items())) or "none"
        reasons = " ".join(f"{r}={n}" for r, n in self.signals_by_reason.most_common(5))
        return (
            f"{self.events:,} events ({self.events / elapsed:,.0f}/s) "
            f"dead={self.dead_letters} signals: {actions} | {reasons}"
        )


class DetectorApp:
    """One detector instance: consumes a source until stopped, then shuts down cleanly."""

    def __init__(
        self,
        settings: Settings,
        policy: Policy,
        *,
        source: Source,
        signal_sink: SignalSink,
        dead_letter_sink: DeadLetterSink,
        metrics: Metrics,
        health: HealthServer | None = None,
        progress: TextIO | None = None,
        progress_interval_s: float = 2.0,
    ) -> None:
        self.settings = settings
        self.source = source
        self.signal_sink = signal_sink
        self.dead_letter_sink = dead_letter_sink
        self.metrics = metrics
        self.health = health
        self.content = ContentClusters(capacity=settings.cluster_capacity)
        self.network = NetworkActivity(lateness_s=settings.lateness_s)
        self.pipeline = Pipeline(policy, self.content, self.network)
        self.states: dict[PartitionKey, PartitionState] = {}
        self.stats = RunStats()
        self._progress = progress
        self._progress_interval_s = progress_interval_s
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bulkwatch-worker")
        # Periodic snapshots are written here, from copies, so a slow disk never stalls consumption.
        self._snapshot_writer = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="bulkwatch-snapshot"
        )
        self._snapshot_writes: asyncio.Task[None] | None = None
        self._snapshots_due: list[PartitionKey] = []
        self._inflight: collections.deque[asyncio.Task[None]] = collections.deque()
        self._last_snapshot = time.monotonic()
        self._state_observed_at = -math.inf
        self._started = False
        metrics.set_policy(policy.version, policy.source)

    # ---------------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        if self.health is not None:
            self.health.start()
        seconds = await asyncio.get_running_loop().run_in_executor(self._worker, warm_up)
        log.info("kernels ready in %.2f s", seconds)
        await self.signal_sink.start()
        await self.dead_letter_sink.start()
        await self.source.start()

    async def stop(self, *, snapshot: bool = True) -> None:
        """Finish in-flight deliveries, commit, snapshot and close everything (idempotent).

        After a failed delivery the states are ahead of the committed offsets: ``snapshot=False``
        then keeps the older snapshots, so a restart re-reads and re-sends what was not delivered.
        """
        if not self._started:
            return
        self._started = False
        if self.health is not None:
            self.health.set_ready(False)
        try:
            await self._drain()  # raises if a delivery failed: then no snapshot either
            if snapshot:
                await self._snapshot(list(self.states))
        finally:
            await self.source.stop()
            await self.signal_sink.stop()
            await self.dead_letter_sink.stop()
            await self._finish_snapshot_writes()
            self._worker.shutdown(wait=True)
            self._snapshot_writer.shutdown(wait=True)
            if self.health is not None:
                self.health.stop()

    async def run(self, stop: asyncio.Event) -> RunStats:
        """Consume until ``stop`` is set or the source ends; returns the totals."""
        await self.start()
        progress = asyncio.create_task(self._report_progress(stop))
        failed = False
        try:
            polls = self.source.polls()
            while not stop.is_set():
                batch_task = asyncio.ensure_future(anext(polls))
                stop_task = asyncio.ensure_future(stop.wait())
                done, _ = await asyncio.wait(
                    {batch_task, stop_task}, return_when=asyncio.FIRST_COMPLETED
                )
                stop_task.cancel()
                if batch_task not in done:
                    batch_task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                        await batch_task
                    break
                try:
                    polled = batch_task.result()
                except StopAsyncIteration:
                    break
                if self.health is not None:
                    self.health.set_ready(True)
                await self._handle(polled)
                await self._maybe_snapshot()
            with contextlib.suppress(Exception):
                await polls.aclose()
        except BaseException:
            failed = True
            raise
        finally:
            progress.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await progress
            await self.stop(snapshot=not failed)
        return self.stats

    # ------------------------------------------------------------------------------- the hot path

    async def _handle(self, polled: list[Polled]) -> None:
        polled = [p for p in polled if p.records]
        if not polled:
            return
        loop = asyncio.get_running_loop()
        # Not awaited here: the next fetch (aiokafka parsing records on this thread) overlaps with
        # this batch's kernels, which run without the GIL. One worker thread keeps batches in order.
        processing = loop.run_in_executor(self._worker, self._process, polled)
        previous = self._inflight[-1] if self._inflight else None
        self._inflight.append(asyncio.create_task(self._deliver(polled, processing, previous)))
        self.metrics.inflight_batches.set(len(self._inflight))
        while len(self._inflight) >= self.settings.max_inflight_batches:
            await self._inflight.popleft()
        while self._inflight and self._inflight[0].done():
            await self._inflight.popleft()
        self.metrics.inflight_batches.set(len(self._inflight))

    def _process(self, polled: list[Polled]) -> list[BatchResult]:
        results = []
        for unit in polled:
            state = self.states.get(unit.partition)
            if state is None:
                state = self._state_for(unit.partition)
            started = time.perf_counter()
            result = self.pipeline.process(unit.records, state)
            if unit.next_offset is not None:
                state.next_offset = unit.next_offset
            elapsed = time.perf_counter() - started
            newest = result.max_ts_ms
            self.metrics.observe_batch(
                records=result.records,
                events_by_type=result.events_by_type,
                dead_letter_reasons=(d.reason for d in result.dead_letters),
                signals=((s.action, s.reasons, s.shadow) for s in result.signals),
                late_events=result.late_events,
                batch_seconds=elapsed,
                stage_seconds=result.stage_seconds,
                event_delay_s=None if newest is None else time.time() - newest / 1000.0,
            )
            self.stats.add(result)
            results.append(result)
        if time.monotonic() - self._state_observed_at >= STATE_GAUGE_INTERVAL_S:
            self._observe_state()
        return results

    async def _deliver(
        self,
        polled: list[Polled],
        processing: asyncio.Future[list[BatchResult]],
        previous: asyncio.Task[None] | None,
    ) -> None:
        results = await processing
        for unit, result in zip(polled, results, strict=True):
            if result.signals:
                await self.signal_sink.send(result.signals)
            if result.dead_letters:
                await self.dead_letter_sink.send(
                    result.dead_letters, unit.partition, unit.first_offset
                )
        await self.signal_sink.flush()
        await self.dead_letter_sink.flush()
        if previous is not None:
            await previous  # commits stay in order
        offsets = {u.partition: u.next_offset for u in polled if u.next_offset is not None}
        if offsets:
            await self.source.commit(offsets)

    async def _drain(self) -> None:
        while self._inflight:
            await self._inflight.popleft()
        self.metrics.inflight_batches.set(0)

    # ----------------------------------------------------------------------------- state handling

    def _state_for(self, key: PartitionKey) -> PartitionState:
        state = restore_or_new(
            self.settings.snapshot_dir,
            key.topic,
            key.partition,
            capacity=self.settings.account_capacity,
            lateness_s=self.settings.lateness_s,
            ttl_s=self.settings.account_ttl_s,
            on_rejected=lambda _: self.metrics.snapshot_failures.labels("load").inc(),
        )
        self.states[key] = state
        return state

    def _observe_state(self) -> None:
        self._state_observed_at = time.monotonic()
        tracked = capacity = evictions = 0
        for state in self.states.values():
            stats = account_kernels.account_state_stats(state.accounts)
            tracked += stats["tracked"]
            capacity += stats["capacity"]
            evictions += stats["evictions"]
        content = self.content.stats()
        self.metrics.observe_state(
            tracked_accounts=tracked,
            account_capacity=capacity,
            account_evictions=evictions,
            clusters=content["clusters"],
            cluster_capacity=content["capacity"],
            cluster_evictions=content["evictions"],
        )

    async def _maybe_snapshot(self) -> None:
        """Every ``snapshot_interval_s``, a round of snapshots, one partition at a time: drain the
        batches in flight (so the state reflects exactly what was delivered and committed), copy
        that partition's state and write the copy in the background. One copy exists at a time."""
        if self.settings.snapshot_dir is None:
            return
        if self._snapshot_writes is not None and not self._snapshot_writes.done():
            return
        if time.monotonic() - self._last_snapshot >= self.settings.snapshot_interval_s:
            if self._snapshots_due:
                log.warning(
                    "snapshots fall behind: %d partitions of the last round are still to be "
                    "written (slow disk?)",
                    len(self._snapshots_due),
                )
            self._last_snapshot = time.monotonic()
            self._snapshots_due += [key for key in self.states if key not in self._snapshots_due]
        while self._snapshots_due:
            key = self._snapshots_due.pop(0)
            state = self.states.get(key)
            if state is not None and state.next_offset is not None:
                break
        else:
            return
        await self._drain()
        copy = await asyncio.get_running_loop().run_in_executor(self._worker, state.copy)
        self._snapshot_writes = asyncio.create_task(self._write_snapshots({key: copy}))

    async def _snapshot(self, keys: list[PartitionKey]) -> None:
        """Write the snapshots of ``keys`` now (revocation, shutdown: consumption is paused)."""
        await self._finish_snapshot_writes()
        self._last_snapshot = time.monotonic()
        if self.settings.snapshot_dir is None:
            return
        states = {key: self.states[key] for key in keys if key in self.states}
        await self._write_snapshots(
            {key: state for key, state in states.items() if state.next_offset is not None}
        )

    async def _write_snapshots(self, states: Mapping[PartitionKey, PartitionState]) -> None:
        root = self.settings.snapshot_dir
        assert root is not None
        loop = asyncio.get_running_loop()
        for key, state in states.items():
            path = snapshot_path(root, key.topic, key.partition)
            try:
                await loop.run_in_executor(self._snapshot_writer, state.save, path)
            except Exception as exc:  # a failed snapshot must not stop the detector
                self.metrics.snapshot_failures.labels("write").inc()
                log.error("snapshot of %s failed (state kept in memory): %s", key, exc)

    async def _finish_snapshot_writes(self) -> None:
        if self._snapshot_writes is not None:
            await self._snapshot_writes
            self._snapshot_writes = None

    # Rebalance hooks, called by a partitioned source (Kafka) around assignment changes.

    async def partitions_revoked(self, keys: list[PartitionKey]) -> None:
        """Flush and commit what was processed, snapshot the partitions, then let them go."""
        await self._drain()
        await self._snapshot(keys)
        for key in keys:
            self.states.pop(key, None)

    async def partitions_assigned(
        self,
        keys: list[PartitionKey],
        committed: Mapping[PartitionKey, int | None] | None = None,
        read: RangeReader | None = None,
    ) -> dict[PartitionKey, int]:
        """Restore the partitions' snapshots and bring them to the committed offset; returns where
        each partition resumes (absent: at its committed offset).

        A snapshot reflects the records before its ``next_offset`` N; the group's committed offset
        C marks what was delivered. N < C (snapshots are periodic): records [N, C) are re-read with
        ``read`` and applied to the state without emitting anything, since their signals and dead
        letters were delivered before C was committed; windows come out exact and nothing is sent
        twice. N > C: a commit was rejected after its outputs were flushed (at-least-once), so the
        state resumes at N; in exactly-once mode outputs and offsets commit together, so such a
        snapshot holds effects of aborted output and is replaced by a fresh state.
        """
        committed = committed or {}
        loop = asyncio.get_running_loop()
        resume: dict[PartitionKey, int] = {}
        for key in keys:
            state = self.states.get(key)
            if state is None:
                state = await loop.run_in_executor(self._worker, self._state_for, key)
            snapshot_offset, committed_offset = state.next_offset, committed.get(key)
            if snapshot_offset is None:
                continue  # fresh state: the committed offset (or the reset policy) decides
            if committed_offset is None or snapshot_offset == committed_offset:
                resume[key] = snapshot_offset
            elif snapshot_offset > committed_offset and not self.settings.exactly_once:
                log.warning(
                    "%s: snapshot at %d is ahead of the committed offset %d (a rejected commit); "
                    "resuming at the snapshot",
                    key,
                    snapshot_offset,
                    committed_offset,
                )
                resume[key] = snapshot_offset
            elif snapshot_offset > committed_offset:
                log.error(
                    "%s: snapshot at %d is ahead of the transactional commit %d; starting the "
                    "partition with empty state",
                    key,
                    snapshot_offset,
                    committed_offset,
                )
                self.states[key] = PartitionState.new(
                    capacity=self.settings.account_capacity,
                    lateness_s=self.settings.lateness_s,
                    ttl_s=self.settings.account_ttl_s,
                )
            elif read is None:
                log.warning(
                    "%s: no reader to rebuild %d..%d; re-processing it",
                    key,
                    snapshot_offset,
                    committed_offset,
                )
                resume[key] = snapshot_offset
            else:
                started = time.perf_counter()
                rebuilt = 0
                try:
                    async for records in read(key, snapshot_offset, committed_offset):
                        # Outputs dropped: they were delivered before the offsets were committed.
                        await loop.run_in_executor(
                            self._worker, self.pipeline.process, records, state
                        )
                        rebuilt += len(records)
                except BaseException:
                    # Half rebuilt, the state matches no offset: never snapshot it.
                    self.states.pop(key, None)
                    raise
                state.next_offset = committed_offset
                resume[key] = committed_offset
                log.info(
                    "%s: rebuilt %d records %d..%d past the snapshot in %.2f s",
                    key,
                    rebuilt,
                    snapshot_offset,
                    committed_offset,
                    time.perf_counter() - started,
                )
        return resume

    # ------------------------------------------------------------------------------------ control

    def reload_policy(self, path: str | None) -> bool:
        """Swap in a re-read policy; a bad file keeps the old policy (logged). State is untouched."""
        try:
            policy = load_policy(path)
        except PolicyError as exc:
            log.error(
                "policy reload failed, keeping version %s: %s", self.pipeline.policy.version, exc
            )
            return False
        self.pipeline.policy = policy
        self.metrics.set_policy(policy.version, policy.source)
        log.info("policy reloaded: version %s", policy.version)
        return True

    async def _report_progress(self, stop: asyncio.Event) -> None:
        if self._progress is None:
            return
        while not stop.is_set():
            await asyncio.sleep(self._progress_interval_s)
            self._progress.write(self.stats.line() + "\n")
            self._progress.flush()


def warm_up() -> float:
    """Compile (or load from cache) every Numba kernel; returns the seconds it took."""
    started = time.perf_counter()
    account_kernels.warm_up()
    kafka_fetch.warm_up()
    ContentClusters(capacity=1024).warm_up()
    # The decoder's scan (plain and escaped text) and the content path of decoded texts.
    sample = decode_batch(
        [
            b'{"type":"message","ts":1767225600000,"account":"a","peer":"b","text":"caf\xc3\xa9"}',
            b'{"type":"message","ts":1767225600001,"account":"a","peer":"c","text":"x\\n\\u00e9"}',
        ]
    ).events
    ContentClusters(capacity=1024).assign(
        sample.ts_ms, sample.account, sample.peer, sample.flags, sample.texts
    )
    return time.perf_counter() - started


def install_signal_handlers(
    stop: asyncio.Event, *, on_reload: Callable[[], object] | None = None
) -> None:
    """SIGTERM/SIGINT set ``stop``; SIGHUP calls ``on_reload`` (policy reload)."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if on_reload is not None and hasattr(signal, "SIGHUP"):
        loop.add_signal_handler(signal.SIGHUP, on_reload)


async def run_service(
    app: DetectorApp, *, duration_s: float | None, policy_path: str | None
) -> RunStats:
    """Run ``app`` with signal handling and an optional time limit."""
    stop = asyncio.Event()
    install_signal_handlers(stop, on_reload=lambda: app.reload_policy(policy_path))
    timer = None
    if duration_s is not None:
        timer = asyncio.get_running_loop().call_later(duration_s, stop.set)
    try:
        return await app.run(stop)
    finally:
        if timer is not None:
            timer.cancel()


def build_app(settings: Settings, policy: Policy, *, quiet: bool = False) -> DetectorApp:
    """Wire the source and sinks that ``settings.source`` asks for into a :class:`DetectorApp`."""
    from detector import sinks, sources
    from detector.simulator import SimulatorConfig

    metrics = Metrics()
    health = HealthServer(metrics, settings.metrics_host, settings.metrics_port)
    if settings.source == "kafka":
        kafka_sinks = sinks.KafkaSinks(settings, health=health)
        source: Source = sources.KafkaSource(
            settings, metrics=metrics, transactions=kafka_sinks, health=health
        )
        app = DetectorApp(
            settings,
            policy,
            source=source,
            signal_sink=kafka_sinks.signals,
            dead_letter_sink=kafka_sinks.dead_letters,
            metrics=metrics,
            health=health,
            progress=sys.stderr,
            progress_interval_s=10.0,
        )
        source.set_listener(app)
        return app
    config = SimulatorConfig(
        accounts=settings.sim_accounts, minutes=settings.sim_minutes, seed=settings.sim_seed
    )
    dead_letters = Path(settings.snapshot_dir or ".") / "dead-letters.jsonl"
    return DetectorApp(
        settings,
        policy,
        source=sources.SimulatedSource(
            config, batch_size=settings.batch_size, rate_per_s=settings.rate
        ),
        signal_sink=sinks.ConsoleSignalSink(open(os.devnull, "w") if quiet else sys.stdout),
        dead_letter_sink=sinks.JsonlDeadLetterSink(dead_letters),
        metrics=metrics,
        health=health,
        progress=sys.stderr,
    )
