"""The Numba record scan against its reference: msgspec and the contract checks of detector.events.

Whatever the scan accepts, the slow path must accept with exactly the same values; and plain records
(the bulk of real traffic) must be accepted, or the fast path would be a slow path in disguise.
"""

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detector import events
from kernels import jsonscan
from kernels.strhash import hash_strings

T0 = 1_767_225_600_000

ids = st.text(
    alphabet=st.sampled_from(["+", "4", "7", "a", "é", "😀", " ", '"', "\\", "\n", "\x00"]),
    min_size=0,
    max_size=130,
)
plain_ids = st.text(alphabet="+0123456789abcxyz", min_size=1, max_size=128)
plain_texts = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters='"\\'),
    max_size=200,
)
any_value = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**65), 2**65),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([T0, 0, 1, 10**6, 10**6 + 1, events.MIN_TS_MS - 1, events.MAX_TS_MS + 1]),
    ids,
    st.sampled_from([*events.EVENT_TYPE_NAMES, "direct", "group", "Message"]),
    st.lists(st.integers(), max_size=2),
)
field_names = st.sampled_from([*jsonscan.FIELD_NAMES, "extra", "Type"])


@st.composite
def any_record(draw) -> bytes:
    """Objects of contract fields (and strangers) with values of every JSON type, formatted in
    every way json.dumps can, sometimes with surrounding whitespace or cut short."""
    fields = draw(st.dictionaries(field_names, any_value, max_size=10))
    base = {"type": "message", "ts": T0, "account": "+447700900001", "peer": "+4477"}
    if draw(st.booleans()):
        fields = {**base, **fields}
    text = json.dumps(
        fields,
        ensure_ascii=draw(st.booleans()),
        indent=draw(st.sampled_from([None, 0, 2])),
        separators=draw(st.sampled_from([None, (",", ":"), (" , ", " : ")])),
    )
    if draw(st.booleans()):
        text = " \n" + text + "\t "
    raw = text.encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 9)) == 0:
        raw = raw[: draw(st.integers(0, len(raw)))]
    return raw


@st.composite
def plain_record(draw) -> bytes:
    """A valid record as producers write it: known fields, right types, nothing to escape."""
    event_type = draw(st.sampled_from(events.EVENT_TYPE_NAMES))
    event = {
        "type": event_type,
        "ts": draw(st.integers(events.MIN_TS_MS, events.MAX_TS_MS)),
        "account": draw(plain_ids),
        "peer": draw(plain_ids),
    }
    optional = {
        "chat": st.sampled_from(["direct", "group", None]),
        "text": st.one_of(st.none(), plain_texts),
        "in_contacts": st.one_of(st.none(), st.booleans()),
        "forwarded": st.one_of(st.none(), st.booleans()),
        "typing": st.one_of(st.none(), st.booleans()),
        "business": st.one_of(st.none(), st.booleans()),
        "device": st.one_of(st.none(), plain_texts),
        "ip": st.one_of(st.none(), st.just("198.18.0.7")),
        "country": st.one_of(st.none(), st.just("GB")),
        "account_created": st.one_of(st.none(), st.integers(events.MIN_TS_MS, events.MAX_TS_MS)),
        "members": st.integers(1, events.MAX_MEMBERS),
    }
    for name in draw(st.lists(st.sampled_from(sorted(optional)), unique=True)):
        event[name] = draw(optional[name])
    return json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode()


def scan(records: list[bytes]) -> tuple[jsonscan.ScannedRecords, np.ndarray]:
    data = np.frombuffer(b"".join(records), dtype=np.uint8)
    offsets = np.zeros(len(records) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(r) for r in records])
    scanned = jsonscan.scan_records(data, offsets, events._SCAN_LIMITS)
    return scanned, np.concatenate([data, scanned.unescaped])


def span_text(data: np.ndarray, span: np.ndarray) -> str | None:
    start, stop = int(span[0]), int(span[1])
    return None if start < 0 else data[start:stop].tobytes().decode("utf-8")


def expected_id(value: str | None) -> int:
    return 0 if value is None else int(hash_strings([value])[0])


def assert_scan_agrees_with_the_slow_path(records: list[bytes]) -> int:
    scanned, data = scan(records)
    flags = events._scanned_flags(scanned)
    for row, raw in enumerate(records):
        if not scanned.accepted[row]:
            continue
        event, problem = events._decode_one(raw)
        assert problem is None, (raw, problem)
        assert scanned.type[row] == events._TYPE_CODES[event.type]
        assert scanned.ts_ms[row] == event.ts
        created = event.account_created if event.account_created is not None else -1
        assert scanned.created_ms[row] == created
        assert scanned.members[row] == event.members
        assert flags[row] == events._flags(event)
        spans = scanned.spans[row]
        assert span_text(data, spans[jsonscan.SPAN_ACCOUNT]) == event.account
        assert span_text(data, spans[jsonscan.SPAN_PEER]) == event.peer
        assert span_text(data, spans[jsonscan.SPAN_TEXT]) == event.text
        plain = event.text is None or (event.text.isascii() and "\x00" not in event.text)
        assert scanned.text_plain[row] == plain
        assert scanned.ids[row].tolist() == [
            expected_id(event.account),
            expected_id(event.peer),
            expected_id(event.ip),
        ]
    return int(scanned.accepted.sum())


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(any_record(), min_size=1, max_size=20))
def test_whatever_the_scan_accepts_the_slow_path_decodes_to_the_same_values(records):
    assert_scan_agrees_with_the_slow_path(records)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(plain_record(), min_size=1, max_size=20))
def test_plain_valid_records_take_the_fast_path(records):
    assert assert_scan_agrees_with_the_slow_path(records) == len(records)


@st.composite
def record_with_escaped_text(draw) -> bytes:
    """A valid message whose text needs escapes: quotes, backslashes, controls, non-ASCII as
    \\uXXXX (emoji as surrogate pairs) when ``ensure_ascii``."""
    event = {"type": "message", "ts": T0, "account": "+4477", "peer": "+4478"}
    event["text"] = draw(st.text(max_size=60)) + draw(st.sampled_from(['"', "\\", "\n", "\x00"]))
    return json.dumps(event, ensure_ascii=draw(st.booleans())).encode()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(record_with_escaped_text(), min_size=1, max_size=20))
def test_texts_with_escapes_take_the_fast_path_unescaped(records):
    assert assert_scan_agrees_with_the_slow_path(records) == len(records)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"type":"message","ts":1767225600000,"account":"a\\u00e9","peer":"b"}',  # escape
        b'{"type":"message","ts":1767225600000,"account":"a","peer":"b","x":1}',  # unknown
        b'{"type":"message","type":"block","ts":1767225600000,"account":"a","peer":"b"}',
        b'{"type":"message","ts":1767225600000.0,"account":"a","peer":"b"}',  # float
        b'{"type":"message","ts":01767225600000,"account":"a","peer":"b"}',  # leading zero
        b'{"type":"message","ts":1767225600000,"account":"a","peer":"b","members":null}',
        b'{"type":"message","ts":1767225600000,"account":"a"}',  # peer required
        b'{"type":"message","ts":1767225600000,"account":"","peer":"b"}',  # empty id
        b'{"type":"message","ts":1767225600000,"account":"a","peer":"b",}',  # trailing comma
        b'{"type":"message","ts":1767225600000,"account":"a","peer":"b"} x',  # trailing junk
        b'{"type":"message","ts":1767225600000,"account":"a\xed\xa0\x80","peer":"b"}',  # surrogate
        b'{"type":"message","ts":1767225600000,"account":"a\xc3","peer":"b"}',  # cut UTF-8
        b'{"type":"message","ts":1767225600000,"account":"a","peer":"b","chat":"dm"}',
        b'{"type":"message","ts":999,"account":"a","peer":"b"}',  # before 2000
        b'{"type":"message","ts":1767225600000,"account":"' + b"a" * 129 + b'","peer":"b"}',
        b'{"type":"message","ts":1767225600000,"account":"a","peer":"b","text":"\\ud800"}',
        b'{"type":"message","ts":1767225600000,"account":"a","peer":"b","text":"\\udc00x"}',
        b'{"type":"message","ts":1767225600000,"account":"a","peer":"b","text":"\\x41"}',
        b'{"type":"message","ts":1767225600000,"account":"a","peer":"b","text":"\\u12g4"}',
        b'{"type":"message","ts":1767225600000,"account":"a","peer":"b","text":"a\\"}',
        b"[]",
        b"",
    ],
)
def test_the_scan_declines_what_it_cannot_vouch_for(raw):
    scanned, _ = scan([raw])
    assert not scanned.accepted[0]


def test_decode_batch_gives_the_same_columns_on_either_path():
    """The same events, once plain and once escaped (declined by the scan), decode identically."""
    base = {"ts": T0, "account": "+447700900001", "peer": "+447700900002", "in_contacts": False}
    plain = [
        json.dumps({**base, "type": "message", "text": "Win £100 now", "typing": True}),
        json.dumps({**base, "type": "group_add", "members": 12, "ip": "198.18.0.1"}),
        json.dumps({**base, "type": "registration", "country": "GB", "device": "x"}),
    ]
    escaped = [json.dumps(json.loads(p), ensure_ascii=True).replace("+", "\\u002b") for p in plain]
    fast = events.decode_batch([p.encode() for p in plain]).events
    slow = events.decode_batch([e.encode() for e in escaped]).events
    for name in ("ts_ms", "account", "peer", "type", "flags", "members", "created_ms", "network"):
        assert np.array_equal(getattr(fast, name), getattr(slow, name)), name
    assert fast.accounts == slow.accounts and fast.peers == slow.peers
    assert fast.texts == slow.texts == ["Win £100 now", None, None]
    assert fast.texts.plain.tolist() == [False, True, True]


def test_scan_rejects_bad_arguments():
    with pytest.raises(TypeError):
        jsonscan.scan_records(b"{}", np.array([0, 2]), events._SCAN_LIMITS)
    with pytest.raises(ValueError, match="within data"):
        jsonscan.scan_records(np.zeros(2, np.uint8), np.array([0, 3]), events._SCAN_LIMITS)
    with pytest.raises(ValueError, match="ascending"):
        jsonscan.scan_records(np.zeros(4, np.uint8), np.array([0, 3, 2]), events._SCAN_LIMITS)
