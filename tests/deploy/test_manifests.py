"""The deployment artefacts are consistent with each other and with the code.

Dockerfile, compose stack, Kubernetes manifests and Grafana dashboard are parsed and checked for the
fields an operator relies on, and every metric the dashboard and the alerts query is compared with
what a running bulkwatch exports, so neither can drift from the code.
"""

from __future__ import annotations

import ast
import base64
import json
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from detector.config import SettingsError, load_settings, settings_fields
from detector.metrics import Metrics
from tests.deploy import (
    ALERTS,
    DASHBOARD,
    DEPLOY,
    K8S_DIR,
    PROMETHEUS_DIR,
    REPO,
    alert_expressions,
    bulkwatch_command,
    dashboard_expressions,
    http_get,
    iter_panels,
    load_toml,
    load_yaml,
    load_yaml_documents,
    metric_names,
    parse_exposition,
    project_version,
    queried_metric_names,
    selector_matchers,
    service_environment,
    start_bulkwatch,
)

SETTING_NAMES = {f.name for f in settings_fields()}
# Labels that Prometheus attaches to every scraped series; the service never exports them itself.
TARGET_LABELS = {"job", "instance"}


def env_setting_names(env: dict[str, Any]) -> set[str]:
    return {key.removeprefix("BULKWATCH_").lower() for key in env if key.startswith("BULKWATCH_")}


def is_pinned(image: str) -> bool:
    """A tag naming a release (digits in it) or a digest; never implicit or `latest`."""
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    return bool(name) and "/" not in tag and tag != "latest" and re.search(r"\d", tag) is not None


# =========================================================================================
# Dockerfile
# =========================================================================================


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args_of(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for args in self.args_of("ENV"):
            for token in shlex.split(args):
                key, sep, value = token.partition("=")
                assert sep, f"ENV {args!r}: use the KEY=value form"
                values[key] = value
        return values


def parse_dockerfile(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the build stages, with continuation lines joined."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "Dockerfile ends inside a continued line"

    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            tokens = [t for t in args.split() if not t.startswith("--")]
            base = re.sub(
                r"\$\{?(\w+)\}?", lambda m: global_args.get(m.group(1), m.group(0)), tokens[0]
            )
            name = tokens[2] if len(tokens) == 3 and tokens[1].upper() == "AS" else None
            stages.append(Stage(base, name))
        elif not stages:
            assert keyword == "ARG", f"only ARG may come before the first FROM, not {keyword}"
            key, _, value = args.partition("=")
            global_args[key] = value
        else:
            stages[-1].instructions.append((keyword, args))
    return global_args, stages


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def _ignore_pattern_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def dockerignored(relative_path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = relative_path.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        regex = _ignore_pattern_regex(pattern.lstrip("!").strip("/"))
        if any(regex.match(candidate) for candidate in candidates):
            excluded = not negated
    return excluded


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], list[Stage]]:
    return parse_dockerfile(DEPLOY / "Dockerfile")


def test_dockerignore_matcher_follows_docker_semantics() -> None:
    patterns = ["*", "!detector/", "**/__pycache__", "!keep/__pycache__"]
    assert dockerignored("README.md", patterns)
    assert not dockerignored("detector/cli.py", patterns)
    assert dockerignored("detector/__pycache__/cli.cpython-311.pyc", patterns)
    assert dockerignored("bench/data/x.csv", patterns)
    assert not dockerignored("keep/__pycache__/a", ["**/__pycache__", "!keep/__pycache__"])


def test_dockerfile_is_multi_stage_on_a_pinned_slim_python(dockerfile) -> None:
    _, stages = dockerfile
    assert len(stages) >= 2, "a build stage and a runtime stage"
    build, runtime = stages[0], stages[-1]
    assert build.name, "the build stage is named, for COPY --from"
    for stage in stages:
        assert is_pinned(stage.base), f"base image {stage.base!r} is not pinned to a release"
        assert re.match(r"python:3\.(\d+)\.\d+-slim", stage.base), (
            f"{stage.base}: a slim Python base"
        )
    minor = int(re.match(r"python:3\.(\d+)", runtime.base).group(1))
    required = load_toml(REPO / "pyproject.toml")["project"]["requires-python"]
    assert minor >= int(re.search(r">=\s*3\.(\d+)", required).group(1)), required
    copies_from_build = [a for a in runtime.args_of("COPY") if f"--from={build.name}" in a]
    assert copies_from_build, (
        "the runtime stage copies the installed environment from the build stage"
    )
    assert not any("pip install" in a for a in runtime.args_of("RUN")), (
        "nothing is built at runtime"
    )


def test_dockerfile_runs_as_the_non_root_user_the_pod_spec_expects(dockerfile) -> None:
    _, stages = dockerfile
    users = stages[-1].args_of("USER")
    assert users, "the runtime stage sets USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) >= 1000, (
        "a numeric non-root uid (Kubernetes checks runAsNonRoot)"
    )
    pod_security = k8s_pod_spec()["securityContext"]
    assert pod_security["runAsUser"] == int(uid)
    assert not gid or pod_security["runAsGroup"] == int(gid)


def test_dockerfile_healthcheck_probes_healthz(dockerfile) -> None:
    _, stages = dockerfile
    (healthcheck,) = stages[-1].args_of("HEALTHCHECK")
    assert "/healthz" in healthcheck and "/readyz" not in healthcheck
    assert "CMD" in healthcheck
    assert "BULKWATCH_METRICS_PORT" in healthcheck and "9108" in healthcheck


def test_dockerfile_copy_sources_exist_and_are_not_dockerignored(dockerfile) -> None:
    _, stages = dockerfile
    patterns = dockerignore_patterns()
    checked = 0
    for stage in stages:
        for args in stage.args_of("COPY") + stage.args_of("ADD"):
            tokens = exec_form(args) if args.startswith("[") else shlex.split(args)
            if any(t.startswith("--from=") for t in tokens):
                continue
            sources = [t for t in tokens if not t.startswith("--")][:-1]
            for source in sources:
                path = REPO / source
                assert path.exists(), f"COPY source {source!r} does not exist in the repository"
                assert not dockerignored(source, patterns), (
                    f"{source!r} is excluded by .dockerignore"
                )
                files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
                shipped = [
                    p
                    for p in files
                    if "__pycache__" not in p.parts and not p.suffix.startswith(".py[")
                ]
                for file in shipped:
                    if file.suffix in {".py", ".toml"}:
                        relative = file.relative_to(REPO).as_posix()
                        assert not dockerignored(relative, patterns), f"{relative} is dockerignored"
                checked += 1
    assert checked >= 2


def stage_build_sources(stage: Stage, workdir: Path) -> None:
    """Lay out a stage's COPY sources (less what .dockerignore drops) as the stage sees them."""
    patterns = dockerignore_patterns()
    for args in stage.args_of("COPY"):
        tokens = [t for t in shlex.split(args) if not t.startswith("--")]
        if "--from=" in args:
            continue
        *sources, dest = tokens
        target_dir = workdir / dest
        for source in sources:
            path = REPO / source
            files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
            for file in files:
                relative = file.relative_to(REPO).as_posix()
                if dockerignored(relative, patterns):
                    continue
                inside = file.relative_to(path) if path.is_dir() else Path(file.name)
                (target_dir / inside).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(file, target_dir / inside)


def test_the_image_installation_carries_everything_the_cli_needs(dockerfile, tmp_path) -> None:
    """The build stage's `pip install .`, rehearsed: the Dockerfile's COPY sources (less
    .dockerignore) installed into a fresh virtualenv, then the CLI run away from the checkout.

    Everything the commands read at run time (the default policy, the simulator's text corpus)
    must come with the installed package: the image has nothing else.
    """
    _, stages = dockerfile
    build = stages[0]
    (workdir,) = build.args_of("WORKDIR")
    context = tmp_path / workdir.lstrip("/")
    stage_build_sources(build, context)
    venv = tmp_path / "venv"
    # Dependencies come from this interpreter's site-packages; the image resolves them from PyPI.
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", venv], check=True)
    installed = subprocess.run(
        [venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-deps", context],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert installed.returncode == 0, installed.stderr
    env = {k: v for k, v in service_environment().items() if k != "PYTHONPATH"}
    run_dir = tmp_path / "elsewhere"
    run_dir.mkdir()

    def bulkwatch(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [venv / "bin" / "bulkwatch", *args],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=run_dir,
            env=env,
            check=False,
        )

    probe = subprocess.run(
        [venv / "bin" / "python", "-c", "import detector; print(detector.__file__)"],
        capture_output=True,
        text=True,
        cwd=run_dir,
        env=env,
        check=True,
    )
    assert Path(probe.stdout.strip()).is_relative_to(venv), "the installed copy, not the checkout"
    events, labels = run_dir / "events.jsonl", run_dir / "labels.csv"
    simulated = bulkwatch(
        "simulate", "--out", str(events), "--labels", str(labels), "--accounts", "200",
        "--minutes", "1",
    )  # fmt: skip
    assert simulated.returncode == 0, simulated.stderr
    assert events.stat().st_size > 0 and labels.stat().st_size > 0
    policy = subprocess.run(
        [venv / "bin" / "python", "-c", "from detector.policy import load_policy; load_policy()"],
        capture_output=True,
        text=True,
        cwd=run_dir,
        env=env,
        check=False,
    )
    assert policy.returncode == 0, policy.stderr  # the packaged default policy


def test_dockerfile_entrypoint_is_the_bulkwatch_console_script(dockerfile) -> None:
    _, stages = dockerfile
    (entrypoint,) = stages[-1].args_of("ENTRYPOINT")
    assert exec_form(entrypoint) == ["bulkwatch"]
    (cmd,) = stages[-1].args_of("CMD")
    assert exec_form(cmd) == ["run"]
    target = load_toml(REPO / "pyproject.toml")["project"]["scripts"]["bulkwatch"]
    module, _, function = target.partition(":")
    source = REPO / (module.replace(".", "/") + ".py")
    tree = ast.parse(source.read_text(encoding="utf-8"))
    assert any(isinstance(n, ast.FunctionDef) and n.name == function for n in tree.body), target


def test_dockerfile_compiles_the_numba_cache_at_build_time(dockerfile) -> None:
    _, stages = dockerfile
    build, runtime = stages[0], stages[-1]
    assert any("bulkwatch warm-up" in run for run in build.args_of("RUN"))
    cache_dir = build.env()["NUMBA_CACHE_DIR"]
    assert runtime.env()["NUMBA_CACHE_DIR"] == cache_dir
    assert any(f"--from={build.name}" in a and cache_dir in a for a in runtime.args_of("COPY"))
    # The cache is keyed by CPU: the same NUMBA_CPU_NAME at build and at run time.
    assert build.env()["NUMBA_CPU_NAME"] == runtime.env()["NUMBA_CPU_NAME"]
    # The pod mounts a writable copy of it at the same path (Numba only reads a writable cache).
    mounts = {m["mountPath"] for m in k8s_container()["volumeMounts"]}
    assert cache_dir in mounts


def test_dockerfile_environment_names_real_settings(dockerfile) -> None:
    _, stages = dockerfile
    env = stages[-1].env()
    names = env_setting_names(env)
    assert names <= SETTING_NAMES, f"unknown settings: {sorted(names - SETTING_NAMES)}"
    settings = load_settings(env={k: v for k, v in env.items() if k.startswith("BULKWATCH_")})
    assert settings.metrics_host == "0.0.0.0"
    assert settings.snapshot_dir in {m["mountPath"] for m in k8s_container()["volumeMounts"]}
    assert "9108" in stages[-1].args_of("EXPOSE")


def test_cli_accepts_every_option_the_artefacts_pass() -> None:
    """`bulkwatch <command> --help` of the real CLI lists the options compose and k8s use."""
    compose = load_yaml(DEPLOY / "compose.yaml")
    used = {
        "run": [a for a in k8s_container()["args"][1:] if a.startswith("--")],
        "produce": [
            a for a in compose["services"]["generator"]["command"][1:] if a.startswith("--")
        ],
        "warm-up": [],
    }
    for command, options in used.items():
        result = subprocess.run(
            [*bulkwatch_command(), command, "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
            env=service_environment(),
            check=False,
        )
        assert result.returncode == 0, f"bulkwatch {command} --help:\n{result.stderr}"
        for option in options:
            assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", result.stdout), (
                f"`bulkwatch {command}` has no option {option}"
            )


# =========================================================================================
# compose.yaml
# =========================================================================================


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(DEPLOY / "compose.yaml")


def bulkwatch_replicas(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in compose["services"].items()
        if service.get("image", "").startswith("bulkwatch:")
        and service.get("command", ["run"])[0] == "run"
    }


def kafka_topics_created(script: str) -> dict[str, str]:
    """topic -> partitions (a number or a variable name) of each topic a shell script creates."""
    created = {}
    for line in script.replace("\\\n", " ").splitlines():
        topic = re.search(r"--topic\s+(\S+)", line)
        partitions = re.search(r"--partitions\s+(\S+)", line)
        if topic and partitions:
            created[topic.group(1)] = partitions.group(1).strip("\"'${}")
    return created


def compose_topics(compose: dict[str, Any]) -> dict[str, int]:
    script = compose["services"]["kafka-init"]["command"][0]
    return {topic: int(n) for topic, n in kafka_topics_created(script).items()}


def test_compose_images_are_pinned(compose) -> None:
    for name, service in compose["services"].items():
        assert "image" in service, f"{name}: no image"
        assert is_pinned(service["image"]), f"{name}: image {service['image']!r} is not pinned"
    versions = {
        s["image"] for s in compose["services"].values() if s["image"].startswith("bulkwatch:")
    }
    assert versions == {f"bulkwatch:{project_version()}"}


def test_compose_kafka_runs_the_official_image_in_kraft_mode(compose) -> None:
    kafka = compose["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    node_id = env["KAFKA_NODE_ID"]
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{node_id}@kafka:9093"
    assert "CONTROLLER" in env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert not any(key.startswith("KAFKA_ZOOKEEPER") for key in env)
    cluster_id = env["CLUSTER_ID"]
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16, "CLUSTER_ID is a base64 UUID"
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == 1, "one broker: replication factor 1"
    assert kafka["healthcheck"]["test"], "dependants wait for a healthy broker"
    data_volume = next(v for v in kafka["volumes"] if v.split(":")[0] in compose["volumes"])
    assert data_volume.split(":")[1] == env["KAFKA_LOG_DIRS"], "the log dir is on the volume"


def test_compose_topic_initialiser_creates_the_three_topics(compose) -> None:
    init = compose["services"]["kafka-init"]
    assert init["image"] == compose["services"]["kafka"]["image"]
    assert init["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert init["restart"] == "no"
    topics = compose_topics(compose)
    replica_env = next(iter(bulkwatch_replicas(compose).values()))["environment"]
    assert set(topics) == {
        replica_env["BULKWATCH_TOPICS"],
        replica_env["BULKWATCH_SIGNALS_TOPIC"],
        replica_env["BULKWATCH_DLQ_TOPIC"],
    }
    events = topics[replica_env["BULKWATCH_TOPICS"]]
    assert events >= 2 * len(bulkwatch_replicas(compose)), "partitions to share among the replicas"
    assert events == k8s_events_partitions(), "compose and Kubernetes create the same events topic"


def test_compose_runs_two_bulkwatch_replicas_in_one_consumer_group(compose) -> None:
    replicas = bulkwatch_replicas(compose)
    assert len(replicas) == 2
    envs = [service["environment"] for service in replicas.values()]
    assert len({env["BULKWATCH_GROUP"] for env in envs}) == 1
    assert len({env["BULKWATCH_CLIENT_ID"] for env in envs}) == 2
    volumes = set()
    for name, service in replicas.items():
        env = service["environment"]
        assert env_setting_names(env) <= SETTING_NAMES, f"{name}: unknown BULKWATCH_ settings"
        settings = load_settings(env={k: str(v) for k, v in env.items()})
        assert settings.source == "kafka"
        assert settings.bootstrap == "kafka:9092"
        assert service["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"
        assert service["build"]["context"] == ".."
        assert (DEPLOY / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
        (published,) = service["ports"]
        assert published.endswith(f":{settings.metrics_port}")
        for volume in service["volumes"]:
            source, target = volume.split(":")[:2]
            if target == settings.snapshot_dir:
                volumes.add(source)
    assert len(volumes) == 1, "both replicas mount one shared snapshot volume"
    assert volumes <= set(compose["volumes"]), "a named volume"


def test_compose_generator_produces_simulated_traffic_into_the_events_topic(compose) -> None:
    generator = compose["services"]["generator"]
    command = generator["command"]
    assert command[0] == "produce" and "--loop" in command
    options = dict(zip(command[1::2], command[2::2], strict=False))
    replica_env = next(iter(bulkwatch_replicas(compose).values()))["environment"]
    assert options["--bootstrap"] == replica_env["BULKWATCH_BOOTSTRAP"]
    assert options["--topic"] == replica_env["BULKWATCH_TOPICS"]
    assert float(options["--rate"]) > 0
    assert generator["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"


def test_compose_prometheus_scrapes_every_replica(compose) -> None:
    prometheus = compose["services"]["prometheus"]
    assert prometheus["image"].startswith("prom/prometheus:")
    mounts = {}  # container path -> host path
    for volume in prometheus["volumes"]:
        source, target = volume.split(":")[:2]
        mounts[target] = source
    assert mounts["/etc/prometheus/prometheus.yml"] == "./prometheus/prometheus.yml"
    assert mounts["/etc/prometheus/alerts.yml"] == "./prometheus/alerts.yml"
    config = load_yaml(PROMETHEUS_DIR / "prometheus.yml")
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "bulkwatch"]
    targets = {t for static in job["static_configs"] for t in static["targets"]}
    expected = set()
    for name, service in bulkwatch_replicas(compose).items():
        port = load_settings(
            env={k: str(v) for k, v in service["environment"].items()}
        ).metrics_port
        expected.add(f"{name}:{port}")
    assert targets == expected
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]


def test_compose_grafana_is_provisioned_with_datasource_and_dashboard(compose) -> None:
    grafana = compose["services"]["grafana"]
    assert grafana["image"].startswith("grafana/grafana")
    mounts = {}
    for volume in grafana["volumes"]:
        source, target = volume.split(":")[:2]
        mounts[target] = source
    provisioning = DEPLOY / mounts["/etc/grafana/provisioning"]
    datasources = [
        ds
        for f in sorted((provisioning / "datasources").glob("*.y*ml"))
        for ds in load_yaml(f)["datasources"]
    ]
    (prometheus,) = [ds for ds in datasources if ds["type"] == "prometheus"]
    assert prometheus["url"] == "http://prometheus:9090"
    assert prometheus["isDefault"] is True
    providers = [
        p
        for f in sorted((provisioning / "dashboards").glob("*.y*ml"))
        for p in load_yaml(f)["providers"]
    ]
    dashboard_mount = next(t for t, s in mounts.items() if s == "./grafana/bulkwatch.json")
    assert any(Path(dashboard_mount).parent == Path(p["options"]["path"]) for p in providers)


def test_compose_bind_mounts_exist(compose) -> None:
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: bind mount source {source} is missing"


# =========================================================================================
# Kubernetes
# =========================================================================================


def k8s_objects() -> dict[tuple[str, str], dict[str, Any]]:
    objects = {}
    for path in sorted(K8S_DIR.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in load_yaml_documents(path):
            objects[(doc["kind"], doc["metadata"]["name"])] = doc
    return objects


def k8s_object(kind: str) -> dict[str, Any]:
    (found,) = [doc for (k, _), doc in k8s_objects().items() if k == kind]
    return found


def k8s_pod_spec() -> dict[str, Any]:
    return k8s_object("Deployment")["spec"]["template"]["spec"]


def k8s_container() -> dict[str, Any]:
    (container,) = [c for c in k8s_pod_spec()["containers"] if c["name"] == "bulkwatch"]
    return container


def k8s_settings():
    return load_settings(K8S_DIR / "bulkwatch.toml", env={})


def k8s_events_partitions() -> int:
    job = k8s_object("Job")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    created = kafka_topics_created(container["args"][0])
    value = created["events"]
    return int(env.get(value, value))


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def test_kustomization_lists_every_manifest_and_config_file() -> None:
    kustomization = load_yaml(K8S_DIR / "kustomization.yaml")
    manifests = {p.name for p in K8S_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == manifests
    (generator,) = kustomization["configMapGenerator"]
    files = generator["files"]
    assert all((K8S_DIR / f).is_file() for f in files)
    volumes = {v["name"]: v for v in k8s_pod_spec()["volumes"]}
    config_volume = next(v for v in volumes.values() if "configMap" in v)
    assert config_volume["configMap"]["name"] == generator["name"]
    (image,) = kustomization["images"]
    assert image["newTag"] == project_version()


def test_k8s_config_file_is_valid_settings_consistent_with_the_rest() -> None:
    settings = k8s_settings()
    assert settings.source == "kafka"
    scaler = k8s_object("ScaledObject")["spec"]["triggers"][0]["metadata"]
    assert scaler["bootstrapServers"] == settings.bootstrap
    assert scaler["consumerGroup"] == settings.group
    assert (scaler["topic"],) == settings.topics
    job_env = {
        e["name"]: e["value"]
        for e in k8s_object("Job")["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert job_env["BOOTSTRAP"] == settings.bootstrap
    created = set(
        kafka_topics_created(
            k8s_object("Job")["spec"]["template"]["spec"]["containers"][0]["args"][0]
        )
    )
    assert created == {*settings.topics, settings.signals_topic, settings.dlq_topic}
    assert settings.shutdown_timeout_s < k8s_pod_spec()["terminationGracePeriodSeconds"]


def test_k8s_config_file_rejects_unknown_settings(tmp_path: Path) -> None:
    # The check above is only meaningful if a misspelt key fails: it does.
    bad = tmp_path / "bad.toml"
    bad.write_text((K8S_DIR / "bulkwatch.toml").read_text() + '\nbootstrap_servers = "x:1"\n')
    with pytest.raises(SettingsError):
        load_settings(bad, env={})


def test_k8s_policy_is_the_default_policy_in_shadow_mode() -> None:
    from detector.policy import default_policy_path, load_policy

    shipped = load_toml(K8S_DIR / "policy.toml")
    default = load_toml(Path(default_policy_path()))

    def shape(doc: Any) -> Any:
        if isinstance(doc, dict):
            return {key: shape(value) for key, value in doc.items()}
        return type(doc).__name__

    assert shape(shipped) == shape(default), "same tables and keys as detector/default_policy.toml"
    rules = shipped["rules"]
    assert rules and all(rule["mode"] == "shadow" for rule in rules.values())
    assert shipped["version"] != default["version"], "dashboards tell the shipped policy apart"
    policy = load_policy(K8S_DIR / "policy.toml")
    assert all(policy.mode(code) == "shadow" for code in rules)


def test_k8s_deployment_container() -> None:
    deployment = k8s_object("Deployment")
    assert "replicas" not in deployment["spec"], "KEDA owns the replica count"
    container = k8s_container()
    assert container["image"] == f"bulkwatch:{project_version()}"
    args = container["args"]
    assert args[0] == "run"
    options = dict(zip(args[1::2], args[2::2], strict=False))
    (config_mount,) = [m for m in container["volumeMounts"] if m["name"] == "config"]
    assert config_mount["readOnly"] is True
    generator_files = load_yaml(K8S_DIR / "kustomization.yaml")["configMapGenerator"][0]["files"]
    for option in ("--config", "--policy"):
        path = Path(options[option])
        assert path.parent == Path(config_mount["mountPath"]) and path.name in generator_files
    (port,) = container["ports"]
    assert port["name"] == "metrics" and port["containerPort"] == k8s_settings().metrics_port


def test_k8s_probes_use_healthz_and_readyz() -> None:
    container = k8s_container()
    for probe in ("startupProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}, probe
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60, "room for a cold JIT start"


_QUANTITY_UNITS = {
    "": 1.0,
    "m": 1e-3,
    "Ki": 2.0**10,
    "Mi": 2.0**20,
    "Gi": 2.0**30,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
}


def _quantity(value: str | int) -> float:
    """A Kubernetes resource quantity ("500m", "2Gi", 1) as a number."""
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value))
    assert match and match.group(2) in _QUANTITY_UNITS, f"not a quantity: {value!r}"
    return float(match.group(1)) * _QUANTITY_UNITS[match.group(2)]


def all_pod_specs() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{kind}/{name}", doc["spec"]["template"]["spec"])
        for (kind, name), doc in k8s_objects().items()
        if kind in {"Deployment", "StatefulSet", "Job", "DaemonSet"}
    ]


def test_k8s_every_container_has_resource_requests_and_limits() -> None:
    for owner, spec in all_pod_specs():
        for container in spec.get("initContainers", []) + spec["containers"]:
            resources = container["resources"]
            for resource in ("cpu", "memory"):
                request = _quantity(resources["requests"][resource])
                limit = _quantity(resources["limits"][resource])
                assert 0 < request <= limit, f"{owner} {container['name']} {resource}"
    detector = k8s_container()["resources"]
    assert _quantity(detector["requests"]["cpu"]) >= 1, "the kernels need a full core"
    assert detector["requests"]["memory"] == detector["limits"]["memory"], (
        "never evicted for memory"
    )


def test_k8s_pods_meet_the_restricted_pod_security_standard() -> None:
    namespace = k8s_object("Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for owner, spec in all_pod_specs():
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, owner
        assert pod["runAsUser"] != 0, owner
        assert pod["seccompProfile"]["type"] == "RuntimeDefault", owner
        assert spec.get("automountServiceAccountToken") is False, owner
        for container in spec.get("initContainers", []) + spec["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, owner
            assert context["readOnlyRootFilesystem"] is True, owner
            assert context["capabilities"]["drop"] == ["ALL"], owner
            assert is_pinned(container["image"]), f"{owner}: {container['image']}"


def test_k8s_snapshots_go_to_one_volume_shared_by_all_pods() -> None:
    spec = k8s_pod_spec()
    (snapshots,) = [v for v in spec["volumes"] if "persistentVolumeClaim" in v]
    claim = k8s_objects()[
        ("PersistentVolumeClaim", snapshots["persistentVolumeClaim"]["claimName"])
    ]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    (mount,) = [m for m in k8s_container()["volumeMounts"] if m["name"] == snapshots["name"]]
    _, stages = parse_dockerfile(DEPLOY / "Dockerfile")
    assert mount["mountPath"] == stages[-1].env()["BULKWATCH_SNAPSHOT_DIR"]


def test_k8s_service_pdb_and_servicemonitor_select_the_pods() -> None:
    pod_labels = k8s_object("Deployment")["spec"]["template"]["metadata"]["labels"]
    service = k8s_object("Service")
    assert matches(service["spec"]["selector"], pod_labels)
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == "metrics"
    assert service["spec"]["publishNotReadyAddresses"] is True

    pdb = k8s_object("PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    assert matches(pdb["spec"]["selector"]["matchLabels"], pod_labels)
    assert pdb["spec"]["maxUnavailable"] == 1

    monitor = k8s_object("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert matches(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == port["name"] and endpoint["path"] == "/metrics"
    # The job label the alert rules and dashboard select is the value of the Service's jobLabel.
    job = service["metadata"]["labels"][monitor["spec"]["jobLabel"]]
    compose_job = load_yaml(PROMETHEUS_DIR / "prometheus.yml")["scrape_configs"][0]["job_name"]
    assert job == compose_job == "bulkwatch"


def test_k8s_autoscaling_on_consumer_lag_is_capped_at_the_partition_count() -> None:
    scaled = k8s_object("ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    target = scaled["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == (
        "Deployment",
        k8s_object("Deployment")["metadata"]["name"],
    )
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["allowIdleConsumers"] == "false"
    assert int(trigger["metadata"]["lagThreshold"]) > 0
    assert scaled["spec"]["maxReplicaCount"] == k8s_events_partitions()
    assert 2 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]


def test_k8s_prometheus_rule_carries_exactly_the_alert_rules() -> None:
    rule = k8s_object("PrometheusRule")
    assert rule["spec"]["groups"] == load_yaml(ALERTS)["groups"], (
        "deploy/k8s/prometheusrule.yaml must hold the groups of deploy/prometheus/alerts.yml"
    )


# =========================================================================================
# Grafana dashboard
# =========================================================================================


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def test_dashboard_layout_is_valid(dashboard) -> None:
    assert dashboard["uid"] == "bulkwatch"
    panels = list(iter_panels(dashboard["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        covered = {
            (grid["x"] + dx, grid["y"] + dy) for dx in range(grid["w"]) for dy in range(grid["h"])
        }
        assert not covered & cells, f"panel {panel['title']!r} overlaps another"
        cells |= covered
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert panel["targets"], panel["title"]
            assert all(t["datasource"] == panel["datasource"] for t in panel["targets"])
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["job"]["current"]["value"] == "bulkwatch"


def _panels_querying(dashboard: dict[str, Any], pattern: str) -> list[str]:
    return [title for title, expr in dashboard_expressions(dashboard) if re.search(pattern, expr)]


@pytest.mark.parametrize(
    ("what", "pattern"),
    [
        ("events/s by type", r"sum by \(type\) \(rate\(bulkwatch_events_total"),
        ("consumer lag", r"bulkwatch_consumer_lag"),
        (
            "consumer lag by topic and partition",
            r"by \(topic, partition\) \(bulkwatch_consumer_lag",
        ),
        (
            "batch latency percentiles",
            r"histogram_quantile\(0\.99, .*bulkwatch_batch_seconds_bucket",
        ),
        (
            "event delay percentiles",
            r"histogram_quantile\(0\.99, .*bulkwatch_event_delay_seconds_bucket",
        ),
        ("enforced signals by action and reason", r'by \(action, reason\).*shadow="false"'),
        ("shadow signals by action and reason", r'by \(action, reason\).*shadow="true"'),
        ("dead letters by reason", r"by \(reason\) \(rate\(bulkwatch_dead_letters_total"),
        ("tracked accounts", r"bulkwatch_tracked_accounts"),
        ("clusters", r"bulkwatch_clusters"),
        ("evictions", r"bulkwatch_state_evictions_total"),
        ("CPU per instance", r"rate\(process_cpu_seconds_total"),
        ("memory per instance", r"process_resident_memory_bytes"),
    ],
)
def test_dashboard_shows(dashboard, what: str, pattern: str) -> None:
    assert _panels_querying(dashboard, pattern), f"no panel shows {what}"


def test_dashboard_keeps_shadow_and_enforced_signals_apart(dashboard) -> None:
    for title, expr in dashboard_expressions(dashboard):
        if "bulkwatch_signals_total" in expr:
            assert re.search(r'shadow="(true|false)"', expr), f"{title!r} mixes shadow and enforced"


def test_every_query_filters_on_the_selected_job_and_instance(dashboard) -> None:
    for title, expr in dashboard_expressions(dashboard):
        for metric, body in re.findall(r"((?:bulkwatch|process)_\w+)\{([^}]*)\}", expr):
            assert 'job="$job"' in body and 'instance=~"$instance"' in body, f"{title}: {metric}"
        with_selector = set(re.findall(r"((?:bulkwatch|process)_\w+)\{", expr))
        assert metric_names(expr) == with_selector, f"{title}: a metric without a label selector"


# =========================================================================================
# Metric names: dashboard and alerts against a running bulkwatch
# =========================================================================================


def test_metric_name_extraction() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le) (rate(bulkwatch_batch_seconds_bucket{job="$job"}'
        "[$__rate_interval]))) / on(job) group_left label_replace(process_cpu_seconds_total, "
        '"x", "bulkwatch_not_a_metric", "", "") > bulkwatch_ready'
    )
    assert metric_names(expr) == {
        "bulkwatch_batch_seconds_bucket",
        "process_cpu_seconds_total",
        "bulkwatch_ready",
    }
    assert selector_matchers('bulkwatch_signals_total{action="ban", shadow!="true"}') == [
        ("bulkwatch_signals_total", "action", "=", "ban"),
        ("bulkwatch_signals_total", "shadow", "!=", "true"),
    ]


def test_exposition_parser_declares_histogram_and_counter_series() -> None:
    text = "\n".join(
        [
            "# HELP bulkwatch_batch_seconds Wall time",
            "# TYPE bulkwatch_batch_seconds histogram",
            'bulkwatch_batch_seconds_bucket{le="+Inf"} 3.0',
            "# HELP bulkwatch_dead_letters_total Records",
            "# TYPE bulkwatch_dead_letters_total counter",
            "# TYPE bulkwatch_ready gauge",
            "bulkwatch_ready 1.0",
        ]
    )
    exposition = parse_exposition(text + "\n")
    assert {
        "bulkwatch_batch_seconds_bucket",
        "bulkwatch_batch_seconds_count",
        "bulkwatch_batch_seconds_sum",
        "bulkwatch_dead_letters_total",
        "bulkwatch_ready",
    } <= exposition.series_names
    assert exposition.labels_by_series["bulkwatch_batch_seconds_bucket"] == {"le": {"+Inf"}}


def test_dashboard_and_alerts_query_the_service_metrics() -> None:
    used = queried_metric_names()
    # the extraction finds what the panels are built on (guards against a regex that finds nothing)
    assert {
        "bulkwatch_events_total",
        "bulkwatch_consumer_lag",
        "bulkwatch_signals_total",
        "bulkwatch_event_delay_seconds_bucket",
        "process_resident_memory_bytes",
    } <= set(used)
    assert len(alert_expressions()) >= 8


def test_every_queried_metric_is_exported_by_a_running_bulkwatch(bulkwatch_exposition) -> None:
    used = queried_metric_names()
    missing = {
        name: sorted(where)
        for name, where in used.items()
        if name not in bulkwatch_exposition.series_names
    }
    assert not missing, f"queried but not exported by bulkwatch: {missing}"


def test_queried_labels_exist_on_the_exported_series(bulkwatch_exposition) -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    expressions = [e for _, e in dashboard_expressions(dashboard)] + [
        e for _, e in alert_expressions()
    ]
    checked = 0
    for expr in expressions:
        for metric, label, operator, value in selector_matchers(expr):
            if label in TARGET_LABELS or metric not in bulkwatch_exposition.labels_by_series:
                continue
            exported = bulkwatch_exposition.labels_by_series[metric]
            assert label in exported, f"{metric} has no label {label!r} (it has {sorted(exported)})"
            if operator == "=":
                assert value in exported[label], (
                    f'{metric}{{{label}="{value}"}}: values are {exported[label]}'
                )
            checked += 1
    assert checked >= 5


def test_alert_thresholds_on_histograms_are_inside_the_bucket_range(bulkwatch_exposition) -> None:
    """histogram_quantile stays within the finite buckets: a threshold above them never fires."""
    for name, expr in alert_expressions():
        quantile = re.search(r"histogram_quantile\(.*?(\w+)_bucket.*\)\s*>\s*([0-9.]+)", expr, re.S)
        if quantile is None:
            continue
        metric, threshold = quantile.group(1) + "_bucket", float(quantile.group(2))
        bounds = [
            float(b) for b in bulkwatch_exposition.labels_by_series[metric]["le"] if b != "+Inf"
        ]
        assert threshold < max(bounds), (
            f"{name}: threshold {threshold} >= largest bucket {max(bounds)}"
        )


def test_service_stops_cleanly_within_the_pod_grace_period(tmp_path: Path) -> None:
    """SIGTERM (from Kubernetes or `docker stop`) ends the service with status 0 in time."""
    service = start_bulkwatch(tmp_path)
    grace_s = k8s_pod_spec()["terminationGracePeriodSeconds"]
    started = time.monotonic()
    returncode = service.stop(timeout_s=grace_s)
    elapsed = time.monotonic() - started
    assert returncode == 0, service.log_tail()
    assert elapsed < grace_s
    with pytest.raises(OSError):  # the port is closed
        http_get(f"{service.base_url}/healthz", timeout_s=2)


def test_health_endpoints_answer_as_the_probes_expect(running_bulkwatch) -> None:
    assert http_get(f"{running_bulkwatch.base_url}/healthz")[0] == 200
    # the service is consuming (it has processed batches), so it reports ready
    assert http_get(f"{running_bulkwatch.base_url}/readyz")[0] == 200
    assert http_get(f"{running_bulkwatch.base_url}/no-such-page")[0] == 404


_GROUPING = re.compile(r"\bby\s*\(([^)]*)\)")
_LEGEND_LABEL = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_TEST_SERIES = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)\{(.*)\}$")


def exported_label_names(exposition) -> dict[str, set[str]]:
    """Label names of every sampled series of the running service, plus those of the Kafka-only
    series: the service above runs the simulator, which owns no Kafka partition, so the consumer
    lag has no series there; its labels are those of what the Kafka source's call exports."""
    names = {metric: set(labels) for metric, labels in exposition.labels_by_series.items()}
    kafka = Metrics()
    kafka.set_lag({("events", 0): 3})
    for metric, labels in parse_exposition(kafka.exposition().decode()).labels_by_series.items():
        names.setdefault(metric, set()).update(labels)
    return names


def test_the_kafka_only_series_are_labelled_by_topic_and_partition(bulkwatch_exposition) -> None:
    assert exported_label_names(bulkwatch_exposition)["bulkwatch_consumer_lag"] == {
        "topic",
        "partition",
    }


def test_grouping_and_legend_labels_exist_on_the_queried_series(
    dashboard, bulkwatch_exposition
) -> None:
    """`sum by (...)` and `{{label}}` legends name labels that a queried metric exports (else
    Grafana shows one merged line, or an empty legend)."""
    exported = exported_label_names(bulkwatch_exposition)
    queries = [
        (panel["title"], target["expr"], target.get("legendFormat", ""))
        for panel in iter_panels(dashboard["panels"])
        for target in panel.get("targets", [])
        if target.get("expr")
    ] + [(name, expr, "") for name, expr in alert_expressions()]
    checked: set[tuple[str, str]] = set()
    for where, expr, legend in queries:
        wanted = {label.strip() for group in _GROUPING.findall(expr) for label in group.split(",")}
        wanted |= set(_LEGEND_LABEL.findall(legend))
        offered = set().union(*(exported.get(m, set()) for m in metric_names(expr)))
        for label in wanted - TARGET_LABELS - {""}:
            assert label in offered, f"{where}: no queried metric has label {label!r} ({expr})"
            checked |= {(m, label) for m in metric_names(expr) if label in exported.get(m, ())}
    assert {("bulkwatch_consumer_lag", "topic"), ("bulkwatch_consumer_lag", "partition")} <= checked


def test_alert_unit_test_series_carry_the_labels_the_service_exports(bulkwatch_exposition) -> None:
    """The promtool tests feed series shaped like real ones: the exported labels plus the target's."""
    exported = exported_label_names(bulkwatch_exposition)
    compared = 0
    for test in load_yaml(PROMETHEUS_DIR / "alerts_test.yml")["tests"]:
        for series in test["input_series"]:
            match = _TEST_SERIES.match(series["series"])
            assert match, series["series"]
            metric, body = match.groups()
            if metric not in exported:  # `up` and the like: Prometheus's own series
                continue
            labels = {label for label, _, _ in re.findall(r'(\w+)\s*(=)\s*"([^"]*)"', body)}
            assert labels - TARGET_LABELS == exported[metric], f"{test['name']}: {series['series']}"
            compared += 1
    assert compared >= 20
