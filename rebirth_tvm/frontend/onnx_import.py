"""ONNX → Relax: the first step of the data flow (ONNX → Relax → passes → build → run → report).

:func:`load` returns a Relax module ready for our passes:

* the input shape is fixed (batch 1 by default), because the passes reason about shapes;
* parameters are embedded as constants and :class:`FoldConstant` has run, so weights that the graph
  computes (``Reshape`` of an initializer, ``ConstantOfShape``, ...) are constants a pass can read;
* every binding that holds an ONNX node's output is *named after that node* (``conv1_7x7_s2``
  instead of ``lv12``), so reports and site selection speak the user's language.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import onnx
import tvm
from tvm import relax

from rebirth_tvm.core.errors import RebirthError

#: Oldest ONNX opset we accept; the importer's converters start at 7 for the ops our zoo uses.
MIN_OPSET = 7

ShapeArg = Sequence[int] | Mapping[str, Sequence[int]] | None


@dataclass(frozen=True)
class InputSpec:
    """One graph input: its name, fixed shape and dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: str


def read_onnx(path_or_zoo_name: str | os.PathLike | onnx.ModelProto) -> onnx.ModelProto:
    """Return the ONNX model for a file path, a zoo name (see ``rebirth_tvm.models``) or a proto.

    Raises :class:`RebirthError` for a missing file, a file that is not ONNX, a truncated or
    invalid model, or a name that is neither a file nor a zoo model.
    """
    if isinstance(path_or_zoo_name, onnx.ModelProto):
        return path_or_zoo_name
    from rebirth_tvm.frontend.zoo import MODELS, build_model

    text = os.fspath(path_or_zoo_name)
    if text in MODELS:
        return build_model(text)
    if not os.path.exists(text):
        if os.sep in text or text.endswith(".onnx"):
            raise RebirthError(f"no such file: {text}")
        raise RebirthError(
            f"unknown model {text!r}: not a file and not a zoo model (known: {', '.join(MODELS)})"
        )
    if os.path.isdir(text):
        raise RebirthError(f"{text} is a directory, not an ONNX file")
    try:
        model = onnx.load(text)
    except Exception as err:  # protobuf raises DecodeError, but truncations surface as others too
        raise RebirthError(f"{text} is not a readable ONNX model ({type(err).__name__}: {err})") from None
    if not model.graph.node:
        raise RebirthError(f"{text} is not an ONNX model (it has no graph nodes)")
    # Before the checker: it would call an op we cannot import an "invalid model", which is
    # less useful than naming the op.
    check_ops_supported(model)
    try:
        onnx.checker.check_model(model)
    except Exception as err:
        raise RebirthError(f"{text} is not a valid ONNX model: {err}") from None
    check_finite_weights(model, text)
    return model


def check_ops_supported(model: onnx.ModelProto) -> None:
    """Name every op the TVM importer cannot convert, before anything else complains about it."""
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    known = set(_get_convert_map()) | {"If", "Constant"}
    unsupported = sorted({
        node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        for node in model.graph.node
        if node.op_type not in known or node.domain not in ("", "ai.onnx")
    })
    if unsupported:
        raise RebirthError(f"unsupported ONNX op(s): {', '.join(unsupported)} (the TVM importer cannot convert them)")


def model_opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return 1


def graph_inputs(model: onnx.ModelProto, input_shape: ShapeArg = None) -> list[InputSpec]:
    """The model's real inputs (initializers excluded) with every dimension fixed.

    ``input_shape`` is one shape (applied to the only input) or ``{name: shape}``. A dimension the
    model leaves symbolic must be given; a given shape must keep the model's fixed dimensions.
    """
    initializers = {init.name for init in model.graph.initializer}
    inputs = [vi for vi in model.graph.input if vi.name not in initializers]
    if isinstance(input_shape, Mapping):
        overrides = {name: tuple(int(d) for d in shape) for name, shape in input_shape.items()}
        unknown = set(overrides) - {vi.name for vi in inputs}
        if unknown:
            raise RebirthError(f"--input-shape names unknown input(s) {sorted(unknown)}; inputs: {[vi.name for vi in inputs]}")
    elif input_shape is not None:
        if len(inputs) != 1:
            raise RebirthError(f"the model has {len(inputs)} inputs; give --input-shape as name=shape for each")
        overrides = {inputs[0].name: tuple(int(d) for d in input_shape)}
    else:
        overrides = {}

    specs = []
    for vi in inputs:
        tensor_type = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor_type.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name
        if vi.name in overrides:
            shape = overrides[vi.name]
            if len(shape) != len(dims) or any(d is not None and d != s for d, s in zip(dims, shape)):
                pretty = ["?" if d is None else d for d in dims]
                raise RebirthError(f"input {vi.name!r} has shape {pretty}; --input-shape {list(shape)} does not fit it")
        elif any(d is None for d in dims):
            pretty = ["?" if d is None else d for d in dims]
            raise RebirthError(f"input {vi.name!r} has dynamic dimensions {pretty}; give them with --input-shape")
        else:
            shape = tuple(dims)
        if any(s <= 0 for s in shape):
            raise RebirthError(f"input {vi.name!r}: every dimension must be positive, got {list(shape)}")
        specs.append(InputSpec(vi.name, tuple(shape), dtype))
    return specs


def load(path_or_zoo_name, input_shape: ShapeArg = None) -> tvm.IRModule:
    """Import an ONNX model as a Relax module with parameters bound and constants folded.

    Parameters
    ----------
    path_or_zoo_name
        An ``.onnx`` file, a zoo name (``googlenet``, ``resnet18``, ...) or an ``onnx.ModelProto``.
    input_shape
        The input shape (one shape, or ``{input name: shape}``). Needed when the model has dynamic
        dimensions; defaults to the model's own fixed shape (batch 1 for the zoo).

    Raises
    ------
    RebirthError
        For unreadable files, ops the importer cannot handle, an opset older than 7, or dynamic
        dimensions without ``input_shape``.
    """
    model = read_onnx(path_or_zoo_name)
    specs = graph_inputs(model, input_shape)
    return import_onnx(model, specs)


def import_onnx(model: onnx.ModelProto, specs: Sequence[InputSpec]) -> tvm.IRModule:
    """The import itself (see :func:`load`); ``specs`` come from :func:`graph_inputs`."""
    from tvm.relax.frontend.onnx.onnx_frontend import ONNXGraphImporter

    opset = model_opset(model)
    if opset < MIN_OPSET:
        raise RebirthError(f"ONNX opset {opset} is too old; rebirth-tvm needs opset {MIN_OPSET} or newer")
    check_ops_supported(model)
    model = fold_constant_subgraphs(model)

    importer = ONNXGraphImporter(
        {s.name: list(s.shape) for s in specs}, {s.name: s.dtype for s in specs}, keep_params_in_input=False
    )
    try:
        mod = importer.from_onnx(model.graph, opset)
    except Exception as err:
        raise RebirthError(f"the TVM ONNX importer failed: {type(err).__name__}: {err}") from None

    mod = _name_bindings_after_onnx_nodes(mod, model, importer._nodes)
    check_shapes(mod, specs)
    try:
        mod = tvm.transform.Sequential([relax.transform.FoldConstant(), relax.transform.DeadCodeElimination()])(mod)
    except Exception as err:
        raise RebirthError(f"TVM cannot evaluate the model's constants for input shape(s) "
                           f"{', '.join(str(list(s.shape)) for s in specs)}: {type(err).__name__}: {err}") from None
    return mod


def check_shapes(mod: tvm.IRModule, specs: Sequence[InputSpec]) -> None:
    """Refuse input shapes the network cannot take: a value that would have an empty dimension
    (an input too small for its convs and pools), or tensors too large for this machine."""
    from rebirth_tvm.core.memory import check_fits_in_memory
    from rebirth_tvm.core.graph import dtype_of, shape_of

    given = ", ".join(str(list(s.shape)) for s in specs)
    largest, largest_name = 0, ""
    for block in mod["main"].body.blocks:
        for binding in block.bindings:
            shape = shape_of(binding.var)
            if shape is None:
                continue
            if any(d <= 0 for d in shape):
                raise RebirthError(f"input shape {given} is too small for the network: {binding.var.name} would have shape {list(shape)}")
            dtype = dtype_of(binding.var) or "float32"
            nbytes = int(np.prod(shape, dtype=np.float64)) * _itemsize(dtype)
            if nbytes > largest:
                largest, largest_name = nbytes, binding.var.name
    check_fits_in_memory(largest, f"input shape {given}: the network's largest value ({largest_name})", share=0.25)


def _itemsize(dtype: str) -> int:
    try:
        return np.dtype(dtype).itemsize
    except TypeError:  # bfloat16 and other dtypes numpy does not name
        return 4


def check_finite_weights(model: onnx.ModelProto, label: str) -> None:
    """Refuse a model whose float weights hold NaN or infinity: every output it computes from
    them is garbage, and no check downstream could say the rewrite was right."""
    from onnx import numpy_helper

    for init in model.graph.initializer:
        if init.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16):
            continue
        values = numpy_helper.to_array(init)
        bad = int(np.size(values) - np.count_nonzero(np.isfinite(values)))
        if bad:
            raise RebirthError(f"{label} has {bad} NaN or infinite value(s) in its weight {init.name!r}; "
                               "fix the model (they make every output meaningless)")


#: Ops never evaluated ahead of time: their value is not a function of their inputs.
_NONDETERMINISTIC = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli"}


def fold_constant_subgraphs(model: onnx.ModelProto) -> onnx.ModelProto:
    """Evaluate the nodes that depend on no graph input and make their outputs initializers.

    PyTorch's exporter writes shape arithmetic as ops (TF-style "same" padding becomes
    ConstantOfShape → Concat → Reshape → Slice → Transpose → Cast → Pad), and TVM's importer
    refuses a Pad whose pads are not a literal ("Dynamic pads are not supported yet"). The values
    are constants all the same; computing them with ONNX's reference evaluator turns such a
    graph into the one its author meant. Returns ``model`` itself when there is nothing to fold.
    """
    from onnx import numpy_helper

    graph = model.graph
    known = {t.name for t in graph.initializer}
    foldable = []
    for node in graph.node:
        if node.domain not in ("", "ai.onnx") or node.op_type in _NONDETERMINISTIC or any(a.type == onnx.AttributeProto.GRAPH for a in node.attribute):
            continue
        if all(not name or name in known for name in node.input):
            foldable.append(node)
            known.update(node.output)
    # Constants alone are already what the importer wants; fold only when real ops are involved.
    if not any(n.op_type != "Constant" for n in foldable):
        return model
    from onnx.reference import ReferenceEvaluator

    wanted = [o for n in foldable for o in n.output if o]
    used = {name for node in graph.node if node not in foldable for name in node.input} | {o.name for o in graph.output}
    needed = sorted({t.name for t in graph.initializer} & {i for n in foldable for i in n.input})
    sub = onnx.helper.make_model(
        onnx.helper.make_graph(list(foldable), "constants", [],
                               [onnx.helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in wanted],
                               [t for t in graph.initializer if t.name in needed]),
        opset_imports=model.opset_import, ir_version=model.ir_version)
    try:
        values = ReferenceEvaluator(sub).run(None, {})
    except Exception:  # the reference evaluator lacks an op: leave the graph as it was
        return model
    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    keep = [n for n in folded.graph.node if not any(o in wanted for o in n.output)]
    del folded.graph.node[:]
    folded.graph.node.extend(keep)
    for name, value in zip(wanted, values):
        if name in used:
            folded.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
    return folded


_UNSAFE = re.compile(r"[^A-Za-z0-9_]")


def _sanitize(name: str) -> str:
    name = _UNSAFE.sub("_", name).strip("_") or "node"
    return name if not name[0].isdigit() else "n" + name


def _name_bindings_after_onnx_nodes(mod: tvm.IRModule, model: onnx.ModelProto, nodes: Mapping) -> tvm.IRModule:
    """Rename each Relax var that holds an ONNX node output to that node's name."""
    # The importer maps each ONNX value name to an expression: a Var it emitted, or a Call that
    # the BlockBuilder bound to a fresh var when it normalized the consumer. Resolve both.
    var_of_value = {value: var for var, value in relax.analysis.get_var2val(mod["main"]).items()}
    by_var = {}
    for node in model.graph.node:
        for index, output in enumerate(node.output):
            value = nodes.get(output)
            value = value if isinstance(value, relax.Var) else var_of_value.get(value)
            if value is not None:
                base = node.name or output
                by_var[value] = _sanitize(base if len(node.output) == 1 else f"{base}_{index}")
    for output in model.graph.output:
        value = nodes.get(output.name)
        value = value if isinstance(value, relax.Var) else var_of_value.get(value)
        if value is not None:
            by_var.setdefault(value, _sanitize(output.name))
    if not by_var:
        return mod
    renamer = _Renamer(mod, by_var)
    func = renamer.visit_expr(mod["main"])
    mod = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
    mod["main"] = func
    return mod


@relax.expr_functor.mutator
class _Renamer(relax.PyExprMutator):
    def __init__(self, mod, names):
        super().__init__(mod)
        self.names = names

    def visit_var_binding_(self, binding):
        name = self.names.get(binding.var)
        if name is None:
            return super().visit_var_binding_(binding)
        value = self.visit_expr(binding.value)
        if isinstance(binding.var, relax.DataflowVar):
            new_var = self.builder_.emit(value, name)
        else:
            new_var = self.builder_.emit_output(value, name)
        self.set_var_remap(binding.var, new_var)


def random_inputs(specs: Sequence[InputSpec], seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic standard-normal inputs (labelled as random wherever they are reported)."""
    rng = np.random.default_rng(seed)
    return {s.name: rng.standard_normal(s.shape).astype(s.dtype) for s in specs}
