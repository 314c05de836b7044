"""The ONNX importer's ``Clip`` (ReLU6 in every MobileNet) back as Relax ``maximum``/``minimum``.

TVM's importer writes ``Clip`` as two ``call_tir``s of TOPI kernels (``emit_te``), which Relax
passes cannot see into: ``ConvertLayout`` leaves them in NCHW, so each ReLU6 after a blocked
conv became a layout transform out, the clip, and a transform back in (MobileNetV2: 70
transforms, a third of its time). As the Relax ops they are, the blocked layout carries through
them and fusion folds them into the conv's write-back.

A ``call_tir`` is lifted only when its PrimFunc is *structurally equal* to what the importer's
``emit_te(topi.maximum | topi.minimum, x, bound)`` makes for the same shapes and a rank-0
bound: the rewrite is the identity, not a guess from the function's name.
"""

from __future__ import annotations

import tvm
import tvm_ffi
from tvm import relax, topi

from rebirth_tvm.backend.kernels.base import rewrite_functions

#: TOPI kernel the importer emits → the Relax op that computes the same
_LIFTABLE = ((topi.maximum, relax.op.maximum), (topi.minimum, relax.op.minimum))


def _emitted(te_op, x_ty, bound_ty) -> tvm.tirx.PrimFunc:
    """The PrimFunc ``emit_te(te_op, x, bound)`` makes for these types."""
    bb = relax.BlockBuilder()
    x, bound = relax.Var("x", x_ty), relax.Var("bound", bound_ty)
    with bb.function("main", [x, bound]):
        out = bb.emit_te(te_op, x, bound)
        bb.emit_func_output(out)
    mod = bb.get()
    return next(f for _, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc))


@relax.expr_functor.mutator
class _LiftClipBounds(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule):
        super().__init__(mod)
        self.mod = mod

    def visit_call_(self, op):
        call = super().visit_call_(op)
        if not isinstance(call.op, tvm.ir.Op) or call.op.name != "relax.call_tir" or len(call.args) != 2:
            return call
        callee, args = call.args
        if not isinstance(callee, tvm.ir.GlobalVar) or not isinstance(args, relax.Tuple) or len(args.fields) != 2:
            return call
        x, bound = args.fields
        bound_ty, x_ty = getattr(bound, "ty", None), getattr(x, "ty", None)
        if not isinstance(bound_ty, relax.TensorType) or bound_ty.ndim != 0 or not isinstance(x_ty, relax.TensorType) \
                or x_ty.shape is None or bound_ty.dtype != x_ty.dtype:
            return call
        func = self.mod[callee]
        for te_op, relax_op in _LIFTABLE:
            if tvm_ffi.structural_equal(func, _emitted(te_op, x_ty, bound_ty), map_free_vars=True):
                return relax_op(x, bound)
        return call


@tvm.transform.module_pass(opt_level=0, name="LiftClipBounds")
def lift_clip_bounds(mod: tvm.IRModule, ctx) -> tvm.IRModule:
    """``call_tir`` of the importer's ``maximum``/``minimum`` kernels → Relax ops (module docstring).
    The kernels left without callers go with the pipeline's dead-code elimination."""
    return rewrite_functions(mod, _LiftClipBounds(mod))
