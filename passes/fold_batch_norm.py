"""FoldBatchNorm: ``conv2d (+ bias) → batch_norm (inference)`` becomes one ``conv2d + bias``.

Exact (up to float rounding). With ``s = gamma / sqrt(var + eps)``::

    W' = W * s[o]            (per output channel; any ``groups``, depthwise included)
    b' = (b - mean) * s + beta          (b = 0 when the conv has no bias)

It is a strict superset of ``relax.transform.FoldBatchnormToConv2D``, which misses the form the
ONNX importer emits for a Conv with a bias (``add(conv2d, bias)`` in front of the BN) and fp16.

fp16 models are folded in float64 and cast back, so the fold adds one rounding per weight.

Refuses (each site is recorded with its reason) when:

* the batch_norm runs in training mode (it normalises with batch statistics at run time);
* it normalises an axis other than 1 (channels of NCHW);
* gamma, beta, mean or var are not constants;
* its mean/var outputs are read by someone;
* its input is not a conv2d (+ per-channel constant bias): e.g. a transposed conv, a pool;
* the conv's weight is not a constant, or is shared with another consumer;
* the conv's output (or its bias add) is read by someone else too, which would duplicate the conv;
* the conv layout is not NCHW/OIHW, or the dtype is not a float type.

Note: run on a module whose parameters are bound (``rebirth_tvm.load`` does this).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from rebirth_tvm.core.graph import FunctionGraph, op_name

from ._conv import ConvUnit, emit_conv, match_conv
from ._rewrite import SitePass
from ._sites import REFUSED, REWRITTEN, SiteRecord


def fold_batch_norm_into(unit: ConvUnit, gamma, beta, mean, var, eps: float):
    """The folded (weight, bias) in float64."""
    scale = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps)
    weight = unit.weight.astype(np.float64) * scale.reshape(-1, 1, 1, 1)
    bias = np.zeros(unit.channels) if unit.bias is None else unit.bias.astype(np.float64)
    bias = (bias - mean.astype(np.float64)) * scale + beta.astype(np.float64)
    return weight, bias


@tvm.transform.module_pass(opt_level=0, name="FoldBatchNorm")
class FoldBatchNorm(SitePass):
    """Fold inference-mode batch_norm into the conv2d (+ bias) that feeds it. Exact."""

    pass_name = "FoldBatchNorm"

    def plan_function(self, graph: FunctionGraph, records: list[SiteRecord]):
        plan = {}
        for binding in graph.dataflow_bindings():
            value = binding.value
            if not (isinstance(value, relax.TupleGetItem) and value.index == 0):
                continue
            bn = graph.producer(value.tuple_value)
            if op_name(bn) != "relax.nn.batch_norm":
                continue
            site = binding.var.name
            result = self._check(graph, bn, value.tuple_value)
            if isinstance(result, str):
                records.append(SiteRecord(self.pass_name, site, REFUSED, result))
                continue
            unit, gamma, beta, mean, var = result
            weight, bias = fold_batch_norm_into(unit, gamma, beta, mean, var, float(bn.attrs.epsilon))
            plan[binding.var] = lambda em, u=unit, w=weight, b=bias, n=site: emit_conv(em, u, w, b, n + "_conv")
            detail = {"conv": unit.conv_var.name, "had_bias": unit.bias is not None, "dtype": unit.dtype}
            note = "folded into " + unit.out_var.name
            if unit.dtype == "float16":
                note += " (computed in float64, cast back to float16)"
            records.append(SiteRecord(self.pass_name, site, REWRITTEN, note, detail=detail))
        return plan

    @staticmethod
    def _check(graph: FunctionGraph, bn: relax.Call, bn_var):
        attrs = bn.attrs
        if attrs.training:
            return "batch_norm is in training mode (it normalises with batch statistics at run time)"
        ndim = len(bn.args[0].ty.shape) if getattr(bn.args[0].ty, "shape", None) is not None else 4
        if int(attrs.axis) % ndim != 1:
            return f"batch_norm normalises axis {int(attrs.axis)}, only the channel axis 1 (NCHW) is folded"
        stats = [graph.constant(a) for a in bn.args[1:5]]
        if any(s is None for s in stats):
            return "batch_norm gamma/beta/mean/var are not constants"
        for user in graph.live_users(bn_var):
            item = graph.value_of.get(user)
            if not (isinstance(item, relax.TupleGetItem) and item.index == 0):
                return "batch_norm's mean/var outputs are used"
        unit = match_conv(graph, bn.args[0])
        if isinstance(unit, str):
            return unit
        if not graph.single_use(unit.out_var):
            users = ", ".join(graph.name(u) for u in graph.live_users(unit.out_var) if u is not bn_var)
            return f"conv output {unit.out_var.name} is also used by {users} (folding would duplicate the conv)"
        gamma, beta, mean, var = stats
        channels = unit.channels
        if any(s.size != channels for s in stats):
            return f"batch_norm has {gamma.size} channels, the conv {channels}"
        if not attrs.scale:
            gamma = np.ones_like(gamma)
        if not attrs.center:
            beta = np.zeros_like(beta)
        return unit, gamma.reshape(-1), beta.reshape(-1), mean.reshape(-1), var.reshape(-1)
