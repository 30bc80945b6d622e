"""LSH banding of MinHash signatures and campaign clusters with sliding-window statistics, in Numba.

Banding: a signature of ``bands * rows`` values is cut into ``bands`` bands; each band hashes to one
64-bit key. Two texts share a key with probability ``1 - (1 - J**rows)**bands`` (J their Jaccard
similarity); ``optimal_bands`` picks ``(bands, rows)`` for a threshold exactly as datasketch's
``MinHashLSH`` does.

Clusters (``assign_clusters``, one message at a time in batch order):

- A fixed-capacity, 8-way set-associative table maps band keys to cluster ids. A message joins the
  live cluster most of its band keys point to (ties: the oldest id); with none, it founds a new
  cluster. Its band keys are then stored for that cluster (keys held by another live cluster are
  left alone), so lightly mutated copies of any member join too. A new key in a full set replaces
  the least recently seen one: a band eviction (``band_evictions``) when that key was seen
  within the TTL.
- Merges: mutants of one template can found two clusters before any text links them. A message
  that also gives another cluster at least ``merge_min_votes`` band votes is near both, so that
  cluster is merged into the one it joins: its window counts are added, and it becomes an alias
  whose band keys lead to the surviving (root) cluster. Distinct senders/recipients of merged
  clusters add up (an upper bound if both had the same account), and ``account_copies`` counts
  the copies sent since the account's messages reached the root.
- Cluster ids are ``sequence * capacity + slot``: unique for the life of the state, and
  ``id % capacity`` is the slot. Clusters sit in an LRU list; a cluster idle for more than ``ttl_ms``
  of event time (``now`` = newest event seen) is expired from the LRU end, and when no slot is free
  the least recently used cluster is evicted. Both are counted.
- Sliding windows in event time: ``window_ms`` is split into ``n_buckets`` buckets of
  ``bucket_ms``; a cluster's window is the ``n_buckets`` buckets up to the newest one it has seen.
  Per bucket it counts messages, messages with a known contact relation and those to non-contacts;
  distinct senders and recipients are the (cluster, account) and (cluster, peer) pairs whose latest
  bucket lies in the window, kept exact by moving each pair's count when its latest bucket moves.
  Pair tables are set-associative too (victim: an empty way, else the way seen longest ago); a
  pair evicted while still in its cluster's window is uncounted, and counted in
  ``pair_evictions``. A message older than its cluster's window joins the cluster but adds nothing.
- Per (account, cluster), copies per bucket give ``account_copies`` in the window.
"""

from functools import lru_cache
from typing import NamedTuple

import numpy as np
from numba import njit

from .hashtable import mix64, prefetch

WAYS = 8  # entries per set in the band and pair tables: one 64-byte cache line of keys
# A message's band lookups, and then the clusters they name, are random accesses into tables far
# larger than the caches, so a message's reads are prefetched in three stages, each reading only
# lines the stage before fetched: the band sets (all three lines) of the message PREFETCH_BANDS
# positions ahead; the clusters its keys name, and the likely one's counts and pair sets, of the
# one PREFETCH_CLUSTERS ahead; that cluster's LRU neighbours, its sender pair's copies and the
# clusters of the pairs it would evict, of the one PREFETCH_NEIGHBOURS ahead.
PREFETCH_BANDS = 8
PREFETCH_CLUSTERS = 4
PREFETCH_NEIGHBOURS = 2  # < PREFETCH_CLUSTERS: reads the likely cluster the stage before found
PAGE_BYTES = 4096  # state arrays start on a page, so rows and sets of 64 bytes fill whole lines

# counts[slot, STAT, bucket]
STAT_MESSAGES = 0
STAT_SENDERS = 1
STAT_RECIPIENTS = 2
STAT_CONTACT_KNOWN = 3
STAT_NON_CONTACT = 4
N_STATS = 5

# meta[...] scalars of the state
META_NOW_MS = 0
META_NEXT_SEQ = 1
META_FREE_TOP = 2
META_LRU_FIRST = 3  # least recently used slot, -1 when empty
META_LRU_LAST = 4  # most recently used slot
META_EVICTIONS = 5
META_EXPIRATIONS = 6
META_BAND_EVICTIONS = 7
META_PAIR_EVICTIONS = 8
META_LIVE = 9
META_BUCKET_MS = 10
META_TTL_MS = 11
META_MERGE_MIN_VOTES = 12  # 0: never merge
META_MERGES = 13
META_SIZE = 14
MAX_MERGE_HOPS = 16  # longest chain of merged clusters followed to its root

FLAG_CONTACT_KNOWN = 4
FLAG_IN_CONTACTS = 8

NO_TIME = -(1 << 62)


# ---------------------------------------------------------------------------------------------
# Banding parameters
# ---------------------------------------------------------------------------------------------


@lru_cache(maxsize=256)
def optimal_bands(
    threshold: float,
    num_perm: int,
    false_positive_weight: float = 0.5,
    false_negative_weight: float = 0.5,
) -> tuple[int, int]:
    """``(bands, rows)`` minimising the weighted false positive and negative areas under the LSH
    S-curve, as datasketch's ``MinHashLSH._optimal_param``. Both integrands are polynomials of degree
    at most ``num_perm``, so Gauss-Legendre quadrature with ``num_perm // 2 + 1`` nodes is exact (up
    to rounding) where datasketch calls scipy's adaptive ``quad``."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError("threshold must be in [0, 1]")
    if num_perm < 1:
        raise ValueError("num_perm must be >= 1")
    nodes, weights = np.polynomial.legendre.leggauss(num_perm // 2 + 1)

    def integrate(f, lo, hi):
        s = (hi - lo) / 2.0 * nodes + (hi + lo) / 2.0
        return (hi - lo) / 2.0 * float(np.dot(weights, f(s)))

    best = (0, 0)
    min_error = float("inf")
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            fp = integrate(lambda s, b=b, r=r: 1.0 - (1.0 - s**r) ** b, 0.0, threshold)
            fn = integrate(lambda s, b=b, r=r: (1.0 - s**r) ** b, threshold, 1.0)
            error = fp * false_positive_weight + fn * false_negative_weight
            if error < min_error:
                min_error = error
                best = (b, r)
    return best


# ---------------------------------------------------------------------------------------------
# Band keys
# ---------------------------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def _band_keys(signatures, bands, rows, seed, selected, out):
    for m in range(signatures.shape[0]):
        if not selected[m]:
            for band in range(bands):
                out[m, band] = 0
            continue
        for band in range(bands):
            h = mix64(seed ^ (np.uint64(band + 1) * np.uint64(0x9E3779B97F4A7C15)))
            for j in range(band * rows, (band + 1) * rows):
                h = mix64(h ^ np.uint64(signatures[m, j]))
            out[m, band] = h if h != 0 else np.uint64(1)


def band_keys(
    signatures: np.ndarray,
    bands: int,
    rows: int,
    seed: int = 0,
    selected: np.ndarray | None = None,
) -> np.ndarray:
    """uint64 ``(n, bands)`` keys, band ``i`` hashing ``signatures[:, i*rows:(i+1)*rows]`` and ``i``
    (so equal values in different bands give different keys). Keys are never 0; rows where the
    optional bool mask ``selected`` is False are skipped and get 0."""
    if not (isinstance(signatures, np.ndarray) and signatures.ndim == 2):
        raise TypeError("signatures must be a 2-D numpy array")
    if signatures.dtype not in (np.uint32, np.uint64):
        raise TypeError("signatures must be uint32 or uint64")
    if bands < 1 or rows < 1 or bands * rows > signatures.shape[1]:
        raise ValueError("need 1 <= bands, 1 <= rows, bands * rows <= signature length")
    signatures = np.ascontiguousarray(signatures)
    if selected is None:
        selected = np.ones(signatures.shape[0], dtype=np.bool_)
    _check_1d("selected", selected, np.bool_, signatures.shape[0])
    out = np.empty((signatures.shape[0], bands), dtype=np.uint64)
    _band_keys(signatures, bands, rows, np.uint64(seed & 0xFFFFFFFFFFFFFFFF), selected, out)
    return out


# ---------------------------------------------------------------------------------------------
# Cluster state
# ---------------------------------------------------------------------------------------------


# clusters[slot, CL_*]: one 64-byte row per cluster
CL_ID = 0  # cluster id, -1 when the slot is free
CL_FIRST_SEEN_MS = 1
CL_LAST_SEEN_MS = 2
CL_HEAD_BUCKET = 3  # newest bucket the cluster has seen
CL_LRU_PREV = 4
CL_LRU_NEXT = 5
CL_EXEMPLAR_BYTES = 6
CL_MERGED_INTO = 7  # id of the cluster this one was merged into, -1 for a root
CL_FIELDS = 8

# bands[set, BAND_*, way] and pairs[set, PAIR_*, way]: the ways of one field share a cache line
BAND_KEY = 0  # band key (uint64 bits), 0 = empty way
BAND_CLUSTER = 1
BAND_SEEN_MS = 2
PAIR_CLUSTER = 0  # -1 = empty way
PAIR_OTHER = 1  # account or peer id (uint64 bits)
PAIR_LAST_BUCKET = 2


class ClusterState(NamedTuple):
    """Everything ``assign_clusters`` keeps, as fixed-capacity numpy arrays. Few, wide arrays: the
    fields a step needs share cache lines, and each array handed to a helper costs a reference
    count update per call. Arrays start on a page boundary (``new_cluster_state``), so a cluster
    row or one field of a band or pair set is exactly one cache line."""

    meta: np.ndarray  # int64[META_SIZE]
    clusters: np.ndarray  # int64[C, CL_FIELDS]
    counts: np.ndarray  # uint32[C, N_STATS, n_buckets], ring indexed by bucket % n_buckets
    free_slots: np.ndarray  # int64[C], a stack of meta[META_FREE_TOP] free slots
    bands: np.ndarray  # int64[band sets, 3, WAYS]
    senders: np.ndarray  # int64[pair sets, 3, WAYS], (cluster, account) pairs
    sender_copies: np.ndarray  # uint32[pair sets * WAYS, n_buckets], ring per sender pair
    recipients: np.ndarray  # int64[pair sets, 3, WAYS], (cluster, peer) pairs
    exemplar: np.ndarray  # uint8[C, exemplar_bytes], never persisted


class ClusterFeatureArrays(NamedTuple):
    """Per-message outputs of ``assign_clusters`` (values after applying the message)."""

    cluster_id: np.ndarray  # int64, -1 when the message has no band keys
    cluster_msgs: np.ndarray  # uint32
    cluster_senders: np.ndarray  # uint32
    cluster_recipients: np.ndarray  # uint32
    cluster_contact_known: np.ndarray  # uint32
    cluster_non_contact: np.ndarray  # uint32
    cluster_first_seen_ms: np.ndarray  # int64
    account_copies: np.ndarray  # uint32


def _is_power_of_two(x: int) -> bool:
    return x > 0 and x & (x - 1) == 0


def new_cluster_state(
    capacity: int,
    *,
    band_capacity: int,
    pair_capacity: int,
    window_ms: int,
    n_buckets: int,
    ttl_ms: int,
    exemplar_bytes: int,
    merge_min_votes: int = 2,
) -> ClusterState:
    """Empty state for ``capacity`` clusters; band and pair capacities must be ``WAYS`` times a
    power of two, ``window_ms`` a multiple of ``n_buckets``. A message whose band keys give a
    second cluster at least ``merge_min_votes`` votes merges it into the one it joins (0: never)."""
    if capacity < 1:
        raise ValueError("capacity must be >= 1")
    for name, value in (("band_capacity", band_capacity), ("pair_capacity", pair_capacity)):
        if value % WAYS or not _is_power_of_two(value // WAYS):
            raise ValueError(f"{name} must be {WAYS} times a power of two, got {value}")
    if n_buckets < 1 or window_ms < n_buckets or window_ms % n_buckets:
        raise ValueError("window_ms must be a positive multiple of n_buckets")
    if ttl_ms < 0:
        raise ValueError("ttl_ms must be >= 0")
    if exemplar_bytes < 0:
        raise ValueError("exemplar_bytes must be >= 0")
    if merge_min_votes < 0:
        raise ValueError("merge_min_votes must be >= 0")
    meta = np.zeros(META_SIZE, dtype=np.int64)
    meta[META_MERGE_MIN_VOTES] = merge_min_votes
    meta[META_NOW_MS] = NO_TIME
    meta[META_FREE_TOP] = capacity
    meta[META_LRU_FIRST] = -1
    meta[META_LRU_LAST] = -1
    meta[META_BUCKET_MS] = window_ms // n_buckets
    meta[META_TTL_MS] = ttl_ms
    clusters = _aligned_full((capacity, CL_FIELDS), 0, np.int64)
    clusters[:, CL_ID] = -1
    clusters[:, CL_LRU_PREV] = -1
    clusters[:, CL_LRU_NEXT] = -1
    clusters[:, CL_MERGED_INTO] = -1
    senders = _aligned_full((pair_capacity // WAYS, 3, WAYS), 0, np.int64)
    senders[:, PAIR_CLUSTER, :] = -1
    recipients = _aligned_full(senders.shape, 0, np.int64)
    recipients[...] = senders
    bands = _aligned_full((band_capacity // WAYS, 3, WAYS), 0, np.int64)
    bands[:, BAND_CLUSTER, :] = -1
    free_slots = _aligned_full((capacity,), 0, np.int64)
    free_slots[:] = np.arange(capacity - 1, -1, -1)  # pops slot 0 first
    return ClusterState(
        meta=meta,
        clusters=clusters,
        counts=_aligned_full((capacity, N_STATS, n_buckets), 0, np.uint32),
        free_slots=free_slots,
        bands=bands,
        senders=senders,
        sender_copies=_aligned_full((pair_capacity, n_buckets), 0, np.uint32),
        recipients=recipients,
        exemplar=_aligned_full((capacity, exemplar_bytes), 0, np.uint8),
    )


def _aligned_full(shape: tuple[int, ...], fill_value: int, dtype) -> np.ndarray:
    """``np.full(shape, fill_value, dtype)`` starting on a page boundary. numpy's large arrays
    start 16 bytes past one (the allocator's header), so every 64-byte cluster row and band or
    pair line would straddle two cache lines: two misses per random access instead of one.
    Filling writes every page now (no page faults during the first messages)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(nbytes + PAGE_BYTES, dtype=np.uint8)
    offset = -raw.ctypes.data % PAGE_BYTES
    out = raw[offset : offset + nbytes].view(dtype).reshape(shape)
    out.fill(fill_value)
    return out


# ---------------------------------------------------------------------------------------------
# Kernel pieces
# ---------------------------------------------------------------------------------------------
# Helpers work on a whole message (all its bands) per call, and take few arrays: each array
# handed to a function costs atomic reference-count updates per call.


@njit(cache=True, nogil=True, inline="always")
def _alive(clusters, now_ms, ttl_ms, cid):
    """Slot of cluster cid if it is still held and not idle past the TTL, else -1."""
    if cid < 0:
        return -1
    slot = cid % clusters.shape[0]
    if clusters[slot, CL_ID] != cid or now_ms - clusters[slot, CL_LAST_SEEN_MS] > ttl_ms:
        return -1
    return slot


@njit(cache=True, nogil=True)
def _root(clusters, now_ms, ttl_ms, cid):
    """The live root cluster cid was merged into (cid itself if it is a live root), else -1."""
    for _ in range(MAX_MERGE_HOPS):
        slot = _alive(clusters, now_ms, ttl_ms, cid)
        if slot < 0:
            return -1
        parent = clusters[slot, CL_MERGED_INTO]
        if parent < 0:
            return cid
        cid = parent
    return -1


@njit(cache=True, nogil=True, inline="always")
def _in_window(head, n_buckets, bucket):
    return head - n_buckets < bucket <= head


@njit(cache=True, nogil=True, inline="always")
def _as_bits(x):
    """uint64 -> int64 with the same bits (tables store ids and keys as int64)."""
    return np.int64(x)


@njit(cache=True, nogil=True)
def _lru_unlink(meta, clusters, slot):
    prev = clusters[slot, CL_LRU_PREV]
    nxt = clusters[slot, CL_LRU_NEXT]
    if prev >= 0:
        clusters[prev, CL_LRU_NEXT] = nxt
    else:
        meta[META_LRU_FIRST] = nxt
    if nxt >= 0:
        clusters[nxt, CL_LRU_PREV] = prev
    else:
        meta[META_LRU_LAST] = prev
    clusters[slot, CL_LRU_PREV] = -1
    clusters[slot, CL_LRU_NEXT] = -1


@njit(cache=True, nogil=True)
def _lru_append(meta, clusters, slot):
    last = meta[META_LRU_LAST]
    clusters[slot, CL_LRU_PREV] = last
    clusters[slot, CL_LRU_NEXT] = -1
    if last >= 0:
        clusters[last, CL_LRU_NEXT] = slot
    else:
        meta[META_LRU_FIRST] = slot
    meta[META_LRU_LAST] = slot


@njit(cache=True, nogil=True)
def _release(meta, clusters, free_slots, slot):
    _lru_unlink(meta, clusters, slot)
    clusters[slot, CL_ID] = -1
    clusters[slot, CL_EXEMPLAR_BYTES] = 0
    clusters[slot, CL_MERGED_INTO] = -1
    free_slots[meta[META_FREE_TOP]] = slot
    meta[META_FREE_TOP] += 1
    meta[META_LIVE] -= 1


@njit(cache=True, nogil=True)
def _expire_idle(meta, clusters, free_slots):
    """Release clusters idle past the TTL from the least recently used end."""
    now_ms = meta[META_NOW_MS]
    ttl_ms = meta[META_TTL_MS]
    while meta[META_LRU_FIRST] >= 0:
        oldest = meta[META_LRU_FIRST]
        if now_ms - clusters[oldest, CL_LAST_SEEN_MS] <= ttl_ms:
            break
        _release(meta, clusters, free_slots, oldest)
        meta[META_EXPIRATIONS] += 1


@njit(cache=True, nogil=True, inline="always")
def _find_way(table, st, field, value):
    """The first way w of set st with table[st, field, w] == value, else -1; no early exit, so
    the eight compares run as one vector compare instead of a chain of unpredictable branches."""
    found = WAYS
    for w in range(WAYS - 1, -1, -1):
        found = w if table[st, field, w] == value else found
    return found if found < WAYS else -1


@njit(cache=True, nogil=True, inline="always")
def _find_band_key(bands, key):
    """(set, way) of band key ``key`` in the band table; way -1 when it is not stored."""
    st = np.int64(key & np.uint64(bands.shape[0] - 1))
    return st, _find_way(bands, st, BAND_KEY, _as_bits(key))


@njit(cache=True, nogil=True)
def _vote(bands, clusters, now_ms, ttl_ms, keys, m, votes_cid, votes_n):
    """Count, per live root cluster, the band keys of message m that point to it (through merges).
    Fills votes_cid/votes_n, the winner (most votes, ties: smallest id) first; returns their count."""
    n_votes = 0
    for band in range(keys.shape[1]):
        st, way = _find_band_key(bands, keys[m, band])
        if way < 0:
            continue
        cid = _root(clusters, now_ms, ttl_ms, bands[st, BAND_CLUSTER, way])
        if cid < 0:
            continue
        found = False
        for v in range(n_votes):
            if votes_cid[v] == cid:
                votes_n[v] += 1
                found = True
                break
        if not found:
            votes_cid[n_votes] = cid
            votes_n[n_votes] = 1
            n_votes += 1
    best = 0
    for v in range(1, n_votes):
        if votes_n[v] > votes_n[best] or (
            votes_n[v] == votes_n[best] and votes_cid[v] < votes_cid[best]
        ):
            best = v
    if best > 0:
        votes_cid[0], votes_cid[best] = votes_cid[best], votes_cid[0]
        votes_n[0], votes_n[best] = votes_n[best], votes_n[0]
    return n_votes


@njit(cache=True, nogil=True)
def _advance(clusters, counts, slot, bucket):
    """Move the window of the cluster in slot forward to end at bucket (zeroing buckets it skips)."""
    n_buckets = counts.shape[2]
    head = clusters[slot, CL_HEAD_BUCKET]
    if bucket > head:
        for b in range(max(head + 1, bucket - n_buckets + 1), bucket + 1):
            for stat in range(counts.shape[1]):
                counts[slot, stat, b % n_buckets] = 0
        clusters[slot, CL_HEAD_BUCKET] = bucket


@njit(cache=True, nogil=True)
def _merge(meta, clusters, counts, loser, winner):
    """Merge the root cluster in slot loser into the root in slot winner: its window counts are
    added bucket by bucket (distinct senders and recipients add up: an upper bound when the two
    shared accounts), and it becomes an alias whose band keys lead to the winner."""
    n_buckets = counts.shape[2]
    loser_head = clusters[loser, CL_HEAD_BUCKET]
    _advance(clusters, counts, winner, loser_head)
    head = clusters[winner, CL_HEAD_BUCKET]
    for b in range(max(head, loser_head) - n_buckets + 1, loser_head + 1):
        if _in_window(head, n_buckets, b) and _in_window(loser_head, n_buckets, b):
            for stat in range(counts.shape[1]):
                counts[winner, stat, b % n_buckets] += counts[loser, stat, b % n_buckets]
    clusters[winner, CL_FIRST_SEEN_MS] = min(
        clusters[winner, CL_FIRST_SEEN_MS], clusters[loser, CL_FIRST_SEEN_MS]
    )
    clusters[winner, CL_LAST_SEEN_MS] = max(
        clusters[winner, CL_LAST_SEEN_MS], clusters[loser, CL_LAST_SEEN_MS]
    )
    clusters[loser, CL_MERGED_INTO] = clusters[winner, CL_ID]
    meta[META_MERGES] += 1


@njit(cache=True, nogil=True)
def _store_bands(meta, bands, clusters, now_ms, ttl_ms, keys, m, cid, ts_ms):
    """Point message m's band keys at root cluster cid. A key held by another live root is left
    alone (one held by a cluster merged into cid is re-pointed at cid); a new key takes the first
    empty way of its set, else the least recently seen way, counted as a band eviction if that
    key was seen within the TTL (its cluster's liveness would cost a cache miss per eviction)."""
    for band in range(keys.shape[1]):
        key = keys[m, band]
        st, victim = _find_band_key(bands, key)
        if victim >= 0:
            holder = bands[st, BAND_CLUSTER, victim]
            if holder == cid:
                bands[st, BAND_SEEN_MS, victim] = max(bands[st, BAND_SEEN_MS, victim], ts_ms)
            else:
                root = _root(clusters, now_ms, ttl_ms, holder)
                if root == cid:  # held by a cluster merged into cid
                    bands[st, BAND_CLUSTER, victim] = cid
                    bands[st, BAND_SEEN_MS, victim] = max(bands[st, BAND_SEEN_MS, victim], ts_ms)
                elif root < 0:  # held by a dead cluster
                    bands[st, BAND_CLUSTER, victim] = cid
                    bands[st, BAND_SEEN_MS, victim] = ts_ms
            continue
        victim = _find_way(bands, st, BAND_KEY, 0)  # ways fill in order: the first empty one
        if victim < 0:
            victim = 0
            for w in range(1, WAYS):
                if bands[st, BAND_SEEN_MS, w] < bands[st, BAND_SEEN_MS, victim]:
                    victim = w
            if now_ms - bands[st, BAND_SEEN_MS, victim] <= ttl_ms:
                meta[META_BAND_EVICTIONS] += 1
        bands[st, BAND_KEY, victim] = _as_bits(key)
        bands[st, BAND_CLUSTER, victim] = cid
        bands[st, BAND_SEEN_MS, victim] = ts_ms


@njit(cache=True, nogil=True, inline="always")
def _pair_set(cid, other, n_sets):
    return np.int64(mix64(np.uint64(cid) ^ mix64(other)) & np.uint64(n_sets - 1))


@njit(cache=True, nogil=True)
def _touch_pair(meta, counts, clusters, pairs, copies, cid, slot, other, bucket, stat):
    """Record that pair (cid, other) was active at bucket (inside cid's window), keeping
    counts[slot, stat] equal to the number of pairs whose latest bucket is in the window. ``copies``
    (a ring per entry, or a zero-width array) rolls forward with the pair. Returns the entry index
    (set * WAYS + way).

    A new pair takes the first empty way of its set, else the way seen longest ago; if that pair
    is still in its cluster's window it stops being counted (a pair eviction)."""
    n_buckets = counts.shape[2]
    now_ms = meta[META_NOW_MS]
    ttl_ms = meta[META_TTL_MS]
    pair_set = _pair_set(cid, other, pairs.shape[0])
    for w in range(WAYS):
        if pairs[pair_set, PAIR_CLUSTER, w] == cid and pairs[pair_set, PAIR_OTHER, w] == _as_bits(
            other
        ):
            last = pairs[pair_set, PAIR_LAST_BUCKET, w]
            if bucket > last:
                if _in_window(clusters[slot, CL_HEAD_BUCKET], n_buckets, last):
                    counts[slot, stat, last % n_buckets] -= 1
                counts[slot, stat, bucket % n_buckets] += 1
                if copies.shape[1] > 0:  # zero-width for recipients
                    for b in range(max(last + 1, bucket - n_buckets + 1), bucket + 1):
                        copies[pair_set * WAYS + w, b % n_buckets] = 0
                pairs[pair_set, PAIR_LAST_BUCKET, w] = bucket
            return pair_set * WAYS + w
    counts[slot, stat, bucket % n_buckets] += 1
    victim = -1
    for w in range(WAYS):
        if pairs[pair_set, PAIR_CLUSTER, w] < 0:
            victim = w
            break
    if victim < 0:
        victim = 0
        for w in range(1, WAYS):
            if pairs[pair_set, PAIR_LAST_BUCKET, w] < pairs[pair_set, PAIR_LAST_BUCKET, victim]:
                victim = w
        owner = _alive(clusters, now_ms, ttl_ms, pairs[pair_set, PAIR_CLUSTER, victim])
        last = pairs[pair_set, PAIR_LAST_BUCKET, victim]
        if owner >= 0 and _in_window(clusters[owner, CL_HEAD_BUCKET], n_buckets, last):
            counts[owner, stat, last % n_buckets] -= 1
            meta[META_PAIR_EVICTIONS] += 1
    pairs[pair_set, PAIR_CLUSTER, victim] = cid
    pairs[pair_set, PAIR_OTHER, victim] = _as_bits(other)
    pairs[pair_set, PAIR_LAST_BUCKET, victim] = bucket
    for c in range(copies.shape[1]):
        copies[pair_set * WAYS + victim, c] = 0
    return pair_set * WAYS + victim


@njit(cache=True, nogil=True)
def _account_copies(senders, sender_copies, head, n_buckets, cid, account):
    """Copies of cluster cid sent by account in the window ending at bucket head."""
    pair_set = _pair_set(cid, account, senders.shape[0])
    for w in range(WAYS):
        if senders[pair_set, PAIR_CLUSTER, w] == cid and senders[
            pair_set, PAIR_OTHER, w
        ] == _as_bits(account):
            copies = np.uint32(0)
            for b in range(head - n_buckets + 1, senders[pair_set, PAIR_LAST_BUCKET, w] + 1):
                copies += sender_copies[pair_set * WAYS + w, b % n_buckets]
            return copies
    return np.uint32(0)


@njit(cache=True, nogil=True)
def _new_cluster(
    meta, clusters, counts, free_slots, exemplar, ts_ms, bucket, raw, start, stop, exemplar_chars
):
    """Open a cluster (evicting the least recently used one if no slot is free); keep its first
    text, cut to exemplar_chars code points and the byte budget, never inside a UTF-8 sequence."""
    if meta[META_FREE_TOP] == 0:
        _release(meta, clusters, free_slots, meta[META_LRU_FIRST])
        meta[META_EVICTIONS] += 1
    meta[META_FREE_TOP] -= 1
    slot = free_slots[meta[META_FREE_TOP]]
    cid = meta[META_NEXT_SEQ] * clusters.shape[0] + slot
    meta[META_NEXT_SEQ] += 1
    meta[META_LIVE] += 1
    clusters[slot, CL_ID] = cid
    clusters[slot, CL_FIRST_SEEN_MS] = ts_ms
    clusters[slot, CL_LAST_SEEN_MS] = ts_ms
    clusters[slot, CL_HEAD_BUCKET] = bucket
    clusters[slot, CL_MERGED_INTO] = -1
    for stat in range(counts.shape[1]):
        for b in range(counts.shape[2]):
            counts[slot, stat, b] = 0
    _lru_append(meta, clusters, slot)
    budget = exemplar.shape[1]
    length = 0
    chars = 0
    pos = start
    while pos < stop and chars < exemplar_chars:
        lead = raw[pos]
        width = 1 if lead < 0x80 else (2 if lead < 0xE0 else (3 if lead < 0xF0 else 4))
        width = min(width, stop - pos)
        if length + width > budget:
            break
        for j in range(width):
            exemplar[slot, length + j] = raw[pos + j]
        length += width
        chars += 1
        pos += width
    clusters[slot, CL_EXEMPLAR_BYTES] = length
    return slot, cid


@njit(cache=True, nogil=True)
def _prefetch_clusters_of(bands, clusters, counts, senders, recipients, keys, m, account, peer):
    """Prefetch the row of every cluster message m's band keys name (``_vote`` reads them all).
    The cluster of the first key found is the likely one the message joins: its window counts and
    its sender and recipient pair sets too. Returns that cluster's id, or -1."""
    capacity = clusters.shape[0]
    likely = np.int64(-1)
    for band in range(keys.shape[1]):
        st, way = _find_band_key(bands, keys[m, band])
        if way < 0:
            continue
        cid = bands[st, BAND_CLUSTER, way]
        prefetch(clusters, cid % capacity, 0)
        if likely < 0:
            likely = cid
    if likely >= 0:
        for stat in range(N_STATS):
            prefetch(counts, likely % capacity, stat)
        _prefetch_pair_sets(senders, recipients, likely, account, peer)
    return likely


@njit(cache=True, nogil=True, inline="always")
def _pair_victim(pairs, pair_set, cid, other):
    """The way of pair (cid, other) in its set, else the way a new pair would take."""
    for w in range(WAYS):
        if pairs[pair_set, PAIR_CLUSTER, w] == cid and pairs[pair_set, PAIR_OTHER, w] == _as_bits(
            other
        ):
            return w
    for w in range(WAYS):
        if pairs[pair_set, PAIR_CLUSTER, w] < 0:
            return w
    victim = 0
    for w in range(1, WAYS):
        if pairs[pair_set, PAIR_LAST_BUCKET, w] < pairs[pair_set, PAIR_LAST_BUCKET, victim]:
            victim = w
    return victim


@njit(cache=True, nogil=True)
def _prefetch_neighbours(clusters, counts, senders, sender_copies, recipients, cid, account, peer):
    """Second prefetch stage for a message likely to join cluster cid (whose row and pair sets
    are cached by now): its LRU neighbours (moving it to the LRU end relinks them), the cluster
    it was merged into, the copies of its sender pair, and the clusters of the pairs it would
    evict (their distinct counts drop)."""
    capacity = clusters.shape[0]
    slot = cid % capacity
    for field in (CL_LRU_PREV, CL_LRU_NEXT):
        neighbour = clusters[slot, field]
        if neighbour >= 0:
            prefetch(clusters, neighbour, 0)
    if clusters[slot, CL_MERGED_INTO] >= 0:
        prefetch(clusters, clusters[slot, CL_MERGED_INTO] % capacity, 0)
    pair_set = _pair_set(cid, account, senders.shape[0])
    way = _pair_victim(senders, pair_set, cid, account)
    prefetch(sender_copies, pair_set * WAYS + way, 0)
    owner = senders[pair_set, PAIR_CLUSTER, way]
    if owner >= 0 and owner != cid:
        _prefetch_cluster_row(clusters, counts, owner % capacity)
    if peer != 0:
        pair_set = _pair_set(cid, peer, recipients.shape[0])
        owner = recipients[pair_set, PAIR_CLUSTER, _pair_victim(recipients, pair_set, cid, peer)]
        if owner >= 0 and owner != cid:
            _prefetch_cluster_row(clusters, counts, owner % capacity)


@njit(cache=True, nogil=True, inline="always")
def _prefetch_cluster_row(clusters, counts, slot):
    prefetch(clusters, slot, 0)
    for stat in range(N_STATS):
        prefetch(counts, slot, stat)


@njit(cache=True, nogil=True, inline="always")
def _prefetch_pair_sets(senders, recipients, cid, account, peer):
    pair_set = _pair_set(cid, account, senders.shape[0])
    for field in range(3):
        prefetch(senders, pair_set, field)
    if peer != 0:
        pair_set = _pair_set(cid, peer, recipients.shape[0])
        for field in range(3):
            prefetch(recipients, pair_set, field)


@njit(cache=True, nogil=True)
def _assign_clusters(
    state,
    keys,
    has_keys,
    ts_ms,
    account,
    peer,
    flags,
    raw,
    raw_starts,
    raw_stops,
    exemplar_chars,
    out,
):
    meta = state.meta
    clusters = state.clusters
    counts = state.counts
    free_slots = state.free_slots
    bands = state.bands
    senders = state.senders
    sender_copies = state.sender_copies
    recipients = state.recipients
    exemplar = state.exemplar
    capacity = clusters.shape[0]
    n_buckets = counts.shape[2]
    bucket_ms = meta[META_BUCKET_MS]
    ttl_ms = meta[META_TTL_MS]
    votes_cid = np.empty(keys.shape[1], dtype=np.int64)
    votes_n = np.empty(keys.shape[1], dtype=np.int64)
    no_copies = np.zeros((0, 0), dtype=np.uint32)
    totals = np.zeros(N_STATS, dtype=np.uint32)
    set_mask = np.uint64(bands.shape[0] - 1)
    likely = np.full(PREFETCH_CLUSTERS, -1, dtype=np.int64)  # ring: likely cluster of m + k
    for m in range(ts_ms.shape[0]):
        predicted = likely[m % PREFETCH_CLUSTERS]
        ahead = m + PREFETCH_BANDS
        if ahead < ts_ms.shape[0] and has_keys[ahead]:
            for band in range(keys.shape[1]):
                st = np.int64(keys[ahead, band] & set_mask)
                prefetch(bands, st, BAND_KEY)
                prefetch(bands, st, BAND_CLUSTER)
                prefetch(bands, st, BAND_SEEN_MS)  # read when storing the keys
        ahead = m + PREFETCH_CLUSTERS
        likely[ahead % PREFETCH_CLUSTERS] = -1
        if ahead < ts_ms.shape[0] and has_keys[ahead]:
            likely[ahead % PREFETCH_CLUSTERS] = _prefetch_clusters_of(
                bands, clusters, counts, senders, recipients, keys, ahead, account[ahead],
                peer[ahead],
            )  # fmt: skip
        ahead = m + PREFETCH_NEIGHBOURS
        if ahead < ts_ms.shape[0] and likely[ahead % PREFETCH_CLUSTERS] >= 0:
            _prefetch_neighbours(clusters, counts, senders, sender_copies, recipients,
                                 likely[ahead % PREFETCH_CLUSTERS], account[ahead], peer[ahead])  # fmt: skip
        if not has_keys[m]:
            out.cluster_id[m] = -1
            out.cluster_msgs[m] = 0
            out.cluster_senders[m] = 0
            out.cluster_recipients[m] = 0
            out.cluster_contact_known[m] = 0
            out.cluster_non_contact[m] = 0
            out.cluster_first_seen_ms[m] = 0
            out.account_copies[m] = 0
            continue
        ts = ts_ms[m]
        if ts > meta[META_NOW_MS]:
            meta[META_NOW_MS] = ts
        now_ms = meta[META_NOW_MS]
        oldest = max(meta[META_LRU_FIRST], 0)
        if now_ms - clusters[oldest, CL_LAST_SEEN_MS] > ttl_ms:
            _expire_idle(meta, clusters, free_slots)
        elif clusters[oldest, CL_LRU_NEXT] >= 0:  # releasing the oldest one relinks this one
            prefetch(clusters, clusters[oldest, CL_LRU_NEXT], 0)
        bucket = ts // bucket_ms
        n_votes = _vote(bands, clusters, now_ms, ttl_ms, keys, m, votes_cid, votes_n)
        if n_votes > 0:
            cid = votes_cid[0]
            slot = cid % capacity
            merge_min_votes = meta[META_MERGE_MIN_VOTES]
            for v in range(1, n_votes):
                if merge_min_votes > 0 and votes_n[v] >= merge_min_votes:
                    _merge(meta, clusters, counts, votes_cid[v] % capacity, slot)
            clusters[slot, CL_FIRST_SEEN_MS] = min(clusters[slot, CL_FIRST_SEEN_MS], ts)
            clusters[slot, CL_LAST_SEEN_MS] = max(clusters[slot, CL_LAST_SEEN_MS], ts)
            if meta[META_LRU_LAST] != slot:
                _lru_unlink(meta, clusters, slot)
                _lru_append(meta, clusters, slot)
        else:
            slot, cid = _new_cluster(
                meta,
                clusters,
                counts,
                free_slots,
                exemplar,
                ts,
                bucket,
                raw,
                raw_starts[m],
                raw_stops[m],
                exemplar_chars,
            )
        if cid != predicted:  # a new cluster, or not the one prefetched: fetch what it needs
            _prefetch_pair_sets(senders, recipients, cid, account[m], peer[m])
            _prefetch_cluster_row(clusters, counts, slot)  # overlaps with storing the keys
        _store_bands(meta, bands, clusters, now_ms, ttl_ms, keys, m, cid, ts)
        _advance(clusters, counts, slot, bucket)
        head = clusters[slot, CL_HEAD_BUCKET]
        if _in_window(head, n_buckets, bucket):
            ring = bucket % n_buckets
            counts[slot, STAT_MESSAGES, ring] += 1
            if flags[m] & FLAG_CONTACT_KNOWN:
                counts[slot, STAT_CONTACT_KNOWN, ring] += 1
                if not flags[m] & FLAG_IN_CONTACTS:
                    counts[slot, STAT_NON_CONTACT, ring] += 1
            i = _touch_pair(
                meta,
                counts,
                clusters,
                senders,
                sender_copies,
                cid,
                slot,
                account[m],
                bucket,
                STAT_SENDERS,
            )
            sender_copies[i, ring] += 1
            if peer[m] != 0:
                _touch_pair(
                    meta,
                    counts,
                    clusters,
                    recipients,
                    no_copies,
                    cid,
                    slot,
                    peer[m],
                    bucket,
                    STAT_RECIPIENTS,
                )
        for stat in range(N_STATS):
            total = np.uint32(0)
            for b in range(n_buckets):
                total += counts[slot, stat, b]
            totals[stat] = total
        out.cluster_id[m] = cid
        out.cluster_msgs[m] = totals[STAT_MESSAGES]
        out.cluster_senders[m] = totals[STAT_SENDERS]
        out.cluster_recipients[m] = totals[STAT_RECIPIENTS]
        out.cluster_contact_known[m] = totals[STAT_CONTACT_KNOWN]
        out.cluster_non_contact[m] = totals[STAT_NON_CONTACT]
        out.cluster_first_seen_ms[m] = clusters[slot, CL_FIRST_SEEN_MS]
        out.account_copies[m] = _account_copies(
            senders, sender_copies, head, n_buckets, cid, account[m]
        )


@njit(cache=True, nogil=True)
def _resolve_roots(clusters, ids, out):
    for i in range(ids.shape[0]):
        cid = ids[i]
        for _ in range(MAX_MERGE_HOPS):
            if cid < 0:
                break
            slot = cid % clusters.shape[0]
            if clusters[slot, CL_ID] != cid or clusters[slot, CL_MERGED_INTO] < 0:
                break  # a root, or a cluster no longer held: the last id known
            cid = clusters[slot, CL_MERGED_INTO]
        out[i] = cid


def resolve_roots(state: ClusterState, ids: np.ndarray) -> np.ndarray:
    """The cluster each id was merged into, following merges as far as the state still holds the
    clusters (ids of roots, of clusters no longer held, and -1 map to themselves)."""
    _check_1d("ids", ids, np.int64, None)
    out = np.empty_like(ids)
    _resolve_roots(state.clusters, ids, out)
    return out


def new_feature_arrays(n: int) -> ClusterFeatureArrays:
    return ClusterFeatureArrays(
        cluster_id=np.empty(n, dtype=np.int64),
        cluster_msgs=np.empty(n, dtype=np.uint32),
        cluster_senders=np.empty(n, dtype=np.uint32),
        cluster_recipients=np.empty(n, dtype=np.uint32),
        cluster_contact_known=np.empty(n, dtype=np.uint32),
        cluster_non_contact=np.empty(n, dtype=np.uint32),
        cluster_first_seen_ms=np.empty(n, dtype=np.int64),
        account_copies=np.empty(n, dtype=np.uint32),
    )


def _check_1d(name: str, arr: np.ndarray, dtype, n: int | None) -> None:
    if not (isinstance(arr, np.ndarray) and arr.dtype == dtype and arr.ndim == 1):
        raise TypeError(f"{name} must be a 1-D {np.dtype(dtype).name} numpy array")
    if not arr.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{name} has length {arr.shape[0]}, expected {n}")


def assign_clusters(
    state: ClusterState,
    keys: np.ndarray,
    has_keys: np.ndarray,
    ts_ms: np.ndarray,
    account: np.ndarray,
    peer: np.ndarray,
    flags: np.ndarray,
    raw: np.ndarray,
    raw_starts: np.ndarray,
    raw_stops: np.ndarray,
    exemplar_chars: int,
) -> ClusterFeatureArrays:
    """Assign each message with ``has_keys`` to a cluster through its band ``keys`` (uint64
    ``(n, bands)``), update the windows and return the features after each message.

    ``raw[raw_starts[i]:raw_stops[i]]`` is message i's original UTF-8 text: a new cluster keeps it
    as exemplar (cut to ``exemplar_chars`` code points and the state's byte budget)."""
    n = ts_ms.shape[0] if isinstance(ts_ms, np.ndarray) else -1
    _check_1d("ts_ms", ts_ms, np.int64, None)
    if not (isinstance(keys, np.ndarray) and keys.dtype == np.uint64 and keys.ndim == 2):
        raise TypeError("keys must be a 2-D uint64 numpy array")
    if keys.shape[0] != n or keys.shape[1] < 1 or not keys.flags.c_contiguous:
        raise ValueError("keys must be C-contiguous with one row per message and >= 1 band")
    _check_1d("has_keys", has_keys, np.bool_, n)
    _check_1d("account", account, np.uint64, n)
    _check_1d("peer", peer, np.uint64, n)
    _check_1d("flags", flags, np.uint16, n)
    _check_1d("raw", raw, np.uint8, None)
    _check_1d("raw_starts", raw_starts, np.int64, n)
    _check_1d("raw_stops", raw_stops, np.int64, n)
    if n and (
        raw_starts.min() < 0 or raw_stops.max() > raw.shape[0] or np.any(raw_stops < raw_starts)
    ):
        raise ValueError("raw spans out of range")
    out = new_feature_arrays(n)
    if n:
        _assign_clusters(
            state,
            keys,
            has_keys,
            ts_ms,
            account,
            peer,
            flags,
            raw,
            raw_starts,
            raw_stops,
            exemplar_chars,
            out,
        )
    return out
