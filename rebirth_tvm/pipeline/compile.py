"""The whole job as one function: ONNX → Relax → rebirth passes → build → check → report.

:func:`compile_model` is what ``python -m rebirth_tvm.compile`` runs: it resolves the target
once, checks the options, and composes the stages of :mod:`rebirth_tvm.pipeline.stages`. The
result is checked against onnxruntime running the original model before anything is written;
:func:`~rebirth_tvm.pipeline.result.write_result` writes it as one transaction.
"""

from __future__ import annotations

import os

import tvm

from rebirth_tvm.backend.build import check_cuda_source
from rebirth_tvm.backend.targets import resolve_target
from rebirth_tvm.pipeline import report as report_mod
from rebirth_tvm.pipeline import stages
from rebirth_tvm.pipeline.options import PASS_SETS, CompileOptions, RebirthOptions, TuningOptions
from rebirth_tvm.pipeline.result import CompileResult, write_result

__all__ = ["PASS_SETS", "CompileResult", "RebirthOptions", "apply_passes", "compile_model", "rebirth", "write_result"]


def compile_model(model, target="x86", passes: str = "exact", input_shape=None, cpu: str | None = None,
                  allow_kernel_padding: bool = False, merge_parallel: bool = True, seed: int = 0,
                  rebirth: RebirthOptions | None = None, arch: str | None = None, tune_trials: int = 0,
                  tuning_db: str | None = None, max_trials_per_task: int | None = None, rpc=None,
                  verify: str | None = None, runner: bool = False, evaluate: str | None = None,
                  normalisation=None) -> CompileResult:
    """Import, rewrite, build and check one model.

    Parameters
    ----------
    model: an ``.onnx`` path, a zoo name or an ``onnx.ModelProto``.
    target: ``"x86"``, ``"arm"`` (aarch64 Linux), ``"cuda"``, a JSON target dict, or a resolved
        :class:`~rebirth_tvm.backend.targets.Target`. Builds for another machine are checked
        through an x86 build of the same module (the report says so); CUDA kernels are also
        compiled with nvcc when it is installed.
    passes: ``"exact"`` (FoldBatchNorm, FoldChannelAffine, MergeParallelConvs) or ``"none"``.
    input_shape: fixed input shape (needed for dynamic dimensions).
    cpu: LLVM CPU name for x86 (default: this machine's) or arm (cortex-a53/a72/a76, neoverse-n1).
    arch: CUDA architecture (``sm_80`` by default).
    tune_trials: MetaSchedule trials for the final module (0: no tuning). Tasks that
        ``tuning_db`` already holds records for are not tuned again.
    tuning_db: the tuning database directory (default: a temporary one, then it is only good
        for this run). With ``tune_trials=0`` an existing database is still applied.
    max_trials_per_task: cap on the trials any one task gets.
    rpc: a :class:`~rebirth_tvm.backend.remote.RpcDevice`: tuning measures on it, ``verify="rpc"`` runs there.
    verify: run the exported library and compare it with an x86 build of the same module
        (within ``native.VERIFY_TOLERANCE``): ``"qemu"`` (an arm build under qemu-aarch64, with
        the native runner), ``"native"`` (an x86 build with the native runner) or ``"rpc"``
        (on the RPC device, which also times it there).
    runner: also build the native runner (``rebirth-run``) for the target; written beside model.so.
    evaluate: ``"fashion-mnist"`` or ``"fashion-mnist:N"``: classify the labelled test images with
        the model as imported and as compiled, and time both (report ``evaluation``).
    normalisation: the model's input normalisation over its preset
        (:class:`~rebirth_tvm.frontend.preprocessing.Normalisation`: mean, std, pixel range,
        channel order), for the calibration and evaluation images.
    allow_kernel_padding: let MergeParallelConvs zero-pad kernels of different sizes.
    merge_parallel: run MergeParallelConvs at all.
    seed: seed of the random inputs used for the check.
    rebirth: also run the relearned rewrites (:class:`RebirthOptions`); the report then holds
        each site's fidelity and the end-to-end ``fidelity`` on held-out calibration inputs.

    The exact stage is always checked against onnxruntime on the original model (within
    :func:`rebirth_tvm.core.tolerance.exact_tolerance` of the output's scale); relearned stages
    are measured, not bounded. Raises :class:`RebirthError` for bad input, :class:`CheckFailed`
    for a failed check.
    """
    options = CompileOptions(
        target=resolve_target(target, cpu, arch), passes=passes, input_shape=input_shape,
        allow_kernel_padding=allow_kernel_padding, merge_parallel=merge_parallel, seed=seed, rebirth=rebirth,
        tuning=TuningOptions(tune_trials, tuning_db, max_trials_per_task), rpc=rpc, verify=verify, runner=runner,
        evaluate=evaluate, normalisation=normalisation)
    return run(model, options)


def run(model, options: CompileOptions) -> CompileResult:
    """The stages, in order, for one model (see :mod:`rebirth_tvm.pipeline.stages`)."""
    job = stages.prepare(model, options)
    exact = stages.rewrite_exact(job)
    checked = stages.build_and_check(job, exact)
    module, sites, built = exact.module, exact.sites, checked.built
    report = {
        "model": os.path.basename(str(job.name)),
        "target": options.target.describe(),
        "input_name": job.specs[0].name,
        "input_shape": list(job.specs[0].shape),
        "passes": options.passes + ("+rebirth" if options.rebirth else ""),
        "ops_before": report_mod.op_counts(job.original),
        **checked.difference,
        "check": checked.check,
    }
    if options.rebirth:
        # The sibling merge hides inception reduce convs from the branch merges: relearn from
        # the exact module without it (it runs again after the relearned rewrites).
        base = stages.rewrite_exact(job, merge_parallel=False) if options.merge_parallel and options.passes == "exact" else exact
        relearned = stages.rewrite_relearned(job, base)
        module, sites, built = relearned.module, relearned.sites, relearned.built
        report["fidelity"] = relearned.fidelity
    if options.target.is_cuda:
        report["cuda_kernels"] = check_cuda_source(built)  # the final module's kernels
    if options.tuning.wanted:
        built, report["tuning"] = stages.tune(job, module, built, checked.tolerance)
    verified = None
    if options.verify:
        verified = stages.verify(job, built, module)
        report["verification"] = verified.entry
    if options.evaluate:
        report["evaluation"] = stages.evaluate(job, built, tuned="tuning" in report)
    runner_path = None
    if options.runner:
        from rebirth_tvm.backend.native import build_runner, runner_arch

        runner_path = build_runner(runner_arch(options.target))
    report.update({
        "ops_after": report_mod.op_counts(module),
        "sites": [s.to_json() for s in sites],
        "compile_seconds": round(built.compile_seconds, 3),
        **({"kernels": built.kernels} if built.kernels else {}),
        "versions": {"tvm": tvm.__version__},
    })
    return CompileResult(module, built, report, sites, library=verified.library if verified else None, runner=runner_path,
                         _library_dir=verified.directory if verified else None)


def apply_passes(mod: tvm.IRModule, passes: str = "exact", allow_kernel_padding: bool = False, merge_parallel: bool = True):
    """Run a named pass set on a Relax module; returns (module, site records)."""
    from rebirth_tvm.core.errors import RebirthError
    from rebirth_tvm.passes import exact_pipeline, record_sites

    if passes not in PASS_SETS:
        raise RebirthError(f"unknown pass set {passes!r}; known: {', '.join(PASS_SETS)}")
    if passes == "none":
        return mod, []
    with record_sites() as sites:
        mod = exact_pipeline(merge_parallel=merge_parallel, allow_kernel_padding=allow_kernel_padding)(mod)
    return mod, list(sites)


def rebirth(model, calib, hook="lstsq", sites="all", target="x86", input_shape=None, passes: str = "exact", **options):
    """Rebirth a model: exact passes, then the relearned rewrites. Returns ``(module, report)``.

    ``calib`` is a folder of images, an ``.npy`` file, an array or iterable of inputs, or
    ``"random"``; ``hook`` is ``"lstsq"``, ``"sgd"``, ``"module:function"`` or a callable
    ``hook(RetrainSite) -> (weight, bias)``; ``sites`` is ``"all"`` or names / glob patterns;
    ``options`` are the rest of :class:`RebirthOptions` (``branches``, ``tucker``, ...). The
    report holds every site (with its fidelity) and the end-to-end ``fidelity``;
    :func:`compile_model` also returns the build.
    """
    from rebirth_tvm.core.errors import RebirthError

    unknown = set(options) - set(RebirthOptions.__dataclass_fields__)
    if unknown:
        raise RebirthError(f"unknown rebirth option(s) {', '.join(sorted(unknown))}; known: {', '.join(RebirthOptions.__dataclass_fields__)}")
    options = RebirthOptions(calib=calib, hook=hook, sites=sites, **options)
    result = compile_model(model, target=target, passes=passes, input_shape=input_shape, rebirth=options)
    return result.module, result.report
