"""A target resolved once, options checked where they enter, stages callable on their own."""

import numpy as np
import pytest
import tvm
from onnx_builders import tiny_cnn

from rebirth_tvm import RebirthError
from rebirth_tvm.backend import native
from rebirth_tvm.backend.targets import Target, resolve_target
from rebirth_tvm.core.errors import OptionError
from rebirth_tvm.passes import MergeInceptionBranches, Rebirth, StreamlineMerge
from rebirth_tvm.pipeline import stages
from rebirth_tvm.pipeline.options import CompileOptions, RebirthOptions, TuningOptions


def test_one_target_object_answers_every_question():
    arm = resolve_target("arm", cpu="cortex-a72")
    assert (arm.name, arm.arch, arm.label, arm.is_aarch64, arm.is_cuda, arm.runs_here) == ("arm", "aarch64", "aarch64", True, False, False)
    assert arm.describe()["mcpu"] == "cortex-a72" and isinstance(arm.tvm, tvm.target.Target)
    x86 = resolve_target("x86")
    assert (x86.name, x86.arch, x86.label, x86.runs_here) == ("x86", "host", "x86", True)
    cuda = resolve_target("cuda", arch="sm_90")
    assert (cuda.name, cuda.arch, cuda.label) == ("cuda", "cuda", "CUDA sm_90")
    # Resolved once: a Target passes through unchanged, a TVM target is wrapped with its name.
    assert resolve_target(arm) is arm
    assert resolve_target(arm.tvm).name == "arm"
    with pytest.raises(RebirthError, match="a target is a name"):
        resolve_target(42)


def test_the_cross_compiler_override_reaches_the_export_and_the_runner(monkeypatch):
    arm = resolve_target("arm")
    monkeypatch.setenv("REBIRTH_AARCH64_CXX", "true")  # any program on PATH
    assert arm.export_compiler() == "true"
    assert native._compiler("aarch64") == "true"
    key = native._build_key("aarch64")
    monkeypatch.setenv("REBIRTH_AARCH64_CXX", "no-such-compiler-here")
    assert native._build_key("aarch64") != key  # a runner built with another compiler is another build
    with pytest.raises(RebirthError, match="no-such-compiler-here not found: install the Debian package g\\+\\+-aarch64-linux-gnu"):
        arm.export_compiler()
    assert resolve_target("x86").export_compiler() is None


@pytest.mark.parametrize("options,message", [
    (dict(pool_kernel="kepp"), "--pool-kernel 'kepp': use auto, cover, keep"),
    (dict(branch_pool_kernel="auto"), "branch_pool_kernel 'auto': use keep, cover"),
    (dict(branches=("pool", "redcue")), "--branches 'pool,redcue'"),
    (dict(streamline=False, branches=()), "leaves nothing to relearn"),
    (dict(select="fastest"), "select must be 'all' or 'latency'"),
    (dict(tucker=1.5), "--tucker ENERGY must be in (0, 1]"),
    (dict(calib_count=0), "--calib-count must be 1 or more"),
    (dict(max_site_error=0), "--max-site-error must be above 0"),
    (dict(calib=None), "--rebirth needs --calib"),
])
def test_rebirth_options_are_checked_when_made(options, message):
    with pytest.raises(RebirthError, match=message.replace("(", "\\(").replace(")", "\\)").replace("]", "\\]").replace("[", "\\[")):
        RebirthOptions(**{"calib": "random", **options})


def test_compile_options_refuse_what_cannot_run_before_any_work(tmp_path):
    arm = resolve_target("arm")
    with pytest.raises(RebirthError, match="--evaluate runs the compiled model, and aarch64 builds cannot run here"):
        CompileOptions(target=arm, evaluate="fashion-mnist")
    with pytest.raises(RebirthError, match="--select latency times each site on the target, and aarch64 builds cannot run here"):
        CompileOptions(target=arm, rebirth=RebirthOptions(calib="random", select="latency"))
    with pytest.raises(RebirthError, match="--verify qemu runs arm"):
        CompileOptions(target=resolve_target("x86"), verify="qemu")
    with pytest.raises(RebirthError, match="unknown pass set 'fast'"):
        CompileOptions(target=resolve_target("x86"), passes="fast")
    (tmp_path / "db").write_text("not a directory")
    with pytest.raises(RebirthError, match="is a file; it must be a directory"):
        TuningOptions(0, str(tmp_path / "db"))


def test_a_typo_in_a_pass_policy_is_refused_by_every_preset():
    calibration = np.zeros((4, 3, 8, 8), np.float32)
    for make in (lambda: Rebirth(calibration, pool_kernel="kepp", streamline=False, branches=("pool",)),
                 lambda: Rebirth(calibration, branch_pool_kernel="auto"),
                 lambda: StreamlineMerge(calibration, pool_kernel="cover "),
                 lambda: MergeInceptionBranches(calibration, branch_pool_kernel="Keep")):
        with pytest.raises(OptionError) as caught:
            make()
        # One error line for the CLI (a RebirthError), and still a ValueError for Python callers.
        assert isinstance(caught.value, RebirthError) and isinstance(caught.value, ValueError)


def test_the_stages_give_a_rewritten_module_without_the_check(monkeypatch):
    # What the bench needs: the modules, without running onnxruntime or writing anything.
    monkeypatch.setattr(stages, "onnxruntime_outputs", lambda *a: pytest.fail("the check ran"))
    job = stages.prepare(tiny_cnn(), CompileOptions(target=resolve_target("x86")))
    exact = stages.rewrite_exact(job)
    assert isinstance(job.options.target, Target)
    assert [s.pass_name for s in exact.sites if s.status == "rewritten"] == ["FoldBatchNorm", "MergeParallelConvs"]
    assert "relax.nn.batch_norm" not in exact.module.script()


def test_rebirth_keeps_its_positional_hook_and_names_an_unknown_option():
    import rebirth_tvm

    with pytest.raises(RebirthError, match="unknown rebirth option\\(s\\) tuckr"):
        rebirth_tvm.rebirth(tiny_cnn(), "random", "lstsq", "all", tuckr=0.9)
    # A refit (or fine-tuning) alone is something to relearn: accepted from Python too.
    assert RebirthOptions(calib="random", streamline=False, branches=(), refit_classifier=True).refit_classifier
