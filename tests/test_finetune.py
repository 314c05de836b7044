"""Labelled fine-tuning in TVM: gradients checked by finite differences, and training that learns.

The gradients TVM 0.27 lacks (strided_slice, and the squeeze / avg_pool3d of the importer's
LRN) are registered by rebirth_tvm.finetune; the check runs through all of them in float64.
"""

import numpy as np
import pytest
import tvm
from tvm import relax

from rebirth_tvm.core.errors import RebirthError
from rebirth_tvm.relearn.finetune import FinetuneOptions, _loss_module, _register_missing_gradients, finetune, lift_weights


def small_classifier(dtype="float64", seed=0):
    """conv → relu → LRN (importer form) → slice halves → concat → max pool → GAP → FC, batch 1."""
    r = np.random.default_rng(seed)
    x = relax.Var("data", relax.TensorType((1, 2, 6, 6), dtype))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            conv = bb.emit(relax.op.nn.conv2d(x, relax.const(r.standard_normal((6, 2, 3, 3)).astype(dtype), dtype), padding=[1, 1]),
                           name_hint="site_conv")
            bias = bb.emit(relax.op.add(conv, relax.const(r.standard_normal((1, 6, 1, 1)).astype(dtype), dtype)), name_hint="site_bias")
            act = bb.emit(relax.op.nn.relu(bias))
            square = bb.emit(relax.op.multiply(act, act))
            window = bb.emit(relax.op.squeeze(relax.op.nn.avg_pool3d(relax.op.expand_dims(square, 1), pool_size=[3, 1, 1],
                                                                     padding=[1, 0, 0, 1, 0, 0], count_include_pad=True), [1]))
            norm = bb.emit(relax.op.divide(act, relax.op.power(relax.op.add(relax.op.multiply(window, relax.const(0.1, dtype)),
                                                                            relax.const(1.0, dtype)), relax.const(0.75, dtype))))
            first = bb.emit(relax.op.strided_slice(norm, axes=[1], begin=[0], end=[3]))
            second = bb.emit(relax.op.strided_slice(norm, axes=[1], begin=[3], end=[6]))
            joined = bb.emit(relax.op.concat([second, first], axis=1))
            pooled = bb.emit(relax.op.nn.max_pool2d(joined, pool_size=[2, 2], strides=[2, 2]))
            flat = bb.emit(relax.op.reshape(relax.op.mean(pooled, axis=[2, 3], keepdims=True), (1, 6)))
            logits = bb.emit_output(relax.op.add(relax.op.matmul(flat, relax.const(r.standard_normal((6, 4)).astype(dtype), dtype)),
                                                 relax.const(r.standard_normal((4,)).astype(dtype), dtype)))
        bb.emit_func_output(logits)
    return bb.get()


def test_weights_are_lifted_and_regenerated_ones_marked():
    weights, _ = lift_weights(small_classifier()["main"], {"site_conv", "site_bias"})
    assert [(w.shape, regenerated) for w, regenerated in weights] == [((6, 2, 3, 3), True), ((1, 6, 1, 1), True), ((6, 4), False), ((4,), False)]


def test_gradients_match_finite_differences():
    _register_missing_gradients()
    mod = small_classifier()
    weights, emit = lift_weights(mod["main"], set())
    loss_mod = _loss_module(mod["main"], weights, emit, classes=4)
    grad_mod = relax.transform.Gradient("loss", require_grads=list(loss_mod["loss"].params[2:]))(loss_mod)
    vm = relax.VirtualMachine(tvm.compile(grad_mod, target=tvm.target.Target("llvm")), tvm.cpu())
    r = np.random.default_rng(1)
    x = r.standard_normal((1, 2, 6, 6))
    onehot = np.eye(4)[[2]]
    values = [w.copy() for w, _ in weights]

    def loss(vals):
        return float(vm["loss"](tvm.runtime.tensor(x), tvm.runtime.tensor(onehot), *[tvm.runtime.tensor(v) for v in vals]).numpy())

    _, adjoints = vm["loss_adjoint"](tvm.runtime.tensor(x), tvm.runtime.tensor(onehot), *[tvm.runtime.tensor(v) for v in values])
    eps = 1e-6
    for k, adjoint in enumerate(adjoints):
        analytic = adjoint.numpy()
        for index in list(np.ndindex(values[k].shape))[:: max(1, values[k].size // 12)]:
            plus = [v.copy() for v in values]
            minus = [v.copy() for v in values]
            plus[k][index] += eps
            minus[k][index] -= eps
            numeric = (loss(plus) - loss(minus)) / (2 * eps)
            assert analytic[index] == pytest.approx(numeric, rel=1e-5, abs=1e-7), (k, index)


def test_finetune_learns_labels_and_keeps_the_module_shape():
    mod = small_classifier(dtype="float32")
    r = np.random.default_rng(2)
    inputs = r.standard_normal((64, 1, 2, 6, 6)).astype("float32")[:, 0]
    vm = relax.VirtualMachine(tvm.compile(mod, target=tvm.target.Target("llvm")), tvm.cpu())
    labels = np.array([int(np.argmax(vm["main"](tvm.runtime.tensor(inputs[i:i + 1])).numpy())) for i in range(64)])
    labels = (labels + 1) % 4  # a labelling the model does not yet produce

    def accuracy(module):
        run = relax.VirtualMachine(tvm.compile(module, target=tvm.target.Target("llvm")), tvm.cpu())
        return np.mean([int(np.argmax(run["main"](tvm.runtime.tensor(inputs[i:i + 1])).numpy())) == labels[i] for i in range(64)])

    assert accuracy(mod) == 0
    tuned, summary = finetune(mod, {"site_conv", "site_bias"},
                              FinetuneOptions(inputs, labels, epochs=6, batch=8, lr_regenerated=0.05, lr_rest=0.05))
    assert summary["regenerated_tensors"] == 2 and summary["other_tensors"] == 2
    assert summary["loss_per_epoch"][-1] < summary["loss_per_epoch"][0]
    assert accuracy(tuned) > 0.5
    assert [int(d) for d in tuned["main"].params[0].ty.shape] == [1, 2, 6, 6] and len(tuned["main"].params) == 1


def test_bad_labels_are_one_line_errors():
    mod = small_classifier(dtype="float32")
    x = np.zeros((4, 2, 6, 6), "float32")
    with pytest.raises(RebirthError, match="4 inputs but 3 labels"):
        finetune(mod, set(), FinetuneOptions(x, np.zeros(3, int), batch=2))
    with pytest.raises(RebirthError, match=r"class indices in \[0, 4\)"):
        finetune(mod, set(), FinetuneOptions(x, np.array([0, 1, 2, 7]), batch=2))
    with pytest.raises(RebirthError, match="fewer than one batch of 32"):
        finetune(mod, set(), FinetuneOptions(x, np.array([0, 1, 2, 3])))
    with pytest.raises(RebirthError, match="batch 0 must be a positive multiple"):
        finetune(mod, set(), FinetuneOptions(x, np.array([0, 1, 2, 3]), batch=0))
