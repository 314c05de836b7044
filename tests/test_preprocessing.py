"""The model's own input normalisation: presets, the user's overrides, and what happens when
they are wrong (a one-line error, or a warning instead of an accuracy drop)."""

import numpy as np
import pytest

from rebirth_tvm.core.errors import RebirthError
from rebirth_tvm.frontend.preprocessing import PRESETS, Normalisation, Preprocessing, parse_values


def test_every_convention_is_one_formula():
    pixels = np.random.default_rng(0).uniform(0, 1, (2, 3, 4, 5)).astype(np.float32)  # [0, 1], RGB
    torch = PRESETS["imagenet"].apply(pixels)
    mean, std = np.array([0.485, 0.456, 0.406])[:, None, None], np.array([0.229, 0.224, 0.225])[:, None, None]
    np.testing.assert_allclose(torch, (pixels - mean) / std, rtol=1e-5)
    caffe = Preprocessing((104.0, 117.0, 123.0), (1.0,), 255.0, "bgr").apply(pixels)
    np.testing.assert_allclose(caffe, pixels[:, ::-1] * 255 - np.array([104.0, 117.0, 123.0])[:, None, None], rtol=1e-5)
    lite = PRESETS["efficientnet-lite"].apply(pixels)
    np.testing.assert_allclose(lite, (pixels * 255 - 127) / 128, rtol=1e-5)
    assert PRESETS["gray"].apply(pixels[:, :1]).tolist() == pixels[:, :1].tolist()


def test_overrides_replace_only_what_is_given():
    custom = Normalisation(mean=(0.5,), std=(0.25,)).applied_to(PRESETS["gray"])
    assert (custom.mean, custom.std, custom.pixel_range, custom.channels) == ((0.5,), (0.25,), 1.0, 1)
    assert "gray + mean, std" in custom.describe()
    assert Normalisation().applied_to(PRESETS["imagenet"]) is PRESETS["imagenet"]


@pytest.mark.parametrize("make, message", [
    (lambda: Normalisation(std=(0.0,)), "--std must be above 0"),
    (lambda: Normalisation(pixel_range=-1.0), "--pixel-range must be above 0"),
    (lambda: Normalisation(channel_order="brg"), "use rgb or bgr"),
    (lambda: Normalisation(mean=(float("nan"),)), "finite"),
    (lambda: Normalisation(mean=(0.1, 0.2)).applied_to(PRESETS["imagenet"]), "--mean has 2 values; give 1 or one per channel (3)"),
    (lambda: Normalisation(channel_order="bgr").applied_to(PRESETS["gray"]), "bgr needs 3-channel images"),
    (lambda: parse_values("0.5,x", "--mean"), "give numbers separated by commas"),
])
def test_bad_normalisation_is_a_one_line_error(make, message):
    with pytest.raises(RebirthError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make()


@pytest.mark.parametrize("args, message", [
    (["--evaluate", "fashion-mnist", "--std", "0"], "--std must be above 0"),
    (["--evaluate", "fashion-mnist", "--mean", "0.1,0.2"], "--mean has 2 values"),
    (["--mean", "0.5"], "preprocess images for --rebirth and --evaluate; neither was asked for"),
    (["--evaluate", "fashion-mnist", "--channel-order", "bgr"], "bgr needs 3-channel images"),
])
def test_bad_preprocessing_flags_write_nothing(tmp_path, cli, args, message):
    proc = cli("--model", "fashion_googlenet", *args, "--out", str(tmp_path / "o"))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], proc.stderr
    assert not (tmp_path / "o").exists()


def test_an_original_near_chance_is_reported_as_wrong_preprocessing_not_as_a_drop(tmp_path, cli):
    # The trained teacher fed pixels in [0, 255] instead of [0, 1]: it scores near chance, and
    # the tool says why instead of printing an accuracy change.
    proc = cli("--model", "fashion_googlenet", "--evaluate", "fashion-mnist:300", "--pixel-range", "255", "--out", str(tmp_path / "o"))
    assert proc.returncode == 0, proc.stderr
    assert "warning: the original model scores" in proc.stdout and "near chance (10%)" in proc.stdout
    assert "points)" not in proc.stdout  # no drop reported
    import json

    evaluation = json.loads((tmp_path / "o" / "report.json").read_text())["evaluation"]
    assert evaluation["top1_before"] < 0.2 and "gray + pixel_range" in evaluation["preprocessing"]


def test_the_right_preprocessing_gives_no_warning(tmp_path, cli):
    proc = cli("--model", "fashion_googlenet", "--evaluate", "fashion-mnist:300", "--out", str(tmp_path / "o"))
    assert proc.returncode == 0, proc.stderr
    assert "warning" not in proc.stdout and "points)" in proc.stdout
