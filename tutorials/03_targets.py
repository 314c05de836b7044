"""
Targets: one model for x86 (tuned), ARM (aarch64) and CUDA
===========================================================

The same rewritten model, compiled three ways:

* **x86**, tuned with MetaSchedule: the untuned build already has a schedule for every kernel
  (blocked-layout convs with a register-tiled template, parallel vectorised loops for the rest:
  about as fast as onnxruntime); tuning searches the conv template's tile sizes, heaviest convs
  first, and keeps the fastest measured. The tuning database is reused across runs.
* **ARM** (64-bit, NEON): cross-compiled here and linked with ``aarch64-linux-gnu-g++``; copy
  ``model.so`` to the board. The rewrite is checked on an x86 build of the same module, and
  ``verify="qemu"`` runs the exported ARM library itself under ``qemu-aarch64`` with the native
  runner and compares it with that x86 build.
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
from rebirth_tvm.backend.targets import cuda_available

SHORT = os.environ.get("CI") == "true"
MODEL = "squeezenet1_1"
work = tempfile.mkdtemp(prefix="targets-")

######################################################################
# 1. x86, tuned
# -------------
# ``tune_trials`` is the budget; it goes to the convs with the most FLOPs first (the only kernels
# with choices: the template's tile sizes), and every other kernel keeps its rule's schedule.
# ``tuning_db`` keeps the results: run this script twice and the second time nothing is tuned.

database = os.path.join(work, "tuning-db")
for attempt in ("cold", "warm"):
    result = rebirth_tvm.compile_model(MODEL, target="x86", tune_trials=8 if SHORT else 200, tuning_db=database)
    tuning = result.report["tuning"]
    print(f"x86 {attempt}: {tuning['tasks_tuned']} of {tuning['tasks']} tasks tuned ({tuning['tasks_kept_template']} kept their "
          f"rules' schedules) in {tuning['seconds']:.1f} s; tuned == untuned within {tuning['max_rel_diff']:.1g}")
    if attempt == "cold":
        cold = tuning
# The cold run tuned convs; the warm run found them in the database and tuned nothing again.
assert cold["tasks_tuned"] > 0 and tuning["tasks_tuned"] == 0 and tuning["tasks_already_tuned"] == cold["tasks_tuned"]
result.built.export(os.path.join(work, "model_x86.so"))

######################################################################
# 2. ARM (aarch64)
# ----------------
# ``cpu`` tunes code generation for a core (cortex-a53/a72/a76, neoverse-n1). The export needs
# the cross compiler: ``apt-get install g++-aarch64-linux-gnu``.

if all(shutil.which(tool) for tool in ("aarch64-linux-gnu-g++", "qemu-aarch64", "cmake")):
    arm = rebirth_tvm.compile_model(MODEL, target="arm", cpu="cortex-a72", verify="qemu", runner=True)
    verification = arm.report["verification"]
    print(f"arm: exported and run under qemu: max rel diff vs x86 {verification['max_rel_diff']:.1g} "
          f"(tolerance {verification['tolerance']:g}); {verification['note']}")
    rebirth_tvm.write_result(arm, os.path.join(work, "arm"))
    print("arm bundle for the board:", sorted(os.listdir(os.path.join(work, "arm"))))
    assert {"model.so", "rebirth-run", "libtvm_runtime.so", "libtvm_ffi.so"} <= set(os.listdir(os.path.join(work, "arm")))
else:
    print("arm: skipped, needs aarch64-linux-gnu-g++, qemu-aarch64 and cmake "
          "(apt-get install g++-aarch64-linux-gnu qemu-user cmake)")

######################################################################
# On a real board, over RPC
# -------------------------
# Tuning measures candidate kernels, so an ARM build is tuned on the board itself. Run TVM's
# RPC server there and a tracker anywhere both machines reach::
#
#     python -m tvm.exec.rpc_tracker --host 0.0.0.0 --port 9190          # e.g. on this machine
#     python -m tvm.exec.rpc_server --tracker 192.168.1.10:9190 --key rk3399   # on the board
#
# then pass the device: MetaSchedule measures every candidate there, and ``verify="rpc"`` runs
# the final library there and reports its latency on the board::
#
#     from rebirth_tvm.backend.remote import RpcDevice
#     board = RpcDevice("192.168.1.10", 9190, "rk3399")
#     rebirth_tvm.compile_model(MODEL, target="arm", cpu="cortex-a72", tune_trials=2000,
#                               tuning_db="db-rk3399", rpc=board, verify="rpc")
#
# ``tests/test_rpc.py`` does exactly this with a tracker and a server on this machine.

######################################################################
# 3. CUDA
# -------

gpu = rebirth_tvm.compile_model(MODEL, target="cuda", arch="sm_90")
gpu.built.export(os.path.join(work, "model_cuda.so"))
print("cuda kernels:", json.dumps(gpu.report["cuda_kernels"]))
assert gpu.report["target"]["arch"] == "sm_90" and "__global__" in gpu.built.cuda_source()
print("cuda run here:", "yes" if cuda_available() else "no GPU here; run model_cuda.so where one is")

######################################################################
# From the command line, the same three::
#
#     python -m rebirth_tvm.compile --model squeezenet1_1 --target x86 --tune-trials 200 --tuning-db db --out build/x86
#     python -m rebirth_tvm.compile --model squeezenet1_1 --target arm --cpu cortex-a72 --verify qemu --runner --out build/arm
#     python -m rebirth_tvm.compile --model squeezenet1_1 --target arm --tune-trials 2000 --rpc-tracker HOST:9190 --rpc-key rk3399 --verify rpc --out build/arm-tuned
#     python -m rebirth_tvm.compile --model squeezenet1_1 --target cuda --arch sm_90 --out build/cuda
