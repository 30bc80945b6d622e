"""The baseline people write first: a pure-Python detector with bulkwatch's rules.

One event at a time: ``json.loads``, then per-account state in dicts of ``deque`` s (one deque per
sliding window, ``Counter`` s for distinct recipients), the same per sending network address, and
near-duplicate clusters with ``datasketch`` (``MinHash(num_perm=128)`` over 5-character shingles,
``MinHashLSH(threshold=0.5)`` over one representative signature per cluster). The rules, graded
weights, action levels, business cap and signal gate are those of ``detector.policy`` (thresholds
read from the same policy file); the features are computed here, exactly over sliding windows,
without any of bulkwatch's code.

It is written the way a competent engineer writes a first version: readable and not deliberately
slow (permutations are built once, windows are trimmed incrementally), but nothing is vectorised or
compiled. ``bench load`` runs it over the same Kafka topic as bulkwatch;
``tests/bench/test_naive.py`` checks that it catches the same archetypes on handmade streams.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from datasketch import MinHash, MinHashLSH

from detector.policy import Policy, signal_id

SHINGLE_CHARS = 5
NUM_PERM = 128
LSH_THRESHOLD = 0.5
CLUSTER_WINDOW_MS = 3_600_000
CLUSTER_TTL_MS = 7_200_000
GAPS_KEPT = 16  # inter-message gaps remembered per account (the timing rule needs at least 12)

_MINUTE_MS = 60_000
_HOUR_MS = 3_600_000
_DAY_MS = 86_400_000
_ACTIONS = ("none", "review", "throttle", "ban")
_NON_VOLUME_REASONS = frozenset({"GROUP_SPAM", "NEGATIVE_FEEDBACK"})
_BUSINESS_EXEMPT = frozenset(
    {
        "NEW_ACCOUNT_BURST",
        "HIGH_RATE",
        "NON_CONTACT_FANOUT",
        "BULK_DUPLICATE",
        "COORDINATED_CAMPAIGN",
        "AUTOMATED_TIMING",
    }
)
_URL = re.compile(r"(?:https?://|www\.)\S+")
_NUMBER = re.compile(r"\d+(?:[.,:/-]\d+)*")
_SPACES = re.compile(r"\s+")


def shingles(text: str) -> list[bytes]:
    """Distinct 5-character shingles of the text, case-folded, with URLs as ``U`` and numbers as
    ``N`` (what campaigns change between copies); a shorter text is its own single shingle."""
    normal = unicodedata.normalize("NFKC", text).casefold()
    normal = _SPACES.sub(" ", _NUMBER.sub("N", _URL.sub("U", normal))).strip()
    if not normal:
        return []
    if len(normal) <= SHINGLE_CHARS:
        return [normal.encode()]
    return list(
        dict.fromkeys(
            normal[i : i + SHINGLE_CHARS].encode() for i in range(len(normal) - SHINGLE_CHARS + 1)
        )
    )


class Window:
    """Items of the last ``window_ms`` of event time, counted on the fly."""

    __slots__ = ("items", "window_ms")

    def __init__(self, window_ms: int) -> None:
        self.window_ms = window_ms
        self.items: deque[int] = deque()

    def add(self, ts_ms: int) -> None:
        self.items.append(ts_ms)

    def count(self, now_ms: int) -> int:
        items = self.items
        horizon = now_ms - self.window_ms
        while items and items[0] <= horizon:
            items.popleft()
        return len(items)


class DistinctWindow:
    """Distinct keys seen in the last ``window_ms`` (a deque of sightings plus a Counter)."""

    __slots__ = ("counts", "items", "window_ms")

    def __init__(self, window_ms: int) -> None:
        self.window_ms = window_ms
        self.items: deque[tuple[int, str]] = deque()
        self.counts: Counter[str] = Counter()

    def add(self, ts_ms: int, key: str) -> None:
        self.items.append((ts_ms, key))
        self.counts[key] += 1

    def distinct(self, now_ms: int) -> int:
        items, counts = self.items, self.counts
        horizon = now_ms - self.window_ms
        while items and items[0][0] <= horizon:
            _, key = items.popleft()
            left = counts[key] - 1
            if left:
                counts[key] = left
            else:
                del counts[key]
        return len(counts)


class SumWindow:
    """Sums of a few values over the last ``window_ms``."""

    __slots__ = ("items", "totals", "window_ms")

    def __init__(self, window_ms: int, width: int) -> None:
        self.window_ms = window_ms
        self.items: deque[tuple[int, tuple[int, ...]]] = deque()
        self.totals = [0] * width

    def add(self, ts_ms: int, values: tuple[int, ...]) -> None:
        self.items.append((ts_ms, values))
        for i, value in enumerate(values):
            self.totals[i] += value

    def sums(self, now_ms: int) -> list[int]:
        items, totals = self.items, self.totals
        horizon = now_ms - self.window_ms
        while items and items[0][0] <= horizon:
            _, values = items.popleft()
            for i, value in enumerate(values):
                totals[i] -= value
        return totals


class NetworkState:
    """The last hour of messages sent from one network address: who sent them, and to whom."""

    __slots__ = ("contacts", "senders")

    def __init__(self) -> None:
        self.senders = DistinctWindow(_HOUR_MS)
        self.contacts = SumWindow(_HOUR_MS, 2)  # contact status known, to a non-contact


class AccountState:
    """Everything the naive detector remembers about one account."""

    __slots__ = (
        "active_hours",
        "business_recipients_24h",
        "contacts_1h",
        "created_ms",
        "feedback_24h",
        "gaps_ms",
        "groups_created_1h",
        "last_message_ms",
        "members_added_1h",
        "msgs_1h",
        "msgs_1m",
        "msgs_15m",
        "msgs_15s",
        "recipients_1h",
        "recipients_24h",
    )

    def __init__(self) -> None:
        self.created_ms: int | None = None
        self.msgs_15s = Window(15_000)
        self.msgs_1m = Window(_MINUTE_MS)
        self.msgs_15m = Window(15 * _MINUTE_MS)
        self.msgs_1h = Window(_HOUR_MS)
        self.recipients_1h = DistinctWindow(_HOUR_MS)
        self.recipients_24h = DistinctWindow(_DAY_MS)
        self.business_recipients_24h = DistinctWindow(_DAY_MS)
        # contact known, to a non-contact, typing known, sent without typing
        self.contacts_1h = SumWindow(_HOUR_MS, 4)
        self.feedback_24h = SumWindow(_DAY_MS, 2)  # reports, blocks received
        self.groups_created_1h = Window(_HOUR_MS)
        self.members_added_1h = SumWindow(_HOUR_MS, 1)
        self.gaps_ms: deque[int] = deque(maxlen=GAPS_KEPT)
        self.last_message_ms: int | None = None
        self.active_hours: deque[int] = deque()  # distinct clock hours with messages, ascending


@dataclass
class Cluster:
    """A near-duplicate cluster and its last hour of messages."""

    cluster_id: int
    first_seen_ms: int
    last_seen_ms: int
    messages: deque[tuple[int, str, str, int, int]] = field(default_factory=deque)
    senders: Counter[str] = field(default_factory=Counter)
    recipients: Counter[str] = field(default_factory=Counter)
    contact_known: int = 0
    non_contact: int = 0

    def add(self, ts_ms: int, sender: str, recipient: str, known: int, non_contact: int) -> None:
        self.trim(ts_ms)
        self.messages.append((ts_ms, sender, recipient, known, non_contact))
        self.senders[sender] += 1
        self.recipients[recipient] += 1
        self.contact_known += known
        self.non_contact += non_contact
        self.last_seen_ms = ts_ms

    def trim(self, now_ms: int) -> None:
        horizon = now_ms - CLUSTER_WINDOW_MS
        while self.messages and self.messages[0][0] <= horizon:
            _, sender, recipient, known, non_contact = self.messages.popleft()
            _decrement(self.senders, sender)
            _decrement(self.recipients, recipient)
            self.contact_known -= known
            self.non_contact -= non_contact


def _decrement(counter: Counter[str], key: str) -> None:
    left = counter[key] - 1
    if left:
        counter[key] = left
    else:
        del counter[key]


class NaiveDetector:
    """Feed raw JSON records with :meth:`process`; it returns ban signals as dicts (the signal
    contract's fields, with empty evidence). Events must arrive in event-time order per account."""

    def __init__(self, policy: Policy) -> None:
        if policy.allowlist or policy.account_tiers:
            raise ValueError("the naive baseline supports no allowlist or per-account tier file")
        self.policy = policy
        self.accounts: dict[str, AccountState] = {}
        self.networks: dict[str, NetworkState] = {}
        self.clusters: dict[int, Cluster] = {}
        self.lsh = MinHashLSH(threshold=LSH_THRESHOLD, num_perm=NUM_PERM)
        self._template = MinHash(num_perm=NUM_PERM)
        self._next_cluster = 0
        self._last_signal: dict[str, tuple[int, int]] = {}
        self._events_since_sweep = 0
        self.events = 0
        self.invalid = 0
        self._enforced = [
            (code, settings.params, settings.weight)
            for code, settings in policy.rules.items()
            if settings.mode == "enforce"
        ]
        self._review, self._throttle, self._ban = policy.action_scores
        self._business_cap = int(policy.business_max_volume_action)
        self._tier_limit = (
            policy.tier_limits[policy.default_tier]
            if policy.default_tier < len(policy.tier_limits)
            else math.inf
        )
        self._cooldown_ms = policy.cooldown_s * 1000.0

    # ------------------------------------------------------------------------------ the loop

    def process(self, records: Iterable[bytes]) -> list[dict[str, Any]]:
        signals: list[dict[str, Any]] = []
        for raw in records:
            try:
                event = json.loads(raw)
                kind, ts, account = event["type"], event["ts"], event["account"]
            except (ValueError, KeyError, TypeError):
                self.invalid += 1
                continue
            signal = self.process_event(kind, int(ts), account, event)
            if signal is not None:
                signals.append(signal)
        return signals

    def process_event(
        self, kind: str, ts: int, account: str, event: dict[str, Any]
    ) -> dict[str, Any] | None:
        """Update the state with one event and decide about its subject."""
        self.events += 1
        self._events_since_sweep += 1
        if self._events_since_sweep >= 50_000:
            self._expire_clusters(ts)
        peer = event.get("peer")
        cluster: Cluster | None = None
        copies = 0
        network: tuple[int, int, int] | None = None
        if kind == "message":
            subject = account
            state = self._state(account)
            self._message(state, ts, peer, event)
            known, non_contact = _contact_bits(event.get("in_contacts"))
            text = event.get("text")
            if text:
                cluster = self._cluster_of(text, ts)
                if cluster is not None:
                    cluster.add(ts, account, peer, known, non_contact)
                    copies = cluster.senders[account]
            ip = event.get("ip")
            if ip:
                network = self._network(ip, ts, account, known, non_contact)
        elif kind in ("report", "block"):
            if not peer:
                self.invalid += 1
                return None
            subject = peer
            state = self._state(peer)
            state.feedback_24h.add(ts, (1, 0) if kind == "report" else (0, 1))
        else:
            subject = account
            state = self._state(account)
            if kind == "registration":
                state.created_ms = ts
            elif kind == "group_create":
                state.groups_created_1h.add(ts)
            elif kind == "group_add":
                state.members_added_1h.add(ts, (int(event.get("members") or 1),))
        business_event = kind == "message" and bool(event.get("business"))
        return self._decide(
            subject, state, ts, kind == "message", business_event, cluster, copies, network
        )

    def _network(
        self, ip: str, ts: int, sender: str, known: int, non_contact: int
    ) -> tuple[int, int, int]:
        """(distinct senders, contact-known messages, of those to non-contacts) from ``ip``."""
        network = self.networks.get(ip)
        if network is None:
            network = self.networks[ip] = NetworkState()
        network.senders.add(ts, sender)
        network.contacts.add(ts, (known, non_contact))
        network_known, network_non_contact = network.contacts.sums(ts)
        return network.senders.distinct(ts), network_known, network_non_contact

    def _state(self, account: str) -> AccountState:
        state = self.accounts.get(account)
        if state is None:
            state = self.accounts[account] = AccountState()
        return state

    def _message(self, state: AccountState, ts: int, peer: str, event: dict[str, Any]) -> None:
        for window in (state.msgs_15s, state.msgs_1m, state.msgs_15m, state.msgs_1h):
            window.add(ts)
        state.recipients_1h.add(ts, peer)
        state.recipients_24h.add(ts, peer)
        if event.get("business"):
            state.business_recipients_24h.add(ts, peer)
        known, non_contact = _contact_bits(event.get("in_contacts"))
        typing = event.get("typing")
        typing_known = 0 if typing is None else 1
        no_typing = 1 if typing is False else 0
        state.contacts_1h.add(ts, (known, non_contact, typing_known, no_typing))
        if state.created_ms is None and event.get("account_created") is not None:
            state.created_ms = int(event["account_created"])
        if state.last_message_ms is not None:
            state.gaps_ms.append(ts - state.last_message_ms)
        state.last_message_ms = ts
        hour = ts // _HOUR_MS
        if not state.active_hours or state.active_hours[-1] != hour:
            state.active_hours.append(hour)

    # ------------------------------------------------------------------------------ content

    def _cluster_of(self, text: str, ts: int) -> Cluster | None:
        grams = shingles(text)
        if not grams:
            return None
        signature = MinHash(
            num_perm=NUM_PERM,
            permutations=self._template.permutations,
            scheme=self._template.scheme,
        )
        signature.update_batch(grams)
        candidates = [self.clusters[c] for c in self.lsh.query(signature) if c in self.clusters]
        if candidates:
            return min(candidates, key=lambda c: c.cluster_id)  # the oldest cluster wins
        cluster_id = self._next_cluster
        self._next_cluster += 1
        cluster = Cluster(cluster_id, ts, ts)
        self.clusters[cluster_id] = cluster
        self.lsh.insert(cluster_id, signature)
        return cluster

    def _expire_clusters(self, now_ms: int) -> None:
        self._events_since_sweep = 0
        for cluster_id in [
            c.cluster_id for c in self.clusters.values() if now_ms - c.last_seen_ms > CLUSTER_TTL_MS
        ]:
            del self.clusters[cluster_id]
            self.lsh.remove(cluster_id)

    # ------------------------------------------------------------------------------ decision

    def _features(self, state: AccountState, ts: int) -> dict[str, float]:
        known, non_contact, typing_known, no_typing = state.contacts_1h.sums(ts)
        reports, blocks = state.feedback_24h.sums(ts)
        gaps = list(state.gaps_ms)
        if len(gaps) >= 2:
            mean = sum(gaps) / len(gaps)
            variance = sum((g - mean) ** 2 for g in gaps) / len(gaps)
            gap_cv = math.sqrt(variance) / mean if mean > 0 else 0.0
        else:
            gap_cv = math.nan
        current_hour = ts // _HOUR_MS
        while state.active_hours and state.active_hours[0] <= current_hour - 24:
            state.active_hours.popleft()
        non_contact_share = non_contact / known if known else math.nan
        return {
            "age_s": (ts - state.created_ms) / 1000.0 if state.created_ms is not None else math.nan,
            "msgs_15s": state.msgs_15s.count(ts),
            "msgs_1m": state.msgs_1m.count(ts),
            "msgs_15m": state.msgs_15m.count(ts),
            "msgs_1h": state.msgs_1h.count(ts),
            "recipients_1h": state.recipients_1h.distinct(ts),
            "recipients_24h": state.recipients_24h.distinct(ts),
            "business_recipients_24h": state.business_recipients_24h.distinct(ts),
            "contact_known_1h": known,
            "non_contact_share": non_contact_share,
            "contact_share": 1.0 - non_contact_share,
            "typing_known_1h": typing_known,
            "no_typing_share": no_typing / typing_known if typing_known else math.nan,
            "reports_blocks_24h": reports + blocks,
            "gap_count": len(gaps),
            "gap_cv": gap_cv,
            "active_hours_24h": len(state.active_hours),
            "groups_created_1h": state.groups_created_1h.count(ts),
            "members_added_1h": state.members_added_1h.sums(ts)[0],
        }

    def _decide(
        self,
        subject: str,
        state: AccountState,
        ts: int,
        is_message: bool,
        business_event: bool,
        cluster: Cluster | None,
        copies: int,
        network: tuple[int, int, int] | None,
    ) -> dict[str, Any] | None:
        f = self._features(state, ts)
        is_business = business_event or f["business_recipients_24h"] > 0
        reasons: list[str] = []
        score = 0.0
        business_message = is_business and is_message
        for code, p, weight in self._enforced:
            if is_business and code in _BUSINESS_EXEMPT:
                continue
            strength = _strength(
                code, p, f, cluster, copies, network, business_message, self._tier_limit
            )
            if strength > 0:
                reasons.append(code)
                score += strength * weight
        if score < self._review:
            return None
        action = 3 if score >= self._ban else 2 if score >= self._throttle else 1
        if is_business and not _NON_VOLUME_REASONS.intersection(reasons):
            action = min(action, self._business_cap)
        last = self._last_signal.get(subject)
        if last is not None:
            last_action, last_ts = last
            escalates = action > last_action
            cooled = action == last_action and ts - last_ts >= self._cooldown_ms
            if not (escalates or cooled):
                return None
        self._last_signal[subject] = (action, ts)
        name = _ACTIONS[action]
        version = self.policy.version
        return {
            "signal_id": signal_id(version, subject, name, ts, False),
            "account": subject,
            "action": name,
            "reasons": reasons,
            "score": round(score, 4),
            "ts": ts,
            "emitted_at": 0,
            "policy_version": version,
            "shadow": False,
            "evidence": {},
        }


def _contact_bits(in_contacts: bool | None) -> tuple[int, int]:
    """(contact status known, sent to a non-contact) of one message."""
    if in_contacts is None:
        return 0, 0
    return 1, 0 if in_contacts else 1


def _not_mostly_contacts(f: dict[str, float], max_contact_share: float) -> bool:
    return not f["contact_share"] > max_contact_share  # unknown (NaN) is not "mostly contacts"


def _strength(
    code: str,
    p: Any,
    f: dict[str, float],
    cluster: Cluster | None,
    copies: int,
    network: tuple[int, int, int] | None,
    business_message: bool,
    tier_limit: float,
) -> float:
    """The share of a rule's weight one event earns (the conditions of docs/policy.md)."""
    if code == "AUTOMATED_TIMING":
        regular = f["gap_count"] >= p["min_gaps"] and f["gap_cv"] <= p["max_gap_cv"]
        machine_like = not f["no_typing_share"] < p["min_no_typing_share"]
        if (regular and machine_like and _not_mostly_contacts(f, p["max_contact_share"])) or f[
            "active_hours_24h"
        ] >= p["min_active_hours_24h"]:
            return 1.0
        scripted = (
            f["typing_known_1h"] >= p["min_scripted_msgs"]
            and f["no_typing_share"] >= p["min_scripted_no_typing_share"]
            and f["contact_known_1h"] >= p["min_scripted_msgs"]
            and _not_mostly_contacts(f, p["max_contact_share"])
        )
        return p["scripted_strength"] if scripted else 0.0
    if code == "COORDINATED_CAMPAIGN":
        return float(
            _campaign_by_content(p, f, cluster, copies) or _campaign_by_network(p, f, network)
        )
    return float(_fires(code, p, f, cluster, copies, business_message, tier_limit))


def _campaign_by_content(p: Any, f: dict[str, float], cluster: Cluster | None, copies: int) -> bool:
    if cluster is None or cluster.contact_known == 0:
        return False
    return (
        len(cluster.senders) >= p["min_senders"]
        and cluster.contact_known >= p["min_cluster_known"]
        and cluster.non_contact / cluster.contact_known >= p["min_non_contact_share"]
        and copies >= p["min_copies"]
        and _not_mostly_contacts(f, p["max_contact_share"])
    )


def _campaign_by_network(p: Any, f: dict[str, float], network: tuple[int, int, int] | None) -> bool:
    """Many accounts sending from one address, mostly to non-contacts, this one included."""
    if network is None:
        return False
    senders, known, non_contact = network
    return (
        senders >= p["min_senders"]
        and known >= p["min_cluster_known"]
        and non_contact / known >= p["min_non_contact_share"]
        and f["contact_known_1h"] >= p["min_copies"]
        and f["non_contact_share"] >= p["min_non_contact_share"]
    )


def _fires(
    code: str,
    p: Any,
    f: dict[str, float],
    cluster: Cluster | None,
    copies: int,
    business_message: bool,
    tier_limit: float,
) -> bool:
    """The all-or-nothing rules."""
    if code == "NEW_ACCOUNT_BURST":
        return (
            f["age_s"] <= p["max_age_s"]
            and (f["msgs_15s"] >= p["min_msgs_15s"] or f["msgs_1m"] >= p["min_msgs_1m"])
            and _not_mostly_contacts(f, p["max_contact_share"])
        )
    if code == "HIGH_RATE":
        return (
            f["msgs_1m"] >= p["min_msgs_1m"]
            or f["msgs_15m"] >= p["min_msgs_15m"]
            or f["msgs_1h"] >= p["min_msgs_1h"]
        )
    if code == "NON_CONTACT_FANOUT":
        return (
            f["recipients_1h"] >= p["min_recipients_1h"]
            and f["contact_known_1h"] >= p["min_known"]
            and f["non_contact_share"] >= p["min_non_contact_share"]
        )
    if code == "BULK_DUPLICATE":
        return (
            cluster is not None
            and copies >= p["min_copies"]
            and len(cluster.recipients) >= p["min_cluster_recipients"]
            and _not_mostly_contacts(f, p["max_contact_share"])
        )
    if code == "GROUP_SPAM":
        return (
            f["groups_created_1h"] >= p["min_groups_created_1h"]
            or f["members_added_1h"] >= p["min_members_added_1h"]
        )
    if code == "NEGATIVE_FEEDBACK":
        reports_blocks = f["reports_blocks_24h"]
        ratio = reports_blocks / max(f["recipients_24h"], 1)
        return reports_blocks >= p["min_reports_blocks_24h"] and ratio >= p["min_ratio"]
    if code == "BUSINESS_TIER_EXCEEDED":
        return business_message and f["business_recipients_24h"] > tier_limit
    raise ValueError(f"unknown rule {code}")
