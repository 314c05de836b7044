"""MergeConvPool: exact recovery where it exists, fidelity that improves, refusals, hooks."""

import numpy as np
import pytest
from photos import photo_batch
from relax_builders import conv, conv_weights, count_ops, module, rel_err, rng, run
from tvm import relax

from rebirth_tvm.relearn.hooks import conv2d_numpy
from rebirth_tvm.passes import MergeConvPool

SHAPE = (1, 3, 16, 16)


def conv_pool(pool="avg", relu=False, pool_kw=None, conv_kw=None, out_ch=6, extra_use=False):
    r = rng(7)
    conv_kw = conv_kw or {}
    w = conv_weights(r, out_ch, 3, conv_kw.pop("k", 3), conv_kw.get("groups", 1))
    b = r.normal(0, 0.1, out_ch).astype("float32")
    pool_kw = pool_kw or dict(pool_size=2, strides=2)

    def body(bb, x):
        y = bb.emit(relax.op.add(bb.emit(conv(x, relax.const(w), **conv_kw)), relax.const(b.reshape(1, -1, 1, 1))))
        z = bb.emit(relax.op.nn.relu(y)) if relu else y
        fn = relax.op.nn.avg_pool2d if pool == "avg" else relax.op.nn.max_pool2d
        p = bb.emit(fn(z, **pool_kw))
        if extra_use:
            return relax.Tuple([p, y])
        return p

    return module(SHAPE, body)


def calib(n=24, seed=3):
    return np.random.default_rng(seed).standard_normal((n, *SHAPE[1:])).astype("float32")


def test_conv_then_avg_pool_is_recovered_exactly():
    before = conv_pool("avg")
    merge = MergeConvPool(calib(), hook="lstsq", pool_kernel="cover")
    after = merge(before)
    assert count_ops(after, "relax.nn.avg_pool2d") == 0 and count_ops(after, "relax.nn.conv2d") == 1
    site = merge.sites[0]
    assert site.status == "rewritten" and not site.exact
    assert site.detail["fidelity"]["rel_mse"] <= 1e-10
    held_out = calib(4, seed=11)
    for x in held_out:
        assert rel_err(run(after, x[None]), run(before, x[None])) <= 1e-5


@pytest.mark.parametrize("kernel", ["cover", "keep"])
def test_relu_max_pool_ceil_mode_keeps_shape_and_relearning_improves(kernel, tmp_path):
    before = conv_pool("max", relu=True, pool_kw=dict(pool_size=3, strides=2, ceil_mode=True), conv_kw=dict(k=3, pad=1))
    # Photos: on standard-normal noise a max pool is learned barely better than a constant.
    merge = MergeConvPool(photo_batch(tmp_path / "img", SHAPE, count=30), pool_kernel=kernel)
    after = merge(before)
    assert count_ops(after, "relax.nn.max_pool2d") == 0
    assert count_ops(after, "relax.nn.relu") == 1
    x = calib(1, seed=5)
    # 16x16, 3x3/s2 ceil-mode pool → 8x8: the merged conv must reproduce exactly that shape.
    assert run(after, x).shape == run(before, x).shape == (1, 6, 8, 8)
    site = merge.sites[0]
    fidelity, initial, constant = (site.detail[k]["rel_mse"] for k in ("fidelity", "fidelity_initial", "fidelity_channel_mean"))
    # Strictly better than the subsampling conv it starts from (no fallback) and than a constant:
    # measured cover 0.04 / keep 0.12 against 0.21 initial (keep) and 0.55 constant.
    assert not site.detail["kept_initial"] and fidelity < 0.7 * initial and fidelity < 0.5 * constant, (fidelity, initial, constant)


def test_custom_hook_weights_end_up_in_the_module():
    seen = {}

    def hook(site):
        seen["site"] = site
        w = np.full(site.init_weight.shape, 0.01)
        return w, np.arange(site.geometry.out_channels, dtype=np.float64)

    before = conv_pool("avg")
    after = MergeConvPool(calib(), hook=hook)(before)
    site = seen["site"]
    assert site.inputs.shape[1:] == SHAPE[1:] and site.targets.shape[1:] == (6, 7, 7)  # 16 → conv 14 → pool 7
    x = calib(1, seed=9)
    expected = conv2d_numpy(x, np.full(site.init_weight.shape, 0.01), np.arange(6.0), site.geometry)
    assert rel_err(run(after, x), expected) <= 1e-5


def test_refuses_conv_output_read_elsewhere():
    before = conv_pool("avg", extra_use=True)
    merge = MergeConvPool(calib())
    after = merge(before)
    assert count_ops(after, "relax.nn.avg_pool2d") == 1
    assert "also read elsewhere" in merge.sites[0].reason


def test_refuses_grouped_conv():
    before = conv_pool("max", conv_kw=dict(groups=3))
    merge = MergeConvPool(calib())
    merge(before)
    assert merge.sites[0].status == "refused" and "grouped" in merge.sites[0].reason
