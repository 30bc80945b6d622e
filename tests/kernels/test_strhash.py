"""The bulk string hash against a plain-Python FNV-1a 64 + fmix64."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels.strhash import hash_joined, hash_strings

MASK = (1 << 64) - 1


def reference_hash(text: str) -> int:
    h = 0xCBF29CE484222325
    for byte in text.encode("utf-8", "surrogatepass"):
        h = ((h ^ byte) * 0x100000001B3) & MASK
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & MASK
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & MASK
    h ^= h >> 33
    return h or 1


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=40), max_size=30))
def test_matches_reference(strings):
    got = hash_strings(strings)
    assert got.dtype == np.uint64 and got.shape == (len(strings),)
    assert got.tolist() == [reference_hash(s) for s in strings]


def test_known_values_never_change():
    # These ids are part of the data contract (snapshots, allowlists): pin them.
    assert hash_strings(["+447700900123", "a", ""]).tolist() == [
        3867561882286966070,
        9413272369427828315,
        17280346270528514342,
    ]
    assert len(set(hash_strings([f"+4477009{i:05d}" for i in range(100_000)]).tolist())) == 100_000


def test_count_mismatch_is_an_error():
    import pytest

    with pytest.raises(ValueError, match="holds 2 strings"):
        hash_joined(b"a\xffb", 3)
