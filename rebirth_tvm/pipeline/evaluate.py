"""Before and after, on real labelled images: accuracy and speed of the compiled model.

``python -m rebirth_tvm.compile ... --evaluate fashion-mnist`` classifies Fashion-MNIST's test
images with the model as imported (no passes) and with the model as compiled (exact passes,
rebirth, tuning), both built by TVM for the target, and times both round-robin in one process.
It answers the question a user asks of any rewrite: what did it cost, and what did it buy?
"""

from __future__ import annotations

import numpy as np

from rebirth_tvm.core.errors import RebirthError

DATASETS = ("fashion-mnist",)


def parse(text: str) -> tuple[str, int | None]:
    """``fashion-mnist`` or ``fashion-mnist:N`` (the first N test images)."""
    name, _, count = text.partition(":")
    if name not in DATASETS:
        raise RebirthError(f"--evaluate {text!r}: known labelled datasets: {', '.join(DATASETS)} (optionally :N for the first N test images)")
    if count and (not count.isdigit() or int(count) < 1):
        raise RebirthError(f"--evaluate {text!r}: N must be a positive number of test images")
    return name, int(count) if count else None


#: an original model scoring below this many times chance is taken to be fed the wrong preprocessing
NEAR_CHANCE = 2.0


def labelled_test_set(name: str, count: int | None, input_shape, preprocessing=None) -> tuple[np.ndarray, np.ndarray]:
    """The labelled test images as the model's inputs (through ``preprocessing``, a
    :class:`~rebirth_tvm.frontend.preprocessing.Preprocessing`; None: pixels in [0, 1])."""
    from rebirth_tvm.frontend.datasets import as_inputs, fashion_mnist

    if int(input_shape[0]) != 1:
        raise RebirthError(f"--evaluate classifies one image at a time; the model's batch is {int(input_shape[0])} (give --input-shape 1,...)")
    if tuple(int(d) for d in input_shape[1:]) != (1, 28, 28):
        raise RebirthError(f"--evaluate {name} gives 1x28x28 images; the model takes {'x'.join(str(int(d)) for d in input_shape[1:])}")
    images, labels = fashion_mnist("test")
    if count:
        images, labels = images[:count], labels[:count]
    if preprocessing is not None and preprocessing.channels != 1:
        raise RebirthError(f"--evaluate {name} gives gray images; the preprocessing {preprocessing.name!r} makes {preprocessing.channels} channels")
    inputs = as_inputs(images)
    return (preprocessing.apply(inputs) if preprocessing is not None else inputs), labels.astype(np.int64)


def classify(built, inputs: np.ndarray, desc: str | None = None) -> np.ndarray:
    """Top-1 class per input, one at a time (the deployed batch size)."""
    from tqdm import tqdm

    out = np.empty(len(inputs), np.int64)
    for i in tqdm(range(len(inputs)), desc=desc, disable=None if desc else True, leave=False, unit=" img"):
        out[i] = int(np.argmax(built.run(inputs[i:i + 1])))
    return out


def before_and_after(original_built, final_built, dataset: str, count: int | None, input_shape, preprocessing=None,
                     repeats: int = 15) -> dict:
    """Top-1 before/after, agreement, and round-robin latency of both builds. An original that
    scores near chance gets a ``warning`` (wrong preprocessing, most likely) instead of a drop."""
    from rebirth_tvm.backend import measure

    inputs, labels = labelled_test_set(dataset, count, input_shape, preprocessing)
    before = classify(original_built, inputs, "evaluating the original")
    after = classify(final_built, inputs, "evaluating the result")
    sample = [inputs[:1]]
    variants = [measure.tvm_variant("before", original_built.executable, sample),
                measure.tvm_variant("after", final_built.executable, sample)]
    latency = measure.interleaved_latency(variants, repeats=repeats)
    chance = 1.0 / max(int(labels.max()) + 1, 2)
    top1_before = float(np.mean(before == labels))
    warning = None
    if top1_before < NEAR_CHANCE * chance:
        warning = (f"the original model scores {top1_before:.1%} on {dataset}, near chance ({chance:.0%}): its inputs are probably "
                   f"not preprocessed as it was trained (now {preprocessing.describe() if preprocessing else 'pixels in [0, 1]'}; "
                   "set --preset, --mean, --std, --pixel-range or --channel-order); no accuracy change is reported")
    return {
        **({"warning": warning} if warning else {}),
        "preprocessing": preprocessing.describe() if preprocessing else "pixels in [0, 1]",
        "dataset": f"{dataset} test split", "images": len(inputs),
        "top1_before": float(np.mean(before == labels)), "top1_after": float(np.mean(after == labels)),
        "agreement": float(np.mean(before == after)),
        "latency_ms_before": latency["before"], "latency_ms_after": latency["after"],
        "speedup": latency["before"]["median"] / latency["after"]["median"],
        "note": "both built by TVM for the target, untuned unless --tune-trials; timed round-robin in one process",
    }
