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

from .errors import RebirthError


@dataclass(frozen=True)
class ConvGeometry:
    """Shape of the new convolution (NCHW data, OIHW weights, groups 1)."""

    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, left, bottom, right

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        top, left, bottom, right = self.padding
        out_h = (height + top + bottom - self.kernel[0]) // self.stride[0] + 1
        out_w = (width + left + right - self.kernel[1]) // self.stride[1] + 1
        return out_h, out_w


@dataclass
class RetrainSite:
    """Everything a hook needs to relearn one site.

    Attributes
    ----------
    name: the site, as the report names it.
    geometry: the new conv's shape.
    init_weight, init_bias: where to start (derived from the original conv).
    inputs: the site's input activations, (N, C, H, W), from the reborn network below it.
    targets: the teacher's outputs on ``inputs``, (N, O, Ho, Wo), pre-activation if a ReLU follows.
    teacher: runs the original block on new inputs (pre-activation), for hooks that want more data.
    """

    name: str
    geometry: ConvGeometry
    init_weight: np.ndarray
    init_bias: np.ndarray
    inputs: np.ndarray
    targets: np.ndarray
    teacher: Callable[[np.ndarray], np.ndarray] | None = None


class RetrainHook(Protocol):
    def __call__(self, site: RetrainSite) -> tuple[np.ndarray, np.ndarray]: ...


def im2col(x: np.ndarray, geometry: ConvGeometry) -> np.ndarray:
    """Patches of ``x`` as rows: (N·Ho·Wo, C·kh·kw), in OIHW weight order.

    ``im2col(x, g) @ w.reshape(O, -1).T`` is the convolution of ``x`` with ``w``.
    """
    n, c, h, w = x.shape
    if c != geometry.in_channels:
        raise RebirthError(f"site input has {c} channels, the conv expects {geometry.in_channels}")
    top, left, bottom, right = geometry.padding
    padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    kh, kw = geometry.kernel
    sh, sw = geometry.stride
    out_h, out_w = geometry.output_size(h, w)
    if out_h <= 0 or out_w <= 0:
        raise RebirthError(f"a {kh}x{kw} conv does not fit a {h}x{w} input")
    windows = np.lib.stride_tricks.sliding_window_view(padded, (kh, kw), axis=(2, 3))
    windows = windows[:, :, : (out_h - 1) * sh + 1 : sh, : (out_w - 1) * sw + 1 : sw]  # N C Ho Wo kh kw
    return windows.transpose(0, 2, 3, 1, 4, 5).reshape(n * out_h * out_w, c * kh * kw)


def conv2d_numpy(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, geometry: ConvGeometry) -> np.ndarray:
    """Reference convolution through :func:`im2col` (float64), NCHW out."""
    n, _, h, w = x.shape
    out_h, out_w = geometry.output_size(h, w)
    cols = im2col(x.astype(np.float64), geometry)
    out = cols @ weight.reshape(weight.shape[0], -1).T.astype(np.float64) + bias.astype(np.float64)
    return out.reshape(n, out_h, out_w, -1).transpose(0, 3, 1, 2)


class LeastSquaresHook:
    """Closed-form ridge regression of the teacher's outputs on the new conv's input patches.

    Solves ``min ||A [W; b] - T||² + λ ||W||²`` with ``A`` the im2col patches (plus a column of
    ones for the bias) and ``T`` the teacher's outputs; ``λ = ridge · trace(AᵀA) / dim`` scales
    with the data so one setting fits every layer. The normal equations are accumulated a few
    samples at a time, so memory is O(dim²) whatever the calibration size. Seconds per site.

    Parameters
    ----------
    ridge: relative regularisation; small values recover exact solutions when they exist.
    chunk: samples per im2col block (bounds the patch matrix held at once).
    """

    def __init__(self, ridge: float = 1e-8, chunk: int = 8):
        self.ridge = ridge
        self.chunk = chunk

    def __call__(self, site: RetrainSite) -> tuple[np.ndarray, np.ndarray]:
        g = site.geometry
        n = len(site.inputs)
        if site.targets.shape[0] != n:
            raise RebirthError(f"site {site.name}: {n} input samples but {site.targets.shape[0]} targets")
        dim = g.in_channels * g.kernel[0] * g.kernel[1]
        rows, sum_a, sum_t = 0, np.zeros(dim), np.zeros(g.out_channels)
        gram, cross = np.zeros((dim, dim)), np.zeros((dim, g.out_channels))
        for start in range(0, n, self.chunk):
            cols = im2col(site.inputs[start:start + self.chunk].astype(np.float64), g)
            targets = site.targets[start:start + self.chunk].astype(np.float64).transpose(0, 2, 3, 1).reshape(-1, g.out_channels)
            if cols.shape[0] != targets.shape[0]:
                raise RebirthError(f"site {site.name}: {cols.shape[0]} patches but {targets.shape[0]} target rows (shape mismatch)")
            rows += cols.shape[0]
            sum_a += cols.sum(axis=0)
            sum_t += targets.sum(axis=0)
            gram += cols.T @ cols
            cross += cols.T @ targets
        if rows < dim + 1:
            raise RebirthError(
                f"site {site.name}: {rows} input patches for {dim + 1} unknowns per channel; give more calibration images"
            )
        # Centre (subtract the means) so the bias is solved separately and the ridge does not shrink it.
        mean_a, mean_t = sum_a / rows, sum_t / rows
        gram -= rows * np.outer(mean_a, mean_a)
        cross -= rows * np.outer(mean_a, mean_t)
        lam = self.ridge * max(np.trace(gram) / dim, 1e-30)
        solution = np.linalg.solve(gram + lam * np.eye(dim), cross)
        weight = solution.T.reshape(g.out_channels, g.in_channels, *g.kernel)
        bias = mean_t - mean_a @ solution
        return weight.astype(site.init_weight.dtype), bias.astype(site.init_bias.dtype)


def resolve_hook(hook) -> RetrainHook:
    """``"lstsq"`` or a callable with the hook signature."""
    if hook in (None, "lstsq"):
        return LeastSquaresHook()
    if callable(hook):
        return hook
    raise RebirthError(f"unknown hook {hook!r}; use 'lstsq' or a callable(site) -> (weight, bias)")
