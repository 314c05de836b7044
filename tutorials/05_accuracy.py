"""
What rebirth costs in accuracy: a trained network, real images, real labels
============================================================================

The zoo's ImageNet models have random weights, so "the reborn model agrees with the original"
says little about accuracy. ``fashion_googlenet`` is different: a small GoogLeNet (conv + max
pool + LRN stem, five inception modules, BN) *trained* on Fashion-MNIST to 93.2% test top-1 and
shipped as ONNX. Fashion-MNIST itself comes from Debian (``apt-get install dataset-fashion-mnist``).

This tutorial rebirths it from unlabelled training images, measures top-1 on test images before
and after, then tries the two ways to spend less accuracy: the per-site error limit with a
classifier refit, and measured site selection. ``python tutorials/05_accuracy.py``; with
``CI=true`` it uses fewer images (a short mode for the test suite).
"""

import os

import numpy as np

from rebirth_tvm.frontend.datasets import as_inputs, fashion_mnist
from rebirth_tvm.pipeline.evaluate import classify
from rebirth_tvm.pipeline import RebirthOptions, compile_model

SHORT = os.environ.get("CI") == "true"
CALIB, TEST = (300, 300) if SHORT else (1000, 2000)

######################################################################
# 1. Data: unlabelled images to relearn from, labelled ones to measure on
# ----------------------------------------------------------------------
# The first CALIB training images are calibration (their labels are never read); the test split
# is only for measuring. ``--calib fashion-mnist`` on the command line does the same.

train_images, _ = fashion_mnist("train")
test_images, test_labels = fashion_mnist("test")
calibration = as_inputs(train_images[:CALIB])
test, labels = as_inputs(test_images[:TEST]), test_labels[:TEST]

######################################################################
# 2. The teacher, compiled with the exact passes only
# ---------------------------------------------------
# BN folds and sibling-conv merges are exact: not one prediction may move.

teacher = compile_model("fashion_googlenet", target="x86")
teacher_predictions = classify(teacher.built, test)
print(f"teacher (exact passes): top-1 {np.mean(teacher_predictions == labels):.2%} on {TEST} test images")
assert np.mean(teacher_predictions == labels) > 0.85  # the trained teacher: 93.18% on all 10,000

######################################################################
# 3. Rebirth: every merge the method knows
# ----------------------------------------
# Streamline merges (conv+pool, conv+LRN) and branch merges, relearned bottom-up. Each new conv
# maps what the *reborn* network feeds it to what the *original* network computed there, so a
# site also corrects the error of the sites below it.

plain = compile_model("fashion_googlenet", target="x86", rebirth=RebirthOptions(calib=calibration))
predictions = classify(plain.built, test)
print(f"reborn, every site:      top-1 {np.mean(predictions == labels):.2%}, "
      f"agreement with the teacher {np.mean(predictions == teacher_predictions):.2%}")

# The report says which sites cost the most: a max pool a 1x1 conv has to imitate cannot be
# imitated well (the pool branches), nor can a max pool after a 1-channel conv (the stem).
for site in plain.report["sites"]:
    if site["status"] == "rewritten" and not site["exact"]:
        print(f"   {site['site'][:38]:<38} {site['detail']['pattern'][:38]:<38} rel. MSE {site['detail']['fidelity']['rel_mse']:.3f}")

######################################################################
# 4. Spend less accuracy: an error limit per site, and a classifier refit
# -----------------------------------------------------------------------
# ``max_site_error`` puts back any site whose relearned error stays above the limit (the report
# says so, with its numbers); ``refit_classifier`` refits the final FC layer from the reborn
# features to the original logits (least squares, still no labels).

guarded = compile_model("fashion_googlenet", target="x86",
                        rebirth=RebirthOptions(calib=calibration, max_site_error=0.2, refit_classifier=True))
predictions = classify(guarded.built, test)
kept = sum(1 for s in guarded.report["sites"] if s["status"] == "rewritten" and not s["exact"])
print(f"reborn, limit 0.2 + refit: top-1 {np.mean(predictions == labels):.2%} with {kept} relearned sites")
# The guarded recipe keeps the reborn network useful: far above chance (10%), and sites were kept.
assert kept > 0 and np.mean(predictions == labels) > 0.7

######################################################################
# 5. Faster where it is measured faster
# -------------------------------------
# ``select="latency"`` times each site's block and its rewrite on the target before relearning
# it and keeps only rewrites faster by 5%: a merge TVM's fusion already made cheap is left alone.
# ``tucker=0.9`` then factors the k×k convs left into 1×1 → k×k → 1×1 (Tucker-2).

if not SHORT:
    selected = compile_model("fashion_googlenet", target="x86",
                             rebirth=RebirthOptions(calib=calibration, select="latency", tucker=0.9, max_site_error=0.2,
                                                    refit_classifier=True))
    for site in selected.report["sites"]:
        latency = site.get("detail", {}).get("latency")
        if latency and "before_ms" in latency:
            print(f"   {site['site'][:38]:<38} {latency['before_ms']:.3f} ms -> {latency['after_ms']:.3f} ms: "
                  f"{'kept' if latency['kept'] else 'declined'}")

######################################################################
# The full study (every ablation, hook and calibration size on all 10,000 test images) is
# ``python -m rebirth_tvm.accuracy``; its results are in benchmarks/results/accuracy.md.
