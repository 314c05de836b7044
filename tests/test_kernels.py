"""The CPU kernels: blocked-layout convs and the schedule rules are exact, cover every kernel,
and fall back instead of failing.

Every conv is compared with onnxruntime (unoptimised) on the same random input, within 1e-4 of
the output's scale (fp32 sums in another order: measured ≤ 2e-6 here).
"""

import os

import numpy as np
import onnx
import pytest
import tvm
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import rebirth_tvm
from rebirth_tvm.backend.kernels import KernelCounts, cpu_pipeline, fused_kernels
from rebirth_tvm.backend.kernels.conv_nchwc import BlockedConv, tile_width
from rebirth_tvm.backend.kernels.layout import block_size
from rebirth_tvm.backend.kernels.loops import ParallelLoops
from rebirth_tvm.backend.targets import resolve_target
from rebirth_tvm.frontend.reference import onnxruntime_outputs

TOLERANCE = 1e-4


def conv_model(in_ch, out_ch, size, kernel, stride=1, pads=(0, 0, 0, 0), groups=1, relu=True, bias=True, seed=0):
    """One Conv (+bias) (+Relu) on a (1, in_ch, size, size + 3) input: a non-square width too."""
    r = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(r.normal(0, 0.2, (out_ch, in_ch // groups, kernel, kernel)).astype(np.float32), "w")]
    inputs = ["x", "w"]
    if bias:
        inits.append(numpy_helper.from_array(r.normal(0, 0.1, out_ch).astype(np.float32), "b"))
        inputs.append("b")
    nodes = [helper.make_node("Conv", inputs, ["c"], kernel_shape=[kernel, kernel], strides=[stride, stride], pads=list(pads),
                              group=groups, name="conv")]
    if relu:
        nodes.append(helper.make_node("Relu", ["c"], ["y"], name="relu"))
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, in_ch, size, size + 3])],
                              [helper.make_tensor_value_info("y" if relu else "c", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    return onnx.shape_inference.infer_shapes(model)


def check_against_onnxruntime(model):
    built = rebirth_tvm.build(rebirth_tvm.load(model), "x86")
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    out, ref = built.run(x), onnxruntime_outputs(model, {"x": x})[0]
    assert out.shape == ref.shape
    scale = max(float(np.abs(ref).max()), 1e-30)
    error = float(np.abs(out - ref).max()) / scale
    assert error <= TOLERANCE, error
    return built


@pytest.mark.parametrize("case", [
    dict(in_ch=32, out_ch=48, size=14, kernel=3, pads=(1, 1, 1, 1)),             # blocks of 16, same padding
    dict(in_ch=3, out_ch=64, size=33, kernel=7, stride=2, pads=(3, 3, 3, 3)),      # the 3-channel first conv
    dict(in_ch=24, out_ch=40, size=9, kernel=1),                                   # channels that do not divide by 16
    dict(in_ch=16, out_ch=16, size=11, kernel=3, stride=2, pads=(0, 1, 2, 1)),     # asymmetric padding, odd size
    dict(in_ch=32, out_ch=32, size=8, kernel=3, pads=(1, 1, 1, 1), groups=2),      # grouped: through NCHW
    dict(in_ch=16, out_ch=16, size=10, kernel=3, pads=(1, 1, 1, 1), groups=16),    # depthwise
    dict(in_ch=5, out_ch=3, size=7, kernel=3),                                     # too narrow to block
    dict(in_ch=32, out_ch=20, size=9, kernel=3, pads=(1, 1, 1, 1)),                # 20 filters padded to 32, sliced back
    dict(in_ch=64, out_ch=1000, size=5, kernel=1),                                 # a 1000-class conv classifier
    dict(in_ch=32, out_ch=32, size=6, kernel=5, pads=(2, 2, 2, 2), relu=False, bias=False),
    dict(in_ch=16, out_ch=32, size=24, kernel=3, pads=(1, 1, 1, 1)),             # 27-wide rows: 9 × 2 register tiles
    dict(in_ch=16, out_ch=48, size=10, kernel=3, pads=(1, 1, 1, 1)),             # 13-wide rows: 13 × 1
])
def test_conv_matches_onnxruntime(case):
    check_against_onnxruntime(conv_model(**case))


@settings(max_examples=12, deadline=None)
@given(in_ch=st.sampled_from([3, 8, 16, 24, 32, 48]), out_ch=st.sampled_from([4, 16, 20, 32, 64]),
       size=st.integers(5, 17), kernel=st.sampled_from([1, 3, 5, 7]), stride=st.sampled_from([1, 2]),
       pads=st.tuples(*[st.integers(0, 2)] * 4), relu=st.booleans())
def test_random_convs_match_onnxruntime(in_ch, out_ch, size, kernel, stride, pads, relu):
    if size + pads[0] + pads[2] < kernel:
        return  # no output: not a valid conv
    check_against_onnxruntime(conv_model(in_ch, out_ch, size, kernel, stride, pads, relu=relu))


def test_every_kernel_of_a_conv_net_gets_a_schedule():
    model = conv_model(32, 64, 14, 3, pads=(1, 1, 1, 1))
    built = check_against_onnxruntime(model)
    assert built.kernels["kernels"] >= 2 and built.kernels.get("plain_loops", 0) == 0, built.kernels
    assert built.kernels["blocked_conv"] == 1 and built.kernels["channel_block"] == block_size(built.target.tvm)


def test_block_size_follows_the_vector_width():
    assert block_size(resolve_target("arm").tvm) == 4  # 128-bit NEON
    avx512 = resolve_target('{"kind": "llvm", "mcpu": "skylake-avx512"}')
    avx2 = resolve_target('{"kind": "llvm", "mcpu": "haswell"}')
    assert (block_size(avx512.tvm), block_size(avx2.tvm)) == (16, 8)


def test_tile_width_divides_the_row_where_it_can():
    assert [tile_width(w) for w in (56, 28, 14, 7, 13, 5, 3)] == [8, 7, 7, 7, 8, 5, 3]


def test_register_tiles_divide_the_row_and_hold_enough_accumulators():
    from rebirth_tvm.backend.kernels.conv_nchwc import register_tile

    # 32 registers (AVX-512, NEON): exact divisors with at least 8 accumulators, at most 20.
    tiles = {w: register_tile(w, 4, 32) for w in (56, 55, 54, 28, 27, 14, 13, 7, 109, 3)}
    assert tiles == {56: (8, 2), 55: (5, 2), 54: (9, 2), 28: (7, 2), 27: (9, 2), 14: (7, 2), 13: (13, 1), 7: (7, 2),
                     109: (8, 2), 3: (3, 2)}  # 109 is prime: a partial tile; 3 cannot fill the registers
    assert register_tile(27, 3, 32) == (9, 1)  # an odd count of channel blocks: one block per tile
    # 16 registers (AVX2): the row tile as before, two blocks where they fit in half the registers.
    assert [register_tile(w, 4, 16) for w in (56, 27, 7, 3)] == [(8, 1), (8, 1), (7, 1), (3, 2)]


def test_rules_return_none_for_what_they_do_not_handle():
    model = conv_model(32, 64, 14, 3, pads=(1, 1, 1, 1))
    target = resolve_target("x86").tvm
    fused = fused_kernels(target)(rebirth_tvm.load(model))
    funcs = [f for _, f in fused.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    convs = [f for f in funcs if BlockedConv().apply(f, target, False) is not None]
    assert len(convs) == 1
    others = [f for f in funcs if f is not convs[0]]
    assert others and all(BlockedConv().apply(f, target, False) is None for f in others)
    assert BlockedConv().apply("not a function", target, False) is None
    assert ParallelLoops().apply("not a function", target, False) is None


def test_an_arm_build_uses_neon_blocks():
    counts = KernelCounts()
    target = resolve_target("arm", cpu="cortex-a72")
    tvm.compile(rebirth_tvm.load(conv_model(16, 32, 9, 3, pads=(1, 1, 1, 1))), target=target.tvm,
                relax_pipeline=cpu_pipeline(target.tvm, counts))
    assert counts.block == 4 and counts.by_rule["blocked_conv"] == 1 and counts.by_rule["plain_loops"] == 0


def test_power_by_a_constant_becomes_square_roots_and_products():
    from tvm import relax

    from rebirth_tvm.backend.kernels.arith import strength_reduce_power

    def power_module(exponent):
        bb = relax.BlockBuilder()
        x = relax.Var("x", relax.TensorType((2, 8), "float32"))
        with bb.function("main", [x]):
            with bb.dataflow():
                out = bb.emit_output(relax.op.power(x, relax.const(exponent, "float32")))
            bb.emit_func_output(out)
        return bb.get()

    x = np.concatenate([np.random.default_rng(0).uniform(0, 50, 12), [0.0, -1.0, np.inf, np.nan]]).astype(np.float32).reshape(2, 8)
    for exponent in (0.5, 0.75, 1.0, 2.0):
        reduced = strength_reduce_power(power_module(exponent))
        assert "power" not in reduced.script()
        vm = relax.VirtualMachine(tvm.compile(reduced, target="llvm"), tvm.cpu())
        out = vm["main"](tvm.runtime.tensor(x)).numpy()
        with np.errstate(invalid="ignore"):
            expected = np.power(x.astype(np.float64), exponent)
        np.testing.assert_allclose(out, expected, rtol=1e-6, equal_nan=True)
    other = power_module(0.3)
    tvm.ir.assert_structural_equal(strength_reduce_power(other), other)  # other exponents: untouched


def test_tvm_runs_kernels_on_every_core(tmp_path):
    # TVM alone takes half the logical CPUs on x86; importing rebirth_tvm sets every core (a
    # user's TVM_NUM_THREADS is kept). Fresh processes: the pool is sized once.
    import subprocess
    import sys

    from rebirth_tvm.backend.threads import available_cores

    probe = "import rebirth_tvm, tvm; print(tvm.get_global_func('runtime.NumThreads')())"
    env = {k: v for k, v in os.environ.items() if k not in ("TVM_NUM_THREADS", "OMP_NUM_THREADS")}
    threads = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True)
    assert int(threads.stdout.split()[-1]) == available_cores()
    mine = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env={**env, "TVM_NUM_THREADS": "1"}, check=True)
    assert int(mine.stdout.split()[-1]) == 1


def test_tuning_searches_the_templates_own_space_default_included():
    # The tuner samples the template's tile sizes; the untuned choice is one of the options,
    # so the fastest measured can only match or beat the default build.
    from tvm import s_tir

    model = conv_model(32, 64, 13, 3, pads=(1, 1, 1, 1))  # output rows of 16
    target = resolve_target("x86").tvm
    fused = fused_kernels(target)(rebirth_tvm.load(model))
    (conv,) = [f for _, f in fused.functions_items() if isinstance(f, tvm.tirx.PrimFunc) and BlockedConv.applies_to(s_tir.Schedule(f))]
    sch = s_tir.Schedule(conv)
    assert BlockedConv().schedule(sch, target, tunable=True)
    choices = [inst for inst in sch.trace.insts if inst.kind.name == "SampleCategorical"]
    assert [int(v) for v in choices[0].attrs[0]] == [2, 4, 8, 16] and tile_width(16) == 8
    assert [int(v) for v in choices[1].attrs[0]] == [1, 2]


@pytest.mark.parametrize("case", [
    dict(in_ch=16, out_ch=24, size=9, kernel=3, pads=(1, 1, 1, 1)),              # NEON blocks of 4
    dict(in_ch=3, out_ch=16, size=15, kernel=7, stride=2, pads=(3, 2, 3, 2)),     # the narrow first conv, asymmetric
    dict(in_ch=12, out_ch=20, size=7, kernel=1),
    dict(in_ch=16, out_ch=16, size=9, kernel=3, stride=2, pads=(1, 1, 1, 1), groups=16),  # depthwise
])
def test_arm_kernels_under_qemu_match_the_x86_build(case):
    # The aarch64 library itself (NEON blocks of 4), run by the native runner under
    # qemu-aarch64, against the x86 build of the same module (itself checked against
    # onnxruntime above): within the runner check's 1e-5.
    arm = check_arm_build_under_qemu(conv_model(**case))
    assert arm.kernels["channel_block"] == 4 and arm.kernels.get("plain_loops", 0) == 0


def check_arm_build_under_qemu(model):
    """Build ``model`` for aarch64, run the exported library under qemu with the native runner and
    compare with the x86 build (checked against onnxruntime); returns the aarch64 build. Skips
    without the cross tools, except on CI, where they are installed and a skip would hide a gap."""
    import shutil
    import tempfile

    from rebirth_tvm.backend import native

    missing = [t for t in ("cmake", "aarch64-linux-gnu-g++", "qemu-aarch64") if shutil.which(t) is None]
    if missing and os.environ.get("CI") != "true":
        pytest.skip(f"{', '.join(missing)} not installed")
    arm = rebirth_tvm.build(rebirth_tvm.load(model), resolve_target("arm", cpu="cortex-a72"))
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    with tempfile.TemporaryDirectory() as work:
        library = os.path.join(work, "model.so")
        arm.export(library)
        (out,), _ = native.run_library(library, [x], arch="aarch64", warmup=0, repeat=1)
    ref = check_against_onnxruntime(model).run(x)
    assert float(np.abs(out - ref).max()) / float(np.abs(ref).max()) <= native.VERIFY_TOLERANCE
    return arm


def test_a_power_whose_exponent_is_not_a_scalar_is_left_alone():
    # power(x[2, 8], c[1, 1, 1]) has shape (1, 2, 8): replacing it by sqrt(x) would change it.
    from tvm import relax

    from rebirth_tvm.backend.kernels.arith import strength_reduce_power

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((2, 8), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.power(x, relax.const(np.full((1, 1, 1), 0.5, np.float32))))
        bb.emit_func_output(out)
    mod = bb.get()
    tvm.ir.assert_structural_equal(strength_reduce_power(mod), mod)


def inverted_residual_model(channels=24, expand=4, size=14, stride=1, seed=0):
    """MobileNetV2's block: 1×1 expand + ReLU6 (ONNX Clip), depthwise 3×3 + ReLU6, 1×1 project,
    and the residual add when the shape allows it."""
    r = np.random.default_rng(seed)
    wide = channels * expand

    def weight(name, shape):
        return numpy_helper.from_array(r.normal(0, 0.3, shape).astype(np.float32), name)

    inits = [weight("w1", (wide, channels, 1, 1)), weight("b1", (wide,)), weight("w2", (wide, 1, 3, 3)), weight("b2", (wide,)),
             weight("w3", (channels, wide, 1, 1)), weight("b3", (channels,)),
             numpy_helper.from_array(np.array(0.0, np.float32), "lo"), numpy_helper.from_array(np.array(6.0, np.float32), "hi")]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["e"], kernel_shape=[1, 1]),
        helper.make_node("Clip", ["e", "lo", "hi"], ["e6"]),
        helper.make_node("Conv", ["e6", "w2", "b2"], ["d"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[stride, stride],
                         group=wide),
        helper.make_node("Clip", ["d", "lo", "hi"], ["d6"]),
        helper.make_node("Conv", ["d6", "w3", "b3"], ["p"], kernel_shape=[1, 1]),
    ]
    out = "p"
    if stride == 1:
        nodes.append(helper.make_node("Add", ["x", "p"], ["y"]))
        out = "y"
    graph = helper.make_graph(nodes, "inverted_residual", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, size, size])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], inits)
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))


@pytest.mark.parametrize("case", [
    dict(in_ch=16, out_ch=16, size=10, kernel=3, pads=(1, 1, 1, 1), groups=16),
    dict(in_ch=32, out_ch=32, size=11, kernel=3, stride=2, pads=(0, 1, 2, 1), groups=32),  # strided, asymmetric
    dict(in_ch=24, out_ch=24, size=9, kernel=5, pads=(2, 2, 2, 2), groups=24),             # 24 channels: blocks of 8
    dict(in_ch=8, out_ch=8, size=7, kernel=3, groups=8, relu=False, bias=False),
])
def test_depthwise_convs_get_the_depthwise_template_and_match_onnxruntime(case):
    built = check_against_onnxruntime(conv_model(**case))
    assert built.kernels.get("depthwise_conv") == 1 and built.kernels.get("plain_loops", 0) == 0, built.kernels


def test_a_depthwise_conv_with_a_channel_multiplier_falls_back_and_stays_exact():
    built = check_against_onnxruntime(conv_model(16, 32, 9, 3, pads=(1, 1, 1, 1), groups=16))
    assert "depthwise_conv" not in built.kernels  # the template takes one filter per channel only


@pytest.mark.parametrize("stride", [1, 2])
def test_relu6_blocks_stay_in_the_blocked_layout(stride):
    # The importer's Clip kernels lifted back to Relax ops: the blocked layout carries through
    # them, so each conv's clip is fused into its write-back and the only layout transforms are
    # at the block's edges.
    model = inverted_residual_model(stride=stride)
    built = check_against_onnxruntime(model)
    assert built.kernels["channel_block"] == 8  # 24 channels: the network's block
    target = resolve_target("x86").tvm
    fused = fused_kernels(target)(rebirth_tvm.load(model))
    names = [gv.name_hint for gv, f in fused.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert sum("layout_transform" in n for n in names) == 2, names  # in and out
    assert sum("minimum" in n and "conv2d" in n for n in names) == 2, names


def test_only_the_importers_own_clip_kernels_are_lifted():
    from tvm import relax, topi

    from rebirth_tvm.backend.kernels.lift import lift_clip_bounds

    def module(te_op):
        bb = relax.BlockBuilder()
        x = relax.Var("x", relax.TensorType((2, 8), "float32"))
        with bb.function("main", [x]):
            with bb.dataflow():
                out = bb.emit_output(bb.emit_te(te_op, x, relax.const(6.0, "float32")))
            bb.emit_func_output(out)
        return bb.get()

    lifted = lift_clip_bounds(module(topi.minimum))["main"]
    assert "R.minimum" in lifted.script() and "call_tir" not in lifted.script()
    for other in (topi.add, lambda x, c: topi.minimum(x, topi.multiply(c, 2.0))):
        mod = module(other)
        tvm.ir.assert_structural_equal(lift_clip_bounds(mod), mod)  # not a plain clip bound: untouched


def test_the_network_block_is_the_widest_its_convs_divide():
    from rebirth_tvm.backend.kernels.layout import network_block

    assert network_block(rebirth_tvm.load(inverted_residual_model(channels=24)), 16) == 8
    assert network_block(rebirth_tvm.load(inverted_residual_model(channels=32)), 16) == 16
    assert network_block(rebirth_tvm.load(conv_model(3, 64, 15, 7)), 16) == 16  # a 3-channel input does not count
    assert network_block(rebirth_tvm.load(conv_model(24, 20, 9, 3)), 8) == 4


def test_a_training_gradient_compiles_with_the_kernels_and_matches_the_plain_build():
    # Distillation compiles its gradient module with these kernels. The ReLU's and max pool's
    # gradients are boolean masks, which the blocked layout reaches; TVM pads them with a float
    # zero unless the layout transform is legalized for bool (it then fails to build).
    from tvm import relax

    from rebirth_tvm.backend.build import compile_for_host
    from rebirth_tvm.relearn.finetune import _register_missing_gradients

    _register_missing_gradients()
    r = np.random.default_rng(0)
    x = relax.Var("x", relax.TensorType((1, 8, 10, 10), "float32"))
    w = relax.Var("w", relax.TensorType((16, 8, 3, 3), "float32"))
    bb = relax.BlockBuilder()
    with bb.function("loss", [x, w]):
        with bb.dataflow():
            act = bb.emit(relax.op.nn.relu(relax.op.nn.conv2d(x, w, padding=[1, 1])))
            pooled = bb.emit(relax.op.nn.max_pool2d(act, pool_size=[3, 3], strides=[2, 2], padding=[1, 1]))
            loss = bb.emit_output(relax.op.sum(relax.op.multiply(pooled, pooled)))
        bb.emit_func_output(loss)
    grad = relax.transform.Gradient("loss", require_grads=[w])(bb.get())
    args = [tvm.runtime.tensor(r.standard_normal((1, 8, 10, 10)).astype("float32")),
            tvm.runtime.tensor(r.standard_normal((16, 8, 3, 3)).astype("float32"))]
    plain = relax.VirtualMachine(tvm.compile(grad, target=tvm.target.Target("llvm")), tvm.cpu())["loss_adjoint"](*args)
    ours = relax.VirtualMachine(compile_for_host(grad), tvm.cpu())["loss_adjoint"](*args)
    np.testing.assert_allclose(ours[0].numpy(), plain[0].numpy(), rtol=1e-4)
    np.testing.assert_allclose(ours[1][0].numpy(), plain[1][0].numpy(), rtol=1e-4, atol=1e-3)


def sliced_module(first: int, block_aligned_pool: bool = True):
    """conv 16→64 → channel slices [0, first) and [first, 64) → ReLU, max pool on the second →
    a conv each → concat: the shape the sibling merge leaves in an inception module."""
    from tvm import relax

    r = np.random.default_rng(0)
    x = relax.Var("x", relax.TensorType((1, 16, 8, 8), "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, relax.const(r.standard_normal((64, 16, 1, 1)).astype("float32"))))
            a = bb.emit(relax.op.nn.relu(relax.op.strided_slice(y, axes=[1], begin=[0], end=[first])))
            b = bb.emit(relax.op.nn.relu(relax.op.strided_slice(y, axes=[1], begin=[first], end=[64])))
            b = bb.emit(relax.op.nn.max_pool2d(b, pool_size=[3, 3], strides=[1, 1], padding=[1, 1]))
            c1 = bb.emit(relax.op.nn.conv2d(a, relax.const(r.standard_normal((16, first, 3, 3)).astype("float32")), padding=[1, 1]))
            c2 = bb.emit(relax.op.nn.conv2d(b, relax.const(r.standard_normal((16, 64 - first, 1, 1)).astype("float32"))))
            out = bb.emit_output(relax.op.concat([c1, c2], axis=1))
        bb.emit_func_output(out)
    return bb.get()


def data_transforms(mod) -> int:
    """Layout transforms of feature maps (4-D ↔ 5-D; weights are 6-D blocked, and constants —
    a bias — are transformed once at compile time) in ``mod``'s main."""
    from tvm import relax

    count = []

    def visit(expr):
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name == "relax.layout_transform" \
                and len(expr.ty.shape) in (4, 5) and not isinstance(expr.args[0], tvm.ir.GenericConst):
            count.append(expr)

    relax.analysis.post_order_visit(mod["main"], visit)
    return len(count)


@pytest.mark.parametrize("first, kept_blocked", [(16, True), (8, False)])
def test_channel_slices_on_block_boundaries_stay_blocked_and_exact(first, kept_blocked):
    # Slices at multiples of the block read the blocked tensor; the ReLU and pool after them
    # stay blocked and no transform back to NCHW is left between the convs. A slice off the
    # block boundary (8 of 16) goes through NCHW as before. Both match the unoptimised build.
    from tvm import relax

    from rebirth_tvm.backend.build import build
    from rebirth_tvm.backend.kernels.layout import blocked_layout, keep_slices_blocked

    mod = sliced_module(first)
    with tvm.target.Target("llvm"):
        converted = blocked_layout(16)(mod)
        kept = keep_slices_blocked()(converted)
    # Edges only (the input and the output) when kept; untouched otherwise.
    assert data_transforms(kept) == (2 if kept_blocked else data_transforms(converted)), kept["main"]
    if not kept_blocked:
        tvm.ir.assert_structural_equal(kept, relax.transform.DeadCodeElimination()(converted))
    x = np.random.default_rng(1).standard_normal((1, 16, 8, 8)).astype("float32")
    expected = relax.VirtualMachine(tvm.compile(mod, target=tvm.target.Target("llvm")), tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    got = build(mod, "x86").run(x)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def dense_model(rows, depth, columns, relu=True, bias=True, seed=0):
    """Gemm (x [rows, depth] · Wᵀ, W [columns, depth]) (+bias) (+Relu): a classifier's FC."""
    r = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(r.normal(0, 0.1, (columns, depth)).astype(np.float32), "w")]
    inputs = ["x", "w"]
    if bias:
        inits.append(numpy_helper.from_array(r.normal(0, 0.1, columns).astype(np.float32), "b"))
        inputs.append("b")
    nodes = [helper.make_node("Gemm", inputs, ["c"], transB=1, name="fc")]
    if relu:
        nodes.append(helper.make_node("Relu", ["c"], ["y"], name="relu"))
    graph = helper.make_graph(nodes, "fc", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, depth])],
                              [helper.make_tensor_value_info("y" if relu else "c", TensorProto.FLOAT, None)], inits)
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))


@pytest.mark.parametrize("rows, depth, columns, relu, bias, rule", [
    (1, 2048, 512, True, True, "packed_dense"),     # panels of 64
    (1, 300, 1000, False, True, "packed_dense"),    # a 1000-class classifier: panels of 8
    (4, 96, 64, True, False, "packed_dense"),       # a small batch, no bias
    (1, 64, 128, False, False, "packed_dense"),     # nothing after the dense: the write-back added
    (2, 50, 24, False, True, "packed_dense"),
    (1, 64, 10, True, True, "parallel_loops"),      # 10 classes: no panel width divides
    (64, 64, 64, True, True, "parallel_loops"),     # a big batch: accumulators would not fit
])
def test_dense_matches_onnxruntime(rows, depth, columns, relu, bias, rule):
    built = check_against_onnxruntime(dense_model(rows, depth, columns, relu, bias))
    assert built.kernels.get(rule) == 1 and built.kernels.get("plain_loops", 0) == 0, built.kernels


def test_dense_weights_are_packed_in_contiguous_panels():
    from rebirth_tvm.backend.kernels.dense import max_accumulators, panel_width

    assert [panel_width(1, n) for n in (4096, 1000, 96, 10)] == [64, 8, 32, None]
    assert panel_width(8, 4096) == 32 and panel_width(64, 64) is None
    # Accumulators take half the vector registers: 32 × 16 floats with AVX-512, 16 × 8 with AVX2.
    avx2 = resolve_target('{"kind": "llvm", "mcpu": "haswell"}').tvm
    avx512 = resolve_target('{"kind": "llvm", "mcpu": "skylake-avx512"}').tvm
    assert (max_accumulators(avx512), max_accumulators(avx2), max_accumulators(resolve_target("arm").tvm)) == (256, 64, 64)
    assert panel_width(4, 4096, max_accumulators(avx2)) == 16
    model = dense_model(1, 32, 128)
    fused = fused_kernels(resolve_target("x86").tvm)(rebirth_tvm.load(model))
    (panels,) = [c for c in _constants(fused) if c.ndim == 3]
    w = numpy_helper.to_array(model.graph.initializer[0])  # [columns, depth]
    assert panels.shape == (2, 32, 64)
    np.testing.assert_array_equal(panels[1, 5], w[64:128, 5])  # panel 1, input 5: columns 64..127


def _constants(mod) -> list:
    found = []
    for _, func in mod.functions_items():
        if isinstance(func, tvm.relax.Function):
            tvm.relax.analysis.post_order_visit(func, lambda e: found.append(e.value.numpy()) if isinstance(e, tvm.ir.GenericConst) else None)
    return found


def stem_model(classes: int = 64):
    """The narrow first conv (3→32, 7×7 stride 2) + bias → ReLU → max pool → conv 32→``classes``
    + bias → ReLU: a SqueezeNet's stem and, with 1000 classes, its conv classifier."""
    r = np.random.default_rng(0)
    inits = [numpy_helper.from_array(a, n) for n, a in [
        ("w1", r.normal(0, 0.2, (32, 3, 7, 7)).astype(np.float32)), ("b1", r.normal(0, 0.1, 32).astype(np.float32)),
        ("w2", r.normal(0, 0.2, (classes, 32, 1, 1)).astype(np.float32)), ("b2", r.normal(0, 0.1, classes).astype(np.float32))]]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], kernel_shape=[7, 7], strides=[2, 2], pads=[3, 3, 3, 3]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[3, 3], strides=[2, 2]),
             helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], kernel_shape=[1, 1]),
             helper.make_node("Relu", ["c2"], ["y"])]
    graph = helper.make_graph(nodes, "stem", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 33, 33])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))


def test_the_narrow_first_conv_keeps_its_bias_relu_and_pool_blocked():
    # The 3-channel conv is blocked on its own (its input does not divide) and its output used
    # to go back to NCHW for the bias add, the ReLU and the pool (a quarter of SqueezeNet 1.0's
    # time in its stem); the per-channel bias is re-laid out instead, so nothing leaves the
    # blocked layout between the two convs: feature-map transforms only at the input and output.
    from rebirth_tvm.backend.kernels.layout import block_remaining_convs, blocked_layout, keep_slices_blocked

    model = stem_model()
    mod = relax_transform_fold(rebirth_tvm.load(model))
    with tvm.target.Target("llvm"):
        kept = keep_slices_blocked()(block_remaining_convs(16)(blocked_layout(16)(mod)))
    assert data_transforms(kept) == 2, kept["main"]
    built = check_against_onnxruntime(model)
    assert built.kernels["blocked_conv"] == 2 and built.kernels["parallel_loops"] == 3, built.kernels  # in, pool, out


def relax_transform_fold(mod):
    from tvm import relax

    return relax.transform.FoldConstant()(mod)


def test_a_1000_class_conv_is_padded_instead_of_narrowing_the_network_block():
    # 1000 output channels divide by 8, not 16: padding them to 1008 zero filters costs 0.8%
    # more work in one conv; halving the block costs every conv half its vector width.
    from rebirth_tvm.backend.kernels.layout import network_block

    assert network_block(rebirth_tvm.load(stem_model(1000)), 16) == 16
    assert network_block(rebirth_tvm.load(conv_model(16, 40, 9, 3)), 16) == 8  # 40 → 48 would be 20% more
    built = check_against_onnxruntime(stem_model(1000))
    assert built.kernels["channel_block"] == 16


def test_arm_packed_dense_under_qemu_matches_the_x86_build():
    # The packed dense on aarch64 (NEON: panels of 64 floats take 16 of its 32 registers), run by
    # the native runner under qemu-aarch64, against the x86 build (itself checked above).
    arm = check_arm_build_under_qemu(dense_model(1, 200, 128))
    assert arm.kernels.get("packed_dense") == 1, arm.kernels


def test_a_split_becomes_one_slice_per_part():
    from tvm import relax

    from rebirth_tvm.backend.kernels.layout import split_as_slices

    def module(parts):
        x = relax.Var("x", relax.TensorType((1, 40, 5, 5), "float32"))
        bb = relax.BlockBuilder()
        with bb.function("main", [x]):
            with bb.dataflow():
                pieces = bb.emit(parts(x))
                out = bb.emit_output(relax.op.add(relax.TupleGetItem(pieces, 0), relax.TupleGetItem(pieces, 1)))
            bb.emit_func_output(out)
        return bb.get()

    before = module(lambda x: relax.op.split(x, [8, 16], axis=1))
    expected = module(lambda x: relax.Tuple([relax.op.strided_slice(x, axes=[1], begin=[lo], end=[hi])
                                             for lo, hi in ((0, 8), (8, 16), (16, 40))]))
    tvm.ir.assert_structural_equal(split_as_slices(before), expected)
    even = module(lambda x: relax.op.split(x, 2, axis=1))  # sections by count: TVM's own
    tvm.ir.assert_structural_equal(split_as_slices(even), even)
