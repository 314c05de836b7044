"""A Relax network's activations on calibration inputs: what every relearned site is fitted on."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from rebirth_tvm.core.errors import OptionError, RebirthError
from rebirth_tvm.core.graph import host_function
from rebirth_tvm.frontend.export_onnx import to_onnx
from rebirth_tvm.frontend.reference import session


def activations(mod: tvm.IRModule, var, calibration: np.ndarray) -> np.ndarray:
    """The value of ``var`` in ``main`` for each calibration sample, in the model's batch size."""
    func = mod["main"]
    if any(var.same_as(p) for p in func.params):
        return calibration.astype(np.float32)
    bb = relax.BlockBuilder()
    with bb.function("main", list(func.params)):
        with bb.dataflow():
            for block in func.body.blocks:
                for binding in block.bindings:
                    bb.emit_normalized(binding)
                    if binding.var.same_as(var):
                        break
                else:
                    continue
                break
            out = bb.emit_output(var)
        bb.emit_func_output(out)
    probe = relax.transform.DeadCodeElimination()(bb.get())
    batch = int(func.params[0].ty.shape[0])
    if len(calibration) % batch:
        raise OptionError(f"{len(calibration)} calibration samples do not split into batches of {batch}")
    run = _onnxruntime_runner(probe) or host_function(probe)
    outs = [run(calibration[i:i + batch]) for i in range(0, len(calibration), batch)]
    return np.concatenate(outs).astype(np.float32)


def _onnxruntime_runner(probe: tvm.IRModule):
    """Run the probe with onnxruntime (~45x faster than an untuned TVM build), if it exports."""
    try:
        model = to_onnx(probe)
    except RebirthError:
        return None
    runner = session(model, optimized=True)
    name = runner.get_inputs()[0].name
    return lambda x: runner.run(None, {name: np.ascontiguousarray(x, dtype=np.float32)})[0]
