"""Where raw records come from: the embedded simulator, recorded JSONL files, and Kafka.

A source yields :class:`Polled` units: the raw records of one partition, and the offset to commit once
everything they produced is safely written. Sources own their I/O; the pipeline only sees bytes.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

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
    records: list[bytes]
    next_offset: int | None = None
    first_offset: int | None = None
    produce_ts_ms: list[int] = field(default_factory=list)


class Source(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def polls(self) -> AsyncIterator[list[Polled]]: ...

    async def commit(self, offsets: dict[PartitionKey, int]) -> None: ...


SIMULATOR_PARTITION = PartitionKey("simulator", 0)


class SimulatedSource:
    """The embedded default: simulator traffic, paced or as fast as possible, one partition."""

    def __init__(self, config: SimulatorConfig, *, batch_size: int, rate_per_s: float | None) -> None:
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
