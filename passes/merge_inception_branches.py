"""DeepRebirth's branch merging rules, relearned, with the work they cost on view
(run by :class:`~rebirth_tvm.passes.MergeInceptionBranches` and :class:`~rebirth_tvm.passes.Rebirth`).

Two rules, both replacing part of an inception branch by one conv that reads the module input:

* **pool branch** — ``max_pool 3×3/s1 → conv (+bias)`` (the projection, 1×1 in GoogLeNet, or
  already a strided conv once a following pool was merged into it) becomes one conv on the
  pool's input. ``branch_pool_kernel="keep"`` (default): the conv as it is, the pool is simply gone (same
  MACs, one kernel and one buffer fewer). ``"cover"``: the kernel grows by the pool window (a
  1×1 becomes 3×3, 9× the MACs). Initial weights: the projection (averaged over the window for
  ``"cover"``).
* **reduce + k×k** — ``conv 1×1 (+bias) → ReLU → conv k×k (+bias)`` becomes one k×k conv on the
  module input with the k×k conv's output channels (so the module's output shape is unchanged).
  Initial weights: the two convs composed as if the ReLU were not there.

Our notes measured the literal reading of branch merging making GoogLeNet *slower* (merged convs
read the full module input: +13% MACs, +59% parameters). So every site reports its MACs and
parameters before and after, and by default only rewrites that do not add MACs are made
(``allow_more_work=True`` makes the others too); a site left alone says by how much it would
have grown. A ReLU after the replaced conv stays where it is: targets are pre-activation.

Refuses, with the reason recorded, when: a value inside the branch is read elsewhere; a conv is
grouped, dilated, not constant, or the reduce is not 1×1/stride 1; the pool is not a stride-1
max pool that keeps the spatial size; the rewrite would add MACs (unless allowed).
"""

from __future__ import annotations

import numpy as np
from tvm import relax

from rebirth_tvm.core.conv_math import ConvGeometry, conv_macs
from rebirth_tvm.core.errors import OptionError
from rebirth_tvm.core.graph import FunctionGraph, op_name, shape_of

from ._conv import match_conv, match_conv_at, plain_conv_refusal
from ._relearn import RelearnPass, RelearnSite, compiled_teacher, emit_conv_unit
from .distribute_pool import pool_like

#: How a pool-branch merge sizes the new kernel (``branch_pool_kernel``; see the module docstring).
BRANCH_POOL_KERNELS = ("keep", "cover")


def _work_check(name: str, before: int, after: int, params_before: int, params_after: int, allow: bool):
    if after > before and not allow:
        return (f"{name} would raise MACs from {before:,} to {after:,} ({after / before:.2f}x) and parameters from "
                f"{params_before:,} to {params_after:,}; allow_more_work=True merges it anyway")
    return None


class _BranchRule(RelearnPass):
    def __init__(self, calibration, hook="lstsq", sites="all", allow_more_work: bool = False, branch_pool_kernel: str = "keep"):
        super().__init__(calibration, hook, sites)
        self.allow_more_work = allow_more_work
        if branch_pool_kernel not in BRANCH_POOL_KERNELS:
            raise OptionError(f"branch_pool_kernel must be 'keep' or 'cover', not {branch_pool_kernel!r}")
        self.branch_pool_kernel = branch_pool_kernel


class MergePoolProjection(_BranchRule):
    """Pool branch: max_pool 3×3/s1 → projection conv becomes one conv on the module input."""

    pass_name = "MergeInceptionBranches"

    def find_sites(self, graph: FunctionGraph):
        for binding in graph.dataflow_bindings():
            if op_name(binding.value) != "relax.nn.conv2d":
                continue
            pool = graph.producer(binding.value.args[0])
            if op_name(pool) != "relax.nn.max_pool2d":
                continue
            unit = match_conv_at(graph, binding.var)
            if isinstance(unit, str):
                continue
            yield from self._site(graph, unit, pool, ConvGeometry)

    def _site(self, graph, unit, pool, ConvGeometry):
        name = unit.out_var.name
        pool_var = unit.conv.args[0]
        a = pool.attrs
        in_shape, pool_shape = shape_of(pool.args[0]), shape_of(pool_var)
        if any(int(s) != 1 for s in a.strides) or in_shape[2:] != pool_shape[2:]:
            yield name, "the pool before the projection is not a stride-1, size-keeping max pool"
            return
        reason = plain_conv_refusal(unit)
        if reason:
            yield name, reason
            return
        if not graph.single_use(pool_var):
            yield name, f"the pool output {graph.name(pool_var)} is also read elsewhere"
            return
        # conv(pool(x)): "keep" drops the pool and keeps the conv as it is; "cover" grows the
        # kernel by the pool window (the pool has stride 1), starting from conv(avg_pool(x)).
        kp, pp = [int(k) for k in a.pool_size], [int(p) for p in a.padding]
        kc, pc = [int(k) for k in unit.weight.shape[2:]], [int(p) for p in unit.conv.attrs.padding]
        stride = tuple(int(v) for v in unit.conv.attrs.strides)
        if self.branch_pool_kernel == "keep":
            kernel, padding = tuple(kc), tuple(pc)
            weight = unit.weight.astype(np.float64)
        else:
            kernel = (kc[0] + kp[0] - 1, kc[1] + kp[1] - 1)
            padding = (pc[0] + pp[0], pc[1] + pp[1], pc[2] + pp[2], pc[3] + pp[3])
            weight = np.zeros((unit.channels, unit.weight.shape[1], *kernel))
            for dy in range(kp[0]):
                for dx in range(kp[1]):
                    weight[:, :, dy:dy + kc[0], dx:dx + kc[1]] += unit.weight / (kp[0] * kp[1])
        geometry = ConvGeometry(int(in_shape[1]), unit.channels, kernel, stride, padding)
        bias = np.zeros(unit.channels) if unit.bias is None else unit.bias.astype(np.float64)
        out_shape = shape_of(unit.conv)
        before, after = conv_macs(out_shape, unit.weight.shape), conv_macs(out_shape, weight.shape)
        refusal = _work_check("merging the pool branch", before, after, unit.weight.size, weight.size, self.allow_more_work)
        if refusal:
            yield name, refusal
            return

        def block(bb, data):
            return emit_conv_unit(bb, unit, bb.emit(pool_like(pool, data)))

        yield name, RelearnSite(name, f"max_pool+conv{kc[0]}x{kc[1]} (pool branch, {self.branch_pool_kernel})", unit.out_var, pool.args[0], unit,
                                geometry, weight, bias, False, compiled_teacher(block), before)


class MergeReduceConv(_BranchRule):
    """1×1 reduce → ReLU → k×k conv becomes one k×k conv on the module input."""

    pass_name = "MergeInceptionBranches"

    def find_sites(self, graph: FunctionGraph):
        for binding in graph.dataflow_bindings():
            if op_name(binding.value) != "relax.nn.conv2d":
                continue
            relu = graph.producer(binding.value.args[0])
            if op_name(relu) != "relax.nn.relu":
                continue
            reduce = match_conv(graph, relu.args[0])
            if isinstance(reduce, str) or [int(k) for k in reduce.weight.shape[2:]] != [1, 1]:
                continue
            unit = match_conv_at(graph, binding.var)
            if isinstance(unit, str):
                continue
            name = unit.out_var.name
            relu_var = binding.value.args[0]
            reason = plain_conv_refusal(unit) or plain_conv_refusal(reduce)
            if reason:
                yield name, reason
                continue
            if any(int(s) != 1 for s in reduce.conv.attrs.strides) or any(int(p) for p in reduce.conv.attrs.padding):
                yield name, "the reduce is not a 1x1 stride-1 unpadded conv"
                continue
            if not (graph.single_use(relu_var) and graph.single_use(reduce.out_var)):
                yield name, "the reduce's output is also read elsewhere"
                continue
            in_shape = shape_of(reduce.conv.args[0])
            a = unit.conv.attrs
            geometry = ConvGeometry(int(in_shape[1]), unit.channels, tuple(int(k) for k in unit.weight.shape[2:]),
                                    tuple(int(s) for s in a.strides), tuple(int(p) for p in a.padding))
            w1 = reduce.weight.astype(np.float64)[:, :, 0, 0]  # (r, in)
            w2 = unit.weight.astype(np.float64)  # (out, r, k, k)
            weight = np.einsum("orhw,ri->oihw", w2, w1)
            b1 = np.zeros(reduce.channels) if reduce.bias is None else reduce.bias.astype(np.float64)
            b2 = np.zeros(unit.channels) if unit.bias is None else unit.bias.astype(np.float64)
            bias = b2 + np.einsum("orhw,r->o", w2, b1)
            out_shape = shape_of(unit.conv)
            before = conv_macs(shape_of(reduce.conv), reduce.weight.shape) + conv_macs(out_shape, unit.weight.shape)
            after = conv_macs(out_shape, weight.shape)
            refusal = _work_check("merging the reduce into the conv", before, after,
                                  reduce.weight.size + unit.weight.size, weight.size, self.allow_more_work)
            if refusal:
                yield name, refusal
                continue

            def block(bb, data, reduce=reduce, unit=unit):
                return emit_conv_unit(bb, unit, bb.emit(relax.op.nn.relu(emit_conv_unit(bb, reduce, data))))

            k = geometry.kernel
            yield name, RelearnSite(name, f"conv1x1+relu+conv{k[0]}x{k[1]} (reduce branch)", unit.out_var, reduce.conv.args[0],
                                    unit, geometry, weight, bias, False, compiled_teacher(block), before)
