"""The compile, stage by stage; :func:`rebirth_tvm.pipeline.compile.compile_model` composes them.

    prepare → rewrite_exact → build_and_check → rewrite_relearned → tune → verify → evaluate

Each stage is a function with typed inputs and outputs: :func:`prepare` reads and checks
everything a user gave (the model, its shapes, the calibration inputs, the tools a later stage
needs) before any heavy work and returns a :class:`Job`; the others take the job and what the
stage before produced. The bench and the accuracy study call the stages they need.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import dataclasses
from dataclasses import dataclass, field

import numpy as np
import tvm

from rebirth_tvm.backend.build import BuiltModel, build, build_tuned, compile_for_host, host_build_for
from rebirth_tvm.core.compare import logit_agreement, output_difference
from rebirth_tvm.core.errors import CheckFailed, RebirthError
from rebirth_tvm.core.tolerance import describe as describe_tolerance
from rebirth_tvm.core.tolerance import exact_tolerance, longest_reduction
from rebirth_tvm.frontend.onnx_import import graph_inputs, import_onnx, random_inputs, read_onnx
from rebirth_tvm.frontend.reference import onnxruntime_outputs, reference_name
from rebirth_tvm.pipeline.options import CompileOptions, RebirthOptions


@dataclass
class Job:
    """A compile's checked input: the model as read, its inputs, and the options."""

    name: str
    onnx_model: object
    specs: list
    options: CompileOptions
    #: the imported module, before any pass
    original: tvm.IRModule
    #: random inputs (seeded) the exact check runs on
    inputs: dict
    calibration: object = None
    evaluation_set: tuple | None = None

    @property
    def input_list(self) -> list:
        return [self.inputs[s.name] for s in self.specs]

    @property
    def batch(self) -> int:
        return int(self.specs[0].shape[0])


@dataclass
class Rewrite:
    """A module and the record of every site the passes looked at."""

    module: tvm.IRModule
    sites: list = field(default_factory=list)


@dataclass
class Checked:
    """A build of the exact module, checked against onnxruntime on the original model."""

    built: BuiltModel
    difference: dict
    check: dict
    tolerance: float


@dataclass
class Relearned:
    """The relearned module, its sites, its build and its end-to-end fidelity."""

    module: tvm.IRModule
    sites: list
    built: BuiltModel
    fidelity: dict


def prepare(model, options: CompileOptions) -> Job:
    """Read the model and check every input before any heavy work (a bad one fails in a second)."""
    onnx_model = read_onnx(model)
    specs = graph_inputs(onnx_model, options.input_shape)
    name = model if isinstance(model, str) else (onnx_model.graph.name or "model")
    preprocessing = preprocessing_for(options, name, specs)
    calibration = calibration_for(options.rebirth, specs, preprocessing) if options.rebirth else None
    evaluation_set = None
    if options.evaluate:
        from rebirth_tvm.pipeline.evaluate import labelled_test_set, parse

        evaluation_set = (*parse(options.evaluate), preprocessing)
        labelled_test_set(evaluation_set[0], 1, specs[0].shape, preprocessing)  # a missing dataset or wrong model fails now
    if options.verify == "qemu":
        from rebirth_tvm.backend.native import emulator

        emulator("aarch64")  # names the Debian package if qemu is missing
    if options.native_runner:
        from rebirth_tvm.backend.native import require_tools, runner_arch

        require_tools(runner_arch(options.target))  # cmake and the compiler, named by Debian package
    return Job(name, onnx_model, specs, options, import_onnx(onnx_model, specs), random_inputs(specs, options.seed),
               calibration, evaluation_set)


def preprocessing_for(options: CompileOptions, name, specs):
    """How images become this model's inputs: the preset (``--preset``, else the zoo model's,
    else by the input's channels: gray for one, ImageNet's for three) with the user's overrides."""
    from rebirth_tvm.frontend.preprocessing import resolve
    from rebirth_tvm.frontend.zoo import MODELS

    given = options.rebirth.preset if options.rebirth else None
    default = MODELS[name].preset if isinstance(name, str) and name in MODELS else (
        "gray" if len(specs[0].shape) == 4 and int(specs[0].shape[1]) == 1 else "imagenet")
    preprocessing = resolve(given, default)
    if options.normalisation is not None:
        preprocessing = options.normalisation.applied_to(preprocessing)
    return preprocessing


def calibration_for(options: RebirthOptions, specs, preprocessing):
    """The calibration inputs, preprocessed as the model expects; enough for a held-out batch."""
    from rebirth_tvm.relearn.calibration import load_calibration

    # Three at least: one held out for the end-to-end fidelity, two left so that the relearning
    # pass can hold one out for each site's fidelity.
    calibration = load_calibration(options.calib, specs[0].shape, preset=preprocessing, count=options.calib_count, min_samples=3)
    batch = int(specs[0].shape[0])
    if len(calibration.held_out) < batch:
        # The end-to-end fidelity runs whole batches of held-out inputs: with none it would be NaN.
        total = len(calibration.train) + len(calibration.held_out)
        raise RebirthError(f"{total} calibration inputs hold out {len(calibration.held_out)}, fewer than one batch of {batch}: "
                           f"give at least {5 * batch} (a fifth is held out to measure fidelity)")
    return calibration


def rewrite_exact(job: Job, merge_parallel: bool | None = None) -> Rewrite:
    """The exact passes (``options.passes``) on the imported module."""
    from rebirth_tvm.passes import exact_pipeline, record_sites

    options = job.options
    if options.passes == "none":
        return Rewrite(job.original, [])
    merge = options.merge_parallel if merge_parallel is None else merge_parallel
    with record_sites() as sites:
        module = exact_pipeline(merge_parallel=merge, allow_kernel_padding=options.allow_kernel_padding)(job.original)
    return Rewrite(module, list(sites))


def build_and_check(job: Job, rewrite: Rewrite) -> Checked:
    """Build for the target and check against onnxruntime on the original model, within
    :func:`~rebirth_tvm.core.tolerance.exact_tolerance` of the output's scale.

    A build for another machine (arm, a GPU we do not have) is checked through an x86 build of
    the same module: the rewrite is what the check is about; the target code is TVM's.
    Raises :class:`CheckFailed` (nothing is written) when it differs.
    """
    built = build(rewrite.module, job.options.target)
    checked = host_build_for(built, rewrite.module)
    outputs = checked.run(job.input_list)
    references = onnxruntime_outputs(job.onnx_model, job.inputs)
    difference = output_difference(outputs, references if len(references) > 1 else references[0])
    compute_dtypes, output_dtypes = computed_in(job.onnx_model, job.specs), [str(np.asarray(o).dtype) for o in references]
    reduction = longest_reduction(job.original)
    tolerance = exact_tolerance(compute_dtypes, reduction, output_dtypes)
    passed = difference["max_rel_diff"] <= tolerance
    if not passed:
        raise CheckFailed(f"the rewritten model differs from onnxruntime by {difference['max_rel_diff']:.3g} (relative), "
                          f"above the tolerance {tolerance:.3g}; nothing was written")
    check = {
        "reference": reference_name(),
        "inputs": f"random normal, seed {job.options.seed} (not real data)",
        "tolerance": tolerance,
        "tolerance_basis": describe_tolerance(compute_dtypes, reduction, output_dtypes),
        "passed": passed,
        "stage": "exact passes" if job.options.rebirth else job.options.passes,
        "ran_on": checked.target.describe(),
        "target_binary_run": checked is built,
    }
    return Checked(built, difference, check, tolerance)


def rewrite_relearned(job: Job, exact: Rewrite | None = None) -> Relearned:
    """The relearned rewrites, then the end-to-end fidelity on the held-out calibration inputs.

    Starts from the exact module *without* the sibling merge (merged siblings would hide an
    inception module's reduce convs from the branch merges: a reduce conv becomes a slice of the
    merged one); the sibling merge runs after the relearned rewrites, where it also combines the
    new convs that read a module's input. ``exact`` (that module) is made here when not given.
    """
    options, rebirth = job.options, job.options.rebirth
    sibling_merge = options.passes == "exact" and options.merge_parallel
    if exact is None:
        exact = rewrite_exact(job, merge_parallel=False)
    selection = None
    if rebirth.max_drop is not None:
        job, selection = _sites_within_budget(job, exact.module, sibling_merge)
    module, sites, relearn_seconds, finetuned, distilled = _relearn(job, exact.module, sibling_merge)
    built = build(module, options.target)
    fidelity = held_out_fidelity(job, host_build_for(built, module))
    if selection is not None:
        put_back = set(selection["put_back"])
        cost, builds_on = selection["site_cost_points"], selection.get("builds_on", {})

        def why(site: str) -> str:
            alone = f"with {builds_on[site]}, which it builds on," if site in builds_on else "alone"
            return (f"put back by --max-drop {rebirth.max_drop:g}: {alone} it cost {cost[site]:g} points of held-out agreement, "
                    "and with it the cheaper sites went over the budget")

        sites = [dataclasses.replace(s, reason=why(s.site)) if s.site in put_back else s for s in sites]
        # A put-back site that exists only on its base's new conv (a decomposition of a merge's
        # conv) is not even found in the final run: it still gets its line in the report.
        from rebirth_tvm.passes import REFUSED, SiteRecord

        recorded = {s.site for s in sites}
        sites += [SiteRecord(selection["passes"][name], name, REFUSED, why(name), exact=False)
                  for name in selection["put_back"] if name not in recorded]
        selection["final_drop_points"] = round(100 * (1 - fidelity["top1_agreement"]), 2)
        # What ships (a latency selector re-times each run, so it can differ from the trial's).
        selection["kept"] = list(dict.fromkeys(s.site for s in relearned_merges(sites)))
        fidelity["max_drop"] = selection
    fidelity.update({
        "calibration": job.calibration.description,
        "random_inputs": job.calibration.is_random,
        "hook": rebirth.hook if isinstance(rebirth.hook, str) else getattr(rebirth.hook, "__name__", type(rebirth.hook).__name__),
        "relearn_seconds": round(relearn_seconds, 2),
    })
    if finetuned:
        fidelity["finetune"] = finetuned
    if distilled:
        fidelity["distill"] = distilled
    return Relearned(module, list(exact.sites) + sites, built, fidelity)


def _relearn(job: Job, module, sibling_merge: bool):
    """Relearn ``job``'s sites on ``module`` (the exact rewrites without the sibling merge),
    then recover them: distillation, labelled fine-tuning."""
    from rebirth_tvm.passes import (DistributePoolOverConcat, MergeParallelConvs, Rebirth, RefitClassifier, TuckerDecompose,
                                    record_sites)
    from rebirth_tvm.relearn.hooks import resolve_hook

    options, rebirth, train = job.options, job.options.rebirth, job.calibration.train
    start = time.perf_counter()
    selector = None
    if rebirth.select == "latency":
        from rebirth_tvm.backend.site_latency import LatencySelector

        database = options.tuning.database
        selector = LatencySelector(options.target, margin=rebirth.select_margin, rpc=options.rpc,
                                   tuning_db=database if database and os.path.isdir(database) else None)
    hook = resolve_hook(rebirth.hook)
    finetuned = distilled = None
    with record_sites() as sites:
        # Exact first: pools after inception modules move into the branches, where they merge.
        module = reference = DistributePoolOverConcat(sites=rebirth.sites)(module)
        if rebirth.streamline or rebirth.branches:
            module = Rebirth(train, hook=hook, sites=rebirth.sites, pool_kernel=rebirth.pool_kernel, branch_pool_kernel=rebirth.branch_pool_kernel,
                             branches=rebirth.branches,
                             allow_more_work=rebirth.allow_more_work, streamline=rebirth.streamline, selector=selector,
                             max_site_error=rebirth.max_site_error)(module)
        if rebirth.tucker is not None:
            # Ranks in whole channel blocks: a ragged rank would run out of the kernels' blocked layout.
            module = TuckerDecompose(train, hook=hook, sites=rebirth.sites, energy=rebirth.tucker, selector=selector,
                                     max_site_error=rebirth.max_site_error, rank_multiple=options.target.channel_block)(module)
        if rebirth.refit_classifier:
            module = RefitClassifier(train, reference, hook=hook)(module)
        # Recovery trains the network towards the original: with no merge or decomposition
        # relearned there is nothing to recover, and training would only move an exact network.
        recover = bool(relearned_merges(sites))
        if not recover and (rebirth.distill is not None or rebirth.finetune is not None):
            _log("no merge or decomposition was relearned: nothing to recover, so no distillation or fine-tuning")
        # The relearned sites' outputs, and their own bindings (each record lists them), which
        # recovery trains at the full rate (distillation and fine-tuning add no sites).
        relearned = [s for s in sites if s.status == "rewritten" and not s.exact]
        regenerated = {b for s in relearned for b in s.detail.get("new_bindings", [])}
        if rebirth.distill is not None and recover:
            from rebirth_tvm.relearn.distill import classifier_input, distill

            options_ = rebirth.distill
            if classifier_input(reference["main"]) is None and options_.feature_weight:
                options_ = dataclasses.replace(options_, feature_weight=0.0)  # no classifier: logits only
            site_outputs = {s.site for s in relearned}
            module, distilled = distill(module, reference, train, job.calibration.held_out, regenerated,
                                        options_, log=_log, compiler=compile_for_host, site_outputs=site_outputs)
        relearn_seconds = time.perf_counter() - start
        if rebirth.finetune is not None and recover:
            from rebirth_tvm.relearn.finetune import finetune

            module, finetuned = finetune(module, regenerated, rebirth.finetune)
        if sibling_merge:
            module = MergeParallelConvs(allow_kernel_padding=options.allow_kernel_padding)(module)
    return module, list(sites), relearn_seconds, finetuned, distilled


#: passes whose sites ``--max-drop`` chooses among (the classifier refit is not a merge: it stays)
SELECTABLE_PASSES = ("Rebirth", "TuckerDecompose")


def relearned_merges(records) -> list:
    """The records of relearned merges and decompositions (the sites ``--max-drop`` chooses
    among, and what recovery has to recover)."""
    return [r for r in records if r.status == "rewritten" and not r.exact and r.pass_name in SELECTABLE_PASSES]


def _sites_within_budget(job: Job, module, sibling_merge: bool) -> tuple[Job, dict]:
    """``--max-drop POINTS``: the most sites whose rebirth keeps the held-out top-1 agreement with
    the original within ``POINTS`` of 100%, chosen by what each site costs the task.

    1. Every site relearned: within the budget, all are kept.
    2. Otherwise each site's own cost is measured: the agreement drop with only that site reborn
       (a chain site, such as an LRN merged into the conv a pool merge made, with the site it
       builds on: it exists only with it).
    3. Sites are added cheapest first (ties: the most MACs saved first), and the longest such
       prefix whose measured drop is within the budget is kept (a binary search over its length;
       every candidate set is relearned and measured, so what is kept was measured within it).

    Drops are measured on the held-out calibration inputs (a fifth of them, never fitted on):
    with 200 of them, one image is half a point. The slow recovery steps (distillation,
    fine-tuning) run once, on the chosen set; distillation only gains on its held-out objective.
    Measuring the trials after recovery without distilling each one does not work: restoring
    some sites' original blocks in a network distilled with every site reborn costs far more
    than the per-site fits do (fashion_googlenet: 3 to 54 points a site against 0 to 11), since
    distillation adapts every weight to every other site. Returns the job with the chosen sites
    selected and what was measured (with nothing relearned kept, no recovery runs: the network is
    the exact one, with the classifier refit if asked for).
    """
    rebirth = job.options.rebirth
    quick = dataclasses.replace(rebirth, distill=None, finetune=None, max_drop=None)
    budget = rebirth.max_drop
    trials = []
    references = held_out_references(job)  # the same for every trial

    def trial(selection, what: str):
        trial_job = dataclasses.replace(job, options=dataclasses.replace(job.options, rebirth=dataclasses.replace(quick, sites=selection)))
        trial_module, records, _, _, _ = _relearn(trial_job, module, sibling_merge)
        fidelity = held_out_fidelity(job, build(trial_module, "x86"), references)
        drop = round(100 * (1 - fidelity["top1_agreement"]), 2)
        relearned = relearned_merges(records)
        trials.append({"trial": what, "sites": len(relearned), "relearned": [r.site for r in relearned], "drop_points": drop})
        _log(f"--max-drop {budget:g}: {what}: {len(relearned)} site{'' if len(relearned) == 1 else 's'} relearned, held-out agreement drop {drop:g} points")
        return drop, relearned, records

    drop_all, relearned, records = trial(rebirth.sites, "every site")
    # The exact rewrites the merges build on (a pool moved into the branches, whose parts then
    # merge) stay in every trial: a merge site exists only where they were made.
    exact = [r.site for r in records if r.status == "rewritten" and r.exact]
    selection = {"budget_points": budget, "drop_all_sites_points": drop_all, "trials": trials,
                 "measured_on": f"top-1 agreement with the original on the {len(job.calibration.held_out)} held-out calibration inputs"}
    names = list(dict.fromkeys(r.site for r in relearned))  # a merge and a Tucker site may share a name
    builds_on = _chains(relearned)
    if drop_all <= budget:
        return job, {**selection, "put_back": [], "site_cost_points": {}, "builds_on": builds_on}
    selection["passes"] = {r.site: r.pass_name for r in relearned}
    saved = dict.fromkeys(names, 0)
    for r in relearned:
        saved[r.site] += r.detail.get("macs_before", 0) - r.detail.get("macs_after", 0)

    def with_bases(sites):
        chosen = list(sites)
        for name in chosen:  # grows while it is walked: a base's own base joins too
            if name in builds_on and builds_on[name] not in chosen:
                chosen.append(builds_on[name])
        return chosen

    cost = {}
    for name in names:
        group = with_bases([name])
        cost[name] = trial(exact + group, f"only {name}" + (f" (with {', '.join(group[1:])})" if len(group) > 1 else ""))[0]
    order = sorted(names, key=lambda n: (cost[n], -saved[n]))
    prefix, low, high = [], 1, len(order)
    while low <= high:  # the longest cheapest-first prefix measured within the budget
        m = (low + high) // 2
        candidate = with_bases(order[:m])  # a prefix's chain sites bring their bases
        if trial(exact + candidate, f"cheapest {m}")[0] <= budget:
            prefix, low = candidate, m + 1
        else:
            high = m - 1
    # ``kept`` is filled in by rewrite_relearned: what the final run relearned.
    selection.update({"put_back": [n for n in order if n not in prefix], "site_cost_points": cost, "builds_on": builds_on})
    chosen = dataclasses.replace(rebirth, sites=exact + prefix)
    return dataclasses.replace(job, options=dataclasses.replace(job.options, rebirth=chosen)), selection


def _chains(relearned) -> dict[str, str]:
    """Each chain site → the site it builds on: one whose block starts with a conv another site
    put in. Within a pass the record says so (``builds_on``); across passes the site is named
    after that conv (a Tucker site on a conv a merge made), one of the other site's
    ``new_bindings``."""
    names = {r.site for r in relearned}
    emitted = {b: r.site for r in relearned for b in r.detail.get("new_bindings", [])}
    chains = {}
    for r in relearned:
        base = r.detail.get("builds_on") or emitted.get(r.site)
        if base in names and base != r.site:
            chains[r.site] = base
    return chains


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def held_out_references(job: Job) -> np.ndarray:
    """onnxruntime's outputs on the original model for the held-out calibration inputs (whole
    batches): what :func:`held_out_fidelity` compares with; computed once where it is reused."""
    batch, specs = job.batch, job.specs
    held = job.calibration.held_out[: len(job.calibration.held_out) // batch * batch]
    return np.concatenate([_per_sample(onnxruntime_outputs(job.onnx_model, {specs[0].name: held[i:i + batch]})[0], batch)
                           for i in range(0, len(held), batch)])


def held_out_fidelity(job: Job, checked: BuiltModel, references: np.ndarray | None = None) -> dict:
    """Top-1/top-5 agreement and relative logit error against onnxruntime on the original model,
    over the held-out calibration inputs (whole batches)."""
    batch = job.batch
    held = job.calibration.held_out[: len(job.calibration.held_out) // batch * batch]
    outputs = [_per_sample(checked.run(held[i:i + batch]), batch) for i in range(0, len(held), batch)]
    fidelity = logit_agreement(np.concatenate(outputs), held_out_references(job) if references is None else references)
    fidelity["reference"] = "onnxruntime on the original model (ORT_DISABLE_ALL)"
    return fidelity


def tune(job: Job, module, built: BuiltModel, tolerance: float) -> tuple[BuiltModel, dict]:
    """MetaSchedule tuning of the final module; the tuned build is checked against the untuned one
    where it runs here (it must compute the same, within ``tolerance``)."""
    options, tuning = job.options, job.options.tuning
    untuned = host_build_for(built, module)
    with tempfile.TemporaryDirectory(prefix="rebirth-tuning-") as scratch:  # only used without a database
        tuned, info = build_tuned(module, options.target, tuning.trials, tuning.database or scratch,
                                  max_trials_per_task=tuning.max_trials_per_task, rpc=options.rpc)
    if not tuning.database:
        info["database"] = "a temporary one, removed after this run (give tuning_db to keep it)"
    if tuned.target.runs_here:
        info.update(output_difference(tuned.run(job.input_list), untuned.run(job.input_list)))
        info["tuned_matches_untuned"] = info["max_rel_diff"] <= tolerance
        if not info["tuned_matches_untuned"]:
            raise CheckFailed(f"the tuned build differs from the untuned one by {info['max_rel_diff']:.3g} (relative); nothing was written")
    else:
        info["tuned_matches_untuned"] = None  # only the device can run it: --verify says
    return tuned, info


@dataclass
class Verified:
    """The exported library that verification ran (written as is) and the report's entry."""

    library: str
    entry: dict
    #: keeps the library's temporary folder alive exactly as long as this object
    directory: object = field(repr=False)


def verify(job: Job, built: BuiltModel, module) -> Verified:
    """Export ``built``, run the exported library where it belongs, compare with x86 Python.

    A mismatch raises: a library that computes something else must never be written.
    """
    from rebirth_tvm.backend.native import VERIFY_TOLERANCE, run_library
    from rebirth_tvm.backend.remote import export_for_device, run_remote

    method, rpc = job.options.verify, job.options.rpc
    start = time.perf_counter()
    directory = tempfile.TemporaryDirectory(prefix="rebirth-export-")
    reference = host_build_for(built, module).run(job.input_list)
    library = export_for_device(built, directory.name)
    entry = {"method": method, "tolerance": VERIFY_TOLERANCE}
    if method == "rpc":
        outputs, timing = run_remote(library, job.input_list, rpc, built.target)
        entry.update(ran_on=f"RPC device {rpc}", latency_ms=timing)
    else:
        outputs, _ = run_library(library, job.input_list, arch=built.target.arch, warmup=0, repeat=1)
        if method == "qemu":
            entry.update(ran_on="qemu-aarch64 user-mode emulation, native runner (rebirth-run)",
                         note="emulated: correctness only; timings under qemu say nothing about a device's speed")
        else:
            entry.update(ran_on="this machine, native runner (rebirth-run)")
    difference = output_difference(outputs if len(outputs) > 1 else outputs[0], reference)
    entry.update(difference, reference="the same module built for x86, run by TVM's Python VM",
                 passed=difference["max_rel_diff"] <= VERIFY_TOLERANCE, seconds=round(time.perf_counter() - start, 2))
    if not entry["passed"]:
        raise CheckFailed(f"the exported library ({method}) differs from the x86 build by {difference['max_rel_diff']:.3g} "
                          f"(relative), above {VERIFY_TOLERANCE:g}; nothing was written")
    return Verified(library, entry, directory)


def evaluate(job: Job, built: BuiltModel, tuned: bool) -> dict:
    """Top-1 and speed of the model as imported and as compiled, on the labelled test set."""
    from rebirth_tvm.pipeline.evaluate import before_and_after

    dataset, count, preprocessing = job.evaluation_set
    result = before_and_after(build(job.original, job.options.target), built, dataset, count, job.specs[0].shape, preprocessing)
    if tuned:
        result["note"] = "the original is TVM-built untuned, the result tuned; timed round-robin in one process"
    return result


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
