"""``power`` by a constant exponent, as the square roots and products it equals.

The ONNX importer writes LRN as ``x / (k + α·avg(x²))^β`` with ``β = 0.75`` (GoogLeNet,
AlexNet): a scalar ``powf`` per element, which LLVM cannot vectorise and which took 5% of
GoogLeNet's time on its own. ``x^0.75 = √x · √√x``, ``x^0.5 = √x``, ``x^2 = x·x``, ``x^1 = x``:
vector square roots and multiplies, equal to ``pow`` up to float rounding (a few ulp: well
inside the exact check's tolerance, which every build still passes). Finite negative inputs give
NaN as ``pow`` does for a non-integer exponent; ``-inf`` and ``-0`` differ from ``pow`` (NaN
and +0 where ``pow`` gives +inf and -0), which a LRN's positive base never meets. Other
exponents are left as they are.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from rebirth_tvm.backend.kernels.base import rewrite_functions

#: exponent → how to build ``x^exponent`` from ``x`` (with the op constructors)
_FORMS = {
    0.5: lambda x: relax.op.sqrt(x),
    0.75: lambda x: relax.op.multiply(relax.op.sqrt(x), relax.op.sqrt(relax.op.sqrt(x))),
    1.0: lambda x: x,
    2.0: lambda x: relax.op.multiply(x, x),
}


def _scalar(expr) -> float | None:
    if not isinstance(expr, tvm.ir.GenericConst):
        return None
    value = expr.value.numpy()
    # Rank 0 only: a (1, 1, 1) exponent would broadcast the result to a higher rank.
    if value.ndim != 0 or not np.issubdtype(value.dtype, np.floating):
        return None
    return float(value.reshape(()))


@relax.expr_functor.mutator
class _Power(relax.PyExprMutator):
    def visit_call_(self, op):
        call = super().visit_call_(op)
        if not isinstance(call.op, tvm.ir.Op) or call.op.name != "relax.power":
            return call
        base, exponent = call.args
        value = _scalar(exponent)
        if value is None or value not in _FORMS or getattr(base.ty, "dtype", None) not in ("float32", "float64", "float16"):
            return call
        return _FORMS[value](base)


@tvm.transform.module_pass(opt_level=0, name="StrengthReducePower")
def strength_reduce_power(mod: tvm.IRModule, ctx) -> tvm.IRModule:
    """Rewrite ``power(x, c)`` for ``c`` in 0.5, 0.75, 1, 2 (see the module docstring)."""
    return rewrite_functions(mod, _Power(mod))
