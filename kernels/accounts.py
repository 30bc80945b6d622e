"""Per-account behaviour features over sliding event-time windows (Numba kernels).

One call of :func:`update_accounts` turns a columnar batch of events into per-event features of the
event's *subject* (the sender; for ``report`` and ``block`` the reported / blocked peer), in one pass
and with memory fixed when the state is created by :func:`new_account_state`.

Windows (event time, seconds; a window of ``n`` buckets of ``g`` seconds holds the events whose
bucket ``ts // g`` lies in ``(now // g - n, now // g]``, so it spans between ``(n - 1) * g`` and
``n * g`` seconds; ``now`` is the subject's latest event time, its *clock*)::

    msgs_15s                    1 s  x 15
    msgs_1m                     5 s  x 12
    msgs_15m                    1 min x 15
    "1 h" features              5 min x 12   (msgs, contacts, forwarded, typing, groups, recipients)
    "24 h" features             1 h  x 24    (msgs, reports, blocks, recipients, business recipients,
                                              active clock hours)

Time. The table's ``now`` is the largest event time seen (``counters[C_NOW_MS]``). An event older
than ``now - lateness_s`` is *late*: it is counted and skipped, and its features are the subject's
current ones. Other out-of-order events land in their own bucket (or in none if their bucket already
left a window). An account idle (no event as subject) for more than ``ttl_s`` is expired: it is
reset when it is next probed, and its slot can be reused. Expiry is lazy (on probe). Limits:
``lateness_s <= 6 h``, ``ttl_s <= 30 days``, event times in [1970, 2106).

Memory (plain numpy arrays sized at creation; with the defaults 198 bytes per account slot, all
pools included, so 248 bytes per tracked account at a load factor of 0.8; size the table
for the expected active accounts at a load factor of about 0.8; ``account_state_stats`` reports
every pool's use and losses):

* Account table: ``keys`` (uint64) and ``rows`` (uint32, 32 words = 128 bytes), open addressing with
  linear probing over a bounded window of ``probe`` slots (default 64: at load 0.8 a new account
  almost always finds an empty slot; lookups read only keys, 8 per cache line, and stop at the key
  or at an empty slot; keys hash to the first ``capacity - probe + 1`` slots, so no window wraps
  around the end). A row holds the account clock, creation time (to the second), the
  gap ring with its running sums, and a *log* of its last 8 events that still count in a window
  (time, type, flags, recipient fingerprint or members, in arrival order). Most accounts are quiet: their features are computed
  exactly from the log. A new account takes the first empty slot of its window; when the window is
  full, the first expired account of its first ``EVICTION_SCAN`` (8) slots is reused
  (``expirations``), else the least recently active of them (smallest clock, the first such slot
  on a tie) is evicted (``evictions``). Eight candidates, one cache line of row each: a table that
  is always full (far more accounts than slots) pays this on every new account, and 16 candidates
  cost twice the memory traffic for about as many evictions (1,401,361 with 8 vs 1,400,017 with 16
  for 2.4 M accounts through 1 M slots; 650 vs 637 in ``bench.kernels`` at load 0.8).
* Heavy pool (``heavy``, 176 words = 704 bytes = 11 cache lines per row, rows line aligned,
  default ``capacity // 16`` rows): when an
  account's log would overflow with events still inside a window, the account is *promoted*: the log
  is replayed into ring buckets with running totals, so every feature is O(1) per event. A heavy row
  whose owner has been idle for 24 h is reclaimed without loss; when none is free, the least recently
  active of ``HEAVY_SCAN`` rows (clock hand) is evicted and its owner restarts light
  (``heavy_evictions``: that account loses its window history, its counts can only be low). The
  default covers the benchmark's Zipf stream (7.5 % of its tracked accounts are promoted).
  Bucket counts are 16 bits and saturate at ``RING_MAX`` = 65,535 (a documented bound, not a
  wrap): messages per 1 s, 5 s, 1 min and 5 min bucket, the 1 h flag counts (contact known, non
  contact, forwarded, typing known, no typing) and groups created per 5 min, reports and blocks per
  hour. A window total is the sum of its (saturated) buckets, so e.g. ``msgs_1h`` is exact below
  65,535 messages in every 5 min bucket (218 per second). Messages per hour (``msgs_24h``) and
  members added per 5 min are 32-bit and exact.
* Recipient pairs (``pairs``, 16 bytes, default ``capacity`` entries, probe window ``PAIR_PROBE``,
  pairs hash to all but the last ``PAIR_PROBE - 1`` entries, so no window wraps):
  distinct recipients of heavy accounts are exact. Each (account, recipient) pair keeps the time it
  was last messaged; ring buckets count recipients by the bucket of their last message, so a
  window's distinct count is a running sum. Pairs outside every window are reused; when a probe
  window is full of live pairs, the least recently used one is dropped (``pair_evictions``; its
  owner then counts one recipient less). The exact part of an account's count is at most
  ``MAX_EXACT_RECIPIENTS`` (65,535) per window: beyond it, with no sketch available, new recipients
  are not counted (``recipients_uncounted``).
* Sketch pool (``sketch_*``, 153 KiB each, default ``capacity // 65536``, at least 1): once an
  account has more than ``exact_recipients`` (default 1,024) distinct recipients in 24 h, or 64 when
  the pair table is crowded where it hashes, its new recipients go to a sliding-window HyperLogLog
  (``kernels.hll``, m = 4096, Ertl's estimator) rather than to new pairs; its features are then
  exact pairs + estimate. Stated bound: relative error <= 5 % from 1,000 distinct recipients up
  (standard error 1.6 %), exact below ``exact_recipients``. If no sketch is free (or idle for 24 h)
  the account stays exact (``sketch_denied``). The default (15 sketches per million slots, 2.4 bytes
  per slot) assumes senders to more than 1,024 distinct recipients a day are rare; size it up for
  populations with many bulk senders.

Recipients are identified by a 32-bit fingerprint of the peer id: two recipients of one account
collide with probability about n^2 / 2^33 (n = 1,000: 1e-4; the count is then one low). Messages
without a peer (``peer == 0``) count no recipient.

Gap regularity: the gaps between an account's consecutive messages in event-time order (a message
older than the account's latest one adds no gap), capped at ``GAP_CAP_MS`` (18.6 h), go to a ring of
the last ``GAP_SLOTS`` (16) as 16-bit minifloats (exact below 4.096 s, relative error <= 2**-12
above). The row keeps the exact integer sum and sum of squares of the ring, so ``gap_cv`` (population
std / mean, once there are ``GAP_MIN`` = 8 gaps, else NaN; 0 if all gaps are 0) and ``gap_mean_s``
cost O(1) per event.

Age: from the ``registration`` event's time if one was seen, else the first ``account_created``
carried by a message, else unknown (NaN); kept to the second. Group ``members`` per event are
clamped to [0, 65535].

Speed: the batch kernel first hashes every event of the batch in a loop of its own (subject, home
slot, peer fingerprint into column scratch; LLVM vectorizes it; the same pass checks event types and
times, so a bad batch is rejected before any of it is applied), then applies the events in order,
prefetching the memory of the events a few positions ahead in three steps so no prefetch waits on a
load: the first keys of the window; then the account's row found in those keys
(or the row of the empty slot it will take; in a crowded window, the rest of the window's keys);
then its heavy row's first three lines and current buckets and its recipient pairs, or its log
line if it is light (or the eviction candidates' rows, for a new account in a full window). A
promotion prefetches the pairs of the log it replays. It runs without reference counting
(``_nrt=False``: it allocates nothing). Its tables are indexed flat (``_at``: compile-time row
widths, unsigned indices, so no runtime shape loads and no negative-index wraparound code).
Branches on data (is the account heavy, does the event carry a creation time, is the gap ring
full, where does a light log end, is a recipient's last message newer) mispredict on a few events
in ten, about 15 cycles each on current x86 cores, so they cost more than the instructions that
replace them: where a branch-free form is cheap (the gap ring's slot is subtracted even when still
empty, the light features read all eight log entries, a known recipient moves to the newer of two
times), or a predictable test can go first (creation known), the kernels use it.
State arrays start on a cache line (a light row is two lines) and their pages are written at
creation, so no page fault lands in a batch. Numba's on-disk cache (``cache=True``) is keyed on
each function's own file: after changing ``hll.py`` or ``hashtable.py``, clear
``kernels/__pycache__`` (or bump NUMBA_CACHE_DIR) so callers in ``accounts.py`` are recompiled.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import mmap
import time
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
from numba import njit
from numba.cpython.unsafe.numbers import leading_zeros

from . import hll
from .hashtable import MAX_TABLE_CAPACITY, copy_block, fingerprint32, home_slot, prefetch

# 2: pair placement (_pair_home) changed; 3: compact heavy rows; 4: 704-byte, line-aligned heavy rows;
# 5: newest-recipient bits in the light log; 6: heavy totals in COUNT_FIELDS order, the light log
# in arrival order from entry 0, probe windows that don't wrap (fewer home slots)
LAYOUT_VERSION = 6

# Event types and flag bits of the columnar batch (docs/architecture.md).
MESSAGE, REGISTRATION, REPORT, BLOCK, GROUP_CREATE, GROUP_ADD = 0, 1, 2, 3, 4, 5
N_EVENT_TYPES = 6
CONTACT_KNOWN, IN_CONTACTS, FORWARDED, TYPING_KNOWN, TYPING, BUSINESS = 4, 8, 16, 32, 64, 128

# Windows: bucket seconds and bucket counts.
B15S_S, N15S = 1, 15
B1M_S, N1M = 5, 12
B15M_S, N15M = 60, 15
B1H_S, N1H = 300, 12
B24H_S, N24H = 3600, 24

GAP_SLOTS = 16
GAP_MIN = 8
GAP_CAP_MS = (1 << 26) - 1  # gaps are capped at 18.6 h, so their sums stay exact in 64 bits
MAX_LATENESS_S = 6 * 3600
MAX_TTL_S = 30 * 86_400
LOG_SLOTS = 8
MAX_MEMBERS_PER_EVENT = 65535
MAX_TS_MS = (1 << 32) * 1000  # event times are kept as uint32 seconds
HEAVY_SCAN = 16  # heavy rows examined per promotion
EVICTION_SCAN = 8  # slots of a full probe window examined for an expired or evicted account
PAIR_PROBE = 16  # probe window of the pair table
SKETCH_RETRY = 64  # a denied account asks for a sketch again every 64 new recipients
SKETCH_UNDER_PRESSURE = 64  # recipients from which a sender takes a sketch when pairs are crowded

CACHE_LINE = 64
HUGE_PAGE = 1 << 21
NO_INDEX = 0xFFFFFFFF
NO_TIME = -(1 << 62)
_BIG = 1 << 62

# Light row layout (uint32 words).
ROW_WORDS = 32
L_NOW = 0  # account clock: latest event time as subject, seconds
L_META = 1  # gap count (5 bits) | gap write position (4 bits) << 5 | flags below
L_HEAVY = 2  # heavy row index or NO_INDEX
L_LAST_MSG = 3  # ms of the latest message, mod 2**32 (recovered from the clock, see below)
L_CREATED = 4  # account creation, seconds
L_GAP_SUM = 5  # sum of the (decoded) gaps in the ring, < 2**30
L_GAP_SQUARES = 6  # sum of their squares, < 2**56 (2 words)
L_GAPS = 8  # GAP_SLOTS x uint16 codes (8 words)
L_LOG = 16  # LOG_SLOTS x (tag, aux)
META_GAP_POS_SHIFT = 5
META_HAS_LAST_MSG = 1 << 9
META_CREATED_KNOWN = 1 << 10
META_CREATED_FROM_REG = 1 << 11
# Set once the latest message is GAP_CAP_MS or more behind the clock: the next gap is GAP_CAP_MS
# (every later message is newer, since lateness < GAP_CAP_MS). Until then the latest message is
# less than GAP_CAP_MS + MAX_TTL_S behind the clock, which is < 2**32 ms, so its low 32 bits suffice.
META_LAST_MSG_STALE = 1 << 12
# A log tag: valid bit | newest bit | no-peer bit | flags (8 bits) | type (3 bits) | event second
# mod 2**18. The second is recovered from the account clock: entries are never older than 25 h (they
# are dropped when they leave their windows) and the log is wiped if the clock jumps 2**17 s at once.
# Distinct recipients are kept at append time: of the messages to one recipient, the newest (latest
# second, the last appended on a tie) has TAG_NEWEST, and of the business ones TAG_NEWEST_BUSINESS
# (in the place of the GROUP_CHAT flag, which no feature reads). Messages leave the log oldest
# first, so the newest of a recipient is its last to leave: the features count these bits.
TAG_TS_MASK = (1 << 18) - 1
TAG_TYPE_SHIFT = 18
TAG_FLAGS_SHIFT = 21
LOG_FLAGS = 0xFC  # the flags the log keeps (CONTACT_KNOWN .. BUSINESS)
TAG_NEWEST_BUSINESS = 1 << TAG_FLAGS_SHIFT
TAG_NO_PEER = 1 << 29
TAG_NEWEST = 1 << 30
TAG_VALID = 1 << 31
LOG_WIPE_S = 1 << 17

# Heavy row layout. ``heavy`` holds uint32 words; the kernels also see the same memory as uint16
# halves (``heavy16 = heavy.view(np.uint16)``, half ``2 * w + j`` lies in word ``w``). Header and
# running totals are 32-bit words; ring counters are 16-bit halves that saturate at RING_MAX
# (their running totals then count the saturated value, so a total is always the sum of its
# buckets), except the hourly message counts and the 5 min member sums, which are 32-bit words.
# Recipient counts are 16-bit without saturation: an account's exact recipients are capped at
# MAX_EXACT_RECIPIENTS per window (see _recipient_seen), so no bucket can exceed it.
HEAVY_WORDS = 176  # 11 cache lines: rows stay line aligned
HEAVY_HALVES = 2 * HEAVY_WORDS  # the row's length in heavy16
RING_MAX = 65535
MAX_EXACT_RECIPIENTS = 65535
H_OWNER = 0  # account slot or NO_INDEX (free)
H_GEN = 1  # generation, tags the row's recipient pairs
H_SKETCH = 2  # sketch of all recipients (H_SKETCH + 0) and of business recipients (H_SKETCH + 1)
H_CLOCK = 4  # ring clock (seconds) = owner's clock
H_ACTIVE_HOURS = 5  # non-empty hourly message buckets
H_COUNTS = 6  # running totals (H_TOT_* below), from here in COUNT_FIELDS order: copied as a block
F1_MSGS, F1_CONTACT_KNOWN, F1_NON_CONTACT, F1_FORWARDED = 0, 1, 2, 3
F1_TYPING_KNOWN, F1_NO_TYPING, F1_GROUPS, F1_RECIPIENTS = 4, 5, 6, 7
NF1_HALVES = 8  # F1_MSGS .. F1_RECIPIENTS are 16-bit, the member sum is the bucket's last word
F24_MSGS, F24_REPORTS, F24_BLOCKS, F24_RECIPIENTS, F24_BUSINESS = 0, 1, 2, 3, 4
NF24 = 5
# The 15 s, 1 min and 15 min rings (one 16-bit count per bucket), as half indices: with the
# header and totals they fill the first 44 words, within the row's first 3 cache lines.
Q_RING_15S = 46
Q_RING_1M = Q_RING_15S + N15S  # 61
Q_RING_15M = Q_RING_1M + N1M  # 73
# 1 h ring (words): a bucket is NF1_HALVES halves then the member sum.
H_RING_1H = 44
B1H_WORDS = NF1_HALVES // 2 + 1  # 5
# 24 h ring (words): a bucket is the message count (word 0), then reports, blocks, recipients and
# business recipients as halves 2 .. 5 (half of field f: 2 * bucket + f + 1).
H_RING_24H = H_RING_1H + N1H * B1H_WORDS  # 104
B24H_WORDS = 3
assert H_RING_24H + N24H * B24H_WORDS == HEAVY_WORDS

# Pair table columns (uint32): owner heavy row (NO_INDEX = never used), generation << 1 | business,
# recipient fingerprint, last message second.
PAIR_OWNER, PAIR_GENBIZ, PAIR_FP, PAIR_LAST = 0, 1, 2, 3
PAIR_WORDS = 4

# Sketch pool. sketch_regs (uint8): rows 0-11 the 1 h ring (5 min buckets), 12-35 the 24 h ring
# (hourly), 36 and 37 the window registers of the two rings. sketch_meta (int64): owner heavy row
# (-1 = free), kind (0 all recipients, 1 business), newest bucket of each ring, then the two
# register histograms.
SK_RING_1H, SK_RING_24H, SK_WIN_1H, SK_WIN_24H = 0, N1H, N1H + N24H, N1H + N24H + 1
SK_REG_ROWS = N1H + N24H + 2
SK_OWNER, SK_KIND, SK_CLOCK_1H, SK_CLOCK_24H = 0, 1, 2, 3
SK_HIST_1H = 4
SK_HIST_24H = SK_HIST_1H + hll.HISTOGRAM_LEN
SK_META_WORDS = SK_HIST_24H + hll.HISTOGRAM_LEN

# params (int64)
P_CAPACITY, P_PROBE, P_LATENESS_S, P_TTL_S, P_EXACT_RECIPIENTS, P_LAYOUT = 0, 1, 2, 3, 4, 5
N_PARAMS = 8
# counters (int64)
C_NOW_MS, C_EVENTS, C_LATE, C_UNATTRIBUTED, C_EVICTIONS, C_EXPIRATIONS = 0, 1, 2, 3, 4, 5
C_PROMOTIONS, C_HEAVY_RECLAIMS, C_HEAVY_EVICTIONS, C_HEAVY_HAND, C_GENERATION = 6, 7, 8, 9, 10
C_PAIR_EVICTIONS, C_SKETCH_PROMOTIONS, C_SKETCH_DENIED, C_SKETCH_RECLAIMS = 11, 12, 13, 14
C_RECIPIENTS_UNCOUNTED = 15
N_COUNTERS = 16

# The feature block written by the kernel, one row per event (an event's features are adjacent in
# memory: column-major blocks cost ~10 % more, 20 scattered store streams): a uint32 column per
# count, a float32 column per real, and a word of small fields (FEATURE_WORDS below). One block
# seen through typed views, not one array per type: fewer pointers for the event loop to keep.
COUNT_FIELDS = (  # the 1 h fields in the order of a 1 h bucket, the 24 h ones of a 24 h bucket
    "msgs_15s",
    "msgs_1m",
    "msgs_15m",
    "msgs_1h",
    "contact_known_1h",
    "non_contact_1h",
    "forwarded_1h",
    "typing_known_1h",
    "no_typing_1h",
    "groups_created_1h",
    "members_added_1h",
    "msgs_24h",
    "reports_24h",
    "blocks_24h",
)
REAL_FIELDS = (
    "recipients_1h",
    "recipients_24h",
    "business_recipients_24h",
    "gap_cv",
    "gap_mean_s",
    "age_s",
)
(
    O_MSGS_15S,
    O_MSGS_1M,
    O_MSGS_15M,
    O_MSGS_1H,
    O_CONTACT_KNOWN,
    O_NON_CONTACT,
    O_FORWARDED,
    O_TYPING_KNOWN,
    O_NO_TYPING,
    O_GROUPS,
    O_MEMBERS,
    O_MSGS_24H,
    O_REPORTS,
    O_BLOCKS,
) = range(len(COUNT_FIELDS))
O_RECIPIENTS_1H, O_RECIPIENTS_24H, O_BUSINESS, O_GAP_CV, O_GAP_MEAN, O_AGE = range(len(REAL_FIELDS))
N_COUNT_FIELDS, N_REAL_FIELDS = len(COUNT_FIELDS), len(REAL_FIELDS)
# An event's features in the kernel's output block: the counts (uint32), the reals (float32), then
# one word of gap count (16 bits), active hours and late (8 bits each), read through views.
F_REALS = N_COUNT_FIELDS
F_LAST = N_COUNT_FIELDS + N_REAL_FIELDS
FEATURE_WORDS = F_LAST + 1

# Running totals of a heavy row: the count features at H_COUNTS + their column, so a heavy row's
# counts are copied out as one block; the exact distinct-recipient totals follow them.
H_TOT_15S, H_TOT_1M, H_TOT_15M = H_COUNTS + O_MSGS_15S, H_COUNTS + O_MSGS_1M, H_COUNTS + O_MSGS_15M
H_TOT_1H = H_COUNTS + O_MSGS_1H  # + F1 field, for F1_MSGS .. F1_GROUPS
H_TOT_MEMBERS = H_COUNTS + O_MEMBERS
H_TOT_24H = H_COUNTS + O_MSGS_24H  # + F24 field: recipients and business follow the counts
H_TOT_RECIPIENTS_1H = H_TOT_24H + NF24
assert H_TOT_1H + F1_GROUPS == H_COUNTS + O_GROUPS
assert H_TOT_24H + F24_BLOCKS == H_COUNTS + O_BLOCKS == H_TOT_24H + F24_RECIPIENTS - 1
assert H_TOT_RECIPIENTS_1H < Q_RING_15S // 2 and Q_RING_15M + N15M <= 2 * H_RING_1H


class AccountState(NamedTuple):
    """Fixed-size state of the account kernels (create with :func:`new_account_state`)."""

    keys: np.ndarray  # uint64 (capacity,): account id per slot, 0 = never used
    rows: np.ndarray  # uint32 (capacity, ROW_WORDS)
    heavy: np.ndarray  # uint32 (heavy_capacity, HEAVY_WORDS)
    pairs: np.ndarray  # uint32 (pair_capacity, PAIR_WORDS)
    sketch_regs: np.ndarray  # uint8 (sketch_capacity, SK_REG_ROWS, hll.REGISTERS)
    sketch_meta: np.ndarray  # int64 (sketch_capacity, SK_META_WORDS)
    params: np.ndarray  # int64 (N_PARAMS,)
    counters: np.ndarray  # int64 (N_COUNTERS,)


class AccountFeatures(NamedTuple):
    """Features of each event's subject after the event (arrays of the batch's length)."""

    msgs_15s: np.ndarray  # uint32
    msgs_1m: np.ndarray  # uint32
    msgs_15m: np.ndarray  # uint32
    msgs_1h: np.ndarray  # uint32
    msgs_24h: np.ndarray  # uint32
    recipients_1h: np.ndarray  # float32
    recipients_24h: np.ndarray  # float32
    contact_known_1h: np.ndarray  # uint32
    non_contact_1h: np.ndarray  # uint32
    forwarded_1h: np.ndarray  # uint32
    typing_known_1h: np.ndarray  # uint32
    no_typing_1h: np.ndarray  # uint32
    gap_cv: np.ndarray  # float32
    gap_count: np.ndarray  # uint16
    gap_mean_s: np.ndarray  # float32
    active_hours_24h: np.ndarray  # uint8
    age_s: np.ndarray  # float32
    groups_created_1h: np.ndarray  # uint32
    members_added_1h: np.ndarray  # uint32
    reports_24h: np.ndarray  # uint32
    blocks_24h: np.ndarray  # uint32
    business_recipients_24h: np.ndarray  # float32
    late: np.ndarray  # bool


FEATURE_DTYPES: dict[str, type] = {
    name: (
        np.uint32
        if name in COUNT_FIELDS
        else np.float32
        if name in REAL_FIELDS
        else {"gap_count": np.uint16, "active_hours_24h": np.uint8, "late": np.bool_}[name]
    )
    for name in AccountFeatures._fields
}

_STATE_DTYPES = {
    "keys": np.uint64,
    "rows": np.uint32,
    "heavy": np.uint32,
    "pairs": np.uint32,
    "sketch_regs": np.uint8,
    "sketch_meta": np.int64,
    "params": np.int64,
    "counters": np.int64,
}


def _state_shapes(capacity: int, heavy: int, pairs: int, sketches: int) -> dict[str, tuple]:
    return {
        "keys": (capacity,),
        "rows": (capacity, ROW_WORDS),
        "heavy": (heavy, HEAVY_WORDS),
        "pairs": (pairs, PAIR_WORDS),
        "sketch_regs": (sketches, SK_REG_ROWS, hll.REGISTERS),
        "sketch_meta": (sketches, SK_META_WORDS),
        "params": (N_PARAMS,),
        "counters": (N_COUNTERS,),
    }


def _zeros_aligned(shape: tuple, dtype) -> np.ndarray:
    """Zeroed C-contiguous array whose data starts on a cache line (numpy only guarantees 16 bytes):
    a 128-byte light row then spans two cache lines, not three. The zeros are written here, so the
    pages are mapped at creation and not by page faults in the first batches.

    Arrays of HUGE_PAGE bytes or more are anonymous memory maps aligned to 2 MiB and advised as
    transparent huge pages where the OS supports it (Linux ``madvise``): the kernels touch the
    state at random, and with 4 KiB pages nearly every cache miss would also miss the TLB."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes >= HUGE_PAGE and hasattr(mmap, "MADV_HUGEPAGE"):
        region = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        whole = np.frombuffer(region, dtype=np.uint8)
        offset = -whole.ctypes.data % HUGE_PAGE
        with contextlib.suppress(OSError):  # no huge pages: ordinary pages
            region.madvise(mmap.MADV_HUGEPAGE, offset, len(region) - offset)
        buffer = whole[offset : offset + nbytes]
        buffer.fill(0)  # anonymous maps read as zeros; writing maps the pages now
        return buffer.view(dtype).reshape(shape)
    buffer = np.empty(nbytes + CACHE_LINE, dtype=np.uint8)
    buffer.fill(0)
    offset = -buffer.ctypes.data % CACHE_LINE
    return buffer[offset : offset + nbytes].view(dtype).reshape(shape)


def new_account_state(
    capacity: int,
    *,
    lateness_s: int = 30,
    ttl_s: int = 2 * 86_400,
    probe: int = 64,
    heavy_capacity: int | None = None,
    pair_capacity: int | None = None,
    sketch_capacity: int | None = None,
    exact_recipients: int = 1024,
) -> AccountState:
    """Empty state for ``capacity`` accounts.

    ``lateness_s`` (<= 6 h): events older than the newest event time minus this are late.
    ``ttl_s`` (<= 30 days): an account idle for longer is expired. ``probe``: account-table probe
    window (slots examined per lookup; when it is full, its first EVICTION_SCAN slots are the
    eviction candidates). The default 64 keeps evictions near zero up to a load factor of 0.8
    (650 of 571,667 accounts in ``bench.kernels``); a table that is always full (far more active
    accounts than slots) pays for a wide window, since every new account scans all of it (its
    keys are prefetched, 8 per cache line).
    ``heavy_capacity`` (default ``capacity // 16``), ``pair_capacity`` (default ``capacity``) and
    ``sketch_capacity`` (default ``capacity // 65536``, at least 1; 0 = always exact) size the
    shared pools; ``exact_recipients``: distinct recipients in 24 h kept exactly before a sketch
    takes new ones. With the defaults the state takes about 198 bytes per account slot: size
    ``capacity`` for the expected accounts at a load factor of about 0.8.
    """
    heavy_capacity = max(1, capacity // 16) if heavy_capacity is None else heavy_capacity
    pair_capacity = max(PAIR_PROBE, capacity) if pair_capacity is None else pair_capacity
    sketch_capacity = max(1, capacity // 65_536) if sketch_capacity is None else sketch_capacity
    checks = (
        ("capacity", capacity, 1, MAX_TABLE_CAPACITY - 1),
        ("heavy_capacity", heavy_capacity, 1, NO_INDEX - 1),
        ("pair_capacity", pair_capacity, PAIR_PROBE, MAX_TABLE_CAPACITY - 1),
        ("sketch_capacity", sketch_capacity, 0, 1 << 31),
        ("lateness_s", lateness_s, 0, MAX_LATENESS_S),
        ("ttl_s", ttl_s, 1, MAX_TTL_S),
        ("probe", probe, 1, 1 << 16),
        ("exact_recipients", exact_recipients, 0, 1 << 31),
    )
    for name, value, low, high in checks:
        if not isinstance(value, int | np.integer) or not low <= value <= high:
            raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
    shapes = _state_shapes(capacity, heavy_capacity, pair_capacity, sketch_capacity)
    arrays = {name: _zeros_aligned(shape, _STATE_DTYPES[name]) for name, shape in shapes.items()}
    arrays["rows"][:, L_HEAVY] = NO_INDEX
    arrays["heavy"][:, H_OWNER] = NO_INDEX
    arrays["pairs"][:, PAIR_OWNER] = NO_INDEX
    arrays["sketch_meta"][:, SK_OWNER] = -1
    params = arrays["params"]
    params[P_CAPACITY] = capacity
    params[P_PROBE] = min(probe, capacity)
    params[P_LATENESS_S] = lateness_s
    params[P_TTL_S] = ttl_s
    params[P_EXACT_RECIPIENTS] = exact_recipients
    params[P_LAYOUT] = LAYOUT_VERSION
    arrays["counters"][C_NOW_MS] = NO_TIME
    return AccountState(**arrays)


# --------------------------------------------------------------------------------------------
# Small helpers. The kernels see each table (rows, heavy, heavy16, pairs, and the feature blocks)
# as a flat 1-D array and index it with _at(row, width, word): the row width is then a compile-time
# constant (a shift or a small multiply folded into the address) rather than a runtime shape loaded
# for every access, and the index is unsigned, so Numba emits no negative-index wraparound; both
# cost about 27 instructions per event with 2-D indexing. No row views and no tuples either: array
# views and NamedTuple arguments cost reference-count traffic on every call.


@njit(cache=True, nogil=True, inline="always")
def _at(row, width, word):
    """Index of ``word`` of row ``row`` in a flat table of ``width``-word rows."""
    return np.uint64(row) * np.uint64(width) + np.uint64(word)


@njit(cache=True, nogil=True, inline="always")
def _heavy_capacity(heavy):
    return heavy.shape[0] // HEAVY_WORDS


@njit(cache=True, nogil=True, inline="always")
def _account_homes(params):
    """Home slots of the account table: all but its last ``probe - 1`` slots, so no probe window
    wraps around the end (no wrap test per probed slot)."""
    return params[P_CAPACITY] - params[P_PROBE] + 1


@njit(cache=True, nogil=True, inline="always")
def _pair_homes(pairs):
    """Home slots of the pair table: all but its last PAIR_PROBE - 1 entries, so no probe window
    wraps around the end (no wrap test per probed entry)."""
    return pairs.shape[0] // PAIR_WORDS - (PAIR_PROBE - 1)


@njit(cache=True, nogil=True, inline="always")
def _get_i64(rows, slot, word):
    return (np.int64(rows[_at(slot, ROW_WORDS, word + 1)]) << 32) | np.int64(
        rows[_at(slot, ROW_WORDS, word)]
    )


@njit(cache=True, nogil=True, inline="always")
def _set_i64(rows, slot, word, value):
    rows[_at(slot, ROW_WORDS, word)] = value & 0xFFFFFFFF
    rows[_at(slot, ROW_WORDS, word + 1)] = (value >> 32) & 0xFFFFFFFF


@njit(cache=True, nogil=True, inline="always")
def encode_gap_ms(ms):
    """16-bit minifloat of a gap in ms: exact below 4096, else 12 significant bits (truncated);
    65535 from 2**42 ms."""
    if ms >= 1 << 42:
        return np.int64(65535)
    return gap_code_and_value(ms)[0]


@njit(cache=True, nogil=True, inline="always")
def decode_gap_ms(code):
    """Gap in ms of a code from :func:`encode_gap_ms` (the middle of its range), as int."""
    code = np.int64(code)
    e = max((code >> 11) - 1, 1)  # clamped so the shifts stay defined where the code is the gap
    wide = (((code & 2047) | 2048) << e) + (np.int64(1) << (e - 1))
    return code if code < 4096 else wide


@njit(cache=True, nogil=True, inline="always")
def gap_code_and_value(ms):
    """``(encode_gap_ms(ms), decode_gap_ms(encode_gap_ms(ms)))`` for ``0 <= ms < 2**42`` (codes
    that do not saturate; gaps are capped at GAP_CAP_MS), computed together: the value is ``ms``
    with the bits below its 12 significant ones set to the middle of their range."""
    # Shift e keeps 12 significant bits; code = e * 2048 + (ms >> e), which is ms itself for e = 0
    # (one formula, no branch on the gap's size: gaps are data).
    e = max(64 - np.int64(leading_zeros(np.uint64(ms))) - 12, 0)
    kept = np.int64(ms) >> e
    return e * 2048 + kept, (kept << e) + ((np.int64(1) << e) >> 1)


@njit(cache=True, nogil=True, inline="always")
def _gap_get(rows, slot, k):
    return (np.int64(rows[_at(slot, ROW_WORDS, L_GAPS + (k >> 1))]) >> (16 * (k & 1))) & 0xFFFF


@njit(cache=True, nogil=True, inline="always")
def _gap_set(rows, slot, k, code):
    word = L_GAPS + (k >> 1)
    shift = 16 * (k & 1)
    value = (np.int64(rows[_at(slot, ROW_WORDS, word)]) & ~(np.int64(0xFFFF) << shift)) | (
        code << shift
    )
    rows[_at(slot, ROW_WORDS, word)] = value & 0xFFFFFFFF


@njit(cache=True, nogil=True, inline="always")
def _last_message_ms(rows, slot, clock_s):
    top = clock_s * 1000 + 999
    return top - ((top - np.int64(rows[_at(slot, ROW_WORDS, L_LAST_MSG)])) & 0xFFFFFFFF)


@njit(cache=True, nogil=True, inline="always")
def _record_message_time(rows, slot, ts_ms, clock_s):
    """Push the gap since the latest message (if this message is not older) into the gap ring and
    its running sums. ``clock_s`` is the account clock before this event."""
    meta = np.int64(rows[_at(slot, ROW_WORDS, L_META)])
    if meta & META_HAS_LAST_MSG:
        if meta & META_LAST_MSG_STALE:
            gap = GAP_CAP_MS
        else:
            last = _last_message_ms(rows, slot, clock_s)
            if ts_ms < last:
                return
            gap = min(ts_ms - last, GAP_CAP_MS)
        code, value = gap_code_and_value(gap)
        count = meta & 0x1F
        pos = (meta >> META_GAP_POS_SHIFT) & 0xF
        total = np.int64(rows[_at(slot, ROW_WORDS, L_GAP_SUM)]) + value
        squares = _get_i64(rows, slot, L_GAP_SQUARES) + value * value
        # The slot a full ring overwrites; in a ring not yet full it is still 0 (rows start
        # zeroed), which subtracts nothing. No branch on the count: light and heavy accounts
        # interleave, so it would mispredict.
        old = decode_gap_ms(_gap_get(rows, slot, pos))
        total -= old
        squares -= old * old
        count = min(count + 1, GAP_SLOTS)
        _gap_set(rows, slot, pos, code)
        rows[_at(slot, ROW_WORDS, L_GAP_SUM)] = total
        _set_i64(rows, slot, L_GAP_SQUARES, squares)
        pos = (pos + 1) & (GAP_SLOTS - 1)
        meta = (meta & ~np.int64(0x1FF)) | count | (pos << META_GAP_POS_SHIFT)
    rows[_at(slot, ROW_WORDS, L_META)] = (meta | META_HAS_LAST_MSG) & ~np.int64(META_LAST_MSG_STALE)
    rows[_at(slot, ROW_WORDS, L_LAST_MSG)] = ts_ms & 0xFFFFFFFF


@njit(cache=True, nogil=True, inline="always")
def _mark_stale_message(rows, slot, clock_s):
    """After the clock moved to ``clock_s`` without a message: remember a latest message that is
    GAP_CAP_MS or more behind (before its low 32 bits become ambiguous)."""
    meta = np.int64(rows[_at(slot, ROW_WORDS, L_META)])
    if (
        meta & META_HAS_LAST_MSG
        and not meta & META_LAST_MSG_STALE
        and clock_s * 1000 + 999 - _last_message_ms(rows, slot, clock_s) >= GAP_CAP_MS
    ):
        rows[_at(slot, ROW_WORDS, L_META)] = meta | META_LAST_MSG_STALE


@njit(cache=True, nogil=True, inline="always")
def _record_creation(rows, slot, created_ms, from_registration):
    meta = np.int64(rows[_at(slot, ROW_WORDS, L_META)])
    # The known bit first: it is nearly always set for a message's sender, whereas whether an event
    # carries a creation time is data (a branch on it first would mispredict).
    if not from_registration and meta & META_CREATED_KNOWN:
        return
    if created_ms >= 0:
        rows[_at(slot, ROW_WORDS, L_CREATED)] = min(_div(created_ms, 1000), 0xFFFFFFFF)
        meta |= META_CREATED_KNOWN
        if from_registration:
            meta |= META_CREATED_FROM_REG
        rows[_at(slot, ROW_WORDS, L_META)] = meta


@njit(cache=True, nogil=True, inline="always")
def _div(x, d):
    """``x // d`` for ``x >= 0``: unsigned, so a constant divisor costs a multiply and a shift
    (signed floor division needs several more instructions)."""
    return np.int64(np.uint64(x) // np.uint64(d))


@njit(cache=True, nogil=True, inline="always")
def _mod(x, d):
    """``x % d`` for ``x >= 0`` (unsigned, see :func:`_div`)."""
    return np.int64(np.uint64(x) % np.uint64(d))


@njit(cache=True, nogil=True, inline="always")
def _in_window(ts, now, bucket_s, n_buckets):
    return _div(ts, bucket_s) > _div(now, bucket_s) - n_buckets


@njit(cache=True, nogil=True, inline="always")
def _window_start(now, bucket_s, n_buckets):
    """The first second in the window of ``n_buckets`` buckets ending at ``now``'s bucket: ``ts``
    is in that window iff ``ts >= _window_start(...)`` (``_in_window`` without dividing ``ts``)."""
    return (_div(now, bucket_s) - n_buckets + 1) * bucket_s


# --------------------------------------------------------------------------------------------
# Account table


@njit(cache=True, nogil=True)
def _release_heavy(heavy, sketch_meta, hidx):
    """Free heavy row ``hidx`` and its sketches (its recipient pairs die with its generation)."""
    for kind in range(2):
        sk = np.int64(heavy[_at(hidx, HEAVY_WORDS, H_SKETCH + kind)])
        if sk != NO_INDEX:
            sketch_meta[sk, SK_OWNER] = -1
            heavy[_at(hidx, HEAVY_WORDS, H_SKETCH + kind)] = NO_INDEX
    heavy[_at(hidx, HEAVY_WORDS, H_OWNER)] = NO_INDEX


@njit(cache=True, nogil=True, inline="always")
def _reset_row(rows, heavy, sketch_meta, slot, now):
    hidx = np.int64(rows[_at(slot, ROW_WORDS, L_HEAVY)])
    if hidx != NO_INDEX:
        _release_heavy(heavy, sketch_meta, hidx)
    for w in range(ROW_WORDS):
        rows[_at(slot, ROW_WORDS, w)] = 0
    rows[_at(slot, ROW_WORDS, L_HEAVY)] = NO_INDEX
    rows[_at(slot, ROW_WORDS, L_NOW)] = now


@njit(cache=True, nogil=True)
def _find_account(keys, rows, key, home, now_s, ttl_s, probe):
    """Slot of a live (not expired) account (``home``: its home slot), or -1. Never modifies the
    table."""
    for slot in range(home, home + probe):
        k = keys[np.uint64(slot)]
        if k == key:
            if now_s - np.int64(rows[_at(slot, ROW_WORDS, L_NOW)]) > ttl_s:
                return -1
            return slot
        if k == 0:
            return -1
    return -1


@njit(cache=True, nogil=True, inline="always")
def _claim_account(
    keys, rows, heavy, sketch_meta, counters, key, home, hint, ts_s, now_s, ttl_s, probe
):  # fmt: skip
    """Slot of ``key`` (home slot ``home``), inserting it: into the first empty slot of the probe
    window, else into the first expired one of the first EVICTION_SCAN slots, else the least
    recently active account of those is evicted. An expired account is reset in place. Only keys
    are read unless the window is full (rows are read for their clocks). ``hint``: the slot the
    prefetch found the key in (checked, it may be stale), else NOT_FOUND or CROWDED."""
    found = -1
    if hint < np.uint64(keys.shape[0]) and keys[hint] == key:  # keys are unique: the key's slot
        found = np.int64(hint)
    else:
        for slot in range(home, home + probe):
            k = keys[np.uint64(slot)]
            if k == key:
                found = slot
                break
            if k == 0:  # never used: the row is still as created (zeros, no heavy row)
                keys[slot] = key
                rows[_at(slot, ROW_WORDS, L_NOW)] = ts_s
                return slot
    if found >= 0:
        if now_s - np.int64(rows[_at(found, ROW_WORDS, L_NOW)]) > ttl_s:
            counters[C_EXPIRATIONS] += 1
            _reset_row(rows, heavy, sketch_meta, found, ts_s)
        return found
    victim = home
    victim_clock = _BIG
    expired = False
    for slot in range(home, home + min(probe, EVICTION_SCAN)):
        clock = np.int64(rows[_at(slot, ROW_WORDS, L_NOW)])
        if now_s - clock > ttl_s:
            victim = slot
            expired = True
            break
        if clock < victim_clock:
            victim = slot
            victim_clock = clock
    if expired:
        counters[C_EXPIRATIONS] += 1
    else:
        counters[C_EVICTIONS] += 1
    keys[victim] = key
    _reset_row(rows, heavy, sketch_meta, victim, ts_s)
    return victim


# --------------------------------------------------------------------------------------------
# Light accounts: the event log


@njit(cache=True, nogil=True, inline="always")
def _log_entry(slot, k):
    """Index in ``rows`` of the tag of log entry ``k`` of account ``slot`` (then its aux word).
    The log holds its entries in arrival order from entry 0: the first empty tag (0) ends it."""
    return _at(slot, ROW_WORDS, L_LOG + 2 * k)


@njit(cache=True, nogil=True, inline="always")
def _log_aux(slot, k):
    """Index in ``rows`` of the aux word (recipient fingerprint or members) of log entry ``k``."""
    return _at(slot, ROW_WORDS, L_LOG + 2 * k + 1)


@njit(cache=True, nogil=True, inline="always")
def _log_ts(tag, now):
    return now - ((now - (tag & TAG_TS_MASK)) & TAG_TS_MASK)


@njit(cache=True, nogil=True, inline="always")
def _relevant(event_type, ts, now):
    """Whether an event at ``ts`` still counts in one of its windows at ``now``."""
    if event_type in (GROUP_CREATE, GROUP_ADD):
        return _in_window(ts, now, B1H_S, N1H)
    return _in_window(ts, now, B24H_S, N24H)


@njit(cache=True, nogil=True, inline="always")
def _light_advance(rows, slot, now):
    """Move a light account's clock to ``now`` and drop log entries that left all their windows."""
    old = np.int64(rows[_at(slot, ROW_WORDS, L_NOW)])
    if now <= old:
        return
    rows[_at(slot, ROW_WORDS, L_NOW)] = now
    wipe = now - old >= LOG_WIPE_S
    kept = 0  # the entries that still count move down, in order
    end = LOG_SLOTS
    for k in range(LOG_SLOTS):
        tag = np.int64(rows[_log_entry(slot, k)])
        if tag == 0:
            end = k
            break
        if not wipe and _relevant((tag >> TAG_TYPE_SHIFT) & 7, _log_ts(tag, now), now):
            rows[_log_entry(slot, kept)] = tag
            rows[_log_aux(slot, kept)] = rows[_log_aux(slot, k)]
            kept += 1
    for k in range(kept, end):
        rows[_log_entry(slot, k)] = 0
        rows[_log_aux(slot, k)] = 0


@njit(cache=True, nogil=True, inline="always")
def _light_store(rows, slot, ts, event_type, flags8, aux, no_peer):
    """Append an event to the log; False if the log is full (the account must be promoted: the
    replay ignores the newest bits this may have moved)."""
    now = np.int64(rows[_at(slot, ROW_WORDS, L_NOW)])
    if not _relevant(event_type, ts, now):
        return True
    tag = TAG_VALID | (ts & TAG_TS_MASK) | (event_type << TAG_TYPE_SHIFT)
    tag |= (flags8 & LOG_FLAGS) << TAG_FLAGS_SHIFT
    business = event_type == MESSAGE and (flags8 & BUSINESS) != 0
    if no_peer:
        tag |= TAG_NO_PEER
    elif event_type == MESSAGE:
        tag |= TAG_NEWEST | (TAG_NEWEST_BUSINESS if business else 0)
    free = -1
    for k in range(LOG_SLOTS):
        other = np.int64(rows[_log_entry(slot, k)])
        if other == 0:
            free = k
            break
        if (
            event_type != MESSAGE
            or no_peer
            or other & (TAG_NEWEST | TAG_NEWEST_BUSINESS) == 0
            or rows[_log_aux(slot, k)] != aux
            or (other >> TAG_TYPE_SHIFT) & 7 != MESSAGE
        ):
            continue
        # A message to the same recipient that holds a newest bit: keep the bit on the later one.
        if _log_ts(other, now) > ts:
            tag &= ~np.int64(TAG_NEWEST if other & TAG_NEWEST else 0)
            tag &= ~np.int64(TAG_NEWEST_BUSINESS if other & TAG_NEWEST_BUSINESS else 0)
        else:
            other &= ~np.int64(TAG_NEWEST)
            if business:
                other &= ~np.int64(TAG_NEWEST_BUSINESS)
            rows[_log_entry(slot, k)] = other
    if free < 0:
        return False
    rows[_log_entry(slot, free)] = tag
    rows[_log_aux(slot, free)] = aux
    return True


@njit(cache=True, nogil=True, inline="always")
def _popcount64(x):
    x = x - ((x >> 1) & 0x5555555555555555)
    x = (x & 0x3333333333333333) + ((x >> 2) & 0x3333333333333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0F
    return (x * 0x0101010101010101) >> 56


@njit(cache=True, nogil=True, inline="always")
def _light_features(rows, slot, counts, reals, active_hours, i):
    """Features from the log. Every entry still counts in its longest window (the clock's
    advance dropped the others), and entry fields are summed as 0/1 values rather than branched
    on: they are data, their branches mispredict."""
    now = np.int64(rows[_at(slot, ROW_WORDS, L_NOW)])
    # The first second of each window: ts // bucket > now // bucket - n_buckets, divided once.
    start_15s = _window_start(now, B15S_S, N15S)
    start_1m = _window_start(now, B1M_S, N1M)
    start_15m = _window_start(now, B15M_S, N15M)
    start_1h = _window_start(now, B1H_S, N1H)
    m15s = m1m = m15m = m1h = m24 = 0
    known = non_contact = forwarded = typing_known = no_typing = 0
    groups = members = reports = blocks = 0
    recipients_1h = recipients_24h = business = 0
    hours = np.uint64(0)  # bit (hour mod 64) of every message: 24 hours map to distinct bits
    for k in range(LOG_SLOTS):
        # Every entry, empty ones too (tag 0: no message, nor any other type but a message's, and
        # no newest bits, so it adds nothing): how many entries the log holds is data.
        tag = np.int64(rows[_log_entry(slot, k)])
        event_type = (tag >> TAG_TYPE_SHIFT) & 7
        ts = _log_ts(tag, now)
        flags = tag >> TAG_FLAGS_SHIFT
        message = np.int64(event_type == MESSAGE) & _div(tag, TAG_VALID)
        in_1h = np.int64(ts >= start_1h)
        message_1h = message & in_1h
        m24 += message
        m1h += message_1h
        m15m += message & np.int64(ts >= start_15m)
        m1m += message & np.int64(ts >= start_1m)
        m15s += message & np.int64(ts >= start_15s)
        # _div(bits, FLAG) shifts FLAG's bit down to bit 0: ANDed with a 0/1 value, it is that flag
        # as 0/1 (a shift and an AND; comparing (bits & FLAG) != 0 costs ~5 instructions more per
        # event).
        contact_known = message_1h & _div(flags, CONTACT_KNOWN)
        known += contact_known
        non_contact += contact_known & ~_div(flags, IN_CONTACTS)
        forwarded += message_1h & _div(flags, FORWARDED)
        typing = message_1h & _div(flags, TYPING_KNOWN)
        typing_known += typing
        no_typing += typing & ~_div(flags, TYPING)
        newest = _div(tag, TAG_NEWEST) & 1
        recipients_24h += newest
        recipients_1h += newest & in_1h
        business += _div(tag, TAG_NEWEST_BUSINESS) & 1
        hours |= np.uint64(message) << np.uint64(_div(ts, B24H_S) & 63)
        groups += np.int64(event_type == GROUP_CREATE) & in_1h
        members += (np.int64(event_type == GROUP_ADD) & in_1h) * np.int64(rows[_log_aux(slot, k)])
        reports += np.int64(event_type == REPORT)
        blocks += np.int64(event_type == BLOCK)
    counts[_at(i, FEATURE_WORDS, O_MSGS_15S)] = m15s
    counts[_at(i, FEATURE_WORDS, O_MSGS_1M)] = m1m
    counts[_at(i, FEATURE_WORDS, O_MSGS_15M)] = m15m
    counts[_at(i, FEATURE_WORDS, O_MSGS_1H)] = m1h
    counts[_at(i, FEATURE_WORDS, O_MSGS_24H)] = m24
    counts[_at(i, FEATURE_WORDS, O_CONTACT_KNOWN)] = known
    counts[_at(i, FEATURE_WORDS, O_NON_CONTACT)] = non_contact
    counts[_at(i, FEATURE_WORDS, O_FORWARDED)] = forwarded
    counts[_at(i, FEATURE_WORDS, O_TYPING_KNOWN)] = typing_known
    counts[_at(i, FEATURE_WORDS, O_NO_TYPING)] = no_typing
    counts[_at(i, FEATURE_WORDS, O_GROUPS)] = groups
    counts[_at(i, FEATURE_WORDS, O_MEMBERS)] = members
    counts[_at(i, FEATURE_WORDS, O_REPORTS)] = reports
    counts[_at(i, FEATURE_WORDS, O_BLOCKS)] = blocks
    reals[_at(i, FEATURE_WORDS, F_REALS + O_RECIPIENTS_1H)] = recipients_1h
    reals[_at(i, FEATURE_WORDS, F_REALS + O_RECIPIENTS_24H)] = recipients_24h
    reals[_at(i, FEATURE_WORDS, F_REALS + O_BUSINESS)] = business
    active_hours[_at(i, 4 * FEATURE_WORDS, 4 * F_LAST + 2)] = _popcount64(hours)


# --------------------------------------------------------------------------------------------
# Heavy accounts: ring buckets with running totals


@njit(cache=True, nogil=True, inline="always")
def _leaving_buckets(old, now, bucket_s, n_buckets):
    """Range of the buckets that leave a window of ``n_buckets`` between clocks ``old`` and
    ``now`` (empty when the bucket did not change)."""
    old_b = _div(old, bucket_s)
    new_b = _div(now, bucket_s)
    return max(old_b + 1, new_b - n_buckets + 1), new_b + 1


@njit(cache=True, nogil=True, inline="always")
def _slide_small(heavy, heavy16, hidx, ring, total, n_buckets, bucket_s, old, now):
    """Clear the leaving buckets of a ring of single 16-bit counts (half index ``ring``)."""
    lo, hi = _leaving_buckets(old, now, bucket_s, n_buckets)
    if hi - lo == n_buckets:  # the whole window left (a quiet account): no sums to keep
        heavy16[_at(hidx, HEAVY_HALVES, ring) : _at(hidx, HEAVY_HALVES, ring + n_buckets)] = 0
        heavy[_at(hidx, HEAVY_WORDS, total)] = 0
        return
    # Unconditional: which buckets are empty is data, branches on it mispredict.
    for b in range(lo, hi):
        q = ring + _mod(b, n_buckets)
        heavy[_at(hidx, HEAVY_WORDS, total)] -= heavy16[_at(hidx, HEAVY_HALVES, q)]
        heavy16[_at(hidx, HEAVY_HALVES, q)] = 0


@njit(cache=True, nogil=True, inline="always")
def _heavy_advance(heavy, heavy16, hidx, now):
    old = np.int64(heavy[_at(hidx, HEAVY_WORDS, H_CLOCK)])
    if now <= old:
        return
    heavy[_at(hidx, HEAVY_WORDS, H_CLOCK)] = now
    # Bucket sizes nest (1 s | 5 s | 1 min | 5 min | 1 h): once a ring's bucket is unchanged, so
    # are all longer rings' buckets, and nothing leaves them.
    _slide_small(heavy, heavy16, hidx, Q_RING_15S, H_TOT_15S, N15S, B15S_S, old, now)
    if _div(old, B1M_S) == _div(now, B1M_S):
        return
    _slide_small(heavy, heavy16, hidx, Q_RING_1M, H_TOT_1M, N1M, B1M_S, old, now)
    if _div(old, B15M_S) == _div(now, B15M_S):
        return
    _slide_small(heavy, heavy16, hidx, Q_RING_15M, H_TOT_15M, N15M, B15M_S, old, now)
    if _div(old, B1H_S) == _div(now, B1H_S):
        return
    lo, hi = _leaving_buckets(old, now, B1H_S, N1H)
    if hi - lo == N1H:
        heavy[
            _at(hidx, HEAVY_WORDS, H_RING_1H) : _at(hidx, HEAVY_WORDS, H_RING_1H + N1H * B1H_WORDS)
        ] = 0
        heavy[_at(hidx, HEAVY_WORDS, H_TOT_1H) : _at(hidx, HEAVY_WORDS, H_TOT_MEMBERS + 1)] = 0
        heavy[_at(hidx, HEAVY_WORDS, H_TOT_RECIPIENTS_1H)] = 0
    else:
        for b in range(lo, hi):
            w = H_RING_1H + _mod(b, N1H) * B1H_WORDS
            for f in range(F1_GROUPS + 1):
                heavy[_at(hidx, HEAVY_WORDS, H_TOT_1H + f)] -= heavy16[
                    _at(hidx, HEAVY_HALVES, 2 * w + f)
                ]
            heavy[_at(hidx, HEAVY_WORDS, H_TOT_RECIPIENTS_1H)] -= heavy16[
                _at(hidx, HEAVY_HALVES, 2 * w + F1_RECIPIENTS)
            ]
            heavy[_at(hidx, HEAVY_WORDS, H_TOT_MEMBERS)] -= heavy[
                _at(hidx, HEAVY_WORDS, w + B1H_WORDS - 1)
            ]
            heavy[_at(hidx, HEAVY_WORDS, w) : _at(hidx, HEAVY_WORDS, w + B1H_WORDS)] = 0
    if _div(old, B24H_S) == _div(now, B24H_S):
        return
    lo, hi = _leaving_buckets(old, now, B24H_S, N24H)
    if hi - lo == N24H:
        heavy[
            _at(hidx, HEAVY_WORDS, H_RING_24H) : _at(
                hidx, HEAVY_WORDS, H_RING_24H + N24H * B24H_WORDS
            )
        ] = 0
        heavy[_at(hidx, HEAVY_WORDS, H_TOT_24H) : _at(hidx, HEAVY_WORDS, H_TOT_24H + NF24)] = 0
        heavy[_at(hidx, HEAVY_WORDS, H_ACTIVE_HOURS)] = 0
    else:
        for b in range(lo, hi):
            w = H_RING_24H + _mod(b, N24H) * B24H_WORDS
            v = heavy[_at(hidx, HEAVY_WORDS, w)]
            heavy[_at(hidx, HEAVY_WORDS, H_ACTIVE_HOURS)] -= v != 0
            heavy[_at(hidx, HEAVY_WORDS, H_TOT_24H + F24_MSGS)] -= v
            for f in range(1, NF24):
                heavy[_at(hidx, HEAVY_WORDS, H_TOT_24H + f)] -= heavy16[
                    _at(hidx, HEAVY_HALVES, 2 * w + f + 1)
                ]
            heavy[_at(hidx, HEAVY_WORDS, w) : _at(hidx, HEAVY_WORDS, w + B24H_WORDS)] = 0


@njit(cache=True, nogil=True, inline="always")
def _bump(heavy, hidx, idx, delta):
    heavy[_at(hidx, HEAVY_WORDS, idx)] = np.int64(heavy[_at(hidx, HEAVY_WORDS, idx)]) + delta


@njit(cache=True, nogil=True, inline="always")
def _bump16(heavy, heavy16, hidx, q, total, delta):
    """Add ``delta`` >= 0 to the 16-bit count at half ``q``, saturating at RING_MAX, and what was
    added to the running total at word ``total``."""
    old = np.int64(heavy16[_at(hidx, HEAVY_HALVES, q)])
    new = min(old + delta, RING_MAX)
    heavy16[_at(hidx, HEAVY_HALVES, q)] = new
    heavy[_at(hidx, HEAVY_WORDS, total)] = np.int64(heavy[_at(hidx, HEAVY_WORDS, total)]) + (
        new - old
    )


@njit(cache=True, nogil=True, inline="always")
def _half_1h(ts, field):
    """Half index of a 16-bit field of the 1 h bucket of ``ts``."""
    return 2 * (H_RING_1H + _mod(_div(ts, B1H_S), N1H) * B1H_WORDS) + field


@njit(cache=True, nogil=True, inline="always")
def _word_24h(ts):
    """First word (the message count) of the 24 h bucket of ``ts``."""
    return H_RING_24H + _mod(_div(ts, B24H_S), N24H) * B24H_WORDS


@njit(cache=True, nogil=True, inline="always")
def _bump_recipient(heavy, heavy16, hidx, business, ts, delta):
    """Count (+1) or uncount (-1) a recipient last messaged at ``ts`` in the distinct histograms
    (16-bit, never beyond MAX_EXACT_RECIPIENTS: no saturation needed)."""
    clock = np.int64(heavy[_at(hidx, HEAVY_WORDS, H_CLOCK)])
    field = F24_BUSINESS
    if not business:
        field = F24_RECIPIENTS
        if _in_window(ts, clock, B1H_S, N1H):
            q = _half_1h(ts, F1_RECIPIENTS)
            heavy16[_at(hidx, HEAVY_HALVES, q)] = (
                np.int64(heavy16[_at(hidx, HEAVY_HALVES, q)]) + delta
            )
            _bump(heavy, hidx, H_TOT_RECIPIENTS_1H, delta)
    if _in_window(ts, clock, B24H_S, N24H):
        q = 2 * _word_24h(ts) + field + 1
        heavy16[_at(hidx, HEAVY_HALVES, q)] = np.int64(heavy16[_at(hidx, HEAVY_HALVES, q)]) + delta
        _bump(heavy, hidx, H_TOT_24H + field, delta)


# --------------------------------------------------------------------------------------------
# Recipient pairs


@njit(cache=True, nogil=True, inline="always")
def _pair_home(hidx, business, fp, cap):
    """First probe slot of a pair (independent of the generation, so it can be prefetched from the
    light row alone). ``fp`` is already a uniform 32-bit hash: xor-ing it with a multiplicative
    hash of (row, business) keeps it uniform and separates the rows (no second ``fmix64``)."""
    row = (np.uint64(hidx) << np.uint64(1)) + np.uint64(business + 1)
    h = np.uint64(fp) ^ ((row * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(32))
    return np.int64((h * np.uint64(cap)) >> np.uint64(32))


@njit(cache=True, nogil=True, inline="always")
def _prefetch_pair(pairs, hidx, business, fp):
    """Prefetch the first probe slot of a pair."""
    prefetch(pairs, _at(_pair_home(hidx, business, fp, _pair_homes(pairs)), PAIR_WORDS, 0), 0)


@njit(cache=True, nogil=True, inline="always")
def _pair_probe(pairs, home, hidx, genbiz, fp, dead_hour):
    """(index of the pair or -1, first reusable index or -1): empty, or last used before
    ``dead_hour`` (outside every window from now on)."""
    dead_before = (dead_hour + 1) * B24H_S  # last used before: hour <= dead_hour
    reuse = -1
    for p in range(home, home + PAIR_PROBE):
        owner = pairs[_at(p, PAIR_WORDS, PAIR_OWNER)]
        if owner == NO_INDEX:
            if reuse < 0:
                reuse = p
            return -1, reuse
        if (
            owner == hidx
            and pairs[_at(p, PAIR_WORDS, PAIR_FP)] == fp
            and pairs[_at(p, PAIR_WORDS, PAIR_GENBIZ)] == genbiz
        ):
            return p, -1
        if reuse < 0 and np.int64(pairs[_at(p, PAIR_WORDS, PAIR_LAST)]) < dead_before:
            reuse = p
    return -1, reuse


@njit(cache=True, nogil=True)
def _pair_make_room(pairs, heavy, heavy16, counters, home):
    """Index to overwrite in a probe window full of live pairs: a pair of a released heavy row, else
    the least recently used pair, which its owner forgets (counted)."""
    victim = home
    victim_last = _BIG
    for p in range(home, home + PAIR_PROBE):
        owner = np.int64(pairs[_at(p, PAIR_WORDS, PAIR_OWNER)])
        if (
            owner == NO_INDEX
            or heavy[_at(owner, HEAVY_WORDS, H_OWNER)] == NO_INDEX
            or heavy[_at(owner, HEAVY_WORDS, H_GEN)] != pairs[_at(p, PAIR_WORDS, PAIR_GENBIZ)] >> 1
        ):
            return p
        last = np.int64(pairs[_at(p, PAIR_WORDS, PAIR_LAST)])
        if last < victim_last:
            victim = p
            victim_last = last
    business = np.int64(pairs[_at(victim, PAIR_WORDS, PAIR_GENBIZ)]) & 1
    _bump_recipient(
        heavy,
        heavy16,
        np.int64(pairs[_at(victim, PAIR_WORDS, PAIR_OWNER)]),
        business,
        victim_last,
        -1,
    )
    counters[C_PAIR_EVICTIONS] += 1
    return victim


# --------------------------------------------------------------------------------------------
# Sketches


@njit(cache=True, nogil=True, inline="always")
def _sketch_window(sketch_regs, sketch_meta, sk, day):
    """Ring, window registers, histogram, clock word and bucket seconds of sketch ``sk``'s 24 h
    window (``day``) or 1 h window."""
    if day:
        return (
            sketch_regs[sk, SK_RING_24H : SK_RING_24H + N24H],
            sketch_regs[sk, SK_WIN_24H],
            sketch_meta[sk, SK_HIST_24H : SK_HIST_24H + hll.HISTOGRAM_LEN],
            SK_CLOCK_24H,
            B24H_S,
        )
    return (
        sketch_regs[sk, SK_RING_1H : SK_RING_1H + N1H],
        sketch_regs[sk, SK_WIN_1H],
        sketch_meta[sk, SK_HIST_1H : SK_HIST_1H + hll.HISTOGRAM_LEN],
        SK_CLOCK_1H,
        B1H_S,
    )


@njit(cache=True, nogil=True)
def _sketch_sync(sketch_regs, sketch_meta, sk, clock):
    """Slide both windows of sketch ``sk`` to the owner's clock."""
    for day in (False, True):
        ring, window, hist, clock_word, bucket_s = _sketch_window(sketch_regs, sketch_meta, sk, day)
        b = _div(clock, bucket_s)
        if b > sketch_meta[sk, clock_word]:
            sketch_meta[sk, clock_word] = hll.ring_advance(
                ring, window, hist, sketch_meta[sk, clock_word], b
            )


@njit(cache=True, nogil=True)
def _sketch_add(sketch_regs, sketch_meta, sk, fp, ts, clock):
    _sketch_sync(sketch_regs, sketch_meta, sk, clock)
    j, rank = hll.register_and_rank(hll.item_hash(fp))
    for day in (False, True):
        ring, window, hist, clock_word, bucket_s = _sketch_window(sketch_regs, sketch_meta, sk, day)
        hll.ring_add(ring, window, hist, sketch_meta[sk, clock_word], _div(ts, bucket_s), j, rank)


@njit(cache=True, nogil=True)
def _sketch_estimate(sketch_regs, sketch_meta, sk, clock, hist):
    _sketch_sync(sketch_regs, sketch_meta, sk, clock)
    return hll.estimate_from_histogram(sketch_meta[sk, hist : hist + hll.HISTOGRAM_LEN])


@njit(cache=True, nogil=True)
def _sketch_attach(heavy, sketch_regs, sketch_meta, counters, hidx, business, dead_hour):
    """Give heavy row ``hidx`` a sketch: a free one, else one whose owner has been idle for 24 h.
    Returns the sketch, or -1 when none is available (counted)."""
    chosen = -1
    for s in range(sketch_meta.shape[0]):
        owner = sketch_meta[s, SK_OWNER]
        if owner < 0:
            chosen = s
            break
        if _div(heavy[_at(owner, HEAVY_WORDS, H_CLOCK)], B24H_S) <= dead_hour:
            heavy[_at(owner, HEAVY_WORDS, H_SKETCH + sketch_meta[s, SK_KIND])] = NO_INDEX
            counters[C_SKETCH_RECLAIMS] += 1
            chosen = s
            break
    if chosen < 0:
        counters[C_SKETCH_DENIED] += 1
        return -1
    clock = np.int64(heavy[_at(hidx, HEAVY_WORDS, H_CLOCK)])
    sketch_regs[chosen] = 0
    sketch_meta[chosen] = 0
    sketch_meta[chosen, SK_HIST_1H] = hll.REGISTERS
    sketch_meta[chosen, SK_HIST_24H] = hll.REGISTERS
    sketch_meta[chosen, SK_OWNER] = hidx
    sketch_meta[chosen, SK_KIND] = business
    sketch_meta[chosen, SK_CLOCK_1H] = _div(clock, B1H_S)
    sketch_meta[chosen, SK_CLOCK_24H] = _div(clock, B24H_S)
    heavy[_at(hidx, HEAVY_WORDS, H_SKETCH + business)] = chosen
    counters[C_SKETCH_PROMOTIONS] += 1
    return chosen


# --------------------------------------------------------------------------------------------
# Heavy rows: allocation and event application


@njit(cache=True, nogil=True, inline="always")
def _recipient_seen(
    heavy, heavy16, pairs, sketch_regs, sketch_meta, counters, hidx, business, fp, ts, dead_hour,
    exact,
):  # fmt: skip
    """A message of heavy row ``hidx`` to recipient ``fp`` at ``ts``: update the pair (exact part)
    or the sketch."""
    clock = np.int64(heavy[_at(hidx, HEAVY_WORDS, H_CLOCK)])
    genbiz = (np.int64(heavy[_at(hidx, HEAVY_WORDS, H_GEN)]) << 1) | business
    home = _pair_home(hidx, business, fp, _pair_homes(pairs))
    found, reuse = _pair_probe(pairs, home, hidx, genbiz, fp, dead_hour)
    if found >= 0:
        last = np.int64(pairs[_at(found, PAIR_WORDS, PAIR_LAST)])
        newest = max(ts, last)  # not a branch on ts > last: that is data, it would mispredict
        # Moving within one 5 min bucket (hence within one hour) changes no count.
        if _div(newest, B1H_S) != _div(last, B1H_S):
            _bump_recipient(heavy, heavy16, hidx, business, last, -1)
            _bump_recipient(heavy, heavy16, hidx, business, newest, 1)
        pairs[_at(found, PAIR_WORDS, PAIR_LAST)] = newest
        return
    sk = np.int64(heavy[_at(hidx, HEAVY_WORDS, H_SKETCH + business)])
    if sk != NO_INDEX:
        _sketch_add(sketch_regs, sketch_meta, sk, fp, ts, clock)
        return
    if not _in_window(ts, clock, B24H_S, N24H):
        return
    field = F24_BUSINESS if business else F24_RECIPIENTS
    distinct = np.int64(heavy[_at(hidx, HEAVY_WORDS, H_TOT_24H + field)])
    has_pool = sketch_meta.shape[0] > 0
    if distinct >= MAX_EXACT_RECIPIENTS:
        # The exact part is full (its 16-bit buckets could overflow): a sketch, else uncounted.
        if has_pool:
            sk = _sketch_attach(
                heavy, sketch_regs, sketch_meta, counters, hidx, business, dead_hour
            )
            if sk >= 0:
                _sketch_add(sketch_regs, sketch_meta, sk, fp, ts, clock)
                return
        counters[C_RECIPIENTS_UNCOUNTED] += 1
        return
    if reuse < 0:
        # The pair table is crowded here: a sender with many recipients moves to a sketch early
        # rather than pushing other accounts' pairs out.
        if has_pool and distinct >= SKETCH_UNDER_PRESSURE:
            sk = _sketch_attach(
                heavy, sketch_regs, sketch_meta, counters, hidx, business, dead_hour
            )
            if sk >= 0:
                _sketch_add(sketch_regs, sketch_meta, sk, fp, ts, clock)
                return
        reuse = _pair_make_room(pairs, heavy, heavy16, counters, home)
    pairs[_at(reuse, PAIR_WORDS, PAIR_OWNER)] = hidx
    pairs[_at(reuse, PAIR_WORDS, PAIR_GENBIZ)] = genbiz
    pairs[_at(reuse, PAIR_WORDS, PAIR_FP)] = fp
    pairs[_at(reuse, PAIR_WORDS, PAIR_LAST)] = ts
    _bump_recipient(heavy, heavy16, hidx, business, ts, 1)
    over = distinct - exact  # distinct after this one, minus (exact + 1)
    if has_pool and over >= 0 and over % SKETCH_RETRY == 0:
        _sketch_attach(heavy, sketch_regs, sketch_meta, counters, hidx, business, dead_hour)


@njit(cache=True, nogil=True, inline="always")
def _heavy_apply(
    heavy, heavy16, pairs, sketch_regs, sketch_meta, counters, hidx, ts, kind, flags, aux,
    has_peer, dead_hour, exact,
):  # fmt: skip
    """Count one event (``ts`` <= the row's clock) in the rings of heavy row ``hidx``."""
    clock = np.int64(heavy[_at(hidx, HEAVY_WORDS, H_CLOCK)])
    # Most events are their account's newest: in every window, so no window is tested.
    newest = ts == clock
    if kind == MESSAGE:
        if newest or _in_window(ts, clock, B15S_S, N15S):
            _bump16(heavy, heavy16, hidx, Q_RING_15S + _mod(_div(ts, B15S_S), N15S), H_TOT_15S, 1)
        if newest or _in_window(ts, clock, B1M_S, N1M):
            _bump16(heavy, heavy16, hidx, Q_RING_1M + _mod(_div(ts, B1M_S), N1M), H_TOT_1M, 1)
        if newest or _in_window(ts, clock, B15M_S, N15M):
            q = Q_RING_15M + _mod(_div(ts, B15M_S), N15M)
            _bump16(heavy, heavy16, hidx, q, H_TOT_15M, 1)
        if newest or _in_window(ts, clock, B1H_S, N1H):
            q = _half_1h(ts, 0)
            # 0/1 increments without branches: the flags are data, their branches mispredict.
            known = np.int64((flags & CONTACT_KNOWN) != 0)
            typing_known = np.int64((flags & TYPING_KNOWN) != 0)
            non_contact = known & np.int64((flags & IN_CONTACTS) == 0)
            no_typing = typing_known & np.int64((flags & TYPING) == 0)
            forwarded = np.int64((flags & FORWARDED) != 0)
            _bump16(heavy, heavy16, hidx, q + F1_MSGS, H_TOT_1H + F1_MSGS, 1)
            _bump16(heavy, heavy16, hidx, q + F1_CONTACT_KNOWN, H_TOT_1H + F1_CONTACT_KNOWN, known)
            _bump16(
                heavy, heavy16, hidx, q + F1_NON_CONTACT, H_TOT_1H + F1_NON_CONTACT, non_contact
            )
            _bump16(heavy, heavy16, hidx, q + F1_FORWARDED, H_TOT_1H + F1_FORWARDED, forwarded)
            _bump16(
                heavy, heavy16, hidx, q + F1_TYPING_KNOWN, H_TOT_1H + F1_TYPING_KNOWN, typing_known
            )
            _bump16(heavy, heavy16, hidx, q + F1_NO_TYPING, H_TOT_1H + F1_NO_TYPING, no_typing)
        if newest or _in_window(ts, clock, B24H_S, N24H):
            w = _word_24h(ts)
            if heavy[_at(hidx, HEAVY_WORDS, w)] == 0:
                _bump(heavy, hidx, H_ACTIVE_HOURS, 1)
            _bump(heavy, hidx, w, 1)
            _bump(heavy, hidx, H_TOT_24H + F24_MSGS, 1)
        if has_peer:
            for business in range(2 if flags & BUSINESS else 1):
                _recipient_seen(
                    heavy, heavy16, pairs, sketch_regs, sketch_meta, counters, hidx, business,
                    aux, ts, dead_hour, exact,
                )  # fmt: skip
    elif kind == GROUP_CREATE:
        if newest or _in_window(ts, clock, B1H_S, N1H):
            _bump16(heavy, heavy16, hidx, _half_1h(ts, F1_GROUPS), H_TOT_1H + F1_GROUPS, 1)
    elif kind == GROUP_ADD:
        if newest or _in_window(ts, clock, B1H_S, N1H):
            _bump(heavy, hidx, _half_1h(ts, 0) // 2 + B1H_WORDS - 1, aux)
            _bump(heavy, hidx, H_TOT_MEMBERS, aux)
    elif kind in (REPORT, BLOCK) and (newest or _in_window(ts, clock, B24H_S, N24H)):
        field = F24_REPORTS if kind == REPORT else F24_BLOCKS
        _bump16(heavy, heavy16, hidx, 2 * _word_24h(ts) + field + 1, H_TOT_24H + field, 1)


@njit(cache=True, nogil=True)
def _heavy_alloc(rows, heavy, sketch_meta, counters, slot, now, dead_hour):
    """A heavy row for account ``slot``: free, else reclaimed from an owner idle for 24 h (no loss),
    else taken from the least recently active of HEAVY_SCAN rows (its owner restarts light)."""
    cap = _heavy_capacity(heavy)
    x = counters[C_HEAVY_HAND] % cap
    chosen = -1
    lru = x
    lru_clock = _BIG
    for _ in range(min(HEAVY_SCAN, cap)):
        if heavy[_at(x, HEAVY_WORDS, H_OWNER)] == NO_INDEX:
            chosen = x
            break
        clock = np.int64(heavy[_at(x, HEAVY_WORDS, H_CLOCK)])
        if _div(clock, B24H_S) <= dead_hour:
            counters[C_HEAVY_RECLAIMS] += 1
            chosen = x
            break
        if clock < lru_clock:
            lru = x
            lru_clock = clock
        x += 1
        if x == cap:
            x = 0
    if chosen < 0:
        chosen = lru
        counters[C_HEAVY_EVICTIONS] += 1
    owner = np.int64(heavy[_at(chosen, HEAVY_WORDS, H_OWNER)])
    if owner != NO_INDEX:
        rows[_at(owner, ROW_WORDS, L_HEAVY)] = NO_INDEX
        _release_heavy(heavy, sketch_meta, chosen)
    counters[C_HEAVY_HAND] = (chosen + 1) % cap
    for w in range(HEAVY_WORDS):
        heavy[_at(chosen, HEAVY_WORDS, w)] = 0
    heavy[_at(chosen, HEAVY_WORDS, H_OWNER)] = slot
    heavy[_at(chosen, HEAVY_WORDS, H_GEN)] = counters[C_GENERATION] & 0x7FFFFFFF
    counters[C_GENERATION] += 1
    heavy[_at(chosen, HEAVY_WORDS, H_SKETCH)] = NO_INDEX
    heavy[_at(chosen, HEAVY_WORDS, H_SKETCH + 1)] = NO_INDEX
    heavy[_at(chosen, HEAVY_WORDS, H_CLOCK)] = now
    rows[_at(slot, ROW_WORDS, L_HEAVY)] = chosen
    counters[C_PROMOTIONS] += 1
    return chosen


@njit(cache=True, nogil=True)
def _promote(
    rows, heavy, heavy16, pairs, sketch_regs, sketch_meta, counters, slot, dead_hour, exact
):  # fmt: skip
    """Move a light account's log into a heavy row; returns the row."""
    now = np.int64(rows[_at(slot, ROW_WORDS, L_NOW)])
    hidx = _heavy_alloc(rows, heavy, sketch_meta, counters, slot, now, dead_hour)
    for k in range(LOG_SLOTS):  # the replay probes a pair per message: start their loads now
        tag = np.int64(rows[_log_entry(slot, k)])
        if (tag >> TAG_TYPE_SHIFT) & 7 == MESSAGE and tag & (TAG_VALID | TAG_NO_PEER) == TAG_VALID:
            fp = rows[_log_aux(slot, k)]
            _prefetch_pair(pairs, hidx, 0, fp)
            if (tag >> TAG_FLAGS_SHIFT) & BUSINESS:
                _prefetch_pair(pairs, hidx, 1, fp)
    for k in range(LOG_SLOTS):
        tag = np.int64(rows[_log_entry(slot, k)])
        if tag == 0:
            break
        _heavy_apply(
            heavy, heavy16, pairs, sketch_regs, sketch_meta, counters, hidx, _log_ts(tag, now),
            (tag >> TAG_TYPE_SHIFT) & 7, (tag >> TAG_FLAGS_SHIFT) & LOG_FLAGS,
            np.int64(rows[_log_aux(slot, k)]), (tag & TAG_NO_PEER) == 0, dead_hour, exact,
        )  # fmt: skip
        rows[_log_entry(slot, k)] = 0
        rows[_log_aux(slot, k)] = 0
    return hidx


# --------------------------------------------------------------------------------------------
# Features


@njit(cache=True, nogil=True, inline="always")
def _heavy_features(heavy, sketch_regs, sketch_meta, hidx, counts, reals, active_hours, i):
    clock = np.int64(heavy[_at(hidx, HEAVY_WORDS, H_CLOCK)])
    recipients_1h = float(heavy[_at(hidx, HEAVY_WORDS, H_TOT_RECIPIENTS_1H)])
    recipients_24h = float(heavy[_at(hidx, HEAVY_WORDS, H_TOT_24H + F24_RECIPIENTS)])
    business = float(heavy[_at(hidx, HEAVY_WORDS, H_TOT_24H + F24_BUSINESS)])
    sk = np.int64(heavy[_at(hidx, HEAVY_WORDS, H_SKETCH)])
    if sk != NO_INDEX:
        recipients_1h += _sketch_estimate(sketch_regs, sketch_meta, sk, clock, SK_HIST_1H)
        recipients_24h += _sketch_estimate(sketch_regs, sketch_meta, sk, clock, SK_HIST_24H)
    sk = np.int64(heavy[_at(hidx, HEAVY_WORDS, H_SKETCH + 1)])
    if sk != NO_INDEX:
        business += _sketch_estimate(sketch_regs, sketch_meta, sk, clock, SK_HIST_24H)
    copy_block(
        counts, _at(i, FEATURE_WORDS, 0), heavy, _at(hidx, HEAVY_WORDS, H_COUNTS), N_COUNT_FIELDS
    )
    reals[_at(i, FEATURE_WORDS, F_REALS + O_RECIPIENTS_1H)] = recipients_1h
    reals[_at(i, FEATURE_WORDS, F_REALS + O_RECIPIENTS_24H)] = recipients_24h
    reals[_at(i, FEATURE_WORDS, F_REALS + O_BUSINESS)] = business
    active_hours[_at(i, 4 * FEATURE_WORDS, 4 * F_LAST + 2)] = heavy[
        _at(hidx, HEAVY_WORDS, H_ACTIVE_HOURS)
    ]


@njit(cache=True, nogil=True, inline="always")
def _row_features(rows, slot, ts_ms, reals, gap_counts, i):
    """Gap statistics and age, kept in the light row of every account."""
    meta = np.int64(rows[_at(slot, ROW_WORDS, L_META)])
    count = meta & 0x1F
    gap_counts[_at(i, 2 * FEATURE_WORDS, 2 * F_LAST)] = count
    # Every value is computed and the defined one selected: how many gaps an account has is data.
    # std / mean = sqrt(n * sum(g^2) - sum(g)^2) / sum(g), from exact integer running sums; all
    # gaps 0 gives 0 / 1.
    total = np.int64(rows[_at(slot, ROW_WORDS, L_GAP_SUM)])
    spread = count * _get_i64(rows, slot, L_GAP_SQUARES) - total * total
    mean_s = total / max(count, 1) / 1000.0
    cv = math.sqrt(spread) / max(total, 1)
    age_s = (ts_ms - np.int64(rows[_at(slot, ROW_WORDS, L_CREATED)]) * 1000) / 1000.0
    reals[_at(i, FEATURE_WORDS, F_REALS + O_GAP_MEAN)] = mean_s if count > 0 else np.nan
    reals[_at(i, FEATURE_WORDS, F_REALS + O_GAP_CV)] = cv if count >= GAP_MIN else np.nan
    reals[_at(i, FEATURE_WORDS, F_REALS + O_AGE)] = age_s if meta & META_CREATED_KNOWN else np.nan


@njit(cache=True, nogil=True, inline="always")
def _zero_features(counts, reals, gap_counts, active_hours, i):
    for f in range(N_COUNT_FIELDS):
        counts[_at(i, FEATURE_WORDS, f)] = 0
    reals[_at(i, FEATURE_WORDS, F_REALS + O_RECIPIENTS_1H)] = 0.0
    reals[_at(i, FEATURE_WORDS, F_REALS + O_RECIPIENTS_24H)] = 0.0
    reals[_at(i, FEATURE_WORDS, F_REALS + O_BUSINESS)] = 0.0
    reals[_at(i, FEATURE_WORDS, F_REALS + O_GAP_CV)] = np.nan
    reals[_at(i, FEATURE_WORDS, F_REALS + O_GAP_MEAN)] = np.nan
    reals[_at(i, FEATURE_WORDS, F_REALS + O_AGE)] = np.nan
    gap_counts[_at(i, 2 * FEATURE_WORDS, 2 * F_LAST)] = 0
    active_hours[_at(i, 4 * FEATURE_WORDS, 4 * F_LAST + 2)] = 0


# --------------------------------------------------------------------------------------------
# The batch kernel. Events are processed in order, but the memory of the coming events is
# prefetched in three steps, each reading only memory the step before prefetched: keys
# PREFETCH_KEYS events ahead, the account's row PREFETCH_SLOT events ahead, its heavy row lines and
# recipient pairs PREFETCH_ROWS events ahead. An event would otherwise wait on a chain of cache
# misses: account key -> row -> heavy row -> pair.

PREFETCH_KEYS = 12  # events ahead: prefetch the first PREFETCH_PROBE keys of the window
PREFETCH_SLOT = 7  # events ahead: find the account's slot in those keys, prefetch its row
PREFETCH_ROWS = 3  # events ahead: read the row's heavy index, prefetch heavy lines and pairs
PREFETCH_PROBE = 8  # probe-window slots searched PREFETCH_SLOT events ahead (a line of keys)
# ``hashes``, the batch kernel's scratch: R_COLUMNS columns of one word per event.
R_SUBJECT, R_HOME, R_FP, R_SLOT = 0, 1, 2, 3
R_COLUMNS = 4
BATCH_OK, BAD_EVENT_TYPE, BAD_TIME = 0, 1, 2  # the batch kernel's result
NOT_FOUND = np.uint64(0xFFFFFFFFFFFFFFFF)  # R_SLOT: no slot to prefetch
CROWDED = np.uint64(0xFFFFFFFFFFFFFFFE)  # R_SLOT: first keys full, search the rest later


@njit(cache=True, nogil=True, inline="always")
def _hashed(column, n, i):
    """Index in ``hashes`` of event ``i``'s word of ``column`` (a batch of ``n`` events)."""
    return np.uint64(column * n + i)


@njit(cache=True, nogil=True, inline="always")
def _subject(kind, account, peer):
    return peer if kind in (REPORT, BLOCK) else account


@njit(cache=True, nogil=True, inline="always")
def _hash_batch(hashes, homes, ts_ms, event_type, account, peer):
    """Hash every event once: its subject, the subject's home slot among ``homes`` and the peer's
    fingerprint. A loop of its own: LLVM vectorizes it, and the event loop keeps its registers.
    Returns BATCH_OK, or why the batch is invalid (checked here: this pass reads every event anyway).
    """
    n = event_type.shape[0]
    top_type = np.uint8(0)
    # Unsigned, so a negative time is out of range too.
    top_ts = np.uint64(0)
    for i in range(n):
        subject = _subject(event_type[i], account[i], peer[i])
        hashes[_hashed(R_SUBJECT, n, i)] = subject
        hashes[_hashed(R_HOME, n, i)] = home_slot(subject, homes)
        hashes[_hashed(R_FP, n, i)] = fingerprint32(peer[i])
        top_type = max(top_type, event_type[i])
        top_ts = max(top_ts, np.uint64(ts_ms[i]))
    if top_type >= N_EVENT_TYPES:
        return BAD_EVENT_TYPE
    if top_ts >= np.uint64(MAX_TS_MS):
        return BAD_TIME
    return BATCH_OK


@njit(cache=True, nogil=True, inline="always")
def _prefetch_keys(keys, hashes, n, i):
    """Prefetch the first keys of event ``i``'s probe window."""
    home = np.int64(hashes[_hashed(R_HOME, n, i)])
    prefetch(keys, home, 0)
    prefetch(keys, min(home + PREFETCH_PROBE - 1, keys.shape[0] - 1), 0)


@njit(cache=True, nogil=True, inline="always")
def _search_ahead(keys, rows, hashes, n, i, first, last, log_line):
    """Search probe-window positions [first, last) of event ``i`` for its account; record the
    slot (a hint, checked again when the event is applied) and prefetch its row (its first line,
    and the log line if ``log_line``), or the row of the empty slot a new account will take.
    Returns False if every key there is another's."""
    subject = hashes[_hashed(R_SUBJECT, n, i)]
    home = np.int64(hashes[_hashed(R_HOME, n, i)])
    for slot in range(home + first, home + last):
        k = keys[np.uint64(slot)]
        if k == subject:
            hashes[_hashed(R_SLOT, n, i)] = slot
            prefetch(rows, _at(slot, ROW_WORDS, 0), 0)
            if log_line:
                prefetch(rows, _at(slot, ROW_WORDS, L_LOG), 0)
            return True
        if k == 0:
            hashes[_hashed(R_SLOT, n, i)] = NOT_FOUND
            prefetch(rows, _at(slot, ROW_WORDS, 0), 0)
            prefetch(rows, _at(slot, ROW_WORDS, L_LOG), 0)
            return True
    return False


@njit(cache=True, nogil=True, inline="always")
def _locate_ahead(keys, rows, hashes, n, i, probe):
    """Search the first PREFETCH_PROBE keys of event ``i``'s window (prefetched earlier). If they
    all belong to other accounts (a crowded or full window), prefetch the rest of the window's keys:
    the search goes on PREFETCH_ROWS events ahead."""
    # The log line is prefetched later, and only if the account is light (heavy ones don't use it).
    if _search_ahead(keys, rows, hashes, n, i, 0, min(probe, PREFETCH_PROBE), False):
        return
    hashes[_hashed(R_SLOT, n, i)] = NOT_FOUND if probe <= PREFETCH_PROBE else CROWDED
    if probe <= PREFETCH_PROBE:
        return
    home = np.int64(hashes[_hashed(R_HOME, n, i)])
    for j in range(PREFETCH_PROBE, probe + 7, 8):
        prefetch(keys, home + min(j, probe - 1), 0)


@njit(cache=True, nogil=True, inline="always")
def _prefetch_heavy(keys, rows, heavy, pairs, hashes, n, i, kind, ts_ms, peer, flags, probe):
    """Prefetch the heavy row lines and recipient pairs of event ``i``'s account (its row was
    prefetched earlier)."""
    found = hashes[_hashed(R_SLOT, n, i)]
    if found == CROWDED:
        if not _search_ahead(keys, rows, hashes, n, i, PREFETCH_PROBE, probe, True):
            # A new account in a full window: the eviction candidates' clocks will be read.
            hashes[_hashed(R_SLOT, n, i)] = NOT_FOUND
            home = np.int64(hashes[_hashed(R_HOME, n, i)])
            for slot in range(home, home + min(probe, EVICTION_SCAN)):
                prefetch(rows, _at(slot, ROW_WORDS, 0), 0)
        return  # the row is not in cache yet
    if found == NOT_FOUND:
        return
    hidx = np.int64(rows[_at(np.int64(found), ROW_WORDS, L_HEAVY)])
    if hidx == NO_INDEX:
        prefetch(
            rows, _at(np.int64(found), ROW_WORDS, L_LOG), 0
        )  # the log, in the row's second cache line
        return
    # Header, totals and the 15 s, 1 min and 15 min rings: words 0-43, three cache lines.
    prefetch(heavy, _at(hidx, HEAVY_WORDS, 0), 0)
    prefetch(heavy, _at(hidx, HEAVY_WORDS, 16), 0)
    prefetch(heavy, _at(hidx, HEAVY_WORDS, 32), 0)
    ts = _div(ts_ms, 1000)
    w = _half_1h(ts, 0) // 2
    prefetch(heavy, _at(hidx, HEAVY_WORDS, w), 0)
    prefetch(heavy, _at(hidx, HEAVY_WORDS, w + B1H_WORDS - 1), 0)
    w = _word_24h(ts)
    prefetch(heavy, _at(hidx, HEAVY_WORDS, w), 0)
    prefetch(heavy, _at(hidx, HEAVY_WORDS, w + B24H_WORDS - 1), 0)
    if kind == MESSAGE and peer != 0:
        fp = np.uint32(hashes[_hashed(R_FP, n, i)])
        _prefetch_pair(pairs, hidx, 0, fp)
        if flags & BUSINESS:
            _prefetch_pair(pairs, hidx, 1, fp)


# No reference counting in the batch kernel: it allocates nothing, and the caller owns every array
# for the whole call. Refcount updates of array arguments otherwise cost ~60 ns per event.
@njit(cache=True, nogil=True, _nrt=False)
def _update_accounts(
    keys, rows, heavy, pairs, sketch_regs, sketch_meta, params, counters,
    ts_ms, account, peer, event_type, flags, members, created_ms,
    features, hashes,
):  # fmt: skip
    # The same memory as 16-bit halves, for the ring counts. A view taken here rather than passed
    # in: the compiler then knows both start at one address (one register less in the loop).
    heavy16 = heavy.view(np.uint16)
    # Likewise the feature block's views, by field type (see FEATURE_WORDS).
    counts = features
    reals = features.view(np.float32)
    gap_counts = features.view(np.uint16)
    active_hours = late = features.view(np.uint8)
    lateness_s = params[P_LATENESS_S]
    lateness_ms = lateness_s * 1000
    ttl_s = params[P_TTL_S]
    probe = params[P_PROBE]
    homes = _account_homes(params)
    exact = params[P_EXACT_RECIPIENTS]
    n = ts_ms.shape[0]
    status = _hash_batch(hashes, homes, ts_ms, event_type, account, peer)
    if status != BATCH_OK:
        return status  # nothing applied
    # The clock and the event count stay in registers (array stores could alias them otherwise).
    now_ms = counters[C_NOW_MS]
    counters[C_EVENTS] += n
    for i in range(min(PREFETCH_KEYS, n)):
        _prefetch_keys(keys, hashes, n, i)
    for i in range(min(PREFETCH_SLOT, n)):
        _locate_ahead(keys, rows, hashes, n, i, probe)
    for i in range(min(PREFETCH_ROWS, n)):
        _prefetch_heavy(
            keys, rows, heavy, pairs, hashes, n, i, np.int64(event_type[i]), ts_ms[i], peer[i],
            flags[i], probe,
        )  # fmt: skip
    for i in range(n):
        ahead = i + PREFETCH_KEYS
        if ahead < n:
            _prefetch_keys(keys, hashes, n, ahead)
        ahead = i + PREFETCH_SLOT
        if ahead < n:
            _locate_ahead(keys, rows, hashes, n, ahead, probe)
        ahead = i + PREFETCH_ROWS
        if ahead < n:
            _prefetch_heavy(
                keys, rows, heavy, pairs, hashes, n, ahead, np.int64(event_type[ahead]),
                ts_ms[ahead], peer[ahead], flags[ahead], probe,
            )  # fmt: skip
        ts = ts_ms[i]
        kind = np.int64(event_type[i])
        subject = hashes[_hashed(R_SUBJECT, n, i)]
        home = np.int64(hashes[_hashed(R_HOME, n, i)])
        if now_ms != NO_TIME and ts < now_ms - lateness_ms:
            counters[C_LATE] += 1
            late[_at(i, 4 * FEATURE_WORDS, 4 * F_LAST + 3)] = 1
            slot = -1
            if subject != 0:
                slot = _find_account(keys, rows, subject, home, _div(now_ms, 1000), ttl_s, probe)
            if slot < 0:
                _zero_features(counts, reals, gap_counts, active_hours, i)
                continue
            hidx = np.int64(rows[_at(slot, ROW_WORDS, L_HEAVY)])
        else:
            late[_at(i, 4 * FEATURE_WORDS, 4 * F_LAST + 3)] = 0
            if ts > now_ms:
                now_ms = ts
            if subject == 0:
                counters[C_UNATTRIBUTED] += 1
                _zero_features(counts, reals, gap_counts, active_hours, i)
                continue
            now_s = _div(now_ms, 1000)
            ts_s = _div(ts, 1000)
            dead_hour = _div(max(now_s - lateness_s, 0), B24H_S) - N24H
            slot = _claim_account(
                keys, rows, heavy, sketch_meta, counters, subject, home, hashes[_hashed(R_SLOT, n, i)], ts_s,
                now_s, ttl_s, probe,
            )  # fmt: skip
            old_clock = np.int64(rows[_at(slot, ROW_WORDS, L_NOW)])
            clock = max(old_clock, ts_s)
            if kind == MESSAGE:
                _record_message_time(rows, slot, ts, old_clock)
                _record_creation(rows, slot, created_ms[i], False)
            else:
                if clock > old_clock:
                    _mark_stale_message(rows, slot, clock)
                if kind == REGISTRATION:
                    _record_creation(rows, slot, created_ms[i], True)
            flags8 = np.int64(flags[i]) & 0xFF
            aux = np.int64(0)
            has_peer = True
            if kind == MESSAGE:
                has_peer = peer[i] != 0
                aux = np.int64(hashes[_hashed(R_FP, n, i)])
            elif kind == GROUP_ADD:
                aux = min(max(np.int64(members[i]), 0), MAX_MEMBERS_PER_EVENT)
            hidx = np.int64(rows[_at(slot, ROW_WORDS, L_HEAVY)])
            to_heavy = kind != REGISTRATION
            if hidx == NO_INDEX:
                _light_advance(rows, slot, clock)
                if to_heavy and _light_store(rows, slot, ts_s, kind, flags8, aux, not has_peer):
                    to_heavy = False
                elif to_heavy:  # the log is full: promote
                    hidx = _promote(
                        rows, heavy, heavy16, pairs, sketch_regs, sketch_meta, counters, slot,
                        dead_hour, exact,
                    )  # fmt: skip
            else:
                rows[_at(slot, ROW_WORDS, L_NOW)] = clock
                _heavy_advance(heavy, heavy16, hidx, clock)
            if to_heavy:
                _heavy_apply(
                    heavy, heavy16, pairs, sketch_regs, sketch_meta, counters, hidx, ts_s, kind,
                    flags8, aux, has_peer, dead_hour, exact,
                )  # fmt: skip
        if hidx == NO_INDEX:
            _light_features(rows, slot, counts, reals, active_hours, i)
        else:
            _heavy_features(heavy, sketch_regs, sketch_meta, hidx, counts, reals, active_hours, i)
        _row_features(rows, slot, ts, reals, gap_counts, i)
    counters[C_NOW_MS] = now_ms
    return BATCH_OK


_BATCH_DTYPES = (
    ("ts_ms", np.int64),
    ("account", np.uint64),
    ("peer", np.uint64),
    ("event_type", np.uint8),
    ("flags", np.uint16),
    ("members", np.int32),
    ("created_ms", np.int64),
)


def _check_state(state: AccountState) -> None:
    if not isinstance(state, AccountState):
        raise TypeError(f"state must be an AccountState, got {type(state).__name__}")
    for name, dtype in _STATE_DTYPES.items():
        array = getattr(state, name)
        if array.dtype != dtype or not array.flags.c_contiguous or not array.flags.writeable:
            raise ValueError(
                f"state.{name} must be a writeable C-contiguous {np.dtype(dtype)} array"
            )
    if state.params[P_LAYOUT] != LAYOUT_VERSION:
        raise ValueError(f"state layout {state.params[P_LAYOUT]} != {LAYOUT_VERSION}")


def update_accounts(
    state: AccountState,
    ts_ms: np.ndarray,
    account: np.ndarray,
    peer: np.ndarray,
    event_type: np.ndarray,
    flags: np.ndarray,
    members: np.ndarray,
    created_ms: np.ndarray,
) -> AccountFeatures:
    """Apply a batch of events in array order; returns each event's subject features after it.

    Arrays are the columns of the batch (int64, uint64, uint64, uint8, uint16, int32, int64), 1-D,
    C-contiguous and of equal length. Event times must lie in [0, 2**32) seconds. The returned
    arrays are fresh: columns of one event-major block (strided views; copy a column with
    ``np.ascontiguousarray`` where contiguity matters).
    """
    _check_state(state)
    columns = (ts_ms, account, peer, event_type, flags, members, created_ms)
    n = len(ts_ms) if isinstance(ts_ms, np.ndarray) else -1
    for (name, dtype), array in zip(_BATCH_DTYPES, columns, strict=True):
        if not isinstance(array, np.ndarray) or array.dtype != dtype:
            got = array.dtype if isinstance(array, np.ndarray) else type(array).__name__
            raise TypeError(f"{name} must be a numpy {np.dtype(dtype)} array, got {got}")
        if array.ndim != 1 or array.shape[0] != n:
            raise ValueError(f"{name} must be 1-D of length {n}, got shape {array.shape}")
        if not array.flags.c_contiguous:
            raise ValueError(f"{name} must be C-contiguous")
    block = np.empty((n, FEATURE_WORDS), dtype=np.uint32)
    if n:
        hashes = np.empty(R_COLUMNS * n, dtype=np.uint64)  # scratch of the batch kernel
        status = _update_accounts(
            state.keys,
            state.rows.reshape(-1),
            state.heavy.reshape(-1),
            state.pairs.reshape(-1),
            state.sketch_regs,
            state.sketch_meta,
            state.params,
            state.counters,
            *columns,
            block.reshape(-1),
            hashes,
        )
        if status == BAD_EVENT_TYPE:
            top = int(event_type.max())
            raise ValueError(f"event_type values must be < {N_EVENT_TYPES}, got {top}")
        if status == BAD_TIME:
            raise ValueError(
                f"ts_ms must lie in [0, {MAX_TS_MS}), got [{ts_ms.min()}, {ts_ms.max()}]"
            )
    features = dict(zip(COUNT_FIELDS, block[:, :F_REALS].T, strict=True))
    features.update(zip(REAL_FIELDS, block.view(np.float32)[:, F_REALS:F_LAST].T, strict=True))
    features.update(
        gap_count=block.view(np.uint16)[:, 2 * F_LAST],
        active_hours_24h=block.view(np.uint8)[:, 4 * F_LAST + 2],
        late=block.view(np.bool_)[:, 4 * F_LAST + 3],
    )
    return AccountFeatures(**features)


# --------------------------------------------------------------------------------------------
# Statistics, persistence, warm-up


@njit(cache=True, nogil=True)
def _usage(keys, rows, heavy, pairs, sketch_meta, params, counters):
    now_ms = counters[C_NOW_MS]
    now_s = now_ms // 1000 if now_ms != NO_TIME else 0
    tracked = 0
    for slot in range(keys.shape[0]):
        if (
            keys[slot] != 0
            and now_s - np.int64(rows[_at(slot, ROW_WORDS, L_NOW)]) <= params[P_TTL_S]
        ):
            tracked += 1
    heavy_used = 0
    for x in range(_heavy_capacity(heavy)):
        if heavy[_at(x, HEAVY_WORDS, H_OWNER)] != NO_INDEX:
            heavy_used += 1
    dead_hour = _div(max(now_s - params[P_LATENESS_S], 0), B24H_S) - N24H
    pairs_live = 0
    for p in range(pairs.shape[0] // PAIR_WORDS):  # every entry, not only the home slots
        owner = np.int64(pairs[_at(p, PAIR_WORDS, PAIR_OWNER)])
        if (
            owner != NO_INDEX
            and heavy[_at(owner, HEAVY_WORDS, H_OWNER)] != NO_INDEX
            and heavy[_at(owner, HEAVY_WORDS, H_GEN)] == pairs[_at(p, PAIR_WORDS, PAIR_GENBIZ)] >> 1
            and np.int64(pairs[_at(p, PAIR_WORDS, PAIR_LAST)]) // B24H_S > dead_hour
        ):
            pairs_live += 1
    sketches_used = 0
    for s in range(sketch_meta.shape[0]):
        if sketch_meta[s, SK_OWNER] >= 0:
            sketches_used += 1
    return tracked, heavy_used, pairs_live, sketches_used


def state_nbytes(state: AccountState) -> int:
    """Bytes held by the state's arrays."""
    return int(sum(array.nbytes for array in state))


def account_state_stats(state: AccountState) -> dict:
    """Occupancy, policy counters (evictions, expirations, late events...) and memory of a state."""
    _check_state(state)
    tracked, heavy_used, pairs_live, sketches_used = _usage(
        state.keys, state.rows.reshape(-1), state.heavy.reshape(-1), state.pairs.reshape(-1), state.sketch_meta, state.params,
        state.counters,
    )  # fmt: skip
    c = state.counters
    capacity = int(state.params[P_CAPACITY])
    nbytes = state_nbytes(state)
    return {
        "tracked": int(tracked),
        "capacity": capacity,
        "events": int(c[C_EVENTS]),
        "late_events": int(c[C_LATE]),
        "unattributed_events": int(c[C_UNATTRIBUTED]),
        "evictions": int(c[C_EVICTIONS]),
        "expirations": int(c[C_EXPIRATIONS]),
        "heavy_capacity": int(state.heavy.shape[0]),
        "heavy_used": int(heavy_used),
        "promotions": int(c[C_PROMOTIONS]),
        "heavy_reclaims": int(c[C_HEAVY_RECLAIMS]),
        "heavy_evictions": int(c[C_HEAVY_EVICTIONS]),
        "pair_capacity": int(state.pairs.shape[0]),
        "pairs_live": int(pairs_live),
        "pair_evictions": int(c[C_PAIR_EVICTIONS]),
        "sketch_capacity": int(state.sketch_meta.shape[0]),
        "sketches_used": int(sketches_used),
        "sketch_promotions": int(c[C_SKETCH_PROMOTIONS]),
        "sketch_reclaims": int(c[C_SKETCH_RECLAIMS]),
        "sketch_denied": int(c[C_SKETCH_DENIED]),
        "recipients_uncounted": int(c[C_RECIPIENTS_UNCOUNTED]),
        "now_ms": None if c[C_NOW_MS] == NO_TIME else int(c[C_NOW_MS]),
        "nbytes": nbytes,
        "bytes_per_account": nbytes / capacity,
        "bytes_per_tracked_account": nbytes / tracked if tracked else None,
    }


def _digest(arrays: dict[str, np.ndarray], event_time_ms: int) -> bytes:
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"bulkwatch-accounts-{LAYOUT_VERSION}:{event_time_ms}".encode())
    for name in AccountState._fields:
        array = arrays[name]
        digest.update(f"{name}:{array.dtype.str}:{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).reshape(-1).view(np.uint8))
    return digest.digest()


def save_account_state(state: AccountState, path: str | Path, *, event_time_ms: int) -> None:
    """Write ``state`` and the event time it reflects to ``path`` (.npz with a blake2b checksum)."""
    _check_state(state)
    arrays = state._asdict()
    checksum = np.frombuffer(_digest(arrays, int(event_time_ms)), dtype=np.uint8)
    with open(path, "wb") as handle:
        np.savez(
            handle,
            event_time_ms=np.array([event_time_ms], dtype=np.int64),
            checksum=checksum,
            **arrays,
        )


def load_account_state(path: str | Path) -> tuple[AccountState, int]:
    """Read a state written by :func:`save_account_state`; returns (state, event_time_ms).

    Raises ValueError when the file is not a valid state: unreadable, missing arrays, wrong dtypes
    or shapes, another layout version, or a checksum mismatch. A missing file raises OSError.
    """
    try:
        with np.load(path, allow_pickle=False) as archive:
            names = set(archive.files)
            expected = {*AccountState._fields, "event_time_ms", "checksum"}
            if names != expected:
                raise ValueError(
                    f"{path}: not an account state (missing {sorted(expected - names)}, "
                    f"unexpected {sorted(names - expected)})"
                )
            arrays = {name: archive[name] for name in AccountState._fields}
            event_time = archive["event_time_ms"]
            checksum = archive["checksum"]
    except (zipfile.BadZipFile, EOFError, KeyError) as exc:
        raise ValueError(f"{path}: unreadable account state: {exc}") from exc
    for name, dtype in _STATE_DTYPES.items():
        if arrays[name].dtype != dtype:
            raise ValueError(f"{path}: {name} has dtype {arrays[name].dtype}, expected {dtype}")
    params = arrays["params"]
    if params.shape != (N_PARAMS,) or arrays["counters"].shape != (N_COUNTERS,):
        raise ValueError(f"{path}: params/counters have the wrong shape")
    if params[P_LAYOUT] != LAYOUT_VERSION:
        raise ValueError(f"{path}: layout version {params[P_LAYOUT]}, expected {LAYOUT_VERSION}")

    def rows_of(name: str) -> int:
        return arrays[name].shape[0] if arrays[name].ndim >= 1 else -1

    shapes = _state_shapes(
        int(params[P_CAPACITY]), rows_of("heavy"), rows_of("pairs"), rows_of("sketch_meta")
    )
    for name, shape in shapes.items():
        if arrays[name].shape != shape:
            raise ValueError(f"{path}: {name} has shape {arrays[name].shape}, expected {shape}")
    if event_time.shape != (1,) or event_time.dtype != np.int64:
        raise ValueError(f"{path}: event_time_ms must be one int64")
    event_time_ms = int(event_time[0])
    if checksum.tobytes() != _digest(arrays, event_time_ms):
        raise ValueError(f"{path}: checksum mismatch (corrupt or modified account state)")
    aligned = {}
    for name, array in arrays.items():
        aligned[name] = _zeros_aligned(array.shape, array.dtype)
        aligned[name][...] = array
    return AccountState(**aligned), event_time_ms


def warm_up() -> float:
    """Compile (or load from the on-disk cache) every kernel on a tiny batch; returns seconds."""
    start = time.perf_counter()
    state = new_account_state(
        64, heavy_capacity=2, pair_capacity=16, sketch_capacity=1, exact_recipients=0
    )
    n = 48
    idx = np.arange(n)
    base_ms = 1_700_000_000_000
    ts = np.ascontiguousarray(base_ms + idx * 500, dtype=np.int64)
    ts[-1] = base_ms  # one late event
    account = np.where(idx % 3 == 0, 7, 11 + idx % 5).astype(np.uint64)
    peer = (100 + idx).astype(np.uint64)
    event_type = (idx % N_EVENT_TYPES).astype(np.uint8)
    event_type[::2] = MESSAGE
    flags = np.full(n, BUSINESS | CONTACT_KNOWN | TYPING_KNOWN, dtype=np.uint16)
    members = np.full(n, 3, dtype=np.int32)
    created = np.where(idx % 4 == 0, base_ms - 86_400_000, -1).astype(np.int64)
    update_accounts(state, ts, account, peer, event_type, flags, members, created)
    account_state_stats(state)
    return time.perf_counter() - start
