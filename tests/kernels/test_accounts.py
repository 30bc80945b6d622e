"""kernels.accounts against the pure-Python reference on random streams, plus edge cases."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernels import accounts as ak
from kernels import hll
from tests.kernels.reference_accounts import (
    BLOCK,
    BUSINESS,
    GROUP_ADD,
    GROUP_CREATE,
    MESSAGE,
    REGISTRATION,
    REPORT,
    AccountModel,
    Event,
    ReferenceAccounts,
    decode_gap_ms,
    encode_gap_ms,
    features_of,
    fmix64,
)

T0 = 1_700_000_000_000  # ms
HOUR_MS = 3_600_000
ACCOUNTS = [1, 2, 3, 0xDEADBEEF12345678, 0x8000000000000001, 77]
EXTRA_PEERS = [1000 + k for k in range(10)]
COUNT_FIELDS = [
    name for name, dtype in ak.FEATURE_DTYPES.items() if dtype not in (np.float32, np.bool_)
]
RECIPIENT_FIELDS = ["recipients_1h", "recipients_24h", "business_recipients_24h"]
FLOAT_FIELDS = ["gap_cv", "gap_mean_s", "age_s"]

SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Time steps between consecutive events (ms) and their weights per stream profile: duplicates, ms,
# seconds, minutes, hours, days (TTL expiry, log wrap-around), steps back in time (within and beyond
# the default 30 s lateness). "burst" keeps accounts busy enough to be promoted to heavy rows.
_STEP_KINDS = [
    st.just(0),
    st.integers(1, 2_000),
    st.integers(1_000, 20_000),
    st.integers(20_000, 400_000),
    st.integers(400_000, 3 * HOUR_MS),
    st.integers(3 * HOUR_MS, 30 * HOUR_MS),
    st.integers(30 * HOUR_MS, 80 * HOUR_MS),
    st.integers(-45_000, -1),
]
_PROFILES = {
    "burst": [4, 8, 4, 1, 0, 0, 0, 3],
    "day": [2, 4, 6, 4, 2, 1, 0, 3],
    "mixed": [3, 6, 6, 3, 2, 1, 1, 3],
    "sessions": [4, 8, 4, 1, 0, 0, 1, 3],  # bursts days apart
}
_STEPS = {
    name: st.one_of(*[kind for kind, w in zip(_STEP_KINDS, weights, strict=True) for _ in range(w)])
    for name, weights in _PROFILES.items()
}


@st.composite
def streams(draw, accounts=ACCOUNTS, peers=None, max_size=160):
    """A list of events: mostly messages, a few of every other type, duplicated events included."""
    accounts = accounts[: draw(st.integers(1, len(accounts)))]
    peers = [0, *accounts, *EXTRA_PEERS] if peers is None else peers
    steps = _STEPS[draw(st.sampled_from(sorted(_STEPS)))]
    kinds = [MESSAGE] * 8 + [REGISTRATION, REPORT, BLOCK, GROUP_CREATE, GROUP_ADD]
    n = draw(st.integers(1, max_size))
    events: list[Event] = []
    t = T0
    for _ in range(n):
        if events and draw(st.integers(0, 19)) == 0:
            events.append(events[-1])  # an exact duplicate
            continue
        t = max(0, t + draw(steps))
        kind = draw(st.sampled_from(kinds))
        created = -1
        if kind == REGISTRATION:
            created = t
        elif kind == MESSAGE and draw(st.booleans()):
            created = t - draw(st.integers(0, 400 * 86_400_000))
        events.append(
            Event(
                ts_ms=t,
                account=draw(st.sampled_from(accounts)),
                peer=draw(st.sampled_from(peers)),
                type=kind,
                flags=draw(st.integers(0, 0xFFFF)),
                members=draw(st.integers(-5, 70_000)) if kind == GROUP_ADD else 0,
                created_ms=created,
            )
        )
    return events


def columns(events: list[Event]) -> dict[str, np.ndarray]:
    return {
        "ts_ms": np.array([e.ts_ms for e in events], dtype=np.int64),
        "account": np.array([e.account for e in events], dtype=np.uint64),
        "peer": np.array([e.peer for e in events], dtype=np.uint64),
        "event_type": np.array([e.type for e in events], dtype=np.uint8),
        "flags": np.array([e.flags for e in events], dtype=np.uint16),
        "members": np.array([e.members for e in events], dtype=np.int32),
        "created_ms": np.array([e.created_ms for e in events], dtype=np.int64),
    }


def run(state: ak.AccountState, events: list[Event], cuts=()) -> dict[str, np.ndarray]:
    """Feed ``events`` in batches split at ``cuts``; features concatenated over the batches."""
    bounds = [0, *sorted(c for c in cuts if 0 < c < len(events)), len(events)]
    parts = []
    for lo, hi in itertools.pairwise(bounds):
        parts.append(ak.update_accounts(state, **columns(events[lo:hi])))
    return {name: np.concatenate([getattr(p, name) for p in parts]) for name in ak.FEATURE_DTYPES}


def reference_columns(rows: list[dict]) -> dict[str, np.ndarray]:
    return {
        name: np.array([r[name] for r in rows], dtype=dtype)
        for name, dtype in ak.FEATURE_DTYPES.items()
    }


def first_difference(got: np.ndarray, want: np.ndarray) -> int:
    bad = ~(
        (got == want) | (np.isnan(got) & np.isnan(want)) if got.dtype.kind == "f" else got == want
    )
    return int(np.flatnonzero(bad)[0])


def assert_features(got, want, events, *, recipient_tolerance=None, float_rtol=2e-6):
    for name in ak.FEATURE_DTYPES:
        g, w = got[name], want[name]
        if name in FLOAT_FIELDS:
            ok = np.isclose(g, w, rtol=float_rtol, atol=0, equal_nan=True)
        elif name in RECIPIENT_FIELDS and recipient_tolerance is not None:
            ok = np.abs(g - w) <= recipient_tolerance(w)
        else:
            ok = g == w
        if not ok.all():
            i = int(np.flatnonzero(~ok)[0])
            raise AssertionError(
                f"{name} differs at event {i}: kernel {g[i]} reference {w[i]}; {events[i]}"
            )


def assert_counters(state, reference: ReferenceAccounts):
    stats = ak.account_state_stats(state)
    assert stats["late_events"] == reference.late_events
    assert stats["evictions"] == reference.evictions
    assert stats["expirations"] == reference.expirations
    assert stats["unattributed_events"] == reference.unattributed
    assert stats["tracked"] == reference.tracked()
    return stats


def exact_state(capacity=64, **kwargs):
    """Pools large enough that nothing is lost: the kernel must equal the reference."""
    options = {"heavy_capacity": capacity, "pair_capacity": 4096, "sketch_capacity": 0} | kwargs
    return ak.new_account_state(capacity, **options)


# ------------------------------------------------------------------------------------------------
# Exact agreement with the reference


@SETTINGS
@given(events=streams(), cuts=st.lists(st.integers(1, 160), max_size=4))
def test_features_match_reference(events, cuts):
    state = exact_state()
    reference = ReferenceAccounts(64)
    got = run(state, events, cuts)
    assert_features(got, reference_columns(reference.update(events)), events)
    stats = assert_counters(state, reference)
    assert stats["heavy_evictions"] == 0 and stats["pair_evictions"] == 0


@SETTINGS
@given(
    events=streams(accounts=list(range(1, 13)), max_size=120),
    capacity=st.integers(1, 6),
    probe=st.integers(1, 4),
    lateness_s=st.sampled_from([0, 5, 30]),
    ttl_s=st.sampled_from([60, 3_600, 2 * 86_400, ak.MAX_TTL_S]),
)
def test_tiny_table_evicts_and_expires_like_reference(events, capacity, probe, lateness_s, ttl_s):
    state = exact_state(capacity, probe=probe, lateness_s=lateness_s, ttl_s=ttl_s)
    reference = ReferenceAccounts(capacity, probe=probe, lateness_s=lateness_s, ttl_s=ttl_s)
    got = run(state, events)
    assert_features(got, reference_columns(reference.update(events)), events)
    stats = assert_counters(state, reference)
    assert stats["tracked"] <= capacity


@settings(SETTINGS, max_examples=60)
@given(
    events=streams(accounts=list(range(1, 41)), max_size=150),
    capacity=st.integers(ak.EVICTION_SCAN + 1, ak.EVICTION_SCAN + 8),
    probe=st.integers(ak.EVICTION_SCAN + 1, ak.EVICTION_SCAN + 8),
    ttl_s=st.sampled_from([60, 3_600, 2 * 86_400]),
)
def test_probe_window_wider_than_eviction_scan_like_reference(events, capacity, probe, ttl_s):
    """New accounts take any empty slot of the window; a full window evicts among its first
    EVICTION_SCAN slots only."""
    state = exact_state(capacity, probe=probe, ttl_s=ttl_s)
    reference = ReferenceAccounts(capacity, probe=probe, ttl_s=ttl_s)
    got = run(state, events)
    assert_features(got, reference_columns(reference.update(events)), events)
    assert_counters(state, reference)


def test_table_full_evicts_least_recently_active():
    state = exact_state(2, probe=2)
    reference = ReferenceAccounts(2, probe=2)
    events = [
        Event(T0, 1, 5, MESSAGE, 0, 0, -1),
        Event(T0 + 1_000, 2, 5, MESSAGE, 0, 0, -1),
        Event(T0 + 2_000, 1, 6, MESSAGE, 0, 0, -1),  # 1 is now more recent than 2
        Event(T0 + 3_000, 3, 5, MESSAGE, 0, 0, -1),  # evicts 2
        Event(T0 + 4_000, 1, 7, MESSAGE, 0, 0, -1),  # 1 kept its history: 3 messages
        Event(T0 + 5_000, 2, 5, MESSAGE, 0, 0, -1),  # 2 comes back fresh, evicts 3
    ]
    got = run(state, events)
    assert_features(got, reference_columns(reference.update(events)), events)
    assert list(got["msgs_1m"]) == [1, 1, 2, 1, 3, 1]
    assert ak.account_state_stats(state)["evictions"] == 2


@SETTINGS
@given(events=streams(), cut=st.integers(1, 159))
def test_restored_state_equals_never_stopped(events, cut, tmp_path_factory):
    cut = min(cut, len(events))
    path = tmp_path_factory.mktemp("state") / "accounts.npz"
    straight = exact_state(
        16, heavy_capacity=3, pair_capacity=64, sketch_capacity=1, exact_recipients=2
    )
    first = run(straight, events[:cut])
    ak.save_account_state(straight, path, event_time_ms=12345)
    restored, event_time = ak.load_account_state(path)
    assert event_time == 12345
    for name in ak.AccountState._fields:
        np.testing.assert_array_equal(getattr(restored, name), getattr(straight, name))
    after_restore = run(restored, events[cut:])
    never_stopped = run(straight, events[cut:])
    for name in ak.FEATURE_DTYPES:
        np.testing.assert_array_equal(after_restore[name], never_stopped[name], err_msg=name)
    for name in ak.AccountState._fields:
        np.testing.assert_array_equal(
            getattr(restored, name), getattr(straight, name), err_msg=name
        )
    assert first["late"].shape == (cut,)


# ------------------------------------------------------------------------------------------------
# Sketches and pool pressure


@SETTINGS
@given(
    events=streams(accounts=[1, 2], peers=[0, *range(100, 400)], max_size=200),
    exact_recipients=st.integers(0, 6),
)
def test_sketch_estimates_within_bound(events, exact_recipients):
    state = exact_state(sketch_capacity=4, exact_recipients=exact_recipients)
    reference = ReferenceAccounts(64)
    got = run(state, events)
    # HLL (m=4096) at these small counts: a register collision makes the estimate ~1 low.
    assert_features(
        got,
        reference_columns(reference.update(events)),
        events,
        recipient_tolerance=lambda true: 0.05 * true + 1.5,
    )


@SETTINGS
@given(events=streams(), heavy_capacity=st.integers(1, 2))
def test_small_heavy_pool_is_exact_unless_it_evicts(events, heavy_capacity):
    """Reclaiming the heavy row of an account idle for 24 h loses nothing; only evicting an active
    one does, and then counts can only be lower than the truth."""
    state = exact_state(heavy_capacity=heavy_capacity, ttl_s=10 * 86_400)
    want = reference_columns(ReferenceAccounts(64, ttl_s=10 * 86_400).update(events))
    got = run(state, events)
    if ak.account_state_stats(state)["heavy_evictions"] == 0:
        assert_features(got, want, events)
    else:
        for name in COUNT_FIELDS + RECIPIENT_FIELDS:
            assert (got[name] <= want[name]).all(), name


@pytest.mark.parametrize("seed", range(3))
def test_sketch_relative_error_from_1000_recipients(seed):
    """One bulk sender: 40k messages to fresh recipients over 30 h; the 1 h and 24 h distinct counts
    (exact pairs + sliding HLL) stay within 5 % of the truth whenever the truth is >= 1,000."""
    rng = np.random.default_rng(seed)
    n = 40_000
    ts = T0 + np.sort(rng.integers(0, 30 * HOUR_MS, size=n)).astype(np.int64)
    peers = rng.choice(np.arange(1, 30_000, dtype=np.uint64), size=n).astype(np.uint64)
    flags = np.where(rng.random(n) < 0.5, BUSINESS, 0).astype(np.uint16)
    state = ak.new_account_state(64, pair_capacity=1 << 14, sketch_capacity=2, exact_recipients=300)
    out = ak.update_accounts(
        state,
        ts,
        np.full(n, 9, dtype=np.uint64),
        peers,
        np.zeros(n, dtype=np.uint8),
        flags,
        np.zeros(n, dtype=np.int32),
        np.full(n, -1, dtype=np.int64),
    )
    stats = ak.account_state_stats(state)
    assert stats["sketch_promotions"] == 2 and stats["sketch_denied"] == 0
    checked = 0
    for i in range(0, n, 997):  # checkpoints
        now_s = int(ts[: i + 1].max()) // 1000
        t_s = ts[: i + 1] // 1000
        in_1h = t_s // 300 > now_s // 300 - 12
        in_24h = t_s // 3600 > now_s // 3600 - 24
        business = flags[: i + 1] == BUSINESS
        for estimate, mask in (
            (out.recipients_1h[i], in_1h),
            (out.recipients_24h[i], in_24h),
            (out.business_recipients_24h[i], in_24h & business),
        ):
            true = len(np.unique(peers[: i + 1][mask]))
            if true >= hll.ERROR_BOUND_FROM:
                checked += 1
                assert abs(estimate / true - 1) <= hll.RELATIVE_ERROR_BOUND, (i, estimate, true)
            elif true <= 300:  # below exact_recipients nothing was sketched yet (1 h window aside)
                pass
    assert checked > 50


def test_heavy_pool_pressure_only_undercounts():
    """With one heavy row for many busy accounts, promoted accounts steal it from each other; every
    count stays <= the truth and the evictions are counted."""
    rng = np.random.default_rng(7)
    events = [
        Event(T0 + 200 * k, int(rng.integers(1, 6)), int(rng.integers(100, 130)), MESSAGE, 0, 0, -1)
        for k in range(3_000)
    ]
    state = ak.new_account_state(64, heavy_capacity=1, pair_capacity=4096, sketch_capacity=0)
    got = run(state, events)
    want = reference_columns(ReferenceAccounts(64).update(events))
    for name in COUNT_FIELDS + RECIPIENT_FIELDS:
        assert (got[name] <= want[name]).all(), name
    stats = ak.account_state_stats(state)
    assert stats["heavy_evictions"] > 0 and stats["heavy_used"] == 1


def test_idle_heavy_row_is_reclaimed_without_loss():
    """Account 1 goes heavy, then idles for 30 h: its row is reclaimed by account 2 without any
    feature changing from the reference."""
    events = [Event(T0 + k * 1_000, 1, 100 + k, MESSAGE, 0, 0, -1) for k in range(20)]
    later = T0 + 30 * HOUR_MS
    events += [Event(later + k * 1_000, 2, 200 + k, MESSAGE, 0, 0, -1) for k in range(20)]
    events += [Event(later + 60_000, 1, 100, MESSAGE, 0, 0, -1)]
    state = ak.new_account_state(8, heavy_capacity=1, pair_capacity=256, sketch_capacity=0)
    reference = ReferenceAccounts(8)
    got = run(state, events)
    assert_features(got, reference_columns(reference.update(events)), events)
    stats = ak.account_state_stats(state)
    assert stats["heavy_reclaims"] == 1 and stats["heavy_evictions"] == 0


HOUR_START = (T0 // HOUR_MS + 1) * HOUR_MS


@pytest.mark.parametrize(
    ("others_at", "back_at"),
    [
        (HOUR_START + 23 * HOUR_MS + 600_000, HOUR_START + 23 * HOUR_MS + 1_200_000),
        (HOUR_START + 24 * HOUR_MS + 10_000, HOUR_START + 24 * HOUR_MS - 19_000),  # back late
    ],
)
def test_pairs_still_in_a_window_are_not_reused_silently(others_at, back_at):
    """Account 1 messages recipient 5 in hour H; account 2 then fills the pair table. The pair of
    account 1 is still inside its 24 h window (as seen from any event within the lateness), so it
    may be evicted (and uncounted) but not overwritten as if dead: when account 1 messages 5 again
    it has exactly one recipient."""
    events = [Event(HOUR_START + k, 1, 5, MESSAGE, 0, 0, -1) for k in range(9)]
    events += [Event(others_at + k, 2, 100 + k, MESSAGE, 0, 0, -1) for k in range(9)]
    events += [Event(back_at, 1, 5, MESSAGE, 0, 0, -1)]
    state = ak.new_account_state(
        8, heavy_capacity=2, pair_capacity=ak.PAIR_PROBE, sketch_capacity=0
    )
    got = run(state, events)
    want = reference_columns(ReferenceAccounts(8).update(events))
    assert got["recipients_24h"][-1] == want["recipients_24h"][-1] == 1
    assert got["msgs_24h"][-1] == want["msgs_24h"][-1] == 10


@pytest.mark.parametrize(
    ("b_at", "reclaimed"),
    [
        (HOUR_START + 23 * HOUR_MS + 2_400_000, False),  # hour H + 23: account 1 is still in window
        (HOUR_START + 24 * HOUR_MS + 10_000, False),  # lateness reaches back into hour H + 23
        (HOUR_START + 24 * HOUR_MS + 40_000, True),  # idle for 24 h: reclaimed without loss
    ],
)
def test_heavy_rows_are_reclaimed_only_outside_every_window(b_at, reclaimed):
    """Heavy pool of 2: account 1 (hour H) and account 3 (recent) hold rows when account 2 needs
    one. Account 1's row may be reclaimed (no loss) only once hour H can no longer be in a window
    of any future event of account 1; before that it is evicted (counted as a loss)."""
    events = [Event(HOUR_START + k, 1, 5, MESSAGE, 0, 0, -1) for k in range(9)]
    events += [Event(b_at - 60_000 + k, 3, 6, MESSAGE, 0, 0, -1) for k in range(9)]
    events += [Event(b_at + k, 2, 7, MESSAGE, 0, 0, -1) for k in range(9)]
    state = ak.new_account_state(8, heavy_capacity=2, pair_capacity=64, sketch_capacity=0)
    run(state, events)
    stats = ak.account_state_stats(state)
    assert (stats["heavy_reclaims"], stats["heavy_evictions"]) == ((1, 0) if reclaimed else (0, 1))
    if reclaimed:  # lossless: account 1 back later is exactly the reference
        events.append(Event(b_at + 60_000, 1, 5, MESSAGE, 0, 0, -1))
        state = ak.new_account_state(8, heavy_capacity=2, pair_capacity=64, sketch_capacity=0)
        got = run(state, events)
        assert_features(got, reference_columns(ReferenceAccounts(8).update(events)), events)


def test_pair_table_pressure_is_counted_and_memory_fixed():
    events = [Event(T0 + k * 100, 1, 100 + k, MESSAGE, 0, 0, -1) for k in range(200)]
    state = ak.new_account_state(8, heavy_capacity=2, pair_capacity=16, sketch_capacity=0)
    before = ak.state_nbytes(state)
    got = run(state, events)
    assert (got["recipients_24h"] <= np.arange(1, 201)).all()
    stats = ak.account_state_stats(state)
    assert stats["pair_evictions"] > 0 and stats["pairs_live"] <= 16
    assert ak.state_nbytes(state) == before


# ------------------------------------------------------------------------------------------------
# Deterministic edge cases


def test_window_edges_are_bucket_aligned():
    """A message at second 0 of a 5-min bucket leaves the 1 h window when the 13th bucket starts."""
    start = (T0 // 300_000 + 1) * 300_000  # a bucket boundary
    events = [Event(start, 1, 5, MESSAGE, 0, 0, -1)]
    events += [Event(start + 12 * 300_000 - 1, 1, 5, MESSAGE, 0, 0, -1)]  # last ms of bucket 12
    events += [Event(start + 12 * 300_000, 1, 5, MESSAGE, 0, 0, -1)]  # first ms of bucket 13
    got = run(exact_state(), events)
    assert list(got["msgs_1h"]) == [1, 2, 2]
    assert list(got["msgs_15s"]) == [1, 1, 2]


def test_ttl_and_lateness_boundaries():
    """Idle for exactly ttl_s is still alive, one second more is expired; exactly lateness_s behind
    is applied, one ms more is late."""
    ttl_s = 3_600
    events = [
        Event(T0, 1, 5, MESSAGE, 0, 0, -1),
        Event(T0 + ttl_s * 1000, 1, 5, MESSAGE, 0, 0, -1),  # idle exactly ttl_s: kept
        Event(T0 + 2 * ttl_s * 1000 + 1000, 1, 5, MESSAGE, 0, 0, -1),  # ttl_s + 1 s: expired
        Event(T0 + 2 * ttl_s * 1000 + 1000 - 30_000, 1, 6, MESSAGE, 0, 0, -1),  # 30 s behind
        Event(T0 + 2 * ttl_s * 1000 + 1000 - 30_001, 1, 7, MESSAGE, 0, 0, -1),  # late
    ]
    state = exact_state(ttl_s=ttl_s)
    reference = ReferenceAccounts(64, ttl_s=ttl_s)
    got = run(state, events)
    assert_features(got, reference_columns(reference.update(events)), events)
    assert list(got["gap_count"]) == [0, 1, 0, 0, 0]
    assert list(got["late"]) == [False, False, False, False, True]
    assert list(got["recipients_1h"]) == [1, 1, 1, 2, 2]
    assert ak.account_state_stats(state)["expirations"] == 1


def test_late_events_are_skipped_and_report_current_features():
    events = [
        Event(T0, 1, 5, MESSAGE, 0, 0, -1),
        Event(T0 + 60_000, 1, 6, MESSAGE, 0, 0, -1),
        Event(T0 + 29_000, 1, 7, MESSAGE, 0, 0, -1),  # 31 s behind now: late
        Event(T0 + 31_000, 1, 7, MESSAGE, 0, 0, -1),  # 29 s behind: applied in its own bucket
        Event(T0 + 1_000, 9, 7, MESSAGE, 0, 0, -1),  # late and unknown account: zeros
    ]
    got = run(exact_state(), events)
    assert list(got["late"]) == [False, False, True, False, True]
    assert list(got["msgs_15m"]) == [1, 2, 2, 3, 0]
    assert list(got["recipients_1h"]) == [1, 2, 2, 3, 0]
    assert list(got["msgs_15s"]) == [1, 1, 1, 1, 0]  # the 31 s message is outside 15 s


def test_reports_and_blocks_count_for_the_peer():
    events = [
        Event(T0, 1, 2, REPORT, 0, 0, -1),
        Event(T0 + 1, 3, 2, BLOCK, 0, 0, -1),
        Event(T0 + 2, 4, 2, REPORT, 0, 0, -1),
        Event(T0 + 3, 2, 1, MESSAGE, 0, 0, -1),
        Event(T0 + 4, 5, 0, REPORT, 0, 0, -1),  # no peer: unattributed
    ]
    state = exact_state()
    got = run(state, events)
    assert list(got["reports_24h"]) == [1, 1, 2, 2, 0]
    assert list(got["blocks_24h"]) == [0, 1, 1, 1, 0]
    assert ak.account_state_stats(state)["unattributed_events"] == 1


def test_creation_time_precedence():
    day = 86_400_000
    events = [
        Event(T0, 1, 5, MESSAGE, 0, 0, -1),  # unknown
        Event(T0 + 1_000, 1, 5, MESSAGE, 0, 0, T0 - 10 * day),  # from the message
        Event(T0 + 2_000, 1, 5, MESSAGE, 0, 0, T0 - 20 * day),  # first message value kept
        Event(T0 + 3_000, 1, 0, REGISTRATION, 0, 0, T0 - day),  # registration wins
        Event(T0 + 4_000, 1, 5, MESSAGE, 0, 0, T0 - 30 * day),
    ]
    got = run(exact_state(), events)
    assert math.isnan(got["age_s"][0])
    np.testing.assert_allclose(got["age_s"][1:], [10 * 86_400 + 1, 10 * 86_400 + 2, 86_403, 86_404])


def test_gap_statistics_of_a_regular_sender():
    events = [Event(T0 + k * 2_000, 1, 5, MESSAGE, 0, 0, -1) for k in range(20)]
    got = run(exact_state(), events)
    assert list(got["gap_count"][:3]) == [0, 1, 2]
    assert np.isnan(got["gap_cv"][:8]).all() and got["gap_cv"][8] == 0.0  # 8 gaps of 2 s
    assert got["gap_count"][-1] == ak.GAP_SLOTS
    np.testing.assert_allclose(got["gap_mean_s"][1:], 2.0)


def test_long_gaps_are_capped_and_survive_idle_clocks():
    """Gaps are capped at GAP_CAP_MS (18.6 h). Reports move the account clock while its latest
    message ages: 20 days later its low 32 bits alone would be ambiguous, the gap must still be the
    cap (and equal to the reference)."""
    day = 86_400_000
    events = [Event(T0, 1, 5, MESSAGE, 0, 0, -1)]
    events += [Event(T0 + k * 10 * HOUR_MS, 2, 1, REPORT, 0, 0, -1) for k in (1, 2)]
    events += [Event(T0 + 25 * HOUR_MS, 1, 5, MESSAGE, 0, 0, -1)]
    events += [Event(T0 + 25 * HOUR_MS + k * day * 20, 2, 1, REPORT, 0, 0, -1) for k in (1, 2)]
    events += [Event(T0 + 25 * HOUR_MS + 50 * day, 1, 5, MESSAGE, 0, 0, -1)]
    # the clock reaches 2**32 ms (49.7 days) + 1 h past the latest message, then a message: only
    # the stale mark tells it from one 2 h after the message
    wrap = T0 + 25 * HOUR_MS + 50 * day + 2**32
    events += [Event(wrap - 2**32 + k * 20 * day, 2, 1, REPORT, 0, 0, -1) for k in (1, 2)]
    events += [Event(wrap + HOUR_MS, 2, 1, REPORT, 0, 0, -1)]
    events += [Event(wrap + 2 * HOUR_MS, 1, 5, MESSAGE, 0, 0, -1)]
    state = exact_state(ttl_s=ak.MAX_TTL_S)
    reference = ReferenceAccounts(64, ttl_s=ak.MAX_TTL_S)
    got = run(state, events)
    assert_features(got, reference_columns(reference.update(events)), events)
    cap_s = decode_gap_ms(encode_gap_ms(ak.GAP_CAP_MS)) / 1000
    assert list(got["gap_count"][[3, 6, -1]]) == [1, 2, 3]
    assert got["gap_mean_s"][-1] == np.float32(cap_s)


def test_crowded_pair_table_moves_a_bulk_sender_to_a_sketch():
    """A sender whose recipients no longer fit the pair table takes a sketch early (from 64
    recipients) instead of evicting other accounts' pairs."""
    n = 1_500
    events = [Event(T0 + k * 100, 1, 10_000 + k, MESSAGE, 0, 0, -1) for k in range(n)]
    state = ak.new_account_state(8, heavy_capacity=2, pair_capacity=256, sketch_capacity=1)
    got = run(state, events)
    stats = ak.account_state_stats(state)
    assert stats["sketch_promotions"] == 1 and stats["pairs_live"] <= 256
    true = np.arange(1, n + 1)
    assert (np.abs(got["recipients_24h"] - true) <= 0.05 * true + 1.5).all()


def test_gap_code_error_bound():
    values = np.unique(
        np.concatenate([np.arange(10_000), np.geomspace(1, 2**41, 5_000).astype(np.int64)])
    )
    for ms in values.tolist():
        code = ak.encode_gap_ms(ms)
        assert 0 <= code <= 65535 and code == encode_gap_ms(ms)
        decoded = ak.decode_gap_ms(code)
        assert decoded == decode_gap_ms(code)
        assert abs(decoded - ms) <= ms * 2.0**-12
        if ms <= ak.GAP_CAP_MS:
            assert ak.gap_code_and_value(ms) == (code, decoded)
    assert ak.decode_gap_ms(ak.encode_gap_ms(2**50)) > 2**41  # saturates, never wraps


def test_account_back_after_log_horizon_starts_clean():
    """Idle for 40 h and 75 h (longer than the 2**17 s and 2**18 s of the log's time field) but
    within the TTL: old events must not alias into the windows."""
    events = [Event(T0 + k * 1_000, 1, 100 + k, MESSAGE, 0, 0, -1) for k in range(5)]
    events += [Event(T0 + 40 * HOUR_MS, 1, 5, MESSAGE, 0, 0, -1)]
    events += [Event(T0 + 115 * HOUR_MS, 1, 5, REPORT, 0, 0, -1)]
    events += [Event(T0 + 115 * HOUR_MS + 1, 2, 1, REPORT, 0, 0, -1)]
    state = exact_state(ttl_s=10 * 86_400)
    reference = ReferenceAccounts(64, ttl_s=10 * 86_400)
    got = run(state, events)
    assert_features(got, reference_columns(reference.update(events)), events)
    assert got["msgs_24h"][5] == 1 and got["reports_24h"][7] == 1


def test_duplicates_count_as_messages_but_not_recipients():
    events = [Event(T0, 1, 5, MESSAGE, BUSINESS, 0, -1)] * 3
    got = run(exact_state(), events)
    assert list(got["msgs_1m"]) == [1, 2, 3]
    assert list(got["recipients_24h"]) == [1, 1, 1]
    assert list(got["business_recipients_24h"]) == [1, 1, 1]
    assert list(got["gap_count"]) == [0, 1, 2]


def test_subject_with_heavy_history_after_ttl_starts_fresh():
    events = [Event(T0 + k * 1_000, 1, 100 + k, MESSAGE, 0, 0, -1) for k in range(30)]
    events += [Event(T0 + 3 * 86_400_000, 1, 100, MESSAGE, 0, 0, -1)]
    state = exact_state()
    got = run(state, events)
    assert got["msgs_24h"][-1] == 1 and got["gap_count"][-1] == 0
    stats = ak.account_state_stats(state)
    assert stats["expirations"] == 1 and stats["heavy_used"] == 0


# ------------------------------------------------------------------------------------------------
# Interface, memory and persistence


def test_default_memory_is_at_most_256_bytes_per_account_at_load_0_8():
    state = ak.new_account_state(1_000_000)
    stats = ak.account_state_stats(state)
    assert stats["bytes_per_account"] / 0.8 <= 256
    assert stats["nbytes"] == ak.state_nbytes(state)


def test_heavy_rows_start_on_a_cache_line():
    """A heavy row's header, totals and short rings then take exactly its first three lines."""
    state = ak.new_account_state(10_000)
    assert state.heavy.ctypes.data % ak.CACHE_LINE == 0
    assert state.heavy.strides[0] % ak.CACHE_LINE == 0
    assert ak.H_RING_1H * 4 <= 3 * ak.CACHE_LINE


def test_ring_counts_saturate_at_the_documented_bound():
    """70,000 messages in one second: 16-bit bucket counts stop at 65,535, the hourly message
    count (32-bit) stays exact, and the next second's bucket counts from zero."""
    burst = [Event(T0, 1, 0, MESSAGE, 4, 0, -1)] * 70_000  # CONTACT_KNOWN, no peer
    after = [Event(T0 + 1_000, 1, 0, MESSAGE, 0, 0, -1)] * 100
    state = exact_state()
    got = run(state, burst + after, cuts=[69_999])
    model = AccountModel(clock_s=(T0 + 1_000) // 1000, events=burst + after)
    want = features_of(model, T0 + 1_000)
    for name in ("msgs_15s", "msgs_1m", "msgs_15m", "msgs_1h"):
        assert got[name][69_999] == ak.RING_MAX
        assert got[name][-1] == want[name]
    assert got["msgs_15s"][-1] == ak.RING_MAX + 100  # a new 1 s bucket
    assert got["msgs_1h"][-1] == ak.RING_MAX  # the same 5 min bucket
    assert got["contact_known_1h"][-1] == ak.RING_MAX == want["contact_known_1h"]
    assert got["msgs_24h"][-1] == 70_100 == want["msgs_24h"]


def test_exact_recipients_are_capped_when_no_sketch_is_available():
    n = ak.MAX_EXACT_RECIPIENTS + 5
    events = [Event(T0 + k // 300, 1, 10 + k, MESSAGE, 0, 0, -1) for k in range(n)]
    state = exact_state(pair_capacity=1 << 18)
    got = run(state, events)
    stats = ak.account_state_stats(state)
    assert stats["pair_evictions"] == 0 and stats["sketch_capacity"] == 0
    assert got["recipients_24h"][-7] == ak.MAX_EXACT_RECIPIENTS - 1
    assert got["recipients_24h"][-1] == got["recipients_1h"][-1] == ak.MAX_EXACT_RECIPIENTS
    assert stats["recipients_uncounted"] == 5


def test_input_validation():
    state = exact_state()
    good = columns([Event(T0, 1, 2, MESSAGE, 0, 0, -1)])
    with pytest.raises(TypeError, match="account"):
        ak.update_accounts(state, **(good | {"account": good["account"].astype(np.int64)}))
    with pytest.raises(ValueError, match="length"):
        ak.update_accounts(state, **(good | {"peer": np.zeros(2, dtype=np.uint64)}))
    two = columns([Event(T0, 1, 2, MESSAGE, 0, 0, -1)] * 2)
    with pytest.raises(ValueError, match="contiguous"):
        ak.update_accounts(state, **(two | {"flags": np.zeros(4, dtype=np.uint16)[::2]}))
    with pytest.raises(ValueError, match="event_type"):
        ak.update_accounts(state, **(good | {"event_type": np.array([6], dtype=np.uint8)}))
    with pytest.raises(ValueError, match="ts_ms"):
        ak.update_accounts(state, **(good | {"ts_ms": np.array([-1], dtype=np.int64)}))
    with pytest.raises(ValueError, match="ts_ms"):
        ak.update_accounts(state, **(good | {"ts_ms": np.array([ak.MAX_TS_MS], dtype=np.int64)}))
    with pytest.raises(ValueError, match="capacity"):
        ak.new_account_state(0)
    assert len(ak.update_accounts(state, **columns([])).late) == 0


def test_load_rejects_corrupt_or_foreign_files(tmp_path):
    state = exact_state(8)
    run(state, [Event(T0, 1, 2, MESSAGE, 0, 0, -1)])
    path = tmp_path / "a.npz"
    ak.save_account_state(state, path, event_time_ms=T0)
    data = path.read_bytes()

    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="unreadable"):
        ak.load_account_state(truncated)

    arrays = dict(np.load(path))
    arrays["rows"] = arrays["rows"].copy()
    arrays["rows"][0, 0] ^= 1
    tampered = tmp_path / "tampered.npz"
    np.savez(tampered, **arrays)
    with pytest.raises(ValueError, match="checksum"):
        ak.load_account_state(tampered)

    arrays = dict(np.load(path))
    arrays["rows"] = arrays["rows"][:, :-1].copy()
    with pytest.raises(ValueError, match="rows"):
        np.savez(tmp_path / "shape.npz", **arrays)
        ak.load_account_state(tmp_path / "shape.npz")

    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="not an account state"):
        ak.load_account_state(tmp_path / "other.npz")


def test_warm_up_compiles_every_path():
    assert ak.warm_up() > 0.0


def test_fmix64_reference_matches_kernel_hash():
    from kernels.hashtable import mix64

    for x in [0, 1, 2**63, 2**64 - 1, 0xDEADBEEF]:
        assert int(mix64(np.uint64(x))) == fmix64(x)


def test_pairs_live_counts_every_entry_not_only_home_slots():
    """A table of PAIR_PROBE entries has one home slot; its window fills all of them."""
    n = 40
    events = [Event(T0 + k * 100, 1, 100 + k, MESSAGE, 0, 0, -1) for k in range(n)]
    state = ak.new_account_state(
        64, heavy_capacity=4, pair_capacity=ak.PAIR_PROBE, sketch_capacity=0
    )
    run(state, events)
    assert ak.account_state_stats(state)["pairs_live"] == ak.PAIR_PROBE


@pytest.mark.parametrize(
    ("column", "bad_value"), [("event_type", ak.N_EVENT_TYPES), ("ts_ms", ak.MAX_TS_MS)]
)
def test_rejected_batch_changes_no_state(column, bad_value):
    """The kernel checks the batch before applying any of it: valid events ahead of the bad one
    are not applied either."""
    state = exact_state()
    run(state, [Event(T0 + k, 1, 2, MESSAGE, 0, 0, -1) for k in range(3)])
    before = {name: getattr(state, name).copy() for name in ak.AccountState._fields}
    batch = columns([Event(T0 + 10 + k, 1 + k % 2, 3, MESSAGE, 0, 0, -1) for k in range(5)])
    batch[column][3] = bad_value
    with pytest.raises(ValueError, match=column):
        ak.update_accounts(state, **batch)
    for name, array in before.items():
        np.testing.assert_array_equal(getattr(state, name), array, err_msg=name)
