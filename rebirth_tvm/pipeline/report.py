"""What a compile did, as data (``report.json``) and as tables a person reads (``report.md``)."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any, Iterable

import tvm
from tvm import relax

from rebirth_tvm.backend.targets import label_of


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
            *([["kernels", ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in report["kernels"].items())]] if report.get("kernels") else []),
            ["reference", check["reference"]],
            ["inputs compared", check["inputs"]],
            ["max abs diff", f"{report['max_abs_diff']:.3g}"],
            ["max rel diff (vs max abs of reference)", f"{report['max_rel_diff']:.3g}"],
            ["tolerance (rel)", f"{check['tolerance']:.0e}"],
            ["check", "passed" if check["passed"] else "FAILED"],
            ["checked on", "this library" if check.get("target_binary_run", True)
             else f"an x86 build of the same module (the {label_of(report['target'])} library itself: see Verification)"
             if "verification" in report else f"an x86 build of the same module (the {label_of(report['target'])} library was not run here)"],
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
                  ]), "", f"Agreement of the two: {evaluation['agreement']:.2%}; speed-up {evaluation['speedup']:.2f}x ({evaluation['note']}). "
                  f"Inputs: {evaluation['preprocessing']}."]
        if evaluation.get("warning"):
            parts += ["", f"**Warning: {evaluation['warning']}.**"]
    summary = Counter((s["pass_name"], s["status"]) for s in sites)
    if summary:
        parts += ["", "Summary: " + "; ".join(f"{p} {st} {n}" for (p, st), n in sorted(summary.items()))]
    return "\n".join(parts) + "\n"
