"""The two convolutions a conv's gradient is made of, rewritten into ops the fast kernels run.

``relax.transform.Gradient`` writes the gradient of ``conv2d`` as

* ``conv2d_transpose`` for the input's gradient, which TVM 0.27 legalizes to plain loops (the
  blocked-conv template never sees it): a 5×5 stride-2 one of fashion_googlenet's reborn
  network took 1.7 ms for 1.9 M multiply-adds;
* a ``conv2d`` in the ``CNHW`` / ``IOHW`` / ``CNHW`` layouts for the weight's gradient (the batch
  plays the input channels, the output's gradient the kernel), a shape no conv template is made
  for: its "kernel" is the whole feature map and its output the size of the weight.

Distillation runs these on every step, so they were most of its time. Both are rewritten here,
before the blocked layout, into exactly the same sums in other ops:

* ``conv2d_transpose(x, w)`` = ``conv2d(dilate(x, stride), w`` with in/out swapped and the
  kernel flipped, padded by ``k − 1 − pad`` (plus the output padding at the bottom and right)``)``,
  a stride-1 conv the blocked template takes. ``dilate`` puts ``stride − 1`` zeros between the
  pixels (a reshape, a pad and a reshape).
* the weight-gradient conv = im2col + matmul: each kernel tap's strided slice of the padded
  input, stacked, multiplied by the output's gradient flattened over (batch, pixels).

Each is exact up to float summation order. What these forms don't cover (groups, a dilated
transpose, padding wider than the kernel, symbolic shapes, other layouts) is left as it was.
"""

from __future__ import annotations

import tvm
from tvm import relax

from rebirth_tvm.backend.kernels.base import rewrite_functions, static_shape

#: the layouts ``relax.transform.Gradient`` gives the weight-gradient conv of an NCHW conv
WEIGHT_GRADIENT_LAYOUTS = ("CNHW", "IOHW", "CNHW")


def _ints(values) -> list[int]:
    return [int(v) for v in values]


def _out_dtype(call: relax.Call) -> str:
    """The call's output dtype (its attribute is ``None`` when it follows the input's)."""
    return str(call.attrs.out_dtype) if call.attrs.out_dtype is not None else str(call.ty.dtype)


def _dilated(bb: relax.BlockBuilder, x: relax.Expr, shape: list[int], stride: tuple[int, int]) -> relax.Expr:
    """``x`` (NCHW) with ``stride − 1`` zeros after every row and column, the last ones included:
    ``[n, c, h·sh, w·sw]``."""
    n, c, h, w = shape
    sh, sw = stride
    if (sh, sw) == (1, 1):
        return x
    spread = bb.emit(relax.op.reshape(x, [n, c, h, 1, w, 1]))
    spread = bb.emit(relax.op.nn.pad(spread, [0, 0, 0, 0, 0, 0, 0, sh - 1, 0, 0, 0, sw - 1]))
    return bb.emit(relax.op.reshape(spread, [n, c, h * sh, w * sw]))


def transpose_as_conv(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr | None:
    """``conv2d_transpose`` (NCHW data, IOHW weight, one group, no dilation) as a stride-1
    ``conv2d`` on the dilated input; ``None`` where that form does not apply."""
    attrs = call.attrs
    data, weight = call.args
    shape, weight_shape = static_shape(data), static_shape(weight)
    if shape is None or weight_shape is None or len(shape) != 4 or int(attrs.groups) != 1 \
            or (str(attrs.data_layout), str(attrs.kernel_layout), str(attrs.out_layout)) != ("NCHW", "IOHW", "NCHW") \
            or any(d != 1 for d in _ints(attrs.dilation)):
        return None
    sh, sw = _ints(attrs.strides)
    top, left, bottom, right = _ints(attrs.padding)
    extra_h, extra_w = _ints(attrs.output_padding)
    _, _, kh, kw = weight_shape
    # Padding of the stride-1 conv; the dilated input already ends with stride − 1 zeros.
    pads = [kh - 1 - top, kw - 1 - left, kh - 1 - bottom + extra_h - (sh - 1), kw - 1 - right + extra_w - (sw - 1)]
    if min(pads[:2]) < 0:
        return None  # padding wider than the kernel: the conv would need a crop first
    x = _dilated(bb, data, shape, (sh, sw))
    if min(pads[2:]) < 0:  # drop trailing zeros the output does not reach
        height, width = shape[2] * sh + min(pads[2], 0), shape[3] * sw + min(pads[3], 0)
        x = bb.emit(relax.op.strided_slice(x, axes=[2, 3], begin=[0, 0], end=[height, width]))
        pads = pads[:2] + [max(pads[2], 0), max(pads[3], 0)]
    # IOHW → OIHW with both spatial axes reversed: the transpose's scatter is this gather.
    flipped = bb.emit(relax.op.flip(relax.op.flip(relax.op.permute_dims(weight, [1, 0, 2, 3]), axis=2), axis=3))
    out_dtype = _out_dtype(call)
    return relax.op.nn.conv2d(x, flipped, strides=1, padding=pads, dilation=1, groups=1,
                              data_layout="NCHW", kernel_layout="OIHW", out_layout="NCHW", out_dtype=out_dtype)


def weight_gradient_as_matmul(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr | None:
    """The weight-gradient ``conv2d`` (layouts :data:`WEIGHT_GRADIENT_LAYOUTS`, one group) as
    im2col + matmul; ``None`` where that form does not apply.

    With ``x`` ``[n, i, h, w]`` read as CNHW, ``g`` ``[n, o, p, q]`` as IOHW and the output
    ``[o, i, ka, kb]`` as CNHW, the conv computes
    ``out[o, i, a, b] = Σ_{n, y, x} pad(x)[n, i, a·stride + y·dilation, b·stride + x·dilation] · g[n, o, y, x]``.
    """
    attrs = call.attrs
    data, grad = call.args
    shape, grad_shape, out_shape = static_shape(data), static_shape(grad), static_shape(call)
    if shape is None or grad_shape is None or out_shape is None or len(shape) != 4 or int(attrs.groups) != 1 \
            or (str(attrs.data_layout), str(attrs.kernel_layout), str(attrs.out_layout)) != WEIGHT_GRADIENT_LAYOUTS:
        return None
    n, i, _, _ = shape
    _, o, p, q = grad_shape
    _, _, ka, kb = out_shape
    step_h, step_w = _ints(attrs.strides)
    spread_h, spread_w = _ints(attrs.dilation)
    top, left, bottom, right = _ints(attrs.padding)
    padded = data
    if any((top, left, bottom, right)):
        padded = bb.emit(relax.op.nn.pad(data, [0, 0, 0, 0, top, bottom, left, right]))
    taps = [bb.emit(relax.op.strided_slice(padded, axes=[2, 3], begin=[a * step_h, b * step_w],
                                           end=[a * step_h + spread_h * (p - 1) + 1, b * step_w + spread_w * (q - 1) + 1],
                                           strides=[spread_h, spread_w]))
            for a in range(ka) for b in range(kb)]
    columns = taps[0] if len(taps) == 1 else bb.emit(relax.op.concat(taps, axis=1))  # [n, ka·kb·i, p, q]
    columns = bb.emit(relax.op.reshape(relax.op.permute_dims(columns, [0, 2, 3, 1]), [n * p * q, ka * kb * i]))
    rows = bb.emit(relax.op.reshape(relax.op.permute_dims(grad, [1, 0, 2, 3]), [o, n * p * q]))
    out_dtype = _out_dtype(call)
    product = bb.emit(relax.op.matmul(rows, columns, out_dtype=out_dtype))  # [o, (a, b, i)]
    return relax.op.permute_dims(relax.op.reshape(product, [o, ka, kb, i]), [0, 3, 1, 2])


@relax.expr_functor.mutator
class _RewriteConvGradients(relax.PyExprMutator):
    def visit_call_(self, op):
        call = super().visit_call_(op)
        if not isinstance(call.op, tvm.ir.Op) or call.op.name not in ("relax.nn.conv2d_transpose", "relax.nn.conv2d"):
            return call
        call = self.builder_.normalize(call)  # its type: the rewrites read the output's shape
        rewrite = transpose_as_conv if call.op.name == "relax.nn.conv2d_transpose" else weight_gradient_as_matmul
        rewritten = rewrite(self.builder_, call)
        return call if rewritten is None else rewritten


@tvm.transform.module_pass(opt_level=0, name="RewriteConvGradients")
def rewrite_conv_gradients(mod: tvm.IRModule, ctx) -> tvm.IRModule:
    """``conv2d_transpose`` and weight-gradient convs → a blocked-layout conv and im2col + matmul
    (module docstring). Everything else, inference convs included, is left as it was."""
    return rewrite_functions(mod, _RewriteConvGradients(mod))
