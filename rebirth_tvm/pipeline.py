"""The whole job as one function: ONNX → Relax → rebirth passes → build → check → report.

:func:`compile_model` is what ``python -m rebirth_tvm.compile`` runs. The result is checked
against onnxruntime running the original model before anything is written, and
:func:`write_result` writes it atomically: either the output directory holds a complete result
or it is left as it was.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tvm

from . import report as report_mod
from .build import BuiltModel, build, build_tuned, check_cuda_source, host_build_for
from .errors import CheckFailed, RebirthError
from .onnx_import import graph_inputs, import_onnx, random_inputs, read_onnx
from .reference import onnxruntime_outputs, reference_name
from .tolerance import describe as describe_tolerance
from .tolerance import exact_tolerance, longest_reduction
from .targets import describe, is_cuda, require_tunable, resolve_target, runs_here

PASS_SETS = ("exact", "none")
VERIFY_METHODS = ("qemu", "native", "rpc")

@dataclass
class RebirthOptions:
    """How the relearned (lossy) rewrites run; see :func:`compile_model`.

    calib: a folder of images, an ``.npy`` file, an array/iterable, or ``"random"`` (labelled).
    hook: ``"lstsq"``, a callable ``hook(RetrainSite) -> (weight, bias)``, or ``"module:function"``.
    sites: ``"all"`` or names / glob patterns of the sites to rewrite.
    pool_kernel: conv+pool merges: ``"auto"`` (grow to the pool's receptive field where that adds
        no MACs), ``"cover"`` or ``"keep"``.
    branches: inception branch merges to run, from ``("pool", "reduce")``; ``()`` for none.
    allow_more_work: also make branch merges that add MACs (refused by default, with numbers).
    streamline: run the streamline merges (conv+pool, conv+LRN); False for branch merges only.
    select: ``"all"`` or ``"latency"``: time each site's block and its rewrite on the target (here
        or over RPC, tuned kernels where ``tuning_db`` has them) and keep only rewrites faster by
        ``select_margin``.
    tucker: also decompose the k×k convs left (Tucker-2, ranks by this energy), relearned.
    finetune: optional labelled fine-tuning of the whole reborn network, the relearned layers at a
        higher learning rate (:class:`rebirth_tvm.finetune.FinetuneOptions`; the paper's last step).
    preset: image preprocessing (default: the zoo model's, else ``"imagenet"``).
    calib_count: use at most this many calibration inputs.
    """

    calib: object
    hook: object = "lstsq"
    sites: object = "all"
    pool_kernel: str = "auto"
    branches: tuple = ("pool", "reduce")
    allow_more_work: bool = False
    preset: str | None = None
    calib_count: int | None = None
    streamline: bool = True
    #: labelled fine-tuning after relearning (:class:`rebirth_tvm.finetune.FinetuneOptions`), or None.
    finetune: object = None
    #: "all" (rewrite every site that can be) or "latency" (only sites measured faster on the target).
    select: str = "all"
    select_margin: float = 0.05
    #: Tucker-2 decomposition of the remaining k×k convs at this energy (e.g. 0.9), or None.
    tucker: float | None = None
    #: put back any relearned site whose held-out relative MSE stays above this (None: keep all).
    max_site_error: float | None = None
    #: refit the final FC layer to the original logits after the merges (:class:`RefitClassifier`).
    refit_classifier: bool = False


@dataclass
class CompileResult:
    """Everything one compile produced."""

    module: tvm.IRModule
    built: BuiltModel
    report: dict[str, Any]
    sites: list = field(default_factory=list)
    #: The exported library that verification ran (written as is), when one was verified.
    library: str | None = None
    #: The native runner built for the target (copied beside model.so), when asked for.
    runner: str | None = None
    #: Keeps the verified library's temporary folder alive exactly as long as this result.
    _library_dir: Any = field(default=None, repr=False, compare=False)


def parse_shape(text: str | None):
    """``"1,3,224,224"`` → a tuple; ``"data=1,3,224,224;mask=1,10"`` → ``{name: tuple}``."""
    if text is None:
        return None

    def dims(part: str):
        try:
            values = tuple(int(d) for d in part.replace("x", ",").split(",") if d.strip())
        except ValueError:
            raise RebirthError(f"--input-shape {text!r}: dimensions must be integers like 1,3,224,224") from None
        if not values:
            raise RebirthError(f"--input-shape {text!r} is empty")
        return values

    if "=" in text:
        shapes = {}
        for part in text.split(";"):
            name, _, value = part.partition("=")
            shapes[name.strip()] = dims(value)
        return shapes
    return dims(text)


def apply_passes(mod: tvm.IRModule, passes: str, allow_kernel_padding: bool = False, merge_parallel: bool = True):
    """Run a named pass set; returns (module, site records)."""
    from .passes import exact_pipeline, record_sites

    if passes == "none":
        return mod, []
    if passes != "exact":
        raise RebirthError(f"unknown pass set {passes!r}; known: {', '.join(PASS_SETS)}")
    with record_sites() as sites:
        mod = exact_pipeline(merge_parallel=merge_parallel, allow_kernel_padding=allow_kernel_padding)(mod)
    return mod, list(sites)


def compile_model(
    model,
    target: str = "x86",
    passes: str = "exact",
    input_shape=None,
    cpu: str | None = None,
    allow_kernel_padding: bool = False,
    merge_parallel: bool = True,
    seed: int = 0,
    rebirth: RebirthOptions | None = None,
    arch: str | None = None,
    tune_trials: int = 0,
    tuning_db: str | None = None,
    max_trials_per_task: int | None = None,
    rpc=None,
    verify: str | None = None,
    runner: bool = False,
    evaluate: str | None = None,
) -> CompileResult:
    """Import, rewrite, build and check one model.

    Parameters
    ----------
    model: an ``.onnx`` path, a zoo name or an ``onnx.ModelProto``.
    target: ``"x86"``, ``"arm"`` (aarch64 Linux), ``"cuda"`` or a JSON target dict. Builds for
        another machine are checked through an x86 build of the same module (the report says so);
        CUDA kernels are also compiled with nvcc when it is installed.
    passes: ``"exact"`` (FoldBatchNorm, FoldChannelAffine, MergeParallelConvs) or ``"none"``.
    input_shape: fixed input shape (needed for dynamic dimensions).
    cpu: LLVM CPU name for x86 (default: this machine's) or arm (cortex-a53/a72/a76, neoverse-n1).
    arch: CUDA architecture (``sm_80`` by default).
    tune_trials: MetaSchedule trials for the final module (0: no tuning). Tasks that
        ``tuning_db`` already holds records for are not tuned again.
    tuning_db: the tuning database directory (default: a temporary one, then it is only good
        for this run). With ``tune_trials=0`` an existing database is still applied.
    max_trials_per_task: cap on the trials any one task gets.
    rpc: a :class:`~rebirth_tvm.remote.RpcDevice`: tuning measures on it, ``verify="rpc"`` runs there.
    verify: run the exported library and compare it with an x86 build of the same module
        (within ``native.VERIFY_TOLERANCE``): ``"qemu"`` (an arm build under qemu-aarch64, with
        the native runner), ``"native"`` (an x86 build with the native runner) or ``"rpc"``
        (on the RPC device, which also times it there).
    runner: also build the native runner (``rebirth-run``) for the target; written beside model.so.
    evaluate: ``"fashion-mnist"`` or ``"fashion-mnist:N"``: classify the labelled test images with
        the model as imported and as compiled, and time both (report ``evaluation``).
    allow_kernel_padding: let MergeParallelConvs zero-pad kernels of different sizes.
    merge_parallel: run MergeParallelConvs at all.
    seed: seed of the random inputs used for the check.
    rebirth: also run the relearned streamline merges (:class:`RebirthOptions`); the report then
        holds each site's fidelity and the end-to-end ``fidelity`` on held-out calibration inputs.

    The exact stage is always checked against onnxruntime on the original model (within
    :func:`rebirth_tvm.tolerance.exact_tolerance` of the output's scale); relearned stages are measured, not bounded.
    Raises :class:`RebirthError` for bad input or a failed exact check.
    """
    tvm_target = resolve_target(target, cpu, arch) if isinstance(target, str) else target
    onnx_model = read_onnx(model)
    specs = graph_inputs(onnx_model, input_shape)
    name = model if isinstance(model, str) else (onnx_model.graph.name or "model")
    calibration = _calibration(rebirth, name, specs) if rebirth else None  # bad input fails fast
    if evaluate:
        from .evaluate import labelled_test_set, parse

        evaluation_set = parse(evaluate)
        if not runs_here(tvm_target):
            raise RebirthError(f"--evaluate runs the compiled model, and {report_mod.target_label(describe(tvm_target))} builds cannot run here")
        labelled_test_set(evaluation_set[0], 1, specs[0].shape)  # a missing dataset or wrong model fails now
    if rebirth and rebirth.select not in ("all", "latency"):
        raise RebirthError(f"select must be 'all' or 'latency', not {rebirth.select!r}")
    if rebirth and rebirth.select == "latency" and rpc is None and not runs_here(tvm_target):
        raise RebirthError(f"--select latency times each site on the target, and {report_mod.target_label(describe(tvm_target))} builds cannot run here: "
                           "give the device over RPC (--rpc-tracker HOST:PORT --rpc-key KEY)")
    if tune_trials or tuning_db:
        require_tunable(tvm_target, rpc)  # before any heavy work
    if verify:
        _check_verify_method(verify, tvm_target, rpc)
    if runner or verify in ("qemu", "native"):
        from .native import arch_of, require_tools

        require_tools(arch_of(tvm_target))  # cmake and the compiler, named by Debian package
    original = import_onnx(onnx_model, specs)
    rewritten, sites = apply_passes(original, passes, allow_kernel_padding, merge_parallel)
    built = build(rewritten, tvm_target)
    # A build for another machine (arm, a GPU we do not have) is checked through an x86 build of
    # the same module: the rewrite is what the check is about; the target code is TVM's.
    checked = host_build_for(built, rewritten)

    inputs = random_inputs(specs, seed)
    outputs = checked.run([inputs[s.name] for s in specs])
    references = onnxruntime_outputs(onnx_model, inputs)
    diff = report_mod.output_difference(outputs, references if len(references) > 1 else references[0])
    compute_dtypes, output_dtypes = computed_in(onnx_model, specs), [str(np.asarray(o).dtype) for o in references]
    reduction = longest_reduction(original)
    tolerance = exact_tolerance(compute_dtypes, reduction, output_dtypes)
    passed = diff["max_rel_diff"] <= tolerance
    if not passed:
        raise CheckFailed(
            f"the rewritten model differs from onnxruntime by {diff['max_rel_diff']:.3g} (relative), "
            f"above the tolerance {tolerance:.3g}; nothing was written"
        )
    report = {
        "model": os.path.basename(str(name)),
        "target": describe(tvm_target),
        "input_name": specs[0].name,
        "input_shape": list(specs[0].shape),
        "passes": passes + ("+rebirth" if rebirth else ""),
        "ops_before": report_mod.op_counts(original),
        **diff,
        "check": {
            "reference": reference_name(),
            "inputs": f"random normal, seed {seed} (not real data)",
            "tolerance": tolerance,
            "tolerance_basis": describe_tolerance(compute_dtypes, reduction, output_dtypes),
            "passed": passed,
            "stage": "exact passes" if rebirth else passes,
            "ran_on": describe(checked.target),
            "target_binary_run": checked is built,
        },
    }
    if rebirth:
        sibling_merge = passes == "exact" and merge_parallel
        base = rewritten
        if sibling_merge:
            # Merged siblings would hide an inception module's reduce convs from the branch merges
            # (a reduce conv becomes a slice of the merged one): relearn on the exact module
            # without the sibling merge, which runs again after the relearned rewrites.
            base, _ = apply_passes(original, passes, allow_kernel_padding, merge_parallel=False)
            sites = [s for s in sites if s.pass_name != "MergeParallelConvs"]
        rewritten, relearned, fidelity = _rebirth_stage(base, rebirth, calibration, onnx_model, specs, tvm_target, rpc, tuning_db,
                                                        merge_parallel=sibling_merge, allow_kernel_padding=allow_kernel_padding)
        sites = sites + relearned
        built = fidelity.pop("built")
        report["fidelity"] = fidelity
    if is_cuda(tvm_target):
        report["cuda_kernels"] = check_cuda_source(built)  # the final module's kernels
    if tune_trials or tuning_db:
        untuned = host_build_for(built, rewritten)
        with tempfile.TemporaryDirectory(prefix="rebirth-tuning-") as scratch:  # only used without a tuning_db
            built, tuning = build_tuned(rewritten, tvm_target, tune_trials, tuning_db or scratch,
                                        max_trials_per_task=max_trials_per_task, rpc=rpc)
        if not tuning_db:
            tuning["database"] = "a temporary one, removed after this run (give tuning_db to keep it)"
        if runs_here(built.target):
            # The tuned kernels compute what the untuned ones do (no assumption: measured here).
            tuning.update(report_mod.output_difference(built.run([inputs[s.name] for s in specs]),
                                                       untuned.run([inputs[s.name] for s in specs])))
            tuning["tuned_matches_untuned"] = tuning["max_rel_diff"] <= tolerance
            if not tuning["tuned_matches_untuned"]:
                raise CheckFailed(f"the tuned build differs from the untuned one by {tuning['max_rel_diff']:.3g} (relative); nothing was written")
        else:
            tuning["tuned_matches_untuned"] = None  # only the device can run it: --verify says
        report["tuning"] = tuning
    library = None
    if verify:
        # The verified library lives in a temporary folder as long as the result does (removed
        # with it, or on any failure before it exists).
        library_dir = tempfile.TemporaryDirectory(prefix="rebirth-export-")
        library, report["verification"] = _verify(verify, built, rewritten, [inputs[s.name] for s in specs], rpc, library_dir.name)
    if evaluate:
        from .evaluate import before_and_after, labelled_test_set

        report["evaluation"] = before_and_after(build(original, tvm_target), built, *evaluation_set, specs[0].shape)
        if "tuning" in report:
            report["evaluation"]["note"] = "the original is TVM-built untuned, the result tuned; timed round-robin in one process"
    runner_path = None
    if runner:
        from .native import arch_of, build_runner

        runner_path = build_runner(arch_of(tvm_target))
    report.update({
        "ops_after": report_mod.op_counts(rewritten),
        "sites": [s.to_json() for s in sites],
        "compile_seconds": round(built.compile_seconds, 3),
        "versions": {"tvm": tvm.__version__},
    })
    return CompileResult(rewritten, built, report, sites, library=library, runner=runner_path,
                         _library_dir=library_dir if library else None)


def _check_verify_method(method: str, target, rpc) -> None:
    """Refuse a verification that cannot run, before any heavy work."""
    from .targets import is_aarch64

    if method not in VERIFY_METHODS:
        raise RebirthError(f"unknown --verify {method!r}; known: {', '.join(VERIFY_METHODS)}")
    if method == "qemu":
        if not is_aarch64(target):
            raise RebirthError("--verify qemu runs arm (aarch64) builds; for x86 use --verify native")
        from .native import emulator

        emulator("aarch64")  # names the Debian package if qemu is missing
    if method == "native" and (is_cuda(target) or not runs_here(target)):
        other = "--verify rpc (on a GPU machine)" if is_cuda(target) else "--verify qemu or rpc"
        raise RebirthError(f"--verify native runs CPU builds for this machine; a build for {describe(target)} needs {other}")
    if method == "rpc" and rpc is None:
        raise RebirthError("--verify rpc needs --rpc-tracker HOST:PORT and --rpc-key KEY")


def _verify(method: str, built: BuiltModel, module, inputs, rpc, directory: str):
    """Export ``built``, run the exported library where it belongs, compare with x86 Python.

    Returns (the verified library's path, the report's ``verification`` entry). A mismatch raises:
    a library that computes something else must never be written.
    """
    from .native import VERIFY_TOLERANCE, arch_of, run_library
    from .remote import export_for_device, run_remote

    start = time.perf_counter()
    reference = host_build_for(built, module).run(inputs)
    library = export_for_device(built, directory)
    entry = {"method": method, "tolerance": VERIFY_TOLERANCE}
    if method == "rpc":
        outputs, timing = run_remote(library, inputs, rpc, built.target)
        entry.update(ran_on=f"RPC device {rpc}", latency_ms=timing)
    else:
        arch = arch_of(built.target)
        outputs, stats = run_library(library, inputs, arch=arch, warmup=0, repeat=1)
        if method == "qemu":
            entry.update(ran_on="qemu-aarch64 user-mode emulation, native runner (rebirth-run)",
                         note="emulated: correctness only; timings under qemu say nothing about a device's speed")
        else:
            entry.update(ran_on="this machine, native runner (rebirth-run)")
    diff = report_mod.output_difference(outputs if len(outputs) > 1 else outputs[0], reference)
    entry.update(diff, reference="the same module built for x86, run by TVM's Python VM",
                 passed=diff["max_rel_diff"] <= VERIFY_TOLERANCE, seconds=round(time.perf_counter() - start, 2))
    if not entry["passed"]:
        raise CheckFailed(f"the exported library ({method}) differs from the x86 build by {diff['max_rel_diff']:.3g} "
                           f"(relative), above {VERIFY_TOLERANCE:g}; nothing was written")
    return library, entry


def rebirth(model, calib, hook="lstsq", sites="all", target="x86", input_shape=None, pool_kernel: str = "auto",
            branches=("pool", "reduce"), allow_more_work: bool = False, preset: str | None = None,
            calib_count: int | None = None, passes: str = "exact", streamline: bool = True, select: str = "all",
            tucker: float | None = None, max_site_error: float | None = None, refit_classifier: bool = False):
    """Rebirth a model: exact passes, then relearned streamline merges. Returns ``(module, report)``.

    ``calib`` is a folder of images, an ``.npy`` file, an array or iterable of inputs, or
    ``"random"``; ``hook`` is ``"lstsq"``, ``"module:function"`` or a callable
    ``hook(RetrainSite) -> (weight, bias)``; ``sites`` is ``"all"`` or names / glob patterns.
    The report holds every site (with its fidelity) and the end-to-end ``fidelity``; see
    :func:`compile_model` for the rest. The built module is ``report``-independent: build it with
    :func:`rebirth_tvm.build` or use :func:`compile_model` to get it too.
    """
    options = RebirthOptions(calib=calib, hook=hook, sites=sites, pool_kernel=pool_kernel, branches=tuple(branches),
                             allow_more_work=allow_more_work, preset=preset, calib_count=calib_count, streamline=streamline,
                             select=select, tucker=tucker, max_site_error=max_site_error, refit_classifier=refit_classifier)
    result = compile_model(model, target=target, passes=passes, input_shape=input_shape, rebirth=options)
    return result.module, result.report


def _calibration(options: RebirthOptions, name, specs):
    from .calibration import load_calibration
    from .models import MODELS

    preset = options.preset or (MODELS[name].preset if isinstance(name, str) and name in MODELS else "imagenet")
    # Three at least: one held out for the end-to-end fidelity, two left so that the relearning
    # pass can hold one out for each site's fidelity.
    calibration = load_calibration(options.calib, specs[0].shape, preset=preset, count=options.calib_count, min_samples=3)
    batch = int(specs[0].shape[0])
    if len(calibration.held_out) < batch:
        # The end-to-end fidelity runs whole batches of held-out inputs: with none it would be NaN.
        total = len(calibration.train) + len(calibration.held_out)
        raise RebirthError(f"{total} calibration inputs hold out {len(calibration.held_out)}, fewer than one batch of {batch}: "
                           f"give at least {5 * batch} (a fifth is held out to measure fidelity)")
    return calibration


def _rebirth_stage(mod, options: RebirthOptions, calibration, onnx_model, specs, target, rpc, tuning_db, merge_parallel: bool,
                   allow_kernel_padding: bool = False):
    """Relearned merges, then the end-to-end fidelity on the held-out inputs."""
    from .hooks import resolve_hook
    from .passes import (DistributePoolOverConcat, LatencySelector, MergeParallelConvs, Rebirth, RefitClassifier, TuckerDecompose,
                         record_sites)

    start = time.perf_counter()
    selector = None
    if options.select == "latency":
        selector = LatencySelector(target, margin=options.select_margin, rpc=rpc,
                                   tuning_db=tuning_db if tuning_db and os.path.isdir(tuning_db) else None)
    hook = resolve_hook(options.hook)
    merge = Rebirth(calibration.train, hook=hook, sites=options.sites, pool_kernel=options.pool_kernel,
                    branches=tuple(options.branches), allow_more_work=options.allow_more_work, streamline=options.streamline,
                    selector=selector, max_site_error=options.max_site_error) if options.streamline or options.branches else None
    with record_sites() as sites:
        # Exact first: pools after inception modules move into the branches, where they merge.
        mod = reference = DistributePoolOverConcat(sites=options.sites)(mod)
        if merge is not None:
            mod = merge(mod)
        if options.tucker is not None:
            mod = TuckerDecompose(calibration.train, hook=hook, sites=options.sites, energy=options.tucker, selector=selector,
                                  max_site_error=options.max_site_error)(mod)
        if options.refit_classifier:
            mod = RefitClassifier(calibration.train, reference, hook=hook)(mod)
        relearn_seconds = time.perf_counter() - start
        tuned = None
        if options.finetune is not None:
            from .finetune import finetune

            regenerated = {s.site + suffix for s in sites if s.status == "rewritten" and not s.exact
                           for suffix in ("_conv", "_bias", "_tucker_restore")}
            mod, tuned = finetune(mod, regenerated, options.finetune)
        if merge_parallel:
            # Branch merges leave new convs reading the module input (a pool branch's projection,
            # say): the exact sibling merge combines them with the convs already there.
            mod = MergeParallelConvs(allow_kernel_padding=allow_kernel_padding)(mod)
    built = build(mod, target)
    checked = host_build_for(built, mod)
    batch = specs[0].shape[0]
    held = calibration.held_out[: len(calibration.held_out) // batch * batch]
    outputs, references = [], []
    for i in range(0, len(held), batch):
        sample = held[i:i + batch]
        outputs.append(_per_sample(checked.run(sample), batch))
        references.append(_per_sample(onnxruntime_outputs(onnx_model, {specs[0].name: sample})[0], batch))
    fidelity = report_mod.logit_agreement(np.concatenate(outputs), np.concatenate(references))
    fidelity.update({
        "reference": "onnxruntime on the original model (ORT_DISABLE_ALL)",
        "calibration": calibration.description,
        "random_inputs": calibration.is_random,
        "hook": options.hook if isinstance(options.hook, str) else getattr(options.hook, "__name__", type(options.hook).__name__),
        "relearn_seconds": round(relearn_seconds, 2),
        "built": built,
    })
    if tuned:
        fidelity["finetune"] = tuned
    return mod, list(sites), fidelity


def computed_in(onnx_model, specs) -> list[str]:
    """The float dtypes a network computes in: its inputs' and its weights' (not an output cast)."""
    import onnx

    weights = {onnx.helper.tensor_dtype_to_np_dtype(init.data_type).name for init in onnx_model.graph.initializer
               if init.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)}
    return sorted({s.dtype for s in specs} | weights)


def _per_sample(output, batch: int) -> np.ndarray:
    """An output as rows, one per sample when the batch is its first axis (a scalar or a
    batch-less output is one row for the whole batch)."""
    output = np.asarray(output)
    if output.ndim and output.shape[0] == batch:
        return output.reshape(batch, -1)
    return output.reshape(1, -1)


def write_result(result: CompileResult, out, onnx_path: str | None = None, force: bool = False, announce=None) -> list[str]:
    """Write model.so, report.json, report.md into ``out`` as one transaction (and the ONNX, if asked).

    ``out`` is a directory path or an :class:`~rebirth_tvm.output.OutputPlan` checked before the
    work (the CLI does that, so a bad ``--out`` fails in a second, not after the compile). Only
    files the tool writes are ever replaced (:mod:`rebirth_tvm.output`). With a runner,
    ``rebirth-run`` and the two TVM runtime libraries it loads are written too: the directory is
    then a bundle to copy to the device as is. Returns the names written into the directory.
    """
    import rebirth_tvm

    from .output import WRITTEN_BY, OutputPlan

    plan = out if isinstance(out, OutputPlan) else OutputPlan.check(out, force=force, onnx_path=onnx_path)
    exported = None
    if plan.onnx_path:
        from .export_onnx import to_onnx

        exported = to_onnx(result.module, name=result.report["model"])  # fails before anything is written
    with plan.staging() as stage:
        if result.library:
            shutil.copy2(result.library, stage.path("model.so"))  # the very file verified
        else:
            result.built.export(stage.path("model.so"))
        if result.runner:
            from .native import copy_runner

            copy_runner(result.runner, stage.directory)
        if exported is not None:
            import onnx

            onnx.save(exported, stage.onnx_path())
        files = sorted(set(os.listdir(stage.directory)) | {"report.json", "report.md"} | set(stage.inherited_names()))
        report = {"written_by": f"{WRITTEN_BY} {rebirth_tvm.__version__}", "files": files, **result.report}
        report_mod.write_json(report, stage.path("report.json"))
        with open(stage.path("report.md"), "w") as f:
            f.write(report_mod.markdown(result.report))
        from .cli import deferred_interrupts

        # The commit is never cut in half by a signal. With ``announce`` (the CLI's summary) a
        # signal during the commit or the announcement is dropped: the result is complete.
        with deferred_interrupts(raise_pending=announce is None):
            names = stage.commit()
            if announce is not None:
                announce(names)
        return names

