"""Relax → ONNX, for the ops rebirth-tvm's modules are made of.

Two users: ``--save-onnx`` (a reborn model runs in onnxruntime and can be compared anywhere),
and the relearning passes, which compute calibration activations with onnxruntime because an
untuned TVM CPU build is ~45x slower than onnxruntime (GoogLeNet: 1.2 s vs 27 ms per image).

Covered: conv2d, batch_norm (inference), relu, max/avg pooling (2-D, and the 3-D average pool
of the importer's LRN), add/subtract/multiply/divide/power, expand_dims, squeeze, concat,
strided_slice, reshape, permute_dims, matmul, mean, clip. Anything else (a ``call_tir`` from the
importer, say) raises :class:`RebirthError` naming it.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import tvm
from onnx import helper, numpy_helper
from tvm import relax

from rebirth_tvm.core.errors import RebirthError

_BINARY = {"relax.add": "Add", "relax.subtract": "Sub", "relax.multiply": "Mul", "relax.divide": "Div", "relax.power": "Pow"}


def _ints(values) -> list[int]:
    return [int(v) for v in values]


class _Exporter:
    def __init__(self, func: relax.Function):
        self.func = func
        self.nodes: list = []
        self.initializers: list = []
        self.names: dict = {}  # relax Var -> onnx value name
        self.used: set[str] = set()

    def unique(self, base: str) -> str:
        name, i = base or "v", 1
        while name in self.used:
            name, i = f"{base}_{i}", i + 1
        self.used.add(name)
        return name

    def constant(self, array: np.ndarray, base: str = "const") -> str:
        name = self.unique(base)
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def value(self, expr) -> str:
        if isinstance(expr, relax.Var):
            if expr not in self.names:
                raise RebirthError(f"cannot export to ONNX: {expr.name} is used before it is defined")
            return self.names[expr]
        if isinstance(expr, tvm.ir.GenericConst):
            return self.constant(expr.value.numpy())
        raise RebirthError(f"cannot export to ONNX: unsupported argument {type(expr).__name__}")

    def node(self, op: str, inputs: list[str], var, **attrs) -> None:
        out = self.unique(var.name)
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        self.names[var] = out

    def binding(self, var, value) -> None:
        if isinstance(value, relax.Var):
            self.node("Identity", [self.value(value)], var)
            return
        if isinstance(value, relax.TupleGetItem):
            source = value.tuple_value
            if source in self.batch_norms and value.index == 0:
                self.names[var] = self.batch_norms[source]
                return
            raise RebirthError("cannot export to ONNX: a tuple projection other than batch_norm's output")
        if not isinstance(value, relax.Call) or not isinstance(value.op, tvm.ir.Op):
            what = value.op.name_hint if isinstance(value, relax.Call) and hasattr(value.op, "name_hint") else type(value).__name__
            raise RebirthError(f"cannot export to ONNX: {what} (only Relax ops are exported)")
        op, args, a = value.op.name, value.args, value.attrs
        if op in _BINARY:
            self.node(_BINARY[op], [self.value(args[0]), self.value(args[1])], var)
        elif op == "relax.nn.relu":
            self.node("Relu", [self.value(args[0])], var)
        elif op == "relax.clip":
            low, high = (self.constant(np.array(float(v), np.float32)) for v in (args[1].value, args[2].value))
            self.node("Clip", [self.value(args[0]), low, high], var)
        elif op == "relax.nn.conv2d":
            if (a.data_layout, a.kernel_layout) != ("NCHW", "OIHW"):
                raise RebirthError(f"cannot export to ONNX: conv2d layout {a.data_layout}/{a.kernel_layout}")
            self.node("Conv", [self.value(args[0]), self.value(args[1])], var, strides=_ints(a.strides),
                      pads=_ints(a.padding), dilations=_ints(a.dilation), group=int(a.groups))
        elif op in ("relax.nn.max_pool2d", "relax.nn.avg_pool2d", "relax.nn.avg_pool3d"):
            dims = 3 if op.endswith("3d") else 2
            pad = _ints(a.padding)
            extra = {"count_include_pad": int(bool(a.count_include_pad))} if "avg" in op else {"dilations": _ints(a.dilation)}
            self.node("MaxPool" if "max" in op else "AveragePool", [self.value(args[0])], var,
                      kernel_shape=_ints(a.pool_size), strides=_ints(a.strides), pads=pad[:dims] + pad[dims:],
                      ceil_mode=int(bool(a.ceil_mode)), **extra)
        elif op == "relax.nn.batch_norm":
            if a.training or int(a.axis) != 1:
                raise RebirthError("cannot export to ONNX: batch_norm in training mode or not on axis 1")
            out = self.unique(var.name)
            self.nodes.append(helper.make_node("BatchNormalization", [self.value(x) for x in args[:5]], [out], name=out,
                                               epsilon=float(a.epsilon)))
            self.batch_norms[var] = out
        elif op == "relax.expand_dims":
            self.node("Unsqueeze", [self.value(args[0]), self.constant(np.array(_ints(a.axis), np.int64), "axes")], var)
        elif op == "relax.squeeze":
            self.node("Squeeze", [self.value(args[0]), self.constant(np.array(_ints(a.axis), np.int64), "axes")], var)
        elif op == "relax.concat":
            self.node("Concat", [self.value(f) for f in args[0].fields], var, axis=int(a.axis))
        elif op == "relax.strided_slice":
            axes, begin, end = (np.array(_ints(t.fields if isinstance(t, relax.Tuple) else t), np.int64) for t in args[1:4])
            inputs = [self.value(args[0]), self.constant(begin, "starts"), self.constant(end, "ends"), self.constant(axes, "axes")]
            if len(args) > 4 and args[4] is not None:
                inputs.append(self.constant(np.array(_ints(args[4].fields), np.int64), "steps"))
            self.node("Slice", inputs, var)
        elif op == "relax.reshape":
            self.node("Reshape", [self.value(args[0]), self.constant(np.array(_ints(args[1].values), np.int64), "shape")], var)
        elif op == "relax.permute_dims":
            self.node("Transpose", [self.value(args[0])], var, perm=_ints(a.axes))
        elif op == "relax.matmul":
            self.node("MatMul", [self.value(args[0]), self.value(args[1])], var)
        elif op == "relax.mean":
            self.node("ReduceMean", [self.value(args[0])], var, axes=_ints(a.axis), keepdims=int(bool(a.keepdims)))
        elif op == "relax.call_tir":
            raise RebirthError(f"cannot export to ONNX: a TIR function ({args[0].name_hint}) that the importer emitted")
        else:
            raise RebirthError(f"cannot export to ONNX: op {op} is not supported by the exporter")

    def run(self, outputs=None, name: str = "rebirth") -> onnx.ModelProto:
        self.batch_norms: dict = {}
        graph_inputs = []
        for param in self.func.params:
            self.names[param] = self.unique(param.name)
            graph_inputs.append(helper.make_tensor_value_info(self.names[param], _elem(param.ty.dtype), _ints(param.ty.shape)))
        for block in self.func.body.blocks:
            for binding in block.bindings:
                if not isinstance(binding, relax.VarBinding):
                    raise RebirthError("cannot export to ONNX: match_cast bindings are not supported")
                self.binding(binding.var, binding.value)
        results = outputs if outputs is not None else [self.func.body.body]
        graph_outputs = []
        for expr in results:
            fields = expr.fields if isinstance(expr, relax.Tuple) else [expr]
            for field in fields:
                graph_outputs.append(helper.make_tensor_value_info(self.value(field), _elem(field.ty.dtype), _ints(field.ty.shape)))
        graph = helper.make_graph(self.nodes, name, graph_inputs, graph_outputs, initializer=self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="rebirth-tvm")
        model.ir_version = 8
        return model


def _elem(dtype) -> int:
    return onnx.helper.np_dtype_to_tensor_dtype(np.dtype(str(dtype)))


def to_onnx(mod: tvm.IRModule, outputs=None, name: str = "rebirth") -> onnx.ModelProto:
    """Export ``mod["main"]`` (or the given vars of it, as outputs) as an ONNX model, opset 13."""
    model = _Exporter(mod["main"]).run(outputs, name)
    try:
        onnx.checker.check_model(model)
    except Exception as err:
        raise RebirthError(f"the exported ONNX model is invalid: {err}") from None
    return model


def save_atomically(model, path: str) -> None:
    """Write an ONNX model (or its bytes) so that a reader never sees half a file: written to a
    temporary file beside ``path`` (same file system, so the rename is atomic), then renamed."""
    import tempfile

    data = model if isinstance(model, bytes) else model.SerializeToString()
    directory = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # as any file the user writes (mkstemp makes it private)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
