"""MobileNetV2 (width multiplier 1.0) as an ONNX graph.

Follows torchvision's ``torchvision.models.mobilenetv2`` (Sandler et al.,
"MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018).

* Stem: 3x3/2 conv to 32 channels + BN + ReLU6.
* 17 inverted-residual blocks from the (t, c, n, s) table below: optional 1x1
  expansion (+BN+ReLU6, skipped when t == 1), 3x3 depthwise conv
  (groups = channels, +BN+ReLU6), linear 1x1 projection + BN; a residual Add
  when stride is 1 and input and output channels match.
* 1x1 conv to 1280 + BN + ReLU6, global average pool, flatten, FC 1000
  (``Gemm``).  Dropout is omitted (inference graph).

Convs have no bias.  ReLU6 is opset-13 ``Clip`` with min/max given as scalar
initializers (``relu6.min``/``relu6.max``), which is how exporters emit it.
Names follow torchvision module paths / ``state_dict`` keys
(``features.2.conv.1.0.weight`` is block 2's depthwise conv).
"""

from __future__ import annotations

import onnx

from rebirth_tvm.frontend.zoo._graph import GraphBuilder

INPUT_SHAPE = (1, 3, 224, 224)
NUM_CLASSES = 1000
LAST_CHANNELS = 1280

# (expand ratio t, output channels c, repeats n, first stride s); with width
# 1.0 torchvision's _make_divisible(c, 8) leaves every c unchanged.
INVERTED_RESIDUAL_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def _conv_bn_act(g: GraphBuilder, x: str, out_ch: int, k: int, stride: int, groups: int, p: str) -> str:
    """torchvision Conv2dNormActivation: names ``p.0`` (conv), ``p.1`` (BN), ``p.2`` (ReLU6)."""
    y = g.conv(x, out_ch, k, stride=stride, pad=(k - 1) // 2, groups=groups, bias=False, name=f"{p}.0")
    return g.relu6(g.bn(y, name=f"{p}.1"), name=f"{p}.2")


def _inverted_residual(g: GraphBuilder, x: str, out_ch: int, stride: int, t: int, p: str) -> str:
    in_ch = g.channels(x)
    hidden = int(round(in_ch * t))
    y = x
    i = 0  # index inside torchvision's ``conv`` Sequential
    if t != 1:
        y = _conv_bn_act(g, y, hidden, 1, 1, 1, f"{p}.conv.{i}")
        i += 1
    y = _conv_bn_act(g, y, hidden, 3, stride, hidden, f"{p}.conv.{i}")  # depthwise
    y = g.conv(y, out_ch, 1, bias=False, name=f"{p}.conv.{i + 1}")  # linear projection
    y = g.bn(y, name=f"{p}.conv.{i + 2}")
    if stride == 1 and in_ch == out_ch:
        y = g.add(x, y, name=f"{p}.add")
    return y


def mobilenet_v2(seed: int = 0) -> onnx.ModelProto:
    """Build torchvision MobileNetV2 (width 1.0) for a 1x3x224x224 input."""
    g = GraphBuilder("mobilenet_v2", INPUT_SHAPE, seed, param_sep=".")
    x = _conv_bn_act(g, g.input_name, 32, 3, 2, 1, "features.0")
    idx = 1
    for t, c, n, s in INVERTED_RESIDUAL_SETTING:
        for i in range(n):
            x = _inverted_residual(g, x, c, s if i == 0 else 1, t, f"features.{idx}")
            idx += 1
    x = _conv_bn_act(g, x, LAST_CHANNELS, 1, 1, 1, f"features.{idx}")
    if g.shape(x) != (1, LAST_CHANNELS, 7, 7):
        raise AssertionError(f"mobilenet_v2: features output is {g.shape(x)}, expected (1, 1280, 7, 7)")
    x = g.global_avgpool(x, name="avgpool")
    x = g.flatten(x, name="flatten")
    x = g.fc(x, NUM_CLASSES, name="classifier.1")
    return g.model(
        x,
        doc="torchvision MobileNetV2 (width 1.0), random seeded weights",
        metadata={"architecture": "mobilenet_v2", "source": "torchvision.models.mobilenetv2"},
    )
