"""SHA-1 of many short byte strings at once, in Numba.

datasketch's ``legacy`` and ``affine32`` MinHash schemes start from ``sha1_hash32(shingle)``: the first
four bytes of the SHA-1 digest read as a little-endian uint32. Calling ``hashlib`` once per shingle from
Python costs ~0.7 us, far more than the hash itself, so this module computes SHA-1 (FIPS 180-4) inside
Numba over spans of one uint8 buffer.

Messages of at most 55 bytes fit in one padded 64-byte block (every shingle does); they are hashed
``LANES`` at a time with the lanes as the innermost loop, which LLVM turns into SIMD code (16 x uint32
per instruction with AVX-512), several times faster than one message at a time. Longer messages take
a plain one-at-a-time path that handles any length.
"""

import numpy as np
from numba import njit

LANES = 64  # messages hashed side by side; a multiple of the widest SIMD vector (16 x uint32)
MAX_SINGLE_BLOCK_BYTES = 55  # 64-byte block minus the 0x80 pad byte and the 8-byte bit length

_H0 = np.uint32(0x67452301)
_H1 = np.uint32(0xEFCDAB89)
_H2 = np.uint32(0x98BADCFE)
_H3 = np.uint32(0x10325476)
_H4 = np.uint32(0xC3D2E1F0)
_K1 = np.uint32(0x5A827999)
_K2 = np.uint32(0x6ED9EBA1)
_K3 = np.uint32(0x8F1BBCDC)
_K4 = np.uint32(0xCA62C1D6)


# Numba widens uint32 arithmetic to 64 bits, so every result is truncated back with np.uint32(...).
@njit(cache=True, nogil=True, inline="always")
def _rotl(x, n):
    return np.uint32((x << n) | (x >> (32 - n)))


@njit(cache=True, nogil=True, inline="always")
def _choose(b, c, d):
    return np.uint32((b & c) | (~b & d))


@njit(cache=True, nogil=True, inline="always")
def _parity(b, c, d):
    return np.uint32(b ^ c ^ d)


@njit(cache=True, nogil=True, inline="always")
def _majority(b, c, d):
    return np.uint32((b & c) | (b & d) | (c & d))


@njit(cache=True, nogil=True, inline="always")
def _bswap32(x):
    return np.uint32(
        ((x & 0xFF) << 24) | ((x & 0xFF00) << 8) | ((x >> 8) & 0xFF00) | ((x >> 24) & 0xFF)
    )


def _make_lane_phase(mix):
    """20 rounds of one SHA-1 phase on all lanes; five rounds per pass so that the working variables
    rotate names instead of being copied, and the lane loop stays innermost (vectorised)."""

    @njit(cache=True, nogil=True, inline="always")
    def phase(state, w, t0, k):
        for t in range(t0, t0 + 20, 5):
            for lane in range(LANES):
                a = state[0, lane]
                b = state[1, lane]
                c = state[2, lane]
                d = state[3, lane]
                e = state[4, lane]
                e = np.uint32(e + _rotl(a, 5) + mix(b, c, d) + k + w[t, lane])
                b = _rotl(b, 30)
                d = np.uint32(d + _rotl(e, 5) + mix(a, b, c) + k + w[t + 1, lane])
                a = _rotl(a, 30)
                c = np.uint32(c + _rotl(d, 5) + mix(e, a, b) + k + w[t + 2, lane])
                e = _rotl(e, 30)
                b = np.uint32(b + _rotl(c, 5) + mix(d, e, a) + k + w[t + 3, lane])
                d = _rotl(d, 30)
                a = np.uint32(a + _rotl(b, 5) + mix(c, d, e) + k + w[t + 4, lane])
                c = _rotl(c, 30)
                state[0, lane] = a
                state[1, lane] = b
                state[2, lane] = c
                state[3, lane] = d
                state[4, lane] = e

    return phase


_lane_phase_choose = _make_lane_phase(_choose)
_lane_phase_parity = _make_lane_phase(_parity)
_lane_phase_majority = _make_lane_phase(_majority)


@njit(cache=True, nogil=True, inline="always")
def _load_single_block(data, start, stop, w, lane):
    """Write the padded single block of data[start:stop] (at most 55 bytes) into w[0:16, lane]."""
    length = stop - start
    for j in range(16):
        w[j, lane] = 0
    full_words = length >> 2
    for j in range(full_words):
        p = start + 4 * j
        w[j, lane] = (
            (np.uint32(data[p]) << 24)
            | (np.uint32(data[p + 1]) << 16)
            | (np.uint32(data[p + 2]) << 8)
            | np.uint32(data[p + 3])
        )
    last = np.uint32(0x80) << (24 - 8 * (length & 3))
    for i in range(full_words * 4, length):
        last |= np.uint32(data[start + i]) << (24 - 8 * (i & 3))
    w[full_words, lane] = np.uint32(last)
    w[15, lane] = np.uint32(length * 8)


@njit(cache=True, nogil=True, inline="always")
def _compress_lanes(w, state):
    """One SHA-1 compression of the initial state with block w[0:16, lane] for every lane."""
    for t in range(16, 80):
        for lane in range(LANES):
            w[t, lane] = _rotl(
                w[t - 3, lane] ^ w[t - 8, lane] ^ w[t - 14, lane] ^ w[t - 16, lane], 1
            )
    for lane in range(LANES):
        state[0, lane] = _H0
        state[1, lane] = _H1
        state[2, lane] = _H2
        state[3, lane] = _H3
        state[4, lane] = _H4
    _lane_phase_choose(state, w, 0, _K1)
    _lane_phase_parity(state, w, 20, _K2)
    _lane_phase_majority(state, w, 40, _K3)
    _lane_phase_parity(state, w, 60, _K4)
    for lane in range(LANES):
        state[0, lane] = np.uint32(state[0, lane] + _H0)
        state[1, lane] = np.uint32(state[1, lane] + _H1)
        state[2, lane] = np.uint32(state[2, lane] + _H2)
        state[3, lane] = np.uint32(state[3, lane] + _H3)
        state[4, lane] = np.uint32(state[4, lane] + _H4)


@njit(cache=True, nogil=True)
def _compress_one(h, w):
    """Compress block w[0:16] into the running state h[0:5] (general, one message at a time)."""
    for t in range(16, 80):
        w[t] = _rotl(w[t - 3] ^ w[t - 8] ^ w[t - 14] ^ w[t - 16], 1)
    a = h[0]
    b = h[1]
    c = h[2]
    d = h[3]
    e = h[4]
    for t in range(80):
        if t < 20:
            f = _choose(b, c, d)
            k = _K1
        elif t < 40:
            f = _parity(b, c, d)
            k = _K2
        elif t < 60:
            f = _majority(b, c, d)
            k = _K3
        else:
            f = _parity(b, c, d)
            k = _K4
        tmp = np.uint32(_rotl(a, 5) + f + e + k + w[t])
        e = d
        d = c
        c = _rotl(b, 30)
        b = a
        a = tmp
    h[0] = np.uint32(h[0] + a)
    h[1] = np.uint32(h[1] + b)
    h[2] = np.uint32(h[2] + c)
    h[3] = np.uint32(h[3] + d)
    h[4] = np.uint32(h[4] + e)


@njit(cache=True, nogil=True)
def _sha1_one(data, start, stop, h, w):
    """SHA-1 of data[start:stop] of any length into h[0:5] (big-endian digest words)."""
    h[0] = _H0
    h[1] = _H1
    h[2] = _H2
    h[3] = _H3
    h[4] = _H4
    length = stop - start
    padded = ((length + 8) // 64 + 1) * 64  # message + 0x80 + zeros + 8-byte length
    for block in range(padded // 64):
        for j in range(16):
            word = np.uint32(0)
            for byte_in_word in range(4):
                i = block * 64 + 4 * j + byte_in_word
                if i < length:
                    byte = np.uint32(data[start + i])
                elif i == length:
                    byte = np.uint32(0x80)
                elif i >= padded - 8:
                    bit_length = np.uint64(length) * np.uint64(8)
                    byte = np.uint32(
                        (bit_length >> np.uint64(8 * (padded - 1 - i))) & np.uint64(0xFF)
                    )
                else:
                    byte = np.uint32(0)
                word = np.uint32((word << 8) | byte)
            w[j] = word
        _compress_one(h, w)


@njit(cache=True, nogil=True)
def _sha1_spans(data, starts, stops, digests):
    """digests[m, :] = SHA-1 words of data[starts[m]:stops[m]], short messages LANES at a time."""
    w_lanes = np.zeros((80, LANES), dtype=np.uint32)
    state = np.zeros((5, LANES), dtype=np.uint32)
    lane_message = np.zeros(LANES, dtype=np.int64)
    w_one = np.zeros(80, dtype=np.uint32)
    h_one = np.zeros(5, dtype=np.uint32)
    filled = 0
    for m in range(starts.shape[0]):
        if stops[m] - starts[m] <= MAX_SINGLE_BLOCK_BYTES:
            _load_single_block(data, starts[m], stops[m], w_lanes, filled)
            lane_message[filled] = m
            filled += 1
            if filled == LANES:
                _compress_lanes(w_lanes, state)
                for lane in range(LANES):
                    for j in range(5):
                        digests[lane_message[lane], j] = state[j, lane]
                filled = 0
        else:
            _sha1_one(data, starts[m], stops[m], h_one, w_one)
            for j in range(5):
                digests[m, j] = h_one[j]
    if filled > 0:
        _compress_lanes(w_lanes, state)
        for lane in range(filled):
            for j in range(5):
                digests[lane_message[lane], j] = state[j, lane]


@njit(cache=True, nogil=True)
def _sha1_hash32_spans(data, starts, stops, out):
    """out[m] = datasketch ``sha1_hash32`` of data[starts[m]:stops[m]]: the first 4 digest bytes as a
    little-endian uint32, i.e. the byte-swapped first big-endian digest word."""
    w_lanes = np.zeros((80, LANES), dtype=np.uint32)
    state = np.zeros((5, LANES), dtype=np.uint32)
    lane_message = np.zeros(LANES, dtype=np.int64)
    w_one = np.zeros(80, dtype=np.uint32)
    h_one = np.zeros(5, dtype=np.uint32)
    filled = 0
    for m in range(starts.shape[0]):
        if stops[m] - starts[m] <= MAX_SINGLE_BLOCK_BYTES:
            _load_single_block(data, starts[m], stops[m], w_lanes, filled)
            lane_message[filled] = m
            filled += 1
            if filled == LANES:
                _compress_lanes(w_lanes, state)
                for lane in range(LANES):
                    out[lane_message[lane]] = _bswap32(state[0, lane])
                filled = 0
        else:
            _sha1_one(data, starts[m], stops[m], h_one, w_one)
            out[m] = _bswap32(h_one[0])
    if filled > 0:
        _compress_lanes(w_lanes, state)
        for lane in range(filled):
            out[lane_message[lane]] = _bswap32(state[0, lane])


def _check_spans(data: np.ndarray, starts: np.ndarray, stops: np.ndarray) -> None:
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 1):
        raise TypeError("data must be a 1-D uint8 numpy array")
    for name, arr in (("starts", starts), ("stops", stops)):
        if not (isinstance(arr, np.ndarray) and arr.dtype == np.int64 and arr.ndim == 1):
            raise TypeError(f"{name} must be a 1-D int64 numpy array")
        if not arr.flags.c_contiguous:
            raise ValueError(f"{name} must be C-contiguous")
    if not data.flags.c_contiguous:
        raise ValueError("data must be C-contiguous")
    if starts.shape != stops.shape:
        raise ValueError("starts and stops must have the same length")
    if starts.size and (starts.min() < 0 or stops.max() > data.shape[0] or np.any(stops < starts)):
        raise ValueError("spans must satisfy 0 <= starts <= stops <= len(data)")


def sha1_digest_words(data: np.ndarray, starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """SHA-1 of each span ``data[starts[m]:stops[m]]`` as a ``(n, 5)`` uint32 array of the
    big-endian digest words (``struct.unpack(">5I", hashlib.sha1(span).digest())``)."""
    _check_spans(data, starts, stops)
    digests = np.empty((starts.shape[0], 5), dtype=np.uint32)
    _sha1_spans(data, starts, stops, digests)
    return digests


def sha1_hash32(data: np.ndarray, starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """datasketch's ``sha1_hash32`` of each span ``data[starts[m]:stops[m]]`` (uint32 array)."""
    _check_spans(data, starts, stops)
    out = np.empty(starts.shape[0], dtype=np.uint32)
    _sha1_hash32_spans(data, starts, stops, out)
    return out
