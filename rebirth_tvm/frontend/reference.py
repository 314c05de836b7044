"""The oracle: onnxruntime on the *original* ONNX model, with every graph optimisation off.

ORT's optimiser folds BN and fuses ops itself; with it on we would be comparing one rewrite with
another. With ``ORT_DISABLE_ALL`` it runs the graph as written.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import onnx


def session(model: onnx.ModelProto, optimized: bool = False, threads: int | None = None, spinning: bool = True):
    """An onnxruntime CPU session: unoptimised by default (the oracle); ``optimized`` with every
    graph optimisation on, as a user would run it (what speed is compared against).

    ``spinning=False`` stops onnxruntime's worker threads from busy-waiting after each run (the
    default, True, is what users run; the bench lets them settle between samples instead)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimized
                                        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def onnxruntime_outputs(model: onnx.ModelProto, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """The original model's outputs, unoptimised."""
    return session(model).run(None, dict(inputs))


def reference_name() -> str:
    import onnxruntime as ort

    return f"onnxruntime {ort.__version__} (ORT_DISABLE_ALL) on the original ONNX"
