"""The kernel benchmark end to end on a small stream: its figures and its last line."""

import json

import numpy as np

from bench import kernels as bench_kernels


def test_kernel_benchmark_reports_median_of_runs_and_agrees_with_reference(capsys):
    result = bench_kernels.main(
        [
            "--events", "30000", "--accounts", "3000", "--reference-events", "2000",
            "--repeat", "3", "--batch", "4096", "--no-cold",
        ]
    )  # fmt: skip
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last_line) == result
    assert len(result["events_per_s_runs"]) == 3
    assert result["events_per_s"] == round(np.median(result["events_per_s_runs"]))
    assert result["events_per_s_best"] == max(result["events_per_s_runs"])
    assert result["reference_mismatches"] == {}
    assert result["speedup"] > 1
    assert 0 < result["bytes_per_account"] < 1024
    assert result["tracked"] > 0
    assert result["reference_events_per_s"] > 0
    # 0.0 when an earlier test of this process has already loaded the compiled kernels
    assert result["compile_s"] >= 0
