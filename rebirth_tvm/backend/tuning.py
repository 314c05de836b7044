"""MetaSchedule tuning with a database that is reused across runs.

On CPU targets the untuned build already has a schedule for every kernel (:mod:`.kernels`);
tuning searches the blocked-conv template's tile sizes, heaviest convs first, and every other
kernel keeps its rule's schedule. On GPU targets it is TVM's generic search. Built in:

* tasks come from the *fused* module the build schedules (the CPU kernels' blocked, fused
  module; ``relax.get_pipeline("zero")`` on GPUs): the database keys are those PrimFuncs, so
  tuning and applying see the same kernels;
* the default builder re-imports ``tvm.s_tir.tensor_intrin`` (15 s) in every fresh worker pool
  and times out at 30 s on two busy cores; :func:`fast_build` skips that and the timeout is 120 s;
* the database is a JSON directory (``--tuning-db``): tasks that already have records are not
  tuned again, so a warm database recompiles in seconds;
* the XGBoost cost model is imported up front (a missing xgboost otherwise fails mid-run);
* candidates are measured here, or on a board over RPC (:class:`rebirth_tvm.backend.remote.RpcDevice`);
* a progress bar counts the measured trials (tuning GoogLeNet takes a while).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time

import tvm
from tvm import relax

from rebirth_tvm.core.errors import RebirthError


def fast_build(mod, target, _params):
    """MetaSchedule builder function without the per-pool tensor-intrinsic import (see above)."""
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    return tvm_build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target)


def export_aarch64(module) -> str:
    """MetaSchedule export for ARM candidates measured over RPC: link with the cross compiler."""
    import tempfile

    from rebirth_tvm.backend.targets import aarch64_compiler

    # MetaSchedule's builder workers import this function by name: it cannot carry the target,
    # so it asks the same place the target does.
    path = os.path.join(tempfile.mkdtemp(prefix="rebirth-candidate-"), "candidate.so")
    module.export_library(path, cc=aarch64_compiler(check=False))
    return path


def _progress_callback(total: int):
    """A measure callback that advances a tqdm bar by each batch of measured candidates."""
    from tqdm.auto import tqdm
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback
    from tvm.ir.utils import derived_object

    bar = tqdm(total=total, desc="tuning", unit="trial", dynamic_ncols=True)

    failed = [0]

    @derived_object
    class Progress(PyMeasureCallback):
        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
            failed[0] += sum(1 for b, r in zip(builder_results, runner_results) if b.error_msg or r.error_msg)
            bar.set_postfix(task=task_id, failed=failed[0], refresh=False)
            bar.update(len(measure_candidates))

    return Progress(), bar


def tune(mod: tvm.IRModule, target, trials: int, database_dir: str,
         max_trials_per_task: int | None = None, seed: int = 0, rpc=None, progress: bool = True):
    """Tune the tasks of ``mod`` that ``database_dir`` has no records for; returns (database, info).

    ``trials`` is the global budget over the tasks that still need tuning; 0 only applies what
    the database holds. ``max_trials_per_task`` caps any one task. ``rpc`` (an
    :class:`~rebirth_tvm.backend.remote.RpcDevice`) measures candidates on that device instead of here.
    """
    from tvm.s_tir import meta_schedule as ms

    if trials < 0:
        raise RebirthError(f"--tune-trials must be 0 or more, got {trials}")
    if importlib.util.find_spec("xgboost") is None:  # the cost model; missing, it would fail mid-run
        raise RebirthError("tuning needs xgboost: pip install xgboost")
    os.makedirs(database_dir, exist_ok=True)
    start = time.perf_counter()
    # The kernels the build schedules (blocked layout, fused): tuning records must match them.
    fused = _fused_for(target)(mod)
    extracted = ms.relax_integration.extract_tasks(fused, target.tvm)
    database = ms.database.JSONDatabase(work_dir=database_dir)
    missing = [t for t in extracted if not database.has_workload(t.dispatched[0])]
    info = {"tasks": len(extracted), "tasks_already_tuned": len(extracted) - len(missing), "tasks_tuned": 0,
            "trials": trials, "database": os.path.abspath(database_dir)}
    if target.is_cpu:
        # CPU: only the blocked convs have choices (their tile sizes, in the template's own
        # space); every other kernel keeps its rule's schedule. The budget goes to the convs
        # with the most FLOPs first, so a short tuning spends it where the time is.
        # Chosen among all the convs, then the ones the database lacks: a rerun with the same
        # budget and database tunes nothing again.
        chosen = {id(t) for t in _conv_tasks_by_flops(extracted, trials)[0]}
        missing = [t for t in missing if id(t) in chosen]
        info["tasks_kept_template"] = len(extracted) - info["tasks_already_tuned"] - len(missing)
    if trials and missing:
        if progress:
            # MetaSchedule prints a task table to stdout after every batch; the bar replaces it
            # on the console (the console level is read when the task loggers are made, here),
            # and the full logs stay in DATABASE/logs. progress=False leaves logging alone.
            logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
        if target.is_cpu:
            space, strategy = _template_space(target.tvm), "replay-trace"
        else:
            space, strategy = "post-order-apply", "evolutionary"
        contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
            extracted_tasks=missing, work_dir=database_dir, space=space, strategy=strategy, seed=seed)
        # Every task first gets one batch, so keep batches small enough for all to get trials.
        per_iter = max(1, min(16, trials // len(missing)))
        evaluator = ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=0)
        runner = rpc.runner(evaluator) if rpc else ms.runner.LocalRunner(evaluator_config=evaluator)
        builder = ms.builder.LocalBuilder(max_workers=os.cpu_count() or 1, timeout_sec=120, f_build=fast_build,
                                          f_export=export_aarch64 if target.is_aarch64 else None)
        callbacks = list(ms.measure_callback.MeasureCallback.create("default"))
        bar = None
        if progress:
            callback, bar = _progress_callback(trials if max_trials_per_task is None else min(trials, max_trials_per_task * len(missing)))
            callbacks.append(callback)
        try:
            ms.tune_tasks(
                tasks=contexts, task_weights=weights, work_dir=database_dir, max_trials_global=trials,
                max_trials_per_task=max_trials_per_task, num_trials_per_iter=per_iter,
                builder=builder, runner=runner, database=database, cost_model="xgb", measure_callbacks=callbacks,
            )
            if target.is_cpu:
                # The template's own choice is measured and recorded too, by the same runner: the
                # build takes each kernel's fastest record, so a short tuning can only keep or beat
                # the untuned schedule (random samples alone may never draw the default). After
                # the search: an interrupted run leaves no task that holds only its default, which
                # a rerun would take as tuned.
                info["defaults_recorded"] = _record_defaults(missing, target.tvm, builder, runner, database)
        finally:
            if bar is not None:
                bar.close()
        info["tasks_tuned"] = len(missing)
        info["max_trials_per_task"] = max_trials_per_task
        info["measured_on"] = f"RPC device {rpc}" if rpc else "this machine"
    info["seconds"] = round(time.perf_counter() - start, 2)
    return database, info


def _record_defaults(tasks: list, target: tvm.target.Target, builder, runner, database) -> int:
    """Build and time the blocked-conv template's default schedule of each task with the
    tuner's own builder and runner, and commit it to ``database`` as a tuning record; returns how
    many were recorded (a default that fails to build or run is left to the search)."""
    from tvm.s_tir import meta_schedule as ms

    from rebirth_tvm.backend.kernels.conv_nchwc import BlockedConv

    rule, scheduled = BlockedConv(), []
    for task in tasks:
        workload = task.dispatched[0]
        sch = rule.apply(workload["main"], target, False)
        if sch is not None:
            scheduled.append((workload, sch))
    if not scheduled:
        return 0
    built = builder.build([ms.builder.BuilderInput(sch.mod, target) for _, sch in scheduled])
    ran, inputs = [], []
    for (workload, sch), result in zip(scheduled, built):
        if result.error_msg is None:
            args = ms.arg_info.ArgInfo.from_prim_func(workload["main"])
            ran.append((workload, sch, args))
            inputs.append(ms.runner.RunnerInput(result.artifact_path, device_type="cpu" if target.kind.name == "llvm" else target.kind.name,
                                                args_info=args))
    recorded = 0
    for (workload, sch, args), future in zip(ran, runner.run(inputs) if inputs else []):
        result = future.result()
        if result.error_msg is None and result.run_secs:
            database.commit_tuning_record(ms.database.TuningRecord(
                sch.trace, database.commit_workload(workload), list(result.run_secs), target, args))
            recorded += 1
    return recorded


def _fused_for(target):
    """What the build fuses and schedules for ``target``: the CPU kernels pipeline's fused
    module on llvm targets, TVM's own ("zero") elsewhere."""
    if not target.is_cpu:
        def fused(mod):
            with target.tvm:
                return relax.get_pipeline("zero")(mod)

        return fused
    from rebirth_tvm.backend.kernels import fused_kernels

    return fused_kernels(target.tvm)


def _conv_tasks_by_flops(tasks: list, trials: int) -> tuple[list, list]:
    """The blocked-conv tasks (the only ones with choices), heaviest first, as many as the
    budget gives a few trials each; and the rest, which keep their rules' schedules."""
    from tvm.s_tir.analysis import estimate_tir_flops

    from rebirth_tvm.backend.kernels.conv_nchwc import BlockedConv

    rule = BlockedConv()
    convs = [t for t in tasks if rule.apply(t.dispatched[0]["main"], t.target, False) is not None]  # the template takes it
    convs.sort(key=lambda t: -estimate_tir_flops(t.dispatched[0]) * t.weight)
    chosen = convs[:max(1, trials // TRIALS_PER_CONV)] if trials else convs
    return chosen, [t for t in tasks if t not in chosen]


#: trials a conv task needs to see its template's few tile choices
TRIALS_PER_CONV = 8


def _template_space(target: tvm.target.Target):
    """MetaSchedule design space = the blocked-conv template with its tile sizes as choices
    (the untuned choice among them): tuning samples the template's own space, around the
    default, instead of searching from scratch. Random samples may never draw the default
    itself, so :func:`_record_defaults` measures it alongside."""
    from tvm.s_tir import meta_schedule as ms

    from rebirth_tvm.backend.kernels.conv_nchwc import BlockedConv

    rule = BlockedConv()

    def schedule(sch):
        if not rule.schedule(sch, target, tunable=True):  # (tasks are chosen where the template applies)
            raise ValueError("not a blocked conv")
        return sch

    return ms.space_generator.ScheduleFn(schedule, sch_rules=[], postprocs=[], mutator_probs={})


def compile_with_database(mod: tvm.IRModule, target, database, counts=None):
    """Build ``mod`` with the schedules in ``database`` where it has them; on CPU targets the
    schedule rules take every other kernel (``counts`` says how many each)."""
    from tvm.s_tir import meta_schedule as ms

    if not target.is_cpu:
        return ms.relax_integration.compile_relax(database, mod, target.tvm, params=None)
    from rebirth_tvm.backend.kernels import cpu_pipeline

    return tvm.compile(mod, target=target.tvm, relax_pipeline=cpu_pipeline(target.tvm, counts, database))
