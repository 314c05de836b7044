"""How far an exact rewrite may move the outputs: float rounding, and nothing else.

An exact pass only reorders float arithmetic, so its error is rounding, and rounding grows with
the precision of the dtype and with the length of the longest sum the network computes (a
rounding walk over L terms drifts like ``eps·√L``). A fixed 1e-4 refuses correct fp16 models
(eps 1e-3) and a global pool over a 4096×4096 map (16.7M terms), and is needlessly loose for
nothing. The tolerance is therefore::

    min(1e-2, max(1e-4, 4 · eps(compute) · √L, 4 · eps(output)))

relative to the output's scale: 1e-4 for every float32 CNN of normal size (L up to ~4·10^4),
wider only where the arithmetic itself says so. ``compute`` is the least precise dtype the
network computes in (its inputs and weights; a float32 network that only casts its output to
fp16 computes in float32), ``output`` the outputs' own (their last rounding). The cap keeps the
check meaningful whatever the dtype: no tolerance ever lets a dropped op or a wrong weight
through (those move outputs by tens of percent); an fp16 network whose exact rewrite rounds
differently by more than 1% fails closed.
"""

from __future__ import annotations

import math

import numpy as np
import tvm
from tvm import relax

from rebirth_tvm.core.graph import shape_of

#: The floor: far above float32 rounding in any normal CNN (measured ≤ 2e-6 on the zoo).
BASE_TOLERANCE = 1e-4
#: The ceiling, whatever the dtype and the sums: above it a check would no longer catch real changes.
MAX_TOLERANCE = 1e-2
_ULPS = 4.0

_EPS = {"float64": float(np.finfo(np.float64).eps), "float32": float(np.finfo(np.float32).eps),
        "float16": float(np.finfo(np.float16).eps), "bfloat16": 2.0 ** -7}


def _reduction_length(call: relax.Call) -> int:
    """How many terms one output element of ``call`` sums (1 for element-wise ops)."""
    name = call.op.name
    if name in ("relax.nn.conv1d", "relax.nn.conv2d", "relax.nn.conv3d", "relax.nn.conv2d_transpose"):
        weight = shape_of(call.args[1])
        return int(np.prod(weight[1:])) if weight else 1
    if name in ("relax.matmul", "relax.linear"):
        data = shape_of(call.args[0])
        return data[-1] if data else 1
    if any(key in name for key in ("pool", "sum", "mean", "variance", "norm", "softmax", "prod")):
        data, out = shape_of(call.args[0]), shape_of(call)
        if not data or out is None:
            return 1
        if "softmax" in name or "norm" in name:  # as many outputs as inputs: the axis is summed
            axis = getattr(call.attrs, "axis", -1)
            axis = axis[0] if hasattr(axis, "__len__") else axis
            return data[int(axis)]
        return max(1, int(np.prod(data)) // max(1, int(np.prod(out))))
    return 1


def longest_reduction(mod: tvm.IRModule) -> int:
    """The longest sum any op of the module's Relax functions computes for one output element."""
    longest = 1

    def visit(expr):
        nonlocal longest
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
            try:
                longest = max(longest, _reduction_length(expr))
            except Exception:  # an op whose shapes are not static: it adds no bound
                pass

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return longest


def _eps(dtypes) -> float:
    return max((_EPS.get(str(d), _EPS["float32"]) for d in dtypes if "float" in str(d)), default=_EPS["float32"])


def exact_tolerance(compute_dtypes, reduction: int, output_dtypes=()) -> float:
    """The relative tolerance for an exact rewrite of a network computing in ``compute_dtypes``
    (the least precise counts) whose longest sum has ``reduction`` terms and whose outputs are
    rounded to ``output_dtypes``."""
    widened = max(BASE_TOLERANCE, _ULPS * _eps(compute_dtypes) * math.sqrt(max(1, reduction)),
                  _ULPS * _eps(output_dtypes) if output_dtypes else 0.0)
    return min(MAX_TOLERANCE, widened)


def describe(compute_dtypes, reduction: int, output_dtypes=()) -> str:
    names = sorted({str(d) for d in compute_dtypes if "float" in str(d)}) or ["float32"]
    outputs = sorted({str(d) for d in output_dtypes if "float" in str(d)})
    return (f"min(1e-2, max(1e-4, 4·eps·√L, 4·eps_out)): computes in {'/'.join(names)}, longest sum L = {reduction:,} terms"
            + (f", outputs {'/'.join(outputs)}" if outputs else ""))
