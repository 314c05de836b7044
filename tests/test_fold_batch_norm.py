"""FoldBatchNorm: structure, refusals, numbers."""

import numpy as np
import pytest
import tvm
from relax_builders import batch_norm, bn_stats, conv, conv_weights, count_ops, module, rel_err, rng, run
from tvm import relax

from rebirth_tvm.passes import FoldBatchNorm, record_sites

SHAPE = (1, 4, 10, 10)
TOL = 1e-5  # exact fold: float32 rounding only


def conv_bn(with_bias=True, groups=1, training=False, dtype="float32", out_ch=8, extra=None, weight_var=False):
    r = rng()
    in_ch = SHAPE[1]
    w = conv_weights(r, out_ch if groups == 1 else in_ch, in_ch, 3, groups, dtype)
    b = r.normal(0, 0.1, w.shape[0]).astype(dtype)
    stats = bn_stats(r, w.shape[0], dtype)

    def body(bb, x):
        y = bb.emit(conv(x, relax.const(w), pad=1, groups=groups))
        if with_bias:
            y = bb.emit(relax.op.add(y, relax.const(b.reshape(1, -1, 1, 1))))
        t = bb.emit(batch_norm(y, stats, training=training))
        out = bb.emit(relax.TupleGetItem(t, 0))
        if extra == "conv_output_reused":
            out = bb.emit(relax.op.add(out, y))
        return out

    return module(SHAPE, body, dtype), (w, b if with_bias else None, stats)


def expected_fold(w, b, stats, eps=1e-5, dtype="float32"):
    s = stats["gamma"].astype(np.float64) / np.sqrt(stats["var"].astype(np.float64) + eps)
    w2 = (w.astype(np.float64) * s.reshape(-1, 1, 1, 1)).astype(dtype)
    b0 = np.zeros(w.shape[0]) if b is None else b.astype(np.float64)
    b2 = ((b0 - stats["mean"]) * s + stats["beta"]).astype(dtype)
    return w2, b2


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("groups", [1, 2, 4])
def test_structure_matches_expected(with_bias, groups):
    before, (w, b, stats) = conv_bn(with_bias=with_bias, groups=groups)
    w2, b2 = expected_fold(w, b, stats)
    expected = module(SHAPE, lambda bb, x: bb.emit(relax.op.add(
        bb.emit(conv(x, relax.const(w2), pad=1, groups=groups)), relax.const(b2.reshape(1, -1, 1, 1)))))
    after = FoldBatchNorm()(before)
    tvm.ir.assert_structural_equal(after, expected)


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("groups", [1, 2, 4])
def test_numerically_equal_to_unfolded(with_bias, groups):
    before, _ = conv_bn(with_bias=with_bias, groups=groups)
    x = rng(1).standard_normal(SHAPE).astype("float32")
    after = FoldBatchNorm()(before)
    assert count_ops(after, "relax.nn.batch_norm") == 0
    assert rel_err(run(after, x), run(before, x)) <= TOL


def test_superset_of_tvm_builtin():
    """TVM's FoldBatchnormToConv2D misses conv+bias (the ONNX importer's form); we fold it."""
    before, _ = conv_bn(with_bias=True)
    builtin = relax.transform.FoldBatchnormToConv2D()(before)
    assert count_ops(builtin, "relax.nn.batch_norm") == 1
    assert count_ops(FoldBatchNorm()(before), "relax.nn.batch_norm") == 0


def test_unchanged_when_nothing_matches():
    w = conv_weights(rng(), 8, 4, 3)
    before = module(SHAPE, lambda bb, x: bb.emit(relax.op.nn.relu(bb.emit(conv(x, relax.const(w), pad=1)))))
    fold = FoldBatchNorm()
    after = fold(before)
    tvm.ir.assert_structural_equal(after, before)
    assert fold.sites == []


def refusal(mod):
    fold = FoldBatchNorm()
    after = fold(mod)
    assert count_ops(after, "relax.nn.batch_norm") == 1, "a refused site must stay as it was"
    assert [s.status for s in fold.sites] == ["refused"]
    return fold.sites[0].reason


def test_refuses_training_mode():
    mod, _ = conv_bn(training=True)
    assert "training mode" in refusal(mod)


def test_refuses_when_conv_output_has_another_consumer():
    mod, _ = conv_bn(extra="conv_output_reused")
    assert "also used by" in refusal(mod)


def test_refuses_non_constant_weights():
    r = rng()
    w = relax.Var("w", relax.TensorType((8, 4, 3, 3), "float32"))
    x = relax.Var("x", relax.TensorType(SHAPE, "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x, w]):
        with bb.dataflow():
            y = bb.emit(conv(x, w, pad=1))
            t = bb.emit(batch_norm(y, bn_stats(r, 8)))
            gv = bb.emit_output(relax.TupleGetItem(t, 0))
        bb.emit_func_output(gv)
    assert "not a constant" in refusal(bb.get())


def test_refuses_shared_weight():
    r = rng()
    w = conv_weights(r, 8, 4, 3)

    def body(bb, x):
        weight = bb.emit(relax.op.reshape(relax.const(w), w.shape))  # one weight var, two readers
        y = bb.emit(conv(x, weight, pad=1))
        t = bb.emit(batch_norm(y, bn_stats(r, 8)))
        z = bb.emit(conv(x, weight, pad=1))
        return bb.emit(relax.op.add(bb.emit(relax.TupleGetItem(t, 0)), z))

    assert "shared with another consumer" in refusal(module(SHAPE, body))


def test_refuses_transposed_conv():
    r = rng()
    w = r.standard_normal((4, 8, 3, 3)).astype("float32")  # IOHW

    def body(bb, x):
        y = bb.emit(relax.op.nn.conv2d_transpose(x, relax.const(w), padding=1))
        t = bb.emit(batch_norm(y, bn_stats(r, 8)))
        return relax.TupleGetItem(t, 0)

    assert "transposed" in refusal(module(SHAPE, body))


def test_refuses_non_conv_producer():
    def body(bb, x):
        y = bb.emit(relax.op.nn.max_pool2d(x, pool_size=3, padding=1))
        t = bb.emit(batch_norm(y, bn_stats(rng(), 4)))
        return relax.TupleGetItem(t, 0)

    assert "max_pool2d, not a conv2d" in refusal(module(SHAPE, body))


def test_folds_fp16_in_higher_precision():
    before, (w, b, stats) = conv_bn(dtype="float16")
    fold = FoldBatchNorm()
    after = fold(before)
    assert count_ops(after, "relax.nn.batch_norm") == 0
    assert "float16" in fold.sites[0].reason
    w2, b2 = expected_fold(w, b, stats, dtype="float16")
    expected = module(SHAPE, lambda bb, x: bb.emit(relax.op.add(
        bb.emit(conv(x, relax.const(w2), pad=1)), relax.const(b2.reshape(1, -1, 1, 1)))), dtype="float16")
    tvm.ir.assert_structural_equal(after, expected)
    # The fp16 result stays within fp16 rounding of an fp32 evaluation of the original.
    before32, _ = conv_bn(dtype="float32")
    x = rng(1).standard_normal(SHAPE).astype("float32")
    assert rel_err(run(after, x.astype("float16")), run(before32, x)) <= 5e-3


def test_sites_reach_a_collector_inside_a_sequential():
    before, _ = conv_bn()
    with record_sites() as sites:
        tvm.transform.Sequential([FoldBatchNorm(), relax.transform.FoldConstant()])(before)
    assert [(s.pass_name, s.status) for s in sites] == [("FoldBatchNorm", "rewritten")]
