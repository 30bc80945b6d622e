"""One batch through the detector: decode -> account kernels -> content clusters -> policy.

No I/O happens here: sources hand in raw records, and the caller sends the result's signals and dead
letters to sinks. ``replay``, ``run`` and the tests drive this same code.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from detector.content import ContentClusters
from detector.events import (
    DeadLetter,
    DeadLetterReason,
    EventBatch,
    EventType,
    decode_batch,
)
from detector.network import NetworkActivity
from detector.policy import BanSignal, Decisions, Policy, RuleInputs, evaluate, make_signals
from detector.state import PartitionState
from kernels import accounts as account_kernels

log = logging.getLogger(__name__)

STAGES = ("decode", "accounts", "content", "policy")


@dataclass
class BatchResult:
    """What one batch produced, and what it cost."""

    records: int
    events: EventBatch
    signals: list[BanSignal]
    dead_letters: list[DeadLetter]
    events_by_type: np.ndarray  # count per EventType
    late_events: int
    stage_seconds: dict[str, float] = field(default_factory=dict)
    decisions: Decisions | None = None
    inputs: RuleInputs | None = None  # the features the rules saw (None after a kernel failure)

    @property
    def max_ts_ms(self) -> int | None:
        return int(self.events.ts_ms.max()) if len(self.events) else None


class Pipeline:
    """Decode, compute features and decide, for one batch and the state of its partition."""

    def __init__(
        self,
        policy: Policy,
        content: ContentClusters | None,
        network: NetworkActivity | None = None,
        *,
        clock_ms: Callable[[], int] | None = None,
    ) -> None:
        self.policy = policy
        self.content = content
        self.network = network
        self._clock_ms = clock_ms or (lambda: int(time.time() * 1000))

    def process(self, records: Sequence[bytes], state: PartitionState) -> BatchResult:
        """Run one batch of raw records; never raises on bad input (it becomes dead letters)."""
        seconds: dict[str, float] = {}
        started = time.perf_counter()
        decoded = decode_batch(records)
        seconds["decode"] = time.perf_counter() - started
        batch = decoded.events
        dead = list(decoded.dead_letters)
        try:
            signals, inputs, decisions, late = self._detect(batch, state, seconds)
        except Exception:
            log.exception(
                "batch of %d events failed in a kernel; isolating the bad records", len(batch)
            )
            inputs, decisions = None, None
            signals, late, failed = self._detect_one_by_one(batch, state, seconds)
            dead.extend(
                DeadLetter(
                    int(batch.record[row]),
                    DeadLetterReason.PROCESSING_ERROR,
                    message,
                    bytes(records[int(batch.record[row])]),
                )
                for row, message in failed
            )
            batch = batch.take(np.setdiff1d(np.arange(len(batch)), [row for row, _ in failed]))
        if len(batch):
            state.event_time_ms = max(state.event_time_ms, int(batch.ts_ms.max()))
        counts = np.bincount(batch.type, minlength=len(EventType))
        return BatchResult(
            records=len(records),
            events=batch,
            signals=signals,
            dead_letters=sorted(dead, key=lambda d: d.record),
            events_by_type=counts,
            late_events=late,
            stage_seconds=seconds,
            decisions=decisions,
            inputs=inputs,
        )

    def _detect(
        self, batch: EventBatch, state: PartitionState, seconds: dict[str, float]
    ) -> tuple[list[BanSignal], RuleInputs, Decisions, int]:
        t0 = time.perf_counter()
        features = account_kernels.update_accounts(
            state.accounts,
            batch.ts_ms,
            batch.account,
            batch.peer,
            batch.type,
            batch.flags,
            batch.members,
            batch.created_ms,
        )
        t1 = time.perf_counter()
        clusters = None
        if self.content is not None:
            clusters = self.content.assign(
                batch.ts_ms, batch.account, batch.peer, batch.flags, batch.texts
            )
        network = self.network.observe(batch) if self.network is not None else None
        t2 = time.perf_counter()
        inputs = RuleInputs(batch, features, clusters, network)
        decisions = evaluate(self.policy, inputs)
        exemplar = self.content.exemplar if self.content is not None else None
        signals = make_signals(
            self.policy, inputs, decisions, state.gate, exemplar=exemplar, now_ms=self._clock_ms()
        )
        t3 = time.perf_counter()
        seconds["accounts"] = seconds.get("accounts", 0.0) + t1 - t0
        seconds["content"] = seconds.get("content", 0.0) + t2 - t1
        seconds["policy"] = seconds.get("policy", 0.0) + t3 - t2
        return signals, inputs, decisions, int(np.count_nonzero(features.late))

    def _detect_one_by_one(
        self, batch: EventBatch, state: PartitionState, seconds: dict[str, float]
    ) -> tuple[list[BanSignal], int, list[tuple[int, str]]]:
        signals: list[BanSignal] = []
        failed: list[tuple[int, str]] = []
        late = 0
        for row in range(len(batch)):
            try:
                row_signals, _, _, row_late = self._detect(
                    batch.take(np.array([row])), state, seconds
                )
            except Exception as exc:  # isolate the record, keep the partition moving
                failed.append((row, f"{type(exc).__name__}: {exc}"[:300]))
                continue
            signals.extend(row_signals)
            late += row_late
        return signals, late, failed
