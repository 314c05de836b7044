"""The benchmark's measurements: categories, FLOPs, planned memory, and the bench CLI end to end.

No timing is asserted (machines are noisy): only that the numbers are consistent with each other
and with what can be computed by hand.
"""

import json
import os

import numpy as np
import onnx
import pytest
from onnx_builders import tiny_cnn

import rebirth_tvm
from rebirth_tvm.backend import measure
from rebirth_tvm.backend.targets import resolve_target


@pytest.mark.parametrize("kernel, category", [
    ("fused_conv2d9_add7_relu6", "conv"),
    ("fused_matmul_add35", "fc"),
    ("max_pool2d4", "pool"),
    ("fused_squeeze1_multiply3_add4_power1_divide1", "lrn"),  # the importer's LRN tail
    ("fused_multiply2_expand_dims1", "lrn"),
    ("avg_pool3d1", "lrn"),
    ("concatenate3", "concat"),
    ("fused_strided_slice_strided_slice1", "slice"),
    ("relu2", "relu"),
    ("vm.builtin.alloc_tensor", "vm"),
    ("fused_reshape_transpose", "other"),
    ("some_kernel_nobody_knows", "other"),
])
def test_kernel_category(kernel, category):
    assert measure.kernel_category(kernel) == category


def test_flops_counts_conv_and_matmul_multiply_adds_twice():
    module = rebirth_tvm.load(tiny_cnn())
    convs, fcs = [], []

    def visit(expr):
        name = getattr(getattr(expr, "op", None), "name", "")
        if name == "relax.nn.conv2d":
            convs.append(([int(d) for d in expr.ty.shape], [int(d) for d in expr.args[1].ty.shape]))
        elif name == "relax.matmul":
            fcs.append(([int(d) for d in expr.args[0].ty.shape], [int(d) for d in expr.ty.shape]))

    from tvm import relax

    relax.analysis.post_order_visit(module["main"], visit)
    assert convs, "tiny_cnn has a conv"
    expected = sum(2 * np.prod(out) * w[1] * w[2] * w[3] for out, w in convs) + sum(2 * np.prod(out) * a[-1] for a, out in fcs)
    assert measure.flops(module) == expected > 0


def test_planned_memory_is_between_the_largest_tensor_and_no_planning_at_all():
    module = rebirth_tvm.load(tiny_cnn())
    memory = measure.planned_memory(module, resolve_target("x86"))
    assert memory["weight_bytes"] == sum(
        int(np.prod(init.dims)) * 4 for init in tiny_cnn().graph.initializer)
    # Activations: the output at least; never more than every intermediate kept alive at once.
    intermediates = []
    from tvm import relax

    relax.analysis.post_order_visit(module["main"], lambda e: intermediates.append(int(np.prod([int(d) for d in e.ty.shape])) * 4)
                                    if isinstance(e, relax.Call) and hasattr(e.ty, "shape") and e.ty.shape is not None else None)
    assert max(intermediates) <= memory["planned_activation_bytes"] <= sum(intermediates)


def test_time_breakdown_shares_add_up():
    module = rebirth_tvm.load(tiny_cnn())
    built = rebirth_tvm.build(module, "x86")
    breakdown = measure.time_breakdown(built.executable, [np.zeros((1, 3, 16, 16), "float32")], runs=2)
    assert sum(breakdown["share"].values()) == pytest.approx(1.0)
    assert breakdown["share"]["conv"] > 0
    assert breakdown["non_tensor_share"] == pytest.approx(1.0 - breakdown["share"]["conv"] - breakdown["share"]["fc"])


def test_interleaved_latency_reports_every_variant():
    calls = {"a": 0, "b": 0}
    variants = [measure.Variant("a", lambda: calls.__setitem__("a", calls["a"] + 1)),
                measure.Variant("b", lambda: calls.__setitem__("b", calls["b"] + 1))]
    result = measure.interleaved_latency(variants, repeats=4, min_sample_seconds=0.001, warmup=1)
    assert set(result) == {"a", "b"}
    for name, stats in result.items():
        assert stats["samples"] == 4 and stats["p10"] <= stats["median"] <= stats["p90"]
        assert calls[name] >= 1 + 1 + 4 * stats["runs_per_sample"]


@pytest.mark.slow
def test_bench_cli_writes_results_report_and_plots(tmp_path):
    from rebirth_tvm.bench import main

    assert main(["--models", "squeezenet1_1", "--repeats", "3", "--calib-count", "20", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "x86" / "squeezenet1_1.json").read_text())
    variants = result["variants"]
    assert set(variants) == {"original", "exact", "reborn", "ort_original", "ort_reborn"}
    for name in ("original", "exact", "reborn"):
        entry = variants[name]
        assert entry["latency_ms"]["p10"] <= entry["latency_ms"]["median"] <= entry["latency_ms"]["p90"]
        assert entry["flops"] > 0 and entry["planned_activation_bytes"] > 0 and entry["weight_bytes"] > 0
        assert 0 <= entry["breakdown"]["non_tensor_share"] <= 1
    assert variants["original"]["ratio_vs_original"] == 1.0
    assert result["ratios"]["original_over_reborn"] == pytest.approx(
        variants["original"]["latency_ms"]["median"] / variants["reborn"]["latency_ms"]["median"])
    assert result["rebirth"]["relearned_sites"] >= 1  # conv1 + pool1
    assert result["environment"]["tune_trials"] == 0 and result["environment"]["matmul_peak"]["gflops"] > 0
    report = (tmp_path / "x86" / "report.md").read_text()
    assert "| squeezenet1_1 | untuned |" in report and "not measured" in report
    for png in ("latency.png", "breakdown.png", "memory.png"):
        assert (tmp_path / "x86" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_refuses_to_time_what_cannot_run_here(tmp_path, capsys):
    from rebirth_tvm.bench import main

    assert main(["--models", "googlenet", "--target", "arm", "--out", str(tmp_path)]) == 2
    assert "never reported as measured" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "arm")


def test_bench_takes_an_onnx_file_and_names_its_results_after_it(tmp_path, capsys):
    from rebirth_tvm.bench import main

    model = tmp_path / "mine.onnx"
    onnx.save(tiny_cnn(), model)
    assert main(["--models", str(model), "--skip-rebirth", "--repeats", "2", "--out", str(tmp_path / "r")]) == 0
    result = json.loads((tmp_path / "r" / "x86" / "mine.json").read_text())
    assert result["model"] == "mine" and set(result["variants"]) >= {"original", "exact", "ort_original"}
    assert main(["--models", str(tmp_path / "missing.onnx"), "--out", str(tmp_path / "s")]) == 2
    assert "unknown model" in capsys.readouterr().err and not (tmp_path / "s").exists()


def test_each_sample_waits_for_the_other_runtimes_threads_and_runs_once_untimed(monkeypatch):
    # Both runtimes' workers spin after a run: a sample taken right after another runtime's ran
    # on half the cores. Each sample is preceded by an idle pause and one untimed run.
    sleeps, calls = [], []
    monkeypatch.setattr(measure.time, "sleep", lambda s: sleeps.append(s))
    variants = [measure.Variant(n, lambda n=n: calls.append(n)) for n in ("a", "b")]
    result = measure.interleaved_latency(variants, repeats=3, min_sample_seconds=0.0, warmup=0)
    assert sleeps == [measure.SETTLE_SECONDS] * 6
    assert calls.count("a") == 1 + 3 * (1 + result["a"]["runs_per_sample"])


def test_a_sample_after_another_runtimes_waits_longer(monkeypatch):
    # 50 ms left both runtimes slowed by the other's spinning threads; a switch of runtime
    # waits SWITCH_SETTLE_SECONDS, a sample after the same runtime only SETTLE_SECONDS.
    sleeps = []
    monkeypatch.setattr(measure.time, "sleep", lambda s: sleeps.append(s))
    variants = [measure.Variant("tvm_a", lambda: None), measure.Variant("tvm_b", lambda: None),
                measure.Variant("ort", lambda: None, runtime="onnxruntime")]
    measure.interleaved_latency(variants, repeats=3, min_sample_seconds=0.0, warmup=0)
    short, switch = measure.SETTLE_SECONDS, measure.SWITCH_SETTLE_SECONDS
    # orders: a b ort | b ort a | ort a b (each pause is for what ran just before, across repetitions)
    assert sleeps == [short, short, switch, switch, switch, switch, switch, switch, short]
    assert switch > short
