"""Soak run: ``python -m bench.soak``.

Ten million distinct accounts churn through an account table sized for one million, through the real
pipeline (``detector.pipeline.Pipeline.process`` on raw JSON records: decode -> account kernels ->
content clusters and network windows -> policy), with the service's default state sizes. Every
``--sample-every`` batches it records the process RSS (psutil) and the throughput of the batches since
the previous sample. It prints a table, writes ``rss.csv`` and ``rss.png`` to ``--out``
(default ``bench/results/soak``) and ends with one JSON line: start and end throughput, the paired
soaked-vs-fresh throughput, the largest RSS, the RSS growth after warm-up, evictions, and the bound
(bytes of the state arrays).

The claim checked (issue 9): memory stays flat within the configured bound, evictions are counted,
throughput stays within 20 % of the start.

The traffic, generated as raw records from pre-encoded pieces (the generator's time is reported
apart and is not part of the pipeline's throughput):

* accounts: account ``k`` first appears at event ``k / new_share`` (``new_share`` = accounts /
  events), so exactly ``--accounts`` distinct senders appear, steadily over the run; every other
  event is by a recent account (uniform over the last 300,000 accounts to appear), and 1 % by
  one of 2,000 bulk senders messaging random recipients (they are promoted to the heavy pool, form
  campaign clusters and draw signals);
* 92 % messages (``--text-share`` of them with a text: an SMS ham text, or two of them joined,
  which makes a new content cluster, so clusters churn too; mutated SMS spam for the bulk senders;
  30 % with an ``ip`` from 50,000 addresses), 3 % registrations, 2 % reports, 2 % blocks, 1 % group
  adds; event time advances 2,000 events per second.

Throughput is given per second of wall time spent in ``Pipeline.process`` and per CPU second of the
thread running it (``time.thread_time``). On a shared machine both move with the load of other jobs,
minutes at a time, so the run ends with a paired comparison (``--paired-events``, default 1 million
each): batch by batch in alternation, the soaked pipeline goes on with the stream and a fresh one
(new tables of the same sizes) replays the stream from its start. Both see the same machine, so their
ratio is the state's own effect on throughput. RSS samples stop before this phase (the fresh tables
add their own memory).
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import msgspec
import numpy as np
import psutil

from detector.content import ContentClusters
from detector.network import NetworkActivity
from detector.pipeline import STAGES, Pipeline
from detector.policy import load_policy
from detector.simulator import load_sms
from detector.state import PartitionState
from kernels import accounts as account_kernels
from kernels import lsh as lsh_kernels

T0_MS = 1_767_225_600_000
BULK_SENDERS = 2_000
BULK_FIRST_ID = 9_000_000_000  # far above the churning accounts, also past the end of the stream
BULK_SHARE = 0.01
IP_POOL = 50_000
EVENTS_PER_EVENT_S = 2_000
MIB = 1 << 20


@dataclass(frozen=True)
class SoakConfig:
    events: int = 25_000_000
    accounts: int = 10_000_000
    capacity: int = 1_000_000
    cluster_capacity: int = 200_000  # the service default (Settings.cluster_capacity)
    network_capacity: int = 200_000  # the NetworkActivity default
    batch_size: int = 5_000  # the service default (Settings.batch_size)
    sample_every: int = 100  # batches per RSS / throughput sample
    recent: int = 300_000
    text_share: float = 0.4
    warmup_share: float = 0.1
    paired_events: int = 1_000_000
    seed: int = 9


class Traffic:
    """Raw JSON records of the soak traffic, batch by batch (see the module docstring)."""

    def __init__(self, config: SoakConfig) -> None:
        if not 0 < config.accounts <= config.events:
            raise ValueError("need 0 < accounts <= events")
        self.config = config
        self.rng = np.random.default_rng(config.seed)
        self.new_share = config.accounts / config.events
        ham, spam = load_sms()
        encode = msgspec.json.encode
        self.ham = [encode(t)[1:-1] for t in ham]  # JSON-escaped, without the quotes
        variants = []
        for i, text in enumerate(spam):
            for v in range(8):  # campaigns mutate numbers and add a tag
                variants.append(b',"text":' + encode(f"{text} {1000 + 37 * i + v}"))
        self.spam = variants
        self.ips = [
            b',"ip":"10.%d.%d.%d"' % (i >> 16, (i >> 8) & 255, i & 255) for i in range(IP_POOL)
        ]
        self.contacts = (b',"in_contacts":false', b',"in_contacts":true', b"")

    def batch(self, first: int, n: int) -> list[bytes]:
        c, rng = self.config, self.rng
        index = np.arange(first, first + n, dtype=np.int64)
        # Account k appears first at event ceil(k / new_share): exactly `accounts` distinct senders.
        newest = np.floor(index * self.new_share).astype(np.int64)
        is_new = np.floor((index + 1) * self.new_share).astype(np.int64) > newest
        recent = newest - rng.integers(0, np.minimum(c.recent, newest + 1))
        account = np.where(is_new, newest, recent)
        bulk = (rng.random(n) < BULK_SHARE) & ~is_new
        account[bulk] = BULK_FIRST_ID + rng.integers(0, BULK_SENDERS, int(bulk.sum()))
        kind = rng.choice(5, size=n, p=[0.92, 0.03, 0.02, 0.02, 0.01])
        kind[bulk] = 0
        ts = T0_MS + index * 1000 // EVENTS_PER_EVENT_S
        peer = np.where(
            bulk, rng.integers(10**9, 10**10, n), account * 7 + rng.geometric(0.3, n) % 20
        )
        has_text = rng.random(n) < c.text_share
        text = np.where(
            bulk,
            rng.integers(0, len(self.spam), n),
            np.where(has_text, rng.integers(0, 2 * len(self.ham), n), -1),
        )
        ip = np.where(rng.random(n) < 0.3, rng.integers(0, IP_POOL, n), -1)
        ip[bulk] = account[bulk] % 40  # bulk senders share a few proxy addresses
        contact = np.where(bulk, 0, rng.integers(0, 3, n))
        ham, spam, ips, contacts = self.ham, self.spam, self.ips, self.contacts
        n_ham = len(ham)
        records = []
        append = records.append
        for t, a, k, p, x, b, i, ct in zip(
            ts.tolist(), account.tolist(), kind.tolist(), peer.tolist(), text.tolist(),
            bulk.tolist(), ip.tolist(), contact.tolist(), strict=True,
        ):  # fmt: skip
            if k == 0:
                if b:
                    body = spam[x]
                elif x < 0:
                    body = b""
                elif x & 1:  # a common text
                    body = b',"text":"%s"' % ham[x >> 1]
                else:  # a rare one: two texts joined make a new content cluster
                    body = b',"text":"%s %s"' % (ham[x >> 1], ham[(x * 7919 + t) % n_ham])
                append(
                    b'{"type":"message","ts":%d,"account":"+1%010d","peer":"+2%010d"%s%s%s}'
                    % (t, a, p, body, contacts[ct], ips[i] if i >= 0 else b"")
                )
            elif k == 1:
                append(b'{"type":"registration","ts":%d,"account":"+1%010d"}' % (t, a))
            elif k == 4:
                append(
                    b'{"type":"group_add","ts":%d,"account":"+1%010d","peer":"g%d","members":%d}'
                    % (t, a, p, 1 + p % 50)
                )
            else:
                append(
                    b'{"type":"%s","ts":%d,"account":"+2%010d","peer":"+1%010d"}'
                    % ((b"report", b"block")[k - 2], t, p, a)
                )
        return records


@dataclass
class Sample:
    events: int
    elapsed_s: float  # wall time since the start, generation included
    rss_mib: float
    events_per_s: float  # pipeline throughput over the batches since the previous sample
    events_per_cpu_s: float  # the same per CPU second of the pipeline's thread
    us_per_event: dict  # wall microseconds per event and pipeline stage, since the previous sample
    tracked: int
    evictions: int
    heavy_evictions: int
    clusters: int
    cluster_evictions: int
    gate_entries: int
    signals: int


def state_nbytes(state: PartitionState, content: ContentClusters, network: NetworkActivity) -> dict:
    return {
        "accounts": account_kernels.state_nbytes(state.accounts),
        "content": int(sum(a.nbytes for a in content.state)),
        "network": account_kernels.state_nbytes(network.state),
    }


def run(config: SoakConfig, *, progress: bool = True) -> tuple[list[Sample], dict]:
    process = psutil.Process()
    # Kernels compiled (or loaded from cache) before anything is measured.
    account_kernels.warm_up()
    ContentClusters(capacity=1024).warm_up()
    traffic = Traffic(config)
    gc.collect()
    rss_before_state = process.memory_info().rss
    policy = load_policy()
    content = ContentClusters(capacity=config.cluster_capacity)
    network = NetworkActivity(capacity=config.network_capacity)
    state = PartitionState.new(capacity=config.capacity, lateness_s=30, ttl_s=2 * 86_400)
    pipeline = Pipeline(policy, content, network)
    nbytes = state_nbytes(state, content, network)

    samples: list[Sample] = []
    done = signals = 0
    pipeline_s = generate_s = window_s = window_cpu_s = 0.0
    window_events = 0
    window_stages: dict[str, float] = {}
    started = time.perf_counter()
    batches = -(-config.events // config.batch_size)
    for number in range(batches):
        n = min(config.batch_size, config.events - done)
        t0 = time.perf_counter()
        records = traffic.batch(done, n)
        t1, cpu1 = time.perf_counter(), time.thread_time()
        result = pipeline.process(records, state)
        t2, cpu2 = time.perf_counter(), time.thread_time()
        window_cpu_s += cpu2 - cpu1
        generate_s += t1 - t0
        pipeline_s += t2 - t1
        window_s += t2 - t1
        done += n
        window_events += n
        signals += len(result.signals)
        for stage, spent in result.stage_seconds.items():
            window_stages[stage] = window_stages.get(stage, 0.0) + spent
        if (number + 1) % config.sample_every == 0 or number == batches - 1:
            stats = account_kernels.account_state_stats(state.accounts)
            meta = content.state.meta
            clusters = content.stats()["clusters"]
            samples.append(
                Sample(
                    events=done,
                    elapsed_s=round(time.perf_counter() - started, 2),
                    rss_mib=round(process.memory_info().rss / MIB, 1),
                    events_per_s=round(window_events / window_s),
                    events_per_cpu_s=round(window_events / max(window_cpu_s, 1e-9)),
                    us_per_event={
                        k: round(v * 1e6 / window_events, 2) for k, v in window_stages.items()
                    },
                    tracked=stats["tracked"],
                    evictions=stats["evictions"],
                    heavy_evictions=stats["heavy_evictions"],
                    clusters=clusters,
                    cluster_evictions=int(meta[lsh_kernels.META_EVICTIONS]),
                    gate_entries=len(state.gate),
                    signals=signals,
                )
            )
            window_s = window_cpu_s = 0.0
            window_events = 0
            window_stages = {}
            if progress:
                s = samples[-1]
                print(
                    f"\r{done / config.events:6.1%}  {s.events_per_s:>8,} ev/s  "
                    f"RSS {s.rss_mib:,.0f} MiB  evictions {s.evictions:,}",
                    end="",
                    file=sys.stderr,
                    flush=True,
                )
    if progress:
        print(file=sys.stderr)
    final = account_kernels.account_state_stats(state.accounts)
    paired = (
        paired_comparison(config, traffic, pipeline, state, done) if config.paired_events else None
    )
    return samples, {
        "paired": paired,
        "rss_before_state_mib": round(rss_before_state / MIB, 1),
        "nbytes": nbytes,
        "pipeline_s": pipeline_s,
        "generate_s": generate_s,
        "final_accounts": final,
        "content": content.stats(),
        "network": network.stats(),
    }


def paired_comparison(
    config: SoakConfig, traffic: Traffic, pipeline: Pipeline, state: PartitionState, done: int
) -> dict:
    """The soaked pipeline against a fresh one, batch by batch in alternation, so both see the same
    machine (other jobs slow a shared machine down for minutes at a time, which a comparison of the
    start and the end of the run cannot tell from the state's own effect).

    The soaked pipeline goes on with the stream after its last event; the fresh one (new tables of the
    same sizes) replays the stream from its first event, which is what the soak's start measured.
    """
    fresh_traffic = Traffic(config)  # the same seed: the same batches as at the start
    fresh_state = PartitionState.new(capacity=config.capacity, lateness_s=30, ttl_s=2 * 86_400)
    fresh = Pipeline(
        pipeline.policy,
        ContentClusters(capacity=config.cluster_capacity),
        NetworkActivity(capacity=config.network_capacity),
    )
    spent = {"soaked": [0.0, 0.0], "fresh": [0.0, 0.0]}  # wall s, CPU s
    replayed = 0
    while replayed < config.paired_events:
        n = min(config.batch_size, config.paired_events - replayed)
        runs = (
            ("soaked", pipeline, state, traffic.batch(done, n)),
            ("fresh", fresh, fresh_state, fresh_traffic.batch(replayed, n)),
        )
        for name, runner, runner_state, records in runs:
            wall, cpu = time.perf_counter(), time.thread_time()
            runner.process(records, runner_state)
            spent[name][0] += time.perf_counter() - wall
            spent[name][1] += time.thread_time() - cpu
        done += n
        replayed += n
    rates = {
        f"{name}_events_per{unit}": round(replayed / seconds[i])
        for name, seconds in spent.items()
        for i, unit in enumerate(("_s", "_cpu_s"))
    }
    rates["soaked_vs_fresh"] = round(rates["soaked_events_per_s"] / rates["fresh_events_per_s"], 3)
    rates["soaked_vs_fresh_cpu"] = round(
        rates["soaked_events_per_cpu_s"] / rates["fresh_events_per_cpu_s"], 3
    )
    rates["events_each"] = replayed
    return rates


def summarise(config: SoakConfig, samples: list[Sample], extra: dict) -> dict:
    # Start and end: medians of the first and last few samples (noise of a shared machine).
    k = max(1, min(3, len(samples) // 4))

    def start_end(rates: list[float]) -> tuple[float, float]:
        return float(np.median(rates[:k])), float(np.median(rates[-k:]))

    start, end = start_end([s.events_per_s for s in samples])
    start_cpu, end_cpu = start_end([s.events_per_cpu_s for s in samples])
    warm = next(s for s in samples if s.events >= config.warmup_share * config.events)
    after = [s for s in samples if s.events >= warm.events]
    bound_mib = sum(extra["nbytes"].values()) / MIB
    max_rss = max(s.rss_mib for s in samples)
    final = extra["final_accounts"]
    return {
        "benchmark": "soak",
        "events": config.events,
        "distinct_accounts": config.accounts + BULK_SENDERS,
        "account_capacity": config.capacity,
        "batch_size": config.batch_size,
        "start_events_per_s": round(start),
        "end_events_per_s": round(end),
        "end_vs_start": round(end / start, 3),
        "start_events_per_cpu_s": round(start_cpu),
        "end_events_per_cpu_s": round(end_cpu),
        "end_vs_start_cpu": round(end_cpu / start_cpu, 3),
        "samples_per_median": k,
        "mean_events_per_s": round(config.events / extra["pipeline_s"]),
        "generator_events_per_s": round(config.events / extra["generate_s"]),
        "rss_before_state_mib": extra["rss_before_state_mib"],
        "state_bound_mib": round(bound_mib, 1),
        "state_bound_by_table_mib": {k: round(v / MIB, 1) for k, v in extra["nbytes"].items()},
        "max_rss_mib": max_rss,
        "rss_at_warmup_mib": warm.rss_mib,
        "rss_growth_after_warmup_mib": round(max(s.rss_mib for s in after) - warm.rss_mib, 1),
        "end_rss_mib": samples[-1].rss_mib,
        "max_rss_minus_before_state_mib": round(max_rss - extra["rss_before_state_mib"], 1),
        "max_rss_above_bound_mib": round(max_rss - extra["rss_before_state_mib"] - bound_mib, 1),
        "evictions": final["evictions"],
        "expirations": final["expirations"],
        "heavy_evictions": final["heavy_evictions"],
        "pair_evictions": final["pair_evictions"],
        "tracked_at_end": final["tracked"],
        "cluster_evictions": extra["content"]["evictions"],
        "paired": extra["paired"],
        "signals": samples[-1].signals,
        "gate_entries": samples[-1].gate_entries,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }


def write_outputs(out: Path, config: SoakConfig, samples: list[Sample], summary: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "rss.csv", "w", newline="") as handle:
        rows = []
        for sample in samples:
            row = asdict(sample)
            for stage in STAGES:
                row[f"us_per_event_{stage}"] = row["us_per_event"].get(stage, 0.0)
            del row["us_per_event"]
            rows.append(row)
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out / "summary.json").write_text(
        json.dumps({"config": asdict(config), "summary": summary}, indent=2) + "\n"
    )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    events_m = [s.events / 1e6 for s in samples]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
    top.plot(events_m, [s.rss_mib for s in samples], color="tab:blue", label="process RSS")
    top.axhline(
        summary["rss_before_state_mib"] + summary["state_bound_mib"],
        color="tab:red",
        linestyle="--",
        label="RSS before state + state arrays (the bound)",
    )
    top.axvline(config.warmup_share * config.events / 1e6, color="grey", linestyle=":")
    top.set_ylabel("RSS (MiB)")
    top.set_ylim(0, max(s.rss_mib for s in samples) * 1.15)
    top.legend(loc="lower right")
    top.set_title(
        f"Soak: {summary['distinct_accounts'] / 1e6:.0f} M distinct accounts through a "
        f"{config.capacity / 1e6:.0f} M-account table"
    )
    bottom.plot(events_m, [s.events_per_s / 1e3 for s in samples], color="tab:green",
                label="per wall second")  # fmt: skip
    bottom.plot(events_m, [s.events_per_cpu_s / 1e3 for s in samples], color="tab:olive",
                linestyle="-.", label="per CPU second")  # fmt: skip
    bottom.axhline(summary["start_events_per_cpu_s"] * 0.8 / 1e3, color="tab:red", linestyle="--",
                   label="80 % of the start (per CPU second)")  # fmt: skip
    bottom.set_ylabel("pipeline throughput (k events/s)")
    bottom.set_xlabel("events processed (millions)")
    bottom.set_ylim(bottom=0)
    twin = bottom.twinx()
    twin.plot(events_m, [s.evictions / 1e6 for s in samples], color="tab:orange")
    twin.set_ylabel("account evictions (millions)", color="tab:orange")
    bottom.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(out / "rss.png", dpi=110)
    plt.close(fig)


def print_table(samples: list[Sample], summary: dict, *, rows: int = 24) -> None:
    step = max(1, len(samples) // rows)
    shown = samples[::step]
    if shown[-1] is not samples[-1]:
        shown.append(samples[-1])
    print(
        f"{'events':>12} {'wall s':>8} {'RSS MiB':>9} {'events/s':>10} {'ev/CPU s':>10} "
        f"{'tracked':>10} "
        f"{'evictions':>11} {'clusters':>9} {'gate':>8}"
    )
    for s in shown:
        print(
            f"{s.events:>12,} {s.elapsed_s:>8.0f} {s.rss_mib:>9,.0f} {s.events_per_s:>10,} "
            f"{s.events_per_cpu_s:>10,} "
            f"{s.tracked:>10,} {s.evictions:>11,} {s.clusters:>9,} {s.gate_entries:>8,}"
        )
    print()
    print(
        f"throughput: start {summary['start_events_per_s']:,} ev/s, end "
        f"{summary['end_events_per_s']:,} ev/s ({summary['end_vs_start']:.0%} of the start; "
        "the claim: >= 80 %)"
    )
    print(
        f"per CPU second: start {summary['start_events_per_cpu_s']:,}, end "
        f"{summary['end_events_per_cpu_s']:,} ({summary['end_vs_start_cpu']:.0%} of the start)"
    )
    paired = summary["paired"]
    if paired:
        print(
            f"paired, batch by batch ({paired['events_each']:,} events each): soaked state "
            f"{paired['soaked_events_per_s']:,} ev/s ({paired['soaked_events_per_cpu_s']:,} per CPU "
            f"s), fresh state replaying the start {paired['fresh_events_per_s']:,} ev/s "
            f"({paired['fresh_events_per_cpu_s']:,} per CPU s): soaked/fresh "
            f"{paired['soaked_vs_fresh']:.0%} ({paired['soaked_vs_fresh_cpu']:.0%} per CPU s)"
        )
    print(
        f"RSS: {summary['rss_before_state_mib']:,.0f} MiB before the state, max "
        f"{summary['max_rss_mib']:,.0f} MiB; state arrays (the bound) "
        f"{summary['state_bound_mib']:,.0f} MiB, max RSS - before - arrays "
        f"{summary['max_rss_above_bound_mib']:,.1f} MiB; growth after warm-up "
        f"{summary['rss_growth_after_warmup_mib']:,.1f} MiB"
    )
    print(
        f"evictions: {summary['evictions']:,} accounts, {summary['heavy_evictions']:,} heavy rows, "
        f"{summary['cluster_evictions']:,} clusters; signal gate {summary['gate_entries']:,} "
        "entries"
    )


def main(argv: list[str] | None = None) -> int:
    defaults = SoakConfig()
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__.split("\n\n")[1]
    )
    parser.add_argument("--events", type=int, default=defaults.events, help="events in total")
    parser.add_argument("--accounts", type=int, default=defaults.accounts,
                        help="distinct accounts (plus 2,000 bulk senders)")  # fmt: skip
    parser.add_argument("--capacity", type=int, default=defaults.capacity, help="account table")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--sample-every", type=int, default=defaults.sample_every,
                        help="batches per sample")  # fmt: skip
    parser.add_argument("--text-share", type=float, default=defaults.text_share)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--paired-events", type=int, default=defaults.paired_events,
                        help="events of the final soaked-vs-fresh comparison (0: none)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("bench/results/soak"))
    args = parser.parse_args(argv)
    config = SoakConfig(
        events=args.events,
        accounts=args.accounts,
        capacity=args.capacity,
        batch_size=args.batch_size,
        sample_every=args.sample_every,
        text_share=args.text_share,
        seed=args.seed,
        paired_events=args.paired_events,
    )
    samples, extra = run(config)
    summary = summarise(config, samples, extra)
    write_outputs(args.out, config, samples, summary)
    print_table(samples, summary)
    print(f"wrote {args.out / 'rss.csv'}, {args.out / 'rss.png'}, {args.out / 'summary.json'}")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
