import itertools
import random

import numpy as np
import pytest
from datasketch.lsh import _optimal_param
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import lsh
from tests.kernels.reference_content import RefClusters, band_key

# -- banding parameters --------------------------------------------------------------------------


@pytest.mark.parametrize("num_perm", [8, 16, 32, 64, 100, 128])
@pytest.mark.parametrize("weights", [(0.5, 0.5), (0.3, 0.7), (0.9, 0.1)])
def test_optimal_bands_equal_datasketch(num_perm, weights):
    for threshold in (0.1, 0.25, 0.4, 0.5, 0.6, 0.75, 0.9):
        assert lsh.optimal_bands(threshold, num_perm, *weights) == _optimal_param(
            threshold, num_perm, *weights
        ), (threshold, num_perm, weights)


def test_optimal_bands_rejects_bad_threshold():
    with pytest.raises(ValueError):
        lsh.optimal_bands(1.5, 64)


# -- band keys -----------------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(
    st.integers(1, 6),
    st.integers(1, 4),
    st.integers(0, 5),
    st.integers(0, 2**64 - 1),
    st.sampled_from([np.uint32, np.uint64]),
    st.integers(0, 2**32),
)
def test_band_keys_match_reference(bands, rows, extra, seed, dtype, data_seed):
    rnd = random.Random(data_seed)
    n = 5
    top = int(np.iinfo(dtype).max)
    sigs = np.array(
        [[rnd.randint(0, top) for _ in range(bands * rows + extra)] for _ in range(n)], dtype=dtype
    )
    selected = np.array([rnd.random() < 0.7 for _ in range(n)])
    keys = lsh.band_keys(sigs, bands, rows, seed, selected)
    for m in range(n):
        for b in range(bands):
            expected = (
                band_key(sigs[m, b * rows : (b + 1) * rows].tolist(), b, seed) if selected[m] else 0
            )
            assert int(keys[m, b]) == expected


def test_band_keys_validation():
    with pytest.raises(TypeError):
        lsh.band_keys(np.zeros((2, 4), np.int64), 2, 2)
    with pytest.raises(ValueError):
        lsh.band_keys(np.zeros((2, 4), np.uint32), 3, 2)


# -- clusters against the reference ---------------------------------------------------------------


def _stream(rnd: random.Random, n: int, bands: int, templates: int):
    """Messages whose band keys come from a few templates, with each band sometimes taken from a
    second template (so messages link two clusters and merges happen) or noise."""
    keys = np.zeros((n, bands), dtype=np.uint64)
    for m in range(n):
        a, b = rnd.randrange(templates), rnd.randrange(templates)
        for band in range(bands):
            r = rnd.random()
            source = a if r < 0.6 else (b if r < 0.85 else 1000 + rnd.randrange(40))
            keys[m, band] = 1 + source * 97 + band * 7919  # distinct per band, never 0
    has_keys = np.array([rnd.random() < 0.9 for _ in range(n)])
    ts = []
    t = 1_000
    for _ in range(n):
        t += rnd.choice([0, 1, 5, 20, 100])
        ts.append(t - rnd.choice([0, 0, 0, 50, 400]))  # some events arrive late
    return (
        keys,
        has_keys,
        np.array(ts, dtype=np.int64),
        np.array([rnd.randrange(1, 6) for _ in range(n)], dtype=np.uint64),
        np.array([rnd.choice([0, 1, 2, 3, 2**64 - 1]) for _ in range(n)], dtype=np.uint64),
        np.array([rnd.randrange(16) for _ in range(n)], dtype=np.uint16),
    )


def _run_both(
    rnd,
    *,
    capacity,
    band_capacity,
    pair_capacity,
    n_buckets,
    window_ms,
    ttl_ms,
    merge_min_votes,
    bands,
    templates,
    n=300,
    batches=3,
):
    keys, has_keys, ts, account, peer, flags = _stream(rnd, n, bands, templates)
    state = lsh.new_cluster_state(
        capacity,
        band_capacity=band_capacity,
        pair_capacity=pair_capacity,
        window_ms=window_ms,
        n_buckets=n_buckets,
        ttl_ms=ttl_ms,
        exemplar_bytes=4,
        merge_min_votes=merge_min_votes,
    )
    raw = np.zeros(1, dtype=np.uint8)
    got = []
    bounds = np.linspace(0, n, batches + 1).astype(int)
    for lo, hi in itertools.pairwise(bounds):
        out = lsh.assign_clusters(
            state,
            keys[lo:hi].copy(),
            has_keys[lo:hi].copy(),
            ts[lo:hi].copy(),
            account[lo:hi].copy(),
            peer[lo:hi].copy(),
            flags[lo:hi].copy(),
            raw,
            np.zeros(hi - lo, np.int64),
            np.zeros(hi - lo, np.int64),
            4,
        )
        got.append(np.stack([np.asarray(a, dtype=np.int64) for a in out], axis=1))
    got = np.concatenate(got)
    ref = RefClusters(
        capacity,
        band_capacity,
        pair_capacity,
        lsh.WAYS,
        window_ms,
        n_buckets,
        ttl_ms,
        merge_min_votes,
    )
    expected = []
    for m in range(n):
        if has_keys[m]:
            expected.append(
                ref.assign(
                    int(ts[m]),
                    int(account[m]),
                    int(peer[m]),
                    int(flags[m]),
                    [int(k) for k in keys[m]],
                )
            )
        else:
            expected.append((-1, 0, 0, 0, 0, 0, 0, 0))
    for m in range(n):
        assert tuple(got[m]) == tuple(expected[m]), f"message {m}"
    meta = state.meta
    assert (
        meta[lsh.META_EVICTIONS],
        meta[lsh.META_EXPIRATIONS],
        meta[lsh.META_BAND_EVICTIONS],
        meta[lsh.META_PAIR_EVICTIONS],
        meta[lsh.META_MERGES],
    ) == (ref.evictions, ref.expirations, ref.band_evictions, ref.pair_evictions, ref.merges)
    return ref


@settings(max_examples=60, deadline=None)
@given(
    st.integers(0, 2**32),
    st.integers(1, 12),
    st.sampled_from([8, 16, 64]),
    st.sampled_from([8, 16, 64]),
    st.integers(1, 4),
    st.sampled_from([50, 300, 1000]),
    st.sampled_from([0, 100, 500, 5000]),
    st.integers(0, 3),
    st.integers(1, 5),
    st.integers(1, 8),
)
def test_clusters_match_reference(
    seed,
    capacity,
    band_capacity,
    pair_capacity,
    n_buckets,
    window,
    ttl_ms,
    merge_min_votes,
    bands,
    templates,
):
    _run_both(
        random.Random(seed),
        capacity=capacity,
        band_capacity=band_capacity,
        pair_capacity=pair_capacity,
        n_buckets=n_buckets,
        window_ms=window * n_buckets,
        ttl_ms=ttl_ms,
        merge_min_votes=merge_min_votes,
        bands=bands,
        templates=templates,
    )


def test_reference_comparison_exercises_every_path():
    """The random streams above reach evictions, expirations, band and pair evictions and merges."""
    totals = dict.fromkeys(("evictions", "expirations", "band", "pair", "merges"), 0)
    for seed in range(12):
        ref = _run_both(
            random.Random(seed),
            capacity=4,
            band_capacity=16,
            pair_capacity=8,
            n_buckets=3,
            window_ms=300,
            ttl_ms=500,
            merge_min_votes=2,
            bands=4,
            templates=6,
        )
        totals["evictions"] += ref.evictions
        totals["expirations"] += ref.expirations
        totals["band"] += ref.band_evictions
        totals["pair"] += ref.pair_evictions
        totals["merges"] += ref.merges
    assert all(v > 0 for v in totals.values()), totals


# -- hand-computed windows ------------------------------------------------------------------------


def _assign(state, keys, ts, account, peer, flags, raw=b"", exemplar_chars=4):
    n = len(ts)
    data = np.frombuffer(raw + b"\x00", dtype=np.uint8)[: len(raw)].copy()
    return lsh.assign_clusters(
        state,
        np.asarray(keys, dtype=np.uint64).reshape(n, -1),
        np.ones(n, dtype=bool),
        np.asarray(ts, dtype=np.int64),
        np.asarray(account, dtype=np.uint64),
        np.asarray(peer, dtype=np.uint64),
        np.asarray(flags, dtype=np.uint16),
        data,
        np.zeros(n, np.int64),
        np.full(n, len(raw), np.int64),
        exemplar_chars,
    )


def _state(capacity=8, **kw):
    args = dict(
        band_capacity=64,
        pair_capacity=64,
        window_ms=1000,
        n_buckets=2,
        ttl_ms=5000,
        exemplar_bytes=8,
    )
    args.update(kw)
    return lsh.new_cluster_state(capacity, **args)


def test_window_counts_by_hand():
    state = _state()
    # 3 accounts send the same text (one band key) to 2 peers each within one bucket (500 ms).
    out = _assign(
        state,
        [7] * 6,
        [0, 10, 20, 30, 40, 50],
        [1, 1, 2, 2, 3, 3],
        [9, 8, 9, 8, 9, 8],
        [4, 4, 4 | 8, 4, 0, 0],
    )
    assert out.cluster_id.tolist() == [0] * 6
    assert out.cluster_msgs.tolist() == [1, 2, 3, 4, 5, 6]
    assert out.cluster_senders.tolist() == [1, 1, 2, 2, 3, 3]
    assert out.cluster_recipients.tolist() == [1, 2, 2, 2, 2, 2]
    assert out.cluster_contact_known.tolist() == [1, 2, 3, 4, 4, 4]
    assert out.cluster_non_contact.tolist() == [1, 2, 2, 3, 3, 3]
    assert out.account_copies.tolist() == [1, 2, 1, 2, 1, 2]
    # 600 ms later: second bucket, window still holds the first.
    out = _assign(state, [7], [600], [1], [5], [0])
    assert (out.cluster_msgs[0], out.cluster_senders[0], out.cluster_recipients[0]) == (7, 3, 3)
    assert out.account_copies[0] == 3
    # At 1,100 ms the first bucket has left the window: only the two newest messages remain.
    out = _assign(state, [7], [1100], [2], [5], [0])
    assert (out.cluster_msgs[0], out.cluster_senders[0], out.cluster_recipients[0]) == (2, 2, 1)
    assert out.account_copies[0] == 1
    assert out.cluster_first_seen_ms[0] == 0


def test_late_message_beyond_the_window_joins_but_adds_nothing():
    state = _state()
    _assign(state, [7, 7], [5000, 5001], [1, 2], [3, 4], [0, 0])
    out = _assign(state, [7], [100], [9], [9], [0])  # 4.9 s late: outside the 1 s window
    assert out.cluster_id[0] == 0 and out.cluster_msgs[0] == 2 and out.cluster_senders[0] == 2
    assert out.account_copies[0] == 0 and out.cluster_first_seen_ms[0] == 100


def test_idle_clusters_expire_and_full_state_evicts():
    state = _state(capacity=2, ttl_ms=1000)
    a = _assign(state, [1], [0], [1], [2], [0]).cluster_id[0]
    b = _assign(state, [2], [10], [1], [2], [0]).cluster_id[0]
    c = _assign(state, [3], [20], [1], [2], [0]).cluster_id[0]  # full: evicts a (least recent)
    assert state.meta[lsh.META_EVICTIONS] == 1
    assert _assign(state, [1], [30], [1], [2], [0]).cluster_id[0] not in (a, b, c)  # a is gone
    assert state.meta[lsh.META_EVICTIONS] == 2  # ... and b made room for it
    _assign(state, [9], [5000], [1], [2], [0])  # everything else idled past the TTL
    assert state.meta[lsh.META_EXPIRATIONS] == 2
    assert state.meta[lsh.META_LIVE] == 1


def test_ids_encode_their_slot_and_are_never_reused():
    state = _state(capacity=2)
    ids = [_assign(state, [k], [k], [1], [2], [0]).cluster_id[0] for k in range(1, 7)]
    assert len(set(ids)) == 6
    assert [i % 2 for i in ids] == [0, 1, 0, 1, 0, 1]


def test_merge_adds_counts_and_resolves_roots():
    state = _state(merge_min_votes=2)
    first = _assign(state, [[1, 2, 3]], [0], [1], [5], [4]).cluster_id[0]
    second = _assign(state, [[4, 5, 6]], [10], [2], [6], [4]).cluster_id[0]
    out = _assign(state, [[1, 4, 2]], [20], [3], [7], [4])
    assert out.cluster_id[0] == first  # votes: first 2 (keys 1, 2), second 1 (key 4): no merge
    assert state.meta[lsh.META_MERGES] == 0
    assert lsh.resolve_roots(state, np.array([second], dtype=np.int64)).tolist() == [second]
    # Two votes each: the tie goes to the older cluster, which absorbs the other.
    state2 = _state(merge_min_votes=2)
    first = _assign(state2, [[1, 2, 3, 9]], [0], [1], [5], [4]).cluster_id[0]
    second = _assign(state2, [[4, 5, 6, 8]], [10], [2], [6], [4]).cluster_id[0]
    out = _assign(state2, [[1, 2, 5, 6]], [20], [3], [7], [4])
    assert out.cluster_id[0] == first and state2.meta[lsh.META_MERGES] == 1
    assert (out.cluster_msgs[0], out.cluster_senders[0], out.cluster_recipients[0]) == (3, 3, 3)
    assert lsh.resolve_roots(state2, np.array([first, second, -1], dtype=np.int64)).tolist() == [
        first,
        first,
        -1,
    ]
    # The merged cluster's own keys now lead to the root.
    assert _assign(state2, [[4, 5, 6, 8]], [30], [4], [8], [4]).cluster_id[0] == first


def test_exemplar_is_cut_at_characters_and_bytes():
    text = "héllo wörld".encode()
    for budget, chars, expected in [
        (8, 3, "hél"),
        (3, 3, "hé"),
        (2, 3, "h"),
        (64, 100, "héllo wörld"),
    ]:
        state = _state(exemplar_bytes=budget)
        _assign(state, [1], [0], [1], [2], [0], raw=text, exemplar_chars=chars)
        kept = state.exemplar[0, : state.clusters[0, lsh.CL_EXEMPLAR_BYTES]].tobytes()
        assert kept == expected.encode(), (budget, chars)


def test_assign_validation():
    state = _state()
    good = dict(
        keys=np.ones((1, 1), np.uint64),
        has_keys=np.ones(1, bool),
        ts_ms=np.zeros(1, np.int64),
        account=np.ones(1, np.uint64),
        peer=np.ones(1, np.uint64),
        flags=np.zeros(1, np.uint16),
        raw=np.zeros(0, np.uint8),
        raw_starts=np.zeros(1, np.int64),
        raw_stops=np.zeros(1, np.int64),
        exemplar_chars=4,
    )
    lsh.assign_clusters(state, **good)
    for name, bad, error in [
        ("account", np.ones(1, np.int64), TypeError),
        ("flags", np.zeros(2, np.uint16), ValueError),
        ("keys", np.ones((2, 1), np.uint64), ValueError),
        ("raw_stops", np.ones(1, np.int64), ValueError),
    ]:
        with pytest.raises(error):
            lsh.assign_clusters(state, **{**good, name: bad})


def test_state_arrays_start_on_a_page():
    """A cluster row and one field of a band or pair set are one cache line each, not two."""
    state = _state(capacity=1000, band_capacity=8 * 64, pair_capacity=8 * 64, exemplar_bytes=7)
    for name, arr in state._asdict().items():
        assert arr.flags.c_contiguous, name
        if name != "meta":
            assert arr.ctypes.data % lsh.PAGE_BYTES == 0, name
    assert (state.clusters[:, lsh.CL_ID] == -1).all() and (state.bands[:, lsh.BAND_KEY] == 0).all()
    assert state.free_slots.tolist() == list(range(999, -1, -1))


def test_new_state_validation():
    with pytest.raises(ValueError):
        _state(band_capacity=24)
    with pytest.raises(ValueError):
        _state(window_ms=1001, n_buckets=2)
    with pytest.raises(ValueError):
        lsh.new_cluster_state(
            0,
            band_capacity=8,
            pair_capacity=8,
            window_ms=10,
            n_buckets=1,
            ttl_ms=1,
            exemplar_bytes=1,
        )
