"""Retraining hooks: im2col is a real convolution; least squares recovers what is recoverable."""

import numpy as np
import pytest
from relax_builders import module, run
from tvm import relax

from rebirth_tvm.errors import RebirthError
from rebirth_tvm.hooks import ConvGeometry, LeastSquaresHook, RetrainSite, conv2d_numpy, resolve_hook


@pytest.mark.parametrize("kernel, stride, padding", [
    ((1, 1), (1, 1), (0, 0, 0, 0)), ((3, 3), (2, 2), (1, 1, 1, 1)), ((5, 3), (1, 2), (2, 0, 1, 1)), ((7, 7), (4, 4), (3, 3, 2, 2)),
])
def test_im2col_conv_equals_tvm_conv(kernel, stride, padding):
    r = np.random.default_rng(0)
    g = ConvGeometry(3, 5, kernel, stride, padding)
    x = r.standard_normal((2, 3, 17, 15)).astype("float32")
    w = r.standard_normal((5, 3, *kernel)).astype("float32")
    b = r.standard_normal(5).astype("float32")
    mod = module(x.shape, lambda bb, v: bb.emit(relax.op.add(
        bb.emit(relax.op.nn.conv2d(v, relax.const(w), strides=stride, padding=padding)), relax.const(b.reshape(1, -1, 1, 1)))))
    ref = run(mod, x)
    out = conv2d_numpy(x, w, b, g)
    assert out.shape == ref.shape
    assert np.max(np.abs(out - ref)) <= 1e-5 * np.max(np.abs(ref))


def avg_pool_numpy(y, k, s):
    n, c, h, w = y.shape
    oh, ow = (h - k) // s + 1, (w - k) // s + 1
    win = np.lib.stride_tricks.sliding_window_view(y, (k, k), axis=(2, 3))[:, :, ::s, ::s][:, :, :oh, :ow]
    return win.mean(axis=(-1, -2))


def test_least_squares_recovers_conv_then_avg_pool_exactly():
    """conv 3x3/s1 → avg pool 2x2/s2 is one 4x4/s2 conv; lstsq finds it from activations alone."""
    r = np.random.default_rng(1)
    w = r.standard_normal((4, 3, 3, 3))
    b = r.standard_normal(4)
    conv_g = ConvGeometry(3, 4, (3, 3), (1, 1), (0, 0, 0, 0))
    teacher = lambda x: avg_pool_numpy(conv2d_numpy(x, w, b, conv_g), 2, 2)  # noqa: E731
    merged = ConvGeometry(3, 4, (4, 4), (2, 2), (0, 0, 0, 0))  # kernel covers the receptive field
    train = r.standard_normal((8, 3, 14, 14))
    site = RetrainSite("conv+pool", merged, np.zeros((4, 3, 4, 4)), np.zeros(4), train, teacher(train), teacher)
    weight, bias = LeastSquaresHook()(site)
    held_out = r.standard_normal((4, 3, 14, 14))
    ref = teacher(held_out)
    out = conv2d_numpy(held_out, weight, bias, merged)
    assert out.shape == ref.shape
    assert np.max(np.abs(out - ref)) <= 1e-5 * np.max(np.abs(ref))


def test_too_few_samples_is_a_clear_error():
    g = ConvGeometry(8, 4, (3, 3))
    x = np.zeros((1, 8, 3, 3))
    site = RetrainSite("tiny", g, np.zeros((4, 8, 3, 3)), np.zeros(4), x, np.zeros((1, 4, 1, 1)))
    with pytest.raises(RebirthError, match="more calibration images"):
        LeastSquaresHook()(site)


def test_wrong_channel_count_is_a_clear_error():
    g = ConvGeometry(3, 4, (1, 1))
    site = RetrainSite("gray", g, np.zeros((4, 3, 1, 1)), np.zeros(4), np.zeros((2, 1, 8, 8)), np.zeros((2, 4, 8, 8)))
    with pytest.raises(RebirthError, match="1 channels, the conv expects 3"):
        LeastSquaresHook()(site)


def test_resolve_hook():
    assert isinstance(resolve_hook("lstsq"), LeastSquaresHook)
    custom = lambda site: (site.init_weight, site.init_bias)  # noqa: E731
    assert resolve_hook(custom) is custom
    with pytest.raises(RebirthError, match="unknown hook"):
        resolve_hook("magic")
