"""ResNet-18 and ResNet-50 as ONNX graphs.

Follows torchvision's ``torchvision.models.resnet`` (He et al., "Deep Residual
Learning for Image Recognition", CVPR 2016), i.e. the "v1.5" variant: in the
bottleneck blocks the stride sits on the 3x3 convolution, not on the first
1x1.  Convolutions have no bias and are followed by BatchNormalization;
shortcuts that change shape use a 1x1 strided conv + BN ("option B"); the
residual Add is followed by ReLU.  Stem: 7x7/2 conv, BN, ReLU, 3x3/2 max pool
with padding 1; head: global average pool, flatten, FC 1000.

Node and initializer names follow torchvision's module paths and
``state_dict`` keys (``layer2.0.downsample.0.weight``, ``layer3.1.bn2.running_var``),
so the graph can be cross-referenced with PyTorch checkpoints.  Nodes that
torchvision does not name as modules get descriptive names
(``layer1.0.relu1``, ``layer1.0.add``).

Magnitudes: the random BN running statistics do not match the real activation
statistics, so BN does not renormalise, and each residual Add roughly doubles
the activation variance.  With a unit-normal input, seed 0 gives logits with
std ~1.4e2 (ResNet-18) and ~3.4e4 (ResNet-50); ResNet-50's largest
intermediate value is ~1.7e5, outside the float16 range.  Everything stays
finite in float32, but compare ResNet outputs with a *relative* tolerance:
ONNX Runtime's own BN folding changes ResNet-50 logits by ~4e-2 absolute
(4e-7 relative).
"""

from __future__ import annotations

import onnx

from rebirth_tvm.frontend.zoo._graph import GraphBuilder

INPUT_SHAPE = (1, 3, 224, 224)
NUM_CLASSES = 1000


def _conv_bn(g: GraphBuilder, x: str, out_ch: int, k: int, stride: int, prefix: str, conv: str, bn: str) -> str:
    # "same" padding for the odd kernels used here (1x1 -> 0, 3x3 -> 1).
    y = g.conv(x, out_ch, k, stride=stride, pad=k // 2, bias=False, name=f"{prefix}.{conv}")
    return g.bn(y, name=f"{prefix}.{bn}")


def _shortcut(g: GraphBuilder, x: str, out_ch: int, stride: int, prefix: str) -> str:
    if stride == 1 and g.channels(x) == out_ch:
        return x
    return _conv_bn(g, x, out_ch, 1, stride, prefix, "downsample.0", "downsample.1")


def _basic_block(g: GraphBuilder, x: str, planes: int, stride: int, prefix: str) -> str:
    out = g.relu(_conv_bn(g, x, planes, 3, stride, prefix, "conv1", "bn1"), name=f"{prefix}.relu1")
    out = _conv_bn(g, out, planes, 3, 1, prefix, "conv2", "bn2")
    out = g.add(out, _shortcut(g, x, planes, stride, prefix), name=f"{prefix}.add")
    return g.relu(out, name=f"{prefix}.relu")


def _bottleneck(g: GraphBuilder, x: str, planes: int, stride: int, prefix: str) -> str:
    out_ch = planes * 4  # Bottleneck.expansion
    out = g.relu(_conv_bn(g, x, planes, 1, 1, prefix, "conv1", "bn1"), name=f"{prefix}.relu1")
    # v1.5: the stride is applied here, on the 3x3.
    out = g.relu(_conv_bn(g, out, planes, 3, stride, prefix, "conv2", "bn2"), name=f"{prefix}.relu2")
    out = _conv_bn(g, out, out_ch, 1, 1, prefix, "conv3", "bn3")
    out = g.add(out, _shortcut(g, x, out_ch, stride, prefix), name=f"{prefix}.add")
    return g.relu(out, name=f"{prefix}.relu")


def _resnet(name: str, block, layers: tuple[int, int, int, int], seed: int) -> onnx.ModelProto:
    g = GraphBuilder(name, INPUT_SHAPE, seed, param_sep=".")
    x = g.conv(g.input_name, 64, 7, stride=2, pad=3, bias=False, name="conv1")
    x = g.relu(g.bn(x, name="bn1"), name="relu")
    x = g.maxpool(x, 3, 2, pad=1, name="maxpool")
    for stage, (planes, n_blocks) in enumerate(zip((64, 128, 256, 512), layers), start=1):
        for i in range(n_blocks):
            stride = 2 if (stage > 1 and i == 0) else 1
            x = block(g, x, planes, stride, f"layer{stage}.{i}")
    if g.shape(x)[2:] != (7, 7):
        raise AssertionError(f"{name}: layer4 output is {g.shape(x)}, expected 7x7")
    x = g.global_avgpool(x, name="avgpool")
    x = g.flatten(x, name="flatten")
    x = g.fc(x, NUM_CLASSES, name="fc")
    return g.model(
        x,
        doc=f"torchvision {name} (v1.5, BN, no conv bias), random seeded weights",
        metadata={"architecture": name, "source": "torchvision.models.resnet"},
    )


def resnet18(seed: int = 0) -> onnx.ModelProto:
    """torchvision ResNet-18: BasicBlocks [2, 2, 2, 2]."""
    return _resnet("resnet18", _basic_block, (2, 2, 2, 2), seed)


def resnet50(seed: int = 0) -> onnx.ModelProto:
    """torchvision ResNet-50 (v1.5): Bottlenecks [3, 4, 6, 3]."""
    return _resnet("resnet50", _bottleneck, (3, 4, 6, 3), seed)
