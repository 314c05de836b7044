"""Relax → ONNX: the exported model runs in onnxruntime and equals the module it came from."""

import json

import numpy as np
import onnx
import pytest
from onnx_builders import stem

import rebirth_tvm
from rebirth_tvm import RebirthError
from rebirth_tvm.frontend.export_onnx import to_onnx
from rebirth_tvm.frontend.zoo import MODELS, build_model
from rebirth_tvm.passes import exact_pipeline
from rebirth_tvm.frontend.reference import onnxruntime_outputs



@pytest.mark.parametrize("name", [n for n in MODELS if n != "mobilenet_v2"])
def test_exact_zoo_model_round_trips_through_onnx(name):
    original = build_model(name)
    exported = to_onnx(exact_pipeline()(rebirth_tvm.load(original)))
    x = np.random.default_rng(0).standard_normal(MODELS[name].input_shape).astype("float32")
    ref = onnxruntime_outputs(original, {"data": x})[0]
    out = onnxruntime_outputs(exported, {"data": x})[0]
    assert np.max(np.abs(out - ref)) <= 1e-5 * np.max(np.abs(ref))


def test_unexportable_op_is_named():
    # MobileNetV2's Clip is imported as a TIR function, which the exporter does not translate.
    with pytest.raises(RebirthError, match="cannot export to ONNX: a TIR function"):
        to_onnx(rebirth_tvm.load("mobilenet_v2"))


def test_cli_save_onnx_writes_the_reborn_model(tmp_path, cli):
    model = tmp_path / "stem.onnx"
    onnx.save(stem(), model)
    calib = tmp_path / "calib.npy"
    np.save(calib, np.random.default_rng(0).standard_normal((24, 3, 32, 32)).astype("float32"))
    saved = tmp_path / "reborn.onnx"
    proc = cli("--model", str(model), "--rebirth", "--calib", str(calib),
               "--save-onnx", str(saved), "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    reborn = onnx.load(saved)
    ops = {n.op_type for n in reborn.graph.node}
    assert "LRN" not in ops and "MaxPool" not in ops and "Conv" in ops
    # The saved ONNX computes what the compiled library computes.
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(tvm.runtime.load_module(str(tmp_path / "out" / "model.so")), tvm.cpu())
    x = np.random.default_rng(3).standard_normal((1, 3, 32, 32)).astype("float32")
    ref = vm["main"](tvm.runtime.tensor(x)).numpy()
    out = onnxruntime_outputs(reborn, {reborn.graph.input[0].name: x})[0]
    assert np.max(np.abs(out - ref)) <= 1e-5 * np.max(np.abs(ref))
    assert json.loads((tmp_path / "out" / "report.json").read_text())["fidelity"]["random_inputs"] is False


@pytest.mark.slow
def test_googlenet_full_rebirth_structure():
    """Every variant on: no LRN, no inception pool branch, and (with pool3/pool4 distributed into
    the branches and merged there) no max pool at all; every rebirth site was rewritten."""
    from rebirth_tvm.passes import DistributePoolOverConcat, Rebirth, record_sites
    from rebirth_tvm.pipeline.report import op_counts

    mod = rebirth_tvm.load("googlenet")
    # Structure does not depend on the weights' values: keep each site's initial weights (fast,
    # and no site needs more images than this).
    keep = lambda site: (site.init_weight, site.init_bias)  # noqa: E731
    calib = np.random.default_rng(0).standard_normal((4, 3, 224, 224)).astype("float32")
    with record_sites() as sites:
        after = Rebirth(calib, hook=keep, allow_more_work=True)(DistributePoolOverConcat()(mod))
    ops = op_counts(after)
    for op in ("relax.nn.avg_pool3d", "relax.power", "relax.nn.max_pool2d"):
        assert op not in ops, op
    assert len([s for s in sites if s.site.endswith("_pool_proj") and s.status == "rewritten"]) == 9
    assert not [s for s in sites if s.pass_name == "Rebirth" and s.status == "refused"]
    assert [int(d) for d in after["main"].body.body.ty.shape] == [1, 1000]
