"""The oracle: onnxruntime on the *original* ONNX model, with every graph optimisation off.

ORT's optimiser folds BN and fuses ops itself; with it on we would be comparing one rewrite with
another. With ``ORT_DISABLE_ALL`` it runs the graph as written.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import onnx


def onnxruntime_outputs(model: onnx.ModelProto, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, dict(inputs))


def reference_name() -> str:
    import onnxruntime as ort

    return f"onnxruntime {ort.__version__} (ORT_DISABLE_ALL) on the original ONNX"
