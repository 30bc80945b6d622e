"""Scan a batch of flat JSON event records into columns, in Numba: the fast path of the decoder.

Most records on the wire are flat objects of known fields with plain values. This kernel reads them
straight from the joined record bytes into columns (and hashes the ids on the way), without a Python
object per record. It is deliberately strict: it accepts a record only when it is certain the full
decoder (msgspec and the event contract, ``detector.events``) would accept it with exactly these
values, and *declines* everything else, which the caller then decodes the slow way. Declined, not
rejected: the slow path decides what is valid and gives dead letters their reasons.

A record is accepted when it is a JSON object (whitespace allowed around tokens) whose keys are the
contract's field names, each at most once, and whose values are:

* strings in valid UTF-8 within the contract's byte limits (ids 1..128 bytes: a byte count <= 128
  bounds the character count; text <= 65,536 bytes once unescaped); escapes only in ``text``
  (unescaped into a side buffer; a lone UTF-16 surrogate declines), elsewhere a backslash declines;
* integers ``0|[1-9][0-9]{0,17}`` (no sign, fraction or exponent) within the contract's ranges;
* ``true``/``false`` for the boolean fields, ``null`` for any optional field (= absent);
* for fields the detector does not read (``device``, ``country``), any string or null.

and the event's type, time, ``chat`` and required ``peer`` satisfy the contract. Field codes, flag
bits and type codes are passed in by the caller (they belong to the contract, not to this kernel).
"""

from typing import NamedTuple

import numpy as np
from numba import njit

from .strhash import hash_span

# Field numbers: their order is the order of FIELD_NAMES.
FIELD_NAMES = (
    "type",
    "ts",
    "account",
    "peer",
    "chat",
    "text",
    "in_contacts",
    "forwarded",
    "typing",
    "business",
    "device",
    "ip",
    "country",
    "account_created",
    "members",
)
F_TYPE, F_TS, F_ACCOUNT, F_PEER, F_CHAT, F_TEXT = 0, 1, 2, 3, 4, 5
F_IN_CONTACTS, F_FORWARDED, F_TYPING, F_BUSINESS = 6, 7, 8, 9
F_DEVICE, F_IP, F_COUNTRY, F_CREATED, F_MEMBERS = 10, 11, 12, 13, 14
_STRING_FIELDS = (F_TYPE, F_ACCOUNT, F_PEER, F_CHAT, F_TEXT, F_DEVICE, F_IP, F_COUNTRY)
_INT_FIELDS = (F_TS, F_CREATED, F_MEMBERS)

# 0 string, 1 integer, 2 boolean
_FIELD_KIND = np.array(
    [0 if f in _STRING_FIELDS else 1 if f in _INT_FIELDS else 2 for f in range(len(FIELD_NAMES))],
    dtype=np.uint8,
)


def _joined(names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    encoded = [name.encode() for name in names]
    offsets = np.cumsum([0] + [len(e) for e in encoded]).astype(np.int64)
    return np.frombuffer(b"".join(encoded), dtype=np.uint8).copy(), offsets


_FIELD_BYTES, _FIELD_OFFSETS = _joined(FIELD_NAMES)
_CHAT_BYTES, _CHAT_OFFSETS = _joined(("direct", "group"))

MAX_ID_BYTES = 128
MAX_TEXT_BYTES = 64 * 1024
MAX_DIGITS = 18  # 10**18 - 1 < 2**63

# Column layout of ``spans`` (start, stop pairs; -1, -1 when absent)
SPAN_ACCOUNT, SPAN_PEER, SPAN_IP, SPAN_TEXT = 0, 1, 2, 3


class ScanLimits(NamedTuple):
    """The contract's limits and codes the scan enforces, as arrays (``scan_limits`` makes them)."""

    type_bytes: np.ndarray  # uint8, the event type names concatenated
    type_offsets: np.ndarray  # int64, where each name starts (and one past the last)
    peer_required: np.ndarray  # bool, per event type
    bounds: np.ndarray  # int64: min ts, max ts, max members, max record bytes


def scan_limits(
    type_names: tuple[str, ...],
    peer_required: tuple[bool, ...],
    min_ts_ms: int,
    max_ts_ms: int,
    max_members: int,
    max_record_bytes: int,
) -> ScanLimits:
    if len(type_names) != len(peer_required):
        raise ValueError("type_names and peer_required differ in length")
    type_bytes, type_offsets = _joined(type_names)
    return ScanLimits(
        type_bytes,
        type_offsets,
        np.array(peer_required, dtype=np.bool_),
        np.array([min_ts_ms, max_ts_ms, max_members, max_record_bytes], np.int64),
    )


class ScannedRecords(NamedTuple):
    """Columns of a scanned batch (``new_scanned`` makes them); rows where ``accepted`` is False
    hold garbage."""

    accepted: np.ndarray  # bool
    type: np.ndarray  # uint8
    ts_ms: np.ndarray  # int64
    created_ms: np.ndarray  # int64, -1 when absent
    members: np.ndarray  # int32, 1 when absent
    booleans: np.ndarray  # uint8, bit 2k: field k known, bit 2k+1: true
    group_chat: np.ndarray  # bool
    spans: np.ndarray  # int64 (n, 4, 2), see SPAN_*
    text_plain: np.ndarray  # bool, text is None or ASCII without NUL
    ids: np.ndarray  # uint64 (n, 3): account, peer, ip (0 = absent)
    unescaped: np.ndarray  # uint8, texts with escapes, unescaped; spans index data followed by it


def new_scanned(n: int, unescaped_capacity: int = 0) -> ScannedRecords:
    """Columns for ``n`` records, every one declined until scanned."""
    return ScannedRecords(
        accepted=np.zeros(n, dtype=np.bool_),
        type=np.zeros(n, dtype=np.uint8),
        ts_ms=np.zeros(n, dtype=np.int64),
        created_ms=np.full(n, -1, dtype=np.int64),
        members=np.ones(n, dtype=np.int32),
        booleans=np.zeros(n, dtype=np.uint8),
        group_chat=np.zeros(n, dtype=np.bool_),
        spans=np.full((n, 4, 2), -1, dtype=np.int64),
        text_plain=np.ones(n, dtype=np.bool_),
        ids=np.zeros((n, 3), dtype=np.uint64),
        unescaped=np.empty(unescaped_capacity, dtype=np.uint8),
    )


BOOLEAN_FIELDS = (F_IN_CONTACTS, F_FORWARDED, F_TYPING, F_BUSINESS)  # bit pair k of ``booleans``


def scan_records(data: np.ndarray, offsets: np.ndarray, limits: ScanLimits) -> ScannedRecords:
    """Scan records ``data[offsets[i]:offsets[i + 1]]``; see the module docstring for what is
    accepted. ``data`` is a 1-D uint8 array, ``offsets`` a 1-D int64 array of n + 1 ascending
    positions."""
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 1):
        raise TypeError("data must be a 1-D uint8 numpy array")
    if not (isinstance(offsets, np.ndarray) and offsets.dtype == np.int64 and offsets.ndim == 1):
        raise TypeError("offsets must be a 1-D int64 numpy array")
    if offsets.shape[0] < 1 or offsets[0] < 0 or offsets[-1] > data.shape[0]:
        raise ValueError("offsets must hold n + 1 positions within data")
    if np.any(np.diff(offsets) < 0):
        raise ValueError("offsets must be ascending")
    out = new_scanned(offsets.shape[0] - 1, unescaped_capacity=data.shape[0])
    cursor = np.zeros(1, dtype=np.int64)
    _scan(data, offsets, limits, out, cursor)
    return out._replace(unescaped=out.unescaped[: cursor[0]])


@njit(cache=True, nogil=True, inline="always")
def _skip_ws(data, i, end):
    while i < end:
        c = data[i]
        if c != 0x20 and c != 0x0A and c != 0x0D and c != 0x09:
            break
        i += 1
    return i


@njit(cache=True, nogil=True, inline="always")
def _match(data, start, stop, names, offsets):
    """Index of the name equal to data[start:stop], or -1."""
    length = stop - start
    for k in range(offsets.shape[0] - 1):
        if offsets[k + 1] - offsets[k] != length:
            continue
        base = offsets[k]
        same = True
        for j in range(length):
            if data[start + j] != names[base + j]:
                same = False
                break
        if same:
            return k
    return -1


@njit(cache=True, nogil=True, inline="always")
def _hex_digit(c):
    if 0x30 <= c <= 0x39:
        return np.int64(c) - 0x30
    if 0x61 <= c <= 0x66:
        return np.int64(c) - 0x61 + 10
    if 0x41 <= c <= 0x46:
        return np.int64(c) - 0x41 + 10
    return np.int64(-1)


@njit(cache=True, nogil=True, inline="always")
def _hex4(data, i):
    value = np.int64(0)
    for j in range(4):
        digit = _hex_digit(data[i + j])
        if digit < 0:
            return np.int64(-1)
        value = (value << 4) | digit
    return value


@njit(cache=True, nogil=True, inline="always")
def _string_end(data, i, end, escapes_allowed):
    """(position of the closing quote, escaped, ascii) of a string whose content starts at i:
    ``escaped`` when it holds an escape, ``ascii`` when all its bytes are ASCII; position -1 to
    decline (an escape unless ``escapes_allowed``, a malformed escape, a control character,
    invalid UTF-8, unterminated)."""
    escaped = False
    ascii_only = True
    while i < end:
        c = data[i]
        if c == 0x22:
            return i, escaped, ascii_only
        if c < 0x20:
            return -1, escaped, ascii_only
        if c == 0x5C:
            if not escapes_allowed or i + 1 >= end:
                return -1, escaped, ascii_only
            escaped = True
            e = data[i + 1]
            if e == 0x75:  # \uXXXX
                if i + 6 > end or _hex4(data, i + 2) < 0:
                    return -1, escaped, ascii_only
                i += 6
            elif _ESCAPED[e] != 0:
                i += 2
            else:
                return -1, escaped, ascii_only
            continue
        if c < 0x80:
            i += 1
            continue
        ascii_only = False
        # multi-byte UTF-8: lead byte, then continuation bytes with the first one's range narrowed
        lo, hi = 0x80, 0xBF
        if 0xC2 <= c <= 0xDF:
            more = 1
        elif c == 0xE0:
            more, lo = 2, 0xA0
        elif c == 0xED:
            more, hi = 2, 0x9F  # no UTF-16 surrogates
        elif 0xE1 <= c <= 0xEF:
            more = 2
        elif c == 0xF0:
            more, lo = 3, 0x90
        elif 0xF1 <= c <= 0xF3:
            more = 3
        elif c == 0xF4:
            more, hi = 3, 0x8F
        else:
            return -1, escaped, ascii_only
        if i + more >= end:
            return -1, escaped, ascii_only
        b = data[i + 1]
        if b < lo or b > hi:
            return -1, escaped, ascii_only
        for j in range(2, more + 1):
            b = data[i + j]
            if b < 0x80 or b > 0xBF:
                return -1, escaped, ascii_only
        i += more + 1
    return -1, escaped, ascii_only


# the byte an escape \X stands for (0: not a one-letter escape)
_ESCAPED = np.zeros(256, dtype=np.uint8)
for _letter, _byte in zip(b'"\\/bfnrt', b'"\\/\b\f\n\r\t', strict=True):
    _ESCAPED[_letter] = _byte


@njit(cache=True, nogil=True)
def _unescape(data, start, stop, out, pos):
    """Write the JSON string content data[start:stop] (escapes checked by _string_end) to
    out[pos:] as UTF-8; returns the end position, or -1 for a lone UTF-16 surrogate."""
    i = start
    while i < stop:
        c = data[i]
        if c != 0x5C:
            out[pos] = c
            pos += 1
            i += 1
            continue
        if data[i + 1] != 0x75:
            out[pos] = _ESCAPED[data[i + 1]]
            pos += 1
            i += 2
            continue
        cp = _hex4(data, i + 2)
        i += 6
        if 0xDC00 <= cp <= 0xDFFF:
            return -1
        if 0xD800 <= cp <= 0xDBFF:
            if i + 6 > stop or data[i] != 0x5C or data[i + 1] != 0x75:
                return -1
            low = _hex4(data, i + 2)
            if not 0xDC00 <= low <= 0xDFFF:
                return -1
            cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00)
            i += 6
        if cp < 0x80:
            out[pos] = cp
            pos += 1
        elif cp < 0x800:
            out[pos] = 0xC0 | (cp >> 6)
            out[pos + 1] = 0x80 | (cp & 0x3F)
            pos += 2
        elif cp < 0x10000:
            out[pos] = 0xE0 | (cp >> 12)
            out[pos + 1] = 0x80 | ((cp >> 6) & 0x3F)
            out[pos + 2] = 0x80 | (cp & 0x3F)
            pos += 3
        else:
            out[pos] = 0xF0 | (cp >> 18)
            out[pos + 1] = 0x80 | ((cp >> 12) & 0x3F)
            out[pos + 2] = 0x80 | ((cp >> 6) & 0x3F)
            out[pos + 3] = 0x80 | (cp & 0x3F)
            pos += 4
    return pos


@njit(cache=True, nogil=True, inline="always")
def _literal(data, i, end, word):
    """True when data[i:] starts with the bytes of ``word`` (a uint8 array)."""
    if i + word.shape[0] > end:
        return False
    same = True
    for j in range(word.shape[0]):
        same &= data[i + j] == word[j]
    return same


_NULL = np.frombuffer(b"null", dtype=np.uint8).copy()
_TRUE = np.frombuffer(b"true", dtype=np.uint8).copy()
_FALSE = np.frombuffer(b"false", dtype=np.uint8).copy()


@njit(cache=True, nogil=True, inline="always")
def _scan_one(data, start, end, row, limits, out, cursor):
    """Scan one record; True when accepted (outputs of the row written), False to decline."""
    if end - start > limits.bounds[3]:
        return False
    i = _skip_ws(data, start, end)
    if i >= end or data[i] != 0x7B:  # {
        return False
    i = _skip_ws(data, i + 1, end)
    seen = 0
    event_type = -1
    has_peer = False
    if i < end and data[i] == 0x7D:  # {} lacks the required fields
        return False
    while True:
        if i >= end or data[i] != 0x22:
            return False
        key_stop, _, _ = _string_end(data, i + 1, end, False)
        if key_stop < 0:
            return False
        field = _match(data, i + 1, key_stop, _FIELD_BYTES, _FIELD_OFFSETS)
        if field < 0:
            return False  # unknown field: the slow path skips it
        bit = 1 << field
        if seen & bit:
            return False  # duplicate key: the slow path applies "last one wins"
        seen |= bit
        i = _skip_ws(data, key_stop + 1, end)
        if i >= end or data[i] != 0x3A:  # :
            return False
        i = _skip_ws(data, i + 1, end)
        if i >= end:
            return False
        c = data[i]
        kind = _FIELD_KIND[field]
        if c == 0x6E:  # null
            if field <= F_ACCOUNT or field == F_MEMBERS or not _literal(data, i, end, _NULL):
                return False  # not optional: null is a type error for the slow path to name
            i += 4
        elif kind == 0:
            if c != 0x22:
                return False
            value_start = i + 1
            value_stop, escaped, ascii_only = _string_end(data, value_start, end, field == F_TEXT)
            if value_stop < 0:
                return False
            length = value_stop - value_start
            if field == 0:
                event_type = _match(
                    data, value_start, value_stop, limits.type_bytes, limits.type_offsets
                )
                if event_type < 0:
                    return False
                out.type[row] = event_type
            elif field == 2 or field == 3:  # account, peer
                if length < 1 or length > MAX_ID_BYTES:
                    return False
                slot = 0 if field == 2 else 1
                out.spans[row, slot, 0] = value_start
                out.spans[row, slot, 1] = value_stop
                out.ids[row, slot] = hash_span(data, value_start, value_stop)
                has_peer = has_peer or field == 3
            elif field == 4:  # chat
                chat = _match(data, value_start, value_stop, _CHAT_BYTES, _CHAT_OFFSETS)
                if chat < 0:
                    return False
                out.group_chat[row] = chat == 1
            elif field == 5:  # text
                text_start, text_stop = value_start, value_stop
                plain = ascii_only  # ASCII without NUL (raw, a NUL could only be an escape)
                if escaped:  # unescaped into the side buffer
                    plain = True
                    text_start = cursor[0]
                    text_stop = _unescape(data, value_start, value_stop, out.unescaped, text_start)
                    if text_stop < 0:
                        return False
                    cursor[0] = text_stop
                    for j in range(text_start, text_stop):
                        plain &= (out.unescaped[j] < 0x80) & (out.unescaped[j] != 0)
                    text_start += data.shape[0]  # spans index data followed by the side buffer
                    text_stop += data.shape[0]
                if text_stop - text_start > MAX_TEXT_BYTES:
                    return False
                out.text_plain[row] = plain
                out.spans[row, 3, 0] = text_start
                out.spans[row, 3, 1] = text_stop
            elif field == 11:  # ip
                out.spans[row, 2, 0] = value_start
                out.spans[row, 2, 1] = value_stop
                out.ids[row, 2] = hash_span(data, value_start, value_stop)
            i = value_stop + 1
        elif kind == 1:
            if c < 0x30 or c > 0x39:
                return False
            value = 0
            digits = 0
            while i < end and 0x30 <= data[i] <= 0x39:
                value = value * 10 + (data[i] - 0x30)
                digits += 1
                i += 1
            if digits > MAX_DIGITS or (digits > 1 and c == 0x30):
                return False
            if i < end and (data[i] == 0x2E or data[i] == 0x65 or data[i] == 0x45):
                return False  # a fraction or exponent: not an integer
            if field == 1 or field == 13:  # ts, account_created
                if value < limits.bounds[0] or value > limits.bounds[1]:
                    return False
                if field == 1:
                    out.ts_ms[row] = value
                else:
                    out.created_ms[row] = value
            else:  # members
                if value < 1 or value > limits.bounds[2]:
                    return False
                out.members[row] = value
        else:
            if _literal(data, i, end, _TRUE):
                truth = 1
                i += 4
            elif _literal(data, i, end, _FALSE):
                truth = 0
                i += 5
            else:
                return False
            pair = 2 * (field - 6)
            out.booleans[row] |= (1 | (truth << 1)) << pair
        i = _skip_ws(data, i, end)
        if i >= end:
            return False
        if data[i] == 0x2C:  # ,
            i = _skip_ws(data, i + 1, end)
            continue
        if data[i] != 0x7D:  # }
            return False
        break
    if _skip_ws(data, i + 1, end) != end:
        return False
    if (seen & 0b111) != 0b111:  # type, ts and account are required
        return False
    return has_peer or not limits.peer_required[event_type]


# Without reference counting: it allocates nothing, and per-record calls would otherwise pay atomic
# increments and decrements on every array argument.
@njit(cache=True, nogil=True, _nrt=False)
def _scan(data, offsets, limits, out, cursor):
    for row in range(offsets.shape[0] - 1):
        out.accepted[row] = _scan_one(
            data, offsets[row], offsets[row + 1], row, limits, out, cursor
        )
