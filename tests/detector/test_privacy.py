"""Privacy of the running service: no account id, network address or message text in its logs, its
console output or its metric labels; the metrics endpoint binds only the address it is given.

The service runs as users run it (``bulkwatch run``, embedded simulator, default settings, no
``BULKWATCH_*`` variables). Its simulator source loops over rounds of fresh accounts
(``SimulatorSource(..., rebase_to_now=True, loop=True)``): rebasing moves event times only, so the
identities of round ``r`` are those of ``generate_events(config, round_index=r)`` and
``labels(config, round_index=r)``. The test regenerates every round the run consumed.

That the policy's exemplar text can be left out of signals is tested in
``tests/detector/test_policy_rules.py::test_exemplar_text_can_be_turned_off``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from detector.config import Settings
from detector.policy import REASON_CODES
from detector.simulator import SimulatorConfig, event_counts, generate_events, labels

REPO = Path(__file__).resolve().parents[2]
RUN_SECONDS = 20
SIM_ACCOUNTS = 2000
# What `bulkwatch run --accounts 2000` simulates (detector.app.build_app, default settings).
DEFAULTS = Settings()
SIM_CONFIG = SimulatorConfig(
    accounts=SIM_ACCOUNTS, minutes=DEFAULTS.sim_minutes, seed=DEFAULTS.sim_seed
)

SIGNAL_LINE = re.compile(
    r"(REVIEW|THROTTLE|BAN) *( \[shadow\])? score=[0-9.e+-]+ *reasons=([A-Z_,]+) "
    r"signal=[0-9a-f]{24}"
)
PROGRESS = r"[\d,]+ events \([\d,]+/s\) dead=\d+ signals: (none|([a-z]+=\d+ ?)+) \|( ?[A-Z_]+( \(shadow\))?=\d+)* ?"
PROGRESS_LINE = re.compile(f"(bulkwatch: stopped: )?{PROGRESS}")
LOG_LINE = re.compile(
    r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: (?P<msg>.*)"
)
PHONE_LIKE = re.compile(r"\+\d{7,}")
IPV4_LIKE = re.compile(r"(?<![\d.])\d{1,3}(?:\.\d{1,3}){3}(?![\d.])")
GROUP_LIKE = re.compile(r"\d{6,}@g\.us")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BULKWATCH_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def start_run(
    cwd: Path, port: int, *extra: str, duration_s: float = RUN_SECONDS
) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "detector.cli", "run", "--duration", str(duration_s),
        "--metrics-port", str(port), "--accounts", str(SIM_ACCOUNTS), *extra,
    ]  # fmt: skip
    with open(cwd / "stdout.txt", "wb") as stdout, open(cwd / "stderr.txt", "wb") as stderr:
        return subprocess.Popen(command, cwd=cwd, env=clean_env(), stdout=stdout, stderr=stderr)


def scrape(port: int, host: str = "127.0.0.1") -> str | None:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=2) as response:
            return response.read().decode()
    except OSError:
        return None


def records_consumed(metrics: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if sample.name == "bulkwatch_records_total"
    )


def listening_addresses(pid: int, port: int) -> list[str]:
    return [
        c.laddr.ip
        for c in psutil.Process(pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    ]


def other_local_ipv4() -> list[str]:
    """This machine's IPv4 addresses outside 127.0.0.0/8 (there may be none)."""
    return [
        a.address
        for addresses in psutil.net_if_addrs().values()
        for a in addresses
        if a.family == socket.AF_INET and not ipaddress.ip_address(a.address).is_loopback
    ]


def connects(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def wait_listening(process: subprocess.Popen, port: int, timeout_s: float = 60) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, "bulkwatch run exited early"
        addresses = listening_addresses(process.pid, port)
        if addresses:
            return addresses
        time.sleep(0.2)
    raise AssertionError(f"nothing listens on port {port}")


class Identities:
    """Account ids, group ids, IPs and texts of the simulator rounds, regenerated round by round."""

    def __init__(self) -> None:
        self.ids: set[str] = set()
        self.ips: set[str] = set()
        self.texts: set[str] = set()
        self.rounds = 0
        self.events = 0

    def add_round(self) -> None:
        for event in generate_events(SIM_CONFIG, round_index=self.rounds):
            self.ids.add(event["account"])
            if "peer" in event:
                self.ids.add(event["peer"])
            if "ip" in event:
                self.ips.add(event["ip"])
            if "text" in event:
                self.texts.add(event["text"])
        labelled = {label.account for label in labels(SIM_CONFIG, round_index=self.rounds)}
        assert labelled <= self.ids
        self.events += sum(event_counts(SIM_CONFIG, round_index=self.rounds).values())
        self.rounds += 1


def leaks(text: str, who: Identities) -> list[str]:
    """Identities found in ``text``: exact ids and addresses by token, texts by substring."""
    found = [t for t in PHONE_LIKE.findall(text) if t in who.ids]
    found += [t for t in GROUP_LIKE.findall(text) if t in who.ids]
    found += [t for t in IPV4_LIKE.findall(text) if t in who.ips]
    # Texts: the distinctive ones (short ham like "Ok lor" can occur by chance in any prose).
    found += [t for t in who.texts if len(t) >= 20 and t in text]
    return found


def test_run_keeps_ids_addresses_and_texts_out_of_logs_and_metrics(tmp_path):
    port = free_port()
    who = Identities()
    process = start_run(tmp_path, port)
    metrics = None
    try:
        addresses = wait_listening(process, port)
        assert addresses == ["127.0.0.1"]  # the default binds loopback only
        for address in other_local_ipv4():
            assert not connects(address, port), f"metrics reachable via {address}"
        # Scrape /metrics until the end; regenerate the rounds the service has reached meanwhile.
        while process.poll() is None:
            metrics = scrape(port) or metrics
            if metrics is not None and who.events <= records_consumed(metrics):
                who.add_round()
            else:
                time.sleep(0.25)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)

    stdout = (tmp_path / "stdout.txt").read_text()
    stderr = (tmp_path / "stderr.txt").read_text()
    processed = int(re.search(r"stopped: ([\d,]+) events", stderr).group(1).replace(",", ""))
    while who.events < processed:  # every round the run reached, also a partly consumed one
        who.add_round()
    assert who.rounds >= 2 and len(who.ids) > 100_000 and len(who.texts) > 1000

    # The console: one signal line per signal, with no slot for an account, address or text.
    lines = stdout.splitlines()
    assert len(lines) > 100
    for line in lines:
        match = SIGNAL_LINE.fullmatch(line)
        assert match, line
        assert set(match.group(3).split(",")) <= set(REASON_CODES)
    # The logs: progress lines, the exit summary, and log records.
    messages = []
    for line in stderr.splitlines():
        if PROGRESS_LINE.fullmatch(line):
            continue
        record = LOG_LINE.fullmatch(line)
        assert record, f"unexpected stderr line: {line!r}"
        messages.append(record.group("msg"))
    assert leaks(stdout, who) == [] and leaks(stderr, who) == []
    assert not PHONE_LIKE.search(stderr + stdout)
    assert not [a for a in IPV4_LIKE.findall("\n".join(messages)) if a != "127.0.0.1"]

    # Metrics: label values come from fixed vocabularies; none is an id, an address or a text.
    assert metrics is not None and "bulkwatch_signals_total" in metrics
    signals = sum(
        sample.value
        for family in text_string_to_metric_families(metrics)
        if family.name == "bulkwatch_signals"
        for sample in family.samples
        if sample.name == "bulkwatch_signals_total"
    )
    assert signals > 0  # scraped while busy
    label_values = {
        value
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        for value in sample.labels.values()
    }
    assert leaks("\n".join(label_values), who) == []
    for value in label_values:
        assert not PHONE_LIKE.search(value) and not IPV4_LIKE.search(value), value
        assert not GROUP_LIKE.search(value), value
    assert leaks(metrics, who) == []
    assert not (tmp_path / "dead-letters.jsonl").exists()  # the simulator sends no bad records


def test_metrics_host_changes_the_bound_address(tmp_path):
    port = free_port()
    process = start_run(tmp_path, port, "--metrics-host", "0.0.0.0", duration_s=60)
    try:
        assert wait_listening(process, port) == ["0.0.0.0"]
        for address in ["127.0.0.1", *other_local_ipv4()]:
            assert connects(address, port), address
            assert scrape(port, address) is not None
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    assert "stopped:" in (tmp_path / "stderr.txt").read_text()


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
def test_settings_default_to_loopback_and_accept_an_address(host):
    from detector.config import load_settings

    assert load_settings(env={}).metrics_host == "127.0.0.1"
    assert load_settings(env={}, overrides={"metrics_host": host}).metrics_host == host
    assert load_settings(env={"BULKWATCH_METRICS_HOST": host}).metrics_host == host
