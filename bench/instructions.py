"""Instructions per event of the account kernels, counted: ``python -m bench.instructions``.

Timings on a shared machine drift by 10-30 % between runs minutes apart, so kernel changes worth a
few percent cannot be told apart by timing them. This counts instead: it runs ``update_accounts``
on ``--events`` events of the ``bench.kernels`` stream under valgrind's callgrind and prints the
instructions executed in the compiled kernels per event. The count is exact and the same on every
run of the same code (as is its count of mispredicted branches, from callgrind's simple
predictor model: a hint only, the CPU's predictor is far better); it is not time (cache misses cost none), but the kernels run about three
instructions per cycle on this benchmark (8.25 M events/s x 999 on a 2.6 GHz core), so it follows
their speed.

Steps: a first process generates the stream, runs its first ``--skip-events`` events natively (the
table then holds the accounts, heavy rows and pairs of a stream in full flow) and saves the state
and the next events; a second compiles the kernels for ``TARGET_CPU`` (valgrind runs no AVX-512,
and a fixed target makes counts comparable between machines) into a private Numba cache; a third
runs them under callgrind from that cache. Needs ``valgrind`` (``apt-get install valgrind``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TARGET_CPU = "x86-64-v3"  # AVX2, BMI2, LZCNT: what valgrind executes
TARGET_FEATURES = "+avx2,+bmi,+bmi2,+lzcnt,+popcnt,+fma,+movbe"
ENTRIES = "kernel_entries.txt"


def kernel_entries() -> list[int]:
    """Entry addresses of every compiled overload of the account kernels (``kernels.accounts`` and
    the helpers it calls): callgrind names code without symbols by its entry address."""
    from numba.core.registry import CPUDispatcher

    from kernels import accounts, hashtable, hll

    entries = []
    for module in (accounts, hashtable, hll):
        for value in vars(module).values():
            if isinstance(value, CPUDispatcher):
                for compiled in value.overloads.values():
                    name = compiled.fndesc.llvm_func_name
                    entries.append(compiled.library.get_pointer_to_function(name))
    return entries


def kernel_costs(callgrind_out: str, entries: set[int]) -> tuple[dict[str, int], dict[str, int]]:
    """Self costs by event (``Ir`` instructions, ``Bc`` conditional branches, ``Bcm`` of them
    mispredicted, ...) of the functions at ``entries``, and of the whole process, from a callgrind
    output file written with ``--compress-strings=no --compress-pos=no``."""
    events: list[str] = []
    kernel: dict[str, int] = {}
    total: dict[str, int] = {}
    in_kernel = False
    skip_call_cost = False
    for line in callgrind_out.splitlines():
        if skip_call_cost:  # the line after calls= is the callee's inclusive cost
            skip_call_cost = False
            continue
        if line.startswith("events:"):
            events = line.split()[1:]
            kernel = dict.fromkeys(events, 0)
            total = dict.fromkeys(events, 0)
        elif line.startswith("calls="):
            skip_call_cost = True
        elif line.startswith("fn="):
            name = line[3:].strip().split("'")[0]  # callgrind marks recursion levels 'N
            in_kernel = name.startswith("0x") and int(name, 16) in entries
        elif line[:1].isdigit():
            costs = line.split()[1:]  # after the line number
            for event, cost in zip(events, costs, strict=False):
                total[event] += int(cost)
                if in_kernel:
                    kernel[event] += int(cost)
    return kernel, total


def _prepare(args: argparse.Namespace, work: Path) -> None:
    from bench import kernels as bench_kernels
    from kernels import accounts

    stream = bench_kernels.make_stream(
        args.skip_events + args.events,
        args.accounts,
        zipf_s=bench_kernels.ZIPF_S,
        span_h=bench_kernels.SPAN_H,
        seed=args.seed,
    )
    capacity = math.ceil(bench_kernels.distinct_subjects(stream) / bench_kernels.LOAD_FACTOR)
    state = accounts.new_account_state(capacity)
    bench_kernels.run_kernel(state, stream, 0, args.skip_events, args.batch)
    now_ms = int(state.counters[accounts.C_NOW_MS])
    accounts.save_account_state(state, work / "state.npz", event_time_ms=now_ms)
    np.savez(work / "events.npz", **{k: v[args.skip_events :] for k, v in stream.items()})


def _child(work: Path, batch: int) -> None:
    """Runs in the process under callgrind: restore the state, apply the saved events."""
    from bench import kernels as bench_kernels
    from kernels import accounts

    state, _ = accounts.load_account_state(work / "state.npz")
    events = dict(np.load(work / "events.npz"))
    n = len(events["ts_ms"])
    bench_kernels.run_kernel(state, events, 0, n, batch)
    (work / ENTRIES).write_text("\n".join(str(e) for e in kernel_entries()))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000, help="events counted")
    parser.add_argument(
        "--skip-events", type=int, default=4_800_000, help="events run natively before them"
    )
    parser.add_argument("--accounts", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=65_536)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(Path(args.child), args.batch)
        return {}
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("valgrind not found: apt-get install valgrind")

    with tempfile.TemporaryDirectory(prefix="bulkwatch-instructions-") as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        _prepare(args, work)
        env = dict(
            os.environ,
            NUMBA_CPU_NAME=TARGET_CPU,
            NUMBA_CPU_FEATURES=TARGET_FEATURES,
            NUMBA_CACHE_DIR=str(work / "numba-cache"),
            PYTHONHASHSEED="0",
        )
        child = [sys.executable, "-m", "bench.instructions", "--child", str(work)]
        child += ["--batch", str(args.batch)]
        # Natively first: compiles into the private cache, which the run under valgrind loads.
        subprocess.run(child, env=env, check=True)
        out = work / "callgrind.out"
        subprocess.run(
            [
                valgrind, "--tool=callgrind", "--branch-sim=yes", "--compress-strings=no",
                "--compress-pos=no",
                f"--callgrind-out-file={out}", *child,
            ],
            env=env, check=True, capture_output=True,
        )  # fmt: skip
        entries = {int(e) for e in (work / ENTRIES).read_text().split()}
        kernel, total = kernel_costs(out.read_text(), entries)
        seconds = time.perf_counter() - started

    per_event = kernel["Ir"] / args.events
    result = {
        "events": args.events,
        "skip_events": args.skip_events,
        "instructions_per_event": round(per_event, 1),
        "branches_per_event": round(kernel["Bc"] / args.events, 2),
        "mispredicted_per_event": round(kernel["Bcm"] / args.events, 3),
        "kernel_instructions": kernel["Ir"],
        "process_instructions": total["Ir"],
        "target_cpu": TARGET_CPU,
        "seconds": round(seconds, 1),
    }
    print(
        f"account kernels  {per_event:,.1f} instructions per event, "
        f"{result['branches_per_event']} conditional branches of which "
        f"{result['mispredicted_per_event']} mispredicted (simulated) ({kernel['Ir']:,} "
        f"instructions for {args.events:,} events after {args.skip_events:,}; target "
        f"{TARGET_CPU}; {seconds:.0f} s)"
    )
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
