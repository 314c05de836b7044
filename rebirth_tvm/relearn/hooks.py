"""Retraining hooks: where a relearned (lossy) rewrite gets its new weights.

A lossy rewrite (conv+pool → strided conv, conv+LRN → conv, branch merges) replaces a block by
one convolution that cannot reproduce the block exactly. A *hook* relearns that convolution's
weights so that it imitates the original block (the teacher) on real activations. A hook is any
callable ``hook(site: RetrainSite) -> (weight, bias)``; :class:`LeastSquaresHook` is the
closed-form one built in.

The data a hook sees is the site's *input activations computed by the already reborn network
below it* and the teacher's outputs on those same inputs, so errors cannot compound unseen.
Where a ReLU follows the new conv, the targets are the teacher's *pre-activation* outputs (max
pooling and ReLU commute, so relu(pool(z)) is reproduced by relu(conv'(x)) when conv'(x) ≈ pool(z)).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np

from rebirth_tvm.core.conv_math import ConvGeometry, conv2d_numpy, im2col  # noqa: F401  (a hook's vocabulary)
from rebirth_tvm.core.errors import RebirthError


@dataclass
class RetrainSite:
    """Everything a hook needs to relearn one site.

    Attributes
    ----------
    name: the site, as the report names it.
    geometry: the new conv's shape.
    init_weight, init_bias: where to start (derived from the original conv).
    inputs: the site's input activations, (N, C, H, W), from the reborn network below it.
    targets: what the new conv should output for ``inputs``, (N, O, Ho, Wo): the original
        network's values at the site (pre-activation if a ReLU follows, where available).
    teacher: runs the original block on new inputs (pre-activation), for hooks that want more data.
    activation: ``"relu"`` when the new conv is followed by a ReLU in the rewritten model (so
        only ``relu(conv(x))`` has to match ``relu(targets)``), else None.
    """

    name: str
    geometry: ConvGeometry
    init_weight: np.ndarray
    init_bias: np.ndarray
    inputs: np.ndarray
    targets: np.ndarray
    teacher: Callable[[np.ndarray], np.ndarray] | None = None
    activation: str | None = None


class RetrainHook(Protocol):
    def __call__(self, site: RetrainSite) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass
class _Moments:
    """Sufficient statistics of one group of samples for linear least squares."""

    rows: int
    sum_a: np.ndarray
    sum_t: np.ndarray
    gram: np.ndarray  # AᵀA
    cross: np.ndarray  # AᵀT
    sum_tt: float  # Σ T²

    def __add__(self, other: "_Moments") -> "_Moments":
        return _Moments(self.rows + other.rows, self.sum_a + other.sum_a, self.sum_t + other.sum_t,
                        self.gram + other.gram, self.cross + other.cross, self.sum_tt + other.sum_tt)

    def __sub__(self, other: "_Moments") -> "_Moments":
        return _Moments(self.rows - other.rows, self.sum_a - other.sum_a, self.sum_t - other.sum_t,
                        self.gram - other.gram, self.cross - other.cross, self.sum_tt - other.sum_tt)

    def centred(self):
        mean_a, mean_t = self.sum_a / self.rows, self.sum_t / self.rows
        return (self.gram - self.rows * np.outer(mean_a, mean_a),
                self.cross - self.rows * np.outer(mean_a, mean_t), mean_a, mean_t)

    def squared_error(self, weight: np.ndarray, bias: np.ndarray) -> float:
        """Σ ‖a·W + b − t‖² over these rows, from the statistics alone."""
        return float(np.sum(weight * (self.gram @ weight)) + self.rows * bias @ bias + self.sum_tt
                     + 2 * bias @ (weight.T @ self.sum_a) - 2 * np.sum(weight * self.cross) - 2 * bias @ self.sum_t)


class LeastSquaresHook:
    """Closed-form ridge regression of the teacher's outputs on the new conv's input patches.

    Solves ``min ||A W + b - T||² + λ ||W||²`` with ``A`` the im2col patches and ``T`` the
    teacher's outputs (the bias is fitted unregularised by centring). ``λ`` is chosen by k-fold
    cross-validation over the calibration samples from a grid relative to ``trace(AᵀA)/dim``:
    with few images a large λ keeps the new conv from fitting noise, and where an exact solution
    exists the smallest λ wins and recovers it. With fewer patches than unknowns (small feature
    maps, few images) the problem is still solved, by cross-validated ridge alone, and the site's
    report says it was underdetermined; with too few samples to cross-validate it is an error. Normal equations are accumulated a few samples at
    a time, so memory is O(dim²) whatever the calibration size; one eigendecomposition per fold
    serves every λ. Seconds per site.

    Parameters
    ----------
    ridges: the relative λ grid; one value disables cross-validation. The grid stops at 1e-2:
        larger λ won local cross-validation on max-pool sites but shrank their outputs enough
        to hurt the layers after them (GoogLeNet-like stem, end-to-end relative MSE: 0.43 with
        the grid to 1e-2, 0.74 to 1.0, 0.48 with no ridge; on 19 photos 0.22 vs 8.0 without).
    folds: cross-validation folds over samples (fewer samples than folds: no cross-validation,
        the smallest ridge is used).
    chunk: samples per im2col block (bounds the patch matrix held at once).
    """

    def __init__(self, ridges=(1e-8, 1e-6, 1e-4, 1e-3, 1e-2), folds: int = 4, chunk: int = 8, hinge_steps: int = 4):
        self.ridges = tuple(ridges) if np.ndim(ridges) else (float(ridges),)
        self.folds = folds
        self.chunk = chunk
        self.hinge_steps = hinge_steps
        self.chosen_ridge: float | None = None  # the last site's choice, for reports and tests
        self.last_fit: dict | None = None  # the last site's problem size and ridge, for its report

    def moments(self, site: RetrainSite, start: int, stop: int) -> _Moments:
        g = site.geometry
        dim = g.in_channels * g.kernel[0] * g.kernel[1]
        total = _Moments(0, np.zeros(dim), np.zeros(g.out_channels), np.zeros((dim, dim)), np.zeros((dim, g.out_channels)), 0.0)
        for first in range(start, stop, self.chunk):
            cols = im2col(site.inputs[first:min(first + self.chunk, stop)].astype(np.float64), g)
            targets = site.targets[first:min(first + self.chunk, stop)].astype(np.float64).transpose(0, 2, 3, 1).reshape(-1, g.out_channels)
            if cols.shape[0] != targets.shape[0]:
                raise RebirthError(f"site {site.name}: {cols.shape[0]} patches but {targets.shape[0]} target rows (shape mismatch)")
            total = total + _Moments(cols.shape[0], cols.sum(axis=0), targets.sum(axis=0), cols.T @ cols, cols.T @ targets, float(np.sum(targets ** 2)))
        return total

    @staticmethod
    def _solve(moments: _Moments, ridges, eigen=None):
        """(weight, bias) for each relative ridge, from one eigendecomposition of the centred
        Gram matrix (``eigen``: one already made for the same inputs)."""
        gram, cross, mean_a, mean_t = moments.centred()
        scale = max(np.trace(gram) / len(gram), 1e-30)
        values, vectors = eigen if eigen is not None else np.linalg.eigh(gram)
        projected = vectors.T @ cross
        for ridge in ridges:
            weight = vectors @ (projected / (np.maximum(values, 0) + ridge * scale)[:, None])
            yield ridge, weight, mean_t - mean_a @ weight

    def __call__(self, site: RetrainSite) -> tuple[np.ndarray, np.ndarray]:
        g = site.geometry
        n = len(site.inputs)
        if site.targets.shape[0] != n:
            raise RebirthError(f"site {site.name}: {n} input samples but {site.targets.shape[0]} targets")
        dim = g.in_channels * g.kernel[0] * g.kernel[1]
        bounds = np.linspace(0, n, min(self.folds, n) + 1).astype(int)
        parts = [self.moments(site, a, b) for a, b in zip(bounds[:-1], bounds[1:])]
        total = parts[0]
        for part in parts[1:]:
            total = total + part
        underdetermined = total.rows < dim + 1
        if underdetermined and len(parts) < 2:
            per_sample = max(total.rows // max(n, 1), 1)
            raise RebirthError(
                f"site {site.name}: {total.rows} input patches for {dim + 1} unknowns per channel; give more calibration "
                f"images (this site needs at least {-(-(dim + 1) // per_sample)} for relearning, plus the held-out ones)"
            )
        # Fewer patches than unknowns: still a well-posed ridge problem, but only cross-validation
        # can say how much to trust the data, so the grid goes on to stronger ridges there.
        ridges = self.ridges + tuple(r for r in (1e-1, 1.0) if r > max(self.ridges)) if underdetermined else self.ridges
        ridge = min(ridges)
        if len(ridges) > 1 and len(parts) >= 2:
            errors = dict.fromkeys(ridges, 0.0)
            for part in parts:
                for candidate, weight, bias in self._solve(total - part, ridges):
                    errors[candidate] += part.squared_error(weight, bias)
            ridge = min(errors, key=lambda r: (errors[r], r))
        self.last_fit = {"patches": int(total.rows), "unknowns_per_channel": dim + 1, "underdetermined": bool(underdetermined),
                         "ridge": float(ridge)}
        self.chosen_ridge = ridge
        _, weight, bias = next(self._solve(total, (ridge,)))
        if site.activation == "relu" and self.hinge_steps:
            weight, bias, steps = self._hinge(site, total, weight, bias, ridge)
            self.last_fit["hinge_steps"] = steps
        weight = weight.T.reshape(g.out_channels, g.in_channels, *g.kernel)
        return weight.astype(site.init_weight.dtype), bias.astype(site.init_bias.dtype)

    def _hinge(self, site: RetrainSite, total: _Moments, weight, bias, ridge):
        """Refit where a ReLU follows: only ``relu(conv(x))`` reaches the next layer, so a target
        at or below zero (rectified, or a negative pre-activation) is met by *any* output at or
        below zero. The loss is ``Σ_{t>0} (y − t)² + Σ_{t≤0} max(y, 0)²`` (a hinge), minimised by
        majorisation: each step solves least squares against the targets with every ``t ≤ 0``
        replaced by ``min(y, 0)`` of the current fit (no pull where the output is already
        below zero), which never increases the hinge loss. The Gram matrix does not change:
        only ``AᵀT`` is accumulated again. Returns the weights and the steps taken."""
        g = site.geometry
        steps = 0
        eigen = np.linalg.eigh(total.centred()[0])  # the inputs do not change: one decomposition
        for _ in range(self.hinge_steps):
            cross, sum_t, sum_tt, moved = np.zeros_like(total.cross), np.zeros_like(total.sum_t), 0.0, 0
            for first in range(0, len(site.inputs), self.chunk):
                cols = im2col(site.inputs[first:first + self.chunk].astype(np.float64), g)
                targets = site.targets[first:first + self.chunk].astype(np.float64).transpose(0, 2, 3, 1).reshape(-1, g.out_channels)
                free = targets <= 0
                relaxed = np.where(free, np.minimum(cols @ weight + bias, 0.0), targets)
                moved += int(np.count_nonzero(relaxed[free]))
                cross += cols.T @ relaxed
                sum_t += relaxed.sum(axis=0)
                sum_tt += float(np.sum(relaxed ** 2))
            if not moved:
                break  # every rectified target already met exactly: the plain fit is the hinge fit
            relaxed_total = _Moments(total.rows, total.sum_a, sum_t, total.gram, cross, sum_tt)
            _, weight, bias = next(self._solve(relaxed_total, (ridge,), eigen))
            steps += 1
        return weight, bias, steps


def hook_name(hook) -> str:
    return getattr(hook, "__qualname__", None) or getattr(hook, "__name__", None) or type(hook).__name__


def call_hook(hook: RetrainHook, site: RetrainSite) -> tuple[np.ndarray, np.ndarray]:
    """Run a retraining hook on one site and check what it returns: a ``(weight, bias)`` pair of
    the site's shapes, every value finite. Whatever goes wrong in a hook (it raises, returns
    None, the wrong shapes, NaN) is one :class:`RebirthError` naming the hook and the site."""
    name = hook_name(hook)
    try:
        result = hook(site)
    except RebirthError:
        raise
    except Exception as err:
        raise RebirthError(f"hook {name} failed on site {site.name}: {type(err).__name__}: {err}") from err
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        raise RebirthError(f"hook {name} returned {type(result).__name__} for site {site.name}; it must return (weight, bias)")
    try:
        weight, bias = np.asarray(result[0], np.float64), np.asarray(result[1], np.float64)
    except (TypeError, ValueError) as err:
        raise RebirthError(f"hook {name} returned something that is not two arrays for site {site.name}: {err}") from None
    if weight.shape != tuple(site.init_weight.shape) or bias.shape != tuple(site.init_bias.shape):
        raise RebirthError(f"hook {name} returned weight {list(weight.shape)} / bias {list(bias.shape)} for site {site.name}; "
                           f"expected {list(site.init_weight.shape)} / {list(site.init_bias.shape)}")
    if not (np.all(np.isfinite(weight)) and np.all(np.isfinite(bias))):
        raise RebirthError(f"hook {name} returned NaN or infinite weights for site {site.name}")
    return weight, bias


def resolve_hook(hook) -> RetrainHook:
    """``"lstsq"``, ``"sgd"``, ``"package.module:function"``, or a callable with the hook signature."""
    if hook is None or (isinstance(hook, str) and hook == "lstsq"):
        return LeastSquaresHook()
    if isinstance(hook, str) and hook == "sgd":
        return SGDHook()
    if callable(hook):
        return hook
    if isinstance(hook, str) and ":" in hook:
        import importlib

        module_name, _, attr = hook.partition(":")
        try:
            found = getattr(importlib.import_module(module_name), attr)
        except Exception as err:  # ImportError, AttributeError, or whatever the module raises on import
            raise RebirthError(f"cannot load hook {hook!r}: {type(err).__name__}: {err}") from None
        if not callable(found):
            raise RebirthError(f"hook {hook!r} is not callable")
        return found
    raise RebirthError(f"unknown hook {hook!r}; use 'lstsq', 'sgd', 'module:function' or a callable(site) -> (weight, bias)")


class SGDHook:
    """Layer-wise SGD on the site's new conv, with gradients computed by TVM.

    Starts from the :class:`LeastSquaresHook` solution and minimises the MSE to the teacher's
    targets *through the site's activation* (``relu(conv(x))`` against ``relu(targets)`` where a
    ReLU follows: the objective least squares cannot solve in closed form) with momentum SGD:
    momentum 0.9, batch 32 and a step decay by ``gamma`` 0.1 as in the paper, the step scaled to
    the run (``steps`` decays over ``epochs``). The loss is the MSE divided by the targets' mean
    square, so layers of any scale look alike.

    The learning rate is given relative to the curvature, ``lr / L`` with ``L`` the largest
    eigenvalue of the loss's Hessian for the linear part (from the patches' second moments):
    the paper's absolute 0.01 belongs to Caffe's loss scaling and its layers, and taken literally
    here it moved the loss by 1e-5 per epoch on a small site. If an epoch ends worse than it
    began, the learning rate is halved and the epoch restarts from the best weights, so the
    result is never worse on the training inputs than where it started. The gradient is built
    with ``relax.transform.Gradient`` and compiled once per site; the update runs in numpy.

    Parameters
    ----------
    epochs: passes over the site's training inputs.
    batch: samples per step (inputs beyond a whole number of batches are left out of a pass).
    lr: step size as a fraction of 1/L (stable below 2 without momentum).
    momentum, gamma, steps: momentum and the step decay (``steps`` decays per run).
    start: ``"lstsq"`` (default) or ``"init"`` (the site's initial weights).
    progress: show a tqdm bar on a terminal.
    """

    def __init__(self, epochs: int = 8, batch: int = 32, lr: float = 0.1, momentum: float = 0.9, gamma: float = 0.1,
                 steps: int = 2, start: str = "lstsq", seed: int = 0, progress: bool = True):
        if start not in ("lstsq", "init"):
            raise RebirthError(f"SGDHook start must be 'lstsq' or 'init', not {start!r}")
        self.epochs, self.batch, self.lr, self.momentum = epochs, batch, lr, momentum
        self.gamma, self.steps, self.start, self.seed, self.progress = gamma, steps, start, seed, progress
        self.history: list[float] = []  # the last site's training loss per epoch (relative MSE)

    @staticmethod
    def curvature(site: RetrainSite, scale: float, samples: int = 8) -> float:
        """Largest Hessian eigenvalue of the relative-MSE loss in one output channel's weights."""
        cols = im2col(site.inputs[:samples].astype(np.float64), site.geometry)
        cols = np.hstack([cols, np.ones((len(cols), 1))])  # the bias
        moment = cols.T @ cols / len(cols)
        top = float(np.linalg.eigvalsh(moment)[-1])
        return 2.0 * top / (site.geometry.out_channels * scale)

    def __call__(self, site: RetrainSite) -> tuple[np.ndarray, np.ndarray]:
        from tqdm import tqdm

        if self.start == "lstsq":
            weight, bias = LeastSquaresHook()(site)
        else:
            weight, bias = site.init_weight, site.init_bias
        weight, bias = np.asarray(weight, np.float32), np.asarray(bias, np.float32)
        n = len(site.inputs)
        batch = min(self.batch, n)
        relu = site.activation == "relu"
        targets = np.maximum(site.targets, 0) if relu else site.targets
        scale = float(np.mean(np.square(targets, dtype=np.float64))) or 1.0
        step_grad = self._gradient(site, batch, scale, relu)

        def loss_of(w, b):
            total = 0.0
            for i in range(0, n - batch + 1, batch):
                total += step_grad(site.inputs[i:i + batch], targets[i:i + batch], w, b)[0]
            return total / max(n // batch, 1)

        rng = np.random.default_rng(self.seed)
        best = (loss_of(weight, bias), weight, bias)
        self.history = [best[0]]
        velocity = [np.zeros_like(weight), np.zeros_like(bias)]
        lr = self.lr / self.curvature(site, scale)
        decay_every = max(1, self.epochs // (self.steps + 1))
        bar = tqdm(range(self.epochs), desc=f"SGD {site.name}", unit=" epoch", disable=None if self.progress else True, leave=False)
        for epoch in bar:
            if epoch and epoch % decay_every == 0:
                lr *= self.gamma
            order = rng.permutation(n)
            w, b = best[1].copy(), best[2].copy()
            for i in range(0, n - batch + 1, batch):
                rows = order[i:i + batch]
                _, grad_w, grad_b = step_grad(site.inputs[rows], targets[rows], w, b)
                velocity[0] = self.momentum * velocity[0] - lr * grad_w
                velocity[1] = self.momentum * velocity[1] - lr * grad_b
                w, b = w + velocity[0], b + velocity[1]
            loss = loss_of(w, b)
            if not np.isfinite(loss) or loss > best[0]:
                lr *= 0.5  # overshot: retry from the best weights with a smaller step
                velocity = [np.zeros_like(weight), np.zeros_like(bias)]
            else:
                best = (loss, w, b)
            self.history.append(float(best[0]))
            bar.set_postfix_str(f"rel. MSE {best[0]:.4g}")
        bar.close()
        return best[1].astype(site.init_weight.dtype), best[2].astype(site.init_bias.dtype)

    @staticmethod
    def _gradient(site: RetrainSite, batch: int, scale: float, relu: bool):
        """A compiled ``(x, y, w, b) -> (loss, dw, db)`` for the site's conv (relative MSE loss)."""
        import tvm
        from tvm import relax

        g = site.geometry
        x_shape = (batch, *site.inputs.shape[1:])
        y_shape = (batch, *site.targets.shape[1:])
        x = relax.Var("x", relax.TensorType(x_shape, "float32"))
        y = relax.Var("y", relax.TensorType(y_shape, "float32"))
        w = relax.Var("w", relax.TensorType((g.out_channels, g.in_channels, *g.kernel), "float32"))
        b = relax.Var("b", relax.TensorType((g.out_channels,), "float32"))
        bb = relax.BlockBuilder()
        with bb.function("loss", [x, y, w, b]):
            with bb.dataflow():
                pred = bb.emit(relax.op.add(
                    relax.op.nn.conv2d(x, w, strides=list(g.stride), padding=list(g.padding)),
                    relax.op.reshape(b, (1, g.out_channels, 1, 1))))
                if relu:
                    pred = bb.emit(relax.op.nn.relu(pred))
                diff = bb.emit(relax.op.subtract(pred, y))
                loss = bb.emit_output(relax.op.divide(relax.op.mean(relax.op.multiply(diff, diff)),
                                                      relax.const(scale, "float32")))
            bb.emit_func_output(loss)
        mod = relax.transform.Gradient("loss", require_grads=[w, b])(bb.get())
        vm = relax.VirtualMachine(tvm.compile(mod, target=tvm.target.Target("llvm")), tvm.cpu())
        device = tvm.cpu()

        def run(xs, ys, ws, bs):
            args = [tvm.runtime.tensor(np.ascontiguousarray(a, dtype=np.float32), device) for a in (xs, ys, ws, bs)]
            loss_value, grads = vm["loss_adjoint"](*args)
            return float(loss_value.numpy()), grads[0].numpy(), grads[1].numpy()

        return run
