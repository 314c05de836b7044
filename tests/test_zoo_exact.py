"""Every zoo model through the exact passes, built with the project's CPU kernels, equals
onnxruntime on the original ONNX.

Oracle: onnxruntime with ORT_DISABLE_ALL (it runs the graph as written). Tolerance: 1e-5 of the
output's scale (max |out - ref| / max |ref|); the exact passes only reorder float arithmetic
(measured up to 6.5e-6 on MobileNetV2, whose BN folds reach 52 convs).
"""

import pytest

from rebirth_tvm.pipeline import compile_model
from rebirth_tvm.frontend.zoo import MODELS

TOL = 1e-5

# What the exact passes must do to each architecture (rewritten sites per pass).
EXPECTED_REWRITES = {
    "googlenet": {"MergeParallelConvs": 9},  # the three 1x1s opening each inception module
    "alexnet": {},
    "resnet18": {"FoldBatchNorm": 20},
    "resnet50": {"FoldBatchNorm": 53, "MergeParallelConvs": 1},
    "squeezenet1_0": {},
    "squeezenet1_1": {},
    "mobilenet_v2": {"FoldBatchNorm": 52},
    "fashion_googlenet": {"FoldBatchNorm": 33, "MergeParallelConvs": 5},  # trained BN statistics
}


@pytest.mark.parametrize("name", list(MODELS))
def test_zoo_model_matches_onnxruntime(name):
    result = compile_model(name, target="x86", passes="exact")
    report = result.report
    assert report["max_rel_diff"] <= TOL, report["max_rel_diff"]
    rewritten = {}
    for site in report["sites"]:
        if site["status"] == "rewritten":
            rewritten[site["pass_name"]] = rewritten.get(site["pass_name"], 0) + 1
        else:
            assert site["reason"], "every refusal needs a reason"
    assert rewritten == EXPECTED_REWRITES[name]
    assert "relax.nn.batch_norm" not in report["ops_after"]
    # Every kernel got a schedule from the project's rules; none is left as plain loops, and
    # every model's convs run the blocked template.
    kernels = report["kernels"]
    assert kernels.get("plain_loops", 0) == 0 and kernels["blocked_conv"] > 0, kernels
    assert kernels["kernels"] == (kernels["blocked_conv"] + kernels.get("depthwise_conv", 0) + kernels.get("packed_dense", 0)
                                  + kernels["parallel_loops"])
    # The 1000-class FC classifiers (batch 1) read their weights in packed panels (SqueezeNets
    # classify with a conv; fashion_googlenet's 10 classes divide no panel width).
    assert (kernels.get("packed_dense", 0) > 0) == (name not in ("squeezenet1_0", "squeezenet1_1", "fashion_googlenet")), kernels
    assert (kernels.get("depthwise_conv", 0) > 0) == (name == "mobilenet_v2")  # the zoo's one depthwise net
