"""Recovered weights carried into a network that reborns fewer sites (``--max-drop`` after
distillation): each weight takes the recovered value in the same place, never one a put-back
site's own bindings held."""

import numpy as np
import tvm
from test_finetune import small_classifier

from rebirth_tvm.relearn.finetune import _rebuilt_main, lift_weights
from rebirth_tvm.relearn.transplant import recovered_weights, with_recovered_weights


def shifted(mod, by: float):
    """``mod`` with ``by`` added to every weight: a stand-in for a recovered network."""
    func = mod["main"]
    weights, emit = lift_weights(func, set())
    return tvm.IRModule({"main": _rebuilt_main(func, [w + by for w, _ in weights], emit)})


def weights_of(mod):
    return [w for w, _ in lift_weights(mod["main"], set())[0]]


def test_every_weight_in_the_same_place_takes_its_recovered_value():
    mod = small_classifier(dtype="float32")
    recovered = shifted(mod, 0.5)
    carried, count = with_recovered_weights(mod, recovered_weights(recovered))
    assert count == len(weights_of(mod)) == 4  # site conv, its bias, the classifier and its bias
    tvm.ir.assert_structural_equal(carried, recovered)


def test_a_skipped_binding_keeps_its_own_weight():
    mod = small_classifier(dtype="float32")
    carried, count = with_recovered_weights(mod, recovered_weights(shifted(mod, 0.5)), skip={"site_conv"})
    assert count == 3
    own, new = weights_of(mod), weights_of(carried)
    np.testing.assert_array_equal(new[0], own[0])  # site_conv: skipped
    np.testing.assert_array_equal(new[1], own[1] + np.float32(0.5))  # site_bias: carried


def test_a_weight_of_another_shape_is_not_carried():
    mod = small_classifier(dtype="float32")
    conv_place = next(p for p in recovered_weights(mod) if p[0] == "site_conv")
    carried, count = with_recovered_weights(mod, {conv_place: np.zeros((3, 2, 3, 3), np.float32)})
    assert count == 0
    tvm.ir.assert_structural_equal(carried, shifted(mod, 0.0))
