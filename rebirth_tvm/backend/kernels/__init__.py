"""CPU kernels: a blocked-layout conv template and schedule rules for every other kernel, so an
untuned build is fast (TVM 0.27's CPU pipeline schedules nothing: every kernel is plain loops).

:func:`cpu_pipeline` is the Relax pipeline :mod:`rebirth_tvm.backend.build` uses for x86 and
arm: TVM's CPU pipeline with two additions —

1. before legalization, the importer's clips become Relax ops again (:mod:`.lift`), a conv's
   gradient convs (training modules) become a plain conv and a matmul (:mod:`.gradients`) and
   convs go to the blocked layout (:mod:`.layout`; weights packed once);
2. after fusion, every kernel gets a schedule from the first rule that takes it
   (:mod:`.conv_nchwc` for blocked convs, :mod:`.depthwise` for depthwise ones, :mod:`.dense`
   for small-batch dense layers, :mod:`.loops` for everything else); a tuning
   database, when given, comes first.

:class:`KernelCounts` records, per build, how many kernels each rule scheduled, how many came
from the tuning database and how many were left as plain loops.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass, field

import tvm
from tvm import relax, tirx

from rebirth_tvm.backend.kernels.arith import strength_reduce_power
from rebirth_tvm.backend.kernels.conv_nchwc import BlockedConv
from rebirth_tvm.backend.kernels.dense import PackedDense, legalize_matmul
from rebirth_tvm.backend.kernels.depthwise import DepthwiseConv
from rebirth_tvm.backend.kernels.gradients import rewrite_conv_gradients
from rebirth_tvm.backend.kernels.layout import (block_remaining_convs, block_size, blocked_layout, legalize_conv2d,
                                               keep_slices_blocked, legalize_layout_transform, network_block,
                                               split_as_slices, split_grouped_convs)
from rebirth_tvm.backend.kernels.lift import lift_clip_bounds
from rebirth_tvm.backend.kernels.loops import ParallelLoops

__all__ = ["KernelCounts", "cpu_pipeline", "fused_kernels", "rules_for"]


@dataclass
class KernelCounts:
    """How the kernels of one build were scheduled (``rule name → count``)."""

    by_rule: Counter = field(default_factory=Counter)
    block: int = 0

    def to_json(self) -> dict:
        total = sum(self.by_rule.values())
        return {"kernels": total, "channel_block": self.block, **dict(sorted(self.by_rule.items()))}


def rules_for(target: tvm.target.Target) -> list:
    """The schedule rules, in the order they are tried."""
    return [BlockedConv(), DepthwiseConv(), PackedDense(), ParallelLoops(vector_lanes=block_size(target))]


@tvm.transform.module_pass(opt_level=0, name="ScheduleKernels")
class ScheduleKernels:
    """Give every unscheduled PrimFunc a schedule from the first rule that takes it; count them."""

    def __init__(self, target: tvm.target.Target, counts: KernelCounts):
        self.target, self.rules, self.counts = target, rules_for(target), counts

    def transform_module(self, mod: tvm.IRModule, ctx) -> tvm.IRModule:
        updated = {}
        for gvar, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc):
                continue
            if func.attrs is not None and func.attrs.get("tirx.is_scheduled", False):
                self.counts.by_rule["tuning_database"] += 1
                continue
            for rule in self.rules:
                sch = rule.apply(func, self.target, False)
                if sch is not None:
                    updated[gvar] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
                    self.counts.by_rule[rule.name] += 1
                    break
            else:
                self.counts.by_rule["plain_loops"] += 1
        for gvar, func in updated.items():
            mod[gvar] = func
        return mod


def fused_kernels(target: tvm.target.Target, counts: KernelCounts | None = None) -> tvm.transform.Pass:
    """Up to the kernels, unscheduled: the blocked layout, legalization, weights packed, fusion.
    What :func:`cpu_pipeline` schedules, and what tuning extracts its tasks from. The channel
    block is chosen for the module (:func:`~.layout.network_block`) and recorded in ``counts``."""

    @tvm.transform.module_pass(opt_level=0, name="RebirthFusedKernels")
    def fused(mod: tvm.IRModule, ctx) -> tvm.IRModule:
        with target:
            mod = tvm.transform.Sequential([lift_clip_bounds, strength_reduce_power, rewrite_conv_gradients, split_as_slices,
                                            split_grouped_convs,
                                            relax.transform.FoldConstant()])(mod)  # the weight slices of split convs
            block = network_block(mod, block_size(target))
            if counts is not None:
                counts.block = block
            return tvm.transform.Sequential([
                blocked_layout(block),
                block_remaining_convs(block),
                keep_slices_blocked(),
                relax.transform.Normalize(),
                relax.transform.LegalizeOps({"relax.nn.conv2d": legalize_conv2d,
                                              "relax.layout_transform": legalize_layout_transform,
                                              "relax.matmul": legalize_matmul}),
                relax.transform.AnnotateTIROpPattern(),
                relax.transform.FoldConstant(),  # packs the weights into the blocked layout
                relax.transform.FuseOps(),
                relax.transform.FuseTIR(),
                relax.transform.DeadCodeElimination(),
            ])(mod)

    return fused


def cpu_pipeline(target: tvm.target.Target, counts: KernelCounts | None = None, database=None) -> tvm.transform.Pass:
    """TVM's CPU Relax pipeline with the blocked layout and the schedule rules (module docstring).

    ``database``: a MetaSchedule database whose records replace the rules' schedules where it has
    them (tuned kernels); ``counts`` is filled in as the kernels are scheduled.
    """
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    counts = counts if counts is not None else KernelCounts()

    @tvm.transform.module_pass(opt_level=0, name="RebirthCPUPipeline")
    def pipeline(mod: tvm.IRModule, ctx) -> tvm.IRModule:
        passes = cpu.library_dispatch_passes(target) + [fused_kernels(target, counts)]
        if database is not None:  # tuned kernels first; the rules schedule the rest
            passes.append(relax.transform.MetaScheduleApplyDatabase(enable_warning=False))
        passes.append(ScheduleKernels(target, counts))
        passes += cpu.dataflow_lower_passes(target) + cpu.finalize_passes(target)
        with target, (database if database is not None else contextlib.nullcontext()):
            return tvm.transform.Sequential(passes)(mod)

    return pipeline
