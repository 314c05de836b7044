"""
Targets: one model for x86 (tuned), ARM (aarch64) and CUDA
===========================================================

The same rewritten model, compiled three ways:

* **x86**, tuned with MetaSchedule: untuned TVM CPU code is 30-100x slower than tuned code, so
  every speed claim needs tuning. The tuning database is reused across runs.
* **ARM** (64-bit, NEON): cross-compiled here and linked with ``aarch64-linux-gnu-g++``; copy
  ``model.so`` to the board. It cannot run on this machine, so the rewrite is checked on an x86
  build of the same module and the report says so.
* **CUDA**: TVM's GPU pipeline (fusion + dlight schedules); the kernels are compiled with nvcc
  when it is installed, and run only where a GPU is.

    python tutorials/03_targets.py

With ``CI=true`` it tunes with a token budget (the point there is that it works, not speed).
"""

import json
import os
import shutil
import tempfile

import rebirth_tvm
from rebirth_tvm.targets import cuda_available

SHORT = os.environ.get("CI") == "true"
MODEL = "squeezenet1_1"
work = tempfile.mkdtemp(prefix="targets-")

######################################################################
# 1. x86, tuned
# -------------
# ``tune_trials`` is the budget over all tasks (fused kernels); ``tuning_db`` keeps the results.
# Run this script twice: the second time no task is tuned again and the compile takes seconds.

database = os.path.join(work, "tuning-db")
for attempt in ("cold", "warm"):
    result = rebirth_tvm.compile_model(MODEL, target="x86", tune_trials=8 if SHORT else 200, tuning_db=database)
    tuning = result.report["tuning"]
    print(f"x86 {attempt}: {tuning['tasks_tuned']} of {tuning['tasks']} tasks tuned in {tuning['seconds']:.1f} s; "
          f"tuned == untuned within {tuning['max_rel_diff']:.1g}")
result.built.export(os.path.join(work, "model_x86.so"))

######################################################################
# 2. ARM (aarch64)
# ----------------
# ``cpu`` tunes code generation for a core (cortex-a53/a72/a76, neoverse-n1). The export needs
# the cross compiler: ``apt-get install g++-aarch64-linux-gnu``.

if shutil.which("aarch64-linux-gnu-g++"):
    arm = rebirth_tvm.compile_model(MODEL, target="arm", cpu="cortex-a72")
    arm.built.export(os.path.join(work, "model_arm.so"))
    check = arm.report["check"]
    print(f"arm: exported; checked on {check['ran_on']['kind']} (target library run here: {check['target_binary_run']}), "
          f"max rel diff {arm.report['max_rel_diff']:.1g}")
else:
    print("arm: skipped, aarch64-linux-gnu-g++ is not installed")

######################################################################
# 3. CUDA
# -------

gpu = rebirth_tvm.compile_model(MODEL, target="cuda", arch="sm_80")
gpu.built.export(os.path.join(work, "model_cuda.so"))
print("cuda kernels:", json.dumps(gpu.report["cuda_kernels"]))
print("cuda run here:", "yes" if cuda_available() else "no GPU here; run model_cuda.so where one is")

######################################################################
# From the command line, the same three::
#
#     python -m rebirth_tvm.compile --model squeezenet1_1 --target x86 --tune-trials 200 --tuning-db db --out build/x86
#     python -m rebirth_tvm.compile --model squeezenet1_1 --target arm --cpu cortex-a72 --out build/arm
#     python -m rebirth_tvm.compile --model squeezenet1_1 --target cuda --arch sm_80 --out build/cuda
