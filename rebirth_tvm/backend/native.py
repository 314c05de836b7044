"""The native runner (``rebirth-run``, built by CMakeLists.txt) from Python: build it, run it.

* :func:`build_runner` configures and builds the runner for this machine or for aarch64 (a
  cached build per source and TVM version; a second call costs nothing) and returns its path.
* :func:`run_library` runs an exported ``model.so`` with it, under ``qemu-aarch64`` for aarch64
  builds, and returns the outputs and the runner's timings. This is how ``--verify qemu`` proves
  an ARM library computes what the x86 build does without a board.
* ``python -m rebirth_tvm.native fixture|compare`` are the helpers CMakeLists.txt's ctest tests
  call (export a small model and its expected outputs; compare .npy files).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

from rebirth_tvm.core.errors import RebirthError
from rebirth_tvm.backend.runtime_libs import cache_dir, libs_for, versions

SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUNNER_FILES = ("CMakeLists.txt", "runner/rebirth_run.cc", "cmake/aarch64-linux-gnu.cmake")
AARCH64_SYSROOT = "/usr/aarch64-linux-gnu"
#: fp32 on aarch64 contracts multiply-adds differently from x86, so the two builds agree to
#: rounding, not bit for bit (measured ≤ 2e-6 of the output's scale on the notes' models).
VERIFY_TOLERANCE = 1e-5


def runner_arch(target) -> str:
    """The runner's architecture for a :class:`~rebirth_tvm.backend.targets.Target`."""
    if target.is_cuda:
        raise RebirthError("rebirth-run runs CPU builds only (x86 or arm); a CUDA build runs with tvm.runtime + relax.VirtualMachine")
    return target.arch


def _compiler(arch: str) -> str:
    """The C++ compiler the runner is built with: the host's g++, or the target's cross compiler
    (the one model.so is linked with, ``REBIRTH_AARCH64_CXX`` honoured)."""
    from rebirth_tvm.backend.targets import aarch64_compiler

    return aarch64_compiler(check=False) if arch == "aarch64" else "g++"


def emulator(arch: str) -> list[str]:
    """The command prefix that runs an ``arch`` program here."""
    if arch != "aarch64" or os.uname().machine == "aarch64":
        return []
    qemu = shutil.which("qemu-aarch64")
    if qemu is None:
        raise RebirthError("qemu-aarch64 not found: install the Debian package qemu-user to run ARM builds here")
    if not os.path.isdir(AARCH64_SYSROOT):
        raise RebirthError(f"{AARCH64_SYSROOT} not found: install the Debian package g++-aarch64-linux-gnu (it brings the aarch64 C++ libraries)")
    return [qemu, "-L", AARCH64_SYSROOT]


def _require_sources() -> None:
    missing = [f for f in RUNNER_FILES if not os.path.exists(os.path.join(SOURCE_ROOT, f))]
    if missing:
        raise RebirthError(f"the runner's sources ({', '.join(missing)}) are not beside this package: "
                           "build it from a clone of rebirth-tvm (pip install -e .)")


def require_tools(arch: str) -> None:
    """cmake and the C++ compiler for ``arch``, named by Debian package when missing."""
    _require_sources()
    if shutil.which("cmake") is None:
        raise RebirthError("cmake not found: install the Debian package cmake to build the native runner")
    compiler = _compiler(arch)
    if shutil.which(compiler) is None:
        package = "g++-aarch64-linux-gnu" if arch == "aarch64" else "g++"
        raise RebirthError(f"{compiler} not found: install the Debian package {package} to build the native runner")


def _build_key(arch: str) -> str:
    digest = hashlib.sha256()
    for name in RUNNER_FILES:
        with open(os.path.join(SOURCE_ROOT, name), "rb") as f:
            digest.update(f.read())
    digest.update(json.dumps({**versions(), "compiler": _compiler(arch)}, sort_keys=True).encode())
    return f"{arch}-{digest.hexdigest()[:12]}"


def build_runner(arch: str = "host", quiet: bool = True) -> str:
    """Build ``rebirth-run`` for ``arch`` (``host`` or ``aarch64``); returns its path.

    The build lives in the user cache, keyed by the runner's sources and the TVM versions, so it
    is made once. Its directory is a relocatable bundle: the runner and the two libraries.
    """
    _require_sources()
    build_dir = os.path.join(cache_dir(), "runner", _build_key(arch))
    runner = os.path.join(build_dir, "rebirth-run")
    if os.path.exists(runner):
        return runner
    require_tools(arch)
    libs = libs_for(arch, quiet=quiet)  # downloads the aarch64 wheels once
    os.makedirs(os.path.dirname(build_dir), exist_ok=True)
    # Built aside and moved in whole: a build that fails half-way is never taken for a runner.
    staging = tempfile.mkdtemp(prefix=".build-", dir=os.path.dirname(build_dir))
    configure = ["cmake", "-S", SOURCE_ROOT, "-B", staging, "-DCMAKE_BUILD_TYPE=Release", "-DREBIRTH_RUNNER_TESTS=OFF",
                 f"-DREBIRTH_PYTHON={sys.executable}", f"-DREBIRTH_TVM_RUNTIME_LIBRARY={libs.tvm_runtime}",
                 f"-DREBIRTH_TVM_FFI_LIBRARY={libs.tvm_ffi}", f"-DREBIRTH_TVM_FFI_INCLUDE_DIRS={';'.join(libs.include_dirs)}"]
    if arch == "aarch64":
        configure += [f"--toolchain={os.path.join(SOURCE_ROOT, 'cmake', 'aarch64-linux-gnu.cmake')}",
                      f"-DREBIRTH_AARCH64_CXX={_compiler(arch)}"]
    try:
        for step in (configure, ["cmake", "--build", staging, "-j", str(os.cpu_count() or 1)]):
            done = subprocess.run(step, capture_output=True, text=True)
            if done.returncode != 0:
                lines = [line.strip() for line in (done.stdout + done.stderr).splitlines() if line.strip()]
                at = next((i for i, line in enumerate(lines) if "error" in line.lower()), max(len(lines) - 2, 0))
                raise RebirthError(f"building the {arch} runner failed: {' '.join(lines[at:at + 2])[:400]}")
        try:
            os.replace(staging, build_dir)
        except OSError:
            if not os.path.exists(runner):  # else another process built it meanwhile: use theirs
                raise RebirthError(f"cannot move the built runner to {build_dir}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return runner


def copy_runner(runner: str, out_dir: str) -> list[str]:
    """Copy the runner bundle (rebirth-run + libtvm_runtime.so + libtvm_ffi.so) into ``out_dir``."""
    copied = []
    for name in ("rebirth-run", "libtvm_runtime.so", "libtvm_ffi.so"):
        source = os.path.join(os.path.dirname(runner), name)
        shutil.copy2(source, os.path.join(out_dir, name))
        copied.append(name)
    return copied


def run_library(library: str, inputs, arch: str = "host", warmup: int = 1, repeat: int = 1, runner: str | None = None):
    """Run an exported ``model.so`` with the native runner; returns ``(outputs, stats)``.

    ``inputs`` is a list of arrays in the model's input order; ``stats`` is the runner's JSON
    (``latency_ms`` min/median/max, ``peak_rss_bytes``, ``load_ms``). Under emulation the timings
    are qemu's, never the device's: callers must not report them as speed.
    """
    runner = runner or build_runner(arch)
    prefix = emulator(arch)
    with tempfile.TemporaryDirectory(prefix="rebirth-run-") as work:
        command = prefix + [runner, os.path.abspath(library)]
        for i, array in enumerate(inputs):
            path = os.path.join(work, f"input_{i}.npy")
            np.save(path, np.require(array, requirements="C"))
            command += ["--input", path]
        command += ["--output", os.path.join(work, "out.npy"), "--warmup", str(warmup), "--repeat", str(repeat), "--json"]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            message = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
            raise RebirthError(f"rebirth-run ({arch}) failed on {os.path.basename(library)}: {message.removeprefix('error: ')}")
        try:
            stats = json.loads(done.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            raise RebirthError(f"rebirth-run ({arch}) printed no result for {os.path.basename(library)}") from None
        count = len(stats["outputs"])
        names = ["out.npy"] if count == 1 else [f"out_{i}.npy" for i in range(count)]
        outputs = [np.load(os.path.join(work, name)) for name in names]
    return outputs, stats


# ---- helpers for CMakeLists.txt's ctest tests ----------------------------------------------------

def fixture_model():
    """A small two-input, two-output ONNX model: conv, ReLU, max pool, FC, plus an offset input.

    Two inputs and two outputs so that the runner's multi-tensor paths are exercised.
    """
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    weights = {
        "conv_w": rng.normal(0, 0.3, (8, 3, 3, 3)).astype("float32"),
        "conv_b": rng.normal(0, 0.1, (8,)).astype("float32"),
        "fc_w": rng.normal(0, 0.2, (10, 8 * 8 * 8)).astype("float32"),
        "fc_b": rng.normal(0, 0.1, (10,)).astype("float32"),
    }
    nodes = [
        helper.make_node("Conv", ["image", "conv_w", "conv_b"], ["conv"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["conv"], ["features"], name="relu1"),
        helper.make_node("MaxPool", ["features"], ["pool"], kernel_shape=[2, 2], strides=[2, 2], name="pool1"),
        helper.make_node("Flatten", ["pool"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["fc"], transB=1, name="fc"),
        helper.make_node("Add", ["fc", "offset"], ["logits"], name="add_offset"),
    ]
    graph = helper.make_graph(
        nodes, "runner_fixture",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 16, 16]),
         helper.make_tensor_value_info("offset", TensorProto.FLOAT, [1, 10])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10]),
         helper.make_tensor_value_info("features", TensorProto.FLOAT, [1, 8, 16, 16])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def write_fixture(target: str, out_dir: str) -> None:
    """Export the fixture model for ``target``, its inputs, the x86 Python outputs, bad inputs."""
    from rebirth_tvm.backend.build import build
    from rebirth_tvm.frontend.onnx_import import load

    os.makedirs(out_dir, exist_ok=True)
    module = load(fixture_model())
    rng = np.random.default_rng(0)
    image = rng.normal(size=(1, 3, 16, 16)).astype("float32")
    offset = rng.normal(size=(1, 10)).astype("float32")
    build(module, target).export(os.path.join(out_dir, "model.so"))
    expected = build(module, "x86").run([image, offset])
    np.save(os.path.join(out_dir, "image.npy"), image)
    np.save(os.path.join(out_dir, "offset.npy"), offset)
    for i, array in enumerate(expected):
        np.save(os.path.join(out_dir, f"expected_{i}.npy"), array)
    np.save(os.path.join(out_dir, "wrong_shape.npy"), np.zeros((1, 3, 8, 8), "float32"))
    np.save(os.path.join(out_dir, "wrong_dtype.npy"), np.zeros((1, 3, 16, 16), "int32"))
    with open(os.path.join(out_dir, "garbage.npy"), "wb") as f:
        f.write(b"this is not an array\n")


def compare_files(pairs: list[tuple[str, str]], tolerance: float) -> list[str]:
    """Compare ``(actual, expected)`` .npy files relative to the expected output's scale."""
    lines = []
    for actual_path, expected_path in pairs:
        actual, expected = np.load(actual_path), np.load(expected_path)
        if actual.shape != expected.shape or actual.dtype != expected.dtype:
            raise RebirthError(f"{actual_path}: {actual.dtype}{list(actual.shape)} but expected {expected.dtype}{list(expected.shape)}")
        scale = max(float(np.abs(expected).max()), 1e-30)
        relative = float(np.abs(actual.astype("float64") - expected).max()) / scale
        if not relative <= tolerance:
            raise RebirthError(f"{actual_path} differs from {expected_path} by {relative:.3g} of its scale (tolerance {tolerance:g})")
        lines.append(f"{os.path.basename(actual_path)}: max rel diff {relative:.3g} <= {tolerance:g}")
    return lines
