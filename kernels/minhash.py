"""Text normalisation, character shingles and MinHash signatures of a whole batch, in Numba.

A batch of texts arrives as one UTF-8 buffer with per-text spans ``data[starts[i]:stops[i]]``, already
NFKC-normalised by the caller (``unicodedata`` in C, needed only for non-ASCII text). From there
everything runs in Numba:

1. ``normalise_utf8``: case-fold (``str.casefold``, from tables built with ``str`` methods at import),
   drop invisible format characters, split on Unicode whitespace, replace each URL token by ``U`` and
   each number by ``N``, join the tokens with one space. After case folding no text contains an
   uppercase ASCII letter, so the placeholders cannot collide with real text. The rules (the spec of
   ``detector.content.shingles``):

   - invisible: U+00AD, U+200B..U+200F, U+202A..U+202E, U+2060..U+2064, U+FEFF (removed first);
   - whitespace: every code point for which ``str.isspace()`` is true (``str.split()`` semantics);
   - URL token: contains ``://`` or ``www.``, or an ASCII letter/digit, a dot and one of ``TLDS`` not
     followed by an ASCII letter/digit (``bit.ly/x``, ``win.co.uk``); the whole token becomes ``U``;
   - number (in other tokens): ``\\d+(?:[.,:/-]\\d+)*`` with ``\\d`` any Unicode decimal digit
     (``str.isdecimal()``), replaced by ``N``: ``£1,000.50`` -> ``£N``, ``08002986030`` -> ``N``.

2. ``shingle_spans``: overlapping ``shingle_chars``-code-point windows of the normalised text (a text
   shorter than that is one shingle; an empty one has none).

3. Signatures: ``affine32`` and ``legacy`` reproduce datasketch 2.x bit for bit from SHA-1 of each
   shingle (``kernels.sha1``); ``fast`` is one-permutation hashing with optimal densification over a
   64-bit hash of each shingle taken from a rolling polynomial of its code points (see
   ``fast_signatures``).
"""

import unicodedata
from typing import NamedTuple

import numpy as np
from numba import njit

from kernels.sha1 import _sha1_hash32_spans

from .hashtable import mix64

SHINGLE_CHARS = 5

URL_PLACEHOLDER = ord("U")
NUMBER_PLACEHOLDER = ord("N")
NUMBER_SEPARATORS = ".,:/-"
TLDS = (
    "com",
    "net",
    "org",
    "info",
    "biz",
    "co",
    "uk",
    "ly",
    "io",
    "ru",
    "xyz",
    "top",
    "club",
    "site",
    "online",
    "link",
    "app",
    "tk",
    "mobi",
    "tv",
    "cc",
    "eu",
    "us",
    "de",
    "fr",
    "cn",
    "ws",
)
INVISIBLE_CODE_POINTS = (
    0x00AD,
    *range(0x200B, 0x2010),
    *range(0x202A, 0x202F),
    *range(0x2060, 0x2065),
    0xFEFF,
)

MERSENNE_PRIME = np.uint64((1 << 61) - 1)
MAX_HASH_32 = np.uint64((1 << 32) - 1)
EMPTY_32 = np.uint32(0xFFFFFFFF)


def _code_point_ranges(predicate, first: int, last: int) -> np.ndarray:
    """Sorted, merged [start, stop) ranges of code points in [first, last) where predicate holds."""
    ranges: list[list[int]] = []
    for cp in range(first, last):
        if predicate(chr(cp)):
            if ranges and ranges[-1][1] == cp:
                ranges[-1][1] = cp + 1
            else:
                ranges.append([cp, cp + 1])
    return np.array(ranges, dtype=np.int64).reshape(-1, 2)


# Unicode decimal digits and case foldings all lie below U+20000 (tests check the whole code space).
UNICODE_SCAN_LIMIT = 0x20000
_DIGIT_RANGES = _code_point_ranges(str.isdecimal, 0x80, UNICODE_SCAN_LIMIT)


def _fold_tables() -> tuple[np.ndarray, np.ndarray]:
    """``single[cp]``: ``chr(cp).casefold()`` as one code point, or ``-1 - i`` when it is the
    several code points ``multi[i]`` (padded with -1); code points >= UNICODE_SCAN_LIMIT fold to
    themselves."""
    single = np.arange(UNICODE_SCAN_LIMIT, dtype=np.int32)
    multi: list[list[int]] = []
    for cp in range(UNICODE_SCAN_LIMIT):
        folded = chr(cp).casefold()
        if len(folded) == 1:
            single[cp] = ord(folded)
        else:
            single[cp] = -1 - len(multi)
            multi.append([ord(c) for c in folded])
    width = max(len(m) for m in multi)
    table = np.full((len(multi), width), -1, dtype=np.int32)
    for i, m in enumerate(multi):
        table[i, : len(m)] = m
    return single, table


_FOLD_SINGLE, _FOLD_MULTI = _fold_tables()
MAX_FOLD_GROWTH = 3  # no code point's case folding takes more than 3x its UTF-8 bytes
_SPACE_CODE_POINTS = np.array(
    [cp for cp in range(0x80, 0x3001) if chr(cp).isspace()], dtype=np.int64
)
_INVISIBLE = np.array(INVISIBLE_CODE_POINTS, dtype=np.int64)
_ASCII_SPACE = np.zeros(128, dtype=np.bool_)
for _cp in range(128):
    _ASCII_SPACE[_cp] = chr(_cp).isspace()
_TLD_BYTES = np.frombuffer("".join(TLDS).encode("ascii"), dtype=np.uint8).copy()
_TLD_OFFSETS = np.zeros(len(TLDS) + 1, dtype=np.int64)
_TLD_OFFSETS[1:] = np.cumsum([len(t) for t in TLDS])
_NUMBER_SEPARATOR_BYTES = np.frombuffer(NUMBER_SEPARATORS.encode("ascii"), dtype=np.uint8).copy()


class NormaliserTables(NamedTuple):
    """Character classes used by ``normalise_utf8`` (built once from ``unicodedata``)."""

    ascii_space: np.ndarray  # bool[128]
    space_code_points: np.ndarray  # int64[:], non-ASCII whitespace
    digit_ranges: np.ndarray  # int64[:, 2], non-ASCII decimal digits as [start, stop)
    invisible: np.ndarray  # int64[:]
    tld_bytes: np.ndarray  # uint8[:], the TLDS concatenated
    tld_offsets: np.ndarray  # int64[len(TLDS) + 1]
    number_separators: np.ndarray  # uint8[:]
    fold_single: np.ndarray  # int32[UNICODE_SCAN_LIMIT], see _fold_tables
    fold_multi: np.ndarray  # int32[:, 3]


TABLES = NormaliserTables(
    _ASCII_SPACE,
    _SPACE_CODE_POINTS,
    _DIGIT_RANGES,
    _INVISIBLE,
    _TLD_BYTES,
    _TLD_OFFSETS,
    _NUMBER_SEPARATOR_BYTES,
    _FOLD_SINGLE,
    _FOLD_MULTI,
)


# Code points that NFKC leaves alone whatever surrounds them: each maps to itself, has combining
# class 0 and is no partner of a canonical composition (tests check all three over the whole code
# space). ASCII except NUL (which the content stage turns into a space), and the blocks real
# messages mostly use beyond it: Latin, Greek, Cyrillic, punctuation, currency, symbols, emoji and
# their variation selectors. A text made of these alone needs no NFKC pass.
NFKC_STABLE_BLOCKS = (
    (0x80, 0x250),
    (0x370, 0x530),
    (0x2000, 0x2070),
    (0x20A0, 0x20D0),
    (0x2100, 0x27C0),
    (0x2B00, 0x2C00),
    (0xFE00, 0xFE10),  # variation selectors (emoji presentation)
    (0x1F000, 0x1FB00),
)


def _nfkc_stable_table() -> np.ndarray:
    stable = np.zeros(NFKC_STABLE_BLOCKS[-1][1], dtype=np.bool_)
    stable[1:0x80] = True
    for first, last in NFKC_STABLE_BLOCKS:
        for cp in range(first, last):
            ch = chr(cp)
            stable[cp] = unicodedata.combining(ch) == 0 and unicodedata.normalize("NFKC", ch) == ch
    return stable


NFKC_STABLE = _nfkc_stable_table()


# ---------------------------------------------------------------------------------------------
# UTF-8 helpers
# ---------------------------------------------------------------------------------------------


@njit(cache=True, nogil=True, inline="always")
def _utf8_length(lead):
    if lead < 0x80:
        return 1
    if lead < 0xE0:
        return 2
    if lead < 0xF0:
        return 3
    return 4


@njit(cache=True, nogil=True, inline="always")
def _decode(data, pos, stop):
    """(code point, byte length) of the UTF-8 sequence at data[pos]; never reads past stop."""
    lead = np.int64(data[pos])
    n = min(_utf8_length(lead), stop - pos)
    if n == 1:
        return lead, 1
    cp = lead & (0x3F >> (n - 1))
    for i in range(1, n):
        cp = (cp << 6) | (np.int64(data[pos + i]) & 0x3F)
    return cp, n


@njit(cache=True, nogil=True, inline="always")
def _in_sorted(values, cp):
    lo = 0
    hi = values.shape[0]
    while lo < hi:
        mid = (lo + hi) >> 1
        if values[mid] < cp:
            lo = mid + 1
        else:
            hi = mid
    return lo < values.shape[0] and values[lo] == cp


@njit(cache=True, nogil=True, inline="always")
def _in_ranges(ranges, cp):
    lo = 0
    hi = ranges.shape[0]
    while lo < hi:
        mid = (lo + hi) >> 1
        if ranges[mid, 1] <= cp:
            lo = mid + 1
        else:
            hi = mid
    return lo < ranges.shape[0] and ranges[lo, 0] <= cp


@njit(cache=True, nogil=True, inline="always")
def _is_space(cp, ascii_space, space_code_points):
    if cp < 128:
        return ascii_space[cp]
    return _in_sorted(space_code_points, cp)


@njit(cache=True, nogil=True, inline="always")
def _is_digit_at(buf, pos, stop, digit_ranges):
    """(is a decimal digit, byte length) for the code point at buf[pos]."""
    b = buf[pos]
    if b < 0x80:
        return 0x30 <= b <= 0x39, 1
    cp, n = _decode(buf, pos, stop)
    return _in_ranges(digit_ranges, cp), n


@njit(cache=True, nogil=True, inline="always")
def _encode(out, o, cp):
    """Write code point cp as UTF-8 at out[o:] (surrogates as 3 bytes, like 'surrogatepass');
    returns the new end."""
    if cp < 0x80:
        out[o] = cp
        return o + 1
    if cp < 0x800:
        out[o] = 0xC0 | (cp >> 6)
        out[o + 1] = 0x80 | (cp & 0x3F)
        return o + 2
    if cp < 0x10000:
        out[o] = 0xE0 | (cp >> 12)
        out[o + 1] = 0x80 | ((cp >> 6) & 0x3F)
        out[o + 2] = 0x80 | (cp & 0x3F)
        return o + 3
    out[o] = 0xF0 | (cp >> 18)
    out[o + 1] = 0x80 | ((cp >> 12) & 0x3F)
    out[o + 2] = 0x80 | ((cp >> 6) & 0x3F)
    out[o + 3] = 0x80 | (cp & 0x3F)
    return o + 4


@njit(cache=True, nogil=True, inline="always")
def _write_folded(out, o, cp, fold_single, fold_multi):
    """Write the case folding of code point cp at out[o:]; returns the new end."""
    if cp >= fold_single.shape[0]:
        return _encode(out, o, cp)
    folded = fold_single[cp]
    if folded >= 0:
        return _encode(out, o, folded)
    row = -1 - folded
    for j in range(fold_multi.shape[1]):
        if fold_multi[row, j] >= 0:
            o = _encode(out, o, fold_multi[row, j])
    return o


@njit(cache=True, nogil=True, inline="always")
def _is_ascii_alnum(b):
    return (0x61 <= b <= 0x7A) or (0x30 <= b <= 0x39)


# ---------------------------------------------------------------------------------------------
# Normalisation
# ---------------------------------------------------------------------------------------------


@njit(cache=True, nogil=True, inline="always")
def _is_url(buf, start, stop, tld_bytes, tld_offsets):
    """URL rule on the lowercased token buf[start:stop] (see the module docstring)."""
    for i in range(start, stop):
        b = buf[i]
        if b == 0x3A and i + 3 <= stop and buf[i + 1] == 0x2F and buf[i + 2] == 0x2F:
            return True  # "://"
        if b != 0x2E:
            continue
        if i >= start + 3 and buf[i - 3] == 0x77 and buf[i - 2] == 0x77 and buf[i - 1] == 0x77:
            return True  # "www."
        if i > start and _is_ascii_alnum(buf[i - 1]):
            for t in range(tld_offsets.shape[0] - 1):
                t0 = tld_offsets[t]
                length = tld_offsets[t + 1] - t0
                end = i + 1 + length
                if end > stop:
                    continue
                same = True
                for j in range(length):
                    if buf[i + 1 + j] != tld_bytes[t0 + j]:
                        same = False
                        break
                if same and (end == stop or not _is_ascii_alnum(buf[end])):
                    return True
    return False


@njit(cache=True, nogil=True, inline="always")
def _replace_numbers(buf, start, stop, digit_ranges, number_separators):
    """Rewrite token buf[start:stop] in place with each number replaced by N; returns its new end.
    In place is safe: the write position never passes the read position."""
    o = start
    i = start
    while i < stop:
        is_digit, width = _is_digit_at(buf, i, stop, digit_ranges)
        if not is_digit:
            for j in range(width):
                buf[o + j] = buf[i + j]
            o += width
            i += width
            continue
        # \d+(?:[.,:/-]\d+)*
        i += width
        while i < stop:
            is_digit, width = _is_digit_at(buf, i, stop, digit_ranges)
            if is_digit:
                i += width
                continue
            is_separator = False
            for s in number_separators:
                if buf[i] == s:
                    is_separator = True
            if is_separator and i + 1 < stop and _is_digit_at(buf, i + 1, stop, digit_ranges)[0]:
                i += 1
                continue
            break
        buf[o] = NUMBER_PLACEHOLDER
        o += 1
    return o


@njit(cache=True, nogil=True)
def _normalise_utf8(data, starts, stops, tables, out, out_starts, out_stops):
    # Unpacked once: passing the tuple itself to helpers costs a refcount per array per call.
    ascii_space = tables.ascii_space
    space_code_points = tables.space_code_points
    digit_ranges = tables.digit_ranges
    invisible = tables.invisible
    tld_bytes = tables.tld_bytes
    tld_offsets = tables.tld_offsets
    number_separators = tables.number_separators
    fold_single = tables.fold_single
    fold_multi = tables.fold_multi
    o = 0
    for m in range(starts.shape[0]):
        out_starts[m] = o
        pos = starts[m]
        stop = stops[m]
        while pos < stop:
            b = data[pos]
            if b < 0x80:
                if ascii_space[b]:
                    pos += 1
                    continue
            else:
                cp, width = _decode(data, pos, stop)
                if _is_space(cp, ascii_space, space_code_points) or _in_sorted(invisible, cp):
                    pos += width
                    continue
            # A token: copy it case-folded, minus invisible characters, up to the next whitespace,
            # noting whether it may hold a URL ('.' or ':') or a number (a digit or non-ASCII).
            if o > out_starts[m]:
                out[o] = 0x20
                o += 1
            token = o
            maybe_url = False
            maybe_number = False
            while pos < stop:
                b = data[pos]
                if b < 0x80:
                    if ascii_space[b]:
                        break
                    if 0x41 <= b <= 0x5A:
                        b += 32
                    elif b == 0x2E or b == 0x3A:
                        maybe_url = True
                    elif 0x30 <= b <= 0x39:
                        maybe_number = True
                    out[o] = b
                    o += 1
                    pos += 1
                    continue
                cp, width = _decode(data, pos, stop)
                if _is_space(cp, ascii_space, space_code_points):
                    break
                if not _in_sorted(invisible, cp):
                    o = _write_folded(out, o, cp, fold_single, fold_multi)
                    maybe_number = True
                pos += width
            if maybe_url and _is_url(out, token, o, tld_bytes, tld_offsets):
                out[token] = URL_PLACEHOLDER
                o = token + 1
            elif maybe_number:
                o = _replace_numbers(out, token, o, digit_ranges, number_separators)
        out_stops[m] = o
    return o


def nfkc_stable_texts(
    data: np.ndarray, starts: np.ndarray, stops: np.ndarray, rows: np.ndarray
) -> np.ndarray:
    """For each text ``rows[k]`` (spans into ``data``): True when all its code points are in
    ``NFKC_STABLE``, so that NFKC would return it unchanged."""
    _check_buffer(data, starts, stops)
    if not (isinstance(rows, np.ndarray) and rows.dtype == np.int64 and rows.ndim == 1):
        raise TypeError("rows must be a 1-D int64 numpy array")
    if rows.size and (rows.min() < 0 or rows.max() >= starts.shape[0]):
        raise ValueError("rows out of range")
    out = np.empty(rows.shape[0], dtype=np.bool_)
    _nfkc_stable_texts(data, starts, stops, rows, NFKC_STABLE, out)
    return out


@njit(cache=True, nogil=True)
def _nfkc_stable_texts(data, starts, stops, rows, stable, out):
    for k in range(rows.shape[0]):
        pos = starts[rows[k]]
        stop = stops[rows[k]]
        ok = True
        while ok and pos < stop:
            cp, n = _decode(data, pos, stop)
            ok = cp < stable.shape[0] and stable[cp]
            pos += n
        out[k] = ok


def _check_buffer(data: np.ndarray, starts: np.ndarray, stops: np.ndarray) -> None:
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 1):
        raise TypeError("data must be a 1-D uint8 numpy array")
    if not data.flags.c_contiguous:
        raise ValueError("data must be C-contiguous")
    for name, arr in (("starts", starts), ("stops", stops)):
        if not (isinstance(arr, np.ndarray) and arr.dtype == np.int64 and arr.ndim == 1):
            raise TypeError(f"{name} must be a 1-D int64 numpy array")
        if not arr.flags.c_contiguous:
            raise ValueError(f"{name} must be C-contiguous")
    if starts.shape != stops.shape:
        raise ValueError("starts and stops must have the same length")
    if starts.size and (starts.min() < 0 or stops.max() > data.shape[0] or np.any(stops < starts)):
        raise ValueError("spans must satisfy 0 <= starts <= stops <= len(data)")


def normalise_utf8(
    data: np.ndarray, starts: np.ndarray, stops: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normalise each UTF-8 text ``data[starts[i]:stops[i]]`` (already NFKC-normalised, or ASCII).

    Returns ``(out, out_starts, out_stops)``: the normalised texts, back to back in ``out`` (at most
    MAX_FOLD_GROWTH times the input: case folding can lengthen text, placeholders shorten it)."""
    _check_buffer(data, starts, stops)
    out = np.empty(max(1, MAX_FOLD_GROWTH * data.shape[0]), dtype=np.uint8)
    out_starts = np.empty(starts.shape[0], dtype=np.int64)
    out_stops = np.empty(starts.shape[0], dtype=np.int64)
    used = _normalise_utf8(data, starts, stops, TABLES, out, out_starts, out_stops)
    return out[:used], out_starts, out_stops


# ---------------------------------------------------------------------------------------------
# Shingles
# ---------------------------------------------------------------------------------------------


@njit(cache=True, nogil=True, inline="always")
def _count_code_points(data, start, stop):
    count = 0
    for i in range(start, stop):
        count += (data[i] & 0xC0) != 0x80
    return count


@njit(cache=True, nogil=True)
def _shingle_spans(data, starts, stops, shingle_chars, sh_starts, sh_stops, text_offsets):
    """Character shingles of every text as byte spans; text i owns text_offsets[i]:[i + 1]."""
    ring = np.empty(shingle_chars + 1, dtype=np.int64)  # byte offsets of the last code points
    s = 0
    for m in range(starts.shape[0]):
        text_offsets[m] = s
        start = starts[m]
        stop = stops[m]
        if start == stop:
            continue
        if _count_code_points(data, start, stop) <= shingle_chars:
            sh_starts[s] = start
            sh_stops[s] = stop
            s += 1
            continue
        seen = 0
        pos = start
        while pos < stop:
            ring[seen % (shingle_chars + 1)] = pos
            seen += 1
            pos += min(_utf8_length(data[pos]), stop - pos)
            if seen >= shingle_chars:
                sh_starts[s] = ring[(seen - shingle_chars) % (shingle_chars + 1)]
                sh_stops[s] = pos
                s += 1
    text_offsets[starts.shape[0]] = s
    return s


def shingle_spans(
    data: np.ndarray, starts: np.ndarray, stops: np.ndarray, shingle_chars: int = SHINGLE_CHARS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Byte spans of the ``shingle_chars``-code-point shingles of each normalised text.

    Returns ``(sh_starts, sh_stops, text_offsets)``: text ``i`` owns shingles
    ``text_offsets[i]:text_offsets[i + 1]`` (in text order, duplicates kept)."""
    _check_buffer(data, starts, stops)
    if shingle_chars < 1:
        raise ValueError("shingle_chars must be >= 1")
    capacity = max(1, int((stops - starts).sum()))  # at most one shingle per byte
    sh_starts = np.empty(capacity, dtype=np.int64)
    sh_stops = np.empty(capacity, dtype=np.int64)
    text_offsets = np.empty(starts.shape[0] + 1, dtype=np.int64)
    used = _shingle_spans(data, starts, stops, shingle_chars, sh_starts, sh_stops, text_offsets)
    return sh_starts[:used], sh_stops[:used], text_offsets


# ---------------------------------------------------------------------------------------------
# datasketch-compatible schemes
# ---------------------------------------------------------------------------------------------


def affine32_permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(a, b)`` uint32 arrays of datasketch 2.x ``MinHash(scheme="affine32")`` permutations."""
    gen = np.random.RandomState(seed)
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return a, b


def legacy_permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(a, b)`` uint64 arrays of datasketch ``MinHash(scheme="legacy")`` permutations."""
    gen = np.random.RandomState(seed)
    pairs = np.array(
        [
            (
                gen.randint(1, MERSENNE_PRIME, dtype=np.uint64),
                gen.randint(0, MERSENNE_PRIME, dtype=np.uint64),
            )
            for _ in range(num_perm)
        ],
        dtype=np.uint64,
    )
    return np.ascontiguousarray(pairs[:, 0]), np.ascontiguousarray(pairs[:, 1])


@njit(cache=True, nogil=True, inline="always")
def _fmix32(h):
    h = np.uint32(h ^ (h >> 16))
    h = np.uint32(h * np.uint32(0x85EBCA6B))
    h = np.uint32(h ^ (h >> 13))
    h = np.uint32(h * np.uint32(0xC2B2AE35))
    return np.uint32(h ^ (h >> 16))


@njit(cache=True, nogil=True)
def _affine32_from_hashes(hashes, text_offsets, a, b, out):
    num_perm = a.shape[0]
    for m in range(text_offsets.shape[0] - 1):
        sig = out[m]
        for k in range(num_perm):
            sig[k] = EMPTY_32
        for s in range(text_offsets[m], text_offsets[m + 1]):
            x = _fmix32(hashes[s])
            for k in range(num_perm):
                v = np.uint32(a[k] * x + b[k])
                if v < sig[k]:
                    sig[k] = v


@njit(cache=True, nogil=True)
def _legacy_from_hashes(hashes, text_offsets, a, b, out):
    num_perm = a.shape[0]
    for m in range(text_offsets.shape[0] - 1):
        sig = out[m]
        for k in range(num_perm):
            sig[k] = MAX_HASH_32
        for s in range(text_offsets[m], text_offsets[m + 1]):
            x = np.uint64(hashes[s])
            for k in range(num_perm):
                v = a[k] * x + b[k]  # wraps modulo 2**64, exactly like datasketch's numpy uint64
                # v mod (2**61 - 1) without division: 2**61 is 1 modulo the prime.
                v = (v & MERSENNE_PRIME) + (v >> np.uint64(61))
                if v >= MERSENNE_PRIME:
                    v -= MERSENNE_PRIME
                v &= MAX_HASH_32
                if v < sig[k]:
                    sig[k] = v


def _check_spans_and_offsets(data, sh_starts, sh_stops, text_offsets):
    _check_buffer(data, sh_starts, sh_stops)
    if not (
        isinstance(text_offsets, np.ndarray)
        and text_offsets.dtype == np.int64
        and text_offsets.ndim == 1
        and text_offsets.size >= 1
    ):
        raise TypeError("text_offsets must be a non-empty 1-D int64 numpy array")
    if text_offsets[0] != 0 or text_offsets[-1] != sh_starts.shape[0]:
        raise ValueError("text_offsets must run from 0 to the number of shingles")
    if np.any(np.diff(text_offsets) < 0):
        raise ValueError("text_offsets must be non-decreasing")


def sha1_signatures(
    data: np.ndarray,
    sh_starts: np.ndarray,
    sh_stops: np.ndarray,
    text_offsets: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    scheme: str,
) -> np.ndarray:
    """MinHash signatures from SHA-1 of each shingle span, bit-identical to datasketch 2.x.

    ``scheme="affine32"`` (``a``, ``b`` uint32) returns uint32 ``(n, num_perm)``; ``"legacy"`` (``a``,
    ``b`` uint64) returns uint64. A text without shingles gets the empty value 2**32 - 1 everywhere,
    as an un-updated datasketch ``MinHash``."""
    _check_spans_and_offsets(data, sh_starts, sh_stops, text_offsets)
    dtype = {"affine32": np.uint32, "legacy": np.uint64}.get(scheme)
    if dtype is None:
        raise ValueError(f"scheme must be 'affine32' or 'legacy', got {scheme!r}")
    for name, arr in (("a", a), ("b", b)):
        if not (isinstance(arr, np.ndarray) and arr.dtype == dtype and arr.ndim == 1):
            raise TypeError(f"{name} must be a 1-D {np.dtype(dtype).name} array for {scheme}")
    if a.shape != b.shape or a.size == 0:
        raise ValueError("a and b must be non-empty and of equal length")
    a = np.ascontiguousarray(a)
    b = np.ascontiguousarray(b)
    hashes = np.empty(sh_starts.shape[0], dtype=np.uint32)
    _sha1_hash32_spans(data, sh_starts, sh_stops, hashes)
    out = np.empty((text_offsets.shape[0] - 1, a.shape[0]), dtype=dtype)
    if scheme == "affine32":
        _affine32_from_hashes(hashes, text_offsets, a, b, out)
    else:
        _legacy_from_hashes(hashes, text_offsets, a, b, out)
    return out


# ---------------------------------------------------------------------------------------------
# fast scheme: one-permutation hashing with optimal densification
# ---------------------------------------------------------------------------------------------


POLY_BASE = np.uint64(0xA0761D6478BD642F)  # odd multiplier of the rolling polynomial
GOLDEN = np.uint64(0x9E3779B97F4A7C15)
FIRST_PROBE_MAX_BINS = 256  # a 256 x 256 int32 table (256 KiB); larger signatures walk sequences
EARLY_PROBES = 4  # probes tried branch-free before a row minimum in dense signatures


def seed64(seed: int) -> np.uint64:
    """The fast scheme's 64-bit hash seed for a user seed (splitmix64 of the seed)."""
    x = (int(seed) + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return np.uint64(x ^ (x >> 31))


@njit(cache=True, nogil=True, inline="always")
def _fast_range(x32, n):
    """Map a uniform 32-bit value to [0, n) with a multiply and shift (Lemire)."""
    return np.int64((np.uint64(x32) * np.uint64(n)) >> np.uint64(32))


@njit(cache=True, nogil=True, inline="always")
def _probe(seed, j, attempt, num_bins):
    """Bin that empty bin j probes at its attempt-th try (attempt >= 1), the same for every set."""
    return _fast_range(
        mix64(seed ^ (np.uint64(j) << np.uint64(32)) ^ np.uint64(attempt)) >> np.uint64(32),
        num_bins,
    )


@njit(cache=True, nogil=True)
def _probe_tables(num_bins, seed, first_probes):
    """``probes[j, a]``: the bin empty bin j probes at attempt a + 1, for the first attempts; and
    ``first[j, b] = (a << 16) | b`` with ``a`` the attempt at which bin j's sequence first reaches
    bin b, so that the minimum over the filled bins b of row j names the bin j copies from."""
    probes = np.empty((num_bins, first_probes), dtype=np.int32)
    for j in range(num_bins):
        for a in range(first_probes):
            probes[j, a] = _probe(seed, j, a + 1, num_bins)
    first = np.full((num_bins, num_bins), -1, dtype=np.int32)
    for j in range(num_bins):
        missing = num_bins
        attempt = 1
        while missing > 0:  # coupon collector: about num_bins * ln(num_bins) attempts
            b = _probe(seed, j, attempt, num_bins)
            if first[j, b] < 0:
                if attempt >= 1 << 15:
                    raise ValueError("probe sequence too long to pack")
                first[j, b] = (attempt << 16) | b
                missing -= 1
            attempt += 1
    return probes, first


@njit(cache=True, nogil=True, inline="always")
def _shingle_hash(poly, n_chars, seed):
    """64-bit hash of a shingle from the polynomial of its code points and its length."""
    return mix64((poly ^ seed) + np.uint64(n_chars) * GOLDEN)


@njit(cache=True, nogil=True, inline="always")
def _oph_add(sig, h, num_bins):
    """One-permutation hashing: the high 32 bits pick the bin, the low 32 bits compete for its
    minimum. A bin still at EMPTY_32 afterwards counts as empty."""
    k = _fast_range(h >> np.uint64(32), num_bins)
    sig[k] = min(sig[k], np.uint32(h & np.uint64(0xFFFFFFFF)))  # branch-free: min is a cmov


@njit(cache=True, nogil=True)
def _densify(sig, num_bins, seed, probes, first_probe, was_filled, scratch, values):
    """Optimal densification (Shrivastava, ICML 2017): an empty bin j takes the value of the first
    originally non-empty bin on its own pseudo-random probe sequence, which every set shares, so
    two sets copy from the same bin whenever it is non-empty in both.

    Walking a sequence costs about k / f probes per empty bin (f of k bins filled), and which bins
    are empty is random, so branching on it mispredicts half the time. Hence:
    - few filled bins (f <= k / 8: empty bins are the rule, branches predictable): the source of
      bin j is the filled bin b with the earliest attempt in ``first_probe[j, b]``, in f steps;
    - otherwise one branch-free pass tries the first ``probes`` of every bin (selects, no jumps;
      filled bins keep their value) and only bins whose early probes all miss (rare) take the
      minimum over their whole ``first_probe`` row;
    - without tables (more than FIRST_PROBE_MAX_BINS bins) the sequence is walked.
    ``was_filled``, ``scratch`` and ``values`` are work arrays of num_bins entries."""
    n_filled = 0
    for j in range(num_bins):
        was_filled[j] = sig[j] != EMPTY_32
        n_filled += was_filled[j]
    if n_filled == 0 or n_filled == num_bins:
        return
    never = np.int32(0x7FFFFFFF)
    if first_probe.shape[0] != num_bins:
        for j in range(num_bins):
            if not was_filled[j]:
                attempt = 1
                source = _probe(seed, j, attempt, num_bins)
                while not was_filled[source]:
                    attempt += 1
                    source = _probe(seed, j, attempt, num_bins)
                sig[j] = sig[source]
    elif n_filled * 8 <= num_bins:
        n = 0
        for j in range(num_bins):
            if was_filled[j]:
                scratch[n] = j
                n += 1
        for j in range(num_bins):
            if not was_filled[j]:
                best = never
                for f in range(n_filled):
                    best = min(best, first_probe[j, scratch[f]])
                sig[j] = sig[best & 0xFFFF]
    else:
        # Pass 1: each bin's source among its first probes (filled bins are their own source, -1
        # for a miss), with selects and arithmetic only: no data-dependent jumps.
        any_missed = False
        for j in range(num_bins):
            source = -1
            for a in range(EARLY_PROBES):  # backwards, so the earliest filled probe wins
                probe = probes[j, EARLY_PROBES - 1 - a]
                source = probe if was_filled[probe] else source
            keep = np.int64(was_filled[j])
            source = keep * j + (1 - keep) * source
            scratch[j] = source
            any_missed |= source < 0
        if any_missed:  # rare per bin, but common per signature: some bin missed all its probes
            for j in range(num_bins):
                if scratch[j] < 0:
                    best = never
                    for b in range(num_bins):
                        best = min(best, first_probe[j, b] if was_filled[b] else never)
                    scratch[j] = best & 0xFFFF
        # Pass 2: copy from the sources (the original values of filled bins).
        for j in range(num_bins):
            values[j] = sig[j]
        for j in range(num_bins):
            sig[j] = values[scratch[j]]


@njit(cache=True, nogil=True)
def _fast_from_text(data, starts, stops, shingle_chars, num_bins, seed, probes, first_probe, out):
    """Rolling polynomial over the code points of each normalised text: shingle i's polynomial is
    sum((cp + 1) * POLY_BASE**(k - 1 - j)) mod 2**64 over its k code points, updated in O(1) per
    code point, so no shingle span is materialised."""
    ring = np.zeros(shingle_chars, dtype=np.uint64)
    base_pow = np.uint64(1)  # POLY_BASE ** shingle_chars
    for _ in range(shingle_chars):
        base_pow *= POLY_BASE
    was_filled = np.empty(num_bins, dtype=np.bool_)
    scratch = np.empty(num_bins, dtype=np.int64)
    values = np.empty(num_bins, dtype=np.uint32)
    for m in range(starts.shape[0]):
        sig = out[m]
        for k in range(num_bins):
            sig[k] = EMPTY_32
        poly = np.uint64(0)
        seen = 0
        pos = starts[m]
        stop = stops[m]
        while pos < stop:
            lead = data[pos]
            if lead < 0x80:
                cp = np.uint64(lead) + np.uint64(1)
                pos += 1
            else:
                code, width = _decode(data, pos, stop)
                cp = np.uint64(code) + np.uint64(1)
                pos += width
            slot = seen % shingle_chars
            poly = poly * POLY_BASE + cp - ring[slot] * base_pow
            ring[slot] = cp
            seen += 1
            if seen >= shingle_chars:
                _oph_add(sig, _shingle_hash(poly, shingle_chars, seed), num_bins)
        if 0 < seen < shingle_chars:  # a short text is one shingle
            _oph_add(sig, _shingle_hash(poly, seen, seed), num_bins)
        for j in range(shingle_chars):
            ring[j] = 0
        _densify(sig, num_bins, seed, probes, first_probe, was_filled, scratch, values)


_PROBE_TABLES: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}


def _cached_probe_tables(num_perm: int, seed: np.uint64) -> tuple[np.ndarray, np.ndarray]:
    key = (num_perm, int(seed))
    tables = _PROBE_TABLES.get(key)
    if tables is None:
        if num_perm <= FIRST_PROBE_MAX_BINS:
            tables = _probe_tables(num_perm, seed, EARLY_PROBES)
        else:
            tables = (np.zeros((0, 0), dtype=np.int32), np.zeros((0, 0), dtype=np.int32))
        _PROBE_TABLES[key] = tables
    return tables


def fast_signatures(
    data: np.ndarray,
    starts: np.ndarray,
    stops: np.ndarray,
    num_perm: int,
    seed: int,
    shingle_chars: int = SHINGLE_CHARS,
) -> np.ndarray:
    """``fast`` scheme signatures of normalised texts ``data[starts[i]:stops[i]]``, uint32
    ``(n, num_perm)``, in one pass over the code points.

    Each shingle (``shingle_chars`` code points, or the whole text if shorter) is hashed once, to
    64 bits, from a rolling polynomial of its code points; the high 32 bits pick one of
    ``num_perm`` bins, the low 32 bits are the value, and each bin keeps its minimum
    (one-permutation hashing). Empty bins are filled by optimal densification, so equal bins
    estimate Jaccard like classic MinHash with ``num_perm`` permutations, at one hash per shingle
    instead of ``num_perm``. A text without shingles gets 2**32 - 1 everywhere."""
    _check_buffer(data, starts, stops)
    if not 1 <= num_perm <= 1 << 16:
        raise ValueError("num_perm must be in [1, 65536]")
    if shingle_chars < 1:
        raise ValueError("shingle_chars must be >= 1")
    hash_seed = seed64(seed)
    out = np.empty((starts.shape[0], num_perm), dtype=np.uint32)
    probes, first_probe = _cached_probe_tables(num_perm, hash_seed)
    _fast_from_text(
        data, starts, stops, shingle_chars, num_perm, hash_seed, probes, first_probe, out
    )
    return out


# ---------------------------------------------------------------------------------------------
# Joined batches
# ---------------------------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def _split_on_zero(data, starts, stops):
    n = 0
    start = 0
    for i in range(data.shape[0]):
        if data[i] == 0:
            if n < starts.shape[0]:
                starts[n] = start
                stops[n] = i
            n += 1
            start = i + 1
    if n < starts.shape[0]:
        starts[n] = start
        stops[n] = data.shape[0]
    return n + 1


def split_joined(data: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Spans of the ``count`` texts in ``data``, joined by single zero bytes (``b"\\0".join``)."""
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 1):
        raise TypeError("data must be a 1-D uint8 numpy array")
    if count < 1:
        raise ValueError("count must be >= 1")
    starts = np.empty(count, dtype=np.int64)
    stops = np.empty(count, dtype=np.int64)
    found = _split_on_zero(data, starts, stops)
    if found != count:
        raise ValueError(f"data holds {found} zero-separated texts, expected {count}")
    return starts, stops
