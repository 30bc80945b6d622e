"""Replay: the policy workbench. Run recorded events through the detector as fast as possible, write
the signals, and (with ground-truth labels) report recall, false bans and time to detect.

The decode-only speed of the same file is measured in the same run, so the detector's cost is seen
beside the floor set by merely parsing the input. ``--compare`` evaluates a second policy on the very
same features in the same pass and lists the accounts the two policies ban differently.
"""

from __future__ import annotations

import csv
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from detector.content import ContentClusters
from detector.events import decode_batch
from detector.network import NetworkActivity
from detector.pipeline import Pipeline
from detector.policy import BanSignal, Policy, SignalGate, encode_signal, evaluate, make_signals
from detector.sinks import JsonlWriter, dead_letter_json
from detector.sources import PartitionKey, read_jsonl
from detector.state import PartitionState

REPLAY_PARTITION = PartitionKey("replay", 0)


@dataclass(frozen=True)
class ReplayOptions:
    events: Path
    out: Path
    labels: Path | None = None
    report: Path | None = None
    dead_letters: Path | None = None
    batch_size: int = 20_000
    account_capacity: int = 2_000_000
    cluster_capacity: int = 500_000
    lateness_s: int = 30
    account_ttl_s: int = 2 * 86_400


@dataclass
class PolicyOutcome:
    """What one policy decided over the replay."""

    policy: Policy
    first_ban_ts: dict[str, int] = field(default_factory=dict)
    actions: dict[str, str] = field(default_factory=dict)  # strongest enforced action per account
    signals_by_reason: Counter[tuple[str, bool]] = field(default_factory=Counter)
    signals: int = 0

    def record(self, signals: Iterable[BanSignal]) -> None:
        rank = {"review": 1, "throttle": 2, "ban": 3}
        for signal in signals:
            self.signals += 1
            for code in signal.reasons:
                self.signals_by_reason[(code, signal.shadow)] += 1
            if signal.shadow:
                continue
            if signal.action == "ban":
                self.first_ban_ts.setdefault(signal.account, signal.ts)
            current = self.actions.get(signal.account)
            if current is None or rank[signal.action] > rank[current]:
                self.actions[signal.account] = signal.action


@dataclass
class ReplayResult:
    events: int
    records: int
    dead_letters: int
    decode_events_per_s: float
    detector_events_per_s: float
    outcomes: list[PolicyOutcome]
    first_seen_ts: dict[str, int]


def replay(policy: Policy, options: ReplayOptions, *, compare: Policy | None = None) -> str:
    """Replay ``options.events``; writes signals (and the report); returns the printed summary."""
    result = run_replay(policy, options, compare=compare)
    labels = read_labels(options.labels) if options.labels is not None else None
    text = render_report(result, labels, options)
    if options.report is not None:
        options.report.parent.mkdir(parents=True, exist_ok=True)
        options.report.write_text(text, encoding="utf-8")
    return text


def run_replay(
    policy: Policy, options: ReplayOptions, *, compare: Policy | None = None
) -> ReplayResult:
    """The replay itself: a decode-only pass (timed), then the detector pass writing signals."""
    decode_rate, _ = _time_decode_only(options)
    content = ContentClusters(capacity=options.cluster_capacity)
    content.warm_up()
    pipeline = Pipeline(policy, content, NetworkActivity(lateness_s=options.lateness_s))
    state = PartitionState.new(
        capacity=options.account_capacity,
        lateness_s=options.lateness_s,
        ttl_s=options.account_ttl_s,
    )
    outcomes = [PolicyOutcome(policy)]
    compare_gate = SignalGate(options.account_capacity) if compare is not None else None
    if compare is not None:
        outcomes.append(PolicyOutcome(compare))
    signals_out = JsonlWriter(options.out)
    signals_out.open()
    dead_path = options.dead_letters or options.out.with_name(
        options.out.stem + ".dead-letters.jsonl"
    )
    dead_out = JsonlWriter(dead_path)
    first_seen: dict[str, int] = {}
    track_first_seen = options.labels is not None
    events = records = dead = 0
    offset = 0
    started = time.perf_counter()
    for raw in read_jsonl(options.events, batch_size=options.batch_size):
        result = pipeline.process(raw, state)
        records += len(raw)
        events += len(result.events)
        dead += len(result.dead_letters)
        for signal in result.signals:
            signals_out.write(encode_signal(signal))
        for letter in result.dead_letters:
            dead_out.write(dead_letter_json(letter, REPLAY_PARTITION, offset))
        outcomes[0].record(result.signals)
        if compare is not None and result.inputs is not None and compare_gate is not None:
            decisions = evaluate(compare, result.inputs)
            outcomes[1].record(
                make_signals(
                    compare, result.inputs, decisions, compare_gate, exemplar=content.exemplar
                )
            )
        if track_first_seen:
            for account, ts in zip(
                result.events.accounts, result.events.ts_ms.tolist(), strict=True
            ):
                first_seen.setdefault(account, ts)
        offset += len(raw)
    elapsed = time.perf_counter() - started
    signals_out.close()
    dead_out.close()
    return ReplayResult(
        events=events,
        records=records,
        dead_letters=dead,
        decode_events_per_s=decode_rate,
        detector_events_per_s=events / elapsed if elapsed > 0 else float("inf"),
        outcomes=outcomes,
        first_seen_ts=first_seen,
    )


def _time_decode_only(options: ReplayOptions) -> tuple[float, int]:
    events = 0
    started = time.perf_counter()
    for raw in read_jsonl(options.events, batch_size=options.batch_size):
        events += len(decode_batch(raw).events)
    elapsed = time.perf_counter() - started
    return (events / elapsed if elapsed > 0 else float("inf")), events


@dataclass(frozen=True)
class Label:
    account: str
    label: str
    archetype: str


def read_labels(path: Path) -> dict[str, Label]:
    """Labels CSV ``account,label,archetype`` (a header row is allowed)."""
    labels: dict[str, Label] = {}
    with open(path, encoding="utf-8", newline="") as handle:
        for row in csv.reader(handle):
            if not row or row[0] == "account":
                continue
            account, label, archetype = row[0], row[1], row[2]
            labels[account] = Label(account, label, archetype)
    return labels


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def quality_table(
    outcome: PolicyOutcome, labels: dict[str, Label], first_seen: dict[str, int]
) -> list[dict]:
    """Per archetype: accounts, banned, recall or false-ban rate, time to detect (event time)."""
    rows: dict[str, dict] = defaultdict(
        lambda: {"accounts": 0, "banned": 0, "actioned": 0, "ttd": []}
    )
    for account, label in labels.items():
        if account not in first_seen:
            continue  # never acted in this file
        row = rows[(label.label, label.archetype)]
        row["accounts"] += 1
        if outcome.actions.get(account) is not None:
            row["actioned"] += 1
        ban_ts = outcome.first_ban_ts.get(account)
        if ban_ts is not None:
            row["banned"] += 1
            row["ttd"].append((ban_ts - first_seen[account]) / 1000.0)
    table = []
    for (label, archetype), row in sorted(rows.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        share = row["banned"] / row["accounts"] if row["accounts"] else float("nan")
        table.append(
            {
                "label": label,
                "archetype": archetype,
                "accounts": row["accounts"],
                "banned": row["banned"],
                "any_action": row["actioned"],
                "recall": share if label == "abusive" else None,
                "false_ban_rate": share if label == "legit" else None,
                "ttd_median_s": statistics.median(row["ttd"]) if row["ttd"] else None,
                "ttd_p95_s": _percentile(row["ttd"], 95) if row["ttd"] else None,
            }
        )
    return table


def overall_quality(table: list[dict]) -> dict[str, float]:
    abusive = sum(r["accounts"] for r in table if r["label"] == "abusive")
    caught = sum(r["banned"] for r in table if r["label"] == "abusive")
    legit = sum(r["accounts"] for r in table if r["label"] == "legit")
    false_bans = sum(r["banned"] for r in table if r["label"] == "legit")
    banned = caught + false_bans
    return {
        "precision": caught / banned if banned else float("nan"),
        "recall": caught / abusive if abusive else float("nan"),
        "false_ban_rate": false_bans / legit if legit else float("nan"),
        "false_bans": false_bans,
        "legit_accounts": legit,
        "abusive_accounts": abusive,
    }


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and np.isnan(value):
        return "n/a"
    return f"{value:.{digits}f}"


def render_report(
    result: ReplayResult, labels: dict[str, Label] | None, options: ReplayOptions
) -> str:
    """The replay report as Markdown (it reads well on a terminal too)."""
    lines = [
        f"# bulkwatch replay of {options.events.name}",
        "",
        f"- records {result.records:,}, valid events {result.events:,}, dead letters {result.dead_letters:,}",
        f"- decode only: {result.decode_events_per_s:,.0f} events/s; whole detector: "
        f"{result.detector_events_per_s:,.0f} events/s "
        f"({result.detector_events_per_s / result.decode_events_per_s:.2f} of decode-only)",
        f"- signals written to {options.out}",
    ]
    for outcome in result.outcomes:
        policy = outcome.policy
        lines += ["", f"## Policy `{policy.version}` ({Path(policy.source).name})", ""]
        if labels is not None:
            table = quality_table(outcome, labels, result.first_seen_ts)
            overall = overall_quality(table)
            lines += [
                "| label | archetype | accounts | banned | any action | recall | false-ban rate | "
                "median TTD (s) | p95 TTD (s) |",
                "|---|---|---:|---:|---:|---:|---:|---:|---:|",
            ]
            for row in table:
                lines.append(
                    f"| {row['label']} | {row['archetype']} | {row['accounts']:,} | {row['banned']:,} | "
                    f"{row['any_action']:,} | {_fmt(row['recall'])} | {_fmt(row['false_ban_rate'], 5)} | "
                    f"{_fmt(row['ttd_median_s'], 1)} | {_fmt(row['ttd_p95_s'], 1)} |"
                )
            lines += [
                "",
                f"Bans: precision {_fmt(overall['precision'], 4)}, recall {_fmt(overall['recall'], 4)}, "
                f"false bans {overall['false_bans']} of {overall['legit_accounts']:,} legit accounts "
                f"(rate {_fmt(overall['false_ban_rate'], 6)}).",
            ]
        lines += ["", "| reason | enforced signals | shadow signals |", "|---|---:|---:|"]
        codes = sorted({code for code, _ in outcome.signals_by_reason})
        for code in codes:
            lines.append(
                f"| {code} | {outcome.signals_by_reason[(code, False)]:,} | "
                f"{outcome.signals_by_reason[(code, True)]:,} |"
            )
    if len(result.outcomes) == 2:
        lines += _compare_lines(result.outcomes[0], result.outcomes[1], labels)
    return "\n".join(lines) + "\n"


def _compare_lines(
    a: PolicyOutcome, b: PolicyOutcome, labels: dict[str, Label] | None
) -> list[str]:
    banned_a = set(a.first_ban_ts)
    banned_b = set(b.first_ban_ts)
    only_a = sorted(banned_a - banned_b)
    only_b = sorted(banned_b - banned_a)

    def describe(accounts: list[str]) -> str:
        if labels is None:
            return ", ".join(accounts[:20]) + (" ..." if len(accounts) > 20 else "")
        kinds = Counter(
            f"{labels[x].label}/{labels[x].archetype}" if x in labels else "unlabelled"
            for x in accounts
        )
        return ", ".join(f"{kind}: {n}" for kind, n in kinds.most_common())

    return [
        "",
        f"## Differences: `{a.policy.version}` vs `{b.policy.version}`",
        "",
        f"- banned by both: {len(banned_a & banned_b):,}",
        f"- banned only by `{a.policy.version}`: {len(only_a):,} ({describe(only_a) or 'none'})",
        f"- banned only by `{b.policy.version}`: {len(only_b):,} ({describe(only_b) or 'none'})",
    ]
