"""ARM (aarch64) and CUDA builds: made and exported here, checked through x86, never run here."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx_builders import tiny_cnn

import rebirth_tvm
from rebirth_tvm import RebirthError
from rebirth_tvm.backend.targets import cuda_available, resolve_target

HAS_CROSS = shutil.which("aarch64-linux-gnu-g++") is not None
# CI installs the cross compiler (.ci/run); only a developer machine without it may skip.
needs_cross = pytest.mark.skipif(not HAS_CROSS and os.environ.get("CI") != "true",
                                 reason="aarch64-linux-gnu-g++ not installed (Debian package g++-aarch64-linux-gnu)")
needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed: CUDA kernels cannot be compiled here")
needs_gpu = pytest.mark.skipif(not cuda_available(), reason="no CUDA GPU or CUDA runtime in this process")


def elf_machine(path) -> int:
    with open(path, "rb") as f:
        header = f.read(20)
    assert header[:4] == b"\x7fELF"
    return int.from_bytes(header[18:20], "little")


def test_target_presets():
    assert resolve_target("arm", cpu="cortex-a72").describe() == {"kind": "llvm", "mcpu": "cortex-a72", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}
    assert resolve_target("cuda", arch="sm_90").describe()["arch"] == "sm_90"
    assert resolve_target('{"kind": "llvm", "mtriple": "aarch64-linux-gnu"}').describe()["mtriple"] == "aarch64-linux-gnu"
    with pytest.raises(RebirthError, match="unknown ARM CPU 'cortex-x9'"):
        resolve_target("arm", cpu="cortex-x9")
    with pytest.raises(RebirthError, match="unknown CUDA architecture"):
        resolve_target("cuda", arch="ampere")


@needs_cross
def test_arm_build_exports_an_aarch64_library_and_refuses_to_run_here(tmp_path):
    built = rebirth_tvm.build(rebirth_tvm.load(tiny_cnn()), target="arm", cpu="cortex-a72")
    built.export(str(tmp_path / "model.so"))
    assert elf_machine(tmp_path / "model.so") == 183  # EM_AARCH64
    with pytest.raises(RebirthError, match="aarch64 machine"):
        built.run(np.zeros((1, 3, 16, 16), "float32"))


def test_missing_cross_compiler_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("REBIRTH_AARCH64_CXX", "no-such-aarch64-g++")
    built = rebirth_tvm.build(rebirth_tvm.load(tiny_cnn()), target="arm")
    with pytest.raises(RebirthError, match="install the Debian package g\\+\\+-aarch64-linux-gnu"):
        built.export(str(tmp_path / "model.so"))
    assert not (tmp_path / "model.so").exists()


def test_cuda_build_generates_kernels_and_exports_without_a_gpu(tmp_path):
    built = rebirth_tvm.build(rebirth_tvm.load(tiny_cnn()), target="cuda", arch="sm_80")
    source = built.cuda_source()
    assert "__global__" in source
    built.export(str(tmp_path / "model.so"))
    assert elf_machine(tmp_path / "model.so") == 62  # EM_X86_64: the host side of a CUDA library
    if not cuda_available():
        with pytest.raises(RebirthError, match="CUDA GPU"):
            built.run(np.zeros((1, 3, 16, 16), "float32"))


@needs_nvcc
def test_cuda_kernels_compile_with_nvcc():
    from rebirth_tvm.backend.build import check_cuda_source

    result = check_cuda_source(rebirth_tvm.build(rebirth_tvm.load(tiny_cnn()), target="cuda", arch="sm_80"))
    assert result["compiled"] and result["ptx_bytes"] > 1000


@needs_gpu
def test_cuda_build_runs_on_the_gpu_and_matches_x86():
    mod = rebirth_tvm.load(tiny_cnn())
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype("float32")
    gpu = rebirth_tvm.build(mod, target="cuda").run(x)
    cpu = rebirth_tvm.build(mod, target="x86").run(x)
    assert np.max(np.abs(gpu - cpu)) <= 1e-4 * np.max(np.abs(cpu))


@needs_cross
def test_cli_arm_target_reports_how_it_was_checked(tmp_path, cli):
    model = tmp_path / "tiny.onnx"
    onnx.save(tiny_cnn(), model)
    out = tmp_path / "out"
    proc = cli("--model", str(model), "--target", "arm",
               "--cpu", "neoverse-n1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert elf_machine(out / "model.so") == 183
    report = json.loads((out / "report.json").read_text())
    assert report["target"]["mtriple"] == "aarch64-linux-gnu" and report["target"]["mcpu"] == "neoverse-n1"
    assert report["check"]["passed"] and report["check"]["target_binary_run"] is False
    assert report["check"]["ran_on"]["kind"] == "llvm" and "mtriple" not in report["check"]["ran_on"]
    assert "aarch64 library itself was not run here" in proc.stdout


def test_cli_unknown_arm_cpu_is_one_line(tmp_path, cli):
    proc = cli("--model", "squeezenet1_1", "--target", "arm",
               "--cpu", "m1", "--out", str(tmp_path / "out"))
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == ["error: unknown ARM CPU 'm1'; known: cortex-a53, cortex-a72, cortex-a76, neoverse-n1"]


@pytest.mark.slow
def test_tuned_build_equals_untuned_and_a_warm_database_is_not_tuned_again(tmp_path):
    """x86 MetaSchedule tuning (a few trials: this is about correctness and reuse, not speed)."""
    model = tmp_path / "tiny.onnx"
    onnx.save(tiny_cnn(), model)
    database = tmp_path / "db"

    def compile_tuned(out):
        # A subprocess: MetaSchedule's task loggers outlive one test's output capture in-process.
        proc = subprocess.run([sys.executable, "-m", "rebirth_tvm.compile", "--model", str(model), "--tune-trials", "16",
                               "--max-trials-per-task", "1", "--tuning-db", str(database), "--out", str(tmp_path / out)],
                              capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads((tmp_path / out / "report.json").read_text())

    first = compile_tuned("first")
    assert first["tuning"]["tuned_matches_untuned"] and first["tuning"]["max_rel_diff"] <= 1e-5
    # The convs are tuned (the only kernels with choices: the template's tile sizes), the other
    # kernels keep their rules' schedules; every tuned task was measured: the database holds a
    # record for each of them (not just a count the tuner reports about itself).
    tuning = first["tuning"]
    assert tuning["tasks_tuned"] == 2 and tuning["tasks_kept_template"] == tuning["tasks"] - 2 > 0
    assert tuned_workloads(database) == tuning["tasks_tuned"]
    assert first["kernels"]["tuning_database"] == 2 and first["kernels"].get("plain_loops", 0) == 0
    # --max-trials-per-task 1: one sampled candidate per task (16 trials over 2 convs would
    # give each several records without the cap), and beside it the template's default,
    # measured by the same runner (its trace samples nothing), so the build's pick of the
    # fastest record can never be slower than the untuned kernel.
    lines = (database / "database_tuning_record.json").read_text().splitlines()
    records_by_task = {}
    for line in lines:
        if line.strip():
            workload, record = json.loads(line)
            records_by_task.setdefault(workload, []).append("SampleCategorical" in json.dumps(record[0]))
    assert all(sorted(sampled) == [False, True] for sampled in records_by_task.values()), records_by_task
    assert tuning["max_trials_per_task"] == 1 and tuning["defaults_recorded"] == tuning["tasks_tuned"]
    records = (database / "database_tuning_record.json").read_text()
    second = compile_tuned("second")
    assert second["tuning"]["tasks_tuned"] == 0
    assert second["tuning"]["tasks_already_tuned"] == first["tuning"]["tasks_tuned"]
    assert (database / "database_tuning_record.json").read_text() == records  # nothing was measured again


def tuned_workloads(database) -> int:
    """How many distinct workloads a MetaSchedule JSON database holds a measured record for."""
    lines = (database / "database_tuning_record.json").read_text().splitlines()
    return len({json.loads(line)[0] for line in lines if line.strip()})


def test_tuning_a_build_that_cannot_run_here_is_refused(tmp_path, cli):
    proc = cli("--model", "squeezenet1_1", "--target", "cuda",
               "--tune-trials", "4", "--out", str(tmp_path / "out"))
    if cuda_available():
        pytest.skip("a GPU is present: tuning for it would run")
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs a CUDA GPU to measure on" in lines[0] and "--rpc-tracker" in lines[0]
    assert not (tmp_path / "out").exists()
