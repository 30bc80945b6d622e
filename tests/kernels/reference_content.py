"""Slow, obviously-correct pure-Python references for the content kernels.

Each function states the spec the Numba kernels in ``kernels/sha1.py``, ``kernels/minhash.py`` and
``kernels/lsh.py`` must reproduce exactly; tests compare both on random input.
"""

from __future__ import annotations

import hashlib
import re
import struct
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass, field

from kernels.minhash import INVISIBLE_CODE_POINTS, NUMBER_SEPARATORS, SHINGLE_CHARS, TLDS

MASK32 = (1 << 32) - 1
MASK64 = (1 << 64) - 1
MERSENNE = (1 << 61) - 1

# ---------------------------------------------------------------------------------------------
# Normalisation and shingles
# ---------------------------------------------------------------------------------------------

_INVISIBLE_RE = re.compile("[" + "".join(chr(c) for c in INVISIBLE_CODE_POINTS) + "]")
_URL_RE = re.compile(r"://|www\.|[a-z0-9]\.(?:" + "|".join(TLDS) + r")(?![a-z0-9])")
_NUMBER_RE = re.compile(r"\d+(?:[" + re.escape(NUMBER_SEPARATORS) + r"]\d+)*")


def normalise(text: str) -> str:
    """NFKC, case fold, NUL as a space, drop invisibles, URL tokens -> U, numbers -> N, one space."""
    text = unicodedata.normalize("NFKC", text).casefold().replace("\x00", " ")
    text = _INVISIBLE_RE.sub("", text)
    tokens = []
    for token in text.split():
        tokens.append("U" if _URL_RE.search(token) else _NUMBER_RE.sub("N", token))
    return " ".join(tokens)


def shingles(text: str, shingle_chars: int = SHINGLE_CHARS) -> list[bytes]:
    """Distinct character shingles of the normalised text, in order of first occurrence."""
    norm = normalise(text)
    if not norm:
        return []
    if len(norm) <= shingle_chars:
        grams = [norm]
    else:
        grams = [norm[i : i + shingle_chars] for i in range(len(norm) - shingle_chars + 1)]
    return list(dict.fromkeys(g.encode("utf-8", "surrogatepass") for g in grams))


def jaccard(a: list[bytes], b: list[bytes]) -> float:
    sa, sb = set(a), set(b)
    if not sa and not sb:
        return 1.0
    return len(sa & sb) / len(sa | sb)


# ---------------------------------------------------------------------------------------------
# SHA-1 and the datasketch schemes (written from FIPS 180-4 and datasketch's numpy code)
# ---------------------------------------------------------------------------------------------


def sha1_hash32(data: bytes) -> int:
    return struct.unpack("<I", hashlib.sha1(data).digest()[:4])[0]


def affine32_signature(shingle_list: list[bytes], a: list[int], b: list[int]) -> list[int]:
    sig = [MASK32] * len(a)
    for sh in shingle_list:
        h = sha1_hash32(sh)
        h ^= h >> 16
        h = (h * 0x85EBCA6B) & MASK32
        h ^= h >> 13
        h = (h * 0xC2B2AE35) & MASK32
        h ^= h >> 16
        for k in range(len(a)):
            sig[k] = min(sig[k], (a[k] * h + b[k]) & MASK32)
    return sig


def legacy_signature(shingle_list: list[bytes], a: list[int], b: list[int]) -> list[int]:
    sig = [MASK32] * len(a)
    for sh in shingle_list:
        h = sha1_hash32(sh)
        for k in range(len(a)):
            sig[k] = min(sig[k], (((a[k] * h + b[k]) & MASK64) % MERSENNE) & MASK32)
    return sig


# ---------------------------------------------------------------------------------------------
# fast scheme
# ---------------------------------------------------------------------------------------------


def fmix64(h: int) -> int:
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & MASK64
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & MASK64
    return h ^ (h >> 33)


POLY_BASE = 0xA0761D6478BD642F
GOLDEN = 0x9E3779B97F4A7C15


def shingle_hash64(shingle: bytes, seed: int) -> int:
    """fmix64((poly ^ seed) + length * GOLDEN), poly = sum((cp + 1) * POLY_BASE**(n - 1 - i))."""
    code_points = [ord(c) for c in shingle.decode("utf-8", "surrogatepass")]
    poly = 0
    for i, cp in enumerate(code_points):
        poly += (cp + 1) * pow(POLY_BASE, len(code_points) - 1 - i, 1 << 64)
    return fmix64((((poly & MASK64) ^ seed) + len(code_points) * GOLDEN) & MASK64)


def probe(seed: int, j: int, attempt: int, num_bins: int) -> int:
    return ((fmix64(seed ^ (j << 32) ^ attempt) >> 32) * num_bins) >> 32


def fast_signature(shingle_list: list[bytes], num_bins: int, seed: int) -> list[int]:
    """One-permutation hashing + optimal densification, from their definitions. A bin whose
    minimum is 2**32 - 1 counts as empty."""
    bins = [MASK32] * num_bins
    for sh in shingle_list:
        h = shingle_hash64(sh, seed)
        k = ((h >> 32) * num_bins) >> 32
        bins[k] = min(bins[k], h & MASK32)
    filled = [v != MASK32 for v in bins]
    if not any(filled):
        return bins
    sig = []
    for j in range(num_bins):
        attempt = 1
        source = j
        while not filled[source]:
            source = probe(seed, j, attempt, num_bins)
            attempt += 1
        sig.append(bins[source])
    return sig


# ---------------------------------------------------------------------------------------------
# LSH banding
# ---------------------------------------------------------------------------------------------


def band_key(values: list[int], band: int, seed: int) -> int:
    """Key of one band: fold (band, values) with fmix64; 0 is reserved for empty slots."""
    h = fmix64(seed ^ ((band + 1) * 0x9E3779B97F4A7C15 & MASK64))
    for v in values:
        h = fmix64(h ^ v)
    return h or 1


# ---------------------------------------------------------------------------------------------
# Clusters
# ---------------------------------------------------------------------------------------------


@dataclass
class RefCluster:
    cid: int
    first_seen_ms: int
    last_seen_ms: int
    head: int  # newest bucket seen
    # bucket -> [messages, senders, recipients, contact known, non-contact]
    counts: dict[int, list[int]] = field(default_factory=dict)
    merged_into: int = -1


@dataclass
class RefPair:
    last_bucket: int
    copies: dict[int, int] = field(default_factory=dict)  # bucket -> copies (senders only)


class RefClusters:
    """The cluster semantics of ``kernels.lsh.assign_clusters``, from its written spec, with dicts.

    Band and pair tables are set-associative exactly like the kernel (their victim choice is part of
    the observable behaviour); everything else is plain dictionaries.
    """

    def __init__(
        self,
        capacity: int,
        band_capacity: int,
        pair_capacity: int,
        ways: int,
        window_ms: int,
        n_buckets: int,
        ttl_ms: int,
        merge_min_votes: int = 2,
    ) -> None:
        self.capacity = capacity
        self.merge_min_votes = merge_min_votes
        self.merges = 0
        self.ways = ways
        self.band_sets = band_capacity // ways
        self.pair_sets = pair_capacity // ways
        self.bucket_ms = window_ms // n_buckets
        self.n_buckets = n_buckets
        self.ttl_ms = ttl_ms
        self.now_ms = -(1 << 62)
        self.next_seq = 0
        self.free = list(range(capacity - 1, -1, -1))  # pop() yields slot 0 first
        self.clusters: dict[int, RefCluster] = {}  # slot -> cluster
        self.lru: OrderedDict[int, None] = OrderedDict()  # slots, least recently used first
        self.bands: list[list[list[int]]] = [[] for _ in range(self.band_sets)]
        # band entry: [key, cluster id, last_seen_ms]; pair entry: [cid, other, RefPair]
        self.senders: list[list[list]] = [[] for _ in range(self.pair_sets)]
        self.recipients: list[list[list]] = [[] for _ in range(self.pair_sets)]
        self.evictions = 0
        self.expirations = 0
        self.band_evictions = 0
        self.pair_evictions = 0

    # -- helpers --------------------------------------------------------------------------------
    def alive(self, cid: int) -> RefCluster | None:
        c = self.clusters.get(cid % self.capacity)
        if c is None or c.cid != cid or self.now_ms - c.last_seen_ms > self.ttl_ms:
            return None
        return c

    def root(self, cid: int) -> int | None:
        for _ in range(16):
            c = self.alive(cid)
            if c is None:
                return None
            if c.merged_into < 0:
                return cid
            cid = c.merged_into
        return None

    def advance(self, c: RefCluster, bucket: int) -> None:
        c.head = max(c.head, bucket)
        c.counts = {b: v for b, v in c.counts.items() if self.in_window(c, b)}

    def merge(self, loser: RefCluster, winner: RefCluster) -> None:
        self.advance(winner, loser.head)
        for b, v in loser.counts.items():
            if self.in_window(winner, b) and self.in_window(loser, b):
                w = winner.counts.setdefault(b, [0, 0, 0, 0, 0])
                for i in range(5):
                    w[i] += v[i]
        winner.first_seen_ms = min(winner.first_seen_ms, loser.first_seen_ms)
        winner.last_seen_ms = max(winner.last_seen_ms, loser.last_seen_ms)
        loser.merged_into = winner.cid
        self.merges += 1

    def in_window(self, c: RefCluster, bucket: int) -> bool:
        return c.head - self.n_buckets < bucket <= c.head

    def window_sum(self, c: RefCluster, index: int) -> int:
        return sum(v[index] for b, v in c.counts.items() if self.in_window(c, b))

    def pair_set(self, cid: int, other: int) -> int:
        return (fmix64((cid & MASK64) ^ fmix64(other)) & MASK64) % self.pair_sets

    def release(self, slot: int) -> None:
        del self.clusters[slot]
        del self.lru[slot]
        self.free.append(slot)

    # -- pairs ----------------------------------------------------------------------------------
    def touch_pair(self, table, cid: int, other: int, bucket: int, c: RefCluster, stat: int):
        """Update the (cluster, other) pair seen at bucket; keeps c's distinct counts (stat index
        into counts) equal to the pairs whose last bucket is in c's window. Returns the pair."""
        entries = table[self.pair_set(cid, other)]
        for e in entries:
            if e[0] == cid and e[1] == other:
                pair = e[2]
                if bucket > pair.last_bucket:
                    if self.in_window(c, pair.last_bucket):
                        c.counts[pair.last_bucket][stat] -= 1
                    c.counts.setdefault(bucket, [0, 0, 0, 0, 0])[stat] += 1
                    pair.last_bucket = bucket
                    pair.copies = {
                        b: v for b, v in pair.copies.items() if b > bucket - self.n_buckets
                    }
                return pair
        pair = RefPair(bucket)
        c.counts.setdefault(bucket, [0, 0, 0, 0, 0])[stat] += 1
        # Victim: an empty way, else the way with the oldest last bucket (the first such); if
        # that pair is still in its cluster's window it stops being counted.
        if len(entries) < self.ways:
            entries.append([cid, other, pair])
            return pair
        victim = min(range(self.ways), key=lambda i: (entries[i][2].last_bucket, i))
        owner = self.alive(entries[victim][0])
        if owner is not None and self.in_window(owner, entries[victim][2].last_bucket):
            owner.counts[entries[victim][2].last_bucket][stat] -= 1
            self.pair_evictions += 1
        entries[victim] = [cid, other, pair]
        return pair

    # -- bands ----------------------------------------------------------------------------------
    def band_lookup(self, key: int) -> int | None:
        for e in self.bands[key % self.band_sets]:
            if e[0] == key:
                return self.root(e[1])
        return None

    def band_store(self, key: int, cid: int, ts_ms: int) -> None:
        entries = self.bands[key % self.band_sets]
        for e in entries:
            if e[0] == key:
                if e[1] == cid:
                    e[2] = max(e[2], ts_ms)
                    return
                root = self.root(e[1])
                if root == cid:  # a cluster merged into cid
                    e[1], e[2] = cid, max(e[2], ts_ms)
                elif root is None:  # a dead cluster
                    e[1], e[2] = cid, ts_ms
                return  # else it belongs to another live cluster: leave it
        if len(entries) < self.ways:  # an empty way, else the least recently seen
            entries.append([key, cid, ts_ms])
            return
        victim = min(range(self.ways), key=lambda i: (entries[i][2], i))
        if self.now_ms - entries[victim][2] <= self.ttl_ms:  # seen within the TTL
            self.band_evictions += 1
        entries[victim] = [key, cid, ts_ms]

    # -- one message ----------------------------------------------------------------------------
    def assign(self, ts_ms: int, account: int, peer: int, flags: int, keys: list[int]) -> tuple:
        self.now_ms = max(self.now_ms, ts_ms)
        while self.lru:  # expire idle clusters from the least recently used end
            slot = next(iter(self.lru))
            if self.now_ms - self.clusters[slot].last_seen_ms <= self.ttl_ms:
                break
            self.release(slot)
            self.expirations += 1
        votes: dict[int, int] = {}
        for key in keys:
            cid = self.band_lookup(key)
            if cid is not None:
                votes[cid] = votes.get(cid, 0) + 1
        bucket = ts_ms // self.bucket_ms
        if votes:
            cid = min(votes, key=lambda c: (-votes[c], c))
            c = self.clusters[cid % self.capacity]
            for other, n_votes in votes.items():
                if other != cid and self.merge_min_votes > 0 and n_votes >= self.merge_min_votes:
                    self.merge(self.clusters[other % self.capacity], c)
            c.first_seen_ms = min(c.first_seen_ms, ts_ms)
            c.last_seen_ms = max(c.last_seen_ms, ts_ms)
        else:
            if not self.free:
                self.release(next(iter(self.lru)))
                self.evictions += 1
            slot = self.free.pop()
            cid = self.next_seq * self.capacity + slot
            self.next_seq += 1
            c = RefCluster(cid, ts_ms, ts_ms, bucket)
            self.clusters[slot] = c
            self.lru[slot] = None
        self.lru.move_to_end(cid % self.capacity)
        for key in keys:
            self.band_store(key, cid, ts_ms)
        self.advance(c, bucket)
        copies = 0
        if self.in_window(c, bucket):
            counts = c.counts.setdefault(bucket, [0, 0, 0, 0, 0])
            counts[0] += 1
            if flags & 4:  # CONTACT_KNOWN
                counts[3] += 1
                if not flags & 8:  # not IN_CONTACTS
                    counts[4] += 1
            sender = self.touch_pair(self.senders, cid, account, bucket, c, 1)
            sender.copies[bucket] = sender.copies.get(bucket, 0) + 1
            if peer != 0:
                self.touch_pair(self.recipients, cid, peer, bucket, c, 2)
        for e in self.senders[self.pair_set(cid, account)]:
            if e[0] == cid and e[1] == account:
                copies = sum(v for b, v in e[2].copies.items() if self.in_window(c, b))
        return (
            cid,
            self.window_sum(c, 0),
            self.window_sum(c, 1),
            self.window_sum(c, 2),
            self.window_sum(c, 3),
            self.window_sum(c, 4),
            c.first_seen_ms,
            copies,
        )
