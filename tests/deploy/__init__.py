"""Tests of the deployment and monitoring artefacts in deploy/ (issue 8).

Helpers shared by test_manifests.py and test_prometheus.py live here; fixtures are in conftest.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
PROMETHEUS_DIR = DEPLOY / "prometheus"
K8S_DIR = DEPLOY / "k8s"
DASHBOARD = DEPLOY / "grafana" / "bulkwatch.json"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
OPERATIONS_DOC = REPO / "docs" / "operations.md"

# Grafana variables in the dashboard's queries, and what they stand for in a plain PromQL query.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$job": "bulkwatch",
    "$instance": ".*",
}

# Names of the series that a PromQL expression selects: the service's own and prometheus-client's
# process collector. No other identifier (function, keyword, label) starts with these prefixes.
_METRIC_NAME = re.compile(r"(?<![A-Za-z0-9_:$])((?:bulkwatch|process)_[A-Za-z0-9_:]*)")
_STRING_LITERAL = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_SELECTOR = re.compile(r"(?<![A-Za-z0-9_:$])((?:bulkwatch|process)_[A-Za-z0-9_:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def load_yaml_documents(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


def load_toml(path: Path) -> dict[str, Any]:
    return tomllib.loads(path.read_text(encoding="utf-8"))


def project_version() -> str:
    return load_toml(REPO / "pyproject.toml")["project"]["version"]


# ------------------------------------------------------------------------------ PromQL in artefacts


def iter_panels(panels: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel of a dashboard, including those nested in collapsed rows."""
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels", []))


def dashboard_expressions(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL expression) for every query target of the dashboard."""
    found = []
    for panel in iter_panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            if target.get("expr"):
                found.append((panel["title"], target["expr"]))
    return found


def template_queries(dashboard: dict[str, Any]) -> list[str]:
    """The queries of the dashboard's query variables (Grafana's label_values(...), not PromQL)."""
    queries = []
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            queries.append(query["query"] if isinstance(query, dict) else query)
    return queries


def alert_rules(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def alert_expressions() -> list[tuple[str, str]]:
    """(alert name, PromQL expression) for every rule of deploy/prometheus/alerts.yml."""
    return [(rule["alert"], rule["expr"]) for rule in alert_rules(load_yaml(ALERTS)["groups"])]


def expand_grafana_variables(expr: str) -> str:
    for variable, value in sorted(GRAFANA_VARIABLES.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(variable, value)
    return expr


def metric_names(expr: str) -> set[str]:
    """Series names an expression selects, exactly as written (histograms keep ``_bucket``).

    String literals are blanked first, so a label value such as "bulkwatch_x" is not a name.
    """
    return set(_METRIC_NAME.findall(_STRING_LITERAL.sub('""', expr)))


def selector_matchers(expr: str) -> list[tuple[str, str, str, str]]:
    """(metric, label, operator, value) of every label matcher written after a metric name."""
    found = []
    for metric, body in _SELECTOR.findall(expr):
        for label, operator, value in _MATCHER.findall(body):
            found.append((metric, label, operator, value))
    return found


def queried_metric_names() -> dict[str, set[str]]:
    """Every series name that the dashboard and the alert rules query -> where it is used."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    used: dict[str, set[str]] = {}
    sources = [(f"dashboard panel {title!r}", e) for title, e in dashboard_expressions(dashboard)]
    sources += [("dashboard variable", q) for q in template_queries(dashboard)]
    sources += [(f"alert {name}", e) for name, e in alert_expressions()]
    for where, expr in sources:
        for name in metric_names(expr):
            used.setdefault(name, set()).add(where)
    return used


# ------------------------------------------------------------------------ the Prometheus exposition


@dataclass(frozen=True)
class Exposition:
    """What one scrape of /metrics declares and contains."""

    series_names: frozenset[str]  # every name a query may select, declared or sampled
    labels_by_series: dict[str, dict[str, set[str]]]  # sampled series -> label -> values seen


def parse_exposition(text: str) -> Exposition:
    """Parse the Prometheus text format.

    A family declared by ``# TYPE`` counts as exported even before it has a sample (a labelled
    counter whose labels never occurred yet); histograms and summaries declare their
    ``_bucket``/``_sum``/``_count`` series.
    """
    names: set[str] = set()
    labels: dict[str, dict[str, set[str]]] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            names.add(name)
            if kind == "histogram":
                names.update({f"{name}_bucket", f"{name}_sum", f"{name}_count"})
            elif kind == "summary":
                names.update({f"{name}_sum", f"{name}_count"})
            elif kind == "counter" and not name.endswith("_total"):
                names.add(f"{name}_total")
        elif line and not line.startswith("#"):
            match = re.match(r"([A-Za-z_:][A-Za-z0-9_:]*)(\{(.*)\})?\s", line)
            if match is None:
                raise ValueError(f"not a sample line: {line!r}")
            name = match.group(1)
            names.add(name)
            series_labels = labels.setdefault(name, {})
            for label, _, value in _MATCHER.findall(match.group(3) or ""):
                series_labels.setdefault(label, set()).add(value)
    return Exposition(frozenset(names), labels)


def http_get(url: str, timeout_s: float = 5.0) -> tuple[int, bytes]:
    """Status and body of a GET; connection errors raise OSError."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def required_binary(name: str) -> str:
    """Path of a binary the deploy tests need; they fail (never skip) without it."""
    path = shutil.which(name)
    if path is None:
        raise AssertionError(
            f"{name} is not installed: run `bash deploy/install-promtool.sh` "
            "(Debian's prometheus package provides promtool and the prometheus server)"
        )
    return path


def bulkwatch_command() -> list[str]:
    """The installed console script, else the same entry point through this interpreter."""
    script = shutil.which("bulkwatch")
    if script is not None:
        return [script]
    return [sys.executable, "-m", "detector.cli"]


def service_environment() -> dict[str, str]:
    """The environment to run bulkwatch in: this checkout importable, no BULKWATCH_* settings.

    Any BULKWATCH_* variable is a setting to bulkwatch (an unknown one is an error), so variables
    meant for other tools (e.g. the Kafka test fixtures') must not leak into the service.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("BULKWATCH_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return env


def free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ------------------------------------------------------------------------- a running bulkwatch

# /healthz answers as soon as the process listens; the first batches wait for the kernels, which a
# cold start compiles (no Numba cache yet: the deploy tests may be the first to run any kernel).
STARTUP_TIMEOUT_S = 60.0
FIRST_BATCHES_TIMEOUT_S = 480.0
# The service stops by itself after this even if the test session is killed before teardown.
SERVICE_DURATION_S = 900
# Paced, so the service leaves CPU to the other tests on a 2-core machine.
SIMULATOR_RATE_EVENTS_PER_S = 2000


@dataclass(frozen=True)
class RunningBulkwatch:
    """A `bulkwatch run` subprocess serving /metrics, /healthz and /readyz on loopback."""

    base_url: str
    host: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def metrics_text(self) -> str:
        status, body = http_get(f"{self.base_url}/metrics")
        assert status == 200, f"/metrics answered {status}"
        return body.decode("utf-8")

    def batches_processed(self) -> float:
        return sum(
            float(line.split()[-1])
            for line in self.metrics_text().splitlines()
            if line.startswith("bulkwatch_batch_seconds_count")
        )

    def wait_until(self, condition: Callable[[], bool], timeout_s: float, what: str) -> None:
        """Poll ``condition``; fail with the service's log if it exits or time runs out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(
                    f"bulkwatch exited with {self.process.returncode} while waiting for {what}:\n"
                    f"{self.log_tail()}",
                    pytrace=False,
                )
            try:
                if condition():
                    return
            except OSError:
                pass  # not listening yet
            time.sleep(0.5)
        pytest.fail(
            f"bulkwatch: no {what} after {timeout_s:.0f} s:\n{self.log_tail()}", pytrace=False
        )

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM, as Kubernetes and Docker stop a container; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_bulkwatch(workdir: Path) -> RunningBulkwatch:
    """`bulkwatch run` on the embedded simulator with the Kubernetes policy, past its first batches.

    It runs the console script (or `python -m detector.cli`) as the container's entrypoint does,
    configured by options only, and uses deploy/k8s/policy.toml, which proves the policy shipped in
    the ConfigMap loadable.
    """
    host, port = "127.0.0.1", free_loopback_port()
    command = [
        *bulkwatch_command(),
        "run",
        "--source", "simulator",
        "--policy", str(K8S_DIR / "policy.toml"),
        "--metrics-host", host,
        "--metrics-port", str(port),
        "--snapshot-dir", str(workdir / "snapshots"),
        "--rate", str(SIMULATOR_RATE_EVENTS_PER_S),
        "--duration", str(SERVICE_DURATION_S),
    ]  # fmt: skip
    log_path = workdir / "bulkwatch.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=workdir,
            env=service_environment(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    service = RunningBulkwatch(f"http://{host}:{port}", host, port, process, log_path)
    try:
        service.wait_until(
            lambda: http_get(f"{service.base_url}/healthz")[0] == 200,
            STARTUP_TIMEOUT_S,
            "200 from /healthz",
        )
        service.wait_until(
            lambda: service.batches_processed() >= 3,
            FIRST_BATCHES_TIMEOUT_S,
            "processed batches in /metrics (bulkwatch_batch_seconds_count)",
        )
    except BaseException:
        service.stop()
        raise
    return service
