"""CLI smoke runs: simulate -> replay (signals valid per the contract, report), run, --help."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aiokafka.errors import TopicAuthorizationFailedError

import detector.app
import detector.sinks
from detector.cli import build_parser, main
from detector.config import ENV_PREFIX, Settings
from detector.policy import REASON_CODES, default_policy_path
from detector.sources import DeliveryFailed

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


# -- produce: the Kafka connection options of `run` (no broker: the producer is replaced) ----------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory) -> tuple[str, str]:
    """A self-signed certificate (also usable as the CA that trusts it) and its key, PEM."""
    assert shutil.which("openssl"), "openssl is needed (deploy/local-kafka.sh uses it too)"
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"),
            *("-nodes", "-days", "1", "-subj", "/CN=bulkwatch test CA"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return str(cert), str(key)


@pytest.fixture
def produced(monkeypatch) -> list[dict]:
    """Calls of produce_simulation, recorded instead of connecting to a broker."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    calls: list[dict] = []

    async def fake_produce_simulation(bootstrap, topic, config, **kwargs):
        calls.append({"bootstrap": bootstrap, "topic": topic, "config": config, **kwargs})
        return 7

    monkeypatch.setattr(detector.sinks, "produce_simulation", fake_produce_simulation)
    return calls


def test_produce_uses_the_same_security_options_as_run(produced, tls_files, monkeypatch, capsys):
    cert, key = tls_files
    monkeypatch.setenv("BULKWATCH_SASL_PASSWORD", "s3cret")
    connection = [
        *("--bootstrap", "kafka-1:9094,kafka-2:9094", "--security-protocol", "SASL_SSL"),
        *("--ssl-cafile", cert, "--ssl-certfile", cert, "--ssl-keyfile", key),
        *("--sasl-mechanism", "SCRAM-SHA-512", "--sasl-username", "generator"),
    ]
    code = main(["produce", *connection, "--topic", "events-2", "--accounts", "50", "--loop"])
    assert code == 0
    assert "produced 7 events to events-2" in capsys.readouterr().err
    (call,) = produced
    assert (call["bootstrap"], call["topic"], call["loop"]) == (
        "kafka-1:9094,kafka-2:9094",
        "events-2",
        True,
    )
    assert call["config"].accounts == 50
    options = call["producer_options"]
    assert {k: options[k] for k in options if k != "ssl_context"} == {
        "bootstrap_servers": "kafka-1:9094,kafka-2:9094",
        "client_id": "bulkwatch-produce",
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "generator",
        "sasl_plain_password": "s3cret",
    }
    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext) and context.check_hostname
    assert context.verify_mode == ssl.CERT_REQUIRED
    subjects = [dict(x[0] for x in ca["subject"]) for ca in context.get_ca_certs()]
    assert {"commonName": "bulkwatch test CA"} in subjects
    # `run` parses the very same flags into the same settings
    run_args = build_parser().parse_args(["run", *connection])
    assert Settings(
        bootstrap=run_args.bootstrap,
        security_protocol=run_args.security_protocol,
        ssl_cafile=run_args.ssl_cafile,
        ssl_certfile=run_args.ssl_certfile,
        ssl_keyfile=run_args.ssl_keyfile,
        sasl_mechanism=run_args.sasl_mechanism,
        sasl_username=run_args.sasl_username,
        sasl_password="s3cret",
    ).kafka_security() == {
        k: v
        for k, v in options.items()
        if k not in ("ssl_context", "bootstrap_servers", "client_id")
    }


def test_produce_reads_the_run_config_file(produced, tmp_path, monkeypatch):
    config = tmp_path / "bulkwatch.toml"
    config.write_text(
        'bootstrap = "broker:9095"\ntopics = ["in"]\nsecurity_protocol = "SASL_PLAINTEXT"\n'
        'sasl_mechanism = "PLAIN"\nsasl_username = "u"\nclient_id = "gen"\n'
    )
    monkeypatch.setenv("BULKWATCH_SASL_PASSWORD", "pw")
    assert main(["produce", "--config", str(config)]) == 0
    (call,) = produced
    assert (call["bootstrap"], call["topic"]) == ("broker:9095", "in")
    options = call["producer_options"]
    assert options["security_protocol"] == "SASL_PLAINTEXT" and "ssl_context" not in options
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == ("u", "pw")
    assert options["client_id"] == "gen-produce"


def test_produce_defaults_are_the_plaintext_local_broker(produced):
    assert main(["produce"]) == 0
    (call,) = produced
    assert (call["bootstrap"], call["topic"]) == ("127.0.0.1:9092", "events")
    assert call["producer_options"]["security_protocol"] == "PLAINTEXT"
    assert "ssl_context" not in call["producer_options"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--security-protocol", "SASL_SSL"],
            "bulkwatch: sasl_mechanism: required with security_protocol SASL_SSL",
        ),
        (["--security-protocol", "TLS"], "--security-protocol: expected one of"),
        (["--ssl-cafile", "CERT"], "ssl_cafile: set, but security_protocol PLAINTEXT"),
        (["--security-protocol", "SSL", "--ssl-cafile", "/nonexistent.pem"], "no such file"),
        (["--security-protocol", "SSL", "--ssl-cafile", "GARBAGE"], "TLS settings:"),
        (["--bootstrap", "kafka:99999"], "--bootstrap: bootstrap: port of 'kafka:99999'"),
        (["--topic", "a,b"], "--topic: produce writes to one topic"),
        (["--topic", "ban-signals"], "signals_topic: 'ban-signals' is also an input topic"),
    ],
)
def test_produce_rejects_bad_connection_settings_before_connecting(
    produced, tls_files, tmp_path, capsys, args, message
):
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    args = [{"CERT": tls_files[0], "GARBAGE": str(garbage)}.get(a, a) for a in args]
    assert main(["produce", *args]) == 2
    assert message in capsys.readouterr().err
    assert produced == []


def test_run_rejects_an_invalid_pem_at_start(produced, tmp_path, capsys):
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    args = ["run", "--source", "kafka", "--security-protocol", "SSL", "--ssl-cafile", str(garbage)]
    assert main(args) == 2
    assert "bulkwatch: TLS settings:" in capsys.readouterr().err


def test_run_and_produce_share_every_kafka_connection_flag():
    def flags(command: str) -> set[str]:
        (subparsers,) = [a for a in build_parser()._actions if a.dest == "command"]
        return {f for a in subparsers.choices[command]._actions for f in a.option_strings}

    connection = {
        "--bootstrap",
        "--security-protocol",
        "--ssl-cafile",
        "--ssl-certfile",
        "--ssl-keyfile",
        "--sasl-mechanism",
        "--sasl-username",
        "--config",
    }
    assert connection <= flags("run") and connection <= flags("produce")
    assert "--sasl-password" not in flags("run") | flags("produce")  # secrets stay out of argv


# -- run: how the service ends ---------------------------------------------------------------------


@pytest.fixture
def failing_service(monkeypatch) -> list[BaseException]:
    """`run` with the service replaced: run_service raises the exception put in the list."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    raised: list[BaseException] = []

    async def fake_run_service(app, *, duration_s, policy_path):
        raise raised[0]

    monkeypatch.setattr(detector.app, "build_app", lambda settings, policy, quiet: object())
    monkeypatch.setattr(detector.app, "run_service", fake_run_service)
    return raised


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (
            DeliveryFailed(
                "Kafka refused a record for topic 'ban-signals': TopicAuthorizationFailed"
            ),
            "bulkwatch: failed: Kafka refused a record for topic 'ban-signals': "
            "TopicAuthorizationFailed",
        ),
        (
            TopicAuthorizationFailedError("not authorized to write to 'events-dlq'"),
            "bulkwatch: failed: TopicAuthorizationFailedError: [Error 29] "
            "TopicAuthorizationFailedError: not authorized to write to 'events-dlq'",
        ),
        (
            PermissionError(13, "Permission denied", "/var/lib/bulkwatch/snapshots"),
            "bulkwatch: failed: PermissionError: [Errno 13] Permission denied: "
            "'/var/lib/bulkwatch/snapshots'",
        ),
    ],
)
def test_run_ending_on_an_operational_error_prints_one_line_and_exits_1(
    failing_service, capsys, error, line
):
    failing_service.append(error)
    assert main(["run", "--source", "kafka"]) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [line]
    assert "Traceback" not in err


def test_run_ending_on_an_unexpected_error_keeps_the_traceback(failing_service):
    failing_service.append(ZeroDivisionError("a bug"))
    with pytest.raises(ZeroDivisionError, match="a bug"):
        main(["run", "--source", "kafka"])


def test_run_on_a_metrics_port_in_use_fails_in_one_line(tmp_path, monkeypatch, capsys):
    """The real service (embedded simulator): the health server cannot bind, nothing else runs."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["run", "--metrics-port", str(port), "--duration", "5", "--quiet"])
    assert code == 1
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("bulkwatch:")]
    assert line.startswith(f"bulkwatch: failed: OSError: [Errno {errno.EADDRINUSE}]"), line
