"""Slow, obviously correct model of ``kernels.accounts``: every account keeps the list of events applied
to it, and each feature is recomputed from that list by its definition (dicts, lists and sets).

It shares the kernel's *specification* only: the window buckets, the late / TTL rules, the table's
probe-and-evict policy (a new account takes the first empty slot of its probe window; in a full
window, the first expired or else the least recently active of the first EVICTION_SCAN slots), the
gap encoding, the creation-time precedence and the documented saturation of 16-bit bucket counts at
RING_MAX (``capped_count``). It has no log, no heavy rows, no pairs and no sketches: with pools large
enough the kernel must agree with it exactly; sketches must agree within their error bound.
Recipients are compared by full peer id here (the kernel uses 32-bit fingerprints); the kernel's cap
of MAX_EXACT_RECIPIENTS exact recipients per window (65,535, when no sketch is free) is not modelled
here and is tested directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

MESSAGE, REGISTRATION, REPORT, BLOCK, GROUP_CREATE, GROUP_ADD = range(6)
CONTACT_KNOWN, IN_CONTACTS, FORWARDED, TYPING_KNOWN, TYPING, BUSINESS = 4, 8, 16, 32, 64, 128

# (bucket seconds, buckets) of each window
WINDOW_15S = (1, 15)
WINDOW_1M = (5, 12)
WINDOW_15M = (60, 15)
WINDOW_1H = (300, 12)
WINDOW_24H = (3600, 24)
GAP_SLOTS = 16
GAP_MIN = 8
GAP_CAP_MS = (1 << 26) - 1
EVICTION_SCAN = 8
RING_MAX = 65535  # per-bucket bound of the 16-bit counts (see capped_count)
MAX_MEMBERS = 65535
MASK64 = (1 << 64) - 1


def in_window(ts_s: int, now_s: int, window: tuple[int, int]) -> bool:
    bucket_s, n = window
    return ts_s // bucket_s > now_s // bucket_s - n


def fmix64(x: int) -> int:
    x ^= x >> 33
    x = (x * 0xFF51AFD7ED558CCD) & MASK64
    x ^= x >> 33
    x = (x * 0xC4CEB9FE1A85EC53) & MASK64
    x ^= x >> 33
    return x


def home_slot(key: int, capacity: int) -> int:
    return ((fmix64(key) >> 32) * capacity) >> 32


def encode_gap_ms(ms: int) -> int:
    if ms < 4096:
        return ms
    e = ms.bit_length() - 12
    if e > 30:
        return 65535
    return 4096 + (e - 1) * 2048 + ((ms >> e) - 2048)


def decode_gap_ms(code: int) -> int:
    if code < 4096:
        return code
    e = (code - 4096) // 2048 + 1
    mantissa = (code - 4096) % 2048 + 2048
    return (mantissa << e) + (1 << (e - 1))


def capped_count(events: list, now_s: int, window: tuple[int, int]) -> int:
    """Events of ``events`` inside ``window`` at ``now_s``, each bucket counting at most RING_MAX.

    The documented bound of the kernel's 16-bit ring counts (message counts per bucket of the
    15 s / 1 min / 15 min / 1 h windows, their flag counts, groups created, and reports and blocks
    per hour). Message counts per hour (24 h window), member sums and recipients are not capped.
    """
    per_bucket: dict[int, int] = {}
    for e in events:
        ts_s = e.ts_ms // 1000
        if in_window(ts_s, now_s, window):
            per_bucket[ts_s // window[0]] = per_bucket.get(ts_s // window[0], 0) + 1
    return sum(min(n, RING_MAX) for n in per_bucket.values())


@dataclass
class Event:
    ts_ms: int
    account: int
    peer: int
    type: int
    flags: int
    members: int
    created_ms: int


@dataclass
class AccountModel:
    clock_s: int  # latest event time (seconds) of the events applied to this account
    events: list[Event] = field(default_factory=list)
    last_msg_ms: int | None = None
    gaps: list[int] = field(default_factory=list)  # encoded gaps, oldest first, at most GAP_SLOTS
    created_ms: int | None = None
    created_by_registration: bool = False


def features_of(account: AccountModel | None, ts_ms: int) -> dict:
    """Features of ``account`` at its own clock (all zero / NaN for no account)."""
    if account is None:
        account = AccountModel(clock_s=0)
    now = account.clock_s
    messages = [e for e in account.events if e.type == MESSAGE]

    def count(events, window):
        return capped_count(events, now, window)

    def in_1h(e):
        return in_window(e.ts_ms // 1000, now, WINDOW_1H)

    def in_24h(e):
        return in_window(e.ts_ms // 1000, now, WINDOW_24H)

    msgs_1h = [e for e in messages if in_1h(e)]
    msgs_24h = [e for e in messages if in_24h(e)]
    gaps = [decode_gap_ms(code) for code in account.gaps]
    n, total = len(gaps), sum(gaps)
    gap_mean_s = total / n / 1000.0 if n else math.nan
    if n < GAP_MIN:
        gap_cv = math.nan
    elif total == 0:
        gap_cv = 0.0
    else:  # population std / mean, with exact integer sums
        gap_cv = math.sqrt(n * sum(g * g for g in gaps) - total * total) / total
    if account.created_ms is None:
        age_s = math.nan
    else:  # the creation time is kept to the second
        age_s = (ts_ms - min(account.created_ms // 1000, 2**32 - 1) * 1000) / 1000.0
    return {
        "msgs_15s": count(messages, WINDOW_15S),
        "msgs_1m": count(messages, WINDOW_1M),
        "msgs_15m": count(messages, WINDOW_15M),
        "msgs_1h": count(msgs_1h, WINDOW_1H),
        "msgs_24h": len(msgs_24h),
        "recipients_1h": len({e.peer for e in msgs_1h if e.peer != 0}),
        "recipients_24h": len({e.peer for e in msgs_24h if e.peer != 0}),
        "contact_known_1h": count([e for e in msgs_1h if e.flags & CONTACT_KNOWN], WINDOW_1H),
        "non_contact_1h": count(
            [e for e in msgs_1h if e.flags & CONTACT_KNOWN and not e.flags & IN_CONTACTS], WINDOW_1H
        ),
        "forwarded_1h": count([e for e in msgs_1h if e.flags & FORWARDED], WINDOW_1H),
        "typing_known_1h": count([e for e in msgs_1h if e.flags & TYPING_KNOWN], WINDOW_1H),
        "no_typing_1h": count(
            [e for e in msgs_1h if e.flags & TYPING_KNOWN and not e.flags & TYPING], WINDOW_1H
        ),
        "gap_cv": gap_cv,
        "gap_count": len(gaps),
        "gap_mean_s": gap_mean_s,
        "active_hours_24h": len({e.ts_ms // 1000 // 3600 for e in msgs_24h}),
        "age_s": age_s,
        "groups_created_1h": count(
            [e for e in account.events if e.type == GROUP_CREATE], WINDOW_1H
        ),
        "members_added_1h": sum(
            min(max(e.members, 0), MAX_MEMBERS)
            for e in account.events
            if e.type == GROUP_ADD and in_1h(e)
        ),
        "reports_24h": count([e for e in account.events if e.type == REPORT], WINDOW_24H),
        "blocks_24h": count([e for e in account.events if e.type == BLOCK], WINDOW_24H),
        "business_recipients_24h": len(
            {e.peer for e in msgs_24h if e.peer != 0 and e.flags & BUSINESS}
        ),
    }


class ReferenceAccounts:
    """The model of one ``AccountState`` (same capacity, lateness, TTL and probe window)."""

    def __init__(
        self, capacity: int, *, lateness_s: int = 30, ttl_s: int = 2 * 86_400, probe: int = 128
    ):
        self.capacity = capacity
        self.lateness_ms = lateness_s * 1000
        self.ttl_s = ttl_s
        self.probe = min(probe, capacity)
        self.slots = [0] * capacity  # account id per slot (0 = never used)
        self.accounts: dict[int, AccountModel] = {}
        self.now_ms: int | None = None
        self.late_events = 0
        self.evictions = 0
        self.expirations = 0
        self.unattributed = 0

    def _expired(self, account: AccountModel, now_s: int) -> bool:
        return now_s - account.clock_s > self.ttl_s

    def _probe(self, key: int):
        # Keys hash to the first capacity - probe + 1 slots: no window wraps around the end.
        home = home_slot(key, self.capacity - self.probe + 1)
        yield from range(home, home + self.probe)

    def find(self, key: int, now_s: int) -> AccountModel | None:
        for slot in self._probe(key):
            if self.slots[slot] == key:
                account = self.accounts[key]
                return None if self._expired(account, now_s) else account
            if self.slots[slot] == 0:
                return None
        return None

    def claim(self, key: int, ts_s: int, now_s: int) -> AccountModel:
        """The account of ``key``: fresh if new or expired. A new key takes the first empty slot
        of its window; in a full window, the first expired account of the first EVICTION_SCAN
        slots, else the least recently active of them (evicted)."""
        window = list(self._probe(key))
        for slot in window:
            other = self.slots[slot]
            if other == key:
                if self._expired(self.accounts[key], now_s):
                    self.expirations += 1
                    self.accounts[key] = AccountModel(clock_s=ts_s)
                return self.accounts[key]
            if other == 0:
                self.slots[slot] = key
                self.accounts[key] = AccountModel(clock_s=ts_s)
                return self.accounts[key]
        candidates = window[:EVICTION_SCAN]
        expired = [s for s in candidates if self._expired(self.accounts[self.slots[s]], now_s)]
        if expired:
            slot = expired[0]
            self.expirations += 1
        else:  # the first of the least recently active
            slot = min(candidates, key=lambda s: self.accounts[self.slots[s]].clock_s)
            self.evictions += 1
        del self.accounts[self.slots[slot]]
        self.slots[slot] = key
        self.accounts[key] = AccountModel(clock_s=ts_s)
        return self.accounts[key]

    def apply(self, e: Event) -> dict:
        subject = e.peer if e.type in (REPORT, BLOCK) else e.account
        if self.now_ms is not None and e.ts_ms < self.now_ms - self.lateness_ms:
            self.late_events += 1
            found = self.find(subject, self.now_ms // 1000) if subject else None
            return features_of(found, e.ts_ms) | {"late": True}
        self.now_ms = e.ts_ms if self.now_ms is None else max(self.now_ms, e.ts_ms)
        if subject == 0:
            self.unattributed += 1
            return features_of(None, e.ts_ms) | {"late": False}
        ts_s = e.ts_ms // 1000
        account = self.claim(subject, ts_s, self.now_ms // 1000)
        account.clock_s = max(account.clock_s, ts_s)
        if e.type == MESSAGE:
            if account.last_msg_ms is None or e.ts_ms >= account.last_msg_ms:
                if account.last_msg_ms is not None:
                    gap = min(e.ts_ms - account.last_msg_ms, GAP_CAP_MS)
                    account.gaps.append(encode_gap_ms(gap))
                    del account.gaps[:-GAP_SLOTS]
                account.last_msg_ms = e.ts_ms
            if e.created_ms >= 0 and account.created_ms is None:
                account.created_ms = e.created_ms
        elif e.type == REGISTRATION and e.created_ms >= 0:
            account.created_ms = e.created_ms
            account.created_by_registration = True
        account.events.append(e)
        return features_of(account, e.ts_ms) | {"late": False}

    def tracked(self) -> int:
        now_s = self.now_ms // 1000 if self.now_ms is not None else 0
        return sum(1 for a in self.accounts.values() if not self._expired(a, now_s))

    def update(self, events: list[Event]) -> list[dict]:
        return [self.apply(e) for e in events]
