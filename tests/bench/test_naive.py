"""The naive baseline detects what bulkwatch detects: handmade streams per rule, at and just below
the policy's thresholds, each also run through bulkwatch's pipeline, and a simulator stream through
both detectors."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import pytest

from bench.naive import NaiveDetector, shingles
from detector.content import ContentClusters
from detector.network import NetworkActivity
from detector.pipeline import Pipeline
from detector.policy import load_policy
from detector.simulator import ABUSIVE_ARCHETYPES, SimulatorConfig, SimulatorSource, labels
from detector.state import PartitionState

T0 = 1_767_225_600_000  # 2026-01-01T00:00Z
DAY_MS = 86_400_000
POLICY = load_policy()


def param(rule: str, name: str) -> int:
    return int(POLICY.rules[rule].params[name])


def records(events: Iterable[dict]) -> list[bytes]:
    return [json.dumps(event).encode() for event in events]


def run(events: Iterable[dict]) -> list[dict]:
    return NaiveDetector(POLICY).process(records(events))


def outcome(events: Iterable[dict]) -> list[tuple[str, list[str]]]:
    return [(s["action"], s["reasons"]) for s in run(events)]


def message(ts: int, account: str, peer: str, **fields: object) -> dict:
    return {"type": "message", "ts": ts, "account": account, "peer": peer, **fields}


def strangers(n: int) -> list[str]:
    return [f"+4477009{i:05d}" for i in range(n)]


def burst(
    account: str, n: int, gap_ms: int, *, new: bool = True, regular: bool = False, **fields: object
) -> list[dict]:
    """A registration (when ``new``) and ``n`` messages to strangers, ``gap_ms`` apart on average
    (exactly, when ``regular``; else alternating 1.6 and 0.4 times, as no scheduler does)."""
    events: list[dict] = [{"type": "registration", "ts": T0, "account": account}] if new else []
    created = {} if new else {"account_created": T0 - 400 * DAY_MS}
    ts = T0 + 1000
    for i, peer in enumerate(strangers(n)):
        events.append(message(ts, account, peer, **created, **fields))
        ts += gap_ms if regular else int(gap_ms * (0.4 if i % 2 else 1.6))
    return events


SPAM = (
    "WINNER!! You have won a £{n} prize. Claim it now at http://win{n}.example/{n} or call 0800{n}"
)
GREETING = "Happy New Year {n}! Wishing you and your family the very best"


def campaign(template: str, senders: int, *, to_contacts: bool, **fields: object) -> list[dict]:
    """``senders`` accounts each send variants of one text round-robin, one message a second, as
    many copies as the campaign rule asks of each."""
    accounts = [f"+4477009010{i:02d}" for i in range(senders)]
    copies = param("COORDINATED_CAMPAIGN", "min_copies")
    events, ts = [], T0
    for copy in range(copies):
        for i, sender in enumerate(accounts):
            ts += 1000
            text = template.format(n=100 + 7 * i + copy) + (" 🔥" if i % 2 else "")
            peer = strangers(senders * copies)[copy * senders + i]
            contact = {"in_contacts": to_contacts, "typing": to_contacts}
            events.append(message(ts, sender, peer, text=text, **contact, **fields))
    return events


def campaign_senders() -> int:
    """Enough senders that the cluster has ``min_cluster_known`` messages before anyone's last
    copy, and more than ``min_senders``."""
    copies = param("COORDINATED_CAMPAIGN", "min_copies")
    known = param("COORDINATED_CAMPAIGN", "min_cluster_known")
    return max(param("COORDINATED_CAMPAIGN", "min_senders") + 2, known // (copies - 1) + 1)


def feedback(spammer: str, after_ms: int, n: int) -> list[dict]:
    return [
        {"type": "report", "ts": after_ms + 1000 * (i + 1), "account": peer, "peer": spammer}
        for i, peer in enumerate(strangers(n))
    ]


# ----------------------------------------------------------------------------------------------
# One rule at a time. Contact status is left unknown unless a rule needs it, so that the rules
# about strangers stay silent.


def test_new_account_burst_bans_at_the_threshold_in_15_s() -> None:
    n = param("NEW_ACCOUNT_BURST", "min_msgs_15s")
    events = burst("+447700900001", n + 5, 500)
    signals = run(events)
    assert [(s["action"], s["reasons"]) for s in signals] == [("ban", ["NEW_ACCOUNT_BURST"])]
    assert signals[0]["ts"] == events[n]["ts"]  # the n-th message (events[0] is the registration)
    assert outcome(burst("+447700900001", n - 1, 500)) == []


def test_a_burst_to_contacts_is_not_a_new_account_burst() -> None:
    n = param("NEW_ACCOUNT_BURST", "min_msgs_15s")
    signals = run(burst("+447700900001", n + 5, 500, in_contacts=True, typing=True))
    assert all("NEW_ACCOUNT_BURST" not in s["reasons"] for s in signals)


def test_high_rate_alone_only_reviews() -> None:
    n = param("HIGH_RATE", "min_msgs_1m")
    events = burst("+447700900002", n, 55_000 // n, new=False, in_contacts=True, typing=True)
    assert outcome(events) == [("review", ["HIGH_RATE"])]
    assert outcome(events[:-1]) == []


def test_metronomic_messages_without_typing_are_automated() -> None:
    gaps = param("AUTOMATED_TIMING", "min_gaps")
    events = burst("+447700900003", gaps + 2, 60_000, new=False, regular=True, typing=False)
    signals = run(events)
    assert [(s["action"], s["reasons"]) for s in signals] == [("ban", ["AUTOMATED_TIMING"])]
    assert signals[0]["ts"] == events[gaps]["ts"]  # the message that makes ``gaps`` gaps
    assert outcome(events[:gaps]) == []


def test_human_gaps_are_not_automated() -> None:
    gaps = [5_000, 61_000, 2_000, 300_000, 9_000, 45_000, 1_000, 120_000, 20_000, 3_000, 90_000]
    ts, events = T0, []
    for i, gap in enumerate(gaps * 2):
        ts += gap
        events.append(message(ts, "+447700900004", strangers(3)[i % 3], typing=False))
    assert outcome(events) == []


def test_scripted_sending_to_strangers_earns_part_of_the_timing_weight() -> None:
    n = param("AUTOMATED_TIMING", "min_scripted_msgs")
    events = [
        message(T0 + i * 40_000 + (i % 3) * 9_000, "+447700900009", peer, in_contacts=True,
                typing=False)
        for i, peer in enumerate(strangers(n))
    ]  # fmt: skip
    for event in events[: n // 4]:
        event["in_contacts"] = False  # a few strangers: not mostly contacts...
    assert outcome(events) == []  # ...but still mostly contacts: silent
    for event in events:
        event["in_contacts"] = False
    weight = POLICY.rules["AUTOMATED_TIMING"].weight
    earned = POLICY.rules["AUTOMATED_TIMING"].params["scripted_strength"] * weight
    signals = run(events)
    assert [s["reasons"] for s in signals] == [["AUTOMATED_TIMING"]]
    assert signals[0]["score"] == pytest.approx(earned)


def test_group_spam_bans_at_the_threshold_in_an_hour() -> None:
    n = param("GROUP_SPAM", "min_groups_created_1h")
    events = [
        {"type": "group_create", "ts": T0 + i * 60_000, "account": "+447700900005", "peer": f"g{i}"}
        for i in range(n)
    ]
    assert outcome(events) == [("ban", ["GROUP_SPAM"])]
    assert outcome(events[:-1]) == []


def test_fanout_to_strangers_with_reports_bans_on_two_lines_of_evidence() -> None:
    spammer = "+447700900006"
    recipients = max(param("NON_CONTACT_FANOUT", "min_recipients_1h"), 20)
    events = burst(spammer, recipients, 60_000, new=False, in_contacts=False, typing=True)
    reports = param("NEGATIVE_FEEDBACK", "min_reports_blocks_24h")
    events += feedback(spammer, events[-1]["ts"], reports)
    signals = run(events)
    assert [s["action"] for s in signals] == ["review", "ban"]
    assert signals[0]["reasons"] == ["NON_CONTACT_FANOUT"]
    first = max(param("NON_CONTACT_FANOUT", n) for n in ("min_recipients_1h", "min_known"))
    assert signals[0]["ts"] == events[first - 1]["ts"]
    assert set(signals[1]["reasons"]) == {"NON_CONTACT_FANOUT", "NEGATIVE_FEEDBACK"}
    assert signals[1]["account"] == spammer  # reports are about the peer
    assert signals[1]["ts"] == events[-1]["ts"]


def test_business_over_its_tier_is_throttled_never_banned() -> None:
    limit = int(POLICY.tier_limits[POLICY.default_tier])
    events = burst("+447700900007", limit + 10, 500, new=False, business=True, in_contacts=False)
    signals = run(events)
    assert [(s["action"], s["reasons"]) for s in signals] == [
        ("throttle", ["BUSINESS_TIER_EXCEEDED"])
    ]
    assert signals[0]["ts"] == events[limit]["ts"]  # one recipient over the tier


def test_a_campaign_across_accounts_is_coordinated() -> None:
    events = campaign(SPAM, campaign_senders(), to_contacts=False)
    signals = run(events)
    assert {s["account"] for s in signals if s["action"] == "ban"} == {e["account"] for e in events}
    assert all("COORDINATED_CAMPAIGN" in s["reasons"] for s in signals)


def test_greetings_to_contacts_are_not_a_campaign() -> None:
    assert run(campaign(GREETING, campaign_senders(), to_contacts=True)) == []


def textless_campaign() -> list[dict]:
    """The campaign three times over, encrypted (no text), every account on one address."""
    events = []
    for repeat in range(3):
        for event in campaign(SPAM, campaign_senders(), to_contacts=False, ip="198.18.0.7"):
            del event["text"]
            event["peer"] += f"-{repeat}"
            events.append(event)
    for i, event in enumerate(events):
        event["ts"] = T0 + 1000 * i
    return events


def test_a_textless_campaign_from_one_address_is_coordinated() -> None:
    events = textless_campaign()
    signals = run(events)
    assert {s["account"] for s in signals} == {e["account"] for e in events}
    assert all("COORDINATED_CAMPAIGN" in s["reasons"] for s in signals)


def test_an_account_is_signalled_once_per_action() -> None:
    n = param("NEW_ACCOUNT_BURST", "min_msgs_1m")
    assert len(run(burst("+447700900008", 2 * n, 500))) == 1


def test_invalid_records_are_counted_and_skipped() -> None:
    detector = NaiveDetector(POLICY)
    valid = records([message(T0, "a", "b")])
    assert detector.process([b"{not json", b'{"type": "message"}', *valid]) == []
    assert detector.invalid == 2
    assert detector.events == 1


def test_shingles_ignore_case_numbers_links_and_spacing() -> None:
    a = shingles("Call 0800 123 456 NOW   or visit https://x.example/abc")
    b = shingles("call 0711 999 000 now or visit www.other.example")
    assert a == b
    assert shingles("   ") == []
    assert shingles("ok") == [b"ok"]


def test_the_naive_detector_refuses_what_it_does_not_implement(tmp_path: Path) -> None:
    text = Path(POLICY.source).read_text(encoding="utf-8")
    text = text.replace('file = ""', 'file = "allow.txt"', 1)
    (tmp_path / "allow.txt").write_text("+447700900001\n", encoding="utf-8")
    (tmp_path / "policy.toml").write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match="allowlist"):
        NaiveDetector(load_policy(tmp_path / "policy.toml"))


# ----------------------------------------------------------------------------------------------
# Against bulkwatch itself


def bulkwatch_pipeline() -> tuple[Pipeline, PartitionState]:
    pipeline = Pipeline(POLICY, ContentClusters(capacity=20_000), NetworkActivity(capacity=4096))
    return pipeline, PartitionState.new(capacity=1 << 15, lateness_s=30, ttl_s=2 * 86_400)


def bulkwatch(events: Iterable[dict]) -> list[tuple[str, str, list[str], int]]:
    pipeline, state = bulkwatch_pipeline()
    result = pipeline.process(records(events), state)
    return [(s.account, s.action, s.reasons, s.ts) for s in result.signals]


def _spammer_reported() -> list[dict]:
    events = burst("+447700900006", 20, 60_000, new=False, in_contacts=False, typing=True)
    return events + feedback("+447700900006", events[-1]["ts"], 6)


STREAMS = {
    "new account burst": lambda: burst("+447700900001", 45, 500),
    "below the burst threshold": lambda: burst(
        "+447700900001", param("NEW_ACCOUNT_BURST", "min_msgs_15s") - 1, 500
    ),
    "high rate": lambda: burst("+447700900002", 70, 800, new=False, in_contacts=True, typing=True),
    "metronome": lambda: burst("+447700900003", 16, 60_000, new=False, regular=True, typing=False),
    "business tier": lambda: burst("+447700900007", 300, 500, new=False, business=True),
    "fan-out and reports": _spammer_reported,
    "campaign": lambda: campaign(SPAM, 10, to_contacts=False),
    "textless campaign": textless_campaign,
    "greetings to contacts": lambda: campaign(GREETING, 10, to_contacts=True),
}


QUIET_STREAMS = {"below the burst threshold", "greetings to contacts"}


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_naive_signals_equal_bulkwatch_signals_on_handmade_streams(name: str) -> None:
    events = STREAMS[name]()
    naive = [(s["account"], s["action"], s["reasons"], s["ts"]) for s in run(events)]
    assert naive == bulkwatch(events)
    assert bool(naive) == (name not in QUIET_STREAMS)


def test_naive_and_bulkwatch_ban_the_same_accounts_of_a_simulation() -> None:
    config = SimulatorConfig(accounts=1500, minutes=40, seed=3)
    naive = NaiveDetector(POLICY)
    pipeline, state = bulkwatch_pipeline()
    naive_bans: set[str] = set()
    bulkwatch_bans: set[str] = set()
    for batch in SimulatorSource(config, batch_size=2000):
        naive_bans.update(s["account"] for s in naive.process(batch) if s["action"] == "ban")
        result = pipeline.process(batch, state)
        bulkwatch_bans.update(s.account for s in result.signals if s.action == "ban")
    truth = {label.account: label for label in labels(config)}
    assert bulkwatch_bans, "the stream should contain detectable abuse"
    agreement = len(naive_bans & bulkwatch_bans) / len(naive_bans | bulkwatch_bans)
    assert agreement >= 0.9
    caught = {truth[a].archetype for a in naive_bans if a in truth}
    present = {label.archetype for label in truth.values()} & set(ABUSIVE_ARCHETYPES)
    assert caught == present
    assert all(truth[a].label == "abusive" for a in naive_bans if a in truth)
