"""Turn the results of ``bench load`` into ``results.json``, PNG plots and ``report.md``.

``python -m bench report bench/results/<name>/results.json`` redraws the plots and the Markdown from
a saved run, so the presentation can change without re-running the benchmark.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np

from detector.pipeline import STAGES

COLOURS = {
    "ceiling": "#7f7f7f",
    "bulkwatch": "#1f77b4",
    "bulkwatch_x2": "#17becf",
    "naive": "#d62728",
}
DRAIN_NAMES = {
    "ceiling_x1": "ceiling (bare aiokafka loop)",
    "ceiling_x2": "ceiling, 2 consumers",
    "bulkwatch_x1": "bulkwatch, 1 instance",
    "bulkwatch_x2": "bulkwatch, 2 instances",
    "bulkwatch_x1_cpu_limit": "bulkwatch, 1 instance, CPU limit",
    "bulkwatch_x2_cpu_limit": "bulkwatch, 2 instances, CPU limit each",
    "naive_x1": "naive Python + datasketch",
}
QUALITY_NAMES = {
    "bulkwatch_x1": "bulkwatch x1",
    "bulkwatch_x2": "bulkwatch x2",
    "naive_x1": "naive",
}
PLOTS = {
    "throughput": "throughput_vs_offered.png",
    "latency": "latency_cdf.png",
    "quality": "quality.png",
    "drains": "max_throughput.png",
    "timeline": "drain_timeline.png",
}


def write_report(results: dict[str, Any], out_dir: Path) -> None:
    """Write results.json, the plots and report.md into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(
        json.dumps(_jsonable(results), indent=1, sort_keys=False) + "\n", encoding="utf-8"
    )
    plot_throughput(results, out_dir / PLOTS["throughput"])
    plot_latency(results, out_dir / PLOTS["latency"])
    plot_quality(results, out_dir / PLOTS["quality"])
    plot_drains(results, out_dir / PLOTS["drains"])
    plot_timeline(results, out_dir / PLOTS["timeline"])
    (out_dir / "report.md").write_text(render_markdown(results), encoding="utf-8")


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    return value


# --------------------------------------------------------------------------------------------------
# Plots


def _k(x: float, _pos: int | None = None) -> str:
    return f"{x / 1000:,.0f}k" if x >= 1000 else f"{x:,.0f}"


def plot_throughput(results: dict[str, Any], path: Path) -> None:
    """Achieved vs offered load per system, with each system's flat-out maximum."""
    fig, ax = plt.subplots(figsize=(8, 5.2), dpi=110)
    sweeps = results.get("sweep", [])
    top = 0.0
    for system in ("ceiling", "bulkwatch", "naive"):
        points = sorted(
            (s["produced_per_s"], s["achieved_per_s"], s["kept_up"])
            for s in sweeps
            if s["system"] == system and s["load_share"] is not None
        )
        if not points:
            continue
        offered = [p[0] for p in points]
        achieved = [p[1] for p in points]
        top = max(top, *offered, *achieved)
        ax.plot(offered, achieved, "-o", color=COLOURS[system], label=f"{system} (achieved)", lw=2)
        for x, y, kept in points:
            if not kept:
                ax.plot(x, y, "x", color="black", ms=9, mew=2)
    for key, colour, style in (
        ("ceiling_x1", COLOURS["ceiling"], ":"),
        ("bulkwatch_x1", COLOURS["bulkwatch"], "--"),
        ("bulkwatch_x2", COLOURS["bulkwatch_x2"], "--"),
        ("naive_x1", COLOURS["naive"], "--"),
    ):
        rate = results.get("drains", {}).get(key, {}).get("events_per_s")
        if rate:
            ax.axhline(rate, color=colour, ls=style, lw=1)
            ax.annotate(
                f"{DRAIN_NAMES[key]} max {_k(rate)}/s",
                (0, rate),
                xytext=(4, 3),
                textcoords="offset points",
                fontsize=8,
                color=colour,
            )
    if top:
        ax.plot([0, top * 1.05], [0, top * 1.05], color="#bbbbbb", lw=1, label="achieved = offered")
    ax.plot([], [], "x", color="black", ms=8, mew=2, label="did not keep up (> 1 s behind)")
    ax.set_xlabel("offered load: events/s the paced producer delivered")
    ax.set_ylabel("consumed (events/s)")
    ax.xaxis.set_major_formatter(_k)
    ax.yaxis.set_major_formatter(_k)
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.set_title("Throughput vs offered load (one instance each, same topic and data)")
    ax.legend(loc="upper left", bbox_to_anchor=(0.0, 0.93), fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_latency(results: dict[str, Any], path: Path) -> None:
    """CDF of end-to-end signal latency at each offered load."""
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    sweeps = [s for s in results.get("sweep", []) if s.get("latencies_s")]
    cmap = plt.get_cmap("Blues")
    bulkwatch = [s for s in sweeps if s["system"] == "bulkwatch"]
    for i, s in enumerate(sorted(bulkwatch, key=lambda s: s["offered_per_s"])):
        values = np.asarray(s["latencies_s"])
        shade = cmap(0.45 + 0.55 * (i + 1) / max(len(bulkwatch), 1))
        _cdf(ax, values, shade, f"bulkwatch at {s['load_share']:.0%} ({_k(s['offered_per_s'])}/s)")
    for s in sweeps:
        if s["system"] == "naive" and s["load_share"] is None:
            _cdf(
                ax,
                np.asarray(s["latencies_s"]),
                COLOURS["naive"],
                f"naive at 50% of its own max ({_k(s['offered_per_s'])}/s)",
            )
    ax.axvline(1.0, color="black", ls="--", lw=1)
    ax.annotate(
        "target: p99 < 1 s at 50%",
        (1.0, 0.02),
        xytext=(4, 0),
        textcoords="offset points",
        fontsize=8,
    )
    ax.axhline(0.99, color="#999999", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}"))
    ax.set_xlabel("signal latency: signal appended - triggering event produced (s, log scale)")
    ax.set_ylabel("share of signals")
    ax.set_ylim(0, 1.01)
    ax.set_title("End-to-end signal latency (CDF)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _cdf(ax: Any, values: np.ndarray, colour: Any, label: str) -> None:
    if values.size == 0:
        return
    values = np.sort(np.maximum(values, 1e-3))
    shares = np.arange(1, values.size + 1) / values.size
    p99 = float(np.percentile(values, 99))
    ax.step(values, shares, where="post", color=colour, lw=2, label=f"{label}: p99 {p99:.2f} s")


def plot_quality(results: dict[str, Any], path: Path) -> None:
    """Recall per abusive archetype and false bans per legit archetype, per detector."""
    quality = results.get("quality", {})
    runs = [k for k in QUALITY_NAMES if k in quality]
    if not runs:
        return
    rows = quality[runs[0]]["table"]
    abusive = [r["archetype"] for r in rows if r["label"] == "abusive"]
    legit = [r["archetype"] for r in rows if r["label"] == "legit"]
    fig, (left, right) = plt.subplots(
        1,
        2,
        figsize=(11, 4.6),
        dpi=110,
        gridspec_kw={"width_ratios": [len(abusive) + 1, len(legit) + 1]},
    )
    colours = [COLOURS["bulkwatch"], COLOURS["bulkwatch_x2"], COLOURS["naive"]]
    width = 0.8 / len(runs)
    for j, run in enumerate(runs):
        table = {r["archetype"]: r for r in quality[run]["table"]}
        recall = [table.get(a, {}).get("recall") or 0.0 for a in abusive]
        bans = [table.get(a, {}).get("banned", 0) for a in legit]
        xs = np.arange(len(abusive)) + (j - (len(runs) - 1) / 2) * width
        bars = left.bar(xs, recall, width, color=colours[j], label=QUALITY_NAMES[run])
        for bar, value in zip(bars, recall, strict=True):
            left.annotate(
                f"{value:.2f}",
                (bar.get_x() + bar.get_width() / 2, value),
                ha="center",
                va="bottom",
                fontsize=7,
            )
        xs = np.arange(len(legit)) + (j - (len(runs) - 1) / 2) * width
        bars = right.bar(xs, bans, width, color=colours[j], label=QUALITY_NAMES[run])
        for bar, value in zip(bars, bans, strict=True):
            right.annotate(
                str(value),
                (bar.get_x() + bar.get_width() / 2, value),
                ha="center",
                va="bottom",
                fontsize=7,
            )
    left.set_xticks(range(len(abusive)), [a.replace("_", "\n") for a in abusive], fontsize=8)
    left.set_ylim(0, 1.3)
    left.set_ylabel("recall (share of accounts banned)")
    left.set_title("Abusive archetypes: caught")
    left.legend(fontsize=8, loc="upper center", ncol=len(runs))
    right.set_xticks(range(len(legit)), [a.replace("_", "\n") for a in legit], fontsize=8)
    accounts = {r["archetype"]: r["accounts"] for r in rows if r["label"] == "legit"}
    right.set_xlabel(
        "legit accounts: " + ", ".join(f"{a} {accounts[a]:,}" for a in legit), fontsize=7
    )
    right.set_ylabel("false bans (accounts)")
    highest = max(
        (
            r.get("banned", 0)
            for run in runs
            for r in quality[run]["table"]
            if r["label"] == "legit"
        ),
        default=0,
    )
    right.set_ylim(0, max(5, highest * 1.3))
    right.set_title("Legit archetypes: wrongly banned")
    fig.suptitle("Detection quality against the simulator's labels (round 0 accounts)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _drain_colour(key: str) -> str:
    system = key.split("_")[0]
    if system == "bulkwatch" and "x2" in key:
        return COLOURS["bulkwatch_x2"]
    return COLOURS[system]


def plot_drains(results: dict[str, Any], path: Path) -> None:
    """Flat-out throughput of every system, with the targets drawn in."""
    drains = results.get("drains", {})
    keys = [k for k in DRAIN_NAMES if drains.get(k, {}).get("events_per_s")]
    if not keys:
        return
    fig, ax = plt.subplots(figsize=(8, 4.4), dpi=110)
    rates = [drains[k]["events_per_s"] for k in keys]
    colours = [_drain_colour(k) for k in keys]
    bars = ax.barh([DRAIN_NAMES[k] for k in keys], rates, color=colours)
    for bar, key, rate in zip(bars, keys, rates, strict=True):
        cores = drains[key].get("cpu", {}).get("instance_cores") or []
        cpu = " + ".join(f"{c:.2f}" for c in cores if c is not None)
        ax.annotate(
            f" {rate:,.0f}/s" + (f"  ({cpu} cores)" if cpu else ""),
            (rate, bar.get_y() + bar.get_height() / 2),
            va="center",
            fontsize=8,
        )
    ceiling = drains.get("ceiling_x1", {}).get("events_per_s")
    if ceiling:
        ax.axvline(0.7 * ceiling, color="black", ls="--", lw=1)
        ax.annotate("70% of ceiling", (0.7 * ceiling, len(keys) - 0.5), fontsize=8, ha="right")
    naive = drains.get("naive_x1", {}).get("events_per_s")
    if naive:
        ax.axvline(10 * naive, color=COLOURS["naive"], ls=":", lw=1)
        ax.annotate("10x naive", (10 * naive, -0.6), fontsize=8, ha="left", color=COLOURS["naive"])
    ax.invert_yaxis()
    ax.xaxis.set_major_formatter(_k)
    ax.set_xlim(0, max(rates) * 1.5)
    ax.set_xlabel("events/s, flat out over the same pre-produced topic (steady state)")
    ax.set_title("Maximum throughput")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_timeline(results: dict[str, Any], path: Path) -> None:
    """Committed records over time in each drain: start-up, steady state, tail."""
    drains = results.get("drains", {})
    fig, ax = plt.subplots(figsize=(8, 4.4), dpi=110)
    for key in DRAIN_NAMES:
        samples = drains.get(key, {}).get("samples")
        if not samples:
            continue
        t, committed = zip(*samples, strict=True)
        ax.plot(
            t,
            committed,
            color=_drain_colour(key),
            ls=":" if "x2" in key else "-",
            label=DRAIN_NAMES[key],
        )
    ax.yaxis.set_major_formatter(_k)
    ax.set_xlabel("seconds since the consumer process was started")
    ax.set_ylabel("records committed by the group")
    ax.set_title("Draining the topic (start-up includes interpreter, Numba cache and group join)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# --------------------------------------------------------------------------------------------------
# Markdown


def _num(value: float | None, digits: int = 0, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:,.{digits}f}{suffix}"


def _met(flag: bool | None) -> str:
    return "n/a" if flag is None else ("**met**" if flag else "**missed**")


def render_markdown(results: dict[str, Any]) -> str:
    lines = [
        *_header_lines(results),
        *_headline_lines(results),
        *_drain_lines(results),
        *_sweep_lines(results),
        "## Detection quality",
        "",
        "Signals of the drain runs against the simulator's labels for the accounts of round 0 "
        "(`detector.replay.quality_table`): recall is the share of abusive accounts banned, "
        "false-ban rate the share of legit accounts banned; TTD is event time from the account's "
        "first event to its ban.",
        "",
        f"![quality]({PLOTS['quality']})",
        "",
        *_quality_markdown(results.get("quality", {})),
        "",
        "## How to reproduce",
        "",
        "```sh",
        "python -m bench load --name " + str(results.get("name", "NAME")) + _options_text(results),
        "```",
        "",
        "`bench/README.md` explains each number, how to read the plots and how to profile.",
        "",
    ]
    return "\n".join(lines)


def _others_cores(results: dict[str, Any]) -> list[float]:
    """Cores used by processes outside the benchmark in each measured window."""
    phases = [*results.get("drains", {}).values(), *results.get("sweep", [])]
    return [
        p["cpu"]["other_cores"] for p in phases if p.get("cpu", {}).get("other_cores") is not None
    ]


def _header_lines(results: dict[str, Any]) -> list[str]:
    m = results.get("machine", {})
    others = _others_cores(results)
    contention = (
        f" During the measured windows, processes outside this benchmark used "
        f"{np.mean(others):.2f} cores on average (from {min(others):.2f} to {max(others):.2f}): "
        "every figure below was measured on what they left."
        if others
        else ""
    )
    w = results.get("workload", {})
    packages = ", ".join(f"{k} {v}" for k, v in m.get("packages", {}).items())
    broker = results.get("broker", {}).get("version", "?")
    return [
        f"# bulkwatch load test: {results.get('name', '')}",
        "",
        f"Run on **{results.get('date_utc', '?')}** on `{m.get('hostname', '?')}`: "
        f"{m.get('cpu_model', '?')}, **{m.get('logical_cores', '?')} logical cores**, "
        f"{m.get('memory_gib', '?')} GiB RAM, {m.get('os', '?')}; Python {m.get('python', '?')}, "
        f"{packages}; broker {broker} on the same machine ({m.get('java', '')}).",
        "",
        "**The two cores are shared by everything**: the broker (a JVM), the producer in this "
        "harness, the system under test and anything else running on the machine (load average "
        f"{m.get('load_average_at_start', '?')} when the run started). No number below had a "
        "core to itself; the CPU columns say who used what." + contention,
        "",
        f"Workload: {w.get('events', 0):,} simulator events ({w.get('rounds')} rounds of "
        f"{w.get('accounts_per_round', 0):,} fresh accounts x {w.get('minutes_per_round')} min "
        f"of event time, {w.get('mean_record_bytes', 0):.0f} bytes per record on average), keyed "
        f"by the event's subject into {w.get('partitions')} partitions; produced flat out at "
        f"{_num(results.get('producer_events_per_s'))} events/s. bulkwatch ran with an account "
        f"table of {w.get('account_capacity_per_partition', 0):,} slots per partition. Whole run: "
        f"{_num(results.get('duration_s'))} s.",
        "",
    ]


def _headline_lines(results: dict[str, Any]) -> list[str]:
    targets = results.get("targets", {})

    def row(name: str, wanted: str, key: str, digits: int, rates: tuple[Any, Any] | None) -> str:
        target = targets.get(key, {})
        measured = _num(target.get("measured"), digits, " s" if key.startswith("p99") else "")
        if rates is not None:
            measured += f" ({_num(rates[0])} / {_num(rates[1])} events/s)"
        return f"| {name} | {wanted} | {measured} | {_met(target.get('met'))} |"

    bulkwatch = results.get("bulkwatch_events_per_s")
    limited = results.get("cpu_limit_events_per_s") or {}
    per_cpu = results.get("events_per_cpu_s", {})

    def efficiency(a: str, b: str) -> str:
        x, y = per_cpu.get(a), per_cpu.get(b)
        ratio = _num(x / y, 2 if b.startswith("ceiling") else 1) if x and y else "n/a"
        return f"{ratio} ({_num(x)} / {_num(y)} events per CPU-second)"

    return [
        "## Headline",
        "",
        "| target | wanted | measured | |",
        "|---|---|---|---|",
        row("bulkwatch / bare aiokafka ceiling", ">= 0.70", "bulkwatch_vs_ceiling", 2,
            (bulkwatch, results.get("ceiling_events_per_s"))),
        row("bulkwatch / naive detector", ">= 10", "bulkwatch_vs_naive", 1,
            (bulkwatch, results.get("naive_events_per_s"))),
        row("p99 signal latency at 50% of bulkwatch's max", "< 1 s",
            "p99_latency_s_at_half_load", 3, None),
        row("two instances / one instance, no CPU limit", ">= 1.6", "two_instances_vs_one", 2,
            (results.get("two_instance_events_per_s"), bulkwatch)),
        row(f"two instances / one instance, CPU limit of {_num(limited.get('cpus_each'), 1)} "
            "each", ">= 1.6", "two_instances_vs_one_cpu_limit", 2,
            (limited.get("two_instances"), limited.get("one_instance"))),
        "",
        "The same ratios per CPU-second each process used (less disturbed by whatever else ran "
        "on the machine): bulkwatch / ceiling "
        + efficiency("bulkwatch_x1", "ceiling_x1") + "; bulkwatch / naive "
        + efficiency("bulkwatch_x1", "naive_x1") + ".",
        "",
        f"![maximum throughput]({PLOTS['drains']})",
        "",
    ]  # fmt: skip


def _drain_lines(results: dict[str, Any]) -> list[str]:
    drains = results.get("drains", {})
    cores = results.get("machine", {}).get("logical_cores", "?")
    lines = [
        "## Maximum throughput (flat out, same topic, same data)",
        "",
        "Each system drains the same pre-produced topic in its own consumer group and its own "
        "process(es). The rate is the slope of the group's committed offsets between 5 % and "
        "95 % of the records (with two instances: only while both consume). CPU is cores used in "
        "that window (1.00 = one core busy), and events per CPU-second divides the rate by it: "
        "the figure that other load on the machine disturbs least. Peak RSS is the kernel's "
        "high-water mark (`VmHWM`).",
        "",
        f"| system | events/s | CPU per instance (cores) | events per CPU-second | broker (cores) "
        f"| other processes (cores) | machine busy (of {cores}) | peak RSS per instance (MiB) "
        "| start-up to first record (s) |",
        "|---|---:|---|---:|---:|---:|---:|---|---|",
    ]
    for key, name in DRAIN_NAMES.items():
        d = drains.get(key)
        if not d:
            continue
        cpu = d.get("cpu", {})
        rate = _num(d.get("events_per_s")) + ("" if d.get("complete") else " (incomplete)")
        if d.get("window_kind") not in (None, "steady"):
            rate += f" ({d['window_kind']}: too short for a steady state)"
        instance_cpu = " + ".join(_num(c, 2) for c in cpu.get("instance_cores", []))
        rss = " / ".join(_num(r) for r in d.get("peak_rss_mb", []))
        startup = " / ".join(_num(t, 1) for t in d.get("startup_s", []))
        lines.append(
            f"| {name} | {rate} | {instance_cpu} | {_num(d.get('events_per_cpu_s'))} | "
            f"{_num(cpu.get('broker_cores'), 2)} | {_num(cpu.get('other_cores'), 2)} | "
            f"{_num(cpu.get('machine_busy_cores'), 2)} | {rss} | {startup} |"
        )
    naive = drains.get("naive_x1", {})
    return [
        *lines,
        "",
        f"The naive detector drained round 0 only ({naive.get('records_target', 0):,} records): "
        "enough for its quality and its steady rate; the others drained everything.",
        "",
        _bottleneck_text(results),
        "",
        _stage_text(drains.get("bulkwatch_x1", {})),
        "",
        f"![drain timeline]({PLOTS['timeline']})",
        "",
    ]


def _sweep_lines(results: dict[str, Any]) -> list[str]:
    lines = [
        "## Throughput vs offered load",
        "",
        "A fresh topic per system and level; the system is running and ready before this harness "
        "starts producing at the offered rate (a share of bulkwatch's one-instance maximum "
        "above). Consumed is the records the group committed by the time it caught up (or by the "
        "end of production when it fell behind), divided by the time since production began. "
        "*Kept up* means at most 1 s of offered load behind when production ended, and drained "
        "within the grace period after it. "
        "The producer shares the two cores, so at 100 % bulkwatch gets less CPU than in the "
        "flat-out drain.",
        "",
        f"![throughput vs offered load]({PLOTS['throughput']})",
        "",
        "| system | offered (share of bulkwatch max) | offered events/s | produced events/s "
        "| consumed events/s | behind when the offer ended (s) | kept up | signals "
        "| latency p50 / p95 / p99 / max (s) | CPU (cores) | producer (cores) "
        "| other processes (cores) |",
        "|---|---:|---:|---:|---:|---:|---|---:|---|---:|---:|---:|",
    ]
    for s in results.get("sweep", []):
        share = "50 % of its own max" if s["load_share"] is None else f"{s['load_share']:.0%}"
        latency = s.get("latency_s")
        lat = (
            " / ".join(_num(latency.get(q), 3) for q in ("p50", "p95", "p99", "max"))
            if latency and latency.get("p50") is not None
            else "-"
        )
        cpu = s.get("cpu", {})
        cores = (cpu.get("instance_cores") or [None])[0]
        lines.append(
            f"| {s['system']} | {share} | {_num(s['offered_per_s'])} | "
            f"{_num(s['produced_per_s'])} | {_num(s['achieved_per_s'])} | "
            f"{_num(s.get('behind_at_offer_end_s'), 1)} | "
            f"{'yes' if s['kept_up'] else 'no'} | {s.get('signals', '-')} | {lat} | "
            f"{_num(cores, 2)} | {_num(cpu.get('harness_cores'), 2)} | "
            f"{_num(cpu.get('other_cores'), 2)} |"
        )
    return [
        *lines,
        "",
        "Latency is the signal record's broker append time (the signals topics use "
        "`message.timestamp.type=LogAppendTime`) minus the Kafka timestamp of the event that "
        "triggered it (set by this harness to the wall-clock time it handed the record to its "
        "producer). It includes the producer's linger, the consumer's batch wait "
        "(`batch_max_wait_ms`), processing and the signal producer's delivery. At low load a batch "
        "waits up to `batch_max_wait_ms` (200 ms by default) to fill, so latency can be higher at "
        "25 % than at 75 %. A system that fell behind has latencies only for what it consumed "
        "before it was stopped (they understate).",
        "",
        f"![latency CDF]({PLOTS['latency']})",
        "",
    ]


def _options_text(results: dict[str, Any]) -> str:
    o = results.get("options", {})
    flags = []
    for key in ("accounts", "minutes", "rounds", "partitions", "sweep_seconds"):
        if key in o:
            flags.append(f" --{key.replace('_', '-')} {o[key]}")
    if "sweep" in o:
        flags.append(" --sweep " + ",".join(f"{x:g}" for x in o["sweep"]))
    return "".join(flags)


def _bottleneck_text(results: dict[str, Any]) -> str:
    """What limited two instances: the machine's CPU, the broker, or other processes."""
    drains = results.get("drains", {})
    one, two = drains.get("bulkwatch_x1", {}), drains.get("bulkwatch_x2", {})
    c1, c2 = drains.get("ceiling_x1", {}), drains.get("ceiling_x2", {})
    cores = results.get("machine", {}).get("logical_cores") or 2
    if not two.get("cpu") or not one.get("cpu"):
        return ""
    cpu = two["cpu"]
    instance = " and ".join(_num(c, 2) for c in cpu.get("instance_cores", []))
    alone = (one["cpu"].get("instance_cores") or [None])[0]
    busy = cpu.get("machine_busy_cores") or 0.0
    broker = cpu.get("broker_cores") or 0.0
    others = cpu.get("other_cores") or 0.0
    parts = [
        f"**Two instances on {cores} cores.** One instance used {_num(alone, 2)} cores (the "
        f"broker {_num(one['cpu'].get('broker_cores'), 2)}). With two, the instances used "
        f"{instance} cores, the broker {_num(broker, 2)}, other processes {_num(others, 2)}: "
        f"the machine was {_num(busy, 2)} of {cores} cores busy."
    ]
    if busy >= 0.9 * cores:
        limit = (
            "processes outside the benchmark took a share of it"
            if others >= 0.25
            else f"the broker needed only {broker:.2f} cores of it and was not the bottleneck"
        )
        parts.append(
            f"The limit is the CPU of this machine: two instances fill it, and {limit}; a third "
            "instance would need more cores."
        )
    limited = results.get("cpu_limit_events_per_s") or {}
    one_limited, two_limited = limited.get("one_instance"), limited.get("two_instances")
    if one_limited and two_limited:
        spare = drains["bulkwatch_x2_cpu_limit"].get("cpu") or {}
        parts.append(
            f"**With a CPU limit of {_num(limited.get('cpus_each'), 1)} cores per instance** (a "
            "cgroup quota, as Kubernetes applies a pod's limit), which leaves cores to the broker: "
            f"one instance ran {_num(one_limited)} events/s and two ran {_num(two_limited)}, "
            f"{two_limited / one_limited:.2f}x; the broker used "
            f"{_num(spare.get('broker_cores'), 2)} cores and the machine was "
            f"{_num(spare.get('machine_busy_cores'), 2)} of {cores} cores busy."
        )
    elif limited.get("unavailable"):
        parts.append(f"No runs with a CPU limit per instance: {limited['unavailable']}.")
    if c1.get("events_per_s") and c2.get("events_per_s"):
        parts.append(
            f"For comparison, the bare consumer went from {_num(c1['events_per_s'])} to "
            f"{_num(c2['events_per_s'])} events/s with a second consumer "
            f"({c2['events_per_s'] / c1['events_per_s']:.2f}x)."
        )
    return " ".join(parts)


def _stage_text(drain: dict[str, Any]) -> str:
    stages = drain.get("stage_seconds") or {}
    records = stages.get("records")
    if not records:
        return ""
    parts = [f"{name} {stages[name] / records * 1e6:.2f}" for name in STAGES if name in stages]
    batch = stages.get("batch")
    total = f"; whole batch {batch / records * 1e6:.2f}" if batch else ""
    return (
        "Where one bulkwatch instance spends its processing time (its own "
        "`bulkwatch_kernel_seconds` histograms, microseconds per record): "
        + ", ".join(parts)
        + total
        + ". The rest of the process's CPU is the Kafka client (fetching and parsing records, "
        "producing signals, committing) and the event loop."
    )


def _quality_markdown(quality: dict[str, Any]) -> list[str]:
    runs = [k for k in QUALITY_NAMES if k in quality]
    if not runs:
        return ["(no quality measured)"]
    head = (
        "| label | archetype | accounts | "
        + " | ".join(
            f"{QUALITY_NAMES[r]} banned | {QUALITY_NAMES[r]} recall / false-ban rate | "
            f"{QUALITY_NAMES[r]} median TTD (s)"
            for r in runs
        )
        + " |"
    )
    lines = [head, "|---|---|---:|" + "---:|---:|---:|" * len(runs)]
    base = quality[runs[0]]["table"]
    tables = {
        r: {(row["label"], row["archetype"]): row for row in quality[r]["table"]} for r in runs
    }
    for row in base:
        key = (row["label"], row["archetype"])
        cells = [row["label"], row["archetype"], f"{row['accounts']:,}"]
        for r in runs:
            other = tables[r].get(key, {})
            share = (
                other.get("recall") if row["label"] == "abusive" else other.get("false_ban_rate")
            )
            cells += [
                f"{other.get('banned', 0):,}",
                _num(share, 3 if row["label"] == "abusive" else 5),
                _num(other.get("ttd_median_s"), 1),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for r in runs:
        o = quality[r]["overall"]
        lines.append(
            f"- {QUALITY_NAMES[r]}: precision {_num(o.get('precision'), 4)}, recall "
            f"{_num(o.get('recall'), 4)}, {o.get('false_bans', 0)} false bans of "
            f"{o.get('legit_accounts', 0):,} legit accounts; "
            f"{quality[r].get('signals', 0):,} signals over all the records it consumed."
        )
    return lines
