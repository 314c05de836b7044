"""Tests for the model zoo (rebirth_tvm.models).

The expected op counts and parameter counts below are derived from the
architectures themselves (see the comments), not read back from the builder,
so they catch a missing/extra layer or a wrong channel count.
"""

from __future__ import annotations

import functools
import hashlib
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper, shape_inference

from rebirth_tvm.frontend.zoo import MODELS, ModelSpec, build_model, list_models

REPO_ROOT = Path(__file__).resolve().parents[1]
# The architectures with seeded random weights; the trained Fashion-MNIST teacher has its own tests.
NAMES = [name for name, spec in MODELS.items() if not spec.trained]

# ---------------------------------------------------------------- expectations
EXPECTED_OPS: dict[str, dict[str, int]] = {
    # 3 stem convs + 9 inception modules x 6 convs = 57 conv, each with a ReLU;
    # 4 stride-2 pools + 9 inception pool branches = 13 MaxPool; 2 LRN; 9 Concat.
    "googlenet": {
        "Conv": 57, "Relu": 57, "MaxPool": 13, "LRN": 2, "Concat": 9,
        "GlobalAveragePool": 1, "Flatten": 1, "Gemm": 1,
    },
    # conv1-5, relu1-7 (5 conv + fc6 + fc7), norm1/2, pool1/2/5, fc6-8.
    "alexnet": {"Conv": 5, "Relu": 7, "LRN": 2, "MaxPool": 3, "Flatten": 1, "Gemm": 3},
    # stem conv + 8 blocks x 2 convs + 3 downsample convs = 20 conv (each + BN);
    # ReLU: stem + 8 x (inner + post-add) = 17; one Add per block.
    "resnet18": {
        "Conv": 20, "BatchNormalization": 20, "Relu": 17, "Add": 8, "MaxPool": 1,
        "GlobalAveragePool": 1, "Flatten": 1, "Gemm": 1,
    },
    # stem + 16 bottlenecks x 3 convs + 4 downsample (first block of every
    # stage, incl. layer1 since 64 != 256) = 53; ReLU: 1 + 16 x 3 = 49.
    "resnet50": {
        "Conv": 53, "BatchNormalization": 53, "Relu": 49, "Add": 16, "MaxPool": 1,
        "GlobalAveragePool": 1, "Flatten": 1, "Gemm": 1,
    },
    # stem conv + 8 fire x 3 convs + classifier conv = 26 conv, each + ReLU;
    # 3 ceil-mode pools; one Concat per fire module.
    "squeezenet1_0": {"Conv": 26, "Relu": 26, "MaxPool": 3, "Concat": 8, "GlobalAveragePool": 1, "Flatten": 1},
    "squeezenet1_1": {"Conv": 26, "Relu": 26, "MaxPool": 3, "Concat": 8, "GlobalAveragePool": 1, "Flatten": 1},
    # stem + block 1 (t=1: dw + project) + 16 blocks x 3 + last 1x1 = 52 conv,
    # each + BN; ReLU6: 1 + 1 + 16 x 2 + 1 = 35; residual Adds = sum(n - 1) = 10.
    "mobilenet_v2": {
        "Conv": 52, "BatchNormalization": 52, "Clip": 35, "Add": 10,
        "GlobalAveragePool": 1, "Flatten": 1, "Gemm": 1,
    },
}

# Learnable parameters (BN running statistics and Clip bounds excluded).
# torchvision's published counts, and the well-known Caffe BVLC counts.
EXPECTED_PARAMS = {
    "googlenet": 6_998_552,
    "alexnet": 60_965_224,
    "resnet18": 11_689_512,
    "resnet50": 25_557_032,
    "squeezenet1_0": 1_248_424,
    "squeezenet1_1": 1_235_496,
    "mobilenet_v2": 3_504_872,
}

# Spatial size of selected intermediate tensors (from ONNX shape inference).
EXPECTED_HW = {
    "googlenet": {
        "conv1/7x7_s2": 112, "pool1/3x3_s2": 56, "conv2/3x3": 56, "pool2/3x3_s2": 28,
        "inception_3b/output": 28, "pool3/3x3_s2": 14, "inception_4e/output": 14,
        "pool4/3x3_s2": 7, "inception_5b/output": 7,
    },
    "alexnet": {"conv1": 55, "pool1": 27, "pool2": 13, "conv5": 13, "pool5": 6},
    "resnet18": {"maxpool": 56, "layer1.1.relu": 56, "layer2.1.relu": 28, "layer3.1.relu": 14, "layer4.1.relu": 7},
    "resnet50": {"maxpool": 56, "layer1.2.relu": 56, "layer2.3.relu": 28, "layer3.5.relu": 14, "layer4.2.relu": 7},
    "squeezenet1_0": {"features.0": 109, "features.2": 54, "features.6": 27, "features.11": 13, "features.12.concat": 13},
    "squeezenet1_1": {"features.0": 111, "features.2": 55, "features.5": 27, "features.8": 13, "features.12.concat": 13},
    "mobilenet_v2": {"features.0.2": 112, "features.3.add": 56, "features.6.add": 28, "features.13.add": 14, "features.18.2": 7},
}


# ------------------------------------------------------------------- helpers
@functools.lru_cache(maxsize=None)
def _model(name: str) -> onnx.ModelProto:
    """Seed-0 model, built once per test session (callers must not mutate it)."""
    return build_model(name, seed=0)


def _init_digest(model: onnx.ModelProto) -> dict[str, str]:
    return {
        t.name: hashlib.sha256(numpy_helper.to_array(t).tobytes()).hexdigest() for t in model.graph.initializer
    }


def _dims(vi: onnx.ValueInfoProto) -> tuple[int, ...]:
    return tuple(d.dim_value for d in vi.type.tensor_type.shape.dim)


def _ort_session(model: onnx.ModelProto) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 2
    so.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "rebirth_tvm.models", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


# ------------------------------------------------------------------ registry
def test_registry():
    assert list_models() == ["googlenet", "alexnet", "resnet18", "resnet50", "squeezenet1_0", "squeezenet1_1", "mobilenet_v2",
                             "fashion_googlenet"]
    assert set(EXPECTED_OPS) == set(NAMES)
    for name, spec in MODELS.items():
        assert isinstance(spec, ModelSpec)
        assert spec.name == name
        assert spec.preset == ("gray" if spec.trained else "imagenet")
        assert spec.classes == (10 if spec.trained else 1000)
        assert spec.description and "\n" not in spec.description
        assert len(spec.input_shape) == 4 and spec.input_shape[:2] == ((1, 1) if spec.trained else (1, 3))
        assert callable(spec.builder)
    with pytest.raises(AttributeError):
        MODELS["googlenet"].name = "x"  # frozen
    assert MODELS["alexnet"].input_shape == (1, 3, 227, 227)
    assert MODELS["googlenet"].input_shape == (1, 3, 224, 224)


def test_unknown_model():
    with pytest.raises(ValueError, match=r"unknown model 'nope'; known: googlenet, alexnet, .*mobilenet_v2"):
        build_model("nope")


# ------------------------------------------------------------- per-model
@pytest.mark.parametrize("name", NAMES)
def test_checker_and_signature(name):
    m = _model(name)
    onnx.checker.check_model(m, full_check=True)
    assert m.ir_version == 8
    assert [(o.domain, o.version) for o in m.opset_import] == [("", 13)]
    (inp,) = m.graph.input
    assert inp.name == "data"
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert _dims(inp) == MODELS[name].input_shape
    (out,) = m.graph.output
    assert out.name == "logits"
    assert out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert _dims(out) == (1, 1000)
    assert m.graph.node[-1].output[0] == "logits"
    assert "Softmax" not in {n.op_type for n in m.graph.node}
    for t in m.graph.initializer:
        assert t.data_type == onnx.TensorProto.FLOAT


@pytest.mark.parametrize("name", NAMES)
def test_op_counts(name):
    ops = Counter(n.op_type for n in _model(name).graph.node)
    assert dict(ops) == EXPECTED_OPS[name]


@pytest.mark.parametrize("name", NAMES)
def test_param_count(name):
    stats = (".running_mean", ".running_var", "relu6.min", "relu6.max")
    n = sum(int(np.prod(t.dims)) for t in _model(name).graph.initializer if not t.name.endswith(stats))
    assert n == EXPECTED_PARAMS[name]


@pytest.mark.parametrize("name", NAMES)
def test_names_unique_and_readable(name):
    m = _model(name)
    nodes = [n.name for n in m.graph.node]
    assert all(nodes) and len(set(nodes)) == len(nodes)
    inits = [t.name for t in m.graph.initializer]
    assert len(set(inits)) == len(inits)
    produced = [o for n in m.graph.node for o in n.output]
    assert len(set(produced)) == len(produced)
    assert not set(produced) & set(inits)
    assert not any(n.startswith(("conv_", "relu_", "maxpool_")) and n[-1].isdigit() for n in nodes), "auto names leaked"


def test_caffe_style_names():
    g = {n.name for n in _model("googlenet").graph.node}
    for expected in (
        "conv1/7x7_s2", "pool1/norm1", "conv2/3x3_reduce", "pool3/3x3_s2", "inception_3a/1x1",
        "inception_3a/3x3_reduce", "inception_3a/pool", "inception_3a/pool_proj", "inception_5b/output",
        "loss3/classifier",
    ):
        assert expected in g
    inits = {t.name for t in _model("googlenet").graph.initializer}
    assert {"conv1/7x7_s2/weight", "conv1/7x7_s2/bias", "inception_4e/5x5/weight"} <= inits
    r = {t.name for t in _model("resnet50").graph.initializer}
    assert {"layer2.0.downsample.0.weight", "layer3.5.bn3.running_var", "fc.weight", "fc.bias"} <= r


@pytest.mark.parametrize("name", NAMES)
def test_feature_map_sizes(name):
    # Independent of the builder's own shape arithmetic: ONNX shape inference.
    inferred = shape_inference.infer_shapes(_model(name), strict_mode=True)
    vi = {v.name: _dims(v) for v in inferred.graph.value_info}
    for tensor, hw in EXPECTED_HW[name].items():
        assert vi[tensor][2:] == (hw, hw), tensor
    assert _dims(inferred.graph.output[0]) == (1, 1000)


def test_googlenet_details():
    m = _model("googlenet")
    nodes = {n.name: n for n in m.graph.node}
    for p in ("pool1/3x3_s2", "pool2/3x3_s2", "pool3/3x3_s2", "pool4/3x3_s2"):
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nodes[p].attribute}
        assert attrs["ceil_mode"] == 1 and list(attrs["strides"]) == [2, 2]
    lrn = [n for n in m.graph.node if n.op_type == "LRN"]
    assert [n.name for n in lrn] == ["pool1/norm1", "conv2/norm2"]
    for n in lrn:
        a = {x.name: onnx.helper.get_attribute_value(x) for x in n.attribute}
        assert a["size"] == 5 and a["alpha"] == pytest.approx(1e-4) and a["beta"] == pytest.approx(0.75)
        assert a["bias"] == pytest.approx(1.0)
    # Concat order: 1x1, 3x3, 5x5, pool proj.
    assert list(nodes["inception_3a/output"].input) == [
        "inception_3a/relu_1x1", "inception_3a/relu_3x3", "inception_3a/relu_5x5", "inception_3a/relu_pool_proj",
    ]
    # Every conv has a bias.
    assert all(len(n.input) == 3 for n in m.graph.node if n.op_type == "Conv")


def test_grouped_and_depthwise_convs():
    groups = {
        n.name: onnx.helper.get_attribute_value(a)
        for n in _model("alexnet").graph.node if n.op_type == "Conv"
        for a in n.attribute if a.name == "group"
    }
    assert groups == {"conv1": 1, "conv2": 2, "conv3": 1, "conv4": 2, "conv5": 2}
    mb = _model("mobilenet_v2")
    inits = {t.name: t for t in mb.graph.initializer}
    depthwise = 0
    for n in mb.graph.node:
        if n.op_type == "Conv":
            g = next(onnx.helper.get_attribute_value(a) for a in n.attribute if a.name == "group")
            if g > 1:
                assert inits[n.input[1]].dims[1] == 1  # one input channel per group
                depthwise += 1
            assert len(n.input) == 2  # no conv bias with BN
    assert depthwise == 17
    clips = [n for n in mb.graph.node if n.op_type == "Clip"]
    for i in clips[0].input[1:]:
        assert list(inits[i].dims) == []  # Clip-13 min/max must be scalars
    lo, hi = (float(numpy_helper.to_array(inits[i])) for i in clips[0].input[1:])
    assert (lo, hi) == (0.0, 6.0)
    assert all(len(c.input) == 3 for c in clips)


def test_batchnorm_statistics_nontrivial():
    m = _model("resnet18")
    arr = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    for n in (n for n in m.graph.node if n.op_type == "BatchNormalization"):
        eps = next(onnx.helper.get_attribute_value(a) for a in n.attribute if a.name == "epsilon")
        assert eps == pytest.approx(1e-5)
        gamma, beta, mean, var = (arr[i] for i in n.input[1:])
        assert 0.5 <= gamma.min() and gamma.max() <= 1.5 and gamma.std() > 0.1
        assert 0.5 <= var.min() and var.max() <= 1.5 and var.std() > 0.1
        assert np.abs(beta).max() > 0 and np.abs(mean).max() > 0
    w = arr["layer3.0.conv1.weight"]  # He normal: std = sqrt(2 / fan_in)
    assert w.std() == pytest.approx(np.sqrt(2.0 / (128 * 9)), rel=0.05)


@pytest.mark.parametrize("name", NAMES)
def test_deterministic(name):
    ref = _init_digest(_model(name))
    assert _init_digest(build_model(name, seed=0)) == ref
    other = _init_digest(build_model(name, seed=1))
    assert other.keys() == ref.keys()
    # Every random tensor changes with the seed; only the Clip constants don't.
    changed = {k for k in ref if ref[k] != other[k]}
    assert changed == set(ref) - {"relu6.min", "relu6.max"}


@pytest.mark.parametrize("name", NAMES)
def test_runs_in_onnxruntime(name):
    sess = _ort_session(_model(name))
    x = np.random.default_rng(123).standard_normal(MODELS[name].input_shape, dtype=np.float32)
    (logits,) = sess.run(["logits"], {"data": x})
    assert logits.shape == (1, 1000)
    assert logits.dtype == np.float32
    assert np.isfinite(logits).all()
    assert logits.std() > 0
    assert len(np.unique(logits)) > 100  # not collapsed to a few values


# ----------------------------------------------------------------------- CLI
def test_cli_help():
    r = _cli("--help")
    assert r.returncode == 0
    assert "--export" in r.stdout and "--list" in r.stdout and "--seed" in r.stdout


def test_cli_list():
    r = _cli("--list")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert [ln.split()[0] for ln in lines] == list(MODELS)
    for ln, spec in zip(lines, MODELS.values()):
        assert "x".join(map(str, spec.input_shape)) in ln
        assert spec.description in ln


def test_cli_export(tmp_path):
    out = tmp_path / "sq.onnx"
    r = _cli("--export", "squeezenet1_1", str(out), "--seed", "3")
    assert r.returncode == 0, r.stderr
    assert os.listdir(tmp_path) == ["sq.onnx"]  # no temp file left behind
    m = onnx.load(str(out))
    onnx.checker.check_model(m)
    assert _init_digest(m) == _init_digest(build_model("squeezenet1_1", seed=3))
    assert _init_digest(m) != _init_digest(_model("squeezenet1_1"))


def test_cli_unknown_model(tmp_path):
    out = tmp_path / "x.onnx"
    r = _cli("--export", "nope", str(out))
    assert r.returncode == 2
    lines = r.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: unknown model 'nope'; known: googlenet, alexnet")
    assert not out.exists() and os.listdir(tmp_path) == []


# ------------------------------------------------------------ trained teacher
def test_fashion_teacher_signature_and_ops():
    m = build_model("fashion_googlenet")
    onnx.checker.check_model(m, full_check=True)
    assert [(o.domain, o.version) for o in m.opset_import] == [("", 13)]
    (inp,), (out,) = m.graph.input, m.graph.output
    assert (inp.name, _dims(inp)) == ("data", (1, 1, 28, 28))
    assert (out.name, _dims(out)) == ("logits", (1, 10))
    # Everything the method merges: stem conv + max pool + LRN, 5 inception modules with pool
    # branches and 1x1 reduces (6 convs each), max pools between stages, BN after every conv.
    counts = Counter(n.op_type for n in m.graph.node)
    assert counts == {"Conv": 33, "BatchNormalization": 33, "Relu": 33, "MaxPool": 8, "LRN": 2, "Concat": 5,
                      "GlobalAveragePool": 1, "Flatten": 1, "Gemm": 1}
    # Trained, not drawn: the seed changes nothing.
    assert _init_digest(build_model("fashion_googlenet", seed=1)) == _init_digest(m)


def test_fashion_teacher_is_trained():
    """The committed teacher classifies real Fashion-MNIST test images (>= 90% on 1,000 of them)."""
    from rebirth_tvm.frontend.datasets import as_inputs, fashion_mnist

    images, labels = fashion_mnist("test")
    session = _ort_session(build_model("fashion_googlenet"))
    x = as_inputs(images[:1000])
    predictions = [int(np.argmax(session.run(["logits"], {"data": x[i:i + 1]})[0])) for i in range(len(x))]
    assert np.mean(np.array(predictions) == labels[:1000]) >= 0.90
