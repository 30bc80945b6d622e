"""The load-test harness: its measurements on synthetic samples, and a small run of every phase
through a real broker so the harness cannot silently rot (the full benchmark is not part of CI)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench.__main__ import flatten, format_micro_table, last_json_line
from bench.load import (
    LoadOptions,
    ProduceLog,
    Sample,
    build_workload,
    parse_metrics,
    run_load,
    signal_latencies_s,
    steady_window,
    whole_window,
)
from detector.policy import BanSignal
from detector.simulator import SimulatorConfig


def sample(t: float, committed: int, *consumed: int) -> Sample:
    return Sample(t, committed, list(consumed), [0.0] * len(consumed), None, 0.0, 0.0)


def test_steady_window_spans_5_to_95_percent() -> None:
    samples = [sample(float(t), min(100 * t, 1000), min(100 * t, 1000)) for t in range(15)]
    assert steady_window(samples, 1000) == (1.0, 10.0)


def test_steady_window_with_two_instances_is_while_both_work() -> None:
    # instance 2 starts at t=3; instance 1 is done at t=8 (its count stops at 500)
    samples = [sample(float(t), 100 * t, min(60 * t, 500), max(0, 40 * (t - 2))) for t in range(11)]
    lo, hi = steady_window(samples, 1000)
    assert lo == 3.0  # the second instance's first record
    assert hi == 9.0  # instance 1 reached its final 500 at t=9 (60 * 9 >= 500)


def test_too_short_drains_fall_back_to_first_commit_to_last() -> None:
    samples = [sample(0.0, 0, 0), sample(0.1, 400, 400), sample(0.2, 1000, 1000)]
    assert steady_window(samples, 1000) is None
    assert whole_window(samples, 1000) == (0.1, 0.2)
    drained_between_two_samples = [sample(0.0, 0, 0), sample(0.1, 0, 0), sample(0.2, 1000, 1000)]
    assert whole_window(drained_between_two_samples, 1000) == (0.1, 0.2)  # a lower bound


def test_latency_is_append_time_minus_produce_time_of_the_triggering_event() -> None:
    workload = build_workload(SimulatorConfig(accounts=200, minutes=5, seed=2), 1, 2)
    n = len(workload)
    log = ProduceLog(
        chunk_start=np.array([0, n // 2]),
        stamp_ms=np.array([1_000_000, 1_000_500]),
        count=n,
        started=0.0,
        finished=1.0,
    )
    late = n - 1
    signals = [
        (
            BanSignal(
                "a", workload.subjects[1], "ban", [], 3.0, int(workload.ts_ms[1]), 0, "v", False, {}
            ),
            1_000_250,
            1,
        ),
        (
            BanSignal(
                "b",
                workload.subjects[late],
                "ban",
                [],
                3.0,
                int(workload.ts_ms[late]),
                0,
                "v",
                False,
                {},
            ),
            1_001_500,
            1,
        ),
        (
            BanSignal("c", "nobody", "ban", [], 3.0, int(workload.ts_ms[1]), 0, "v", False, {}),
            1_000_250,
            1,
        ),
    ]
    latencies, unmatched = signal_latencies_s(signals, workload, log)
    assert latencies.tolist() == [0.25, 1.0]
    assert unmatched == 1


def test_workload_keys_events_by_their_subject() -> None:
    workload = build_workload(SimulatorConfig(accounts=300, minutes=10, seed=5), 2, 3)
    assert workload.round_end[-1] == len(workload) and workload.round_end[0] < len(workload)
    assert np.all(np.diff(workload.ts_ms) >= 0)
    partition_of: dict[str, int] = {}
    for subject, key, partition in zip(
        workload.subjects, workload.keys, workload.partitions.tolist(), strict=True
    ):
        assert key == subject.encode()
        assert partition_of.setdefault(subject, partition) == partition
    assert sum(workload.end_offsets(len(workload)).values()) == len(workload)
    assert set(workload.labels) <= set(workload.first_seen_ms)  # every labelled account acts


def test_metrics_and_micro_json_parsing() -> None:
    text = (
        "# HELP x\nbulkwatch_records_total 1234.0\n"
        'bulkwatch_kernel_seconds_sum{kernel="decode"} 0.5\n'
    )
    assert parse_metrics(text) == {
        "bulkwatch_records_total": 1234.0,
        'bulkwatch_kernel_seconds_sum{kernel="decode"}': 0.5,
    }
    out = 'warming up\n{"not": "last"}\nlog line\n{"events_per_s": 1.5e6, "speedup": {"x": 12.5}}\n'
    figures = last_json_line(out)
    assert figures == {"events_per_s": 1.5e6, "speedup": {"x": 12.5}}
    assert flatten(figures) == [("events_per_s", 1.5e6), ("speedup.x", 12.5)]
    table = format_micro_table(
        [
            {"module": "bench.kernels", "figures": figures, "returncode": 0, "stderr_tail": []},
            {"module": "bench.minhash", "figures": None, "returncode": 1, "stderr_tail": ["boom"]},
        ]
    )
    assert "speedup.x" in table and "1.5e+06" in table
    assert "failed (exit 1)" in table and table.endswith("bench.minhash: exit 1: boom")


@pytest.mark.integration
async def test_smoke_load_run_measures_every_system(kafka_broker, tmp_path: Path) -> None:
    options = LoadOptions.smoke(
        bootstrap=kafka_broker.bootstrap, out_root=tmp_path, name="smoke", progress=False
    )
    results = await run_load(options)
    out = tmp_path / "smoke"
    saved = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert saved["bulkwatch_events_per_s"] == pytest.approx(results["bulkwatch_events_per_s"])
    for key in (
        "ceiling_events_per_s",
        "naive_events_per_s",
        "bulkwatch_events_per_s",
        "two_instance_events_per_s",
        "p99_latency_s_at_half_load",
    ):
        assert saved[key] is not None and saved[key] > 0, key
    for name, drain in saved["drains"].items():
        assert drain["complete"], name
        assert all(rss and rss > 10 for rss in drain["peak_rss_mb"]), name
        # the bare consumers can drain the smoke topic between two CPU samples; detectors cannot
        # (of two detectors, one may: the window is short and their partitions unequal)
        if not name.startswith("ceiling"):
            assert sum(drain["cpu"]["instance_cores"]) > 0, name
    limited = saved["cpu_limit_events_per_s"]
    if limited["unavailable"] is None:  # cgroups with the cpu controller (root): the CI machine
        assert 0 < limited["cpus_each"] <= 1
        assert limited["one_instance"] > 0 and limited["two_instances"] > 0
        assert len(saved["drains"]["bulkwatch_x2_cpu_limit"]["throttled_s"]) == 2
    else:
        assert "bulkwatch_x1_cpu_limit" not in saved["drains"]
    # every detector's signals were read back and scored against every labelled archetype
    archetypes = {row["archetype"] for row in saved["quality"]["bulkwatch_x1"]["table"]}
    assert {"ordinary", "new_account_blaster"} <= archetypes
    for run in ("bulkwatch_x1", "bulkwatch_x2", "naive_x1"):
        quality = saved["quality"][run]
        assert {row["archetype"] for row in quality["table"]} == archetypes, run
        assert quality["signals"] > 0 and quality["overall"]["recall"] > 0, run
    half = [s for s in saved["sweep"] if s["system"] == "bulkwatch" and s["load_share"] == 0.5]
    assert half and half[0]["signals"] > 0 and half[0]["behind_at_offer_end_s"] >= 0
    assert half[0]["unmatched_signals"] == 0 and half[0]["append_time"]
    assert {s["system"] for s in saved["sweep"]} == {"bulkwatch", "ceiling", "naive"}
    for plot in (
        "throughput_vs_offered",
        "latency_cdf",
        "quality",
        "max_throughput",
        "drain_timeline",
    ):
        data = (out / f"{plot}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, plot
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "logical cores" in report and "bulkwatch / bare aiokafka ceiling" in report
