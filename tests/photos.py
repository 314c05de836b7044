"""Real images for relearning tests: crops of the two photos scikit-learn ships (nothing is
downloaded). Relearning on standard-normal noise teaches a site little that a constant does not
already give (measured on the stem: pool2 relearned 0.39 against the per-channel mean's 0.32),
so fidelity claims are tested on these."""

import os

import numpy as np


def photos(folder, count=24, size=96, seed=0):
    """Write ``count`` ``size``×``size`` crops (PNG and JPEG) into ``folder``; returns its path."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    images = load_sample_images().images
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    for i in range(count):
        image = images[i % len(images)]
        top, left = rng.integers(0, image.shape[0] - size), rng.integers(0, image.shape[1] - size)
        Image.fromarray(image[top:top + size, left:left + size]).save(os.path.join(folder, f"photo_{i:03d}.{'png' if i % 2 else 'jpg'}"))
    return str(folder)


def photo_batch(folder, shape, count=24, seed=0):
    """``count`` preprocessed photos for a model taking ``shape`` (N, C, H, W): (count, C, H, W)."""
    from rebirth_tvm.relearn.calibration import load_calibration

    calib = load_calibration(photos(folder, count, seed=seed), shape)
    return np.concatenate([calib.train, calib.held_out])


def original_outputs(model, images) -> np.ndarray:
    """onnxruntime's outputs of the original ONNX ``model`` (input ``x``), one image at a time."""
    from rebirth_tvm.frontend.reference import onnxruntime_outputs

    return np.concatenate([onnxruntime_outputs(model, {"x": x[None]})[0] for x in images])


def module_outputs(mod, images) -> np.ndarray:
    """A Relax module's outputs, one image at a time."""
    from relax_builders import run

    return np.concatenate([run(mod, x[None]) for x in images])


def channel_mean_error(train_outputs, test_outputs) -> float:
    """Relative MSE of the trivial baseline: each output channel's training mean, whatever the input."""
    axes = (0, 2, 3) if train_outputs.ndim == 4 else (0,)
    mean = train_outputs.mean(axis=axes, keepdims=True)
    return relative_error(np.broadcast_to(mean, test_outputs.shape), test_outputs)


def relative_error(out, ref) -> float:
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    return float(np.sum((out - ref) ** 2) / np.sum(ref ** 2))
