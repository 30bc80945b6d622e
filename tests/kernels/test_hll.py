"""kernels.hll: the sliding window equals a plain HyperLogLog of the window's items, and the estimator
keeps its stated error bound."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import hll


@settings(max_examples=100, deadline=None)
@given(
    n_buckets=st.sampled_from([1, 3, 12, 24]),
    steps=st.lists(
        st.tuples(st.integers(-30, 4), st.integers(0, 2**64 - 1)), min_size=1, max_size=300
    ),
)
def test_sliding_registers_equal_plain_registers_of_the_window(n_buckets, steps):
    """Items arrive with mostly increasing buckets (some late, some far behind); the window's
    registers must be exactly those of a plain HLL over the items whose bucket is still inside."""
    sketch = hll.new_sliding_hll(n_buckets, bucket=100)
    newest = 100
    buckets, items = [], []
    for step, item in steps:
        if step >= 0:  # the newest bucket moves on, the item lands in it
            newest += step
            buckets.append(newest)
        else:  # an item behind the newest bucket (maybe outside the window already)
            buckets.append(newest + step)
        items.append(item)
        hll.sliding_hll_add(sketch, np.array(buckets[-1:]), np.array(items[-1:], dtype=np.uint64))
    clock = int(sketch.clock[0])
    assert clock == newest
    inside = np.array([b > clock - n_buckets for b in buckets])
    expected = hll.hll_registers(np.array(items, dtype=np.uint64)[inside])
    np.testing.assert_array_equal(sketch.win, expected)
    np.testing.assert_array_equal(sketch.hist, hll.histogram(expected))


def test_window_forgets_buckets_that_leave_it():
    sketch = hll.new_sliding_hll(4, bucket=0)
    for bucket in range(4):
        items = np.arange(bucket * 1000, bucket * 1000 + 1000, dtype=np.uint64)
        hll.sliding_hll_add(sketch, np.full(1000, bucket), items)
    assert abs(hll.sliding_hll_estimate(sketch) / 4000 - 1) <= hll.RELATIVE_ERROR_BOUND
    hll.sliding_hll_advance(sketch, 5)  # buckets 0 and 1 leave
    assert abs(hll.sliding_hll_estimate(sketch) / 2000 - 1) <= hll.RELATIVE_ERROR_BOUND
    hll.sliding_hll_advance(sketch, 100)
    assert hll.sliding_hll_estimate(sketch) == 0.0
    assert sketch.hist[0] == hll.REGISTERS


@pytest.mark.parametrize("n", [1_000, 2_000, 5_000, 20_000, 100_000, 1_000_000])
def test_relative_error_bound_from_1000_items(n):
    rng = np.random.default_rng(n)
    for _ in range(20):
        items = rng.integers(0, 2**63, size=n, dtype=np.uint64)
        estimate = hll.estimate_from_histogram(hll.histogram(hll.hll_registers(items)))
        assert abs(estimate / n - 1) <= hll.RELATIVE_ERROR_BOUND, (n, estimate)


def test_standard_error_is_about_1_04_over_sqrt_m():
    """The spread of the estimates is that of a HyperLogLog with m = 4096 (1.6 %), and they are
    unbiased: a bound that held only by luck would show here."""
    rng = np.random.default_rng(11)
    n = 20_000
    errors = []
    for _ in range(150):
        items = rng.integers(0, 2**63, size=n, dtype=np.uint64)
        errors.append(hll.estimate_from_histogram(hll.histogram(hll.hll_registers(items))) / n - 1)
    errors = np.array(errors)
    assert 0.7 * hll.RELATIVE_STANDARD_ERROR <= errors.std() <= 1.3 * hll.RELATIVE_STANDARD_ERROR
    assert abs(errors.mean()) <= 3 * hll.RELATIVE_STANDARD_ERROR / np.sqrt(len(errors))


@pytest.mark.parametrize("n", [0, 1, 2, 10, 50, 100, 300])
def test_small_counts_are_nearly_exact(n):
    rng = np.random.default_rng(n + 1)
    for _ in range(20):
        items = rng.integers(0, 2**63, size=n, dtype=np.uint64)
        estimate = hll.estimate_from_histogram(hll.histogram(hll.hll_registers(items)))
        assert abs(estimate - n) <= 0.05 * n + 1.5, (n, estimate)


def test_duplicates_do_not_count():
    items = np.repeat(np.arange(1, 3001, dtype=np.uint64), 5)
    estimate = hll.estimate_from_histogram(hll.histogram(hll.hll_registers(items)))
    assert abs(estimate / 3000 - 1) <= hll.RELATIVE_ERROR_BOUND


def test_rank_is_capped():
    j, rank = hll.register_and_rank(np.uint64(0))
    assert (j, rank) == (0, hll.MAX_RANK)
    j, rank = hll.register_and_rank(np.uint64(2**63))
    assert (j, rank) == (hll.REGISTERS // 2, hll.MAX_RANK)
    j, rank = hll.register_and_rank(np.uint64((1 << 52) - 1) | np.uint64(1 << 51))
    assert (j, rank) == (0, 1)
