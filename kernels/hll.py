"""Sliding-window HyperLogLog: distinct counts over a ring of time buckets.

A window of ``n`` buckets keeps one register array per bucket (the largest rank seen in that bucket).
The window's registers are the element-wise maximum over the ring, i.e. exactly the registers of a
plain HyperLogLog fed with the items of the buckets still in the window. They are kept incrementally
together with their histogram (how many registers hold each value): adding an item is O(1), an
estimate is O(q) and needs no pass over the registers. When buckets leave the window (at most once
per bucket boundary) the window registers are recomputed from the ring in O(n * m).

Estimates use Ertl's improved estimator (O. Ertl, "New cardinality estimation algorithms for
HyperLogLog sketches", 2017, algorithm 6), which needs only the register histogram and is unbiased
over the whole range without empirical bias tables or a switch to linear counting.

Precision is fixed at p = 12: m = 4096 one-byte registers per bucket; the relative standard error is
about 1.04 / sqrt(m) = 1.6 %. The bound we state and test is ``|estimate / true - 1| <= 5 %`` for
1,000 distinct items and more (3.1 standard errors; a violation has probability about 0.2 % per
estimate). For small counts the estimator behaves like linear counting: below a few hundred items
its absolute error is a fraction of an item on average.

Items are 64-bit integers; ``item_hash`` mixes them (callers pass ids or 32-bit fingerprints).
"""

import math
from typing import NamedTuple

import numpy as np
from numba import njit
from numba.cpython.unsafe.numbers import leading_zeros

from .hashtable import mix64

PRECISION = 12
REGISTERS = 1 << PRECISION  # m
RANK_BITS = 64 - PRECISION  # q: hash bits left for the rank
MAX_RANK = RANK_BITS + 1  # register values are 0 (empty) .. q + 1
HISTOGRAM_LEN = 64  # >= MAX_RANK + 1, padded
RELATIVE_STANDARD_ERROR = 1.04 / math.sqrt(REGISTERS)
RELATIVE_ERROR_BOUND = 0.05  # stated bound for >= 1,000 distinct items (tested)
ERROR_BOUND_FROM = 1000

_ALPHA_INF = 1.0 / (2.0 * math.log(2.0))
_HASH_SEED = np.uint64(0x9E3779B97F4A7C15)
_GUARD = np.uint64(1 << (PRECISION - 1))  # caps the rank at q + 1
_SHIFT_INDEX = np.uint64(64 - PRECISION)
_SHIFT_RANK = np.uint64(PRECISION)


@njit(cache=True, nogil=True, inline="always")
def item_hash(item):
    """64-bit hash of an item (uint64 or smaller unsigned integer)."""
    return mix64(np.uint64(item) ^ _HASH_SEED)


@njit(cache=True, nogil=True, inline="always")
def register_and_rank(h):
    """(register index, rank) of a 64-bit hash: top p bits, then 1 + leading zeros of the rest."""
    j = np.int64(h >> _SHIFT_INDEX)
    rank = np.int64(leading_zeros((h << _SHIFT_RANK) | _GUARD)) + 1
    return j, rank


@njit(cache=True, nogil=True)
def _sigma(x):
    if x == 1.0:
        return math.inf
    y = 1.0
    z = x
    while True:
        x = x * x
        z_old = z
        z += x * y
        y += y
        if z == z_old:
            return z


@njit(cache=True, nogil=True)
def _tau(x):
    if x == 0.0 or x == 1.0:
        return 0.0
    y = 1.0
    z = 1.0 - x
    while True:
        x = math.sqrt(x)
        z_old = z
        y *= 0.5
        z -= (1.0 - x) * (1.0 - x) * y
        if z == z_old:
            return z / 3.0


@njit(cache=True, nogil=True)
def estimate_from_histogram(hist):
    """Ertl's improved estimate of the number of distinct items from a register histogram."""
    m = 0
    for k in range(MAX_RANK + 1):
        m += hist[k]
    mf = float(m)
    z = mf * _tau(1.0 - hist[MAX_RANK] / mf)
    for k in range(RANK_BITS, 0, -1):
        z = 0.5 * (z + hist[k])
    z += mf * _sigma(hist[0] / mf)
    return _ALPHA_INF * mf * mf / z


@njit(cache=True, nogil=True)
def recompute_window(ring, win, hist):
    """Window registers = max over the ring's buckets; histogram of the window registers."""
    n, m = ring.shape
    for j in range(m):
        win[j] = ring[0, j]
    for slot in range(1, n):
        for j in range(m):
            v = ring[slot, j]
            if v > win[j]:
                win[j] = v
    hist[:] = 0
    for j in range(m):
        hist[win[j]] += 1


@njit(cache=True, nogil=True)
def ring_advance(ring, win, hist, clock, bucket):
    """Slide the window so that ``bucket`` is its newest bucket; returns the new clock.

    Buckets that leave the window are cleared and the window registers recomputed. A ``bucket`` at or
    before ``clock`` changes nothing (the window never moves back).
    """
    if bucket <= clock:
        return clock
    n, m = ring.shape
    for b in range(max(clock + 1, bucket - n + 1), bucket + 1):
        slot = b % n
        for j in range(m):
            ring[slot, j] = 0
    recompute_window(ring, win, hist)
    return bucket


@njit(cache=True, nogil=True, inline="always")
def ring_add(ring, win, hist, clock, bucket, j, rank):
    """Record (register ``j``, ``rank``) in ``bucket``; ignored unless clock - n < bucket <= clock.

    Returns True when the window registers (hence the estimate) changed.
    """
    n = ring.shape[0]
    if bucket > clock or bucket <= clock - n:
        return False
    slot = bucket % n
    if rank <= ring[slot, j]:
        return False
    ring[slot, j] = rank
    w = win[j]
    if rank <= w:
        return False
    hist[w] -= 1
    hist[rank] += 1
    win[j] = rank
    return True


class SlidingHLL(NamedTuple):
    """A standalone sliding-window HyperLogLog (the account kernels keep the same arrays in a pool)."""

    ring: np.ndarray  # uint8 (n_buckets, m): max rank per bucket
    win: np.ndarray  # uint8 (m,): max over the window
    hist: np.ndarray  # int32 (HISTOGRAM_LEN,): histogram of ``win``
    clock: np.ndarray  # int64 (1,): newest bucket of the window


def new_sliding_hll(n_buckets: int, *, bucket: int = 0) -> SlidingHLL:
    """An empty sketch over ``n_buckets`` buckets whose newest bucket is ``bucket``."""
    if n_buckets < 1:
        raise ValueError(f"n_buckets must be >= 1, got {n_buckets}")
    hist = np.zeros(HISTOGRAM_LEN, dtype=np.int32)
    hist[0] = REGISTERS
    return SlidingHLL(
        np.zeros((n_buckets, REGISTERS), dtype=np.uint8),
        np.zeros(REGISTERS, dtype=np.uint8),
        hist,
        np.array([bucket], dtype=np.int64),
    )


@njit(cache=True, nogil=True)
def _add_many(ring, win, hist, clock, buckets, items):
    c = clock[0]
    for i in range(items.shape[0]):
        b = buckets[i]
        if b > c:
            c = ring_advance(ring, win, hist, c, b)
        j, rank = register_and_rank(item_hash(items[i]))
        ring_add(ring, win, hist, c, b, j, rank)
    clock[0] = c


def sliding_hll_add(sketch: SlidingHLL, buckets: np.ndarray, items: np.ndarray) -> None:
    """Add ``items`` (uint64) seen in ``buckets`` (int64), in order; the window follows the newest
    bucket. Items whose bucket already left the window are ignored."""
    buckets = np.ascontiguousarray(buckets, dtype=np.int64)
    items = np.ascontiguousarray(items, dtype=np.uint64)
    if buckets.shape != items.shape or buckets.ndim != 1:
        raise ValueError("buckets and items must be 1-D arrays of the same length")
    _add_many(sketch.ring, sketch.win, sketch.hist, sketch.clock, buckets, items)


def sliding_hll_advance(sketch: SlidingHLL, bucket: int) -> None:
    """Slide the window so that ``bucket`` is its newest bucket (no-op if it is not newer)."""
    sketch.clock[0] = ring_advance(
        sketch.ring, sketch.win, sketch.hist, int(sketch.clock[0]), int(bucket)
    )


def sliding_hll_estimate(sketch: SlidingHLL) -> float:
    """Estimated number of distinct items in the window."""
    return float(estimate_from_histogram(sketch.hist))


@njit(cache=True, nogil=True)
def _static_registers(items, out):
    for i in range(items.shape[0]):
        j, rank = register_and_rank(item_hash(items[i]))
        if rank > out[j]:
            out[j] = rank


def hll_registers(items: np.ndarray) -> np.ndarray:
    """Registers of a plain (non-sliding) HyperLogLog of ``items`` (uint64), as uint8 (m,)."""
    out = np.zeros(REGISTERS, dtype=np.uint8)
    _static_registers(np.ascontiguousarray(items, dtype=np.uint64), out)
    return out


def histogram(registers: np.ndarray) -> np.ndarray:
    """Histogram (int32, HISTOGRAM_LEN) of register values, the input of the estimator."""
    return np.bincount(registers, minlength=HISTOGRAM_LEN).astype(np.int32)
