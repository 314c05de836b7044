"""BVLC GoogLeNet (Inception v1) as an ONNX graph.

Follows Caffe's ``models/bvlc_googlenet/deploy.prototxt`` (Szegedy et al.,
"Going Deeper with Convolutions", CVPR 2015), without the two auxiliary
classifiers and the dropout, which only matter for training.  There is no
batch normalisation; every convolution has a bias and is followed by a ReLU.

Differences from the prototxt that do not change the computed function:

* ``pool5/7x7_s1`` (7x7 average pool over a 7x7 map) is a ``GlobalAveragePool``.
* Caffe pools always round up; the stride-2 pools here use ``ceil_mode=1``
  because that is what makes the maps come out 112 -> 56 -> 28 -> 14 -> 7.
  The stride-1, pad-1 pools inside the inception modules give the same size
  either way, so they use the default floor mode.
* Caffe's in-place ReLUs become separate tensors (ONNX is SSA); nodes keep
  the Caffe layer names (``conv1/7x7_s2``, ``inception_3a/pool_proj``, ...).
"""

from __future__ import annotations

import onnx

from rebirth_tvm.frontend.zoo._graph import GraphBuilder

INPUT_SHAPE = (1, 3, 224, 224)
NUM_CLASSES = 1000

# Per module: (#1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj),
# table 1 of the paper / the deploy.prototxt.
INCEPTION_CONFIG: dict[str, tuple[int, int, int, int, int, int]] = {
    "3a": (64, 96, 128, 16, 32, 32),
    "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64),
    "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128),
    "5b": (384, 192, 384, 48, 128, 128),
}


def _conv_relu(g: GraphBuilder, x: str, out_ch: int, k: int, name: str, relu_name: str, **kw: int) -> str:
    return g.relu(g.conv(x, out_ch, k, name=name, **kw), name=relu_name)


def _inception(g: GraphBuilder, x: str, tag: str) -> str:
    c1, c3r, c3, c5r, c5, pp = INCEPTION_CONFIG[tag]
    p = f"inception_{tag}"
    b1 = _conv_relu(g, x, c1, 1, f"{p}/1x1", f"{p}/relu_1x1")
    b2 = _conv_relu(g, x, c3r, 1, f"{p}/3x3_reduce", f"{p}/relu_3x3_reduce")
    b2 = _conv_relu(g, b2, c3, 3, f"{p}/3x3", f"{p}/relu_3x3", pad=1)
    b3 = _conv_relu(g, x, c5r, 1, f"{p}/5x5_reduce", f"{p}/relu_5x5_reduce")
    b3 = _conv_relu(g, b3, c5, 5, f"{p}/5x5", f"{p}/relu_5x5", pad=2)
    b4 = g.maxpool(x, 3, 1, pad=1, name=f"{p}/pool")
    b4 = _conv_relu(g, b4, pp, 1, f"{p}/pool_proj", f"{p}/relu_pool_proj")
    return g.concat([b1, b2, b3, b4], name=f"{p}/output")


def _expect_hw(g: GraphBuilder, x: str, hw: int) -> None:
    if g.shape(x)[2:] != (hw, hw):
        raise AssertionError(f"googlenet: {x} is {g.shape(x)[2:]}, expected {hw}x{hw}")


def googlenet(seed: int = 0) -> onnx.ModelProto:
    """Build BVLC GoogLeNet for a 1x3x224x224 input with seeded weights."""
    g = GraphBuilder("googlenet", INPUT_SHAPE, seed, param_sep="/")
    x = _conv_relu(g, g.input_name, 64, 7, "conv1/7x7_s2", "conv1/relu_7x7", stride=2, pad=3)
    _expect_hw(g, x, 112)
    x = g.maxpool(x, 3, 2, ceil_mode=True, name="pool1/3x3_s2")
    _expect_hw(g, x, 56)
    x = g.lrn(x, 5, 1e-4, 0.75, 1.0, name="pool1/norm1")
    x = _conv_relu(g, x, 64, 1, "conv2/3x3_reduce", "conv2/relu_3x3_reduce")
    x = _conv_relu(g, x, 192, 3, "conv2/3x3", "conv2/relu_3x3", pad=1)
    x = g.lrn(x, 5, 1e-4, 0.75, 1.0, name="conv2/norm2")
    x = g.maxpool(x, 3, 2, ceil_mode=True, name="pool2/3x3_s2")
    _expect_hw(g, x, 28)
    for tag in ("3a", "3b"):
        x = _inception(g, x, tag)
    x = g.maxpool(x, 3, 2, ceil_mode=True, name="pool3/3x3_s2")
    _expect_hw(g, x, 14)
    for tag in ("4a", "4b", "4c", "4d", "4e"):
        x = _inception(g, x, tag)
    x = g.maxpool(x, 3, 2, ceil_mode=True, name="pool4/3x3_s2")
    _expect_hw(g, x, 7)
    for tag in ("5a", "5b"):
        x = _inception(g, x, tag)
    if g.channels(x) != 1024:
        raise AssertionError(f"googlenet: inception_5b has {g.channels(x)} channels, expected 1024")
    x = g.global_avgpool(x, name="pool5/7x7_s1")
    x = g.flatten(x, name="pool5/flatten")
    x = g.fc(x, NUM_CLASSES, name="loss3/classifier")
    return g.model(
        x,
        doc="BVLC GoogLeNet (Caffe bvlc_googlenet deploy.prototxt), random seeded weights",
        metadata={"architecture": "googlenet", "source": "caffe:models/bvlc_googlenet/deploy.prototxt"},
    )
