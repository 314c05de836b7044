"""What the kernel rules and the Relax rewrites of :mod:`rebirth_tvm.backend.kernels` share."""

from __future__ import annotations

import tvm
from tvm import relax, s_tir, tirx
from tvm.s_tir.dlight.base import ScheduleRule


def extent(sch: s_tir.Schedule, loop) -> int | None:
    """A loop's extent as an int, or None when it is symbolic."""
    value = sch.get(loop).extent
    return int(value) if isinstance(value, tirx.IntImm) else None


def static_shape(expr) -> list[int] | None:
    """A Relax expression's shape as ints, or None when it has none or a dimension is symbolic."""
    shape = getattr(getattr(expr, "ty", None), "shape", None)
    if shape is None or not all(isinstance(d, tirx.IntImm) for d in shape):
        return None
    return [int(d) for d in shape]


class InPlaceRule(ScheduleRule):
    """A dlight-style rule whose :meth:`schedule` works on a given ``Schedule`` in place (what a
    MetaSchedule design space needs); :meth:`apply` returns None — never raises — for a function
    the rule does not take or cannot schedule, so the next rule is tried."""

    name = "rule"

    def apply(self, func, target, tunable):
        if not isinstance(func, tirx.PrimFunc):
            return None
        sch = s_tir.Schedule(func)
        try:
            return sch if self.schedule(sch, target, tunable) else None
        except Exception:  # noqa: BLE001  (a shape the rule does not cover: the next rule)
            return None

    def schedule(self, sch: s_tir.Schedule, target, tunable: bool = False) -> bool:
        raise NotImplementedError


def rewrite_functions(mod: tvm.IRModule, mutator: relax.PyExprMutator) -> tvm.IRModule:
    """``mutator`` (made on ``mod``) applied to every Relax function of ``mod``."""
    for gvar, func in mod.functions_items():
        if isinstance(func, relax.Function):
            mutator.builder_.update_func(gvar, mutator.visit_expr(func))
    return mutator.builder_.get()
