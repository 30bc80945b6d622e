"""``python -m bench COMMAND``: the benchmarks of bulkwatch.

* ``load``   the load test through a real Kafka broker: bulkwatch (1 and 2 instances) side by side
             with a bare aiokafka consumer (the ceiling) and a naive pure-Python detector; writes
             ``bench/results/<name>/`` (report.md, results.json, plots).
* ``micro``  the kernel and MinHash micro-benchmarks (``bench.kernels``, ``bench.minhash``), each in
             its own process, summarised in one table.
* ``report`` redraw the plots and report.md of a saved ``results.json``.
* ``worker`` internal: the ceiling and naive consumers that ``load`` starts as processes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class MicroBenchmark:
    module: str
    quick: tuple[tuple[str, str | None], ...]  # options of a short run, used when --help lists them
    headline: tuple[str, ...]  # figures shown in the table (all of them when none is present)


MICRO_BENCHMARKS = (
    MicroBenchmark(
        "bench.kernels",
        (
            ("--events", "1000000"),
            ("--accounts", "200000"),
            ("--capacity", "262144"),
            ("--reference-events", "10000"),
            ("--no-cold", None),
        ),
        (
            "events",
            "events_per_s",
            "reference_events_per_s",
            "speedup",
            "reference_mismatches",
            "bytes_per_account",
            "bytes_per_slot",
            "compile_s",
            "compile_uncached_s",
            "median_batch_ms",
            "load_avg_1m_before",
        ),
    ),
    MicroBenchmark(
        "bench.minhash",
        (("--speed-texts", "5000"), ("--repeats", "1")),
        (),
    ),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    load = commands.add_parser(
        "load",
        help="load test through a real Kafka broker, side by side with baselines",
        description=(
            "Produce simulator traffic to a partitioned topic and measure, on the same topic and "
            "data: a bare aiokafka consumer (the ceiling), a naive pure-Python detector and "
            "bulkwatch (1 and 2 instances); then a sweep of offered loads with end-to-end signal "
            "latency. Without --bootstrap a private broker is started with deploy/local-kafka.sh."
        ),
    )
    load.add_argument("--name", help="results folder name (default: <date>-<host>-<N>cpu)")
    load.add_argument(
        "--out-root", type=Path, help="folder of result folders (default: bench/results)"
    )
    load.add_argument("--bootstrap", help="use this broker instead of starting a local one")
    load.add_argument("--accounts", type=int, help="accounts per simulated round (default 20000)")
    load.add_argument("--minutes", type=int, help="event-time minutes per round (default 60)")
    load.add_argument("--rounds", type=int, help="rounds of fresh accounts (default 8)")
    load.add_argument("--seed", type=int, help="simulator seed (default 1)")
    load.add_argument("--partitions", type=int, help="partitions of the input topic (default 4)")
    load.add_argument(
        "--batch-size", type=int, help="records per poll for every system (default 5000)"
    )
    load.add_argument(
        "--sweep", help="offered loads as shares of bulkwatch's max, e.g. 0.25,0.5,0.75,1"
    )
    load.add_argument(
        "--sweep-seconds", type=float, help="seconds of offered load per level (default 20)"
    )
    load.add_argument(
        "--naive-sweep-seconds", type=float, help="the same for the naive detector (default 12)"
    )
    load.add_argument(
        "--naive-max-seconds", type=float, help="time limit of the naive drain (default 300)"
    )
    load.add_argument(
        "--drain-timeout", dest="drain_timeout_s", type=float, help="time limit of a drain"
    )
    load.add_argument("--account-capacity", type=int, help="bulkwatch account table per partition")
    load.add_argument(
        "--instance-cpus",
        type=float,
        help="CPU limit per instance of the fixed-budget scale-out runs (cgroup quota; 0: skip; "
        "default: leave 0.8 cores to the broker and harness, at most 1 each)",
    )
    load.add_argument(
        "--policy", type=Path, help="policy file for bulkwatch and the naive detector"
    )
    load.add_argument(
        "--keep-topics", action="store_true", default=None, help="do not delete topics"
    )
    load.add_argument(
        "--smoke", action="store_true", help="a tiny run of every phase (about a minute)"
    )
    load.add_argument("--no-progress", dest="progress", action="store_false", default=None)

    micro = commands.add_parser(
        "micro",
        help="run the kernel and MinHash micro-benchmarks, print one table",
        description="Runs python -m bench.kernels and python -m bench.minhash and tabulates their "
        "final JSON lines.",
    )
    micro.add_argument("--full", action="store_true", help="run them at full size, not quick")
    micro.add_argument("--json", action="store_true", help="print the combined figures as JSON too")

    report = commands.add_parser("report", help="redraw report.md and the plots from results.json")
    report.add_argument("results", type=Path, help="a results.json written by `bench load`")

    worker = commands.add_parser("worker", help="internal: a ceiling or naive consumer process")
    worker.add_argument("system", choices=("ceiling", "naive"))
    worker.add_argument("--bootstrap", required=True)
    worker.add_argument("--topic", required=True)
    worker.add_argument("--group", required=True)
    worker.add_argument("--batch-size", type=int, default=5000)
    worker.add_argument("--signals-topic")
    worker.add_argument("--policy", type=Path)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "load":
        return _load(args)
    if args.command == "micro":
        return _micro(args)
    if args.command == "report":
        return _report(args)
    return _worker(args)


def _load(args: argparse.Namespace) -> int:
    from bench.load import LoadOptions, run_load

    changes: dict[str, Any] = {}
    for name in (
        "name",
        "out_root",
        "bootstrap",
        "accounts",
        "minutes",
        "rounds",
        "seed",
        "partitions",
        "batch_size",
        "sweep_seconds",
        "naive_sweep_seconds",
        "naive_max_seconds",
        "drain_timeout_s",
        "account_capacity",
        "instance_cpus",
        "policy",
        "keep_topics",
        "progress",
    ):
        value = getattr(args, name)
        if value is not None:
            changes[name] = value
    if args.sweep:
        try:
            changes["sweep"] = tuple(float(x) for x in args.sweep.split(",") if x.strip())
        except ValueError:
            print(
                f"bench load: --sweep: expected shares like 0.25,0.5,1; got {args.sweep!r}",
                file=sys.stderr,
            )
            return 2
    options = LoadOptions.smoke(**changes) if args.smoke else LoadOptions(**changes)
    results = asyncio.run(run_load(options))
    print(
        json.dumps(
            {
                k: results.get(k)
                for k in (
                    "ceiling_events_per_s",
                    "naive_events_per_s",
                    "bulkwatch_events_per_s",
                    "two_instance_events_per_s",
                    "p99_latency_s_at_half_load",
                )
            }
        )
    )
    return 0


def _report(args: argparse.Namespace) -> int:
    from bench.report import write_report

    results = json.loads(args.results.read_text(encoding="utf-8"))
    write_report(results, args.results.parent)
    print(f"wrote {args.results.parent / 'report.md'}", file=sys.stderr)
    return 0


def _worker(args: argparse.Namespace) -> int:
    from bench.load import run_worker

    return asyncio.run(
        run_worker(
            args.system,
            bootstrap=args.bootstrap,
            topic=args.topic,
            group=args.group,
            batch_size=args.batch_size,
            signals_topic=args.signals_topic,
            policy=args.policy,
        )
    )


# --------------------------------------------------------------------------------------------------
# micro


def last_json_line(text: str) -> dict[str, Any] | None:
    """The last line of ``text`` that is a JSON object."""
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
    return None


def flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested JSON as (dotted key, scalar) pairs, in order."""
    if isinstance(value, dict):
        out: list[tuple[str, Any]] = []
        for key, item in value.items():
            out.extend(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, list):
        if all(not isinstance(v, (dict, list)) for v in value):
            return [(prefix, ", ".join(_cell(v) for v in value))]
        out = []
        for i, item in enumerate(value):
            out.extend(flatten(item, f"{prefix}[{i}]"))
        return out
    return [(prefix, value)]


def _cell(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.3g}"
        return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def run_micro_benchmark(bench: MicroBenchmark, *, full: bool) -> dict[str, Any]:
    """Run ``python -m <module>`` (short-run options unless ``full``); its last JSON line."""
    options: list[str] = []
    if not full and bench.quick:
        helped = subprocess.run(
            [sys.executable, "-m", bench.module, "--help"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        for flag, value in bench.quick:
            if flag in helped.stdout.split():
                options += [flag] if value is None else [flag, value]
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", bench.module, *options], capture_output=True, text=True, timeout=3600
    )
    figures = last_json_line(done.stdout)
    if figures is not None and bench.headline:
        chosen = {k: figures[k] for k in bench.headline if k in figures}
        figures = chosen or figures
    return {
        "module": bench.module,
        "options": options,
        "returncode": done.returncode,
        "seconds": time.perf_counter() - started,
        "figures": figures,
        "stderr_tail": done.stderr.strip().splitlines()[-5:] if done.returncode else [],
    }


def format_micro_table(runs: list[dict[str, Any]]) -> str:
    """One table of every benchmark's figures; failures are listed under it."""
    rows: list[tuple[str, str, str]] = []
    problems: list[str] = []
    for run in runs:
        name = run["module"].removeprefix("bench.")
        if run["figures"] is None:
            what = f"exit {run['returncode']}" if run["returncode"] else "no JSON line"
            rows.append((name, "-", f"failed ({what})"))
            problems.append(f"{run['module']}: {what}: " + (run["stderr_tail"] or [""])[-1].strip())
            continue
        for key, value in flatten(run["figures"]):
            rows.append((name, key, _cell(value)))
    header = ("benchmark", "figure", "value")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    out = [
        "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)),
        "  ".join("-" * w for w in widths),
    ]
    out += [f"{a.ljust(widths[0])}  {b.ljust(widths[1])}  {c.rjust(widths[2])}" for a, b, c in rows]
    return "\n".join(out + problems)


def _micro(args: argparse.Namespace) -> int:
    runs = []
    for bench in MICRO_BENCHMARKS:
        print(f"running python -m {bench.module} ...", file=sys.stderr, flush=True)
        run = run_micro_benchmark(bench, full=args.full)
        print(
            f"  {bench.module} {' '.join(run['options'])}: {run['seconds']:.1f} s, "
            f"exit {run['returncode']}",
            file=sys.stderr,
            flush=True,
        )
        runs.append(run)
    print(format_micro_table(runs))
    if args.json:
        print(json.dumps({run["module"]: run["figures"] for run in runs}))
    return 0 if all(run["returncode"] == 0 and run["figures"] is not None for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
