"""Calibration data: what the relearned rewrites learn from, and what their fidelity is measured on.

Sources, in the order users have them:

* a folder of images (JPEG/PNG/BMP), preprocessed by the model's preset;
* an ``.npy`` array, already preprocessed, ``(N, C, H, W)`` or one sample ``(C, H, W)``;
* a numpy array or any iterable of ``(C, H, W)`` / ``(1, C, H, W)`` arrays;
* ``"fashion-mnist"``: Fashion-MNIST training images (labels unused) from Debian's
  ``dataset-fashion-mnist``, for models that take ``(1, 28, 28)`` inputs (the trained teacher);
* ``"random"``: standard-normal inputs, only when asked for by name, and labelled as such in
  every report (fidelity on random inputs says little about real images).

A held-out part is split off (the last ``held_out`` fraction) so fidelity is measured on inputs
the hooks never saw.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from rebirth_tvm.core.errors import RebirthError
from rebirth_tvm.core.memory import check_fits_in_memory
from rebirth_tvm.frontend.preprocessing import Preprocessing
from rebirth_tvm.frontend.preprocessing import resolve as resolve_preprocessing

#: The name that selects Fashion-MNIST's training images as calibration inputs.
FASHION_MNIST = "fashion-mnist"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")

@dataclass
class Calibration:
    """Preprocessed inputs, split into the part hooks learn from and the held-out part."""

    train: np.ndarray
    held_out: np.ndarray
    source: str
    is_random: bool = False

    @property
    def description(self) -> str:
        kind = "RANDOM normal inputs (not real data)" if self.is_random else self.source
        return f"{kind}: {len(self.train)} for relearning, {len(self.held_out)} held out"


def preprocess_image(path: str, shape: Sequence[int], preset: "str | Preprocessing" = "imagenet") -> np.ndarray:
    """One image file → a ``(C, H, W)`` float32 array for a model whose input is ``(N, C, H, W)``,
    normalised by ``preset`` (a preset name or a :class:`Preprocessing`)."""
    from PIL import Image, UnidentifiedImageError

    preprocessing = resolve_preprocessing(preset)
    height, width = int(shape[2]), int(shape[3])
    channels = preprocessing.channels
    try:
        with Image.open(path) as image:
            image = image.convert("RGB" if channels == 3 else "L")
            scale = preprocessing.resize_ratio * max(height / image.height, width / image.width)
            resized = image.resize((max(width, round(image.width * scale)), max(height, round(image.height * scale))), Image.BILINEAR)
            left, top = (resized.width - width) // 2, (resized.height - height) // 2
            pixels = np.asarray(resized.crop((left, top, left + width, top + height)), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as err:
        raise RebirthError(f"cannot read image {path}: {err}") from None
    return preprocessing.apply(pixels.reshape(height, width, channels).transpose(2, 0, 1))


def load_calibration(source, input_shape: Sequence[int], preset: "str | Preprocessing" = "imagenet", count: int | None = None,
                     held_out: float = 0.2, min_samples: int = 2, seed: int = 0) -> Calibration:
    """Read calibration inputs for a model whose input is ``input_shape`` (N, C, H, W).

    Raises :class:`RebirthError` (one line) for a missing or empty folder, an unreadable image,
    an array of the wrong shape or channel count, or fewer than ``min_samples`` inputs.
    """
    preprocessing = resolve_preprocessing(preset)
    if count is not None and (isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1):
        raise RebirthError(f"the calibration count must be 1 or more, got {count}")
    sample_shape = tuple(int(d) for d in input_shape[1:])
    check_fits_in_memory((count or 32) * int(np.prod(sample_shape)) * 4, f"{count or 32} calibration inputs of shape {list(sample_shape)}")
    is_random = isinstance(source, str) and source == "random"
    if isinstance(source, str) and source == FASHION_MNIST:
        from rebirth_tvm.frontend.datasets import fashion_mnist_inputs

        if sample_shape != (1, 28, 28):
            raise RebirthError(f"--calib {FASHION_MNIST} gives 1x28x28 images; the model takes {'x'.join(map(str, sample_shape))}")
        data = preprocessing.apply(fashion_mnist_inputs("train", count))
        label = f"{len(data)} Fashion-MNIST training images (labels unused)"
    elif is_random:
        n = count or 32
        data = np.random.default_rng(seed).standard_normal((n, *sample_shape)).astype(np.float32)
        label = "random"
    elif isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if os.path.isdir(path):
            files = sorted(f for f in os.listdir(path) if f.lower().endswith(IMAGE_EXTENSIONS))
            if not files:
                raise RebirthError(f"calibration folder {path} has no images ({', '.join(IMAGE_EXTENSIONS)})")
            files = files[:count] if count else files
            if preprocessing.channels != sample_shape[0]:
                raise RebirthError(f"preset {preprocessing.name!r} makes {preprocessing.channels}-channel images; "
                                   f"the model takes {sample_shape[0]} channels")
            data = np.stack([preprocess_image(os.path.join(path, f), input_shape, preprocessing) for f in files])
            label = f"{len(files)} images from {path} (preset {preprocessing.name})"
        elif path.endswith(".npy"):
            if not os.path.exists(path):
                raise RebirthError(f"no such calibration file: {path}")
            try:
                data = np.load(path, allow_pickle=False)
            except Exception as err:
                raise RebirthError(f"cannot read {path}: {err}") from None
            data = _as_batch(data, sample_shape, path)
            label = f"{path}"
        elif not os.path.exists(path):
            raise RebirthError(f"no such calibration folder or file: {path}")
        else:
            raise RebirthError(f"calibration must be a folder of images, an .npy file or 'random', not {path}")
    elif isinstance(source, np.ndarray):
        data, label = _as_batch(source, sample_shape, "the calibration array"), "an array"
    elif isinstance(source, Iterable):
        items = [np.asarray(x) for x in source]
        if not items:
            raise RebirthError("the calibration iterable yielded nothing")
        data = np.concatenate([_as_batch(x, sample_shape, "a calibration item") for x in items])
        label = f"{len(data)} arrays from an iterator"
    else:
        raise RebirthError(f"unsupported calibration source {type(source).__name__}")
    if count and not is_random:
        data = data[:count]
    if len(data) < min_samples:
        raise RebirthError(f"{len(data)} calibration input(s); at least {min_samples} are needed")
    if not np.all(np.isfinite(data)):
        raise RebirthError("calibration inputs contain NaN or infinity")
    n_held = max(1, int(round(len(data) * held_out)))
    return Calibration(data[:-n_held].astype(np.float32), data[-n_held:].astype(np.float32), label, is_random)


def _as_batch(data: np.ndarray, sample_shape: tuple[int, ...], what: str) -> np.ndarray:
    data = np.asarray(data)
    if data.ndim == len(sample_shape):
        data = data[None]
    if data.ndim != len(sample_shape) + 1:
        raise RebirthError(f"{what} has shape {list(data.shape)}; expected (N, {', '.join(map(str, sample_shape))})")
    if data.shape[1] != sample_shape[0]:
        raise RebirthError(f"{what} has {data.shape[1]} channels; the model takes {sample_shape[0]}")
    if tuple(data.shape[1:]) != sample_shape:
        raise RebirthError(f"{what} has samples of shape {list(data.shape[1:])}; the model takes {list(sample_shape)}")
    if not np.issubdtype(data.dtype, np.floating):
        raise RebirthError(f"{what} has dtype {data.dtype}; preprocessed float inputs are expected")
    return data.astype(np.float32)
