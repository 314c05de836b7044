"""FoldChannelAffine: structure, refusals, numbers."""

import numpy as np
import pytest
import tvm
from relax_builders import conv, conv_weights, count_ops, module, rel_err, rng, run
from tvm import relax

from rebirth_tvm.passes import FoldChannelAffine

SHAPE = (1, 4, 9, 9)


def vec(r, n, low=0.5, high=1.5):
    return r.uniform(low, high, n).astype("float32")


def chain(ops, with_bias=True, groups=1, scale_shape=None):
    """conv (+bias) followed by ``ops``: a list of (op, vector) applied in order."""
    r = rng()
    w = conv_weights(r, 8, 4, 3, groups)
    b = r.normal(0, 0.1, 8).astype("float32")

    def body(bb, x):
        y = bb.emit(conv(x, relax.const(w), pad=1, groups=groups))
        if with_bias:
            y = bb.emit(relax.op.add(y, relax.const(b.reshape(1, -1, 1, 1))))
        for op, v in ops:
            shape = scale_shape or (1, -1, 1, 1)
            y = bb.emit(op(y, relax.const(v.reshape(shape))))
        return y

    return module(SHAPE, body), w, b


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("groups", [1, 2, 4])
def test_structure_matches_expected(with_bias, groups):
    r = rng(3)
    s, t = vec(r, 8), r.normal(0, 1, 8).astype("float32")
    before, w, b = chain([(relax.op.multiply, s), (relax.op.add, t)], with_bias, groups)
    b0 = b.astype(np.float64) if with_bias else np.zeros(8)
    w2 = (w.astype(np.float64) * s.astype(np.float64).reshape(-1, 1, 1, 1)).astype("float32")
    b2 = (b0 * s + t.astype(np.float64)).astype("float32")
    expected = module(SHAPE, lambda bb, x: bb.emit(relax.op.add(
        bb.emit(conv(x, relax.const(w2), pad=1, groups=groups)), relax.const(b2.reshape(1, -1, 1, 1)))))
    tvm.ir.assert_structural_equal(FoldChannelAffine()(before), expected)


@pytest.mark.parametrize("ops", [
    [("multiply",)], [("divide",)], [("subtract",)], [("multiply",), ("add",), ("multiply",), ("subtract",)],
])
def test_numerically_equal(ops):
    r = rng(4)
    table = {"multiply": relax.op.multiply, "divide": relax.op.divide, "add": relax.op.add, "subtract": relax.op.subtract}
    before, _, _ = chain([(table[o[0]], vec(r, 8)) for o in ops])
    after = FoldChannelAffine()(before)
    assert count_ops(after, "relax.nn.conv2d") == 1
    assert count_ops(after, "relax.multiply") + count_ops(after, "relax.divide") + count_ops(after, "relax.subtract") == 0
    x = rng(1).standard_normal(SHAPE).astype("float32")
    assert rel_err(run(after, x), run(before, x)) <= 1e-5


def test_plain_conv_bias_is_left_alone():
    before, _, _ = chain([])
    fold = FoldChannelAffine()
    tvm.ir.assert_structural_equal(fold(before), before)
    assert fold.sites == []


def test_refuses_spatial_constant():
    r = rng()
    before, _, _ = chain([(relax.op.multiply, r.uniform(0.5, 1.5, (9, 9)).astype("float32"))], scale_shape=(1, 1, 9, 9))
    fold = FoldChannelAffine()
    tvm.ir.assert_structural_equal(fold(before), before)
    assert "not per-channel" in fold.sites[0].reason


def test_refuses_when_intermediate_is_reused():
    r = rng()
    w = conv_weights(r, 8, 4, 3)

    def body(bb, x):
        y = bb.emit(conv(x, relax.const(w), pad=1))
        z = bb.emit(relax.op.multiply(y, relax.const(vec(r, 8).reshape(1, -1, 1, 1))))
        return bb.emit(relax.op.add(z, y))

    before = module(SHAPE, body)
    fold = FoldChannelAffine()
    tvm.ir.assert_structural_equal(fold(before), before)
    assert "also used by" in fold.sites[0].reason


def test_refuses_divide_by_zero():
    v = vec(rng(), 8)
    v[3] = 0
    before, _, _ = chain([(relax.op.divide, v)])
    fold = FoldChannelAffine()
    tvm.ir.assert_structural_equal(fold(before), before)
    assert "zeros" in fold.sites[0].reason


def test_refuses_non_constant_weight():
    x = relax.Var("x", relax.TensorType(SHAPE, "float32"))
    w = relax.Var("w", relax.TensorType((8, 4, 3, 3), "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x, w]):
        with bb.dataflow():
            y = bb.emit(conv(x, w, pad=1))
            gv = bb.emit_output(relax.op.multiply(y, relax.const(vec(rng(), 8).reshape(1, -1, 1, 1))))
        bb.emit_func_output(gv)
    before = bb.get()
    fold = FoldChannelAffine()
    tvm.ir.assert_structural_equal(fold(before), before)
    assert "not a constant" in fold.sites[0].reason
