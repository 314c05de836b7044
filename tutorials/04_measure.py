"""
Measure: read the benchmark results, then measure your own model the same way
===========================================================================

``python -m rebirth_tvm.bench`` compiles each model three ways with TVM (original, exact passes,
reborn), each with the same MetaSchedule budget, and times them round-robin in one process next
to onnxruntime. This script reads its results and shows how to take the same measurements of
your own model from Python.

    python tutorials/04_measure.py

With ``CI=true`` the measuring part uses the smallest settings (the point is that it works).
"""

import json
import os

import numpy as np

import rebirth_tvm
from rebirth_tvm.backend import measure
from rebirth_tvm.pipeline import apply_passes
from rebirth_tvm.backend.targets import resolve_target

SHORT = os.environ.get("CI") == "true"
RESULTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "results", "x86")

######################################################################
# 1. Reading a result
# -------------------
# ``benchmarks/results/x86/<model>.json`` holds, per variant, ``latency_ms`` (median, p10, p90
# over round-robin samples: compare medians, and read p10–p90 as the noise), ``ratio_vs_original``
# (original's median ÷ this one's: above 1 is faster), and for the TVM variants ``breakdown``
# (time per op category), ``planned_activation_bytes``, ``weight_bytes``, ``peak_rss_bytes``,
# ``flops`` and ``gflops_per_second``. ``environment`` says where and with what budget.

path = os.path.join(RESULTS, "googlenet.json")
if os.path.exists(path):
    with open(path) as f:
        result = json.load(f)
    env, variants = result["environment"], result["variants"]
    print(f"GoogLeNet on {env['cpu']} ({env['cores']} cores), {env['tune_trials'] or 'no'} tuning trials per TVM variant:")
    for name, entry in variants.items():
        latency = entry["latency_ms"]
        print(f"  {name:13s} {latency['median']:8.2f} ms  (p10 {latency['p10']:.2f}, p90 {latency['p90']:.2f})  "
              f"{entry['ratio_vs_original']:.2f}x vs TVM original")
    # The paper's figure: how much of the time goes to layers without weights. TVM fuses BN and
    # ReLU into the convs, so on a tuned TVM build that share starts far below Caffe's.
    for name in ("original", "reborn"):
        if name in variants:
            breakdown = variants[name]["breakdown"]
            top = sorted(breakdown["share"].items(), key=lambda kv: -kv[1])[:4]
            print(f"  {name}: non-tensor share {breakdown['non_tensor_share']:.1%}; largest: "
                  + ", ".join(f"{k} {v:.1%}" for k, v in top))
    # Memory: planned activations are what StaticPlanBlockMemory allocates for one inference
    # (the fused build's plan); peak RSS is measured in the native runner's own process.
    for name in ("original", "reborn"):
        if name in variants:
            e = variants[name]
            print(f"  {name}: activations {e['planned_activation_bytes'] / 2**20:.1f} MiB, weights {e['weight_bytes'] / 2**20:.1f} MiB, "
                  f"{e['gflops_per_second']:.1f} GFLOP/s of a {env['matmul_peak']['gflops']:.0f} GFLOP/s matmul ceiling")
else:
    print("no committed results yet: run python -m rebirth_tvm.bench --models googlenet --tune-trials 256")

######################################################################
# 2. The same measurements on your own model
# -------------------------------------------
# Build the variants you want to compare, wrap each in a ``measure.Variant`` and time them
# together: round-robin sampling means a burst of noise hits every variant, not just one.

model = "squeezenet1_1"
target = resolve_target("x86")
original = rebirth_tvm.load(model)
exact, _ = apply_passes(original, "exact")
x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype("float32")
builds = {"original": rebirth_tvm.build(original, target), "exact": rebirth_tvm.build(exact, target)}
variants = [measure.tvm_variant(name, built.executable, [x]) for name, built in builds.items()]
latency = measure.interleaved_latency(variants, repeats=3 if SHORT else 20)
for name, stats in latency.items():
    print(f"{name}: {stats['median']:.2f} ms median (p10 {stats['p10']:.2f}, p90 {stats['p90']:.2f}), untuned")

# Where the time goes, per op category, and the memory the build plans.
breakdown = measure.time_breakdown(builds["exact"].executable, [x], runs=2)
print("exact, time per category:", {k: f"{v:.1%}" for k, v in breakdown["share"].items() if v > 0})
print("exact, planned memory:", measure.planned_memory(exact, target))
# Both variants were timed, and the profile found the convs (the bulk of a CNN's kernel time).
assert set(latency) == {"original", "exact"} and all(stats["median"] > 0 for stats in latency.values())
assert breakdown["kernel_ms"] > 0 and max(breakdown["share"], key=breakdown["share"].get) == "conv"

######################################################################
# Compare variants only at the same tuning budget (untuned, or ``python -m rebirth_tvm.bench
# --tune-trials N``, which gives each variant its own database with the same N trials), and
# always side by side in one process: the machine is shared and noisy.
