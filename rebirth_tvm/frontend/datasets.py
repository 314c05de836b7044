"""Real images with real labels, from what a system package ships (nothing is downloaded).

Fashion-MNIST (Zalando, MIT): 60,000 training and 10,000 test images, 28×28 grey, 10 classes,
shipped by Debian's ``dataset-fashion-mnist`` as four gzip'd IDX files. The training file is
split once and for all into ``train`` (the first 55,000) and ``val`` (the last 5,000, for model
selection while training the teacher); ``test`` is the 10,000-image test file. Nothing here
needs PyTorch.

Images come out as float32 ``(N, 1, 28, 28)`` in [0, 1] — the zoo's ``gray`` preset, which is
what the Fashion-MNIST teacher was trained on.
"""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np

from rebirth_tvm.core.errors import RebirthError

#: Where Debian's package puts the files; REBIRTH_FASHION_MNIST overrides it (same four files).
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
SPLITS = ("train", "val", "test")
VALIDATION_SIZE = 5000
_FILES = {"train": "train", "val": "train", "test": "t10k"}
_INSTALL = "install it with `apt-get install dataset-fashion-mnist` (or point REBIRTH_FASHION_MNIST at a folder holding its four IDX files)"
_IDX_TYPES = {0x08: np.uint8}


def fashion_mnist_dir() -> str:
    return os.environ.get("REBIRTH_FASHION_MNIST", FASHION_MNIST_DIR)


def read_idx(path: str, ndim: int) -> np.ndarray:
    """One IDX file (gzip'd or not) as an array; a one-line error for anything else."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            header = f.read(4)
            if len(header) != 4 or header[:2] != b"\0\0" or header[2] not in _IDX_TYPES or header[3] != ndim:
                raise RebirthError(f"{path} is not a {ndim}-D unsigned-byte IDX file (header {header.hex() or 'empty'}); "
                                   f"reinstall the package: {_INSTALL}")
            shape = struct.unpack(f">{ndim}I", f.read(4 * ndim))
            data = np.frombuffer(f.read(), dtype=_IDX_TYPES[header[2]])
    except (OSError, EOFError, struct.error) as err:
        raise RebirthError(f"cannot read {path}: {err}; reinstall the package: {_INSTALL}") from None
    if data.size != int(np.prod(shape)):
        raise RebirthError(f"{path} holds {data.size} values, its header says {shape}: the file is truncated; {_INSTALL}")
    return data.reshape(shape)


def fashion_mnist(split: str = "test", root: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 (N, 28, 28), labels uint8 (N,))`` of one split: train, val or test."""
    if split not in SPLITS:
        raise RebirthError(f"unknown Fashion-MNIST split {split!r}; known: {', '.join(SPLITS)}")
    root = root or fashion_mnist_dir()
    if not os.path.isdir(root):
        raise RebirthError(f"Fashion-MNIST is not installed ({root} does not exist): {_INSTALL}")
    stem = _FILES[split]
    paths = [os.path.join(root, f"{stem}-{kind}-idx{n}-ubyte.gz") for kind, n in (("images", 3), ("labels", 1))]
    for path in paths:
        if not os.path.exists(path):
            raise RebirthError(f"Fashion-MNIST file {path} is missing: {_INSTALL}")
    images, labels = read_idx(paths[0], 3), read_idx(paths[1], 1)
    if len(images) != len(labels):
        raise RebirthError(f"{paths[0]} has {len(images)} images but {paths[1]} has {len(labels)} labels; {_INSTALL}")
    if split == "train":
        images, labels = images[:-VALIDATION_SIZE], labels[:-VALIDATION_SIZE]
    elif split == "val":
        images, labels = images[-VALIDATION_SIZE:], labels[-VALIDATION_SIZE:]
    return images, labels


def as_inputs(images: np.ndarray) -> np.ndarray:
    """uint8 ``(N, 28, 28)`` → float32 ``(N, 1, 28, 28)`` in [0, 1] (the ``gray`` preset)."""
    return (images.astype(np.float32) / 255.0)[:, None]


def fashion_mnist_inputs(split: str = "train", count: int | None = None, root: str | None = None) -> np.ndarray:
    """The first ``count`` images of a split, preprocessed, without their labels (calibration)."""
    images, _ = fashion_mnist(split, root)
    if count is not None:
        if count < 1 or count > len(images):
            raise RebirthError(f"asked for {count} Fashion-MNIST {split} images; the split has {len(images)}")
        images = images[:count]
    return as_inputs(images)
