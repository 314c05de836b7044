"""Recognising "a conv2d, maybe followed by its bias add" — the unit every exact pass folds into.

The ONNX importer emits ``Conv`` with a bias as ``add(conv2d(x, W), reshape(b))`` (a constant
after FoldConstant). :func:`match_conv` accepts both forms and says in words why anything else is
not one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import relax

from rebirth_tvm.core.graph import FunctionGraph, dtype_of, op_name, per_channel, shape_of, short_op

CONV2D = "relax.nn.conv2d"
FOLDABLE_DTYPES = ("float32", "float64", "float16")


@dataclass
class ConvUnit:
    """A conv2d with constant weights and an optional per-channel constant bias."""

    conv: relax.Call
    conv_var: relax.Var
    weight: np.ndarray
    bias: np.ndarray | None
    bias_var: relax.Var | None  # the add binding, when there is a bias
    dtype: str

    @property
    def out_var(self) -> relax.Var:
        return self.bias_var if self.bias_var is not None else self.conv_var

    @property
    def channels(self) -> int:
        return int(self.weight.shape[0])

    def internal_vars(self) -> list[relax.Var]:
        """Vars that only this unit may read for a rewrite of it to be free of duplication."""
        return [self.conv_var] if self.bias_var is not None else []


def conv_refusal(graph: FunctionGraph, conv: relax.Call, conv_var) -> str | None:
    """Why this conv2d cannot be rewritten exactly by our folds, or None."""
    attrs = conv.attrs
    if (attrs.data_layout, attrs.kernel_layout) != ("NCHW", "OIHW") or attrs.out_layout not in ("NCHW", "", None):
        return f"conv layout {attrs.data_layout}/{attrs.kernel_layout} is not NCHW/OIHW"
    weight_expr = conv.args[1]
    if graph.constant(weight_expr) is None:
        return "conv weight is not a constant (bind the parameters and run FoldConstant first)"
    if graph.shared_with_others(weight_expr, conv_var):
        return "conv weight is shared with another consumer (folding would copy the weight)"
    dtype = dtype_of(conv)
    if dtype not in FOLDABLE_DTYPES:
        return f"conv dtype {dtype} is not a float type we fold"
    return None


def match_conv(graph: FunctionGraph, expr) -> ConvUnit | str:
    """``expr`` as a :class:`ConvUnit`, or the reason it is not one."""
    value = graph.producer(expr)
    name = op_name(value)
    bias = None
    bias_var = None
    conv_var = expr
    if name == "relax.add":
        lhs, rhs = value.args
        inner, const = (lhs, rhs) if graph.constant(rhs) is not None else (rhs, lhs)
        const_value = graph.constant(const)
        inner_value = graph.producer(inner)
        if const_value is None or op_name(inner_value) != CONV2D:
            return f"input is add({short_op(op_name(graph.producer(lhs)))}, {short_op(op_name(graph.producer(rhs)))}), not a conv2d with a constant bias"
        channels = shape_of(inner_value)[1] if shape_of(inner_value) else -1
        bias = per_channel(const_value, channels)
        if bias is None:
            return f"the add after the conv is not a per-channel bias (constant of shape {list(const_value.shape)})"
        if not graph.single_use(inner):
            return f"conv output {graph.name(inner)} is also used outside the conv+bias (folding would duplicate the conv)"
        bias_var = expr if isinstance(expr, relax.Var) else None
        conv_var = inner
        value = inner_value
        name = CONV2D
    if name == "relax.nn.conv2d_transpose":
        return "input is a transposed convolution (conv2d_transpose), which these folds do not handle"
    if name != CONV2D:
        return f"input is produced by {short_op(name) if name else type(value).__name__}, not a conv2d"
    reason = conv_refusal(graph, value, conv_var)
    if reason:
        return reason
    weight = graph.constant(value.args[1])
    return ConvUnit(value, conv_var, weight, bias, bias_var, dtype_of(value))


def match_conv_at(graph: FunctionGraph, conv_var) -> ConvUnit | str:
    """The conv bound to ``conv_var`` as a :class:`ConvUnit`, with its bias add when that add is
    its only reader (looking forward from the conv; :func:`match_conv` looks back from an output)."""
    users = graph.live_users(conv_var)
    if len(users) == 1 and users[0] is not None and op_name(graph.producer(users[0])) == "relax.add":
        unit = match_conv(graph, users[0])
        if not isinstance(unit, str):
            return unit
    return match_conv(graph, conv_var)


def conv2d_like(attrs, data, weight, **overrides):
    """A conv2d call with another conv's attributes, some of them replaced (``padding=...``)."""
    settings = dict(
        strides=[int(s) for s in attrs.strides],
        padding=[int(p) for p in attrs.padding],
        dilation=[int(d) for d in attrs.dilation],
        groups=int(attrs.groups),
        data_layout=attrs.data_layout,
        kernel_layout=attrs.kernel_layout,
        out_layout=attrs.out_layout,
        out_dtype=attrs.out_dtype if str(attrs.out_dtype) else None,
    )
    settings.update(overrides)
    return relax.op.nn.conv2d(data, weight, **settings)


def emit_conv(emitter, unit: ConvUnit, weight: np.ndarray, bias: np.ndarray | None, name: str = ""):
    """A conv2d with ``unit``'s attributes and new constants, returned as ``conv (+ bias)``.

    Constants are cast back to the unit's dtype: the folds compute in float64 so fp16 models
    are folded without the rounding of an fp16 multiply.
    """
    conv = conv2d_like(unit.conv.attrs, emitter.remap(unit.conv.args[0]), relax.const(weight.astype(unit.dtype)))
    if bias is None:
        return conv
    conv_var = emitter.emit(conv, name)
    return relax.op.add(conv_var, relax.const(bias.astype(unit.dtype).reshape(1, -1, 1, 1)))


def plain_conv_refusal(unit: ConvUnit) -> str | None:
    """Why a conv cannot be the conv a relearned merge starts from (im2col geometry), or None."""
    attrs = unit.conv.attrs
    if int(attrs.groups) != 1:
        return f"grouped conv (groups={int(attrs.groups)})"
    if any(int(d) != 1 for d in attrs.dilation):
        return "dilated conv"
    return None


def match_conv_relu(graph: FunctionGraph, expr, relu_readers_checked: bool = False):
    """``expr`` as ``conv (+bias) (+ReLU)`` feeding a block that a relearned merge replaces.

    Returns ``(unit, relu)`` or the reason it cannot be: the ReLU or the conv output is read
    outside the block, the producer is not a conv, or the conv is grouped or dilated.
    ``relu_readers_checked``: the caller has already checked who reads ``expr`` (an LRN reads
    its input twice itself).
    """
    source, relu = expr, op_name(graph.producer(expr)) == "relax.nn.relu"
    if relu:
        if not relu_readers_checked and not graph.single_use(expr):
            return f"{graph.name(expr)} (the ReLU) is also read elsewhere"
        source = graph.producer(expr).args[0]
    unit = match_conv(graph, source)
    if isinstance(unit, str):
        return unit
    if not graph.single_use(unit.out_var):
        return f"conv output {unit.out_var.name} is also read elsewhere (merging would duplicate the conv)"
    reason = plain_conv_refusal(unit)
    return reason if reason else (unit, relu)
