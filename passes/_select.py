"""Site selection: how a relearned pass asks, per site, whether a rewrite is worth making.

A selector is any object with ``decide(mod, site, replacement) -> dict`` (``kept``: bool,
``reason``: str, and whatever it measured). The pass asks it before relearning a site, so a
declined site costs no relearning, and the answer goes into the site's report
(``detail.latency``). The application hands in
:class:`rebirth_tvm.backend.site_latency.LatencySelector`, which times the site's block and its
replacement on the target; the helpers here cut such a block out of a function.
"""

from __future__ import annotations

from tvm import relax

from rebirth_tvm.core.graph import FunctionGraph


class BlockEmitter:
    """The emitter interface of ``_rewrite.apply_plan`` over a fresh BlockBuilder."""

    def __init__(self, bb, mapping):
        self.bb, self.mapping = bb, mapping

    def remap(self, expr):
        return self.mapping.get(expr, expr)

    def emit(self, expr, name: str = ""):
        return self.bb.emit(expr, name)


def block_bindings(func: relax.Function, input_var, output_var) -> list | None:
    """The bindings that compute ``output_var`` from ``input_var``, in order; None if the block
    also reads some other value of the function (then it cannot be measured on its own)."""
    graph = FunctionGraph(func)
    needed, stack = set(), [output_var]
    while stack:
        var = stack.pop()
        if var.same_as(input_var) or var in needed:
            continue
        if var not in graph.value_of:
            return None  # a function parameter other than the block's input
        needed.add(var)
        stack.extend(v for v in relax.analysis.free_vars(graph.value_of[var]) if v not in needed)
    return [b for b in graph.bindings if b.var in needed]
