"""
Rebirth: merge a CNN's pooling and LRN layers into its convs, relearned on your images
=======================================================================================

DeepRebirth's main move: a conv followed by non-tensor layers (max pool, LRN) becomes one conv
whose weights are *relearned* to imitate the original block. This tutorial does it on the
built-in BVLC GoogLeNet with a folder of your own images and, at the end, with your own hook.

    python tutorials/02_rebirth.py [IMAGE_FOLDER]

Without a folder it cuts calibration images out of the two photos scikit-learn ships. With
``CI=true`` it uses a handful of images (a short mode for the test suite).
"""

import os
import sys
import tempfile

import numpy as np

import rebirth_tvm
from rebirth_tvm.relearn.calibration import load_calibration
from rebirth_tvm.passes import StreamlineMerge, record_sites
from rebirth_tvm.pipeline.report import op_counts, op_table

SHORT = os.environ.get("CI") == "true"

######################################################################
# 1. Calibration images
# ---------------------
# Any folder of JPEG/PNG files works; they are resized, centre-cropped and normalised like
# ImageNet inputs. The hooks see them *without labels*: they learn to imitate the original
# network, not to classify. A fifth is held out to measure how close the result stays.

if len(sys.argv) > 1:
    folder = sys.argv[1]
else:
    from PIL import Image
    from sklearn.datasets import load_sample_images

    folder = tempfile.mkdtemp(prefix="calib-")
    rng = np.random.default_rng(0)
    for i in range(10 if SHORT else 80):
        photo = load_sample_images().images[i % 2]
        top, left = rng.integers(0, photo.shape[0] - 300), rng.integers(0, photo.shape[1] - 300)
        Image.fromarray(photo[top:top + 300, left:left + 300]).save(os.path.join(folder, f"img{i:03d}.jpg"))
print("calibration images in", folder)

######################################################################
# 2. One call: exact passes, relearned merges, build, fidelity
# ------------------------------------------------------------
# ``rebirth`` folds what is exact (BN, sibling 1x1 convs), then merges conv+pool and conv+LRN
# bottom-up, each new conv relearned by least squares against the block it replaces, on the
# activations the already reborn network below it produces.

# Sites deep in the network relearn convs with thousands of weights per output channel at 14x14
# or 7x7 resolution, so they need far more images than the stem (the default run below uses 80
# and relearns 20 sites; the deepest ask for ~100 with 'cover' kernels). The short CI mode has
# 10 images and selects the stem's sites only (``sites=``, names or glob patterns); with fewer
# images than a site needs, rebirth stops with an error that says how many that site needs.
stem_only = ["pool1_*", "conv2_*", "pool2_*"]
module, report = rebirth_tvm.rebirth("googlenet", folder, hook="lstsq", sites=stem_only if SHORT else "all")
for site in report["sites"]:
    if not site["exact"] and site["status"] == "rewritten":
        d = site["detail"]
        print(f"  {site['site']:16} {d['pattern']:22} rel. MSE {d['fidelity_initial']['rel_mse']:.3f} -> {d['fidelity']['rel_mse']:.3f}")
fidelity = report["fidelity"]
print(f"end to end on {fidelity['samples']} held-out images: top-1 agreement {fidelity['top1_agreement']:.0%}, "
      f"relative logit error {fidelity['relative_logit_error']:.3g}")
print(op_table(report["ops_before"], report["ops_after"]))
# What must hold: the stem's LRNs are merged away, and every relearned site does better than a
# constant (each channel's mean output), which the report gives as its trivial baseline.
relearned = [s for s in report["sites"] if not s["exact"] and s["status"] == "rewritten"]
assert relearned and report["ops_after"].get("relax.nn.avg_pool3d", 0) < report["ops_before"]["relax.nn.avg_pool3d"]
assert all(s["detail"]["fidelity"]["rel_mse"] < s["detail"]["fidelity_channel_mean"]["rel_mse"] for s in relearned)

######################################################################
# 3. Your own hook
# ----------------
# A hook is any callable ``hook(site) -> (weight, bias)``. ``site`` carries the new conv's
# geometry, its initial weights, the input activations and the teacher's targets. Here: start
# from the built-in least-squares solution and damp it a little, to see the report pick the
# change up (it should measure slightly worse than plain least squares).

from rebirth_tvm.relearn.hooks import LeastSquaresHook  # noqa: E402

called = []

def damped_least_squares(site):
    called.append(site.name)
    weight, bias = LeastSquaresHook()(site)
    return 0.9 * weight, bias

calibration = load_calibration(folder, (1, 3, 224, 224))
with record_sites() as sites:
    reborn = StreamlineMerge(calibration.train, hook=damped_least_squares, sites=stem_only)(rebirth_tvm.load("googlenet"))
for site in sites:
    if site.status == "rewritten":
        print(f"  custom hook  {site.site:16} rel. MSE {site.detail['fidelity']['rel_mse']:.3f}")
print("LRN left:", op_counts(reborn).get("relax.nn.avg_pool3d", 0), "| max pools left:", op_counts(reborn).get("relax.nn.max_pool2d", 0))
# The hook was called for every site it relearned, and a user's hook is used as given (no
# fallback to the initial weights): the report's fidelity is that of its damped weights.
rewritten = [s for s in sites if s.status == "rewritten"]
assert rewritten and sorted(called) == sorted(s.site for s in rewritten) and not any(s.detail["kept_initial"] for s in rewritten)

######################################################################
# The same from the command line, with the library and a report written to a directory::
#
#     python -m rebirth_tvm.compile --model googlenet --rebirth --calib IMAGE_FOLDER --out build/googlenet-reborn
