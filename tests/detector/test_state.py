"""Partition state snapshots: exact round trips, corruption detected (never loaded), failed writes that
keep the previous snapshot, interrupted writes recovered, and no message text in any snapshot file."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detector import state as state_module
from detector.content import ContentClusters
from detector.network import NetworkActivity
from detector.pipeline import BatchResult, Pipeline
from detector.policy import load_policy
from detector.simulator import SimulatorConfig, SimulatorSource
from detector.state import PartitionState, SnapshotError, restore_or_new, snapshot_path
from kernels import accounts as account_kernels

POLICY = load_policy()
TOPIC, PARTITION = "events", 3
PARTITION_NAME = f"{TOPIC}-{PARTITION}"
CAPACITY, LATENESS_S, TTL_S = 4096, 30, 86_400
T0 = 1_767_225_600_000


def simulator_records() -> list[bytes]:
    config = SimulatorConfig(accounts=600, minutes=40, seed=11)
    return [record for batch in SimulatorSource(config, batch_size=5000) for record in batch]


RECORDS = simulator_records()


def new_state() -> PartitionState:
    return PartitionState.new(capacity=CAPACITY, lateness_s=LATENESS_S, ttl_s=TTL_S)


def new_pipeline(
    content: ContentClusters | None = None, network: NetworkActivity | None = None
) -> Pipeline:
    return Pipeline(
        POLICY,
        content or ContentClusters(capacity=2048),
        network or NetworkActivity(capacity=2048),
        clock_ms=lambda: T0,  # emitted_at is wall time otherwise
    )


def restore(root: Path) -> PartitionState:
    return restore_or_new(
        root, TOPIC, PARTITION, capacity=CAPACITY, lateness_s=LATENESS_S, ttl_s=TTL_S
    )


def assert_same_state(a: PartitionState, b: PartitionState) -> None:
    for name, x, y in zip(a.accounts._fields, a.accounts, b.accounts, strict=True):
        assert x.dtype == y.dtype and np.array_equal(x, y), name
    for name, x in a.gate.to_arrays().items():
        assert np.array_equal(x, b.gate.to_arrays()[name]), f"gate {name}"
    assert (a.next_offset, a.event_time_ms) == (b.next_offset, b.event_time_ms)


def is_fresh(state: PartitionState) -> bool:
    stats = account_kernels.account_state_stats(state.accounts)
    return (
        state.next_offset is None
        and state.restored_from is None
        and stats["events"] == 0
        and not state.accounts.keys.any()
        and len(state.gate) == 0
    )


def signal_dicts(result: BatchResult) -> list[dict]:
    """Signals as plain dicts, without the exemplar text (kept in memory only, never snapshotted)."""
    out = []
    for signal in result.signals:
        data = msgspec.to_builtins(signal)
        data["evidence"].get("content", {}).pop("exemplar", None)
        out.append(data)
    return out


def features_of(result: BatchResult) -> dict[str, np.ndarray]:
    assert result.inputs is not None
    features = result.inputs.accounts._asdict()
    features.update({f"cluster.{k}": v for k, v in result.inputs.content._asdict().items()})
    features.update({f"network.{k}": v for k, v in result.inputs.network._asdict().items()})
    return features


def chunks(records: list[bytes], size: int, split: int) -> tuple[list[list[bytes]], int]:
    """``records`` in batches of ``size`` with one extra cut at ``split``; returns (batches, the
    number of batches before the cut)."""
    head = [records[i : min(i + size, split)] for i in range(0, split, size)]
    tail = [records[i : i + size] for i in range(split, len(records), size)]
    return head + tail, len(head)


# ------------------------------------------------------------------------------------ round trip


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(split=st.integers(1, len(RECORDS) - 1), batch_size=st.sampled_from([97, 1000, 4096]))
def test_restored_state_gives_the_features_and_signals_of_one_that_never_stopped(
    tmp_path_factory, split, batch_size
):
    root = tmp_path_factory.mktemp("snapshots")
    batches, cut = chunks(RECORDS, batch_size, split)

    # A: never stops.
    steady_pipeline, steady = new_pipeline(), new_state()
    steady_results = [steady_pipeline.process(batch, steady) for batch in batches]

    # B: stops after `cut` batches; its partition state goes through a snapshot on disk (the content
    # clusters and network windows through their own save/load), then it resumes in a new pipeline.
    first_pipeline, first = new_pipeline(), new_state()
    for batch in batches[:cut]:
        first_pipeline.process(batch, first)
    first.next_offset = split
    first.save(snapshot_path(root, TOPIC, PARTITION))
    first_pipeline.content.save(root / "content.npz", event_time_ms=first.event_time_ms)
    account_kernels.save_account_state(
        first_pipeline.network.state, root / "network.npz", event_time_ms=first.event_time_ms
    )
    del first, first_pipeline

    resumed = restore(root)
    assert resumed.restored_from == str(snapshot_path(root, TOPIC, PARTITION))
    assert resumed.next_offset == split
    network = NetworkActivity(capacity=2048)
    network.state, _ = account_kernels.load_account_state(root / "network.npz")
    resumed_pipeline = new_pipeline(ContentClusters.load(root / "content.npz"), network)

    for batch, expected in zip(batches[cut:], steady_results[cut:], strict=True):
        result = resumed_pipeline.process(batch, resumed)
        got, want = features_of(result), features_of(expected)
        for name in want:
            assert np.array_equal(got[name], want[name], equal_nan=True), name
        assert signal_dicts(result) == signal_dicts(expected)
        assert [d.record for d in result.dead_letters] == [d.record for d in expected.dead_letters]
    resumed.next_offset = steady.next_offset = None
    assert_same_state(resumed, steady)
    assert sum(len(r.signals) for r in steady_results) > 0  # the stream does trigger the policy


def test_a_sound_snapshot_restores_quietly(tmp_path, caplog):
    pipeline, state = new_pipeline(), new_state()
    pipeline.process(RECORDS[:3000], state)
    state.next_offset = 3000
    state.save(snapshot_path(tmp_path, TOPIC, PARTITION))
    caplog.set_level(logging.INFO, logger="detector.state")
    restored = restore(tmp_path)
    assert_same_state(restored, state)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(
        "restored" in r.getMessage() and PARTITION_NAME in r.getMessage() for r in caplog.records
    )


def test_no_snapshot_directory_gives_a_fresh_state(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="detector.state")
    assert is_fresh(restore(tmp_path / "nothing-here"))
    assert is_fresh(restore_or_new(None, TOPIC, 0, capacity=64, lateness_s=30, ttl_s=60))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# --------------------------------------------------------------------------- corrupt snapshots


def flip_byte(path: Path, at: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0x40
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flip_byte_and_fix_meta_checksum(folder: Path) -> None:
    """A consistent-looking pair: the account table's own checksum must still catch it."""
    flip_byte(folder / "accounts.npz", 0.6)
    meta = json.loads((folder / "meta.json").read_text())
    meta["checksum"] = state_module._checksum(folder)
    (folder / "meta.json").write_text(json.dumps(meta))


CORRUPTIONS: dict[str, Callable[[Path], None]] = {
    "flipped byte in accounts.npz": lambda f: flip_byte(f / "accounts.npz"),
    "flipped byte in the accounts.npz header": lambda f: flip_byte(f / "accounts.npz", 0.0001),
    "flipped byte in gate.npz": lambda f: flip_byte(f / "gate.npz", 0.7),
    "truncated gate.npz": lambda f: truncate(f / "gate.npz"),
    "truncated accounts.npz": lambda f: truncate(f / "accounts.npz"),
    "empty accounts.npz": lambda f: (f / "accounts.npz").write_bytes(b""),
    "deleted gate.npz": lambda f: (f / "gate.npz").unlink(),
    "deleted meta.json": lambda f: (f / "meta.json").unlink(),
    "garbled meta.json": lambda f: (f / "meta.json").write_bytes(b'\x00{"format": 1, chec\xff'),
    "meta.json is a list": lambda f: (f / "meta.json").write_text("[1, 2]"),
    "meta.json is null": lambda f: (f / "meta.json").write_text("null"),
    "meta.json without checksum": lambda f: (f / "meta.json").write_text('{"format": 1}'),
    "meta.json of another format": lambda f: (f / "meta.json").write_text(
        (f / "meta.json").read_text().replace('"format": 1', '"format": 2')
    ),
    "accounts.npz replaced, meta checksum fixed": flip_byte_and_fix_meta_checksum,
    "snapshot folder is a file": lambda f: (shutil.rmtree(f), f.write_bytes(b"x")),
}


@pytest.fixture(scope="module")
def saved_state(tmp_path_factory) -> tuple[PartitionState, Path]:
    pipeline, state = new_pipeline(), new_state()
    for i in range(0, 6000, 2000):
        pipeline.process(RECORDS[i : i + 2000], state)
    state.next_offset = 6000
    assert len(state.gate) > 0 and account_kernels.account_state_stats(state.accounts)["tracked"]
    folder = tmp_path_factory.mktemp("pristine") / PARTITION_NAME
    state.save(folder)
    return state, folder


def copy_snapshot(saved: tuple[PartitionState, Path], root: Path) -> Path:
    target = snapshot_path(root, TOPIC, PARTITION)
    shutil.copytree(saved[1], target)
    return target


def errors_naming_the_partition(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r for r in caplog.records if r.levelno >= logging.ERROR and PARTITION_NAME in r.getMessage()
    ]


@pytest.mark.parametrize("corrupt", CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
def test_a_corrupt_snapshot_is_rejected_loudly_and_never_loaded(
    saved_state, tmp_path, caplog, corrupt
):
    folder = copy_snapshot(saved_state, tmp_path)
    restored_before = restore(tmp_path)
    assert_same_state(restored_before, saved_state[0])  # the copy itself is sound
    corrupt(folder)
    with pytest.raises(SnapshotError):
        PartitionState.load(folder, gate_capacity=CAPACITY)
    caplog.set_level(logging.INFO, logger="detector.state")
    state = restore(tmp_path)
    assert is_fresh(state)
    assert errors_naming_the_partition(caplog), caplog.text


def test_a_partial_first_snapshot_left_by_a_crash_is_rejected_loudly(saved_state, tmp_path, caplog):
    """The process died while writing its first snapshot: only the staging folder exists, without
    its meta.json (written last)."""
    staging = tmp_path / f".{PARTITION_NAME}.tmp-4242"
    shutil.copytree(saved_state[1], staging)
    (staging / "meta.json").unlink()
    truncate(staging / "gate.npz")
    caplog.set_level(logging.INFO, logger="detector.state")
    assert is_fresh(restore(tmp_path))
    assert errors_naming_the_partition(caplog), caplog.text


def test_a_stale_staging_folder_does_not_shadow_the_snapshot(saved_state, tmp_path, caplog):
    """Died while writing a newer snapshot: the committed one is restored, the half-written one is
    ignored and cleaned up by the next save."""
    copy_snapshot(saved_state, tmp_path)
    staging = tmp_path / f".{PARTITION_NAME}.tmp-{os.getpid() + 1}"  # another process's
    staging.mkdir()
    (staging / "accounts.npz").write_bytes(b"PK\x03\x04 half written")
    caplog.set_level(logging.INFO, logger="detector.state")
    restored = restore(tmp_path)
    assert_same_state(restored, saved_state[0])
    assert not errors_naming_the_partition(caplog)
    restored.save(snapshot_path(tmp_path, TOPIC, PARTITION))
    assert sorted(p.name for p in tmp_path.iterdir()) == [PARTITION_NAME]


def test_a_crash_between_the_two_renames_recovers_the_new_snapshot(saved_state, tmp_path, caplog):
    """save() moves the old folder aside, then renames the staging folder into place. A crash
    between the two leaves no folder under the partition's name: the complete staging folder (or
    else the retired one) must be restored, not an empty state."""
    older = new_state()
    new_pipeline().process(RECORDS[:500], older)
    older.next_offset = 500
    older.save(tmp_path / f".{PARTITION_NAME}.old-77")
    shutil.copytree(saved_state[1], tmp_path / f".{PARTITION_NAME}.tmp-77")
    caplog.set_level(logging.INFO, logger="detector.state")
    restored = restore(tmp_path)
    assert_same_state(restored, saved_state[0])
    assert any(
        r.levelno >= logging.WARNING and PARTITION_NAME in r.getMessage() for r in caplog.records
    )
    # With the staging folder unusable, the retired (previous) snapshot is the next best.
    shutil.rmtree(tmp_path / f".{PARTITION_NAME}.tmp-77")
    (tmp_path / f".{PARTITION_NAME}.tmp-77").mkdir()
    assert_same_state(restore(tmp_path), older)
    # The next successful save leaves only the snapshot.
    restored.save(snapshot_path(tmp_path, TOPIC, PARTITION))
    assert sorted(p.name for p in tmp_path.iterdir()) == [PARTITION_NAME]


# ------------------------------------------------------------------------------- failed saves


@contextmanager
def read_only(directory: Path) -> Iterator[None]:
    """Make ``directory`` unwritable, also for root (mode bits do not stop root; the immutable
    attribute does)."""
    directory.chmod(0o555)
    immutable = os.geteuid() == 0
    if immutable:
        subprocess.run(["chattr", "+i", str(directory)], check=True)
    try:
        yield
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(directory)], check=True)
        directory.chmod(0o755)


def newer_state() -> PartitionState:
    state = new_state()
    new_pipeline().process(RECORDS[:1500], state)
    state.next_offset = 1500
    return state


def assert_previous_snapshot_intact(root: Path, previous: PartitionState) -> None:
    assert sorted(p.name for p in root.iterdir()) == [PARTITION_NAME]  # nothing half-written left
    assert_same_state(PartitionState.load(root / PARTITION_NAME, gate_capacity=CAPACITY), previous)


def test_a_save_into_a_read_only_directory_raises_and_keeps_the_previous_snapshot(
    saved_state, tmp_path
):
    copy_snapshot(saved_state, tmp_path)
    with read_only(tmp_path), pytest.raises(OSError):
        newer_state().save(snapshot_path(tmp_path, TOPIC, PARTITION))
    assert_previous_snapshot_intact(tmp_path, saved_state[0])


def test_a_save_under_a_file_raises(tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("x")
    with pytest.raises(OSError):
        newer_state().save(snapshot_path(blocker, TOPIC, PARTITION))
    with pytest.raises(OSError):
        newer_state().save(snapshot_path(blocker / "deeper", TOPIC, PARTITION))
    assert blocker.read_text() == "x"


def test_a_full_disk_during_a_save_keeps_the_previous_snapshot(saved_state, tmp_path, monkeypatch):
    copy_snapshot(saved_state, tmp_path)

    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(state_module.np, "savez", no_space)
    with pytest.raises(OSError, match="No space"):
        newer_state().save(snapshot_path(tmp_path, TOPIC, PARTITION))
    assert_previous_snapshot_intact(tmp_path, saved_state[0])


def test_a_failed_final_rename_puts_the_previous_snapshot_back(saved_state, tmp_path, monkeypatch):
    copy_snapshot(saved_state, tmp_path)
    real_rename = Path.rename

    def failing_rename(self, target):
        if ".tmp-" in self.name:  # the staging folder moving into place
            raise OSError(5, "Input/output error")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", failing_rename)
    with pytest.raises(OSError, match="Input/output"):
        newer_state().save(snapshot_path(tmp_path, TOPIC, PARTITION))
    monkeypatch.undo()
    assert_previous_snapshot_intact(tmp_path, saved_state[0])


def test_leftovers_of_an_earlier_process_with_the_same_pid_do_not_block_saves(
    saved_state, tmp_path
):
    """Containers restart with the same pid, so a crashed save's folders can carry our names."""
    copy_snapshot(saved_state, tmp_path)
    for kind in ("old", "tmp"):
        leftover = tmp_path / f".{PARTITION_NAME}.{kind}-{os.getpid()}"
        shutil.copytree(saved_state[1], leftover)
    newer = newer_state()
    newer.save(snapshot_path(tmp_path, TOPIC, PARTITION))
    assert_previous_snapshot_intact(tmp_path, newer)


# ------------------------------------------------------------------------------------- privacy


CANARY_TEXTS = [f"Qzvbx canary offer {i}: claim your prize at qzvbx.example now" for i in range(40)]
CANARY_ACCOUNTS = [f"+99977700{i:04d}" for i in range(40)]
CANARY_IP = "203.0.113.77"


def canary_records() -> list[bytes]:
    records = []
    for i in range(400):
        event = {
            "type": "message",
            "ts": T0 + i * 500,
            "account": CANARY_ACCOUNTS[i % 40],
            "peer": f"+99988800{i:04d}",
            "text": CANARY_TEXTS[(i // 40) % 40] if i % 3 else CANARY_TEXTS[0],
            "in_contacts": False,
            "ip": CANARY_IP,
            "account_created": T0 - 3_600_000,
        }
        records.append(json.dumps(event).encode())
    return records


def secrets_in(data: bytes) -> list[str]:
    needles = ["qzvbx", "canary", "claim your prize", CANARY_IP, "9997770", "9998880"]
    lowered = data.lower()
    found = [n for n in needles if n.lower().encode() in lowered]
    found += [n for n in needles if n.lower().encode("utf-16-le") in lowered]
    return found


def test_snapshots_never_contain_texts_accounts_or_addresses(tmp_path):
    pipeline, state = new_pipeline(), new_state()
    records = canary_records()
    result = pipeline.process(records, state)
    assert len(result.events) == len(records) and result.signals  # texts clustered, rules fired
    cluster = int(result.inputs.content.cluster_id[0])
    assert "canary" in (pipeline.content.exemplar(cluster) or "")  # in memory, as evidence
    assert secrets_in(b"\n".join(records))  # the needles do find what is there

    state.next_offset = len(records)
    state.save(tmp_path / PARTITION_NAME)
    pipeline.content.save(tmp_path / "content.npz", event_time_ms=state.event_time_ms)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert {p.name for p in files} == {"accounts.npz", "gate.npz", "meta.json", "content.npz"}
    for path in files:
        assert secrets_in(path.read_bytes()) == [], path.name
    restored = ContentClusters.load(tmp_path / "content.npz")
    assert restored.exemplar(cluster) is None


class _OffsetSource:
    """One partition of simulator records with offsets, served as fast as the app takes them."""

    def __init__(self, batches: list[list[bytes]]) -> None:
        self.batches = batches
        self.committed: dict = {}

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def polls(self):
        from detector.sources import PartitionKey, Polled

        key, offset = PartitionKey("events", 0), 0
        for records in self.batches:
            yield [Polled(key, records, next_offset=offset + len(records), first_offset=offset)]
            offset += len(records)
            await asyncio.sleep(0.02)

    async def commit(self, offsets: dict) -> None:
        self.committed.update(offsets)


async def test_a_slow_snapshot_disk_does_not_stall_consumption(tmp_path, monkeypatch):
    """Periodic snapshots are written from copies in the background: while one write is stuck for
    a second, batches keep flowing and offsets keep being committed; the snapshot lands after."""
    import threading

    from detector.app import DetectorApp
    from detector.config import load_settings
    from detector.metrics import Metrics
    from detector.policy import load_policy
    from detector.sinks import ConsoleSignalSink, JsonlDeadLetterSink

    records = RECORDS
    batches = [records[i : i + 200] for i in range(0, len(records), 200)]
    settings = load_settings(
        env={},
        overrides={
            "snapshot_dir": str(tmp_path),
            "snapshot_interval_s": 0.1,
            "account_capacity": 4096,
            "cluster_capacity": 4096,
        },
    )
    source = _OffsetSource(batches)
    app = DetectorApp(
        settings,
        load_policy(),
        source=source,
        signal_sink=ConsoleSignalSink(io.StringIO()),
        dead_letter_sink=JsonlDeadLetterSink(tmp_path / "dead.jsonl"),
        metrics=Metrics(),
    )
    real_save = PartitionState.save
    first_write = threading.Event()
    progress_during_write: list[int] = []

    def slow_save(self, directory):
        if not first_write.is_set():
            first_write.set()
            before = app.stats.records
            time.sleep(1.0)
            progress_during_write.append(app.stats.records - before)
        real_save(self, directory)

    monkeypatch.setattr(PartitionState, "save", slow_save)
    stats = await app.run(asyncio.Event())
    assert stats.records == len(records)
    assert progress_during_write and progress_during_write[0] > 0
    assert source.committed  # offsets were committed throughout
    restored = PartitionState.load(tmp_path / "events-0", gate_capacity=4096)
    assert restored.next_offset == len(records)  # the final snapshot, after the slow one
