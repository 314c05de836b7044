"""Model zoo: classic ImageNet CNNs built as ONNX graphs in code.

Every model is constructed node by node (see :mod:`._graph`) with
deterministic, seeded random weights, so no weight files are downloaded and
the same ``(name, seed)`` always yields byte-identical initializers.  The
graphs are ONNX opset 13 / IR version 8 with one float32 input ``data`` of
fixed NCHW shape and one output ``logits`` (the last classifier layer, no
softmax) of shape ``(1, 1000)``.

>>> from rebirth_tvm.frontend.zoo import build_model, list_models
>>> list_models()[:2]
['googlenet', 'alexnet']
>>> m = build_model("squeezenet1_1", seed=0)
>>> m.graph.output[0].name
'logits'

The weights are random (except ``fashion_googlenet``, a small GoogLeNet
trained on Fashion-MNIST and committed as ONNX, with 10 logits), so the
logits are meaningless as predictions; the zoo exists to exercise compiler passes on realistic graph structures
(LRN, ceil-mode pooling, grouped/depthwise conv, BN folding, residual adds,
inception concats).  ``ModelSpec.preset`` names the input preprocessing a
real checkpoint of that architecture would expect.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import onnx

from rebirth_tvm.frontend.zoo import alexnet as _alexnet
from rebirth_tvm.frontend.zoo import fashion as _fashion
from rebirth_tvm.frontend.zoo import googlenet as _googlenet
from rebirth_tvm.frontend.zoo import mobilenet as _mobilenet
from rebirth_tvm.frontend.zoo import resnet as _resnet
from rebirth_tvm.frontend.zoo import squeezenet as _squeezenet

__all__ = ["MODELS", "ModelSpec", "build_model", "list_models"]


@dataclass(frozen=True)
class ModelSpec:
    """Registry entry for one architecture."""

    name: str
    builder: Callable[[int], onnx.ModelProto]
    input_shape: tuple[int, int, int, int]
    description: str
    preset: str = "imagenet"
    classes: int = 1000
    #: False for seeded random weights (the builder's ``seed`` draws them); True for a trained,
    #: committed model (the seed is ignored).
    trained: bool = False


_SPECS = (
    ModelSpec(
        "googlenet",
        _googlenet.googlenet,
        _googlenet.INPUT_SHAPE,
        "BVLC GoogLeNet / Inception v1 (Caffe): LRN, ceil-mode pools, 9 inception modules",
    ),
    ModelSpec(
        "alexnet",
        _alexnet.alexnet,
        _alexnet.INPUT_SHAPE,
        "BVLC AlexNet (Caffe): grouped convs, LRN, three FC layers (61M params)",
    ),
    ModelSpec(
        "resnet18",
        _resnet.resnet18,
        _resnet.INPUT_SHAPE,
        "ResNet-18 (torchvision): basic residual blocks, BatchNorm",
    ),
    ModelSpec(
        "resnet50",
        _resnet.resnet50,
        _resnet.INPUT_SHAPE,
        "ResNet-50 v1.5 (torchvision): bottleneck residual blocks, BatchNorm",
    ),
    ModelSpec(
        "squeezenet1_0",
        _squeezenet.squeezenet1_0,
        _squeezenet.INPUT_SHAPE,
        "SqueezeNet 1.0 (torchvision): fire modules, ceil-mode pools, conv classifier",
    ),
    ModelSpec(
        "squeezenet1_1",
        _squeezenet.squeezenet1_1,
        _squeezenet.INPUT_SHAPE,
        "SqueezeNet 1.1 (torchvision): fire modules, 3x3 stem, conv classifier",
    ),
    ModelSpec(
        "mobilenet_v2",
        _mobilenet.mobilenet_v2,
        _mobilenet.INPUT_SHAPE,
        "MobileNetV2 1.0 (torchvision): inverted residuals, depthwise convs, ReLU6 as Clip",
    ),
    ModelSpec(
        "fashion_googlenet",
        _fashion.fashion_googlenet,
        _fashion.INPUT_SHAPE,
        "GoogLeNet-style teacher TRAINED on Fashion-MNIST (28x28 grey, 10 classes): conv+pool+LRN stem, 5 inception modules, BN",
        preset="gray",
        classes=_fashion.CLASSES,
        trained=True,
    ),
)

MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in _SPECS}


def list_models() -> list[str]:
    """Names of all models, in registry order."""
    return list(MODELS)


def build_model(name: str, seed: int = 0) -> onnx.ModelProto:
    """Build model ``name`` with weights drawn from ``numpy.random.default_rng(seed)``.

    Raises ``ValueError`` for an unknown name.
    """
    spec = MODELS.get(name)
    if spec is None:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    return spec.builder(int(seed))
