import hashlib
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels.sha1 import LANES, MAX_SINGLE_BLOCK_BYTES, sha1_digest_words, sha1_hash32
from tests.kernels.reference_content import sha1_hash32 as reference_hash32


def _pack(messages: list[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    data = np.frombuffer(b"".join(messages), dtype=np.uint8).copy()
    lengths = np.array([len(m) for m in messages], dtype=np.int64)
    starts = np.zeros(len(messages), dtype=np.int64)
    starts[1:] = np.cumsum(lengths)[:-1]
    return data, starts, starts + lengths


def _check(messages: list[bytes]) -> None:
    data, starts, stops = _pack(messages)
    words = sha1_digest_words(data, starts, stops)
    hashes = sha1_hash32(data, starts, stops)
    for i, m in enumerate(messages):
        digest = hashlib.sha1(m).digest()
        assert tuple(words[i]) == struct.unpack(">5I", digest), (i, len(m))
        assert hashes[i] == reference_hash32(m), (i, len(m))


def test_every_length_up_to_300_bytes_matches_hashlib():
    rng = np.random.default_rng(1)
    # 0..300 covers the padding boundaries 55/56 (one block or two) and 63/64/119/120/128.
    _check([rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in range(301)])


def test_boundary_lengths_in_every_lane_position():
    rng = np.random.default_rng(2)
    boundaries = [0, 1, 3, 4, 54, 55, 56, 63, 64, 65]
    messages = [
        rng.integers(0, 256, boundaries[i % len(boundaries)], dtype=np.uint8).tobytes()
        for i in range(3 * LANES + 7)  # several full lane groups, long messages interleaved
    ]
    _check(messages)


def test_short_messages_fill_partial_last_group():
    rng = np.random.default_rng(3)
    lengths = rng.integers(0, MAX_SINGLE_BLOCK_BYTES + 1, LANES + 5)
    _check([rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in lengths])


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=80))
def test_random_messages_match_hashlib(messages):
    _check(messages)


def test_overlapping_spans_of_one_buffer():
    data = np.frombuffer(b"the quick brown fox jumps over the lazy dog", dtype=np.uint8)
    starts = np.array([0, 4, 4, 10, 43], dtype=np.int64)
    stops = np.array([43, 9, 43, 15, 43], dtype=np.int64)
    words = sha1_digest_words(data, starts, stops)
    for i in range(starts.size):
        expected = struct.unpack(">5I", hashlib.sha1(data[starts[i] : stops[i]].tobytes()).digest())
        assert tuple(words[i]) == expected


def test_empty_input():
    data, starts, stops = np.zeros(0, np.uint8), np.zeros(0, np.int64), np.zeros(0, np.int64)
    assert sha1_hash32(data, starts, stops).shape == (0,)
    assert sha1_digest_words(data, starts, stops).shape == (0, 5)


@pytest.mark.parametrize(
    ("data", "starts", "stops", "error"),
    [
        (np.zeros(4, np.int8), np.zeros(1, np.int64), np.ones(1, np.int64), TypeError),
        (np.zeros(4, np.uint8), np.zeros(1, np.int32), np.ones(1, np.int64), TypeError),
        (np.zeros(4, np.uint8), np.zeros(1, np.int64), np.full(1, 5, np.int64), ValueError),
        (np.zeros(4, np.uint8), np.full(1, 2, np.int64), np.ones(1, np.int64), ValueError),
        (np.zeros(4, np.uint8), np.zeros(2, np.int64), np.ones(1, np.int64), ValueError),
        (np.zeros(4, np.uint8), np.zeros(4, np.int64)[::2], np.ones(2, np.int64), ValueError),
    ],
)
def test_rejects_bad_arguments(data, starts, stops, error):
    with pytest.raises(error):
        sha1_hash32(data, starts, stops)
