"""The detection policy: rules over kernel features, scores, graduated actions and ban signals.

Rules are evaluated vectorised over a batch (one boolean column per rule). A rule that fires adds its
weight to the score of the event's subject (the sender, or the reported/blocked account), and the score
maps to an action: review < throttle < ban. Enforced rules decide the enforced action; shadow rules are
added on top to compute a shadow action, emitted as ``shadow: true`` signals only when it goes beyond
the enforced one. :class:`SignalGate` turns per-event actions into signals without floods: a signal
when an account first reaches an action, again only when it escalates or after a cooldown.
"""

from __future__ import annotations

import csv
import enum
import hashlib
import math
import time
import tomllib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
import numpy as np

from detector.events import EventBatch, EventType, Flag, account_id


class PolicyError(ValueError):
    """The policy file is invalid; the message names the key and the problem."""


class Action(enum.IntEnum):
    NONE = 0
    REVIEW = 1
    THROTTLE = 2
    BAN = 3


ACTION_NAMES = {Action.REVIEW: "review", Action.THROTTLE: "throttle", Action.BAN: "ban"}
_ACTION_BY_NAME = {name: action for action, name in ACTION_NAMES.items()}
MODES = ("enforce", "shadow", "off")


class BanSignal(msgspec.Struct, omit_defaults=False):
    """One decision about one account; the JSON form is the signal contract (docs/signals.md)."""

    signal_id: str
    account: str
    action: str
    reasons: list[str]
    score: float
    ts: int
    emitted_at: int
    policy_version: str
    shadow: bool
    evidence: dict[str, Any]


_signal_encoder = msgspec.json.Encoder()


def encode_signal(signal: BanSignal) -> bytes:
    """The JSON bytes of a signal."""
    return _signal_encoder.encode(signal)


# --------------------------------------------------------------------------------------------------
# Rule inputs: the features of one batch, with derived shares


class RuleInputs:
    """Feature columns of a batch as the rules see them (account features, content, derived shares).

    Shares are computed among known values only and are NaN where nothing is known, so a comparison
    like ``share > x`` is False for unknown and ``~(share > x)`` ("not mostly contacts") is True.
    """

    def __init__(
        self, batch: EventBatch, accounts: Any, content: Any | None, network: Any | None = None
    ) -> None:
        self.batch = batch
        self.accounts = accounts
        self.content = content
        self.network = network
        self.is_message = batch.type == EventType.MESSAGE
        self.has_cluster = (
            content.cluster_id >= 0 if content is not None else np.zeros(len(batch), dtype=bool)
        )
        self.is_business = ((batch.flags & Flag.BUSINESS) != 0) | (
            accounts.business_recipients_24h > 0
        )
        with np.errstate(divide="ignore", invalid="ignore"):
            known = accounts.contact_known_1h.astype(np.float64)
            self.non_contact_share = np.where(known > 0, accounts.non_contact_1h / known, np.nan)
            self.contact_share = 1.0 - self.non_contact_share
            typing_known = accounts.typing_known_1h.astype(np.float64)
            self.no_typing_share = np.where(
                typing_known > 0, accounts.no_typing_1h / typing_known, np.nan
            )
            self.reports_blocks_24h = accounts.reports_24h.astype(np.int64) + accounts.blocks_24h
            self.feedback_ratio = self.reports_blocks_24h / np.maximum(
                accounts.recipients_24h.astype(np.float64), 1.0
            )
            if content is not None:
                cluster_known = content.cluster_contact_known.astype(np.float64)
                self.cluster_non_contact_share = np.where(
                    cluster_known > 0, content.cluster_non_contact / cluster_known, np.nan
                )
            if network is not None:
                network_known = network.network_contact_known_1h.astype(np.float64)
                self.network_non_contact_share = np.where(
                    network_known > 0, network.network_non_contact_1h / network_known, np.nan
                )

    def feature(self, name: str) -> np.ndarray | None:
        """The column called ``name``, or None when its stage did not run (no content, no network)."""
        for source in (self, self.accounts, self.network, self.content):
            if source is not None and hasattr(source, name):
                return getattr(source, name)
        return None


# --------------------------------------------------------------------------------------------------
# Rules


@dataclass(frozen=True)
class Rule:
    """A reason code with its condition, the thresholds it reads and the features it reports."""

    code: str
    thresholds: tuple[str, ...]
    features: tuple[str, ...]
    condition: Callable[[RuleInputs, Mapping[str, float]], np.ndarray]
    needs_content: bool = False
    exempt_business: bool = True

    def strength(self, inputs: RuleInputs, params: Mapping[str, float]) -> np.ndarray:
        """Per event, the share of the rule's weight it earns: 0 (silent) to 1 (fully fired).

        Most rules are all-or-nothing; a rule with a weaker clause returns a fraction for it.
        """
        if self.needs_content and inputs.content is None:
            return np.zeros(len(inputs.batch))
        strength = np.asarray(self.condition(inputs, params), dtype=np.float64)
        if self.exempt_business:
            strength[inputs.is_business] = 0.0
        return strength


def _not_mostly_contacts(x: RuleInputs, max_contact_share: float) -> np.ndarray:
    return ~(x.contact_share > max_contact_share)


def _new_account_burst(x: RuleInputs, p: Mapping[str, float]) -> np.ndarray:
    a = x.accounts
    young = a.age_s <= p["max_age_s"]  # NaN (unknown age) is never young
    burst = (a.msgs_15s >= p["min_msgs_15s"]) | (a.msgs_1m >= p["min_msgs_1m"])
    return young & burst & _not_mostly_contacts(x, p["max_contact_share"])


def _high_rate(x: RuleInputs, p: Mapping[str, float]) -> np.ndarray:
    a = x.accounts
    return (
        (a.msgs_1m >= p["min_msgs_1m"])
        | (a.msgs_15m >= p["min_msgs_15m"])
        | (a.msgs_1h >= p["min_msgs_1h"])
    )


def _non_contact_fanout(x: RuleInputs, p: Mapping[str, float]) -> np.ndarray:
    a = x.accounts
    return (
        (a.recipients_1h >= p["min_recipients_1h"])
        & (a.contact_known_1h >= p["min_known"])
        & (x.non_contact_share >= p["min_non_contact_share"])
    )


def _bulk_duplicate(x: RuleInputs, p: Mapping[str, float]) -> np.ndarray:
    c = x.content
    return (
        x.has_cluster
        & (c.account_copies >= p["min_copies"])
        & (c.cluster_recipients >= p["min_cluster_recipients"])
        & _not_mostly_contacts(x, p["max_contact_share"])
    )


def _coordinated_campaign(x: RuleInputs, p: Mapping[str, float]) -> np.ndarray:
    """Many senders, one content cluster or one network address, mostly to non-contacts."""
    fired = np.zeros(len(x.batch), dtype=bool)
    if x.content is not None:
        c = x.content
        fired |= (
            x.has_cluster
            & (c.cluster_senders >= p["min_senders"])
            & (c.cluster_contact_known >= p["min_cluster_known"])
            & (x.cluster_non_contact_share >= p["min_non_contact_share"])
            & (c.account_copies >= p["min_copies"])
            & _not_mostly_contacts(x, p["max_contact_share"])
        )
    if x.network is not None:
        # Without text, the shared address ties the accounts; the account's own known recipients
        # must then be mostly non-contacts too (a carrier NAT also carries legitimate users).
        n = x.network
        fired |= (
            (n.network_senders_1h >= p["min_senders"])
            & (n.network_contact_known_1h >= p["min_cluster_known"])
            & (x.network_non_contact_share >= p["min_non_contact_share"])
            & (x.accounts.contact_known_1h >= p["min_copies"])
            & (x.non_contact_share >= p["min_non_contact_share"])
        )
    return fired


def _automated_timing(x: RuleInputs, p: Mapping[str, float]) -> np.ndarray:
    a = x.accounts
    regular = (a.gap_count >= p["min_gaps"]) & (a.gap_cv <= p["max_gap_cv"])
    machine_like = ~(x.no_typing_share < p["min_no_typing_share"]) & _not_mostly_contacts(
        x, p["max_contact_share"]
    )
    tireless = a.active_hours_24h >= p["min_active_hours_24h"]
    # The weaker clause: message after message to strangers and never a typing indicator.
    scripted = (
        (a.typing_known_1h >= p["min_scripted_msgs"])
        & (x.no_typing_share >= p["min_scripted_no_typing_share"])
        & (a.contact_known_1h >= p["min_scripted_msgs"])
        & ~(x.contact_share > p["max_contact_share"])
    )
    strong = (regular & machine_like) | tireless
    return np.where(strong, 1.0, np.where(scripted, p["scripted_strength"], 0.0))


def _group_spam(x: RuleInputs, p: Mapping[str, float]) -> np.ndarray:
    a = x.accounts
    return (a.groups_created_1h >= p["min_groups_created_1h"]) | (
        a.members_added_1h >= p["min_members_added_1h"]
    )


def _negative_feedback(x: RuleInputs, p: Mapping[str, float]) -> np.ndarray:
    return (x.reports_blocks_24h >= p["min_reports_blocks_24h"]) & (
        x.feedback_ratio >= p["min_ratio"]
    )


def _business_tier_exceeded(x: RuleInputs, p: Mapping[str, float]) -> np.ndarray:
    # The tier limit per event is resolved by the policy (it needs the tier table) into p["limits"].
    limits = p["limits"]
    return x.is_business & x.is_message & (x.accounts.business_recipients_24h > limits)


RULES: tuple[Rule, ...] = (
    Rule(
        "NEW_ACCOUNT_BURST",
        ("max_age_s", "min_msgs_15s", "min_msgs_1m", "max_contact_share"),
        ("age_s", "msgs_15s", "msgs_1m", "contact_share"),
        _new_account_burst,
    ),
    Rule(
        "HIGH_RATE",
        ("min_msgs_1m", "min_msgs_15m", "min_msgs_1h"),
        ("msgs_1m", "msgs_15m", "msgs_1h"),
        _high_rate,
    ),
    Rule(
        "NON_CONTACT_FANOUT",
        ("min_recipients_1h", "min_known", "min_non_contact_share"),
        ("recipients_1h", "contact_known_1h", "non_contact_share"),
        _non_contact_fanout,
    ),
    Rule(
        "BULK_DUPLICATE",
        ("min_copies", "min_cluster_recipients", "max_contact_share"),
        ("account_copies", "cluster_recipients", "contact_share"),
        _bulk_duplicate,
        needs_content=True,
    ),
    Rule(
        "COORDINATED_CAMPAIGN",
        (
            "min_senders",
            "min_cluster_known",
            "min_non_contact_share",
            "min_copies",
            "max_contact_share",
        ),
        (
            "cluster_senders",
            "cluster_contact_known",
            "cluster_non_contact_share",
            "account_copies",
            "network_senders_1h",
            "network_non_contact_share",
            "contact_share",
        ),
        _coordinated_campaign,
    ),
    Rule(
        "AUTOMATED_TIMING",
        (
            "max_gap_cv",
            "min_gaps",
            "max_contact_share",
            "min_no_typing_share",
            "min_active_hours_24h",
            "min_scripted_msgs",
            "min_scripted_no_typing_share",
            "scripted_strength",
        ),
        (
            "gap_cv",
            "gap_count",
            "gap_mean_s",
            "contact_share",
            "no_typing_share",
            "active_hours_24h",
        ),
        _automated_timing,
    ),
    Rule(
        "GROUP_SPAM",
        ("min_groups_created_1h", "min_members_added_1h"),
        ("groups_created_1h", "members_added_1h"),
        _group_spam,
        exempt_business=False,
    ),
    Rule(
        "NEGATIVE_FEEDBACK",
        ("min_reports_blocks_24h", "min_ratio"),
        ("reports_24h", "blocks_24h", "recipients_24h", "feedback_ratio"),
        _negative_feedback,
        exempt_business=False,
    ),
    Rule(
        "BUSINESS_TIER_EXCEEDED",
        (),
        ("business_recipients_24h",),
        _business_tier_exceeded,
        exempt_business=False,
    ),
)
REASON_CODES: tuple[str, ...] = tuple(rule.code for rule in RULES)
_RULE_BY_CODE = {rule.code: rule for rule in RULES}

#: The window behind each windowed feature, reported in evidence.
FEATURE_WINDOWS = {
    "msgs_15s": "15s",
    "msgs_1m": "1m",
    "msgs_15m": "15m",
    "msgs_1h": "1h",
    "recipients_1h": "1h",
    "contact_known_1h": "1h",
    "non_contact_share": "1h",
    "contact_share": "1h",
    "no_typing_share": "1h",
    "groups_created_1h": "1h",
    "members_added_1h": "1h",
    "reports_24h": "24h",
    "blocks_24h": "24h",
    "recipients_24h": "24h",
    "feedback_ratio": "24h",
    "active_hours_24h": "24h",
    "business_recipients_24h": "24h",
    "gap_cv": "last gaps",
    "network_senders_1h": "1h",
    "network_non_contact_share": "1h",
}


# --------------------------------------------------------------------------------------------------
# The policy file


@dataclass(frozen=True)
class RuleSettings:
    mode: str
    weight: float
    params: Mapping[str, float]


@dataclass(frozen=True)
class Policy:
    """A validated policy: thresholds, weights, modes, action levels, allowlist and business tiers."""

    version: str
    rules: Mapping[str, RuleSettings]
    action_scores: tuple[float, float, float]  # review, throttle, ban
    cooldown_s: float
    exemplar_text: bool
    exemplar_chars: int
    allowlist: frozenset[int]
    allowlist_max_action: Action
    tier_limits: tuple[float, ...]  # per tier; the tier after the last limit is unlimited
    default_tier: int
    account_tiers: Mapping[int, int] = field(default_factory=dict)
    business_max_volume_action: Action = Action.THROTTLE
    source: str = "<default>"

    def mode(self, code: str) -> str:
        return self.rules[code].mode


def default_policy_path() -> Path:
    return Path(str(resources.files("detector") / "default_policy.toml"))


def load_policy(path: str | Path | None = None) -> Policy:
    """Load and validate a policy file (the packaged default when ``path`` is None)."""
    policy_path = Path(path) if path is not None else default_policy_path()
    try:
        document = tomllib.loads(policy_path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PolicyError(f"policy {policy_path}: cannot read: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"policy {policy_path}: invalid TOML: {exc}") from exc
    try:
        return _parse_policy(document, policy_path)
    except PolicyError as exc:
        raise PolicyError(f"policy {policy_path}: {exc}") from None


def _parse_policy(doc: Mapping[str, Any], path: Path) -> Policy:
    known_sections = {"version", "actions", "signals", "allowlist", "business", "rules"}
    for key in doc:
        if key not in known_sections:
            raise PolicyError(f"unknown key {key!r}")
    version = doc.get("version")
    if not isinstance(version, str) or not version:
        raise PolicyError("version: required, a non-empty string")
    actions = _table(doc, "actions")
    scores = tuple(_number(actions, "actions", name, minimum=0.0) for name in _ACTION_BY_NAME)
    if not scores[0] < scores[1] < scores[2]:
        raise PolicyError("actions: scores must rise strictly: review < throttle < ban")
    signals = _table(doc, "signals")
    allow = _table(doc, "allowlist")
    business = _table(doc, "business")
    rules_doc = _table(doc, "rules")
    for code in rules_doc:
        if code not in _RULE_BY_CODE:
            raise PolicyError(f"rules.{code}: unknown rule; known: {', '.join(REASON_CODES)}")
    rules: dict[str, RuleSettings] = {}
    for rule in RULES:
        key = f"rules.{rule.code}"
        table = rules_doc.get(rule.code)
        if not isinstance(table, Mapping):
            raise PolicyError(f"{key}: required table is missing")
        mode = table.get("mode", "enforce")
        if mode not in MODES:
            raise PolicyError(f"{key}.mode: must be one of {', '.join(MODES)}, got {mode!r}")
        for name in table:
            if name not in ("mode", "weight", *rule.thresholds):
                raise PolicyError(f"{key}.{name}: unknown threshold")
        params = {name: _number(table, key, name, minimum=0.0) for name in rule.thresholds}
        weight = _number(table, key, "weight", minimum=0.0)
        rules[rule.code] = RuleSettings(mode, weight, params)
    limits = business.get("tier_limits")
    if (
        not isinstance(limits, list)
        or not limits
        or not all(isinstance(v, int) and v > 0 for v in limits)
        or limits != sorted(limits)
    ):
        raise PolicyError("business.tier_limits: a rising list of positive integers is required")
    n_tiers = len(limits) + 1
    default_tier = business.get("default_tier", 0)
    if not isinstance(default_tier, int) or not 0 <= default_tier < n_tiers:
        raise PolicyError(f"business.default_tier: must be an integer 0..{n_tiers - 1}")
    return Policy(
        version=version,
        rules=rules,
        action_scores=scores,  # type: ignore[arg-type]
        cooldown_s=_number(signals, "signals", "cooldown_s", minimum=0.0),
        exemplar_text=_bool(signals, "signals", "exemplar_text"),
        exemplar_chars=int(_number(signals, "signals", "exemplar_chars", minimum=0.0)),
        allowlist=_read_allowlist(allow, path),
        allowlist_max_action=_action(allow, "allowlist", "max_action"),
        tier_limits=tuple(float(v) for v in limits),
        default_tier=default_tier,
        account_tiers=_read_tiers(business, path, n_tiers),
        business_max_volume_action=_action(business, "business", "max_volume_action"),
        source=str(path),
    )


def _table(doc: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = doc.get(key)
    if not isinstance(value, Mapping):
        raise PolicyError(f"{key}: required table is missing")
    return value


def _number(table: Mapping[str, Any], key: str, name: str, *, minimum: float) -> float:
    if name not in table:
        raise PolicyError(f"{key}.{name}: required")
    value = table[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise PolicyError(f"{key}.{name}: must be a number, got {value!r}")
    if value < minimum:
        raise PolicyError(f"{key}.{name}: must be >= {minimum}, got {value!r}")
    return float(value)


def _bool(table: Mapping[str, Any], key: str, name: str) -> bool:
    value = table.get(name)
    if not isinstance(value, bool):
        raise PolicyError(f"{key}.{name}: must be true or false, got {value!r}")
    return value


def _action(table: Mapping[str, Any], key: str, name: str) -> Action:
    value = table.get(name)
    if value not in _ACTION_BY_NAME:
        raise PolicyError(f"{key}.{name}: must be one of review, throttle, ban; got {value!r}")
    return _ACTION_BY_NAME[value]


def _resolve(base: Path, value: Any, key: str) -> Path | None:
    if not isinstance(value, str):
        raise PolicyError(f"{key}: must be a path string")
    if not value:
        return None
    candidate = Path(value)
    candidate = candidate if candidate.is_absolute() else base.parent / candidate
    if not candidate.is_file():
        raise PolicyError(f"{key}: no such file {str(candidate)!r}")
    return candidate


def _read_allowlist(table: Mapping[str, Any], path: Path) -> frozenset[int]:
    file = _resolve(path, table.get("file", ""), "allowlist.file")
    if file is None:
        return frozenset()
    lines = file.read_text(encoding="utf-8").splitlines()
    return frozenset(account_id(line.strip()) for line in lines if line.strip())


def _read_tiers(table: Mapping[str, Any], path: Path, n_tiers: int) -> dict[int, int]:
    file = _resolve(path, table.get("tier_file", ""), "business.tier_file")
    if file is None:
        return {}
    tiers: dict[int, int] = {}
    with file.open(encoding="utf-8", newline="") as handle:
        for line_no, row in enumerate(csv.reader(handle), start=1):
            if not row or row[0].strip() in ("", "account"):
                continue
            if len(row) != 2 or not row[1].strip().isdigit() or not int(row[1]) < n_tiers:
                raise PolicyError(
                    f"business.tier_file line {line_no}: expected `account,tier` with tier "
                    f"0..{n_tiers - 1}"
                )
            tiers[account_id(row[0].strip())] = int(row[1])
    return tiers


# --------------------------------------------------------------------------------------------------
# Evaluation


class Decisions(NamedTuple):
    """Per-event outcome of the rules over one batch."""

    fired: np.ndarray  # bool (n, len(RULES)): rules that fired (enforced or shadow)
    strength: np.ndarray  # float (n, len(RULES)): share of each rule's weight earned
    score: np.ndarray  # float64: enforced score
    action: np.ndarray  # uint8 Action from enforced rules
    shadow_score: np.ndarray  # float64: enforced + shadow rules
    shadow_action: np.ndarray  # uint8 Action from enforced + shadow rules


def evaluate(policy: Policy, inputs: RuleInputs) -> Decisions:
    """Fire every rule that is not off over the batch; score and map to actions."""
    n = len(inputs.batch)
    strength = np.zeros((n, len(RULES)))
    enforce_weights = np.zeros(len(RULES))
    shadow_weights = np.zeros(len(RULES))
    for column, rule in enumerate(RULES):
        settings = policy.rules[rule.code]
        if settings.mode == "off":
            continue
        params: Mapping[str, Any] = settings.params
        if rule.code == "BUSINESS_TIER_EXCEEDED":
            params = {"limits": _tier_limits(policy, inputs)}
        strength[:, column] = rule.strength(inputs, params)
        (enforce_weights if settings.mode == "enforce" else shadow_weights)[column] = (
            settings.weight
        )
    score = strength @ enforce_weights
    shadow_score = score + strength @ shadow_weights
    return Decisions(
        strength > 0,
        strength,
        score,
        _to_action(policy, score),
        shadow_score,
        _to_action(policy, shadow_score),
    )


def _to_action(policy: Policy, score: np.ndarray) -> np.ndarray:
    return np.searchsorted(np.asarray(policy.action_scores), score, side="right").astype(np.uint8)


def _tier_limits(policy: Policy, inputs: RuleInputs) -> np.ndarray:
    limits = np.full(len(inputs.batch), np.inf)
    rows = np.flatnonzero(inputs.is_business & inputs.is_message)
    if rows.size:
        table = (*policy.tier_limits, math.inf)
        tiers = policy.account_tiers
        default = policy.default_tier
        subjects = inputs.batch.account[rows].tolist()
        limits[rows] = [table[tiers.get(s, default)] for s in subjects]
    return limits


# --------------------------------------------------------------------------------------------------
# From decisions to signals


def subjects(batch: EventBatch) -> np.ndarray:
    """The account id each event is about: the peer for reports and blocks, else the sender."""
    about_peer = (batch.type == EventType.REPORT) | (batch.type == EventType.BLOCK)
    return np.where(about_peer, batch.peer, batch.account)


def subject_name(batch: EventBatch, row: int) -> str:
    if batch.type[row] in (EventType.REPORT, EventType.BLOCK):
        return batch.peers[row] or ""
    return batch.accounts[row]


class SignalGate:
    """Remembers the last action signalled per account, so signals escalate instead of flooding.

    Bounded: past ``capacity`` accounts the least recently signalled are forgotten (they may then get
    one more signal at their current level, never a missed escalation).
    """

    def __init__(self, capacity: int = 1_000_000) -> None:
        self.capacity = capacity
        self._last: OrderedDict[tuple[int, bool], tuple[int, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._last)

    def admit(
        self, subject: int, shadow: bool, action: int, ts_ms: int, cooldown_ms: float
    ) -> bool:
        """True when a signal of ``action`` at ``ts_ms`` should go out, and remember it."""
        key = (subject, shadow)
        last = self._last.get(key)
        if last is not None:
            last_action, last_ts = last
            escalates = action > last_action
            cooled = action == last_action and ts_ms - last_ts >= cooldown_ms
            if not (escalates or cooled):
                return False
        self._last[key] = (action, ts_ms)
        self._last.move_to_end(key)
        while len(self._last) > self.capacity:
            self._last.popitem(last=False)
        return True

    def may_admit(
        self,
        subjects: np.ndarray,
        shadow: bool,
        actions: np.ndarray,
        ts_ms: np.ndarray,
        cooldown_ms: float,
    ) -> np.ndarray:
        """False where ``admit`` would certainly refuse, whatever is admitted before in the batch.

        A subject's remembered action never falls and its time never goes back, so a row below it,
        or at it within the cooldown of the time remembered now, stays refused: only the other rows
        need the exact, sequential ``admit``. One lookup per distinct subject, not per row.
        """
        unique, inverse = np.unique(subjects, return_inverse=True)
        last_action = np.zeros(unique.size, dtype=np.int64)
        last_ts = np.full(unique.size, np.iinfo(np.int64).min // 2, dtype=np.int64)
        for i, subject in enumerate(unique.tolist()):
            last = self._last.get((subject, shadow))
            if last is not None:
                last_action[i], last_ts[i] = last
        level, since = last_action[inverse], last_ts[inverse]
        return (actions > level) | ((actions == level) & (ts_ms - since >= cooldown_ms))

    def to_arrays(self) -> dict[str, np.ndarray]:
        keys = list(self._last)
        values = list(self._last.values())
        return {
            "subject": np.array([k[0] for k in keys], dtype=np.uint64),
            "shadow": np.array([k[1] for k in keys], dtype=bool),
            "action": np.array([v[0] for v in values], dtype=np.uint8),
            "ts_ms": np.array([v[1] for v in values], dtype=np.int64),
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], capacity: int) -> SignalGate:
        gate = cls(capacity)
        for subject, shadow, action, ts_ms in zip(
            arrays["subject"].tolist(),
            arrays["shadow"].tolist(),
            arrays["action"].tolist(),
            arrays["ts_ms"].tolist(),
            strict=True,
        ):
            gate._last[(subject, shadow)] = (action, ts_ms)
        return gate


def make_signals(
    policy: Policy,
    inputs: RuleInputs,
    decisions: Decisions,
    gate: SignalGate,
    *,
    exemplar: Callable[[int], str | None] | None = None,
    now_ms: int | None = None,
) -> list[BanSignal]:
    """Signals for the events whose (capped) action passes the gate, in event order."""
    batch = inputs.batch
    flagged = np.flatnonzero((decisions.action > 0) | (decisions.shadow_action > 0))
    if flagged.size == 0:
        return []
    emitted_at = int(time.time() * 1000) if now_ms is None else now_ms
    subject_ids = subjects(batch)
    cooldown_ms = policy.cooldown_s * 1000.0
    signals: list[BanSignal] = []
    shadow_columns = [c for c, r in enumerate(RULES) if policy.mode(r.code) == "shadow"]
    flagged_subjects = subject_ids[flagged]
    enforced = _capped(policy, inputs, decisions, flagged, flagged_subjects, shadow=False)
    shadow = _capped(policy, inputs, decisions, flagged, flagged_subjects, shadow=True)
    shadow_differs = (shadow > enforced) | (
        (shadow > 0) & decisions.fired[flagged][:, shadow_columns].any(axis=1)
    )
    flagged_ts = batch.ts_ms[flagged]
    try_enforced = (enforced > 0) & gate.may_admit(
        flagged_subjects, False, enforced, flagged_ts, cooldown_ms
    )
    try_shadow = shadow_differs & gate.may_admit(
        flagged_subjects, True, shadow, flagged_ts, cooldown_ms
    )
    left = np.flatnonzero(try_enforced | try_shadow)
    for row, subject, enforced_action, shadow_action, try_e, try_s, ts_ms in zip(
        flagged[left].tolist(),
        flagged_subjects[left].tolist(),
        enforced[left].tolist(),
        shadow[left].tolist(),
        try_enforced[left].tolist(),
        try_shadow[left].tolist(),
        flagged_ts[left].tolist(),
        strict=True,
    ):
        if try_e and gate.admit(subject, False, enforced_action, ts_ms, cooldown_ms):
            signals.append(
                _signal(
                    policy, inputs, decisions, row, enforced_action, False, emitted_at, exemplar
                )
            )
        if try_s and gate.admit(subject, True, shadow_action, ts_ms, cooldown_ms):
            signals.append(
                _signal(policy, inputs, decisions, row, shadow_action, True, emitted_at, exemplar)
            )
    return signals


def _capped(
    policy: Policy,
    inputs: RuleInputs,
    decisions: Decisions,
    rows: np.ndarray,
    subject_ids: np.ndarray,
    *,
    shadow: bool,
) -> np.ndarray:
    """The action of each row after the allowlist and business caps (0 stays 0)."""
    action = (decisions.shadow_action if shadow else decisions.action)[rows].astype(np.int64)
    if policy.allowlist:
        allowed = np.isin(subject_ids, np.fromiter(policy.allowlist, dtype=np.uint64))
        action[allowed] = np.minimum(action[allowed], int(policy.allowlist_max_action))
    # business senders: volume alone (the tier) never bans
    non_volume = [
        REASON_CODES.index(code)
        for code in ("GROUP_SPAM", "NEGATIVE_FEEDBACK")
        if _counts(policy.mode(code), shadow)
    ]
    volume_only = inputs.is_business[rows] & ~decisions.fired[rows][:, non_volume].any(axis=1)
    action[volume_only] = np.minimum(action[volume_only], int(policy.business_max_volume_action))
    return action


def _counts(mode: str, shadow: bool) -> bool:
    """Whether a rule in ``mode`` takes part in enforced (or, with ``shadow``, shadow) actions."""
    return mode == "enforce" or (shadow and mode == "shadow")


def _fired(policy: Policy, decisions: Decisions, row: int, code: str, shadow: bool) -> bool:
    column = REASON_CODES.index(code)
    return bool(decisions.fired[row, column]) and _counts(policy.mode(code), shadow)


def _signal(
    policy: Policy,
    inputs: RuleInputs,
    decisions: Decisions,
    row: int,
    action: int,
    shadow: bool,
    emitted_at: int,
    exemplar: Callable[[int], str | None] | None,
) -> BanSignal:
    batch = inputs.batch
    reasons = [
        rule.code
        for column, rule in enumerate(RULES)
        if _fired(policy, decisions, row, rule.code, shadow)
    ]
    evidence: dict[str, Any] = {
        code: {
            "features": {
                name: _value(column[row])
                for name in _RULE_BY_CODE[code].features
                if (column := inputs.feature(name)) is not None
            },
            "thresholds": dict(policy.rules[code].params),
            "windows": {
                name: FEATURE_WINDOWS[name]
                for name in _RULE_BY_CODE[code].features
                if name in FEATURE_WINDOWS
            },
            "weight": policy.rules[code].weight,
            "earned": round(
                float(decisions.strength[row, REASON_CODES.index(code)])
                * policy.rules[code].weight,
                4,
            ),
        }
        for code in reasons
    }
    if "BUSINESS_TIER_EXCEEDED" in reasons:
        limit = _tier_limits(policy, inputs)[row]
        evidence["BUSINESS_TIER_EXCEEDED"]["thresholds"] = {"tier_limit": _value(limit)}
    if inputs.content is not None and inputs.has_cluster[row]:
        evidence["content"] = _content_evidence(policy, inputs, row, exemplar)
    score = float(decisions.shadow_score[row] if shadow else decisions.score[row])
    account = subject_name(batch, row)
    ts_ms = int(batch.ts_ms[row])
    name = ACTION_NAMES[Action(action)]
    return BanSignal(
        signal_id=signal_id(policy.version, account, name, ts_ms, shadow),
        account=account,
        action=name,
        reasons=reasons,
        score=round(score, 4),
        ts=ts_ms,
        emitted_at=emitted_at,
        policy_version=policy.version,
        shadow=shadow,
        evidence=evidence,
    )


def _content_evidence(
    policy: Policy,
    inputs: RuleInputs,
    row: int,
    exemplar: Callable[[int], str | None] | None,
) -> dict[str, Any]:
    c = inputs.content
    cluster = int(c.cluster_id[row])
    stats: dict[str, Any] = {
        "cluster_id": cluster,
        "messages": _value(c.cluster_msgs[row]),
        "senders": _value(c.cluster_senders[row]),
        "recipients": _value(c.cluster_recipients[row]),
        "non_contact_share": _value(inputs.cluster_non_contact_share[row]),
        "first_seen_ms": int(c.cluster_first_seen_ms[row]),
        "account_copies": _value(c.account_copies[row]),
    }
    if policy.exemplar_text and exemplar is not None:
        text = exemplar(cluster)
        if text is not None:
            stats["exemplar"] = text[: policy.exemplar_chars]
    return stats


def _value(x: Any) -> float | int | None:
    value = x.item() if hasattr(x, "item") else x
    if isinstance(value, float):
        return None if math.isnan(value) else (value if math.isinf(value) else round(value, 4))
    return value


def signal_id(policy_version: str, account: str, action: str, ts_ms: int, shadow: bool) -> str:
    """Deterministic id: the same triggering event under the same policy gives the same id."""
    key = f"{policy_version}\x1f{account}\x1f{action}\x1f{ts_ms}\x1f{int(shadow)}"
    return hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()


def reasons_fired(decisions: Decisions, rows: Iterable[int]) -> list[list[str]]:
    """Reason codes that fired for each row (enforced or shadow), for reports."""
    return [[RULES[c].code for c in np.flatnonzero(decisions.fired[r])] for r in rows]
