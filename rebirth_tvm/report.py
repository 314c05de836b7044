"""What a compile did, as data (``report.json``) and as tables a person reads (``report.md``)."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any, Iterable

import numpy as np
import tvm
from tvm import relax


def op_counts(mod: tvm.IRModule) -> dict[str, int]:
    """Relax op name → number of calls, over the module's (non-primitive) Relax functions."""
    counts: Counter = Counter()

    def visit(expr):
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
            counts[expr.op.name] += 1

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function) and not (func.attrs and "Primitive" in func.attrs):
            relax.analysis.post_order_visit(func, visit)
    return dict(sorted(counts.items()))


def output_difference(outputs, references) -> dict[str, float]:
    """``max_abs_diff`` = max |out − ref|; ``max_rel_diff`` = max |out − ref| / max |ref|.

    The relative error is taken against the output's scale, not element-wise, because logits near
    zero make element-wise ratios meaningless. It cannot fail open: a NaN or infinity in the
    output makes both differences infinite, unless the reference has the very same non-finite
    value at the same place (the model's own, counted in ``nonfinite_in_reference``); the scale
    is taken over the finite reference values only.
    """
    outputs = outputs if isinstance(outputs, list) else [outputs]
    references = references if isinstance(references, list) else [references]
    if len(outputs) != len(references):
        raise AssertionError(f"{len(outputs)} outputs but the reference has {len(references)}")
    abs_diff, rel_diff, shared = 0.0, 0.0, 0
    for out, ref in zip(outputs, references):
        out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
        if out.shape != ref.shape:
            raise AssertionError(f"output shape {out.shape} differs from the reference's {ref.shape}")
        finite_ref, finite_out = np.isfinite(ref), np.isfinite(out)
        odd = ~finite_ref | ~finite_out
        same_odd = np.array_equal(np.isnan(out[odd]), np.isnan(ref[odd])) and np.array_equal(
            np.nan_to_num(out[odd], nan=0.0), np.nan_to_num(ref[odd], nan=0.0))
        if not same_odd:  # a NaN or infinity of the output's own, or a different one
            abs_diff = rel_diff = float("inf")
            continue
        shared += int(np.count_nonzero(odd))
        keep = ~odd
        diff = float(np.max(np.abs(out[keep] - ref[keep]))) if np.any(keep) else 0.0
        scale = float(np.max(np.abs(ref[keep]))) if np.any(keep) else 0.0
        abs_diff = max(abs_diff, diff)
        rel_diff = max(rel_diff, diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf")))
    result = {"max_abs_diff": abs_diff, "max_rel_diff": rel_diff}
    if shared:
        result["nonfinite_in_reference"] = shared
    return result


def logit_agreement(outputs: np.ndarray, references: np.ndarray) -> dict[str, float]:
    """How closely classifier outputs (N, classes) follow the reference's.

    ``top1_agreement``: same top-1 class; ``top5_agreement``: the reference's top-1 class is in
    the output's top 5; ``relative_logit_error``: ‖out − ref‖² / ‖ref‖² over all logits;
    ``cosine``: of the flattened logits.
    """
    out = np.asarray(outputs, np.float64).reshape(len(outputs), -1)
    ref = np.asarray(references, np.float64).reshape(len(references), -1)
    top1 = np.argmax(ref, axis=1)
    top5 = np.argsort(-out, axis=1)[:, :5]
    return {
        "samples": int(len(out)),
        "top1_agreement": float(np.mean(np.argmax(out, axis=1) == top1)),
        "top5_agreement": float(np.mean([t in row for t, row in zip(top1, top5)])),
        "relative_logit_error": float(np.sum((out - ref) ** 2) / max(np.sum(ref ** 2), 1e-30)),
        "cosine": float(out.ravel() @ ref.ravel() / max(np.linalg.norm(out) * np.linalg.norm(ref), 1e-30)),
    }


def write_json(report: dict[str, Any], path: str) -> None:
    with open(path, "w") as f:
        json.dump(report, f, indent=2, default=str)
        f.write("\n")


def _table(header: list[str], rows: Iterable[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |")
    return "\n".join(lines)


def op_table(before: dict[str, int], after: dict[str, int]) -> str:
    rows = []
    for op in sorted(set(before) | set(after)):
        b, a = before.get(op, 0), after.get(op, 0)
        change = "" if a == b else f"{a - b:+d}"
        rows.append([op.replace("relax.", ""), b, a, change])
    rows.append(["**total**", sum(before.values()), sum(after.values()), f"{sum(after.values()) - sum(before.values()):+d}"])
    return _table(["op", "before", "after", "change"], rows)


def target_label(target: dict) -> str:
    """``aarch64``, ``CUDA sm_80`` or the target kind, for sentences."""
    if str(target.get("mtriple", "")).startswith("aarch64"):
        return "aarch64"
    if target.get("kind") == "cuda":
        return f"CUDA {target.get('arch', '')}".strip()
    return "x86" if target.get("kind") == "llvm" else str(target.get("kind"))


def _tuning_and_verification(report: dict[str, Any]) -> list[str]:
    parts = []
    tuning = report.get("tuning")
    if tuning:
        rows = [["trials (budget)", tuning["trials"]], ["max trials per task", tuning.get("max_trials_per_task") or "no cap"],
                ["tasks", tuning["tasks"]], ["tasks tuned now", tuning["tasks_tuned"]],
                ["tasks already in the database", tuning["tasks_already_tuned"]], ["database", tuning["database"]],
                ["measured on", tuning.get("measured_on", "—")], ["seconds", tuning["seconds"]]]
        if tuning.get("tuned_matches_untuned") is not None:
            rows.append(["tuned vs untuned max rel diff", f"{tuning['max_rel_diff']:.3g}"])
        parts += ["## Tuning (MetaSchedule)", "", _table(["", ""], rows), ""]
    verification = report.get("verification")
    if verification:
        rows = [["method", verification["method"]], ["ran on", verification["ran_on"]], ["compared with", verification["reference"]],
                ["max abs diff", f"{verification['max_abs_diff']:.3g}"], ["max rel diff", f"{verification['max_rel_diff']:.3g}"],
                ["tolerance (rel)", f"{verification['tolerance']:g}"], ["result", "passed" if verification["passed"] else "FAILED"],
                ["seconds", verification["seconds"]]]
        timing = verification.get("latency_ms")
        if timing:
            rows.append(["latency on the device (ms)", f"median {timing['median']:.3f}, min {timing['min']:.3f}, max {timing['max']:.3f} ({timing['runs']} runs)"])
        if verification.get("note"):
            rows.append(["note", verification["note"]])
        parts += ["## Verification of the exported library", "", _table(["", ""], rows), ""]
    return parts


def markdown(report: dict[str, Any]) -> str:
    """``report.md``: the same content as ``report.json``, as tables."""
    check = report["check"]
    parts = [
        f"# rebirth-tvm: {report['model']}",
        "",
        _table(["", ""], [
            ["target", json.dumps(report["target"])],
            ["input", f"{report['input_name']} {report['input_shape']}"],
            ["passes", report["passes"]],
            ["compile seconds", f"{report['compile_seconds']:.2f}"],
            ["reference", check["reference"]],
            ["inputs compared", check["inputs"]],
            ["max abs diff", f"{report['max_abs_diff']:.3g}"],
            ["max rel diff (vs max abs of reference)", f"{report['max_rel_diff']:.3g}"],
            ["tolerance (rel)", f"{check['tolerance']:.0e}"],
            ["check", "passed" if check["passed"] else "FAILED"],
            ["checked on", "this library" if check.get("target_binary_run", True)
             else f"an x86 build of the same module (the {target_label(report['target'])} library itself: see Verification)"
             if "verification" in report else f"an x86 build of the same module (the {target_label(report['target'])} library was not run here)"],
            *([["CUDA kernels", f"compiled with nvcc for {report['cuda_kernels']['arch']}" if report["cuda_kernels"]["compiled"]
                else report["cuda_kernels"]["reason"]]] if "cuda_kernels" in report else []),
        ]),
        "",
        "## Ops before and after",
        "",
        op_table(report["ops_before"], report["ops_after"]),
        "",
        "## Sites",
        "",
    ]
    parts[parts.index("## Ops before and after"):parts.index("## Ops before and after")] = _tuning_and_verification(report)
    sites = report["sites"]
    if sites:
        parts.append(_table(["pass", "site", "status", "exact", "reason"],
                            [[s["pass_name"], s["site"], s["status"], "yes" if s["exact"] else "relearned", s["reason"]] for s in sites]))
    else:
        parts.append("No pass found a site to look at.")
    relearned = [s for s in sites if not s["exact"] and s["status"] == "rewritten"]
    if relearned:
        parts += ["", "## Relearned sites (fidelity on held-out calibration inputs)", "",
                  _table(["site", "pattern", "new conv", "MACs before → after", "rel. MSE initial → relearned", "cosine", "seconds"], [[
                      s["site"], s["detail"]["pattern"],
                      f"{s['detail']['kernel'][0]}x{s['detail']['kernel'][1]}/s{s['detail']['stride'][0]}",
                      f"{s['detail']['macs_before']:,} → {s['detail']['macs_after']:,}",
                      f"{s['detail']['fidelity_initial']['rel_mse']:.3g} → {s['detail']['fidelity']['rel_mse']:.3g}",
                      f"{s['detail']['fidelity']['cosine']:.4f}", s["detail"]["seconds"],
                  ] for s in relearned])]
    measured = [s for s in sites if s.get("detail", {}).get("latency", {}).get("before_ms") is not None]
    if measured:
        first = measured[0]["detail"]["latency"]
        parts += ["", f"## Latency selection (--select latency; margin {first['margin']:.0%}, {first['measured_on']}, "
                      f"{'tuned kernels where the database had them' if first['tuned'] else 'untuned kernels'})", "",
                  _table(["site", "pass", "block ms", "rewrite ms", "change", "decision"], [[
                      s["site"], s["pass_name"], f"{s['detail']['latency']['before_ms']:.4g}", f"{s['detail']['latency']['after_ms']:.4g}",
                      f"{s['detail']['latency']['after_ms'] / s['detail']['latency']['before_ms'] - 1:+.0%}",
                      ("kept" if s["status"] == "rewritten" else "faster, but refused: " + s["reason"].split(":")[0])
                      if s["detail"]["latency"]["kept"] else "declined (not faster by the margin)",
                  ] for s in measured])]
    fidelity = report.get("fidelity")
    if fidelity:
        parts += ["", "## End-to-end fidelity of the reborn model", "", _table(["", ""], [
            ["calibration", fidelity["calibration"]],
            ["reference", fidelity["reference"]],
            ["held-out inputs", fidelity.get("samples", 0)],
            ["top-1 agreement", f"{fidelity.get('top1_agreement', float('nan')):.1%}"],
            ["top-5 agreement (reference top-1 in top 5)", f"{fidelity.get('top5_agreement', float('nan')):.1%}"],
            ["relative logit error", f"{fidelity.get('relative_logit_error', float('nan')):.3g}"],
            ["cosine", f"{fidelity.get('cosine', float('nan')):.4f}"],
            ["hook", fidelity["hook"]],
            ["relearning seconds", fidelity["relearn_seconds"]],
        ])]
        if fidelity.get("random_inputs"):
            parts += ["", "**Calibration used random inputs, not real data: these fidelity numbers say little about real images.**"]
    evaluation = report.get("evaluation")
    if evaluation:
        parts += ["", f"## Before and after on {evaluation['images']:,} labelled images ({evaluation['dataset']})", "",
                  _table(["", "as imported", "compiled"], [
                      ["top-1", f"{evaluation['top1_before']:.2%}", f"{evaluation['top1_after']:.2%}"],
                      ["median latency per image (ms)", f"{evaluation['latency_ms_before']['median']:.3g}", f"{evaluation['latency_ms_after']['median']:.3g}"],
                  ]), "", f"Agreement of the two: {evaluation['agreement']:.2%}; speed-up {evaluation['speedup']:.2f}x ({evaluation['note']})."]
    summary = Counter((s["pass_name"], s["status"]) for s in sites)
    if summary:
        parts += ["", "Summary: " + "; ".join(f"{p} {st} {n}" for (p, st), n in sorted(summary.items()))]
    return "\n".join(parts) + "\n"
