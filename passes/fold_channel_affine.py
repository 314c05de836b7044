"""FoldChannelAffine: ``conv2d (+ bias) → per-channel multiply / add / subtract / divide`` becomes
one ``conv2d + bias``.

Exact (up to float rounding). Walking the chain from the conv, with the conv as ``y = W*x + b``::

    y * s  →  W' = W * s[o],   b' = b * s
    y / s  →  W' = W / s[o],   b' = b / s        (s must have no zeros)
    y + t  →  b' = b + t
    y - t  →  b' = b - t

Each constant must broadcast along the channel axis only (shape ``(C,)`` as ``(1, C, 1, 1)``,
``(C, 1, 1)`` or a scalar). A chain is rewritten once it holds at least one op beyond the conv's
own bias (a plain ``conv + bias`` is already the canonical form and is left alone). Such chains
come from exporters that decompose BatchNorm, from ``DecomposeOpsForInference``, or from
hand-written scaling (``x * 0.5 + 1``).

Refuses, with the reason recorded, when an affine op by a constant follows a conv but:

* the constant is not per-channel (e.g. a spatial map);
* the value in the chain is also read by someone else (folding would duplicate the conv);
* the conv weight is not a constant or is shared, the layout is not NCHW/OIHW, or the dtype is
  not a float type;
* a divisor has a zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax

from rebirth_tvm.core.graph import FunctionGraph, dtype_of, op_name, per_channel, short_op

from ._conv import CONV2D, ConvUnit, conv_refusal, emit_conv
from ._rewrite import SitePass
from ._sites import REFUSED, REWRITTEN, SiteRecord

_AFFINE_OPS = {"relax.multiply", "relax.divide", "relax.add", "relax.subtract"}


@dataclass
class _Chain:
    unit: ConvUnit
    weight: np.ndarray  # float64
    bias: np.ndarray  # float64
    ops: list[str] = field(default_factory=list)  # affine ops folded beyond the conv's bias
    vars: list = field(default_factory=list)


@tvm.transform.module_pass(opt_level=0, name="FoldChannelAffine")
class FoldChannelAffine(SitePass):
    """Fold per-channel constant multiply/add chains into the conv2d that feeds them. Exact."""

    pass_name = "FoldChannelAffine"

    def plan_function(self, graph: FunctionGraph, records: list[SiteRecord]):
        chains: dict = {}  # var -> _Chain ending at that var
        refused: dict = {}  # var -> reason (a conv that cannot head a chain)
        for binding in graph.dataflow_bindings():
            var, value = binding.var, binding.value
            name = op_name(value)
            if name == CONV2D:
                reason = conv_refusal(graph, value, var)
                if reason:
                    refused[var] = reason
                    continue
                weight = graph.constant(value.args[1]).astype(np.float64)
                unit = ConvUnit(value, var, weight, None, None, dtype_of(value))
                chains[var] = _Chain(unit, weight, np.zeros(weight.shape[0]), [], [var])
                continue
            if name not in _AFFINE_OPS:
                continue
            lhs, rhs = value.args
            # The chain input is the non-constant operand. subtract and divide fold only with the
            # constant on the right: c / y is not affine in y, and c - y is too rare to special-case.
            if graph.constant(rhs) is not None and isinstance(lhs, relax.Var):
                source, const = lhs, graph.constant(rhs)
            elif name in ("relax.multiply", "relax.add") and graph.constant(lhs) is not None and isinstance(rhs, relax.Var):
                source, const = rhs, graph.constant(lhs)
            else:
                continue
            if source in refused:
                records.append(SiteRecord(self.pass_name, var.name, REFUSED, refused[source]))
                continue
            chain = chains.get(source)
            if chain is None:
                continue
            channels = chain.weight.shape[0]
            vector = per_channel(const, channels)
            if vector is None:
                records.append(SiteRecord(self.pass_name, var.name, REFUSED, f"{short_op(name)} by a constant of shape {list(const.shape)}, which is not per-channel"))
                continue
            if not graph.single_use(source):
                users = ", ".join(graph.name(u) for u in graph.live_users(source) if u is not var)
                records.append(SiteRecord(self.pass_name, var.name, REFUSED, f"{source.name} is also used by {users} (folding would duplicate the conv)"))
                continue
            vector = vector.astype(np.float64)
            weight, bias = chain.weight, chain.bias
            if name == "relax.multiply":
                weight, bias = weight * vector.reshape(-1, 1, 1, 1), bias * vector
            elif name == "relax.divide":
                if np.any(vector == 0):
                    records.append(SiteRecord(self.pass_name, var.name, REFUSED, "divide by a constant that has zeros"))
                    continue
                weight, bias = weight / vector.reshape(-1, 1, 1, 1), bias / vector
            elif name == "relax.add":
                bias = bias + vector
            else:
                bias = bias - vector
            # The first add straight after the conv is its bias: the canonical form, not a fold.
            is_bias = name == "relax.add" and not chain.ops and len(chain.vars) == 1
            ops = chain.ops if is_bias else [*chain.ops, short_op(name)]
            chains[var] = _Chain(chain.unit, weight, bias, ops, [*chain.vars, var])
            del chains[source]

        plan = {}
        for end_var, chain in chains.items():
            if not chain.ops:
                continue
            site = end_var.name
            plan[end_var] = lambda em, c=chain, n=site: emit_conv(em, c.unit, c.weight, c.bias, n + "_conv")
            records.append(SiteRecord(
                self.pass_name, site, REWRITTEN,
                f"folded {', '.join(chain.ops)} into conv {chain.unit.conv_var.name}",
                detail={"conv": chain.unit.conv_var.name, "ops": chain.ops},
            ))
        return plan
