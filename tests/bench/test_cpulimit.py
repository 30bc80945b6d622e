"""CPU limits of the load benchmark (cgroup CFS quotas) on this machine's real cgroups."""

import subprocess
import sys
import time

import psutil
import pytest

from bench import cpulimit

BUSY_LOOP = "import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end: pass"


def test_a_limited_process_gets_its_share_of_a_core() -> None:
    reason = cpulimit.unavailable_reason()
    limit = cpulimit.CpuLimit(0.3)
    if reason is not None:
        with pytest.raises(RuntimeError, match="not available"):
            limit.start()
        return
    limit.start()
    limit.start()  # safe twice
    assert limit.path is not None and limit.path.is_dir()
    command = limit.wrap([sys.executable, "-c", BUSY_LOOP.format(seconds=2.0)])
    started = time.monotonic()
    process = subprocess.Popen(command)
    ps = psutil.Process(process.pid)
    time.sleep(1.0)
    cpu = ps.cpu_times()
    assert process.wait(timeout=30) == 0
    wall = time.monotonic() - started
    used = cpu.user + cpu.system
    # about 0.3 of the second it ran (a period's burst at the start is allowed), far below 1 core
    assert used < 0.6, used
    assert wall >= 2.0
    assert limit.throttled_s() > 0
    path = limit.path
    limit.stop()
    limit.stop()  # safe twice
    assert not path.exists()


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="cores"):
        cpulimit.CpuLimit(0)
