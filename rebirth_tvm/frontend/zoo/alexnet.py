"""BVLC AlexNet as an ONNX graph.

Follows Caffe's ``models/bvlc_alexnet/deploy.prototxt`` (Krizhevsky et al.,
"ImageNet Classification with Deep Convolutional Neural Networks", NIPS 2012)
with the dropout layers removed (inference graph).  Unlike torchvision's
AlexNet this is the original two-tower network: conv2, conv4 and conv5 are
grouped convolutions (``group: 2``), and there are two LRN layers.  The layer
order is Caffe's conv -> ReLU -> LRN -> pool.

The input is 1x3x227x227 (the size that makes the 11x11 stride-4 conv1 tile
exactly).  Caffe rounds pool sizes up, but with 227 the maps come out
55 -> 27 -> 13 -> 6 under both floor and ceil rounding, so the pools use
ONNX's default floor mode.  fc6 therefore sees 256*6*6 = 9216 features.
"""

from __future__ import annotations

import onnx

from rebirth_tvm.frontend.zoo._graph import GraphBuilder

INPUT_SHAPE = (1, 3, 227, 227)
NUM_CLASSES = 1000


def alexnet(seed: int = 0) -> onnx.ModelProto:
    """Build BVLC AlexNet (grouped, with LRN) for a 1x3x227x227 input."""
    g = GraphBuilder("alexnet", INPUT_SHAPE, seed, param_sep="/")
    x = g.relu(g.conv(g.input_name, 96, 11, stride=4, name="conv1"), name="relu1")
    x = g.lrn(x, 5, 1e-4, 0.75, 1.0, name="norm1")
    x = g.maxpool(x, 3, 2, name="pool1")
    x = g.relu(g.conv(x, 256, 5, pad=2, groups=2, name="conv2"), name="relu2")
    x = g.lrn(x, 5, 1e-4, 0.75, 1.0, name="norm2")
    x = g.maxpool(x, 3, 2, name="pool2")
    x = g.relu(g.conv(x, 384, 3, pad=1, name="conv3"), name="relu3")
    x = g.relu(g.conv(x, 384, 3, pad=1, groups=2, name="conv4"), name="relu4")
    x = g.relu(g.conv(x, 256, 3, pad=1, groups=2, name="conv5"), name="relu5")
    x = g.maxpool(x, 3, 2, name="pool5")
    if g.shape(x) != (1, 256, 6, 6):
        raise AssertionError(f"alexnet: pool5 is {g.shape(x)}, expected (1, 256, 6, 6)")
    x = g.flatten(x, name="flatten")
    x = g.relu(g.fc(x, 4096, name="fc6"), name="relu6")
    x = g.relu(g.fc(x, 4096, name="fc7"), name="relu7")
    x = g.fc(x, NUM_CLASSES, name="fc8")
    return g.model(
        x,
        doc="BVLC AlexNet (Caffe bvlc_alexnet deploy.prototxt, grouped convs + LRN), random seeded weights",
        metadata={"architecture": "alexnet", "source": "caffe:models/bvlc_alexnet/deploy.prototxt"},
    )
