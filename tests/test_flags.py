"""Every CLI flag and every default policy has a test that fails if it were ignored.

The CLI runs in-process (``main(argv)``): a subprocess would prove nothing more about a flag.
Models and calibration are made once per module.
"""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx_builders import inception, stem, tiny_cnn
from relax_builders import count_ops
from test_merge_conv_pool import calib as conv_pool_calibration
from test_merge_conv_pool import conv_pool
from test_tucker import two_convs

from rebirth_tvm import pipeline
from rebirth_tvm.pipeline import stages

from rebirth_tvm.backend import measure
from rebirth_tvm.compile import main as compile_main
from rebirth_tvm.core.errors import CheckFailed
from rebirth_tvm.passes import MergeConvPool


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("flags")
    paths = {"stem": folder / "stem.onnx", "inception": folder / "inception.onnx", "tiny": folder / "tiny.onnx",
             "two_convs": folder / "two_convs.onnx", "siblings": folder / "siblings.onnx"}
    onnx.save(stem(), paths["stem"])
    onnx.save(inception(pooled=False), paths["inception"])
    onnx.save(tiny_cnn(), paths["tiny"])
    onnx.save(two_convs(channels=32, size=16), paths["two_convs"])
    onnx.save(sibling_kernels(), paths["siblings"])
    rng = np.random.default_rng(0)
    for name, shape in (("stem_calib", (30, 3, 32, 32)), ("inception_calib", (30, 3, 16, 16)), ("two_convs_calib", (20, 16, 16, 16))):
        paths[name] = folder / f"{name}.npy"
        np.save(paths[name], rng.standard_normal(shape).astype("float32"))
    paths["out"] = folder
    return paths


def sibling_kernels() -> onnx.ModelProto:
    """A 1×1 and a 3×3 (pad 1) conv reading the same input, concatenated."""
    r = np.random.default_rng(3)
    inits = [numpy_helper.from_array(r.normal(0, 0.3, shape).astype(np.float32), name)
             for name, shape in (("wa", (4, 3, 1, 1)), ("wb", (5, 3, 3, 3)))]
    nodes = [helper.make_node("Conv", ["x", "wa"], ["a"], kernel_shape=[1, 1], name="one"),
             helper.make_node("Conv", ["x", "wb"], ["b"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="three"),
             helper.make_node("Concat", ["a", "b"], ["y"], axis=1, name="concat")]
    graph = helper.make_graph(nodes, "siblings", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 9, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def compile_report(files, name, *flags, out="out"):
    """Compile ``files[name]`` with ``flags``; returns report.json."""
    target = files["out"] / out
    code = compile_main(["--model", str(files[name]), *map(str, flags), "--out", str(target), "--force"])
    assert code == 0
    return json.loads((target / "report.json").read_text())


def sites(report, status=None, pass_name=None):
    return {s["site"]: s for s in report["sites"]
            if (status is None or s["status"] == status) and (pass_name is None or s["pass_name"] == pass_name)}


def rebirth_flags(files, model):
    return ["--rebirth", "--calib", files[f"{model}_calib"]]


# -- exact passes ---------------------------------------------------------------------------------

def test_skip_merge_parallel(files):
    merged = compile_report(files, "tiny", out="merged")
    skipped = compile_report(files, "tiny", "--skip-merge-parallel", out="skipped")
    assert "MergeParallelConvs" in {s["pass_name"] for s in merged["sites"]}
    assert "MergeParallelConvs" not in {s["pass_name"] for s in skipped["sites"]}
    assert merged["ops_after"]["relax.nn.conv2d"] == 2 and skipped["ops_after"]["relax.nn.conv2d"] == 3


def test_allow_kernel_padding(files):
    default = compile_report(files, "siblings", out="unpadded")
    padded = compile_report(files, "siblings", "--allow-kernel-padding", out="padded")
    assert default["ops_after"]["relax.nn.conv2d"] == 2  # 1×1 and 3×3 are not merged by default
    assert any("kernel" in s["reason"] for s in sites(default, "refused").values())
    assert padded["ops_after"]["relax.nn.conv2d"] == 1  # zero-padded to 3×3 (exact: the report exists only if the check passed)
    assert padded["max_rel_diff"] <= 1e-5


def test_arch_reaches_the_cuda_target(files):
    report = compile_report(files, "tiny", "--target", "cuda", "--arch", "sm_90", out="cuda")
    assert report["target"]["kind"] == "cuda" and report["target"]["arch"] == "sm_90"


# -- rebirth policies -------------------------------------------------------------------------------

def test_merge_conv_pool_auto_covers_only_where_no_macs_are_added():
    """The default: a 7×7 conv + 3×3/s2 pool grows to the pool's receptive field (fewer MACs at a
    quarter of the positions); a 1×1 conv + 3×3/s2 pool keeps its 1×1 (3×3 would cost 2.25×)."""
    pool = dict(pool_size=3, strides=2, padding=1)
    for k, pad, kernel in ((7, 3, [9, 9]), (1, 0, [1, 1])):
        merge = MergeConvPool(conv_pool_calibration())
        merge(conv_pool("max", relu=True, pool_kw=dict(pool), conv_kw=dict(k=k, pad=pad)))
        (site,) = merge.sites
        assert site.status == "rewritten" and site.detail["kernel"] == kernel, (k, site.detail["kernel"])
        assert site.detail["macs_after"] <= site.detail["macs_before"]


def test_pool_kernel_flag(files):
    keep = compile_report(files, "stem", *rebirth_flags(files, "stem"), "--pool-kernel", "keep", out="keep")
    cover = compile_report(files, "stem", *rebirth_flags(files, "stem"), "--pool-kernel", "cover", out="cover")
    default = compile_report(files, "stem", *rebirth_flags(files, "stem"), out="auto")
    # pool1 follows conv1 (3×3/s2) with a 3×3/s2 pool: keep stays 3×3, cover grows to 3 + 2·2 = 7.
    # pool2 follows conv2 (3×3/s1): auto covers it (5×5 at a quarter of the positions), keep does not.
    assert sites(keep, "rewritten")["pool1"]["detail"]["kernel"] == [3, 3]
    assert sites(cover, "rewritten")["pool1"]["detail"]["kernel"] == [7, 7]
    assert sites(default, "rewritten")["pool2"]["detail"]["kernel"] == [5, 5]
    assert sites(keep, "rewritten")["pool2"]["detail"]["kernel"] == [3, 3]


def test_no_streamline_and_branches(files):
    both = compile_report(files, "inception", *rebirth_flags(files, "inception"), "--allow-more-work", out="both")
    pool_only = compile_report(files, "inception", *rebirth_flags(files, "inception"), "--allow-more-work", "--branches", "pool", out="pool")
    reduce_only = compile_report(files, "inception", *rebirth_flags(files, "inception"), "--allow-more-work", "--branches", "reduce",
                                 "--no-streamline", out="reduce")
    merged = {name: set(sites(r, "rewritten", "Rebirth")) for name, r in (("both", both), ("pool", pool_only), ("reduce", reduce_only))}
    assert merged["both"] == {"b3x3", "b5x5", "bpool_proj"}
    assert merged["pool"] == {"bpool_proj"}
    assert merged["reduce"] == {"b3x3", "b5x5"}
    # Branches "reduce" only: the pool branch's max pool stays (this model has no streamline site;
    # --no-streamline is checked on the stem below).
    assert reduce_only["ops_after"].get("relax.nn.max_pool2d", 0) == 1


def test_no_streamline_leaves_the_stem_alone(files):
    report = compile_report(files, "stem", *rebirth_flags(files, "stem"), "--no-streamline", "--branches", "pool", out="nostream")
    assert not sites(report, "rewritten", "Rebirth")
    assert report["ops_after"]["relax.nn.max_pool2d"] == report["ops_before"]["relax.nn.max_pool2d"] == 2


def test_allow_more_work(files):
    default = compile_report(files, "inception", *rebirth_flags(files, "inception"), out="default_work")
    refused = sites(default, "refused", "Rebirth")
    assert {"b3x3", "b5x5"} <= set(refused) and all("would raise MACs" in refused[n]["reason"] for n in ("b3x3", "b5x5"))


def test_tucker_alone(files):
    report = compile_report(files, "two_convs", *rebirth_flags(files, "two_convs"), "--no-streamline", "--branches", "none",
                            "--tucker", "0.6", out="tucker")
    tucker = sites(report, pass_name="TuckerDecompose")
    assert tucker and any(s["status"] == "rewritten" for s in tucker.values())
    assert not any("latency" in s.get("detail", {}) for s in report["sites"])  # no selection asked for


def test_preset_is_used(files, tmp_path, capfd):
    from photos import photos

    folder = photos(tmp_path / "img", 10)
    # A 3-channel model with the single-channel preset: only refused if --preset was read.
    code = compile_main(["--model", str(files["stem"]), "--rebirth", "--calib", folder, "--preset", "gray", "--out", str(tmp_path / "o")])
    assert code == 2 and "preset 'gray' makes 1-channel images; the model takes 3 channels" in capfd.readouterr().err


# -- latency selection on the merges the CLI runs by default ---------------------------------------

def fake_latency(before_ms, after_ms):
    def timed(variants, **_):
        assert [v.name for v in variants] == ["before", "after"]
        for v in variants:
            v.run()  # the block and its rewrite were built and run
        return {"before": {"median": before_ms}, "after": {"median": after_ms}}
    return timed


@pytest.mark.parametrize("margin, kept", [(0.1, True), (0.3, False)])
def test_select_margin_decides_merge_sites(files, monkeypatch, margin, kept):
    monkeypatch.setattr(measure, "interleaved_latency", fake_latency(1.0, 0.8))  # every rewrite 20% faster
    report = compile_report(files, "stem", *rebirth_flags(files, "stem"), "--select", "latency", "--select-margin", margin,
                            out=f"margin{margin}")
    measured = [s for s in report["sites"] if "latency" in s.get("detail", {})]
    assert measured and all(s["pass_name"] == "Rebirth" for s in measured)
    for s in measured:
        assert s["detail"]["latency"]["kept"] is kept and (s["status"] == "rewritten") is kept
    pools = report["ops_after"].get("relax.nn.max_pool2d", 0)
    assert pools == (0 if kept else 2)  # declined merges leave the stem's pools where they were


def conv_then_pool(channels=64, size=48) -> onnx.ModelProto:
    """A 1×1 conv (64→64) + ReLU + 2×2/s2 max pool: merged with ``--pool-kernel keep``, a 1×1/s2
    conv with a quarter of the MACs and no pool, so it is faster by far more than any timing noise
    (``auto`` would cover the pool with a 2×2/s2 conv of the same MACs: no clear answer)."""
    r = np.random.default_rng(4)
    inits = [numpy_helper.from_array(r.normal(0, 0.2, (channels, channels, 1, 1)).astype(np.float32), "w")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("MaxPool", ["r"], ["y"], kernel_shape=[2, 2], strides=[2, 2], name="pool")]
    graph = helper.make_graph(nodes, "conv_pool", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, size, size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, size // 2, size // 2])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def test_select_latency_keeps_a_merge_that_is_clearly_faster_with_real_timings(tmp_path, cli):
    onnx.save(conv_then_pool(), tmp_path / "m.onnx")
    np.save(tmp_path / "calib.npy", np.random.default_rng(0).standard_normal((10, 64, 48, 48)).astype("float32"))
    proc = cli("--model", tmp_path / "m.onnx", "--rebirth", "--calib", tmp_path / "calib.npy", "--select", "latency",
               "--pool-kernel", "keep", "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    (site,) = [s for s in json.loads((tmp_path / "out" / "report.json").read_text())["sites"] if s["pass_name"] == "Rebirth"]
    latency = site["detail"]["latency"]
    assert latency["measured_on"] == "this machine" and latency["before_ms"] > 0
    assert latency["kept"] and site["status"] == "rewritten", latency


# -- the tuned check's failure path ------------------------------------------------------------------

def test_a_tuned_build_that_differs_from_the_untuned_one_is_refused(tmp_path, monkeypatch):
    real = stages.build_tuned

    class Off:
        """A tuned build whose outputs are 1e-3 of their scale off (ten times the tolerance)."""

        def __init__(self, built):
            self.built = built

        def __getattr__(self, name):
            return getattr(self.built, name)

        def run(self, inputs):
            out = self.built.run(inputs)
            return out + 1e-3 * np.abs(out).max()

    monkeypatch.setattr(stages, "build_tuned", lambda *a, **k: (lambda built, info: (Off(built), info))(*real(*a, **k)))
    # tune_trials 0 with a database: the tuned build is made (from the empty database) without tuning.
    with pytest.raises(CheckFailed, match="the tuned build differs from the untuned one by 0.001"):
        pipeline.compile_model(tiny_cnn(), target="x86", tune_trials=0, tuning_db=str(tmp_path / "db"))


def test_count_ops_helper_is_honest():
    # The helper several tests rely on counts what is there (not a constant).
    import rebirth_tvm

    mod = rebirth_tvm.load(stem())
    assert count_ops(mod, "relax.nn.max_pool2d") == 2 and count_ops(mod, "relax.nn.conv2d") == 3
