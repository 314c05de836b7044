"""Tiny ONNX models for import and CLI tests."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def tiny_cnn(batch=1, opset=13, dynamic=False, extra_nodes=(), weight_from_graph=False) -> onnx.ModelProto:
    """Conv+bias → BN → Relu → 1×1 / 1×1 siblings → Concat, 1×3×16×16."""
    r = np.random.default_rng(0)

    def init(name, a):
        return numpy_helper.from_array(np.asarray(a, np.float32), name)

    inits = [
        init("w1", r.normal(0, 0.3, (8, 3, 3, 3))), init("b1", r.normal(0, 0.1, 8)),
        init("gamma", r.uniform(0.5, 1.5, 8)), init("beta", r.normal(0, 0.1, 8)),
        init("mean", r.normal(0, 0.1, 8)), init("var", r.uniform(0.5, 1.5, 8)),
        init("wa", r.normal(0, 0.3, (4, 8, 1, 1))), init("wb", r.normal(0, 0.3, (6, 8, 1, 1))),
    ]
    nodes = []
    if weight_from_graph:
        # The weight reaches the conv through graph ops, as some exporters write it.
        inits[0] = init("w1_flat", r.normal(0, 0.3, 8 * 3 * 3 * 3))
        inits.append(numpy_helper.from_array(np.array([8, 3, 3, 3], np.int64), "w1_shape"))
        nodes.append(helper.make_node("Reshape", ["w1_flat", "w1_shape"], ["w1"], name="weight_reshape"))
    nodes += [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("BatchNormalization", ["c1", "gamma", "beta", "mean", "var"], ["bn1"], name="bn1"),
        helper.make_node("Relu", ["bn1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "wa"], ["a"], kernel_shape=[1, 1], name="branch_a"),
        helper.make_node("Conv", ["r1", "wb"], ["b"], kernel_shape=[1, 1], name="branch_b"),
        helper.make_node("Concat", ["a", "b"], ["y"], axis=1, name="concat"),
        *extra_nodes,
    ]
    out = extra_nodes[-1].output[0] if extra_nodes else "y"
    dims = ["N", 3, "H", "W"] if dynamic else [batch, 3, 16, 16]
    graph = helper.make_graph(
        nodes, "tiny_cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, [None, None, None, None])], initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model
