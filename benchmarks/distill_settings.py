"""Distillation settings side by side on one reborn network: which recipe recovers the most.

``python -m rebirth_tvm.accuracy`` reruns the whole pipeline per variant. To compare
distillation's own settings (rates, epochs, loss weights, augmentation) this runs the
pipeline's per-site fits once on ``fashion_googlenet`` with every site reborn, captures what the
pipeline hands to distillation, and distils that same network once per setting. Each result is
scored on the 10,000 test images (top-1, agreement with the teacher) and on the images it was
distilled on (agreement), which tells a data limit (high on its own images, low on the test
set) from an optimisation or capacity limit (low on both).

    python benchmarks/distill_settings.py --setting epochs=40,lr=0.001,rest_scale=0.1 \\
        --setting epochs=40 --out benchmarks/results/recovery

Each ``--setting`` is ``NAME=VALUE,...`` over :class:`~rebirth_tvm.relearn.distill.DistillOptions`
(the defaults for what it does not name). Writes ``distill_settings.{json,md}`` under ``--out``
(``--append`` adds to what is there).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import time

import numpy as np

from rebirth_tvm.core.errors import RebirthError
from rebirth_tvm.relearn.distill import DistillOptions


def parse_setting(text: str) -> dict:
    # The field's type as written (a string under ``from __future__ import annotations``) or a class.
    fields = {f.name: getattr(f.type, "__name__", f.type) for f in dataclasses.fields(DistillOptions)}
    setting = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = (piece.strip() for piece in part.partition("="))
        if name not in fields:
            raise RebirthError(f"--setting {text!r}: use NAME=VALUE,... with NAME one of {', '.join(fields)}")
        if name in setting:
            raise RebirthError(f"--setting {text!r}: {name} is given twice")
        setting[name] = _value(text, name, fields[name], value)
    DistillOptions(**setting)  # bad values: the options' own one-line errors
    return setting


def _value(text: str, name: str, kind: str, value: str):
    if kind == "bool":
        truth = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}.get(value.lower())
        if truth is None:
            raise RebirthError(f"--setting {text!r}: {name} takes true or false, not {value!r}")
        return truth
    try:
        return int(value) if kind == "int" else float(value)
    except ValueError:
        what = "a whole number" if kind == "int" else "a number"
        raise RebirthError(f"--setting {text!r}: {name} takes {what}, not {value!r}") from None


@contextlib.contextmanager
def captured_distillation():
    """Within it, the pipeline's call to ``distill`` is recorded and skipped (the module is
    returned unchanged): the list it yields then holds the call's arguments."""
    import rebirth_tvm.relearn.distill as distillation

    calls, real = [], distillation.distill

    def record(mod, teacher, train, held_out, regenerated, *args, compiler=None, site_outputs=frozenset(), **kwargs):
        calls.append(dict(mod=mod, teacher=teacher, train=train, held_out=held_out, regenerated=regenerated,
                          compiler=compiler, site_outputs=site_outputs))
        return mod, {"skipped": True}

    distillation.distill = record
    try:
        yield calls
    finally:
        distillation.distill = real


def classifier(mod, compiler):
    """``top1(images)`` of ``mod`` built once by ``compiler`` (the pipeline's), one image per
    call as deployed (:func:`rebirth_tvm.pipeline.evaluate.classify`)."""
    import types

    import tvm
    from tvm import relax

    from rebirth_tvm.pipeline.evaluate import classify

    vm = relax.VirtualMachine(compiler(mod), tvm.cpu())
    built = types.SimpleNamespace(run=lambda inputs: vm["main"](tvm.runtime.tensor(inputs)).numpy())
    return lambda images: classify(built, images)


def study(settings: list[dict], calib_count: int, log=print) -> dict:
    from rebirth_tvm.frontend.datasets import as_inputs, fashion_mnist
    from rebirth_tvm.pipeline import RebirthOptions, compile_model
    from rebirth_tvm.backend.measure import cpu_model
    from rebirth_tvm.relearn.distill import distill

    train_images, _ = fashion_mnist("train")
    calib = as_inputs(train_images[:calib_count])
    with captured_distillation() as calls:
        compile_model("fashion_googlenet", target="x86", rebirth=RebirthOptions(calib=calib, distill=DistillOptions()))
    if not calls:
        raise RebirthError("the pipeline did not reach distillation (nothing relearned?): no network to distil")
    call = calls[0]
    test_images, labels = fashion_mnist("test")
    test = as_inputs(test_images)
    teacher = classifier(call["teacher"], call["compiler"])
    teacher_test, teacher_train = teacher(test), teacher(call["train"])
    result = {"model": "fashion_googlenet", "sites": "every site reborn", "calibration_images": calib_count,
              "distilled_on": len(call["train"]), "held_out": len(call["held_out"]), "test_images": len(test),
              "teacher_top1": float(np.mean(teacher_test == labels)), "machine": f"{cpu_model()}, {os.cpu_count()} cores",
              "date": time.strftime("%Y-%m-%d"), "rows": []}
    for setting in settings:
        options = DistillOptions(**setting)
        start = time.perf_counter()
        mod, summary = distill(call["mod"], call["teacher"], call["train"], call["held_out"], call["regenerated"], options,
                               log=log, compiler=call["compiler"], site_outputs=call["site_outputs"])
        seconds = time.perf_counter() - start
        student = classifier(mod, call["compiler"])
        student_test = student(test)
        row = {"setting": setting, "options": dataclasses.asdict(options), "top1": float(np.mean(student_test == labels)),
               "agreement": float(np.mean(student_test == teacher_test)),
               "own_images_agreement": float(np.mean(student(call["train"]) == teacher_train)),
               "held_out_agreement": summary["after"]["agreement"], "best_epoch": summary["best_epoch"],
               "epochs_run": summary["epochs_run"], "seconds": round(seconds, 1),
               "module_term": summary.get("module_term", "shared"), "patience_from_rate": summary.get("patience_from_rate")}
        row["top1_change_points"] = round(100 * (row["top1"] - result["teacher_top1"]), 2)
        log(f"{describe(setting)}: top-1 {row['top1']:.2%} ({row['top1_change_points']:+.2f}), agreement {row['agreement']:.2%}, "
            f"on its own images {row['own_images_agreement']:.2%}, {row['seconds']} s")
        result["rows"].append(row)
    return result


def describe(setting: dict) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in setting.items()) or "defaults"


def markdown(results: list[dict]) -> str:
    lines = ["# Distillation settings on fashion_googlenet, every site reborn", "",
             "Each row distils the same reborn network (per-site fits done once); top-1 and agreement on the "
             "10,000 test images, and agreement on the images it was distilled on.", "",
             "| date | images | setting | rate, rest | mixup, cutmix | module weight | top-1 | Δ points | agreement | on its own images | held-out | best / run epochs | s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    machines = []
    for result in results:
        machine = f"{result['date']}: teacher top-1 {result['teacher_top1']:.2%}, {result['machine']}"
        if machine not in machines:
            machines.append(machine)
        for row in result["rows"]:
            options = row["options"]
            rates = f"{options['lr']:g}, {options['rest_scale']:g}×"
            mixing = f"{options.get('mixup', 0):g}, {options.get('cutmix', 0):g}"
            module = f"{options['module_weight']:g} {row.get('module_term', 'shared')}"
            epochs = f"{row['best_epoch']} / {row['epochs_run']}"
            if row.get("patience_from_rate") is not None:
                epochs += f" (patience from {row['patience_from_rate']:g})"
            lines.append(f"| {result['date']} | {result['calibration_images']:,} | {describe(row['setting'])} | {rates} | {mixing} | {module} | "
                         f"{row['top1']:.2%} | "
                         f"{row['top1_change_points']:+.2f} | {row['agreement']:.2%} | {row['own_images_agreement']:.2%} | "
                         f"{row['held_out_agreement']:.1%} | {epochs} | {row['seconds']} |")
    rows = [row for result in results for row in result["rows"]]
    notes = []
    if any(row.get("module_term", "shared") == "shared" for row in rows):
        notes.append("- module weight: *shared* among the module boundaries (17 with every site reborn; rows before "
                     "2026-12-07's first *each*) or given to *each* (the default since; with 17 boundaries, 1 each is 17 shared).")
    if any(row.get("patience_from_rate") is None for row in rows):
        notes.append("- patience: rows that do not say counted it from half the peak rate.")
    if any("boundary" in row["setting"] for row in rows):
        notes.append("- `boundary` (inputs moved up the student's loss gradient) was an option tried on 2026-12-07 and "
                     "removed: it made the result worse.")
    return "\n".join(lines + [""] + [f"- {m}" for m in machines] + notes + [""])


def _earlier(path: str) -> list:
    """What ``--append`` adds to, checked before minutes of study."""
    if not os.path.exists(path):
        return []
    try:
        with open(path) as f:
            earlier = json.load(f)
    except (OSError, ValueError) as err:
        raise RebirthError(f"--append: cannot read {path}: {err}") from None
    if not isinstance(earlier, list) or not all(isinstance(r, dict) and "rows" in r for r in earlier):
        raise RebirthError(f"--append: {path} is not a list of this script's results")
    return earlier


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setting", action="append", default=[], help="NAME=VALUE,... of DistillOptions (repeat)")
    parser.add_argument("--calib-count", type=int, default=1000)
    parser.add_argument("--out", default=os.path.join("benchmarks", "results", "recovery"))
    parser.add_argument("--append", action="store_true")
    args = parser.parse_args(argv)
    try:
        settings = [parse_setting(text) for text in args.setting] or [{}]
        path = os.path.join(args.out, "distill_settings.json")
        earlier = _earlier(path) if args.append else []
        result = study(settings, args.calib_count)
    except RebirthError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    results = earlier + [result]
    with open(path, "w") as f:
        json.dump(results, f, indent=1)
        f.write("\n")
    with open(os.path.join(args.out, "distill_settings.md"), "w") as f:
        f.write(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
