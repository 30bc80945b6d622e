import random
import unicodedata

import numpy as np
import pytest
from datasketch import MinHash
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.content import shingles as detector_shingles
from detector.content import signatures
from detector.simulator import DEFAULT_SMS_PATH
from kernels import minhash as mk
from tests.kernels import reference_content as ref

INTERESTING = [
    *"aAzZ09 .,:/-_@#£$€%!?'\"()\t\n\r\x0b\x0c\x1c\x1f",
    *["\x85", "\xa0", "\u1680", "\u2000", "\u2028", "\u2029", "\u202f", "\u3000"],  # spaces
    *["\xad", "\u200b", "\u200c", "\u200d", "\u200e", "\u202a", "\u2060", "\ufeff"],  # invisible
    *["É", "ß", "ẞ", "İ", "Σ", "ς", "ŉ", "ΐ", "ﬁ", "Ａ", "１", "٣", "৪", "𝟘", "①", "\u0301"],
    *["\U0001f600", "\U00010400", "\ud83d", "\udc00", "ǅ", "Ⅻ", "㎏", "ｗｗｗ．"],
    *["www.", "http://", "://", ".com", ".co.uk", "bit.ly/", ".comx", "x.ly", "12.5", "1,000"],
]
text_strategy = st.lists(
    st.one_of(st.sampled_from(INTERESTING), st.characters(blacklist_characters="\x00")),
    max_size=40,
).map("".join)


def sms_texts() -> list[str]:
    with open(DEFAULT_SMS_PATH, encoding="utf-8") as f:
        return [line.rstrip("\n").split("\t", 1)[1] for line in f]


def kernel_normalise(texts: list[str]) -> list[str]:
    """The kernel path: NFKC in Python (as detector.content does), the rest in Numba."""
    encoded = [unicodedata.normalize("NFKC", t).encode("utf-8", "surrogatepass") for t in texts]
    data = np.frombuffer(b"".join(encoded) or b"\x00", dtype=np.uint8)[: sum(map(len, encoded))]
    lengths = np.array([len(e) for e in encoded], dtype=np.int64)
    starts = np.zeros(len(texts), dtype=np.int64)
    starts[1:] = np.cumsum(lengths)[:-1]
    out, out_starts, out_stops = mk.normalise_utf8(
        np.ascontiguousarray(data), starts, starts + lengths
    )
    raw = out.tobytes()
    return [
        raw[a:b].decode("utf-8", "surrogatepass")
        for a, b in zip(out_starts, out_stops, strict=True)
    ]


def kernel_shingles(texts: list[str]) -> list[list[bytes]]:
    norm = [t.encode("utf-8", "surrogatepass") for t in kernel_normalise(texts)]
    data = np.frombuffer(b"".join(norm) + b"\x00", dtype=np.uint8)[:-1].copy()
    lengths = np.array([len(e) for e in norm], dtype=np.int64)
    starts = np.zeros(len(texts), dtype=np.int64)
    starts[1:] = np.cumsum(lengths)[:-1]
    sh_starts, sh_stops, offsets = mk.shingle_spans(data, starts, starts + lengths)
    raw = data.tobytes()
    return [
        list(
            dict.fromkeys(
                raw[sh_starts[s] : sh_stops[s]] for s in range(offsets[i], offsets[i + 1])
            )
        )
        for i in range(len(texts))
    ]


# -- normalisation and shingles ------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.lists(text_strategy, min_size=1, max_size=8))
def test_normalise_matches_reference_on_random_unicode(texts):
    assert kernel_normalise(texts) == [ref.normalise(t) for t in texts]


@settings(max_examples=100, deadline=None)
@given(st.lists(text_strategy, min_size=1, max_size=8))
def test_shingles_match_reference_on_random_unicode(texts):
    assert kernel_shingles(texts) == [ref.shingles(t) for t in texts]


def test_normalise_and_shingles_match_reference_on_real_sms():
    texts = sms_texts()
    assert kernel_normalise(texts) == [ref.normalise(t) for t in texts]
    assert kernel_shingles(texts) == [ref.shingles(t) for t in texts]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("  Hello\tWORLD \n", "hello world"),
        ("Call 0800-123-456 now, win £1,000.50!", "call N now, win £N!"),
        ("visit www.Example.org/x or bit.ly/abc, x.comedy", "visit U or U x.comedy"),
        ("see https://t.co/z (WIN.co.uk)", "see U U"),
        ("ﬁnal ＦＲＥＥ offer ①", "final free offer N"),
        ("fr\u200bee m\u00adoney", "free money"),
        ("Straße ΣΑΣ", "strasse σασ"),
        ("٣٤ apples 2nd", "N apples Nnd"),
        ("", ""),
        ("\u200b \u3000 ", ""),
    ],
)
def test_documented_normalisation_rules(text, expected):
    assert ref.normalise(text) == expected
    assert kernel_normalise([text]) == [expected]


def test_short_texts_are_one_shingle_and_empty_texts_none():
    assert kernel_shingles(["ok", "hello", "hello!", " ", ""]) == [
        [b"ok"],
        [b"hello"],
        [b"hello", b"ello!"],
        [],
        [],
    ]


def test_unicode_tables_cover_the_whole_code_space():
    limit = mk.UNICODE_SCAN_LIMIT
    for cp in range(limit, 0x110000):
        ch = chr(cp)
        assert not ch.isdecimal() and not ch.isspace() and ch.casefold() == ch, hex(cp)
    growth = max(
        len(chr(cp).casefold().encode("utf-8", "surrogatepass"))
        / len(chr(cp).encode("utf-8", "surrogatepass"))
        for cp in range(limit)
    )
    assert growth <= mk.MAX_FOLD_GROWTH


def test_placeholders_cannot_come_from_text():
    # After NFKC and case folding no character yields 'U' or 'N', so placeholders are unambiguous.
    for cp in range(0x110000):
        folded = unicodedata.normalize("NFKC", chr(cp)).casefold()
        assert "U" not in folded and "N" not in folded, hex(cp)


def test_normalised_output_may_grow_by_case_folding():
    text = "ΐ" * 50  # 2 UTF-8 bytes each, 3 code points (6 bytes) once folded
    assert kernel_normalise([text]) == [ref.normalise(text)]


# -- datasketch-compatible schemes ---------------------------------------------------------------


@pytest.mark.parametrize(("num_perm", "seed"), [(1, 1), (16, 7), (128, 1), (256, 42)])
def test_permutations_equal_datasketch(num_perm, seed):
    a, b = mk.affine32_permutations(num_perm, seed)
    ds = MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations
    assert a.dtype == np.uint32 and np.array_equal(a, ds[0]) and np.array_equal(b, ds[1])
    a, b = mk.legacy_permutations(num_perm, seed)
    ds = MinHash(num_perm=num_perm, seed=seed, scheme="legacy").permutations
    assert a.dtype == np.uint64 and np.array_equal(a, ds[0]) and np.array_equal(b, ds[1])


def _spans(shingle_lists: list[list[bytes]]):
    flat = [s for sh in shingle_lists for s in sh]
    data = np.frombuffer(b"".join(flat) + b"\x00", dtype=np.uint8)[:-1].copy()
    lengths = np.array([len(s) for s in flat], dtype=np.int64)
    starts = np.zeros(len(flat), dtype=np.int64)
    starts[1:] = np.cumsum(lengths)[:-1]
    offsets = np.zeros(len(shingle_lists) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(sh) for sh in shingle_lists])
    return data, starts, starts + lengths, offsets


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.lists(st.binary(max_size=70), max_size=12), min_size=1, max_size=6),
    st.integers(1, 40),
    st.integers(0, 2**32 - 1),
)
def test_sha1_signatures_match_reference(shingle_lists, num_perm, seed):
    data, starts, stops, offsets = _spans(shingle_lists)
    a, b = mk.affine32_permutations(num_perm, seed)
    got = mk.sha1_signatures(data, starts, stops, offsets, a, b, "affine32")
    assert got.tolist() == [
        ref.affine32_signature(sh, a.tolist(), b.tolist()) for sh in shingle_lists
    ]
    a, b = mk.legacy_permutations(num_perm, seed)
    got = mk.sha1_signatures(data, starts, stops, offsets, a, b, "legacy")
    assert got.tolist() == [
        ref.legacy_signature(sh, a.tolist(), b.tolist()) for sh in shingle_lists
    ]


def test_sha1_signatures_reject_mismatched_permutations():
    data, starts, stops, offsets = _spans([[b"abc"]])
    a, b = mk.affine32_permutations(4, 1)
    with pytest.raises(TypeError):
        mk.sha1_signatures(data, starts, stops, offsets, a, b, "legacy")
    with pytest.raises(ValueError):
        mk.sha1_signatures(data, starts, stops, offsets, a, b, "affine64")
    with pytest.raises(ValueError):
        mk.sha1_signatures(data, starts, stops, offsets[:1], a, b, "affine32")


# -- fast scheme ---------------------------------------------------------------------------------


def kernel_fast(texts: list[str], num_perm: int, seed: int) -> np.ndarray:
    norm = [t.encode("utf-8", "surrogatepass") for t in kernel_normalise(texts)]
    data = np.frombuffer(b"".join(norm) + b"\x00", dtype=np.uint8)[:-1].copy()
    lengths = np.array([len(e) for e in norm], dtype=np.int64)
    starts = np.zeros(len(texts), dtype=np.int64)
    starts[1:] = np.cumsum(lengths)[:-1]
    return mk.fast_signatures(data, starts, starts + lengths, num_perm, seed)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(text_strategy, min_size=1, max_size=6),
    st.sampled_from([1, 2, 7, 64, 128, 300]),  # 300: above FIRST_PROBE_MAX_BINS, walks sequences
    st.integers(0, 2**64 - 1),
)
def test_fast_signatures_match_reference(texts, num_perm, seed):
    got = kernel_fast(texts, num_perm, seed)
    hash_seed = int(mk.seed64(seed))
    assert got.tolist() == [ref.fast_signature(ref.shingles(t), num_perm, hash_seed) for t in texts]


@pytest.mark.parametrize("num_perm", [64, 128, 300])
def test_fast_signatures_match_reference_on_sms_of_every_length(num_perm):
    # Short texts take the few-filled-bins path, long ones the branch-free path and its misses.
    texts = sorted(set(sms_texts()), key=len)[::25]
    got = kernel_fast(texts, num_perm, 5)
    hash_seed = int(mk.seed64(5))
    assert got.tolist() == [ref.fast_signature(ref.shingles(t), num_perm, hash_seed) for t in texts]


def test_fast_empty_text_is_all_empty():
    assert (kernel_fast(["", " \u200b "], 16, 1) == mk.EMPTY_32).all()


def _mutate(text: str, rng: random.Random, vocabulary: list[str]) -> str:
    words = text.split()
    for _ in range(rng.randrange(12)):
        op = rng.randrange(4)
        if op == 0 and len(words) > 1:
            del words[rng.randrange(len(words))]
        elif op == 1:
            words.insert(rng.randrange(len(words) + 1), rng.choice(vocabulary))
        elif op == 2 and words:
            words[rng.randrange(len(words))] = rng.choice(vocabulary)
        elif words:
            i = rng.randrange(len(words))
            k = rng.randrange(len(words[i]))
            words[i] = words[i][:k] + rng.choice("abcdefghijklmnopqrstuvwxyz") + words[i][k + 1 :]
    return " ".join(words)


def test_fast_scheme_is_as_accurate_as_classic_minhash():
    """Mean absolute error of the Jaccard estimate against exact Jaccard, on 1,500 SMS pairs from
    J = 0 to 1 (mutated copies and random pairs), averaged over 3 seeds: the fast scheme's error
    stays within 10% of classic MinHash's (affine32, same num_perm)."""
    rng = random.Random(0)
    texts = sms_texts()
    vocabulary = " ".join(texts).split()
    left, right = [], []
    for _ in range(1200):
        t = rng.choice(texts)
        left.append(t)
        right.append(_mutate(t, rng, vocabulary))
    for _ in range(300):
        left.append(rng.choice(texts))
        right.append(rng.choice(texts))
    exact = np.array(
        [
            ref.jaccard(detector_shingles(a), detector_shingles(b))
            for a, b in zip(left, right, strict=True)
        ]
    )
    assert exact.min() < 0.1 and exact.max() == 1.0 and 0.2 < np.median(exact) < 0.9
    for num_perm in (32, 64, 128):
        errors = {}
        for scheme in ("fast", "affine32"):
            maes = []
            for seed in (1, 2, 3):
                a = signatures(left, num_perm=num_perm, seed=seed, scheme=scheme)
                b = signatures(right, num_perm=num_perm, seed=seed, scheme=scheme)
                maes.append(np.abs((a == b).mean(axis=1) - exact).mean())
            errors[scheme] = float(np.mean(maes))
        assert errors["fast"] <= 1.10 * errors["affine32"], (num_perm, errors)
        assert errors["fast"] < 0.06, (num_perm, errors)


# -- joined batches ------------------------------------------------------------------------------


def test_split_joined():
    data = np.frombuffer(b"ab\x00\x00cde\x00", dtype=np.uint8)
    starts, stops = mk.split_joined(data, 4)
    assert starts.tolist() == [0, 3, 4, 8] and stops.tolist() == [2, 3, 7, 8]
    with pytest.raises(ValueError):
        mk.split_joined(data, 3)


# -- NFKC-stable code points -----------------------------------------------------------------------


def test_nfkc_stable_code_points_are_left_alone_by_nfkc_in_any_company():
    stable = mk.NFKC_STABLE
    for cp in np.flatnonzero(stable).tolist():
        ch = chr(cp)
        assert unicodedata.normalize("NFKC", ch) == ch and unicodedata.combining(ch) == 0, hex(cp)
    assert not stable[0]  # NUL becomes a space in the content stage
    for cp in range(0x110000):  # no canonical composition joins two stable code points
        parts = unicodedata.decomposition(chr(cp)).split()
        if len(parts) == 2 and not parts[0].startswith("<"):
            first, second = (int(p, 16) for p in parts)
            both = all(c < stable.shape[0] and stable[c] for c in (first, second))
            assert not both, hex(cp)
    hangul_vowel, hangul_trailing = 0x1161, 0x11A8  # algorithmic compositions
    assert not stable[hangul_vowel] and not stable[hangul_trailing]


stable_text = st.text(
    alphabet=st.sampled_from([chr(cp) for cp in np.flatnonzero(mk.NFKC_STABLE).tolist()]),
    max_size=40,
)
mixed_text = st.text(max_size=40)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(stable_text, mixed_text), min_size=1, max_size=20))
def test_nfkc_stable_texts_finds_the_texts_nfkc_leaves_unchanged(texts):
    encoded = [t.encode("utf-8", "surrogatepass") for t in texts]
    stops = np.cumsum([len(e) for e in encoded]).astype(np.int64)
    starts = stops - np.array([len(e) for e in encoded], dtype=np.int64)
    data = np.frombuffer(b"".join(encoded) or b"\0", dtype=np.uint8)
    rows = np.arange(len(texts), dtype=np.int64)
    found = mk.nfkc_stable_texts(data, starts, stops, rows)
    for text, is_stable in zip(texts, found.tolist(), strict=True):
        expected = all(ord(c) < mk.NFKC_STABLE.shape[0] and mk.NFKC_STABLE[ord(c)] for c in text)
        assert is_stable == expected
        if is_stable:
            assert unicodedata.normalize("NFKC", text) == text
