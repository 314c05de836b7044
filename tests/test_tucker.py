"""TuckerDecompose: HOSVD factors, exact at full rank, relearned below it, refusals with reasons."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import rebirth_tvm
from rebirth_tvm.passes import TuckerDecompose, record_sites
from rebirth_tvm.passes.tucker_decompose import energy_rank, hosvd_tucker2, mode_singular_values, reconstruct
from rebirth_tvm.frontend.reference import onnxruntime_outputs
from rebirth_tvm.pipeline.report import op_counts

TOL = 1e-5  # full-rank Tucker only reassociates float sums


def two_convs(channels=32, size=16, seed=0) -> onnx.ModelProto:
    """conv 3x3 (16→C) + bias → ReLU → conv 3x3 (C→C, stride 2) + bias: weights with a decaying spectrum."""
    r = np.random.default_rng(seed)

    def kernel(o, i):
        # Low-rank-ish, like trained kernels: most energy in a few directions per mode.
        u, v = np.linalg.qr(r.standard_normal((o, o)))[0], np.linalg.qr(r.standard_normal((i, i)))[0]
        core = r.standard_normal((o, i, 3, 3)) * (0.7 ** np.arange(o))[:, None, None, None] * (0.7 ** np.arange(i))[None, :, None, None]
        return np.einsum("rshw,or,is->oihw", core, u, v).astype(np.float32) * 3

    inits = [numpy_helper.from_array(a, n) for n, a in [
        ("w1", kernel(channels, 16)), ("b1", r.normal(0, 0.1, channels).astype(np.float32)),
        ("w2", kernel(channels, channels)), ("b2", r.normal(0, 0.1, channels).astype(np.float32))]]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2], name="conv2")]
    graph = helper.make_graph(nodes, "two_convs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, size, size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, size // 2, size // 2])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def kernel_error(weight, rank_in, rank_out):
    return np.linalg.norm(reconstruct(*hosvd_tucker2(weight, rank_in, rank_out)) - weight) / np.linalg.norm(weight)


def test_reconstruction_error_decreases_with_rank_and_vanishes_at_full_rank():
    weight = numpy_helper.to_array(two_convs().graph.initializer[2]).astype(np.float64)
    errors = [kernel_error(weight, r, r) for r in (1, 2, 4, 8, 16, 24, 32)]
    assert all(a >= b - 1e-12 for a, b in zip(errors, errors[1:])), errors
    assert errors[0] > 0.1 and errors[-1] < 1e-12
    # Either mode alone, too.
    assert kernel_error(weight, 32, 4) > kernel_error(weight, 32, 8) > kernel_error(weight, 32, 32)
    # A stem-like kernel whose unfolding has fewer columns than channels (3·3·3 < 64) stays exact.
    stem = np.random.default_rng(0).standard_normal((64, 3, 3, 3))
    assert kernel_error(stem, 3, 64) < 1e-12


def test_energy_rank_keeps_the_asked_fraction():
    s = np.array([3.0, 2.0, 1.0, 0.0])  # energies 9, 4, 1 of 14
    assert [energy_rank(s, e) for e in (0.5, 9 / 14, 0.9, 13 / 14, 1.0)] == [1, 1, 2, 2, 3]
    s_out, s_in = mode_singular_values(np.ones((4, 2, 3, 3)))
    assert len(s_out) == 4 and len(s_in) == 2


def test_full_rank_is_exact_against_onnxruntime():
    model = two_convs()
    x = np.random.default_rng(1).standard_normal((1, 16, 16, 16)).astype(np.float32)
    ref = onnxruntime_outputs(model, {"x": x})[0]
    with record_sites() as sites:
        out = TuckerDecompose(ranks={"*": (1.0, 1.0)}, allow_more_work=True)(rebirth_tvm.load(model))
    assert [(s.site, s.status, s.exact) for s in sites] == [("conv1", "rewritten", True), ("conv2", "rewritten", True)]
    assert op_counts(out)["relax.nn.conv2d"] == 6
    y = rebirth_tvm.build(out, "x86").run(x)
    assert np.max(np.abs(y - ref)) <= TOL * np.max(np.abs(ref))


def test_low_rank_is_relearned_and_reported():
    model = two_convs()
    r = np.random.default_rng(2)
    calib = r.standard_normal((20, 1, 16, 16, 16)).astype(np.float32)[:, 0]
    tucker = TuckerDecompose(calib, ranks={"conv2": (8, 8)}, energy=1.0)
    out = tucker(rebirth_tvm.load(model))
    by_site = {s.site: s for s in tucker.sites}
    site = by_site["conv2"]
    assert site.status == "rewritten" and not site.exact
    assert site.detail["ranks"] == [8, 8] and site.detail["macs_after"] < site.detail["macs_before"]
    # The relearned last 1x1 halves HOSVD's error (measured 0.0029 against 0.0061), far below a
    # constant (0.87).
    assert site.detail["fidelity"]["rel_mse"] < 0.7 * site.detail["fidelity_initial"]["rel_mse"]
    assert site.detail["fidelity"]["rel_mse"] < 0.1 * site.detail["fidelity_channel_mean"]["rel_mse"]
    assert site.detail["weight_error"] == pytest.approx(kernel_error(numpy_helper.to_array(model.graph.initializer[2]).astype(np.float64), 8, 8))
    # conv1 at full energy (ranks 16, 32) would add MACs: refused, with the numbers.
    assert by_site["conv1"].status == "refused" and "would not save MACs" in by_site["conv1"].reason
    # End to end the low-rank model is close to the original on held-out inputs.
    x = r.standard_normal((1, 16, 16, 16)).astype(np.float32)
    ref = onnxruntime_outputs(model, {"x": x})[0]
    y = rebirth_tvm.build(out, "x86").run(x)
    assert np.sum((y - ref) ** 2) / np.sum(ref ** 2) < 0.05


def test_low_rank_without_calibration_is_refused():
    tucker = TuckerDecompose(ranks={"*": (4, 4)})
    tucker(rebirth_tvm.load(two_convs()))
    assert {s.status for s in tucker.sites} == {"refused"}
    assert all("needs calibration inputs" in s.reason for s in tucker.sites)


def test_grouped_conv_is_refused_and_left_alone():
    model = two_convs()
    conv = model.graph.node[2]
    conv.attribute.append(helper.make_attribute("group", 4))
    model.graph.initializer[2].CopyFrom(numpy_helper.from_array(np.ones((32, 8, 3, 3), np.float32), "w2"))
    tucker = TuckerDecompose(ranks={"*": (1.0, 1.0)}, allow_more_work=True)
    tucker(rebirth_tvm.load(model))
    assert {s.site: s.reason for s in tucker.sites if s.status == "refused"} == {"conv2": "grouped conv (groups=4)"}


def test_a_pass_object_reused_on_another_model_decomposes_that_model():
    # Factors are cached per site name within a run; a second model with the same names must
    # get its own (an earlier version reused the first model's and still called them exact).
    tucker = TuckerDecompose(ranks={"*": (1.0, 1.0)}, allow_more_work=True)
    tucker(rebirth_tvm.load(two_convs(seed=0)))
    other = two_convs(seed=1)
    out = tucker(rebirth_tvm.load(other))
    x = np.random.default_rng(3).standard_normal((1, 16, 16, 16)).astype(np.float32)
    ref = onnxruntime_outputs(other, {"x": x})[0]
    assert np.max(np.abs(rebirth_tvm.build(out, "x86").run(x) - ref)) <= TOL * np.max(np.abs(ref))
    assert all(s.detail["weight_error"] < 1e-12 for s in tucker.sites)


def test_energy_ranks_round_up_to_whole_channel_blocks():
    # A rank the CPU kernels' channel block does not divide runs outside the blocked layout:
    # rank_multiple rounds the energy's ranks up (capped at the channels); given ranks stay as given.
    model = two_convs(channels=48)
    calib = np.random.default_rng(4).standard_normal((12, 16, 16, 16)).astype(np.float32)
    plain = TuckerDecompose(calib, energy=0.6)
    plain(rebirth_tvm.load(model))
    blocked = TuckerDecompose(calib, energy=0.6, rank_multiple=16)
    blocked(rebirth_tvm.load(model))
    ragged = {s.site: s.detail["ranks"] for s in plain.sites if s.status == "rewritten"}
    rounded = {s.site: s.detail["ranks"] for s in blocked.sites if s.status == "rewritten"}
    assert "conv2" in ragged and "conv2" in rounded
    assert any(r % 16 for r in ragged["conv2"])  # the energy alone gives ragged ranks here
    assert rounded["conv2"] == [min(48, -(-r // 16) * 16) for r in ragged["conv2"]]
    assert {s.site: s.detail.get("energy_ranks") for s in blocked.sites if s.status == "rewritten"}["conv2"] == ragged["conv2"]
    given = TuckerDecompose(calib, ranks={"conv2": (5, 7)}, rank_multiple=16)
    given(rebirth_tvm.load(model))
    assert {s.site: s.detail["ranks"] for s in given.sites if s.status == "rewritten"}["conv2"] == [5, 7]


@pytest.mark.parametrize("bad", [0, -8, 2.5])
def test_a_bad_rank_multiple_is_a_one_line_error(bad):
    from rebirth_tvm.core.errors import OptionError

    with pytest.raises(OptionError, match="rank_multiple must be a positive integer"):
        TuckerDecompose(rank_multiple=bad)
