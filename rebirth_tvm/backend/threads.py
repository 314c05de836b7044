"""How many threads TVM's runtime runs kernels on: every core this process may use.

TVM's thread pool, unless told (``TVM_NUM_THREADS`` or ``OMP_NUM_THREADS``), takes half the
logical CPUs on x86 — it assumes two hyper-threads per core — and sizes itself once, at its
first parallel kernel. On a machine without SMT (most cloud VMs, this project's 2-core CI) that
is half the machine: measured here, a GoogLeNet conv ran at 97 GFLOP/s on the one thread TVM
chose and at 187 GFLOP/s on both cores, against onnxruntime's 216 on both. So before any kernel
runs, :func:`use_all_cores` sets ``TVM_NUM_THREADS`` to the physical cores this process may run
on (a user's own setting is never overridden); child processes (MetaSchedule's measurements,
the native runner) inherit it.
"""

from __future__ import annotations

import os


def _allowed_cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def available_cores() -> int:
    """Physical cores among the CPUs this process may run on: hyper-thread siblings (read from
    sysfs) counted once; where the topology cannot be read, every allowed CPU."""
    cores = set()
    for cpu in _allowed_cpus():
        topology = f"/sys/devices/system/cpu/cpu{cpu}/topology"
        try:
            with open(f"{topology}/physical_package_id") as package, open(f"{topology}/core_id") as core:
                cores.add((package.read().strip(), core.read().strip()))
        except OSError:
            cores.add(("cpu", str(cpu)))  # unknown topology: this CPU is its own core
    return max(1, len(cores))


def use_all_cores() -> int:
    """Set ``TVM_NUM_THREADS`` to :func:`available_cores` unless the user set a thread count;
    returns the count TVM will use. Call before the first TVM kernel runs."""
    for name in ("TVM_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(name, "").strip()
        if value:
            return int(value) if value.isdigit() else 1
    count = available_cores()
    os.environ["TVM_NUM_THREADS"] = str(count)
    return count
