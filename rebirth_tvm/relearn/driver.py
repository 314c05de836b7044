"""The one relearning driver: every relearned rewrite fits its new weights here.

A merge (:mod:`rebirth_tvm.passes`), a Tucker-2 restore conv and the classifier refit each hand
:func:`fit` one site — its new conv's geometry, initial weights, input activations and targets —
and get back a :class:`Fit` or a :class:`Refusal` with the reason. Whatever the rewrite, the
driver applies the same rules:

* **one held-out split**: the last fifth of the samples (at least one), never seen by the hook;
* **one fidelity measure**: relative MSE and cosine on the held-out samples, of what the network
  passes on (after the ReLU where one follows), for the initial and the relearned weights, and
  for the trivial baseline (every output channel's mean, whatever the input);
* **one "never worse" policy**: a built-in hook (least squares, SGD) that ends worse than the
  initial weights on the held-out samples gives way to them, and the fit says so; a user's own
  hook is the user's decision: its weights are used as given;
* **one error limit**: with ``max_error``, a fit whose held-out relative MSE stays above it is a
  :class:`Refusal` (the rewrite puts nothing in), with its numbers.

Hooks are called through :func:`~rebirth_tvm.relearn.hooks.call_hook`, so whatever goes wrong in
one (it raises, returns the wrong shapes, NaN) is one :class:`~rebirth_tvm.core.errors.RebirthError`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from rebirth_tvm.relearn.hooks import ConvGeometry, LeastSquaresHook, RetrainSite, SGDHook, call_hook, conv2d_numpy

#: Built-in hooks: their fit never replaces better initial weights (see the module docstring).
BUILTIN_HOOKS = (LeastSquaresHook, SGDHook)


def held_out_count(samples: int) -> int:
    """How many of ``samples`` are held out to measure fidelity: a fifth, at least one."""
    return max(1, samples // 5)


def fidelity(out: np.ndarray, ref: np.ndarray) -> dict:
    """Relative MSE (‖out − ref‖² / ‖ref‖²) and cosine similarity, over all elements."""
    out, ref = out.reshape(-1).astype(np.float64), ref.reshape(-1).astype(np.float64)
    rel_mse = float(np.sum((out - ref) ** 2) / max(np.sum(ref ** 2), 1e-30))
    cosine = float(out @ ref / max(np.linalg.norm(out) * np.linalg.norm(ref), 1e-30))
    return {"rel_mse": rel_mse, "cosine": cosine}


def passed_on_fidelity(out: np.ndarray, ref: np.ndarray, relu: bool) -> dict:
    """:func:`fidelity` of what the network passes on: after the ReLU where one follows (the
    negative part of a pre-activation never reaches the next layer)."""
    if relu:
        out, ref = np.maximum(out, 0), np.maximum(ref, 0)
    return fidelity(out, ref)


def channel_mean_fidelity(train_targets: np.ndarray, test_targets: np.ndarray, relu: bool) -> dict:
    """The trivial baseline a relearned site must beat: predict every output channel's mean
    (over the training targets, after the ReLU where one follows) whatever the input.

    A relearned conv that does no better than this constant has learned nothing about its input,
    whatever its error against the initial weights says."""
    passed = np.maximum(train_targets, 0) if relu else train_targets
    mean = passed.mean(axis=(0, 2, 3), keepdims=True) if passed.ndim == 4 else passed.mean(axis=0, keepdims=True)
    return passed_on_fidelity(np.broadcast_to(mean, test_targets.shape), test_targets, relu)


@dataclass
class Fit:
    """New weights for one site, and how close they came on the held-out samples."""

    weight: np.ndarray
    bias: np.ndarray
    #: what the report keeps: fidelity (initial, relearned, channel-mean baseline), sample
    #: counts, whether the initial weights were kept, the hook's own fit statistics, seconds
    detail: dict = field(default_factory=dict)

    @property
    def kept_initial(self) -> bool:
        return bool(self.detail.get("kept_initial"))

    @property
    def before(self) -> dict:
        return self.detail["fidelity_initial"]

    @property
    def after(self) -> dict:
        return self.detail["fidelity"]


@dataclass
class Refusal:
    """A site the driver would not rewrite: why, with the numbers behind it."""

    reason: str
    detail: dict = field(default_factory=dict)


def fit(hook, name: str, geometry: ConvGeometry, init_weight: np.ndarray, init_bias: np.ndarray,
        inputs: np.ndarray, targets: np.ndarray, relu: bool, teacher: Callable | None = None,
        max_error: float | None = None) -> Fit | Refusal:
    """Relearn one site's conv: ``conv(inputs) (+ReLU)`` should give ``targets`` (+ReLU).

    ``inputs`` (N, C, H, W) are the site's input activations in the reborn network, ``targets``
    (N, O, Ho, Wo) what the original network computed there (pre-activation where it can). The
    last :func:`held_out_count` samples are held out. See the module docstring for the rules.
    """
    start = time.perf_counter()
    held = held_out_count(len(inputs))
    train_x, train_t, test_x, test_t = inputs[:-held], targets[:-held], inputs[-held:], targets[-held:]
    site = RetrainSite(name, geometry, init_weight, init_bias, train_x, train_t, teacher, "relu" if relu else None)
    weight, bias = call_hook(hook, site)
    before = passed_on_fidelity(conv2d_numpy(test_x, init_weight, init_bias, geometry), test_t, relu)
    after = passed_on_fidelity(conv2d_numpy(test_x, weight, bias, geometry), test_t, relu)
    kept_initial = after["rel_mse"] > before["rel_mse"] and isinstance(hook, BUILTIN_HOOKS)
    hook_fidelity = after
    if kept_initial:
        weight, bias, after = np.asarray(init_weight, np.float64), np.asarray(init_bias, np.float64), before
    statistics = getattr(hook, "last_fit", None)  # hooks that can say how well-posed the fit was
    detail = {"fidelity_initial": before, "fidelity": after,
              "fidelity_channel_mean": channel_mean_fidelity(train_t, test_t, relu),
              **({"fidelity_hook": hook_fidelity} if kept_initial else {}),  # what the hook's fit reached
              "held_out": held, "calibration": len(inputs), "kept_initial": kept_initial,
              **({"fit": statistics} if statistics else {}), "seconds": round(time.perf_counter() - start, 3)}
    if max_error is not None and after["rel_mse"] > max_error:
        return Refusal(f"relearned, but held-out relative MSE {after['rel_mse']:.3g} stays above the limit {max_error:g}: "
                       "left as it was", detail)
    return Fit(weight, bias, detail)
