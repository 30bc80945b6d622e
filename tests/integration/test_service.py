"""`bulkwatch run --source kafka` as a real service: a subprocess against the real broker.

Each test creates its own topics, starts the service with `python -m detector.cli run --source
kafka` (fresh metrics port and snapshot directory), feeds it simulator traffic and checks what it
wrote to Kafka, what it committed and what it reports over HTTP. The helpers, and how exact
expectations are derived (`reference_signals`, `account_policy`), are in service_helpers.py; the
end-to-end and two-instance tests keep the default policy and compare detected accounts.
Injected faults beyond these (repeated SIGKILLs, broker restarts, output topics that refuse
records, snapshot disks that fail, bursts) are in test_faults.py.
"""

from __future__ import annotations

import asyncio
import collections
import json
import signal
import time

import pytest

from detector.policy import BanSignal, load_policy
from detector.simulator import event_counts, labels
from detector.sinks import produce_simulation

from .service_helpers import (
    CAMPAIGN_HEAVY,
    EVENT_PARTITIONS,
    Topics,
    account_policy,
    assert_every_signal_and_duplicates_only_past,
    broker_process,
    committed_offsets,
    detected_accounts,
    expected_signal_ids,
    log_partitions,
    make_topics,
    metric,
    parse_signals,
    produce_bad_records,
    read_topic,
    reference_signals,
    resume_offsets,
    snapshot_restores,
    start_mid_stream,
    stream_signals,
    trigger_offsets,
    wait_caught_up,
    wait_committed_at_least,
)

# ---------------------------------------------------------------------------------------- tests


async def test_simulated_traffic_gives_signals_dead_letters_and_metrics(
    kafka_broker, create_topic, topic_name, services, tmp_path
):
    bootstrap = kafka_broker.bootstrap
    topics = await make_topics(create_topic, bootstrap, topic_name)
    config = CAMPAIGN_HEAVY
    produced = await produce_simulation(bootstrap, topics.events, config)
    bad = await produce_bad_records(bootstrap, topics.events)

    service = services("solo", bootstrap, topics, f"{topic_name}-group")
    service.start()
    await service.wait_ready()
    await wait_caught_up(bootstrap, service.group, topics.events, services=[service])

    # Signals: the contract's JSON, keyed by account, one per signal_id.
    signal_records = await read_topic(bootstrap, topics.signals, 2)
    signals = parse_signals(signal_records)
    assert all(r.key == s["account"].encode() for r, s in zip(signal_records, signals, strict=True))
    assert len({s["signal_id"] for s in signals}) == len(signals)
    assert {tuple(sorted(s)) for s in signals} == {tuple(sorted(BanSignal.__struct_fields__))}

    # Detection. The account rules are exact (state per partition): every account they flag
    # offline is flagged. Campaign clusters span partitions and their growth depends on how
    # fetches interleave partitions, so against one offline stream in event-time order the test
    # asks for most content-only detections. No legitimate account may be banned.
    events = await read_topic(bootstrap, topics.events, EVENT_PARTITIONS)
    detected = detected_accounts(signals)
    by_account_rules = {
        s.account
        for s in reference_signals(events, load_policy(account_policy(tmp_path)))
        if not s.shadow
    }
    assert by_account_rules <= detected
    by_stream = {s.account for s in stream_signals(events, load_policy()) if not s.shadow}
    content_only = by_stream - by_account_rules
    assert len(content_only & detected) >= 0.8 * len(content_only), content_only - detected
    truth = {label.account: label for label in labels(config)}
    abusive = {a for a, label in truth.items() if label.label == "abusive"}
    banned = {s["account"] for s in signals if s["action"] == "ban" and not s["shadow"]}
    assert not (banned - abusive) & set(truth), "legitimate accounts banned"
    found = collections.Counter(truth[a].archetype for a in detected & abusive)
    assert set(found) == {truth[a].archetype for a in abusive}, found

    # Dead letters: the original bytes, the reason and the origin in headers.
    dlq = await read_topic(bootstrap, topics.dlq, 1)
    got = {
        (int(h["source_partition"]), int(h["source_offset"])): (r.value, h)
        for r in dlq
        for h in [{k: v.decode() for k, v in r.headers}]
    }
    assert len(dlq) == len(bad)
    for partition, offset, value, reason in bad:
        letter_value, headers = got[(partition, offset)]
        assert letter_value == value
        assert headers["reason"] == reason
        assert headers["source_topic"] == topics.events
        assert headers["detail"]

    # Metrics, scraped over HTTP and parsed.
    samples = await service.metrics()
    assert metric(samples, "bulkwatch_records_total") == produced + len(bad)
    by_type = collections.Counter(
        json.loads(r.value)["type"] for r in events if r.key[:4] != b"bad-"
    )
    for event_type, count in by_type.items():
        assert metric(samples, "bulkwatch_events_total", type=event_type) == count
    for reason, count in collections.Counter(reason for *_, reason in bad).items():
        assert metric(samples, "bulkwatch_dead_letters_total", reason=reason) == count
    per_reason = collections.Counter(
        (s["action"], code, "true" if s["shadow"] else "false")
        for s in signals
        for code in s["reasons"]
    )
    exported = {
        (dict(labels)["action"], dict(labels)["reason"], dict(labels)["shadow"]): value
        for (name, labels), value in samples.items()
        if name == "bulkwatch_signals_total" and value
    }
    assert exported == per_reason
    for partition in range(EVENT_PARTITIONS):
        lag_labels = {"topic": topics.events, "partition": str(partition)}
        assert ("bulkwatch_consumer_lag", tuple(sorted(lag_labels.items()))) in samples
        assert metric(samples, "bulkwatch_consumer_lag", **lag_labels) == 0
    assert metric(samples, "bulkwatch_ready") == 1
    assert (await service.get("/healthz"))[0] == 200
    assert (await service.get("/readyz"))[0] == 200

    # No account id in the log.
    log_text = service.log_text()
    assert not [a for a in detected if a in log_text]

    service.send(signal.SIGTERM)
    assert await service.wait_exit() == 0


@pytest.mark.parametrize("exactly_once", [False, True], ids=["at-least-once", "exactly-once"])
async def test_sigkill_mid_stream_loses_nothing_and_duplicates_only_the_uncommitted_tail(
    kafka_broker, create_topic, topic_name, services, tmp_path, exactly_once
):
    bootstrap = kafka_broker.bootstrap
    run = await start_mid_stream(
        create_topic,
        services,
        bootstrap,
        topic_name,
        tmp_path,
        name="victim",
        seed=5,
        extra_args=("--exactly-once",) if exactly_once else (),
    )
    topics, service, total = run.topics, run.service, run.total
    service.kill()  # SIGKILL: no flush, no commit, no snapshot, an open transaction left behind
    committed_at_kill = await committed_offsets(bootstrap, service.group, topics.events)
    assert sum(committed_at_kill.values()) < total, "killed too late to be mid-stream"

    service.start()
    assert await run.traffic == total
    await wait_caught_up(bootstrap, service.group, topics.events, services=[service])
    # The restart resumed every partition exactly where the group had committed.
    assert resume_offsets(service.log_text(), topics.events, 2) == {
        p: committed_at_kill[p] for p in range(EVENT_PARTITIONS) if p in committed_at_kill
    }

    expected = await expected_signal_ids(bootstrap, topics, run.policy)
    got = parse_signals(await read_topic(bootstrap, topics.signals, 2, read_committed=exactly_once))
    ids = collections.Counter(s["signal_id"] for s in got)
    assert set(ids) == expected  # no detection lost, none invented
    duplicated = [s for s in got if ids[s["signal_id"]] > 1]
    if exactly_once:
        assert not duplicated
    else:
        # At-least-once: only signals of records past the offsets committed at the kill (re-read
        # after the restart) may appear twice.
        triggers = trigger_offsets(await read_topic(bootstrap, topics.events, EVENT_PARTITIONS))
        for duplicate in duplicated:
            candidates = triggers[(duplicate["account"], duplicate["ts"])]
            assert any(offset >= committed_at_kill.get(p, 0) for p, offset in candidates)

    service.send(signal.SIGTERM)
    assert await service.wait_exit() == 0


async def test_two_instances_split_the_partitions_and_hand_over_state(
    kafka_broker, create_topic, topic_name, services, tmp_path
):
    bootstrap = kafka_broker.bootstrap
    topics = await make_topics(create_topic, bootstrap, topic_name)
    solo_topics = Topics(topics.events, f"{topic_name}-solo-signals", f"{topic_name}-solo-dlq")
    await create_topic(bootstrap, solo_topics.signals, 2)
    await create_topic(bootstrap, solo_topics.dlq, 1)
    config = CAMPAIGN_HEAVY
    total = sum(event_counts(config).values())

    group = f"{topic_name}-pair"
    first, second = (
        services(name, bootstrap, topics, group, snapshot_dir=tmp_path / "shared-volume")
        for name in ("first", "second")
    )
    first.start()
    second.start()
    await asyncio.gather(first.wait_ready(), second.wait_ready())  # ready = has partitions
    traffic = asyncio.create_task(
        produce_simulation(bootstrap, topics.events, config, rate_per_s=total / 8)
    )
    await wait_committed_at_least(
        bootstrap, group, topics.events, total // 3, services=[first, second]
    )
    owned_by_first = log_partitions(first.log_text(), "assigned", topics.events)[-1]
    assert len(owned_by_first) == 2

    stopping = time.monotonic()
    first.send(signal.SIGTERM)  # leaves the group: its partitions move now
    assert await first.wait_exit() == 0
    assert time.monotonic() - stopping < 10
    assert await traffic == total
    await wait_caught_up(bootstrap, group, topics.events, services=[second])

    # The second took over all four partitions, the first's two from the snapshots the first wrote
    # on its way out, each exactly at the offset it resumed from (nothing to re-read).
    second_log = second.log_text()
    assert log_partitions(second_log, "restored", topics.events)[-1] == set(range(EVENT_PARTITIONS))
    resumed = resume_offsets(second_log, topics.events, 1)
    snapshots = snapshot_restores(second_log, topics.events)
    for partition in owned_by_first:
        assert snapshots[partition] == resumed[partition]
    samples = await second.metrics()
    for partition in range(EVENT_PARTITIONS):
        lag_labels = {"topic": topics.events, "partition": str(partition)}
        assert ("bulkwatch_consumer_lag", tuple(sorted(lag_labels.items()))) in samples

    # One instance over the same topic, for comparison.
    solo = services(
        "solo", bootstrap, solo_topics, f"{topic_name}-solo", snapshot_dir=tmp_path / "solo"
    )
    solo.start()
    await wait_caught_up(bootstrap, solo.group, topics.events, services=[solo])

    pair_signals = parse_signals(await read_topic(bootstrap, topics.signals, 2))
    solo_signals = parse_signals(await read_topic(bootstrap, solo_topics.signals, 2))
    truth = {label.account: label for label in labels(config)}
    abusive = {a for a, label in truth.items() if label.label == "abusive"}
    pair_found = detected_accounts(pair_signals) & abusive
    solo_found = detected_accounts(solo_signals) & abusive
    campaign = {a for a in abusive if truth[a].archetype == "distributed_campaign"}
    # Account rules see all of an account's evidence in both set-ups: the same accounts.
    assert pair_found - campaign == solo_found - campaign
    # Campaigns are clustered per instance, so each instance sees its partitions' share of the
    # senders; campaigns here have 20 to 200 senders, enough for each half to cross min_senders.
    assert len(pair_found & campaign) >= 0.9 * len(solo_found & campaign)

    for service in (second, solo):
        service.send(signal.SIGTERM)
        assert await service.wait_exit() == 0


async def test_sigterm_exits_cleanly_with_offsets_committed_and_state_saved(
    kafka_broker, create_topic, topic_name, services, tmp_path
):
    bootstrap = kafka_broker.bootstrap
    run = await start_mid_stream(
        create_topic, services, bootstrap, topic_name, tmp_path, name="graceful", seed=7
    )
    topics, service, total = run.topics, run.service, run.total

    stopping = time.monotonic()
    service.send(signal.SIGTERM)
    assert await service.wait_exit() == 0
    stop_s = time.monotonic() - stopping
    assert stop_s < 10, f"took {stop_s:.1f} s to stop"
    committed = await committed_offsets(bootstrap, service.group, topics.events)
    assert sum(committed.values()) < total, "stopped too late to be mid-stream"
    # Every partition's state is on disk at exactly its committed offset.
    for partition in range(EVENT_PARTITIONS):
        meta = json.loads(
            (service.snapshot_dir / f"{topics.events}-{partition}" / "meta.json").read_text()
        )
        assert meta["next_offset"] == committed[partition]

    # Restarted, it re-reads nothing and so sends nothing twice.
    service.start()
    assert await run.traffic == total
    await wait_caught_up(bootstrap, service.group, topics.events, services=[service])
    second_run = service.log_text().split("---- start ")[2]
    assert "rebuilt" not in second_run
    assert resume_offsets(service.log_text(), topics.events, 2) == committed
    expected = await expected_signal_ids(bootstrap, topics, run.policy)
    got = [s["signal_id"] for s in parse_signals(await read_topic(bootstrap, topics.signals, 2))]
    assert sorted(got) == sorted(expected)
    service.send(signal.SIGTERM)
    assert await service.wait_exit() == 0


async def test_broker_outage_of_20_s_is_survived_and_caught_up(
    kafka_broker, create_topic, topic_name, services, tmp_path
):
    bootstrap = kafka_broker.bootstrap
    broker = broker_process(bootstrap)
    run = await start_mid_stream(
        create_topic,
        services,
        bootstrap,
        topic_name,
        tmp_path,
        name="survivor",
        seed=11,
        produce_s=10,
        committed_share=1 / 4,
    )
    topics, service, total = run.topics, run.service, run.total

    committed_before = await committed_offsets(bootstrap, service.group, topics.events)
    healthz, readyz = [], []
    broker.suspend()  # SIGSTOP: the broker answers nothing, connections hang
    try:
        outage_end = time.monotonic() + 20
        while time.monotonic() < outage_end:
            healthz.append((await service.get("/healthz"))[0])
            readyz.append((await service.get("/readyz"))[0])
            await asyncio.sleep(0.5)
    finally:
        broker.resume()  # SIGCONT
    assert service.alive()
    assert set(healthz) == {200}
    assert readyz[-1] == 503, readyz  # no fetch answers for STALE_FETCH_S: not ready

    assert await run.traffic == total
    await wait_caught_up(bootstrap, service.group, topics.events, timeout_s=120, services=[service])
    await service.wait_ready(timeout_s=30)
    # Duplicates (measured: none) only for records that were not committed when the broker froze.
    events = await read_topic(bootstrap, topics.events, EVENT_PARTITIONS)
    await assert_every_signal_and_duplicates_only_past(
        bootstrap, topics, events, run.policy, committed_before
    )
    service.send(signal.SIGTERM)
    assert await service.wait_exit() == 0
