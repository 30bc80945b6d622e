"""One batch through the detector: decode -> account kernels -> content clusters -> policy.

No I/O happens here: sources hand in raw records, and the caller sends the result's signals and dead
letters to sinks. ``replay``, ``run`` and the tests drive this same code.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

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
T = TypeVar("T")

STAGES = ("decode", "accounts", "content", "network", "policy")


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
        """Run one batch of raw records; never raises on bad input (it becomes dead letters).

        A stage that raises on the whole batch is retried record by record, that stage alone: the
        records it still fails on are dead-lettered, the others go on, and no event updates the
        account state twice.
        """
        seconds: dict[str, float] = {}
        started = time.perf_counter()
        decoded = decode_batch(records)
        seconds["decode"] = time.perf_counter() - started
        batch = decoded.events
        dead = list(decoded.dead_letters)

        def failed_records(failures: list[tuple[int, str]]) -> list[DeadLetter]:
            return [
                DeadLetter(
                    int(batch.record[row]),
                    DeadLetterReason.PROCESSING_ERROR,
                    message,
                    bytes(records[int(batch.record[row])]),
                )
                for row, message in failures
            ]

        per_row_features, kept, failures = _isolated(
            len(batch), lambda index: self._account_features(_rows(batch, index), state, seconds)
        )
        if failures:
            dead.extend(failed_records(failures))
            batch = batch.take(kept)
        features = _concat_features(per_row_features, len(batch))

        signals: list[BanSignal] = []
        inputs, decisions = None, None
        if len(batch):
            outcomes, kept, failures = _isolated(
                len(batch),
                lambda index: self._decide(
                    _rows(batch, index), _take_features(features, index), state, seconds
                ),
            )
            if failures:
                dead.extend(failed_records(failures))
                batch, features = batch.take(kept), _take_features(features, kept)
            else:
                _, inputs, decisions = outcomes[0]
            signals = [signal for outcome in outcomes for signal in outcome[0]]
        if len(batch):
            state.event_time_ms = max(state.event_time_ms, int(batch.ts_ms.max()))
        return BatchResult(
            records=len(records),
            events=batch,
            signals=signals,
            dead_letters=sorted(dead, key=lambda d: d.record),
            events_by_type=np.bincount(batch.type, minlength=len(EventType)),
            late_events=int(np.count_nonzero(features.late)),
            stage_seconds=seconds,
            decisions=decisions,
            inputs=inputs,
        )

    def _account_features(
        self, batch: EventBatch, state: PartitionState, seconds: dict[str, float]
    ) -> account_kernels.AccountFeatures:
        started = time.perf_counter()
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
        seconds["accounts"] = seconds.get("accounts", 0.0) + time.perf_counter() - started
        return features

    def _decide(
        self,
        batch: EventBatch,
        features: account_kernels.AccountFeatures,
        state: PartitionState,
        seconds: dict[str, float],
    ) -> tuple[list[BanSignal], RuleInputs, Decisions]:
        t0 = time.perf_counter()
        clusters = None
        if self.content is not None:
            clusters = self.content.assign(
                batch.ts_ms, batch.account, batch.peer, batch.flags, batch.texts
            )
        t_network = time.perf_counter()
        network = self.network.observe(batch) if self.network is not None else None
        t1 = time.perf_counter()
        inputs = RuleInputs(batch, features, clusters, network)
        decisions = evaluate(self.policy, inputs)
        exemplar = self.content.exemplar if self.content is not None else None
        signals = make_signals(
            self.policy, inputs, decisions, state.gate, exemplar=exemplar, now_ms=self._clock_ms()
        )
        seconds["content"] = seconds.get("content", 0.0) + t_network - t0
        seconds["network"] = seconds.get("network", 0.0) + t1 - t_network
        seconds["policy"] = seconds.get("policy", 0.0) + time.perf_counter() - t1
        return signals, inputs, decisions


def _isolated(
    rows: int, stage: Callable[[np.ndarray | None], T]
) -> tuple[list[T], np.ndarray, list[tuple[int, str]]]:
    """``stage(None)`` on all ``rows``; if it raises, ``stage([row])`` on each row alone.

    Returns the outputs (one, or one per surviving row), the surviving rows and the failed rows
    with their errors. A stage must not change state before it can raise on a row.
    """
    everything = np.arange(rows)
    try:
        return [stage(None)], everything, []
    except Exception:
        log.exception("a stage failed on a batch of %d events; isolating the bad records", rows)
    outputs: list[T] = []
    kept: list[int] = []
    failures: list[tuple[int, str]] = []
    for row in range(rows):
        try:
            outputs.append(stage(everything[row : row + 1]))
        except Exception as exc:  # isolate the record, keep the partition moving
            failures.append((row, f"{type(exc).__name__}: {exc}"[:300]))
            continue
        kept.append(row)
    return outputs, np.asarray(kept, dtype=np.int64), failures


def _rows(batch: EventBatch, index: np.ndarray | None) -> EventBatch:
    return batch if index is None else batch.take(index)


def _concat_features(
    parts: list[account_kernels.AccountFeatures], rows: int
) -> account_kernels.AccountFeatures:
    if len(parts) == 1:
        return parts[0]
    if not parts:
        return account_kernels.AccountFeatures(
            *(np.zeros(rows, dtype=dtype) for dtype in account_kernels.FEATURE_DTYPES.values())
        )
    return account_kernels.AccountFeatures(
        *(np.concatenate(column) for column in zip(*parts, strict=True))
    )


def _take_features(
    features: account_kernels.AccountFeatures, index: np.ndarray | None
) -> account_kernels.AccountFeatures:
    if index is None:
        return features
    return account_kernels.AccountFeatures(*(column[index] for column in features))
