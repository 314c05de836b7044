"""CNNs the kernels were not written against: ONNX files for the bench, outside the zoo.

The CPU kernels (``rebirth_tvm.backend.kernels``) were developed on the zoo's models. To check
that they are general, this writes three well-known architectures the zoo does not have, built
here from their papers' layer tables with deterministic weights (He-normal convs, BN with
non-trivial statistics), in the layouts their usual exporters write:

* ``vgg11_gap``: VGG-11 (Simonyan & Zisserman), 3×3 convs + ReLU + 2×2 max pools, with a global
  average pool and one FC in place of the 4096-wide FCs (their 500 MB of weights say nothing
  about conv kernels);
* ``mobilenet_v1``: MobileNetV1 (Howard et al.), depthwise-separable convs, BN + ReLU, width 1.0;
* ``densenet121``: DenseNet-121 (Huang et al.), pre-activation BN → ReLU → conv, growth 32,
  concat-heavy dense blocks, transitions with 2×2 average pools.

``python benchmarks/foreign_nets.py DIR`` writes ``DIR/<name>.onnx``; then
``python -m rebirth_tvm.bench --models DIR/vgg11_gap.onnx,... --skip-rebirth``.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class Net:
    """A tiny ONNX graph builder: each method adds nodes and returns the output's name."""

    def __init__(self, name: str, seed: int = 0):
        self.name, self.nodes, self.inits, self.r, self.count = name, [], [], np.random.default_rng(seed), 0

    def _id(self, kind: str) -> str:
        self.count += 1
        return f"{kind}{self.count}"

    def _const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(value.astype(np.float32), name))
        return name

    def conv(self, x: str, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, bias: bool = False) -> str:
        name = self._id("conv")
        fan_in = cin // groups * k * k
        w = self._const(f"{name}_w", self.r.normal(0, np.sqrt(2.0 / fan_in), (cout, cin // groups, k, k)))
        inputs = [x, w] + ([self._const(f"{name}_b", self.r.normal(0, 0.05, cout))] if bias else [])
        self.nodes.append(helper.make_node("Conv", inputs, [name], kernel_shape=[k, k], strides=[stride, stride],
                                           pads=[k // 2] * 4, group=groups, name=name))
        return name

    def bn(self, x: str, c: int) -> str:
        name = self._id("bn")
        args = [self._const(f"{name}_{p}", v) for p, v in (("g", self.r.uniform(0.5, 1.5, c)), ("b", self.r.normal(0, 0.1, c)),
                                                           ("m", self.r.normal(0, 0.1, c)), ("v", self.r.uniform(0.5, 1.5, c)))]
        self.nodes.append(helper.make_node("BatchNormalization", [x, *args], [name], name=name))
        return name

    def op(self, kind: str, *inputs: str, **attrs) -> str:
        name = self._id(kind.lower())
        self.nodes.append(helper.make_node(kind, list(inputs), [name], name=name, **attrs))
        return name

    def head(self, x: str, c: int, classes: int = 1000) -> str:
        flat = self.op("Flatten", self.op("GlobalAveragePool", x))
        w = self._const("fc_w", self.r.normal(0, np.sqrt(1.0 / c), (classes, c)))
        return self.op("Gemm", flat, w, self._const("fc_b", np.zeros(classes)), transB=1)

    def model(self, out: str, shape=(1, 3, 224, 224)) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, self.name, [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(shape))],
                                  [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], self.inits)
        return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))


def vgg11_gap() -> onnx.ModelProto:
    net, x, cin = Net("vgg11_gap"), "input", 3
    for cout in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"):
        if cout == "M":
            x = net.op("MaxPool", x, kernel_shape=[2, 2], strides=[2, 2])
        else:
            x, cin = net.op("Relu", net.conv(x, cin, cout, 3, bias=True)), cout
    return net.model(net.head(x, cin))


def mobilenet_v1() -> onnx.ModelProto:
    net = Net("mobilenet_v1", seed=1)
    x = net.op("Relu", net.bn(net.conv("input", 3, 32, 3, stride=2), 32))
    cin = 32
    for cout, stride in ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), *[(512, 1)] * 5, (1024, 2), (1024, 1)):
        x = net.op("Relu", net.bn(net.conv(x, cin, cin, 3, stride=stride, groups=cin), cin))
        x, cin = net.op("Relu", net.bn(net.conv(x, cin, cout, 1), cout)), cout
    return net.model(net.head(x, cin))


def densenet121(growth: int = 32) -> onnx.ModelProto:
    net = Net("densenet121", seed=2)
    x = net.op("Relu", net.bn(net.conv("input", 3, 64, 7, stride=2), 64))
    x = net.op("MaxPool", x, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    c = 64
    for i, layers in enumerate((6, 12, 24, 16)):
        for _ in range(layers):
            y = net.conv(net.op("Relu", net.bn(x, c)), c, 4 * growth, 1)
            y = net.conv(net.op("Relu", net.bn(y, 4 * growth)), 4 * growth, growth, 3)
            x, c = net.op("Concat", x, y, axis=1), c + growth
        if i < 3:
            x = net.conv(net.op("Relu", net.bn(x, c)), c, c // 2, 1)
            x, c = net.op("AveragePool", x, kernel_shape=[2, 2], strides=[2, 2]), c // 2
    return net.model(net.head(net.op("Relu", net.bn(x, c)), c))


NETS = {"vgg11_gap": vgg11_gap, "mobilenet_v1": mobilenet_v1, "densenet121": densenet121}


def main(argv=None) -> int:
    folder = (argv or sys.argv[1:] or ["build/foreign"])[0]
    os.makedirs(folder, exist_ok=True)
    for name, make in NETS.items():
        path = os.path.join(folder, f"{name}.onnx")
        onnx.save(make(), path)
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
