"""SqueezeNet 1.0 and 1.1 as ONNX graphs.

Follows torchvision's ``torchvision.models.squeezenet`` (Iandola et al.,
"SqueezeNet: AlexNet-level accuracy with 50x fewer parameters and <0.5MB
model size", 2016; 1.1 is the revision from the authors' repository with a
3x3/64 stem and earlier pooling, ~2.4x less compute).

Fire module: squeeze 1x1 -> ReLU, then expand1x1 -> ReLU and expand3x3 (pad 1)
-> ReLU in parallel, concatenated on channels (1x1 first).  Max pools are
3x3 stride 2 with ``ceil_mode=1`` as in torchvision (224 -> 109 -> 54 -> 27 -> 13
for 1.0, 224 -> 111 -> 55 -> 27 -> 13 for 1.1).  The classifier is a 1x1 conv
to 1000 channels, ReLU, global average pool and flatten, so unlike the other
zoo models there is no Gemm and the (non-negative) logits come straight out
of the pooled ReLU.  Dropout is omitted (inference graph).

Names follow torchvision module paths (``features.3.expand3x3``,
``classifier.1``) and ``state_dict`` keys for the weights.
"""

from __future__ import annotations

import onnx

from rebirth_tvm.frontend.zoo._graph import GraphBuilder

INPUT_SHAPE = (1, 3, 224, 224)
NUM_CLASSES = 1000

# torchvision ``features`` index -> layer, per version.  Fire entries are
# (squeeze, expand1x1, expand3x3) channel counts.
_FEATURES: dict[str, list[tuple]] = {
    "1_0": [
        ("conv", 96, 7), ("relu",), ("pool",),
        ("fire", 16, 64, 64), ("fire", 16, 64, 64), ("fire", 32, 128, 128), ("pool",),
        ("fire", 32, 128, 128), ("fire", 48, 192, 192), ("fire", 48, 192, 192), ("fire", 64, 256, 256), ("pool",),
        ("fire", 64, 256, 256),
    ],
    "1_1": [
        ("conv", 64, 3), ("relu",), ("pool",),
        ("fire", 16, 64, 64), ("fire", 16, 64, 64), ("pool",),
        ("fire", 32, 128, 128), ("fire", 32, 128, 128), ("pool",),
        ("fire", 48, 192, 192), ("fire", 48, 192, 192), ("fire", 64, 256, 256), ("fire", 64, 256, 256),
    ],
}


def _fire(g: GraphBuilder, x: str, squeeze: int, e1: int, e3: int, p: str) -> str:
    s = g.relu(g.conv(x, squeeze, 1, name=f"{p}.squeeze"), name=f"{p}.squeeze_activation")
    a = g.relu(g.conv(s, e1, 1, name=f"{p}.expand1x1"), name=f"{p}.expand1x1_activation")
    b = g.relu(g.conv(s, e3, 3, pad=1, name=f"{p}.expand3x3"), name=f"{p}.expand3x3_activation")
    return g.concat([a, b], name=f"{p}.concat")


def _squeezenet(version: str, seed: int) -> onnx.ModelProto:
    name = f"squeezenet{version}"
    g = GraphBuilder(name, INPUT_SHAPE, seed, param_sep=".")
    x = g.input_name
    for idx, layer in enumerate(_FEATURES[version]):
        p = f"features.{idx}"
        kind = layer[0]
        if kind == "conv":
            x = g.conv(x, layer[1], layer[2], stride=2, name=p)
        elif kind == "relu":
            x = g.relu(x, name=p)
        elif kind == "pool":
            x = g.maxpool(x, 3, 2, ceil_mode=True, name=p)
        else:
            x = _fire(g, x, *layer[1:], p)
    if g.shape(x) != (1, 512, 13, 13):
        raise AssertionError(f"{name}: features output is {g.shape(x)}, expected (1, 512, 13, 13)")
    x = g.relu(g.conv(x, NUM_CLASSES, 1, name="classifier.1"), name="classifier.2")
    x = g.global_avgpool(x, name="classifier.3")
    x = g.flatten(x, name="flatten")
    return g.model(
        x,
        doc=f"torchvision {name} (fire modules, ceil-mode pools, conv classifier), random seeded weights",
        metadata={"architecture": name, "source": "torchvision.models.squeezenet"},
    )


def squeezenet1_0(seed: int = 0) -> onnx.ModelProto:
    """torchvision SqueezeNet 1.0 (7x7/96 stem)."""
    return _squeezenet("1_0", seed)


def squeezenet1_1(seed: int = 0) -> onnx.ModelProto:
    """torchvision SqueezeNet 1.1 (3x3/64 stem, earlier downsampling)."""
    return _squeezenet("1_1", seed)
