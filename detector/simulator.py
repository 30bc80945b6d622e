"""Synthetic messaging traffic with ground-truth labels (tuning, tests, benchmarks, live demos).

The simulator draws a population of accounts, each with one archetype, and generates their events in
the event contract (docs/events.md), in event-time order. Legit archetypes: ``ordinary``,
``power_user``, ``group_admin``, ``festive`` (greeting waves) and ``business`` (business API);
abusive ones: ``new_account_blaster``, ``slow_bot``, ``distributed_campaign``, ``group_spammer`` and
``reported_spammer``. Texts come from the real UCI SMS Spam Collection (ham for people, spam for
abusers, mutated the way campaigns mutate them); about 40 % of messages carry no text, as when the
content is end-to-end encrypted.

Timings are drawn per archetype with numpy (diurnal session arrivals per country, Zipf choice of
contacts from heavy-tailed contact lists, log-normal human gaps, machine-regular bot intervals), the
columns are merged with one stable argsort on event time, and dicts are only built while iterating.
Every account of the population acts at least once, so ``accounts`` is the number of acting accounts
and the labels list them all; recipients that only report or block are not labelled.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import gzip
import html
import random
import re
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import msgspec
import numpy as np

LEGIT_ARCHETYPES: tuple[str, ...] = ("ordinary", "power_user", "group_admin", "festive", "business")
ABUSIVE_ARCHETYPES: tuple[str, ...] = (
    "new_account_blaster",
    "slow_bot",
    "distributed_campaign",
    "group_spammer",
    "reported_spammer",
)
ARCHETYPES: tuple[str, ...] = LEGIT_ARCHETYPES + ABUSIVE_ARCHETYPES
DEFAULT_START_MS = 1_767_225_600_000  # 2026-01-01T00:00Z
DEFAULT_SMS_PATH = (
    Path(__file__).resolve().parent / "data" / "sms_spam_collection" / "SMSSpamCollection"
)

_DAY_MS = 86_400_000
_MAX_TEXT_CHARS = 64 * 1024


@dataclass(frozen=True)
class SimulatorConfig:
    """What to simulate. ``ordinary`` gets the share left over by the other archetypes."""

    accounts: int = 10_000
    minutes: int = 60
    seed: int = 1
    start_ms: int = DEFAULT_START_MS
    power_user_share: float = 0.06
    group_admin_share: float = 0.03
    festive_share: float = 0.10
    business_share: float = 0.003
    new_account_blaster_share: float = 0.004
    slow_bot_share: float = 0.004
    distributed_campaign_share: float = 0.012
    group_spammer_share: float = 0.002
    reported_spammer_share: float = 0.005
    festive_waves: int = 2
    sms_path: str | None = None

    def __post_init__(self) -> None:
        if self.accounts < 1:
            raise ValueError(f"accounts must be >= 1, got {self.accounts}")
        if self.minutes <= 0:
            raise ValueError(f"minutes must be > 0, got {self.minutes}")
        if self.festive_waves < 1:
            raise ValueError(f"festive_waves must be >= 1, got {self.festive_waves}")
        others = {name: getattr(self, f"{name}_share") for name in ARCHETYPES[1:]}
        for name, share in others.items():
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"{name}_share must be in [0, 1], got {share}")
        if sum(others.values()) > 1.0 + 1e-9:
            raise ValueError(f"archetype shares add up to {sum(others.values())} > 1")

    def shares(self) -> dict[str, float]:
        """Share of accounts per archetype, ``ordinary`` being the remainder."""
        other = {name: float(getattr(self, f"{name}_share")) for name in ARCHETYPES[1:]}
        return {"ordinary": max(0.0, 1.0 - sum(other.values())), **other}

    def archetype_counts(self) -> dict[str, int]:
        """Accounts per archetype: shares times ``accounts``, rounded by largest remainder."""
        shares = self.shares()
        exact = np.array([shares[name] * self.accounts for name in ARCHETYPES])
        counts = np.floor(exact).astype(np.int64)
        missing = self.accounts - int(counts.sum())
        order = np.argsort(-(exact - counts), kind="stable")
        counts[order[:missing]] += 1
        return {name: int(count) for name, count in zip(ARCHETYPES, counts, strict=True)}


class Label(NamedTuple):
    account: str
    label: str  # "abusive" or "legit"
    archetype: str


# --------------------------------------------------------------------------------------------------
# Real texts


@lru_cache(maxsize=4)
def _load_sms_cached(path: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    ham: dict[str, None] = {}
    spam: dict[str, None] = {}
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            label, sep, text = line.rstrip("\r\n").partition("\t")
            text = html.unescape(text).strip()
            if not sep or not text:
                continue
            if label == "ham":
                ham[text] = None
            elif label == "spam":
                spam[text] = None
    if not ham or not spam:
        raise ValueError(f"{path}: expected `ham<TAB>text` and `spam<TAB>text` lines")
    return tuple(ham), tuple(spam)


def load_sms(path: str | Path | None = None) -> tuple[list[str], list[str]]:
    """(ham, spam) texts of the SMS Spam Collection: HTML entities decoded, de-duplicated."""
    resolved = Path(path) if path is not None else DEFAULT_SMS_PATH
    if not resolved.is_file():
        raise FileNotFoundError(
            f"SMS Spam Collection not found at {resolved}; pass its path (SimulatorConfig.sms_path)"
        )
    ham, spam = _load_sms_cached(str(resolved.resolve()))
    return list(ham), list(spam)


_DIGIT_RUN = re.compile(r"\d+")
_LINK = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)
_SPAM_EMOJI = ("🔥", "💰", "🎁", "✅", "‼️", "📱", "🎉", "👉", "⚡", "💯", "🤑", "⭐")
_LINK_WORDS = ("win", "prize", "claim", "bonus", "promo", "gift", "reward", "deal", "lucky", "cash")
_LINK_TLDS = ("top", "xyz", "click", "info", "online", "site", "biz", "live")
_WORD_SWAPS: dict[str, tuple[str, ...]] = {
    "free": ("FREE", "Free", "FR33", "free!!"),
    "win": ("WIN", "w1n", "get"),
    "won": ("WON", "been selected for", "w0n"),
    "prize": ("reward", "award", "PRIZE", "cash prize"),
    "claim": ("collect", "redeem", "CLAIM", "get"),
    "call": ("ring", "CALL", "phone"),
    "txt": ("text", "TXT", "msg"),
    "text": ("txt", "TEXT", "send"),
    "now": ("NOW", "today", "asap", "now!"),
    "urgent": ("URGENT", "important", "URGENT!!"),
    "mobile": ("phone", "mob", "cell"),
    "cash": ("money", "CASH", "££"),
    "guaranteed": ("GUARANTEED", "100%", "assured"),
    "congratulations": ("Congrats", "CONGRATULATIONS", "Congratz"),
    "offer": ("deal", "OFFER", "promo"),
    "customer": ("client", "subscriber", "user"),
    "reply": ("respond", "REPLY", "answer"),
    "award": ("prize", "reward", "bonus"),
    "you": ("u", "U", "YOU"),
    "your": ("ur", "UR", "yr"),
}


def _mutate_spam(text: str, rnd: random.Random, *, heavy: bool) -> str:
    """A variant of a spam template as campaigns make them: numbers, links, words, emoji, casing."""

    def new_digits(match: re.Match[str]) -> str:
        run = match.group()
        if rnd.random() < 0.6:
            return "".join(rnd.choice("0123456789") for _ in run)
        return run

    out = _DIGIT_RUN.sub(new_digits, text)
    if heavy:
        link = (
            f"https://{rnd.choice(_LINK_WORDS)}{rnd.randint(1, 999)}.{rnd.choice(_LINK_TLDS)}"
            f"/{rnd.randrange(16**5):05x}"
        )
        if _LINK.search(out):
            out = _LINK.sub(link, out)
        elif rnd.random() < 0.4:
            out = f"{out} {link}"
        words = out.split(" ")
        for i, word in enumerate(words):
            swaps = _WORD_SWAPS.get(word.strip(".,!?:").lower())
            if swaps and rnd.random() < 0.5:
                words[i] = rnd.choice(swaps)
        out = " ".join(words)
        casing = rnd.random()
        if casing < 0.1:
            out = out.upper()
        elif casing < 0.2:
            out = out.lower()
        if rnd.random() < 0.3:
            out = out.replace(" ", "  ", 1)
    if rnd.random() < (0.5 if heavy else 0.25):
        emoji = rnd.choice(_SPAM_EMOJI)
        out = f"{emoji} {out}" if rnd.random() < 0.5 else f"{out} {emoji}"
    return out[:_MAX_TEXT_CHARS]


_GREETINGS = (
    "Happy New Year! Wishing you and your family a wonderful {year} full of health and happiness",
    "Happy New Year {year}! May this year bring you joy, peace and success",
    "Wishing you a very Happy New Year! Cheers to {year}",
    "Happy New Year to you and your loved ones! Have a blessed {year}",
    "New year, new beginnings. Happy {year} to you and yours!",
    "Happy New Year!! Thanks for being part of my {prev}. Here's to {year}",
    "HNY! Have an amazing {year}",
    "Feliz Año Nuevo {year}! Te deseo lo mejor",
    "Feliz Ano Novo! Muita paz e saúde em {year}",
    "Frohes neues Jahr! Alles Gute für {year}",
    "Naye saal ki hardik shubhkamnayein! Happy New Year {year}",
    "Selamat Tahun Baru {year}! Semoga sehat dan bahagia selalu",
)
_GREETING_EMOJI = ("🎆", "🎇", "🥂", "🎉", "✨", "🍾", "🙏", "❤️", "🥳")
_FIRST_NAMES = ("Ana", "Tom", "Priya", "Chidi", "Lukas", "Maria", "Sam", "Aisha", "João", "Emma")


def _greeting_variant(template: str, year: int, rnd: random.Random) -> str:
    out = template.format(year=year, prev=year - 1)
    if rnd.random() < 0.25:
        name = rnd.choice(_FIRST_NAMES)
        out = f"Hi {name}! {out}" if rnd.random() < 0.5 else f"Dear {name}, {out}"
    if rnd.random() < 0.7:
        out = f"{out} {''.join(rnd.choice(_GREETING_EMOJI) for _ in range(rnd.randint(1, 3)))}"
    if rnd.random() < 0.15:
        out = out.upper()
    if rnd.random() < 0.2:
        out = out.replace("!", "!!!", 1)
    return out


_BUSINESS_BRANDS = (
    "Shopzy",
    "QuickCart",
    "MediPlus",
    "PayNow",
    "FlyHigh",
    "GreenGrocer",
    "Parcelo",
)
_MONTHS = ("Jan", "Feb", "Mar")


def _business_text(template: int, brand: str, rnd: random.Random) -> str:
    day, month = rnd.randint(1, 28), rnd.choice(_MONTHS)
    if template == 0:
        return (
            f"{brand}: your order #{rnd.randint(1_000_000, 9_999_999)} has been shipped and will "
            f"arrive on {day} {month}. Track it at https://{brand.lower()}.example/t/"
            f"{rnd.randrange(16**6):06x}"
        )
    if template == 1:
        return (
            f"{brand}: your appointment is confirmed for {day} {month} at "
            f"{rnd.randint(8, 18)}:{rnd.choice(('00', '15', '30', '45'))}. Reply C to cancel."
        )
    if template == 2:
        return (
            f"{rnd.randint(100_000, 999_999)} is your {brand} verification code. Do not share it."
        )
    if template == 3:
        return (
            f"{brand}: payment of £{rnd.randint(5, 900)}.{rnd.randint(0, 99):02d} received for "
            f"invoice INV-{rnd.randint(100_000, 999_999)}. Thank you!"
        )
    return (
        f"{brand}: parcel {rnd.choice('ABCDEFGH')}{rnd.randint(10**9, 10**10 - 1)} is out for "
        f"delivery today between {(hour := rnd.randint(8, 17))}:00 and {hour + 2}:00."
    )


_N_BUSINESS_TEMPLATES = 5


# --------------------------------------------------------------------------------------------------
# Identities: phone numbers by country, groups, devices, IPs


class _Country(NamedTuple):
    iso: str
    prefix: str  # E.164 prefix; 9 more digits make a valid-length mobile number
    utc_offset_h: float


_COUNTRIES = (
    _Country("GB", "+447", 0.0),
    _Country("IN", "+919", 5.5),
    _Country("BR", "+5511", -3.0),
    _Country("NG", "+2348", 1.0),
    _Country("US", "+12", -5.0),
    _Country("DE", "+4915", 1.0),
    _Country("ID", "+628", 7.0),
)
# The low 4 bits of an account code pick its country; rounds shift codes by multiples of 16.
_SLOT_COUNTRY = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6], dtype=np.int64)
_SLOT_PREFIX = tuple(_COUNTRIES[c].prefix for c in _SLOT_COUNTRY)
_SLOT_ISO = tuple(_COUNTRIES[c].iso for c in _SLOT_COUNTRY)
_COUNTRY_OFFSET_H = np.array([c.utc_offset_h for c in _COUNTRIES])


def _phone(code: int) -> str:
    return _SLOT_PREFIX[code & 15] + str(code).zfill(9)


def _group_name(code: int) -> str:
    return "120363" + str(code).zfill(12) + "@g.us"


_GROUP_STRIDE = 10**9  # group codes per round

_PHONE_DEVICES = (
    "iPhone15,2/iOS 17.5",
    "iPhone14,5/iOS 17.4",
    "iPhone12,1/iOS 16.7",
    "SM-S918B/Android 14",
    "SM-A546B/Android 14",
    "SM-A145F/Android 13",
    "Pixel 8/Android 14",
    "Redmi Note 12/Android 13",
    "moto g84/Android 14",
    "CPH2487/Android 13",
)
_EMULATOR_DEVICES = (
    "sdk_gphone64_x86_64/Android 11",
    "generic_x86/Android 9",
    "vbox86p/Android 10",
)
_BUSINESS_DEVICE = "business-cloud-api/v19.0"

# Local-time activity by hour (messages per hour relative to the evening peak).
_DIURNAL_BY_HOUR = np.array(
    [0.45, 0.30, 0.20, 0.14, 0.12, 0.15, 0.28, 0.50, 0.70, 0.82, 0.88, 0.92,
     0.97, 0.95, 0.90, 0.88, 0.90, 0.94, 0.98, 1.00, 1.00, 0.96, 0.82, 0.62]
)  # fmt: skip

# Internal event kinds (same codes as detector.events.EventType).
_MESSAGE, _REGISTRATION, _REPORT, _BLOCK, _GROUP_CREATE, _GROUP_ADD = range(6)
_KIND_NAMES = ("message", "registration", "report", "block", "group_create", "group_add")
_EXTERNAL = 255  # archetype code of actors outside the population (reporters, blockers)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on uint64 (wrapping arithmetic)."""
    z = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


# --------------------------------------------------------------------------------------------------
# Columnar generation


_COLUMN_DTYPES: dict[str, type] = {
    "ts_ms": np.int64,
    "kind": np.uint8,
    "actor": np.int64,
    "peer": np.int64,
    "group_peer": np.bool_,
    "text": np.int32,
    "in_contacts": np.int8,
    "typing": np.int8,
    "forwarded": np.int8,
    "business": np.bool_,
    "members": np.int32,
}
_COLUMN_DEFAULTS = {
    "peer": -1, "group_peer": False, "text": -1, "in_contacts": -1, "typing": -1, "forwarded": -1,
    "business": False, "members": 0,
}  # fmt: skip


class _Ctx:
    """Population-wide state shared by the archetype generators of one round."""

    def __init__(self, config: SimulatorConfig, round_index: int) -> None:
        self.config = config
        self.n = config.accounts
        self.universe = -(-(self.n + max(6 * self.n, 200_000)) // 16) * 16
        self.duration_ms = config.minutes * 60_000
        self.hours = config.minutes / 60.0
        seeds = np.random.SeedSequence([config.seed, round_index]).spawn(len(ARCHETYPES) + 2)
        self.seeds, self.common_seed, self.assignment_seed = seeds[:-2], seeds[-2], seeds[-1]
        rng = np.random.default_rng(self.common_seed)
        self.py_seed = int(rng.integers(2**63))
        self.country = _SLOT_COUNTRY[np.arange(self.n) & 15]
        self.contacts = np.clip(rng.lognormal(np.log(120), 0.9, self.n), 5, 5000).astype(np.int64)
        self.text_visible = rng.random(self.n) < 0.7  # the rest use end-to-end encrypted clients
        self.meta_known = rng.random(self.n) < 0.92
        self.created_ms = np.zeros(self.n, dtype=np.int64)  # relative to the run start
        self.device = [""] * self.n
        self.ip = [""] * self.n
        self.groups_created = 0
        self.legit_groups = max(16, self.n // 6)
        self.columns: dict[str, list[np.ndarray]] = {name: [] for name in _COLUMN_DTYPES}
        ham, spam = load_sms(config.sms_path)
        self.texts: list[str] = list(ham)
        self.n_ham = len(ham)
        self.spam = spam
        start = dt.datetime.fromtimestamp(config.start_ms / 1000, tz=dt.UTC)
        self.new_year = start.year + (1 if start.month == 12 else 0)
        # Per-country cumulative distribution of diurnal activity over the run, 10 s resolution.
        self.grid_ms = np.linspace(0.0, self.duration_ms, max(2, config.minutes * 6 + 1))
        utc_h = (config.start_ms + self.grid_ms) / 3_600_000.0
        hours = np.arange(25)
        curve = np.append(_DIURNAL_BY_HOUR, _DIURNAL_BY_HOUR[0])
        self.cdf = []
        self.mean_weight = np.empty(len(_COUNTRIES))
        for c, country in enumerate(_COUNTRIES):
            weight = np.interp((utc_h + country.utc_offset_h) % 24.0, hours, curve)
            cumulative = np.concatenate(([0.0], np.cumsum((weight[1:] + weight[:-1]) / 2)))
            self.mean_weight[c] = cumulative[-1] / (len(weight) - 1)
            self.cdf.append(cumulative / cumulative[-1])

    def rng(self, archetype: str) -> np.random.Generator:
        return np.random.default_rng(self.seeds[ARCHETYPES.index(archetype)])

    def py_rng(self, archetype: str) -> random.Random:
        return random.Random(self.py_seed + ARCHETYPES.index(archetype))

    # identities -----------------------------------------------------------------------------------
    def contact(self, users: np.ndarray, rank: np.ndarray) -> np.ndarray:
        """The rank-th contact of each user: a stable pseudo-random account of the universe."""
        key = (users.astype(np.uint64) << np.uint64(20)) + rank.astype(np.uint64)
        code = (_mix64(key ^ np.uint64(0xC0FFEE)) % np.uint64(self.universe)).astype(np.int64)
        return np.where(code == users, (code + 1) % self.universe, code)

    def legit_group(self, users: np.ndarray, index: np.ndarray) -> np.ndarray:
        key = (users.astype(np.uint64) << np.uint64(20)) + index.astype(np.uint64)
        return (_mix64(key ^ np.uint64(0x6A09E667)) % np.uint64(self.legit_groups)).astype(np.int64)

    def new_groups(self, count: int) -> np.ndarray:
        first = self.legit_groups + self.groups_created
        self.groups_created += count
        return np.arange(first, first + count, dtype=np.int64)

    def strangers(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """Accounts outside the simulated population (so they never act as labelled senders)."""
        return rng.integers(self.n, self.universe, size=size)

    def set_identity(
        self,
        users: np.ndarray,
        created_ms: np.ndarray,
        devices: list[str],
        ips: list[str],
    ) -> None:
        self.created_ms[users] = created_ms.astype(np.int64)
        for user, device, ip in zip(users.tolist(), devices, ips, strict=True):
            self.device[user] = device
            self.ip[user] = ip

    # timing ---------------------------------------------------------------------------------------
    def diurnal_times(self, rng: np.random.Generator, country: np.ndarray) -> np.ndarray:
        """One time (ms into the run) per item, drawn from its country's diurnal activity."""
        u = rng.random(len(country))
        out = np.empty(len(country))
        for c in np.unique(country).tolist():
            mask = country == c
            out[mask] = np.interp(u[mask], self.cdf[c], self.grid_ms)
        return out

    # texts ----------------------------------------------------------------------------------------
    def add_texts(self, texts: list[str]) -> int:
        first = len(self.texts)
        self.texts.extend(texts)
        return first

    def with_visibility(
        self, rng: np.random.Generator, actor: np.ndarray, text: np.ndarray
    ) -> np.ndarray:
        """Text ids where the content is visible to the platform, else -1."""
        shown = self.text_visible[actor] & (rng.random(len(actor)) < 0.85)
        return np.where(shown, text, -1).astype(np.int32)

    def ham(self, rng: np.random.Generator, actor: np.ndarray) -> np.ndarray:
        return self.with_visibility(rng, actor, rng.integers(0, self.n_ham, len(actor)))

    # output ---------------------------------------------------------------------------------------
    def add(self, ts_ms: np.ndarray, kind: int, actor: np.ndarray, **columns: object) -> None:
        n = len(ts_ms)
        if n == 0:
            return
        values: dict[str, object] = {"ts_ms": np.floor(ts_ms), "kind": kind, "actor": actor}
        for name, default in _COLUMN_DEFAULTS.items():
            values[name] = columns.pop(name, default)
        if columns:
            raise TypeError(f"unknown columns {sorted(columns)}")
        for name, dtype in _COLUMN_DTYPES.items():
            array = np.asarray(values[name])
            if array.ndim != 0 and array.shape != (n,):
                raise ValueError(f"column {name} has shape {array.shape}, expected ({n},)")
            self.columns[name].append(np.broadcast_to(array, (n,)).astype(dtype))

    def reactions(
        self,
        rng: np.random.Generator,
        ts_ms: np.ndarray,
        sender: np.ndarray,
        recipient: np.ndarray,
        *,
        p_report: float,
        p_block: float,
        delay_median_s: float = 120.0,
    ) -> None:
        """Reports and blocks by recipients outside the population, shortly after delivery."""
        for kind, probability in ((_REPORT, p_report), (_BLOCK, p_block)):
            mask = (rng.random(len(ts_ms)) < probability) & (recipient >= self.n)
            delay = rng.lognormal(np.log(delay_median_s * 1000.0), 1.0, int(mask.sum()))
            self.add(ts_ms[mask] + 2000.0 + delay, kind, recipient[mask], peer=sender[mask])


def _tri(
    rng: np.random.Generator, n: int, p_known: float, p_true: float | np.ndarray
) -> np.ndarray:
    """Optional booleans as int8: -1 absent (unknown), 0 false, 1 true."""
    known = rng.random(n) < p_known
    value = rng.random(n) < p_true
    return np.where(known, value.astype(np.int8), np.int8(-1)).astype(np.int8)


def _segment_offsets(gaps: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Time of each item from the first of its segment, given per-item gaps (first gap ignored)."""
    total = np.cumsum(gaps)
    first = np.cumsum(counts) - counts
    return total - np.repeat(total[first], counts)


def _segment_cumsum(gaps: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Cumulative gaps within each segment (the first item is one gap after the segment start)."""
    first = np.cumsum(counts) - counts
    return _segment_offsets(gaps, counts) + np.repeat(gaps[first], counts)


def _positions(counts: np.ndarray) -> np.ndarray:
    """0, 1, ..., count - 1 for each segment, concatenated."""
    first = np.cumsum(counts) - counts
    return np.arange(int(counts.sum())) - np.repeat(first, counts)


def _zipf_rank(rng: np.random.Generator, sizes: np.ndarray) -> np.ndarray:
    """A rank in [0, size) with P(rank) ~ 1/rank: people mostly talk to a few close contacts."""
    rank = np.floor(np.exp(rng.random(len(sizes)) * np.log(sizes + 1.0))).astype(np.int64) - 1
    return np.clip(rank, 0, sizes - 1)


def _mobile_ips(users: np.ndarray, salt: int) -> list[str]:
    """Carrier-grade NAT addresses (100.64.0.0/10), as mobile users have."""
    h = _mix64(users.astype(np.uint64) ^ np.uint64(salt)).astype(np.uint64)
    a = (64 + (h & np.uint64(63))).tolist()
    b = ((h >> np.uint64(8)) & np.uint64(255)).tolist()
    c = ((h >> np.uint64(16)) & np.uint64(255)).tolist()
    return [f"100.{x}.{y}.{z}" for x, y, z in zip(a, b, c, strict=True)]


def _datacenter_ips(rng: np.random.Generator, n: int) -> list[str]:
    """Hosting addresses (the 198.18.0.0/15 benchmarking range stands in for data centres)."""
    a = rng.integers(18, 20, n).tolist()
    b = rng.integers(0, 256, n).tolist()
    c = rng.integers(1, 255, n).tolist()
    return [f"198.{x}.{y}.{z}" for x, y, z in zip(a, b, c, strict=True)]


def _phones(rng: np.random.Generator, n: int) -> list[str]:
    return [_PHONE_DEVICES[i] for i in rng.integers(0, len(_PHONE_DEVICES), n).tolist()]


def _legit_identity(ctx: _Ctx, rng: np.random.Generator, users: np.ndarray, salt: int) -> None:
    age_days = rng.lognormal(np.log(500), 0.8, len(users)).clip(1, 4000)
    ctx.set_identity(users, -age_days * _DAY_MS, _phones(rng, len(users)), _mobile_ips(users, salt))


def _human_messages(
    ctx: _Ctx,
    rng: np.random.Generator,
    users: np.ndarray,
    *,
    sessions_per_h: float,
    msgs_per_session: float,
    gap_median_s: float,
    group_share: float,
    groups_mean: float,
    forwarded_share: float = 0.04,
) -> None:
    """People chatting: diurnal sessions of a few messages to one contact or group, human gaps."""
    if len(users) == 0:
        return
    rate = rng.lognormal(np.log(sessions_per_h), 0.9, len(users))
    expected = rate * ctx.mean_weight[ctx.country[users]] * ctx.hours
    n_sessions = np.maximum(1, rng.poisson(expected))
    session_user = np.repeat(users, n_sessions)
    n = len(session_user)
    session_start = ctx.diurnal_times(rng, ctx.country[session_user])
    n_groups = np.repeat(rng.poisson(groups_mean, len(users)), n_sessions)
    in_group = (rng.random(n) < group_share) & (n_groups > 0)
    group = ctx.legit_group(session_user, rng.integers(0, np.maximum(n_groups, 1)))
    contact = ctx.contact(session_user, _zipf_rank(rng, ctx.contacts[session_user]))
    per_session = rng.geometric(1.0 / msgs_per_session, n)

    actor = np.repeat(session_user, per_session)
    m = len(actor)
    gaps = rng.lognormal(np.log(gap_median_s * 1000.0), 1.0, m)
    ts = np.repeat(session_start, per_session) + _segment_offsets(gaps, per_session)
    is_group = np.repeat(in_group, per_session)
    peer = np.where(is_group, np.repeat(group, per_session), np.repeat(contact, per_session))
    in_contacts = np.where(is_group, np.int8(-1), _tri(rng, m, 0.7, 0.93)).astype(np.int8)
    ctx.add(
        ts, _MESSAGE, actor, peer=peer, group_peer=is_group, text=ctx.ham(rng, actor),
        in_contacts=in_contacts, typing=_tri(rng, m, 0.8, 0.97),
        forwarded=_tri(rng, m, 0.9, forwarded_share),
    )  # fmt: skip
    # Even friends block someone now and then.
    direct = ~is_group
    ctx.reactions(rng, ts[direct], actor[direct], peer[direct], p_report=0.0001, p_block=0.0005)


def _gen_ordinary(ctx: _Ctx, users: np.ndarray) -> None:
    rng = ctx.rng("ordinary")
    _legit_identity(ctx, rng, users, 1)
    # A few people join during the run: they register, then message friends who saved their number.
    joiner = rng.random(len(users)) < 0.005
    _human_messages(
        ctx, rng, users[~joiner], sessions_per_h=1.0, msgs_per_session=3.0, gap_median_s=25.0,
        group_share=0.2, groups_mean=3.0,
    )  # fmt: skip
    joiners = users[joiner]
    if len(joiners) == 0:
        return
    registered = rng.uniform(0, 0.7 * ctx.duration_ms, len(joiners))
    ctx.created_ms[joiners] = registered.astype(np.int64)
    ctx.add(registered, _REGISTRATION, joiners)
    count = rng.integers(3, 16, len(joiners))
    actor = np.repeat(joiners, count)
    m = len(actor)
    first = np.repeat(registered + rng.uniform(60_000, 600_000, len(joiners)), count)
    ts = first + _segment_offsets(rng.lognormal(np.log(30_000), 1.0, m), count)
    rank = _positions(count)
    ctx.add(
        ts, _MESSAGE, actor, peer=ctx.contact(actor, rank), text=ctx.ham(rng, actor),
        in_contacts=_tri(rng, m, 0.7, 0.9), typing=_tri(rng, m, 0.8, 0.97),
        forwarded=_tri(rng, m, 0.9, 0.02),
    )  # fmt: skip


def _gen_power_user(ctx: _Ctx, users: np.ndarray) -> None:
    rng = ctx.rng("power_user")
    _legit_identity(ctx, rng, users, 2)
    ctx.contacts[users] = np.clip(rng.lognormal(np.log(350), 0.8, len(users)), 30, 5000)
    _human_messages(
        ctx, rng, users, sessions_per_h=5.0, msgs_per_session=6.0, gap_median_s=12.0,
        group_share=0.35, groups_mean=8.0, forwarded_share=0.08,
    )  # fmt: skip


def _gen_group_admin(ctx: _Ctx, users: np.ndarray) -> None:
    rng = ctx.rng("group_admin")
    _legit_identity(ctx, rng, users, 3)
    _human_messages(
        ctx, rng, users, sessions_per_h=1.5, msgs_per_session=3.0, gap_median_s=20.0,
        group_share=0.45, groups_mean=6.0,
    )  # fmt: skip
    # Each admin creates a few groups, adds people gradually, then says hello.
    creates = rng.integers(1, 5, len(users))
    owner = np.repeat(users, creates)
    groups = ctx.new_groups(len(owner))
    created = np.minimum(ctx.diurnal_times(rng, ctx.country[owner]), 0.9 * ctx.duration_ms)
    ctx.add(created, _GROUP_CREATE, owner, peer=groups, group_peer=True)
    adds = rng.integers(1, 4, len(owner))
    add_owner, add_group = np.repeat(owner, adds), np.repeat(groups, adds)
    add_gaps = rng.lognormal(np.log(20_000), 0.8, len(add_owner))
    add_ts = np.repeat(created, adds) + 1000.0 + _segment_cumsum(add_gaps, adds)
    members = np.clip(rng.geometric(1 / 8, len(add_owner)), 1, 60)
    ctx.add(add_ts, _GROUP_ADD, add_owner, peer=add_group, group_peer=True, members=members)
    hello = rng.integers(1, 6, len(owner))
    actor, peer = np.repeat(owner, hello), np.repeat(groups, hello)
    m = len(actor)
    last_add = np.maximum.reduceat(add_ts, np.cumsum(adds) - adds)
    gaps = rng.lognormal(np.log(30_000), 1.0, m)
    ts = np.repeat(last_add, hello) + _segment_cumsum(gaps, hello)
    ctx.add(
        ts, _MESSAGE, actor, peer=peer, group_peer=True, text=ctx.ham(rng, actor),
        typing=_tri(rng, m, 0.8, 0.97), forwarded=_tri(rng, m, 0.9, 0.03),
    )  # fmt: skip


def _gen_festive(ctx: _Ctx, users: np.ndarray) -> None:
    rng = ctx.rng("festive")
    rnd = ctx.py_rng("festive")
    _legit_identity(ctx, rng, users, 4)
    _human_messages(
        ctx, rng, users, sessions_per_h=1.0, msgs_per_session=3.0, gap_median_s=25.0,
        group_share=0.2, groups_mean=3.0,
    )  # fmt: skip
    if len(users) == 0:
        return
    # Greeting waves: everyone sends one near-identical greeting to their closest contacts.
    waves = ctx.config.festive_waves
    pool_size = 80
    pool = [
        _greeting_variant(rnd.choice(_GREETINGS), ctx.new_year, rnd)
        for _ in range(waves * pool_size)
    ]
    first_text = ctx.add_texts(pool)
    wave = rng.integers(0, waves, len(users))
    center = (wave + 0.5) / waves * ctx.duration_ms
    start = np.clip(center + rng.normal(0, 60_000, len(users)), 0, ctx.duration_ms - 1)
    popularity = 1.0 / np.arange(1, pool_size + 1) ** 1.1
    variant = rng.choice(pool_size, size=len(users), p=popularity / popularity.sum())
    text = first_text + wave * pool_size + variant
    forwarded = rng.random(len(users)) < 0.35  # a viral greeting forwarded as is: no typing
    count = np.minimum(rng.integers(5, 41, len(users)), ctx.contacts[users])
    actor = np.repeat(users, count)
    m = len(actor)
    ts = np.repeat(start, count) + _segment_offsets(rng.lognormal(np.log(4000), 0.8, m), count)
    rank = _positions(count)
    user_forwarded = np.repeat(forwarded, count)
    ctx.add(
        ts, _MESSAGE, actor, peer=ctx.contact(actor, rank),
        text=ctx.with_visibility(rng, actor, np.repeat(text, count)),
        in_contacts=_tri(rng, m, 0.7, 0.95),
        typing=_tri(rng, m, 0.8, np.where(user_forwarded, 0.0, 0.85)),
        forwarded=np.where(rng.random(m) < 0.9, user_forwarded.astype(np.int8), np.int8(-1)),
    )  # fmt: skip


def _gen_business(ctx: _Ctx, users: np.ndarray) -> None:
    rng = ctx.rng("business")
    rnd = ctx.py_rng("business")
    age_days = rng.uniform(90, 2000, len(users))
    ips = [f"203.0.113.{x}" for x in rng.integers(1, 255, len(users)).tolist()]
    ctx.set_identity(users, -age_days * _DAY_MS, [_BUSINESS_DEVICE] * len(users), ips)
    # Messaging tiers cap unique recipients per 24 h; a business uses part of its tier.
    tier = np.where(rng.random(len(users)) < 0.6, 1000, 10_000)
    per_day = tier * rng.uniform(0.15, 0.8, len(users))
    expected = per_day / 24.0 * 1.4 * ctx.mean_weight[ctx.country[users]] * ctx.hours
    count = np.maximum(1, rng.poisson(expected))
    actor = np.repeat(users, count)
    m = len(actor)
    ts = ctx.diurnal_times(rng, ctx.country[actor])
    brands = [rnd.choice(_BUSINESS_BRANDS) for _ in range(len(users))]
    template_sets = [rnd.sample(range(_N_BUSINESS_TEMPLATES), rnd.randint(1, 3)) for _ in users]
    owner = np.repeat(np.arange(len(users)), count).tolist()
    texts = [_business_text(rnd.choice(template_sets[i]), brands[i], rnd) for i in owner]
    text = ctx.with_visibility(rng, actor, ctx.add_texts(texts) + np.arange(m))
    peer = ctx.strangers(rng, m)
    ctx.add(
        ts, _MESSAGE, actor, peer=peer, text=text, in_contacts=_tri(rng, m, 0.7, 0.15),
        typing=_tri(rng, m, 0.6, 0.0), forwarded=_tri(rng, m, 0.9, 0.0), business=True,
    )  # fmt: skip
    ctx.reactions(rng, ts, actor, peer, p_report=0.0003, p_block=0.003)


def _spam_pools(
    ctx: _Ctx, rnd: random.Random, n_templates: int, variants: int, heavy: bool
) -> np.ndarray:
    """Text ids of ``variants`` mutations of ``n_templates`` spam templates, shape (n, variants)."""
    texts: list[str] = []
    for _ in range(n_templates):
        template = rnd.choice(ctx.spam)
        texts.append(template)
        texts.extend(_mutate_spam(template, rnd, heavy=heavy) for _ in range(variants - 1))
    first = ctx.add_texts(texts)
    return (first + np.arange(n_templates * variants)).reshape(n_templates, variants)


def _gen_new_account_blaster(ctx: _Ctx, users: np.ndarray) -> None:
    rng = ctx.rng("new_account_blaster")
    rnd = ctx.py_rng("new_account_blaster")
    n = len(users)
    if n == 0:
        return
    count = rng.integers(100, 501, n)
    per_s = rng.uniform(2.0, 8.0, n)
    delay_ms = rng.uniform(2000, 15_000, n)
    busy_ms = count / per_s * 1000.0 + delay_ms
    registered = rng.uniform(0, 1, n) * np.maximum(1.0, ctx.duration_ms - busy_ms - 5000)
    emulator = rng.random(n) < 0.7
    devices = [
        _EMULATOR_DEVICES[i % 3] if e else _PHONE_DEVICES[i % 10]
        for i, e in zip(rng.integers(0, 30, n).tolist(), emulator.tolist(), strict=True)
    ]
    ctx.set_identity(users, registered, devices, _datacenter_ips(rng, n))
    ctx.add(registered, _REGISTRATION, users)

    actor = np.repeat(users, count)
    m = len(actor)
    gaps = np.repeat(1000.0 / per_s, count) * rng.lognormal(0.0, 0.35, m)
    ts = np.repeat(registered + delay_ms, count) + _segment_offsets(gaps, count)
    # Some walk a number range, the others work through a bought list of numbers.
    sequential = np.repeat(rng.random(n) < 0.35, count)
    span = ctx.universe - ctx.n
    base = np.repeat(rng.integers(0, span, n), count)
    walk = ctx.n + (base + _positions(count)) % span
    peer = np.where(sequential, walk, ctx.strangers(rng, m))
    pools = _spam_pools(ctx, rnd, n, 6, heavy=False)  # one template each, lightly mutated
    variant = rng.integers(0, 6, m)
    variant[rng.random(m) < 0.5] = 0  # mostly the very same text
    text = ctx.with_visibility(rng, actor, pools[np.repeat(np.arange(n), count), variant])
    ctx.add(
        ts, _MESSAGE, actor, peer=peer, text=text, in_contacts=_tri(rng, m, 0.7, 0.01),
        typing=_tri(rng, m, 0.8, 0.0), forwarded=_tri(rng, m, 0.9, 0.0),
    )  # fmt: skip
    ctx.reactions(rng, ts, actor, peer, p_report=0.02, p_block=0.05, delay_median_s=60.0)


def _gen_slow_bot(ctx: _Ctx, users: np.ndarray) -> None:
    rng = ctx.rng("slow_bot")
    rnd = ctx.py_rng("slow_bot")
    n = len(users)
    if n == 0:
        return
    age_days = rng.uniform(3, 60, n)
    devices = [_EMULATOR_DEVICES[i % 3] if i < 6 else _PHONE_DEVICES[i % 10]
               for i in rng.integers(0, 10, n).tolist()]  # fmt: skip
    ips = [
        dc if is_dc else mobile
        for dc, mobile, is_dc in zip(
            _datacenter_ips(rng, n),
            _mobile_ips(users, 5),
            (rng.random(n) < 0.6).tolist(),
            strict=True,
        )
    ]
    ctx.set_identity(users, -age_days * _DAY_MS, devices, ips)
    # A fixed interval per bot, jitter well under 2 %, around the clock for the whole run.
    interval_ms = rng.uniform(20_000, 120_000, n)
    phase = rng.uniform(0, 1, n) * np.minimum(interval_ms, ctx.duration_ms)
    count = np.maximum(
        1, np.floor((ctx.duration_ms - 1 - phase) / interval_ms).astype(np.int64) + 1
    )
    actor = np.repeat(users, count)
    m = len(actor)
    jitter = np.clip(rng.normal(0.0, 0.004, m), -0.012, 0.012)
    gaps = np.repeat(interval_ms, count) * (1.0 + jitter)
    ts = np.repeat(phase, count) + _segment_offsets(gaps, count)
    templates = rng.integers(1, 4, n)
    pools = _spam_pools(ctx, rnd, 3 * n, 4, heavy=False).reshape(n, 3, 4)
    template = _positions(count) % np.repeat(templates, count)  # rotates its templates
    text = pools[np.repeat(np.arange(n), count), template, rng.integers(0, 4, m)]
    peer = ctx.strangers(rng, m)
    ctx.add(
        ts, _MESSAGE, actor, peer=peer, text=ctx.with_visibility(rng, actor, text),
        in_contacts=_tri(rng, m, 0.7, 0.1), typing=_tri(rng, m, 0.8, 0.0),
        forwarded=_tri(rng, m, 0.9, 0.05),
    )  # fmt: skip
    ctx.reactions(rng, ts, actor, peer, p_report=0.03, p_block=0.06)


def _campaign_sizes(rng: np.random.Generator, total: int) -> list[int]:
    sizes: list[int] = []
    while sum(sizes) < total:
        sizes.append(int(rng.integers(20, 201)))
    sizes[-1] -= sum(sizes) - total
    if len(sizes) > 1 and sizes[-1] < 20:
        tail = sizes.pop()
        sizes[-1] += tail
    return sizes


def _gen_distributed_campaign(ctx: _Ctx, users: np.ndarray) -> None:
    rng = ctx.rng("distributed_campaign")
    rnd = ctx.py_rng("distributed_campaign")
    n = len(users)
    if n == 0:
        return
    sizes = np.array(_campaign_sizes(rng, n))
    campaigns = len(sizes)
    campaign = np.repeat(np.arange(campaigns), sizes)
    # A farm: one device model and a few proxy addresses per campaign, aged accounts.
    farm_device = [rnd.choice(_PHONE_DEVICES[3:]) for _ in range(campaigns)]
    proxies = [_datacenter_ips(rng, int(rng.integers(4, 13))) for _ in range(campaigns)]
    member = campaign.tolist()
    ctx.set_identity(
        users,
        -rng.uniform(1, 30, n) * _DAY_MS,
        [farm_device[c] for c in member],
        [rnd.choice(proxies[c]) for c in member],
    )
    # Each account stays under per-account limits: 10-40 messages, at least 3.5 s apart.
    centre = rng.uniform(0, 1, campaigns) * max(1.0, ctx.duration_ms - 8 * 60_000)
    start = np.minimum(centre[campaign] + rng.uniform(0, 120_000, n), ctx.duration_ms - 1)
    count = rng.integers(10, 41, n)
    actor = np.repeat(users, count)
    m = len(actor)
    gaps = 3500.0 + rng.exponential(5000.0, m)
    ts = np.repeat(start, count) + _segment_offsets(gaps, count)
    pools = _spam_pools(ctx, rnd, campaigns, 64, heavy=True)
    text = pools[np.repeat(campaign, count), rng.integers(0, 64, m)]
    fakes_typing = np.repeat(rng.random(n) < 0.2, count)
    peer = ctx.strangers(rng, m)
    ctx.add(
        ts, _MESSAGE, actor, peer=peer, text=ctx.with_visibility(rng, actor, text),
        in_contacts=_tri(rng, m, 0.7, 0.02),
        typing=_tri(rng, m, 0.8, np.where(fakes_typing, 1.0, 0.0)),
        forwarded=_tri(rng, m, 0.9, 0.0),
    )  # fmt: skip
    ctx.reactions(rng, ts, actor, peer, p_report=0.03, p_block=0.05)


def _gen_group_spammer(ctx: _Ctx, users: np.ndarray) -> None:
    rng = ctx.rng("group_spammer")
    rnd = ctx.py_rng("group_spammer")
    n = len(users)
    if n == 0:
        return
    n_groups = rng.integers(20, 61, n)
    interval_ms = np.minimum(rng.uniform(20_000, 60_000, n), 0.8 * ctx.duration_ms / n_groups)
    busy_ms = n_groups * interval_ms * 1.1 + 60_000
    start = rng.uniform(0, 1, n) * np.maximum(1.0, ctx.duration_ms - busy_ms)
    registers = rng.random(n) < 0.3
    created = np.where(registers, start, -rng.uniform(0.5, 7, n) * _DAY_MS)
    devices = [_EMULATOR_DEVICES[i] if i < 3 else _PHONE_DEVICES[i] for i in
               rng.integers(0, 10, n).tolist()]  # fmt: skip
    ctx.set_identity(users, created, devices, _datacenter_ips(rng, n))
    ctx.add(start[registers], _REGISTRATION, users[registers])
    first = start + np.where(registers, rng.uniform(10_000, 60_000, n), 0.0)

    owner = np.repeat(users, n_groups)
    g = len(owner)
    groups = ctx.new_groups(g)
    step = np.repeat(interval_ms, n_groups) * rng.uniform(0.9, 1.1, g)
    created_ts = np.repeat(first, n_groups) + _segment_offsets(step, n_groups)
    ctx.add(created_ts, _GROUP_CREATE, owner, peer=groups, group_peer=True)
    adds = rng.integers(2, 7, g)
    add_owner, add_group = np.repeat(owner, adds), np.repeat(groups, adds)
    add_gaps = rng.uniform(1000, 4000, len(add_owner))
    add_ts = np.repeat(created_ts, adds) + _segment_cumsum(add_gaps, adds)
    members = rng.integers(10, 121, len(add_owner))
    ctx.add(add_ts, _GROUP_ADD, add_owner, peer=add_group, group_peer=True, members=members)
    # Then spam into the new groups; a few members report or block the spammer.
    last_add = np.maximum.reduceat(add_ts, np.cumsum(adds) - adds)
    posts = rng.integers(1, 4, g)
    actor, peer = np.repeat(owner, posts), np.repeat(groups, posts)
    m = len(actor)
    gaps = rng.uniform(5000, 30_000, m)
    ts = np.repeat(last_add, posts) + _segment_cumsum(gaps, posts)
    pools = _spam_pools(ctx, rnd, n, 8, heavy=True)
    text = pools[np.repeat(np.repeat(np.arange(n), n_groups), posts), rng.integers(0, 8, m)]
    ctx.add(
        ts, _MESSAGE, actor, peer=peer, group_peer=True,
        text=ctx.with_visibility(rng, actor, text), typing=_tri(rng, m, 0.8, 0.0),
        forwarded=_tri(rng, m, 0.9, 0.1),
    )  # fmt: skip
    for kind, mean in ((_REPORT, 1.0), (_BLOCK, 1.5)):
        reactions = rng.poisson(mean, g)
        reacted = np.repeat(np.maximum.reduceat(ts, np.cumsum(posts) - posts), reactions)
        delay = rng.lognormal(np.log(120_000), 1.0, len(reacted))
        ctx.add(
            reacted + delay,
            kind,
            ctx.strangers(rng, len(reacted)),
            peer=np.repeat(owner, reactions),
        )


def _gen_reported_spammer(ctx: _Ctx, users: np.ndarray) -> None:
    rng = ctx.rng("reported_spammer")
    rnd = ctx.py_rng("reported_spammer")
    n = len(users)
    if n == 0:
        return
    ctx.set_identity(
        users, -rng.uniform(14, 365, n) * _DAY_MS, _phones(rng, n), _mobile_ips(users, 10)
    )
    per_h = rng.uniform(30, 80, n)
    count = np.maximum(1, rng.poisson(per_h * ctx.hours))
    actor = np.repeat(users, count)
    m = len(actor)
    ts = rng.uniform(0, ctx.duration_ms, m)
    templates = rng.integers(2, 5, n)
    pools = _spam_pools(ctx, rnd, 4 * n, 4, heavy=False).reshape(n, 4, 4)
    owner = np.repeat(np.arange(n), count)
    template = rng.integers(0, np.repeat(templates, count))
    text = pools[owner, template, rng.integers(0, 4, m)]
    peer = ctx.strangers(rng, m)
    ctx.add(
        ts, _MESSAGE, actor, peer=peer, text=ctx.with_visibility(rng, actor, text),
        in_contacts=_tri(rng, m, 0.7, 0.03), typing=_tri(rng, m, 0.7, 0.3),
        forwarded=_tri(rng, m, 0.9, 0.2),
    )  # fmt: skip
    ctx.reactions(rng, ts, actor, peer, p_report=0.25, p_block=0.35)


_GENERATORS = {
    "ordinary": _gen_ordinary,
    "power_user": _gen_power_user,
    "group_admin": _gen_group_admin,
    "festive": _gen_festive,
    "business": _gen_business,
    "new_account_blaster": _gen_new_account_blaster,
    "slow_bot": _gen_slow_bot,
    "distributed_campaign": _gen_distributed_campaign,
    "group_spammer": _gen_group_spammer,
    "reported_spammer": _gen_reported_spammer,
}


# --------------------------------------------------------------------------------------------------
# One generated round


@dataclass(frozen=True)
class _Simulation:
    """All events of one round as time-sorted columns (times relative to the round start)."""

    config: SimulatorConfig
    columns: dict[str, np.ndarray]
    actor_archetype: np.ndarray  # per event: archetype index of the actor, _EXTERNAL if outside
    archetype: np.ndarray  # per population account
    names: list[str]  # per population account
    device: list[str]
    ip: list[str]
    created_ms: np.ndarray  # per population account, relative to the round start
    meta_known: np.ndarray
    texts: list[str]
    code_offset: int
    group_offset: int

    def __len__(self) -> int:
        return len(self.columns["ts_ms"])

    def labels(self) -> list[Label]:
        acted = np.zeros(len(self.names), dtype=bool)
        actor = self.columns["actor"]
        acted[actor[actor < len(self.names)]] = True
        out = []
        for account in np.flatnonzero(acted).tolist():
            archetype = ARCHETYPES[self.archetype[account]]
            label = "abusive" if archetype in ABUSIVE_ARCHETYPES else "legit"
            out.append(Label(self.names[account], label, archetype))
        return out

    def _row_chunks(self, base_ms: int) -> Iterator[zip]:
        """Rows of up to 32768 events as plain Python values, peers already named."""
        c = self.columns
        n_accounts, names = len(self.names), self.names
        code_offset, group_offset = self.code_offset, self.group_offset
        step = 32_768
        for lo in range(0, len(self), step):
            hi = lo + step
            group_peers = c["group_peer"][lo:hi].tolist()
            peer_names = [
                _group_name(code + group_offset)
                if group_peer
                else (names[code] if code < n_accounts else _phone(code + code_offset))
                for code, group_peer in zip(c["peer"][lo:hi].tolist(), group_peers, strict=True)
            ]
            actors = c["actor"][lo:hi].tolist()
            actor_names = [
                names[code] if code < n_accounts else _phone(code + code_offset) for code in actors
            ]
            yield zip(
                (c["ts_ms"][lo:hi] + base_ms).tolist(),
                c["kind"][lo:hi].tolist(),
                actors,
                actor_names,
                peer_names,
                group_peers,
                c["text"][lo:hi].tolist(),
                c["in_contacts"][lo:hi].tolist(),
                c["typing"][lo:hi].tolist(),
                c["forwarded"][lo:hi].tolist(),
                c["business"][lo:hi].tolist(),
                c["members"][lo:hi].tolist(),
                strict=True,
            )

    def _country(self, actor: int) -> str:
        return _SLOT_ISO[(actor + self.code_offset) & 15]

    def iter_dicts(self, base_ms: int) -> Iterator[dict]:
        """Events as contract dicts, ``base_ms`` being the event time of the round start."""
        texts, devices, ips = self.texts, self.device, self.ip
        meta = self.meta_known.tolist()
        created = (self.created_ms + base_ms).tolist()
        for rows in self._row_chunks(base_ms):
            for (
                ts,
                kind,
                actor,
                name,
                peer,
                group,
                text,
                contact,
                typing,
                fwd,
                biz,
                members,
            ) in rows:
                if kind == _MESSAGE:
                    event = {"type": "message", "ts": ts, "account": name, "peer": peer}
                    if group:
                        event["chat"] = "group"
                    if text >= 0:
                        event["text"] = texts[text]
                    if contact >= 0:
                        event["in_contacts"] = contact == 1
                    if typing >= 0:
                        event["typing"] = typing == 1
                    if fwd >= 0:
                        event["forwarded"] = fwd == 1
                    if biz:
                        event["business"] = True
                    if meta[actor]:
                        event["device"] = devices[actor]
                        event["ip"] = ips[actor]
                        event["account_created"] = created[actor]
                    yield event
                elif kind == _REGISTRATION:
                    yield {
                        "type": "registration",
                        "ts": ts,
                        "account": name,
                        "device": devices[actor],
                        "ip": ips[actor],
                        "country": self._country(actor),
                    }
                elif kind == _GROUP_ADD:
                    yield {
                        "type": "group_add",
                        "ts": ts,
                        "account": name,
                        "peer": peer,
                        "members": members,
                    }
                else:
                    yield {"type": _KIND_NAMES[kind], "ts": ts, "account": name, "peer": peer}

    def iter_records(self, base_ms: int) -> Iterator[list[bytes]]:
        """The events of :meth:`iter_dicts` as JSON records, byte for byte what msgspec.json makes
        of those dicts (the tests check it), assembled from pre-encoded pieces: about twice as fast.
        """
        encode = msgspec.json.encode
        # Index -1 (absent) picks the empty piece at the end of each table.
        text_piece = [',"text":' + encode(text).decode() for text in self.texts] + [""]
        chat_piece = ("", ',"chat":"group"')
        business_piece = ("", ',"business":true')
        contact_piece = (',"in_contacts":false', ',"in_contacts":true', "")
        typing_piece = (',"typing":false', ',"typing":true', "")
        forwarded_piece = (',"forwarded":false', ',"forwarded":true', "")
        meta_piece = [
            f',"device":{encode(device).decode()},"ip":{encode(ip).decode()},"account_created":'
            f"{created}"
            if known
            else ""
            for device, ip, created, known in zip(
                self.device,
                self.ip,
                (self.created_ms + base_ms).tolist(),
                self.meta_known.tolist(),
                strict=True,
            )
        ]
        for rows in self._row_chunks(base_ms):
            records = []
            append = records.append
            for (
                ts,
                kind,
                actor,
                name,
                peer,
                group,
                text,
                contact,
                typing,
                fwd,
                biz,
                members,
            ) in rows:
                if kind == _MESSAGE:
                    record = (
                        f'{{"type":"message","ts":{ts},"account":"{name}","peer":"{peer}"'
                        f"{chat_piece[group]}{text_piece[text]}{contact_piece[contact]}"
                        f"{typing_piece[typing]}{forwarded_piece[fwd]}{business_piece[biz]}"
                        f"{meta_piece[actor]}}}"
                    )
                elif kind == _REGISTRATION:
                    record = (
                        f'{{"type":"registration","ts":{ts},"account":"{name}","device":'
                        f"{encode(self.device[actor]).decode()},"
                        f'"ip":{encode(self.ip[actor]).decode()},"country":"{self._country(actor)}"}}'
                    )
                elif kind == _GROUP_ADD:
                    record = (
                        f'{{"type":"group_add","ts":{ts},"account":"{name}","peer":"{peer}",'
                        f'"members":{members}}}'
                    )
                else:
                    record = (
                        f'{{"type":"{_KIND_NAMES[kind]}","ts":{ts},"account":"{name}",'
                        f'"peer":"{peer}"}}'
                    )
                append(record.encode())
            yield records


@lru_cache(maxsize=2)
def _build(config: SimulatorConfig, round_index: int = 0) -> _Simulation:
    ctx = _Ctx(config, round_index)
    counts = config.archetype_counts()
    assign_rng = np.random.default_rng(ctx.assignment_seed)
    shuffled = assign_rng.permutation(ctx.n)
    archetype = np.empty(ctx.n, dtype=np.uint8)
    first = 0
    members: dict[str, np.ndarray] = {}
    for index, name in enumerate(ARCHETYPES):
        block = np.sort(shuffled[first : first + counts[name]])
        archetype[block] = index
        members[name] = block
        first += counts[name]
    for name in ARCHETYPES:
        _GENERATORS[name](ctx, members[name])

    merged = {
        name: np.concatenate(parts) if parts else np.empty(0, dtype=_COLUMN_DTYPES[name])
        for name, parts in ctx.columns.items()
    }
    ts = merged["ts_ms"]
    keep = (ts >= 0) & (ts < ctx.duration_ms)
    order = np.flatnonzero(keep)[np.argsort(ts[keep], kind="stable")]
    columns = {name: np.ascontiguousarray(values[order]) for name, values in merged.items()}
    actor = columns["actor"]
    inside = actor < ctx.n
    actor_archetype = np.full(len(actor), _EXTERNAL, dtype=np.uint8)
    actor_archetype[inside] = archetype[actor[inside]]
    if not inside[columns["kind"] == _MESSAGE].all():  # pragma: no cover - generator invariant
        raise AssertionError("a message sender outside the population")

    code_offset = round_index * ctx.universe
    return _Simulation(
        config=config,
        columns=columns,
        actor_archetype=actor_archetype,
        archetype=archetype,
        names=[_phone(code + code_offset) for code in range(ctx.n)],
        device=ctx.device,
        ip=ctx.ip,
        created_ms=ctx.created_ms,
        meta_known=ctx.meta_known,
        texts=ctx.texts,
        code_offset=code_offset,
        group_offset=round_index * _GROUP_STRIDE,
    )


# --------------------------------------------------------------------------------------------------
# Public API


def _round_start_ms(config: SimulatorConfig, round_index: int) -> int:
    return config.start_ms + round_index * config.minutes * 60_000


def generate_events(config: SimulatorConfig, *, round_index: int = 0) -> Iterator[dict]:
    """Contract-valid events as dicts in event-time order.

    Round ``r`` has fresh accounts and groups and starts where round ``r - 1`` ended.
    """
    simulation = _build(config, round_index)
    return simulation.iter_dicts(_round_start_ms(config, round_index))


def labels(config: SimulatorConfig, *, round_index: int = 0) -> list[Label]:
    """Ground truth: one label per account that acts, in account order."""
    return _build(config, round_index).labels()


def simulate(config: SimulatorConfig) -> tuple[Iterator[dict], list[Label]]:
    """Events and labels of one simulation (built once)."""
    return generate_events(config), labels(config)


def event_counts(config: SimulatorConfig, *, round_index: int = 0) -> dict[str, int]:
    """Events per archetype of the actor; ``recipient`` counts reports/blocks by outsiders."""
    simulation = _build(config, round_index)
    counts = np.bincount(simulation.actor_archetype, minlength=256)
    out = {name: int(counts[i]) for i, name in enumerate(ARCHETYPES)}
    out["recipient"] = int(counts[_EXTERNAL])
    return out


def write_simulation(
    config: SimulatorConfig, events_path: str | Path, labels_path: str | Path
) -> tuple[int, int]:
    """Write events as JSONL (gzip when the path ends with .gz) and labels as CSV.

    Returns (events written, accounts labelled). Output bytes depend only on the config.
    """
    events_path, labels_path = Path(events_path), Path(labels_path)
    simulation = _build(config)
    n_events = 0
    with open(events_path, "wb") as raw:
        sink = (
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=3, mtime=0)
            if events_path.suffix == ".gz"
            else raw
        )
        try:
            for records in simulation.iter_records(config.start_ms):
                sink.write(b"\n".join(records) + b"\n")
                n_events += len(records)
        finally:
            if sink is not raw:
                sink.close()
    truth = simulation.labels()
    with open(labels_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(Label._fields)
        writer.writerows(truth)
    return n_events, len(truth)


class SimulatorSource:
    """Simulated traffic as batches of raw JSON records (``list[bytes]``), like Kafka records.

    ``rate_per_s`` paces the stream to that many events per second of wall time (None: as fast as
    possible). ``rebase_to_now`` shifts event times so the stream starts at the wall clock.
    ``loop`` repeats forever, each round with fresh accounts and later event times. ``stop()`` ends
    the iteration at the next batch boundary.
    """

    def __init__(
        self,
        config: SimulatorConfig,
        *,
        batch_size: int = 5000,
        rate_per_s: float | None = None,
        rebase_to_now: bool = False,
        loop: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if rate_per_s is not None and rate_per_s <= 0:
            raise ValueError(f"rate_per_s must be > 0 or None, got {rate_per_s}")
        self.config = config
        self.batch_size = batch_size
        self.rate_per_s = rate_per_s
        self.rebase_to_now = rebase_to_now
        self.loop = loop
        self.events_emitted = 0
        self.rounds_started = 0
        self._stopped = threading.Event()

    def stop(self) -> None:
        self._stopped.set()

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    def _round_base_ms(self, round_index: int, previous_base_ms: int | None) -> int:
        natural = _round_start_ms(self.config, round_index)
        if not self.rebase_to_now:
            return natural
        now_ms = time.time_ns() // 1_000_000
        if previous_base_ms is None:
            return now_ms
        # Never let event time run backwards between rounds.
        return max(now_ms, previous_base_ms + self.config.minutes * 60_000)

    def _encoded_batches(self, simulation: _Simulation, base_ms: int) -> Iterator[list[bytes]]:
        pending: list[bytes] = []
        for records in simulation.iter_records(base_ms):
            pending.extend(records)
            while len(pending) >= self.batch_size:
                yield pending[: self.batch_size]
                del pending[: self.batch_size]
        if pending:
            yield pending

    def _pace_delay_s(self, started: float) -> float:
        if self.rate_per_s is None:
            return 0.0
        return started + self.events_emitted / self.rate_per_s - time.monotonic()

    def __iter__(self) -> Iterator[list[bytes]]:
        started = time.monotonic()
        base_ms: int | None = None
        round_index = 0
        while not self.stopped:
            simulation = _build(self.config, round_index)
            base_ms = self._round_base_ms(round_index, base_ms)
            self.rounds_started += 1
            for batch in self._encoded_batches(simulation, base_ms):
                delay = self._pace_delay_s(started)
                if (delay > 0 and self._stopped.wait(delay)) or self.stopped:
                    return
                self.events_emitted += len(batch)
                yield batch
            if not self.loop:
                return
            round_index += 1

    async def batches(self) -> AsyncIterator[list[bytes]]:
        """The same batches as iteration, pacing with asyncio.sleep; rounds build in a thread."""
        started = time.monotonic()
        base_ms: int | None = None
        round_index = 0
        while not self.stopped:
            simulation = await asyncio.to_thread(_build, self.config, round_index)
            base_ms = self._round_base_ms(round_index, base_ms)
            self.rounds_started += 1
            for batch in self._encoded_batches(simulation, base_ms):
                delay = self._pace_delay_s(started)
                while delay > 0 and not self.stopped:
                    await asyncio.sleep(min(delay, 0.25))
                    delay = self._pace_delay_s(started)
                if self.stopped:
                    return
                self.events_emitted += len(batch)
                yield batch
            if not self.loop:
                return
            round_index += 1


__all__ = [
    "ABUSIVE_ARCHETYPES",
    "ARCHETYPES",
    "DEFAULT_START_MS",
    "LEGIT_ARCHETYPES",
    "Label",
    "SimulatorConfig",
    "SimulatorSource",
    "event_counts",
    "generate_events",
    "labels",
    "load_sms",
    "simulate",
    "write_simulation",
]
