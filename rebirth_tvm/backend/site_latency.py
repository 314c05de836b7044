"""Latency-aware site selection: keep a rewrite only where it measures faster on the target.

Merging is not always a win on a compiler that fuses: TVM itself retired its parallel-conv
combining pass because the combined convs were sometimes slower. So for each candidate site a
relearned pass is about to rewrite, :class:`LatencySelector` builds two small modules for the
target — the site's current block (from its input to its output, exactly the bindings the
rewrite would replace) and its replacement (the new conv or convs, initial weights: speed does
not depend on the values) — times them side by side, and keeps the rewrite only if the new
block is faster by ``margin``. Kernels are TVM's untuned defaults unless a tuning database is
given, in which case its records are applied where it has them; timing is on this machine, or
on an RPC device's own timer. The passes see only the selector interface
(:mod:`rebirth_tvm.passes._select`).
"""

from __future__ import annotations

import numpy as np
import tvm

from rebirth_tvm.backend import measure
from rebirth_tvm.backend.build import build, build_tuned
from rebirth_tvm.backend.targets import resolve_target
from rebirth_tvm.core.graph import block_module, substitute
from rebirth_tvm.passes._select import BlockEmitter, block_bindings


class LatencySelector:
    """Decides per site from measured latency; see the module docstring.

    Parameters
    ----------
    target: where the model will run (a name, JSON string or ``tvm.target.Target``).
    margin: the new block must be at least this fraction faster (default 0.05).
    repeats: round-robin samples per block (median taken).
    rpc: an :class:`~rebirth_tvm.backend.remote.RpcDevice` to time on (needed for targets that do not
        run here, such as arm).
    tuning_db: a MetaSchedule database directory whose records are applied (no tuning is run).
    """

    def __init__(self, target="x86", margin: float = 0.05, repeats: int = 15, rpc=None, tuning_db: str | None = None,
                 min_sample_seconds: float = 0.02):
        self.target = resolve_target(target)
        if rpc is None:
            self.target.require_runs_here("latency selection times each site on the target")
        if not 0 <= margin < 1:
            raise ValueError(f"margin must be in [0, 1), got {margin}")
        self.margin, self.repeats, self.rpc, self.tuning_db = margin, repeats, rpc, tuning_db
        self.min_sample_seconds = min_sample_seconds

    def _build(self, mod):
        if self.tuning_db:
            built, _ = build_tuned(mod, self.target, 0, self.tuning_db, rpc=self.rpc, progress=False)
            return built
        return build(mod, self.target)

    def decide(self, mod: tvm.IRModule, site, replacement) -> dict:
        """Time the site's block and ``replacement`` (a ``build(emitter)``); return the decision."""
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
            return replacement(BlockEmitter(bb, {site.input_var: x}))

        builds = {"before": self._build(block_module(site.input_var.ty, original)),
                  "after": self._build(block_module(site.input_var.ty, rewritten))}
        shape = [int(d) for d in site.input_var.ty.shape]
        x = np.random.default_rng(0).standard_normal(shape).astype(str(site.input_var.ty.dtype))
        if self.rpc is not None:
            latency = measure.rpc_latency(builds, [x], self.rpc, repeats=self.repeats, min_sample_ms=self.min_sample_seconds * 1e3)
            where = f"RPC device {self.rpc}"
        else:
            device = self.target.device()
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

