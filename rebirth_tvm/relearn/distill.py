"""End-to-end distillation without labels: the reborn network learns the teacher's outputs.

Per-site least squares makes each new conv match its block on its own; the errors still add up
along the network, and nothing in the per-site fits knows which errors change the prediction.
Every few-sample recovery method ends with a gradient step on a larger block or the whole
network against the teacher's outputs (knowledge distillation): that needs no labels, only the
calibration images the user already gave. Here:

* **objective**: ``logit_weight`` × the cross-entropy of the reborn network's softened logits
  against the teacher's softened probabilities at temperature ``T`` (KL divergence up to a
  constant), scaled by ``T²`` so its gradients keep their size whatever ``T``; plus
  ``feature_weight`` × the squared error of the classifier's input features (the last feature
  map, pooled), relative to their mean squared norm. A 10-class logit vector says little per
  image; the features the classifier reads say much more;
* **module reconstruction** (``module_weight``): plus, for each of the *module boundaries*
  (:func:`module_boundaries`: the inception modules' outputs and the relearned sites' outputs
  that the reborn network shares with the original), ``module_weight`` × its relative squared
  error: by default each boundary counts as much as the classifier's features. Each module is
  matched on its own output with its inputs from the reborn network below (errors from below
  included, as BRECQ-style block reconstruction does), jointly with the rest rather than one
  module at a time, so one gradient module serves every block. Feature maps say far more per
  image than 10 logits, and that is what a thousand images lack: on fashion_googlenet with every
  site reborn (80 epochs, mixup and cutmix), sharing one weight among the 17 boundaries reached
  89.32% top-1 at a total of 4, 89.67% at 16 and 89.62% at 64 (17 shared is 1 each);
* **weights**: every float weight of the network, at one rate by default. The relearned sites'
  own (their records' ``new_bindings``) and the classifier always get the full rate; the others
  get ``rest_scale`` of it. The layers around a merge are what can make up for what it cannot
  compute, so they learn as fast as the merge itself. On fashion_googlenet with every site reborn
  (40 epochs), a rest rate of a tenth reached 87.10% top-1 and the full rate 87.51%; at a rate of
  3e-3 instead of 1e-3, 87.96%;
* **optimiser**: Adam, its rate rising linearly over the first ``warmup`` of the steps and then
  decaying on a cosine, over mini-batches of per-sample gradients from
  ``relax.transform.Gradient`` (the model's batch is 1), compiled by the caller's ``compiler``
  (the pipeline's: the project's scheduled CPU kernels);
* **data**: the calibration images that relearning used, with cheap augmentation relabelled by
  the teacher each time — the teacher, not a label, says what each augmented image should
  give: horizontal flips and shifts of a few pixels, then a ``mixup`` share blended with another
  image and a ``cutmix`` share with a rectangle of another pasted in. New inputs between the
  calibration images stand in for the images a user does not have: on fashion_googlenet with
  every site reborn (80 epochs, the module weight still shared) none reached 88.33% top-1,
  half mixed 88.49%, half pasted 88.50%, both 88.75%; pasting into every image 87.50%. Inputs moved up the student's loss
  gradient (towards where it disagrees, relabelled by the teacher) made it worse (88.45% against
  89.67%) and were not kept;
* **early stopping**: after every epoch the objective and the top-1 agreement are measured on
  the held-out calibration images; the weights with the lowest held-out objective are kept,
  the weights before distillation included, so it never ends worse on its own objective.
  ``patience`` epochs without a better objective end it, counted only once the rate has decayed
  below :data:`PATIENCE_FROM_RATE` of its peak: near the peak Adam's steps are large and the
  held-out objective often rises before it falls (a 60-epoch run on fashion_googlenet stopped
  at epoch 8, in its warmup, at 82.4% top-1, where 20 epochs had reached 86.2%).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import tvm
from tvm import relax

from rebirth_tvm.core.errors import RebirthError
from rebirth_tvm.core.graph import shape_of
from rebirth_tvm.relearn.finetune import _register_missing_gradients, _rebuilt_main, _weight_vars, lift_weights


@dataclass(frozen=True)
class DistillOptions:
    """How long and how hard to distil (see the module docstring)."""

    epochs: int = 20
    batch: int = 16
    lr: float = 3e-3
    warmup: float = 0.1
    rest_scale: float = 1.0
    temperature: float = 4.0
    logit_weight: float = 1.0
    feature_weight: float = 1.0
    module_weight: float = 1.0
    augment: bool = True
    mixup: float = 0.5
    cutmix: float = 0.5
    patience: int = 5
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
        for name in ("logit_weight", "feature_weight", "module_weight"):
            if not getattr(self, name) >= 0:
                raise RebirthError(f"distillation {name} must be 0 or more, got {getattr(self, name)}")
        if not (self.logit_weight or self.feature_weight or self.module_weight):
            raise RebirthError("distillation needs something to match: logit_weight, feature_weight and module_weight are all 0")
        for name in ("mixup", "cutmix"):
            if not 0 <= getattr(self, name) <= 1:
                raise RebirthError(f"distillation {name} is a share of the images in [0, 1], got {getattr(self, name)}")
        if not 0 <= self.warmup < 1:
            raise RebirthError(f"distillation warmup is a fraction of the steps in [0, 1), got {self.warmup}")
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


def _classifier(func: relax.Function) -> tuple[relax.Var, set[str]] | None:
    """The last matmul of ``main`` (the classifier): what it reads (the network's final
    features), and the names of its binding and every binding after it (its bias)."""
    bindings = [b for block in func.body.blocks for b in block.bindings]
    names: set[str] = set()
    for binding in reversed(bindings):
        names.add(binding.var.name)
        value = binding.value
        if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) and value.op.name in ("relax.matmul", "relax.linear") \
                and isinstance(value.args[0], relax.Var):
            return value.args[0], names
    return None


def classifier_input(func: relax.Function) -> relax.Var | None:
    """What the last matmul (the classifier) of ``main`` reads: the network's final features."""
    found = _classifier(func)
    return found[0] if found else None


def _bound(func: relax.Function) -> dict[str, relax.Binding]:
    return {b.var.name: b for block in func.body.blocks for b in block.bindings}


def module_boundaries(student: relax.Function, teacher: relax.Function, site_outputs: set[str]) -> list[str]:
    """The points where the reborn network and the original compute the same thing, so their
    values can be compared: variables of both ``main``s, with one name and one shape, that
    are feature maps (rank 4 or more) and either an inception module's output (a concat in the
    original) or a relearned site's output (``site_outputs``: a site's new block is bound to the
    name of what it replaces). Only those: a rewrite's inner values (its conv before the bias)
    may share a name with an unrelated value of the original (FoldBatchNorm's ``<bn>_conv``)."""
    ours, theirs = _bound(student), _bound(teacher)
    points = []
    for name, binding in ours.items():
        original = theirs.get(name)
        shape, original_shape = shape_of(binding.var), shape_of(original.var) if original is not None else None
        if shape is None or len(shape) < 4 or shape != original_shape:
            continue
        value = original.value
        is_concat = isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) and value.op.name == "relax.concat"
        if is_concat or name in site_outputs:
            points.append(name)
    return points


def _with_batch(ty: relax.TensorType, batch: int | None) -> relax.TensorType:
    """``ty`` with ``batch`` as its leading dimension (``ty`` itself for ``None``)."""
    if batch is None:
        return ty
    return relax.TensorType([batch, *list(ty.shape)[1:]], ty.dtype)


def tapped(mod: tvm.IRModule, points: list[str], batch: int | None = None) -> tvm.IRModule:
    """``mod`` whose ``main`` returns ``(logits, *the values of points)`` (names of ``main``'s
    variables): the teacher side of the feature terms; on ``batch`` inputs at once if given."""
    func = mod["main"]
    bound = _bound(func)
    missing = [p for p in points if p not in bound]
    if missing:
        raise RebirthError(f"distillation: the model has no value named {missing[0]!r} to match")
    weights, emit = lift_weights(func, set())
    data = relax.Var(func.params[0].name, _with_batch(func.params[0].ty, batch))
    bb = relax.BlockBuilder()
    with bb.function("main", [data]):
        with bb.dataflow():
            logits, values = emit(bb, data, [relax.const(w, str(w.dtype)) for w, _ in weights],
                                  capture=[bound[p].var for p in points], batch=batch)
            out = bb.emit_output(relax.Tuple([logits, *values]))
        bb.emit_func_output(out)
    return bb.get()


def with_features(mod: tvm.IRModule) -> tvm.IRModule:
    """``mod`` whose ``main`` returns ``(logits, the classifier's input features)``. A model
    without a final matmul is refused (one line)."""
    feature = classifier_input(mod["main"])
    if feature is None:
        raise RebirthError("distillation: the model has no final matmul (classifier) whose input features could be matched; "
                           "use feature_weight 0")
    return tapped(mod, [feature.name])


def augment(images: np.ndarray, rng: np.random.Generator, mixup: float = 0.0, cutmix: float = 0.0) -> np.ndarray:
    """A random horizontal flip and a shift of up to 1/12 of the side (zeros fill in), per image;
    with ``mixup``, that share of the images is then blended with another one (weight drawn
    uniformly from [0, 0.5)); with ``cutmix``, that share gets a rectangle of another one pasted
    in (its area a uniform share of the image, its place uniform). Both make new inputs from the
    calibration images, which the teacher labels."""
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
    sources = out  # what is mixed or pasted in: the flipped, shifted images, not each other's results
    if mixup:
        mixed = rng.random(len(out)) < mixup
        partners = rng.permutation(len(out))
        weight = (rng.random(len(out)) * 0.5).astype(out.dtype).reshape(-1, *[1] * (out.ndim - 1))
        out = np.where(mixed.reshape(weight.shape), (1 - weight) * out + weight * sources[partners], out)
    if cutmix:
        if out is sources:  # no mixup made a new array to paste into
            out = out.copy()
        partners = rng.permutation(len(out))
        for i in np.flatnonzero(rng.random(len(out)) < cutmix):
            side = np.sqrt(rng.random())
            h, w = int(round(height * side)), int(round(width * side))
            y, x = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
            out[i, ..., y:y + h, x:x + w] = sources[partners[i], ..., y:y + h, x:x + w]
    return out


def _training_module(func: relax.Function, weights, emit, temperature: float, points: list[tuple[str, float]] = (),
                     logit_weight: float = 1.0, batch: int | None = None) -> tvm.IRModule:
    """``loss(data, soft_targets, *point_targets, *weights)``: ``logit_weight`` × ``T²`` × the
    soft cross-entropy at ``T``, plus, for each ``(name, weight)`` of ``points``, ``weight`` ×
    the squared error of ``main``'s value ``name`` against its target, summed over the inputs;
    and ``logits(data, *weights)`` → ``(logits, *the points' values)``. ``batch``: inputs per
    call, when not the model's own batch."""
    dtype = str(weights[0][0].dtype)
    inputs = batch or int(func.params[0].ty.shape[0])
    classes = int(func.body.body.ty.shape[-1])
    bound = _bound(func)
    point_vars = [bound[name].var for name, _ in points]
    bb = relax.BlockBuilder()

    data = relax.Var("data", _with_batch(func.params[0].ty, batch))
    targets = relax.Var("soft_targets", relax.TensorType((inputs, classes), dtype))
    point_targets = [relax.Var(f"target_{k}", _with_batch(v.ty, batch)) for k, v in enumerate(point_vars)]
    weight_vars = _weight_vars(weights)
    with bb.function("loss", [data, targets, *point_targets, *weight_vars]):
        with bb.dataflow():
            logits, values = emit(bb, data, weight_vars, capture=point_vars, batch=batch)
            scaled = bb.emit(relax.op.divide(logits, relax.const(temperature, dtype)))
            log_q = bb.emit(relax.op.nn.log_softmax(scaled, axis=-1))
            cross = bb.emit(relax.op.negative(relax.op.sum(relax.op.multiply(log_q, targets))))
            loss = bb.emit(relax.op.multiply(cross, relax.const(logit_weight * temperature ** 2, dtype)))
            for (_, weight), value, target in zip(points, values, point_targets):
                diff = bb.emit(relax.op.subtract(value, target))
                squared = bb.emit(relax.op.sum(relax.op.multiply(diff, diff)))
                loss = bb.emit(relax.op.add(loss, relax.op.multiply(squared, relax.const(weight, dtype))))
            loss = bb.emit_output(loss)
        bb.emit_func_output(loss)
    data2 = relax.Var("data", _with_batch(func.params[0].ty, batch))
    weight_vars2 = _weight_vars(weights)
    with bb.function("logits", [data2, *weight_vars2]):
        with bb.dataflow():
            logits, values = emit(bb, data2, weight_vars2, capture=point_vars, batch=batch)
            out = bb.emit_output(relax.Tuple([logits, *values]))
        bb.emit_func_output(out)
    return bb.get()


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


def _schedule(step: int, total: int, warmup: float) -> float:
    """The rate's scale at ``step`` of ``total``: a linear rise over the first ``warmup`` of
    the steps (Adam's first steps are full-size whatever the gradient), then cosine decay."""
    rise = warmup * total
    if step < rise:
        return (step + 1) / (rise + 1)
    return 0.5 * (1 + np.cos(np.pi * (step - rise) / max(total - rise, 1)))


def _compile_on_cpu(mod: tvm.IRModule):
    return tvm.compile(mod, target=tvm.target.Target("llvm"))


#: the rate's share of its peak below which epochs without progress count towards ``patience``.
#: With augmentation the held-out objective (200 images) is noisy while the rate is still high:
#: counted from half the peak, a 100-epoch run on fashion_googlenet with every site reborn
#: stopped at epoch 68, still improving, at 88.59% top-1, below 80 epochs' 89.64%.
PATIENCE_FROM_RATE = 0.2

#: held-out images evaluated at once (only sums are kept between batches)
EVAL_BATCH = 32


def _compile(compiler, mod: tvm.IRModule, log):
    """``compiler(mod)``; TVM's plain CPU build should it fail (slower, same values)."""
    if compiler is _compile_on_cpu:
        return compiler(mod)
    try:
        return compiler(mod)
    except Exception as err:  # noqa: BLE001  (a kernel the project's pipeline cannot build)
        if log:
            log(f"distillation: the scheduled kernels could not build the training module ({type(err).__name__}); "
                "using TVM's plain CPU build")
        return _compile_on_cpu(mod)


def _runner(executable, function: str, size: int, dtype: str):
    """``run(images, extra=())`` → the outputs of ``function`` (a tuple) for any number of images,
    ``size`` per call; the last call's are padded with zeros and what they give is dropped.
    ``executable``: a built module or a VM already made on it."""
    vm = executable if isinstance(executable, relax.VirtualMachine) else relax.VirtualMachine(executable, tvm.cpu())

    def run(images, extra=()) -> list[np.ndarray]:
        parts = []
        for i in range(0, len(images), size):
            chunk = images[i:i + size].astype(dtype)
            real = len(chunk)
            if real < size:
                chunk = np.concatenate([chunk, np.zeros((size - real, *chunk.shape[1:]), dtype)])
            out = vm[function](tvm.runtime.tensor(chunk), *extra)
            parts.append([out[k].numpy()[:real] for k in range(len(out))])
        return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]

    return run


#: how far a batched module's outputs may be from one-input-at-a-time ones (of each output's scale)
BATCHED_TOLERANCE = 1e-4


def _batched_runner(build, function: str, size: int, dtype: str, reference, images: np.ndarray, log, what: str, extra=()):
    """A runner (:func:`_runner`) of ``build()``, a module taking ``size`` inputs per call, if it
    builds and gives ``reference``'s values on ``images`` (within :data:`BATCHED_TOLERANCE` of
    each output's scale); otherwise ``None``, and the log says why."""
    try:
        run = _runner(build(), function, size, dtype)
        got, expected = run(images, extra), reference(images)
    except Exception as err:  # noqa: BLE001  (a graph the rebatching cannot carry: one input per call)
        if log:
            log(f"distillation: {what} does not build for {size} inputs per call ({type(err).__name__}); one input per call")
        return None
    for value, wanted in zip(got, expected):
        scale = float(np.abs(wanted).max()) if wanted.size else 0.0
        # Written so that a NaN anywhere fails the check.
        if value.shape != wanted.shape or not float(np.abs(value - wanted).max()) <= BATCHED_TOLERANCE * max(scale, 1e-30):
            if log:
                log(f"distillation: {what} gives other values with {size} inputs per call; one input per call")
            return None
    return run


def distill(mod: tvm.IRModule, teacher: tvm.IRModule, train: np.ndarray, held_out: np.ndarray,
            regenerated: set[str], options: DistillOptions = DistillOptions(), log=None,
            compiler: Callable[[tvm.IRModule], object] | None = None,
            site_outputs: set[str] = frozenset()) -> tuple[tvm.IRModule, dict]:
    """Distil ``teacher`` (the original network, a Relax module) into ``mod`` on unlabelled
    ``train`` images, stopping early on ``held_out`` (module docstring); returns the new module
    and a summary.

    ``regenerated``: the relearned sites' bindings (trained at the full rate); ``site_outputs``:
    their output names (module boundaries, with the inception modules' concats). ``compiler``
    builds the training and teacher modules for this machine (default: TVM's plain CPU pipeline;
    the pipeline passes the project's scheduled kernels, about 3× faster; should it fail on a
    module, the plain build is used and the log says so).
    """
    from tqdm import tqdm

    _register_missing_gradients()
    compiler = compiler or _compile_on_cpu
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
    dtype = str(func.params[0].ty.dtype)

    # What is matched: the logits, the classifier's input, the module boundaries.
    feature, teacher_feature = classifier_input(func), classifier_input(teacher["main"])
    if options.feature_weight and (feature is None or teacher_feature is None):
        raise RebirthError("distillation: the model has no final matmul (classifier) whose input features could be matched; "
                           "use feature_weight 0")
    if options.feature_weight and shape_of(feature) != shape_of(teacher_feature):
        raise RebirthError(f"distillation: the classifier reads {shape_of(feature)} features here but "
                           f"{shape_of(teacher_feature)} in the original")
    names = [feature.name] if options.feature_weight else []
    teacher_names = [teacher_feature.name] if options.feature_weight else []
    boundaries = [p for p in module_boundaries(func, teacher["main"], set(site_outputs)) if p not in names] \
        if options.module_weight else []
    names += boundaries
    teacher_names += boundaries
    if not names and not options.logit_weight:
        raise RebirthError("distillation has nothing to match: no logits, no classifier features and no module boundary found")
    # Whole steps per call: one call of a step's inputs instead of one per input costs the VM's
    # bookkeeping once (fashion_googlenet: 2.9 ms per image one at a time). The modules are
    # rebuilt for that many inputs and checked against the model's own batch; a model whose
    # graph cannot be rebatched runs one input at a time, as before.
    samples_per_step = max(options.batch // model_batch, 1)
    step_inputs = samples_per_step * model_batch
    check_images = held[:step_inputs] if len(held) >= step_inputs else None
    size = step_inputs if step_inputs > model_batch and check_images is not None else model_batch
    teacher_run = _runner(_compile(compiler, tapped(teacher, teacher_names), log), "main", model_batch, dtype)
    if size > model_batch:
        batched = _batched_runner(lambda: _compile(compiler, tapped(teacher, teacher_names, size), log), "main", size, dtype,
                                  teacher_run, check_images, log, "the original")
        if batched is None:
            size = model_batch
        else:
            teacher_run = batched

    def teach(images) -> list[np.ndarray]:
        return teacher_run(images)

    # Each point's squared error relative to the teacher's mean squared norm there, so a weight
    # means the same on every network; each module boundary is weighted ``module_weight``. Held-out
    # values are computed a batch at a time and only their sums kept: a big network's module
    # boundaries for every held-out image would not fit in memory.
    step = model_batch * max(1, EVAL_BATCH // model_batch)
    batches = [held[i:i + step] for i in range(0, len(held), step)]
    squares = np.zeros(len(names))
    teacher_logits = []
    for images in batches:
        out = teach(images)
        teacher_logits.append(out[0])
        squares += [float(np.sum(t.astype(np.float64) ** 2)) for t in out[1:]]
    teacher_logits = np.concatenate(teacher_logits)
    scales = [max(total / len(held), 1e-30) for total in squares]
    point_weights = [(options.feature_weight if name not in boundaries else options.module_weight) / scale
                     for name, scale in zip(names, scales)]
    points = list(zip(names, point_weights))

    fast = regenerated | (_classifier(func) or (None, set()))[1]
    weights, emit = lift_weights(func, fast)
    rates = [options.lr if regen else options.lr * options.rest_scale for _, regen in weights]
    trainable = [k for k, rate in enumerate(rates) if rate > 0]
    first_weight = 2 + len(points)

    def gradient_module(batch):
        training = _training_module(func, weights, emit, options.temperature, points, options.logit_weight, batch)
        params = training["loss"].params
        try:
            return relax.transform.Gradient("loss", require_grads=[params[first_weight + k] for k in trainable])(training)
        except Exception as err:  # TVM raises plain errors from C++ for an op without a gradient
            raise RebirthError(f"distillation: TVM cannot differentiate this model: {str(err).strip().splitlines()[-1]}") from None

    initial = [tvm.runtime.tensor(value) for value, _ in weights]
    vm = None
    if size > model_batch:
        own = _runner(_compile(compiler, tapped(mod, names), log), "main", model_batch, dtype)  # the reference
        executable = [None]

        def build_batched():
            executable[0] = _compile(compiler, gradient_module(size), log)
            return executable[0]

        if _batched_runner(build_batched, "logits", size, dtype, own, check_images, log, "the reborn network",
                           extra=initial) is None:
            size = model_batch
        else:
            vm = relax.VirtualMachine(executable[0], tvm.cpu())
    if vm is None:
        vm = relax.VirtualMachine(_compile(compiler, gradient_module(None), log), tvm.cpu())
    student_run = _runner(vm, "logits", size, dtype)

    def student(values_nd, images) -> list[np.ndarray]:
        return student_run(images, values_nd)

    def evaluate(values_nd) -> dict:
        """The objective (``T²``·KL + the weighted squared errors) and the top-1 agreement over the
        held-out images, a batch at a time."""
        divergence, squared, student_logits = 0.0, 0.0, []
        for images in batches:
            outputs, targets = student(values_nd, images), teach(images)
            divergence += distillation_loss(outputs[0], targets[0], options.temperature) * len(images)
            squared += sum(weight * feature_loss(out, target, 1.0) * len(images)
                           for (_, weight), out, target in zip(points, outputs[1:], targets[1:]))
            student_logits.append(outputs[0])
        agreement = np.mean(np.argmax(np.concatenate(student_logits), -1) == np.argmax(teacher_logits, -1))
        return {"objective": (options.logit_weight * divergence + squared) / len(held), "agreement": float(agreement)}

    values = [value.copy() for value, _ in weights]

    def as_tensors(vals):
        return [tvm.runtime.tensor(v) for v in vals]

    best = {"epoch": 0, **evaluate(as_tensors(values))}
    best_values = [v.copy() for v in values]
    history = [dict(best)]
    if log:
        log(f"distillation: before, held-out objective {best['objective']:.4f}, agreement {best['agreement']:.1%}"
            + (f"; matching {len(boundaries)} module boundaries" if options.module_weight else ""))
    optimiser = _Adam(values, rates)
    rng = np.random.default_rng(options.seed)
    steps_per_epoch = max(1, (len(train) // model_batch) // samples_per_step)
    total_steps, step, stale = options.epochs * steps_per_epoch, 0, 0
    for epoch in range(1, options.epochs + 1):
        images = augment(train, rng, options.mixup, options.cutmix) if options.augment else train
        order = rng.permutation(len(images) // model_batch)
        bar = tqdm(range(steps_per_epoch), desc=f"distil epoch {epoch}/{options.epochs}", disable=None, leave=False)
        for s in bar:
            current = as_tensors(values)
            grads = [np.zeros_like(values[k]) for k in trainable]
            rows = np.concatenate([np.arange(r * model_batch, (r + 1) * model_batch)
                                   for r in order[s * samples_per_step:(s + 1) * samples_per_step]])
            chunk = images[rows]
            targets = teach(chunk)  # per step: the module boundaries of a whole epoch would not fit in memory
            soft = softmax(targets[0], options.temperature).astype(dtype)
            step_loss = 0.0
            for i in range(0, len(chunk), size):
                sample = slice(i, i + size)
                loss, adjoints = vm["loss_adjoint"](tvm.runtime.tensor(chunk[sample]), tvm.runtime.tensor(soft[sample]),
                                                    *(tvm.runtime.tensor(t[sample].astype(dtype)) for t in targets[1:]), *current)
                step_loss += float(loss.numpy())
                for g, adjoint in zip(grads, adjoints):
                    g += adjoint.numpy()
            samples = max(1, len(chunk))
            full = [np.zeros_like(v) for v in values]
            for k, g in zip(trainable, grads):
                full[k] = g / samples
            optimiser.step(values, full, _schedule(step, total_steps, options.warmup))
            step += 1
            bar.set_postfix(loss=f"{step_loss / samples:.3f}")
        measured = {"epoch": epoch, **evaluate(as_tensors(values))}
        history.append(measured)
        if log:
            log(f"distillation epoch {epoch}: held-out objective {measured['objective']:.4f}, agreement {measured['agreement']:.1%}")
        if measured["objective"] < best["objective"]:
            best, best_values, stale = measured, [v.copy() for v in values], 0
        elif step > options.warmup * total_steps and _schedule(step, total_steps, options.warmup) <= PATIENCE_FROM_RATE:
            # (in the warmup the rate is low too, but rising: those epochs do not count)
            stale += 1
            if stale >= options.patience:
                break
    functions = {gv: (_rebuilt_main(func, best_values, emit) if gv.name_hint == "main" else f) for gv, f in mod.functions.items()}
    summary = {"images": len(train), "held_out": len(held), "epochs_run": len(history) - 1, "best_epoch": best["epoch"],
               "before": history[0], "after": {k: best[k] for k in ("objective", "agreement")}, "history": history,
               "temperature": options.temperature, "logit_weight": options.logit_weight,
               "feature_weight": options.feature_weight, "module_weight": options.module_weight, "module_term": "each", "patience_from_rate": PATIENCE_FROM_RATE,
               "module_boundaries": boundaries, "lr": options.lr,
               "rest_scale": options.rest_scale, "augment": options.augment, "mixup": options.mixup, "cutmix": options.cutmix, "warmup": options.warmup, "fast_tensors": sum(1 for _, r in weights if r),
               "other_tensors": sum(1 for _, r in weights if not r), "inputs_per_call": size, "seconds": round(time.perf_counter() - start, 1)}
    return tvm.IRModule(functions, attrs=mod.attrs), summary
