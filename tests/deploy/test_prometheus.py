"""Prometheus artefacts checked by Prometheus itself.

promtool validates the scrape config and the rules and runs the rules' unit tests; then a real
Prometheus server (Debian's package) scrapes a running bulkwatch on loopback, evaluates the alert
rules against its series and answers every dashboard query. Without promtool or prometheus these
tests fail: `bash deploy/install-promtool.sh` installs both (CI runs it).
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy import (
    ALERTS,
    DASHBOARD,
    OPERATIONS_DOC,
    PROMETHEUS_DIR,
    alert_rules,
    dashboard_expressions,
    expand_grafana_variables,
    free_loopback_port,
    http_get,
    load_yaml,
    required_binary,
)

PROMETHEUS_START_TIMEOUT_S = 60.0
FIRST_SCRAPE_TIMEOUT_S = 60.0
RULE_EVALUATION_TIMEOUT_S = 30.0


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [required_binary("promtool"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_promtool_check_config() -> None:
    result = promtool("check", "config", PROMETHEUS_DIR / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", ALERTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules(load_yaml(ALERTS)['groups']))} rules found" in result.stdout


def test_promtool_unit_tests_of_the_alerts_pass() -> None:
    result = promtool("test", "rules", PROMETHEUS_DIR / "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_catch_a_broken_rule(tmp_path: Path) -> None:
    """The unit tests can fail: with one threshold changed, promtool reports the alert's test."""
    rules = ALERTS.read_text(encoding="utf-8").replace(") > 120\n", ") > 100000\n")
    assert rules != ALERTS.read_text(encoding="utf-8")
    (tmp_path / "alerts.yml").write_text(rules, encoding="utf-8")
    tests = (PROMETHEUS_DIR / "alerts_test.yml").read_text(encoding="utf-8")
    (tmp_path / "alerts_test.yml").write_text(tests, encoding="utf-8")
    result = promtool("test", "rules", tmp_path / "alerts_test.yml")
    assert result.returncode != 0
    assert "BulkwatchConsumerLagGrowing" in result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    cases: dict[str, dict[str, int]] = {}
    for group in load_yaml(PROMETHEUS_DIR / "alerts_test.yml")["tests"]:
        for case in group.get("alert_rule_test", []):
            outcome = "fires" if case.get("exp_alerts") else "quiet"
            counts = cases.setdefault(case["alertname"], {"fires": 0, "quiet": 0})
            counts[outcome] += 1
    for rule in alert_rules(load_yaml(ALERTS)["groups"]):
        counts = cases.get(rule["alert"], {})
        assert counts.get("fires") and counts.get("quiet"), f"{rule['alert']}: {counts}"


def _github_anchor(heading: str) -> str:
    anchor = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return anchor.replace(" ", "-")


def test_every_alert_has_a_runbook_in_the_operations_guide() -> None:
    doc = OPERATIONS_DOC.read_text(encoding="utf-8")
    anchors = {_github_anchor(h) for h in re.findall(r"^#{2,4} (.+)$", doc, re.M)}
    for rule in alert_rules(load_yaml(ALERTS)["groups"]):
        annotations = rule["annotations"]
        assert annotations.get("summary") and annotations.get("description"), rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        page, _, anchor = annotations["runbook_url"].partition("#")
        assert page == "docs/operations.md", rule["alert"]
        assert anchor == rule["alert"].lower(), rule["alert"]
        assert anchor in anchors, f"docs/operations.md has no section for {rule['alert']}"


# ----------------------------------------------------------------------- a real Prometheus server


@dataclass(frozen=True)
class PrometheusServer:
    base_url: str
    log_path: Path

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        status, body = http_get(f"{self.base_url}/api/v1/{path}?{query}", timeout_s=10)
        payload = json.loads(body)
        assert status == 200 and payload["status"] == "success", (path, params, payload)
        return payload["data"]

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])


def _poll(condition, timeout_s: float, what: str, server: PrometheusServer | None = None) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = condition()
        except OSError:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            tail = f"\n{server.log_tail()}" if server else ""
            pytest.fail(f"no {what} after {timeout_s:.0f} s{tail}", pytrace=False)
        time.sleep(0.5)


@pytest.fixture(scope="module")
def prometheus_server(running_bulkwatch, tmp_path_factory) -> Iterator[PrometheusServer]:
    """Debian's prometheus on loopback, scraping the running bulkwatch every second.

    It loads deploy/prometheus/alerts.yml and uses the scrape job name of prometheus.yml, so the
    rules and the dashboard see the labels they see in production.
    """
    binary = required_binary("prometheus")
    workdir = tmp_path_factory.mktemp("prometheus")
    job_name = load_yaml(PROMETHEUS_DIR / "prometheus.yml")["scrape_configs"][0]["job_name"]
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [
            {
                "job_name": job_name,
                "static_configs": [
                    {"targets": [f"{running_bulkwatch.host}:{running_bulkwatch.port}"]}
                ],
            }
        ],
    }
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    port = free_loopback_port()
    log_path = workdir / "prometheus.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--storage.tsdb.retention.time=1h",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    server = PrometheusServer(f"http://127.0.0.1:{port}", log_path)
    try:
        _poll(
            lambda: process.poll() is None and http_get(f"{server.base_url}/-/ready")[0] == 200,
            PROMETHEUS_START_TIMEOUT_S,
            "ready Prometheus",
            server,
        )
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_prometheus_scrapes_the_events_counter(prometheus_server) -> None:
    result = _poll(
        lambda: prometheus_server.api("query", query="bulkwatch_events_total")["result"],
        FIRST_SCRAPE_TIMEOUT_S,
        "bulkwatch_events_total in a PromQL query",
        prometheus_server,
    )
    types = {sample["metric"]["type"] for sample in result}
    assert {"message", "registration"} <= types
    assert all(sample["metric"]["job"] == "bulkwatch" for sample in result)
    assert sum(float(sample["value"][1]) for sample in result) > 0, "events were counted"
    (target,) = prometheus_server.api("targets")["activeTargets"]
    assert target["health"] == "up", target


def test_alert_rules_evaluate_without_errors_on_real_series(prometheus_server) -> None:
    """Every rule runs against the service's real label sets (vector matching errors show here)."""

    def evaluated_rules() -> list[dict[str, Any]] | None:
        groups = prometheus_server.api("rules")["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        # a rule never evaluated yet reports the zero time
        if rules and not any(rule["lastEvaluation"].startswith("0001-") for rule in rules):
            return rules
        return None

    # wait until series exist, then until every rule has been evaluated with them
    _poll(
        lambda: prometheus_server.api("query", query="bulkwatch_records_total")["result"],
        FIRST_SCRAPE_TIMEOUT_S,
        "bulkwatch_records_total",
        prometheus_server,
    )
    time.sleep(2.5)  # over two evaluation intervals with the series present
    rules = _poll(evaluated_rules, RULE_EVALUATION_TIMEOUT_S, "evaluated rules", prometheus_server)
    assert {rule["name"] for rule in rules} == {
        rule["alert"] for rule in alert_rules(load_yaml(ALERTS)["groups"])
    }
    broken = {rule["name"]: rule.get("lastError") for rule in rules if rule["health"] != "ok"}
    assert not broken, broken


def test_the_state_capacity_rule_matches_real_series(prometheus_server) -> None:
    """Occupancy per table: the rule's left and right sides join on the exported labels."""
    (rule,) = [
        r
        for r in alert_rules(load_yaml(ALERTS)["groups"])
        if r["alert"] == "BulkwatchStateTableNearCapacity"
    ]
    occupancy = rule["expr"].rsplit(">", 1)[0]
    result = _poll(
        lambda: prometheus_server.api("query", query=occupancy)["result"],
        FIRST_SCRAPE_TIMEOUT_S,
        "state table occupancy",
        prometheus_server,
    )
    assert {sample["metric"]["table"] for sample in result} == {"accounts", "clusters"}
    assert all(0 <= float(sample["value"][1]) <= 1 for sample in result)


def test_every_dashboard_query_runs_on_prometheus(prometheus_server) -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    _poll(
        lambda: prometheus_server.api("query", query="bulkwatch_events_total")["result"],
        FIRST_SCRAPE_TIMEOUT_S,
        "bulkwatch_events_total",
        prometheus_server,
    )
    time.sleep(3)  # a few scrapes, so that rate() has two points
    answered = 0
    for title, expr in dashboard_expressions(dashboard):
        query = expand_grafana_variables(expr)
        assert "$" not in query, f"{title}: unknown Grafana variable in {expr}"
        data = prometheus_server.api("query", query=query)  # asserts status "success"
        assert data["resultType"] == "vector", title
        answered += bool(data["result"])
    events_per_s = prometheus_server.api(
        "query",
        query=expand_grafana_variables(
            'sum(rate(bulkwatch_events_total{job="$job", instance=~"$instance"}[$__rate_interval]))'
        ),
    )["result"]
    assert events_per_s and float(events_per_s[0]["value"][1]) > 0
    assert answered >= len(dashboard_expressions(dashboard)) // 2, "most panels show data"


def test_dashboard_variables_resolve_on_prometheus(prometheus_server) -> None:
    _poll(
        lambda: prometheus_server.api("query", query="bulkwatch_ready")["result"],
        FIRST_SCRAPE_TIMEOUT_S,
        "bulkwatch_ready",
        prometheus_server,
    )
    jobs = prometheus_server.api("label/job/values", **{"match[]": "bulkwatch_ready"})
    assert jobs == ["bulkwatch"]
    instances = prometheus_server.api(
        "label/instance/values", **{"match[]": 'bulkwatch_ready{job="bulkwatch"}'}
    )
    assert len(instances) == 1
