"""The event contract (docs/events.md): decode raw records into a columnar batch plus dead letters.

Each raw record is one JSON object. Valid records become rows of an :class:`EventBatch` (numpy arrays,
ready for the kernels); every invalid record becomes a :class:`DeadLetter` that keeps the original bytes
and a reason code. Decoding never raises on bad input.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Annotated, overload

import msgspec
import numpy as np

from kernels import jsonscan
from kernels.strhash import hash_strings

MAX_ACCOUNT_CHARS = 128
MAX_TEXT_CHARS = 64 * 1024
MAX_RECORD_BYTES = 256 * 1024
MIN_TS_MS = 946_684_800_000  # 2000-01-01T00:00Z
MAX_TS_MS = 4_102_444_800_000  # 2100-01-01T00:00Z
MAX_MEMBERS = 1_000_000


class EventType(enum.IntEnum):
    MESSAGE = 0
    REGISTRATION = 1
    REPORT = 2
    BLOCK = 3
    GROUP_CREATE = 4
    GROUP_ADD = 5


EVENT_TYPE_NAMES: tuple[str, ...] = tuple(t.name.lower() for t in EventType)
_TYPE_CODES = {name: code for code, name in enumerate(EVENT_TYPE_NAMES)}
_PEER_REQUIRED = frozenset(EVENT_TYPE_NAMES) - {"registration"}


class Flag(enum.IntFlag):
    GROUP_CHAT = 1
    HAS_TEXT = 2
    CONTACT_KNOWN = 4
    IN_CONTACTS = 8
    FORWARDED = 16
    TYPING_KNOWN = 32
    TYPING = 64
    BUSINESS = 128


class DeadLetterReason(enum.StrEnum):
    INVALID_JSON = "invalid_json"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    UNKNOWN_TYPE = "unknown_type"
    TOO_LARGE = "too_large"
    BAD_TIMESTAMP = "bad_timestamp"
    PROCESSING_ERROR = "processing_error"


class RawEvent(msgspec.Struct, gc=False):
    """The wire form of every event type; type-specific rules are checked after decoding."""

    type: str
    ts: int
    account: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ACCOUNT_CHARS)]
    peer: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ACCOUNT_CHARS)] | None = None
    chat: str | None = None
    text: str | None = None
    in_contacts: bool | None = None
    forwarded: bool | None = None
    typing: bool | None = None
    business: bool | None = None
    device: str | None = None
    ip: str | None = None
    country: str | None = None
    account_created: int | None = None
    members: Annotated[int, msgspec.Meta(ge=1, le=MAX_MEMBERS)] = 1


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record that broke the contract (or the pipeline): its bytes, where it was and why."""

    record: int
    reason: DeadLetterReason
    detail: str
    raw: bytes


class StringColumn(Sequence[str | None]):
    """A column of optional strings kept as UTF-8 spans of one buffer: row i is
    ``data[starts[i]:stops[i]]``, or None where ``starts[i] < 0``. Strings are made on access only
    (the signals need a handful of accounts per batch, not all of them).

    ``plain[i]`` is True when row i is None or ASCII without NUL (text that needs no Unicode
    normalisation before shingling)."""

    __slots__ = ("data", "plain", "starts", "stops")

    def __init__(
        self, data: np.ndarray, starts: np.ndarray, stops: np.ndarray, plain: np.ndarray
    ) -> None:
        self.data, self.starts, self.stops, self.plain = data, starts, stops, plain

    @classmethod
    def from_strings(cls, values: Sequence[str | None]) -> StringColumn:
        encoded = [v.encode("utf-8", "surrogatepass") if v is not None else b"" for v in values]
        lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
        stops = np.cumsum(lengths)
        starts = stops - lengths
        absent = np.fromiter((v is None for v in values), dtype=np.bool_, count=len(values))
        starts[absent], stops[absent] = -1, -1
        plain = np.fromiter(
            (v is None or (v.isascii() and "\x00" not in v) for v in values),
            dtype=np.bool_,
            count=len(values),
        )
        return cls(np.frombuffer(b"".join(encoded), dtype=np.uint8), starts, stops, plain)

    def __len__(self) -> int:
        return self.starts.shape[0]

    @overload
    def __getitem__(self, row: int) -> str | None: ...
    @overload
    def __getitem__(self, row: slice) -> list[str | None]: ...
    def __getitem__(self, row: int | slice) -> str | list[str | None] | None:
        if isinstance(row, slice):
            return list(self)[row]
        start = int(self.starts[row])  # numpy raises IndexError out of range
        if start < 0:
            return None
        return self.data[start : int(self.stops[row])].tobytes().decode("utf-8", "surrogatepass")

    def __iter__(self) -> Iterator[str | None]:
        data = self.data.tobytes()
        for start, stop in zip(self.starts.tolist(), self.stops.tolist(), strict=True):
            yield None if start < 0 else data[start:stop].decode("utf-8", "surrogatepass")

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (StringColumn, list, tuple)):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"StringColumn({list(self)!r})"

    def take(self, index: np.ndarray) -> StringColumn:
        """The rows at ``index`` (sharing the buffer)."""
        return StringColumn(self.data, self.starts[index], self.stops[index], self.plain[index])


class PackedRecords(Sequence[bytes]):
    """Raw records back to back in one buffer: record i is ``data[bounds[i]:bounds[i + 1]]``, with
    its source offset ``offsets[i]`` (a Kafka offset; a row number for files). What the Kafka source
    hands the pipeline: :func:`decode_batch` scans ``data`` as it is, with no join and no ``bytes``
    object per record."""

    __slots__ = ("bounds", "data", "offsets")

    def __init__(self, data: np.ndarray, bounds: np.ndarray, offsets: np.ndarray) -> None:
        self.data, self.bounds, self.offsets = data, bounds, offsets

    @classmethod
    def from_values(cls, values: Sequence[bytes], offsets: Sequence[int]) -> PackedRecords:
        bounds = np.zeros(len(values) + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, values), dtype=np.int64, count=len(values)), out=bounds[1:])
        data = np.frombuffer(b"".join(values), dtype=np.uint8)
        return cls(data, bounds, np.asarray(offsets, dtype=np.int64))

    @classmethod
    def concat(cls, parts: Sequence[PackedRecords]) -> PackedRecords:
        if len(parts) == 1:
            return parts[0]
        starts = np.cumsum([0] + [p.data.size for p in parts[:-1]])
        bounds = np.concatenate(
            [parts[0].bounds[:1]] + [p.bounds[1:] + s for p, s in zip(parts, starts, strict=True)]
        )
        data = np.concatenate([p.data for p in parts])
        return cls(data, bounds, np.concatenate([p.offsets for p in parts]))

    def __len__(self) -> int:
        return self.offsets.shape[0]

    @overload
    def __getitem__(self, row: int) -> bytes: ...
    @overload
    def __getitem__(self, row: slice) -> PackedRecords: ...
    def __getitem__(self, row: int | slice) -> bytes | PackedRecords:
        if isinstance(row, slice):
            start, stop, step = row.indices(len(self))
            if step != 1:
                raise ValueError("PackedRecords slices must be contiguous")
            stop = max(start, stop)
            first, last = int(self.bounds[start]), int(self.bounds[stop])
            return PackedRecords(
                self.data[first:last],
                self.bounds[start : stop + 1] - first,
                self.offsets[start:stop],
            )
        if not -len(self) <= row < len(self):
            raise IndexError(f"record {row} of {len(self)}")
        row %= len(self)
        return self.data[int(self.bounds[row]) : int(self.bounds[row + 1])].tobytes()

    def runs(self) -> list[PackedRecords]:
        """Maximal slices of consecutive offsets (offsets have gaps after transaction markers,
        aborted records and compaction)."""
        breaks = (np.flatnonzero(np.diff(self.offsets) != 1) + 1).tolist()
        edges = [0, *breaks, len(self)]
        return [self[a:b] for a, b in itertools.pairwise(edges) if b > a]

    def __repr__(self) -> str:
        first = int(self.offsets[0]) if len(self) else None
        return f"PackedRecords({len(self)} records, {self.data.size} bytes, first offset {first})"


@dataclass(frozen=True, slots=True)
class EventBatch:
    """Valid events of one batch as columns; see docs/architecture.md for the fields."""

    ts_ms: np.ndarray
    account: np.ndarray
    peer: np.ndarray
    type: np.ndarray
    flags: np.ndarray
    members: np.ndarray
    created_ms: np.ndarray
    network: np.ndarray
    record: np.ndarray
    accounts: StringColumn
    peers: StringColumn
    texts: StringColumn

    def __len__(self) -> int:
        return self.ts_ms.shape[0]

    @classmethod
    def empty(cls) -> EventBatch:
        return decode_batch([]).events

    def take(self, index: np.ndarray) -> EventBatch:
        """The rows at ``index`` (in that order) as a new batch."""
        return EventBatch(
            ts_ms=self.ts_ms[index],
            account=self.account[index],
            peer=self.peer[index],
            type=self.type[index],
            flags=self.flags[index],
            members=self.members[index],
            created_ms=self.created_ms[index],
            network=self.network[index],
            record=self.record[index],
            accounts=self.accounts.take(index),
            peers=self.peers.take(index),
            texts=self.texts.take(index),
        )


@dataclass(frozen=True, slots=True)
class DecodedBatch:
    events: EventBatch
    dead_letters: list[DeadLetter]


_decoder = msgspec.json.Decoder(RawEvent)


def account_id(account: str) -> int:
    """The stable 64-bit id of an account (or group) string, as the kernels see it."""
    return int(hash_strings([account])[0])


def decode_batch(records: Sequence[bytes]) -> DecodedBatch:
    """Decode raw JSON records; contract violations become dead letters, never exceptions.

    Two paths, one result: a Numba scan (``kernels.jsonscan``) reads the plain records of the batch
    straight into columns; the records it declines (escapes, unknown fields, anything invalid) go
    through msgspec and the contract checks one by one, which also name the dead letters' reasons.
    """
    n = len(records)
    if isinstance(records, PackedRecords):
        data = records.data
        scanned = jsonscan.scan_records(data, records.bounds, _SCAN_LIMITS)
    else:
        try:
            data = np.frombuffer(b"".join(records), dtype=np.uint8)
        except TypeError:  # a record that is not bytes-like: the slow path names it
            data = np.empty(0, dtype=np.uint8)
            scanned = jsonscan.new_scanned(n)
        else:
            bounds = np.zeros(n + 1, dtype=np.int64)
            np.cumsum(np.fromiter(map(len, records), dtype=np.int64, count=n), out=bounds[1:])
            scanned = jsonscan.scan_records(data, bounds, _SCAN_LIMITS)

    slow_rows: list[int] = []
    slow_events: list[RawEvent] = []
    dead: list[DeadLetter] = []
    for row in np.flatnonzero(~scanned.accepted).tolist():
        event, problem = _decode_one(records[row])
        if problem is None:
            slow_rows.append(row)
            slow_events.append(event)
        else:
            reason, detail = problem
            dead.append(DeadLetter(row, reason, detail, bytes(records[row])))
    flags = _scanned_flags(scanned)
    if scanned.unescaped.size:  # texts with escapes, unescaped: their spans continue past data
        data = np.concatenate([data, scanned.unescaped])
    if slow_rows:
        data = _merge_slow_rows(scanned, flags, data, slow_rows, slow_events)
    valid = scanned.accepted
    valid[slow_rows] = True
    return DecodedBatch(_columns(scanned, flags, data, np.flatnonzero(valid)), dead)


_SCAN_LIMITS = jsonscan.scan_limits(
    EVENT_TYPE_NAMES,
    tuple(name in _PEER_REQUIRED for name in EVENT_TYPE_NAMES),
    MIN_TS_MS,
    MAX_TS_MS,
    MAX_MEMBERS,
    MAX_RECORD_BYTES,
)


def _decode_one(raw: bytes) -> tuple[RawEvent | None, tuple[DeadLetterReason, str] | None]:
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        return None, (DeadLetterReason.WRONG_TYPE, f"record is {type(raw).__name__}, not bytes")
    if len(raw) > MAX_RECORD_BYTES:
        return None, (
            DeadLetterReason.TOO_LARGE,
            f"record of {len(raw)} bytes > {MAX_RECORD_BYTES}",
        )
    try:
        event = _decoder.decode(raw)
    except msgspec.ValidationError as exc:
        return None, _classify_validation_error(str(exc))
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        return None, (DeadLetterReason.INVALID_JSON, str(exc)[:200])
    return _check_rules(event)


def _classify_validation_error(message: str) -> tuple[DeadLetterReason, str]:
    if message.startswith("Object missing required field"):
        return DeadLetterReason.MISSING_FIELD, message
    return DeadLetterReason.WRONG_TYPE, message


def _check_rules(event: RawEvent) -> tuple[RawEvent | None, tuple[DeadLetterReason, str] | None]:
    if event.type not in _TYPE_CODES:
        return None, (DeadLetterReason.UNKNOWN_TYPE, f"unknown event type {event.type[:64]!r}")
    if not MIN_TS_MS <= event.ts <= MAX_TS_MS:
        return None, (
            DeadLetterReason.BAD_TIMESTAMP,
            f"ts {event.ts} outside [{MIN_TS_MS}, {MAX_TS_MS}]",
        )
    if event.peer is None and event.type in _PEER_REQUIRED:
        return None, (DeadLetterReason.MISSING_FIELD, f"`peer` is required for {event.type}")
    if event.text is not None and len(event.text) > MAX_TEXT_CHARS:
        return None, (
            DeadLetterReason.TOO_LARGE,
            f"text of {len(event.text)} chars > {MAX_TEXT_CHARS}",
        )
    if event.chat is not None and event.chat not in ("direct", "group"):
        return None, (DeadLetterReason.WRONG_TYPE, "`chat` must be 'direct' or 'group'")
    created = event.account_created
    if created is not None and not MIN_TS_MS <= created <= MAX_TS_MS:
        return None, (DeadLetterReason.BAD_TIMESTAMP, f"account_created {created} out of range")
    return event, None


# optional bool -> flag bits (plain ints: IntFlag arithmetic costs microseconds per event)
_CONTACT_BITS = {
    None: 0,
    False: int(Flag.CONTACT_KNOWN),
    True: int(Flag.CONTACT_KNOWN | Flag.IN_CONTACTS),
}
_TYPING_BITS = {None: 0, False: int(Flag.TYPING_KNOWN), True: int(Flag.TYPING_KNOWN | Flag.TYPING)}
_GROUP_CHAT, _HAS_TEXT = int(Flag.GROUP_CHAT), int(Flag.HAS_TEXT)
_FORWARDED, _BUSINESS = int(Flag.FORWARDED), int(Flag.BUSINESS)

# the scan's boolean field k is known at bit 2k and true at bit 2k + 1 of ``booleans``
_BOOLEAN_BITS = {
    jsonscan.F_IN_CONTACTS: (Flag.CONTACT_KNOWN, Flag.IN_CONTACTS),
    jsonscan.F_FORWARDED: (0, Flag.FORWARDED),
    jsonscan.F_TYPING: (Flag.TYPING_KNOWN, Flag.TYPING),
    jsonscan.F_BUSINESS: (0, Flag.BUSINESS),
}


def _flags(event: RawEvent) -> int:
    return (
        _CONTACT_BITS[event.in_contacts]
        | _TYPING_BITS[event.typing]
        | (_GROUP_CHAT if event.chat == "group" else 0)
        | (_HAS_TEXT if event.text is not None else 0)
        | (_FORWARDED if event.forwarded else 0)
        | (_BUSINESS if event.business else 0)
    )


def _scanned_flags(scanned: jsonscan.ScannedRecords) -> np.ndarray:
    booleans = scanned.booleans.astype(np.uint16)
    flags = np.where(scanned.group_chat, _GROUP_CHAT, 0).astype(np.uint16)
    flags |= np.where(scanned.spans[:, jsonscan.SPAN_TEXT, 0] >= 0, _HAS_TEXT, 0).astype(np.uint16)
    for pair, field in enumerate(jsonscan.BOOLEAN_FIELDS):
        known_flag, true_flag = _BOOLEAN_BITS[field]
        flags |= ((booleans >> (2 * pair)) & 1) * int(known_flag)
        flags |= ((booleans >> (2 * pair + 1)) & 1) * int(true_flag)
    return flags


def _merge_slow_rows(
    scanned: jsonscan.ScannedRecords,
    flags: np.ndarray,
    data: np.ndarray,
    rows: list[int],
    events: list[RawEvent],
) -> np.ndarray:
    """Write the slowly decoded events into the scan's columns; returns the string buffer with
    their strings appended (the scan's spans point into ``data``)."""
    scanned.type[rows] = [_TYPE_CODES[e.type] for e in events]
    scanned.ts_ms[rows] = [e.ts for e in events]
    scanned.created_ms[rows] = [c if (c := e.account_created) is not None else -1 for e in events]
    scanned.members[rows] = [e.members for e in events]
    flags[rows] = [_flags(e) for e in events]
    scanned.ids[rows, 0] = hash_strings([e.account for e in events])
    scanned.ids[rows, 1] = _optional_ids([e.peer for e in events])
    scanned.ids[rows, 2] = _optional_ids([e.ip for e in events])
    scanned.text_plain[rows] = [
        e.text is None or (e.text.isascii() and "\x00" not in e.text) for e in events
    ]
    extra: list[bytes] = []
    position = data.shape[0]
    for row, event in zip(rows, events, strict=True):
        for span, value in (
            (jsonscan.SPAN_ACCOUNT, event.account),
            (jsonscan.SPAN_PEER, event.peer),
            (jsonscan.SPAN_TEXT, event.text),
        ):
            if value is None:
                scanned.spans[row, span] = -1
                continue
            encoded = value.encode("utf-8", "surrogatepass")
            scanned.spans[row, span] = (position, position + len(encoded))
            position += len(encoded)
            extra.append(encoded)
    return np.concatenate([data, np.frombuffer(b"".join(extra), dtype=np.uint8)])


def _columns(
    scanned: jsonscan.ScannedRecords, flags: np.ndarray, data: np.ndarray, rows: np.ndarray
) -> EventBatch:
    types = scanned.type[rows]
    ts_ms = scanned.ts_ms[rows]
    created = scanned.created_ms[rows]
    is_registration = types == EventType.REGISTRATION
    created[is_registration] = ts_ms[is_registration]
    members = scanned.members[rows]
    members[types != EventType.GROUP_ADD] = 0
    spans = scanned.spans[rows]
    ids = scanned.ids[rows]
    everything_plain = np.ones(len(rows), dtype=np.bool_)

    def column(span: int, plain: np.ndarray) -> StringColumn:
        return StringColumn(data, spans[:, span, 0].copy(), spans[:, span, 1].copy(), plain)

    return EventBatch(
        ts_ms=ts_ms,
        account=ids[:, 0].copy(),
        peer=ids[:, 1].copy(),
        type=types,
        flags=flags[rows],
        members=members,
        created_ms=created,
        network=ids[:, 2].copy(),
        record=rows.astype(np.int64),
        accounts=column(jsonscan.SPAN_ACCOUNT, everything_plain),
        peers=column(jsonscan.SPAN_PEER, everything_plain),
        texts=column(jsonscan.SPAN_TEXT, scanned.text_plain[rows]),
    )


def _optional_ids(values: list[str | None]) -> np.ndarray:
    ids = np.zeros(len(values), dtype=np.uint64)
    present = [i for i, v in enumerate(values) if v is not None]
    if present:
        ids[present] = hash_strings([values[i] for i in present])
    return ids
