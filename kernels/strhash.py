"""Stable 64-bit hashes of strings, computed in bulk.

Account and peer ids enter the kernels as 64-bit integers. The id of a string is FNV-1a (64-bit) over
its UTF-8 bytes followed by the murmur3 ``fmix64`` finaliser, so that short, similar ids (phone numbers
differing in one digit) spread over the whole 64-bit range. 0 is reserved for "no id" and maps to 1.
The function is part of the data contract: snapshots and signals depend on it, so it never changes.
"""

import numpy as np
from numba import njit

from .hashtable import mix64

SEPARATOR = (
    0xFF  # never occurs in UTF-8 (even with surrogatepass), so it can delimit joined strings
)

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


@njit(cache=True, nogil=True, inline="always")
def hash_span(data, start, stop):
    """The id of the UTF-8 string data[start:stop] (same as ``hash_strings``)."""
    h = _FNV_OFFSET
    for i in range(start, stop):
        h ^= np.uint64(data[i])
        h *= _FNV_PRIME
    h = mix64(h)
    return h if h != 0 else np.uint64(1)


@njit(cache=True, nogil=True)
def _hash_joined(buffer, out):
    n = 0
    h = _FNV_OFFSET
    for i in range(buffer.shape[0]):
        byte = buffer[i]
        if byte == SEPARATOR:
            h = mix64(h)
            out[n] = h if h != 0 else np.uint64(1)
            n += 1
            h = _FNV_OFFSET
        else:
            h ^= np.uint64(byte)
            h *= _FNV_PRIME
    h = mix64(h)
    out[n] = h if h != 0 else np.uint64(1)
    return n + 1


def hash_joined(buffer: bytes, count: int) -> np.ndarray:
    """Hash ``count`` UTF-8 strings joined by the byte 0xFF; returns a uint64 array of ``count`` ids."""
    if count < 0:
        raise ValueError("count must be >= 0")
    out = np.empty(count, dtype=np.uint64)
    if count == 0:
        return out
    found = _hash_joined(np.frombuffer(buffer, dtype=np.uint8), out)
    if found != count:
        raise ValueError(f"buffer holds {found} strings, expected {count}")
    return out


def hash_strings(strings: list[str]) -> np.ndarray:
    """Stable 64-bit ids (never 0) of a list of strings."""
    if not strings:
        return np.empty(0, dtype=np.uint64)
    joined = b"\xff".join([s.encode("utf-8", "surrogatepass") for s in strings])
    return hash_joined(joined, len(strings))
