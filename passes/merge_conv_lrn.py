"""MergeConvLRN: ``conv2d (+bias) (+ReLU) → LRN`` becomes one ``conv2d (+ReLU)``.

Relearned, not exact (DeepRebirth's streamline merge): local response normalisation divides each
channel by ``(bias + alpha/size · Σ_window x²)^beta`` over ``size`` neighbouring channels. It holds
no weights, costs a lot on devices (43.5% of GoogLeNet's onnxruntime time in our notes), and a
conv with relearned weights absorbs most of what it does. The new conv keeps the old conv's
geometry; its initial weights are the old conv's.

The ONNX importer decomposes LRN into eight ops, which is the form matched here::

    sq = multiply(x, x); e = expand_dims(sq, 1); a = avg_pool3d(e, (size,1,1), count_include_pad)
    d = power(add(multiply(squeeze(a, 1), alpha), bias), beta); y = divide(x, d)

The teacher is the original block evaluated in float64 (conv, ReLU, then LRN). Where a ReLU sits
before the LRN the new block ends in a ReLU too, and the targets are the LRN's outputs (they are
non-negative, so the ReLU cannot hurt the fit).

Refuses, with the reason recorded, when: the eight ops do not have that form (other axis, pool
shape, non-constant alpha/bias/beta); a value inside the block is read elsewhere; the input is
not a conv (+bias) (+ReLU); the conv is grouped or dilated, or its weight is not a constant.
"""

from __future__ import annotations

import numpy as np
import tvm

from rebirth_tvm.core.conv_math import ConvGeometry, conv2d_numpy, conv_macs
from rebirth_tvm.core.graph import FunctionGraph, op_name, shape_of

from ._conv import match_conv_relu
from ._relearn import RelearnPass, RelearnSite


def lrn_numpy(x: np.ndarray, size: int, alpha: float, beta: float, bias: float, pad: tuple[int, int]) -> np.ndarray:
    """LRN across channels exactly as the importer's decomposition computes it (float64)."""
    x = x.astype(np.float64)
    squares = np.pad(x * x, ((0, 0), pad, (0, 0), (0, 0)))
    window = np.lib.stride_tricks.sliding_window_view(squares, size, axis=1).sum(axis=-1)[:, : x.shape[1]]
    return x / (bias + alpha * window / size) ** beta


def _scalar(graph: FunctionGraph, expr) -> float | None:
    value = graph.constant(expr)
    return None if value is None or value.size != 1 else float(value.reshape(()))


@tvm.transform.module_pass(opt_level=0, name="MergeConvLRN")
class MergeConvLRN(RelearnPass):
    """Merge conv (+ReLU) → LRN into one conv (+ReLU) relearned by a retraining hook.

    Parameters: see :class:`RelearnPass`.
    """

    pass_name = "MergeConvLRN"

    def find_sites(self, graph: FunctionGraph):
        for binding in graph.dataflow_bindings():
            if op_name(binding.value) == "relax.divide":
                lrn = self._lrn(graph, binding.var, binding.value)
                if lrn is not None:
                    yield binding.var.name, self._match(graph, binding.var, lrn)

    @staticmethod
    def _lrn(graph: FunctionGraph, out_var, divide):
        """The LRN parameters if ``divide`` ends the importer's LRN chain, else None (not a site)."""
        x, denom = divide.args
        chain = []  # (op, var) from the power back to the squaring multiply
        expected = ["relax.power", "relax.add", "relax.multiply", "relax.squeeze", "relax.nn.avg_pool3d", "relax.expand_dims", "relax.multiply"]
        var = denom
        for name in expected:
            value = graph.producer(var)
            if op_name(value) != name:
                return None
            chain.append((value, var))
            var = value.args[0]
        power, add, scale, squeeze, pool, expand, square = (v for v, _ in chain)
        if not (square.args[0].same_as(x) and square.args[1].same_as(x)):
            return None
        beta, bias, alpha = _scalar(graph, power.args[1]), _scalar(graph, add.args[1]), _scalar(graph, scale.args[1])
        attrs = pool.attrs
        size = int(attrs.pool_size[0])
        pad = [int(p) for p in attrs.padding]
        well_formed = (
            None not in (beta, bias, alpha)
            and [int(a) for a in expand.attrs.axis] == [1] and [int(a) for a in squeeze.attrs.axis] == [1]
            and [int(s) for s in attrs.pool_size[1:]] == [1, 1] and all(int(s) == 1 for s in attrs.strides)
            and bool(attrs.count_include_pad) and pad[1:3] == [0, 0] and pad[4:] == [0, 0]
        )
        inner = [v for _, v in chain] + [out_var]
        return dict(x=x, size=size, alpha=alpha, beta=beta, bias=bias, pad=(pad[0], pad[3]),
                    well_formed=well_formed, inner=inner, square_var=chain[-1][1])

    def _match(self, graph: FunctionGraph, out_var, lrn):
        if not lrn["well_formed"]:
            return "the LRN decomposition has an unexpected form (axis, window, or non-constant alpha/beta/bias)"
        for var in lrn["inner"][:-1]:
            if not graph.single_use(var):
                return f"{var.name} inside the LRN is also read elsewhere"
        x = lrn["x"]
        allowed = (lrn["square_var"], out_var)
        if not all(u is not None and any(u.same_as(a) for a in allowed) for u in graph.live_users(x)):
            return f"the LRN input {graph.name(x)} is also read outside the LRN"
        matched = match_conv_relu(graph, x, relu_readers_checked=True)
        if isinstance(matched, str):
            return matched
        unit, relu = matched
        attrs = unit.conv.attrs
        in_shape = shape_of(unit.conv.args[0])
        geometry = ConvGeometry(int(in_shape[1]), unit.channels, tuple(int(k) for k in unit.weight.shape[2:]),
                                tuple(int(s) for s in attrs.strides), tuple(int(p) for p in attrs.padding))
        weight = unit.weight.astype(np.float64)
        bias = np.zeros(unit.channels) if unit.bias is None else unit.bias.astype(np.float64)

        def teacher(inputs: np.ndarray) -> np.ndarray:
            z = conv2d_numpy(inputs, weight, bias, geometry)
            if relu:
                z = np.maximum(z, 0)
            return lrn_numpy(z, lrn["size"], lrn["alpha"], lrn["beta"], lrn["bias"], lrn["pad"]).astype(np.float32)

        pattern = "conv+relu+lrn" if relu else "conv+lrn"
        return RelearnSite(out_var.name, pattern, out_var, unit.conv.args[0], unit, geometry, weight, bias, relu,
                           teacher, conv_macs(shape_of(unit.conv), unit.weight.shape))
