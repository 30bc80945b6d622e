"""CLI smoke runs: simulate -> replay (signals valid per the contract, report), run, --help."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from detector.cli import main
from detector.policy import REASON_CODES, default_policy_path

SIGNAL_FIELDS = {
    "signal_id": str,
    "account": str,
    "action": str,
    "reasons": list,
    "score": (int, float),
    "ts": int,
    "emitted_at": int,
    "policy_version": str,
    "shadow": bool,
    "evidence": dict,
}


def assert_valid_signal(line: str) -> dict:
    signal_ = json.loads(line)
    assert set(signal_) == set(SIGNAL_FIELDS)
    for name, kind in SIGNAL_FIELDS.items():
        assert isinstance(signal_[name], kind), name
    assert signal_["action"] in ("review", "throttle", "ban")
    assert signal_["reasons"] and set(signal_["reasons"]) <= set(REASON_CODES)
    assert set(signal_["evidence"]) - {"content"} == set(signal_["reasons"])
    for code in signal_["reasons"]:
        assert {"features", "thresholds", "windows", "weight"} <= set(signal_["evidence"][code])
    return signal_


@pytest.fixture(scope="module")
def simulation(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("sim")
    events, labels = folder / "events.jsonl.gz", folder / "labels.csv"
    args = ["simulate", "--out", str(events), "--labels", str(labels)]
    assert main([*args, "--accounts", "2000", "--minutes", "20", "--seed", "3"]) == 0
    return events, labels


def test_replay_writes_valid_signals_and_a_report(simulation, tmp_path, capsys):
    events, labels = simulation
    out, report = tmp_path / "signals.jsonl", tmp_path / "report.md"
    code = main(
        ["replay", str(events), "--out", str(out), "--labels", str(labels), "--report", str(report)]
    )
    assert code == 0
    lines = out.read_text().splitlines()
    assert lines, "the simulated abusers produced no signal"
    signals = [assert_valid_signal(line) for line in lines]
    assert len({s["signal_id"] for s in signals}) == len(signals)
    printed = capsys.readouterr().out
    assert "new_account_blaster" in printed and "decode only" in printed
    assert report.read_text() == printed.removesuffix("\n")
    # The same input and policy give the same signal ids.
    again = tmp_path / "again.jsonl"
    assert main(["replay", str(events), "--out", str(again)]) == 0
    assert [json.loads(x)["signal_id"] for x in again.read_text().splitlines()] == [
        s["signal_id"] for s in signals
    ]


def test_replay_compare_shows_the_differences(simulation, tmp_path, capsys):
    events, labels = simulation
    strict = tmp_path / "strict.toml"
    text = (
        default_policy_path()
        .read_text()
        .replace('version = "default-2026.11"', 'version = "strict"')
    )
    strict.write_text(text.replace("ban = 3.0", "ban = 9.0"))  # practically never bans
    out = tmp_path / "signals.jsonl"
    args = [
        "replay",
        str(events),
        "--out",
        str(out),
        "--labels",
        str(labels),
        "--compare",
        str(strict),
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "## Differences: `default-2026.11` vs `strict`" in printed
    assert "banned only by `strict`: 0" in printed


def test_replay_reports_dead_letters(tmp_path, capsys):
    events = tmp_path / "mixed.jsonl"
    good = {"type": "message", "ts": 1_767_225_600_000, "account": "a", "peer": "b"}
    events.write_text(json.dumps(good) + "\nnot json\n" + json.dumps({**good, "ts": "x"}) + "\n")
    out = tmp_path / "signals.jsonl"
    assert main(["replay", str(events), "--out", str(out)]) == 0
    dead = [
        json.loads(x) for x in (tmp_path / "signals.dead-letters.jsonl").read_text().splitlines()
    ]
    assert [d["reason"] for d in dead] == ["invalid_json", "wrong_type"]
    assert "dead letters 2" in capsys.readouterr().out


def test_bad_policy_fails_at_start_with_a_clear_message(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text(default_policy_path().read_text().replace("ban = 3.0", "ban = 0.5"))
    assert main(["replay", str(bad), "--out", str(tmp_path / "x"), "--policy", str(bad)]) == 2
    assert "actions: scores must rise strictly" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["run", "replay", "simulate", "produce", "warm-up"])
def test_help_of_every_command(command):
    result = subprocess.run(
        [sys.executable, "-m", "detector.cli", command, "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0 and "usage: bulkwatch" in result.stdout


def test_run_embedded_default_stops_cleanly(tmp_path):
    """`bulkwatch run` on the embedded simulator: progress, signals, metrics, clean SIGINT exit."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BULKWATCH_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "detector.cli", "run", "--metrics-port", "0", "--accounts", "3000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    try:
        time.sleep(25)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, stderr[-2000:]
    assert "events (" in stderr and "bulkwatch: stopped:" in stderr
    signal_lines = [line for line in stdout.splitlines() if "reasons=" in line]
    assert signal_lines, stdout[-2000:]
    assert all("+" not in line for line in signal_lines)  # accounts are not printed by default
