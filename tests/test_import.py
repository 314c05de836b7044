"""rebirth_tvm.load: shapes, constants, names, and one-line errors for bad input."""

import numpy as np
import onnx
import pytest
from onnx import helper
from onnx_builders import tiny_cnn
from relax_builders import count_ops

import rebirth_tvm
from rebirth_tvm import RebirthError
from rebirth_tvm.pipeline.report import op_counts


def binding_names(mod):
    return [b.var.name for block in mod["main"].body.blocks for b in block.bindings]


def test_load_zoo_name_binds_params_and_names_bindings():
    mod = rebirth_tvm.load("googlenet")
    assert [int(d) for d in mod["main"].params[0].ty.shape] == [1, 3, 224, 224]
    assert len(mod["main"].params) == 1  # weights are constants, not inputs
    names = binding_names(mod)
    assert "inception_3a_pool" in names and "pool1_3x3_s2" in names


def test_load_file_with_input_shape_override(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(tiny_cnn(dynamic=True), path)
    mod = rebirth_tvm.load(str(path), input_shape=(2, 3, 20, 20))
    assert [int(d) for d in mod["main"].params[0].ty.shape] == [2, 3, 20, 20]


def test_weights_computed_in_graph_become_constants():
    mod = rebirth_tvm.load(tiny_cnn(weight_from_graph=True))
    # FoldConstant ran: the Reshape of the initializer is gone and the conv reads a constant.
    assert count_ops(mod, "relax.reshape") == 0
    folded = rebirth_tvm.passes.FoldBatchNorm()
    folded(mod)
    assert [s.status for s in folded.sites] == ["rewritten"]


def test_opset_7_model_imports():
    model = tiny_cnn(opset=7)
    mod = rebirth_tvm.load(model)
    assert op_counts(mod)["relax.nn.conv2d"] == 3


@pytest.mark.parametrize("make, message", [
    (lambda p: str(p / "missing.onnx"), "no such file"),
    (lambda p: (p / "text.onnx").write_text("hello, not a protobuf") and str(p / "text.onnx"), "not"),
    (lambda p: (p / "cut.onnx").write_bytes(tiny_cnn().SerializeToString()[:200]) and str(p / "cut.onnx"), "not"),
    (lambda p: "no_such_zoo_model", "unknown model"),
    (lambda p: str(p), "directory"),
])
def test_bad_files_give_one_line_errors(tmp_path, make, message):
    with pytest.raises(RebirthError) as err:
        rebirth_tvm.load(make(tmp_path))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_dynamic_dims_need_an_input_shape():
    with pytest.raises(RebirthError, match="dynamic dimensions"):
        rebirth_tvm.load(tiny_cnn(dynamic=True))


def test_input_shape_must_fit_fixed_dims():
    with pytest.raises(RebirthError, match="does not fit"):
        rebirth_tvm.load(tiny_cnn(), input_shape=(1, 4, 16, 16))


def test_unsupported_op_is_named():
    model = tiny_cnn(extra_nodes=[helper.make_node("ImaginaryOp", ["y"], ["z"], name="weird")])
    with pytest.raises(RebirthError, match="unsupported ONNX op.*ImaginaryOp"):
        rebirth_tvm.load(model)


def test_too_old_opset_is_refused():
    model = tiny_cnn()
    model.opset_import[0].version = 6
    with pytest.raises(RebirthError, match="opset 6 is too old"):
        rebirth_tvm.load(model)


def test_build_and_run_match_onnxruntime():
    from rebirth_tvm.frontend.reference import onnxruntime_outputs

    model = tiny_cnn()
    built = rebirth_tvm.build(rebirth_tvm.load(model), target="x86")
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype("float32")
    out = built.run({"x": x})
    ref = onnxruntime_outputs(model, {"x": x})[0]
    assert np.max(np.abs(out - ref)) / np.max(np.abs(ref)) <= 1e-5


def torch_style_padded_model():
    """A Pad whose pads are computed by ops (as PyTorch exports TF-style 'same' padding)."""
    from onnx import TensorProto, numpy_helper

    nodes = [
        helper.make_node("ConstantOfShape", ["four"], ["zeros"], value=numpy_helper.from_array(np.array([0], np.int64))),
        helper.make_node("Concat", ["spatial", "zeros"], ["flat"], axis=0),
        helper.make_node("Reshape", ["flat", "pairs_shape"], ["pairs"]),
        helper.make_node("Slice", ["pairs", "start", "stop", "axis0", "step"], ["reversed"]),
        helper.make_node("Transpose", ["reversed"], ["transposed"], perm=[1, 0]),
        helper.make_node("Reshape", ["transposed", "minus_one"], ["pads_i"]),
        helper.make_node("Cast", ["pads_i"], ["pads"], to=TensorProto.INT64),
        helper.make_node("Pad", ["data", "pads", "zero"], ["padded"]),
        helper.make_node("Conv", ["padded", "w"], ["out"], kernel_shape=[3, 3]),
    ]
    r = np.random.default_rng(0)
    inits = [numpy_helper.from_array(a, n) for n, a in [
        ("four", np.array([4], np.int64)), ("spatial", np.array([0, 1, 1, 2], np.int64)),
        ("pairs_shape", np.array([-1, 2], np.int64)), ("start", np.array([-1], np.int64)),
        ("stop", np.array([-(2 ** 62)], np.int64)), ("axis0", np.array([0], np.int64)), ("step", np.array([-1], np.int64)),
        ("minus_one", np.array([-1], np.int64)), ("zero", np.array(0.0, np.float32)),
        ("w", r.standard_normal((4, 2, 3, 3)).astype(np.float32))]]
    graph = helper.make_graph(nodes, "padded", [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 2, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def test_computed_pads_are_folded_before_import():
    from rebirth_tvm.frontend.onnx_import import fold_constant_subgraphs
    from rebirth_tvm.frontend.reference import onnxruntime_outputs

    model = torch_style_padded_model()
    folded = fold_constant_subgraphs(model)
    assert [n.op_type for n in folded.graph.node] == ["Pad", "Conv"]
    x = np.random.default_rng(1).standard_normal((1, 2, 8, 8)).astype(np.float32)
    assert np.array_equal(onnxruntime_outputs(folded, {"data": x})[0], onnxruntime_outputs(model, {"data": x})[0])
    built = rebirth_tvm.build(rebirth_tvm.load(model), target="x86")  # TVM alone: "Dynamic pads are not supported"
    ref = onnxruntime_outputs(model, {"data": x})[0]
    assert np.max(np.abs(built.run(x) - ref)) <= 1e-5 * np.max(np.abs(ref))
    plain = tiny_cnn()
    assert fold_constant_subgraphs(plain) is plain  # nothing to fold: the model itself
