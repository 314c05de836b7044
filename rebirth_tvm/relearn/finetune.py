"""Labelled fine-tuning of a reborn network, in TVM: the paper's last step, without PyTorch.

After every site is relearned against its teacher block, DeepRebirth fine-tunes the whole
network on labelled data: SGD with momentum 0.9 and batch 32, learning rate 0.01 on the
regenerated layers and 0.001 on the rest. This module does exactly that on a Relax module:

1. every float weight constant of ``main`` (conv kernels, biases, the classifier) is lifted into
   a parameter; those in a relearned site's bindings (its record's ``new_bindings``: what the
   rewrite put in) are the *regenerated* ones and get the higher rate;
2. ``relax.transform.Gradient`` differentiates the cross-entropy of the logits w.r.t. all of
   them; the module is compiled once, for the model's own batch size (1 here), and a step
   averages ``batch`` per-sample gradients;
3. the update runs in numpy, and the trained weights are bound back as constants.

Ops the reborn graph uses that TVM 0.27 has no gradient for (``strided_slice``, and the
``squeeze`` and ``avg_pool3d`` of the importer's LRN) get theirs registered here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from rebirth_tvm.core.errors import RebirthError


@dataclass
class FinetuneOptions:
    """Labelled data and the paper's SGD settings."""

    inputs: np.ndarray  # (N, C, H, W) float32, preprocessed like the calibration inputs
    labels: np.ndarray  # (N,) class indices
    epochs: int = 2
    batch: int = 32
    lr_regenerated: float = 0.01
    lr_rest: float = 0.001
    momentum: float = 0.9
    seed: int = 0


def _register_missing_gradients() -> None:
    from tvm.relax.op.base import register_gradient
    from tvm.relax.op.grad import no_grad

    def missing(name):
        return tvm.ir.Op.get(name).get_attr("FPrimalGradient") is None

    if missing("relax.strided_slice"):
        @register_gradient("relax.strided_slice")
        def _strided_slice(orig_var, orig_call, output_grad, ctx):
            data, axes, begin, end = orig_call.args[:4]
            if len(orig_call.args) > 4 and any(int(s.value) != 1 for s in orig_call.args[4]):
                raise RebirthError("fine-tuning: strided_slice with a stride other than 1 has no gradient here")
            shape = [int(d) for d in data.ty.shape]
            width = [[0, 0] for _ in shape]
            for axis, first, last in zip(axes, begin, end):
                axis, first, last = int(axis.value), int(first.value), int(last.value)
                width[axis] = [first, shape[axis] - min(last, shape[axis])]
            return [relax.op.nn.pad(output_grad, [w for pair in width for w in pair]),
                    *(no_grad(a) for a in orig_call.args[1:])]

    if missing("relax.squeeze"):
        @register_gradient("relax.squeeze")
        def _squeeze(orig_var, orig_call, output_grad, ctx):
            return [relax.op.reshape(output_grad, orig_call.args[0].ty.shape)]

    if missing("relax.nn.avg_pool3d"):
        @register_gradient("relax.nn.avg_pool3d")
        def _avg_pool3d(orig_var, orig_call, output_grad, ctx):
            # The importer's LRN sums a window of channels: stride 1, symmetric padding, padded
            # zeros counted; that pooling is its own adjoint.
            a = orig_call.attrs
            pad = [int(p) for p in a.padding]
            symmetric = pad[:3] == pad[3:] and all(int(k) == 2 * p + 1 for k, p in zip(a.pool_size, pad[:3]))
            if any(int(s) != 1 for s in a.strides) or not a.count_include_pad or not symmetric:
                raise RebirthError("fine-tuning: only the LRN form of avg_pool3d (stride 1, odd window, symmetric padding, "
                                   "count_include_pad) has a gradient here")
            return [relax.op.nn.avg_pool3d(output_grad, pool_size=a.pool_size, strides=a.strides, padding=a.padding,
                                           dilation=a.dilation, ceil_mode=a.ceil_mode, count_include_pad=True, layout=a.layout)]


def lift_weights(func: relax.Function, regenerated: set[str]):
    """The weights of ``main`` as a list, and a way to rebuild ``main`` around them as parameters.

    Returns ``(weights, emit)``: ``weights`` is ``[(value, is_regenerated)]`` in a fixed order;
    ``emit(bb, data, weight_vars)`` emits ``main``'s bindings on ``data`` with the i-th weight
    constant replaced by ``weight_vars[i]`` and returns the logits.
    """
    weights: list[tuple[np.ndarray, bool]] = []
    slots: dict[tuple[int, int], int] = {}  # (binding, argument) of a lifted constant → its index in weights

    def is_weight(expr) -> bool:
        return (isinstance(expr, tvm.ir.GenericConst) and str(expr.value.dtype).startswith("float")
                and len(expr.value.shape) >= 1 and int(np.prod(expr.value.shape)) > 1)

    bindings = [b for block in func.body.blocks for b in block.bindings]
    for i, binding in enumerate(bindings):
        if isinstance(binding.value, relax.Call):
            for j, arg in enumerate(binding.value.args):
                if is_weight(arg):
                    slots[(i, j)] = len(weights)
                    weights.append((arg.value.numpy(), binding.var.name in regenerated))
    if not weights:
        raise RebirthError("fine-tuning: the model has no weight constants to train")

    model_batch = _leading_dim(func.params[0])

    def emit(bb, data, weight_vars, capture=None, batch=None):
        """``main``'s bindings on ``data``; returns the output, or ``(output, what capture
        became)`` when ``capture`` (a variable of ``main``, or a list of them) is given.

        ``batch``: ``data`` holds this many inputs instead of the model's batch; a literal
        shape whose leading dimension is the model's batch (a flatten's reshape), in a call
        whose first argument leads with the batch, is given the new one. A model that mixes
        its inputs some other way fails to build or gives other values: callers check."""
        from rebirth_tvm.core.graph import substitute

        remap = {func.params[0]: data}

        def rebuild(expr):
            return substitute(expr, remap)

        def rebatched(call, arg):
            if batch is None or batch == model_batch or not isinstance(arg, relax.ShapeExpr) or not arg.values \
                    or not isinstance(arg.values[0], tvm.tirx.IntImm) or int(arg.values[0]) != model_batch \
                    or _leading_dim(call.args[0]) != model_batch:
                return arg
            return relax.ShapeExpr([batch, *list(arg.values)[1:]])

        for i, binding in enumerate(bindings):
            value = binding.value
            if isinstance(value, relax.Call):
                args = [weight_vars[slots[(i, j)]] if (i, j) in slots else rebatched(value, rebuild(a))
                        for j, a in enumerate(value.args)]
                value = relax.Call(value.op, args, value.attrs, value.ty_args)
            else:
                value = rebuild(value)
            remap[binding.var] = bb.emit(value, name_hint=binding.var.name)
        out = rebuild(func.body.body)
        if capture is None:
            return out
        return out, ([remap[v] for v in capture] if isinstance(capture, (list, tuple)) else remap[capture])

    return weights, emit


def _leading_dim(expr) -> int | None:
    shape = getattr(getattr(expr, "ty", None), "shape", None)
    if shape is None or len(shape) == 0 or not isinstance(shape[0], tvm.tirx.IntImm):
        return None
    return int(shape[0])


def _weight_vars(weights):
    return [relax.Var(f"w{i}", relax.TensorType(value.shape, str(value.dtype))) for i, (value, _) in enumerate(weights)]


def _loss_module(func: relax.Function, weights, emit, classes: int) -> tvm.IRModule:
    """``loss(data, onehot, *weights)``: the summed cross-entropy of the model's logits."""
    data = relax.Var("data", func.params[0].ty)
    dtype = str(weights[0][0].dtype)  # the labels' one-hot rows take the model's float type
    onehot = relax.Var("onehot", relax.TensorType((int(func.params[0].ty.shape[0]), classes), dtype))
    weight_vars = _weight_vars(weights)
    bb = relax.BlockBuilder()
    with bb.function("loss", [data, onehot, *weight_vars]):
        with bb.dataflow():
            logits = emit(bb, data, weight_vars)
            log_p = bb.emit(relax.op.nn.log_softmax(logits, axis=-1))
            loss = bb.emit_output(relax.op.negative(relax.op.sum(relax.op.multiply(log_p, onehot))))
        bb.emit_func_output(loss)
    return bb.get()


def _rebuilt_main(func: relax.Function, values, emit) -> relax.Function:
    """``main`` again, with ``values`` as its weight constants."""
    data = relax.Var(func.params[0].name, func.params[0].ty)
    bb = relax.BlockBuilder()
    constants = [relax.const(v, str(v.dtype)) for v in values]
    with bb.function("main", [data]):
        with bb.dataflow():
            out = bb.emit_output(emit(bb, data, constants))
        bb.emit_func_output(out)
    rebuilt = bb.get()["main"]
    return rebuilt.with_attrs(func.attrs) if func.attrs else rebuilt


def finetune(mod: tvm.IRModule, regenerated: set[str], options: FinetuneOptions, log=None) -> tuple[tvm.IRModule, dict]:
    """Fine-tune ``mod``'s weights on labelled data; returns the new module and a summary."""
    from tqdm import tqdm

    _register_missing_gradients()
    func = mod["main"]
    batch_of_model = int(func.params[0].ty.shape[0])
    classes = int(func.ret_ty.shape[-1]) if hasattr(func, "ret_ty") else int(func.body.body.ty.shape[-1])
    inputs = np.asarray(options.inputs, str(func.params[0].ty.dtype))
    labels = np.asarray(options.labels).astype(np.int64)
    if len(inputs) != len(labels):
        raise RebirthError(f"fine-tuning: {len(inputs)} inputs but {len(labels)} labels")
    if options.batch < batch_of_model or options.batch % batch_of_model:
        raise RebirthError(f"fine-tuning: batch {options.batch} must be a positive multiple of the model's batch {batch_of_model}")
    if len(inputs) < options.batch:
        raise RebirthError(f"fine-tuning: {len(inputs)} labelled inputs are fewer than one batch of {options.batch}")
    if labels.min() < 0 or labels.max() >= classes:
        raise RebirthError(f"fine-tuning: labels must be class indices in [0, {classes}), got {labels.min()}..{labels.max()}")
    start = time.perf_counter()
    weights, emit = lift_weights(func, regenerated)
    loss_mod = _loss_module(func, weights, emit, classes)
    try:
        grad_mod = relax.transform.Gradient("loss", require_grads=list(loss_mod["loss"].params[2:]))(loss_mod)
    except Exception as err:  # TVM raises plain errors from C++ for an op without a gradient
        raise RebirthError(f"fine-tuning: TVM cannot differentiate this model: {str(err).strip().splitlines()[-1]}") from None
    vm = relax.VirtualMachine(tvm.compile(grad_mod, target=tvm.target.Target("llvm")), tvm.cpu())
    values = [value.copy() for value, _ in weights]
    rates = [options.lr_regenerated if regen else options.lr_rest for _, regen in weights]
    velocity = [np.zeros_like(v) for v in values]
    rng = np.random.default_rng(options.seed)
    history = []
    eye = np.eye(classes, dtype=weights[0][0].dtype)
    for epoch in range(options.epochs):
        order = rng.permutation(len(inputs))
        total, steps = 0.0, 0
        bar = tqdm(range(0, len(order) - options.batch + 1, options.batch), desc=f"fine-tune epoch {epoch + 1}/{options.epochs}",
                   disable=None, leave=False)
        for first in bar:
            grads = [np.zeros_like(v) for v in values]
            step_loss = 0.0
            chunk = order[first:first + options.batch]
            for i in range(0, len(chunk), batch_of_model):
                rows = chunk[i:i + batch_of_model]
                if len(rows) < batch_of_model:
                    break
                args = [tvm.runtime.tensor(inputs[rows]), tvm.runtime.tensor(eye[labels[rows]])]
                args += [tvm.runtime.tensor(v) for v in values]
                loss, adjoints = vm["loss_adjoint"](*args)
                step_loss += float(loss.numpy())
                for g, adjoint in zip(grads, adjoints):
                    g += adjoint.numpy()
            scale = 1.0 / len(chunk)
            for k in range(len(values)):
                velocity[k] = options.momentum * velocity[k] - rates[k] * grads[k] * scale
                values[k] = values[k] + velocity[k]
            total += step_loss * scale
            steps += 1
            bar.set_postfix(loss=f"{step_loss * scale:.3f}")
        history.append(round(total / max(steps, 1), 4))
        if log:
            log(f"fine-tune epoch {epoch + 1}: mean cross-entropy {history[-1]}")
    functions = {gv: (_rebuilt_main(func, values, emit) if gv.name_hint == "main" else f) for gv, f in mod.functions.items()}
    new_mod = tvm.IRModule(functions, attrs=mod.attrs)
    summary = {"labelled_images": len(inputs), "epochs": options.epochs, "batch": options.batch,
               "lr_regenerated": options.lr_regenerated, "lr_rest": options.lr_rest, "momentum": options.momentum,
               "regenerated_tensors": sum(1 for _, r in weights if r), "other_tensors": sum(1 for _, r in weights if not r),
               "loss_per_epoch": history, "seconds": round(time.perf_counter() - start, 1)}
    return new_mod, summary
