"""Convolution arithmetic shared by the passes and the hooks: a new conv's geometry, a float64
reference convolution (through im2col) and multiply-accumulate counts."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rebirth_tvm.core.errors import RebirthError


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


def conv_macs(out_shape, weight_shape) -> int:
    """Multiply-accumulates of a conv: every output element (N, O, Ho, Wo) reads one weight row
    (I/groups · kh · kw; ``weight_shape`` is OIHW, so grouped and depthwise convs count right)."""
    return int(np.prod(out_shape)) * int(np.prod(weight_shape[1:]))
