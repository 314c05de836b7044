"""Exact passes on real ImageNet weights: EfficientNet-Lite0, BN folded into (depthwise) convs.

Needs the training extra (PyTorch CPU and the EfficientNet-Lite0 packages); CI installs only
'.[test]', so there it is skipped with that reason. benchmarks/results/accuracy.json records a
run of the same check.
"""

import pytest

pytest.importorskip("torch", reason="the EfficientNet-Lite0 check needs '.[train]' (PyTorch CPU)")
pytest.importorskip("efficientnet_lite_pytorch", reason="the EfficientNet-Lite0 check needs '.[train]'")


def test_folded_efficientnet_lite0_picks_the_same_class_on_real_photos():
    from rebirth_tvm.efficientnet import check_exact_passes

    result = check_exact_passes()
    assert result["batch_norms"] == 49 and result["folded_batch_norms"] == 49 and result["batch_norms_left"] == 0
    assert result["depthwise_batch_norms"] == 16
    assert result["photos"] >= 8
    assert result["top1_agreement"] == 1.0
    assert result["max_rel_diff"] <= 1e-5  # float reassociation only
