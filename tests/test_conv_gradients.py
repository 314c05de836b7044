"""A conv's gradient convs, rewritten for the fast kernels (``backend/kernels/gradients.py``):
each rewrite computes what TVM's own op computes (plain build, float64 reference), the rewritten
module has the expected structure, and what the rewrites don't cover is left as it was."""

import numpy as np
import pytest
import tvm
from hypothesis import given, settings
from hypothesis import strategies as st
from tvm import relax

from rebirth_tvm.backend.build import compile_for_host
from rebirth_tvm.backend.kernels.gradients import rewrite_conv_gradients


def one_op(make, shapes, dtype="float32") -> tvm.IRModule:
    """``main(x0, x1) = make(x0, x1)``."""
    bb = relax.BlockBuilder()
    params = [relax.Var(f"x{k}", relax.TensorType(shape, dtype)) for k, shape in enumerate(shapes)]
    with bb.function("main", params):
        with bb.dataflow():
            out = bb.emit_output(make(*params))
        bb.emit_func_output(out)
    return bb.get()


def run(mod, arrays, compile=lambda m: tvm.compile(m, target=tvm.target.Target("llvm"))):
    vm = relax.VirtualMachine(compile(mod), tvm.cpu())
    return vm["main"](*[tvm.runtime.tensor(a) for a in arrays]).numpy()


def ops_of(mod) -> set[str]:
    names = set()
    relax.analysis.post_order_visit(mod["main"], lambda e: names.add(e.op.name) if isinstance(e, relax.Call)
                                    and isinstance(e.op, tvm.ir.Op) else None)
    return names


def check_rewrite(make, shapes, seed=0):
    """The rewritten op, built with the project's kernels in float32, against TVM's own op in
    float64 (plain build), within 1e-4 of the output's scale; and the rewrite really happened."""
    r = np.random.default_rng(seed)
    arrays = [r.standard_normal(s) for s in shapes]
    expected = run(one_op(make, shapes, "float64"), arrays)
    mod = one_op(make, shapes)
    rewritten = rewrite_conv_gradients(mod)
    assert not ops_of(rewritten) & {"relax.nn.conv2d_transpose"}
    got = run(mod, [a.astype("float32") for a in arrays], compile_for_host)
    assert got.shape == expected.shape
    scale = max(np.abs(expected).max(), 1e-6)
    assert np.abs(got - expected).max() <= 1e-4 * scale, (np.abs(got - expected).max(), scale)
    return rewritten


transposes = st.tuples(
    st.integers(1, 2),            # batch
    st.integers(1, 20),           # input channels (the forward conv's outputs)
    st.integers(1, 20),           # output channels
    st.integers(1, 9),            # size
    st.sampled_from([1, 2, 3, 5, 7]),  # kernel
    st.integers(1, 3),            # stride
    st.tuples(*[st.integers(0, 3)] * 4),  # padding (top, left, bottom, right)
    st.tuples(st.integers(0, 2), st.integers(0, 2)),  # output padding
)


@settings(max_examples=25, deadline=None)
@given(transposes)
def test_a_transposed_conv_becomes_a_conv_on_the_dilated_input(case):
    batch, cin, cout, size, kernel, stride, pads, extra = case
    pads = tuple(min(p, kernel - 1) for p in pads)  # what a forward conv's gradient can have
    extra = tuple(min(e, stride - 1) for e in extra)  # TVM requires output padding < stride
    out = (size - 1) * stride - pads[0] - pads[2] + kernel + extra[0]
    if out < 1 or (size - 1) * stride - pads[1] - pads[3] + kernel + extra[1] < 1:
        return
    check_rewrite(lambda x, w: relax.op.nn.conv2d_transpose(x, w, strides=stride, padding=pads, output_padding=extra),
                  [(batch, cin, size, size), (cin, cout, kernel, kernel)])


weight_gradients = st.tuples(
    st.integers(1, 3),            # batch
    st.integers(1, 12),           # the forward conv's input channels
    st.integers(1, 12),           # its output channels
    st.integers(3, 12),           # size
    st.sampled_from([1, 3, 5]),   # kernel
    st.integers(1, 2),            # the forward conv's stride
    st.integers(1, 2),            # its dilation
    st.tuples(*[st.integers(0, 2)] * 4),
)


@settings(max_examples=25, deadline=None)
@given(weight_gradients)
def test_the_weight_gradient_conv_becomes_im2col_and_a_matmul(case):
    batch, cin, cout, size, kernel, stride, dilation, pads = case
    p = (size + pads[0] + pads[2] - dilation * (kernel - 1) - 1) // stride + 1
    q = (size + pads[1] + pads[3] - dilation * (kernel - 1) - 1) // stride + 1
    if p < 1 or q < 1:
        return
    # What relax.transform.Gradient emits for conv2d(x [n, i, h, w], w [o, i, k, k]): its
    # strides and dilation swap places.
    rewritten = check_rewrite(
        lambda x, g: relax.op.nn.conv2d(x, g, strides=dilation, padding=pads, dilation=stride,
                                        data_layout="CNHW", kernel_layout="IOHW", out_layout="CNHW"),
        [(batch, cin, size, size), (batch, cout, p, q)])
    assert "relax.matmul" in ops_of(rewritten) and "relax.nn.conv2d" not in ops_of(rewritten)


def test_the_gradient_of_a_conv_gets_no_transposed_or_weight_layout_conv():
    x = relax.Var("x", relax.TensorType((1, 8, 9, 9), "float32"))
    w = relax.Var("w", relax.TensorType((16, 8, 3, 3), "float32"))
    bb = relax.BlockBuilder()
    with bb.function("loss", [x, w]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, w, strides=2, padding=[1, 1]))
            loss = bb.emit_output(relax.op.sum(relax.op.multiply(y, y)))
        bb.emit_func_output(loss)
    grad = relax.transform.Gradient("loss", require_grads=[x, w])(bb.get())
    func = grad["loss_adjoint"]
    before = [(b.value.op.name, str(b.value.attrs.data_layout)) for blk in func.body.blocks for b in blk.bindings
              if isinstance(b.value, relax.Call) and isinstance(b.value.op, tvm.ir.Op) and "conv" in b.value.op.name]
    assert ("relax.nn.conv2d_transpose", "NCHW") in before and ("relax.nn.conv2d", "CNHW") in before
    after = rewrite_conv_gradients(grad)["loss_adjoint"]
    convs = [b.value for blk in after.body.blocks for b in blk.bindings
             if isinstance(b.value, relax.Call) and isinstance(b.value.op, tvm.ir.Op) and "conv" in b.value.op.name]
    assert [(c.op.name, str(c.attrs.data_layout)) for c in convs] == [("relax.nn.conv2d", "NCHW")] * 2


def test_an_inference_conv_is_left_exactly_as_it_was():
    mod = one_op(lambda x, w: relax.op.nn.conv2d(x, w, strides=2, padding=[1, 0, 2, 1]), [(1, 4, 9, 9), (6, 4, 3, 3)])
    tvm.ir.assert_structural_equal(rewrite_conv_gradients(mod), mod)


@pytest.mark.parametrize("make, shapes", [
    # grouped and dilated transposes, and padding wider than the kernel, have no such form here
    (lambda x, w: relax.op.nn.conv2d_transpose(x, w, strides=2, groups=2), [(1, 4, 5, 5), (4, 3, 3, 3)]),
    (lambda x, w: relax.op.nn.conv2d_transpose(x, w, strides=1, dilation=2), [(1, 4, 5, 5), (4, 3, 3, 3)]),
    (lambda x, w: relax.op.nn.conv2d_transpose(x, w, strides=1, padding=3), [(1, 4, 9, 9), (4, 3, 3, 3)]),
    (lambda x, g: relax.op.nn.conv2d(x, g, groups=2, data_layout="CNHW", kernel_layout="IOHW", out_layout="CNHW"),
     [(2, 4, 6, 6), (1, 4, 4, 4)]),
])
def test_what_the_rewrites_do_not_cover_is_left_alone_and_still_builds(make, shapes):
    mod = one_op(make, shapes)
    tvm.ir.assert_structural_equal(rewrite_conv_gradients(mod), mod)
    r = np.random.default_rng(0)
    arrays = [r.standard_normal(s).astype("float32") for s in shapes]
    np.testing.assert_allclose(run(mod, arrays, compile_for_host), run(mod, arrays), rtol=1e-4, atol=1e-4)


def inception_loss() -> tvm.IRModule:
    """``loss(x, w1, w3, w)``: two branches (1×1 and 3×3 convs) concatenated, then a 1×1 conv
    reading the concat, then the squared sum — an inception module's shape, with everything
    the gradient needs: transposed convs, weight-gradient convs and a channel split."""
    x = relax.Var("x", relax.TensorType((1, 16, 7, 7), "float32"))
    w1 = relax.Var("w1", relax.TensorType((24, 16, 1, 1), "float32"))
    w3 = relax.Var("w3", relax.TensorType((40, 16, 3, 3), "float32"))
    w = relax.Var("w", relax.TensorType((32, 64, 1, 1), "float32"))
    bb = relax.BlockBuilder()
    with bb.function("loss", [x, w1, w3, w]):
        with bb.dataflow():
            a = bb.emit(relax.op.nn.relu(relax.op.nn.conv2d(x, w1)))
            b = bb.emit(relax.op.nn.relu(relax.op.nn.conv2d(x, w3, padding=[1, 1])))
            both = bb.emit(relax.op.concat([a, b], axis=1))
            y = bb.emit(relax.op.nn.conv2d(both, w))
            loss = bb.emit_output(relax.op.sum(relax.op.multiply(y, y)))
        bb.emit_func_output(loss)
    return relax.transform.Gradient("loss", require_grads=[w1, w3, w])(bb.get())


def test_an_inception_modules_gradient_builds_with_the_kernels_and_matches_the_plain_build():
    grad = inception_loss()
    r = np.random.default_rng(0)
    arrays = [r.standard_normal([int(d) for d in p.ty.shape]).astype("float32") for p in grad["loss_adjoint"].params]
    args = [tvm.runtime.tensor(a) for a in arrays]
    plain = relax.VirtualMachine(tvm.compile(grad, target=tvm.target.Target("llvm")), tvm.cpu())["loss_adjoint"](*args)
    ours = relax.VirtualMachine(compile_for_host(grad), tvm.cpu())["loss_adjoint"](*args)
    np.testing.assert_allclose(ours[0].numpy(), plain[0].numpy(), rtol=1e-4)
    for got, expected in zip(ours[1], plain[1]):
        scale = np.abs(expected.numpy()).max()
        assert np.abs(got.numpy() - expected.numpy()).max() <= 1e-4 * scale
