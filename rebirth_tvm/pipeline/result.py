"""What a compile produced, and writing it: model.so, report.json, report.md (and the ONNX)
into ``--out`` as one transaction (:mod:`rebirth_tvm.pipeline.output`)."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from typing import Any

import tvm

from rebirth_tvm.backend.build import BuiltModel
from rebirth_tvm.pipeline import report as report_mod


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


def write_result(result: CompileResult, out, onnx_path: str | None = None, force: bool = False, announce=None) -> list[str]:
    """Write model.so, report.json, report.md into ``out`` as one transaction (and the ONNX, if asked).

    ``out`` is a directory path or an :class:`~rebirth_tvm.pipeline.output.OutputPlan` checked before the
    work (the CLI does that, so a bad ``--out`` fails in a second, not after the compile). Only
    files the tool writes are ever replaced (:mod:`rebirth_tvm.output`). With a runner,
    ``rebirth-run`` and the two TVM runtime libraries it loads are written too: the directory is
    then a bundle to copy to the device as is. Returns the names written into the directory.
    """
    import rebirth_tvm

    from rebirth_tvm.pipeline.output import WRITTEN_BY, OutputPlan

    plan = out if isinstance(out, OutputPlan) else OutputPlan.check(out, force=force, onnx_path=onnx_path)
    exported = None
    if plan.onnx_path:
        from rebirth_tvm.frontend.export_onnx import to_onnx

        exported = to_onnx(result.module, name=result.report["model"])  # fails before anything is written
    with plan.staging() as stage:
        if result.library:
            shutil.copy2(result.library, stage.path("model.so"))  # the very file verified
        else:
            result.built.export(stage.path("model.so"))
        if result.runner:
            from rebirth_tvm.backend.native import copy_runner

            copy_runner(result.runner, stage.directory)
        if exported is not None:
            import onnx

            onnx.save(exported, stage.onnx_path())
        files = sorted(set(os.listdir(stage.directory)) | {"report.json", "report.md"} | set(stage.inherited_names()))
        report = {"written_by": f"{WRITTEN_BY} {rebirth_tvm.__version__}", "files": files, **result.report}
        report_mod.write_json(report, stage.path("report.json"))
        with open(stage.path("report.md"), "w") as f:
            f.write(report_mod.markdown(result.report))
        from rebirth_tvm.core.interrupts import deferred_interrupts

        # The commit is never cut in half by a signal. With ``announce`` (the CLI's summary) a
        # signal during the commit or the announcement is dropped: the result is complete.
        with deferred_interrupts(raise_pending=announce is None):
            names = stage.commit()
            if announce is not None:
                announce(names)
        return names

