"""MergeParallelConvs: structure, refusals, numbers."""

import numpy as np
import pytest
import tvm
from relax_builders import conv, conv_weights, count_ops, module, rel_err, rng, run
from tvm import relax

from rebirth_tvm.passes import MergeParallelConvs

SHAPE = (1, 6, 12, 12)


def siblings(specs, bias=True):
    """One conv per spec reading x, concatenated. spec: dict(out, k, pad, stride, dilation, groups)."""
    r = rng()
    weights = [conv_weights(r, s["out"], SHAPE[1], s.get("k", 1), s.get("groups", 1)) for s in specs]
    biases = [r.normal(0, 0.1, s["out"]).astype("float32") for s in specs]

    def body(bb, x):
        outs = []
        for s, w, b in zip(specs, weights, biases):
            y = bb.emit(conv(x, relax.const(w), stride=s.get("stride", 1), pad=s.get("pad", 0),
                             dilation=s.get("dilation", 1), groups=s.get("groups", 1)))
            if bias:
                y = bb.emit(relax.op.add(y, relax.const(b.reshape(1, -1, 1, 1))))
            outs.append(bb.emit(relax.op.nn.relu(y)))
        if len(outs) == 1:
            return outs[0]
        same = len({tuple(int(d) for d in o.ty.shape)[2:] for o in outs}) == 1
        # Strided odd ones out cannot be concatenated: return the branches as a tuple then.
        return bb.emit(relax.op.concat(outs, axis=1)) if same else relax.Tuple(outs)

    return module(SHAPE, body), weights, biases


def test_structure_matches_expected():
    before, (w1, w2, w3), (b1, b2, b3) = siblings([dict(out=4), dict(out=5), dict(out=3)])
    w = np.concatenate([w1, w2, w3])
    b = np.concatenate([b1, b2, b3]).reshape(1, -1, 1, 1)

    def body(bb, x):
        m = bb.emit(relax.op.add(bb.emit(conv(x, relax.const(w))), relax.const(b)))
        outs = []
        for lo, hi in ((0, 4), (4, 9), (9, 12)):
            outs.append(bb.emit(relax.op.nn.relu(bb.emit(relax.op.strided_slice(m, axes=[1], begin=[lo], end=[hi])))))
        return bb.emit(relax.op.concat(outs, axis=1))

    tvm.ir.assert_structural_equal(MergeParallelConvs()(before), module(SHAPE, body))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("specs", [
    [dict(out=4), dict(out=5)],
    [dict(out=4, k=3, pad=1, stride=2), dict(out=2, k=3, pad=1, stride=2), dict(out=7, k=3, pad=1, stride=2)],
    [dict(out=4, k=3, pad=2, dilation=2), dict(out=3, k=3, pad=2, dilation=2)],
])
def test_numerically_equal(specs, bias):
    before, _, _ = siblings(specs, bias)
    after = MergeParallelConvs()(before)
    assert count_ops(after, "relax.nn.conv2d") == 1
    x = rng(1).standard_normal(SHAPE).astype("float32")
    assert rel_err(run(after, x), run(before, x)) <= 1e-5


def test_kernel_padding_is_exact_and_reports_the_cost():
    specs = [dict(out=4, k=1), dict(out=5, k=3, pad=1), dict(out=3, k=5, pad=2)]
    before, _, _ = siblings(specs)
    plain = MergeParallelConvs()
    assert count_ops(plain(before), "relax.nn.conv2d") == 3
    assert {s.status for s in plain.sites} == {"refused"}
    padded = MergeParallelConvs(allow_kernel_padding=True)
    after = padded(before)
    assert count_ops(after, "relax.nn.conv2d") == 1
    site = padded.rewritten[0]
    assert site.detail["macs_after"] > site.detail["macs_before"]
    x = rng(1).standard_normal(SHAPE).astype("float32")
    assert rel_err(run(after, x), run(before, x)) <= 1e-5


def test_asymmetric_padding_is_aligned():
    specs = [dict(out=4, k=1, pad=(0, 0, 0, 0)), dict(out=5, k=2, pad=(0, 0, 1, 1))]
    before, _, _ = siblings(specs)
    after = MergeParallelConvs(allow_kernel_padding=True)(before)
    assert count_ops(after, "relax.nn.conv2d") == 1
    x = rng(1).standard_normal(SHAPE).astype("float32")
    assert rel_err(run(after, x), run(before, x)) <= 1e-5


def test_unchanged_when_nothing_matches():
    before, _, _ = siblings([dict(out=4)])
    merge = MergeParallelConvs()
    tvm.ir.assert_structural_equal(merge(before), before)
    assert merge.sites == []


@pytest.mark.parametrize("odd, word", [
    (dict(out=3, stride=2), "stride"),
    (dict(out=3, k=3, pad=2, dilation=2), "dilation"),
    (dict(out=6, groups=2), "grouped conv"),
    (dict(out=3, k=3, pad=1), "kernel 3x3 differs"),
])
def test_refuses_mismatched_sibling(odd, word):
    before, _, _ = siblings([dict(out=4), dict(out=5), odd])
    merge = MergeParallelConvs()
    after = merge(before)
    assert count_ops(after, "relax.nn.conv2d") == 2  # the two 1x1s merged, the odd one kept
    refused = [s for s in merge.sites if s.status == "refused"]
    assert len(refused) == 1 and word in refused[0].reason
    x = rng(1).standard_normal(SHAPE).astype("float32")
    outs, refs = run(after, x), run(before, x)
    outs, refs = (outs if isinstance(outs, list) else [outs]), (refs if isinstance(refs, list) else [refs])
    # A strided odd one out cannot be concatenated: then one output per sibling. zip would
    # silently drop a missing one.
    assert len(outs) == len(refs) == (3 if odd.get("stride") else 1)
    for out, ref in zip(outs, refs):
        assert out.shape == ref.shape and rel_err(out, ref) <= 1e-5


def test_refuses_non_constant_weight():
    x = relax.Var("x", relax.TensorType(SHAPE, "float32"))
    w = relax.Var("w", relax.TensorType((4, 6, 1, 1), "float32"))
    w2 = conv_weights(rng(), 4, 6, 1)
    bb = relax.BlockBuilder()
    with bb.function("main", [x, w]):
        with bb.dataflow():
            a = bb.emit(conv(x, w))
            c = bb.emit(conv(x, relax.const(w2)))
            gv = bb.emit_output(relax.op.concat([a, c], axis=1))
        bb.emit_func_output(gv)
    before = bb.get()
    merge = MergeParallelConvs()
    tvm.ir.assert_structural_equal(merge(before), before)
    assert any("not a constant" in s.reason for s in merge.sites)
