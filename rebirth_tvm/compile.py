"""``python -m rebirth_tvm.compile``: compile a model with the rebirth passes and report.

One command, one function behind it (:func:`rebirth_tvm.pipeline.compile.compile_model`); after the run it
prints each op's count before and after and the check against onnxruntime.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import Any

from rebirth_tvm import cli
from rebirth_tvm.pipeline import report as report_mod
from rebirth_tvm.core.errors import RebirthError
from rebirth_tvm.pipeline.output import OutputPlan
from rebirth_tvm.backend.remote import RpcDevice
from rebirth_tvm.backend.targets import TARGETS, label_of, resolve_target
from rebirth_tvm.frontend.preprocessing import Normalisation, parse_values
from rebirth_tvm.passes import count_sites
from rebirth_tvm.pipeline.compile import run
from rebirth_tvm.pipeline.options import PASS_SETS, CompileOptions, RebirthOptions, TuningOptions
from rebirth_tvm.pipeline.result import write_result


def summary_lines(report: dict[str, Any]) -> list[str]:
    before, after = report["ops_before"], report["ops_after"]
    lines = [report_mod.op_table(before, after), ""]
    counts = count_sites(report["sites"])
    lines.append(f"sites: {counts['rewritten']} rewritten, {counts['refused']} refused (reasons in report.md)")
    lines.append(
        f"check vs {report['check']['reference']}: max abs diff {report['max_abs_diff']:.3g}, "
        f"max rel diff {report['max_rel_diff']:.3g} (tolerance {report['check']['tolerance']:g}) "
        f"-> {'passed' if report['check']['passed'] else 'FAILED'}"
        + (f"; {report['nonfinite_in_reference']} NaN/infinite output(s) are the original model's own" if report.get("nonfinite_in_reference") else "")
    )
    fidelity = report.get("fidelity")
    if fidelity:
        lines.append(
            f"rebirth vs the original on {fidelity.get('samples', 0)} held-out inputs ({fidelity['calibration']}): "
            f"top-1 agreement {fidelity.get('top1_agreement', float('nan')):.1%}, top-5 {fidelity.get('top5_agreement', float('nan')):.1%}, "
            f"relative logit error {fidelity.get('relative_logit_error', float('nan')):.3g}; relearned in {fidelity['relearn_seconds']:.1f} s"
        )
    if not report["check"]["target_binary_run"] and "verification" not in report:
        lines.append(f"the {label_of(report['target'])} library itself was not run here; the check ran an x86 build of the same module")
    cuda = report.get("cuda_kernels")
    if cuda:
        lines.append(f"CUDA kernels: compiled with nvcc for {cuda['arch']} ({cuda['ptx_bytes']:,} bytes of PTX)" if cuda["compiled"] else f"CUDA kernels: {cuda['reason']}")
    tuning = report.get("tuning")
    if tuning:
        same = (f"tuned vs untuned max rel diff {tuning['max_rel_diff']:.2g}" if tuning.get("tuned_matches_untuned") is not None
                else "tuned build not run here")
        lines.append(
            f"tuning: {tuning['tasks_tuned']} of {tuning['tasks']} tasks tuned with {tuning['trials']} trials "
            f"({tuning['tasks_already_tuned']} already in {tuning['database']}) in {tuning['seconds']:.1f} s; {same}"
        )
    verification = report.get("verification")
    if verification:
        timing = verification.get("latency_ms")
        lines.append(
            f"verify ({verification['method']}): ran on {verification['ran_on']}; max rel diff vs x86 {verification['max_rel_diff']:.2g} "
            f"(tolerance {verification['tolerance']:g}) -> passed"
            + (f"; latency there {timing['median']:.2f} ms median" if timing else "")
        )
    evaluation = report.get("evaluation")
    if evaluation and evaluation.get("warning"):
        lines.append(f"accuracy on {evaluation['images']:,} {evaluation['dataset']} images: warning: {evaluation['warning']}")
    elif evaluation:
        lines.append(f"accuracy on {evaluation['images']:,} {evaluation['dataset']} images: top-1 {evaluation['top1_before']:.2%} -> "
                     f"{evaluation['top1_after']:.2%} ({100 * (evaluation['top1_after'] - evaluation['top1_before']):+.2f} points), "
                     f"agreement {evaluation['agreement']:.2%}")
    if evaluation:
        lines.append(f"speed: {evaluation['latency_ms_before']['median']:.3g} ms -> {evaluation['latency_ms_after']['median']:.3g} ms "
                     f"median per image ({evaluation['speedup']:.2f}x; {evaluation['note']})")
    kernels = report.get("kernels")
    if kernels:
        how = ", ".join(f"{count} {rule.replace('_', ' ')}" for rule, count in kernels.items() if rule not in ("kernels", "channel_block"))
        lines.append(f"kernels: {kernels['kernels']} scheduled ({how}; convs in blocks of {kernels['channel_block']} channels)")
    lines.append(f"compile: {report['compile_seconds']:.1f} s for {json_target(report['target'])}")
    return lines


def json_target(target: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in target.items())


def make_parser() -> cli.ArgumentParser:
    from rebirth_tvm.frontend.zoo import MODELS

    parser = cli.ArgumentParser(
        prog="python -m rebirth_tvm.compile",
        description="Import an ONNX model (or a built-in one), apply rebirth passes, compile it with TVM, "
        "check it against onnxruntime on the original model, and write the library and a report.",
        epilog=cli.EXIT_CODES_HELP,
    )
    parser.add_argument("--model", required=True, help=f"an .onnx file or a built-in model: {', '.join(MODELS)}")
    parser.add_argument("--target", default="x86", help=f"where it will run: {', '.join(TARGETS)} (aarch64 Linux; needs the Debian package g++-aarch64-linux-gnu), or a JSON target dict (default: x86)")
    parser.add_argument("--cpu", default=None, help="CPU: an LLVM name for x86 (default: this machine's), or for arm one of cortex-a53, cortex-a72, cortex-a76, neoverse-n1")
    parser.add_argument("--tune-trials", type=int, default=0, help="MetaSchedule tuning trials for the final model (default 0: untuned; x86 only for now). Tasks already in --tuning-db are not tuned again")
    parser.add_argument("--tuning-db", default=None, help="tuning database directory, reused across runs (default with --tune-trials: tuning-db/ beside --out)")
    parser.add_argument("--max-trials-per-task", type=int, default=None, help="cap on the trials any one task gets (default: none)")
    parser.add_argument("--rpc-tracker", default=None, metavar="HOST:PORT", help="TVM RPC tracker of a device (board or GPU machine): tuning measures there, and --verify rpc runs there")
    parser.add_argument("--rpc-key", default=None, help="the key the device's rpc_server registered with the tracker")
    parser.add_argument("--verify", default=None, choices=["qemu", "native", "rpc"], help="run the exported library and check it against the x86 build (1e-5): qemu (arm, under qemu-aarch64; Debian package qemu-user), native (x86) or rpc (on the device, also timed there)")
    parser.add_argument("--runner", action="store_true", help="also build the native runner (rebirth-run, needs cmake) for the target and put it and the two TVM runtime libraries beside model.so")
    parser.add_argument("--arch", default=None, help="CUDA architecture for --target cuda, e.g. sm_80 (default) or sm_90")
    parser.add_argument("--passes", default="exact", choices=PASS_SETS, help="exact: FoldBatchNorm, FoldChannelAffine, MergeParallelConvs (default); none: compile as imported")
    parser.add_argument("--input-shape", default=None, help="fixed input shape, e.g. 1,3,224,224 (or name=1,3,224,224;other=...); required for dynamic dimensions")
    parser.add_argument("--allow-kernel-padding", action="store_true", help="let MergeParallelConvs merge different kernel sizes by zero-padding them (exact, but more FLOPs)")
    parser.add_argument("--skip-merge-parallel", action="store_true", help="do not merge sibling convs that read the same tensor")
    parser.add_argument("--evaluate", default=None, metavar="DATASET[:N]", help="classify a labelled test set (fashion-mnist: its 10,000 test images, or :N of them) with the model as imported and as compiled, time both, and print top-1 and speed before and after")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs used to check the result (default 0)")
    rebirth = parser.add_argument_group("rebirth (relearned merges: conv+pool, conv+LRN, chains of them)")
    rebirth.add_argument("--rebirth", action="store_true", help="also merge conv with the pools and LRNs after it, relearning the new convs against the original blocks")
    rebirth.add_argument("--calib", default=None, help="calibration inputs: a folder of images, an .npy array (N,C,H,W), 'fashion-mnist' (its training images, labels unused; apt-get install dataset-fashion-mnist), or 'random' (labelled as such in the report); required with --rebirth")
    rebirth.add_argument("--calib-count", type=int, default=None, help="use at most this many calibration inputs (a fifth is held out for fidelity)")
    rebirth.add_argument("--preset", default=None, choices=["imagenet", "gray", "efficientnet-lite"], help="image preprocessing (default: the zoo model's, else gray for 1-channel inputs and imagenet for 3)")
    rebirth.add_argument("--mean", default=None, metavar="M[,M,M]", help="the model's input mean, per channel or one for all, in --pixel-range units (overrides the preset; also for --evaluate)")
    rebirth.add_argument("--std", default=None, metavar="S[,S,S]", help="the model's input standard deviation, like --mean: inputs are (pixel - mean) / std")
    rebirth.add_argument("--pixel-range", type=float, default=None, metavar="R", help="pixels are scaled to [0, R] before --mean and --std: 1 (torchvision, default) or 255 (Caffe, TF-Lite)")
    rebirth.add_argument("--channel-order", default=None, choices=["rgb", "bgr"], help="the model's channel order for colour images (default rgb; Caffe models: bgr)")
    rebirth.add_argument("--hook", default="lstsq", help="retraining hook: lstsq (closed-form least squares, default), sgd (layer-wise SGD through the ReLU, gradients by TVM, starting from lstsq) or package.module:function")
    rebirth.add_argument("--sites", default="all", help="comma-separated site names or glob patterns to relearn (default: all)")
    rebirth.add_argument("--pool-kernel", default="auto", choices=["auto", "cover", "keep"], help="conv+pool merges: grow the kernel to the pool's receptive field (cover), keep the conv's (keep), or cover where that adds no MACs (auto, default)")
    rebirth.add_argument("--branches", default="pool,reduce", help="inception branch merges: pool, reduce, both (default 'pool,reduce') or none")
    rebirth.add_argument("--select", default="all", choices=["all", "latency"], help="all: rewrite every site that can be (default); latency: time each site's block and its rewrite on the target (here, or over --rpc-tracker; tuned kernels where --tuning-db has them) and keep only rewrites faster by --select-margin")
    rebirth.add_argument("--select-margin", type=float, default=0.05, help="how much faster a rewrite must measure to be kept with --select latency (default 0.05: 5%%)")
    rebirth.add_argument("--tucker", type=float, default=None, metavar="ENERGY", help="also Tucker-2 decompose the k×k convs left (1×1 → k×k → 1×1), ranks keeping this fraction of each mode's energy (e.g. 0.9) rounded up to whole channel blocks of the target's kernels (16 with AVX-512), relearned by the hook")
    rebirth.add_argument("--max-site-error", type=float, default=None, metavar="REL_MSE", help="put back (and report as refused) any relearned site whose held-out relative MSE stays above this, e.g. 0.05 (default: keep every relearned site)")
    rebirth.add_argument("--refit-classifier", action="store_true", help="after the merges, refit the final fully connected layer (least squares, no labels) from the reborn features to the original logits")
    rebirth.add_argument("--max-drop", type=float, default=None, metavar="POINTS", help="keep the most relearned sites whose rebirth keeps the top-1 agreement with the original, on the held-out calibration images, within POINTS of 100%%; the sites that cost the most agreement alone are put back first (reported as refused, with what each cost)")
    rebirth.add_argument("--distill", action="store_true", help="after relearning, distil the original into the reborn network end to end on the calibration images, no labels (its softened logits, the classifier's input features and every module boundary the two networks share; flips and shifts, half the images blended with another and half with a rectangle of another pasted in; stops early on the held-out images)")
    rebirth.add_argument("--distill-epochs", type=int, default=None, metavar="N", help="at most N epochs of --distill (default 20)")
    rebirth.add_argument("--no-streamline", action="store_true", help="skip the streamline merges (conv+pool, conv+LRN): branch merges only")
    rebirth.add_argument("--allow-more-work", action="store_true", help="also make branch merges that add MACs (by default they are refused and the report says by how much)")
    rebirth.add_argument("--save-onnx", default=None, metavar="FILE", help="also write the rewritten model as ONNX (runs in onnxruntime)")
    parser.add_argument("--out", required=True, help="output directory for model.so, report.json, report.md: a new or empty one, "
                        "or an earlier result (its files are replaced, all at once); a directory holding other files is refused unless --force")
    parser.add_argument("--force", action="store_true", help="write into an --out that holds files rebirth-tvm did not write (only its own "
                        "file names are replaced; nothing else is touched), and replace an existing --save-onnx file")
    cli.add_debug_flag(parser)
    return parser


def main(argv=None) -> int:
    return cli.main(make_parser(), argv, _compile, interrupted_note="; nothing was written")


def _distill(args):
    """``--distill`` (``--distill-epochs N``) as distillation options, or None."""
    from rebirth_tvm.relearn.distill import DistillOptions

    if args.distill_epochs is not None and not args.distill:
        raise RebirthError("--distill-epochs only applies with --distill")
    if not args.distill:
        return None
    return DistillOptions() if args.distill_epochs is None else DistillOptions(epochs=args.distill_epochs)


def _compile(args) -> int:
    start = time.perf_counter()
    # Every value is checked where it enters (the option classes), before any work.
    rebirth = None
    if args.rebirth:
        rebirth = RebirthOptions(
            calib=args.calib, hook=args.hook, sites=_sites(args.sites), pool_kernel=args.pool_kernel,
            branches=() if args.branches == "none" else tuple(b.strip() for b in args.branches.split(",") if b.strip()),
            allow_more_work=args.allow_more_work, preset=args.preset, calib_count=args.calib_count,
            streamline=not args.no_streamline, select=args.select, select_margin=args.select_margin, tucker=args.tucker,
            max_site_error=args.max_site_error, refit_classifier=args.refit_classifier, distill=_distill(args),
            max_drop=args.max_drop)
    else:
        given = [flag for flag, value in (("--calib", args.calib), ("--tucker", args.tucker), ("--max-site-error", args.max_site_error),
                                          ("--refit-classifier", args.refit_classifier), ("--no-streamline", args.no_streamline),
                                          ("--distill", args.distill), ("--distill-epochs", args.distill_epochs is not None),
                                          ("--max-drop", args.max_drop is not None),
                                          ("--select latency", args.select == "latency")) if value]
        if given:
            raise RebirthError(f"{', '.join(given)} only apply with --rebirth")
    if args.rpc_key and not args.rpc_tracker:
        raise RebirthError("--rpc-key needs --rpc-tracker HOST:PORT")
    if args.rpc_tracker and not args.tune_trials and args.verify != "rpc" and args.select != "latency":
        raise RebirthError("--rpc-tracker is used for tuning (--tune-trials N), --verify rpc and --select latency; none was asked for")
    rpc = RpcDevice.parse(args.rpc_tracker, args.rpc_key) if args.rpc_tracker else None
    options = CompileOptions(
        target=resolve_target(args.target, args.cpu, args.arch), passes=args.passes, input_shape=parse_shape(args.input_shape),
        allow_kernel_padding=args.allow_kernel_padding, merge_parallel=not args.skip_merge_parallel, seed=args.seed,
        rebirth=rebirth, tuning=TuningOptions(args.tune_trials, args.tuning_db, args.max_trials_per_task), rpc=rpc,
        verify=args.verify, runner=args.runner, evaluate=args.evaluate,
        normalisation=Normalisation(parse_values(args.mean, "--mean"), parse_values(args.std, "--std"), args.pixel_range, args.channel_order))
    # Where the result goes is checked next: a bad --out fails now, not after the compile.
    plan = OutputPlan.check(args.out, force=args.force, onnx_path=args.save_onnx,
                            model_path=args.model if os.path.isfile(args.model) else None)
    if args.tune_trials and not args.tuning_db:
        options = dataclasses.replace(options, tuning=TuningOptions(
            args.tune_trials, os.path.join(os.path.dirname(plan.out_dir), "tuning-db"), args.max_trials_per_task))
    if rpc is not None:
        rpc.check_reachable()  # a network wait: after every cheap check
    result = run(args.model, options)

    def announce(names):  # runs right after the commit: from there on a Ctrl-C changes nothing
        print("\n".join(summary_lines(result.report)))
        extra = ", rebirth-run + runtime libraries" if result.runner else ""
        saved = f", {plan.onnx_path}" if plan.onnx_path else ""
        print(f"wrote {os.path.join(args.out, 'model.so')}, report.json, report.md{extra}{saved} in {time.perf_counter() - start:.1f} s")

    write_result(result, plan, announce=announce)
    return cli.EXIT_OK


def _sites(text: str):
    return "all" if text == "all" else [s.strip() for s in text.split(",") if s.strip()]


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


if __name__ == "__main__":
    sys.exit(main())
