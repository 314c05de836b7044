"""python -m rebirth_tvm.compile: outputs, reports, and one-line errors that leave nothing behind."""

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
import tvm
from onnx import helper
from onnx_builders import tiny_cnn
from tvm import relax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_help_documents_every_flag(cli):
    proc = cli("--help")
    assert proc.returncode == 0
    for flag in ("--model", "--target", "--passes", "--input-shape", "--out", "--cpu", "--allow-kernel-padding", "--skip-merge-parallel", "--seed"):
        assert flag in proc.stdout


def test_compile_writes_library_and_reports(tmp_path, cli):
    model = tmp_path / "tiny.onnx"
    onnx.save(tiny_cnn(), model)
    out = tmp_path / "out"
    proc = cli("--model", str(model), "--target", "x86", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(out)) == ["model.so", "report.json", "report.md"]
    report = json.loads((out / "report.json").read_text())
    assert report["ops_before"]["relax.nn.batch_norm"] == 1
    assert "relax.nn.batch_norm" not in report["ops_after"]
    assert report["ops_before"]["relax.nn.conv2d"] == 3 and report["ops_after"]["relax.nn.conv2d"] == 2
    assert {(s["pass_name"], s["status"]) for s in report["sites"]} == {("FoldBatchNorm", "rewritten"), ("MergeParallelConvs", "rewritten")}
    assert report["max_rel_diff"] <= 1e-5 and report["max_abs_diff"] >= 0
    assert report["target"]["kind"] == "llvm" and report["compile_seconds"] > 0
    assert "| nn.batch_norm | 1 | 0 | -1 |" in (out / "report.md").read_text()
    # The library loads in a plain TVM VM and gives the onnxruntime answer.
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(out / "model.so")), tvm.cpu())
    x = np.random.default_rng(5).standard_normal((1, 3, 16, 16)).astype("float32")
    from rebirth_tvm.frontend.reference import onnxruntime_outputs

    ref = onnxruntime_outputs(tiny_cnn(), {"x": x})[0]
    assert np.max(np.abs(vm["main"](tvm.runtime.tensor(x)).numpy() - ref)) <= 1e-5 * np.max(np.abs(ref))


def test_passes_none_and_input_shape(tmp_path, cli):
    model = tmp_path / "dyn.onnx"
    onnx.save(tiny_cnn(dynamic=True), model)
    out = tmp_path / "out"
    proc = cli("--model", str(model), "--passes", "none", "--input-shape", "1,3,24,24", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["input_shape"] == [1, 3, 24, 24] and report["sites"] == []
    assert report["ops_before"] == report["ops_after"]


def write(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize("args, message", [
    (lambda p: ["--model", str(p / "nope.onnx")], "no such file"),
    (lambda p: ["--model", write(p, "junk.onnx", b"\x00\x01garbage")], "not"),
    (lambda p: ["--model", write(p, "cut.onnx", tiny_cnn().SerializeToString()[:300])], "not"),
    (lambda p: ["--model", write(p, "dyn.onnx", tiny_cnn(dynamic=True).SerializeToString())], "dynamic dimensions"),
    (lambda p: ["--model", write(p, "odd.onnx", tiny_cnn(extra_nodes=[helper.make_node("ImaginaryOp", ["y"], ["z"])]).SerializeToString())], "unsupported ONNX op"),
    (lambda p: ["--model", "resnet1000"], "unknown model"),
    (lambda p: ["--model", write(p, "t.onnx", tiny_cnn().SerializeToString()), "--target", "tpu"], "unknown target"),
    (lambda p: ["--model", write(p, "t.onnx", tiny_cnn().SerializeToString()), "--input-shape", "1,3,a,b"], "integers"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, args, message, cli):
    out = tmp_path / "out"
    proc = cli(*args(tmp_path), "--out", str(out))
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], proc.stderr
    assert not out.exists()
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".rebirth")]


def test_existing_output_is_kept_when_a_later_run_fails(tmp_path, cli):
    model = tmp_path / "tiny.onnx"
    onnx.save(tiny_cnn(), model)
    out = tmp_path / "out"
    assert cli("--model", str(model), "--out", str(out)).returncode == 0
    before = (out / "report.json").read_text()
    assert cli("--model", str(model), "--target", "nowhere", "--out", str(out)).returncode != 0
    assert (out / "report.json").read_text() == before


def test_models_cli_exports_what_compile_reads(tmp_path, cli):
    path = tmp_path / "sq.onnx"
    proc = subprocess.run([sys.executable, "-m", "rebirth_tvm.models", "--export", "squeezenet1_1", str(path)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    proc = cli("--model", str(path), "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    assert "passed" in proc.stdout
