"""Fashion-MNIST from Debian's dataset-fashion-mnist: splits, and one-line errors naming the fix."""

import gzip
import os

import numpy as np
import pytest

from rebirth_tvm.relearn.calibration import load_calibration
from rebirth_tvm.frontend.datasets import FASHION_MNIST_DIR, VALIDATION_SIZE, as_inputs, fashion_mnist, fashion_mnist_inputs, read_idx
from rebirth_tvm.core.errors import RebirthError

INSTALL = "apt-get install dataset-fashion-mnist"


def test_splits_are_the_published_sizes_and_disjoint():
    train_x, train_y = fashion_mnist("train")
    val_x, val_y = fashion_mnist("val")
    test_x, test_y = fashion_mnist("test")
    assert train_x.shape == (60000 - VALIDATION_SIZE, 28, 28) and val_x.shape == (VALIDATION_SIZE, 28, 28)
    assert test_x.shape == (10000, 28, 28) and test_x.dtype == np.uint8
    assert np.array_equal(np.bincount(test_y), [1000] * 10)  # the test split is balanced
    assert set(np.unique(train_y)) == set(range(10)) and len(train_y) == len(train_x) and len(val_y) == len(val_x)
    # Disjoint by construction: the first 55,000 of the training file, then its last 5,000.
    raw = read_idx(os.path.join(FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz"), 3)
    assert np.array_equal(train_x, raw[:-VALIDATION_SIZE]) and np.array_equal(val_x, raw[-VALIDATION_SIZE:])


def test_inputs_are_the_gray_preset():
    x = fashion_mnist_inputs("train", 5)
    assert x.shape == (5, 1, 28, 28) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.5
    assert np.array_equal(x, as_inputs(fashion_mnist("train")[0][:5]))


def test_calibration_source_uses_training_images_without_labels():
    calib = load_calibration("fashion-mnist", (1, 1, 28, 28), preset="gray", count=50)
    assert len(calib.train) == 40 and len(calib.held_out) == 10
    assert "Fashion-MNIST training images (labels unused)" in calib.description
    with pytest.raises(RebirthError, match="1x28x28 images; the model takes 3x224x224"):
        load_calibration("fashion-mnist", (1, 3, 224, 224), count=10)


def test_missing_package_names_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("REBIRTH_FASHION_MNIST", str(tmp_path / "nowhere"))
    with pytest.raises(RebirthError, match=f"not installed.*{INSTALL}"):
        fashion_mnist("test")
    (tmp_path / "partial").mkdir()
    monkeypatch.setenv("REBIRTH_FASHION_MNIST", str(tmp_path / "partial"))
    with pytest.raises(RebirthError, match=f"t10k-images-idx3-ubyte.gz is missing.*{INSTALL}"):
        fashion_mnist("test")


@pytest.mark.parametrize("content, message", [
    (b"<html>not an idx file</html>", "is not a 3-D unsigned-byte IDX file"),
    (b"\0\0\x08\x03" + (10).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + b"\0" * 100, "the file is truncated"),
])
def test_wrong_file_is_one_clear_error(tmp_path, monkeypatch, content, message):
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        with gzip.open(tmp_path / name, "wb") as f:
            f.write(content)
    monkeypatch.setenv("REBIRTH_FASHION_MNIST", str(tmp_path))
    with pytest.raises(RebirthError, match=message) as err:
        fashion_mnist("test")
    assert "\n" not in str(err.value) and INSTALL in str(err.value)


def test_not_gzip_is_one_clear_error(tmp_path, monkeypatch):
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (tmp_path / name).write_bytes(b"plain text, not gzip")
    monkeypatch.setenv("REBIRTH_FASHION_MNIST", str(tmp_path))
    with pytest.raises(RebirthError, match=f"cannot read .*t10k-images.*{INSTALL}"):
        fashion_mnist("test")


def test_cli_without_the_data_is_one_line_and_writes_nothing(tmp_path, cli, monkeypatch):
    monkeypatch.setenv("REBIRTH_FASHION_MNIST", str(tmp_path / "nowhere"))
    out = tmp_path / "out"
    proc = cli("--model", "fashion_googlenet", "--rebirth", "--calib", "fashion-mnist", "--out", str(out))
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and INSTALL in lines[0], proc.stderr
    assert not out.exists()


def test_default_location_is_debians():
    assert FASHION_MNIST_DIR == "/usr/share/datasets/fashion-mnist"
