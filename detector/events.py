"""The event contract (docs/events.md): decode raw records into a columnar batch plus dead letters.

Each raw record is one JSON object. Valid records become rows of an :class:`EventBatch` (numpy arrays,
ready for the kernels); every invalid record becomes a :class:`DeadLetter` that keeps the original bytes
and a reason code. Decoding never raises on bad input.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

import msgspec
import numpy as np

from kernels.strhash import hash_strings

MAX_ACCOUNT_CHARS = 128
MAX_TEXT_CHARS = 64 * 1024
MAX_RECORD_BYTES = 256 * 1024
MIN_TS_MS = 946_684_800_000  # 2000-01-01T00:00Z
MAX_TS_MS = 4_102_444_800_000  # 2100-01-01T00:00Z


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
    members: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 1


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record that broke the contract (or the pipeline): its bytes, where it was and why."""

    record: int
    reason: DeadLetterReason
    detail: str
    raw: bytes


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
    accounts: list[str]
    peers: list[str | None]
    texts: list[str | None]

    def __len__(self) -> int:
        return self.ts_ms.shape[0]

    @classmethod
    def empty(cls) -> EventBatch:
        return _columns([], [])

    def take(self, index: np.ndarray) -> EventBatch:
        """The rows at ``index`` (in that order) as a new batch."""
        rows = index.tolist()
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
            accounts=[self.accounts[i] for i in rows],
            peers=[self.peers[i] for i in rows],
            texts=[self.texts[i] for i in rows],
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
    """Decode raw JSON records; contract violations become dead letters, never exceptions."""
    events: list[RawEvent] = []
    positions: list[int] = []
    dead: list[DeadLetter] = []
    for position, raw in enumerate(records):
        event, problem = _decode_one(raw)
        if problem is None:
            events.append(event)
            positions.append(position)
        else:
            reason, detail = problem
            dead.append(DeadLetter(position, reason, detail, bytes(raw)))
    return DecodedBatch(_columns(events, positions), dead)


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


def _flags(event: RawEvent) -> int:
    return (
        _CONTACT_BITS[event.in_contacts]
        | _TYPING_BITS[event.typing]
        | (_GROUP_CHAT if event.chat == "group" else 0)
        | (_HAS_TEXT if event.text is not None else 0)
        | (_FORWARDED if event.forwarded else 0)
        | (_BUSINESS if event.business else 0)
    )


def _columns(events: list[RawEvent], positions: list[int]) -> EventBatch:
    n = len(events)
    accounts = [e.account for e in events]
    peers = [e.peer for e in events]
    peer_ids = _optional_ids(peers)
    network_ids = _optional_ids([e.ip for e in events])
    types = np.fromiter((_TYPE_CODES[e.type] for e in events), dtype=np.uint8, count=n)
    created = np.fromiter(
        (e.account_created if e.account_created is not None else -1 for e in events),
        dtype=np.int64,
        count=n,
    )
    ts_ms = np.fromiter((e.ts for e in events), dtype=np.int64, count=n)
    is_registration = types == EventType.REGISTRATION
    created[is_registration] = ts_ms[is_registration]
    members = np.fromiter((e.members for e in events), dtype=np.int32, count=n)
    members[types != EventType.GROUP_ADD] = 0
    return EventBatch(
        ts_ms=ts_ms,
        account=hash_strings(accounts),
        peer=peer_ids,
        type=types,
        flags=np.fromiter((_flags(e) for e in events), dtype=np.uint16, count=n),
        members=members,
        created_ms=created,
        network=network_ids,
        record=np.asarray(positions, dtype=np.int64),
        accounts=accounts,
        peers=peers,
        texts=[e.text for e in events],
    )


def _optional_ids(values: list[str | None]) -> np.ndarray:
    ids = np.zeros(len(values), dtype=np.uint64)
    present = [i for i, v in enumerate(values) if v is not None]
    if present:
        ids[present] = hash_strings([values[i] for i in present])
    return ids
