"""Per-partition detector state, and its snapshots on disk.

Events are keyed by account, so an account's state lives with its partition. A snapshot directory
holds one folder per partition with the account table (``accounts.npz``, checksummed by the kernel),
the signal gate (``gate.npz``) and ``meta.json`` (the next offset to consume, the event time the state
reflects, and a checksum of the two files). Folders are written to a temporary name and renamed, so a
reader sees a whole snapshot or the previous one. Message texts are never written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from detector.policy import SignalGate
from kernels import accounts as account_kernels

log = logging.getLogger(__name__)


class SnapshotError(RuntimeError):
    """A snapshot is missing pieces, corrupt, or does not match its checksum."""


@dataclass
class PartitionState:
    """Everything the detector remembers about the accounts of one partition."""

    accounts: account_kernels.AccountState
    gate: SignalGate
    next_offset: int | None = None  # the first offset not yet reflected in this state
    event_time_ms: int = 0
    restored_from: str | None = field(default=None, compare=False)

    @classmethod
    def new(
        cls, *, capacity: int, lateness_s: int, ttl_s: int, gate_capacity: int | None = None
    ) -> PartitionState:
        table = account_kernels.new_account_state(capacity, lateness_s=lateness_s, ttl_s=ttl_s)
        return cls(table, SignalGate(gate_capacity or capacity))

    def copy(self) -> PartitionState:
        """An independent copy (arrays included), to be written while this one moves on."""
        return PartitionState(
            account_kernels.AccountState(*(array.copy() for array in self.accounts)),
            SignalGate.from_arrays(self.gate.to_arrays(), self.gate.capacity),
            next_offset=self.next_offset,
            event_time_ms=self.event_time_ms,
            restored_from=self.restored_from,
        )

    def save(self, directory: Path) -> None:
        """Write this state atomically to ``directory`` (replacing an older snapshot).

        Raises OSError when the snapshot cannot be written; the previous snapshot is then intact.
        """
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
        retired = directory.with_name(f".{directory.name}.old-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        moved_aside = False
        try:
            account_kernels.save_account_state(
                self.accounts, staging / "accounts.npz", event_time_ms=self.event_time_ms
            )
            np.savez(staging / "gate.npz", **self.gate.to_arrays())
            meta = {
                "format": 1,
                "next_offset": self.next_offset,
                "event_time_ms": self.event_time_ms,
                "checksum": _checksum(staging),
            }
            (staging / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
            _fsync_dir(staging)
            if directory.exists():
                # A crashed save of a process with our pid (containers reuse pids) may have left it.
                shutil.rmtree(retired, ignore_errors=True)
                directory.rename(retired)
                moved_aside = True
            staging.rename(directory)
            moved_aside = False
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            if moved_aside:  # the new snapshot did not take its place: put the previous one back
                retired.rename(directory)
            raise
        _fsync_parent(directory)
        for leftover in _interrupted_saves(directory):
            shutil.rmtree(leftover, ignore_errors=True)

    @classmethod
    def load(cls, directory: Path, *, gate_capacity: int) -> PartitionState:
        """Read a snapshot; raises :class:`SnapshotError` when it is incomplete or corrupt."""
        directory = Path(directory)
        try:
            meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
            if not isinstance(meta, dict):
                raise SnapshotError(f"{directory}: meta.json is not an object")
            if meta.get("format") != 1:
                raise SnapshotError(f"{directory}: unknown snapshot format {meta.get('format')!r}")
            if meta.get("checksum") != _checksum(directory):
                raise SnapshotError(f"{directory}: checksum mismatch (corrupt or partial snapshot)")
            table, event_time_ms = account_kernels.load_account_state(directory / "accounts.npz")
            with np.load(directory / "gate.npz") as arrays:
                gate = SignalGate.from_arrays(arrays, gate_capacity)
        except SnapshotError:
            raise
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
            raise SnapshotError(f"{directory}: unreadable snapshot: {exc}") from exc
        return cls(
            table,
            gate,
            next_offset=meta.get("next_offset"),
            event_time_ms=int(event_time_ms),
            restored_from=str(directory),
        )


def _checksum(directory: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for name in ("accounts.npz", "gate.npz"):
        with open(directory / name, "rb") as handle:
            for chunk in iter(lambda h=handle: h.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(directory: Path) -> None:
    for path in directory.iterdir():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_parent(path: Path) -> None:
    """Make a rename inside ``path.parent`` durable."""
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _interrupted_saves(directory: Path) -> list[Path]:
    """Folders a save that died left beside ``directory``: staging folders (newer) first, then
    retired ones (the snapshot before)."""
    if not directory.parent.is_dir():
        return []
    prefix = f".{directory.name}."
    found = [p for p in directory.parent.iterdir() if p.name.startswith(prefix) and p.is_dir()]
    staging = sorted(p for p in found if p.name[len(prefix) :].startswith("tmp-"))
    retired = sorted(p for p in found if p.name[len(prefix) :].startswith("old-"))
    return staging + retired


def snapshot_path(root: str | Path, topic: str, partition: int) -> Path:
    return Path(root) / f"{topic}-{partition}"


def restore_or_new(
    root: str | Path | None,
    topic: str,
    partition: int,
    *,
    capacity: int,
    lateness_s: int,
    ttl_s: int,
    on_rejected: Callable[[SnapshotError], None] | None = None,
) -> PartitionState:
    """The partition's snapshot if there is a sound one; else a fresh state (loudly, if corrupt:
    an ERROR, and ``on_rejected`` is called once per rejected snapshot folder).

    When a save died between moving the old snapshot aside and renaming the new one into place,
    there is no folder under the partition's name: the complete staging folder, or else the retired
    one, is restored instead (both are checksummed like any snapshot).
    """
    if root is not None:
        path = snapshot_path(root, topic, partition)
        candidates = [path] if path.exists() else _interrupted_saves(path)
        for candidate in candidates:
            try:
                state = PartitionState.load(candidate, gate_capacity=capacity)
            except SnapshotError as exc:
                log.error(
                    "snapshot of %s-%d rejected, rebuilding from the committed offset: %s",
                    topic,
                    partition,
                    exc,
                )
                if on_rejected is not None:
                    on_rejected(exc)
                continue
            if candidate != path:
                log.warning(
                    "snapshot of %s-%d recovered from an interrupted save: %s",
                    topic,
                    partition,
                    candidate,
                )
            log.info(
                "restored %s-%d from snapshot (next offset %s)",
                topic,
                partition,
                state.next_offset,
            )
            return state
    return PartitionState.new(capacity=capacity, lateness_s=lateness_s, ttl_s=ttl_s)
