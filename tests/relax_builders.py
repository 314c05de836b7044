"""Small Relax modules for pass tests, built with BlockBuilder and constant weights.

Each builder returns an IRModule whose ``main`` takes one input ``x``; weights are constants, as
``rebirth_tvm.load`` leaves them.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

RNG_SEED = 0


def rng(seed=RNG_SEED):
    return np.random.default_rng(seed)


def conv_weights(r, out_ch, in_ch, k, groups=1, dtype="float32"):
    kh, kw = (k, k) if isinstance(k, int) else k
    return (r.standard_normal((out_ch, in_ch // groups, kh, kw)) * np.sqrt(2.0 / (in_ch // groups * kh * kw))).astype(dtype)


def bn_stats(r, ch, dtype="float32"):
    return dict(
        gamma=r.uniform(0.5, 1.5, ch).astype(dtype), beta=r.normal(0, 0.1, ch).astype(dtype),
        mean=r.normal(0, 0.1, ch).astype(dtype), var=r.uniform(0.5, 1.5, ch).astype(dtype),
    )


def conv(x, w, stride=1, pad=0, dilation=1, groups=1):
    return relax.op.nn.conv2d(x, w, strides=stride, padding=pad, dilation=dilation, groups=groups)


def batch_norm(x, stats, training=False, eps=1e-5):
    return relax.op.nn.batch_norm(
        x, relax.const(stats["gamma"]), relax.const(stats["beta"]), relax.const(stats["mean"]),
        relax.const(stats["var"]), axis=1, epsilon=eps, training=training,
    )


def module(shape, body, dtype="float32"):
    """``body(bb, x)`` emits bindings inside the dataflow block and returns the output var."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, dtype))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = body(bb, x)
            gv = bb.emit_output(out)
        bb.emit_func_output(gv)
    return bb.get()


def run(mod, x):
    ex = tvm.compile(mod, target=tvm.target.Target("llvm"))
    vm = relax.VirtualMachine(ex, tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(x))
    return out.numpy() if hasattr(out, "numpy") else [o.numpy() for o in out]


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, f"shapes differ: {a.shape} vs {b.shape}"  # broadcasting would hide it
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def count_ops(mod, name):
    n = 0

    def visit(e):
        nonlocal n
        if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op) and e.op.name == name:
            n += 1

    relax.analysis.post_order_visit(mod["main"], visit)
    return n
