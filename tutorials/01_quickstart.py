"""
Quickstart: fold and merge a CNN exactly, compile it with TVM, check it
=======================================================================

This script walks the whole data flow of rebirth-tvm once, on the built-in GoogLeNet-family
model of your choice:

    ONNX → Relax (rebirth_tvm.load) → exact passes → build for x86 → run → compare

Run it with ``python tutorials/01_quickstart.py``. It takes well under a minute on two cores.
With ``CI=true`` it uses the smallest zoo model so the test suite stays fast.
"""

import os

import numpy as np
import tvm
from tvm import relax

import rebirth_tvm
from rebirth_tvm.frontend.zoo import MODELS, build_model
from rebirth_tvm.passes import FoldBatchNorm, MergeParallelConvs, record_sites
from rebirth_tvm.frontend.reference import onnxruntime_outputs
from rebirth_tvm.pipeline.report import op_counts, op_table

######################################################################
# 1. Get an ONNX model
# --------------------
# The zoo builds real architectures as ONNX graphs with deterministic weights (nothing is
# downloaded). ResNet-18 has a BatchNormalization after every conv: a good first target.
# Your own model works the same way: ``rebirth_tvm.load("my_model.onnx")``.

NAME = "squeezenet1_1" if os.environ.get("CI") == "true" else "resnet18"
onnx_model = build_model(NAME)
print(f"{NAME}: {MODELS[NAME].description}")

######################################################################
# 2. Import it into Relax
# -----------------------
# ``load`` fixes the input shape, binds the weights as constants and folds what the graph
# computes from them. Bindings are named after the ONNX nodes, so the IR reads like the model.

mod = rebirth_tvm.load(onnx_model)
print("input:", mod["main"].params[0].name, mod["main"].params[0].ty)

######################################################################
# 3. Apply the exact passes, inside an ordinary TVM pipeline
# ----------------------------------------------------------
# Our passes are ``tvm.transform.Pass`` objects: they sit in ``Sequential`` beside TVM's own.
# ``record_sites`` collects what each one did, site by site; a refusal always says why.

pipeline = tvm.transform.Sequential([
    FoldBatchNorm(),
    relax.transform.FoldConstant(),
    MergeParallelConvs(),
])
with record_sites() as sites:
    rewritten = pipeline(mod)

print(op_table(op_counts(mod), op_counts(rewritten)))
for site in sites[:6]:
    print(f"  {site.pass_name:18} {site.site:28} {site.status:9} {site.reason}")
print(f"  ... {len(sites)} sites in all")

######################################################################
# 4. Build for this machine and run
# ---------------------------------
# ``build`` uses TVM's fused pipeline with the project's CPU kernels: convs in a blocked layout
# with a register-tiled template, every other kernel in parallel vectorised loops. No tuning
# is needed for that; tuning (its own step) only searches the conv template's tile sizes.

built = rebirth_tvm.build(rewritten, target="x86")
x = np.random.default_rng(0).standard_normal(tuple(int(d) for d in mod["main"].params[0].ty.shape)).astype("float32")
out = built.run(x)
print(f"built in {built.compile_seconds:.1f} s; output shape {out.shape}")

######################################################################
# 5. Compare with the original model
# ----------------------------------
# The oracle is onnxruntime running the *original* ONNX with every optimisation off. The exact
# passes only reorder float arithmetic, so the difference is rounding: we ask for 1e-5 of the
# output's scale.

reference = onnxruntime_outputs(onnx_model, {onnx_model.graph.input[0].name: x})[0]
rel = float(np.max(np.abs(out - reference)) / np.max(np.abs(reference)))
print(f"max relative difference vs onnxruntime: {rel:.2e}")
assert rel <= 1e-5, "the exact passes changed the model"

######################################################################
# The same in one command, with the library and a report written to a directory::
#
#     python -m rebirth_tvm.compile --model resnet18 --target x86 --out build/resnet18
