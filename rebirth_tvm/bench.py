"""``python -m rebirth_tvm.bench``: original vs exact vs reborn, side by side, on one machine.

For each model it builds three TVM variants with the *same* tuning budget (each its own tuning
database, so none inherits another's trials):

* ``original``: the imported model, no passes;
* ``exact``: the exact passes (BN folds, sibling-conv merges);
* ``reborn``: exact passes + the relearned merges (``--rebirth``), from real calibration photos;
* ``reborn_tucker`` (with ``--tucker ENERGY``): reborn, then Tucker-2 decomposition of the k×k
  convs left, relearned the same way (the paper's fastest model);

and two onnxruntime sessions (full graph optimisations, as a user would run it): the original
ONNX and the reborn model exported to ONNX. All five are timed round-robin in one process
(:func:`rebirth_tvm.backend.measure.interleaved_latency`). Then, per TVM variant: the time per op
category, planned memory, peak RSS of the native runner, FLOPs and GFLOP/s against this machine's
measured matmul peak. Results go to ``benchmarks/results/<target>/``: one JSON per model,
``report.md`` and PNG plots.
"""

from __future__ import annotations

import datetime
import os
import platform
import shutil
import sys
import tempfile
import time

import numpy as np

from rebirth_tvm import cli

from rebirth_tvm.backend import measure
from rebirth_tvm.core.errors import RebirthError
from rebirth_tvm.pipeline import report as report_mod

DEFAULT_MODELS = "googlenet,alexnet,resnet18,squeezenet1_1"
ALIASES = {"squeezenet": "squeezenet1_0"}
TVM_VARIANTS = ("original", "exact", "reborn", "reborn_tucker")
ORT_VARIANTS = ("ort_original", "ort_reborn")
RESULTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "results")


def photo_calibration(count: int, seed: int = 0) -> str:
    """A folder of ``count`` 300×300 crops of the photos scikit-learn ships (real images)."""
    try:
        from sklearn.datasets import load_sample_images
    except ImportError:
        raise RebirthError("--calib photos needs scikit-learn (pip install scikit-learn), or give --calib DIR") from None
    from PIL import Image

    folder = tempfile.mkdtemp(prefix="rebirth-photos-")
    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    for i in range(count):
        photo = photos[i % len(photos)]
        top, left = rng.integers(0, photo.shape[0] - 300), rng.integers(0, photo.shape[1] - 300)
        Image.fromarray(photo[top:top + 300, left:left + 300]).save(os.path.join(folder, f"photo{i:04d}.jpg"))
    return folder


def bench_model(name: str, target, tune_trials: int, tuning_db: str, calib, calib_count: int | None,
                repeats: int, rebirth: bool = True, log=print, rpc=None, tucker: float | None = None, calib_preset: str | None = None) -> dict:
    """Build, time and measure every variant of one zoo model; returns its result dict.

    With ``rpc`` (a :class:`~rebirth_tvm.backend.remote.RpcDevice`) the TVM variants are tuned and timed
    on that device (onnxruntime, the op breakdown and RSS need this machine and are left out).
    """
    from rebirth_tvm.backend.build import build, build_tuned
    from rebirth_tvm.frontend.export_onnx import to_onnx
    from rebirth_tvm.frontend.zoo import MODELS
    from rebirth_tvm.backend.native import run_library
    from rebirth_tvm.backend.targets import resolve_target
    from rebirth_tvm.passes import count_sites
    from rebirth_tvm.pipeline import stages
    from rebirth_tvm.pipeline.options import CompileOptions, RebirthOptions

    if name not in MODELS and not (name.endswith(".onnx") and os.path.isfile(name)):
        raise RebirthError(f"unknown model {name!r}; known: {', '.join(MODELS)}, or an .onnx file")
    # The stages this needs, no more: the variants' modules (no exact check, no output files).
    job = stages.prepare(name, CompileOptions(target=resolve_target("x86"), seed=0))
    input_list, inputs, specs, onnx_model = job.input_list, job.inputs, job.specs, job.onnx_model
    modules = {"original": job.original, "exact": stages.rewrite_exact(job).module}
    result = {"model": os.path.splitext(os.path.basename(name))[0] if name.endswith(".onnx") else name,
              "input_shape": list(specs[0].shape), "variants": {}}
    variants = {"reborn": None, **({"reborn_tucker": tucker} if tucker else {})} if rebirth else {}
    for variant, energy in variants.items():
        log(f"[{name}] relearning the {variant.replace('_', ' + ')} variant" + (f" (energy {energy:g})" if energy else "") + " ...")
        options = CompileOptions(target=resolve_target("x86"), seed=0,
                                 rebirth=RebirthOptions(calib=calib, calib_count=calib_count, preset=calib_preset, tucker=energy))
        relearned = stages.rewrite_relearned(stages.prepare(name, options))
        modules[variant] = relearned.module
        counts = count_sites(relearned.sites)
        summary = {"fidelity": relearned.fidelity, "relearned_sites": counts["relearned"], "refused_sites": counts["refused"]}
        if energy:
            summary.update(energy=energy, decomposed_sites=count_sites([s for s in relearned.sites if s.pass_name == "TuckerDecompose"])["rewritten"])
            result["rebirth_tucker"] = summary
        else:
            summary.update(ops_before=report_mod.op_counts(job.original), ops_after=report_mod.op_counts(relearned.module))
            result["rebirth"] = summary

    executables, tuning = {}, {}
    for variant, module in modules.items():
        log(f"[{name}] building {variant}" + (f" with {tune_trials} tuning trials" if tune_trials else " (untuned)"))
        if tune_trials:
            built, info = build_tuned(module, target, tune_trials, os.path.join(tuning_db, target.tvm.kind.name, f"{result['model']}-{variant}"),
                                      rpc=rpc)
            tuning[variant] = info
        else:
            built = build(module, target)
        executables[variant] = built

    if rpc is not None:
        log(f"[{name}] timing {len(modules)} variants round-robin on {rpc}, {repeats} repetitions ...")
        latency = measure.rpc_latency(executables, input_list, rpc, repeats=repeats)
        result["measured_on"] = f"RPC device {rpc}"
    local = rpc is None
    device = target.device()
    variants = [measure.tvm_variant(v, executables[v].executable, input_list, device) for v in modules] if local else []
    if local and not target.is_cuda:
        variants.append(measure.onnxruntime_variant("ort_original", onnx_model, inputs))
        if "reborn" in modules:
            try:
                reborn_onnx = to_onnx(modules["reborn"], name=result["model"])
            except RebirthError as err:  # (MobileNetV2's ReLU6 imports as a TIR function)
                result["ort_reborn_not_measured"] = str(err)
                log(f"[{name}] onnxruntime on the reborn model: not measured ({err})")
            else:
                reborn_inputs = {i.name: x for i, x in zip(reborn_onnx.graph.input, input_list)}
                variants.append(measure.onnxruntime_variant("ort_reborn", reborn_onnx, reborn_inputs))
    if local:
        log(f"[{name}] timing {len(variants)} variants round-robin, {repeats} repetitions ...")
        latency = measure.interleaved_latency(variants, repeats=repeats)
        result["measured_on"] = "this machine"

    for variant, module in modules.items():
        entry = {"latency_ms": latency[variant], "flops": measure.flops(module)}
        entry.update(measure.planned_memory(module, target))
        entry["gflops_per_second"] = entry["flops"] / (latency[variant]["median"] * 1e-3) / 1e9
        if local and not target.is_cuda:
            entry["breakdown"] = measure.time_breakdown(executables[variant].executable, input_list, device=device)
            try:
                with tempfile.TemporaryDirectory() as work:
                    library = os.path.join(work, "model.so")
                    executables[variant].export(library)
                    _, stats = run_library(library, input_list, arch="host", warmup=1, repeat=3)
                entry["peak_rss_bytes"] = stats["peak_rss_bytes"]
                entry["peak_rss_increase_bytes"] = stats["peak_rss_increase_bytes"]
            except RebirthError as err:  # no cmake: say so rather than guess
                entry["peak_rss_bytes"] = None
                entry["peak_rss_note"] = f"not measured: {err}"
        if variant in tuning:
            entry["tuning"] = tuning[variant]
        result["variants"][variant] = entry
    for variant in ORT_VARIANTS:
        if variant in latency:
            result["variants"][variant] = {"latency_ms": latency[variant]}

    def ratio(a, b):
        return latency[a]["median"] / latency[b]["median"] if a in latency and b in latency else None

    for variant, entry in result["variants"].items():
        entry["ratio_vs_original"] = ratio("original", variant)
    result["ratios"] = {
        "original_over_exact": ratio("original", "exact"),
        "original_over_reborn": ratio("original", "reborn"),
        "original_over_reborn_tucker": ratio("original", "reborn_tucker"),
        "ort_original_over_tvm_reborn": ratio("ort_original", "reborn"),
        "ort_original_over_tvm_original": ratio("ort_original", "original"),
        "ort_original_over_ort_reborn": ratio("ort_original", "ort_reborn"),
    }
    if "reborn" in result["variants"]:
        before, after = result["variants"]["original"], result["variants"]["reborn"]
        result["ratios"]["planned_activation_original_over_reborn"] = before["planned_activation_bytes"] / after["planned_activation_bytes"]
    return result


def environment(target, tune_trials: int) -> dict:
    import importlib.metadata as md

    versions = {}
    for package in ("apache-tvm", "apache-tvm-ffi", "onnxruntime", "numpy"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            versions[package] = None
    return {"cpu": measure.cpu_model(), "cores": os.cpu_count(), "machine": platform.machine(), "target": target.describe(),
            "tune_trials": tune_trials, "versions": versions, "date": datetime.date.today().isoformat(),
            "matmul_peak": measure.matmul_peak_gflops()}


def main(argv=None) -> int:
    parser = cli.ArgumentParser(prog="python -m rebirth_tvm.bench", description=__doc__.split("\n\n")[0],
                                epilog=cli.EXIT_CODES_HELP)
    parser.add_argument("--models", default=DEFAULT_MODELS, help=f"comma-separated zoo models or .onnx files (default {DEFAULT_MODELS}; 'squeezenet' is squeezenet1_0)")
    parser.add_argument("--target", default="x86", help="x86 (measured here), cuda (needs a GPU here) or arm (needs a board: --rpc-tracker)")
    parser.add_argument("--rpc-tracker", default=None, metavar="HOST:PORT", help="tune and time the TVM variants on a device over TVM RPC (an ARM board, a GPU machine)")
    parser.add_argument("--rpc-key", default=None, help="the key the device's rpc_server registered with")
    parser.add_argument("--cpu", default=None, help="LLVM CPU name for x86 (default: this machine's)")
    parser.add_argument("--tune-trials", type=int, default=0, help="MetaSchedule trials per variant (the same budget for each; default 0: untuned)")
    parser.add_argument("--tuning-db", default=os.path.join("build", "bench-tuning-db"), help="tuning databases, one per model and variant, reused across runs")
    parser.add_argument("--calib", default="photos", help="calibration for the reborn variant: 'photos' (crops of scikit-learn's sample photos for the ImageNet models, Fashion-MNIST training images for fashion_googlenet; default), a folder of images, 'fashion-mnist' or 'random'")
    parser.add_argument("--calib-count", type=int, default=128, help="calibration images (default 128: GoogLeNet's deepest merges need about 100; a fifth is held out)")
    parser.add_argument("--repeats", type=int, default=30, help="round-robin repetitions (default 30)")
    parser.add_argument("--skip-rebirth", action="store_true", help="time original and exact only")
    parser.add_argument("--tucker", type=float, default=None, metavar="ENERGY", help="also a reborn + Tucker-2 variant (ranks keeping this fraction of each mode's energy, e.g. 0.9)")
    parser.add_argument("--out", default=RESULTS, help="results directory (default benchmarks/results); files go to OUT/<target>/")
    cli.add_debug_flag(parser)
    return cli.main(parser, argv, _bench)


def _bench(args) -> int:
    from rebirth_tvm import bench_report
    from rebirth_tvm.backend.targets import resolve_target

    if args.repeats < 1:
        raise RebirthError(f"--repeats must be 1 or more, got {args.repeats}")
    if args.tune_trials < 0:
        raise RebirthError(f"--tune-trials must be 0 or more, got {args.tune_trials}")
    if args.calib_count < 1:
        raise RebirthError(f"--calib-count must be 1 or more, got {args.calib_count}")
    if args.tucker is not None and not 0 < args.tucker <= 1:
        raise RebirthError(f"--tucker ENERGY must be in (0, 1], got {args.tucker}")
    photos = None
    try:
        from rebirth_tvm.backend.remote import RpcDevice
        target = resolve_target(args.target, args.cpu)
        rpc = RpcDevice.parse(args.rpc_tracker, args.rpc_key) if args.rpc_tracker else None
        if rpc is None and not target.runs_here:
            raise RebirthError(f"{args.target} latency can only be measured on that device (a GPU in this machine, or a board "
                               "over RPC: --rpc-tracker HOST:PORT --rpc-key KEY); emulated or estimated numbers are never reported as measured")
        if rpc is not None:
            rpc.session()  # an unreachable device fails now, not after relearning
        models = [ALIASES.get(m.strip(), m.strip()) for m in args.models.split(",") if m.strip()]
        from rebirth_tvm.frontend.zoo import MODELS

        photos = photo_calibration(args.calib_count) if args.calib == "photos" and not args.skip_rebirth else None
        out_dir = os.path.join(args.out, target.name)
        env = environment(target, args.tune_trials)
        results = []
        for name in models:
            start = time.perf_counter()
            # Photos suit the ImageNet models; the Fashion-MNIST teacher relearns from its own images.
            calib = args.calib if photos is None else photos if name not in MODELS or MODELS[name].preset == "imagenet" else "fashion-mnist"
            result = bench_model(name, target, args.tune_trials, args.tuning_db, calib, args.calib_count, args.repeats,
                                 rebirth=not args.skip_rebirth, log=lambda m: print(m, file=sys.stderr, flush=True), rpc=rpc,
                                 tucker=args.tucker)
            result["environment"] = env
            result["seconds"] = round(time.perf_counter() - start, 1)
            results.append(result)
            bench_report.write_model(result, out_dir)  # each model as soon as it is done
            print(bench_report.model_line(result), flush=True)
        bench_report.write_summary(out_dir, env)
        print(f"wrote {out_dir}/report.md and plots")
    finally:
        if photos:
            shutil.rmtree(photos, ignore_errors=True)  # our own temporary crops
    return 0


if __name__ == "__main__":
    sys.exit(main())
