"""End-to-end distillation without labels: the reborn network learns the teacher's outputs.

Per-site least squares makes each new conv match its block on its own; the errors still add up
along the network, and nothing in the per-site fits knows which errors change the prediction.
Every few-sample recovery method ends with a gradient step on the whole network against the
teacher's outputs (knowledge distillation): that needs no labels, only the calibration images
the user already gave. Here:

* **objective**: cross-entropy of the reborn network's softened logits against the teacher's
  softened probabilities at temperature ``T`` (KL divergence up to a constant), scaled by ``T²``
  so its gradients keep their size whatever ``T``; plus ``feature_weight`` × the squared error
  of the classifier's input features (the last feature map, pooled), relative to their mean
  squared norm. A 10-class logit vector says little per image; the features the classifier
  reads say much more, and they are what the relearned layers upstream shape;
* **weights**: every float weight of the network; the relearned sites' own (their records'
  ``new_bindings``) and the classifier at the full rate, the others at ``rest_scale`` of it;
* **optimiser**: Adam with a cosine-decayed rate, over mini-batches of per-sample gradients
  from ``relax.transform.Gradient`` (the model's batch is 1);
* **data**: the calibration images that relearning used, with cheap augmentation (horizontal
  flips, shifts of a few pixels) relabelled by the teacher each time — the teacher, not a label,
  says what each augmented image should give;
* **early stopping**: after every epoch the objective and the top-1 agreement are measured on
  the held-out calibration images; the weights with the lowest held-out objective are kept,
  the weights before distillation included, so it never ends worse on its own objective.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import tvm
from tvm import relax

from rebirth_tvm.core.errors import RebirthError
from rebirth_tvm.relearn.finetune import _register_missing_gradients, _rebuilt_main, _weight_vars, lift_weights


@dataclass(frozen=True)
class DistillOptions:
    """How long and how hard to distil (see the module docstring)."""

    epochs: int = 10
    batch: int = 16
    lr: float = 1e-3
    rest_scale: float = 0.1
    temperature: float = 4.0
    feature_weight: float = 1.0
    augment: bool = True
    patience: int = 3
    seed: int = 0

    def __post_init__(self):
        if self.epochs < 1:
            raise RebirthError(f"--distill-epochs must be 1 or more, got {self.epochs}")
        if self.batch < 1:
            raise RebirthError(f"distillation batch must be 1 or more, got {self.batch}")
        if not self.lr > 0 or not 0 <= self.rest_scale <= 1:
            raise RebirthError(f"distillation rates: lr must be above 0 and rest_scale in [0, 1], got {self.lr}, {self.rest_scale}")
        if not self.temperature > 0:
            raise RebirthError(f"distillation temperature must be above 0, got {self.temperature}")
        if not self.feature_weight >= 0:
            raise RebirthError(f"distillation feature_weight must be 0 or more, got {self.feature_weight}")
        if self.patience < 1:
            raise RebirthError(f"distillation patience must be 1 or more, got {self.patience}")


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits.astype(np.float64) / temperature
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def distillation_loss(student: np.ndarray, teacher: np.ndarray, temperature: float) -> float:
    """Mean over samples of ``T² · KL(teacher ‖ student)`` at temperature ``T`` (0 when equal)."""
    p = softmax(teacher, temperature)
    log_q = np.log(np.maximum(softmax(student, temperature), 1e-300))
    log_p = np.log(np.maximum(p, 1e-300))
    return float(temperature ** 2 * np.mean(np.sum(p * (log_p - log_q), axis=-1)))


def feature_loss(student: np.ndarray, teacher: np.ndarray, scale: float) -> float:
    """Mean over samples of ``‖f_s − f_t‖² / scale`` (``scale``: the teacher's mean ``‖f_t‖²``)."""
    diff = (student.astype(np.float64) - teacher).reshape(len(student), -1)
    return float(np.mean(np.sum(diff ** 2, axis=-1)) / scale)


def classifier_input(func: relax.Function) -> relax.Var | None:
    """What the last matmul (the classifier) of ``main`` reads: the network's final features."""
    bindings = [b for block in func.body.blocks for b in block.bindings]
    for binding in reversed(bindings):
        value = binding.value
        if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) and value.op.name in ("relax.matmul", "relax.linear") \
                and isinstance(value.args[0], relax.Var):
            return value.args[0]
    return None


def with_features(mod: tvm.IRModule) -> tvm.IRModule:
    """``mod`` whose ``main`` returns ``(logits, the classifier's input features)``: the teacher
    side of the feature term. A model without a final matmul is refused (one line)."""
    func = mod["main"]
    feature = classifier_input(func)
    if feature is None:
        raise RebirthError("distillation: the model has no final matmul (classifier) whose input features could be matched; "
                           "use feature_weight 0")
    weights, emit = lift_weights(func, set())
    data = relax.Var(func.params[0].name, func.params[0].ty)
    bb = relax.BlockBuilder()
    with bb.function("main", [data]):
        with bb.dataflow():
            logits, features = emit(bb, data, [relax.const(w, str(w.dtype)) for w, _ in weights], capture=feature)
            out = bb.emit_output(relax.Tuple([logits, features]))
        bb.emit_func_output(out)
    return bb.get()


def augment(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random horizontal flip and a shift of up to 1/12 of the side (zeros fill in), per image."""
    out = np.empty_like(images)
    height, width = images.shape[-2:]
    reach_y, reach_x = max(1, height // 12), max(1, width // 12)
    for i, image in enumerate(images):
        if rng.random() < 0.5:
            image = image[..., ::-1]
        dy, dx = int(rng.integers(-reach_y, reach_y + 1)), int(rng.integers(-reach_x, reach_x + 1))
        shifted = np.zeros_like(image)
        ys, yd = (slice(0, height - dy), slice(dy, height)) if dy >= 0 else (slice(-dy, height), slice(0, height + dy))
        xs, xd = (slice(0, width - dx), slice(dx, width)) if dx >= 0 else (slice(-dx, width), slice(0, width + dx))
        shifted[..., yd, xd] = image[..., ys, xs]
        out[i] = shifted
    return out


def _training_module(func: relax.Function, weights, emit, temperature: float, feature_weight: float = 0.0,
                     feature_scale: float = 1.0) -> tvm.IRModule:
    """``loss(data, soft_targets, target_features, *weights)`` (``T²`` × soft cross-entropy at
    ``T``, plus ``feature_weight`` × the features' squared error / ``feature_scale``) and
    ``logits(data, *weights)`` → ``(logits, features)``."""
    feature = classifier_input(func)
    if feature is None and feature_weight:
        raise RebirthError("distillation: the model has no final matmul (classifier) whose input features could be matched")
    dtype = str(weights[0][0].dtype)
    batch = int(func.params[0].ty.shape[0])
    classes = int(func.body.body.ty.shape[-1])
    feature_ty = feature.ty if feature is not None else relax.TensorType((batch, 1), dtype)
    bb = relax.BlockBuilder()

    def outputs(data, weight_vars):
        if feature is None:
            logits = emit(bb, data, weight_vars)
            return logits, bb.emit(relax.op.zeros(feature_ty.shape, dtype))
        return emit(bb, data, weight_vars, capture=feature)

    data = relax.Var("data", func.params[0].ty)
    targets = relax.Var("soft_targets", relax.TensorType((batch, classes), dtype))
    target_features = relax.Var("target_features", relax.TensorType(feature_ty.shape, dtype))
    weight_vars = _weight_vars(weights)
    with bb.function("loss", [data, targets, target_features, *weight_vars]):
        with bb.dataflow():
            logits, features = outputs(data, weight_vars)
            scaled = bb.emit(relax.op.divide(logits, relax.const(temperature, dtype)))
            log_q = bb.emit(relax.op.nn.log_softmax(scaled, axis=-1))
            cross = bb.emit(relax.op.negative(relax.op.sum(relax.op.multiply(log_q, targets))))
            loss = bb.emit(relax.op.multiply(cross, relax.const(temperature ** 2, dtype)))
            if feature_weight:
                diff = bb.emit(relax.op.subtract(features, target_features))
                squared = bb.emit(relax.op.sum(relax.op.multiply(diff, diff)))
                loss = bb.emit(relax.op.add(loss, relax.op.multiply(squared, relax.const(feature_weight / feature_scale, dtype))))
            loss = bb.emit_output(loss)
        bb.emit_func_output(loss)
    data2 = relax.Var("data", func.params[0].ty)
    weight_vars2 = _weight_vars(weights)
    with bb.function("logits", [data2, *weight_vars2]):
        with bb.dataflow():
            logits, features = outputs(data2, weight_vars2)
            out = bb.emit_output(relax.Tuple([logits, features]))
        bb.emit_func_output(out)
    return bb.get()


def _classifier_bindings(func: relax.Function) -> set[str]:
    """The last matmul / dense of ``main`` and what follows it (its bias): the classifier."""
    bindings = [b for block in func.body.blocks for b in block.bindings]
    names: set[str] = set()
    for binding in reversed(bindings):
        names.add(binding.var.name)
        value = binding.value
        if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) and value.op.name in ("relax.matmul", "relax.linear"):
            return names
    return set()


class _Adam:
    def __init__(self, values, rates, beta1=0.9, beta2=0.999, eps=1e-8):
        self.rates, self.beta1, self.beta2, self.eps = rates, beta1, beta2, eps
        self.m = [np.zeros_like(v) for v in values]
        self.v = [np.zeros_like(v) for v in values]
        self.t = 0

    def step(self, values, grads, scale: float) -> None:
        self.t += 1
        for k, g in enumerate(grads):
            if self.rates[k] == 0:
                continue
            self.m[k] = self.beta1 * self.m[k] + (1 - self.beta1) * g
            self.v[k] = self.beta2 * self.v[k] + (1 - self.beta2) * g * g
            m_hat = self.m[k] / (1 - self.beta1 ** self.t)
            v_hat = self.v[k] / (1 - self.beta2 ** self.t)
            values[k] -= (scale * self.rates[k] * m_hat / (np.sqrt(v_hat) + self.eps)).astype(values[k].dtype)


def distill(mod: tvm.IRModule, teacher: Callable, train: np.ndarray, held_out: np.ndarray,
            regenerated: set[str], options: DistillOptions = DistillOptions(), log=None) -> tuple[tvm.IRModule, dict]:
    """Distil ``teacher`` into ``mod`` on unlabelled ``train`` images, stopping early on
    ``held_out`` (module docstring); returns the new module and a summary.

    ``teacher(images)`` gives the original network's logits, or ``(logits, features)`` with the
    classifier's input features (:func:`with_features`), which the feature term needs.
    """
    from tqdm import tqdm

    _register_missing_gradients()
    func = mod["main"]
    model_batch = int(func.params[0].ty.shape[0])
    output_shape = getattr(func.body.body.ty, "shape", None)
    if output_shape is None or len(output_shape) != 2:
        shape = tuple(int(d) for d in output_shape) if output_shape is not None else "not one tensor"
        raise RebirthError(f"distillation matches class logits; this model's output is {shape}, not (batch, classes)")
    if len(train) < model_batch or len(held_out) < model_batch:
        raise RebirthError(f"distillation needs at least {model_batch} training and held-out inputs")
    start = time.perf_counter()
    train = train[: len(train) // model_batch * model_batch]
    held = held_out[: len(held_out) // model_batch * model_batch]

    def teach(images):
        out = teacher(images)
        logits, features = (out if isinstance(out, tuple) else (out, None))
        if features is None and options.feature_weight:
            raise RebirthError("distillation: the teacher gives no features for the feature term (see with_features)")
        return logits, features

    dtype = str(func.params[0].ty.dtype)
    _, train_features = teach(train)
    feature_scale = float(np.mean(np.sum(train_features.reshape(len(train), -1).astype(np.float64) ** 2, -1))) \
        if options.feature_weight else 1.0
    feature_scale = max(feature_scale, 1e-30)
    fast = regenerated | _classifier_bindings(func)
    weights, emit = lift_weights(func, fast)
    rates = [options.lr if regen else options.lr * options.rest_scale for _, regen in weights]
    trainable = [k for k, rate in enumerate(rates) if rate > 0]
    training = _training_module(func, weights, emit, options.temperature, options.feature_weight, feature_scale)
    params = training["loss"].params
    try:
        grad_mod = relax.transform.Gradient("loss", require_grads=[params[3 + k] for k in trainable])(training)
    except Exception as err:  # TVM raises plain errors from C++ for an op without a gradient
        raise RebirthError(f"distillation: TVM cannot differentiate this model: {str(err).strip().splitlines()[-1]}") from None
    vm = relax.VirtualMachine(tvm.compile(grad_mod, target=tvm.target.Target("llvm")), tvm.cpu())
    feature_shape = tuple(int(d) for d in params[2].ty.shape)

    def student(values_nd, images):
        logits, features = [], []
        for i in range(0, len(images), model_batch):
            out = vm["logits"](tvm.runtime.tensor(images[i:i + model_batch].astype(dtype)), *values_nd)
            logits.append(out[0].numpy())
            features.append(out[1].numpy())
        return np.concatenate(logits), np.concatenate(features)

    teacher_held, teacher_held_features = teach(held)

    def evaluate(values_nd) -> dict:
        logits, features = student(values_nd, held)
        objective = distillation_loss(logits, teacher_held, options.temperature)
        if options.feature_weight:
            objective += options.feature_weight * feature_loss(features, teacher_held_features, feature_scale)
        return {"objective": objective, "agreement": float(np.mean(np.argmax(logits, -1) == np.argmax(teacher_held, -1)))}

    values = [value.copy() for value, _ in weights]

    def as_tensors(vals):
        return [tvm.runtime.tensor(v) for v in vals]

    best = {"epoch": 0, **evaluate(as_tensors(values))}
    best_values = [v.copy() for v in values]
    history = [dict(best)]
    if log:
        log(f"distillation: before, held-out objective {best['objective']:.4f}, agreement {best['agreement']:.1%}")
    optimiser = _Adam(values, rates)
    rng = np.random.default_rng(options.seed)
    samples_per_step = max(options.batch // model_batch, 1)
    steps_per_epoch = max(1, (len(train) // model_batch) // samples_per_step)
    total_steps, step, stale = options.epochs * steps_per_epoch, 0, 0
    zero_features = np.zeros(feature_shape, dtype)
    for epoch in range(1, options.epochs + 1):
        images = augment(train, rng) if options.augment else train
        logits, features = teach(images)
        targets = softmax(logits, options.temperature).astype(dtype)
        order = rng.permutation(len(images) // model_batch)
        bar = tqdm(range(steps_per_epoch), desc=f"distil epoch {epoch}/{options.epochs}", disable=None, leave=False)
        for s in bar:
            current = as_tensors(values)
            grads = [np.zeros_like(values[k]) for k in trainable]
            chunk = order[s * samples_per_step:(s + 1) * samples_per_step]
            step_loss = 0.0
            for row in chunk:
                rows = slice(row * model_batch, (row + 1) * model_batch)
                target_features = features[rows].astype(dtype) if features is not None else zero_features
                loss, adjoints = vm["loss_adjoint"](tvm.runtime.tensor(images[rows]), tvm.runtime.tensor(targets[rows]),
                                                    tvm.runtime.tensor(target_features), *current)
                step_loss += float(loss.numpy())
                for g, adjoint in zip(grads, adjoints):
                    g += adjoint.numpy()
            samples = max(1, len(chunk) * model_batch)
            full = [np.zeros_like(v) for v in values]
            for k, g in zip(trainable, grads):
                full[k] = g / samples
            optimiser.step(values, full, 0.5 * (1 + np.cos(np.pi * step / total_steps)))  # cosine decay
            step += 1
            bar.set_postfix(loss=f"{step_loss / samples:.3f}")
        measured = {"epoch": epoch, **evaluate(as_tensors(values))}
        history.append(measured)
        if log:
            log(f"distillation epoch {epoch}: held-out objective {measured['objective']:.4f}, agreement {measured['agreement']:.1%}")
        if measured["objective"] < best["objective"]:
            best, best_values, stale = measured, [v.copy() for v in values], 0
        else:
            stale += 1
            if stale >= options.patience:
                break
    functions = {gv: (_rebuilt_main(func, best_values, emit) if gv.name_hint == "main" else f) for gv, f in mod.functions.items()}
    summary = {"images": len(train), "held_out": len(held), "epochs_run": len(history) - 1, "best_epoch": best["epoch"],
               "before": history[0], "after": {k: best[k] for k in ("objective", "agreement")}, "history": history,
               "temperature": options.temperature, "feature_weight": options.feature_weight, "lr": options.lr,
               "rest_scale": options.rest_scale, "augment": options.augment, "fast_tensors": sum(1 for _, r in weights if r),
               "other_tensors": sum(1 for _, r in weights if not r), "seconds": round(time.perf_counter() - start, 1)}
    return tvm.IRModule(functions, attrs=mod.attrs), summary
