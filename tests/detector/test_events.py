"""The event contract: every rule, every dead-letter reason, and bad input that never raises."""

import json

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.events import (
    MAX_RECORD_BYTES,
    DeadLetterReason,
    EventType,
    Flag,
    PackedRecords,
    account_id,
    decode_batch,
)

TS = 1_767_225_600_000


def record(**fields) -> bytes:
    return json.dumps(fields).encode()


def message(**extra) -> dict:
    return {
        "type": "message",
        "ts": TS,
        "account": "+447700900001",
        "peer": "+447700900002",
        **extra,
    }


def test_valid_events_of_every_type_become_columns():
    records = [
        record(**message(text="hi", in_contacts=True, typing=False, forwarded=True, chat="direct")),
        record(type="registration", ts=TS + 1, account="+447700900003", country="GB"),
        record(type="report", ts=TS + 2, account="+447700900002", peer="+447700900001"),
        record(type="block", ts=TS + 3, account="+447700900002", peer="+447700900001"),
        record(type="group_create", ts=TS + 4, account="+447700900001", peer="g1"),
        record(type="group_add", ts=TS + 5, account="+447700900001", peer="g1", members=7),
    ]
    decoded = decode_batch(records)
    batch = decoded.events
    assert decoded.dead_letters == []
    assert batch.type.tolist() == [t.value for t in EventType]
    assert batch.ts_ms.tolist() == [TS + i for i in range(6)]
    assert batch.ts_ms.dtype == np.int64 and batch.account.dtype == np.uint64
    assert batch.peer.dtype == np.uint64 and batch.flags.dtype == np.uint16
    assert batch.account[0] == account_id("+447700900001")
    assert batch.peer[0] == account_id("+447700900002")
    assert batch.peer[1] == 0  # registration has no peer
    assert batch.members.tolist() == [0, 0, 0, 0, 0, 7]
    assert batch.created_ms.tolist() == [-1, TS + 1, -1, -1, -1, -1]
    assert batch.record.tolist() == list(range(6))
    assert batch.texts == ["hi", None, None, None, None, None]
    assert batch.peers[2] == "+447700900001" and batch.accounts[2] == "+447700900002"
    expected = (
        Flag.HAS_TEXT | Flag.CONTACT_KNOWN | Flag.IN_CONTACTS | Flag.TYPING_KNOWN | Flag.FORWARDED
    )
    assert batch.flags[0] == expected


@pytest.mark.parametrize(
    ("fields", "bits"),
    [
        ({}, 0),
        ({"in_contacts": False}, Flag.CONTACT_KNOWN),
        ({"in_contacts": True}, Flag.CONTACT_KNOWN | Flag.IN_CONTACTS),
        ({"typing": True}, Flag.TYPING_KNOWN | Flag.TYPING),
        ({"typing": None}, 0),
        ({"chat": "group"}, Flag.GROUP_CHAT),
        ({"business": True}, Flag.BUSINESS),
        ({"business": False, "forwarded": False}, 0),
    ],
)
def test_flags(fields, bits):
    batch = decode_batch([record(**message(**fields))]).events
    assert batch.flags[0] == bits


def test_unknown_fields_are_ignored_and_account_created_is_kept():
    batch = decode_batch([record(**message(colour="blue", account_created=TS - 5000))]).events
    assert len(batch) == 1 and batch.created_ms[0] == TS - 5000


def test_group_add_members_defaults_to_one():
    batch = decode_batch([record(type="group_add", ts=TS, account="a", peer="g")]).events
    assert batch.members.tolist() == [1]


BAD_RECORDS = [
    (b'{"type": "message", "ts": 1', DeadLetterReason.INVALID_JSON),
    (b"not json", DeadLetterReason.INVALID_JSON),
    (b"\xff\xfe{}", DeadLetterReason.INVALID_JSON),
    (b'{"type":"message","ts":NaN,"account":"a","peer":"b"}', DeadLetterReason.INVALID_JSON),
    (
        b'{"type":"message","ts":1767225600000,"account":"a\\ud800","peer":"b"}',
        DeadLetterReason.INVALID_JSON,
    ),
    (record(ts=TS, account="a", peer="b"), DeadLetterReason.MISSING_FIELD),
    (record(type="message", account="a", peer="b"), DeadLetterReason.MISSING_FIELD),
    (record(type="message", ts=TS, peer="b"), DeadLetterReason.MISSING_FIELD),
    (record(type="message", ts=TS, account="a"), DeadLetterReason.MISSING_FIELD),
    (record(type="report", ts=TS, account="a"), DeadLetterReason.MISSING_FIELD),
    (record(type="group_add", ts=TS, account="a", peer=None), DeadLetterReason.MISSING_FIELD),
    (record(type="message", ts=str(TS), account="a", peer="b"), DeadLetterReason.WRONG_TYPE),
    (record(type="message", ts=float(TS), account="a", peer="b"), DeadLetterReason.WRONG_TYPE),
    (record(type="message", ts=TS, account=5, peer="b"), DeadLetterReason.WRONG_TYPE),
    (record(type="message", ts=TS, account="", peer="b"), DeadLetterReason.WRONG_TYPE),
    (record(type="message", ts=TS, account="x" * 129, peer="b"), DeadLetterReason.WRONG_TYPE),
    (record(**message(in_contacts="yes")), DeadLetterReason.WRONG_TYPE),
    (record(**message(chat="broadcast")), DeadLetterReason.WRONG_TYPE),
    (record(**message(text=12)), DeadLetterReason.WRONG_TYPE),
    (
        record(type="group_add", ts=TS, account="a", peer="g", members=0),
        DeadLetterReason.WRONG_TYPE,
    ),
    (b"[1, 2]", DeadLetterReason.WRONG_TYPE),
    (record(type="poke", ts=TS, account="a"), DeadLetterReason.UNKNOWN_TYPE),
    (record(**message(text="x" * (64 * 1024 + 1))), DeadLetterReason.TOO_LARGE),
    (b" " * (MAX_RECORD_BYTES + 1), DeadLetterReason.TOO_LARGE),
    (record(type="message", ts=1, account="a", peer="b"), DeadLetterReason.BAD_TIMESTAMP),
    (record(type="message", ts=10**19, account="a", peer="b"), DeadLetterReason.BAD_TIMESTAMP),
    (record(type="message", ts=-TS, account="a", peer="b"), DeadLetterReason.BAD_TIMESTAMP),
    (record(**message(account_created=5)), DeadLetterReason.BAD_TIMESTAMP),
]


@pytest.mark.parametrize(("raw", "reason"), BAD_RECORDS)
def test_every_contract_violation_is_a_dead_letter_with_its_reason(raw, reason):
    good = record(**message())
    decoded = decode_batch([good, raw, good])
    assert len(decoded.events) == 2
    assert decoded.events.record.tolist() == [0, 2]
    [dead] = decoded.dead_letters
    assert dead.reason == reason, dead.detail
    assert dead.record == 1
    assert dead.raw == raw


def test_text_of_exactly_64_kib_is_accepted():
    decoded = decode_batch([record(**message(text="x" * 64 * 1024))])
    assert len(decoded.events) == 1


def test_account_ids_are_stable_and_never_zero():
    assert account_id("+447700900001") == account_id("+447700900001")
    assert account_id("+447700900001") != account_id("+447700900002")
    ids = decode_batch([record(**message(account=f"u{i}")) for i in range(1000)]).events.account
    assert len(set(ids.tolist())) == 1000 and (ids != 0).all()


def test_take_selects_rows():
    batch = decode_batch([record(**message(account=f"u{i}", text=str(i))) for i in range(5)]).events
    part = batch.take(np.array([3, 1]))
    assert part.accounts == ["u3", "u1"] and part.texts == ["3", "1"]
    assert part.account.tolist() == [batch.account[3], batch.account[1]]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
field_names = st.sampled_from(
    [
        "type",
        "ts",
        "account",
        "peer",
        "chat",
        "text",
        "in_contacts",
        "members",
        "typing",
        "business",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=20))
def test_random_bytes_never_raise_and_are_accounted_for(records):
    decoded = decode_batch(records)
    assert len(decoded.events) + len(decoded.dead_letters) == len(records)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(field_names, json_values, max_size=10))
def test_random_objects_are_either_valid_or_dead_letters(obj):
    raw = msgspec.json.encode(obj) if _encodable(obj) else b"{}"
    decoded = decode_batch([raw])
    assert len(decoded.events) + len(decoded.dead_letters) == 1
    for dead in decoded.dead_letters:
        assert dead.reason in DeadLetterReason and dead.raw == raw


def _encodable(obj) -> bool:
    try:
        msgspec.json.encode(obj)
    except (TypeError, ValueError, OverflowError):
        return False
    return True


def test_packed_records_read_slice_concat_and_split_like_a_list():
    values = [b"a", b"", b"bcd", b"ef"]
    packed = PackedRecords.from_values(values, [10, 11, 13, 14])
    assert list(packed) == values and len(packed) == 4
    assert packed[-1] == b"ef"
    with pytest.raises(IndexError):
        packed[4]
    tail = packed[2:]
    assert list(tail) == [b"bcd", b"ef"] and tail.bounds[0] == 0
    assert tail.offsets.tolist() == [13, 14]
    joined = PackedRecords.concat([packed[:1], packed[1:3], tail])
    assert list(joined) == values[:3] + values[2:]
    assert [list(run) for run in packed.runs()] == [[b"a", b""], [b"bcd", b"ef"]]
    assert [run.offsets.tolist() for run in packed.runs()] == [[10, 11], [13, 14]]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.sampled_from([record(**message()), record(**message(text="hé\\n")), b"{", b""])))
def test_packed_records_decode_exactly_as_a_list_of_bytes(records):
    from_list = decode_batch(records)
    from_packed = decode_batch(PackedRecords.from_values(records, range(len(records))))
    assert from_packed.dead_letters == from_list.dead_letters
    assert from_packed.events.record.tolist() == from_list.events.record.tolist()
    assert from_packed.events.account.tolist() == from_list.events.account.tolist()
    assert list(from_packed.events.texts) == list(from_list.events.texts)
