"""Measurements the benchmark reports: latency side by side, time per op category, memory, FLOPs.

Each function measures one thing and says how:

* :func:`interleaved_latency`: every variant timed in one process, round-robin over repetitions
  (a noisy machine slows all variants alike rather than whichever ran during the noise);
* :func:`time_breakdown`: each kernel timed through ``VirtualMachine.set_instrument`` and
  attributed to an op category from the Relax ops fused into it;
* :func:`planned_memory`: weights and the activation memory ``StaticPlanBlockMemory`` plans, with
  the fusion of the real build (unfused plans would overstate activations);
* :func:`flops`: multiply-adds of convolutions and matmuls, ×2;
* :func:`matmul_peak_gflops`: what this machine's fp32 matmul reaches (numpy's BLAS), the
  practical ceiling the achieved GFLOP/s are compared with.
"""

from __future__ import annotations

import collections
import os
import re
import time
from typing import Callable

import numpy as np
import tvm
from tvm import relax

from rebirth_tvm.core.conv_math import conv_macs

#: Categories of the paper's time-breakdown figure (plus "slice", which MergeParallelConvs adds,
#: and "vm", the virtual machine's own work between kernels).
CATEGORIES = ("conv", "fc", "pool", "lrn", "bn", "concat", "relu", "slice", "other", "vm")
TENSOR_CATEGORIES = ("conv", "fc")

# Op names as they appear in fused kernel names (longest first, so max_pool2d is not "pool").
_KERNEL_OPS = sorted([
    "conv2d", "matmul", "dense", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "avg_pool3d", "mean",
    "concatenate", "strided_slice", "split", "expand_dims", "squeeze", "power", "batch_norm", "rsqrt", "sqrt",
    "relu", "add", "subtract", "multiply", "divide", "reshape", "transpose", "softmax", "clip", "maximum", "minimum",
], key=len, reverse=True)


def kernel_category(name: str) -> str:
    """The op category of a kernel, from the Relax ops in its (fused) name.

    A fused kernel counts as its most expensive kind of op: ``fused_conv2d_add_relu`` is conv (the
    bias and ReLU ride along for free, which is what TVM's fusion buys). The importer's LRN is
    ``expand_dims, avg_pool3d, squeeze, multiply, add, power, divide``; its pieces count as LRN.
    """
    if name.startswith("vm.builtin.") or name.startswith("vm."):
        return "vm"
    ops = set(_ops_in(name))
    if "conv2d" in ops:
        return "conv"
    if ops & {"matmul", "dense"}:
        return "fc"
    if ops & {"avg_pool3d", "power"} or ("expand_dims" in ops and "multiply" in ops):
        return "lrn"
    if ops & {"max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "mean"}:
        return "pool"
    if "batch_norm" in ops or ops & {"rsqrt", "sqrt"}:
        return "bn"
    if "concatenate" in ops:
        return "concat"
    if ops & {"strided_slice", "split"}:
        return "slice"
    if ops and ops <= {"relu", "maximum", "clip"}:
        return "relu"
    return "other"


def _ops_in(name: str) -> list[str]:
    rest = re.sub(r"^fused_", "", name)
    found = []
    while rest:
        for op in _KERNEL_OPS:
            if rest.startswith(op):
                found.append(op)
                rest = re.sub(r"^\d*_?", "", rest[len(op):])
                break
        else:  # an op we do not know: skip one token
            rest = rest.split("_", 1)[1] if "_" in rest else ""
    return found


class Variant:
    """One thing to time: ``run()`` performs one inference on ``runtime`` (whose worker threads
    the other runtimes' samples must wait out, see :func:`interleaved_latency`)."""

    def __init__(self, name: str, run: Callable[[], object], runtime: str = "tvm"):
        self.name = name
        self.run = run
        self.runtime = runtime


def tvm_variant(name: str, executable, inputs, device=None) -> Variant:
    """A built Relax executable; inputs are set once, so only the inference is timed."""
    device = device or tvm.cpu()
    vm = relax.VirtualMachine(executable, device)
    vm.set_input("main", *[tvm.runtime.tensor(np.ascontiguousarray(x), device) for x in inputs])
    on_gpu = device.dlpack_device_type() != tvm.cpu().dlpack_device_type()

    def run():
        vm.invoke_stateful("main")
        if on_gpu:
            device.sync()  # GPU kernels are asynchronous

    return Variant(name, run)


def onnxruntime_variant(name: str, model, inputs: dict, threads: int | None = None) -> Variant:
    """onnxruntime with its default (full) graph optimisations and threading: what a user would
    run (its spinning workers are let settle between samples by :func:`interleaved_latency`)."""
    from rebirth_tvm.frontend.reference import session as onnxruntime_session

    session = onnxruntime_session(model, optimized=True, threads=threads or os.cpu_count() or 1)
    return Variant(name, lambda: session.run(None, inputs), runtime="onnxruntime")


def rpc_latency(builds: dict, inputs, device, repeats: int = 30, min_sample_ms: float = 50) -> dict[str, dict]:
    """Like :func:`interleaved_latency`, for builds run on an RPC device.

    Every build is uploaded and loaded once; then each repetition takes one sample of each, in a
    rotating order. A sample is the device's own timer (TVM's time evaluator) over as many runs
    as fill ``min_sample_ms``.
    """
    import tempfile

    from rebirth_tvm.backend.remote import load_on_device

    session = device.session()
    timers = {}
    for name, built in builds.items():
        with tempfile.TemporaryDirectory() as work:
            path = os.path.join(work, f"{name}.so")
            built.export(path)
            vm, dev, _ = load_on_device(session, path, f"rebirth_bench_{name}.so", built.target, inputs)
        # TVM's time evaluator takes whole milliseconds (a float is a type error over RPC).
        timers[name] = vm.time_evaluator("invoke_stateful", dev, number=1, repeat=1, min_repeat_ms=max(1, int(round(min_sample_ms))))
    names = list(timers)
    samples = collections.defaultdict(list)
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            samples[name].append(float(timers[name]("main").mean) * 1e3)
    return {name: _summary(s, f"device timer, ≥ {min_sample_ms:g} ms") for name, s in samples.items()}


#: idle time before each sample, so that the previous sample's worker threads park
SETTLE_SECONDS = 0.05
#: idle time before a sample that follows another runtime's: measured on GoogLeNet (2 cores),
#: 50 ms left both runtimes slowed by the other's threads (TVM 22.5 ms against 18.5 alone,
#: onnxruntime 33.3 against 26.1); after 0.5 s each ran as fast as alone (18.7, 26.4)
SWITCH_SETTLE_SECONDS = 0.5


def interleaved_latency(variants: list[Variant], repeats: int = 30, min_sample_seconds: float = 0.05,
                        warmup: int = 3, progress=None, settle_seconds: float = SETTLE_SECONDS,
                        switch_settle_seconds: float = SWITCH_SETTLE_SECONDS) -> dict[str, dict]:
    """Median, p10 and p90 latency (ms) of each variant, sampled round-robin in one process.

    Each sample is the mean of as many back-to-back runs as fill ``min_sample_seconds`` (at
    least one), after an idle pause and one untimed run; the order of the variants rotates every
    repetition. Both runtimes' worker threads keep spinning for a while after a run, and timed
    while the other runtime's threads still spin, a variant gets half the cores (GoogLeNet on
    TVM: 18.5 ms alone, 22.5 after a 50 ms pause behind onnxruntime; onnxruntime 26.1 alone,
    33.3 behind TVM). The pause is ``switch_settle_seconds`` when the previous sample ran on
    another runtime, ``settle_seconds`` otherwise (a runtime's own threads are what it runs on).
    """
    inner = {}
    for v in variants:
        for _ in range(warmup):
            v.run()
        start = time.perf_counter()
        v.run()
        once = time.perf_counter() - start
        inner[v.name] = max(1, int(min_sample_seconds / max(once, 1e-9)))
    samples = collections.defaultdict(list)
    previous = None
    for r in range(repeats):
        order = variants[r % len(variants):] + variants[:r % len(variants)]
        for v in order:
            pause = switch_settle_seconds if previous is not None and previous != v.runtime else settle_seconds
            if pause:
                time.sleep(pause)
            v.run()  # untimed: its own threads wake; any other runtime's have parked
            start = time.perf_counter()
            for _ in range(inner[v.name]):
                v.run()
            samples[v.name].append((time.perf_counter() - start) / inner[v.name] * 1e3)
            previous = v.runtime
        if progress is not None:
            progress.update(1)
    return {name: _summary(s, inner[name]) for name, s in samples.items()}


def _summary(samples: list[float], runs_per_sample) -> dict:
    return {"median": float(np.median(samples)), "p10": float(np.percentile(samples, 10)),
            "p90": float(np.percentile(samples, 90)), "samples": len(samples), "runs_per_sample": runs_per_sample}


def time_breakdown(executable, inputs, runs: int = 5, device=None) -> dict:
    """Milliseconds per op category for one inference (median over ``runs``), and the shares.

    Kernels are timed around each call by the VM's instrument hook, so the Python hook's own
    cost is outside the kernel times; ``non_tensor_share`` is the share of kernel time outside
    conv and FC (VM bookkeeping is reported separately and left out of the shares).
    """
    device = device or tvm.cpu()
    vm = relax.VirtualMachine(executable, device)
    args = [tvm.runtime.tensor(np.ascontiguousarray(x), device) for x in inputs]
    vm["main"](*args)
    per_run = []
    for _ in range(runs):
        totals, started = collections.Counter(), {}

        def instrument(func, name, before_run, ret_value, *rest):
            if before_run:
                started[name] = time.perf_counter()
            else:
                totals[kernel_category(name)] += time.perf_counter() - started.pop(name)
            return 0

        vm.set_instrument(instrument)
        vm["main"](*args)
        per_run.append(totals)
    ms = {c: float(np.median([t.get(c, 0.0) for t in per_run])) * 1e3 for c in CATEGORIES}
    kernel_total = sum(v for c, v in ms.items() if c != "vm")
    shares = {c: (ms[c] / kernel_total if kernel_total else 0.0) for c in CATEGORIES if c != "vm"}
    return {"ms": ms, "share": shares, "kernel_ms": kernel_total,
            "non_tensor_share": sum(v for c, v in shares.items() if c not in TENSOR_CATEGORIES)}


def planned_memory(mod: tvm.IRModule, target) -> dict:
    """Weights and planned activation bytes of ``mod`` as the fused build lays them out.

    Activations: the storage ``StaticPlanBlockMemory`` allocates in ``main`` plus the tensors it
    leaves to be allocated one by one (the outputs), after the same legalisation and fusion as
    the real build. Workspace inside kernels is not included (see the RSS measurement).
    """
    from tvm.relax import transform as T

    with target.tvm:
        lowered = tvm.transform.Sequential([
            T.LegalizeOps(), T.AnnotateTIROpPattern(), T.FoldConstant(), T.FuseOps(), T.FuseTIR(),
            T.RewriteDataflowReshape(), T.ToNonDataflow(), T.RemovePurityChecking(), T.CallTIRRewrite(),
            T.StaticPlanBlockMemory(),
        ])(mod)
    storage, tensors = [], []

    @relax.expr_functor.visitor
    class Allocations(relax.PyExprVisitor):
        def visit_call_(self, call):
            name = getattr(call.op, "name", "")
            if name == "relax.memory.alloc_storage":
                storage.append(int(call.args[0].values[0]))
            elif name == "relax.builtin.alloc_tensor":
                shape = [int(d) for d in call.args[0].values]
                tensors.append(int(np.prod(shape)) * tvm.runtime.DataType(str(call.args[1].value)).bits // 8)
            super().visit_call_(call)

    Allocations().visit_expr(lowered["main"])
    return {"weight_bytes": weight_bytes(mod), "planned_activation_bytes": sum(storage) + sum(tensors),
            "planned_storage_blocks": len(storage)}


def weight_bytes(mod: tvm.IRModule) -> int:
    total = 0
    for _, func in mod.functions.items():
        if isinstance(func, relax.Function):
            constants = []
            relax.analysis.post_order_visit(func, lambda e: constants.append(e) if isinstance(e, tvm.ir.GenericConst) else None)
            total += sum(c.value.numpy().nbytes for c in constants)
    return int(total)


def flops(mod: tvm.IRModule) -> int:
    """2 × multiply-adds of every conv2d and matmul in ``mod``'s Relax functions."""
    total = [0]

    def visit(expr):
        if not isinstance(expr, relax.Call) or not hasattr(expr.op, "name"):
            return
        if expr.op.name == "relax.nn.conv2d":
            total[0] += 2 * conv_macs([int(d) for d in expr.ty.shape], [int(d) for d in expr.args[1].ty.shape])
        elif expr.op.name == "relax.matmul":
            a = [int(d) for d in expr.args[0].ty.shape]
            out = [int(d) for d in expr.ty.shape]
            total[0] += 2 * int(np.prod(out)) * a[-1]

    for _, func in mod.functions.items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return total[0]


def matmul_peak_gflops(size: int = 2048, repeats: int = 5) -> dict:
    """fp32 GFLOP/s of numpy's BLAS sgemm (all cores): the practical ceiling of this machine."""
    rng = np.random.default_rng(0)
    a, b = rng.random((size, size), dtype=np.float32), rng.random((size, size), dtype=np.float32)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return {"gflops": 2 * size ** 3 / best / 1e9, "method": f"numpy sgemm {size}x{size}, best of {repeats}",
            "blas": _blas_name()}


def _blas_name() -> str:
    try:
        config = np.show_config(mode="dicts")
        return str(config["Build Dependencies"]["blas"]["name"])
    except Exception:
        return "unknown"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()
