"""The native runner (CMakeLists.txt → rebirth-run) and ``--verify``: exported libraries, run.

CI installs cmake, g++, the aarch64 cross compiler and qemu-user (.ci/run), so there every test
here runs; only a developer machine without them may skip.
"""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from onnx_builders import tiny_cnn

import rebirth_tvm
from rebirth_tvm import RebirthError
from rebirth_tvm.backend import native
from rebirth_tvm.compile import main as compile_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IN_CI = os.environ.get("CI") == "true"


def _missing(*tools):
    return [t for t in tools if shutil.which(t) is None]


needs_cmake = pytest.mark.skipif(bool(_missing("cmake", "g++")) and not IN_CI, reason="cmake or g++ not installed")
needs_arm = pytest.mark.skipif(bool(_missing("cmake", "aarch64-linux-gnu-g++", "qemu-aarch64")) and not IN_CI,
                               reason="cmake, g++-aarch64-linux-gnu or qemu-user not installed")


def elf_machine(path) -> int:
    with open(path, "rb") as f:
        header = f.read(20)
    return int.from_bytes(header[18:20], "little")


def _cmake_build_and_test(build_dir, *configure_args):
    """The README's two CMake invocations, then ctest; returns ctest's output."""
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    for command in (["cmake", "-S", ROOT, "-B", str(build_dir), *configure_args],
                    ["cmake", "--build", str(build_dir), "-j", "2"]):
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    done = subprocess.run(["ctest", "--test-dir", str(build_dir), "--output-on-failure"], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-2000:]
    return done.stdout


@needs_cmake
def test_cmake_builds_the_native_runner_and_ctest_passes(tmp_path):
    out = _cmake_build_and_test(tmp_path / "runner-x86")
    assert re.search(r"100% tests passed, 0 tests failed out of \d+", out) and "run_model_relative_path" in out
    assert elf_machine(tmp_path / "runner-x86" / "rebirth-run") == 62  # EM_X86_64
    for library in ("libtvm_runtime.so", "libtvm_ffi.so"):  # the bundle sits beside the runner
        assert (tmp_path / "runner-x86" / library).exists()


@needs_arm
def test_cmake_cross_builds_the_aarch64_runner_and_ctest_passes_under_qemu(tmp_path):
    out = _cmake_build_and_test(tmp_path / "runner-arm", "--toolchain", os.path.join(ROOT, "cmake", "aarch64-linux-gnu.cmake"))
    assert re.search(r"100% tests passed, 0 tests failed out of \d+", out) and "run_model_relative_path" in out
    assert elf_machine(tmp_path / "runner-arm" / "rebirth-run") == 183  # EM_AARCH64
    assert elf_machine(tmp_path / "runner-arm" / "libtvm_runtime.so") == 183
    assert elf_machine(tmp_path / "runner-arm" / "test-fixture" / "model.so") == 183


@needs_cmake
def test_runner_from_python_equals_the_python_vm(tmp_path):
    module = rebirth_tvm.load(tiny_cnn())
    built = rebirth_tvm.build(module, "x86")
    built.export(str(tmp_path / "model.so"))
    x = np.random.default_rng(1).normal(size=(1, 3, 16, 16)).astype("float32")
    outputs, stats = native.run_library(str(tmp_path / "model.so"), [x], arch="host", warmup=1, repeat=5)
    np.testing.assert_allclose(outputs[0], built.run(x), rtol=0, atol=0)  # same code, same machine: bit-exact
    assert stats["runs"] == 5 and stats["latency_ms"]["min"] <= stats["latency_ms"]["median"] <= stats["latency_ms"]["max"]
    assert stats["peak_rss_bytes"] > 1e6


@needs_cmake
def test_runner_refuses_a_library_that_is_not_a_model(tmp_path):
    (tmp_path / "model.so").write_bytes(b"not an ELF file")
    with pytest.raises(RebirthError, match="rebirth-run \\(host\\) failed on model.so"):
        native.run_library(str(tmp_path / "model.so"), [np.zeros((1, 3, 16, 16), "float32")])
    # A real shared library, but not a Relax VM executable.
    shutil.copy(_libm(), tmp_path / "libm.so")
    with pytest.raises(RebirthError, match="is not a Relax VM executable"):
        native.run_library(str(tmp_path / "libm.so"), [np.zeros((1, 3, 16, 16), "float32")])


def _libm() -> str:
    for candidate in ("/lib/x86_64-linux-gnu/libm.so.6", "/usr/lib/x86_64-linux-gnu/libm.so.6", "/lib64/libm.so.6"):
        if os.path.exists(candidate):
            return candidate
    pytest.skip("libm not found at a known path")


@needs_arm
def test_cli_verify_qemu_writes_a_verified_arm_library_and_runner(tmp_path, capsys):
    import onnx

    onnx.save(tiny_cnn(), str(tmp_path / "tiny.onnx"))
    out = tmp_path / "out"
    assert compile_main(["--model", str(tmp_path / "tiny.onnx"), "--target", "arm", "--cpu", "cortex-a53",
                         "--verify", "qemu", "--runner", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "verify (qemu): ran on qemu-aarch64" in printed and "-> passed" in printed
    report = json.loads((out / "report.json").read_text())
    verification = report["verification"]
    assert verification["passed"] and verification["max_rel_diff"] <= 1e-5
    assert "latency_ms" not in verification  # emulated timings are never reported as speed
    for name in ("model.so", "rebirth-run", "libtvm_runtime.so", "libtvm_ffi.so"):
        assert elf_machine(out / name) == 183, name
    assert "## Verification of the exported library" in (out / "report.md").read_text()


@needs_arm
def test_verification_that_disagrees_writes_nothing(tmp_path, monkeypatch):
    real = native.run_library

    def wrong(library, inputs, **kwargs):  # the real run, then one output is off by 1e-4 of its scale: ten times the 1e-5 tolerance
        outputs, stats = real(library, inputs, **kwargs)
        return [o + 1e-4 * np.abs(o).max() for o in outputs], stats

    monkeypatch.setattr(native, "run_library", wrong)
    with pytest.raises(RebirthError, match="differs from the x86 build .*nothing was written"):
        rebirth_tvm.compile_model(tiny_cnn(), target="arm", verify="qemu")


def test_verify_methods_are_checked_before_any_work(tmp_path, monkeypatch):
    with pytest.raises(RebirthError, match="--verify qemu runs arm"):
        rebirth_tvm.compile_model(tiny_cnn(), target="x86", verify="qemu")
    with pytest.raises(RebirthError, match="--verify rpc needs --rpc-tracker"):
        rebirth_tvm.compile_model(tiny_cnn(), target="x86", verify="rpc")
    monkeypatch.setenv("PATH", str(tmp_path))  # no qemu anywhere
    with pytest.raises(RebirthError, match="install the Debian package qemu-user"):
        rebirth_tvm.compile_model(tiny_cnn(), target="arm", verify="qemu")


def test_cli_rejects_a_bad_rpc_tracker_in_one_line(tmp_path, cli):
    proc = cli("--model", "squeezenet1_1", "--tune-trials", "4",
               "--rpc-tracker", "nohost", "--rpc-key", "k", "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: --rpc-tracker 'nohost': use HOST:PORT, e.g. 192.168.1.20:9190"
    assert not (tmp_path / "out").exists()
