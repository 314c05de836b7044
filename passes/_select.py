"""Latency-aware site selection: keep a rewrite only where it measures faster on the target.

Merging is not always a win on a compiler that fuses: TVM itself retired its parallel-conv
combining pass because the combined convs were sometimes slower. So for each candidate site a
relearned pass is about to rewrite, :class:`LatencySelector` builds two small modules for the
target — the site's current block (from its input to its output, exactly the bindings the
rewrite would replace) and its replacement (the new conv or convs, initial weights: speed does
not depend on the values) — times them side by side, and keeps the rewrite only if the new
block is faster by ``margin``. Measurement happens *before* relearning, so a declined site costs
no relearning. Kernels are TVM's untuned defaults unless a tuning database is given, in which
case its records are applied where it has them; timing is on this machine, or on an RPC
device's own timer.

The decision and both numbers go into the site's report (``detail.latency``).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from ._graph import FunctionGraph, substitute


class _BlockEmitter:
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


def block_module(input_var, output_var, emit_body) -> tvm.IRModule:
    """``main(x) -> y`` where ``emit_body(bb, x)`` emits the block and returns its output."""
    data = relax.Var("x", input_var.ty)
    bb = relax.BlockBuilder()
    with bb.function("main", [data]):
        with bb.dataflow():
            out = bb.emit_output(emit_body(bb, data))
        bb.emit_func_output(out)
    return bb.get()


class LatencySelector:
    """Decides per site from measured latency; see the module docstring.

    Parameters
    ----------
    target: where the model will run (a name, JSON string or ``tvm.target.Target``).
    margin: the new block must be at least this fraction faster (default 0.05).
    repeats: round-robin samples per block (median taken).
    rpc: an :class:`~rebirth_tvm.remote.RpcDevice` to time on (needed for targets that do not
        run here, such as arm).
    tuning_db: a MetaSchedule database directory whose records are applied (no tuning is run).
    """

    def __init__(self, target="x86", margin: float = 0.05, repeats: int = 15, rpc=None, tuning_db: str | None = None,
                 min_sample_seconds: float = 0.02):
        from rebirth_tvm.errors import RebirthError
        from rebirth_tvm.report import target_label
        from rebirth_tvm.targets import describe, resolve_target, runs_here

        self.target = resolve_target(target) if isinstance(target, str) else target
        if rpc is None and not runs_here(self.target):
            raise RebirthError(f"latency selection times each site on the target; {target_label(describe(self.target))} builds cannot run "
                               "here: give an RPC device (--rpc-tracker HOST:PORT --rpc-key KEY)")
        if not 0 <= margin < 1:
            raise ValueError(f"margin must be in [0, 1), got {margin}")
        self.margin, self.repeats, self.rpc, self.tuning_db = margin, repeats, rpc, tuning_db
        self.min_sample_seconds = min_sample_seconds

    def _build(self, mod):
        from rebirth_tvm.build import build, build_tuned

        if self.tuning_db:
            built, _ = build_tuned(mod, self.target, 0, self.tuning_db, rpc=self.rpc, progress=False)
            return built
        return build(mod, self.target)

    def decide(self, mod: tvm.IRModule, site, replacement) -> dict:
        """Time the site's block and ``replacement`` (a ``build(emitter)``); return the decision."""
        from rebirth_tvm import measure

        func = mod["main"]
        bindings = block_bindings(func, site.input_var, site.output_var)
        if bindings is None:
            return {"kept": True, "reason": "kept: the block reads values besides its input, so it was not timed alone"}

        def original(bb, x):
            mapping = {site.input_var: x}
            for binding in bindings:
                mapping[binding.var] = bb.emit(substitute(binding.value, mapping), binding.var.name)
            return mapping[site.output_var]

        def rewritten(bb, x):
            return replacement(_BlockEmitter(bb, {site.input_var: x}))

        builds = {"before": self._build(block_module(site.input_var, site.output_var, original)),
                  "after": self._build(block_module(site.input_var, site.output_var, rewritten))}
        shape = [int(d) for d in site.input_var.ty.shape]
        x = np.random.default_rng(0).standard_normal(shape).astype(str(site.input_var.ty.dtype))
        if self.rpc is not None:
            latency = measure.rpc_latency(builds, [x], self.rpc, repeats=self.repeats, min_sample_ms=self.min_sample_seconds * 1e3)
            where = f"RPC device {self.rpc}"
        else:
            device = tvm.cpu()
            variants = [measure.tvm_variant(name, built.executable, [x], device) for name, built in builds.items()]
            latency = measure.interleaved_latency(variants, repeats=self.repeats, min_sample_seconds=self.min_sample_seconds)
            where = "this machine"
        before, after = latency["before"]["median"], latency["after"]["median"]
        kept = after <= before * (1 - self.margin)
        verdict = "kept" if kept else "declined"
        return {"kept": bool(kept), "before_ms": round(before, 4), "after_ms": round(after, 4), "margin": self.margin,
                "measured_on": where, "tuned": bool(self.tuning_db),
                "reason": f"{verdict} by latency: block {before:.3g} ms → rewrite {after:.3g} ms on {where} "
                          f"({after / before - 1:+.0%}; kept only at -{self.margin:.0%} or better)"}

