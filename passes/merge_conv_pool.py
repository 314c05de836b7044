"""MergeConvPool: ``conv2d (+bias) (+ReLU) → max/avg pool`` becomes one strided ``conv2d (+ReLU)``.

Relearned, not exact (DeepRebirth's streamline merge). The new conv's stride is the product of
the conv's and the pool's strides, and its padding is chosen so its output shape equals the
pool's exactly (ceil mode and asymmetric padding included). Kernel policy:

* ``"cover"``: the kernel grows to the pool's receptive field, ``kc + (kp - 1)·sc``.
  Initial weights are the conv averaged over the pool window, which is *exact* for an average
  pool without padding and no ReLU between.
* ``"keep"``: the conv's own kernel, centred on that receptive field; cheaper, always relearned.
* ``"auto"`` (default): ``"cover"`` where the strided conv still does no more MACs than the old
  conv (GoogLeNet's 7×7 conv1 + pool: 11×11 at a quarter of the positions, 0.62× the MACs),
  ``"keep"`` elsewhere (a 1×1 conv + 3×3/s2 pool would grow to 3×3: 2.25× the MACs).

Weights come from a retraining hook (``rebirth_tvm.hooks``) that sees the site's input
activations computed by the already rewritten network below it (sites are done bottom-up, one at
a time) and the teacher block's outputs: pre-activation for max pooling (ReLU and max commute),
the block's own output for average pooling. Each site reports its fidelity on held-out
calibration inputs before (initial weights) and after relearning: relative MSE and cosine.

Refuses, with the reason recorded, when: the conv is grouped or dilated; an intermediate value is
read elsewhere; the pool is dilated or not NCHW; the conv weight is not a constant; no padding
reproduces the pool's output shape.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from rebirth_tvm.core.conv_math import ConvGeometry, conv_macs
from rebirth_tvm.core.errors import OptionError
from rebirth_tvm.core.graph import FunctionGraph, op_name, shape_of

from ._conv import match_conv_relu
from ._relearn import RelearnPass, RelearnSite, compiled_teacher, emit_conv_unit
from .distribute_pool import pool_like

_POOLS = ("relax.nn.max_pool2d", "relax.nn.avg_pool2d")

#: How a conv+pool merge sizes the new kernel (``pool_kernel``; see the module docstring).
POOL_KERNELS = ("auto", "cover", "keep")


def check_pool_kernel(policy: str) -> None:
    if policy not in POOL_KERNELS:
        raise OptionError(f"pool_kernel must be 'auto', 'cover' or 'keep', not {policy!r}")


def _pairs(values):
    values = [int(v) for v in values]
    return values if len(values) == 2 else values * 2


@tvm.transform.module_pass(opt_level=0, name="MergeConvPool")
class MergeConvPool(RelearnPass):
    """Merge conv (+ReLU) → pool into one strided conv whose weights a retraining hook relearns.

    Parameters
    ----------
    calibration, hook, sites: see :class:`RelearnPass`.
    pool_kernel: ``"auto"`` (default), ``"cover"`` or ``"keep"`` (see the module docstring).
    """

    pass_name = "MergeConvPool"

    def __init__(self, calibration: np.ndarray, hook="lstsq", pool_kernel: str = "auto", sites="all"):
        check_pool_kernel(pool_kernel)
        super().__init__(calibration, hook, sites)
        self.pool_kernel = pool_kernel

    def find_sites(self, graph: FunctionGraph):
        for binding in graph.dataflow_bindings():
            if op_name(binding.value) in _POOLS:
                yield binding.var.name, self._match(graph, binding.var, binding.value)

    def _match(self, graph: FunctionGraph, pool_var, pool):
        attrs = pool.attrs
        if attrs.layout != "NCHW" or any(int(d) != 1 for d in attrs.dilation):
            return "the pool is dilated or not NCHW"
        matched = match_conv_relu(graph, pool.args[0])
        if isinstance(matched, str):
            return matched
        unit, relu = matched
        conv = unit.conv.attrs
        kc, sc = _pairs(unit.weight.shape[2:]), _pairs(conv.strides)
        kp, sp = _pairs(attrs.pool_size), _pairs(attrs.strides)
        pc, pp = [int(p) for p in conv.padding], [int(p) for p in attrs.padding]
        in_shape = shape_of(unit.conv.args[0])
        out_shape = shape_of(pool_var)
        policy = self.pool_kernel
        if policy == "auto":
            # Grow the kernel only when the strided conv still does no more work than the old one.
            cover = (kc[0] + (kp[0] - 1) * sc[0]) * (kc[1] + (kp[1] - 1) * sc[1]) * int(np.prod(shape_of(pool_var)[2:]))
            policy = "cover" if cover <= kc[0] * kc[1] * int(np.prod(shape_of(unit.conv)[2:])) else "keep"
        kernel, padding = [], [0, 0, 0, 0]
        for axis in (0, 1):
            field = kc[axis] + (kp[axis] - 1) * sc[axis]
            size = field if policy == "cover" else kc[axis]
            before = max(pc[axis] + pp[axis] * sc[axis] - (field - size) // 2, 0)
            stride = sc[axis] * sp[axis]
            length, out = in_shape[2 + axis], out_shape[2 + axis]
            after = max(0, (out - 1) * stride + size - length - before)
            if (length + before + after - size) // stride + 1 != out:
                return f"no padding gives the pool's output size {out} along axis {2 + axis}"
            kernel.append(size)
            padding[axis], padding[axis + 2] = before, after
        geometry = ConvGeometry(int(in_shape[1]), unit.channels, tuple(kernel), (sc[0] * sp[0], sc[1] * sp[1]), tuple(padding))
        init = np.zeros((unit.channels, in_shape[1], *kernel), dtype=np.float64)
        if policy == "cover":
            for a in range(kp[0]):
                for b in range(kp[1]):
                    init[:, :, a * sc[0]: a * sc[0] + kc[0], b * sc[1]: b * sc[1] + kc[1]] += unit.weight
            init /= kp[0] * kp[1]
        else:
            init[:] = unit.weight
        bias = unit.bias if unit.bias is not None else np.zeros(unit.channels)
        pattern = f"{'conv+relu' if relu else 'conv'}+{op_name(pool).replace('relax.nn.', '')} ({policy})"
        return RelearnSite(
            pool_var.name, pattern, pool_var, unit.conv.args[0], unit, geometry, init, np.asarray(bias, np.float64),
            relu, _teacher(unit, pool, keep_relu=relu and op_name(pool) == "relax.nn.avg_pool2d"),
            conv_macs(shape_of(unit.conv), unit.weight.shape),
        )


def _teacher(unit, pool, keep_relu: bool):
    """The original block as a function of its input: pre-activation for max pooling."""

    def block(bb, data):
        y = emit_conv_unit(bb, unit, data)
        if keep_relu:
            y = bb.emit(relax.op.nn.relu(y))
        return pool_like(pool, y)

    return compiled_teacher(block)
