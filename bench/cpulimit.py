"""CPU limits for benchmark processes, applied the way Kubernetes applies a container's CPU limit:
a cgroup with a CFS bandwidth quota (``cores`` x the period, per period).

The load benchmark measures scale-out with a fixed CPU budget per instance this way, so that on a
small machine two limited instances still leave cores to the broker and the harness (pinning each
instance to a whole core of a 2-core machine leaves the broker none).

Needs a writable cgroup filesystem with the ``cpu`` controller (root, or a delegated subtree):
cgroup v1 (``/sys/fs/cgroup/cpu``, ``cpu.cfs_quota_us``) or v2 (``cpu.max``).
:func:`unavailable_reason` says why not when it cannot be used.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path

PERIOD_US = 100_000  # the kernel's and Kubernetes' default CFS period
CGROUP_ROOT = Path("/sys/fs/cgroup")


def _parent() -> tuple[Path, int] | None:
    """(folder under which limited cgroups are created, cgroup version), or None."""
    v1 = CGROUP_ROOT / "cpu"
    if (v1 / "cpu.cfs_quota_us").exists():
        return v1, 1
    controllers = CGROUP_ROOT / "cgroup.controllers"
    if controllers.exists() and "cpu" in controllers.read_text().split():
        return CGROUP_ROOT, 2
    return None


def unavailable_reason() -> str | None:
    """None if CPU limits can be applied here, else why not."""
    found = _parent()
    if found is None:
        return "no cgroup filesystem with the cpu controller under /sys/fs/cgroup"
    parent, _ = found
    if not os.access(parent, os.W_OK):
        return f"{parent} is not writable (CPU limits need root or a delegated cgroup)"
    return None


class CpuLimit:
    """A cgroup allowing ``cores`` CPUs (a fraction is fine) to the processes placed in it.

    ``start()`` creates it, ``wrap(command)`` returns the command that joins it before it runs
    (the process and its threads and children share the limit), ``stop()`` removes it once its
    processes have exited. Both are safe to call twice.
    """

    def __init__(self, cores: float, name: str | None = None) -> None:
        if cores <= 0:
            raise ValueError(f"cores must be > 0, got {cores}")
        self.cores = cores
        self.name = name or f"bulkwatch-bench-{uuid.uuid4().hex[:8]}"
        self.path: Path | None = None

    def start(self) -> None:
        if self.path is not None:
            return
        reason = unavailable_reason()
        found = _parent()
        if reason is not None or found is None:
            raise RuntimeError(f"CPU limits are not available: {reason}")
        parent, version = found
        path = parent / self.name
        path.mkdir()
        quota_us = max(1000, round(self.cores * PERIOD_US))
        try:
            if version == 1:
                (path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
                (path / "cpu.cfs_quota_us").write_text(str(quota_us))
            else:
                (path / "cpu.max").write_text(f"{quota_us} {PERIOD_US}")
        except OSError:
            path.rmdir()
            raise
        self.path = path

    def wrap(self, command: list[str]) -> list[str]:
        """``command`` run inside the limit (a shell writes its own pid, then execs it)."""
        if self.path is None:
            raise RuntimeError("CpuLimit.start() first")
        procs = self.path / "cgroup.procs"
        return ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(procs), *command]

    def throttled_s(self) -> float | None:
        """Seconds the group's processes were held back by the quota so far."""
        if self.path is None:
            return None
        with contextlib.suppress(OSError, ValueError):
            stats = dict(
                line.split()[:2] for line in (self.path / "cpu.stat").read_text().splitlines()
            )
            if "throttled_time" in stats:  # v1, nanoseconds
                return int(stats["throttled_time"]) / 1e9
            if "throttled_usec" in stats:  # v2
                return int(stats["throttled_usec"]) / 1e6
        return None

    def stop(self) -> None:
        if self.path is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.rmdir()  # fails (OSError) while a process is still inside: that is a bug
        self.path = None
