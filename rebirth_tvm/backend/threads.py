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


def available_cores() -> int:
    """Physical cores this process may run on (its CPU affinity, hyper-threads counted once)."""
    try:
        allowed = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        allowed = os.cpu_count() or 1
    try:
        import psutil

        physical = psutil.cpu_count(logical=False) or allowed
        logical = psutil.cpu_count(logical=True) or allowed
    except Exception:  # noqa: BLE001  (no psutil answer: trust the affinity)
        return max(1, allowed)
    per_core = max(1, logical // physical)  # hyper-threads per core
    return max(1, allowed // per_core)


def use_all_cores() -> int:
    """Set ``TVM_NUM_THREADS`` to :func:`available_cores` unless the user set a thread count;
    returns the count TVM will use. Call before the first TVM kernel runs."""
    for name in ("TVM_NUM_THREADS", "OMP_NUM_THREADS"):
        if os.environ.get(name, "").strip():
            return int(os.environ[name]) if os.environ[name].strip().isdigit() else available_cores()
    count = available_cores()
    os.environ["TVM_NUM_THREADS"] = str(count)
    return count
