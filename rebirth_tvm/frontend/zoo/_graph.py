"""A small ONNX graph builder for the model zoo.

The zoo's networks are written as straight-line Python that calls one method
per layer (``g.conv(...)``, ``g.relu(...)``, ...).  :class:`GraphBuilder`
turns those calls into an ONNX opset-13 graph and keeps track of every
tensor's NCHW shape, so the architecture code never has to spell out input
channel counts and can assert feature-map sizes where the architecture
relies on them (e.g. GoogLeNet's ceil-mode pooling).

Weights are drawn from ``numpy.random.default_rng(seed)`` in layer order, so a
given (architecture, seed) pair always produces byte-identical initializers:

* conv / FC weights: He (Kaiming) normal, fan-in mode, gain sqrt(2), i.e.
  ``N(0, 2 / fan_in)``.  That keeps the second moment of ReLU activations
  roughly constant with depth, so un-normalised nets such as GoogLeNet and
  AlexNet still give logits of order one instead of overflowing/vanishing.
* biases: ``N(0, 0.01)``, small but non-zero so bias handling is exercised.
* BatchNormalization: deliberately *non-trivial* statistics (gamma
  ``U(0.5, 1.5)``, beta ``N(0, 0.1)``, running mean ``N(0, 0.1)``, running
  var ``U(0.5, 1.5)``, epsilon 1e-5).  Identity BN parameters would let a
  broken BN-folding pass go unnoticed.

Every node's single output tensor carries the node's own name, and
initializers are named ``<layer><sep><kind>`` (``conv1/7x7_s2/weight`` in the
Caffe-style models, ``layer1.0.conv1.weight`` in the torchvision-style ones,
matching torchvision's ``state_dict`` keys).  Names must be unique; a
duplicate raises ``ValueError`` at build time rather than producing an
invalid graph.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 13
IR_VERSION = 8
PRODUCER = "rebirth_tvm.models"

IntOrPair = int | tuple[int, int]


def _pair(v: IntOrPair) -> tuple[int, int]:
    if isinstance(v, int):
        return v, v
    a, b = v
    return int(a), int(b)


def _pool_out(size: int, k: int, s: int, p: int, ceil_mode: bool) -> int:
    """Output length of a pooling window, ONNX/PyTorch semantics."""
    span = size + 2 * p - k
    if span < 0:
        raise ValueError(f"pool kernel {k} larger than padded input {size + 2 * p}")
    out = (-(-span // s) if ceil_mode else span // s) + 1
    # In ceil mode the last window must start inside the input or left
    # padding, not purely in the right padding (same rule as PyTorch and ONNX).
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


class GraphBuilder:
    """Accumulates nodes and seeded initializers for one ONNX model.

    A builder is single-use: call :meth:`model` once at the end.
    """

    def __init__(
        self,
        name: str,
        input_shape: Sequence[int],
        seed: int,
        *,
        input_name: str = "data",
        param_sep: str = "/",
    ) -> None:
        if len(input_shape) != 4:
            raise ValueError(f"input_shape must be (N, C, H, W), got {tuple(input_shape)}")
        self.name = name
        self.seed = int(seed)
        self.rng = np.random.default_rng(self.seed)
        self.input_name = input_name
        self._sep = param_sep
        self._nodes: list[onnx.NodeProto] = []
        self._inits: list[TensorProto] = []
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._used: set[str] = set()
        self._auto: dict[str, int] = {}
        self._relu6_bounds: tuple[str, str] | None = None
        self._done = False
        self._claim(input_name)
        self._shapes[input_name] = tuple(int(d) for d in input_shape)

    # ------------------------------------------------------------------ utils
    def shape(self, x: str) -> tuple[int, ...]:
        """The tracked shape of tensor ``x``."""
        return self._shapes[x]

    def channels(self, x: str) -> int:
        """Channel count (dim 1) of tensor ``x``."""
        return self._shapes[x][1]

    def _claim(self, name: str) -> str:
        if not name:
            raise ValueError("empty tensor/node name")
        if name in self._used:
            raise ValueError(f"duplicate name {name!r} in model {self.name!r}")
        self._used.add(name)
        return name

    def _name(self, name: str | None, op: str) -> str:
        if name is not None:
            return name
        # Auto names are only a fallback; the zoo names every layer itself.
        while True:
            n = self._auto.get(op, 0)
            self._auto[op] = n + 1
            cand = f"{op.lower()}_{n}"
            if cand not in self._used:
                return cand

    def _param(self, layer: str, kind: str, value: np.ndarray) -> str:
        pname = self._claim(f"{layer}{self._sep}{kind}")
        # np.asarray, not np.ascontiguousarray: the latter turns 0-d arrays
        # into shape (1,), and Clip's min/max must be true scalars.
        arr = np.asarray(value, dtype=np.float32, order="C")
        self._inits.append(numpy_helper.from_array(arr, pname))
        return pname

    def _node(
        self,
        op: str,
        inputs: Sequence[str],
        name: str,
        shape: Sequence[int],
        **attrs: object,
    ) -> str:
        if self._done:
            raise RuntimeError("GraphBuilder.model() was already called")
        for i in inputs:
            if i not in self._shapes and i not in self._used:
                raise KeyError(f"{op} {name!r}: unknown input tensor {i!r}")
        self._claim(name)
        self._nodes.append(helper.make_node(op, list(inputs), [name], name=name, **attrs))
        self._shapes[name] = tuple(int(d) for d in shape)
        return name

    def _he_normal(self, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
        std = math.sqrt(2.0 / fan_in)
        return self.rng.standard_normal(shape, dtype=np.float32) * np.float32(std)

    def _small_bias(self, n: int) -> np.ndarray:
        return self.rng.normal(0.0, 0.01, size=n).astype(np.float32)

    def _check_4d(self, x: str, op: str) -> tuple[int, int, int, int]:
        s = self._shapes[x]
        if len(s) != 4:
            raise ValueError(f"{op} expects a 4-D NCHW input, {x!r} has shape {s}")
        return s  # type: ignore[return-value]

    # ----------------------------------------------------------------- layers
    def conv(
        self,
        x: str,
        out_ch: int,
        k: IntOrPair,
        stride: IntOrPair = 1,
        pad: IntOrPair = 0,
        groups: int = 1,
        bias: bool = True,
        *,
        name: str | None = None,
    ) -> str:
        """2-D convolution with symmetric padding (PyTorch/Caffe default pad 0)."""
        n, c, h, w = self._check_4d(x, "Conv")
        if c % groups or out_ch % groups:
            raise ValueError(f"Conv {name!r}: channels {c}->{out_ch} not divisible by groups={groups}")
        kh, kw = _pair(k)
        sh, sw = _pair(stride)
        ph, pw = _pair(pad)
        name = self._name(name, "Conv")
        cin_g = c // groups
        weight = self._param(name, "weight", self._he_normal((out_ch, cin_g, kh, kw), cin_g * kh * kw))
        inputs = [x, weight]
        if bias:
            inputs.append(self._param(name, "bias", self._small_bias(out_ch)))
        oh = (h + 2 * ph - kh) // sh + 1
        ow = (w + 2 * pw - kw) // sw + 1
        if oh <= 0 or ow <= 0:
            raise ValueError(f"Conv {name!r}: empty output for input {h}x{w}")
        return self._node(
            "Conv",
            inputs,
            name,
            (n, out_ch, oh, ow),
            kernel_shape=[kh, kw],
            strides=[sh, sw],
            pads=[ph, pw, ph, pw],
            group=groups,
        )

    def bn(self, x: str, *, name: str | None = None, epsilon: float = 1e-5) -> str:
        """Inference-mode BatchNormalization with random, non-identity statistics."""
        c = self.channels(x)
        name = self._name(name, "BatchNormalization")
        rng = self.rng
        scale = self._param(name, "weight", rng.uniform(0.5, 1.5, c))
        shift = self._param(name, "bias", rng.normal(0.0, 0.1, c))
        mean = self._param(name, "running_mean", rng.normal(0.0, 0.1, c))
        var = self._param(name, "running_var", rng.uniform(0.5, 1.5, c))
        return self._node(
            "BatchNormalization", [x, scale, shift, mean, var], name, self.shape(x), epsilon=float(epsilon)
        )

    def relu(self, x: str, *, name: str | None = None) -> str:
        return self._node("Relu", [x], self._name(name, "Relu"), self.shape(x))

    def relu6(self, x: str, *, name: str | None = None) -> str:
        """ReLU6 as opset-13 ``Clip``; min/max are (shared) scalar initializers."""
        if self._relu6_bounds is None:
            # One shared pair: every ReLU6 in a net has the same bounds, and
            # sharing mirrors what exporters emit after constant dedup.
            lo = self._param("relu6", "min", np.array(0.0, dtype=np.float32))
            hi = self._param("relu6", "max", np.array(6.0, dtype=np.float32))
            self._relu6_bounds = (lo, hi)
        lo, hi = self._relu6_bounds
        return self._node("Clip", [x, lo, hi], self._name(name, "Clip"), self.shape(x))

    clip6 = relu6

    def maxpool(
        self,
        x: str,
        k: IntOrPair,
        s: IntOrPair,
        pad: IntOrPair = 0,
        ceil_mode: bool = False,
        *,
        name: str | None = None,
    ) -> str:
        return self._pool("MaxPool", x, k, s, pad, ceil_mode, name)

    def avgpool(
        self,
        x: str,
        k: IntOrPair,
        s: IntOrPair,
        pad: IntOrPair = 0,
        ceil_mode: bool = False,
        count_include_pad: bool = False,
        *,
        name: str | None = None,
    ) -> str:
        return self._pool(
            "AveragePool", x, k, s, pad, ceil_mode, name, count_include_pad=int(count_include_pad)
        )

    def _pool(
        self,
        op: str,
        x: str,
        k: IntOrPair,
        s: IntOrPair,
        pad: IntOrPair,
        ceil_mode: bool,
        name: str | None,
        **extra: object,
    ) -> str:
        n, c, h, w = self._check_4d(x, op)
        kh, kw = _pair(k)
        sh, sw = _pair(s)
        ph, pw = _pair(pad)
        oh = _pool_out(h, kh, sh, ph, ceil_mode)
        ow = _pool_out(w, kw, sw, pw, ceil_mode)
        return self._node(
            op,
            [x],
            self._name(name, op),
            (n, c, oh, ow),
            kernel_shape=[kh, kw],
            strides=[sh, sw],
            pads=[ph, pw, ph, pw],
            ceil_mode=int(ceil_mode),
            **extra,
        )

    def global_avgpool(self, x: str, *, name: str | None = None) -> str:
        n, c, _, _ = self._check_4d(x, "GlobalAveragePool")
        return self._node("GlobalAveragePool", [x], self._name(name, "GlobalAveragePool"), (n, c, 1, 1))

    def lrn(
        self,
        x: str,
        size: int = 5,
        alpha: float = 1e-4,
        beta: float = 0.75,
        bias: float = 1.0,
        *,
        name: str | None = None,
    ) -> str:
        """Cross-channel LRN.  ONNX divides alpha by size exactly like Caffe."""
        self._check_4d(x, "LRN")
        return self._node(
            "LRN",
            [x],
            self._name(name, "LRN"),
            self.shape(x),
            size=int(size),
            alpha=float(alpha),
            beta=float(beta),
            bias=float(bias),
        )

    def concat(self, xs: Iterable[str], axis: int = 1, *, name: str | None = None) -> str:
        xs = list(xs)
        if not xs:
            raise ValueError("concat of nothing")
        shapes = [self.shape(t) for t in xs]
        base = list(shapes[0])
        for t, s in zip(xs, shapes):
            if len(s) != len(base) or any(a != b for i, (a, b) in enumerate(zip(s, base)) if i != axis):
                raise ValueError(f"Concat {name!r}: {t!r} has shape {s}, expected {tuple(base)} off axis {axis}")
        base[axis] = sum(s[axis] for s in shapes)
        return self._node("Concat", xs, self._name(name, "Concat"), base, axis=axis)

    def add(self, a: str, b: str, *, name: str | None = None) -> str:
        if self.shape(a) != self.shape(b):
            # No broadcasting in the zoo: a mismatch is an architecture bug.
            raise ValueError(f"Add {name!r}: shapes {self.shape(a)} and {self.shape(b)} differ")
        return self._node("Add", [a, b], self._name(name, "Add"), self.shape(a))

    def flatten(self, x: str, axis: int = 1, *, name: str | None = None) -> str:
        s = self.shape(x)
        lead = math.prod(s[:axis])
        return self._node("Flatten", [x], self._name(name, "Flatten"), (lead, math.prod(s[axis:])), axis=axis)

    def fc(self, x: str, out_features: int, bias: bool = True, *, name: str | None = None) -> str:
        """Fully connected layer as ``Gemm(x, W, b, transB=1)``, W is (out, in) like PyTorch."""
        s = self.shape(x)
        if len(s) != 2:
            raise ValueError(f"fc expects a 2-D input (flatten first), {x!r} has shape {s}")
        name = self._name(name, "Gemm")
        in_features = s[1]
        inputs = [x, self._param(name, "weight", self._he_normal((out_features, in_features), in_features))]
        if bias:
            inputs.append(self._param(name, "bias", self._small_bias(out_features)))
        return self._node("Gemm", inputs, name, (s[0], out_features), alpha=1.0, beta=1.0, transB=1)

    gemm = fc

    # ------------------------------------------------------------------ model
    def model(
        self,
        output: str,
        *,
        output_name: str = "logits",
        doc: str = "",
        metadata: Mapping[str, str] | None = None,
    ) -> onnx.ModelProto:
        """Finish the graph with ``output`` exposed as the graph output ``output_name``."""
        if self._done:
            raise RuntimeError("GraphBuilder.model() was already called")
        if output not in self._shapes or output == self.input_name:
            raise KeyError(f"unknown output tensor {output!r}")
        shape = self._shapes[output]
        if output != output_name:
            # Rename the producing node's output instead of appending an
            # Identity: the graph stays exactly the architecture's ops.
            self._claim(output_name)
            for node in self._nodes:
                for i, t in enumerate(node.output):
                    if t == output:
                        node.output[i] = output_name
                for i, t in enumerate(node.input):
                    if t == output:
                        node.input[i] = output_name
            self._shapes[output_name] = shape
        self._done = True

        graph = helper.make_graph(
            self._nodes,
            self.name,
            inputs=[helper.make_tensor_value_info(self.input_name, TensorProto.FLOAT, list(self.shape(self.input_name)))],
            outputs=[helper.make_tensor_value_info(output_name, TensorProto.FLOAT, list(shape))],
            doc_string=doc,
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            producer_name=PRODUCER,
            doc_string=doc,
        )
        model.ir_version = IR_VERSION
        # Attach initializers last and drop our references, so the (possibly
        # hundreds of MB of) weights are copied once rather than twice.
        model.graph.initializer.extend(self._inits)
        self._inits = []
        props = {"seed": str(self.seed)}
        props.update(metadata or {})
        helper.set_model_props(model, props)
        return model
