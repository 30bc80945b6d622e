"""Where results go: ban signals and dead letters, to the console, to files, or to Kafka.

Every sink has ``start``/``stop`` (safe to call twice), ``send`` (may buffer) and ``flush`` (returns
once everything sent so far is durably written: the caller commits input offsets only after it).
"""

from __future__ import annotations

import base64
import gzip
import sys
from collections import Counter
from pathlib import Path
from typing import IO, Protocol, TextIO

import msgspec

from detector.events import DeadLetter
from detector.policy import BanSignal, encode_signal
from detector.sources import PartitionKey


class SignalSink(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def send(self, signals: list[BanSignal]) -> None: ...

    async def flush(self) -> None: ...


class DeadLetterSink(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def send(self, dead: list[DeadLetter], origin: PartitionKey, first_offset: int | None) -> None: ...

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

    async def send(self, dead: list[DeadLetter], origin: PartitionKey, first_offset: int | None) -> None:
        for letter in dead:
            self._writer.write(dead_letter_json(letter, origin, first_offset))

    async def flush(self) -> None:
        self._writer.flush()
