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


def stem(size=32, lrn_alpha=1e-2) -> onnx.ModelProto:
    """GoogLeNet's stem in small: conv→ReLU→pool(ceil)→LRN→conv 1×1→ReLU→conv 3×3→ReLU→LRN→pool(ceil).

    ``lrn_alpha`` is larger than BVLC's 1e-4 so the LRN changes its input noticeably.
    """
    r = np.random.default_rng(1)

    def init(name, a):
        return numpy_helper.from_array(np.asarray(a, np.float32), name)

    inits = [
        init("w1", r.normal(0, np.sqrt(2 / 27), (8, 3, 3, 3))), init("b1", r.normal(0, 0.1, 8)),
        init("w2", r.normal(0, np.sqrt(2 / 8), (8, 8, 1, 1))), init("b2", r.normal(0, 0.1, 8)),
        init("w3", r.normal(0, np.sqrt(2 / 72), (12, 8, 3, 3))), init("b3", r.normal(0, 0.1, 12)),
    ]
    lrn = dict(size=5, alpha=lrn_alpha, beta=0.75, bias=1.0)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1, name="pool1"),
        helper.make_node("LRN", ["p1"], ["n1"], name="norm1", **lrn),
        helper.make_node("Conv", ["n1", "w2", "b2"], ["c2"], kernel_shape=[1, 1], name="conv2_reduce"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Relu", ["c3"], ["r3"], name="relu3"),
        helper.make_node("LRN", ["r3"], ["n3"], name="norm2", **lrn),
        helper.make_node("MaxPool", ["n3"], ["y"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1, name="pool2"),
    ]
    graph = helper.make_graph(
        nodes, "stem", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None, None, None])], initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def inception(size=16, channels=16, pooled=True) -> onnx.ModelProto:
    """One GoogLeNet inception module (in small) on a conv stem, optionally followed by a 3×3/s2
    ceil-mode max pool like GoogLeNet's pool3: branches 1×1; 1×1 reduce → 3×3; 1×1 reduce → 5×5;
    3×3/s1 max pool → 1×1 projection; each conv followed by ReLU; Concat."""
    r = np.random.default_rng(2)
    inits, nodes = [], []

    def conv(x, name, cin, cout, k, pad=0):
        inits.append(numpy_helper.from_array(r.normal(0, np.sqrt(2 / (cin * k * k)), (cout, cin, k, k)).astype(np.float32), f"{name}_w"))
        inits.append(numpy_helper.from_array(r.normal(0, 0.1, cout).astype(np.float32), f"{name}_b"))
        nodes.append(helper.make_node("Conv", [x, f"{name}_w", f"{name}_b"], [name], kernel_shape=[k, k], pads=[pad] * 4, name=name))
        nodes.append(helper.make_node("Relu", [name], [f"{name}_relu"], name=f"{name}_relu"))
        return f"{name}_relu"

    x = conv("x", "stem", 3, channels, 3, 1)
    b1 = conv(x, "b1x1", channels, 8, 1)
    b2 = conv(conv(x, "b3x3_reduce", channels, 6, 1), "b3x3", 6, 10, 3, 1)
    b3 = conv(conv(x, "b5x5_reduce", channels, 2, 1), "b5x5", 2, 4, 5, 2)
    nodes.append(helper.make_node("MaxPool", [x], ["bpool"], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1], name="bpool"))
    b4 = conv("bpool", "bpool_proj", channels, 4, 1)
    nodes.append(helper.make_node("Concat", [b1, b2, b3, b4], ["module"], axis=1, name="module"))
    out = "module"
    if pooled:
        nodes.append(helper.make_node("MaxPool", ["module"], ["y"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1, name="pool3"))
        out = "y"
    graph = helper.make_graph(
        nodes, "inception", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, [None, None, None, None])], initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def with_classifier(model: onnx.ModelProto, classes: int = 10, seed: int = 1) -> onnx.ModelProto:
    """``model`` (one 4-D output) followed by global average pool → flatten → FC: class logits."""
    model = onnx.shape_inference.infer_shapes(model)
    features = model.graph.output[0].name
    info = [v for v in model.graph.value_info if v.name == features] or list(model.graph.output)
    width = info[0].type.tensor_type.shape.dim[1].dim_value
    r = np.random.default_rng(seed)
    model.graph.initializer.extend([numpy_helper.from_array(r.normal(0, 0.3, (classes, width)).astype(np.float32), "fc_w"),
                                    numpy_helper.from_array(np.zeros(classes, np.float32), "fc_b")])
    model.graph.node.extend([helper.make_node("GlobalAveragePool", [features], ["gap"]),
                             helper.make_node("Flatten", ["gap"], ["flat"]),
                             helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1)])
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, classes]))
    return model
