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
from dataclasses import dataclass, field
from typing import Any

import tvm

from . import report as report_mod
from .build import BuiltModel, build
from .errors import RebirthError
from .onnx_import import graph_inputs, import_onnx, random_inputs, read_onnx
from .reference import onnxruntime_outputs, reference_name
from .targets import describe, resolve_target

PASS_SETS = ("exact", "none")

#: Exact passes only reorder float arithmetic; 1e-4 of the output's scale is far above the
#: rounding they cause (measured ≤ 2e-6 on the zoo) and far below any real change.
EXACT_TOLERANCE = 1e-4


@dataclass
class CompileResult:
    """Everything one compile produced."""

    module: tvm.IRModule
    built: BuiltModel
    report: dict[str, Any]
    sites: list = field(default_factory=list)


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
) -> CompileResult:
    """Import, rewrite, build and check one model.

    Parameters
    ----------
    model: an ``.onnx`` path, a zoo name or an ``onnx.ModelProto``.
    target: ``"x86"`` or a JSON target dict.
    passes: ``"exact"`` (FoldBatchNorm, FoldChannelAffine, MergeParallelConvs) or ``"none"``.
    input_shape: fixed input shape (needed for dynamic dimensions).
    cpu: LLVM CPU name for x86 (default: this machine's).
    allow_kernel_padding: let MergeParallelConvs zero-pad kernels of different sizes.
    merge_parallel: run MergeParallelConvs at all.
    seed: seed of the random inputs used for the check.

    Raises :class:`RebirthError` for bad input, or when the result differs from onnxruntime on
    the original model by more than ``EXACT_TOLERANCE`` (relative to the output's scale).
    """
    tvm_target = resolve_target(target, cpu) if isinstance(target, str) else target
    onnx_model = read_onnx(model)
    specs = graph_inputs(onnx_model, input_shape)
    original = import_onnx(onnx_model, specs)
    rewritten, sites = apply_passes(original, passes, allow_kernel_padding, merge_parallel)
    built = build(rewritten, tvm_target)

    inputs = random_inputs(specs, seed)
    outputs = built.run([inputs[s.name] for s in specs])
    references = onnxruntime_outputs(onnx_model, inputs)
    diff = report_mod.output_difference(outputs, references if len(references) > 1 else references[0])
    passed = diff["max_rel_diff"] <= EXACT_TOLERANCE
    name = model if isinstance(model, str) else (onnx_model.graph.name or "model")
    report = {
        "model": os.path.basename(str(name)),
        "target": describe(tvm_target),
        "input_name": specs[0].name,
        "input_shape": list(specs[0].shape),
        "passes": passes,
        "ops_before": report_mod.op_counts(original),
        "ops_after": report_mod.op_counts(rewritten),
        "sites": [s.to_json() for s in sites],
        **diff,
        "check": {
            "reference": reference_name(),
            "inputs": f"random normal, seed {seed} (not real data)",
            "tolerance": EXACT_TOLERANCE,
            "passed": passed,
        },
        "compile_seconds": round(built.compile_seconds, 3),
        "versions": {"tvm": tvm.__version__},
    }
    if not passed:
        raise RebirthError(
            f"the rewritten model differs from onnxruntime by {diff['max_rel_diff']:.3g} (relative), "
            f"above the tolerance {EXACT_TOLERANCE:g}; nothing was written"
        )
    return CompileResult(rewritten, built, report, sites)


def write_result(result: CompileResult, out_dir: str) -> None:
    """Write model.so, report.json, report.md into ``out_dir`` atomically."""
    out_dir = os.path.abspath(out_dir)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".rebirth-", dir=parent)
    try:
        result.built.export(os.path.join(staging, "model.so"))
        report_mod.write_json(result.report, os.path.join(staging, "report.json"))
        with open(os.path.join(staging, "report.md"), "w") as f:
            f.write(report_mod.markdown(result.report))
        old = None
        if os.path.exists(out_dir):
            old = tempfile.mkdtemp(prefix=".rebirth-old-", dir=parent)
            os.replace(out_dir, os.path.join(old, "previous"))
        os.replace(staging, out_dir)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
