"""Shared pytest fixtures and hooks.

Kafka: `kafka_broker` starts one real broker per session with deploy/local-kafka.sh (the very
script developers and CI use) on free loopback ports, or uses an external broker when
BULKWATCH_TEST_BOOTSTRAP is set. It is started only when a test asks for it, and the script runs
with its own environment copy: nothing here changes os.environ, the working directory or any
cache setting seen by the other tests (the Numba cache among them).

Tests under tests/integration/ get the `integration` marker (registered in pyproject.toml), so
`pytest -m "not integration"` runs without Java.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import for_code

LOCAL_KAFKA_SCRIPT = Path(__file__).resolve().parents[1] / "deploy" / "local-kafka.sh"
INTEGRATION_DIR = Path(__file__).resolve().parent / "integration"
# Covers a cold Maven resolution (~10 s measured) plus broker start (~3-5 s) with a wide margin.
BROKER_START_TIMEOUT_S = 600
TOPIC_READY_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class KafkaBroker:
    """Where the test broker listens. TLS fields are None for an external plain broker."""

    bootstrap: str
    ssl_bootstrap: str | None = None
    cafile: str | None = None
    sasl_bootstrap: str | None = None
    scram_mechanism: str | None = None
    scram_user: str | None = None
    scram_password: str | None = None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(INTEGRATION_DIR):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """A real Kafka broker for the session: PLAINTEXT, SSL and SASL_SSL (SCRAM-SHA-512).

    With BULKWATCH_TEST_BOOTSTRAP set, that broker is used instead; its TLS listeners, if any,
    come from BULKWATCH_TEST_SSL_BOOTSTRAP, BULKWATCH_TEST_CAFILE, BULKWATCH_TEST_SASL_BOOTSTRAP,
    BULKWATCH_TEST_SCRAM_USER and BULKWATCH_TEST_SCRAM_PASSWORD (mechanism SCRAM-SHA-512).
    """
    external = os.environ.get("BULKWATCH_TEST_BOOTSTRAP")
    if external:
        user = os.environ.get("BULKWATCH_TEST_SCRAM_USER")
        yield KafkaBroker(
            bootstrap=external,
            ssl_bootstrap=os.environ.get("BULKWATCH_TEST_SSL_BOOTSTRAP"),
            cafile=os.environ.get("BULKWATCH_TEST_CAFILE"),
            sasl_bootstrap=os.environ.get("BULKWATCH_TEST_SASL_BOOTSTRAP"),
            scram_mechanism="SCRAM-SHA-512" if user else None,
            scram_user=user,
            scram_password=os.environ.get("BULKWATCH_TEST_SCRAM_PASSWORD"),
        )
        return

    port, controller_port, ssl_port, sasl_ssl_port = _free_loopback_ports(4)
    script_env = {
        **os.environ,
        "BULKWATCH_KAFKA_DIR": str(tmp_path_factory.mktemp("kafka-broker")),
        "BULKWATCH_KAFKA_PORT": str(port),
        "BULKWATCH_KAFKA_CONTROLLER_PORT": str(controller_port),
        "BULKWATCH_KAFKA_SSL_PORT": str(ssl_port),
        "BULKWATCH_KAFKA_SASL_SSL_PORT": str(sasl_ssl_port),
    }

    def run_script(command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(LOCAL_KAFKA_SCRIPT), command],
            env=script_env,
            capture_output=True,
            text=True,
            timeout=BROKER_START_TIMEOUT_S,
            check=False,
        )

    with ExitStack() as cleanup:
        cleanup.callback(run_script, "stop")
        started = run_script("start")
        if started.returncode != 0:
            pytest.fail(
                f"{LOCAL_KAFKA_SCRIPT} start failed ({started.returncode}):\n{started.stderr}",
                pytrace=False,
            )
        values = dict(line.split("=", 1) for line in started.stdout.splitlines() if "=" in line)
        yield KafkaBroker(
            bootstrap=values["BULKWATCH_KAFKA_BOOTSTRAP"],
            ssl_bootstrap=values["BULKWATCH_KAFKA_SSL_BOOTSTRAP"],
            cafile=values["BULKWATCH_KAFKA_CAFILE"],
            sasl_bootstrap=values["BULKWATCH_KAFKA_SASL_SSL_BOOTSTRAP"],
            scram_mechanism=values["BULKWATCH_KAFKA_SCRAM_MECHANISM"],
            scram_user=values["BULKWATCH_KAFKA_SCRAM_USER"],
            scram_password=values["BULKWATCH_KAFKA_SCRAM_PASSWORD"],
        )


class PrivateKafkaBroker:
    """A broker of deploy/local-kafka.sh for one test, which may stop and resume it."""

    def __init__(self, directory: Path) -> None:
        port, controller_port = _free_loopback_ports(2)
        self.directory = directory
        self.bootstrap = f"127.0.0.1:{port}"
        self._env = {
            **os.environ,
            "BULKWATCH_KAFKA_DIR": str(directory),
            "BULKWATCH_KAFKA_PORT": str(port),
            "BULKWATCH_KAFKA_CONTROLLER_PORT": str(controller_port),
            "BULKWATCH_KAFKA_SSL_PORT": "",
            "BULKWATCH_KAFKA_SASL_SSL_PORT": "",
        }

    def run(self, command: str) -> str:
        """Run `local-kafka.sh <command>` for this broker; fails the test if it fails."""
        done = subprocess.run(
            [str(LOCAL_KAFKA_SCRIPT), command],
            env=self._env,
            capture_output=True,
            text=True,
            timeout=BROKER_START_TIMEOUT_S,
            check=False,
        )
        if done.returncode != 0:
            pytest.fail(f"local-kafka.sh {command} failed ({done.returncode}):\n{done.stderr}")
        return done.stderr

    def pid(self) -> int | None:
        path = self.directory / "kafka.pid"
        return int(path.read_text()) if path.exists() else None

    def stop(self) -> str:
        """SIGTERM the broker JVM and wait for it to exit (its storage stays)."""
        return self.run("stop")

    def resume(self) -> str:
        """Start it again on the same ports with the same storage."""
        return self.run("resume")


@pytest.fixture
def private_kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateKafkaBroker]:
    """A second broker (PLAINTEXT only, its own ports and directory) for tests that stop and
    restart it; the session's `kafka_broker` is never touched. Stopped at the end of the test."""
    broker = PrivateKafkaBroker(tmp_path_factory.mktemp("private-kafka"))
    try:
        broker.run("start")
        yield broker
    finally:
        broker.run("stop")


def _free_loopback_ports(count: int) -> list[int]:
    # Held open together so the kernel hands out distinct ports; the broker binds them right after.
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


@pytest.fixture
def create_topic() -> Callable[..., Awaitable[None]]:
    """`await create_topic(bootstrap, name, partitions, configs=None)`: create a topic (with topic
    `configs` such as `{"max.message.bytes": "64"}`), wait for its leaders.

    Raises the broker's error (e.g. TopicAlreadyExistsError) if creation fails.
    """

    async def create(
        bootstrap: str,
        name: str,
        partitions: int,
        replication_factor: int = 1,
        *,
        configs: dict[str, str] | None = None,
    ) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            topic = NewTopic(name, partitions, replication_factor, topic_configs=configs or {})
            response = await admin.create_topics([topic])
            for topic, error_code, *_ in response.topic_errors:
                if error_code:
                    raise for_code(error_code)(f"creating topic {topic!r}")
            await _wait_for_leaders(admin, name, partitions)
        finally:
            await admin.close()

    return create


async def _wait_for_leaders(admin: AIOKafkaAdminClient, name: str, partitions: int) -> None:
    # Producers and consumers see a new topic only once the broker's metadata has its leaders.
    async with asyncio.timeout(TOPIC_READY_TIMEOUT_S):
        while True:
            (topic,) = await admin.describe_topics([name])
            leaders = [p["leader"] for p in topic["partitions"]]
            if topic["error_code"] == 0 and len(leaders) == partitions and min(leaders) >= 0:
                return
            await asyncio.sleep(0.05)


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """`services(name, bootstrap, topics, group, **options)`: a `bulkwatch run --source kafka`
    subprocess (tests/integration/service_helpers.py `Service`, not started yet); every one still
    running at the end of the test is killed."""
    from tests.integration.service_helpers import Service

    started: list[Service] = []

    def make(name: str, bootstrap: str, topics: Any, group: str, **options: Any) -> Service:
        options.setdefault("snapshot_dir", tmp_path / "snapshots")
        service = Service(name, tmp_path, bootstrap, topics, group, **options)
        started.append(service)
        return service

    yield make
    for service in started:
        service.kill()


@pytest.fixture
def topic_name(request: pytest.FixtureRequest) -> str:
    """A topic name unique to this test run: `bw-<test name>-<8 hex>`."""
    test_name = re.sub(r"[^a-zA-Z0-9._-]+", "-", request.node.name)[:80]
    return f"bw-{test_name}-{uuid.uuid4().hex[:8]}"
