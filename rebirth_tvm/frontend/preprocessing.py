"""How raw pixels become a model's input: the model's own normalisation, not a guess.

A network is trained on inputs normalised one way; fed another way it still runs, and it scores
near chance. Every convention in use is one formula::

    value = (pixel × pixel_range / 255 − mean) / std        per channel, in the model's channel order

* torchvision / ImageNet: ``pixel_range 1``, ``mean 0.485,0.456,0.406``, ``std 0.229,0.224,0.225``, RGB;
* Caffe: ``pixel_range 255``, ``mean 104,117,123``, ``std 1``, BGR;
* TF-Lite (EfficientNet-Lite): ``pixel_range 255``, ``mean 127``, ``std 128``;
* Fashion-MNIST as the zoo's teacher was trained: ``pixel_range 1``, ``mean 0``, ``std 1``.

A :class:`Preprocessing` is a named preset with the user's overrides (``--mean``, ``--std``,
``--pixel-range``, ``--channel-order``); calibration images and the labelled evaluation images
both go through it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from rebirth_tvm.core.errors import RebirthError

CHANNEL_ORDERS = ("rgb", "bgr")


@dataclass(frozen=True)
class Preprocessing:
    """Pixels (0..255) → model input (module docstring); images are resized so that the short
    side is ``resize_ratio`` × the input's, then centre-cropped."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    pixel_range: float = 1.0
    channel_order: str = "rgb"
    resize_ratio: float = 1.0
    channels: int = 3
    name: str = "custom"

    def __post_init__(self):
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        for what, values in (("--mean", self.mean), ("--std", self.std)):
            if len(values) not in (1, self.channels):
                raise RebirthError(f"{what} has {len(values)} values; give 1 or one per channel ({self.channels})")
            if not all(np.isfinite(values)):
                raise RebirthError(f"{what} must be finite numbers, got {','.join(map(str, values))}")
        if not all(s > 0 for s in self.std):
            raise RebirthError(f"--std must be above 0, got {','.join(map(str, self.std))}")
        if not (np.isfinite(self.pixel_range) and self.pixel_range > 0):
            raise RebirthError(f"--pixel-range must be above 0 (1 for pixels in [0, 1], 255 for [0, 255]), got {self.pixel_range}")
        if self.channel_order not in CHANNEL_ORDERS:
            raise RebirthError(f"--channel-order {self.channel_order!r}: use rgb or bgr")
        if self.channel_order == "bgr" and self.channels != 3:
            raise RebirthError(f"--channel-order bgr needs 3-channel images; this preprocessing makes {self.channels}")

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        """``(…, C, H, W)`` pixels scaled to [0, 1], RGB order → the model's input (float32)."""
        x = np.asarray(pixels, np.float32) * np.float32(self.pixel_range)
        if self.channel_order == "bgr":
            x = x[..., ::-1, :, :]
        mean = np.asarray(self.mean, np.float32)[:, None, None]
        std = np.asarray(self.std, np.float32)[:, None, None]
        return ((x - mean) / std).astype(np.float32)

    def with_overrides(self, mean=None, std=None, pixel_range=None, channel_order=None) -> "Preprocessing":
        """This preprocessing with the user's values where given (named after them)."""
        given = {k: v for k, v in (("mean", mean), ("std", std), ("pixel_range", pixel_range), ("channel_order", channel_order))
                 if v is not None}
        return replace(self, **given, name=f"{self.name} + {', '.join(given)}") if given else self

    def describe(self) -> str:
        def values(v):
            return ",".join(f"{x:g}" for x in v)

        return (f"{self.name}: (pixel×{self.pixel_range:g}/255 − {values(self.mean)}) / {values(self.std)}, "
                f"{self.channel_order.upper() if self.channels == 3 else 'gray'}")


#: name → the convention (see the module docstring)
PRESETS = {
    # torchvision's ImageNet convention: resize the short side to 256/224 of the crop, crop, normalise.
    "imagenet": Preprocessing((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 1.0, "rgb", 256 / 224, 3, "imagenet"),
    # EfficientNet-Lite (TF-Lite's convention): pixels in 0..255, (x - 127) / 128.
    "efficientnet-lite": Preprocessing((127.0,), (128.0,), 255.0, "rgb", 256 / 224, 3, "efficientnet-lite"),
    # single-channel images in [0, 1], resized straight to the input size (e.g. Fashion-MNIST).
    "gray": Preprocessing((0.0,), (1.0,), 1.0, "rgb", 1.0, 1, "gray"),
}


def resolve(preset: "str | Preprocessing | None", default: str = "imagenet") -> Preprocessing:
    """A preset name (or None: ``default``) or a :class:`Preprocessing` as it is."""
    if isinstance(preset, Preprocessing):
        return preset
    name = preset or default
    if name not in PRESETS:
        raise RebirthError(f"unknown preprocessing preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]


@dataclass(frozen=True)
class Normalisation:
    """The user's overrides of a preset (``--mean``, ``--std``, ``--pixel-range``,
    ``--channel-order``); None keeps the preset's. Checked here, before any work; the channel
    counts are checked once the model's preset is known (:meth:`Preprocessing.with_overrides`)."""

    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    pixel_range: float | None = None
    channel_order: str | None = None

    def __post_init__(self):
        reference = Preprocessing(self.mean or (0.0,), self.std or (1.0,), self.pixel_range or 1.0,
                                  "rgb", 1.0, max(len(self.mean or ()), len(self.std or ()), 1))
        del reference  # its checks are the point (std above 0, finite values, a positive range)
        if self.channel_order is not None and self.channel_order not in CHANNEL_ORDERS:
            raise RebirthError(f"--channel-order {self.channel_order!r}: use rgb or bgr")

    @property
    def given(self) -> bool:
        return any(v is not None for v in (self.mean, self.std, self.pixel_range, self.channel_order))

    def applied_to(self, preprocessing: Preprocessing) -> Preprocessing:
        return preprocessing.with_overrides(self.mean, self.std, self.pixel_range, self.channel_order)


def parse_values(text: str | None, flag: str) -> tuple[float, ...] | None:
    """``"0.485,0.456,0.406"`` → a tuple of floats (None stays None); a one-line error otherwise."""
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise RebirthError(f"{flag} {text!r}: give numbers separated by commas, e.g. 0.485,0.456,0.406") from None
    return values
