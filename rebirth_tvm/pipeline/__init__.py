"""Layer 5: the job as stages (:mod:`.stages`): ONNX → Relax → passes (exact, then relearned) →
build and check → tune → verify / evaluate → report (:mod:`.report`), composed by
:func:`.compile.compile_model`, and the result written as one transaction (:mod:`.result`,
:mod:`.output`). Options are checked where they enter (:mod:`.options`)."""

from rebirth_tvm.pipeline.compile import apply_passes, compile_model, rebirth
from rebirth_tvm.pipeline.options import CompileOptions, RebirthOptions, TuningOptions
from rebirth_tvm.pipeline.result import CompileResult, write_result

__all__ = ["CompileOptions", "CompileResult", "RebirthOptions", "TuningOptions", "apply_passes", "compile_model", "rebirth",
           "write_result"]
