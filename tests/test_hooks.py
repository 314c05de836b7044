"""Retraining hooks: im2col is a real convolution; least squares recovers what is recoverable."""

import numpy as np
import pytest
from relax_builders import module, run
from tvm import relax

from rebirth_tvm.core.errors import RebirthError
from rebirth_tvm.relearn.hooks import ConvGeometry, LeastSquaresHook, RetrainSite, SGDHook, conv2d_numpy, resolve_hook


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


def test_underdetermined_site_is_fitted_by_cross_validated_ridge_and_says_so():
    # 16 samples of one 3x3 patch each: 16 rows for 73 unknowns per channel.
    r = np.random.default_rng(3)
    g = ConvGeometry(8, 4, (3, 3))
    w, b = r.standard_normal((4, 8, 3, 3)), r.standard_normal(4)
    x = r.standard_normal((16, 8, 3, 3))
    site = RetrainSite("deep", g, np.zeros((4, 8, 3, 3)), np.zeros(4), x, conv2d_numpy(x, w, b, g))
    hook = LeastSquaresHook()
    weight, bias = hook(site)
    assert hook.last_fit["underdetermined"] and hook.last_fit == {**hook.last_fit, "patches": 16, "unknowns_per_channel": 73}
    assert hook.last_fit["ridge"] in hook.ridges + (1e-1, 1.0)
    held = r.standard_normal((64, 8, 3, 3))
    ref = conv2d_numpy(held, w, b, g)
    # Better than predicting the mean (relative error 1), worse than exact: what 16 rows allow.
    error = np.sum((conv2d_numpy(held, weight, bias, g) - ref) ** 2) / np.sum((ref - ref.mean()) ** 2)
    assert 0 < error < 1


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


def relu_max_pool_site(seed=1, n=64):
    """conv 3x3 → max pool 2x2 → ReLU, merged into one 4x4/s2 conv (+ReLU): not linear."""
    r = np.random.default_rng(seed)
    w, b = r.standard_normal((4, 3, 3, 3)), r.standard_normal(4)
    conv_g = ConvGeometry(3, 4, (3, 3))

    def pre_activation(x):
        y = conv2d_numpy(x, w, b, conv_g)
        return np.lib.stride_tricks.sliding_window_view(y, (2, 2), axis=(2, 3))[:, :, ::2, ::2].max(axis=(-1, -2))

    merged = ConvGeometry(3, 4, (4, 4), (2, 2))
    x = r.standard_normal((n, 3, 14, 14)).astype("float32")
    site = RetrainSite("conv+pool+relu", merged, np.zeros((4, 3, 4, 4), "float32"), np.zeros(4, "float32"),
                       x, pre_activation(x).astype("float32"), pre_activation, "relu")
    return site, pre_activation


def test_sgd_hook_learns_from_the_initial_weights():
    site, _ = relu_max_pool_site()
    hook = SGDHook(start="init", epochs=8)
    hook(site)
    assert hook.history[0] == pytest.approx(1.0, rel=1e-3)  # zero weights: the whole target is error
    assert hook.history[-1] < 0.2
    assert all(later <= earlier for earlier, later in zip(hook.history, hook.history[1:]))


def test_sgd_hook_from_least_squares_is_never_worse_on_its_objective():
    site, pre_activation = relu_max_pool_site()
    hook = SGDHook(start="lstsq", epochs=6)
    weight, bias = hook(site)
    assert hook.history[-1] <= hook.history[0]
    held_out = np.random.default_rng(9).standard_normal((16, 3, 14, 14))
    target = np.maximum(pre_activation(held_out), 0)

    def post_relu_error(w, b):
        out = np.maximum(conv2d_numpy(held_out, w, b, site.geometry), 0)
        return np.sum((out - target) ** 2) / np.sum(target ** 2)

    lstsq = LeastSquaresHook()(site)
    assert post_relu_error(weight, bias) <= post_relu_error(*lstsq) * 1.01


def test_resolve_sgd():
    assert isinstance(resolve_hook("sgd"), SGDHook)


def _rectified_site(seed=2, samples=12):
    """A site whose targets are already rectified (what an LRN or a chain site sees): a conv's
    output after ReLU, with a max pool in between, so no 3×3 conv reproduces it exactly."""
    r = np.random.default_rng(seed)
    g = ConvGeometry(4, 6, (3, 3), (1, 1), (1, 1, 1, 1))
    w, b = r.standard_normal((6, 4, 3, 3)), r.standard_normal(6) - 3.0  # most outputs rectified, as in a real net

    def teacher(x):
        z = conv2d_numpy(x, w, b, g)
        pooled = np.maximum.reduce([np.roll(z, s, axis=a) for a in (2, 3) for s in (0, 1)])
        return np.maximum(pooled, 0)

    x = r.standard_normal((samples, 4, 10, 10))
    return g, teacher, RetrainSite("rectified", g, np.zeros((6, 4, 3, 3)), np.zeros(6), x, teacher(x), teacher, "relu")


def test_hinge_targets_fit_what_the_relu_passes_on_better_than_plain_least_squares():
    g, teacher, site = _rectified_site()
    held = np.random.default_rng(9).standard_normal((6, 4, 10, 10))
    ref = teacher(held)

    def passed_on_error(hook):
        weight, bias = hook(site)
        return float(np.sum((np.maximum(conv2d_numpy(held, weight, bias, g), 0) - ref) ** 2) / np.sum(ref ** 2)), hook

    plain, _ = passed_on_error(LeastSquaresHook(hinge_steps=0))
    hinged, hook = passed_on_error(LeastSquaresHook())
    assert hook.last_fit["hinge_steps"] >= 1
    assert hinged < plain, (hinged, plain)  # measured: 0.3635 against 0.3647 (a pool in between limits any conv)


def test_hinge_steps_never_increase_the_hinge_loss():
    g, _, site = _rectified_site(seed=3)
    t = site.targets

    def hinge_loss(steps):
        weight, bias = LeastSquaresHook(ridges=1e-6, hinge_steps=steps)(site)
        y = conv2d_numpy(site.inputs, weight, bias, g)
        return float(np.sum(np.where(t > 0, (y - t) ** 2, np.maximum(y, 0) ** 2)))

    losses = [hinge_loss(steps) for steps in range(4)]
    assert all(b <= a * (1 + 1e-9) for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < losses[0]


def test_no_hinge_without_a_relu():
    g, teacher, site = _rectified_site()
    hook = LeastSquaresHook()
    hook(RetrainSite(site.name, g, site.init_weight, site.init_bias, site.inputs, site.targets, teacher, None))
    assert "hinge_steps" not in hook.last_fit
