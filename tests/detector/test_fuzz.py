"""Fuzzing the decoder and the whole pipeline: nothing raises, every bad record is a dead letter with
its reason, and every valid record around the bad ones is processed."""

from __future__ import annotations

import json

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detector.content import ContentClusters
from detector.events import DeadLetterReason, decode_batch
from detector.network import NetworkActivity
from detector.pipeline import Pipeline
from detector.policy import load_policy
from detector.state import PartitionState
from kernels import accounts as account_kernels

T0 = 1_767_225_600_000
POLICY = load_policy()

tricky_text = st.text(
    alphabet=st.sampled_from(
        [
            "a",
            "b",
            " ",
            "\u200b",
            "\u200d",
            "\u202e",
            "\u2066",
            "\ufeff",
            "\x00",
            "é",
            "😀",
            "1",
            "/",
        ]
    ),
    max_size=80,
)
accounts = st.sampled_from(["+447700900001", "+447700900002", "bot", "\u202ebot", "a" * 128])
timestamps = st.one_of(
    st.integers(T0 - 120_000, T0 + 3_600_000),  # in and out of order, late and duplicate
    st.sampled_from([0, -1, 10**13, 2**63 - 1, 2**64, 10**30, T0]),
)
valid_event = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["message", "report", "block", "group_create", "group_add"]),
        "ts": st.integers(T0 - 120_000, T0 + 3_600_000),
        "account": accounts,
        "peer": accounts,
    },
    optional={
        "text": tricky_text,
        "in_contacts": st.booleans(),
        "typing": st.booleans(),
        "forwarded": st.booleans(),
        "business": st.booleans(),
        "members": st.integers(1, 5000),
        "ip": st.sampled_from(["198.18.0.1", "100.64.0.1"]),
    },
)
wrong_values = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(2**70), 2**70),
    st.text(max_size=10),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@st.composite
def broken_event(draw) -> bytes:
    event = dict(draw(valid_event))
    kind = draw(
        st.sampled_from(["field", "drop", "timestamp", "truncate", "nest", "bytes", "huge"])
    )
    if kind == "field":
        event[draw(st.sampled_from(sorted(event)))] = draw(wrong_values)
    elif kind == "drop":
        event.pop(draw(st.sampled_from(["type", "ts", "account", "peer"])))
    elif kind == "timestamp":
        event["ts"] = draw(timestamps)
    elif kind == "nest":
        depth = draw(st.integers(1, 3000))
        return b'{"type":"message","x":' + b"[" * depth + b"]" * depth + b"}"
    elif kind == "bytes":
        return draw(st.binary(max_size=64)) + b"\xff\xfe\xed"
    elif kind == "huge":
        event["text"] = "x" * draw(st.sampled_from([70_000, 300_000]))
    raw = json.dumps(event, allow_nan=True).encode("utf-8", "surrogatepass")
    if kind == "truncate":
        raw = raw[: draw(st.integers(0, max(len(raw) - 1, 0)))]
    return raw


records = st.lists(
    st.one_of(
        valid_event.map(lambda e: json.dumps(e).encode()),
        broken_event(),
        st.binary(max_size=40),
        st.just(b'{"type":"message","ts":1767225600000,"account":"a\\udc80","peer":"b"}'),
    ),
    max_size=40,
)


def fresh_pipeline() -> tuple[Pipeline, PartitionState]:
    pipeline = Pipeline(POLICY, ContentClusters(capacity=1024), NetworkActivity(capacity=1024))
    return pipeline, PartitionState.new(capacity=512, lateness_s=30, ttl_s=86_400)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(records, min_size=1, max_size=4))
def test_pipeline_never_raises_and_accounts_for_every_record(batches):
    pipeline, state = fresh_pipeline()
    for raw in batches:
        expected_valid = len(decode_batch(raw).events)
        result = pipeline.process(raw, state)
        assert len(result.events) + len(result.dead_letters) == len(raw)
        assert len(result.events) == expected_valid  # valid records around bad ones all processed
        assert sorted(d.record for d in result.dead_letters) == [
            d.record for d in result.dead_letters
        ]
        for dead in result.dead_letters:
            assert dead.reason in DeadLetterReason and dead.raw == raw[dead.record]
        assert int(result.events_by_type.sum()) == len(result.events)


def test_a_batch_of_only_bad_records_does_not_stall():
    pipeline, state = fresh_pipeline()
    raw = [b"", b"{", b"[]", b'{"type":"x","ts":1,"account":"a"}'] * 50
    result = pipeline.process(raw, state)
    assert len(result.events) == 0 and len(result.dead_letters) == 200
    good = json.dumps({"type": "message", "ts": T0, "account": "a", "peer": "b"}).encode()
    assert len(pipeline.process([good], state).events) == 1


def test_a_record_that_breaks_a_kernel_is_isolated(monkeypatch):
    """A kernel failure on one record dead-letters that record; the rest of the batch goes on."""
    pipeline, state = fresh_pipeline()
    poison = "+447700900666"
    real_update = account_kernels.update_accounts

    def fragile_update(state_, ts_ms, account, *rest):
        from detector.events import account_id

        if (account == np.uint64(account_id(poison))).any():
            raise FloatingPointError("kernel exploded")
        return real_update(state_, ts_ms, account, *rest)

    monkeypatch.setattr(account_kernels, "update_accounts", fragile_update)
    raw = [
        json.dumps({"type": "message", "ts": T0 + i, "account": acct, "peer": "p"}).encode()
        for i, acct in enumerate(["a", "b", poison, "c", "not-json"])
    ]
    raw[4] = b"not-json"
    result = pipeline.process(raw, state)
    assert result.events.accounts == ["a", "b", "c"]
    reasons = {d.record: d.reason for d in result.dead_letters}
    assert reasons == {2: DeadLetterReason.PROCESSING_ERROR, 4: DeadLetterReason.INVALID_JSON}
    assert "kernel exploded" in next(d.detail for d in result.dead_letters if d.record == 2)


def test_a_failure_after_the_account_stage_does_not_count_events_twice(monkeypatch):
    """Retrying the content/policy stage record by record must not re-apply account updates."""
    pipeline, state = fresh_pipeline()
    poison = "+447700900666"
    real_assign = pipeline.content.assign

    def fragile_assign(ts_ms, account, *rest):
        from detector.events import account_id

        if (account == np.uint64(account_id(poison))).any():
            raise ValueError("content exploded")
        return real_assign(ts_ms, account, *rest)

    monkeypatch.setattr(pipeline.content, "assign", fragile_assign)
    raw = [
        json.dumps({"type": "message", "ts": T0 + i, "account": acct, "peer": f"p{i}"}).encode()
        for i, acct in enumerate(["a", "a", poison, "a"])
    ]
    result = pipeline.process(raw, state)
    assert result.events.accounts == ["a", "a", "a"]
    assert {d.record: d.reason for d in result.dead_letters} == {
        2: DeadLetterReason.PROCESSING_ERROR
    }

    monkeypatch.setattr(pipeline.content, "assign", real_assign)
    follow_up = [
        json.dumps({"type": "message", "ts": T0 + 10, "account": "a", "peer": "q"}).encode()
    ]
    after = pipeline.process(follow_up, state)
    assert int(after.inputs.accounts.msgs_1m[0]) == 4  # three before, once each, plus this one
