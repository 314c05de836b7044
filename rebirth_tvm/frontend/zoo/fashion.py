"""The Fashion-MNIST teacher: a small GoogLeNet with *trained* weights, committed as ONNX.

Unlike the rest of the zoo (architectures with seeded random weights), this model is what the
accuracy study needs: a network whose predictions mean something, so that "the reborn model
lost x points of top-1" is a real measurement. ``rebirth_tvm.train_teacher`` trained it (see
that module for the architecture and ``fashion_googlenet.json`` beside the ONNX for the run);
nothing retrains it at run time.
"""

from __future__ import annotations

import os

import onnx

INPUT_SHAPE = (1, 1, 28, 28)
CLASSES = 10
ONNX_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fashion_googlenet.onnx")


def fashion_googlenet(seed: int = 0) -> onnx.ModelProto:
    """The committed trained teacher (``seed`` is ignored: the weights are trained, not drawn)."""
    from rebirth_tvm.core.errors import RebirthError

    if not os.path.exists(ONNX_PATH):
        raise RebirthError(f"the trained teacher {ONNX_PATH} is missing from this install; "
                           "reinstall rebirth-tvm or retrain it with python -m rebirth_tvm.train_teacher")
    return onnx.load(ONNX_PATH)
