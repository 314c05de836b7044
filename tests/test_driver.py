"""The one relearning driver: one held-out split, one fidelity measure, one "never worse" rule,
one error limit, whatever the rewrite (merge, Tucker restore conv, classifier refit)."""

import numpy as np
import pytest
import tvm
from tvm import relax

from rebirth_tvm import RebirthError
from rebirth_tvm.core.conv_math import ConvGeometry, conv2d_numpy
from rebirth_tvm.relearn import driver
from rebirth_tvm.relearn.hooks import LeastSquaresHook


def linear_site(samples=40, noise=0.0, seed=0):
    """A 1×1 conv site whose targets a conv can reach exactly (plus optional noise)."""
    rng = np.random.default_rng(seed)
    geometry = ConvGeometry(3, 4, (1, 1))
    weight, bias = rng.standard_normal((4, 3, 1, 1)), rng.standard_normal(4)
    inputs = rng.standard_normal((samples, 3, 5, 5)).astype(np.float32)
    targets = conv2d_numpy(inputs, weight, bias, geometry) + noise * rng.standard_normal((samples, 4, 5, 5))
    return geometry, inputs, targets


def test_held_out_is_the_last_fifth_and_at_least_one():
    assert [driver.held_out_count(n) for n in (1, 4, 5, 10, 99)] == [1, 1, 1, 2, 19]


def test_least_squares_recovers_a_reachable_conv_and_beats_the_baselines():
    geometry, inputs, targets = linear_site()
    zero_w, zero_b = np.zeros((4, 3, 1, 1)), np.zeros(4)
    fit = driver.fit(LeastSquaresHook(), "site", geometry, zero_w, zero_b, inputs, targets, relu=False)
    assert isinstance(fit, driver.Fit) and not fit.kept_initial
    assert fit.after["rel_mse"] < 1e-6 < fit.before["rel_mse"]
    assert fit.after["rel_mse"] < 1e-3 * fit.detail["fidelity_channel_mean"]["rel_mse"]
    assert fit.detail["held_out"] == 8 and fit.detail["calibration"] == 40


def test_the_hook_never_sees_the_held_out_samples():
    geometry, inputs, targets = linear_site()
    seen = []

    def spy(site):
        seen.append(len(site.inputs))
        return site.init_weight, site.init_bias

    driver.fit(spy, "site", geometry, np.zeros((4, 3, 1, 1)), np.zeros(4), inputs, targets, relu=False)
    assert seen == [32]


def test_a_builtin_hook_worse_than_the_start_gives_way_to_the_initial_weights():
    geometry, inputs, targets = linear_site()
    start = driver.fit(LeastSquaresHook(), "site", geometry, np.zeros((4, 3, 1, 1)), np.zeros(4), inputs, targets, relu=False)

    class Worse(LeastSquaresHook):  # a built-in hook (by type) whose fit is bad
        def __call__(self, site):
            return -site.init_weight, site.init_bias + 1.0

    fit = driver.fit(Worse(), "site", geometry, start.weight, start.bias, inputs, targets, relu=False)
    assert fit.kept_initial and fit.after == fit.before
    np.testing.assert_array_equal(fit.weight, start.weight)


def test_a_users_hook_is_used_as_given_even_when_worse():
    geometry, inputs, targets = linear_site()
    start = driver.fit(LeastSquaresHook(), "site", geometry, np.zeros((4, 3, 1, 1)), np.zeros(4), inputs, targets, relu=False)
    fit = driver.fit(lambda site: (-site.init_weight, site.init_bias + 1.0), "site", geometry, start.weight, start.bias,
                     inputs, targets, relu=False)
    assert not fit.kept_initial and fit.after["rel_mse"] > fit.before["rel_mse"]
    np.testing.assert_array_equal(fit.weight, -start.weight)


def test_the_error_limit_refuses_with_the_numbers():
    geometry, inputs, targets = linear_site(noise=3.0)
    result = driver.fit(LeastSquaresHook(), "site", geometry, np.zeros((4, 3, 1, 1)), np.zeros(4), inputs, targets,
                        relu=False, max_error=0.01)
    assert isinstance(result, driver.Refusal)
    assert "stays above the limit 0.01" in result.reason and result.detail["fidelity"]["rel_mse"] > 0.01


def test_fidelity_after_the_relu_ignores_what_the_relu_removes():
    ref = np.array([1.0, -5.0, 2.0])
    out = np.array([1.0, -1.0, 2.0])  # wrong only where the ReLU zeroes both
    assert driver.passed_on_fidelity(out, ref, relu=True)["rel_mse"] == 0
    assert driver.passed_on_fidelity(out, ref, relu=False)["rel_mse"] > 0


def test_a_hook_with_wrong_shapes_is_one_error_naming_it():
    geometry, inputs, targets = linear_site()
    with pytest.raises(RebirthError, match="hook .*<lambda> returned weight \\[2\\] / bias \\[4\\] for site s1"):
        driver.fit(lambda site: (np.zeros(2), site.init_bias), "s1", geometry, np.zeros((4, 3, 1, 1)), np.zeros(4),
                   inputs, targets, relu=False)


@pytest.mark.parametrize("relu", [False, True])
def test_records_list_every_binding_a_relearned_rewrite_put_in(relu):
    # Fine-tuning trains what the records list at the higher rate: the bias of a site without a
    # ReLU is the site's own binding (not "<site>_bias"), and must be listed too.
    from test_merge_conv_pool import calib, conv_pool

    from rebirth_tvm.passes import StreamlineMerge, record_sites

    with record_sites() as sites:
        out = StreamlineMerge(calib())(conv_pool(relu=relu))
    (site,) = [s for s in sites if s.status == "rewritten"]
    listed = site.detail["new_bindings"]
    bindings = {b.var.name: b.value for block in out["main"].body.blocks for b in block.bindings}
    assert set(listed) <= set(bindings), (listed, list(bindings))
    # Every constant the relearned block holds sits in a listed binding: the conv's weight and the bias.
    holding = {name for name, value in bindings.items()
               if any(isinstance(arg, tvm.ir.expr.Constant) for arg in getattr(value, "args", []))}
    assert holding and holding <= set(listed), (holding, listed)


def test_a_new_binding_is_recorded_even_when_its_name_was_taken():
    # FoldBatchNorm names its conv "<bn>_conv", the name a relearned conv at that site gets too:
    # found by comparing names before and after, the new conv would be missed (and a chain site
    # above it would take the wrong targets). put_in records what was emitted.
    from test_merge_conv_pool import conv_pool

    from rebirth_tvm.passes._relearn import put_in

    mod = conv_pool(relu=False)
    bindings = [b for block in mod["main"].body.blocks for b in block.bindings]
    conv_binding, out_binding = bindings[0], bindings[-1]
    taken = conv_binding.var.name

    def build(em):
        return relax.op.nn.avg_pool2d(em.emit(em.remap(conv_binding.value), taken), pool_size=2, strides=2)

    _, names = put_in(mod, out_binding.var, build)
    assert names == [taken, out_binding.var.name]
