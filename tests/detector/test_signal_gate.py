"""The signal gate: one signal per escalation or cooldown, and its batch pre-filter."""

import copy

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.policy import SignalGate

COOLDOWN_MS = 1_000.0


def test_admits_escalations_and_repeats_after_the_cooldown_only():
    gate = SignalGate()
    assert gate.admit(7, False, 1, 0, COOLDOWN_MS)
    assert not gate.admit(7, False, 1, 999, COOLDOWN_MS)  # same level, within the cooldown
    assert gate.admit(7, False, 2, 1_000, COOLDOWN_MS)  # escalation at once
    assert not gate.admit(7, False, 1, 5_000, COOLDOWN_MS)  # lower level: never
    assert gate.admit(7, False, 2, 2_000, COOLDOWN_MS)  # same level after the cooldown
    assert gate.admit(7, True, 1, 2_000, COOLDOWN_MS)  # shadow signals are gated apart


rows = st.lists(st.tuples(st.integers(1, 4), st.integers(1, 3), st.integers(0, 5_000)), max_size=60)


@settings(max_examples=300, deadline=None)
@given(history=rows, batch=rows, shadow=st.booleans())
def test_the_prefilter_never_hides_a_row_the_gate_would_admit(history, batch, shadow):
    gate = SignalGate()
    for subject, action, ts in history:
        gate.admit(subject, shadow, action, ts, COOLDOWN_MS)
    subjects = np.array([r[0] for r in batch], dtype=np.uint64)
    actions = np.array([r[1] for r in batch], dtype=np.int64)
    ts_ms = np.array([r[2] for r in batch], dtype=np.int64) + 3_000 * np.arange(len(batch)) // 7
    may = gate.may_admit(subjects, shadow, actions, ts_ms, COOLDOWN_MS)
    exact = copy.deepcopy(gate)
    admitted = [
        exact.admit(int(s), shadow, int(a), int(t), COOLDOWN_MS)
        for s, a, t in zip(subjects, actions, ts_ms, strict=True)
    ]
    assert all(m for m, a in zip(may.tolist(), admitted, strict=True) if a)
    # and it filters: a row refused by the state before the batch is never a candidate
    refused_upfront = [
        not copy.deepcopy(gate).admit(int(s), shadow, int(a), int(t), COOLDOWN_MS)
        for s, a, t in zip(subjects, actions, ts_ms, strict=True)
    ]
    assert not any(m and r for m, r in zip(may.tolist(), refused_upfront, strict=True))
