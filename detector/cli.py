"""The ``bulkwatch`` command line: run, replay, simulate, produce, warm-up."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from detector import __version__

log = logging.getLogger("bulkwatch")

# (flag, settings field, type, help)
_KAFKA_CONNECTION_OPTIONS = (
    ("--bootstrap", "bootstrap", str, "Kafka bootstrap servers, host:port[,host:port]"),
    ("--security-protocol", "security_protocol", str, "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"),
    ("--ssl-cafile", "ssl_cafile", str, "CA bundle (PEM) to verify the brokers"),
    ("--ssl-certfile", "ssl_certfile", str, "client certificate (PEM) for mutual TLS"),
    ("--ssl-keyfile", "ssl_keyfile", str, "client key (PEM) for mutual TLS"),
    ("--sasl-mechanism", "sasl_mechanism", str, "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"),
    ("--sasl-username", "sasl_username", str, "SASL user (password: BULKWATCH_SASL_PASSWORD)"),
)

_RUN_OPTIONS = (
    ("--source", "source", str, "simulator (embedded default) or kafka"),
    *_KAFKA_CONNECTION_OPTIONS,
    ("--topic", "topics", str, "input topic(s), comma-separated (default: events)"),
    ("--group", "group", str, "Kafka consumer group (default: bulkwatch)"),
    ("--signals-topic", "signals_topic", str, "topic for ban signals (default: ban-signals)"),
    ("--dlq-topic", "dlq_topic", str, "topic for dead letters (default: events-dlq)"),
    ("--batch-size", "batch_size", int, "max records per batch (default: 5000)"),
    ("--batch-max-wait-ms", "batch_max_wait_ms", int, "max wait to fill a batch (default: 200)"),
    (
        "--metrics-host",
        "metrics_host",
        str,
        "address the metrics endpoint binds (default: 127.0.0.1)",
    ),
    ("--metrics-port", "metrics_port", int, "port of /metrics, /healthz, /readyz (default: 9108)"),
    ("--snapshot-dir", "snapshot_dir", str, "directory for partition state snapshots"),
    ("--account-capacity", "account_capacity", int, "accounts tracked per partition"),
    ("--cluster-capacity", "cluster_capacity", int, "content clusters tracked per instance"),
    ("--rate", "rate", float, "simulator source: events per second (default: as fast as possible)"),
    ("--accounts", "sim_accounts", int, "simulator source: accounts per round"),
    ("--duration", "duration_s", float, "stop after this many seconds"),
    ("--log-level", "log_level", str, "DEBUG, INFO, WARNING or ERROR"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bulkwatch",
        description="Streaming detector of bulk and automated messaging abuse.",
    )
    parser.add_argument("--version", action="version", version=f"bulkwatch {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="run the detector service (embedded simulator by default, or Kafka)",
        description=(
            "Run the detector. With no options it runs the embedded default: simulated traffic "
            "through the detector, live progress and signals on the console, Prometheus metrics on "
            "127.0.0.1:9108. Every option can also come from a TOML file (--config) or a "
            "BULKWATCH_<NAME> environment variable; command-line options win."
        ),
    )
    run.add_argument("--config", type=Path, help="TOML settings file")
    run.add_argument("--policy", type=Path, help="policy TOML file (default: the packaged policy)")
    for flag, dest, kind, text in _RUN_OPTIONS:
        run.add_argument(flag, dest=dest, type=kind, help=text)
    run.add_argument(
        "--exactly-once",
        dest="exactly_once",
        action="store_const",
        const=True,
        help="Kafka: produce signals and commit offsets in one transaction",
    )
    run.add_argument("--quiet", action="store_true", help="no per-signal lines on the console")

    replay = commands.add_parser(
        "replay",
        help="run the detector over a recorded JSONL file, as fast as possible",
        description=(
            "Replay recorded events (JSONL, optionally .gz) through the detector in file order and "
            "write one ban-signal JSON object per line. With --labels, print per-archetype recall, "
            "false-ban rate and time to detect; --compare runs a second policy in the same pass."
        ),
    )
    replay.add_argument("events", type=Path, help="events file (.jsonl or .jsonl.gz)")
    replay.add_argument("--out", type=Path, required=True, help="signals output file (JSONL)")
    replay.add_argument("--policy", type=Path, help="policy TOML file (default: packaged policy)")
    replay.add_argument("--labels", type=Path, help="labels CSV from `bulkwatch simulate`")
    replay.add_argument("--report", type=Path, help="write the report as Markdown here")
    replay.add_argument("--compare", type=Path, help="a second policy to compare, in the same pass")
    replay.add_argument(
        "--dead-letters", type=Path, help="dead letters output (default: beside --out)"
    )
    replay.add_argument("--batch-size", type=int, default=20_000, help="records per batch")
    replay.add_argument(
        "--account-capacity", type=int, default=2_000_000, help="account table size"
    )
    replay.add_argument("--cluster-capacity", type=int, default=500_000, help="cluster table size")

    simulate = commands.add_parser(
        "simulate",
        help="write simulated traffic with ground-truth labels",
        description="Write simulated events (JSONL, .gz allowed) and a labels CSV; deterministic per seed.",
    )
    simulate.add_argument(
        "--out", type=Path, required=True, help="events output (.jsonl or .jsonl.gz)"
    )
    simulate.add_argument("--labels", type=Path, required=True, help="labels CSV output")
    simulate.add_argument("--accounts", type=int, default=10_000, help="number of accounts")
    simulate.add_argument("--minutes", type=int, default=60, help="minutes of event time")
    simulate.add_argument("--seed", type=int, default=1, help="random seed")

    produce = commands.add_parser(
        "produce",
        help="send simulated traffic to a Kafka topic (a traffic generator)",
        description=(
            "Produce simulator events keyed by account to a Kafka topic, paced or flat out. The "
            "connection (bootstrap, TLS, SASL) is configured exactly as for `run`: options, a TOML "
            "file (--config) or BULKWATCH_<NAME> variables; the SASL password only from "
            "BULKWATCH_SASL_PASSWORD or the file."
        ),
    )
    produce.add_argument("--config", type=Path, help="TOML settings file (the one `run` uses)")
    for flag, dest, kind, text in _KAFKA_CONNECTION_OPTIONS:
        produce.add_argument(flag, dest=dest, type=kind, help=text)
    produce.add_argument(
        "--topic", help="topic to produce to (default: the first input topic of the settings)"
    )
    produce.add_argument(
        "--rate", type=float, help="events per second (default: as fast as possible)"
    )
    produce.add_argument("--accounts", type=int, default=10_000, help="accounts per round")
    produce.add_argument("--minutes", type=int, default=60, help="minutes of event time per round")
    produce.add_argument("--seed", type=int, default=1, help="random seed")
    produce.add_argument("--loop", action="store_true", help="repeat with fresh accounts forever")
    produce.add_argument("--duration", type=float, help="stop after this many seconds")

    commands.add_parser(
        "warm-up",
        help="compile and cache every Numba kernel (NUMBA_CACHE_DIR decides where)",
        description="Compile every kernel once so later starts load them from the cache.",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(args, "log_level", None) or "INFO",
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    handler = {
        "run": _run,
        "replay": _replay,
        "simulate": _simulate,
        "produce": _produce,
        "warm-up": _warm_up,
    }[args.command]
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130


def _run(args: argparse.Namespace) -> int:
    from detector.app import build_app, run_service
    from detector.config import SettingsError, load_settings
    from detector.policy import PolicyError, load_policy
    from detector.sources import OPERATIONAL_ERRORS, kafka_client_options

    overrides = {dest: getattr(args, dest) for _, dest, _, _ in _RUN_OPTIONS}
    overrides["exactly_once"] = args.exactly_once
    if args.policy is not None:
        overrides["policy"] = str(args.policy)
    try:
        settings = load_settings(args.config, overrides=overrides)
        policy = load_policy(settings.policy)
        if settings.source == "kafka":
            kafka_client_options(settings)  # read the PEM files now: fail before connecting
    except (SettingsError, PolicyError) as exc:
        print(f"bulkwatch: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # ssl.SSLError too: an unreadable or invalid PEM file
        print(f"bulkwatch: TLS settings: {exc}", file=sys.stderr)
        return 2
    logging.getLogger().setLevel(settings.log_level.upper())
    app = build_app(settings, policy, quiet=args.quiet)
    try:
        stats = asyncio.run(
            run_service(app, duration_s=settings.duration_s, policy_path=settings.policy)
        )
    except OPERATIONAL_ERRORS as exc:  # anything else is a bug: its traceback is kept
        log.debug("the service failed", exc_info=True)  # the traceback, at --log-level DEBUG
        print(f"bulkwatch: failed: {_describe(exc)}", file=sys.stderr)
        return 1
    print(f"bulkwatch: stopped: {stats.line()}", file=sys.stderr)
    return 0


def _describe(exc: BaseException) -> str:
    """One line: the message, prefixed with the error's name unless it is our own DeliveryFailed."""
    from detector.sources import DeliveryFailed

    message = " ".join(str(exc).split()) or repr(exc)
    return message if isinstance(exc, DeliveryFailed) else f"{type(exc).__name__}: {message}"


def _replay(args: argparse.Namespace) -> int:
    from detector.policy import PolicyError, load_policy
    from detector.replay import ReplayOptions, replay

    try:
        policy = load_policy(args.policy)
        other = load_policy(args.compare) if args.compare is not None else None
    except PolicyError as exc:
        print(f"bulkwatch: {exc}", file=sys.stderr)
        return 2
    options = ReplayOptions(
        events=args.events,
        out=args.out,
        labels=args.labels,
        report=args.report,
        dead_letters=args.dead_letters,
        batch_size=args.batch_size,
        account_capacity=args.account_capacity,
        cluster_capacity=args.cluster_capacity,
    )
    summary = replay(policy, options, compare=other)
    print(summary)
    return 0


def _simulate(args: argparse.Namespace) -> int:
    import time

    from detector.simulator import SimulatorConfig, write_simulation

    started = time.perf_counter()
    config = SimulatorConfig(accounts=args.accounts, minutes=args.minutes, seed=args.seed)
    n_events, n_accounts = write_simulation(config, args.out, args.labels)
    elapsed = time.perf_counter() - started
    print(
        f"wrote {n_events:,} events of {n_accounts:,} accounts to {args.out} "
        f"and labels to {args.labels} in {elapsed:.1f} s",
        file=sys.stderr,
    )
    return 0


def _produce(args: argparse.Namespace) -> int:
    from detector.config import SettingsError, load_settings
    from detector.simulator import SimulatorConfig
    from detector.sinks import produce_simulation
    from detector.sources import kafka_client_options

    overrides = {dest: getattr(args, dest) for _, dest, _, _ in _KAFKA_CONNECTION_OPTIONS}
    overrides["topics"] = args.topic  # validated like the input topics of `run`
    try:
        settings = load_settings(args.config, overrides=overrides)
        if args.topic is not None and len(settings.topics) > 1:
            raise SettingsError(f"--topic: produce writes to one topic, got {args.topic!r}")
        # the same connection and security arguments as every client of `run`
        producer_options = kafka_client_options(settings)
    except SettingsError as exc:
        print(f"bulkwatch: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # ssl.SSLError too: an unreadable or invalid PEM file
        print(f"bulkwatch: TLS settings: {exc}", file=sys.stderr)
        return 2
    producer_options["client_id"] = f"{settings.client_id}-produce"
    topic = settings.topics[0]
    config = SimulatorConfig(accounts=args.accounts, minutes=args.minutes, seed=args.seed)
    sent = asyncio.run(
        produce_simulation(
            settings.bootstrap,
            topic,
            config,
            rate_per_s=args.rate,
            loop=args.loop,
            duration_s=args.duration,
            producer_options=producer_options,
        )
    )
    print(f"produced {sent:,} events to {topic}", file=sys.stderr)
    return 0


def _warm_up(args: argparse.Namespace) -> int:
    from detector.app import warm_up

    seconds = warm_up()
    print(f"kernels compiled and cached in {seconds:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
