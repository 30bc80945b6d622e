"""Prometheus metrics and the health endpoints (the only module that imports prometheus_client).

Metrics are updated once per batch with cached label children and ``inc(n)``; a call costs about a
microsecond, so nothing here runs per event. Labels never carry account ids, texts or addresses.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from detector.events import EVENT_TYPE_NAMES, DeadLetterReason
from detector.policy import ACTION_NAMES, REASON_CODES

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_DELAY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600)


class Metrics:
    """The service's metrics in their own registry (tests make a fresh one each)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        if registry is None:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)
        r = self.registry
        self.events = Counter(
            "bulkwatch_events", "Valid events processed, by type", ["type"], registry=r
        )
        self.records = Counter("bulkwatch_records", "Raw records consumed", registry=r)
        self.dead_letters = Counter(
            "bulkwatch_dead_letters", "Records sent to the dead-letter sink", ["reason"], registry=r
        )
        self.signals = Counter(
            "bulkwatch_signals",
            "Ban signals emitted, one count per reason",
            ["action", "reason", "shadow"],
            registry=r,
        )
        self.batch_seconds = Histogram(
            "bulkwatch_batch_seconds",
            "Wall time to process one batch",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.event_delay = Histogram(
            "bulkwatch_event_delay_seconds",
            "Wall clock minus event time at decision (newest event of each batch)",
            buckets=_DELAY_BUCKETS,
            registry=r,
        )
        self.kernel_seconds = Histogram(
            "bulkwatch_kernel_seconds",
            "Wall time per pipeline stage and batch",
            ["kernel"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.consumer_lag = Gauge(
            "bulkwatch_consumer_lag",
            "Records behind the end of an input partition this instance owns",
            ["topic", "partition"],
            registry=r,
        )
        self.tracked_accounts = Gauge(
            "bulkwatch_tracked_accounts", "Accounts held in the state tables", registry=r
        )
        self.clusters = Gauge("bulkwatch_clusters", "Content clusters held", registry=r)
        self.state_capacity = Gauge(
            "bulkwatch_state_capacity", "Capacity of each state table", ["table"], registry=r
        )
        self.evictions = Counter(
            "bulkwatch_state_evictions",
            "Entries evicted from full state tables",
            ["table"],
            registry=r,
        )
        self.late_events = Counter(
            "bulkwatch_late_events", "Events older than the allowed lateness, skipped", registry=r
        )
        self.ready = Gauge(
            "bulkwatch_ready", "1 when assigned, consuming and able to write outputs", registry=r
        )
        self.policy_info = Info("bulkwatch_policy", "The policy in force", registry=r)
        self.snapshot_failures = Counter(
            "bulkwatch_snapshot_failures",
            "State snapshots that failed to write or load",
            ["op"],
            registry=r,
        )
        self.inflight_batches = Gauge(
            "bulkwatch_inflight_batches",
            "Processed batches whose outputs and offset commit are in flight "
            "(bounded by max_inflight_batches)",
            registry=r,
        )
        for op in ("write", "load"):  # export zeros, so increase() sees the first failure
            self.snapshot_failures.labels(op)
        self._event_children = [self.events.labels(name) for name in EVENT_TYPE_NAMES]
        self._dead_children = {
            reason: self.dead_letters.labels(reason.value) for reason in DeadLetterReason
        }
        self._stage_children: dict[str, Histogram] = {}
        self._signal_children: dict[tuple[str, str, bool], Counter] = {}
        self._eviction_totals: dict[str, int] = {}
        for name in EVENT_TYPE_NAMES:  # export zeros, so rates and alerts see every series
            self.events.labels(name)
        for reason in DeadLetterReason:
            self.dead_letters.labels(reason.value)
        for action in ACTION_NAMES.values():
            for code in REASON_CODES:
                for shadow in (False, True):
                    self._signal_child(action, code, shadow)
        for table in ("accounts", "clusters"):
            self.evictions.labels(table)

    def _signal_child(self, action: str, reason: str, shadow: bool) -> Counter:
        key = (action, reason, shadow)
        child = self._signal_children.get(key)
        if child is None:
            child = self.signals.labels(action, reason, "true" if shadow else "false")
            self._signal_children[key] = child
        return child

    def observe_batch(
        self,
        *,
        records: int,
        events_by_type: np.ndarray,
        dead_letter_reasons: Iterable[DeadLetterReason],
        signals: Iterable[tuple[str, Iterable[str], bool]],
        late_events: int,
        batch_seconds: float,
        stage_seconds: Mapping[str, float],
        event_delay_s: float | None,
    ) -> None:
        """Record one processed batch."""
        self.records.inc(records)
        for child, count in zip(self._event_children, events_by_type.tolist(), strict=False):
            if count:
                child.inc(count)
        reasons: dict[DeadLetterReason, int] = {}
        for reason in dead_letter_reasons:
            reasons[reason] = reasons.get(reason, 0) + 1
        for reason, count in reasons.items():
            self._dead_children[reason].inc(count)
        for action, codes, shadow in signals:
            for code in codes:
                self._signal_child(action, code, shadow).inc()
        if late_events:
            self.late_events.inc(late_events)
        self.batch_seconds.observe(batch_seconds)
        for stage, spent in stage_seconds.items():
            child = self._stage_children.get(stage)
            if child is None:
                child = self._stage_children[stage] = self.kernel_seconds.labels(stage)
            child.observe(spent)
        if event_delay_s is not None:
            self.event_delay.observe(max(event_delay_s, 0.0))

    def observe_dead_letters(self, reasons: Iterable[DeadLetterReason]) -> None:
        for reason in reasons:
            self._dead_children[reason].inc()

    def observe_state(
        self,
        *,
        tracked_accounts: int,
        account_capacity: int,
        account_evictions: int,
        clusters: int,
        cluster_capacity: int,
        cluster_evictions: int,
    ) -> None:
        """Set state sizes; evictions are running totals, exported as counter increments."""
        self.tracked_accounts.set(tracked_accounts)
        self.clusters.set(clusters)
        self.state_capacity.labels("accounts").set(account_capacity)
        self.state_capacity.labels("clusters").set(cluster_capacity)
        for table, total in (("accounts", account_evictions), ("clusters", cluster_evictions)):
            previous = self._eviction_totals.get(table, 0)
            if total > previous:
                self.evictions.labels(table).inc(total - previous)
            self._eviction_totals[table] = max(previous, total)

    def set_policy(self, version: str, source: str) -> None:
        self.policy_info.info({"version": version, "source": source.rsplit("/", 1)[-1]})

    def set_lag(self, lag_by_partition: Mapping[tuple[str, int], int]) -> None:
        """Set the lag, in records, of each ``(topic, partition)`` given; others are left as they
        are (the source calls :meth:`forget_partitions` for partitions it no longer owns)."""
        for (topic, partition), lag in lag_by_partition.items():
            self.consumer_lag.labels(topic, str(partition)).set(lag)

    def forget_partitions(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Remove the lag series of ``(topic, partition)`` pairs, so only owned partitions export."""
        for topic, partition in partitions:
            with contextlib.suppress(KeyError):
                self.consumer_lag.remove(topic, str(partition))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class HealthServer:
    """``/metrics``, ``/healthz`` (alive) and ``/readyz`` (assigned, consuming, outputs writable)
    over HTTP; a 503 from ``/readyz`` says why when an output topic is the cause."""

    def __init__(self, metrics: Metrics, host: str, port: int) -> None:
        self.metrics = metrics
        self.host = host
        self.port = port
        self.ready = False  # set by the source: assigned, restored, fetches answered
        self.output_blocked: str | None = None  # set by the sinks: why outputs cannot be written
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._server is not None:
            return
        health = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._reply(200, health.metrics.exposition(), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    self._reply(200, b"ok\n")
                elif path == "/readyz":
                    blocked = health.output_blocked
                    if health.ready and blocked is None:
                        self._reply(200, b"ready\n")
                    else:
                        why = f": {blocked}" if blocked is not None else ""
                        self._reply(503, f"not ready{why}\n".encode())
                else:
                    self._reply(404, b"not found\n")

            def _reply(self, code: int, body: bytes, content_type: str = "text/plain") -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return  # access logs would carry client addresses

        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics-http", daemon=True
        )
        self._thread.start()

    def set_ready(self, ready: bool) -> None:
        self.ready = ready
        self._export()

    def set_output_blocked(self, reason: str | None) -> None:
        """Not ready while ``reason`` is set (an output topic cannot be written), whatever the
        source says; ``None`` lifts it."""
        self.output_blocked = reason
        self._export()

    def _export(self) -> None:
        self.metrics.ready.set(1 if self.ready and self.output_blocked is None else 0)

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._server = None
