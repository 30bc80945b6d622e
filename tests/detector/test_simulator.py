"""The traffic simulator: determinism, the event contract, ground truth that behaves as labelled."""

from __future__ import annotations

import csv
import gzip
import html
import random
import re
import time
from collections import Counter, defaultdict
from dataclasses import replace

import msgspec
import numpy as np
import pytest

from detector.simulator import (
    ABUSIVE_ARCHETYPES,
    ARCHETYPES,
    DEFAULT_SMS_PATH,
    LEGIT_ARCHETYPES,
    Label,
    SimulatorConfig,
    SimulatorSource,
    _mutate_spam,
    event_counts,
    generate_events,
    labels,
    load_sms,
    simulate,
    write_simulation,
)

CONFIG = SimulatorConfig(accounts=3000, minutes=60, seed=7)
MINUTE_MS = 60_000

# ----------------------------------------------------------------------------------------------
# The event contract, written out independently of the simulator.

_COMMON = {"type", "ts", "account"}
_ALLOWED_KEYS = {
    "message": _COMMON
    | {"peer", "chat", "text", "in_contacts", "forwarded", "typing", "business", "device", "ip"}
    | {"account_created"},
    "registration": _COMMON | {"device", "ip", "country"},
    "report": _COMMON | {"peer"},
    "block": _COMMON | {"peer"},
    "group_create": _COMMON | {"peer"},
    "group_add": _COMMON | {"peer", "members"},
}
_E164 = re.compile(r"\+[1-9]\d{6,14}")
_GROUP_ID = re.compile(r"\d{18}@g\.us")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_id(value: object) -> bool:
    return isinstance(value, str) and 1 <= len(value) <= 128


def contract_problems(event: dict) -> list[str]:
    kind = event.get("type")
    if kind not in _ALLOWED_KEYS:
        return [f"unknown type {kind!r}"]
    problems = [f"unexpected key {key}" for key in event.keys() - _ALLOWED_KEYS[kind]]
    if not _is_int(event.get("ts")):
        problems.append("ts is not an int")
    if not _is_id(event.get("account")):
        problems.append("bad account")
    if kind != "registration" and not _is_id(event.get("peer")):
        problems.append("peer missing or bad")
    if kind == "group_add" and not (_is_int(event.get("members")) and event["members"] >= 1):
        problems.append("members must be an int >= 1")
    if kind == "message":
        if event.get("chat", "direct") not in ("direct", "group"):
            problems.append("bad chat")
        text = event.get("text")
        if text is not None and not (isinstance(text, str) and len(text) <= 64 * 1024):
            problems.append("bad text")
        for key in ("in_contacts", "forwarded", "typing", "business"):
            if key in event and not isinstance(event[key], bool):
                problems.append(f"{key} is not a bool")
        for key in ("device", "ip"):
            if key in event and not isinstance(event[key], str):
                problems.append(f"{key} is not a string")
        if "account_created" in event and not _is_int(event["account_created"]):
            problems.append("account_created is not an int")
    if kind == "registration":
        for key in ("device", "ip", "country"):
            if key in event and not isinstance(event[key], str):
                problems.append(f"{key} is not a string")
    return problems


# ----------------------------------------------------------------------------------------------
# Shared data


@pytest.fixture(scope="module")
def events() -> list[dict]:
    return list(generate_events(CONFIG))


@pytest.fixture(scope="module")
def truth() -> dict[str, Label]:
    return {label.account: label for label in labels(CONFIG)}


@pytest.fixture(scope="module")
def by_account(events: list[dict]) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = defaultdict(list)
    for event in events:
        grouped[event["account"]].append(event)
    return grouped


def _accounts_of(truth: dict[str, Label], archetype: str) -> list[str]:
    accounts = [account for account, label in truth.items() if label.archetype == archetype]
    assert accounts, f"the test config has no {archetype} accounts"
    return accounts


def _messages(events: list[dict], *, direct: bool | None = None) -> list[dict]:
    out = [e for e in events if e["type"] == "message"]
    if direct is not None:
        out = [e for e in out if (e.get("chat", "direct") == "direct") == direct]
    return out


def _max_in_window(ts_ms: list[int], window_ms: int) -> int:
    ts = np.sort(np.asarray(ts_ms, dtype=np.int64))
    if len(ts) == 0:
        return 0
    return int((np.searchsorted(ts, ts + window_ms, side="left") - np.arange(len(ts))).max())


# ----------------------------------------------------------------------------------------------
# Determinism and output files


def test_same_seed_gives_identical_bytes(tmp_path):
    small = replace(CONFIG, accounts=800, minutes=20)
    outputs = []
    for run in ("a", "b"):
        events_path, labels_path = tmp_path / f"{run}.jsonl.gz", tmp_path / f"{run}.csv"
        counts = write_simulation(small, events_path, labels_path)
        outputs.append((counts, events_path.read_bytes(), labels_path.read_bytes()))
    assert outputs[0] == outputs[1]
    counts, gz_bytes, _ = outputs[0]
    plain = tmp_path / "plain.jsonl"
    assert write_simulation(small, plain, tmp_path / "plain.csv") == counts
    assert gzip.decompress(gz_bytes) == plain.read_bytes()
    assert plain.read_bytes().count(b"\n") == counts[0]


def test_different_seeds_differ():
    first = [e for _, e in zip(range(2000), generate_events(replace(CONFIG, seed=1)), strict=False)]
    second = [
        e for _, e in zip(range(2000), generate_events(replace(CONFIG, seed=2)), strict=False)
    ]
    assert first != second
    assert {lab.account for lab in labels(replace(CONFIG, seed=1))} == {
        lab.account for lab in labels(replace(CONFIG, seed=2))
    }  # same population ids, different behaviour
    assert [lab.archetype for lab in labels(replace(CONFIG, seed=1))] != [
        lab.archetype for lab in labels(replace(CONFIG, seed=2))
    ]


def test_written_file_is_the_msgspec_encoding_of_the_events(tmp_path, events):
    events_path = tmp_path / "events.jsonl"
    n_events, n_accounts = write_simulation(CONFIG, events_path, tmp_path / "labels.csv")
    lines = events_path.read_bytes().splitlines()
    encoder = msgspec.json.Encoder()
    assert n_events == len(events) == len(lines)
    assert lines == [encoder.encode(event) for event in events]
    assert [msgspec.json.decode(line) for line in lines[:100]] == events[:100]
    with open(tmp_path / "labels.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["account", "label", "archetype"]
    assert [Label(*row) for row in rows[1:]] == labels(CONFIG)
    assert n_accounts == len(rows) - 1


# ----------------------------------------------------------------------------------------------
# The contract and ordering


def test_events_are_in_event_time_order_within_the_run(events):
    ts = np.array([e["ts"] for e in events])
    assert len(ts) > 10_000
    assert (np.diff(ts) >= 0).all()
    assert ts[0] >= CONFIG.start_ms
    assert ts[-1] < CONFIG.start_ms + CONFIG.minutes * MINUTE_MS


def test_every_event_is_contract_valid(events):
    problems = Counter(p for e in events for p in contract_problems(e))
    assert not problems, problems
    assert {e["type"] for e in events} == set(_ALLOWED_KEYS)


def test_identifiers_look_like_phone_numbers_and_group_ids(events):
    for event in events:
        assert _E164.fullmatch(event["account"]), event
        if event["type"] in ("group_create", "group_add") or event.get("chat") == "group":
            assert _GROUP_ID.fullmatch(event["peer"]), event
        elif "peer" in event:
            assert _E164.fullmatch(event["peer"]), event


def test_optional_fields_are_absent_on_a_realistic_share(events, truth):
    messages = _messages(events)
    textless = sum("text" not in e for e in messages) / len(messages)
    assert 0.3 <= textless <= 0.5
    abusive = [e for e in messages if truth[e["account"]].label == "abusive"]
    assert 0.3 <= sum("text" not in e for e in abusive) / len(abusive) <= 0.5
    direct = _messages(events, direct=True)
    contact_unknown = sum("in_contacts" not in e for e in direct) / len(direct)
    assert 0.2 <= contact_unknown <= 0.4
    assert 0.1 <= sum("typing" not in e for e in messages) / len(messages) <= 0.4
    created = [e["account_created"] for e in messages if "account_created" in e]
    assert len(created) > 0.8 * len(messages)
    assert all(c <= e["ts"] for e in messages if (c := e.get("account_created")) is not None)


# ----------------------------------------------------------------------------------------------
# Labels


def test_every_acting_account_is_labelled_once(events, truth):
    label_list = labels(CONFIG)
    assert len(label_list) == len(truth)  # no account twice
    actors = {e["account"] for e in events if e["type"] not in ("report", "block")}
    assert actors == set(truth)
    reporters = {e["account"] for e in events if e["type"] in ("report", "block")}
    assert not reporters & set(truth)  # recipients who report are outside the population
    for label in label_list:
        expected = "abusive" if label.archetype in ABUSIVE_ARCHETYPES else "legit"
        assert label.label == expected


def test_archetype_counts_follow_the_config(truth):
    counts = Counter(label.archetype for label in truth.values())
    assert counts == Counter(CONFIG.archetype_counts())
    assert sum(counts.values()) == CONFIG.accounts
    for name, share in CONFIG.shares().items():
        assert abs(counts[name] / CONFIG.accounts - share) < 1.0 / CONFIG.accounts
    default = SimulatorConfig()
    abusive_share = sum(default.shares()[name] for name in ABUSIVE_ARCHETYPES)
    assert 0.02 <= abusive_share <= 0.05
    assert set(ARCHETYPES) == set(LEGIT_ARCHETYPES) | set(ABUSIVE_ARCHETYPES)


def test_simulate_and_event_counts_agree(events, truth):
    stream, label_list = simulate(CONFIG)
    assert label_list == list(truth.values())
    assert next(stream) == events[0]
    counts = event_counts(CONFIG)
    assert sum(counts.values()) == len(events)
    per_archetype = Counter(
        truth[e["account"]].archetype if e["account"] in truth else "recipient" for e in events
    )
    assert counts == {name: per_archetype[name] for name in (*ARCHETYPES, "recipient")}


def test_config_validation():
    with pytest.raises(ValueError):
        SimulatorConfig(accounts=0)
    with pytest.raises(ValueError):
        SimulatorConfig(minutes=0)
    with pytest.raises(ValueError):
        SimulatorConfig(festive_share=0.95)
    with pytest.raises(ValueError):
        SimulatorConfig(slow_bot_share=-0.1)
    counts = SimulatorConfig(accounts=7).archetype_counts()
    assert sum(counts.values()) == 7


# ----------------------------------------------------------------------------------------------
# Abusers behave like their archetype


def test_new_account_blasters_blast_seconds_after_registering(truth, by_account):
    for account in _accounts_of(truth, "new_account_blaster"):
        own = by_account[account]
        registration = [e for e in own if e["type"] == "registration"]
        assert len(registration) == 1 and own[0] is registration[0]
        messages = _messages(own, direct=True)
        assert 100 <= len(messages) <= 500
        ts = np.array([e["ts"] for e in messages])
        assert ts[0] - registration[0]["ts"] <= 20_000
        assert np.median(np.diff(ts)) < 600  # several messages per second
        assert _max_in_window(list(ts), 15_000) >= 25
        assert not any(e.get("typing") for e in messages)
        assert sum(e.get("in_contacts") is True for e in messages) <= 0.05 * len(messages)
        assert len({e["peer"] for e in messages}) >= 0.95 * len(messages)
        texts = Counter(e["text"] for e in messages if "text" in e)
        if texts:
            assert len(texts) <= 6  # one template, lightly mutated
            assert texts.most_common(1)[0][1] >= 0.4 * sum(texts.values())
        created = {e["account_created"] for e in messages if "account_created" in e}
        assert created <= {registration[0]["ts"]}


def test_slow_bots_are_machine_regular_all_run_long(truth, by_account):
    for account in _accounts_of(truth, "slow_bot"):
        ts = np.array([e["ts"] for e in _messages(by_account[account])])
        gaps = np.diff(ts)
        assert 20_000 * 0.98 <= gaps.mean() <= 120_000 * 1.02
        assert gaps.std() / gaps.mean() < 0.02
        assert ts[-1] - ts[0] >= 30 * MINUTE_MS
        messages = _messages(by_account[account])
        assert not any(e.get("typing") for e in messages)
        known = [e["in_contacts"] for e in messages if "in_contacts" in e]
        assert sum(known) <= 0.35 * len(known)


def test_distributed_campaigns_stay_under_per_account_limits(events, truth, by_account):
    accounts = _accounts_of(truth, "distributed_campaign")
    for account in accounts:
        messages = _messages(by_account[account], direct=True)
        assert 10 <= len(messages) <= 40
        assert len(messages) < 60  # per hour
        assert _max_in_window([e["ts"] for e in messages], MINUTE_MS) < 20
        assert messages[-1]["ts"] - messages[0]["ts"] <= 10 * MINUTE_MS
        known = [e["in_contacts"] for e in messages if "in_contacts" in e]
        assert sum(known) <= 0.2 * max(1, len(known))
    # Together they send many near-duplicate variants of few templates.
    texts = [e["text"] for a in accounts for e in _messages(by_account[a]) if "text" in e]
    assert len(set(texts)) > 20
    digits_and_links = re.compile(r"https?://\S+|www\.\S+|\d+")
    skeletons = Counter(
        frozenset(digits_and_links.sub("", t).lower().split()) for t in texts
    ).most_common()
    assert len(skeletons) < len(texts) / 2


def test_group_spammers_create_groups_and_add_thousands(truth, by_account):
    for account in _accounts_of(truth, "group_spammer"):
        own = by_account[account]
        created = [e for e in own if e["type"] == "group_create"]
        added = [e for e in own if e["type"] == "group_add"]
        assert 20 <= len(created) <= 60
        assert sum(e["members"] for e in added) >= 1000
        assert {e["peer"] for e in added} <= {e["peer"] for e in created}
        group_posts = _messages(own, direct=False)
        assert group_posts and {e["peer"] for e in group_posts} <= {e["peer"] for e in created}


def test_reported_spammers_draw_reports_and_blocks(events, truth, by_account):
    accounts = _accounts_of(truth, "reported_spammer")
    received = Counter(e["peer"] for e in events if e["type"] in ("report", "block"))
    sent = 0
    for account in accounts:
        messages = _messages(by_account[account], direct=True)
        assert 10 <= len(messages) <= 110  # 30-80 an hour, Poisson
        assert _max_in_window([e["ts"] for e in messages], MINUTE_MS) < 15
        sent += len(messages)
    reactions = sum(received[a] for a in accounts)
    assert reactions >= 0.3 * sent
    # Far more reactions per message than legit traffic gets.
    legit_sent = sum(
        len(_messages(by_account[a])) for a, lab in truth.items() if lab.label == "legit"
    )
    legit_received = sum(n for a, n in received.items() if truth[a].label == "legit")
    assert legit_received / legit_sent < 0.01


def test_reports_and_blocks_follow_delivery(events, truth):
    delivered: dict[tuple[str, str], int] = {}
    for event in events:
        if event["type"] == "message" and event.get("chat", "direct") == "direct":
            delivered.setdefault((event["account"], event["peer"]), event["ts"])
    checked = 0
    for event in events:
        if event["type"] in ("report", "block") and truth[event["peer"]].archetype in (
            "reported_spammer",
            "new_account_blaster",
        ):
            first = delivered[(event["peer"], event["account"])]
            assert first < event["ts"]
            checked += 1
    assert checked > 50


# ----------------------------------------------------------------------------------------------
# Legit accounts do not look like abusers


def test_legit_accounts_never_blast_non_contacts(truth, by_account):
    for account, label in truth.items():
        if label.label != "legit":
            continue
        direct = _messages(by_account[account], direct=True)
        assert _max_in_window([e["ts"] for e in direct], 15_000) < 20
        strangers = [e["ts"] for e in direct if e.get("in_contacts") is False]
        assert _max_in_window(strangers, 15_000) < 10


def test_people_talk_to_contacts_with_typing_in_human_bursts(truth, by_account):
    for archetype in ("ordinary", "power_user", "group_admin"):
        messages = [e for a in _accounts_of(truth, archetype) for e in _messages(by_account[a])]
        known = [e["in_contacts"] for e in messages if "in_contacts" in e]
        assert sum(known) / len(known) > 0.85
        typing = [e["typing"] for e in messages if "typing" in e]
        assert sum(typing) / len(typing) > 0.9
        assert not any(e.get("business") for e in messages)
    # Human gaps are bursty (coefficient of variation well above a Poisson process's 1).
    cvs = []
    for account in _accounts_of(truth, "power_user"):
        gaps = np.diff([e["ts"] for e in _messages(by_account[account])])
        if len(gaps) >= 10:
            cvs.append(gaps.std() / gaps.mean())
    assert np.median(cvs) > 1.0
    # Few close contacts get most messages (Zipf over heavy-tailed contact lists).
    peers = Counter(
        e["peer"]
        for a in _accounts_of(truth, "power_user")
        for e in _messages(by_account[a], direct=True)
    )
    sent = sum(peers.values())
    assert len(peers) < 0.6 * sent


def test_group_admins_add_members_moderately(truth, by_account):
    for account in _accounts_of(truth, "group_admin"):
        own = by_account[account]
        created = [e for e in own if e["type"] == "group_create"]
        assert 1 <= len(created) <= 4
        assert sum(e["members"] for e in own if e["type"] == "group_add") <= 4 * 3 * 60


def test_festive_waves_send_near_identical_greetings_to_contacts(truth, by_account):
    senders_of_text: dict[str, set[str]] = defaultdict(set)
    for account in _accounts_of(truth, "festive"):
        direct = _messages(by_account[account], direct=True)
        assert _max_in_window([e["ts"] for e in direct], 5 * MINUTE_MS) >= 5
        for event in direct:
            if "Year" in event.get("text", "") or "2026" in event.get("text", ""):
                senders_of_text[event["text"]].add(account)
    popular = max(len(senders) for senders in senders_of_text.values())
    assert popular >= 10
    greetings = [
        e
        for a in _accounts_of(truth, "festive")
        for e in _messages(by_account[a], direct=True)
        if e.get("text") in senders_of_text
    ]
    known = [e["in_contacts"] for e in greetings if "in_contacts" in e]
    assert sum(known) / len(known) > 0.85


def test_business_senders_use_the_business_api_within_their_tier(truth, by_account):
    for account in _accounts_of(truth, "business"):
        messages = _messages(by_account[account])
        assert all(e.get("business") is True for e in messages)
        assert len(messages) <= 10_000 / 24 * 3  # an hour of a 10k-a-day tier, with peaks
        assert not any(e.get("typing") for e in messages)
        assert len({e["peer"] for e in messages}) >= 0.95 * len(messages)
    templated = [
        e["text"]
        for a in _accounts_of(truth, "business")
        for e in _messages(by_account[a])
        if "text" in e
    ]
    assert len(set(templated)) > 0.9 * len(templated)  # numbers vary per notification


def test_activity_is_diurnal():
    day = SimulatorConfig(accounts=1500, minutes=24 * 60, seed=3)
    truth = {lab.account: lab.archetype for lab in labels(day)}
    by_local_hour = np.zeros(24)
    for event in generate_events(day):
        # UK numbers (+447...): local time is UTC in January.
        account = event["account"]
        if (
            event["type"] == "message"
            and account.startswith("+447")
            and truth[account] == "ordinary"
        ):
            by_local_hour[(event["ts"] // 3_600_000) % 24] += 1
    night, evening = by_local_hour[2:5].sum(), by_local_hour[18:21].sum()
    assert evening > 3 * night


# ----------------------------------------------------------------------------------------------
# Texts


def test_load_sms_reads_real_deduplicated_texts():
    ham, spam = load_sms()
    raw = DEFAULT_SMS_PATH.read_text(encoding="utf-8").splitlines()
    expected = Counter(line.split("\t", 1)[0] for line in dict.fromkeys(raw))
    assert len(ham) == len(set(ham)) and len(spam) == len(set(spam))
    assert len(ham) <= expected["ham"] and len(spam) <= expected["spam"]
    assert len(ham) > 4000 and len(spam) > 600
    assert not any("&lt;" in text or "&amp;" in text for text in ham + spam)
    first_spam = next(line for line in raw if line.startswith("spam\t")).split("\t", 1)[1]
    assert html.unescape(first_spam).strip() == spam[0]
    assert load_sms(DEFAULT_SMS_PATH) == (ham, spam)


def test_spam_mutations_change_details_but_keep_the_message():
    _, spam = load_sms()
    rnd = random.Random(5)
    word = re.compile(r"[a-z]{3,}")
    changed = 0
    for template in spam[:200]:
        variant = _mutate_spam(template, rnd, heavy=True)
        changed += variant != template
        original, mutated = set(word.findall(template.lower())), set(word.findall(variant.lower()))
        if original:
            assert len(original & mutated) / len(original) >= 0.4, (template, variant)
    assert changed > 150


# ----------------------------------------------------------------------------------------------
# The in-process source


SOURCE_CONFIG = SimulatorConfig(accounts=400, minutes=10, seed=11)


def test_source_batches_are_the_written_records(tmp_path):
    write_simulation(SOURCE_CONFIG, tmp_path / "e.jsonl", tmp_path / "l.csv")
    lines = (tmp_path / "e.jsonl").read_bytes().splitlines()
    batches = list(SimulatorSource(SOURCE_CONFIG, batch_size=777))
    assert all(len(b) == 777 for b in batches[:-1]) and 1 <= len(batches[-1]) <= 777
    assert [record for batch in batches for record in batch] == lines


def test_source_paces_at_the_target_rate():
    source = SimulatorSource(SOURCE_CONFIG, batch_size=500, rate_per_s=10_000, loop=True)
    started = time.monotonic()
    received = last = 0
    for batch in source:
        received, last = received + len(batch), len(batch)
        if received >= 5000:
            source.stop()
    elapsed = time.monotonic() - started
    # The last batch is due once the events before it have had their time at 10k events/s.
    due_s = (received - last) / 10_000
    assert due_s >= 0.4
    assert due_s - 0.01 <= elapsed <= due_s + 1.0
    assert source.stopped and source.events_emitted == received


async def test_async_source_paces_and_stops():
    source = SimulatorSource(SOURCE_CONFIG, batch_size=500, rate_per_s=10_000, loop=True)
    started = time.monotonic()
    received = last = 0
    async for batch in source.batches():
        received, last = received + len(batch), len(batch)
        if received >= 5000:
            source.stop()
    elapsed = time.monotonic() - started
    due_s = (received - last) / 10_000
    assert due_s >= 0.4
    assert due_s - 0.01 <= elapsed <= due_s + 1.0
    assert source.stopped and source.events_emitted == received


def test_rebase_to_now_shifts_event_times_to_the_wall_clock():
    reference = [e["ts"] for e in generate_events(SOURCE_CONFIG)]
    before_ms = time.time() * 1000
    source = SimulatorSource(SOURCE_CONFIG, batch_size=1000, rebase_to_now=True)
    rebased = [msgspec.json.decode(r)["ts"] for batch in source for r in batch]
    after_ms = time.time() * 1000
    shift = rebased[0] - reference[0]
    assert before_ms - 1 <= SOURCE_CONFIG.start_ms + shift <= after_ms + 1
    assert [ts - shift for ts in rebased] == reference


def test_loop_rounds_have_fresh_accounts_and_later_times():
    source = SimulatorSource(SOURCE_CONFIG, batch_size=2000, loop=True)
    round_of_account: dict[str, int] = {}
    last_ts = -1
    for batch in source:
        if source.rounds_started > 3:
            source.stop()
            break
        for record in batch:
            event = msgspec.json.decode(record)
            assert event["ts"] >= last_ts
            last_ts = event["ts"]
            if event["type"] not in ("report", "block"):
                round_of_account.setdefault(event["account"], source.rounds_started)
                assert round_of_account[event["account"]] == source.rounds_started
    per_round = Counter(round_of_account.values())
    assert per_round == {r + 1: len(labels(SOURCE_CONFIG, round_index=r)) for r in range(3)}
    assert last_ts >= SOURCE_CONFIG.start_ms + 2 * SOURCE_CONFIG.minutes * MINUTE_MS
    later = {lab.account for lab in labels(SOURCE_CONFIG, round_index=1)}
    assert later.isdisjoint({lab.account for lab in labels(SOURCE_CONFIG)})


def test_stop_ends_iteration_early():
    source = SimulatorSource(SOURCE_CONFIG, batch_size=100)
    batches = 0
    for _ in source:
        batches += 1
        source.stop()
    assert batches == 1
    with pytest.raises(ValueError):
        SimulatorSource(SOURCE_CONFIG, rate_per_s=0)
    with pytest.raises(ValueError):
        SimulatorSource(SOURCE_CONFIG, batch_size=0)


async def test_async_batches_equal_sync_batches():
    sync = list(SimulatorSource(SOURCE_CONFIG, batch_size=1000))
    source = SimulatorSource(SOURCE_CONFIG, batch_size=1000)
    assert [batch async for batch in source.batches()] == sync
