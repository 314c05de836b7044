"""DistributePoolOverConcat (exact) and MergeInceptionBranches (relearned, work-aware)."""

import numpy as np
import tvm
from onnx_builders import inception
from photos import channel_mean_error, module_outputs, original_outputs, photo_batch, relative_error
from relax_builders import count_ops, rel_err, run

import rebirth_tvm
from rebirth_tvm.passes import DistributePoolOverConcat, MergeInceptionBranches, StreamlineMerge
from rebirth_tvm.frontend.reference import onnxruntime_outputs


def calibration(n=24, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, 16, 16)).astype("float32")


def test_distribute_pool_over_concat_is_exact():
    model = inception()
    mod = rebirth_tvm.load(model)
    distribute = DistributePoolOverConcat()
    after = distribute(mod)
    assert [(s.site, s.status) for s in distribute.sites] == [("pool3", "rewritten")]
    assert count_ops(after, "relax.nn.max_pool2d") == 1 + 4  # the pool branch's own pool + one per branch
    x = calibration(1, seed=5)
    assert rel_err(run(after, x), onnxruntime_outputs(model, {"x": x})[0]) <= 1e-6


def test_distribute_pool_leaves_a_shared_concat_alone():
    mod = rebirth_tvm.load(inception(pooled=False))
    distribute = DistributePoolOverConcat()
    tvm.ir.assert_structural_equal(distribute(mod), mod)
    # The pool branch's pool reads the stem, not a concat: not a site at all.
    assert distribute.sites == []


def photo_calibration(tmp_path, count=30):
    """Photos (the sites learn little from noise that a constant does not give: bpool_proj on
    standard-normal inputs 0.11 against the per-channel mean's 0.12)."""
    return photo_batch(tmp_path / "img", (1, 3, 16, 16), count=count)


def held_out_errors(model, mod, seen, held):
    """(relative error of ``mod`` against the original on ``held``, the same for a constant that
    knows the original's per-channel mean output on ``seen``)."""
    refs = original_outputs(model, held)
    outs = module_outputs(mod, held)
    assert outs.shape == refs.shape
    return relative_error(outs, refs), channel_mean_error(original_outputs(model, seen), refs)


def assert_beats_baselines(site, margin=0.6):
    """Relearned, not the fallback, and well below both the initial weights and a constant."""
    fidelity, initial, constant = (site.detail[k]["rel_mse"] for k in ("fidelity", "fidelity_initial", "fidelity_channel_mean"))
    assert not site.detail["kept_initial"], site.site
    assert fidelity < margin * min(initial, constant), (site.site, fidelity, initial, constant)


def test_default_merges_only_what_does_not_add_work(tmp_path):
    merge = MergeInceptionBranches(photo_calibration(tmp_path))
    after = merge(rebirth_tvm.load(inception(pooled=False)))
    status = {s.site: s for s in merge.sites}
    # The pool branch's max pool is gone (1x1 keeps the MACs); relearning beat both baselines
    # (measured 0.13 against 0.27 initial, 0.51 constant).
    assert status["bpool_proj"].status == "rewritten"
    assert_beats_baselines(status["bpool_proj"])
    assert status["bpool_proj"].detail["macs_after"] == status["bpool_proj"].detail["macs_before"]
    assert count_ops(after, "relax.nn.max_pool2d") == 0
    # Reduce merges read the 16-channel module input: more MACs, so refused with the numbers.
    for name in ("b3x3", "b5x5"):
        assert status[name].status == "refused" and "would raise MACs" in status[name].reason


def test_allow_more_work_merges_reduce_branches_and_stays_close_to_the_original(tmp_path):
    model = inception(pooled=False)
    mod = rebirth_tvm.load(model)
    images = photo_calibration(tmp_path, count=36)
    seen, held = images[:30], images[30:]
    merge = MergeInceptionBranches(seen, allow_more_work=True)
    after = merge(mod)
    rewritten = {s.site: s for s in merge.sites if s.status == "rewritten"}
    assert set(rewritten) == {"b3x3", "b5x5", "bpool_proj"}
    assert rewritten["b5x5"].detail["macs_after"] > rewritten["b5x5"].detail["macs_before"]
    for site in rewritten.values():  # measured b3x3 0.03, b5x5 0.04 against 0.75 and 0.45 constant
        assert_beats_baselines(site)
    # Two 1x1 reduces and the pool are gone: stem + 1x1 + merged 3x3 + merged 5x5 + projection.
    assert count_ops(after, "relax.nn.conv2d") == 5 and count_ops(after, "relax.nn.max_pool2d") == 0
    # The module's output on photos no site saw: close to onnxruntime's on the original, and much
    # closer than a constant (each channel's mean output).
    error, constant = held_out_errors(model, after, seen, held)
    assert error < 0.25 * constant, (error, constant)


def test_full_rebirth_of_an_inception_with_pool_leaves_no_pool(tmp_path):
    """Distribute pool3 over the branches, then streamline and branch merges: no pool is left,
    and the module still computes something close to the original (not just its shape)."""
    model = inception()
    images = photo_calibration(tmp_path, count=38)
    seen, held = images[:32], images[32:]
    mod = DistributePoolOverConcat()(rebirth_tvm.load(model))
    mod = StreamlineMerge(seen)(mod)
    mod = MergeInceptionBranches(seen, allow_more_work=True)(mod)
    assert count_ops(mod, "relax.nn.max_pool2d") == 0
    error, constant = held_out_errors(model, mod, seen, held)
    assert error < 0.5 * constant, (error, constant)
