"""The shared machinery that turns a pass's decisions into a new module.

A pass plans on the untouched function (see ``_graph.FunctionGraph``) and produces a *plan*:
``{binding var: build}``, where ``build(emitter)`` returns the expression that replaces the
binding's value. The replacement keeps the binding's var (so every user reads the new value
unchanged) and must have the same type. Intermediate values are emitted through ``emitter.emit``;
inputs of the original function are mapped with ``emitter.remap``. Bindings the rewrite made dead
are removed by ``DeadCodeElimination`` afterwards.
"""

from __future__ import annotations


import tvm
import tvm_ffi
from tvm import relax

from ._sites import REWRITTEN, SiteRecord, publish

Plan = dict  # relax.Var -> Callable[[Emitter], relax.Expr]


class Emitter:
    def __init__(self, mutator):
        self._mutator = mutator

    def remap(self, expr):
        return self._mutator.visit_expr(expr)

    def emit(self, expr, name: str = ""):
        return self._mutator.builder_.emit(expr, name)


@relax.expr_functor.mutator
class _PlanApplier(relax.PyExprMutator):
    def __init__(self, mod, plan: Plan):
        super().__init__(mod)
        self.plan = plan

    def visit_var_binding_(self, binding):
        build = self.plan.get(binding.var)
        if build is None:
            return super().visit_var_binding_(binding)
        value = self.builder_.normalize(build(Emitter(self)))
        if not tvm_ffi.structural_equal(value.ty, binding.var.ty):
            raise AssertionError(f"rewrite of {binding.var.name} changed its type: {binding.var.ty} -> {value.ty}")
        self.builder_.emit_normalized(relax.VarBinding(binding.var, value))


def apply_plan(mod: tvm.IRModule, plan: Plan, function: str = "main") -> tvm.IRModule:
    """Apply one function's plan and drop what it made dead."""
    mod = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
    mod[function] = _PlanApplier(mod, plan).visit_expr(mod[function])
    return relax.transform.DeadCodeElimination()(mod)


class SitePass:
    """Base of every rebirth pass: plan per function, apply, clean up, report.

    Subclasses set ``pass_name`` and define ``plan_function(graph, records) -> Plan``, which appends
    one :class:`SiteRecord` per site it looked at to ``records``.
    """

    pass_name = "SitePass"

    def transform_module(self, mod: tvm.IRModule, ctx) -> tvm.IRModule:
        from rebirth_tvm.core.graph import FunctionGraph

        self.sites: list[SiteRecord] = []
        plans = {}
        for gvar, func in mod.functions_items():
            # Fused primitive functions belong to TVM's lowering: never touch them.
            if not isinstance(func, relax.Function) or (func.attrs is not None and "Primitive" in func.attrs):
                continue
            records: list[SiteRecord] = []
            plan = self.plan_function(FunctionGraph(func), records)
            for record in records:
                record.function = gvar.name_hint
            self.sites.extend(records)
            if plan:
                plans[gvar.name_hint] = plan
        publish(self.sites)
        # An untouched module is returned as it came, so "nothing matched" is structurally equal.
        for function, plan in plans.items():
            mod = apply_plan(mod, plan, function)
        return mod

    @property
    def rewritten(self) -> list[SiteRecord]:
        return [s for s in getattr(self, "sites", []) if s.status == REWRITTEN]
